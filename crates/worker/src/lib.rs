//! `workwurm`, the tatzelwurm worker, as a library: run [`run`] with your own [`Handlers`] to make
//! a worker binary that serves custom tasks, or use the `workwurm` binary as it is.
//!
//! [`session`] keeps the connection (reconnecting, reattaching, resending unacknowledged results);
//! [`runner`] runs attempts; [`exec`] runs commands, which [`spawn`] starts; [`handlers`] holds custom task handlers;
//! [`touch`] knows when the coordinator was last heard (nothing starts after a silence past the
//! lease); [`pool`] keeps several worker processes alive (`--processes`).

pub mod exec;
pub mod handlers;
pub mod pool;
pub mod runner;
pub mod session;
pub mod spawn;
pub mod touch;

use std::path::PathBuf;
use std::time::Duration;

pub use exec::Spawn;
pub use handlers::{Handlers, TaskInput, TaskOutput};
pub use session::run;
use tatzelwurm_protocol::transport::Endpoint;
use tatzelwurm_protocol::{BlockType, BodyCodec, Tag};

/// Everything a worker needs to know.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The coordinator: `HOST:PORT`, or `unix:PATH` for a Unix socket.
    pub coordinator: String,
    /// Token presented at the handshake (empty when the coordinator runs without auth).
    pub token: String,
    /// Where the token comes from: read again before every connection, so that a worker started
    /// before a brand-new coordinator (which writes the file) or kept across a new one presents
    /// the current token. When the file cannot be read, `token` stays as it was.
    pub token_file: Option<PathBuf>,
    /// Which tasks it takes.
    pub block: BlockType,
    /// How many at once.
    pub slots: u32,
    /// How many tasks it takes beyond its slots, each started the moment a slot frees: the
    /// dispatch's round trip then no longer leaves a slot empty between two short tasks. The
    /// coordinator gives this room only when no other worker has a free slot, and asks a held
    /// task back when one gets free. 0 (the default) takes no more than the slots.
    pub prefetch: u32,
    /// How long the report of a finished attempt may wait for others to share its write, while
    /// the worker holds a task to start in the freed slot (so no slot waits for the
    /// coordinator's answer). One write and one wake of the coordinator for several short tasks
    /// instead of one each; without held tasks a report goes at once. Zero sends every report
    /// at once.
    pub report_linger: Duration,
    /// How long an attempt runs before its `started` is sent (20 ms by default). One that ends
    /// sooner sends only its report, which says when it started: one message instead of two for
    /// the short tasks that come by the million, at the price of showing `running` that much
    /// later. Somebody following the attempt's output gets its `started` at once regardless.
    pub started_after: Duration,
    /// Name for people.
    pub name: String,
    /// Host name reported.
    pub host: String,
    /// Labels.
    pub tags: Vec<Tag>,
    /// Body codec (bincode between Rust peers).
    pub codec: BodyCodec,
    /// How long running tasks may take to finish after SIGTERM before they are handed back.
    pub drain_grace: Duration,
    /// Between SIGTERM and SIGKILL when an exec task is killed.
    pub kill_grace: Duration,
    /// How commands are started.
    pub spawn: Spawn,
    /// Where to write the worker id once known (for scripts and tests); optional.
    pub id_file: Option<PathBuf>,
    /// How long the coordinator has to answer the handshake before the worker tries again.
    pub connect_timeout: Duration,
}

impl WorkerConfig {
    /// Defaults: async, 256 slots (sync: one per CPU), named after host and pid.
    /// The address may leave out the port (then 5677).
    pub fn new(coordinator: impl Into<String>, block: BlockType) -> Self {
        let host = hostname();
        let slots = match block {
            BlockType::Sync => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            BlockType::Async => 256,
        };
        WorkerConfig {
            coordinator: Endpoint::parse(&coordinator.into()).to_string(),
            token: String::new(),
            token_file: None,
            block,
            slots,
            prefetch: 0,
            report_linger: Duration::from_millis(2),
            started_after: Duration::from_millis(20),
            name: format!("{host}-{}", std::process::id()),
            host,
            tags: Vec::new(),
            codec: BodyCodec::Bincode,
            drain_grace: Duration::from_secs(60),
            kill_grace: Duration::from_secs(5),
            spawn: Spawn::default(),
            id_file: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// This machine's host name, or `localhost` when it cannot be read.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}
