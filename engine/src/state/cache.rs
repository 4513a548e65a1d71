//! The record cache (Kafka Streams' `statestore.cache.max.bytes`, KIP-63): writes to an
//! aggregation's store are kept in memory, per store and task, so updates to the same key
//! coalesce. The store write, the changelog record and the downstream record of an entry
//! happen only when it is evicted (least recently used first, while the instance's
//! caches together hold more than their budget) or when the task flushes, which the
//! runtime does before every commit.
//!
//! Reads see cached values: [`CachingStore`] is itself a [`BytesStore`] whose `get` and
//! `range` overlay the cache on the store underneath, so interactive queries and later
//! records agree with what was written.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::record::{Headers, Timestamp};

use super::{BytesStore, Result};

/// Bookkeeping bytes charged per cached entry on top of its key, value and headers (the
/// slab slot, the index entry and a second copy of the key, roughly).
pub const ENTRY_OVERHEAD: usize = 96;

/// The memory the record caches of one runtime instance share: Kafka Streams evicts from
/// the cache being written to while all caches together are over the bound, and so does
/// this (one budget per topology runner, or per test driver).
#[derive(Debug)]
pub struct CacheBudget {
    max_bytes: usize,
    used: AtomicUsize,
}

impl CacheBudget {
    /// A budget of `max_bytes` (0 turns caching off: every write is evicted at once).
    pub fn new(max_bytes: usize) -> Arc<Self> {
        Arc::new(CacheBudget {
            max_bytes,
            used: AtomicUsize::new(0),
        })
    }

    /// The bound.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Bytes the caches hold now.
    pub fn used_bytes(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn over(&self) -> bool {
        self.used.load(Ordering::Relaxed) > self.max_bytes
    }
}

/// A cached write leaving the cache: what goes to the store, the changelog and downstream.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FlushedEntry {
    pub key: Vec<u8>,
    /// The framed value; `None` for a deletion.
    pub value: Option<Vec<u8>>,
    /// Timestamp and headers of the last update of the entry (Kafka Streams forwards an
    /// evicted entry with the record context of its last update).
    pub timestamp: Timestamp,
    pub headers: Headers,
}

const NIL: usize = usize::MAX;

#[derive(Debug)]
struct Slot {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    dirty: bool,
    timestamp: Timestamp,
    headers: Headers,
    /// Towards the most recently used entry.
    newer: usize,
    /// Towards the least recently used entry.
    older: usize,
}

impl Slot {
    fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, Vec::len))
            .sum();
        self.key.len() + self.value.as_ref().map_or(0, Vec::len) + headers + ENTRY_OVERHEAD
    }
}

/// An LRU list over a slab: O(1) touch, insert and eviction, no allocation per update of
/// an existing key.
#[derive(Debug, Default)]
struct Lru {
    index: HashMap<Vec<u8>, usize>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    newest: usize,
    oldest: usize,
    bytes: usize,
    dirty: usize,
    /// While a call into the task runs: the entries it changed as they were before
    /// (`None`: absent), oldest first, so a failed call can be undone.
    undo: Option<Vec<(Vec<u8>, Option<Image>)>>,
}

/// A cached entry as it was before a change.
#[derive(Debug)]
struct Image {
    value: Option<Vec<u8>>,
    dirty: bool,
    timestamp: Timestamp,
    headers: Headers,
}

impl Lru {
    fn new() -> Self {
        Lru {
            newest: NIL,
            oldest: NIL,
            ..Lru::default()
        }
    }

    fn unlink(&mut self, i: usize) {
        let (newer, older) = (self.slots[i].newer, self.slots[i].older);
        if newer == NIL {
            self.newest = older;
        } else {
            self.slots[newer].older = older;
        }
        if older == NIL {
            self.oldest = newer;
        } else {
            self.slots[older].newer = newer;
        }
    }

    fn push_newest(&mut self, i: usize) {
        self.slots[i].newer = NIL;
        self.slots[i].older = self.newest;
        if self.newest != NIL {
            self.slots[self.newest].newer = i;
        }
        self.newest = i;
        if self.oldest == NIL {
            self.oldest = i;
        }
    }

    /// Inserts or replaces `key` as the most recently used entry; returns the change in
    /// bytes held.
    fn put(
        &mut self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        timestamp: Timestamp,
        headers: Headers,
    ) -> isize {
        self.record(&key);
        if let Some(&i) = self.index.get(key.as_slice()) {
            let before = self.slots[i].size();
            let slot = &mut self.slots[i];
            slot.value = value;
            slot.timestamp = timestamp;
            slot.headers = headers;
            if !slot.dirty {
                slot.dirty = true;
                self.dirty += 1;
            }
            let after = self.slots[i].size();
            self.unlink(i);
            self.push_newest(i);
            self.bytes = self.bytes + after - before;
            return after as isize - before as isize;
        }
        let slot = Slot {
            key: key.clone(),
            value,
            dirty: true,
            timestamp,
            headers,
            newer: NIL,
            older: NIL,
        };
        let size = slot.size();
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        self.index.insert(key, i);
        self.push_newest(i);
        self.dirty += 1;
        self.bytes += size;
        size as isize
    }

    /// Removes the least recently used entry; returns it (if it was dirty) and its size.
    fn evict_oldest(&mut self) -> Option<(Option<FlushedEntry>, usize)> {
        let i = self.oldest;
        if i == NIL {
            return None;
        }
        if self.undo.is_some() {
            let key = self.slots[i].key.clone();
            self.record(&key);
        }
        self.unlink(i);
        self.free.push(i);
        let slot = &mut self.slots[i];
        let size = slot.size();
        let key = std::mem::take(&mut slot.key);
        let flushed = slot.dirty.then(|| FlushedEntry {
            key: key.clone(),
            value: slot.value.take(),
            timestamp: slot.timestamp,
            headers: std::mem::take(&mut slot.headers),
        });
        slot.value = None;
        slot.headers = Headers::new();
        if slot.dirty {
            slot.dirty = false;
            self.dirty -= 1;
        }
        self.index.remove(key.as_slice());
        self.bytes -= size;
        Some((flushed, size))
    }

    /// Keeps the before-image of `key` if a call is being recorded.
    fn record(&mut self, key: &[u8]) {
        if self.undo.is_none() {
            return;
        }
        let image = self.index.get(key).map(|&i| {
            let slot = &self.slots[i];
            Image {
                value: slot.value.clone(),
                dirty: slot.dirty,
                timestamp: slot.timestamp,
                headers: slot.headers.clone(),
            }
        });
        if let Some(undo) = self.undo.as_mut() {
            undo.push((key.to_vec(), image));
        }
    }

    /// Drops `key`; returns the bytes freed.
    fn remove(&mut self, key: &[u8]) -> usize {
        let Some(i) = self.index.remove(key) else {
            return 0;
        };
        let size = self.slots[i].size();
        if self.slots[i].dirty {
            self.dirty -= 1;
        }
        self.unlink(i);
        self.free.push(i);
        let slot = &mut self.slots[i];
        slot.key = Vec::new();
        slot.value = None;
        slot.headers = Headers::new();
        slot.dirty = false;
        self.bytes -= size;
        size
    }

    /// Puts back every entry the recorded call changed, as it was; stops recording.
    fn rollback(&mut self) {
        let Some(undo) = self.undo.take() else {
            return;
        };
        for (key, image) in undo.into_iter().rev() {
            self.remove(&key);
            if let Some(image) = image {
                self.put(key, image.value, image.timestamp, image.headers);
                if !image.dirty {
                    self.mark_clean_newest();
                }
            }
        }
    }

    /// Marks the most recently used entry clean (it was just put back as it was).
    fn mark_clean_newest(&mut self) {
        let i = self.newest;
        if i != NIL && self.slots[i].dirty {
            self.slots[i].dirty = false;
            self.dirty -= 1;
        }
    }

    /// Every dirty entry, least recently used first, marked clean (they stay cached).
    fn take_dirty(&mut self) -> Vec<FlushedEntry> {
        let mut out = Vec::with_capacity(self.dirty);
        let mut i = self.oldest;
        while i != NIL && out.len() < self.dirty {
            if self.slots[i].dirty && self.undo.is_some() {
                let key = self.slots[i].key.clone();
                self.record(&key);
            }
            let slot = &mut self.slots[i];
            if slot.dirty {
                slot.dirty = false;
                out.push(FlushedEntry {
                    key: slot.key.clone(),
                    value: slot.value.clone(),
                    timestamp: slot.timestamp,
                    headers: slot.headers.clone(),
                });
            }
            i = slot.newer;
        }
        self.dirty = 0;
        out
    }
}

/// A store with a record cache in front of it; see the module documentation.
///
/// Writes through [`BytesStore::put`] and [`BytesStore::delete`] (restoring from the
/// changelog) go straight to the store underneath and drop the key from the cache; only
/// the typed store's writes of a task ([`CachingStore::put_cached`]) are cached.
pub struct CachingStore {
    name: String,
    inner: Arc<dyn BytesStore>,
    budget: Arc<CacheBudget>,
    lru: Mutex<Lru>,
}

impl std::fmt::Debug for CachingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingStore")
            .field("store", &self.name)
            .finish()
    }
}

impl CachingStore {
    /// A cache for store `name` over `inner`, charging `budget`.
    pub fn new(name: &str, inner: Arc<dyn BytesStore>, budget: Arc<CacheBudget>) -> Self {
        CachingStore {
            name: name.to_string(),
            inner,
            budget,
            lru: Mutex::new(Lru::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // The cache holds plain data; a panic elsewhere leaves it consistent enough to
        // keep serving (the task that panicked is dropped anyway).
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store underneath.
    pub fn inner(&self) -> &Arc<dyn BytesStore> {
        &self.inner
    }

    /// Entries with updates not yet written to the store.
    pub fn dirty_entries(&self) -> usize {
        self.lock().dirty
    }

    /// Entries held (dirty or clean).
    pub fn len(&self) -> usize {
        self.lock().index.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached value of `key`: `Some(None)` for a cached deletion, `None` when the
    /// cache does not know the key.
    pub(crate) fn cached(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let lru = self.lock();
        lru.index.get(key).map(|&i| lru.slots[i].value.clone())
    }

    /// Caches a write (`None`: a deletion) as the most recently used entry.
    pub(crate) fn put_cached(
        &self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        timestamp: Timestamp,
        headers: Headers,
    ) {
        let delta = self.lock().put(key, value, timestamp, headers);
        if delta >= 0 {
            self.budget
                .used
                .fetch_add(delta as usize, Ordering::Relaxed);
        } else {
            self.budget
                .used
                .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// Evicts this cache's least recently used entries while the instance's caches are
    /// over their budget; returns the dirty ones, which the caller must write.
    pub(crate) fn evict_over_budget(&self) -> Vec<FlushedEntry> {
        let mut out = Vec::new();
        if !self.budget.over() {
            return out;
        }
        let mut lru = self.lock();
        while self.budget.over() {
            let Some((flushed, size)) = lru.evict_oldest() else {
                break;
            };
            self.budget.used.fetch_sub(size, Ordering::Relaxed);
            out.extend(flushed);
        }
        out
    }

    /// Every dirty entry, least recently used first; they stay cached, now clean.
    pub(crate) fn take_dirty(&self) -> Vec<FlushedEntry> {
        self.lock().take_dirty()
    }

    /// Writes flushed entries to the store underneath.
    pub(crate) fn write_through(&self, entries: &[FlushedEntry]) -> Result<()> {
        for e in entries {
            match &e.value {
                Some(v) => self.inner.put(&e.key, v)?,
                None => self.inner.delete(&e.key)?,
            }
        }
        Ok(())
    }

    fn forget(&self, key: &[u8]) {
        let mut lru = self.lock();
        lru.record(key);
        let freed = lru.remove(key);
        drop(lru);
        self.budget.used.fetch_sub(freed, Ordering::Relaxed);
    }

    /// Starts recording what the entries were before the call into the task that
    /// begins now changes them.
    pub(crate) fn begin(&self) {
        self.lock().undo = Some(Vec::new());
    }

    /// Keeps the changes since [`begin`](Self::begin); stops recording.
    pub(crate) fn commit(&self) {
        self.lock().undo = None;
    }

    /// Puts back every entry changed since [`begin`](Self::begin) as it was (evicted
    /// entries come back, flushed ones are dirty again); stops recording.
    pub(crate) fn rollback(&self) {
        let mut lru = self.lock();
        let before = lru.bytes;
        lru.rollback();
        let after = lru.bytes;
        drop(lru);
        if after >= before {
            self.budget
                .used
                .fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.budget
                .used
                .fetch_sub(before - after, Ordering::Relaxed);
        }
    }
}

impl Drop for CachingStore {
    fn drop(&mut self) {
        // A closed task's cache gives its share of the budget back.
        let bytes = self.lock().bytes;
        self.budget.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl BytesStore for CachingStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.cached(key) {
            Some(value) => Ok(value),
            None => self.inner.get(key),
        }
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.forget(key);
        self.inner.put(key, value)
    }

    fn delete(&self, key: &[u8]) -> Result<()> {
        self.forget(key);
        self.inner.delete(key)
    }

    fn write_batch(&self, writes: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<()> {
        for (key, _) in writes {
            self.forget(key);
        }
        self.inner.write_batch(writes)
    }

    fn range(&self, from: Option<&[u8]>, to: Option<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let stored = self.inner.range(from, to)?;
        let in_range = |k: &[u8]| from.is_none_or(|f| k >= f) && to.is_none_or(|t| k < t);
        let overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>> = {
            let lru = self.lock();
            lru.index
                .iter()
                .filter(|(k, _)| in_range(k))
                .map(|(k, &i)| (k.clone(), lru.slots[i].value.clone()))
                .collect()
        };
        if overlay.is_empty() {
            return Ok(stored);
        }
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            stored.into_iter().map(|(k, v)| (k, Some(v))).collect();
        merged.extend(overlay);
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    fn approximate_len(&self) -> u64 {
        // Cached keys may or may not be in the store already; the store's count is the
        // estimate (it catches up at the next flush).
        self.inner.approximate_len()
    }

    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    fn clear(&self) -> Result<()> {
        let keys: Vec<Vec<u8>> = self.lock().index.keys().cloned().collect();
        for k in keys {
            self.forget(&k);
        }
        self.inner.clear()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;

    fn cache(max: usize) -> (CachingStore, Arc<CacheBudget>) {
        let budget = CacheBudget::new(max);
        let store = CachingStore::new("s", Arc::new(MemoryStore::default()), budget.clone());
        (store, budget)
    }

    fn put(c: &CachingStore, k: &str, v: &str) {
        c.put_cached(
            k.as_bytes().to_vec(),
            Some(v.as_bytes().to_vec()),
            0,
            Headers::new(),
        );
    }

    /// A restore applies the changelog in batches: one write per batch, not per record,
    /// and what the cache held of those keys is gone.
    #[test]
    fn a_batch_reaches_the_store_as_one_batch_and_replaces_cached_entries() {
        let inner = Arc::new(crate::state::counting::Counting::default());
        let c = CachingStore::new("s", inner.clone(), CacheBudget::new(10_000));
        put(&c, "a", "cached");
        let writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..100)
            .map(|i| (format!("k{i}").into_bytes(), Some(b"v".to_vec())))
            .chain([(b"a".to_vec(), Some(b"stored".to_vec()))])
            .collect();
        c.write_batch(&writes).unwrap();
        assert_eq!(*inner.batches.lock().unwrap(), vec![101]);
        assert_eq!(*inner.singles.lock().unwrap(), 0);
        assert_eq!(c.get(b"a").unwrap(), Some(b"stored".to_vec()));
    }

    #[test]
    fn a_rollback_puts_back_written_evicted_and_flushed_entries_as_they_were() {
        let (c, budget) = cache(10_000);
        put(&c, "a", "1");
        put(&c, "b", "1");
        let flushed = c.take_dirty();
        c.write_through(&flushed).unwrap();
        put(&c, "b", "2");
        let used = budget.used_bytes();
        c.begin();
        put(&c, "a", "2");
        put(&c, "new", "1");
        let _ = c.take_dirty();
        // As evict_over_budget does it: the entry leaves, its bytes go back.
        let (_, size) = c.lock().evict_oldest().unwrap();
        budget.used.fetch_sub(size, Ordering::Relaxed);
        c.rollback();
        assert_eq!(c.cached(b"a"), Some(Some(b"1".to_vec())));
        assert_eq!(c.cached(b"b"), Some(Some(b"2".to_vec())));
        assert_eq!(c.cached(b"new"), None);
        assert_eq!(
            c.dirty_entries(),
            1,
            "b is dirty again, a is clean as before"
        );
        assert_eq!(budget.used_bytes(), used);
        assert_eq!(c.lock().bytes, used);
    }

    #[test]
    fn updates_of_a_key_coalesce_and_flush_in_lru_order() {
        let (c, _) = cache(1 << 20);
        put(&c, "a", "1");
        put(&c, "b", "1");
        put(&c, "a", "2");
        assert_eq!(c.dirty_entries(), 2);
        let flushed = c.take_dirty();
        let kv: Vec<_> = flushed
            .iter()
            .map(|e| (e.key.clone(), e.value.clone().unwrap()))
            .collect();
        assert_eq!(
            kv,
            vec![
                (b"b".to_vec(), b"1".to_vec()),
                (b"a".to_vec(), b"2".to_vec())
            ]
        );
        assert_eq!(c.dirty_entries(), 0);
        // Flushed entries stay readable from the cache.
        assert_eq!(c.get(b"a").unwrap(), Some(b"2".to_vec()));
        assert!(c.take_dirty().is_empty());
    }

    #[test]
    fn eviction_takes_the_least_recently_used_entry_when_over_budget() {
        let one = b"a".len() + b"1".len() + ENTRY_OVERHEAD;
        let (c, budget) = cache(2 * one);
        put(&c, "a", "1");
        put(&c, "b", "1");
        put(&c, "a", "1");
        assert!(c.evict_over_budget().is_empty());
        put(&c, "c", "1");
        let evicted = c.evict_over_budget();
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].key, b"b".to_vec());
        assert_eq!(budget.used_bytes(), 2 * one);
        assert_eq!(c.cached(b"b"), None);
        drop(c);
        assert_eq!(budget.used_bytes(), 0);
    }

    #[test]
    fn reads_overlay_the_cache_on_the_store() {
        let (c, _) = cache(1 << 20);
        c.inner().put(b"a", b"stored").unwrap();
        c.inner().put(b"b", b"stored").unwrap();
        put(&c, "b", "cached");
        put(&c, "c", "cached");
        c.put_cached(b"a".to_vec(), None, 0, Headers::new());
        assert_eq!(c.get(b"a").unwrap(), None);
        assert_eq!(c.get(b"b").unwrap(), Some(b"cached".to_vec()));
        let all = c.range(None, None).unwrap();
        assert_eq!(
            all,
            vec![
                (b"b".to_vec(), b"cached".to_vec()),
                (b"c".to_vec(), b"cached".to_vec())
            ]
        );
        assert_eq!(
            c.range(Some(b"c"), None).unwrap(),
            vec![(b"c".to_vec(), b"cached".to_vec())]
        );
        let flushed = c.take_dirty();
        c.write_through(&flushed).unwrap();
        assert_eq!(c.inner().get(b"a").unwrap(), None);
        assert_eq!(c.inner().get(b"c").unwrap(), Some(b"cached".to_vec()));
    }
}
