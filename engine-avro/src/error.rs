//! The codec's error type and the helpers that attach a field path to an error
//! while it propagates out of nested records, arrays and maps.
//!
//! Paths are built lazily: the innermost failure starts with an empty path and
//! each enclosing container prepends its segment on the way out, so the happy
//! path pays nothing for path tracking.

use std::fmt;

/// Result alias used throughout the Avro codec.
pub type Result<T, E = AvroError> = std::result::Result<T, E>;

/// Everything that can go wrong when parsing schemas, compiling plans, or
/// encoding/decoding data.
///
/// Data errors carry the field path (`sla.deadline`, `dependencies[2]`,
/// `parameters["k"]`) of the offending value; an empty path means the top-level
/// value itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AvroError {
    /// The schema text is not valid JSON or not a valid Avro schema.
    #[error("invalid Avro schema: {0}")]
    Schema(String),
    /// A writer schema cannot be resolved against a reader schema.
    #[error(
        "writer schema cannot be read with reader schema at {}: {msg}",
        PathDisplay(path)
    )]
    Incompatible {
        /// Field path in the reader schema where resolution fails.
        path: String,
        /// What does not match.
        msg: String,
    },
    /// A value does not conform to the schema it is being written with.
    #[error("cannot encode {}: {msg}", PathDisplay(path))]
    Encode {
        /// Field path of the offending value.
        path: String,
        /// What is wrong and what was expected.
        msg: String,
    },
    /// The input bytes are not a valid encoding under the writer schema, or
    /// the decoded value does not fit the requested Rust type.
    #[error("cannot decode {}: {msg}", PathDisplay(path))]
    Decode {
        /// Field path of the offending value.
        path: String,
        /// What is wrong and what was expected.
        msg: String,
    },
    /// A complete value was decoded but input bytes remain.
    #[error("{count} trailing byte(s) after a complete Avro datum")]
    TrailingBytes {
        /// Number of unconsumed bytes.
        count: usize,
    },
    /// A JSON document does not match the schema it is converted with.
    #[error("JSON value does not match the schema at {}: {msg}", PathDisplay(path))]
    Json {
        /// Field path of the offending JSON value.
        path: String,
        /// What is wrong and what was expected.
        msg: String,
    },
}

struct PathDisplay<'a>(&'a str);

impl fmt::Display for PathDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("<root>")
        } else {
            f.write_str(self.0)
        }
    }
}

impl AvroError {
    pub(crate) fn encode(msg: impl Into<String>) -> Self {
        AvroError::Encode {
            path: String::new(),
            msg: msg.into(),
        }
    }

    pub(crate) fn decode(msg: impl Into<String>) -> Self {
        AvroError::Decode {
            path: String::new(),
            msg: msg.into(),
        }
    }

    pub(crate) fn json(msg: impl Into<String>) -> Self {
        AvroError::Json {
            path: String::new(),
            msg: msg.into(),
        }
    }

    pub(crate) fn incompatible(msg: impl Into<String>) -> Self {
        AvroError::Incompatible {
            path: String::new(),
            msg: msg.into(),
        }
    }

    /// The field path the error refers to, if it is a data/resolution error.
    pub fn path(&self) -> Option<&str> {
        match self {
            AvroError::Incompatible { path, .. }
            | AvroError::Encode { path, .. }
            | AvroError::Decode { path, .. }
            | AvroError::Json { path, .. } => Some(path),
            _ => None,
        }
    }

    fn path_mut(&mut self) -> Option<&mut String> {
        match self {
            AvroError::Incompatible { path, .. }
            | AvroError::Encode { path, .. }
            | AvroError::Decode { path, .. }
            | AvroError::Json { path, .. } => Some(path),
            _ => None,
        }
    }

    /// Prepends a record field name to the error's path.
    #[cold]
    pub(crate) fn in_field(mut self, name: &str) -> Self {
        if let Some(p) = self.path_mut() {
            let mut s = String::with_capacity(name.len() + p.len() + 1);
            s.push_str(name);
            if !p.is_empty() && !p.starts_with('[') {
                s.push('.');
            }
            s.push_str(p);
            *p = s;
        }
        self
    }

    /// Prepends an array index to the error's path.
    #[cold]
    pub(crate) fn at_index(self, index: usize) -> Self {
        self.prepend_bracket(&index.to_string())
    }

    /// Prepends a map key to the error's path.
    #[cold]
    pub(crate) fn at_key(self, key: &str) -> Self {
        self.prepend_bracket(&format!("{key:?}"))
    }

    fn prepend_bracket(mut self, inner: &str) -> Self {
        if let Some(p) = self.path_mut() {
            let mut s = String::with_capacity(inner.len() + p.len() + 3);
            s.push('[');
            s.push_str(inner);
            s.push(']');
            if !p.is_empty() && !p.starts_with('[') {
                s.push('.');
            }
            s.push_str(p);
            *p = s;
        }
        self
    }
}

/// Pointer-sized error used inside the decoder's hot path: serde threads the
/// error type through every `Result` it returns, and a one-word error keeps
/// those results small (measurably faster than moving the full enum around).
#[derive(Debug)]
pub(crate) struct BoxedError(pub(crate) Box<AvroError>);

/// Result alias for the decoder internals.
pub(crate) type DResult<T> = std::result::Result<T, BoxedError>;

impl BoxedError {
    #[cold]
    pub(crate) fn in_field(self, name: &str) -> Self {
        BoxedError(Box::new(self.0.in_field(name)))
    }

    #[cold]
    pub(crate) fn at_index(self, index: usize) -> Self {
        BoxedError(Box::new(self.0.at_index(index)))
    }

    #[cold]
    pub(crate) fn at_key(self, key: &str) -> Self {
        BoxedError(Box::new(self.0.at_key(key)))
    }
}

impl From<AvroError> for BoxedError {
    #[cold]
    fn from(e: AvroError) -> Self {
        BoxedError(Box::new(e))
    }
}

impl From<BoxedError> for AvroError {
    fn from(e: BoxedError) -> Self {
        *e.0
    }
}

impl fmt::Display for BoxedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BoxedError {}

impl serde::de::Error for BoxedError {
    #[cold]
    fn custom<T: fmt::Display>(msg: T) -> Self {
        AvroError::decode(msg.to_string()).into()
    }
}

impl From<apache_avro::Error> for AvroError {
    fn from(e: apache_avro::Error) -> Self {
        AvroError::Schema(e.to_string())
    }
}

impl serde::ser::Error for AvroError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        AvroError::encode(msg.to_string())
    }
}

impl serde::de::Error for AvroError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        AvroError::decode(msg.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_compose_outward() {
        let e = AvroError::encode("bad")
            .in_field("deadline")
            .in_field("sla");
        assert_eq!(e.path(), Some("sla.deadline"));
        let e = AvroError::decode("bad")
            .at_index(2)
            .in_field("dependencies");
        assert_eq!(e.path(), Some("dependencies[2]"));
        let e = AvroError::decode("bad")
            .in_field("x")
            .at_key("k")
            .in_field("m");
        assert_eq!(e.path(), Some("m[\"k\"].x"));
        assert!(e.to_string().contains("m[\"k\"].x: bad"), "{e}");
        assert!(AvroError::decode("oops").to_string().contains("<root>"));
    }
}
