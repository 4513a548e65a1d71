//! State stores: key-value stores over bytes, in memory or in RocksDB (one instance per
//! task under the state directory), typed through serdes, with optional per-entry TTL
//! and a changelog topic per store so a task's state can be rebuilt anywhere.
//!
//! Stores know nothing of Kafka: a store's writes are handed to the task, which sends
//! them to the changelog with the rest of its output (so input offsets are committed only
//! after the changelog has them). Restoring is the runtime's job; the store only applies
//! what it is given. May depend on `serde` and `record`.

pub(crate) mod cache;
mod memory;
mod query;
mod rocks;
pub(crate) mod typed;
mod undo;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::record::Timestamp;

pub use cache::{CacheBudget, CachingStore, ENTRY_OVERHEAD as CACHE_ENTRY_OVERHEAD};
pub use memory::MemoryStore;
pub use query::{JsonEntry, QueryError, ScanRequest, StoreQuery};
pub use rocks::{RocksSettings, RocksStore};
pub use typed::{ChangelogWriter, KeyValueStore, ReadOnlyKeyValueStore};
pub use undo::UndoStore;

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A store could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// RocksDB failed.
    #[error("store `{store}` (RocksDB at {path}): {message}")]
    Rocks {
        /// The store.
        store: String,
        /// Its directory.
        path: PathBuf,
        /// RocksDB's message.
        message: String,
    },
    /// A processor asked for a store it did not declare, or of another type.
    #[error(
        "node `{node}` uses store `{store}`, which it did not declare (pass it to process_with_stores) or which does not exist"
    )]
    NotConnected {
        /// The node.
        node: String,
        /// The store.
        store: String,
    },
    /// A processor asked for a global store that no global table of the topology has.
    #[error(
        "node `{node}` reads global store `{store}`, which no global table of the topology declares (builder.global_table)"
    )]
    NotGlobal {
        /// The node.
        node: String,
        /// The store.
        store: String,
    },
    /// A key or value did not (de)serialize.
    #[error("store `{store}`: {part}: {message}")]
    Serde {
        /// The store.
        store: String,
        /// `key` or `value`.
        part: &'static str,
        /// The serde's message.
        message: String,
    },
    /// A file next to the store (checkpoint) could not be read or written.
    #[error("store `{store}`: {path}: {message}")]
    Io {
        /// The store.
        store: String,
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// Where a store keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// RocksDB under the state directory (the default): bounded memory, survives restarts.
    Persistent,
    /// A sorted map in memory, rebuilt from the changelog on start.
    InMemory,
}

/// How a store is declared in a topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreSpec {
    /// Store name, unique in the topology.
    pub name: String,
    /// Where data lives.
    pub kind: StoreKind,
    /// Whether updates go to `<application>-<store>-changelog`.
    pub changelog: bool,
    /// Entries expire this long after they were written, unless a put says otherwise.
    pub default_ttl: Option<Duration>,
    /// For windowed stores (windowed and session aggregations, stream-stream joins): how
    /// long a record matters (window plus grace). Their changelogs are
    /// `cleanup.policy=compact,delete` with this retention plus a day, as Kafka Streams
    /// sets them; `None`: a plain compacted changelog.
    pub changelog_retention: Option<Duration>,
    /// Whether writes go through a record cache (aggregations: `count`, `reduce`,
    /// `aggregate` of a grouped stream, unless built `with_caching(false)`).
    pub caching: bool,
    /// Key and value serde descriptions, for `describe()` and interactive queries.
    pub key_format: String,
    /// Value serde description.
    pub value_format: String,
}

impl StoreSpec {
    /// The changelog topic of this store in `application`.
    pub fn changelog_topic(&self, application: &str) -> String {
        format!("{application}-{}-changelog", self.name)
    }
}

/// A key-value store over bytes; keys are ordered bytewise.
pub trait BytesStore: Send + Sync {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Sets `key` to `value`.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()>;
    /// Removes `key`.
    fn delete(&self, key: &[u8]) -> Result<()>;
    /// Applies `writes` in order (`None`: a deletion); RocksDB takes them as one batch.
    fn write_batch(&self, writes: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<()> {
        for (key, value) in writes {
            match value {
                Some(v) => self.put(key, v)?,
                None => self.delete(key)?,
            }
        }
        Ok(())
    }
    /// Entries with `from <= key < to` (unbounded where `None`), in key order.
    fn range(&self, from: Option<&[u8]>, to: Option<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Number of entries (approximate for RocksDB).
    fn approximate_len(&self) -> u64;
    /// Makes writes durable (RocksDB flushes its memtable).
    fn flush(&self) -> Result<()>;
    /// Removes every entry.
    fn clear(&self) -> Result<()>;
}

/// Entries of `store` whose key starts with `prefix`.
pub fn prefix_scan(store: &dyn BytesStore, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    match prefix_end(prefix) {
        Some(end) => store.range(Some(prefix), Some(&end)),
        None => store.range(Some(prefix), None),
    }
}

/// The smallest key greater than every key with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Value framing for TTL: one flag byte, then the expiry time if the flag is 1.
pub(crate) mod framing {
    use super::Timestamp;

    /// Frames `value` with an optional expiry.
    pub fn frame(value: &[u8], expires_at: Option<Timestamp>) -> Vec<u8> {
        let mut out = Vec::with_capacity(value.len() + 9);
        match expires_at {
            None => out.push(0),
            Some(t) => {
                out.push(1);
                out.extend_from_slice(&t.to_be_bytes());
            }
        }
        out.extend_from_slice(value);
        out
    }

    /// The value if it has not expired at `now`; `None` for expired or malformed.
    pub fn unframe(stored: &[u8], now: Timestamp) -> Option<&[u8]> {
        match stored {
            [0, rest @ ..] => Some(rest),
            [1, rest @ ..] if rest.len() >= 8 => {
                let (t, value) = rest.split_at(8);
                let expires = Timestamp::from_be_bytes(t.try_into().ok()?);
                (now < expires).then_some(value)
            }
            _ => None,
        }
    }
}

/// Creates the stores of a task; the runtime opens RocksDB, the test driver memory.
pub trait StoreSupplier: Send + Sync {
    /// The store `spec` for task `partition` of `application`.
    fn open(
        &self,
        application: &str,
        partition: i32,
        spec: &StoreSpec,
    ) -> Result<Arc<dyn BytesStore>>;
}

impl StoreError {
    /// RocksDB refused to open a store because this process still has it open: a
    /// handle of the task that had it before (closed a moment ago, while a query or a
    /// restore still held it) has not been released yet. Opening again shortly succeeds.
    pub fn held_in_this_process(&self) -> bool {
        // RocksDB's own lock table for the process: `LockFile` refuses a file this
        // process already locked with "lock hold by current process".
        matches!(self, StoreError::Rocks { message, .. } if message.contains("lock hold by current process"))
    }
}

/// Opens every store in memory (the test driver's supplier).
#[derive(Clone, Copy, Debug, Default)]
pub struct InMemorySupplier;

impl StoreSupplier for InMemorySupplier {
    fn open(
        &self,
        _application: &str,
        _partition: i32,
        _spec: &StoreSpec,
    ) -> Result<Arc<dyn BytesStore>> {
        Ok(Arc::new(MemoryStore::default()))
    }
}

/// The stores of one task, by name.
pub type TaskStores = BTreeMap<String, Arc<dyn BytesStore>>;

/// A store that counts how writes reach it, for tests of the stores layered over one.
#[cfg(test)]
pub(crate) mod counting {
    use std::sync::Mutex;

    use super::{BytesStore, MemoryStore, Result};

    /// Single `put`/`delete` calls, and the size of each `write_batch`.
    #[derive(Default)]
    pub(crate) struct Counting {
        inner: MemoryStore,
        pub(crate) singles: Mutex<usize>,
        pub(crate) batches: Mutex<Vec<usize>>,
    }

    impl BytesStore for Counting {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
            self.inner.get(key)
        }
        fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
            *self.singles.lock().unwrap() += 1;
            self.inner.put(key, value)
        }
        fn delete(&self, key: &[u8]) -> Result<()> {
            *self.singles.lock().unwrap() += 1;
            self.inner.delete(key)
        }
        fn write_batch(&self, writes: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<()> {
            self.batches.lock().unwrap().push(writes.len());
            self.inner.write_batch(writes)
        }
        fn range(&self, from: Option<&[u8]>, to: Option<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
            self.inner.range(from, to)
        }
        fn approximate_len(&self) -> u64 {
            self.inner.approximate_len()
        }
        fn flush(&self) -> Result<()> {
            self.inner.flush()
        }
        fn clear(&self) -> Result<()> {
            self.inner.clear()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 255]), Some(vec![2]));
        assert_eq!(prefix_end(&[255, 255]), None);
    }

    #[test]
    fn framing_hides_expired_values() {
        let framed = framing::frame(b"v", Some(100));
        assert_eq!(framing::unframe(&framed, 99), Some(&b"v"[..]));
        assert_eq!(framing::unframe(&framed, 100), None);
        assert_eq!(
            framing::unframe(&framing::frame(b"v", None), i64::MAX),
            Some(&b"v"[..])
        );
        assert_eq!(framing::unframe(&[7, 1, 2], 0), None);
    }
}
