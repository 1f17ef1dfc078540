//! The scheduler: which ready task runs next, and on which worker. Plain synchronous code.
//!
//! Every task waits in a named queue ([`QueueIdx`], given out by the caller). Within a queue,
//! tasks are split by the kind of worker they need ([`Kind`]: block type, handler, required
//! tags); each kind is a map from task priority to a FIFO, so its head costs O(log priorities).
//!
//! Across queues: the queues that may dispatch (they have waiting tasks, are not paused and are
//! under their limit) sit in one ordered set keyed by (queue priority, pass, index). The first
//! queue in that order whose head some free worker can take dispatches. The pass implements
//! stride scheduling: each dispatch advances a queue's pass by `STRIDE / weight`, so among equal
//! priorities the dispatches follow the weights exactly (within one dispatch per queue over any
//! window), deterministically. A queue that enters the set (new work, resumed, back under its
//! limit) starts at the pass of the latest dispatch at least, so time spent without work, paused
//! or at its limit earns it no credit to spend later.
//!
//! Workers with a free slot sit in a set ordered by load (running / slots), one per block type.
//! A task goes to the least loaded free worker that can run it; when the task prefers tags (soft
//! affinity), to the least loaded of the free eligible workers that have the most of those tags,
//! which may be one without any: a preference never makes a task wait.
//!
//! Entries are removed lazily: a task that leaves `ready` by another path (paused, killed) keeps
//! its entry, and the caller's liveness check skips it when it reaches the head.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;

use tatzelwurm_protocol::{BlockType, Tag, TaskId, WorkerId};

/// A queue's number, given out by the caller, dense from 0.
pub type QueueIdx = u32;

/// What a worker must offer to run a task.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind {
    /// Sync or async workers.
    pub block: BlockType,
    /// For custom tasks, the handler a worker must serve.
    pub handler: Option<String>,
    /// Tags the worker must have (hard affinity), sorted.
    pub require: Vec<Tag>,
}

impl Kind {
    /// A kind with no handler and no required tags.
    pub fn of(block: BlockType) -> Kind {
        Kind {
            block,
            handler: None,
            require: Vec::new(),
        }
    }
}

/// A head that a free worker can run, while a queue's kinds are compared.
struct Candidate<'k> {
    /// Task priority (highest first), then ticket (oldest first).
    order: (Reverse<i32>, u64),
    kind: &'k Kind,
    id: TaskId,
    worker: WorkerId,
}

/// The pass added by one dispatch of a queue of weight 1.
const STRIDE: u128 = 1 << 64;

/// One kind's waiting tasks: highest priority first; within one, the order of enqueueing.
#[derive(Default)]
struct Levels {
    levels: BTreeMap<Reverse<i32>, VecDeque<(TaskId, u64)>>,
}

impl Levels {
    /// The head, after dropping stale entries (counted in `dropped`).
    fn head<'t>(
        &mut self,
        look: &mut impl FnMut(TaskId, u64) -> Option<&'t [Tag]>,
        dropped: &mut usize,
    ) -> Option<(i32, u64, TaskId, &'t [Tag])> {
        while let Some(mut level) = self.levels.first_entry() {
            let prio = level.key().0;
            let fifo = level.get_mut();
            while let Some(&(id, ticket)) = fifo.front() {
                if let Some(prefer) = look(id, ticket) {
                    return Some((prio, ticket, id, prefer));
                }
                fifo.pop_front();
                *dropped += 1;
            }
            level.remove();
        }
        None
    }

    fn pop(&mut self) {
        if let Some(mut level) = self.levels.first_entry() {
            level.get_mut().pop_front();
            if level.get().is_empty() {
                level.remove();
            }
        }
    }
}

/// A named queue as the scheduler sees it.
struct Queue {
    kinds: BTreeMap<Kind, Levels>,
    /// Entries in `kinds`, stale ones included.
    entries: usize,
    priority: i32,
    weight: u32,
    limit: Option<u32>,
    paused: bool,
    /// Its tasks that workers hold now.
    held: u32,
    pass: u128,
    /// Its key in the active set while it is there.
    active: Option<(Reverse<i32>, u128, QueueIdx)>,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            kinds: BTreeMap::new(),
            entries: 0,
            priority: 0,
            weight: 1,
            limit: None,
            paused: false,
            held: 0,
            pass: 0,
            active: None,
        }
    }
}

impl Queue {
    /// Whether it may dispatch now.
    fn may_dispatch(&self) -> bool {
        self.entries > 0 && !self.paused && self.limit.is_none_or(|l| self.held < l)
    }
}

/// A worker's capacity as the scheduler sees it.
#[derive(Clone, Debug)]
struct Capacity {
    block: BlockType,
    slots: u32,
    /// Tasks it holds beyond its slots, started as they free.
    prefetch: u32,
    running: u32,
    handlers: Vec<String>,
    tags: Vec<Tag>,
    /// Runs only its handlers' custom tasks, no commands or sleeps.
    custom_only: bool,
    /// Active (not draining, connected).
    accepting: bool,
}

impl Capacity {
    /// Load as a fixed-point fraction, so that the ordering is exact. A worker whose slots
    /// are all taken is at 1 or more, behind every worker with a free slot: its prefetch room
    /// is used only when no free slot can take the task.
    fn load_key(&self) -> u64 {
        ((self.running as u64) << 32) / self.slots.max(1) as u64
    }

    fn has_room(&self) -> bool {
        self.accepting && self.running < self.slots.saturating_add(self.prefetch)
    }

    /// A slot is free: what it is given starts at once.
    fn has_free_slot(&self) -> bool {
        self.accepting && self.running < self.slots
    }

    /// Whether it can run tasks of `kind` at all.
    fn can_run(&self, kind: &Kind) -> bool {
        self.block == kind.block
            && match &kind.handler {
                Some(h) => self.handlers.contains(h),
                None => !self.custom_only,
            }
            && kind.require.iter().all(|t| self.tags.contains(t))
    }
}

/// A worker's description for [`Scheduler::set_worker`].
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    /// Kind of tasks it takes.
    pub block: BlockType,
    /// Tasks at once.
    pub slots: u32,
    /// Tasks it takes beyond its slots, started as they free (its hello's `prefetch`).
    pub prefetch: u32,
    /// Tasks it holds already.
    pub running: u32,
    /// Custom handlers it serves.
    pub handlers: Vec<String>,
    /// Its tags, for affinity.
    pub tags: Vec<Tag>,
    /// It runs only its handlers' custom tasks (its hello's `custom_only`).
    pub custom_only: bool,
}

/// Ready queues and worker capacities.
#[derive(Default)]
pub struct Scheduler {
    queues: Vec<Queue>,
    /// The queues that may dispatch, in dispatch order.
    active: BTreeSet<(Reverse<i32>, u128, QueueIdx)>,
    /// The pass of the latest dispatch: where a queue entering `active` starts at least.
    vtime: u128,
    workers: rustc_hash::FxHashMap<WorkerId, Capacity>,
    /// Workers with a free slot, least loaded first, per block type.
    free: HashMap<BlockType, BTreeSet<(u64, WorkerId)>>,
    next_ticket: u64,
    queued: usize,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new() -> Self {
        Self::default()
    }

    fn queue(&mut self, q: QueueIdx) -> &mut Queue {
        let i = q as usize;
        if self.queues.len() <= i {
            self.queues.resize_with(i + 1, Queue::default);
        }
        &mut self.queues[i]
    }

    /// Puts a queue in or out of the active set as its state says.
    fn refresh(&mut self, q: QueueIdx) {
        let vtime = self.vtime;
        let queue = self.queue(q);
        let want = queue.may_dispatch();
        let old = queue.active.take();
        if want {
            if old.is_none() {
                queue.pass = queue.pass.max(vtime);
            }
            let key = (Reverse(queue.priority), queue.pass, q);
            queue.active = Some(key);
            if old != Some(key) {
                if let Some(k) = old {
                    self.active.remove(&k);
                }
                self.active.insert(key);
            }
        } else if let Some(k) = old {
            self.active.remove(&k);
        }
    }

    /// Sets a queue's dispatch settings (a queue never set has priority 0, weight 1, no limit).
    pub fn set_queue(
        &mut self,
        q: QueueIdx,
        priority: i32,
        weight: u32,
        limit: Option<u32>,
        paused: bool,
    ) {
        let queue = self.queue(q);
        queue.priority = priority;
        queue.weight = weight.max(1);
        queue.limit = limit;
        queue.paused = paused;
        self.refresh(q);
    }

    /// A restored task of queue `q` is held by a worker (counted against the queue's limit).
    pub fn hold(&mut self, q: QueueIdx) {
        self.queue(q).held += 1;
        self.refresh(q);
    }

    /// Tasks of queue `q` that workers hold now.
    pub fn held(&self, q: QueueIdx) -> u32 {
        self.queues.get(q as usize).map_or(0, |q| q.held)
    }

    /// Queues a ready task; returns the ticket the task must keep to stay live in the queue.
    pub fn enqueue(&mut self, q: QueueIdx, kind: Kind, priority: i32, id: TaskId) -> u64 {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        let queue = self.queue(q);
        queue
            .kinds
            .entry(kind)
            .or_default()
            .levels
            .entry(Reverse(priority))
            .or_default()
            .push_back((id, ticket));
        queue.entries += 1;
        let first = queue.entries == 1;
        self.queued += 1;
        if first {
            self.refresh(q);
        }
        ticket
    }

    /// Entries in the queues, stale ones included (a bound on memory, not a count of ready tasks).
    pub fn queued_entries(&self) -> usize {
        self.queued
    }

    fn unlist(&mut self, id: WorkerId) {
        if let Some(c) = self.workers.get(&id)
            && let Some(set) = self.free.get_mut(&c.block)
        {
            set.remove(&(c.load_key(), id));
        }
    }

    fn relist(&mut self, id: WorkerId) {
        if let Some(c) = self.workers.get(&id)
            && c.has_room()
        {
            self.free
                .entry(c.block)
                .or_default()
                .insert((c.load_key(), id));
        }
    }

    /// Adds or replaces a worker.
    pub fn set_worker(&mut self, id: WorkerId, spec: WorkerSpec) {
        self.unlist(id);
        self.workers.insert(
            id,
            Capacity {
                block: spec.block,
                slots: spec.slots,
                prefetch: spec.prefetch,
                running: spec.running,
                handlers: spec.handlers,
                tags: spec.tags,
                custom_only: spec.custom_only,
                accepting: true,
            },
        );
        self.relist(id);
    }

    /// Stops or resumes giving tasks to a worker (draining, disconnected).
    pub fn set_accepting(&mut self, id: WorkerId, accepting: bool) {
        self.unlist(id);
        if let Some(c) = self.workers.get_mut(&id) {
            c.accepting = accepting;
        }
        self.relist(id);
    }

    /// Forgets a worker.
    pub fn remove_worker(&mut self, id: WorkerId) {
        self.unlist(id);
        self.workers.remove(&id);
    }

    /// A task of queue `q` that worker `id` held is no longer held: a slot of the worker and one
    /// of the queue's limit are free again.
    pub fn release(&mut self, id: WorkerId, q: QueueIdx) {
        self.unlist(id);
        if let Some(c) = self.workers.get_mut(&id) {
            c.running = c.running.saturating_sub(1);
        }
        self.relist(id);
        let queue = self.queue(q);
        queue.held = queue.held.saturating_sub(1);
        self.refresh(q);
    }

    /// Whether worker `w` has a free slot (not counting its prefetch room) and could run tasks
    /// of `kind`: where a task held beyond another worker's slots would start at once.
    pub fn free_slot_for(&self, w: WorkerId, kind: &Kind) -> bool {
        self.workers
            .get(&w)
            .is_some_and(|c| c.has_free_slot() && c.can_run(kind))
    }

    /// Free slots of worker `w` (not counting its prefetch room), 0 when it takes nothing.
    pub fn free_slots(&self, w: WorkerId) -> u32 {
        self.workers
            .get(&w)
            .filter(|c| c.accepting)
            .map_or(0, |c| c.slots.saturating_sub(c.running))
    }

    /// Running count of a worker, as the scheduler counts it.
    pub fn running(&self, id: WorkerId) -> Option<u32> {
        self.workers.get(&id).map(|c| c.running)
    }

    /// Whether some accepting worker, free or busy, could ever run tasks of `kind`.
    pub fn can_serve(&self, kind: &Kind) -> bool {
        self.workers
            .values()
            .any(|c| c.accepting && c.can_run(kind))
    }

    /// The next assignment: from the first queue in dispatch order that has a task some free
    /// worker can run, its best such task (highest task priority, then oldest), and the worker
    /// for it. The worker's slot and one of the queue's limit are taken. `look(task, ticket)`
    /// gives the task's preferred tags while the entry is current, `None` when it is stale.
    pub fn next<'t>(
        &mut self,
        mut look: impl FnMut(TaskId, u64) -> Option<&'t [Tag]>,
    ) -> Option<(TaskId, WorkerId, QueueIdx)> {
        if self.free.values().all(BTreeSet::is_empty) {
            return None;
        }
        let mut cursor: Option<(Reverse<i32>, u128, QueueIdx)> = None;
        loop {
            let key = match cursor {
                None => self.active.first().copied(),
                Some(k) => self
                    .active
                    .range((Bound::Excluded(k), Bound::Unbounded))
                    .next()
                    .copied(),
            }?;
            cursor = Some(key);
            let q = key.2;
            if let Some((kind, id, w)) = self.pick_in(q, &mut look) {
                self.take(q, &kind, w);
                return Some((id, w, q));
            }
        }
    }

    /// The best task of queue `q` that a free worker can run, with that worker; drops stale
    /// heads on the way (and the queue from the active set when nothing live is left).
    fn pick_in<'t>(
        &mut self,
        q: QueueIdx,
        look: &mut impl FnMut(TaskId, u64) -> Option<&'t [Tag]>,
    ) -> Option<(Kind, TaskId, WorkerId)> {
        let mut dropped = 0;
        let (workers, free) = (&self.workers, &self.free);
        let queue = &mut self.queues[q as usize];
        // The best head (task priority, then age) among the kinds that a free worker can run.
        let mut best: Option<Candidate> = None;
        for (kind, levels) in queue.kinds.iter_mut() {
            let Some((prio, ticket, id, prefer)) = levels.head(look, &mut dropped) else {
                continue;
            };
            let order = (Reverse(prio), ticket);
            if best.as_ref().is_some_and(|b| b.order <= order) {
                continue;
            }
            if let Some(worker) = pick_among(workers, free, kind, prefer) {
                best = Some(Candidate {
                    order,
                    kind,
                    id,
                    worker,
                });
            }
        }
        let pick = best.map(|b| (b.kind.clone(), b.id, b.worker));
        let queue = &mut self.queues[q as usize];
        queue.kinds.retain(|_, l| !l.levels.is_empty());
        if dropped > 0 {
            queue.entries -= dropped;
            self.queued -= dropped;
            self.refresh(q);
        }
        pick
    }

    /// Takes the head of `kind` in queue `q` for worker `w`.
    fn take(&mut self, q: QueueIdx, kind: &Kind, w: WorkerId) {
        let queue = &mut self.queues[q as usize];
        if let Some(levels) = queue.kinds.get_mut(kind) {
            levels.pop();
            if levels.levels.is_empty() {
                queue.kinds.remove(kind);
            }
        }
        queue.entries -= 1;
        queue.held += 1;
        // The dispatch costs the queue its stride; it re-enters the set behind its equals.
        if let Some(k) = queue.active.take() {
            self.active.remove(&k);
        }
        self.vtime = self.vtime.max(queue.pass);
        queue.pass += STRIDE / queue.weight as u128;
        self.queued -= 1;
        self.refresh(q);
        self.unlist(w);
        if let Some(c) = self.workers.get_mut(&w) {
            c.running += 1;
        }
        self.relist(w);
    }

    /// Drops stale entries so that memory follows the number of ready tasks.
    pub fn compact(&mut self, mut live: impl FnMut(TaskId, u64) -> bool) {
        for q in 0..self.queues.len() {
            let queue = &mut self.queues[q];
            let mut dropped = 0;
            for levels in queue.kinds.values_mut() {
                for fifo in levels.levels.values_mut() {
                    let before = fifo.len();
                    fifo.retain(|&(id, t)| live(id, t));
                    dropped += before - fifo.len();
                }
                levels.levels.retain(|_, f| !f.is_empty());
            }
            queue.kinds.retain(|_, l| !l.levels.is_empty());
            if dropped > 0 {
                queue.entries -= dropped;
                self.queued -= dropped;
                self.refresh(q as QueueIdx);
            }
        }
    }
}

/// The free worker for a task of `kind` that prefers `prefer`: among the eligible ones, those
/// with the most preferred tags, the least loaded of them; a worker with a free slot before any
/// whose room is only its prefetch, whatever their tags (a preference must not make a task wait
/// behind another one). Over borrowed parts, for use while a queue is borrowed.
fn pick_among(
    workers: &rustc_hash::FxHashMap<WorkerId, Capacity>,
    free: &HashMap<BlockType, BTreeSet<(u64, WorkerId)>>,
    kind: &Kind,
    prefer: &[Tag],
) -> Option<WorkerId> {
    let set = free.get(&kind.block)?;
    let mut eligible = set
        .iter()
        .map(|&(_, w)| w)
        .filter(|w| workers[w].can_run(kind));
    if prefer.is_empty() {
        return eligible.next();
    }
    let mut best: Option<(usize, WorkerId)> = None;
    let mut best_in_slot = false;
    // Least loaded first: the workers with a free slot come before the others.
    for w in eligible {
        let in_slot = workers[&w].has_free_slot();
        if best_in_slot && !in_slot {
            break;
        }
        let tags = &workers[&w].tags;
        let score = prefer.iter().filter(|t| tags.contains(t)).count();
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, w));
            best_in_slot = in_slot;
            if score == prefer.len() {
                break;
            }
        }
    }
    best.map(|(_, w)| w)
}

#[cfg(test)]
mod tests;
