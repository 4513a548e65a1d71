//! Tables: a [`KTable`] is a store-backed view of the latest value per key, whose updates
//! form a stream; `table` reads one from a topic, `to_table` makes one from a stream.

use std::marker::PhantomData;

use crate::record::Record;
use crate::topology::builder::{
    Data, KStream, StoreBuilder, TopologyBuilder, add_source, add_store,
};
use crate::topology::error::ProcessingError;
use crate::topology::processor::{Processor, ProcessorContext};
use crate::topology::topic::Topic;

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
    pub fn to_stream(&self) -> KStream<K, V> {
        let name = self
            .updates
            .state
            .borrow_mut()
            .generate_name("KTABLE", "to_stream");
        pass_through(
            &self.updates,
            &name,
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
        ctx.kv_store::<K, V>(&self.store)?
            .put(&record.key, &record.value)?;
        ctx.forward(record);
        Ok(())
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    /// A table of the latest value per key of this stream, in the store `store`
    /// declares (Kafka Streams' `toTable(Materialized)`), e.g. with a TTL.
    pub fn to_table(&self, name: &str, store: StoreBuilder<K, V>) -> KTable<K, V> {
        let store = add_store(&self.state, store);
        let store = store.name();
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
        topic: &Topic<K, V>,
        store: &str,
    ) -> KTable<K, V> {
        let stream = add_source(&self.state, &format!("{name}-source"), topic);
        stream.to_table(
            name,
            StoreBuilder::persistent(store, topic.key.clone(), topic.value.clone()),
        )
    }
}
