//! The HTTP backend of `SchemaRegistry`: Confluent REST calls over a blocking `ureq`
//! agent, with retries and Confluent error decoding.
//!
//! Depends on `super::{config, error, compatibility}` and the wire types in `super`.
//! Blocking on purpose: the engine's serdes are synchronous and only come here on a
//! cache miss. Retries happen only on connection errors, timeouts and 5xx, because a 4xx
//! will answer the same way every time.

use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::compatibility::{Compatibility, CompatibilityReport};
use super::config::RegistryConfig;
use super::error::{self as codes, RegistryError, Result};
use super::{CONTENT_TYPE, SubjectVersion, VersionRef};

const ACCEPT: &str = "application/vnd.schemaregistry.v1+json, \
                      application/vnd.schemaregistry+json; qs=0.9, application/json; qs=0.5";

#[derive(Debug, Clone, Copy)]
enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
        }
    }
}

/// What the request was about, so a Confluent error code becomes a precise typed error.
#[derive(Debug, Default)]
struct Context<'a> {
    subject: Option<&'a str>,
    version: Option<VersionRef>,
    id: Option<i32>,
}

/// A non-2xx answer, before it is given meaning by a `Context`.
#[derive(Debug)]
struct ErrorStatus {
    method: Method,
    url: String,
    status: u16,
    error_code: i32,
    message: String,
    attempts: u32,
}

#[derive(Debug)]
enum CallError {
    Status(ErrorStatus),
    Other(RegistryError),
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: Option<i32>,
    message: Option<String>,
}

/// Confluent's REST API over blocking HTTP.
pub(super) struct HttpBackend {
    base_url: String,
    authorization: Option<String>,
    agent: ureq::Agent,
    config: RegistryConfig,
}

impl std::fmt::Debug for HttpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBackend")
            .field("base_url", &self.base_url)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Percent-encodes one path segment; subjects may contain `/`, `:` or spaces.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn is_transient(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Protocol(_)
            | ureq::Error::BodyStalled
    )
}

impl HttpBackend {
    pub(super) fn new(
        base_url: String,
        basic_auth: Option<(String, String)>,
        config: RegistryConfig,
    ) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            // Error statuses carry Confluent's error body, which we want to read.
            .http_status_as_error(false)
            .user_agent(concat!("registry-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let authorization = basic_auth.map(|(user, password)| {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {token}")
        });
        Self {
            base_url,
            authorization,
            agent,
            config,
        }
    }

    fn headers<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        let request = request
            .header("Accept", ACCEPT)
            .header("Content-Type", CONTENT_TYPE);
        match &self.authorization {
            Some(value) => request.header("Authorization", value),
            None => request,
        }
    }

    /// One request; `Ok` for any HTTP status.
    fn once(
        &self,
        method: Method,
        url: &str,
        body: Option<&str>,
    ) -> std::result::Result<(u16, String), ureq::Error> {
        let response = match method {
            Method::Get => self.headers(self.agent.get(url)).call(),
            Method::Delete => self.headers(self.agent.delete(url)).call(),
            Method::Post => self.headers(self.agent.post(url)).send(body.unwrap_or("")),
            Method::Put => self.headers(self.agent.put(url)).send(body.unwrap_or("")),
        };
        let mut response = response?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string()?;
        Ok((status, text))
    }

    /// A request with retries; returns the body of a 2xx answer.
    fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        max_retries: u32,
    ) -> std::result::Result<String, CallError> {
        let url = format!("{}{path}", self.base_url);
        let body = body.map(serde_json::Value::to_string);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let outcome = self.once(method, &url, body.as_deref());
            let retry = match &outcome {
                Ok((status, _)) => *status >= 500,
                Err(e) => is_transient(e),
            };
            if retry && attempts <= max_retries {
                let pause: Duration = self.config.backoff(attempts - 1);
                match &outcome {
                    Ok((status, _)) => tracing::warn!(
                        method = method.as_str(), %url, status, attempt = attempts,
                        pause_ms = pause.as_millis() as u64, "schema registry server error, retrying"
                    ),
                    Err(e) => tracing::warn!(
                        method = method.as_str(), %url, error = %e, attempt = attempts,
                        pause_ms = pause.as_millis() as u64, "schema registry unreachable, retrying"
                    ),
                }
                std::thread::sleep(pause);
                continue;
            }
            return match outcome {
                Ok((status, text)) if (200..300).contains(&status) => Ok(text),
                Ok((status, text)) => {
                    let parsed = serde_json::from_str::<ErrorBody>(&text).ok();
                    let error_code = parsed
                        .as_ref()
                        .and_then(|b| b.error_code)
                        .unwrap_or(i32::from(status));
                    let message = parsed.and_then(|b| b.message).unwrap_or(text);
                    tracing::debug!(method = method.as_str(), %url, status, error_code, %message, "schema registry error");
                    Err(CallError::Status(ErrorStatus {
                        method,
                        url,
                        status,
                        error_code,
                        message,
                        attempts,
                    }))
                }
                Err(e) => Err(CallError::Other(RegistryError::Unavailable {
                    method: method.as_str(),
                    url,
                    attempts,
                    reason: e.to_string(),
                })),
            };
        }
    }

    fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        ctx: &Context<'_>,
    ) -> Result<T> {
        self.request_with_retries(method, path, body, ctx, self.config.max_retries)
    }

    fn request_with_retries<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        ctx: &Context<'_>,
        max_retries: u32,
    ) -> Result<T> {
        let text = self
            .call(method, path, body, max_retries)
            .map_err(|e| match e {
                CallError::Status(status) => typed(status, ctx),
                CallError::Other(e) => e,
            })?;
        serde_json::from_str(&text).map_err(|e| RegistryError::Decode {
            method: method.as_str(),
            url: format!("{}{path}", self.base_url),
            reason: format!("{e} in body {}", truncate(&text)),
        })
    }

    pub(super) fn register(&self, subject: &str, schema: &str) -> Result<i32> {
        #[derive(Deserialize)]
        struct Registered {
            id: i32,
        }
        let ctx = Context {
            subject: Some(subject),
            ..Context::default()
        };
        // Like Confluent's clients, omit schemaType for Avro (the server's default).
        let body = json!({ "schema": schema });
        let path = format!("/subjects/{}/versions", segment(subject));
        let r: Registered = self.request(Method::Post, &path, Some(&body), &ctx)?;
        Ok(r.id)
    }

    pub(super) fn lookup(&self, subject: &str, schema: &str) -> Result<Option<SubjectVersion>> {
        let ctx = Context {
            subject: Some(subject),
            ..Context::default()
        };
        let body = json!({ "schema": schema });
        let path = format!("/subjects/{}", segment(subject));
        match self.request(Method::Post, &path, Some(&body), &ctx) {
            Ok(found) => Ok(Some(found)),
            Err(RegistryError::SubjectNotFound { .. } | RegistryError::SchemaNotFound { .. }) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub(super) fn schema_by_id(&self, id: i32) -> Result<String> {
        #[derive(Deserialize)]
        struct ById {
            schema: String,
        }
        let ctx = Context {
            id: Some(id),
            ..Context::default()
        };
        let r: ById = self.request(Method::Get, &format!("/schemas/ids/{id}"), None, &ctx)?;
        Ok(r.schema)
    }

    pub(super) fn subjects(&self) -> Result<Vec<String>> {
        self.request(Method::Get, "/subjects", None, &Context::default())
    }

    pub(super) fn versions(&self, subject: &str) -> Result<Vec<i32>> {
        let ctx = Context {
            subject: Some(subject),
            ..Context::default()
        };
        let path = format!("/subjects/{}/versions", segment(subject));
        self.request(Method::Get, &path, None, &ctx)
    }

    pub(super) fn version(&self, subject: &str, version: VersionRef) -> Result<SubjectVersion> {
        let ctx = Context {
            subject: Some(subject),
            version: Some(version),
            ..Context::default()
        };
        let path = format!("/subjects/{}/versions/{version}", segment(subject));
        self.request(Method::Get, &path, None, &ctx)
    }

    pub(super) fn check_compatibility(
        &self,
        subject: &str,
        schema: &str,
        version: VersionRef,
    ) -> Result<CompatibilityReport> {
        let ctx = Context {
            subject: Some(subject),
            version: Some(version),
            ..Context::default()
        };
        let body = json!({ "schema": schema });
        let path = format!(
            "/compatibility/subjects/{}/versions/{version}?verbose=true",
            segment(subject)
        );
        match self.request(Method::Post, &path, Some(&body), &ctx) {
            Ok(report) => Ok(report),
            // Confluent answers 40401 for a subject without versions; anything goes there.
            Err(RegistryError::SubjectNotFound { .. }) => Ok(CompatibilityReport {
                is_compatible: true,
                messages: Vec::new(),
            }),
            Err(e) => Err(e),
        }
    }

    pub(super) fn compatibility(&self, subject: Option<&str>) -> Result<Compatibility> {
        #[derive(Deserialize)]
        struct Level {
            #[serde(rename = "compatibilityLevel", alias = "compatibility")]
            level: Compatibility,
        }
        let global = || -> Result<Compatibility> {
            let l: Level = self.request(Method::Get, "/config", None, &Context::default())?;
            Ok(l.level)
        };
        let Some(subject) = subject else {
            return global();
        };
        let ctx = Context {
            subject: Some(subject),
            ..Context::default()
        };
        let path = format!("/config/{}?defaultToGlobal=true", segment(subject));
        match self.request::<Level>(Method::Get, &path, None, &ctx) {
            Ok(l) => Ok(l.level),
            // Older registries ignore defaultToGlobal and answer 40401/40408 instead.
            Err(RegistryError::SubjectNotFound { .. }) => global(),
            Err(RegistryError::Api {
                error_code: 40408, ..
            }) => global(),
            Err(e) => Err(e),
        }
    }

    pub(super) fn set_compatibility(
        &self,
        subject: Option<&str>,
        level: Compatibility,
    ) -> Result<()> {
        let ctx = Context {
            subject,
            ..Context::default()
        };
        let path = match subject {
            Some(s) => format!("/config/{}", segment(s)),
            None => "/config".to_owned(),
        };
        let body = json!({ "compatibility": level });
        let _: serde_json::Value = self.request(Method::Put, &path, Some(&body), &ctx)?;
        Ok(())
    }

    pub(super) fn delete_subject(&self, subject: &str) -> Result<Vec<i32>> {
        let ctx = Context {
            subject: Some(subject),
            ..Context::default()
        };
        let path = format!("/subjects/{}", segment(subject));
        self.request(Method::Delete, &path, None, &ctx)
    }

    /// One attempt, no retries: start-up code wants a quick yes or no.
    pub(super) fn ping(&self) -> Result<()> {
        let _: serde_json::Value =
            self.request_with_retries(Method::Get, "/config", None, &Context::default(), 0)?;
        Ok(())
    }
}

fn truncate(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Gives a Confluent error code its typed meaning, using what the request was about.
fn typed(s: ErrorStatus, ctx: &Context<'_>) -> RegistryError {
    let subject = || ctx.subject.unwrap_or("?").to_owned();
    match s.error_code {
        codes::SUBJECT_NOT_FOUND => RegistryError::SubjectNotFound { subject: subject() },
        codes::VERSION_NOT_FOUND => RegistryError::VersionNotFound {
            subject: subject(),
            version: ctx
                .version
                .map_or_else(|| "?".to_owned(), |v| v.to_string()),
        },
        codes::SCHEMA_NOT_FOUND => RegistryError::SchemaNotFound {
            what: match (ctx.id, ctx.subject) {
                (Some(id), _) => format!("id {id}"),
                (None, Some(subject)) => format!("under subject `{subject}`"),
                (None, None) => format!("({})", s.message),
            },
        },
        codes::INCOMPATIBLE_SCHEMA => RegistryError::Incompatible {
            subject: subject(),
            level: None,
            messages: vec![s.message],
        },
        codes::INVALID_SCHEMA => RegistryError::InvalidSchema { reason: s.message },
        codes::INVALID_VERSION => RegistryError::InvalidVersion {
            version: ctx
                .version
                .map_or_else(|| s.message.clone(), |v| v.to_string()),
        },
        codes::INVALID_COMPATIBILITY_LEVEL => {
            RegistryError::InvalidCompatibility { level: s.message }
        }
        _ => RegistryError::Api {
            method: s.method.as_str(),
            url: s.url,
            status: s.status,
            error_code: s.error_code,
            message: s.message,
            attempts: s.attempts,
            hint: match s.status {
                401 | 403 => "check the basic-auth credentials",
                500.. => "the registry is failing; retry later or check its logs",
                _ => "check the request against the Confluent REST API",
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("orders-value"), "orders-value");
        assert_eq!(segment("a/b c:d"), "a%2Fb%20c%3Ad");
        assert_eq!(segment("é"), "%C3%A9");
    }
}
