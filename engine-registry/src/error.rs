//! The registry's error type and `Result` alias.
//!
//! Depends only on `super::compatibility` (to name a level in messages) and `thiserror`.
//! Every variant says what failed and what to do about it; variants that mirror a
//! Confluent error carry its `error_code` so the server and the HTTP client can map
//! them both ways without losing information.

use super::compatibility::Compatibility;

/// Result alias used throughout `registry`.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Confluent error code: subject not found.
pub const SUBJECT_NOT_FOUND: i32 = 40401;
/// Confluent error code: version not found.
pub const VERSION_NOT_FOUND: i32 = 40402;
/// Confluent error code: schema not found.
pub const SCHEMA_NOT_FOUND: i32 = 40403;
/// Confluent error code (and HTTP status): incompatible schema.
pub const INCOMPATIBLE_SCHEMA: i32 = 409;
/// Confluent error code: invalid schema.
pub const INVALID_SCHEMA: i32 = 42201;
/// Confluent error code: invalid version.
pub const INVALID_VERSION: i32 = 42202;
/// Confluent error code: invalid compatibility level.
pub const INVALID_COMPATIBILITY_LEVEL: i32 = 42203;
/// Confluent error code: backend store error.
pub const STORE_ERROR: i32 = 50001;

/// Everything that can go wrong talking to, or inside, a schema registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry configuration cannot be used.
    #[error(
        "invalid schema registry configuration for `{url}`: {reason}; use a URL such as \
         http://localhost:8081, https://user:password@host:8081 or mock://scope"
    )]
    InvalidConfig {
        /// The URL as configured (with any password redacted).
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Confluent 40401.
    #[error(
        "subject `{subject}` not found (error code 40401); register a schema under it first \
         or check the subject name (the default naming strategy is `<topic>-key`/`<topic>-value`)"
    )]
    SubjectNotFound {
        /// The subject that was asked for.
        subject: String,
    },

    /// Confluent 40402.
    #[error(
        "version {version} of subject `{subject}` not found (error code 40402); list the \
         existing versions with GET /subjects/{subject}/versions"
    )]
    VersionNotFound {
        /// The subject that was asked for.
        subject: String,
        /// The version that was asked for (a number or `latest`).
        version: String,
    },

    /// Confluent 40403.
    #[error(
        "schema {what} not found (error code 40403); check that producer and consumer use \
         the same registry and that the schema was registered"
    )]
    SchemaNotFound {
        /// Which schema: `id 7`, or `under subject "x"`.
        what: String,
    },

    /// Confluent 409: the schema breaks the subject's compatibility rule.
    #[error(
        "schema is incompatible with subject `{subject}` under compatibility {} \
         (error code 409): {}; add defaults to new fields, keep removed fields' defaults, or \
         change the level with PUT /config/{subject}",
        level.map_or("level", Compatibility::as_str),
        messages.join("; ")
    )]
    Incompatible {
        /// The subject the schema was registered under.
        subject: String,
        /// The level that was enforced (`None` when the server did not say).
        level: Option<Compatibility>,
        /// One message per violated check.
        messages: Vec<String>,
    },

    /// Confluent 42201.
    #[error("invalid schema (error code 42201): {reason}; fix the Avro schema JSON and retry")]
    InvalidSchema {
        /// Parser message.
        reason: String,
    },

    /// Confluent 42202.
    #[error(
        "invalid version `{version}` (error code 42202); use a positive version number, \
         `latest` or -1"
    )]
    InvalidVersion {
        /// The offending version string.
        version: String,
    },

    /// Confluent 42203.
    #[error(
        "invalid compatibility level `{level}` (error code 42203); use one of BACKWARD, \
         BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE, NONE"
    )]
    InvalidCompatibility {
        /// The offending level string.
        level: String,
    },

    /// Confluent 50001.
    #[error("schema registry store error (error code 50001): {reason}; retry later")]
    Store {
        /// What failed inside the store.
        reason: String,
    },

    /// Any other error response from an HTTP registry.
    #[error(
        "{method} {url} failed with HTTP {status}, error code {error_code} after {attempts} \
         attempt(s): {message}; {hint}"
    )]
    Api {
        /// HTTP method.
        method: &'static str,
        /// Full request URL (without credentials).
        url: String,
        /// HTTP status.
        status: u16,
        /// Confluent `error_code` (the HTTP status when the body had none).
        error_code: i32,
        /// Confluent `message` (or the raw body).
        message: String,
        /// How many requests were made.
        attempts: u32,
        /// What to do about it.
        hint: &'static str,
    },

    /// The registry could not be reached (connection refused, DNS, timeout), even after retries.
    #[error(
        "schema registry unreachable: {method} {url} failed after {attempts} attempt(s): \
         {reason}; check that the registry runs and that the URL, port and TLS settings are right"
    )]
    Unavailable {
        /// HTTP method.
        method: &'static str,
        /// Full request URL (without credentials).
        url: String,
        /// How many requests were made.
        attempts: u32,
        /// The last transport error.
        reason: String,
    },

    /// The registry answered with a body this client cannot decode.
    #[error(
        "unexpected response from {method} {url}: {reason}; is this URL a Confluent-compatible \
         schema registry?"
    )]
    Decode {
        /// HTTP method.
        method: &'static str,
        /// Full request URL (without credentials).
        url: String,
        /// What could not be decoded.
        reason: String,
    },
}

impl RegistryError {
    /// The Confluent `error_code` this error corresponds to, if any.
    pub fn error_code(&self) -> Option<i32> {
        match self {
            Self::SubjectNotFound { .. } => Some(SUBJECT_NOT_FOUND),
            Self::VersionNotFound { .. } => Some(VERSION_NOT_FOUND),
            Self::SchemaNotFound { .. } => Some(SCHEMA_NOT_FOUND),
            Self::Incompatible { .. } => Some(INCOMPATIBLE_SCHEMA),
            Self::InvalidSchema { .. } => Some(INVALID_SCHEMA),
            Self::InvalidVersion { .. } => Some(INVALID_VERSION),
            Self::InvalidCompatibility { .. } => Some(INVALID_COMPATIBILITY_LEVEL),
            Self::Store { .. } => Some(STORE_ERROR),
            Self::Api { error_code, .. } => Some(*error_code),
            Self::InvalidConfig { .. } | Self::Unavailable { .. } | Self::Decode { .. } => None,
        }
    }

    /// The HTTP status a Confluent registry uses for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::SubjectNotFound { .. }
            | Self::VersionNotFound { .. }
            | Self::SchemaNotFound { .. } => 404,
            Self::Incompatible { .. } => 409,
            Self::InvalidSchema { .. }
            | Self::InvalidVersion { .. }
            | Self::InvalidCompatibility { .. } => 422,
            Self::Api { status, .. } => *status,
            Self::InvalidConfig { .. } => 400,
            Self::Store { .. } | Self::Decode { .. } => 500,
            Self::Unavailable { .. } => 503,
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unavailable { .. } | Self::Store { .. } => true,
            Self::Api { status, .. } => *status >= 500,
            _ => false,
        }
    }
}
