//! The client side of the handshake, shared by workers and actioners: send a hello, read the
//! answer, switch the connection to the chosen body codec.

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::Framed;

use crate::codec::{BodyCodec, MessageCodec};
use crate::error::FrameError;
use crate::handshake::{Hello, HelloReply, RejectKind};

/// Why a handshake did not produce a connection.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The frame layer failed (socket error, undecodable answer).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The coordinator closed the connection without answering.
    #[error("the coordinator closed the connection during the handshake")]
    Closed,
    /// What answered is not a tatzelwurm coordinator (an HTTP server, another service).
    #[error("not a tatzelwurm coordinator ({0})")]
    NotTatzelwurm(String),
    /// The coordinator refused the hello.
    #[error("the coordinator refused the connection: {message}")]
    Rejected {
        /// Why, for programs.
        kind: RejectKind,
        /// Why, for people.
        message: String,
    },
}

/// What the coordinator said when it accepted a hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// The coordinator's protocol version.
    pub version: u32,
    /// This peer's id.
    pub peer_id: u64,
    /// How often a worker heartbeats, in ms.
    pub heartbeat_ms: u64,
    /// How long a silent worker keeps its tasks, in ms.
    pub lease_ms: u64,
}

/// Sends `hello` over `io` and, once welcomed, returns the connection typed for the rest of its
/// life: reading `In`, writing `Out`, in the codec the hello chose.
pub async fn handshake<IO, In, Out>(
    io: IO,
    hello: &Hello,
    max_frame: usize,
) -> Result<(Framed<IO, MessageCodec<In, Out>>, Welcome), HandshakeError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    In: DeserializeOwned,
    Out: Serialize,
{
    let codec = MessageCodec::<HelloReply, Hello>::new(BodyCodec::Msgpack, max_frame);
    let mut framed = Framed::new(io, codec);
    framed.send(hello.clone()).await?;
    let reply = match framed.next().await.ok_or(HandshakeError::Closed)? {
        Ok(reply) => reply,
        Err(FrameError::TooLarge { len, .. }) => return Err(not_ours(len)),
        Err(e) => return Err(e.into()),
    };
    match reply {
        HelloReply::Welcome {
            version,
            peer_id,
            heartbeat_ms,
            lease_ms,
        } => {
            let framed = framed.map_codec(|c| c.retype(hello.codec));
            Ok((
                framed,
                Welcome {
                    version,
                    peer_id,
                    heartbeat_ms,
                    lease_ms,
                },
            ))
        }
        HelloReply::Rejected { kind, message, .. } => {
            Err(HandshakeError::Rejected { kind, message })
        }
    }
}

/// Names what answered when its first four bytes, read as a frame length, were far too large:
/// text means some other service (`HTTP` is a web server's status line).
fn not_ours(len: usize) -> HandshakeError {
    let bytes = (len as u32).to_be_bytes();
    let text: String = bytes.iter().map(|&b| b as char).collect();
    let why = if len == 0 {
        "its answer is not a tatzelwurm handshake".to_string()
    } else if text == "HTTP" {
        "it answered like HTTP".to_string()
    } else if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("it answered with text starting {text:?}")
    } else {
        format!("its answer began with a frame of {len} bytes")
    };
    HandshakeError::NotTatzelwurm(why)
}

/// Where a coordinator on this machine keeps its token: in `TATZELWURM_DATA_DIR` when that is set
/// (the coordinator reads the same variable), else in `tatzelwurm` under the user's data directory
/// (`user_data_dir`, which the binaries look up; this crate stays free of platform lookups).
pub fn default_token_file(user_data_dir: Option<std::path::PathBuf>) -> Option<std::path::PathBuf> {
    match std::env::var_os("TATZELWURM_DATA_DIR") {
        Some(dir) if !dir.is_empty() => Some(std::path::PathBuf::from(dir).join("token")),
        _ => user_data_dir.map(|d| d.join("tatzelwurm").join("token")),
    }
}

/// Finds the token to present: the file named explicitly (which must exist), else the default
/// file when it exists (a coordinator on this machine with its default data dir), else none.
pub fn read_token(
    explicit: Option<&std::path::Path>,
    default: Option<&std::path::Path>,
) -> std::io::Result<String> {
    match explicit {
        Some(path) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot read token file {}: {e}", path.display()),
                )
            }),
        None => Ok(default
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|s| s.trim().to_string())
            .unwrap_or_default()),
    }
}
