//! A Confluent-compatible Schema Registry: a blocking, cached client, an in-memory
//! registry with Confluent's rules, and an axum server exposing that registry over
//! Confluent's REST API.
//!
//! Useful without the engine: a producer or consumer that is not a topology registers
//! and fetches schemas through [`SchemaRegistry`], and a test serves a
//! [`MemoryRegistry`] to Confluent's own clients.
//!
//! ```
//! use std::sync::Arc;
//! use engine_avro::{EncodePlan, Schema};
//! use engine_registry::{MemoryRegistry, SchemaRegistry};
//!
//! #[derive(serde::Serialize)]
//! struct Greeting<'a> {
//!     text: &'a str,
//! }
//! let text = r#"{"type":"record","name":"Greeting","fields":[{"name":"text","type":"string"}]}"#;
//! // `SchemaRegistry::connect` with an http(s):// URL reaches a Confluent-compatible server.
//! let registry = SchemaRegistry::memory(Arc::new(MemoryRegistry::new()));
//! let id = registry.register("greetings-value", text)?;
//! // Confluent's wire format: magic byte 0, the schema id (big-endian), the Avro body.
//! let mut bytes = vec![0];
//! bytes.extend_from_slice(&id.to_be_bytes());
//! EncodePlan::new(&Schema::parse_str(text)?)?.encode(&Greeting { text: "hi" }, &mut bytes)?;
//! assert_eq!(bytes, [0, 0, 0, 0, 1, 4, b'h', b'i']);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Features: `http` (default) is the client of a registry over HTTP (ureq); without it
//! only in-memory registries (`mock://SCOPE` URLs) are reachable. `server` is
//! `server::serve` (axum, tokio).
//!
//! Layout (siblings refer to each other through `super::`/`self::`):
//! - [`error`]: `RegistryError` and the `Result` alias; depends on nothing else here.
//! - [`compatibility`]: levels and Avro evolution checks; depends on `error` and on the Avro
//!   codec's schema resolution (`engine_avro::DecodePlan::strict_from_avro`).
//! - [`memory`]: `MemoryRegistry` (data and rules) and `MockRegistries` (scope directory).
//! - [`config`]: `RegistryConfig` and URL parsing.
//! - `http` (private, feature `http`): the ureq transport with retries.
//! - [`client`]: `SchemaRegistry`, the cached handle over either backend.
//! - `server` (feature `server`): the axum REST server over a `MemoryRegistry`.
//!
//! May depend on: `engine-avro` (schema resolution). Knows no serde of the engine, no
//! Kafka client.

pub mod client;
pub mod compatibility;
pub mod config;
pub mod error;
#[cfg(feature = "http")]
mod http;
pub mod memory;
#[cfg(feature = "server")]
pub mod server;

#[cfg(all(test, feature = "http", feature = "server"))]
mod tests;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use self::client::SchemaRegistry;
pub use self::compatibility::{Compatibility, CompatibilityReport};
pub use self::config::RegistryConfig;
pub use self::error::{RegistryError, Result};
pub use self::memory::{MemoryRegistry, MockRegistries};

/// Media type of Confluent's REST API; servers answer with it and clients send it.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Which version of a subject a call refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VersionRef {
    /// The highest registered version (`latest` or `-1` on the wire).
    Latest,
    /// A specific version, starting at 1.
    Number(i32),
}

impl fmt::Display for VersionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Latest => f.write_str("latest"),
            Self::Number(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for VersionRef {
    type Err = RegistryError;

    /// Accepts what Confluent accepts: `latest`, `-1`, or a version from 1 up.
    fn from_str(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("latest") {
            return Ok(Self::Latest);
        }
        match s.parse::<i32>() {
            Ok(-1) => Ok(Self::Latest),
            Ok(n) if n >= 1 => Ok(Self::Number(n)),
            _ => Err(RegistryError::InvalidVersion {
                version: s.to_owned(),
            }),
        }
    }
}

/// One registered version of a subject, as Confluent's `GET /subjects/{s}/versions/{v}` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectVersion {
    /// Subject name.
    pub subject: String,
    /// Global schema id.
    pub id: i32,
    /// Version within the subject, from 1.
    pub version: i32,
    /// Schema text as first registered under this id.
    pub schema: String,
}
