//! The coordinator's tables and their one owner: every input (a request, a worker message, a
//! connection change, the passing of time) is applied here, synchronously, producing store writes
//! and outgoing messages. No I/O happens here; `server` feeds it and carries out what it produces.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use tatzelwurm_protocol::{
    ActionerRequest, AttemptRef, AttemptReport, CoordinatorToActioner, CoordinatorToWorker,
    Dispatch, ErrorKind, ErrorReply, EventFilter, MAX_ADD_TASKS, Reply, RequestId, Selector,
    StateCount, Tag, TagCounts, TaskEvent, TaskId, TaskInfo, TaskSpec, TaskState, TaskStatus,
    WorkerHello, WorkerId, WorkerInfo, WorkerState, WorkerToCoordinator,
};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::scheduler::{QueueKey, Scheduler};
use crate::task::{ReportFate, Task, WorkerOrder};

/// A connection's number, unique for the life of the process.
pub type ConnId = u64;

/// A message for one connection.
#[derive(Clone, Debug, PartialEq)]
pub enum Out {
    /// To an actioner.
    Actioner(CoordinatorToActioner),
    /// To a worker.
    Worker(CoordinatorToWorker),
    /// Close the connection, for the logged reason.
    Close(String),
}

/// What must be made durable, and the messages that may only leave once it is.
#[derive(Debug, Default)]
pub struct Batch {
    /// Tasks to write, whole.
    pub tasks: Vec<TaskInfo>,
    /// Tasks to delete.
    pub removed: Vec<TaskId>,
    /// Workers to write.
    pub workers: Vec<WorkerInfo>,
    /// Workers to delete (lost for longer than the config keeps them).
    pub removed_workers: Vec<WorkerId>,
    /// Sent after the commit, in order.
    pub sends: Vec<(ConnId, Out)>,
}

impl Batch {
    /// Whether the batch writes anything to the store.
    pub fn has_writes(&self) -> bool {
        !(self.tasks.is_empty()
            && self.removed.is_empty()
            && self.workers.is_empty()
            && self.removed_workers.is_empty())
    }
}

/// Tunables of the core.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// How long a silent or disconnected worker keeps its tasks.
    pub lease_ms: u64,
    /// Send the tasks of a lost worker to `paused` instead of `ready`.
    pub lost_to_paused: bool,
    /// A worker lost for this long, holding nothing, is forgotten (removed from the table and
    /// the store); `None` keeps every worker.
    pub forget_lost_ms: Option<u64>,
    /// A finished task (completed, failed, killed) is removed this long after it ended; `None`
    /// keeps every task until somebody removes it.
    pub remove_finished_ms: Option<u64>,
    /// A gap between two ticks longer than this means the coordinator itself did not run
    /// (suspended, stopped): workers then get a fresh lease. `None` trusts every gap (tests that
    /// jump in time).
    pub stall_ms: Option<u64>,
    /// Most items in one reply that lists tasks (a `subscribed` snapshot, the ids a change
    /// touched); a longer list goes in several parts, so that each fits in a frame.
    pub reply_chunk: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            lease_ms: 30_000,
            lost_to_paused: false,
            forget_lost_ms: Some(24 * 3600 * 1000),
            remove_finished_ms: None,
            stall_ms: None,
            reply_chunk: 100_000,
        }
    }
}

enum Conn {
    Actioner,
    Worker(WorkerId),
}

struct Worker {
    info: WorkerInfo,
    conn: Option<ConnId>,
    /// Since when it is disconnected or silent; its lease runs from here.
    lost_since: Option<u64>,
    /// Tasks it holds (assigned, running, paused on it).
    held: HashSet<TaskId>,
}

impl Worker {
    /// What is stored and shown, with `running` derived from what it holds.
    fn info(&self) -> WorkerInfo {
        WorkerInfo {
            running: self.held.len() as u32,
            ..self.info.clone()
        }
    }
}

struct Subscription {
    conn: ConnId,
    request: RequestId,
    ids: HashSet<TaskId>,
    tags: Vec<Tag>,
    all: bool,
}

/// Tasks finished per second over the last minute, in 60 one-second buckets.
struct FinishRate {
    /// (second, tasks finished in it), indexed by second modulo 60.
    buckets: [(u64, u64); 60],
}

impl Default for FinishRate {
    fn default() -> Self {
        FinishRate {
            buckets: [(0, 0); 60],
        }
    }
}

impl FinishRate {
    fn add(&mut self, now_ms: u64) {
        let sec = now_ms / 1000;
        let b = &mut self.buckets[(sec % 60) as usize];
        if b.0 != sec {
            *b = (sec, 0);
        }
        b.1 += 1;
    }

    fn last_minute(&self, now_ms: u64) -> u64 {
        let sec = now_ms / 1000;
        self.buckets
            .iter()
            .filter(|(s, _)| sec.saturating_sub(*s) < 60)
            .map(|(_, n)| n)
            .sum()
    }
}

/// The tables: tasks, workers, connections, subscriptions, and the scheduler over them.
pub struct Core {
    cfg: CoreConfig,
    /// Boxed: a B-tree leaf is about half full after ascending inserts (ids grow with time),
    /// and an empty slot costs the whole value; boxed, it costs a pointer.
    tasks: BTreeMap<TaskId, Box<Task>>,
    counts: [u64; 8],
    workers: BTreeMap<WorkerId, Worker>,
    next_worker: u64,
    /// The time of the last tick. A gap far longer than ticks leave means that the coordinator
    /// itself did not run (a suspended laptop, SIGSTOP, a paused VM): the workers' silence is then
    /// its own, and they get a fresh lease instead of losing their tasks.
    last_tick: Option<u64>,
    conns: HashMap<ConnId, Conn>,
    subs: Vec<Subscription>,
    sched: Scheduler,
    dirty_tasks: HashSet<TaskId>,
    /// Tasks changed in a way nobody waits on (an attempt started): written with the next batch
    /// that has something else to write, or at the next tick, never in a commit of their own.
    lazy_tasks: HashSet<TaskId>,
    /// Finished tasks by the time they ended, when they expire (`remove_finished_ms`). An entry
    /// whose task has since changed (retried, removed) is stale and skipped.
    ended: BTreeSet<(u64, TaskId)>,
    removed: Vec<TaskId>,
    dirty_workers: HashSet<WorkerId>,
    removed_workers: Vec<WorkerId>,
    durable: Vec<(ConnId, Out)>,
    immediate: Vec<(ConnId, Out)>,
    rate: FinishRate,
    store_ok: bool,
    shutting_down: bool,
}

fn idx(s: TaskState) -> usize {
    s as usize
}

fn err(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(kind, message)
}

/// Splits a reply whose list grows with the table (the ids a `kill --all` changed, a snapshot)
/// into parts of at most `chunk` items, so that each fits in a frame; every part but the last
/// says `more`. Other replies pass whole.
fn split_reply(reply: Reply, chunk: usize) -> Vec<Reply> {
    fn parts<T>(
        mut items: Vec<T>,
        chunk: usize,
        make: impl Fn(Vec<T>, bool) -> Reply,
    ) -> Vec<Reply> {
        let chunk = chunk.max(1);
        let last = items.split_off(items.len().saturating_sub(1) / chunk * chunk);
        let mut out = Vec::with_capacity(items.len() / chunk + 1);
        let mut rest = items.into_iter().peekable();
        while rest.peek().is_some() {
            out.push(make(rest.by_ref().take(chunk).collect(), true));
        }
        out.push(make(last, false));
        out
    }
    match reply {
        Reply::Subscribed { tasks, .. } => parts(tasks, chunk, |tasks, more| Reply::Subscribed {
            tasks,
            more,
        }),
        Reply::Changed { ids, .. } => parts(ids, chunk, |ids, more| Reply::Changed { ids, more }),
        other => vec![other],
    }
}

fn has_tags(task: &Task, tags: &[Tag]) -> bool {
    tags.iter().all(|t| task.info.spec.tags.contains(t))
}

fn queue_key(spec: &TaskSpec) -> QueueKey {
    QueueKey {
        block: spec.block,
        handler: spec.payload.handler().map(str::to_string),
    }
}

impl Core {
    /// An empty coordinator.
    pub fn new(cfg: CoreConfig) -> Self {
        Core {
            cfg,
            tasks: BTreeMap::new(),
            counts: [0; 8],
            workers: BTreeMap::new(),
            next_worker: 1,
            last_tick: None,
            conns: HashMap::new(),
            subs: Vec::new(),
            sched: Scheduler::new(),
            dirty_tasks: HashSet::new(),
            lazy_tasks: HashSet::new(),
            ended: BTreeSet::new(),
            removed: Vec::new(),
            dirty_workers: HashSet::new(),
            removed_workers: Vec::new(),
            durable: Vec::new(),
            immediate: Vec::new(),
            rate: FinishRate::default(),
            store_ok: true,
            shutting_down: false,
        }
    }

    /// Rebuilds the tables from what the store holds after a restart. Every worker starts lost,
    /// with a fresh lease: the tasks it held wait for it to reconnect and reattach them.
    pub fn restore(
        cfg: CoreConfig,
        tasks: Vec<TaskInfo>,
        workers: Vec<WorkerInfo>,
        now: u64,
    ) -> Self {
        let mut core = Core::new(cfg);
        for mut info in workers {
            core.next_worker = core.next_worker.max(info.id.0 + 1);
            info.state = WorkerState::Lost;
            info.running = 0;
            let id = info.id;
            core.workers.insert(
                id,
                Worker {
                    info,
                    conn: None,
                    lost_since: Some(now),
                    held: HashSet::new(),
                },
            );
        }
        for info in tasks {
            // Forgotten workers leave their ids in attempts: never hand one out again.
            for a in &info.attempts {
                core.next_worker = core.next_worker.max(a.worker.0 + 1);
            }
            let id = info.id;
            let mut task = Task { info, ticket: 0 };
            if let Some(w) = task.holder() {
                match core.workers.get_mut(&w) {
                    Some(worker) => {
                        worker.held.insert(id);
                    }
                    None => {
                        warn!(task = %id, worker = %w, "task held by an unknown worker; requeued");
                        task.lose(
                            "held by a worker the store does not know",
                            core.cfg.lost_to_paused,
                            now,
                        );
                        core.dirty_tasks.insert(id);
                    }
                }
            }
            core.counts[idx(task.state())] += 1;
            core.note_ended(id, task.state(), task.info.times.ended_ms);
            if task.state() == TaskState::Ready {
                task.ticket =
                    core.sched
                        .enqueue(queue_key(&task.info.spec), task.info.spec.priority, id);
            }
            core.tasks.insert(id, Box::new(task));
        }
        core
    }

    /// Tasks per state.
    pub fn counts(&self) -> Vec<StateCount> {
        TaskState::ALL
            .iter()
            .map(|&state| StateCount {
                state,
                count: self.counts[idx(state)],
            })
            .collect()
    }

    /// A task, for tests and diagnostics.
    pub fn task(&self, id: TaskId) -> Option<&TaskInfo> {
        self.tasks.get(&id).map(|t| &t.info)
    }

    /// Tells the core whether the store can write; while it cannot, changes are refused.
    pub fn set_store_ok(&mut self, ok: bool) {
        self.store_ok = ok;
    }

    /// From now on, refuse changes and let workers finish.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// Messages that may leave now, before the current batch is durable.
    pub fn take_immediate(&mut self) -> Vec<(ConnId, Out)> {
        std::mem::take(&mut self.immediate)
    }

    /// What to write next and the messages waiting on it; `None` when there is nothing. Lazy
    /// changes alone make no batch: the next batch or [`Core::tick`] takes them.
    pub fn take_batch(&mut self) -> Option<Batch> {
        // Lazy changes wait for company, except when the coordinator is about to stop.
        if self.shutting_down {
            self.flush_lazy();
        }
        if self.dirty_tasks.is_empty()
            && self.removed.is_empty()
            && self.dirty_workers.is_empty()
            && self.removed_workers.is_empty()
            && self.durable.is_empty()
        {
            return None;
        }
        self.flush_lazy();
        let tasks = self
            .dirty_tasks
            .drain()
            .filter_map(|id| self.tasks.get(&id).map(|t| t.info.clone()))
            .collect();
        let workers = self
            .dirty_workers
            .drain()
            .filter_map(|id| self.workers.get(&id).map(Worker::info))
            .collect();
        Some(Batch {
            tasks,
            removed: std::mem::take(&mut self.removed),
            workers,
            removed_workers: std::mem::take(&mut self.removed_workers),
            sends: std::mem::take(&mut self.durable),
        })
    }

    /// Puts a batch whose commit failed back, so that its changes are written (as they are by
    /// then) and its messages sent by a later batch, ahead of newer ones.
    pub fn requeue(&mut self, batch: Batch) {
        self.dirty_tasks.extend(
            batch
                .tasks
                .iter()
                .map(|t| t.id)
                .filter(|id| self.tasks.contains_key(id)),
        );
        self.dirty_workers.extend(
            batch
                .workers
                .iter()
                .map(|w| w.id)
                .filter(|id| self.workers.contains_key(id)),
        );
        let mut removed_workers = batch.removed_workers;
        removed_workers.append(&mut self.removed_workers);
        self.removed_workers = removed_workers;
        let mut removed = batch.removed;
        removed.append(&mut self.removed);
        self.removed = removed;
        // Replies to actioners are answered now: the change was not acknowledged. It stays in
        // memory and is written when the store recovers, so a client that retries may add twice
        // (at-least-once); events and worker messages wait for that commit.
        let mut sends = Vec::with_capacity(batch.sends.len());
        // A reply in parts gets one error, not one per part.
        let mut refused: HashSet<(ConnId, RequestId)> = HashSet::new();
        for (conn, out) in batch.sends {
            match out {
                Out::Actioner(CoordinatorToActioner::Reply {
                    request,
                    body: Reply::Added { .. } | Reply::Changed { .. },
                }) => {
                    if !refused.insert((conn, request)) {
                        continue;
                    }
                    let e = err(
                        ErrorKind::StoreUnavailable,
                        "the store failed while writing this change, so it is not acknowledged; it may still be \
                         written when the store recovers: check with `task list` before retrying",
                    );
                    self.immediate.push((
                        conn,
                        Out::Actioner(CoordinatorToActioner::Reply {
                            request,
                            body: Reply::Error(e),
                        }),
                    ));
                }
                other => sends.push((conn, other)),
            }
        }
        sends.append(&mut self.durable);
        self.durable = sends;
    }

    /// How many task writes wait for the next batch (for backpressure).
    pub fn pending_writes(&self) -> usize {
        self.dirty_tasks.len() + self.lazy_tasks.len() + self.removed.len()
    }

    /// Goodbye messages for every connection.
    pub fn shutdown_messages(&self, reason: &str) -> Vec<(ConnId, Out)> {
        self.conns
            .iter()
            .map(|(&c, kind)| {
                let msg = match kind {
                    Conn::Actioner => Out::Actioner(CoordinatorToActioner::Shutdown {
                        reason: reason.into(),
                    }),
                    Conn::Worker(_) => Out::Worker(CoordinatorToWorker::Shutdown {
                        reason: reason.into(),
                    }),
                };
                (c, msg)
            })
            .collect()
    }

    // ---- connections -------------------------------------------------------------------

    /// An actioner finished its handshake.
    pub fn connect_actioner(&mut self, conn: ConnId) {
        self.conns.insert(conn, Conn::Actioner);
    }

    /// A worker finished its handshake; returns the id it is given (its previous one when it
    /// presents one the table knows and that is not connected elsewhere).
    pub fn connect_worker(&mut self, conn: ConnId, hello: WorkerHello, now: u64) -> WorkerId {
        let reuse = hello.previous_id.filter(|id| self.workers.contains_key(id));
        // A worker may notice a dead connection before the coordinator does: its new connection
        // takes over the id, and the old, half-open one is closed.
        if let Some(old) = reuse
            .and_then(|id| self.workers.get(&id))
            .and_then(|w| w.conn)
        {
            warn!(worker = %reuse.unwrap_or(WorkerId(0)), old_conn = old, "worker reconnected over a stale connection");
            self.conns.remove(&old);
            self.immediate.push((
                old,
                Out::Close("replaced by the worker's new connection".into()),
            ));
        }
        let id = reuse.unwrap_or_else(|| {
            let id = WorkerId(self.next_worker);
            self.next_worker += 1;
            id
        });
        let held = self.workers.remove(&id).map(|w| w.held).unwrap_or_default();
        let info = WorkerInfo {
            id,
            name: hello.name,
            host: hello.host,
            block: hello.block,
            slots: hello.slots,
            running: held.len() as u32,
            tags: hello.tags,
            handlers: hello.handlers,
            connected_ms: now,
            last_heartbeat_ms: now,
            state: WorkerState::Active,
        };
        self.sched.set_worker(
            id,
            info.block,
            info.slots,
            held.len() as u32,
            info.handlers.clone(),
        );
        info!(worker = %id, name = %info.name, block = %info.block, slots = info.slots, reattaching = held.len(), "worker connected");
        self.workers.insert(
            id,
            Worker {
                info,
                conn: Some(conn),
                lost_since: None,
                held,
            },
        );
        self.conns.insert(conn, Conn::Worker(id));
        self.dirty_workers.insert(id);
        id
    }

    /// A connection closed (or was closed).
    pub fn disconnect(&mut self, conn: ConnId, now: u64) {
        match self.conns.remove(&conn) {
            Some(Conn::Actioner) => self.subs.retain(|s| s.conn != conn),
            Some(Conn::Worker(id)) => {
                if let Some(w) = self.workers.get_mut(&id)
                    && w.conn == Some(conn)
                {
                    if w.info.state == WorkerState::Draining && w.held.is_empty() {
                        // It said it would leave and has nothing left to report: it is gone, not
                        // lost.
                        info!(worker = %id, "worker drained and left");
                        self.forget_worker(id);
                        return;
                    }
                    w.conn = None;
                    w.info.state = WorkerState::Lost;
                    w.lost_since.get_or_insert(now);
                    info!(worker = %id, holding = w.held.len(), "worker disconnected; its lease runs");
                    self.sched.set_accepting(id, false);
                    self.dirty_workers.insert(id);
                }
            }
            None => {}
        }
    }

    /// Lets time pass: workers silent past their lease lose their connection, and workers gone
    /// past their lease lose their tasks.
    pub fn tick(&mut self, now: u64) {
        let lease = self.cfg.lease_ms;
        if let (Some(last), Some(stall)) = (self.last_tick, self.cfg.stall_ms)
            && now.saturating_sub(last) > stall
        {
            warn!(
                asleep_ms = now - last,
                "the coordinator did not run for a while; every worker gets a fresh lease"
            );
            for w in self.workers.values_mut() {
                if w.conn.is_some() {
                    w.info.last_heartbeat_ms = w.info.last_heartbeat_ms.max(now);
                }
                if let Some(since) = w.lost_since.as_mut() {
                    *since = now;
                }
            }
        }
        self.last_tick = Some(now);
        self.flush_lazy();
        self.remove_expired(now);
        let silent: Vec<(WorkerId, ConnId, u64)> = self
            .workers
            .values()
            .filter_map(|w| {
                let c = w.conn?;
                (now.saturating_sub(w.info.last_heartbeat_ms) > lease).then_some((
                    w.info.id,
                    c,
                    w.info.last_heartbeat_ms,
                ))
            })
            .collect();
        for (id, conn, last) in silent {
            warn!(worker = %id, silent_ms = now - last, "worker silent past its lease; dropping it");
            self.immediate.push((
                conn,
                Out::Close(format!("no heartbeat for {} ms", now - last)),
            ));
            self.disconnect(conn, now);
            if let Some(w) = self.workers.get_mut(&id) {
                w.lost_since = Some(last);
            }
        }
        let expired: Vec<WorkerId> = self
            .workers
            .values()
            .filter(|w| w.conn.is_none() && !w.held.is_empty())
            .filter(|w| w.lost_since.is_some_and(|t| now.saturating_sub(t) >= lease))
            .map(|w| w.info.id)
            .collect();
        for id in expired {
            let held: Vec<TaskId> = self
                .workers
                .get_mut(&id)
                .map(|w| w.held.drain().collect())
                .unwrap_or_default();
            warn!(worker = %id, tasks = held.len(), "lease expired; requeueing its tasks");
            for t in held {
                self.sched.release(id);
                self.lose_task(t, &format!("worker {id} lost: lease expired"), now);
            }
            self.dirty_workers.insert(id);
        }
        if let Some(keep) = self.cfg.forget_lost_ms {
            let forgotten: Vec<WorkerId> = self
                .workers
                .values()
                .filter(|w| w.conn.is_none() && w.held.is_empty())
                .filter(|w| w.lost_since.is_some_and(|t| now.saturating_sub(t) >= keep))
                .map(|w| w.info.id)
                .collect();
            for id in forgotten {
                info!(worker = %id, "worker lost for too long; forgotten");
                self.forget_worker(id);
            }
        }
    }

    /// Removes a worker that holds nothing from the table and the store. Its id is not handed
    /// out again: attempts keep naming it.
    fn forget_worker(&mut self, id: WorkerId) {
        self.workers.remove(&id);
        self.sched.remove_worker(id);
        self.dirty_workers.remove(&id);
        self.removed_workers.push(id);
    }

    fn lose_task(&mut self, id: TaskId, reason: &str, now: u64) {
        let to_paused = self.cfg.lost_to_paused;
        if let Some(task) = self.tasks.get_mut(&id) {
            let before = task.state();
            task.lose(reason, to_paused, now);
            self.changed(id, before, now);
        }
    }

    // ---- bookkeeping -------------------------------------------------------------------

    /// Records that a task changed: counts, queue, events, the next batch.
    /// Records a change that must be durable before anything waiting on it is sent.
    fn changed(&mut self, id: TaskId, before: TaskState, now: u64) {
        if self.transition(id, before, now, false) {
            self.dirty_tasks.insert(id);
            self.lazy_tasks.remove(&id);
        }
    }

    /// Records a change nobody waits on: written lazily, its event sent at once.
    fn changed_lazily(&mut self, id: TaskId, before: TaskState, now: u64) {
        if self.transition(id, before, now, true) && !self.dirty_tasks.contains(&id) {
            self.lazy_tasks.insert(id);
        }
    }

    /// Deletes a task from the table and the store.
    fn remove_task(&mut self, id: TaskId) {
        if let Some(t) = self.tasks.remove(&id) {
            self.counts[idx(t.state())] -= 1;
            self.dirty_tasks.remove(&id);
            self.lazy_tasks.remove(&id);
            self.removed.push(id);
        }
    }

    /// Remembers when a finished task ended, if finished tasks expire.
    fn note_ended(&mut self, id: TaskId, state: TaskState, ended_at: Option<u64>) {
        if self.cfg.remove_finished_ms.is_some()
            && state.is_final()
            && let Some(at) = ended_at
        {
            self.ended.insert((at, id));
        }
    }

    /// Removes the finished tasks that ended at least `remove_finished_ms` ago.
    fn remove_expired(&mut self, now: u64) {
        let Some(keep) = self.cfg.remove_finished_ms else {
            return;
        };
        let mut waiting = Vec::new();
        while let Some(&(at, id)) = self.ended.first() {
            if now.saturating_sub(at) < keep {
                break;
            }
            self.ended.pop_first();
            let Some(task) = self.tasks.get(&id) else {
                continue;
            };
            if !task.state().is_final() || task.info.times.ended_ms != Some(at) {
                continue; // retried since: a later end brings it back
            }
            if task.holder().is_some() {
                // Killed, and its worker has not yet said it stopped: look again next time.
                waiting.push((at, id));
                continue;
            }
            debug!(task = %id, "finished task expired; removed");
            self.remove_task(id);
        }
        self.ended.extend(waiting);
    }

    /// Moves the lazy changes into the next write.
    fn flush_lazy(&mut self) {
        self.dirty_tasks.extend(self.lazy_tasks.drain());
    }

    /// Counts, queues and announces a task's move from `before` to its state now; false when
    /// the task is not in the table.
    fn transition(&mut self, id: TaskId, before: TaskState, now: u64, at_once: bool) -> bool {
        let Some(task) = self.tasks.get_mut(&id) else {
            return false;
        };
        let after = task.state();
        if after == before {
            return true;
        }
        self.counts[idx(before)] -= 1;
        self.counts[idx(after)] += 1;
        if after == TaskState::Ready {
            task.ticket =
                self.sched
                    .enqueue(queue_key(&task.info.spec), task.info.spec.priority, id);
        }
        let ended_at = task.info.times.ended_ms;
        if after.is_final() {
            self.rate.add(now);
            self.note_ended(id, after, ended_at);
        }
        self.emit(id, now, at_once);
        true
    }

    /// Sends the task's event to its subscribers: with the next commit, or `at_once`.
    fn emit(&mut self, id: TaskId, now: u64, at_once: bool) {
        if self.subs.is_empty() {
            return;
        }
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        let event = TaskEvent {
            id,
            state: task.state(),
            at_ms: now,
            attempt: task.info.attempts.len() as u32,
        };
        for s in &self.subs {
            if s.all || s.ids.contains(&id) || (!s.tags.is_empty() && has_tags(task, &s.tags)) {
                let msg = CoordinatorToActioner::Event {
                    subscription: s.request,
                    event: event.clone(),
                };
                let queue = if at_once {
                    &mut self.immediate
                } else {
                    &mut self.durable
                };
                queue.push((s.conn, Out::Actioner(msg)));
            }
        }
    }

    fn send_worker(&mut self, worker: WorkerId, msg: CoordinatorToWorker) {
        if let Some(conn) = self.workers.get(&worker).and_then(|w| w.conn) {
            self.durable.push((conn, Out::Worker(msg)));
        }
    }

    // ---- scheduling --------------------------------------------------------------------

    /// Dispatches ready tasks while workers have room. Called after every batch of inputs.
    pub fn schedule(&mut self, now: u64) -> usize {
        let mut n = 0;
        loop {
            // Picks are gathered in chunks, then applied, so that `tasks` is borrowed by one at a time.
            let tasks = &self.tasks;
            let mut picks = Vec::new();
            while picks.len() < 1024 {
                let live = |id: TaskId, ticket: u64| {
                    tasks
                        .get(&id)
                        .is_some_and(|t| t.state() == TaskState::Ready && t.ticket == ticket)
                };
                match self.sched.next(live) {
                    Some(pick) => picks.push(pick),
                    None => break,
                }
            }
            if picks.is_empty() {
                return n;
            }
            for (id, w) in picks {
                let (Some(worker), Some(task)) =
                    (self.workers.get_mut(&w), self.tasks.get_mut(&id))
                else {
                    continue;
                };
                let before = task.state();
                let attempt = task.assign(w, &worker.info.name, now);
                worker.held.insert(id);
                let spec = &task.info.spec;
                let dispatch = Dispatch {
                    attempt,
                    name: spec.name.clone(),
                    payload: spec.payload.clone(),
                    timeout_ms: spec.timeout_ms,
                    user_key: spec.user_key.clone(),
                    user_data: spec.user_data.clone(),
                };
                if let Some(conn) = worker.conn {
                    self.durable.push((
                        conn,
                        Out::Worker(CoordinatorToWorker::Dispatch(Box::new(dispatch))),
                    ));
                }
                self.changed(id, before, now);
                n += 1;
            }
        }
    }

    // ---- actioners ---------------------------------------------------------------------

    /// Handles one actioner request; the reply is queued (after the commit for changes).
    pub fn actioner(&mut self, conn: ConnId, request: RequestId, body: ActionerRequest, now: u64) {
        let mutating = matches!(
            body,
            ActionerRequest::Add { .. }
                | ActionerRequest::Play { .. }
                | ActionerRequest::Pause { .. }
                | ActionerRequest::Kill { .. }
                | ActionerRequest::Remove { .. }
                | ActionerRequest::Retry { .. }
        );
        let refusal = if !mutating {
            None
        } else if self.shutting_down {
            Some(err(
                ErrorKind::ShuttingDown,
                "the coordinator is shutting down; nothing was changed",
            ))
        } else if !self.store_ok {
            Some(err(
                ErrorKind::StoreUnavailable,
                "the store cannot write right now; nothing was accepted, retry later",
            ))
        } else {
            None
        };
        let result = match refusal {
            Some(e) => Err(e),
            None => self.answer(conn, request, body, now),
        };
        let (reply, durable) = match result {
            Ok((reply, durable)) => (reply, durable),
            Err(e) => (Reply::Error(e), false),
        };
        // Every part leaves in order, the parts of a snapshot before any event they precede.
        let queue = if durable {
            &mut self.durable
        } else {
            &mut self.immediate
        };
        for body in split_reply(reply, self.cfg.reply_chunk) {
            queue.push((
                conn,
                Out::Actioner(CoordinatorToActioner::Reply { request, body }),
            ));
        }
    }

    /// The reply, and whether it must wait for the commit.
    fn answer(
        &mut self,
        conn: ConnId,
        request: RequestId,
        body: ActionerRequest,
        now: u64,
    ) -> Result<(Reply, bool), ErrorReply> {
        match body {
            ActionerRequest::Add { tasks, play } => {
                if tasks.len() > MAX_ADD_TASKS {
                    return Err(err(
                        ErrorKind::LimitExceeded,
                        format!(
                            "an add of {} tasks; at most {MAX_ADD_TASKS} per request, so split \
                             it (nothing was added)",
                            tasks.len()
                        ),
                    ));
                }
                for (i, spec) in tasks.iter().enumerate() {
                    spec.validate()
                        .map_err(|e| err(ErrorKind::InvalidRequest, format!("task {i}: {e}")))?;
                }
                let mut ids = Vec::with_capacity(tasks.len());
                for spec in tasks {
                    let id = TaskId(Uuid::now_v7());
                    let mut task = Task::new(id, spec, now, play);
                    self.counts[idx(task.state())] += 1;
                    if play {
                        task.ticket = self.sched.enqueue(
                            queue_key(&task.info.spec),
                            task.info.spec.priority,
                            id,
                        );
                    }
                    self.tasks.insert(id, Box::new(task));
                    self.dirty_tasks.insert(id);
                    self.emit(id, now, false);
                    ids.push(id);
                }
                Ok((Reply::Added { ids }, true))
            }
            ActionerRequest::Play { selector } => {
                self.apply(selector, "play", Task::check_play, Task::play, now)
            }
            ActionerRequest::Pause { selector } => {
                self.apply(selector, "pause", Task::check_pause, Task::pause, now)
            }
            ActionerRequest::Kill { selector } => {
                self.apply(selector, "kill", Task::check_kill, Task::kill, now)
            }
            ActionerRequest::Retry { selector, attempts } => {
                if attempts == 0 {
                    return Err(err(
                        ErrorKind::InvalidRequest,
                        "retry: attempts must be at least 1",
                    ));
                }
                // `all` retries what failed; a killed task comes back only when named.
                let check = match selector {
                    Selector::All => |t: &Task| match t.state() {
                        TaskState::Failed => t.check_retry(),
                        s => Err(err(ErrorKind::InvalidState, s.to_string())),
                    },
                    Selector::Ids(_) => Task::check_retry,
                };
                self.apply(
                    selector,
                    "retry",
                    check,
                    |t, now| t.retry(attempts, now),
                    now,
                )
            }
            ActionerRequest::Remove { selector } => {
                let ids = self.select(&selector, "remove", Task::check_remove)?;
                for id in &ids {
                    self.remove_task(*id);
                }
                Ok((Reply::Changed { ids, more: false }, true))
            }
            ActionerRequest::List {
                states,
                tags,
                limit,
            } => {
                let limit = limit.map_or(usize::MAX, |l| l as usize);
                let tasks = self
                    .tasks
                    .values()
                    .rev()
                    .filter(|t| states.is_empty() || states.contains(&t.state()))
                    .filter(|t| has_tags(t, &tags))
                    .take(limit)
                    .map(|t| t.summary())
                    .collect();
                Ok((
                    Reply::Tasks {
                        tasks,
                        counts: self.counts(),
                    },
                    false,
                ))
            }
            ActionerRequest::Show { id } => {
                let id = self.resolve(&id)?;
                Ok((
                    Reply::Task {
                        task: Box::new(self.tasks[&id].info.clone()),
                    },
                    false,
                ))
            }
            ActionerRequest::Workers => {
                let workers = self.workers.values().map(Worker::info).collect();
                Ok((Reply::Workers { workers }, false))
            }
            ActionerRequest::Summary => {
                let workers_connected =
                    self.workers.values().filter(|w| w.conn.is_some()).count() as u32;
                Ok((
                    Reply::Summary {
                        counts: self.counts(),
                        workers_connected,
                        finished_last_minute: self.rate.last_minute(now),
                    },
                    false,
                ))
            }
            ActionerRequest::Breakdown { key } => {
                let mut by_value: BTreeMap<&str, [u64; 8]> = BTreeMap::new();
                for t in self.tasks.values() {
                    for tag in t.info.spec.tags.iter().filter(|tag| tag.key == key) {
                        by_value.entry(tag.value.as_str()).or_insert([0; 8])[idx(t.state())] += 1;
                    }
                }
                let values = by_value
                    .into_iter()
                    .map(|(value, counts)| TagCounts {
                        value: value.to_string(),
                        counts: TaskState::ALL
                            .iter()
                            .filter(|s| counts[idx(**s)] > 0)
                            .map(|&state| StateCount {
                                state,
                                count: counts[idx(state)],
                            })
                            .collect(),
                    })
                    .collect();
                Ok((Reply::Breakdown { key, values }, false))
            }
            ActionerRequest::Subscribe { filter } => {
                self.subscribe(conn, request, filter).map(|r| (r, false))
            }
        }
    }

    fn subscribe(
        &mut self,
        conn: ConnId,
        request: RequestId,
        filter: EventFilter,
    ) -> Result<Reply, ErrorReply> {
        let ids: HashSet<TaskId> = filter
            .ids
            .iter()
            .map(|p| self.resolve(p))
            .collect::<Result<_, _>>()?;
        if !filter.all && ids.is_empty() && filter.tags.is_empty() {
            return Err(err(
                ErrorKind::InvalidRequest,
                "subscribe to some ids, some tags, or all",
            ));
        }
        let tasks: Vec<TaskStatus> = self
            .tasks
            .values()
            .filter(|t| {
                filter.all
                    || ids.contains(&t.id())
                    || (!filter.tags.is_empty() && has_tags(t, &filter.tags))
            })
            .map(|t| TaskStatus {
                id: t.id(),
                state: t.state(),
            })
            .collect();
        self.subs.push(Subscription {
            conn,
            request,
            ids,
            tags: filter.tags,
            all: filter.all,
        });
        Ok(Reply::Subscribed { tasks, more: false })
    }

    /// Resolves an id or a unique prefix of one (hex digits, hyphens ignored).
    pub fn resolve(&self, text: &str) -> Result<TaskId, ErrorReply> {
        let hex: String = text
            .chars()
            .filter(|c| *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        if hex.is_empty() || hex.len() > 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(err(
                ErrorKind::UnknownId,
                format!("{text:?} is not a task id or a prefix of one"),
            ));
        }
        let pad = |c: char| format!("{hex}{}", c.to_string().repeat(32 - hex.len()));
        let lo = TaskId(Uuid::parse_str(&pad('0')).expect("32 hex digits"));
        let hi = TaskId(Uuid::parse_str(&pad('f')).expect("32 hex digits"));
        let mut found = self.tasks.range(lo..=hi).map(|(id, _)| *id);
        match (found.next(), found.next()) {
            (Some(id), None) => Ok(id),
            (None, _) => Err(err(ErrorKind::UnknownId, format!("no task with id {text}"))),
            (Some(a), Some(b)) => Err(err(
                ErrorKind::AmbiguousId,
                format!("id prefix {text} is ambiguous: it matches {a}, {b} and maybe more"),
            )),
        }
    }

    /// The tasks a selector names, all valid for the operation, or the first refusal.
    fn select(
        &self,
        selector: &Selector,
        op: &str,
        check: fn(&Task) -> Result<(), ErrorReply>,
    ) -> Result<Vec<TaskId>, ErrorReply> {
        match selector {
            Selector::All => Ok(self
                .tasks
                .values()
                .filter(|t| check(t).is_ok())
                .map(|t| t.id())
                .collect()),
            Selector::Ids(texts) if texts.is_empty() => Err(err(
                ErrorKind::InvalidRequest,
                format!("{op}: name some task ids, or all"),
            )),
            Selector::Ids(texts) => {
                let mut ids = Vec::with_capacity(texts.len());
                for text in texts {
                    let id = self.resolve(text)?;
                    check(&self.tasks[&id])?;
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                Ok(ids)
            }
        }
    }

    fn apply(
        &mut self,
        selector: Selector,
        op: &str,
        check: fn(&Task) -> Result<(), ErrorReply>,
        action: impl Fn(&mut Task, u64) -> Result<WorkerOrder, ErrorReply>,
        now: u64,
    ) -> Result<(Reply, bool), ErrorReply> {
        let ids = self.select(&selector, op, check)?;
        for &id in &ids {
            let task = self.tasks.get_mut(&id).expect("selected tasks exist");
            let before = task.state();
            let order = action(task, now)?;
            self.changed(id, before, now);
            match order {
                WorkerOrder::None => {}
                WorkerOrder::Pause(w, attempt) => {
                    self.send_worker(w, CoordinatorToWorker::Pause { attempt })
                }
                WorkerOrder::Resume(w, attempt) => {
                    self.send_worker(w, CoordinatorToWorker::Resume { attempt })
                }
                WorkerOrder::Kill(w, attempt) => {
                    self.send_worker(w, CoordinatorToWorker::Kill { attempt })
                }
            }
        }
        debug!(op, tasks = ids.len(), "applied");
        Ok((Reply::Changed { ids, more: false }, true))
    }

    // ---- workers -----------------------------------------------------------------------

    /// Handles one message from a worker.
    pub fn worker(&mut self, conn: ConnId, msg: WorkerToCoordinator, now: u64) {
        let Some(&Conn::Worker(w)) = self.conns.get(&conn) else {
            return;
        };
        match msg {
            // Every message, heartbeats included, refreshes the heartbeat time below.
            WorkerToCoordinator::Heartbeat { .. } => {
                self.immediate
                    .push((conn, Out::Worker(CoordinatorToWorker::HeartbeatAck)));
            }
            WorkerToCoordinator::Reattach { running } => self.reattach(w, running, now),
            WorkerToCoordinator::Started { attempt, at_ms } => {
                if let Some(task) = self.tasks.get_mut(&attempt.task) {
                    let before = task.state();
                    // Nobody waits on a start: it must not cost a commit of its own.
                    if task.started(w, attempt.attempt, at_ms, now) {
                        self.changed_lazily(attempt.task, before, now);
                    }
                }
            }
            WorkerToCoordinator::Finished { attempt, report } => {
                self.finished(w, attempt, report, now)
            }
            WorkerToCoordinator::Draining => {
                if let Some(worker) = self.workers.get_mut(&w) {
                    worker.info.state = WorkerState::Draining;
                    self.sched.set_accepting(w, false);
                    self.dirty_workers.insert(w);
                    info!(worker = %w, "worker draining");
                }
            }
        }
        if let Some(worker) = self.workers.get_mut(&w) {
            worker.info.last_heartbeat_ms = now;
        }
    }

    fn finished(&mut self, w: WorkerId, attempt: AttemptRef, report: AttemptReport, now: u64) {
        if let Some(task) = self.tasks.get_mut(&attempt.task) {
            let before = task.state();
            match task.report(w, attempt.attempt, report, now) {
                ReportFate::Current => {
                    if let Some(worker) = self.workers.get_mut(&w) {
                        worker.held.remove(&attempt.task);
                    }
                    self.sched.release(w);
                    self.changed(attempt.task, before, now);
                }
                ReportFate::Late => {
                    info!(task = %attempt.task, attempt = attempt.attempt, worker = %w, "late report recorded");
                    self.dirty_tasks.insert(attempt.task);
                }
                ReportFate::Unknown => {
                    warn!(task = %attempt.task, attempt = attempt.attempt, "report of an unknown attempt")
                }
            }
        }
        // Acknowledged once durable, whatever became of it, so the worker can forget it.
        self.send_worker(w, CoordinatorToWorker::Ack { attempt });
    }

    fn reattach(&mut self, w: WorkerId, claims: Vec<AttemptRef>, now: u64) {
        let mut keep = Vec::new();
        let mut drop = Vec::new();
        let mut pause = Vec::new();
        for claim in claims {
            match self.tasks.get_mut(&claim.task) {
                Some(task) if task.is_current(w, claim.attempt) => match task.state() {
                    TaskState::Killed => {
                        // Killed while the worker was away: stop it, record the attempt as killed.
                        let before = task.state();
                        let report = AttemptReport {
                            outcome: Some(tatzelwurm_protocol::Outcome::Killed),
                            error: Some("killed while its worker was disconnected".into()),
                            ended_ms: now,
                            ..Default::default()
                        };
                        task.report(w, claim.attempt, report, now);
                        self.changed(claim.task, before, now);
                        drop.push(claim);
                    }
                    TaskState::Paused => {
                        pause.push(claim);
                        keep.push(claim);
                    }
                    _ => keep.push(claim),
                },
                _ => drop.push(claim),
            }
        }
        let kept: HashSet<TaskId> = keep.iter().map(|a| a.task).collect();
        let unclaimed: Vec<TaskId> = match self.workers.get_mut(&w) {
            Some(worker) => {
                let gone: Vec<TaskId> = worker
                    .held
                    .iter()
                    .filter(|t| !kept.contains(t))
                    .copied()
                    .collect();
                worker.held.retain(|t| kept.contains(t));
                gone
            }
            None => Vec::new(),
        };
        for t in unclaimed {
            self.sched.release(w);
            self.lose_task(t, &format!("worker {w} reconnected without it"), now);
        }
        info!(worker = %w, kept = keep.len(), dropped = drop.len(), "worker reattached");
        self.send_worker(w, CoordinatorToWorker::Reattached { keep, drop });
        for attempt in pause {
            self.send_worker(w, CoordinatorToWorker::Pause { attempt });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tatzelwurm_protocol::{BlockType, Outcome, Payload};

    fn core() -> Core {
        Core::new(CoreConfig {
            lease_ms: 1000,
            ..CoreConfig::default()
        })
    }

    fn hello(name: &str, slots: u32) -> WorkerHello {
        WorkerHello {
            block: BlockType::Async,
            slots,
            name: name.into(),
            host: "h".into(),
            tags: vec![],
            handlers: vec![],
            previous_id: None,
        }
    }

    fn add(c: &mut Core, n: usize, play: bool) -> Vec<TaskId> {
        let tasks = (0..n)
            .map(|_| TaskSpec::new(Payload::Sleep { duration_ms: 1 }))
            .collect();
        c.actioner(1, RequestId(1), ActionerRequest::Add { tasks, play }, 10);
        let batch = c.take_batch().unwrap();
        match &batch.sends[..] {
            [
                ..,
                (
                    _,
                    Out::Actioner(CoordinatorToActioner::Reply {
                        body: Reply::Added { ids },
                        ..
                    }),
                ),
            ] => ids.clone(),
            other => panic!("{other:?}"),
        }
    }

    /// The worker on `conn` reports that `attempt` ended with `outcome` at `now`.
    fn finish(c: &mut Core, conn: ConnId, attempt: AttemptRef, outcome: Outcome, now: u64) {
        let report = AttemptReport {
            outcome: Some(outcome),
            ended_ms: now,
            ..Default::default()
        };
        c.worker(conn, WorkerToCoordinator::Finished { attempt, report }, now);
    }

    fn dispatches(batch: &Batch) -> Vec<AttemptRef> {
        batch
            .sends
            .iter()
            .filter_map(|(_, o)| match o {
                Out::Worker(CoordinatorToWorker::Dispatch(d)) => Some(d.attempt),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_add_beyond_the_request_limit_is_refused_whole() {
        let mut c = core();
        c.connect_actioner(1);
        let tasks = vec![TaskSpec::new(Payload::Sleep { duration_ms: 1 }); MAX_ADD_TASKS + 1];
        c.actioner(
            1,
            RequestId(5),
            ActionerRequest::Add { tasks, play: true },
            10,
        );
        match &c.take_immediate()[..] {
            [
                (
                    1,
                    Out::Actioner(CoordinatorToActioner::Reply {
                        body: Reply::Error(e),
                        ..
                    }),
                ),
            ] => {
                assert_eq!(e.kind, ErrorKind::LimitExceeded);
                assert!(e.message.contains("nothing was added"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(c.tasks.is_empty());
        assert_eq!(
            add(&mut c, MAX_ADD_TASKS, false).len(),
            MAX_ADD_TASKS,
            "the limit itself is fine"
        );
    }

    #[test]
    fn a_start_costs_no_commit_of_its_own_but_is_written_with_the_next() {
        let mut c = core();
        c.connect_actioner(1);
        let ids = add(&mut c, 2, true);
        c.actioner(
            1,
            RequestId(7),
            ActionerRequest::Subscribe {
                filter: EventFilter {
                    ids: vec![],
                    tags: vec![],
                    all: true,
                },
            },
            10,
        );
        c.take_immediate();
        c.connect_worker(2, hello("w", 2), 10);
        c.schedule(10);
        let sent = dispatches(&c.take_batch().unwrap());
        let started = |c: &mut Core, a: AttemptRef, now| {
            c.worker(
                2,
                WorkerToCoordinator::Started {
                    attempt: a,
                    at_ms: now,
                },
                now,
            )
        };
        started(&mut c, sent[0], 11);
        assert_eq!(c.task(sent[0].task).unwrap().state, TaskState::Running);
        let events = c.take_immediate();
        assert!(
            matches!(&events[..], [(1, Out::Actioner(CoordinatorToActioner::Event { event, .. }))] if event.state == TaskState::Running),
            "the running event leaves at once: {events:?}"
        );
        assert!(c.take_batch().is_none(), "no commit for a start alone");
        assert_eq!(c.pending_writes(), 1);
        // The next change that needs a commit takes it along.
        c.actioner(
            1,
            RequestId(8),
            ActionerRequest::Pause {
                selector: Selector::Ids(vec![sent[1].task.to_string()]),
            },
            12,
        );
        let batch = c.take_batch().unwrap();
        let mut written: Vec<TaskId> = batch.tasks.iter().map(|t| t.id).collect();
        written.sort();
        let mut both = ids.clone();
        both.sort();
        assert_eq!(written, both);
        let running = batch.tasks.iter().find(|t| t.id == sent[0].task).unwrap();
        assert_eq!(running.state, TaskState::Running);
        assert_eq!(running.attempts[0].started_ms, Some(11));
        // Alone, a start is written at the next tick, and before a shutdown.
        started(&mut c, sent[1], 13);
        assert!(c.take_batch().is_none());
        c.tick(14);
        assert_eq!(c.take_batch().unwrap().tasks.len(), 1);
        let mut d = core();
        d.connect_actioner(1);
        add(&mut d, 1, true);
        d.connect_worker(2, hello("w", 1), 10);
        d.schedule(10);
        let sent = dispatches(&d.take_batch().unwrap());
        started(&mut d, sent[0], 11);
        d.begin_shutdown();
        assert_eq!(
            d.take_batch().unwrap().tasks.len(),
            1,
            "flushed on the way out"
        );
    }

    #[test]
    fn finished_tasks_expire_when_asked_and_only_then() {
        let mut c = Core::new(CoreConfig {
            lease_ms: 1000,
            remove_finished_ms: Some(500),
            ..CoreConfig::default()
        });
        c.connect_actioner(1);
        let ids = add(&mut c, 3, true);
        c.connect_worker(2, hello("w", 2), 10);
        c.schedule(10);
        let sent = dispatches(&c.take_batch().unwrap());
        finish(&mut c, 2, sent[0], Outcome::Succeeded, 20);
        finish(&mut c, 2, sent[1], Outcome::Failed, 30);
        c.take_batch();
        let queued = *ids
            .iter()
            .find(|id| **id != sent[0].task && **id != sent[1].task)
            .unwrap();
        c.tick(519);
        assert!(c.task(sent[0].task).is_some(), "ended 499 ms ago: kept");
        c.tick(520);
        assert!(c.task(sent[0].task).is_none(), "ended 500 ms ago: removed");
        assert!(c.task(sent[1].task).is_some(), "the failed one ended later");
        assert_eq!(c.take_batch().unwrap().removed, vec![sent[0].task]);
        // A task retried before it expires is not removed for its old end.
        c.actioner(
            1,
            RequestId(9),
            ActionerRequest::Retry {
                selector: Selector::Ids(vec![sent[1].task.to_string()]),
                attempts: 1,
            },
            40,
        );
        c.take_batch();
        c.tick(10_000);
        assert!(c.task(sent[1].task).is_some(), "retried: it runs again");
        assert!(c.task(queued).is_some(), "unfinished tasks never expire");
        // Without the option, nothing is removed however old.
        let mut keep = core();
        keep.connect_actioner(1);
        let ids = add(&mut keep, 1, true);
        keep.connect_worker(2, hello("w", 1), 10);
        keep.schedule(10);
        let sent = dispatches(&keep.take_batch().unwrap());
        finish(&mut keep, 2, sent[0], Outcome::Succeeded, 20);
        keep.tick(u64::MAX / 2);
        assert!(keep.task(ids[0]).is_some());
    }

    #[test]
    fn a_coordinator_that_did_not_run_gives_workers_a_fresh_lease() {
        let mut c = Core::new(CoreConfig {
            lease_ms: 1000,
            stall_ms: Some(500),
            ..CoreConfig::default()
        });
        c.connect_actioner(1);
        let ids = add(&mut c, 1, true);
        let w = c.connect_worker(2, hello("w", 1), 10);
        c.schedule(10);
        c.take_batch();
        c.tick(100);
        // The coordinator was suspended for an hour: the worker's silence is not its fault.
        c.tick(3_600_000);
        assert_eq!(c.workers[&w].conn, Some(2), "not dropped");
        assert_eq!(c.task(ids[0]).unwrap().worker, Some(w), "its task stays");
        // From then on the lease counts again.
        c.tick(3_600_400);
        c.tick(3_600_800);
        c.tick(3_601_100);
        assert_eq!(
            c.workers[&w].conn, None,
            "silent for a lease after the wake-up"
        );
    }

    #[test]
    fn add_is_acknowledged_only_with_its_batch() {
        let mut c = core();
        c.connect_actioner(1);
        let tasks = vec![TaskSpec::new(Payload::Sleep { duration_ms: 1 })];
        c.actioner(
            1,
            RequestId(5),
            ActionerRequest::Add { tasks, play: false },
            10,
        );
        assert!(c.take_immediate().is_empty(), "no reply before the commit");
        let batch = c.take_batch().unwrap();
        assert_eq!(batch.tasks.len(), 1);
        assert_eq!(batch.sends.len(), 1);
    }

    #[test]
    fn dispatch_result_and_ack_flow() {
        let mut c = core();
        c.connect_actioner(1);
        let ids = add(&mut c, 3, true);
        let w = c.connect_worker(2, hello("w", 2), 10);
        assert_eq!(c.schedule(11), 2, "only as many as slots");
        let batch = c.take_batch().unwrap();
        let sent = dispatches(&batch);
        assert_eq!(sent.len(), 2);
        c.worker(
            2,
            WorkerToCoordinator::Started {
                attempt: sent[0],
                at_ms: 12,
            },
            12,
        );
        assert_eq!(c.task(sent[0].task).unwrap().state, TaskState::Running);
        finish(&mut c, 2, sent[0], Outcome::Succeeded, 13);
        assert_eq!(c.task(sent[0].task).unwrap().state, TaskState::Completed);
        assert_eq!(c.schedule(14), 1, "the freed slot takes the third task");
        let batch = c.take_batch().unwrap();
        assert!(batch.sends.iter().any(|(_, o)| matches!(o, Out::Worker(CoordinatorToWorker::Ack { attempt }) if *attempt == sent[0])));
        assert_eq!(dispatches(&batch).len(), 1);
        assert_eq!(ids.len(), 3);
        assert_eq!(c.workers[&w].held.len(), 2);
    }

    #[test]
    fn lease_expiry_requeues_and_records_the_lost_attempt() {
        let mut c = core();
        c.connect_actioner(1);
        let ids = add(&mut c, 1, true);
        c.connect_worker(2, hello("a", 1), 10);
        c.schedule(10);
        c.disconnect(2, 100);
        c.tick(500);
        assert_eq!(
            c.task(ids[0]).unwrap().state,
            TaskState::Assigned,
            "still within the lease"
        );
        c.tick(1100);
        let t = c.task(ids[0]).unwrap();
        assert_eq!(t.state, TaskState::Ready);
        assert_eq!(t.attempts[0].outcome, Some(Outcome::Lost));
        c.connect_worker(3, hello("b", 1), 1200);
        assert_eq!(c.schedule(1200), 1);
        assert_eq!(c.task(ids[0]).unwrap().attempts.len(), 2);
    }

    #[test]
    fn silent_worker_is_dropped_and_its_late_report_is_kept() {
        let mut c = core();
        c.connect_actioner(1);
        let ids = add(&mut c, 1, true);
        let w = c.connect_worker(2, hello("frozen", 1), 10);
        c.schedule(10);
        c.tick(2000);
        assert!(
            c.take_immediate()
                .iter()
                .any(|(conn, o)| *conn == 2 && matches!(o, Out::Close(_)))
        );
        assert_eq!(c.task(ids[0]).unwrap().state, TaskState::Ready);
        // It wakes up, reconnects, claims the task, and reports it.
        let mut h = hello("frozen", 1);
        h.previous_id = Some(w);
        assert_eq!(c.connect_worker(3, h, 2100), w);
        let claim = AttemptRef {
            task: ids[0],
            attempt: 1,
        };
        c.worker(
            3,
            WorkerToCoordinator::Reattach {
                running: vec![claim],
            },
            2100,
        );
        finish(&mut c, 3, claim, Outcome::Succeeded, 2101);
        let t = c.task(ids[0]).unwrap();
        assert_eq!(t.attempts[0].outcome, Some(Outcome::Lost));
        assert_eq!(t.attempts[0].late_reports.len(), 1);
        let batch = c.take_batch().unwrap();
        assert!(batch.sends.iter().any(|(_, o)| matches!(o, Out::Worker(CoordinatorToWorker::Reattached { keep, drop }) if keep.is_empty() && drop == &vec![claim])));
    }

    #[test]
    fn a_reconnect_over_a_stale_connection_keeps_the_id_and_the_tasks() {
        let mut c = core();
        c.connect_actioner(1);
        let ids = add(&mut c, 1, true);
        let w = c.connect_worker(2, hello("w", 1), 10);
        c.schedule(10);
        c.take_batch();
        // The coordinator has not seen connection 2 close when the worker comes back on 3.
        let mut h = hello("w", 1);
        h.previous_id = Some(w);
        assert_eq!(c.connect_worker(3, h, 20), w);
        assert!(
            c.take_immediate()
                .iter()
                .any(|(conn, o)| *conn == 2 && matches!(o, Out::Close(_)))
        );
        let claim = AttemptRef {
            task: ids[0],
            attempt: 1,
        };
        c.worker(
            3,
            WorkerToCoordinator::Reattach {
                running: vec![claim],
            },
            21,
        );
        let batch = c.take_batch().unwrap();
        assert!(batch.sends.iter().any(|(conn, o)| *conn == 3 && matches!(o, Out::Worker(CoordinatorToWorker::Reattached { keep, .. }) if keep == &vec![claim])));
        // The old connection's close, when it comes, changes nothing.
        c.disconnect(2, 22);
        assert_eq!(c.task(ids[0]).unwrap().state, TaskState::Assigned);
        assert_eq!(
            c.workers[&w].info.state,
            WorkerState::Active,
            "the worker is still connected"
        );
        assert_eq!(c.workers[&w].conn, Some(3));
    }

    #[test]
    fn workers_lost_past_the_forget_time_are_forgotten_and_their_ids_never_reused() {
        let mut c = Core::new(CoreConfig {
            lease_ms: 1000,
            forget_lost_ms: Some(5000),
            ..CoreConfig::default()
        });
        c.connect_actioner(1);
        let ids = add(&mut c, 1, true);
        // `stays` takes only sync tasks, so the async task goes to `gone`, the newer worker.
        let mut sync = hello("stays", 1);
        sync.block = BlockType::Sync;
        let stays = c.connect_worker(3, sync, 10);
        let gone = c.connect_worker(2, hello("gone", 1), 10);
        c.schedule(10);
        c.take_batch();
        let held_by = c.task(ids[0]).unwrap().worker.unwrap();
        assert_eq!(held_by, gone, "the first worker holds the task");
        c.disconnect(2, 100);
        // The lease ends at 1,100: the task goes back to the queue, the worker is kept.
        c.worker(3, WorkerToCoordinator::Heartbeat { running: 0 }, 1000);
        c.tick(1100);
        assert!(c.workers.contains_key(&gone));
        // The other worker stays connected and heartbeats; it is never forgotten.
        c.worker(3, WorkerToCoordinator::Heartbeat { running: 0 }, 5000);
        c.tick(5099);
        assert!(c.workers.contains_key(&gone), "lost for less than 5 s");
        c.take_batch();
        c.worker(3, WorkerToCoordinator::Heartbeat { running: 0 }, 5100);
        c.tick(5100);
        assert!(!c.workers.contains_key(&gone), "forgotten after 5 s");
        assert!(c.workers.contains_key(&stays));
        let batch = c.take_batch().unwrap();
        assert_eq!(batch.removed_workers, vec![gone]);
        // A restart from what is stored (the task's attempt still names the forgotten worker)
        // hands out a new id, not the forgotten one.
        let tasks = vec![c.task(ids[0]).unwrap().clone()];
        let kept = vec![c.workers[&stays].info()];
        let mut r = Core::restore(CoreConfig::default(), tasks, kept, 6000);
        let new = r.connect_worker(4, hello("new", 1), 6000);
        assert!(gone.0 > stays.0);
        assert!(new.0 > gone.0, "{new} reuses the forgotten {gone}");
    }

    #[test]
    fn a_drained_worker_that_leaves_is_removed_and_one_that_holds_tasks_is_lost() {
        let mut c = core();
        c.connect_actioner(1);
        let ids = add(&mut c, 1, true);
        let busy = c.connect_worker(2, hello("busy", 1), 10);
        c.schedule(10);
        c.take_batch();
        let idle = c.connect_worker(3, hello("idle", 1), 11);
        c.take_batch();
        for conn in [2, 3] {
            c.worker(conn, WorkerToCoordinator::Draining, 12);
        }
        assert_eq!(c.workers[&idle].info.state, WorkerState::Draining);
        c.disconnect(3, 13);
        assert!(
            !c.workers.contains_key(&idle),
            "left on purpose, holding nothing"
        );
        assert_eq!(c.take_batch().unwrap().removed_workers, vec![idle]);
        // A draining worker that vanishes with a task is lost like any other: the lease runs.
        c.disconnect(2, 14);
        assert_eq!(c.workers[&busy].info.state, WorkerState::Lost);
        assert_eq!(c.task(ids[0]).unwrap().worker, Some(busy));
        let batch = c.take_batch().unwrap();
        assert!(batch.removed_workers.is_empty());
        assert_eq!(batch.workers.len(), 1);
        // A new worker does not get the removed worker's id.
        let next = c.connect_worker(4, hello("next", 1), 15);
        assert!(next.0 > idle.0);
    }

    #[test]
    fn restart_keeps_claimed_tasks_and_requeues_unclaimed_ones() {
        let mut c = core();
        c.connect_actioner(1);
        let ids = add(&mut c, 2, true);
        let w = c.connect_worker(2, hello("w", 2), 10);
        c.schedule(10);
        let batch = c.take_batch().unwrap();
        let tasks: Vec<TaskInfo> = ids.iter().map(|id| c.task(*id).unwrap().clone()).collect();
        let workers = batch.workers.clone();
        let mut r = Core::restore(
            CoreConfig {
                lease_ms: 1000,
                ..CoreConfig::default()
            },
            tasks,
            workers,
            5000,
        );
        assert_eq!(r.counts()[idx(TaskState::Assigned)].count, 2);
        let mut h = hello("w", 2);
        h.previous_id = Some(w);
        assert_eq!(r.connect_worker(9, h, 5001), w);
        r.worker(
            9,
            WorkerToCoordinator::Reattach {
                running: vec![AttemptRef {
                    task: ids[0],
                    attempt: 1,
                }],
            },
            5002,
        );
        assert_eq!(r.task(ids[0]).unwrap().state, TaskState::Assigned);
        assert_eq!(
            r.task(ids[1]).unwrap().state,
            TaskState::Ready,
            "unclaimed goes back to ready"
        );
        assert_eq!(r.schedule(5003), 1, "and is run again, on the freed slot");
    }

    #[test]
    fn invalid_operations_change_nothing() {
        let mut c = core();
        c.connect_actioner(1);
        let ids = add(&mut c, 2, false);
        c.actioner(
            1,
            RequestId(2),
            ActionerRequest::Kill {
                selector: Selector::Ids(vec![ids[0].to_string()]),
            },
            20,
        );
        c.take_batch();
        let sel = Selector::Ids(vec![ids[1].to_string(), ids[0].to_string()]);
        c.actioner(1, RequestId(3), ActionerRequest::Play { selector: sel }, 21);
        let imm = c.take_immediate();
        match &imm[..] {
            [
                (
                    _,
                    Out::Actioner(CoordinatorToActioner::Reply {
                        request,
                        body: Reply::Error(e),
                    }),
                ),
            ] => {
                assert_eq!(*request, RequestId(3));
                assert_eq!(e.kind, ErrorKind::InvalidState);
                assert!(
                    e.message.contains(&ids[0].to_string()) && e.message.contains("killed"),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            c.task(ids[1]).unwrap().state,
            TaskState::Created,
            "the valid one was not played either"
        );
        c.actioner(
            1,
            RequestId(4),
            ActionerRequest::Show { id: "zz".into() },
            22,
        );
        c.actioner(
            1,
            RequestId(5),
            ActionerRequest::Show { id: "ffff".into() },
            22,
        );
        let kinds: Vec<ErrorKind> = c
            .take_immediate()
            .into_iter()
            .filter_map(|(_, o)| match o {
                Out::Actioner(CoordinatorToActioner::Reply {
                    body: Reply::Error(e),
                    ..
                }) => Some(e.kind),
                _ => None,
            })
            .collect();
        assert_eq!(kinds, vec![ErrorKind::UnknownId, ErrorKind::UnknownId]);
    }

    #[test]
    fn prefixes_resolve_uniquely_or_are_refused() {
        let mut c = core();
        c.connect_actioner(1);
        let ids = add(&mut c, 2, false);
        let full = ids[0].simple();
        assert_eq!(c.resolve(&full[..31]).unwrap(), ids[0]);
        assert_eq!(
            c.resolve(&ids[0].to_string().to_uppercase()).unwrap(),
            ids[0]
        );
        // Both ids were made in the same millisecond range: their first 6 digits are shared.
        let e = c.resolve(&full[..6]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::AmbiguousId);
        assert!(e.message.contains(&full[..6]));
    }

    #[test]
    fn store_outage_refuses_changes_but_serves_reads() {
        let mut c = core();
        c.connect_actioner(1);
        c.set_store_ok(false);
        let tasks = vec![TaskSpec::new(Payload::Sleep { duration_ms: 1 })];
        c.actioner(
            1,
            RequestId(1),
            ActionerRequest::Add { tasks, play: true },
            1,
        );
        c.actioner(1, RequestId(2), ActionerRequest::Summary, 1);
        let imm = c.take_immediate();
        assert!(
            matches!(&imm[0].1, Out::Actioner(CoordinatorToActioner::Reply { body: Reply::Error(e), .. }) if e.kind == ErrorKind::StoreUnavailable)
        );
        assert!(matches!(
            &imm[1].1,
            Out::Actioner(CoordinatorToActioner::Reply {
                body: Reply::Summary { .. },
                ..
            })
        ));
        assert!(c.take_batch().is_none(), "nothing to write");
        assert_eq!(c.counts().iter().map(|s| s.count).sum::<u64>(), 0);
    }

    #[test]
    fn a_failed_commit_turns_held_acknowledgements_into_errors() {
        let mut c = core();
        c.connect_actioner(1);
        let tasks = vec![TaskSpec::new(Payload::Sleep { duration_ms: 1 })];
        c.actioner(
            1,
            RequestId(3),
            ActionerRequest::Add { tasks, play: true },
            1,
        );
        c.connect_worker(2, hello("w", 1), 1);
        c.schedule(1);
        let batch = c.take_batch().unwrap();
        c.requeue(batch);
        let imm = c.take_immediate();
        assert!(
            matches!(&imm[..], [(1, Out::Actioner(CoordinatorToActioner::Reply { request: RequestId(3), body: Reply::Error(e) }))] if e.kind == ErrorKind::StoreUnavailable)
        );
        let retry = c.take_batch().unwrap();
        assert_eq!(retry.tasks.len(), 1, "the change is written again");
        assert_eq!(
            dispatches(&retry).len(),
            1,
            "the dispatch still waits for a commit"
        );
    }

    #[test]
    fn a_failed_commit_of_a_reply_in_parts_is_refused_once() {
        let mut c = Core::new(CoreConfig {
            reply_chunk: 2,
            ..CoreConfig::default()
        });
        c.connect_actioner(1);
        add(&mut c, 5, false);
        c.actioner(
            1,
            RequestId(4),
            ActionerRequest::Play {
                selector: Selector::All,
            },
            2,
        );
        let batch = c.take_batch().unwrap();
        assert_eq!(batch.sends.len(), 3, "the ids go in three parts");
        c.requeue(batch);
        let imm = c.take_immediate();
        assert!(
            matches!(&imm[..], [(1, Out::Actioner(CoordinatorToActioner::Reply { request: RequestId(4), body: Reply::Error(e) }))] if e.kind == ErrorKind::StoreUnavailable),
            "{imm:?}"
        );
    }

    /// The ids of the one `changed` reply in a batch, or the error it carries.
    fn changed_reply(sends: &[(ConnId, Out)]) -> Result<Vec<TaskId>, ErrorReply> {
        let replies: Vec<&Reply> = sends
            .iter()
            .filter_map(|(_, o)| match o {
                Out::Actioner(CoordinatorToActioner::Reply { body, .. }) => Some(body),
                _ => None,
            })
            .collect();
        match &replies[..] {
            [Reply::Changed { ids, more: false }] => Ok(ids.clone()),
            [Reply::Error(e)] => Err(e.clone()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_all_takes_failed_tasks_and_a_named_killed_one_runs_again() {
        let mut c = core();
        c.connect_actioner(1);
        let ids = add(&mut c, 3, true);
        c.connect_worker(2, hello("w", 2), 10);
        c.schedule(10);
        let sent = dispatches(&c.take_batch().unwrap());
        assert_eq!(sent.len(), 2);
        finish(&mut c, 2, sent[0], Outcome::Failed, 12);
        let (failed, queued) = (sent[0].task, sent[1].task);
        let other = *ids
            .iter()
            .find(|id| **id != failed && **id != queued)
            .unwrap();
        let retry = |c: &mut Core, selector: Selector, attempts: u32| {
            c.actioner(
                1,
                RequestId(9),
                ActionerRequest::Retry { selector, attempts },
                13,
            );
            let sends = c.take_immediate();
            let sends = if sends.is_empty() {
                c.take_batch().unwrap().sends
            } else {
                sends
            };
            changed_reply(&sends)
        };
        // The third task, never dispatched, is killed; the second is still held by the worker.
        c.actioner(
            1,
            RequestId(8),
            ActionerRequest::Kill {
                selector: Selector::Ids(vec![other.to_string()]),
            },
            13,
        );
        c.take_batch();
        assert_eq!(c.task(failed).unwrap().state, TaskState::Failed);
        assert_eq!(
            retry(&mut c, Selector::All, 1),
            Ok(vec![failed]),
            "only the failed one"
        );
        assert_eq!(c.task(failed).unwrap().state, TaskState::Ready);
        let e = retry(&mut c, Selector::Ids(vec![queued.to_string()]), 1).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidState, "{e}");
        let e = retry(&mut c, Selector::Ids(vec![other.to_string()]), 0).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest, "{e}");
        assert_eq!(
            retry(&mut c, Selector::Ids(vec![other.to_string()]), 3),
            Ok(vec![other])
        );
        assert_eq!(c.task(other).unwrap().spec.max_attempts, 3);
        // Both go to the worker again as it frees its slot.
        finish(&mut c, 2, sent[1], Outcome::Succeeded, 14);
        c.schedule(15);
        let again = dispatches(&c.take_batch().unwrap());
        let mut tasks: Vec<TaskId> = again.iter().map(|a| a.task).collect();
        tasks.sort();
        let mut want = vec![failed, other];
        want.sort();
        assert_eq!(tasks, want);
        let failed_again = again.iter().find(|a| a.task == failed).unwrap();
        assert_eq!(failed_again.attempt, 2, "a new attempt; the first is kept");
    }

    #[test]
    fn long_lists_are_split_into_parts_and_other_replies_pass_whole() {
        let ids: Vec<TaskId> = (0..5).map(|_| TaskId::new()).collect();
        let parts = split_reply(
            Reply::Changed {
                ids: ids.clone(),
                more: false,
            },
            2,
        );
        let shapes: Vec<(usize, bool)> = parts
            .iter()
            .map(|p| match p {
                Reply::Changed { ids, more } => (ids.len(), *more),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(shapes, vec![(2, true), (2, true), (1, false)]);
        let joined: Vec<TaskId> = parts
            .into_iter()
            .flat_map(|p| match p {
                Reply::Changed { ids, .. } => ids,
                _ => vec![],
            })
            .collect();
        assert_eq!(joined, ids, "in order, each once");
        for n in [0, 1, 2, 4] {
            let parts = split_reply(
                Reply::Changed {
                    ids: ids[..n].to_vec(),
                    more: false,
                },
                2,
            );
            assert_eq!(parts.len(), n.div_ceil(2).max(1), "{n} ids");
        }
        assert_eq!(split_reply(Reply::Added { ids: ids.clone() }, 2).len(), 1);
    }

    #[test]
    fn a_large_snapshot_is_sent_in_parts_before_the_reply() {
        let mut c = Core::new(CoreConfig {
            reply_chunk: 2,
            ..CoreConfig::default()
        });
        c.connect_actioner(1);
        let mut ids = add(&mut c, 5, false);
        c.take_immediate();
        let all = EventFilter {
            ids: vec![],
            tags: vec![],
            all: true,
        };
        c.actioner(
            1,
            RequestId(9),
            ActionerRequest::Subscribe { filter: all },
            20,
        );
        let mut seen = Vec::new();
        let mut flags = Vec::new();
        for (conn, out) in c.take_immediate() {
            assert_eq!(conn, 1);
            let Out::Actioner(CoordinatorToActioner::Reply {
                request: RequestId(9),
                body: Reply::Subscribed { tasks, more },
            }) = out
            else {
                panic!("not a part of the snapshot: {out:?}");
            };
            assert!(tasks.len() <= 2, "a part holds at most the chunk");
            seen.extend(tasks.iter().map(|t| t.id));
            flags.push(more);
        }
        assert_eq!(flags, vec![true, true, false], "the last part says so");
        seen.sort();
        ids.sort();
        assert_eq!(seen, ids, "every task once");
    }

    #[test]
    fn subscribers_get_every_state_change_after_the_commit() {
        let mut c = core();
        c.connect_actioner(1);
        let ids = add(&mut c, 1, false);
        c.connect_actioner(7);
        c.actioner(
            7,
            RequestId(9),
            ActionerRequest::Subscribe {
                filter: EventFilter {
                    ids: vec![ids[0].to_string()],
                    tags: vec![],
                    all: false,
                },
            },
            20,
        );
        assert!(
            matches!(&c.take_immediate()[0].1, Out::Actioner(CoordinatorToActioner::Reply { body: Reply::Subscribed { tasks, more: false }, .. }) if tasks[0].state == TaskState::Created)
        );
        c.actioner(
            1,
            RequestId(2),
            ActionerRequest::Play {
                selector: Selector::All,
            },
            21,
        );
        c.connect_worker(2, hello("w", 1), 22);
        c.schedule(22);
        let batch = c.take_batch().unwrap();
        let states: Vec<TaskState> = batch
            .sends
            .iter()
            .filter_map(|(conn, o)| match o {
                Out::Actioner(CoordinatorToActioner::Event {
                    subscription,
                    event,
                }) if *conn == 7 => {
                    assert_eq!(*subscription, RequestId(9));
                    Some(event.state)
                }
                _ => None,
            })
            .collect();
        assert_eq!(states, vec![TaskState::Ready, TaskState::Assigned]);
    }

    #[test]
    fn breakdown_counts_states_per_tag_value() {
        let mut c = core();
        c.connect_actioner(1);
        let tagged = |v: &str| {
            let mut s = TaskSpec::new(Payload::Sleep { duration_ms: 1 });
            s.tags = vec![
                format!("project={v}").parse().unwrap(),
                "other=x".parse().unwrap(),
            ];
            s
        };
        let tasks = vec![
            tagged("b"),
            tagged("a"),
            tagged("a"),
            TaskSpec::new(Payload::Sleep { duration_ms: 1 }),
        ];
        c.actioner(
            1,
            RequestId(1),
            ActionerRequest::Add { tasks, play: false },
            1,
        );
        c.take_batch();
        c.actioner(
            1,
            RequestId(2),
            ActionerRequest::Kill {
                selector: Selector::All,
            },
            2,
        );
        c.actioner(
            1,
            RequestId(3),
            ActionerRequest::Breakdown {
                key: "project".into(),
            },
            3,
        );
        let imm = c.take_immediate();
        let Some((
            _,
            Out::Actioner(CoordinatorToActioner::Reply {
                body: Reply::Breakdown { key, values },
                ..
            }),
        )) = imm.last()
        else {
            panic!("{imm:?}")
        };
        assert_eq!(key, "project");
        let got: Vec<(String, Vec<(TaskState, u64)>)> = values
            .iter()
            .map(|v| {
                (
                    v.value.clone(),
                    v.counts.iter().map(|c| (c.state, c.count)).collect(),
                )
            })
            .collect();
        // Counted as the table is now (the kill is not durable yet, but the table has it).
        assert_eq!(
            got,
            vec![
                ("a".into(), vec![(TaskState::Killed, 2)]),
                ("b".into(), vec![(TaskState::Killed, 1)])
            ]
        );
    }

    #[test]
    fn kill_of_a_running_task_is_sent_to_its_worker() {
        let mut c = core();
        c.connect_actioner(1);
        let ids = add(&mut c, 1, true);
        c.connect_worker(2, hello("w", 1), 1);
        c.schedule(1);
        c.take_batch();
        c.actioner(
            1,
            RequestId(2),
            ActionerRequest::Kill {
                selector: Selector::Ids(vec![ids[0].simple()[..30].to_string()]),
            },
            2,
        );
        let batch = c.take_batch().unwrap();
        assert!(
            batch.sends.iter().any(|(conn, o)| *conn == 2
                && matches!(o, Out::Worker(CoordinatorToWorker::Kill { .. })))
        );
        assert_eq!(c.task(ids[0]).unwrap().state, TaskState::Killed);
    }
}
