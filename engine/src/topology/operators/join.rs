//! Stream-table joins: each stream record looks up its key in the table's store (the
//! table as of that moment, Kafka Streams' semantics). Inner: records with no table
//! entry are dropped; left: they join with `None`. The stream and the table must be
//! co-partitioned (same key, same partition count), as in Kafka Streams.

use std::marker::PhantomData;
use std::sync::Arc;

use crate::record::Record;
use crate::topology::builder::{Data, KStream};
use crate::topology::error::ProcessingError;
use crate::topology::processor::{Processor, ProcessorContext};

use super::table::KTable;

type Joiner<V, VT, VR> = Arc<dyn Fn(&V, Option<&VT>) -> Option<VR> + Send + Sync>;

struct TableLookup<K, V, VT, VR> {
    store: String,
    joiner: Joiner<V, VT, VR>,
    _types: PhantomData<fn(K)>,
}

impl<K: Data, V: Data, VT: Data, VR: Data> Processor<K, V, K, VR> for TableLookup<K, V, VT, VR> {
    fn process(
        &mut self,
        record: Record<K, V>,
        ctx: &mut ProcessorContext<'_, K, VR>,
    ) -> Result<(), ProcessingError> {
        let current = ctx
            .kv_store::<K, VT>(&self.store)
            .and_then(|s| s.get(&record.key))
            .map_err(|e| ProcessingError::new(e.to_string()))?;
        if let Some(joined) = (self.joiner)(&record.value, current.as_ref()) {
            ctx.forward(record.with_value(joined));
        }
        Ok(())
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    /// Joins each record with the table's current value for its key; records whose key
    /// the table lacks are dropped.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic};
    /// # use engine::serde::Serdes;
    /// let b = TopologyBuilder::new("enrich");
    /// let users = b.table("users", &Topic::new("users", Serdes::string(), Serdes::string()), "users-store");
    /// b.stream(&Topic::new("clicks", Serdes::string(), Serdes::string()))
    ///     .join_table("with-user", &users, |click: &String, user: &String| format!("{user}: {click}"))
    ///     .to(&Topic::new("enriched", Serdes::string(), Serdes::string()));
    /// assert!(b.build().is_ok());
    /// ```
    pub fn join_table<VT: Data, VR: Data>(
        &self,
        name: &str,
        table: &KTable<K, VT>,
        joiner: impl Fn(&V, &VT) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR> {
        let joiner: Joiner<V, VT, VR> = Arc::new(move |v, t| t.map(|t| joiner(v, t)));
        self.lookup(name, table, "join_table", joiner)
    }

    /// Like [`KStream::join_table`], but a record whose key the table lacks joins with
    /// `None` instead of being dropped.
    pub fn left_join_table<VT: Data, VR: Data>(
        &self,
        name: &str,
        table: &KTable<K, VT>,
        joiner: impl Fn(&V, Option<&VT>) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR> {
        let joiner: Joiner<V, VT, VR> = Arc::new(move |v, t| Some(joiner(v, t)));
        self.lookup(name, table, "left_join_table", joiner)
    }

    fn lookup<VT: Data, VR: Data>(
        &self,
        name: &str,
        table: &KTable<K, VT>,
        operator: &'static str,
        joiner: Joiner<V, VT, VR>,
    ) -> KStream<K, VR> {
        let store = table.store_name().to_string();
        self.attach_with_stores(name, operator, vec![store.clone()], move || TableLookup {
            store: store.clone(),
            joiner: joiner.clone(),
            _types: PhantomData,
        })
    }
}
