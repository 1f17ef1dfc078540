//! Framing and body codecs: a 4-byte big-endian length, then a MessagePack or bincode body.
//!
//! Reading uses tokio-util's [`LengthDelimitedCodec`], which refuses an oversize length from the
//! prefix alone, before any buffer is grown for it. Writing produces the same layout directly into
//! the output buffer, so a body is serialised once and never copied.

use std::fmt;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::error::FrameError;

/// The default maximum frame size, 16 MiB, both directions.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// The bincode configuration: standard (little-endian, varint integers) with a decode limit.
///
/// Without a limit, bincode allocates whatever length a peer claims for a string or a byte buffer
/// before checking that the body holds that many bytes; a 12-byte frame could make the process
/// abort on a failed allocation of petabytes (found by the fuzz target). With the limit, a claim
/// larger than it fails before any allocation, so one message never costs more than the limit.
/// bincode bodies are therefore limited to 16 MiB even when `--max-frame` allows more.
fn bincode_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DEFAULT_MAX_FRAME>,
> {
    bincode::config::standard().with_limit::<DEFAULT_MAX_FRAME>()
}

/// How message bodies are encoded after the handshake, chosen by the client in its hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BodyCodec {
    /// MessagePack, structs as maps with field names: for peers in any language.
    #[default]
    Msgpack,
    /// bincode 2.0 (serde mode, standard config: little-endian, varint integers): compact, for Rust.
    Bincode,
}

impl BodyCodec {
    /// The name used in errors and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BodyCodec::Msgpack => "msgpack",
            BodyCodec::Bincode => "bincode",
        }
    }

    /// Appends the encoding of `value` to `dst`.
    pub fn encode_into<T: Serialize>(
        self,
        value: &T,
        dst: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let mut w = dst.writer();
        let res = match self {
            BodyCodec::Msgpack => {
                rmp_serde::encode::write_named(&mut w, value).map_err(|e| e.to_string())
            }
            BodyCodec::Bincode => {
                bincode::serde::encode_into_std_write(value, &mut w, bincode_config())
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        };
        res.map_err(|reason| FrameError::Encode {
            codec: self.name(),
            reason,
        })
    }

    /// Encodes `value` into a fresh buffer (a body without its length prefix).
    pub fn encode<T: Serialize>(self, value: &T) -> Result<BytesMut, FrameError> {
        let mut out = BytesMut::new();
        self.encode_into(value, &mut out)?;
        Ok(out)
    }

    /// Decodes a whole body; trailing bytes after the value are an error, not ignored.
    pub fn decode<T: DeserializeOwned>(self, body: &[u8]) -> Result<T, FrameError> {
        self.decode_with(body, false)
    }

    /// Decodes the value a body begins with and ignores what follows: how the coordinator reads
    /// a stored task's id (its first field) without decoding the whole task.
    pub fn decode_prefix<T: DeserializeOwned>(self, body: &[u8]) -> Result<T, FrameError> {
        self.decode_with(body, true)
    }

    fn decode_with<T: DeserializeOwned>(self, body: &[u8], prefix: bool) -> Result<T, FrameError> {
        let err = |reason: String| FrameError::Decode {
            codec: self.name(),
            len: body.len(),
            reason,
        };
        match self {
            BodyCodec::Msgpack => {
                let mut rest = body;
                let value = {
                    let mut de = rmp_serde::Deserializer::new(&mut rest);
                    T::deserialize(&mut de).map_err(|e| err(e.to_string()))?
                };
                if !prefix && !rest.is_empty() {
                    return Err(err(format!(
                        "{} trailing bytes after the message",
                        rest.len()
                    )));
                }
                Ok(value)
            }
            BodyCodec::Bincode => {
                let (value, used) = bincode::serde::decode_from_slice(body, bincode_config())
                    .map_err(|e| err(e.to_string()))?;
                if !prefix && used != body.len() {
                    return Err(err(format!(
                        "{} trailing bytes after the message",
                        body.len() - used
                    )));
                }
                Ok(value)
            }
        }
    }
}

impl fmt::Display for BodyCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for BodyCodec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "msgpack" | "messagepack" => Ok(BodyCodec::Msgpack),
            "bincode" => Ok(BodyCodec::Bincode),
            other => Err(format!(
                "unknown codec {other:?}: expected msgpack or bincode"
            )),
        }
    }
}

/// A tokio-util codec that reads `In` messages and writes `Out` messages as length-prefixed frames.
///
/// One value per connection side; [`MessageCodec::retype`] switches message types and body codec
/// after the handshake without losing bytes already buffered.
pub struct MessageCodec<In, Out> {
    /// Reads frames and enforces the maximum before allocating.
    frames: LengthDelimitedCodec,
    /// The body codec of this connection.
    body: BodyCodec,
    /// The maximum frame body, both directions.
    max_frame: usize,
    /// Whether the framer has consumed a length prefix whose body has not fully arrived, so that
    /// end-of-stream there is reported as a truncated frame.
    in_frame: bool,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> MessageCodec<In, Out> {
    /// A codec with the given body codec and maximum frame body size.
    pub fn new(body: BodyCodec, max_frame: usize) -> Self {
        let frames = LengthDelimitedCodec::builder()
            .length_field_length(LENGTH_PREFIX)
            .big_endian()
            .max_frame_length(max_frame)
            .new_codec();
        MessageCodec {
            frames,
            body,
            max_frame,
            in_frame: false,
            _types: PhantomData,
        }
    }

    /// The same framing with other message types and body codec (after the handshake).
    pub fn retype<In2, Out2>(self, body: BodyCodec) -> MessageCodec<In2, Out2> {
        MessageCodec {
            frames: self.frames,
            body,
            max_frame: self.max_frame,
            in_frame: self.in_frame,
            _types: PhantomData,
        }
    }

    /// The body codec in use.
    pub fn body_codec(&self) -> BodyCodec {
        self.body
    }
}

impl<In, Out> fmt::Debug for MessageCodec<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageCodec")
            .field("body", &self.body)
            .field("max_frame", &self.max_frame)
            .finish()
    }
}

impl<In: DeserializeOwned, Out> Decoder for MessageCodec<In, Out> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        let announced =
            (src.len() >= LENGTH_PREFIX).then(|| (&src[..LENGTH_PREFIX]).get_u32() as usize);
        match self.frames.decode(src) {
            Ok(Some(frame)) => {
                self.in_frame = false;
                self.body.decode(&frame).map(Some)
            }
            Ok(None) => {
                self.in_frame |= announced.is_some();
                Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(FrameError::TooLarge {
                len: announced.unwrap_or(0),
                max: self.max_frame,
            }),
            Err(e) => Err(FrameError::Io(e)),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        match self.decode(src)? {
            Some(item) => Ok(Some(item)),
            None if src.is_empty() && !self.in_frame => Ok(None),
            None => {
                let head = if self.in_frame { LENGTH_PREFIX } else { 0 };
                Err(FrameError::Truncated {
                    buffered: src.len() + head,
                })
            }
        }
    }
}

impl<In, Out: Serialize> Encoder<Out> for MessageCodec<In, Out> {
    type Error = FrameError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame(self.body, self.max_frame, &item, dst)
    }
}

/// Appends one whole frame (prefix and body) for `item`; on error `dst` is left as it was.
pub fn encode_frame<T: Serialize>(
    body: BodyCodec,
    max_frame: usize,
    item: &T,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    let start = dst.len();
    dst.put_u32(0);
    if let Err(e) = body.encode_into(item, dst) {
        dst.truncate(start);
        return Err(e);
    }
    let len = dst.len() - start - LENGTH_PREFIX;
    if len > max_frame {
        dst.truncate(start);
        return Err(FrameError::Encode {
            codec: body.name(),
            reason: format!(
                "message of {len} bytes exceeds the maximum frame of {max_frame} bytes"
            ),
        });
    }
    dst[start..start + LENGTH_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}
