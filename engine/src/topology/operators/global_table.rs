//! Global tables: a [`GlobalKTable`] holds the latest value per key of EVERY partition
//! of its topic on every instance (Kafka Streams' `GlobalKTable`), so streams can join it
//! by any key without co-partitioning.
//!
//! The topic is the table's changelog: no other topic is written. The runtime reads all
//! of its partitions up to their end before any task processes a record, then keeps
//! reading new records in the background; the test driver applies a record piped to the
//! topic at once. Tasks read the store, never write it.

use std::marker::PhantomData;
use std::sync::Arc;

use crate::serde::{Serde, SerdeRole, Written};
use crate::state::{BytesStore, StoreQuery, framing, typed::StoreSerdes};
use crate::topology::builder::{
    Data, GlobalDef, PrepareFn, StoreBuilder, StoreDef, TopologyBuilder, prepare_fn,
};
use crate::topology::topic::Topic;

/// The latest value per key of every partition of a topic, on every instance; joined by
/// streams with [`KStream::join_global`](crate::topology::KStream::join_global).
pub struct GlobalKTable<K, V> {
    store: String,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> GlobalKTable<K, V> {
    /// The store holding the table: readable by every processor through
    /// [`ProcessorContext::global_store`](crate::topology::ProcessorContext::global_store)
    /// and queryable on the operations endpoint.
    pub fn store_name(&self) -> &str {
        &self.store
    }
}

/// Why a record of a global topic could not be applied to its store.
#[derive(Debug, thiserror::Error)]
#[error("global table `{table}`: {part} of a record of `{topic}`: {message}")]
pub(crate) struct GlobalApplyError {
    pub table: String,
    pub topic: String,
    pub part: &'static str,
    pub message: String,
}

/// A store key and framed value (`None`: delete), or which part failed and why.
pub(crate) type Encoded = Result<(Vec<u8>, Option<Vec<u8>>), (&'static str, String)>;

/// Turns a record of the global topic into the store's bytes, type-erased.
pub(crate) trait GlobalCodec: Send + Sync {
    /// The store key and framed value (`None`: delete) for a record with a non-null key.
    fn encode(&self, key: &[u8], value: Option<&[u8]>) -> Encoded;
}

struct TypedGlobalCodec<K, V> {
    topic: String,
    store: String,
    consumed: Topic<K, V>,
    serdes: Arc<StoreSerdes<K, V>>,
}

impl<K: Data, V: Data> GlobalCodec for TypedGlobalCodec<K, V> {
    fn encode(&self, key: &[u8], value: Option<&[u8]>) -> Encoded {
        // Keys are re-serialized as the store serializes them, so a lookup by a typed key
        // finds them whatever the topic's serde writes per topic (e.g. schema ids).
        let k = self
            .consumed
            .key
            .deserialize(&self.topic, Some(key))
            .map_err(|e| ("key", e.to_string()))?;
        let mut key_bytes = Vec::new();
        match self.serdes.key.serialize(&self.store, &k, &mut key_bytes) {
            Ok(Written::Bytes) => {}
            Ok(Written::Null) => return Err(("key", "a store key cannot be null".into())),
            Err(e) => return Err(("key", e.to_string())),
        }
        let Some(value) = value else {
            return Ok((key_bytes, None));
        };
        let v = self
            .consumed
            .value
            .deserialize(&self.topic, Some(value))
            .map_err(|e| ("value", e.to_string()))?;
        let mut value_bytes = Vec::new();
        match self
            .serdes
            .value
            .serialize(&self.store, &v, &mut value_bytes)
        {
            Ok(Written::Bytes) => Ok((key_bytes, Some(framing::frame(&value_bytes, None)))),
            Ok(Written::Null) => Ok((key_bytes, None)),
            Err(e) => Err(("value", e.to_string())),
        }
    }
}

impl GlobalDef {
    /// Applies one record of the global topic to `store`: a put, or a delete for a
    /// tombstone (null value). Records with a null key are ignored, as in Kafka Streams.
    /// Returns whether the store changed.
    pub(crate) fn apply(
        &self,
        store: &dyn BytesStore,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<bool, GlobalApplyError> {
        let Some(key) = key else {
            return Ok(false);
        };
        let error = |part: &'static str, message: String| GlobalApplyError {
            table: self.name.clone(),
            topic: self.topic.clone(),
            part,
            message,
        };
        let (k, v) = self
            .codec
            .encode(key, value)
            .map_err(|(p, m)| error(p, m))?;
        match v {
            Some(v) => store.put(&k, &v),
            None => store.delete(&k),
        }
        .map_err(|e| error("store", e.to_string()))?;
        Ok(true)
    }
}

impl TopologyBuilder {
    /// A global table of `topic` in the RocksDB store `store`: every instance holds every
    /// partition of `topic`, read up to its end before any stream record is processed and
    /// kept up to date in the background. A null value (tombstone) deletes its key.
    ///
    /// `topic` is the table's changelog (no other topic is created) and is not read by
    /// the consumer group. In the [`TestDriver`](crate::testing::TestDriver), a record
    /// piped to `topic` updates the store immediately.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic};
    /// # use engine::serde::Serdes;
    /// let b = TopologyBuilder::new("enrich");
    /// let countries = b.global_table("countries", &Topic::new("countries", Serdes::string(), Serdes::string()), "countries-store");
    /// assert_eq!(countries.store_name(), "countries-store");
    /// b.stream(&Topic::new("orders", Serdes::string(), Serdes::string()))
    ///     .join_global("with-country", &countries,
    ///         |_order_id: &String, order: &String| order.split(':').next().unwrap_or("").to_string(),
    ///         |order: &String, country: &String| format!("{order} ({country})"))
    ///     .to(&Topic::new("enriched", Serdes::string(), Serdes::string()));
    /// let topology = b.build().unwrap();
    /// assert_eq!(topology.global_topics(), ["countries"]);
    /// assert!(!topology.source_topics().contains(&"countries".to_string()));
    /// ```
    pub fn global_table<K: Data, V: Data>(
        &self,
        name: &str,
        topic: &Topic<K, V>,
        store: &str,
    ) -> GlobalKTable<K, V> {
        let consumed = topic.clone();
        let topic = topic.name();
        let builder = StoreBuilder::persistent(store, consumed.key.clone(), consumed.value.clone());
        let (mut spec, serdes) = builder.into_parts();
        // The topic itself is the changelog.
        spec.changelog = false;
        let serdes = Arc::new(serdes);
        let prepare: PrepareFn = prepare_fn(
            vec![topic.to_string()],
            consumed.key.clone(),
            consumed.value.clone(),
            SerdeRole::Read,
        );
        let codec = TypedGlobalCodec {
            topic: topic.to_string(),
            store: store.to_string(),
            consumed,
            serdes: serdes.clone(),
        };
        self.state.borrow_mut().globals.push(GlobalDef {
            name: name.to_string(),
            topic: topic.to_string(),
            store: StoreDef {
                query: Arc::new(StoreQuery::new(store, serdes.clone())),
                spec,
                serdes,
            },
            codec: Arc::new(codec),
            prepare,
        });
        GlobalKTable {
            store: store.to_string(),
            _types: PhantomData,
        }
    }
}
