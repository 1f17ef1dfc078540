//! Opaque user data: a MessagePack document carried as bytes, so that every body codec can carry it.
//!
//! bincode cannot encode self-describing values (maps of anything, `serde_json::Value`), so user
//! data never travels as a serde value tree: its producer encodes it to MessagePack once, and the
//! coordinator stores and forwards the bytes untouched.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// User data attached to a task, a custom payload or a result: MessagePack bytes, or empty for none.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Data(pub Vec<u8>);

/// Why user data could not be turned into or out of MessagePack.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The value could not be written as MessagePack.
    #[error("cannot encode data as MessagePack: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The bytes are not MessagePack of the expected shape.
    #[error("data is not valid MessagePack of the expected shape: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

impl Data {
    /// No data at all (zero bytes), which readers treat as nil.
    pub fn empty() -> Self {
        Data(Vec::new())
    }

    /// Whether nothing is attached.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Encodes any serde value (a `serde_json::Value`, a struct of yours) as MessagePack with
    /// named fields, the form other languages read naturally.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, DataError> {
        Ok(Data(rmp_serde::to_vec_named(value)?))
    }

    /// Decodes the data as `T`; empty data decodes as MessagePack nil (so `Option<T>` gives `None`).
    pub fn decode<T: de::DeserializeOwned>(&self) -> Result<T, DataError> {
        const NIL: [u8; 1] = [0xc0];
        let bytes: &[u8] = if self.0.is_empty() { &NIL } else { &self.0 };
        Ok(rmp_serde::from_slice(bytes)?)
    }
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Data({} bytes)", self.0.len())
    }
}

impl Serialize for Data {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_bytes(deserializer).map(Data)
    }
}

/// Reads a byte string, as [`Data`] and [`crate::Bytes`] are written.
fn deserialize_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    struct BytesVisitor;
    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }
        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        // Some MessagePack writers emit short binaries as arrays of small integers.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_byte_buf(BytesVisitor)
}

/// Raw bytes of any content (a piece of a command's output), carried as a byte string.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({:?})", String::from_utf8_lossy(&self.0))
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_bytes(deserializer).map(Bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_data() {
        let v = serde_json::json!({"a": 1, "b": [true, null, "x"], "c": {"d": 2.5}});
        let d = Data::encode(&v).unwrap();
        assert_eq!(d.decode::<serde_json::Value>().unwrap(), v);
    }

    #[test]
    fn empty_data_reads_as_nil() {
        assert_eq!(Data::empty().decode::<Option<u32>>().unwrap(), None);
        assert!(Data::empty().decode::<u32>().is_err());
    }
}
