//! The four message enums, one per direction, exchanged after the handshake.

use serde::{Deserialize, Serialize};

use crate::broker::{BroadcastMessage, MessageOutcome, QueuedMessage};
use crate::data::{Bytes, Data};
use crate::error::ErrorReply;
use crate::ids::{RequestId, TaskId};
use crate::queue::{QueueChange, QueueInfo};
use crate::task::{
    AttemptReport, Payload, StateCount, Tag, TaskInfo, TaskSpec, TaskState, TaskSummary, WorkerInfo,
};

/// Which tasks a request is about: ids or unique id prefixes, every task it can apply to, or
/// the tasks that match a filter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    /// Full ids or unique prefixes (hex, hyphens optional), resolved by the coordinator.
    Ids(Vec<String>),
    /// Every task the operation is valid for.
    All,
    /// Like `All`, among the tasks that match the filter.
    Where(TaskFilter),
}

impl Selector {
    /// Whether it takes tasks by what they are rather than by name (`All`, `Where`): such a
    /// selector skips the tasks the operation does not apply to instead of refusing.
    pub fn is_bulk(&self) -> bool {
        !matches!(self, Selector::Ids(_))
    }
}

/// Tasks by what they are; every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFilter {
    /// In one of these states (any when empty).
    #[serde(default)]
    pub states: Vec<TaskState>,
    /// With all of these tags.
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// In this queue of the connection's namespace.
    #[serde(default)]
    pub queue: Option<String>,
    /// With this name.
    #[serde(default)]
    pub name: Option<String>,
    /// Of this batch (one add request).
    #[serde(default)]
    pub batch: Option<u64>,
}

/// A request from an actioner (the CLI or any client).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionerToCoordinator {
    /// Echoed in the reply.
    pub request: RequestId,
    /// What is asked.
    pub body: ActionerRequest,
}

/// The most tasks one `Add` may carry. It keeps a request's decoded size bounded (bincode
/// reserves room for every element a body announces, and the coordinator refuses bodies that
/// would reserve more than 16 MiB); clients split larger adds into several requests.
pub const MAX_ADD_TASKS: usize = 10_000;

/// What an actioner can ask.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionerRequest {
    /// Adds tasks; all or none (a bad spec rejects the whole request). Replied to once durable.
    /// At most [`MAX_ADD_TASKS`] per request.
    Add {
        /// The tasks.
        tasks: Vec<TaskSpec>,
        /// Make them ready at once (default: no, they wait in `created`).
        #[serde(default)]
        play: bool,
    },
    /// Makes created or paused tasks ready (a paused running task resumes on its worker).
    Play {
        /// Which tasks.
        selector: Selector,
        /// With `All`: created tasks too, not only paused ones (absent: true). Named tasks are
        /// played whether created or paused.
        #[serde(default = "yes")]
        created: bool,
    },
    /// Holds tasks: created, ready and assigned ones are held by the coordinator, running ones are
    /// stopped (SIGSTOP) on their worker.
    Pause {
        /// Which tasks.
        selector: Selector,
    },
    /// Ends tasks as killed; running ones are stopped on their worker.
    Kill {
        /// Which tasks.
        selector: Selector,
    },
    /// Forgets finished tasks (completed, failed, killed).
    Remove {
        /// Which tasks.
        selector: Selector,
    },
    /// Lists tasks, newest first.
    List {
        /// Only these states; all when empty.
        #[serde(default)]
        states: Vec<TaskState>,
        /// Only tasks with all of these tags.
        #[serde(default)]
        tags: Vec<Tag>,
        /// At most this many (the newest).
        #[serde(default)]
        limit: Option<u32>,
        /// Only tasks of this queue (of the connection's namespace).
        #[serde(default)]
        queue: Option<String>,
    },
    /// One task with every field and attempt.
    Show {
        /// Id or unique prefix.
        id: String,
    },
    /// The worker table.
    Workers,
    /// Counts and rates.
    Summary,
    /// Counts per state for each value of one tag key (e.g. every `project=…`).
    Breakdown {
        /// The tag key.
        key: String,
    },
    /// Streams the events of the matching tasks on this connection until it closes.
    Subscribe {
        /// Which tasks.
        filter: EventFilter,
    },
    /// Runs failed or killed tasks again: back to ready, allowed `attempts` more attempts than
    /// they have used. `All` takes the failed tasks only (a kill was somebody's decision).
    Retry {
        /// Which tasks.
        selector: Selector,
        /// How many more attempts (at least 1; 1 when left out).
        #[serde(default = "one")]
        attempts: u32,
    },
    /// Ends a subscription of this connection: no event of it follows the reply.
    Unsubscribe {
        /// The id of the `Subscribe` request.
        subscription: RequestId,
    },
    /// Sends a message task to a queue of the connection's namespace (kiwipy's `task_send`).
    /// Replied `Sent` once durable; unless `no_reply`, its outcomes follow as `TaskOutcome`
    /// replies to the same request.
    Send {
        /// The queue's name.
        queue: String,
        /// The body.
        body: Data,
        /// Nobody waits for the outcome; the task is removed when it ends.
        #[serde(default)]
        no_reply: bool,
    },
    /// Asks again for the outcomes of message tasks this client sent (after a reconnect):
    /// replied `Watching`, then a `TaskOutcome` for each that is pending or ended, now or later.
    Watch {
        /// Ids or unique prefixes.
        ids: Vec<String>,
    },
    /// Starts taking message tasks of a queue of the namespace, at most `limit` held at once
    /// (client connections only).
    Serve {
        /// The queue's name.
        queue: String,
        /// How many of its tasks this connection may hold at once (at least 1).
        limit: u32,
    },
    /// Stops taking tasks of a queue; those already held stay held until answered.
    Unserve {
        /// The queue's name.
        queue: String,
    },
    /// Claims an RPC identifier in the namespace; unique on the whole coordinator (claiming it
    /// again from the connection that holds it changes nothing).
    Register {
        /// The identifier (AiiDA: a process's pk).
        identifier: String,
    },
    /// Gives an RPC identifier up.
    Unregister {
        /// The identifier.
        identifier: String,
    },
    /// An RPC: the body goes to the connection holding the identifier. Replied `Done` at once
    /// when some connection holds it (`unroutable` when none does); its answers then come back
    /// as `CallOutcome` replies to this request.
    Call {
        /// The identifier.
        identifier: String,
        /// The body.
        body: Data,
    },
    /// The answer to a `Call` this connection received (no reply unless refused).
    Respond {
        /// The call's number, from the `call` message.
        call: u64,
        /// Pending, or the final outcome.
        outcome: MessageOutcome,
    },
    /// Sends a broadcast to every listener of the namespace, the sender's own included.
    Broadcast {
        /// The message.
        message: BroadcastMessage,
    },
    /// Starts receiving the namespace's broadcasts, optionally only those whose subject and
    /// sender match (exact, or with `*`); replied `Done`, then `broadcast` messages.
    Listen {
        /// Subject patterns; any subject when empty. A broadcast without a subject passes.
        #[serde(default)]
        subjects: Vec<String>,
        /// Sender patterns; any sender when empty. A broadcast without a sender passes.
        #[serde(default)]
        senders: Vec<String>,
    },
    /// Stops a listener of this connection.
    Unlisten {
        /// The request id of its `Listen`.
        listener: RequestId,
    },
    /// Gives a worker no new task (`drain`), or tasks again; what it runs goes on. Replied
    /// `Workers` with that worker.
    WorkerDrain {
        /// The worker's id.
        worker: u64,
        /// Hold it back (true) or let it take tasks again (false).
        drain: bool,
    },
    /// The queues of the namespace: every queue with settings, tasks or subscribers.
    Queues,
    /// One queue of the namespace (a queue never named has the default settings).
    QueueShow {
        /// The queue's name.
        queue: String,
    },
    /// Changes a queue's settings (creating it when new); replied `Queue` once durable.
    QueueSet {
        /// The queue's name.
        queue: String,
        /// What changes.
        change: QueueChange,
    },
    /// Moves tasks that no worker holds to another queue of the connection's namespace (message
    /// tasks stay in theirs); replied `Changed` once durable. `All` moves every movable task.
    Move {
        /// Which tasks.
        selector: Selector,
        /// The queue they go to.
        queue: String,
    },
    /// The message tasks waiting in a queue of the namespace, oldest first.
    QueueTasks {
        /// The queue's name.
        queue: String,
        /// At most this many.
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Lists tasks newest first, a page at a time, for a client paging through millions: the
    /// matching tasks older than `before` (the last id of the previous page; from the newest
    /// when absent), at most `limit`. Replied with `Tasks`; the page is the last when it holds
    /// fewer than `limit`.
    ListPage {
        /// Which tasks.
        #[serde(default)]
        filter: TaskFilter,
        /// At most this many (at least 1).
        limit: u32,
        /// Only tasks older than this one.
        #[serde(default)]
        before: Option<TaskId>,
    },
    /// Streams the output of a task's command as it is written, attempt after attempt, until
    /// the task ends: `following`, then `output` pieces, then `followed`.
    Follow {
        /// Id, number or unique prefix.
        id: String,
    },
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// Which events a subscription receives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFilter {
    /// Tasks by id or unique prefix.
    #[serde(default)]
    pub ids: Vec<String>,
    /// Tasks with all of these tags (a task matches when it is named in `ids` or has these
    /// tags: the union).
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// Every task (ids and tags are then ignored).
    #[serde(default)]
    pub all: bool,
    /// Tasks of this queue of the connection's namespace; with `tags`, tasks that have both.
    #[serde(default)]
    pub queue: Option<String>,
    /// Tasks of this batch; with `tags` or `queue`, tasks that have all.
    #[serde(default)]
    pub batch: Option<u64>,
}

/// A message from the coordinator to an actioner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoordinatorToActioner {
    /// The answer to one request.
    Reply {
        /// The request's id.
        request: RequestId,
        /// The answer.
        body: Reply,
    },
    /// A state change of a subscribed task.
    Event {
        /// The id of the `Subscribe` request.
        subscription: RequestId,
        /// What happened.
        event: TaskEvent,
    },
    /// The coordinator closes this connection: it is going away (reconnect later), or it could
    /// not read a frame from this client (`reason` says which).
    Shutdown {
        /// Why, in words.
        reason: String,
    },
    /// A broadcast for a listener of this connection.
    Broadcast {
        /// The request id of the `Listen`.
        listener: RequestId,
        /// The broadcast.
        message: BroadcastMessage,
    },
    /// An RPC to an identifier this connection holds: answer with `Respond`.
    Call {
        /// The call's number, for `Respond`.
        call: u64,
        /// The identifier it was sent to.
        identifier: String,
        /// The body.
        body: Data,
    },
}

/// Answers to [`ActionerRequest`]s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// To `Add`: the new ids, in request order, durable.
    Added {
        /// New ids.
        ids: Vec<TaskId>,
        /// Their numbers, in the same order.
        #[serde(default)]
        numbers: Vec<u64>,
        /// The batch they make up.
        #[serde(default)]
        batch: u64,
    },
    /// To `Play`, `Pause`, `Kill`, `Remove`, `Retry` and `Move`: the tasks that changed, durable.
    Changed {
        /// Changed tasks.
        ids: Vec<TaskId>,
        /// More ids follow in further `Changed` replies to the same request (a change to
        /// millions of tasks is listed in parts, so that each fits in a frame).
        #[serde(default)]
        more: bool,
    },
    /// To `List`.
    Tasks {
        /// Matching tasks, newest first, cut at the limit.
        tasks: Vec<TaskSummary>,
        /// How many tasks are in each state, over all tasks.
        counts: Vec<StateCount>,
    },
    /// To `Show`.
    Task {
        /// The task.
        task: Box<TaskInfo>,
        /// Why a ready task is not running, when the coordinator can tell (its queue is paused
        /// or at its limit, no connected worker could ever take it, every eligible worker is
        /// busy).
        #[serde(default)]
        waiting: Option<String>,
    },
    /// To `Workers`.
    Workers {
        /// Every worker known, connected or lost.
        workers: Vec<WorkerInfo>,
    },
    /// To `Summary`.
    Summary {
        /// Tasks per state.
        counts: Vec<StateCount>,
        /// Workers currently connected.
        workers_connected: u32,
        /// Tasks that reached a final state in the last 60 s.
        finished_last_minute: u64,
    },
    /// To `Breakdown`: one line per tag value, sorted by value; tasks without the key are left out.
    Breakdown {
        /// The tag key asked for.
        key: String,
        /// Counts per state for each value.
        values: Vec<TagCounts>,
    },
    /// To `Subscribe`: the current state of every matching task, then events follow.
    Subscribed {
        /// A snapshot taken atomically with the subscription, so no change is missed.
        tasks: Vec<TaskStatus>,
        /// More of the snapshot follows in further `Subscribed` replies to the same request
        /// (a large snapshot is split so that each part fits in a frame); events come after the
        /// last part.
        #[serde(default)]
        more: bool,
    },
    /// The request failed; nothing changed.
    Error(ErrorReply),
    /// To `Unsubscribe`: no event of that subscription follows.
    Unsubscribed {
        /// The subscription that ended.
        subscription: RequestId,
    },
    /// To `Send`: the message task is durable in its queue.
    Sent {
        /// Its id.
        id: TaskId,
    },
    /// To `Watch`: these tasks are watched; their outcomes follow.
    Watching {
        /// The ids resolved.
        ids: Vec<TaskId>,
    },
    /// To `Send` (after `Sent`) and `Watch`: a message task's outcome, pending or final.
    TaskOutcome {
        /// The task.
        id: TaskId,
        /// Its outcome.
        outcome: MessageOutcome,
    },
    /// To `Call`: the RPC's outcome, pending or final.
    CallOutcome {
        /// Its outcome.
        outcome: MessageOutcome,
    },
    /// To `Serve`, `Unserve`, `Register`, `Unregister`, `Listen` and `Unlisten`: done; to
    /// `Call`: routed.
    Done,
    /// To `Broadcast`: how many listeners it reached.
    Broadcasted {
        /// Listeners of the namespace that took it.
        listeners: u32,
    },
    /// To `Queues`.
    Queues {
        /// Every queue of the namespace that has tasks or subscribers, by name.
        queues: Vec<QueueInfo>,
    },
    /// To `QueueShow` and `QueueSet`.
    Queue {
        /// The queue (boxed: it is the largest reply, and rare).
        queue: Box<QueueInfo>,
    },
    /// To `QueueTasks`.
    QueueTasks {
        /// The waiting tasks, oldest first.
        tasks: Vec<QueuedMessage>,
    },
    /// To `Follow`: which attempt is followed now, sent first and again whenever a new attempt
    /// starts.
    Following {
        /// The task.
        id: TaskId,
        /// Its number.
        number: u64,
        /// Its state now.
        state: TaskState,
        /// The attempt whose output follows; 0 when none has started yet.
        attempt: u32,
        /// The name of the worker that runs it.
        worker: Option<String>,
        /// Whether its output comes while it runs: false when the task is not a command, or its
        /// worker does not stream output (then only the stored tails tell, once it ended).
        streamed: bool,
    },
    /// To `Follow`: a piece of the followed attempt's output, in the order the worker read it.
    Output {
        /// The task.
        id: TaskId,
        /// The attempt.
        attempt: u32,
        /// Which stream.
        stream: OutputStream,
        /// Where `data` starts in the stream: how many bytes the command had written to it
        /// before. A piece that starts beyond the end of the one before it follows a gap (the
        /// worker could not send everything, or the stream was joined late).
        offset: u64,
        /// The bytes, raw: a piece may end inside a line or a UTF-8 character.
        data: Bytes,
    },
    /// To `Follow`: the task ended; nothing follows.
    Followed {
        /// The task.
        id: TaskId,
        /// Its final state.
        state: TaskState,
        /// Its last attempt.
        attempt: u32,
    },
}

/// The tasks with one tag value, counted per state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagCounts {
    /// The tag's value.
    pub value: String,
    /// Tasks per state (states with none are left out).
    pub counts: Vec<StateCount>,
}

/// A task id with its state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// Which task.
    pub id: TaskId,
    /// Its state.
    pub state: TaskState,
}

/// One state change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// Which task.
    pub id: TaskId,
    /// The state it entered.
    pub state: TaskState,
    /// When (coordinator clock, ms since the epoch).
    pub at_ms: u64,
    /// The attempt number concerned, 0 when none has started.
    pub attempt: u32,
}

/// A message from a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerToCoordinator {
    /// Sent every heartbeat interval, however busy the worker is.
    Heartbeat {
        /// Tasks it runs now.
        #[serde(default)]
        running: u32,
    },
    /// Sent first after a reconnect: what it still runs, so nobody else gets those tasks.
    Reattach {
        /// Attempts still running on this worker, and finished ones not yet acknowledged.
        #[serde(default)]
        running: Vec<AttemptRef>,
    },
    /// An attempt started.
    Started {
        /// Which attempt.
        attempt: AttemptRef,
        /// When, on the worker's clock.
        at_ms: u64,
    },
    /// An attempt ended; the worker resends it until `Ack`ed.
    Finished {
        /// Which attempt.
        attempt: AttemptRef,
        /// How it ended.
        report: AttemptReport,
    },
    /// The worker drains: it takes no new tasks but finishes what it runs.
    Draining,
    /// The worker will not run this attempt (kiwipy's `TaskRejected`): the task goes back to its
    /// queue without counting as a failed attempt, to another subscriber first when there is one.
    Reject {
        /// Which attempt.
        attempt: AttemptRef,
    },
    /// A piece of a running command's output, sent only between a `follow` that turns
    /// streaming on for its attempt and one that turns it off (only by workers whose hello set
    /// `streams_output`).
    Output {
        /// Which attempt.
        attempt: AttemptRef,
        /// Which stream.
        stream: OutputStream,
        /// Where `data` starts in the stream: how many bytes the command had written to it
        /// before. Pieces may overlap what was sent before (the tails after a second `follow`)
        /// or leave gaps (output the worker could not send fast enough).
        offset: u64,
        /// The bytes, raw.
        data: Bytes,
    },
}

/// Which of a command's output streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl OutputStream {
    /// Both, in the order of [`OutputStream::index`].
    pub const BOTH: [OutputStream; 2] = [OutputStream::Stdout, OutputStream::Stderr];

    /// 0 for stdout, 1 for stderr: where a stream's state sits in a pair kept for both.
    pub fn index(self) -> usize {
        match self {
            OutputStream::Stdout => 0,
            OutputStream::Stderr => 1,
        }
    }
}

/// The part of an output piece that is new to a reader who has a stream up to `upto`: where it
/// starts and its bytes, or `None` when the reader has it all. A piece repeats bytes after a
/// reconnect (the tails again); where it starts beyond `upto`, the bytes between were left out.
pub fn new_part(upto: u64, offset: u64, data: &[u8]) -> Option<(u64, &[u8])> {
    if offset + data.len() as u64 <= upto {
        return None;
    }
    let skip = upto.saturating_sub(offset);
    Some((offset + skip, &data[skip as usize..]))
}

/// Names one attempt of one task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttemptRef {
    /// The task.
    pub task: TaskId,
    /// The attempt number (1-based).
    pub attempt: u32,
}

/// What a worker needs to run a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispatch {
    /// Which attempt this is.
    pub attempt: AttemptRef,
    /// Label, for logs.
    pub name: Option<String>,
    /// What to run.
    pub payload: Payload,
    /// Stop and fail it after this long.
    pub timeout_ms: Option<u64>,
    /// The user data key.
    pub user_key: Option<String>,
    /// The user data as of the previous attempt.
    pub user_data: Data,
}

/// A message from the coordinator to a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoordinatorToWorker {
    /// Run this attempt.
    Dispatch(Box<Dispatch>),
    /// Stop this attempt and report it killed.
    Kill {
        /// Which attempt.
        attempt: AttemptRef,
    },
    /// Suspend this attempt (SIGSTOP for exec).
    Pause {
        /// Which attempt.
        attempt: AttemptRef,
    },
    /// Continue a suspended attempt (SIGCONT for exec).
    Resume {
        /// Which attempt.
        attempt: AttemptRef,
    },
    /// The report of this attempt is durable: forget it.
    Ack {
        /// Which attempt.
        attempt: AttemptRef,
    },
    /// The answer to `Reattach`: which claimed attempts to keep running and which to drop
    /// because the task was given to someone else, killed or removed meanwhile.
    Reattached {
        /// Still this worker's.
        keep: Vec<AttemptRef>,
        /// Stop these without reporting them.
        drop: Vec<AttemptRef>,
    },
    /// The answer to each `Heartbeat`, so that a worker notices a silent coordinator.
    HeartbeatAck,
    /// A request from this worker was refused.
    Error(ErrorReply),
    /// The coordinator closes this connection (it is going away, or it could not read a frame
    /// from this worker; `reason` says which); keep running and reconnect.
    Shutdown {
        /// Why, in words.
        reason: String,
    },
    /// Somebody follows this attempt's output (`on`), or nobody does any more: send what you
    /// hold of its output (the tails), then every piece as it is read, until told otherwise or
    /// the attempt ends. Sent only to workers whose hello set `streams_output`.
    Follow {
        /// Which attempt.
        attempt: AttemptRef,
        /// Start (true) or stop (false).
        on: bool,
    },
    /// Give this attempt back if it has not started: another worker has a free slot for it.
    /// Sent only to workers whose hello announced `prefetch`, for attempts they hold beyond
    /// their slots; one that started meanwhile (or is unknown) is ignored, so the race with
    /// `started` is harmless.
    Revoke {
        /// Which attempt.
        attempt: AttemptRef,
    },
}

/// What a client (the combined role) sends: requests as an actioner, and worker messages for
/// the queue tasks it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientToCoordinator {
    /// A request, answered by `reply`.
    Request(ActionerToCoordinator),
    /// A worker message (heartbeat, reattach, started, finished, reject).
    Worker(WorkerToCoordinator),
}

/// What a client receives: the actioner's messages and the worker's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoordinatorToClient {
    /// Replies, events, broadcasts, calls, shutdown.
    Actioner(CoordinatorToActioner),
    /// Dispatches of queue tasks, acks, heartbeat acks, reattached, kill.
    Worker(CoordinatorToWorker),
}
