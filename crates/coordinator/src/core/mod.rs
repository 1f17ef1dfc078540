//! The coordinator's tables and their one owner: every input (a request, a worker message, a
//! connection change, the passing of time) is applied here, synchronously, producing store writes
//! and outgoing messages. No I/O happens here; `server` feeds it and carries out what it produces.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use tatzelwurm_protocol::{
    ActionerRequest, AttemptRef, AttemptReport, ClientHello, CoordinatorToActioner,
    CoordinatorToWorker, Dispatch, ErrorKind, ErrorReply, EventFilter, MAX_ADD_TASKS, Reply,
    RequestId, Selector, StateCount, Tag, TagCounts, TaskEvent, TaskId, TaskInfo, TaskSpec,
    TaskState, TaskStatus, WorkerHello, WorkerId, WorkerInfo, WorkerState, WorkerToCoordinator,
};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::scheduler::{Kind, QueueIdx, Scheduler, WorkerSpec};
use crate::store::Record;
use crate::task::{Assignment, Head, ReportFate, Task, WorkerOrder};
use messaging::{Messaging, queue_of};
use queues::QueueTable;
use subscriptions::Subscription;
use tatzelwurm_protocol::QueueSettings;

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
    /// The handshake's answer to a worker or client: the id it was given. The edge sends it as
    /// the hello's reply, before anything else queued for the connection.
    Welcome(WorkerId),
}

/// The counters ids and numbers are handed out from. Each table entry carries its own id, so
/// the tables alone give a floor; these are stored beside them for what the tables no longer
/// show: a worker id handed out but whose worker left no record (a client that never served,
/// or a crash before its record was written), the numbers of the newest tasks once removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// The id the next new worker or client gets.
    pub next_worker: u64,
    /// The number the next task gets.
    pub next_number: u64,
    /// The number the next add request gets.
    pub next_batch: u64,
}

/// What must be made durable, and the messages that may only leave once it is.
#[derive(Debug, Default)]
pub struct Batch {
    /// Tasks to write, whole: each one's id and record, encoded as the store writes it.
    pub tasks: Vec<(TaskId, Record)>,
    /// Dispatches of tasks whose stored record is otherwise current, written as changes.
    pub assignments: Vec<Assignment>,
    /// Tasks to delete.
    pub removed: Vec<TaskId>,
    /// Workers to write.
    pub workers: Vec<WorkerInfo>,
    /// Workers to delete (lost for longer than the config keeps them).
    pub removed_workers: Vec<WorkerId>,
    /// Queue settings to write.
    pub queues: Vec<QueueSettings>,
    /// The counters, when one moved past what the tables show.
    pub counters: Option<Counters>,
    /// Sent after the commit, in order.
    pub sends: Vec<(ConnId, Out)>,
}

impl Batch {
    /// Whether the batch writes anything to the store.
    pub fn has_writes(&self) -> bool {
        !(self.tasks.is_empty()
            && self.assignments.is_empty()
            && self.removed.is_empty()
            && self.workers.is_empty()
            && self.removed_workers.is_empty()
            && self.queues.is_empty()
            && self.counters.is_none())
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

/// A set of task ids, with a fast non-cryptographic hash: ids are made here (UUIDv7, random in
/// their last 8 bytes), so nobody can choose colliding ones. SipHash on the sets every task change
/// passes through cost about 6 % of the coordinator's CPU per noop task (BENCHMARKS.md).
pub(crate) type TaskSet = rustc_hash::FxHashSet<TaskId>;

enum Conn {
    /// Requests only, in a namespace.
    Actioner { namespace: String },
    /// A worker of commands and handlers.
    Worker(WorkerId),
    /// Every role at once (a kiwipy communicator): requests, and worker messages for the queue
    /// tasks it holds under `worker`, an id reserved at the hello and entered in the worker
    /// table at its first `serve`.
    Client {
        namespace: String,
        worker: WorkerId,
        name: String,
        host: String,
    },
}

struct Worker {
    info: WorkerInfo,
    conn: Option<ConnId>,
    /// Since when it is disconnected or silent; its lease runs from here.
    lost_since: Option<u64>,
    /// Tasks it holds (assigned, running, paused on it).
    held: TaskSet,
    /// After a reconnect under its previous id: the tasks it held when this connection began,
    /// which its `reattach` must claim or lose. Until that `reattach` arrives the worker gets no
    /// dispatch, so that a task given on the new connection can never be mistaken for one the
    /// worker forgot (the double run of issue 13).
    awaiting_reattach: Option<TaskSet>,
    /// A client connection serving broker queues: it takes message tasks only, never a task
    /// of the scheduler's.
    client: bool,
    /// Drained by a user (`worker drain`): no new task, whatever the worker says.
    held_back: bool,
    /// It streams a command's output when asked (its hello said so).
    streams_output: bool,
    /// Tasks it takes beyond its slots (its hello's `prefetch`), started as its slots free.
    prefetch: u32,
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

/// Tasks finished per second over the last minute, in 60 one-second buckets.
pub(super) struct FinishRate {
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
    pub(super) fn add(&mut self, now_ms: u64) {
        let sec = now_ms / 1000;
        let b = &mut self.buckets[(sec % 60) as usize];
        if b.0 != sec {
            *b = (sec, 0);
        }
        b.1 += 1;
    }

    pub(super) fn last_minute(&self, now_ms: u64) -> u64 {
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
    /// Every task, packed (its stored record) while it waits or when it has finished.
    tasks: table::TaskTable,
    counts: [u64; 8],
    /// Tasks that entered each state since the start (added ones count in their first state).
    entered: [u64; 8],
    workers: BTreeMap<WorkerId, Worker>,
    next_worker: u64,
    /// The counters changed in a way the tables do not show: the next batch writes them.
    counters_dirty: bool,
    /// The time of the last tick. A gap far longer than ticks leave means that the coordinator
    /// itself did not run (a suspended laptop, SIGSTOP, a paused VM): the workers' silence is then
    /// its own, and they get a fresh lease instead of losing their tasks.
    last_tick: Option<u64>,
    /// Looked up for every message (coordinator-made keys: a fast hash is safe).
    conns: rustc_hash::FxHashMap<ConnId, Conn>,
    subs: Vec<Subscription>,
    sched: Scheduler,
    /// The broker's queues, RPC identifiers, calls, listeners and watchers.
    msg: Messaging,
    /// Who follows which task's output.
    follows: follow::Follows,
    /// Every queue's settings and counts.
    queues: QueueTable,
    /// Task ids by number (index 0 unused); an entry whose task was removed is stale.
    by_number: Vec<TaskId>,
    /// The number the next task gets.
    next_number: u64,
    /// The number the next add request (batch) gets.
    next_batch: u64,
    /// Queues whose settings the next batch writes.
    dirty_queues: HashSet<QueueIdx>,
    dirty_tasks: TaskSet,
    /// Tasks whose only change since their stored record is a dispatch: the next batch writes
    /// the assignment instead of the whole task, unless the task is in `dirty_tasks` by then
    /// (changed again, or never written).
    assignments: rustc_hash::FxHashMap<TaskId, Assignment>,
    /// Tasks changed in a way nobody waits on (an attempt started): written with the next batch
    /// that has something else to write, or at the next tick, never in a commit of their own.
    lazy_tasks: TaskSet,
    /// Finished tasks by the time they ended, when they expire (`remove_finished_ms`). An entry
    /// whose task has since changed (retried, removed) is stale and skipped.
    ended: BTreeSet<(u64, TaskId)>,
    removed: Vec<TaskId>,
    /// Attempts with a timeout, by when the coordinator ends them itself if their worker has
    /// not (the task's timeout plus a lease of grace, from the dispatch). Entries of attempts
    /// that ended meanwhile are stale and skipped.
    deadlines: BTreeSet<(u64, TaskId, u32)>,
    /// A tick passed since the last look for tasks held beyond a worker's slots that a free
    /// slot elsewhere could start ([`Core::revoke_held`]).
    revoke_due: bool,
    /// Held attempts asked back (`revoke`) and not yet given back or started: asked once.
    revoking: rustc_hash::FxHashSet<AttemptRef>,
    dirty_workers: rustc_hash::FxHashSet<WorkerId>,
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

/// When the coordinator ends an attempt whose worker did not stop it at the task's timeout: the
/// timeout plus a lease of grace after `from` (the dispatch).
fn overdue_at(timeout_ms: Option<u64>, from: u64, lease_ms: u64) -> Option<u64> {
    timeout_ms.map(|t| from.saturating_add(t).saturating_add(lease_ms))
}

fn has_tags(task: &Task, tags: &[Tag]) -> bool {
    tags.iter().all(|t| task.info.spec.tags.contains(t))
}

/// What a worker must offer to run a task of this spec.
fn kind_of(spec: &TaskSpec) -> Kind {
    let mut require = spec.require.clone();
    require.sort();
    require.dedup();
    Kind {
        block: spec.block,
        handler: spec.payload.handler().map(str::to_string),
        require,
    }
}

/// Where a ready task read at start goes back in line.
enum Line {
    /// A message task: its broker queue's FIFO.
    Broker(Box<messaging::QueueName>),
    /// Any other: the scheduler, under its kind and priority.
    Scheduler { kind: Kind, priority: i32 },
}

/// The ready tasks read at start, put back in line once every task is read, in the order they
/// became ready. Each kind is kept once (most tasks share a few), so that a million ready tasks
/// cost 48 bytes each here, not a copy of their kind.
#[derive(Default)]
struct ReadyLine {
    kinds: Vec<Kind>,
    known: HashMap<Kind, u32>,
    /// (ready since, id, its place among the tasks loaded, queue, place in line)
    tasks: Vec<(u64, TaskId, u32, QueueIdx, LinePlace)>,
}

/// A ready task's place at start: its broker queue, or the number of its kind and its priority.
type LinePlace = Result<Box<messaging::QueueName>, (u32, i32)>;

impl ReadyLine {
    /// Notes a ready task, the `at`th loaded.
    fn push(&mut self, task: &Task, at: usize) {
        let spec = &task.info.spec;
        let line = match queue_of(spec) {
            Some(q) => Ok(Box::new(q)),
            None => {
                let kind = kind_of(spec);
                let n = match self.known.get(&kind) {
                    Some(&n) => n,
                    None => {
                        let n = self.kinds.len() as u32;
                        self.kinds.push(kind.clone());
                        self.known.insert(kind, n);
                        n
                    }
                };
                Err((n, spec.priority))
            }
        };
        let times = &task.info.times;
        let since = times.ready_ms.unwrap_or(times.created_ms);
        self.tasks
            .push((since, task.id(), at as u32, task.queue, line));
    }

    /// Every task (its place among those loaded, its id) with its queue and line, oldest first
    /// (ids, made in order, break ties).
    fn in_order(mut self) -> impl Iterator<Item = (usize, TaskId, QueueIdx, Line)> {
        // Newest first, taken from the end: the vector gives its memory back as the scheduler's
        // lines grow (ten million ready tasks hold half a gigabyte here).
        self.tasks
            .sort_unstable_by_key(|(since, id, ..)| std::cmp::Reverse((*since, *id)));
        let kinds = self.kinds;
        let mut tasks = self.tasks;
        let mut taken = 0usize;
        std::iter::from_fn(move || {
            let (_, id, at, queue, line) = tasks.pop()?;
            taken += 1;
            if taken.is_multiple_of(1 << 20) {
                tasks.shrink_to_fit();
            }
            let line = match line {
                Ok(q) => Line::Broker(q),
                Err((n, priority)) => Line::Scheduler {
                    kind: kinds[n as usize].clone(),
                    priority,
                },
            };
            Some((at as usize, id, queue, line))
        })
    }
}

impl Core {
    /// An empty coordinator.
    pub fn new(cfg: CoreConfig) -> Self {
        Core {
            cfg,
            tasks: table::TaskTable::default(),
            counts: [0; 8],
            entered: [0; 8],
            workers: BTreeMap::new(),
            next_worker: 1,
            counters_dirty: false,
            last_tick: None,
            conns: Default::default(),
            subs: Vec::new(),
            sched: Scheduler::new(),
            msg: Messaging::default(),
            follows: Default::default(),
            queues: QueueTable::default(),
            by_number: vec![TaskId(Uuid::nil())],
            next_number: 1,
            next_batch: 1,
            dirty_queues: HashSet::new(),
            dirty_tasks: TaskSet::default(),
            assignments: Default::default(),
            lazy_tasks: TaskSet::default(),
            ended: BTreeSet::new(),
            removed: Vec::new(),
            deadlines: BTreeSet::new(),
            revoke_due: false,
            revoking: Default::default(),
            dirty_workers: Default::default(),
            removed_workers: Vec::new(),
            durable: Vec::new(),
            immediate: Vec::new(),
            rate: FinishRate::default(),
            store_ok: true,
            shutting_down: false,
        }
    }

    /// Rebuilds the tables from what the store holds after a restart: every task decoded once,
    /// here, one at a time, and packed again with its record (`table`) unless a worker holds
    /// it. Every worker starts lost, with a fresh lease: the tasks it held wait for it to
    /// reconnect and reattach them.
    pub fn restore(
        cfg: CoreConfig,
        tasks: impl IntoIterator<Item = (TaskInfo, Record)>,
        workers: Vec<WorkerInfo>,
        queues: Vec<QueueSettings>,
        counters: Counters,
        now: u64,
    ) -> Self {
        let mut core = Core::new(cfg);
        core.next_worker = counters.next_worker.max(1);
        core.next_number = counters.next_number.max(1);
        core.next_batch = counters.next_batch.max(1);
        for settings in queues {
            core.restore_queue(settings);
        }
        let mut unnumbered: Vec<TaskId> = Vec::new();
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
                    held: TaskSet::default(),
                    awaiting_reattach: None,
                    client: false,
                    held_back: false,
                    streams_output: false,
                    prefetch: 0,
                },
            );
        }
        let mut loading = table::Loading::default();
        let mut ready = ReadyLine::default();
        for (info, record) in tasks {
            // Forgotten workers leave their ids in attempts: never hand one out again.
            for a in &info.attempts {
                core.next_worker = core.next_worker.max(a.worker.0 + 1);
            }
            let id = info.id;
            match info.number {
                // Written before tasks had numbers: numbered below, in the order they were made.
                0 => unnumbered.push(id),
                n => core.index_number(n, id),
            }
            core.next_batch = core.next_batch.max(info.batch + 1);
            let queue = core.queue_for(&info.namespace, &info.spec);
            let mut task = Task {
                info,
                ticket: 0,
                queue,
            };
            let mut changed = false;
            if let Some(w) = task.holder() {
                match core.workers.get_mut(&w) {
                    Some(worker) => {
                        worker.held.insert(id);
                        // A worker that held message tasks served queues: a client.
                        match queue_of(&task.info.spec) {
                            Some(q) => {
                                worker.client = true;
                                core.msg.note_held(q);
                            }
                            None => core.sched.hold(queue),
                        }
                        if let Some(a) = task.info.attempts.last()
                            && let Some(at) = overdue_at(
                                task.info.spec.timeout_ms,
                                a.assigned_ms,
                                core.cfg.lease_ms,
                            )
                        {
                            core.deadlines.insert((at, id, a.number));
                        }
                    }
                    None => {
                        warn!(task = %id, worker = %w, "task held by an unknown worker; requeued");
                        task.lose(
                            "held by a worker the store does not know",
                            core.cfg.lost_to_paused,
                            now,
                        );
                        core.dirty_tasks.insert(id);
                        changed = true;
                    }
                }
            }
            core.counts[idx(task.state())] += 1;
            core.queues.count(queue, task.state(), true);
            core.note_ended(id, task.state(), task.info.times.ended_ms);
            if task.state() == TaskState::Ready {
                ready.push(&task, loading.len());
            }
            // A task changed here is encoded with the next batch, which packs it then.
            loading.push(task, (!changed).then_some(record));
        }
        // Back in line in the order they became ready (ids, made in order, break ties): the
        // store gives them in no particular order, and a queue's line must survive a restart.
        for (at, id, queue, line) in ready.in_order() {
            let ticket = match line {
                Line::Broker(q) => core.msg.enqueue(*q, id),
                Line::Scheduler { kind, priority } => core.sched.enqueue(queue, kind, priority, id),
            };
            loading.set_ticket(at, ticket);
        }
        core.tasks = loading.finish();
        // Ids are UUIDv7, so their order is the order the tasks were made in.
        unnumbered.sort();
        for id in unnumbered {
            let n = core.take_number(id);
            if let Some(t) = core.tasks.get_mut(&id) {
                t.info.number = n;
                core.dirty_tasks.insert(id);
            }
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

    /// A task, for tests and diagnostics (decoded when it is packed).
    pub fn task(&self, id: TaskId) -> Option<TaskInfo> {
        self.tasks.get(&id).map(|t| t.into_owned().info)
    }

    /// How many tasks the table keeps packed, for tests and diagnostics.
    pub fn packed_tasks(&self) -> usize {
        self.tasks.packed()
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
            && self.assignments.is_empty()
            && self.removed.is_empty()
            && self.dirty_workers.is_empty()
            && self.removed_workers.is_empty()
            && self.dirty_queues.is_empty()
            && self.durable.is_empty()
            && !self.counters_dirty
        {
            return None;
        }
        self.flush_lazy();
        // A task written whole carries its assignment.
        let dirty = &self.dirty_tasks;
        let assignments = self
            .assignments
            .drain()
            .filter(|(id, _)| !dirty.contains(id))
            .map(|(_, a)| a)
            .collect();
        // Encoded here rather than cloned for the writer: one allocation a task instead of one
        // for each of its strings and attempts, and the task is packed with that very record.
        let tasks = self
            .dirty_tasks
            .drain()
            .filter_map(|id| self.tasks.record(&id).map(|r| (id, r)))
            .collect();
        let lazy = &self.lazy_tasks;
        self.tasks.settle(|id| lazy.contains(id));
        let workers = self
            .dirty_workers
            .drain()
            .filter_map(|id| self.workers.get(&id).map(Worker::info))
            .collect();
        let queues = self
            .dirty_queues
            .drain()
            .map(|q| self.queues.get(q).settings.clone())
            .collect();
        Some(Batch {
            tasks,
            assignments,
            removed: std::mem::take(&mut self.removed),
            workers,
            removed_workers: std::mem::take(&mut self.removed_workers),
            queues,
            counters: std::mem::take(&mut self.counters_dirty).then(|| self.counters()),
            sends: std::mem::take(&mut self.durable),
        })
    }

    /// The tables' part of `/metrics`: the rest (commits, checkpoints, memory) is left as
    /// it is in `into`.
    pub fn metrics(&self, into: &mut crate::metrics::Snapshot) {
        into.tasks = self.counts;
        into.entered = self.entered;
        into.queues = self
            .queues
            .all()
            .map(|e| crate::metrics::QueueCounts {
                namespace: e.settings.namespace.clone(),
                name: e.settings.name.clone(),
                counts: e.counts,
            })
            .collect();
        into.workers_known = self.workers.len() as u64;
        into.workers_connected = self.workers.values().filter(|w| w.conn.is_some()).count() as u64;
        into.connections = [0; 3];
        for c in self.conns.values() {
            let i = match c {
                Conn::Actioner { .. } => 0,
                Conn::Worker(_) => 1,
                Conn::Client { .. } => 2,
            };
            into.connections[i] += 1;
        }
    }

    /// The counters as they stand.
    pub fn counters(&self) -> Counters {
        Counters {
            next_worker: self.next_worker,
            next_number: self.next_number,
            next_batch: self.next_batch,
        }
    }

    /// Hands out a worker id never handed out before, also by an earlier run: the counter is
    /// written with the next batch, and whoever gets the id hears it only once that is durable.
    fn new_worker_id(&mut self) -> WorkerId {
        let id = WorkerId(self.next_worker);
        self.next_worker += 1;
        self.counters_dirty = true;
        id
    }

    /// Puts a batch whose commit failed back, so that its changes are written (as they are by
    /// then) and its messages sent by a later batch, ahead of newer ones.
    pub fn requeue(&mut self, batch: Batch) {
        // A failed write's assignments go whole too: what part of it was written is unknown,
        // and a whole record supersedes either way.
        self.dirty_tasks.extend(
            batch
                .tasks
                .iter()
                .map(|(id, _)| *id)
                .chain(batch.assignments.iter().map(|a| a.task))
                .filter(|id| self.tasks.contains_key(id)),
        );
        self.dirty_workers.extend(
            batch
                .workers
                .iter()
                .map(|w| w.id)
                .filter(|id| self.workers.contains_key(id)),
        );
        for s in &batch.queues {
            if let Some(q) = self.queues.find(&s.namespace, &s.name) {
                self.dirty_queues.insert(q);
            }
        }
        self.counters_dirty |= batch.counters.is_some();
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
        self.dirty_tasks.len() + self.assignments.len() + self.lazy_tasks.len() + self.removed.len()
    }

    /// Goodbye messages for every connection.
    pub fn shutdown_messages(&self, reason: &str) -> Vec<(ConnId, Out)> {
        self.conns
            .iter()
            .map(|(&c, kind)| {
                let msg = match kind {
                    Conn::Actioner { .. } | Conn::Client { .. } => {
                        Out::Actioner(CoordinatorToActioner::Shutdown {
                            reason: reason.into(),
                        })
                    }
                    Conn::Worker(_) => Out::Worker(CoordinatorToWorker::Shutdown {
                        reason: reason.into(),
                    }),
                };
                (c, msg)
            })
            .collect()
    }

    // ---- bookkeeping -------------------------------------------------------------------

    /// Records a change that must be durable before anything waiting on it is sent: counts,
    /// queue, events, the next batch.
    fn changed(&mut self, id: TaskId, before: TaskState, now: u64) {
        if self.transition(id, before, now, false) {
            self.dirty_tasks.insert(id);
            self.lazy_tasks.remove(&id);
            self.remove_if_unwanted(id);
        }
    }

    /// Records a dispatch, which must be durable before it is sent like any change, but is
    /// written as the assignment alone when the task's stored record is otherwise current (not
    /// changed since it was last taken for the store, nor waiting to be).
    fn assigned(&mut self, id: TaskId, before: TaskState, now: u64, a: Assignment) {
        if !self.transition(id, before, now, false) {
            return;
        }
        if self.dirty_tasks.contains(&id)
            || self.lazy_tasks.contains(&id)
            || self.assignments.insert(id, a).is_some()
        {
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
            self.message_removed(&t);
            self.unfollow_removed(id, t.info.number);
            self.counts[idx(t.state())] -= 1;
            self.queues.count(t.queue, t.state(), false);
            self.dirty_tasks.remove(&id);
            self.assignments.remove(&id);
            self.lazy_tasks.remove(&id);
            self.removed.push(id);
            // The newest numbers may leave the table with it; the counter keeps them taken.
            self.counters_dirty = true;
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
        self.entered[idx(after)] += 1;
        let q = task.queue;
        let ended_at = task.info.times.ended_ms;
        self.queues.count(q, before, false);
        self.queues.count(q, after, true);
        if after == TaskState::Ready {
            self.enqueue_ready(id);
        }
        if after.is_final() {
            self.rate.add(now);
            self.queues.get_mut(q).rate.add(now);
            self.note_ended(id, after, ended_at);
        }
        self.message_transition(id, before);
        self.follow_transition(id, at_once);
        self.emit(id, now, at_once);
        true
    }

    /// Files task `id` under number `n`.
    fn index_number(&mut self, n: u64, id: TaskId) {
        let i = n as usize;
        if self.by_number.len() <= i {
            self.by_number.resize(i + 1, TaskId(Uuid::nil()));
        }
        self.by_number[i] = id;
        self.next_number = self.next_number.max(n + 1);
    }

    /// Hands out the next number, to task `id`.
    fn take_number(&mut self, id: TaskId) -> u64 {
        let n = self.next_number;
        self.index_number(n, id);
        n
    }

    /// The task with number `n`, if it is still in the table. Numbers are never handed out
    /// twice, so an id filed under `n` that is still in the table is that task.
    fn numbered(&self, n: u64) -> Option<TaskId> {
        let id = *self.by_number.get(n as usize)?;
        self.tasks.contains_key(&id).then_some(id)
    }

    /// Puts a ready task in line: in its queue's FIFO of the broker for a message task, in the
    /// scheduler for any other. Its new ticket makes any older entry stale.
    fn enqueue_ready(&mut self, id: TaskId) {
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        let ticket = match queue_of(&task.info.spec) {
            Some(q) => self.msg.enqueue(q, id),
            None => self.sched.enqueue(
                task.queue,
                kind_of(&task.info.spec),
                task.info.spec.priority,
                id,
            ),
        };
        self.tasks.set_ticket(&id, ticket);
    }

    /// Queues an order for a worker, sent once the batch that holds the change is durable.
    fn send_worker(&mut self, worker: WorkerId, msg: CoordinatorToWorker) {
        if let Some(conn) = self.workers.get(&worker).and_then(|w| w.conn) {
            self.durable.push((conn, Out::Worker(msg)));
        }
    }
}

mod follow;
mod idmap;
mod messaging;
mod prefetch;
mod queues;
mod subscriptions;
mod table;
mod tasks;
mod workers;

#[cfg(test)]
mod tests;
