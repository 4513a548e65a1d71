//! `map`: a new key and value for every record.

use std::sync::Arc;

use crate::record::Record;
use crate::topology::builder::{Data, KStream};
use crate::topology::error::ProcessingError;
use crate::topology::processor::{Processor, ProcessorContext};

struct Map<F>(Arc<F>);

impl<K, V, K2: Data, V2: Data, F> Processor<K, V, K2, V2> for Map<F>
where
    K: Send + 'static,
    V: Send + 'static,
    F: Fn(K, V) -> (K2, V2) + Send + Sync + 'static,
{
    fn process(
        &mut self,
        record: Record<K, V>,
        ctx: &mut ProcessorContext<'_, K2, V2>,
    ) -> Result<(), ProcessingError> {
        let Record {
            key,
            value,
            timestamp,
            headers,
        } = record;
        let (key, value) = (self.0)(key, value);
        ctx.forward(Record {
            key,
            value,
            timestamp,
            headers,
        });
        Ok(())
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    /// Replaces each record's key and value; timestamp and headers are kept.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Consumed};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let s = b.stream("in", ["in"], Consumed::with(Serdes::string(), Serdes::string()));
    /// let lengths = s.map("length", |k: String, v: String| (k, v.len() as i64));
    /// ```
    pub fn map<K2: Data, V2: Data>(
        &self,
        name: &str,
        f: impl Fn(K, V) -> (K2, V2) + Send + Sync + 'static,
    ) -> KStream<K2, V2> {
        let f = Arc::new(f);
        self.attach(name, "map", move || Map(f.clone()))
    }
}
