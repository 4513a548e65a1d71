//! Serdes: how keys and values become bytes and back.
//!
//! The topology DSL knows serdes only through the [`Serde`] trait. This module holds the
//! trait and the formats that need nothing outside the process: strings, raw bytes,
//! big-endian integers, JSON, and the `nullable` and `unit` adapters.
//!
//! May depend on: `record`. Must not depend on the topology, the runtime or Kafka.

/// The Avro codec (the `engine-avro` crate).
pub use engine_avro as avro;
mod confluent;
mod json;
mod primitive;

use std::fmt;
use std::sync::Arc;

pub use confluent::{
    AvroContext, AvroSerde, AvroSettings, Fallback, MAGIC_BYTE, RegistryHealth, SchemaNotices,
    SchemaOrigin, SubjectNameStrategy,
};
pub use json::JsonSerde;
pub use primitive::{BytesSerde, I32Serde, I64Serde, Nullable, StringSerde, UnitSerde};

/// Result of serde operations.
pub type Result<T, E = SerdeError> = std::result::Result<T, E>;

/// Why a key or value could not be converted.
///
/// Each variant names the offending field where the format knows it; the caller adds the
/// topic, partition and offset.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SerdeError {
    /// Null bytes where the serde expects data.
    #[error(
        "null where a value was expected (wrap the serde in `Serdes::nullable` if this topic carries nulls)"
    )]
    UnexpectedNull,
    /// The bytes are not valid in this format.
    #[error("{}{reason}", field_prefix(.field))]
    InvalidData {
        /// Path of the offending field (`sla.deadline`, `dependencies[2]`), when known.
        field: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// The value cannot be written in this format (for example it does not fit its schema).
    #[error("{}{reason}", field_prefix(.field))]
    Unserializable {
        /// Path of the offending field, when known.
        field: Option<String>,
        /// What is wrong.
        reason: String,
    },
}

fn field_prefix(field: &Option<String>) -> String {
    match field {
        Some(f) if !f.is_empty() => format!("field `{f}`: "),
        _ => String::new(),
    }
}

impl SerdeError {
    /// The field the error is about, if the format could tell.
    pub fn field(&self) -> Option<&str> {
        match self {
            SerdeError::InvalidData { field, .. } | SerdeError::Unserializable { field, .. } => {
                field.as_deref()
            }
            SerdeError::UnexpectedNull => None,
        }
    }
}

/// Whether a serializer wrote bytes or asks for a null.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Bytes were appended to the buffer.
    Bytes,
    /// The record should carry a null (a null key, or a tombstone value).
    Null,
}

/// What a serde is, for `describe()` and for checking that connected nodes agree.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SerdeInfo {
    /// Wire format: `string`, `bytes`, `json`, `avro`, ...
    pub format: String,
    /// Rust type the serde produces and consumes.
    pub type_name: &'static str,
}

impl fmt::Display for SerdeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}<{}>", self.format, short_type_name(self.type_name))
    }
}

/// `alloc::string::String` -> `String`, keeping generic arguments readable.
pub(crate) fn short_type_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut segment = String::new();
    for c in name.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            segment.push(c);
        } else {
            out.push_str(segment.rsplit("::").next().unwrap_or(&segment));
            segment.clear();
            out.push(c);
        }
    }
    out.push_str(segment.rsplit("::").next().unwrap_or(&segment));
    out
}

/// Whether a serde is used to read (a source) or write (a sink) a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SerdeRole {
    /// A source decodes the topic.
    Read,
    /// A sink encodes for the topic.
    Write,
}

/// Converts values of type `T` to bytes and back, for one topic at a time.
///
/// Implementations must be cheap to call per record and safe to share between tasks.
pub trait Serde<T>: Send + Sync + 'static {
    /// Appends the encoding of `value` to `out`, or returns [`Written::Null`].
    fn serialize(&self, topic: &str, value: &T, out: &mut Vec<u8>) -> Result<Written>;

    /// Decodes bytes read from `topic`; `None` is a null key or value.
    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<T>;

    /// What this serde is.
    fn info(&self) -> SerdeInfo;

    /// The value as JSON, for interactive queries; `None` if this serde cannot say.
    fn to_json(&self, _value: &T) -> Option<serde_json::Value> {
        None
    }

    /// A key typed in a URL or on a command line, parsed; `None` if this serde cannot.
    fn parse(&self, _text: &str) -> Option<T> {
        None
    }

    /// Called once before a topology processes anything, for each topic the serde reads
    /// or writes: the place to contact a registry, register schemas, or decide on a
    /// fallback. An error stops the topology from starting.
    fn prepare(&self, _topic: &str, _role: SerdeRole) -> Result<()> {
        Ok(())
    }
}

impl<T, S: Serde<T> + ?Sized> Serde<T> for Arc<S> {
    fn serialize(&self, topic: &str, value: &T, out: &mut Vec<u8>) -> Result<Written> {
        (**self).serialize(topic, value, out)
    }
    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<T> {
        (**self).deserialize(topic, data)
    }
    fn info(&self) -> SerdeInfo {
        (**self).info()
    }
    fn prepare(&self, topic: &str, role: SerdeRole) -> Result<()> {
        (**self).prepare(topic, role)
    }
    fn to_json(&self, value: &T) -> Option<serde_json::Value> {
        (**self).to_json(value)
    }
    fn parse(&self, text: &str) -> Option<T> {
        (**self).parse(text)
    }
}

/// Shorthand constructors for the built-in serdes.
///
/// ```
/// use engine::serde::{Serde, Serdes};
/// let s = Serdes::string();
/// assert_eq!(s.deserialize("t", Some(b"hi")).unwrap(), "hi");
/// ```
#[derive(Debug)]
pub struct Serdes;

impl Serdes {
    /// UTF-8 strings.
    pub fn string() -> StringSerde {
        StringSerde
    }
    /// Raw bytes, unchanged.
    pub fn bytes() -> BytesSerde {
        BytesSerde
    }
    /// 64-bit big-endian integers (Kafka's `LongSerde`).
    pub fn i64() -> I64Serde {
        I64Serde
    }
    /// 32-bit big-endian integers (Kafka's `IntegerSerde`).
    pub fn i32() -> I32Serde {
        I32Serde
    }
    /// JSON through `serde_json`, with the failing field's path in errors.
    pub fn json<T>() -> JsonSerde<T> {
        JsonSerde::new()
    }
    /// Ignores the bytes (for keys a topology does not use); writes null.
    pub fn unit() -> UnitSerde {
        UnitSerde
    }
    /// Accepts nulls as `None` around another serde.
    pub fn nullable<S>(inner: S) -> Nullable<S> {
        Nullable(inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_type_names_drop_module_paths() {
        assert_eq!(short_type_name("alloc::string::String"), "String");
        assert_eq!(
            short_type_name("core::option::Option<alloc::vec::Vec<u8>>"),
            "Option<Vec<u8>>"
        );
    }

    #[test]
    fn error_messages_name_the_field() {
        let e = SerdeError::InvalidData {
            field: Some("sla.deadline".into()),
            reason: "expected i64".into(),
        };
        assert_eq!(e.to_string(), "field `sla.deadline`: expected i64");
        assert_eq!(e.field(), Some("sla.deadline"));
    }
}
