//! `RegistryConfig`: where the registry is and how hard to try reaching it.
//!
//! Depends only on `super::error`. URL handling is hand-rolled (scheme, optional
//! userinfo, authority, path) because only these three schemes are valid and pulling a URL
//! crate into the engine for that is not worth it.

use std::fmt;
use std::time::Duration;

use super::error::{RegistryError, Result};

/// How to reach a schema registry.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// `http://host:port[/path]`, `https://...`, or `mock://SCOPE` for an in-process
    /// registry. Userinfo (`https://user:pass@host`) is turned into `basic_auth`.
    pub url: String,
    /// HTTP basic-auth user and password; takes precedence over userinfo in `url`.
    pub basic_auth: Option<(String, String)>,
    /// Limit for one whole HTTP request, connecting included.
    pub timeout: Duration,
    /// Retries after the first attempt, for connection errors, timeouts and 5xx only.
    pub max_retries: u32,
    /// Pause before the first retry; doubled for each further retry.
    pub initial_backoff: Duration,
    /// Cap on the pause between retries.
    pub max_backoff: Duration,
}

impl RegistryConfig {
    /// A config for `url` with defaults: 5 s timeout, 3 retries, 100 ms to 2 s backoff.
    ///
    /// Credentials in the URL's userinfo are moved into `basic_auth`, so the stored URL is
    /// safe to log. Nothing is validated here; `validate` (and `SchemaRegistry::connect`)
    /// does that and says what is wrong.
    pub fn new(url: impl Into<String>) -> Self {
        let mut url = url.into();
        let mut basic_auth = None;
        if let Ok(parsed) = ParsedUrl::parse(&url)
            && parsed.userinfo.is_some()
        {
            url = parsed.without_userinfo();
            basic_auth = parsed.userinfo;
        }
        Self {
            url,
            basic_auth,
            timeout: Duration::from_secs(5),
            max_retries: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }

    /// Sets basic-auth credentials.
    pub fn with_basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.basic_auth = Some((user.into(), password.into()));
        self
    }

    /// Sets the number of retries and the backoff range.
    pub fn with_retries(mut self, max_retries: u32, initial: Duration, max: Duration) -> Self {
        self.max_retries = max_retries;
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// Sets the per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Checks the URL and the timing settings.
    pub fn validate(&self) -> Result<()> {
        self.target().map(|_| ())
    }

    /// The pause before retry number `retry` (0-based): exponential, capped.
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    fn invalid(&self, reason: impl Into<String>) -> RegistryError {
        RegistryError::InvalidConfig {
            url: redact(&self.url),
            reason: reason.into(),
        }
    }

    /// Resolves the URL into a backend target, with credentials separated out.
    pub(super) fn target(&self) -> Result<Target> {
        let parsed = ParsedUrl::parse(&self.url).map_err(|reason| self.invalid(reason))?;
        match parsed.scheme.as_str() {
            "mock" => Ok(Target::Mock {
                scope: parsed.rest.trim_end_matches('/').to_owned(),
            }),
            #[cfg(not(feature = "http"))]
            "http" | "https" => Err(self.invalid(
                "this build has no HTTP client for the registry: enable the `http` feature of \
                 engine-registry (it is on by default)",
            )),
            #[cfg(feature = "http")]
            "http" | "https" => {
                if parsed.host().is_empty() {
                    return Err(self.invalid("the URL has no host"));
                }
                if self.timeout.is_zero() {
                    return Err(self.invalid("timeout must be greater than zero"));
                }
                if self.initial_backoff > self.max_backoff {
                    return Err(self.invalid(format!(
                        "initial_backoff ({:?}) is larger than max_backoff ({:?})",
                        self.initial_backoff, self.max_backoff
                    )));
                }
                Ok(Target::Http {
                    base_url: parsed.without_userinfo().trim_end_matches('/').to_owned(),
                    basic_auth: self.basic_auth.clone().or(parsed.userinfo),
                })
            }
            other => Err(self.invalid(format!(
                "unsupported scheme `{other}`; the scheme must be http, https or mock"
            ))),
        }
    }
}

impl fmt::Debug for RegistryConfig {
    /// Hides the password so configs can be logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("url", &redact(&self.url))
            .field(
                "basic_auth",
                &self.basic_auth.as_ref().map(|(user, _)| (user, "***")),
            )
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}

/// Where a config points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    #[cfg(feature = "http")]
    Http {
        base_url: String,
        basic_auth: Option<(String, String)>,
    },
    Mock {
        scope: String,
    },
}

#[derive(Debug)]
struct ParsedUrl {
    scheme: String,
    userinfo: Option<(String, String)>,
    /// Everything after `scheme://` and the userinfo: `host:port/path`.
    rest: String,
}

impl ParsedUrl {
    fn parse(url: &str) -> std::result::Result<Self, String> {
        let url = url.trim();
        let Some((scheme, after)) = url.split_once("://") else {
            return Err("missing `scheme://`".to_owned());
        };
        let scheme = scheme.to_ascii_lowercase();
        let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let (userinfo, rest) = match after[..authority_end].rfind('@') {
            Some(at) => {
                let (user, password) = after[..at].split_once(':').unwrap_or((&after[..at], ""));
                (
                    Some((percent_decode(user), percent_decode(password))),
                    after[at + 1..].to_owned(),
                )
            }
            None => (None, after.to_owned()),
        };
        Ok(Self {
            scheme,
            userinfo,
            rest,
        })
    }

    #[cfg(feature = "http")]
    fn host(&self) -> &str {
        let end = self.rest.find(['/', '?', '#']).unwrap_or(self.rest.len());
        &self.rest[..end]
    }

    fn without_userinfo(&self) -> String {
        format!("{}://{}", self.scheme, self.rest)
    }
}

/// Replaces a URL's password with `***`.
pub(super) fn redact(url: &str) -> String {
    match ParsedUrl::parse(url) {
        Ok(parsed) => match parsed.userinfo {
            Some((user, _)) => format!("{}://{user}:***@{}", parsed.scheme, parsed.rest),
            None => url.to_owned(),
        },
        Err(_) => url.to_owned(),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            // Two hex digits always fit in a byte.
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "http")]
    fn defaults() {
        let c = RegistryConfig::new("http://localhost:8081");
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.max_retries, 3);
        assert_eq!(c.backoff(0), Duration::from_millis(100));
        assert_eq!(c.backoff(1), Duration::from_millis(200));
        assert_eq!(c.backoff(10), Duration::from_secs(2));
        assert_eq!(c.backoff(u32::MAX), Duration::from_secs(2));
        assert!(c.validate().is_ok());
    }

    #[test]
    #[cfg(feature = "http")]
    fn userinfo_becomes_basic_auth() {
        let c = RegistryConfig::new("https://us%40er:p%3Ass@host:8081/");
        assert_eq!(c.url, "https://host:8081/");
        assert_eq!(c.basic_auth, Some(("us@er".to_owned(), "p:ss".to_owned())));
        assert_eq!(
            c.target().unwrap(),
            Target::Http {
                base_url: "https://host:8081".to_owned(),
                basic_auth: Some(("us@er".to_owned(), "p:ss".to_owned())),
            }
        );
        assert!(!format!("{c:?}").contains("p:ss"));
        // A struct literal with userinfo still works and the explicit pair wins.
        let literal = RegistryConfig {
            url: "http://a:b@h".to_owned(),
            ..RegistryConfig::new("http://h")
        };
        assert!(
            matches!(literal.target().unwrap(), Target::Http { basic_auth: Some((u, _)), .. } if u == "a")
        );
    }

    #[test]
    fn mock_scope() {
        let c = RegistryConfig::new("mock://my-scope");
        assert_eq!(
            c.target().unwrap(),
            Target::Mock {
                scope: "my-scope".to_owned()
            }
        );
    }

    #[test]
    #[cfg(not(feature = "http"))]
    fn without_the_http_feature_an_http_url_is_refused_with_the_feature_to_enable() {
        let err = RegistryConfig::new("http://localhost:8081")
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("`http` feature"), "{err}");
        assert!(RegistryConfig::new("mock://scope").validate().is_ok());
    }

    #[test]
    #[cfg(feature = "http")]
    fn invalid_urls_say_why() {
        for (url, needle) in [
            ("localhost:8081", "scheme://"),
            ("ftp://host", "must be http, https or mock"),
            ("http://", "no host"),
            ("http:///path", "no host"),
        ] {
            let err = RegistryConfig::new(url).validate().unwrap_err();
            let text = err.to_string();
            assert!(text.contains(needle), "{url}: {text}");
            assert!(matches!(err, RegistryError::InvalidConfig { .. }));
        }
        let err = RegistryConfig::new("http://h")
            .with_timeout(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("timeout"));
        let err = RegistryConfig::new("http://h")
            .with_retries(1, Duration::from_secs(3), Duration::from_secs(1))
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("max_backoff"));
        let secret = RegistryConfig {
            url: "ftp://u:secret@h".to_owned(),
            ..RegistryConfig::new("http://h")
        };
        assert!(
            !secret
                .validate()
                .unwrap_err()
                .to_string()
                .contains("secret")
        );
    }
}
