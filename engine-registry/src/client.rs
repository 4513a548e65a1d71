//! `SchemaRegistry`: the engine-facing, blocking, cached handle to a registry.
//!
//! Depends on `super::{config, error, memory, compatibility}` and the private
//! `super::http` transport. Two backends: HTTP (a Confluent-compatible server; feature
//! `http`) and an in-process `MemoryRegistry` (for `mock://SCOPE` URLs and tests). Caching
//! sits here, in front of both, so serdes hitting it per record do no I/O after the first
//! call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::compatibility::{Compatibility, CompatibilityReport};
use super::config::{RegistryConfig, Target};
use super::error::Result;
#[cfg(feature = "http")]
use super::http::HttpBackend;
use super::memory::{MemoryRegistry, MockRegistries};
use super::{SubjectVersion, VersionRef};

/// A cheap-to-clone, thread-safe handle to a schema registry. All calls block.
///
/// Cached: schema text by id (forever: ids are immutable), and the id of each
/// `(subject, schema text)` seen by `register`/`lookup`, so registering the same schema
/// again does no I/O. `delete_subject` drops that subject's entries.
#[derive(Debug, Clone)]
pub struct SchemaRegistry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: Backend,
    by_id: Mutex<HashMap<i32, Arc<str>>>,
    /// subject -> schema text -> id; nested so hits need no allocation.
    ids: Mutex<HashMap<String, HashMap<String, i32>>>,
    /// subject -> schema text -> found version, for `lookup`.
    found: Mutex<HashMap<String, HashMap<String, SubjectVersion>>>,
}

#[derive(Debug)]
enum Backend {
    // Boxed: the agent is large and the handle lives in an Arc anyway.
    #[cfg(feature = "http")]
    Http(Box<HttpBackend>),
    Memory(Arc<MemoryRegistry>),
}

/// Caches hold plain maps that are never left half-updated, so a poisoned lock still
/// guards consistent data.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SchemaRegistry {
    fn with_backend(backend: Backend) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                by_id: Mutex::default(),
                ids: Mutex::default(),
                found: Mutex::default(),
            }),
        }
    }

    /// A handle over an in-process registry.
    pub fn memory(registry: Arc<MemoryRegistry>) -> Self {
        Self::with_backend(Backend::Memory(registry))
    }

    /// A handle for `config.url`: HTTP for `http(s)://`, or the `MemoryRegistry` of
    /// `SCOPE` in `mocks` for `mock://SCOPE` (same scope, same registry).
    pub fn connect(config: RegistryConfig, mocks: &MockRegistries) -> Result<Self> {
        match config.target()? {
            Target::Mock { scope } => {
                tracing::debug!(scope, "using in-memory schema registry");
                Ok(Self::memory(mocks.get(&scope)?))
            }
            #[cfg(feature = "http")]
            Target::Http {
                base_url,
                basic_auth,
            } => {
                tracing::debug!(url = %base_url, auth = basic_auth.is_some(), "using HTTP schema registry");
                Ok(Self::with_backend(Backend::Http(Box::new(
                    HttpBackend::new(base_url, basic_auth, config),
                ))))
            }
        }
    }

    /// Whether this handle talks to an in-process registry.
    pub fn is_in_memory(&self) -> bool {
        matches!(self.inner.backend, Backend::Memory(_))
    }

    fn cached_id(&self, subject: &str, schema: &str) -> Option<i32> {
        lock(&self.inner.ids)
            .get(subject)
            .and_then(|m| m.get(schema))
            .copied()
    }

    fn remember_id(&self, subject: &str, schema: &str, id: i32) {
        lock(&self.inner.ids)
            .entry(subject.to_owned())
            .or_default()
            .insert(schema.to_owned(), id);
    }

    /// Registers `schema` (Avro JSON) under `subject`; returns its global id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<i32> {
        if let Some(id) = self.cached_id(subject, schema) {
            return Ok(id);
        }
        let id = match &self.inner.backend {
            #[cfg(feature = "http")]
            Backend::Http(h) => h.register(subject, schema)?,
            Backend::Memory(m) => m.register(subject, schema)?,
        };
        tracing::debug!(subject, id, "schema registered");
        self.remember_id(subject, schema, id);
        Ok(id)
    }

    /// Finds `schema` under `subject`; `None` if the subject or the schema is unknown.
    pub fn lookup(&self, subject: &str, schema: &str) -> Result<Option<SubjectVersion>> {
        if let Some(found) = lock(&self.inner.found)
            .get(subject)
            .and_then(|m| m.get(schema))
        {
            return Ok(Some(found.clone()));
        }
        let found = match &self.inner.backend {
            #[cfg(feature = "http")]
            Backend::Http(h) => h.lookup(subject, schema)?,
            Backend::Memory(m) => match m.lookup(subject, schema) {
                Ok(found) => Some(found),
                Err(e) if matches!(e.error_code(), Some(40401 | 40403)) => None,
                Err(e) => return Err(e),
            },
        };
        if let Some(found) = &found {
            self.remember_id(subject, schema, found.id);
            lock(&self.inner.found)
                .entry(subject.to_owned())
                .or_default()
                .insert(schema.to_owned(), found.clone());
        }
        Ok(found)
    }

    /// The schema text with global id `id`; cached forever.
    pub fn schema_by_id(&self, id: i32) -> Result<Arc<str>> {
        if let Some(text) = lock(&self.inner.by_id).get(&id) {
            return Ok(Arc::clone(text));
        }
        let text: Arc<str> = match &self.inner.backend {
            #[cfg(feature = "http")]
            Backend::Http(h) => Arc::from(h.schema_by_id(id)?),
            Backend::Memory(m) => m.schema_by_id(id)?,
        };
        tracing::debug!(id, "schema fetched by id");
        lock(&self.inner.by_id).insert(id, Arc::clone(&text));
        Ok(text)
    }

    /// All subjects with at least one version.
    pub fn subjects(&self) -> Result<Vec<String>> {
        match &self.inner.backend {
            #[cfg(feature = "http")]
            Backend::Http(h) => h.subjects(),
            Backend::Memory(m) => m.subjects(),
        }
    }

    /// The version numbers of `subject`.
    pub fn versions(&self, subject: &str) -> Result<Vec<i32>> {
        match &self.inner.backend {
            #[cfg(feature = "http")]
            Backend::Http(h) => h.versions(subject),
            Backend::Memory(m) => m.versions(subject),
        }
    }

    /// One version of `subject`. Not cached: `Latest` moves.
    pub fn version(&self, subject: &str, version: VersionRef) -> Result<SubjectVersion> {
        match &self.inner.backend {
            #[cfg(feature = "http")]
            Backend::Http(h) => h.version(subject, version),
            Backend::Memory(m) => m.version(subject, version),
        }
    }

    /// Whether `schema` could be registered under `subject`, checked against `version`
    /// (`Latest` applies the subject's level, transitive levels included).
    pub fn check_compatibility(
        &self,
        subject: &str,
        schema: &str,
        version: VersionRef,
    ) -> Result<CompatibilityReport> {
        match &self.inner.backend {
            #[cfg(feature = "http")]
            Backend::Http(h) => h.check_compatibility(subject, schema, version),
            Backend::Memory(m) => m.check_compatibility(subject, schema, version),
        }
    }

    /// The level in force for `subject` (falling back to the global one), or the global level.
    pub fn compatibility(&self, subject: Option<&str>) -> Result<Compatibility> {
        match &self.inner.backend {
            #[cfg(feature = "http")]
            Backend::Http(h) => h.compatibility(subject),
            Backend::Memory(m) => m.compatibility(subject),
        }
    }

    /// Sets the level of `subject`, or the global level.
    pub fn set_compatibility(&self, subject: Option<&str>, level: Compatibility) -> Result<()> {
        match &self.inner.backend {
            #[cfg(feature = "http")]
            Backend::Http(h) => h.set_compatibility(subject, level),
            Backend::Memory(m) => m.set_compatibility(subject, level),
        }
    }

    /// Deletes `subject`'s versions and returns their numbers.
    pub fn delete_subject(&self, subject: &str) -> Result<Vec<i32>> {
        let deleted = match &self.inner.backend {
            #[cfg(feature = "http")]
            Backend::Http(h) => h.delete_subject(subject)?,
            Backend::Memory(m) => m.delete_subject(subject)?,
        };
        lock(&self.inner.ids).remove(subject);
        lock(&self.inner.found).remove(subject);
        Ok(deleted)
    }

    /// Whether the registry answers, with a single cheap request and no retries.
    pub fn ping(&self) -> Result<()> {
        match &self.inner.backend {
            #[cfg(feature = "http")]
            Backend::Http(h) => h.ping(),
            Backend::Memory(m) => m.compatibility(None).map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_is_send_sync_and_cheap_to_clone() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<SchemaRegistry>();
        let memory = Arc::new(MemoryRegistry::new());
        let a = SchemaRegistry::memory(Arc::clone(&memory));
        let b = a.clone();
        assert!(Arc::ptr_eq(&a.inner, &b.inner));
    }

    #[test]
    fn mock_urls_share_a_scope() {
        let mocks = MockRegistries::new();
        let a = SchemaRegistry::connect(RegistryConfig::new("mock://shared"), &mocks).unwrap();
        let b = SchemaRegistry::connect(RegistryConfig::new("mock://shared"), &mocks).unwrap();
        let c = SchemaRegistry::connect(RegistryConfig::new("mock://other"), &mocks).unwrap();
        assert!(a.is_in_memory());
        let id = a.register("s", r#""string""#).unwrap();
        assert_eq!(&*b.schema_by_id(id).unwrap(), r#""string""#);
        assert!(c.schema_by_id(id).is_err());
        assert_eq!(
            b.lookup("s", r#""string""#).unwrap().map(|v| v.id),
            Some(id)
        );
        assert_eq!(c.lookup("s", r#""string""#).unwrap(), None);
        assert!(a.ping().is_ok());
    }
}
