//! The four message enums, one per direction, exchanged after the handshake.

use serde::{Deserialize, Serialize};

use crate::data::Data;
use crate::error::ErrorReply;
use crate::ids::{RequestId, TaskId};
use crate::task::{
    AttemptReport, Payload, StateCount, Tag, TaskInfo, TaskSpec, TaskState, TaskSummary, WorkerInfo,
};

/// Which tasks a request is about: ids or unique id prefixes, or every task it can apply to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    /// Full ids or unique prefixes (hex, hyphens optional), resolved by the coordinator.
    Ids(Vec<String>),
    /// Every task the operation is valid for.
    All,
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
}

fn one() -> u32 {
    1
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
}

/// Answers to [`ActionerRequest`]s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// To `Add`: the new ids, in request order, durable.
    Added {
        /// New ids.
        ids: Vec<TaskId>,
    },
    /// To `Play`, `Pause`, `Kill` and `Remove`: the tasks that changed, durable.
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
}
