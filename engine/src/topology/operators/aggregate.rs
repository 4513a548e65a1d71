//! Grouping and aggregation: `group_by_key`, `group_by` (through a repartition topic),
//! and `count`, `reduce`, `aggregate` into a store-backed [`KTable`].
//!
//! Aggregations write through a record cache (`crate::state::cache`) unless built
//! `with_caching(false)`: updates of a key coalesce in memory, and the store write, the
//! changelog record and the downstream update happen when the entry is evicted or the
//! task flushes (before every commit), as in Kafka Streams.

use std::sync::Arc;

use crate::record::Record;
use crate::serde::{I64Serde, Serde};
use crate::state::typed::CacheFlush;
use crate::topology::builder::{Data, KStream, StoreBuilder, add_source, add_store};
use crate::topology::error::ProcessingError;
use crate::topology::processor::{Processor, ProcessorContext};
use crate::topology::topic::Topic;

use super::table::KTable;

/// The key and value serdes of a grouped stream (and of its repartition topic).
pub struct Grouped<K, V> {
    key: Arc<dyn Serde<K>>,
    value: Arc<dyn Serde<V>>,
}

impl<K, V> Grouped<K, V> {
    /// Keys with `key`, values with `value`.
    pub fn with(key: impl Serde<K>, value: impl Serde<V>) -> Self {
        Grouped {
            key: Arc::new(key),
            value: Arc::new(value),
        }
    }
}

/// A stream grouped by key, ready to aggregate.
pub struct KGroupedStream<K, V> {
    pub(crate) stream: KStream<K, V>,
    pub(crate) key: Arc<dyn Serde<K>>,
    /// Whether `count`, `reduce` and `aggregate` write through a record cache.
    pub(crate) caching: bool,
}

impl<K, V> Clone for KGroupedStream<K, V> {
    fn clone(&self) -> Self {
        KGroupedStream {
            stream: self.stream.clone(),
            key: self.key.clone(),
            caching: self.caching,
        }
    }
}

impl<K, V> KGroupedStream<K, V> {
    /// Whether the aggregations built from this grouped stream cache their updates (on
    /// by default; Kafka Streams' `Materialized.withCachingDisabled()` is
    /// `with_caching(false)`). Without the cache every input record writes the store and
    /// the changelog and forwards its new aggregate downstream; with it, updates of a key
    /// coalesce until the entry is evicted (`[runtime] cache_max_bytes`) or the task
    /// flushes before a commit.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic, Grouped};
    /// # use engine::serde::Serdes;
    /// let b = TopologyBuilder::new("counts");
    /// b.stream(&Topic::new("clicks", Serdes::string(), Serdes::string()))
    ///     .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
    ///     .with_caching(false)
    ///     .count("count", "clicks-per-user")
    ///     .to_stream()
    ///     .to(&Topic::new("click-counts", Serdes::string(), Serdes::i64()));
    /// assert!(b.build().is_ok());
    /// ```
    pub fn with_caching(mut self, caching: bool) -> Self {
        self.caching = caching;
        self
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    /// Groups records by their current key (no repartitioning: the key must already
    /// decide the partition, as it does for keyed input).
    pub fn group_by_key(&self, grouped: Grouped<K, V>) -> KGroupedStream<K, V> {
        KGroupedStream {
            stream: self.clone(),
            key: grouped.key,
            caching: true,
        }
    }

    /// Re-keys with `f` and repartitions through `<application>-<name>-repartition` so
    /// every record of a new key reaches the same task.
    pub fn group_by<K2: Data>(
        &self,
        name: &str,
        f: impl Fn(&K, &V) -> K2 + Send + Sync + 'static,
        grouped: Grouped<K2, V>,
    ) -> KGroupedStream<K2, V> {
        let key = grouped.key.clone();
        let stream = self
            .select_key_node(&format!("{name}-key"), f)
            .repartition(name, grouped);
        KGroupedStream {
            stream,
            key,
            caching: true,
        }
    }

    /// Writes the stream to `<application>-<name>-repartition` and reads it back, so
    /// records are partitioned by their current key (after `select_key` or `map`) and
    /// every record of a key reaches the same task and its stores.
    pub fn repartition(&self, name: &str, serdes: Grouped<K, V>) -> KStream<K, V> {
        let topic = Topic {
            name: format!("{}-{name}-repartition", self.application_id()),
            key: serdes.key,
            value: serdes.value,
            partitioner: None,
        };
        self.to_node(&format!("{name}-repartition-sink"), &topic);
        add_source(&self.state, &format!("{name}-repartition-source"), &topic)
    }
}

type Aggregator<K, V, A> = Arc<dyn Fn(&K, V, Option<A>) -> A + Send + Sync>;

/// Folds each record into its key's aggregate in a store and emits the new aggregate:
/// at once when the store is uncached, else when the entry leaves the record cache.
struct Aggregate<K, V, A> {
    store: String,
    fold: Aggregator<K, V, A>,
}

fn store_error(e: crate::state::StoreError) -> ProcessingError {
    ProcessingError::new(e.to_string())
}

impl<K: Data, V: Data, A: Data> Aggregate<K, V, A> {
    /// Writes out cache entries and forwards their aggregates (a deleted entry has none
    /// to forward: aggregations never delete, so it can only come from a TTL).
    fn write_out(
        &self,
        which: CacheFlush,
        ctx: &mut ProcessorContext<'_, K, A>,
    ) -> Result<(), ProcessingError> {
        let flushed = ctx
            .kv_store::<K, A>(&self.store)
            .and_then(|mut store| store.flush_cache(which))
            .map_err(store_error)?;
        for entry in flushed {
            if let Some(value) = entry.value {
                ctx.forward(Record {
                    key: entry.key,
                    value,
                    timestamp: entry.timestamp,
                    headers: entry.headers,
                });
            }
        }
        Ok(())
    }
}

impl<K: Data, V: Data, A: Data> Processor<K, V, K, A> for Aggregate<K, V, A> {
    fn process(
        &mut self,
        record: Record<K, V>,
        ctx: &mut ProcessorContext<'_, K, A>,
    ) -> Result<(), ProcessingError> {
        let Record {
            key,
            value,
            timestamp,
            headers,
        } = record;
        let mut store = ctx.kv_store::<K, A>(&self.store).map_err(store_error)?;
        let current = store.get(&key).map_err(store_error)?;
        let next = (self.fold)(&key, value, current);
        if store.is_cached() {
            store
                .put_with_context(&key, &next, timestamp, headers)
                .map_err(store_error)?;
            return self.write_out(CacheFlush::Evict, ctx);
        }
        store.put(&key, &next).map_err(store_error)?;
        ctx.forward(Record {
            key,
            value: next,
            timestamp,
            headers,
        });
        Ok(())
    }

    fn flush(&mut self, ctx: &mut ProcessorContext<'_, K, A>) -> Result<(), ProcessingError> {
        self.write_out(CacheFlush::All, ctx)
    }
}

impl<K: Data, V: Data> KGroupedStream<K, V> {
    fn fold<A: Data>(
        &self,
        name: &str,
        store: &str,
        serde: impl Serde<A>,
        fold: Aggregator<K, V, A>,
    ) -> KTable<K, A> {
        add_store(
            &self.stream.state,
            StoreBuilder::persistent(store, self.key.clone(), serde).with_caching(self.caching),
        );
        let store_name = store.to_string();
        let stream =
            self.stream
                .attach_with_stores(name, "aggregate", vec![store.to_string()], move || {
                    Aggregate {
                        store: store_name.clone(),
                        fold: fold.clone(),
                    }
                });
        KTable::new(stream, store)
    }

    /// Counts records per key in the RocksDB store `store`.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic, Grouped};
    /// # use engine::serde::Serdes;
    /// let b = TopologyBuilder::new("counts");
    /// b.stream(&Topic::new("clicks", Serdes::string(), Serdes::string()))
    ///     .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
    ///     .count("count", "clicks-per-user")
    ///     .to_stream()
    ///     .to(&Topic::new("click-counts", Serdes::string(), Serdes::i64()));
    /// assert!(b.build().is_ok());
    /// ```
    pub fn count(&self, name: &str, store: &str) -> KTable<K, i64> {
        self.fold(
            name,
            store,
            I64Serde,
            Arc::new(|_k: &K, _v: V, c: Option<i64>| c.unwrap_or(0) + 1),
        )
    }

    /// Combines values per key with `f(aggregate, value)`; the first value is the start.
    pub fn reduce(
        &self,
        name: &str,
        store: &str,
        serde: impl Serde<V>,
        f: impl Fn(V, V) -> V + Send + Sync + 'static,
    ) -> KTable<K, V> {
        self.fold(
            name,
            store,
            serde,
            Arc::new(move |_k: &K, v: V, current: Option<V>| match current {
                Some(c) => f(c, v),
                None => v,
            }),
        )
    }

    /// Folds values per key into an aggregate starting from `init()`.
    pub fn aggregate<A: Data>(
        &self,
        name: &str,
        store: &str,
        serde: impl Serde<A>,
        init: impl Fn() -> A + Send + Sync + 'static,
        f: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
    ) -> KTable<K, A> {
        self.fold(
            name,
            store,
            serde,
            Arc::new(move |k: &K, v: V, current: Option<A>| f(k, v, current.unwrap_or_else(&init))),
        )
    }
}
