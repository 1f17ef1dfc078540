//! The scheduler: which ready task runs next, and on which worker. Plain synchronous code.
//!
//! Ready tasks wait in one queue per kind of work ([`QueueKey`]: block type, and the handler for
//! custom tasks). A queue is a map from priority to a FIFO, so taking the next task costs
//! O(log priorities), however many tasks wait. Workers with a free slot sit in a set ordered by
//! load (running / slots), one set per block type, so the least loaded eligible worker is the
//! first one in order that serves the queue.
//!
//! Entries are removed lazily: a task that leaves `ready` by another path (paused, killed) keeps
//! its entry, and the caller's liveness check skips it when it reaches the head.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use tatzelwurm_protocol::{BlockType, TaskId, WorkerId};

/// One queue per kind of work.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueKey {
    /// Sync or async workers.
    pub block: BlockType,
    /// For custom tasks, the handler a worker must serve.
    pub handler: Option<String>,
}

#[derive(Default)]
struct Queue {
    /// Highest priority first; within one, the order of enqueueing.
    levels: BTreeMap<Reverse<i32>, VecDeque<(TaskId, u64)>>,
}

impl Queue {
    /// The head, after dropping stale entries.
    fn head(&mut self, live: &mut impl FnMut(TaskId, u64) -> bool) -> Option<(i32, u64, TaskId)> {
        while let Some(mut level) = self.levels.first_entry() {
            let prio = level.key().0;
            let fifo = level.get_mut();
            while let Some(&(id, ticket)) = fifo.front() {
                if live(id, ticket) {
                    return Some((prio, ticket, id));
                }
                fifo.pop_front();
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

/// A worker's capacity as the scheduler sees it.
#[derive(Clone, Debug)]
struct Capacity {
    block: BlockType,
    slots: u32,
    running: u32,
    handlers: Vec<String>,
    /// Active (not draining, connected).
    accepting: bool,
}

impl Capacity {
    /// Load as a fixed-point fraction, so that the ordering is exact.
    fn load_key(&self) -> u64 {
        ((self.running as u64) << 32) / self.slots.max(1) as u64
    }

    fn has_room(&self) -> bool {
        self.accepting && self.running < self.slots
    }
}

/// Ready queues and worker capacities.
#[derive(Default)]
pub struct Scheduler {
    queues: HashMap<QueueKey, Queue>,
    workers: HashMap<WorkerId, Capacity>,
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

    /// Queues a ready task; returns the ticket the task must keep to stay live in the queue.
    pub fn enqueue(&mut self, key: QueueKey, priority: i32, id: TaskId) -> u64 {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        self.queues
            .entry(key)
            .or_default()
            .levels
            .entry(Reverse(priority))
            .or_default()
            .push_back((id, ticket));
        self.queued += 1;
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
    pub fn set_worker(
        &mut self,
        id: WorkerId,
        block: BlockType,
        slots: u32,
        running: u32,
        handlers: Vec<String>,
    ) {
        self.unlist(id);
        self.workers.insert(
            id,
            Capacity {
                block,
                slots,
                running,
                handlers,
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

    /// A slot of the worker freed (a task ended, was lost or handed back).
    pub fn release(&mut self, id: WorkerId) {
        self.unlist(id);
        if let Some(c) = self.workers.get_mut(&id) {
            c.running = c.running.saturating_sub(1);
        }
        self.relist(id);
    }

    /// Running count of a worker, as the scheduler counts it.
    pub fn running(&self, id: WorkerId) -> Option<u32> {
        self.workers.get(&id).map(|c| c.running)
    }

    /// The least loaded worker with room that can run tasks of `key`.
    fn pick_worker(&self, key: &QueueKey) -> Option<WorkerId> {
        let set = self.free.get(&key.block)?;
        set.iter().map(|&(_, w)| w).find(|w| match &key.handler {
            None => true,
            Some(h) => self.workers[w].handlers.iter().any(|x| x == h),
        })
    }

    /// The next assignment: the best ready task (highest priority, then oldest in the queue) that
    /// some worker with room can run, and the least loaded such worker. The slot is taken.
    /// `live(task, ticket)` says whether a queue entry is still current.
    pub fn next(
        &mut self,
        mut live: impl FnMut(TaskId, u64) -> bool,
    ) -> Option<(TaskId, WorkerId)> {
        let mut blocked: Vec<QueueKey> = Vec::new();
        loop {
            let mut best: Option<(i32, u64, TaskId, QueueKey)> = None;
            for (key, q) in self.queues.iter_mut() {
                if blocked.contains(key) {
                    continue;
                }
                if let Some((prio, ticket, id)) = q.head(&mut live) {
                    let better = match &best {
                        None => true,
                        Some((bp, bt, ..)) => (Reverse(prio), ticket) < (Reverse(*bp), *bt),
                    };
                    if better {
                        best = Some((prio, ticket, id, key.clone()));
                    }
                }
            }
            let (_, _, id, key) = best?;
            match self.pick_worker(&key) {
                Some(w) => {
                    self.queues.get_mut(&key).expect("queue exists").pop();
                    self.queued -= 1;
                    self.unlist(w);
                    if let Some(c) = self.workers.get_mut(&w) {
                        c.running += 1;
                    }
                    self.relist(w);
                    return Some((id, w));
                }
                None => blocked.push(key),
            }
        }
    }

    /// Drops empty queues and stale heads so that memory follows the number of ready tasks.
    pub fn compact(&mut self, mut live: impl FnMut(TaskId, u64) -> bool) {
        for q in self.queues.values_mut() {
            for fifo in q.levels.values_mut() {
                let before = fifo.len();
                fifo.retain(|&(id, t)| live(id, t));
                self.queued -= before - fifo.len();
            }
            q.levels.retain(|_, f| !f.is_empty());
        }
        self.queues.retain(|_, q| !q.levels.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn key(block: BlockType) -> QueueKey {
        QueueKey {
            block,
            handler: None,
        }
    }

    fn drain(s: &mut Scheduler) -> Vec<(TaskId, WorkerId)> {
        std::iter::from_fn(|| s.next(|_, _| true)).collect()
    }

    #[test]
    fn highest_priority_first_then_fifo() {
        let mut s = Scheduler::new();
        let ids: Vec<TaskId> = (0..6).map(|_| TaskId::new()).collect();
        let prios = [0, 5, 0, 5, -1, 9];
        for (id, p) in ids.iter().zip(prios) {
            s.enqueue(key(BlockType::Async), p, *id);
        }
        s.set_worker(WorkerId(1), BlockType::Async, 100, 0, vec![]);
        let order: Vec<TaskId> = drain(&mut s).into_iter().map(|(t, _)| t).collect();
        assert_eq!(order, vec![ids[5], ids[1], ids[3], ids[0], ids[2], ids[4]]);
    }

    #[test]
    fn tasks_only_go_to_workers_of_their_type_and_handler() {
        let mut s = Scheduler::new();
        let sync_task = TaskId::new();
        let async_task = TaskId::new();
        let custom = TaskId::new();
        s.enqueue(key(BlockType::Sync), 0, sync_task);
        s.enqueue(key(BlockType::Async), 0, async_task);
        s.enqueue(
            QueueKey {
                block: BlockType::Async,
                handler: Some("render".into()),
            },
            10,
            custom,
        );
        s.set_worker(WorkerId(1), BlockType::Async, 10, 0, vec![]);
        assert_eq!(
            drain(&mut s),
            vec![(async_task, WorkerId(1))],
            "no sync task and no unserved handler"
        );
        s.set_worker(WorkerId(2), BlockType::Sync, 10, 0, vec![]);
        assert_eq!(drain(&mut s), vec![(sync_task, WorkerId(2))]);
        s.set_worker(WorkerId(3), BlockType::Async, 10, 0, vec!["render".into()]);
        assert_eq!(drain(&mut s), vec![(custom, WorkerId(3))]);
    }

    #[test]
    fn least_loaded_worker_wins() {
        let mut s = Scheduler::new();
        s.set_worker(WorkerId(1), BlockType::Sync, 4, 3, vec![]); // 75 %
        s.set_worker(WorkerId(2), BlockType::Sync, 10, 5, vec![]); // 50 %
        s.set_worker(WorkerId(3), BlockType::Sync, 2, 2, vec![]); // full
        let t = TaskId::new();
        s.enqueue(key(BlockType::Sync), 0, t);
        assert_eq!(s.next(|_, _| true), Some((t, WorkerId(2))));
        assert_eq!(s.running(WorkerId(2)), Some(6));
    }

    #[test]
    fn never_dispatches_past_slots() {
        let mut s = Scheduler::new();
        s.set_worker(WorkerId(1), BlockType::Sync, 2, 0, vec![]);
        s.set_worker(WorkerId(2), BlockType::Sync, 3, 0, vec![]);
        for _ in 0..20 {
            s.enqueue(key(BlockType::Sync), 0, TaskId::new());
        }
        let got = drain(&mut s);
        assert_eq!(got.len(), 5);
        assert_eq!(got.iter().filter(|(_, w)| *w == WorkerId(1)).count(), 2);
        assert_eq!(got.iter().filter(|(_, w)| *w == WorkerId(2)).count(), 3);
        s.release(WorkerId(1));
        assert_eq!(
            drain(&mut s).len(),
            1,
            "a freed slot takes exactly one more"
        );
    }

    #[test]
    fn draining_worker_gets_nothing() {
        let mut s = Scheduler::new();
        s.set_worker(WorkerId(1), BlockType::Async, 2, 0, vec![]);
        s.set_accepting(WorkerId(1), false);
        s.enqueue(key(BlockType::Async), 0, TaskId::new());
        assert!(s.next(|_, _| true).is_none());
        s.set_accepting(WorkerId(1), true);
        assert!(s.next(|_, _| true).is_some());
    }

    #[test]
    fn stale_entries_are_skipped() {
        let mut s = Scheduler::new();
        let a = TaskId::new();
        let b = TaskId::new();
        let ta = s.enqueue(key(BlockType::Async), 0, a);
        s.enqueue(key(BlockType::Async), 0, b);
        s.set_worker(WorkerId(1), BlockType::Async, 5, 0, vec![]);
        let dead: HashSet<u64> = [ta].into();
        assert_eq!(s.next(|_, t| !dead.contains(&t)), Some((b, WorkerId(1))));
        assert!(s.next(|_, t| !dead.contains(&t)).is_none());
    }

    #[test]
    fn blocked_queue_does_not_hide_a_runnable_one() {
        let mut s = Scheduler::new();
        let hi = TaskId::new();
        let lo = TaskId::new();
        s.enqueue(
            QueueKey {
                block: BlockType::Async,
                handler: Some("gpu".into()),
            },
            100,
            hi,
        );
        s.enqueue(key(BlockType::Async), 0, lo);
        s.set_worker(WorkerId(1), BlockType::Async, 1, 0, vec![]);
        assert_eq!(s.next(|_, _| true), Some((lo, WorkerId(1))));
    }

    #[test]
    fn compact_drops_stale_entries() {
        let mut s = Scheduler::new();
        for _ in 0..10 {
            s.enqueue(key(BlockType::Async), 0, TaskId::new());
        }
        s.compact(|_, t| t % 2 == 0);
        assert_eq!(s.queued_entries(), 5);
    }
}
