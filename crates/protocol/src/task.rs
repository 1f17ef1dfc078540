//! Task, attempt and worker descriptions as they travel on the wire and are shown to users.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::data::Data;
use crate::ids::{TaskId, WorkerId};

/// How many bytes of each of stdout and stderr an attempt keeps: the end, where errors are.
pub const OUTPUT_TAIL_LIMIT: usize = 64 * 1024;

/// Which kind of worker may run a task: a thread-blocking one or a runtime-sharing one.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum BlockType {
    /// Runs on its own blocking thread; a worker runs at most `slots` at once.
    Sync,
    /// Runs concurrently on an async runtime; hundreds per worker.
    #[default]
    Async,
}

impl BlockType {
    /// The lowercase name used on the command line and in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockType::Sync => "sync",
            BlockType::Async => "async",
        }
    }
}

impl fmt::Display for BlockType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BlockType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sync" | "blocking" => Ok(BlockType::Sync),
            "async" | "nonblocking" => Ok(BlockType::Async),
            other => Err(format!(
                "unknown block type {other:?}: expected sync or async"
            )),
        }
    }
}

/// A `key=value` label, for filtering and for breakdowns.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Tag {
    /// What is labelled, e.g. `project`.
    pub key: String,
    /// Its value, e.g. `apollo`; may be empty.
    pub value: String,
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

impl FromStr for Tag {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok(Tag {
                key: k.to_string(),
                value: v.to_string(),
            }),
            _ => Err(format!("tag {s:?} is not of the form key=value")),
        }
    }
}

/// One environment variable for an `exec` task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Variable value.
    pub value: String,
}

/// What a task does when it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// A real command: `argv[0]` is looked up in `PATH` on the worker.
    Exec {
        /// Program and arguments; never empty.
        argv: Vec<String>,
        /// Variables added to the worker's environment.
        #[serde(default)]
        env: Vec<EnvVar>,
        /// Working directory; the worker's own when absent.
        #[serde(default)]
        cwd: Option<String>,
    },
    /// The mock task: waits, blocking a thread on sync workers, on a timer on async ones.
    Sleep {
        /// How long, in milliseconds.
        duration_ms: u64,
    },
    /// Run by a worker that registered a handler of this name.
    Custom {
        /// The handler name the worker advertised at the handshake.
        handler: String,
        /// The handler's input.
        #[serde(default)]
        data: Data,
    },
    /// A message task of the broker (kiwipy's `task_send`): delivered to a connection that
    /// serves `queue` in `namespace`, whose answer becomes the task's outcome.
    Message {
        /// The namespace of the sender's connection.
        namespace: String,
        /// The queue's name in that namespace.
        queue: String,
        /// The task's body: opaque to the coordinator.
        body: Data,
        /// Nobody waits for the outcome: the task is removed once it ends.
        no_reply: bool,
    },
}

impl Payload {
    /// The handler a worker must serve to run this payload, if any.
    pub fn handler(&self) -> Option<&str> {
        match self {
            Payload::Custom { handler, .. } => Some(handler),
            _ => None,
        }
    }

    /// A short human description for tables.
    pub fn describe(&self) -> String {
        match self {
            Payload::Exec { argv, .. } => argv
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
            Payload::Sleep { duration_ms } => format!(
                "sleep {}",
                crate::cli::format_duration(std::time::Duration::from_millis(*duration_ms))
            ),
            Payload::Custom { handler, .. } => format!("custom {handler}"),
            Payload::Message {
                namespace, queue, ..
            } => format!("message {namespace}/{queue}"),
        }
    }
}

/// An argument as a shell would need it typed: bare when it is plain, in single quotes else.
fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

/// Everything a user says about a task when adding it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// A label for people; not unique.
    #[serde(default)]
    pub name: Option<String>,
    /// Which kind of worker runs it.
    pub block: BlockType,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    /// Labels for filtering.
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// What to run.
    pub payload: Payload,
    /// How many attempts before the task stays `failed`; 0 (or absent) takes its queue's
    /// default, which is 1 unless the queue sets another.
    #[serde(default)]
    pub max_attempts: u32,
    /// An attempt running longer than this is stopped and failed as timed out; absent takes
    /// its queue's default (none unless the queue sets one).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Names the user data, e.g. the key of a workflow step.
    #[serde(default)]
    pub user_key: Option<String>,
    /// A dictionary that a handler may update with each attempt (MessagePack).
    #[serde(default)]
    pub user_data: Data,
    /// The queue it waits in, in the namespace of the connection that adds it; `default` when
    /// absent. A message task's queue is the one its payload names.
    #[serde(default)]
    pub queue: Option<String>,
    /// Soft affinity: a free worker whose tags include these gets the task before one whose
    /// tags do not; when none is free, any eligible worker does (never a reason to wait).
    #[serde(default)]
    pub prefer: Vec<Tag>,
    /// Hard affinity: only workers whose tags include all of these may run the task.
    #[serde(default)]
    pub require: Vec<Tag>,
}

/// The queue of a task that names none.
pub const DEFAULT_QUEUE: &str = "default";

impl TaskSpec {
    /// A spec with defaults around a payload: async, priority 0, one attempt.
    pub fn new(payload: Payload) -> Self {
        TaskSpec {
            name: None,
            block: BlockType::Async,
            priority: 0,
            tags: Vec::new(),
            payload,
            max_attempts: 1,
            timeout_ms: None,
            user_key: None,
            user_data: Data::empty(),
            queue: None,
            prefer: Vec::new(),
            require: Vec::new(),
        }
    }

    /// What a worker must offer to run it, in words: `async tasks`, `sync tasks with handler
    /// render`, `async tasks with tags gpu=yes` (what the coordinator and the CLI say when no
    /// connected worker does).
    pub fn worker_needs(&self) -> String {
        let mut needs = format!("{} tasks", self.block);
        if let Some(h) = self.payload.handler() {
            needs.push_str(&format!(" with handler {h}"));
        }
        if !self.require.is_empty() {
            let tags: Vec<String> = self.require.iter().map(|t| t.to_string()).collect();
            needs.push_str(&format!(" with tags {}", tags.join(",")));
        }
        needs
    }

    /// The name of its queue in its namespace.
    pub fn queue_name(&self) -> &str {
        match &self.payload {
            Payload::Message { queue, .. } => queue,
            _ => self.queue.as_deref().unwrap_or(DEFAULT_QUEUE),
        }
    }

    /// Checks what the coordinator refuses to store.
    pub fn validate(&self) -> Result<(), String> {
        match &self.payload {
            Payload::Exec { argv, .. } if argv.is_empty() || argv[0].is_empty() => {
                return Err("an exec task needs a command".into());
            }
            Payload::Custom { handler, .. } if handler.is_empty() => {
                return Err("a custom task needs a handler name".into());
            }
            _ => {}
        }
        if self.timeout_ms == Some(0) {
            return Err("a timeout must be longer than 0 ms".into());
        }
        if let Some(q) = &self.queue {
            check_queue_name(q)?;
        }
        Ok(())
    }
}

/// Where a task is in its life. See DESIGN.md for the transitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Added, waiting to be played.
    Created,
    /// Queued for a worker.
    Ready,
    /// Sent to a worker, not yet confirmed running.
    Assigned,
    /// A worker runs it.
    Running,
    /// Held by the user; `play` resumes it.
    Paused,
    /// Finished successfully. Final.
    Completed,
    /// Finished unsuccessfully with no attempts left. Final.
    Failed,
    /// Stopped by the user. Final.
    Killed,
}

impl TaskState {
    /// Every state, in life order, for counts and tables.
    pub const ALL: [TaskState; 8] = [
        TaskState::Created,
        TaskState::Ready,
        TaskState::Assigned,
        TaskState::Running,
        TaskState::Paused,
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Killed,
    ];

    /// Whether the task will never change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Failed | TaskState::Killed
        )
    }

    /// Whether a worker holds the task.
    pub fn on_worker(self) -> bool {
        matches!(self, TaskState::Assigned | TaskState::Running)
    }

    /// The lowercase name used on the command line and in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Created => "created",
            TaskState::Ready => "ready",
            TaskState::Assigned => "assigned",
            TaskState::Running => "running",
            TaskState::Paused => "paused",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Killed => "killed",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<_> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown state {s:?}: expected one of {}", names.join(", "))
            })
    }
}

/// When the task last entered each stage, in ms since the epoch; `None` for stages not reached.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTimes {
    /// Added.
    pub created_ms: u64,
    /// Last made ready.
    #[serde(default)]
    pub ready_ms: Option<u64>,
    /// Last sent to a worker.
    #[serde(default)]
    pub assigned_ms: Option<u64>,
    /// Last confirmed running.
    #[serde(default)]
    pub running_ms: Option<u64>,
    /// Last paused.
    #[serde(default)]
    pub paused_ms: Option<u64>,
    /// Reached a final state.
    #[serde(default)]
    pub ended_ms: Option<u64>,
}

/// How one attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Exit code 0, or the handler returned.
    Succeeded,
    /// Non-zero exit, a handler error, or a command that could not start.
    Failed,
    /// Stopped because the task's timeout passed.
    TimedOut,
    /// Stopped on the user's kill.
    Killed,
    /// Its worker vanished (lease expired) or the coordinator gave the task to someone else.
    Lost,
    /// The worker gave it back unfinished (draining, shutting down); does not count as a failure.
    HandedBack,
}

impl Outcome {
    /// The lowercase name used in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Killed => "killed",
            Outcome::Lost => "lost",
            Outcome::HandedBack => "handed_back",
        }
    }
}

/// What a worker reports when an attempt ends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptReport {
    /// How it ended; `None` is read as failed.
    pub outcome: Option<Outcome>,
    /// The process exit code, for `exec`.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why it failed, in words.
    #[serde(default)]
    pub error: Option<String>,
    /// The last [`OUTPUT_TAIL_LIMIT`] bytes of stdout (lossy UTF-8).
    #[serde(default)]
    pub stdout_tail: String,
    /// The last [`OUTPUT_TAIL_LIMIT`] bytes of stderr (lossy UTF-8).
    #[serde(default)]
    pub stderr_tail: String,
    /// A custom handler's returned data.
    #[serde(default)]
    pub output: Data,
    /// New user data from the handler; replaces the task's when present.
    #[serde(default)]
    pub user_data: Option<Data>,
    /// When the attempt started on the worker.
    #[serde(default)]
    pub started_ms: Option<u64>,
    /// When it ended on the worker.
    #[serde(default)]
    pub ended_ms: u64,
}

/// One try at running a task, kept forever in the task's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// Who ran it.
    pub worker: WorkerId,
    /// That worker's name when it ran it.
    pub worker_name: String,
    /// When the coordinator sent it.
    pub assigned_ms: u64,
    /// When the worker said it started.
    pub started_ms: Option<u64>,
    /// When it ended (worker's clock for reports, coordinator's for lost attempts).
    pub ended_ms: Option<u64>,
    /// How it ended; `None` while it runs.
    pub outcome: Option<Outcome>,
    /// Exit code of an exec task.
    pub exit_code: Option<i32>,
    /// Why it failed, in words.
    pub error: Option<String>,
    /// Tail of stdout.
    pub stdout_tail: String,
    /// Tail of stderr.
    pub stderr_tail: String,
    /// Returned data of a custom handler.
    pub output: Data,
    /// Reports that arrived after this attempt was no longer current (a frozen worker woke up):
    /// recorded for the history, never acted upon.
    pub late_reports: Vec<AttemptReport>,
}

/// A task as the coordinator knows it: what `task show` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Identity.
    pub id: TaskId,
    /// What the user asked for.
    pub spec: TaskSpec,
    /// Current state.
    pub state: TaskState,
    /// When each stage was entered.
    pub times: StageTimes,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
    /// The worker that holds it now, when assigned or running.
    pub worker: Option<WorkerId>,
    /// The namespace of the connection that added it: its queue is `spec.queue` there.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Its number, for people: handed out in order by the coordinator, kept across restarts,
    /// never reused (`task show 42`). The id stays the stable name.
    #[serde(default)]
    pub number: u64,
    /// The number of the add request that made it (hq's job): `--batch 7` names them all.
    #[serde(default)]
    pub batch: u64,
}

fn default_namespace() -> String {
    crate::DEFAULT_NAMESPACE.to_string()
}

/// Checks a queue's name: not empty, at most 200 bytes, no control characters.
pub fn check_queue_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a queue needs a name".into());
    }
    if name.len() > 200 {
        return Err(format!("queue name of {} bytes: at most 200", name.len()));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("queue name {name:?} holds control characters"));
    }
    Ok(())
}

/// A task's line in `task list`: enough to choose what to look at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSummary {
    /// Identity.
    pub id: TaskId,
    /// Label.
    pub name: Option<String>,
    /// Current state.
    pub state: TaskState,
    /// Worker kind.
    pub block: BlockType,
    /// Priority.
    pub priority: i32,
    /// Labels.
    pub tags: Vec<Tag>,
    /// Short description of the payload.
    pub command: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Worker holding it now.
    pub worker: Option<WorkerId>,
    /// When added.
    pub created_ms: u64,
    /// When it entered its current state.
    pub changed_ms: u64,
    /// The queue it is in (in its namespace).
    #[serde(default = "default_queue")]
    pub queue: String,
    /// The name of the worker of its latest attempt, kept once the task ended.
    #[serde(default)]
    pub worker_name: Option<String>,
    /// Its number.
    #[serde(default)]
    pub number: u64,
    /// Its batch.
    #[serde(default)]
    pub batch: u64,
}

fn default_queue() -> String {
    DEFAULT_QUEUE.to_string()
}

/// A worker's liveness, as the coordinator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Connected, heartbeating, takes tasks.
    Active,
    /// Connected, finishing what it runs, takes nothing new.
    Draining,
    /// Disconnected or silent; its lease may still hold its tasks until it expires.
    Lost,
}

impl WorkerState {
    /// The lowercase name used in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Active => "active",
            WorkerState::Draining => "draining",
            WorkerState::Lost => "lost",
        }
    }
}

/// A line of `worker list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Identity.
    pub id: WorkerId,
    /// Its name (defaults to host and pid).
    pub name: String,
    /// The host it said it runs on.
    pub host: String,
    /// Kind of tasks it takes.
    pub block: BlockType,
    /// How many tasks it runs at once at most.
    pub slots: u32,
    /// How many it holds now.
    pub running: u32,
    /// Its labels.
    pub tags: Vec<Tag>,
    /// Custom handlers it serves.
    pub handlers: Vec<String>,
    /// When its current connection began.
    pub connected_ms: u64,
    /// Its last heartbeat.
    pub last_heartbeat_ms: u64,
    /// Liveness.
    pub state: WorkerState,
}

/// How many tasks are in one state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCount {
    /// The state.
    pub state: TaskState,
    /// How many tasks are in it.
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_keep_their_quoting() {
        let p = Payload::Exec {
            argv: vec!["sh".into(), "-c".into(), "sleep 300".into()],
            env: vec![],
            cwd: None,
        };
        assert_eq!(p.describe(), "sh -c 'sleep 300'");
        let p = Payload::Exec {
            argv: vec!["echo".into(), "it's".into(), "".into()],
            env: vec![],
            cwd: None,
        };
        assert_eq!(p.describe(), r"echo 'it'\''s' ''");
    }
}
