//! Stream-global-table joins: each stream record maps itself to a key of the global table
//! and looks it up in the global store as of that moment (Kafka Streams'
//! `KStream#join(GlobalKTable, KeyValueMapper, ValueJoiner)`). Inner: records with no
//! entry are dropped; left: they join with `None`. No co-partitioning is needed: every
//! instance holds the whole table. The result keeps the stream record's key.

use std::sync::Arc;

use crate::record::Record;
use crate::topology::builder::{Data, KStream};
use crate::topology::error::ProcessingError;
use crate::topology::processor::{Processor, ProcessorContext};

use super::global_table::GlobalKTable;

type KeyMapper<K, V, GK> = Arc<dyn Fn(&K, &V) -> GK + Send + Sync>;
type Joiner<V, GV, VR> = Arc<dyn Fn(&V, Option<&GV>) -> Option<VR> + Send + Sync>;

struct GlobalLookup<K, V, GK, GV, VR> {
    store: String,
    key_mapper: KeyMapper<K, V, GK>,
    joiner: Joiner<V, GV, VR>,
}

impl<K: Data, V: Data, GK: Data, GV: Data, VR: Data> Processor<K, V, K, VR>
    for GlobalLookup<K, V, GK, GV, VR>
{
    fn process(
        &mut self,
        record: Record<K, V>,
        ctx: &mut ProcessorContext<'_, K, VR>,
    ) -> Result<(), ProcessingError> {
        let global_key = (self.key_mapper)(&record.key, &record.value);
        let current = ctx
            .global_store::<GK, GV>(&self.store)
            .and_then(|s| s.get(&global_key))
            .map_err(|e| ProcessingError::new(e.to_string()))?;
        if let Some(joined) = (self.joiner)(&record.value, current.as_ref()) {
            ctx.forward(record.with_value(joined));
        }
        Ok(())
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    /// Joins each record with the global table's current value for
    /// `key_mapper(key, value)`; records whose mapped key the table lacks are dropped.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic};
    /// # use engine::serde::Serdes;
    /// let b = TopologyBuilder::new("orders");
    /// let products = b.global_table("products", &Topic::new("products", Serdes::string(), Serdes::string()), "products-store");
    /// // Orders are keyed by order id; the value names the product.
    /// b.stream(&Topic::new("orders", Serdes::string(), Serdes::string()))
    ///     .join_global("with-product", &products,
    ///         |_id: &String, product: &String| product.clone(),
    ///         |product: &String, name: &String| format!("{product}: {name}"))
    ///     .to(&Topic::new("named-orders", Serdes::string(), Serdes::string()));
    /// assert!(b.build().is_ok());
    /// ```
    pub fn join_global<GK: Data, GV: Data, VR: Data>(
        &self,
        name: &str,
        table: &GlobalKTable<GK, GV>,
        key_mapper: impl Fn(&K, &V) -> GK + Send + Sync + 'static,
        joiner: impl Fn(&V, &GV) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR> {
        let joiner: Joiner<V, GV, VR> = Arc::new(move |v, g| g.map(|g| joiner(v, g)));
        self.global_lookup(name, table, "join_global", Arc::new(key_mapper), joiner)
    }

    /// Like [`KStream::join_global`], but a record whose mapped key the table lacks joins
    /// with `None` instead of being dropped.
    pub fn left_join_global<GK: Data, GV: Data, VR: Data>(
        &self,
        name: &str,
        table: &GlobalKTable<GK, GV>,
        key_mapper: impl Fn(&K, &V) -> GK + Send + Sync + 'static,
        joiner: impl Fn(&V, Option<&GV>) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR> {
        let joiner: Joiner<V, GV, VR> = Arc::new(move |v, g| Some(joiner(v, g)));
        self.global_lookup(
            name,
            table,
            "left_join_global",
            Arc::new(key_mapper),
            joiner,
        )
    }

    fn global_lookup<GK: Data, GV: Data, VR: Data>(
        &self,
        name: &str,
        table: &GlobalKTable<GK, GV>,
        operator: &'static str,
        key_mapper: KeyMapper<K, V, GK>,
        joiner: Joiner<V, GV, VR>,
    ) -> KStream<K, VR> {
        let store = table.store_name().to_string();
        self.attach(name, operator, move || GlobalLookup {
            store: store.clone(),
            key_mapper: key_mapper.clone(),
            joiner: joiner.clone(),
        })
    }
}
