//! The coordinator's settings, as the binary's flags fill them and as tests set them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::store::StoreOptions;

/// Everything `run` needs to know.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the token (and, by default, the store) lives.
    pub data_dir: PathBuf,
    /// The store to use.
    pub store: StoreOptions,
    /// Accept any token (for trials): logged loudly.
    pub insecure_no_auth: bool,
    /// How long a silent or disconnected worker keeps its tasks.
    pub lease: Duration,
    /// How often workers heartbeat (told to them at the handshake).
    pub heartbeat: Duration,
    /// Send a lost worker's tasks to `paused` instead of `ready`.
    pub lost_to_paused: bool,
    /// Forget a worker lost for this long (it holds nothing by then); `None` keeps them all.
    pub forget_lost: Option<Duration>,
    /// Remove a finished task this long after it ended; `None` keeps every task.
    pub remove_finished: Option<Duration>,
    /// Largest frame accepted or sent.
    pub max_frame: usize,
    /// A client must finish its hello within this.
    pub handshake_timeout: Duration,
    /// Connections beyond this are refused.
    pub max_connections: usize,
    /// Delay before answering a bad token, so that guessing is slow.
    pub auth_failure_delay: Duration,
    /// Outgoing messages queued per connection before it is dropped as too slow.
    pub conn_queue: usize,
}

impl Config {
    /// Defaults around a data directory and a store URL.
    pub fn new(data_dir: PathBuf, db_url: String) -> Self {
        Config {
            data_dir,
            store: StoreOptions::new(db_url),
            insecure_no_auth: false,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            lost_to_paused: false,
            forget_lost: Some(Duration::from_secs(24 * 3600)),
            remove_finished: None,
            max_frame: tatzelwurm_protocol::DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(10),
            max_connections: 4096,
            auth_failure_delay: Duration::from_millis(500),
            conn_queue: 65_536,
        }
    }
}

/// Where to listen by default: loopback only.
pub fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5677))
}

/// The data directory when none is given: the user's data dir, e.g. `~/.local/share/tatzelwurm`.
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("tatzelwurm")
}
