//! Tables: a [`KTable`] is a store-backed view of the latest value per key, whose updates
//! form a stream; `table` reads one from a topic, `to_table` makes one from a stream.

use std::marker::PhantomData;

use crate::record::Record;
use crate::serde::Serde;
use crate::topology::builder::{Consumed, Data, KStream, StoreBuilder, TopologyBuilder, add_store};
use crate::topology::error::ProcessingError;
use crate::topology::processor::{Processor, ProcessorContext};

use super::branch::pass_through;

/// The latest value per key, kept in a store; its updates are a stream.
pub struct KTable<K, V> {
    updates: KStream<K, V>,
    store: String,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K: Data, V: Data> KTable<K, V> {
    pub(crate) fn new(updates: KStream<K, V>, store: &str) -> Self {
        KTable {
            updates,
            store: store.to_string(),
            _types: PhantomData,
        }
    }

    /// The stream of the table's updates, for operators that attach to it.
    pub(crate) fn updates(&self) -> &KStream<K, V> {
        &self.updates
    }

    /// The store holding the table (for interactive queries and processors).
    pub fn store_name(&self) -> &str {
        &self.store
    }

    /// The table's updates as a stream (one record per change).
    pub fn to_stream(&self, name: &str) -> KStream<K, V> {
        pass_through(
            &self.updates,
            name,
            "to_stream",
            vec![self.updates.node.clone()],
        )
    }
}

/// Writes each record into the store and passes it on.
struct Materialize {
    store: String,
}

impl<K: Data, V: Data> Processor<K, V, K, V> for Materialize {
    fn process(
        &mut self,
        record: Record<K, V>,
        ctx: &mut ProcessorContext<'_, K, V>,
    ) -> Result<(), ProcessingError> {
        ctx.kv_store::<K, V>(&self.store)
            .and_then(|mut s| s.put(&record.key, &record.value))
            .map_err(|e| ProcessingError::new(e.to_string()))?;
        ctx.forward(record);
        Ok(())
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    /// A table of the latest value per key of this stream, in the RocksDB store `store`.
    pub fn to_table(
        &self,
        name: &str,
        store: &str,
        key: impl Serde<K>,
        value: impl Serde<V>,
    ) -> KTable<K, V> {
        add_store(&self.state, StoreBuilder::persistent(store, key, value));
        let store_name = store.to_string();
        let updates =
            self.attach_with_stores(name, "to_table", vec![store.to_string()], move || {
                Materialize {
                    store: store_name.clone(),
                }
            });
        KTable::new(updates, store)
    }
}

impl TopologyBuilder {
    /// A table of the latest value per key of `topic`, in the RocksDB store `store`.
    pub fn table<K: Data, V: Data>(
        &self,
        name: &str,
        topic: &str,
        consumed: Consumed<K, V>,
        store: &str,
    ) -> KTable<K, V> {
        let stream = self.stream(&format!("{name}-source"), [topic], consumed.clone());
        stream.to_table(name, store, consumed.key, consumed.value)
    }
}
