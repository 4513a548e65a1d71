//! The in-memory store: a sorted map behind a lock, for tests and small state.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use super::{BytesStore, Result};

/// A sorted map of bytes.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryStore {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl BytesStore for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.read().get(key).cloned())
    }
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.write().insert(key.to_vec(), value.to_vec());
        Ok(())
    }
    fn delete(&self, key: &[u8]) -> Result<()> {
        self.write().remove(key);
        Ok(())
    }
    fn range(&self, from: Option<&[u8]>, to: Option<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let lower = from.map_or(Bound::Unbounded, |f| Bound::Included(f.to_vec()));
        let upper = to.map_or(Bound::Unbounded, |t| Bound::Excluded(t.to_vec()));
        if let (Bound::Included(l), Bound::Excluded(u)) = (&lower, &upper)
            && l >= u
        {
            return Ok(Vec::new());
        }
        Ok(self
            .read()
            .range((lower, upper))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn approximate_len(&self) -> u64 {
        self.read().len() as u64
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn clear(&self) -> Result<()> {
        self.write().clear();
        Ok(())
    }
}
