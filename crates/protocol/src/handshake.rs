//! The first exchange on every connection: who the client is, which codec it wants, its token.
//!
//! Both frames of the handshake are always MessagePack with named fields, whatever codec the client
//! then chooses, so a hex dump of a connection's start can be read without knowing the rest.

use serde::{Deserialize, Serialize};

use crate::codec::BodyCodec;
use crate::ids::WorkerId;
use crate::task::{BlockType, Tag};

/// The first field of every hello: tells a stray client (an HTTP probe, a wrong port) from a peer.
pub const MAGIC: &str = "tatzelwurm";

/// The protocol version this build speaks. Version 3 added the broker: the `client` role,
/// namespaces, message tasks with replies, RPC and broadcasts. Version 4 added named queues:
/// new fields at the end of a task's spec, its info and its summary, and the queue requests.
pub const PROTOCOL_VERSION: u32 = 4;

/// The oldest version a coordinator still accepts: versions 2 and 3 are version 4 without the
/// broker or the queues, so MessagePack peers built for them keep working unchanged (their maps
/// simply lack the new fields).
pub const MIN_PROTOCOL_VERSION: u32 = 2;

/// The oldest version a bincode peer may speak: bincode is positional, so the fields that
/// version 4 added to tasks change the layout of every message that carries one.
pub const MIN_BINCODE_VERSION: u32 = 4;

/// The namespace of a peer that names none: where the CLI's tasks and queues live.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The client's first frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: String,
    /// The client's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Who the client is.
    pub role: Role,
    /// The body codec for every later frame, both directions.
    pub codec: BodyCodec,
    /// The coordinator's secret (the `token` file); empty when the coordinator runs without auth.
    #[serde(default)]
    pub token: String,
}

impl Hello {
    /// A hello of this protocol version.
    pub fn new(role: Role, codec: BodyCodec, token: impl Into<String>) -> Self {
        Hello {
            magic: MAGIC.to_string(),
            version: PROTOCOL_VERSION,
            role,
            codec,
            token: token.into(),
        }
    }
}

/// What kind of peer connects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A worker that takes tasks.
    Worker(WorkerHello),
    /// A client that sends requests (the CLI, a library).
    Actioner {
        /// Free text for logs, e.g. `actionwurm 0.1.0`.
        #[serde(default)]
        client: String,
        /// Where its queues, RPC identifiers and broadcasts live; [`DEFAULT_NAMESPACE`] when empty.
        #[serde(default)]
        namespace: String,
    },
    /// A peer in every role at once (a kiwipy communicator): it sends requests, serves queues,
    /// answers RPC calls and listens to broadcasts on one connection.
    Client(ClientHello),
}

/// What a client (the combined role) says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    /// Its name for people (shown in `worker list` while it serves a queue).
    #[serde(default)]
    pub name: String,
    /// The host it runs on.
    #[serde(default)]
    pub host: String,
    /// Where its queues, RPC identifiers and broadcasts live; [`DEFAULT_NAMESPACE`] when empty.
    /// Two AiiDA profiles use two namespaces and never see each other's messages.
    #[serde(default)]
    pub namespace: String,
    /// The id it had before a reconnect, so that it keeps the queue tasks it holds.
    #[serde(default)]
    pub previous_id: Option<WorkerId>,
}

/// The namespace a hello names, with the default filled in.
pub fn namespace_of(given: &str) -> String {
    if given.is_empty() {
        DEFAULT_NAMESPACE.to_string()
    } else {
        given.to_string()
    }
}

/// What a worker says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerHello {
    /// Which tasks it takes.
    pub block: BlockType,
    /// How many at once, at least 1.
    pub slots: u32,
    /// Its name for people.
    pub name: String,
    /// The host it runs on.
    #[serde(default)]
    pub host: String,
    /// Labels.
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// The custom handlers it serves.
    #[serde(default)]
    pub handlers: Vec<String>,
    /// The id it had before a reconnect, so it keeps its tasks.
    #[serde(default)]
    pub previous_id: Option<WorkerId>,
    /// It streams a running command's output when asked (`follow`), so that `task follow`
    /// shows it as it is written. Workers that leave it out are never asked. Not written when
    /// false, so that the hello of a worker without it is the one of protocol version 4.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub streams_output: bool,
    /// Tasks it takes beyond its slots, to start the moment a slot frees: a dispatch's round
    /// trip and commit then no longer leave a slot empty between two short tasks. The
    /// coordinator fills this room only when no other worker has a free slot for the task, and
    /// takes a held task back (`revoke`) when one gets free. Not written when 0, so that the
    /// hello of a worker without it is the one of protocol version 4.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub prefetch: u32,
    /// It runs only the custom tasks of its `handlers`, no commands and no sleeps (a worker for
    /// a language's own functions, like the Python package's `Worker`): the coordinator gives
    /// it nothing else. Not written when false, so that the hello of a worker without it is the
    /// one of protocol version 4.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub custom_only: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The coordinator's answer to a hello.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HelloReply {
    /// Accepted: later frames use the chosen codec.
    Welcome {
        /// The coordinator's [`PROTOCOL_VERSION`].
        version: u32,
        /// The id given to this peer (a worker id for workers and clients, a connection number
        /// for actioners).
        peer_id: u64,
        /// How often a worker must heartbeat, in ms.
        heartbeat_ms: u64,
        /// How long a silent worker keeps its tasks, in ms.
        lease_ms: u64,
    },
    /// Refused: the coordinator closes the connection after this frame.
    Rejected {
        /// Why, for programs.
        kind: RejectKind,
        /// Why, for people.
        message: String,
        /// The coordinator's [`PROTOCOL_VERSION`], so a client can say which side to upgrade.
        version: u32,
    },
}

/// Why a hello was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectKind {
    /// The versions differ.
    VersionMismatch,
    /// Token missing or wrong.
    BadToken,
    /// Not a hello (wrong magic, undecodable, bad field values).
    MalformedHello,
    /// Too many connections.
    Busy,
    /// Going down.
    ShuttingDown,
}

/// Checks a hello's magic and version, the part every coordinator does the same way.
pub fn check_hello(hello: &Hello) -> Result<(), (RejectKind, String)> {
    if hello.magic != MAGIC {
        return Err((
            RejectKind::MalformedHello,
            format!("bad magic {:?}, expected {MAGIC:?}", hello.magic),
        ));
    }
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.version) {
        return Err((
            RejectKind::VersionMismatch,
            format!(
                "protocol version mismatch: client speaks {}, coordinator speaks \
                 {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}",
                hello.version
            ),
        ));
    }
    if hello.codec == BodyCodec::Bincode && hello.version < MIN_BINCODE_VERSION {
        return Err((
            RejectKind::VersionMismatch,
            format!(
                "protocol version mismatch: a bincode client must speak version \
                 {MIN_BINCODE_VERSION} or later (it speaks {}); upgrade it, or use msgpack",
                hello.version
            ),
        ));
    }
    if let Role::Worker(w) = &hello.role
        && w.slots == 0
    {
        return Err((
            RejectKind::MalformedHello,
            "a worker needs at least 1 slot".into(),
        ));
    }
    Ok(())
}
