//! Undoing the store writes of a call into a task that failed.
//!
//! A record (or a punctuation, or a flush) may write a store and then fail in a later
//! node; its outputs and changelog records are dropped, so its store writes must go too,
//! or the store holds what its changelog never gets (and a restore would disagree with
//! it). [`UndoStore`] sits right over the store's data and keeps, while a call runs, the
//! value each written key had before; [`CachingStore`](super::CachingStore) keeps the same
//! for its entries. The task commits (forgets) or rolls back both at the end of the call.

use std::sync::{Arc, Mutex};

use super::{BytesStore, Result};

/// Before-images of the keys a call wrote, oldest first; `None` while no call runs.
type Log = Option<Vec<(Vec<u8>, Option<Vec<u8>>)>>;

/// A store that can undo the writes of the call in progress; see the module docs.
pub struct UndoStore {
    inner: Arc<dyn BytesStore>,
    log: Mutex<Log>,
}

impl std::fmt::Debug for UndoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UndoStore").finish_non_exhaustive()
    }
}

impl UndoStore {
    /// Wraps `inner`; nothing is recorded until [`begin`](Self::begin).
    pub fn new(inner: Arc<dyn BytesStore>) -> Self {
        UndoStore {
            inner,
            log: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        // Plain data: a panic elsewhere leaves it usable.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts recording before-images (a call into the task begins).
    pub fn begin(&self) {
        let mut log = self.lock();
        match log.as_mut() {
            Some(entries) => entries.clear(),
            None => *log = Some(Vec::new()),
        }
    }

    /// Keeps the writes since [`begin`](Self::begin) and stops recording.
    pub fn commit(&self) {
        *self.lock() = None;
    }

    /// Puts back what the keys written since [`begin`](Self::begin) held, and stops
    /// recording.
    pub fn rollback(&self) -> Result<()> {
        let Some(entries) = self.lock().take() else {
            return Ok(());
        };
        for (key, before) in entries.into_iter().rev() {
            match before {
                Some(v) => self.inner.put(&key, &v)?,
                None => self.inner.delete(&key)?,
            }
        }
        Ok(())
    }

    fn record(&self, key: &[u8]) -> Result<()> {
        let mut log = self.lock();
        if let Some(entries) = log.as_mut() {
            entries.push((key.to_vec(), self.inner.get(key)?));
        }
        Ok(())
    }
}

impl BytesStore for UndoStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.record(key)?;
        self.inner.put(key, value)
    }

    fn delete(&self, key: &[u8]) -> Result<()> {
        self.record(key)?;
        self.inner.delete(key)
    }
    fn write_batch(&self, writes: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<()> {
        for (key, _) in writes {
            self.record(key)?;
        }
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
        // Restores wipe stores outside any call.
        self.inner.clear()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;

    /// A restore applies the changelog in batches: one write per batch, not per record.
    #[test]
    fn a_batch_reaches_the_store_as_one_batch_and_still_rolls_back() {
        let inner = Arc::new(crate::state::counting::Counting::default());
        let store = UndoStore::new(inner.clone());
        let writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..100)
            .map(|i: u32| (i.to_be_bytes().to_vec(), Some(b"v".to_vec())))
            .collect();
        store.write_batch(&writes).unwrap();
        assert_eq!(*inner.batches.lock().unwrap(), vec![100]);
        assert_eq!(*inner.singles.lock().unwrap(), 0);
        store.begin();
        store
            .write_batch(&[
                (0u32.to_be_bytes().to_vec(), Some(b"w".to_vec())),
                (b"new".to_vec(), Some(b"w".to_vec())),
            ])
            .unwrap();
        store.rollback().unwrap();
        assert_eq!(store.get(&0u32.to_be_bytes()).unwrap(), Some(b"v".to_vec()));
        assert_eq!(store.get(b"new").unwrap(), None);
    }

    #[test]
    fn rollback_restores_every_written_key_and_commit_keeps_them() {
        let store = UndoStore::new(Arc::new(MemoryStore::default()));
        store.put(b"a", b"1").unwrap();
        store.begin();
        store.put(b"a", b"2").unwrap();
        store.put(b"a", b"3").unwrap();
        store.put(b"b", b"1").unwrap();
        store.rollback().unwrap();
        assert_eq!(store.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.get(b"b").unwrap(), None);
        store.begin();
        store.delete(b"a").unwrap();
        store.commit();
        assert_eq!(store.get(b"a").unwrap(), None);
        // Nothing is recorded outside a call: a rollback then changes nothing.
        store.put(b"c", b"1").unwrap();
        store.rollback().unwrap();
        assert_eq!(store.get(b"c").unwrap(), Some(b"1".to_vec()));
    }
}
