//! A Confluent-compatible Schema Registry: a blocking, cached client, an in-memory
//! registry with Confluent's rules, and an axum server exposing that registry over
//! Confluent's REST API.
//!
//! Layout (siblings are only referred to through `super::`/`self::` so the tree can move
//! into another crate verbatim):
//! - [`error`]: `RegistryError` and the `Result` alias; depends on nothing else here.
//! - [`compatibility`]: levels and Avro evolution checks; depends on `error` and on the Avro
//!   codec's schema resolution (`crate::serde::avro::DecodePlan::strict_from_avro`).
//! - [`memory`]: `MemoryRegistry` (data and rules) and `MockRegistries` (scope directory).
//! - [`config`]: `RegistryConfig` and URL parsing.
//! - [`http`] (private): the ureq transport with retries.
//! - [`client`]: `SchemaRegistry`, the cached handle over either backend.
//! - [`server`]: the axum REST server over a `MemoryRegistry`.

pub mod client;
pub mod compatibility;
pub mod config;
pub mod error;
mod http;
pub mod memory;
pub mod server;

#[cfg(test)]
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
