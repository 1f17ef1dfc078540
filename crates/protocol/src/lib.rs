//! The tatzelwurm wire protocol, shared by the coordinator, the workers and the actioners.
//!
//! Every frame is a 4-byte big-endian length followed by a body ([`codec`]). The first frame of a
//! connection is a [`handshake::Hello`] in MessagePack; it chooses the body codec (MessagePack or
//! bincode) for the rest of the connection. After it, each direction carries one message enum from
//! [`messages`]. `docs/PROTOCOL.md` describes the same thing byte by byte for other languages.

pub mod broker;
pub mod cli;
pub mod client;
pub mod codec;
pub mod data;
pub mod error;
pub mod handshake;
pub mod ids;
pub mod input;
pub mod json;
pub mod messages;
pub mod queue;
pub mod task;
pub mod transport;

pub use broker::*;
pub use codec::{BodyCodec, DEFAULT_MAX_FRAME, MessageCodec};
pub use data::{Bytes, Data};
pub use error::{ErrorKind, ErrorReply, FrameError};
pub use handshake::{
    ClientHello, DEFAULT_NAMESPACE, Hello, HelloReply, MAGIC, MIN_BINCODE_VERSION,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, RejectKind, Role, WorkerHello, namespace_of,
};
pub use ids::{RequestId, TaskId, WorkerId};
pub use messages::*;
pub use queue::*;
pub use task::*;

/// Milliseconds since the Unix epoch, the one clock unit of the protocol.
///
/// A plain integer keeps every language's decoder simple; a clock before 1970 reads as 0.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
