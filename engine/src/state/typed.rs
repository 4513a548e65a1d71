//! Typed access to a store: keys and values through the store's serdes, TTL framing, and
//! every write handed to the changelog writer the task provides.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::record::{Headers, Timestamp};
use crate::serde::{Serde, Written};

use super::cache::{CachingStore, FlushedEntry};
use super::{BytesStore, Result, StoreError, StoreSpec, framing, prefix_scan};

/// Receives a store's writes for its changelog topic (`None` value: a deletion).
pub trait ChangelogWriter {
    /// Records that `key` now has `value` (already framed) or was deleted.
    fn write(&mut self, store: &str, key: Vec<u8>, value: Option<Vec<u8>>);
}

/// The serdes of a store, kept type-erased in the topology and recovered by type.
pub struct StoreSerdes<K, V> {
    pub(crate) key: Arc<dyn Serde<K>>,
    pub(crate) value: Arc<dyn Serde<V>>,
}

/// A typed view of a key-value store, as a processor sees it.
///
/// Keys are ordered by their serialized bytes (for strings: bytewise; for big-endian
/// integers: numerically for non-negative values).
pub struct KeyValueStore<'a, K, V> {
    pub(crate) spec: &'a StoreSpec,
    pub(crate) store: &'a Arc<dyn BytesStore>,
    pub(crate) serdes: &'a StoreSerdes<K, V>,
    pub(crate) changelog: Option<&'a mut dyn ChangelogWriter>,
    /// The store's record cache, when it has one (`store` is then the cache's view).
    pub(crate) cache: Option<&'a CachingStore>,
    pub(crate) now: Timestamp,
    pub(crate) _types: PhantomData<fn(K, V)>,
}

impl<K: 'static, V: 'static> KeyValueStore<'_, K, V> {
    fn serde_error(&self, part: &'static str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Serde {
            store: self.spec.name.clone(),
            part,
            message: e.to_string(),
        }
    }

    fn key_bytes(&self, key: &K) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        match self.serdes.key.serialize(&self.spec.name, key, &mut out) {
            Ok(Written::Bytes) => Ok(out),
            Ok(Written::Null) => Err(self.serde_error("key", "a store key cannot be null")),
            Err(e) => Err(self.serde_error("key", e)),
        }
    }

    fn decode(&self, key: &[u8], stored: &[u8]) -> Result<Option<(K, V)>> {
        let Some(value) = framing::unframe(stored, self.now) else {
            return Ok(None);
        };
        let k = self
            .serdes
            .key
            .deserialize(&self.spec.name, Some(key))
            .map_err(|e| self.serde_error("key", e))?;
        let v = self
            .serdes
            .value
            .deserialize(&self.spec.name, Some(value))
            .map_err(|e| self.serde_error("value", e))?;
        Ok(Some((k, v)))
    }

    /// The value of `key`, unless absent or expired.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        let k = self.key_bytes(key)?;
        match self.store.get(&k)? {
            None => Ok(None),
            Some(stored) => Ok(framing::unframe(&stored, self.now)
                .map(|v| {
                    self.serdes
                        .value
                        .deserialize(&self.spec.name, Some(v))
                        .map_err(|e| self.serde_error("value", e))
                })
                .transpose()?),
        }
    }

    /// Entries with `from <= key < to` by serialized key, unexpired, in key order.
    pub fn range(&self, from: Option<&K>, to: Option<&K>) -> Result<Vec<(K, V)>> {
        let from = from.map(|k| self.key_bytes(k)).transpose()?;
        let to = to.map(|k| self.key_bytes(k)).transpose()?;
        let mut out = Vec::new();
        for (k, v) in self.store.range(from.as_deref(), to.as_deref())? {
            out.extend(self.decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Entries whose serialized key starts with `prefix`.
    pub fn prefix(&self, prefix: &[u8]) -> Result<Vec<(K, V)>> {
        let mut out = Vec::new();
        for (k, v) in prefix_scan(&**self.store, prefix)? {
            out.extend(self.decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Every unexpired entry.
    pub fn all(&self) -> Result<Vec<(K, V)>> {
        self.range(None, None)
    }

    /// Approximate number of entries (expired ones included until removed).
    pub fn approximate_len(&self) -> u64 {
        self.store.approximate_len()
    }
}

impl<K: 'static, V: 'static> KeyValueStore<'_, K, V> {
    /// Sets `key` to `value`, expiring after the store's default TTL if it has one.
    pub fn put(&mut self, key: &K, value: &V) -> Result<()> {
        let ttl = self.spec.default_ttl;
        self.write(key, value, ttl)
    }

    /// Sets `key` to `value`, expiring `ttl` after now (wall-clock time).
    pub fn put_with_ttl(&mut self, key: &K, value: &V, ttl: Duration) -> Result<()> {
        self.write(key, value, Some(ttl))
    }

    fn write(&mut self, key: &K, value: &V, ttl: Option<Duration>) -> Result<()> {
        let now = self.now;
        self.write_with_context(key, value, ttl, now, Headers::new())
    }

    fn write_with_context(
        &mut self,
        key: &K,
        value: &V,
        ttl: Option<Duration>,
        timestamp: Timestamp,
        headers: Headers,
    ) -> Result<()> {
        let k = self.key_bytes(key)?;
        let mut v = Vec::new();
        match self.serdes.value.serialize(&self.spec.name, value, &mut v) {
            Ok(Written::Bytes) => {}
            Ok(Written::Null) => return self.delete(key),
            Err(e) => return Err(self.serde_error("value", e)),
        }
        let expires = ttl.map(|t| {
            self.now
                .saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX))
        });
        let framed = framing::frame(&v, expires);
        if let Some(cache) = self.cache {
            cache.put_cached(k, Some(framed), timestamp, headers);
            return Ok(());
        }
        self.store.put(&k, &framed)?;
        if let Some(changelog) = self.changelog.as_deref_mut() {
            changelog.write(&self.spec.name, k, Some(framed));
        }
        Ok(())
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: &K) -> Result<()> {
        let k = self.key_bytes(key)?;
        if let Some(cache) = self.cache {
            cache.put_cached(k, None, self.now, Headers::new());
            return Ok(());
        }
        self.store.delete(&k)?;
        if let Some(changelog) = self.changelog.as_deref_mut() {
            changelog.write(&self.spec.name, k, None);
        }
        Ok(())
    }
}

/// A read-only typed view of a store: how processors see a global table's store, which
/// only its topic may change.
pub struct ReadOnlyKeyValueStore<'a, K, V> {
    pub(crate) inner: KeyValueStore<'a, K, V>,
}

impl<K: 'static, V: 'static> ReadOnlyKeyValueStore<'_, K, V> {
    /// The value of `key`, if present.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        self.inner.get(key)
    }

    /// Entries with `from <= key < to` by serialized key, in key order.
    pub fn range(&self, from: Option<&K>, to: Option<&K>) -> Result<Vec<(K, V)>> {
        self.inner.range(from, to)
    }

    /// Entries whose serialized key starts with `prefix`.
    pub fn prefix(&self, prefix: &[u8]) -> Result<Vec<(K, V)>> {
        self.inner.prefix(prefix)
    }

    /// Every entry.
    pub fn all(&self) -> Result<Vec<(K, V)>> {
        self.inner.all()
    }

    /// Approximate number of entries.
    pub fn approximate_len(&self) -> u64 {
        self.inner.approximate_len()
    }
}

/// An update leaving a store's record cache, decoded: what an aggregation forwards.
pub(crate) struct Flushed<K, V> {
    pub key: K,
    /// `None`: a deletion (or an entry that expired while cached).
    pub value: Option<V>,
    pub timestamp: Timestamp,
    pub headers: Headers,
}

/// Which cached entries [`KeyValueStore::flush_cache`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CacheFlush {
    /// Only those evicted because the instance's caches are over their budget.
    Evict,
    /// Every dirty entry (they stay cached, clean).
    All,
}

impl<K: 'static, V: 'static> KeyValueStore<'_, K, V> {
    /// Whether writes to this store are cached.
    pub(crate) fn is_cached(&self) -> bool {
        self.cache.is_some()
    }

    /// Sets `key` to `value` with the context of the record that caused it (forwarded
    /// with the entry when it leaves the cache); a plain put when the store is uncached.
    pub(crate) fn put_with_context(
        &mut self,
        key: &K,
        value: &V,
        timestamp: Timestamp,
        headers: Headers,
    ) -> Result<()> {
        let ttl = self.spec.default_ttl;
        self.write_with_context(key, value, ttl, timestamp, headers)
    }

    /// Writes cached entries to the store and its changelog and returns them decoded, in
    /// least-recently-used order, for the caller to forward.
    pub(crate) fn flush_cache(&mut self, which: CacheFlush) -> Result<Vec<Flushed<K, V>>> {
        let Some(cache) = self.cache else {
            return Ok(Vec::new());
        };
        let entries = match which {
            CacheFlush::Evict => cache.evict_over_budget(),
            CacheFlush::All => cache.take_dirty(),
        };
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        cache.write_through(&entries)?;
        let mut out = Vec::with_capacity(entries.len());
        for FlushedEntry {
            key,
            value,
            timestamp,
            headers,
        } in entries
        {
            let decoded_key = self
                .serdes
                .key
                .deserialize(&self.spec.name, Some(&key))
                .map_err(|e| self.serde_error("key", e))?;
            let decoded_value = value
                .as_deref()
                .and_then(|stored| framing::unframe(stored, self.now))
                .map(|v| {
                    self.serdes
                        .value
                        .deserialize(&self.spec.name, Some(v))
                        .map_err(|e| self.serde_error("value", e))
                })
                .transpose()?;
            if let Some(changelog) = self.changelog.as_deref_mut() {
                changelog.write(&self.spec.name, key, value);
            }
            out.push(Flushed {
                key: decoded_key,
                value: decoded_value,
                timestamp,
                headers,
            });
        }
        Ok(out)
    }
}
