//! Typed errors: frame and body decoding failures, and the error replies sent to peers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Everything that can go wrong while reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix announces more than the agreed maximum; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Announced length (0 when unknown).
        len: usize,
        /// The maximum in force.
        max: usize,
    },
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes received of the unfinished frame, its length prefix included.
        buffered: usize,
    },
    /// A whole frame arrived but its body is not a message of the expected type in this codec.
    #[error("undecodable {codec} body ({len} bytes): {reason} (incompatible version?)")]
    Decode {
        /// The body codec in use.
        codec: &'static str,
        /// Body length.
        len: usize,
        /// The decoder's words.
        reason: String,
    },
    /// A message could not be encoded (it would exceed the maximum frame, or a codec limit).
    #[error("cannot encode message with {codec}: {reason}")]
    Encode {
        /// The body codec in use.
        codec: &'static str,
        /// Why.
        reason: String,
    },
}

/// A machine-readable error category, stable across versions; clients switch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No task matches the id or prefix.
    UnknownId,
    /// A prefix matches more than one task.
    AmbiguousId,
    /// The operation is not valid in the task's state.
    InvalidState,
    /// The request itself is malformed (bad spec, empty selector).
    InvalidRequest,
    /// The store cannot write: nothing was accepted. Retry later.
    StoreUnavailable,
    /// The coordinator is shutting down.
    ShuttingDown,
    /// A limit was hit (too many connections, too many in-flight requests).
    LimitExceeded,
    /// A bug on the coordinator; the message says more.
    Internal,
    /// An RPC to an identifier that no connection of the namespace holds.
    Unroutable,
    /// An RPC identifier (or queue subscription) that is already taken.
    DuplicateIdentifier,
    /// A message was accepted but could not be delivered: the RPC's holder went away before it
    /// answered.
    DeliveryFailed,
}

impl ErrorKind {
    /// The snake_case name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::UnknownId => "unknown_id",
            ErrorKind::AmbiguousId => "ambiguous_id",
            ErrorKind::InvalidState => "invalid_state",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::StoreUnavailable => "store_unavailable",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::LimitExceeded => "limit_exceeded",
            ErrorKind::Internal => "internal",
            ErrorKind::Unroutable => "unroutable",
            ErrorKind::DuplicateIdentifier => "duplicate_identifier",
            ErrorKind::DeliveryFailed => "delivery_failed",
        }
    }
}

/// An error answer: a kind for programs and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct ErrorReply {
    /// What went wrong, for programs.
    pub kind: ErrorKind,
    /// What went wrong, for people: names the id and state involved.
    pub message: String,
}

impl ErrorReply {
    /// Builds an error reply.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorReply {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.as_str())
    }
}
