//! The RocksDB store: one database per store and task under the state directory, with
//! memory bounded by a shared block cache and a write-buffer size.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};

use super::{BytesStore, Result, StoreError, StoreSpec, StoreSupplier};

/// Memory and location settings of RocksDB stores.
#[derive(Clone)]
pub struct RocksSettings {
    /// Root of every store: `<state_dir>/<application>/<partition>/<store>`.
    pub state_dir: PathBuf,
    /// Write buffer (memtable) size per store, bytes.
    pub write_buffer_size: usize,
    /// Block cache shared by every store of the process.
    cache: Cache,
}

impl std::fmt::Debug for RocksSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksSettings")
            .field("state_dir", &self.state_dir)
            .field("write_buffer_size", &self.write_buffer_size)
            .finish()
    }
}

impl RocksSettings {
    /// Stores under `state_dir`, a `block_cache_bytes` cache shared by all of them.
    pub fn new(
        state_dir: impl Into<PathBuf>,
        block_cache_bytes: usize,
        write_buffer_size: usize,
    ) -> Self {
        RocksSettings {
            state_dir: state_dir.into(),
            write_buffer_size,
            cache: Cache::new_lru_cache(block_cache_bytes),
        }
    }

    /// Directory of one store of one task.
    pub fn store_dir(&self, application: &str, partition: i32, store: &str) -> PathBuf {
        self.state_dir
            .join(application)
            .join(partition.to_string())
            .join(store)
    }

    /// Directory of a global table's store (one per instance, not per partition).
    pub fn global_store_dir(&self, application: &str, store: &str) -> PathBuf {
        self.state_dir.join(application).join("global").join(store)
    }

    /// Opens a global table's store (`spec.kind` decides RocksDB or memory).
    pub fn open_global(&self, application: &str, spec: &StoreSpec) -> Result<Arc<dyn BytesStore>> {
        match spec.kind {
            super::StoreKind::InMemory => Ok(Arc::new(super::MemoryStore::default())),
            super::StoreKind::Persistent => {
                let dir = self.global_store_dir(application, &spec.name);
                Ok(Arc::new(RocksStore::open(
                    &spec.name,
                    &dir,
                    &self.options(),
                )?))
            }
        }
    }

    fn options(&self) -> Options {
        let mut block = BlockBasedOptions::default();
        block.set_block_cache(&self.cache);
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_write_buffer_size(self.write_buffer_size);
        opts.set_max_write_buffer_number(2);
        opts.set_block_based_table_factory(&block);
        opts
    }
}

impl StoreSupplier for RocksSettings {
    fn open(
        &self,
        application: &str,
        partition: i32,
        spec: &StoreSpec,
    ) -> Result<Arc<dyn BytesStore>> {
        match spec.kind {
            super::StoreKind::InMemory => Ok(Arc::new(super::MemoryStore::default())),
            super::StoreKind::Persistent => {
                let dir = self.store_dir(application, partition, &spec.name);
                Ok(Arc::new(RocksStore::open(
                    &spec.name,
                    &dir,
                    &self.options(),
                )?))
            }
        }
    }
}

/// A store in a RocksDB database.
///
/// Writes skip RocksDB's write-ahead log, as Kafka Streams' stores do: the changelog is
/// the store's log. A store is trusted after a restart only with a checkpoint, written
/// after [`BytesStore::flush`] has put everything in table files; without one (a crash,
/// an aborted transaction) it is wiped and restored from the changelog, so what the WAL
/// would have kept is never read.
pub struct RocksStore {
    name: String,
    path: PathBuf,
    db: DB,
    writes: WriteOptions,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .finish()
    }
}

impl RocksStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(name: &str, path: &Path, options: &Options) -> Result<RocksStore> {
        std::fs::create_dir_all(path).map_err(|e| StoreError::Io {
            store: name.to_string(),
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let db = DB::open(options, path).map_err(|e| StoreError::Rocks {
            store: name.to_string(),
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut writes = WriteOptions::default();
        writes.disable_wal(true);
        Ok(RocksStore {
            name: name.to_string(),
            path: path.to_path_buf(),
            db,
            writes,
        })
    }

    fn err(&self, e: rocksdb::Error) -> StoreError {
        StoreError::Rocks {
            store: self.name.clone(),
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

impl BytesStore for RocksStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key).map_err(|e| self.err(e))
    }
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.db
            .put_opt(key, value, &self.writes)
            .map_err(|e| self.err(e))
    }
    fn delete(&self, key: &[u8]) -> Result<()> {
        self.db
            .delete_opt(key, &self.writes)
            .map_err(|e| self.err(e))
    }
    fn write_batch(&self, writes: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (key, value) in writes {
            match value {
                Some(v) => batch.put(key, v),
                None => batch.delete(key),
            }
        }
        self.db
            .write_opt(batch, &self.writes)
            .map_err(|e| self.err(e))
    }
    fn range(&self, from: Option<&[u8]>, to: Option<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mode = match from {
            Some(f) => IteratorMode::From(f, Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut out = Vec::new();
        for item in self.db.iterator(mode) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if to.is_some_and(|t| &*k >= t) {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }
    fn approximate_len(&self) -> u64 {
        self.db
            .property_int_value("rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0)
    }
    fn flush(&self) -> Result<()> {
        self.db.flush().map_err(|e| self.err(e))
    }
    fn clear(&self) -> Result<()> {
        let mut batch = WriteBatch::default();
        for item in self.db.iterator(IteratorMode::Start) {
            let (k, _) = item.map_err(|e| self.err(e))?;
            batch.delete(k);
        }
        self.db
            .write_opt(batch, &self.writes)
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{StoreKind, prefix_scan};

    fn spec() -> StoreSpec {
        StoreSpec {
            name: "s".into(),
            kind: StoreKind::Persistent,
            changelog: true,
            default_ttl: None,
            changelog_retention: None,
            caching: false,
            key_format: "bytes".into(),
            value_format: "bytes".into(),
        }
    }

    #[test]
    fn a_store_this_process_still_holds_is_refused_as_such_and_opens_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let settings = RocksSettings::new(dir.path(), 1 << 20, 1 << 20);
        let first = settings.open("app", 0, &spec()).unwrap();
        let Err(refused) = settings.open("app", 0, &spec()) else {
            panic!("opened twice")
        };
        assert!(refused.held_in_this_process(), "{refused}");
        drop(first);
        assert!(settings.open("app", 0, &spec()).is_ok());
    }

    #[test]
    fn rocks_and_memory_stores_agree() {
        let dir = tempfile::tempdir().unwrap();
        let settings = RocksSettings::new(dir.path(), 1 << 20, 1 << 20);
        let rocks = settings.open("app", 3, &spec()).unwrap();
        let memory = crate::state::MemoryStore::default();
        for store in [&*rocks, &memory as &dyn BytesStore] {
            for k in ["a1", "a2", "b1", "b2", "c"] {
                store
                    .put(k.as_bytes(), k.to_uppercase().as_bytes())
                    .unwrap();
            }
            store.delete(b"b1").unwrap();
            assert_eq!(store.get(b"a2").unwrap(), Some(b"A2".to_vec()));
            assert_eq!(store.get(b"b1").unwrap(), None);
            let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| {
                v.into_iter()
                    .map(|(k, _)| String::from_utf8(k).unwrap())
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                keys(store.range(Some(b"a2"), Some(b"c")).unwrap()),
                vec!["a2", "b2"]
            );
            assert_eq!(keys(prefix_scan(store, b"a").unwrap()), vec!["a1", "a2"]);
            assert_eq!(keys(store.range(None, None).unwrap()).len(), 4);
            store.clear().unwrap();
            assert_eq!(store.range(None, None).unwrap().len(), 0);
        }
        assert!(
            dir.path().join("app/3/s").exists(),
            "one database per store and task"
        );
    }

    #[test]
    fn rocks_data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let settings = RocksSettings::new(dir.path(), 1 << 20, 1 << 20);
        {
            let store = settings.open("app", 0, &spec()).unwrap();
            store.put(b"k", b"v").unwrap();
            store.flush().unwrap();
        }
        let store = settings.open("app", 0, &spec()).unwrap();
        assert_eq!(store.get(b"k").unwrap(), Some(b"v".to_vec()));
    }
}
