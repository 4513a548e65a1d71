//! `map_values`: a new value for every record, the key unchanged.

use std::sync::Arc;

use crate::record::Record;
use crate::topology::builder::{Data, KStream};
use crate::topology::error::ProcessingError;
use crate::topology::processor::{Processor, ProcessorContext};

struct MapValues<F>(Arc<F>);

impl<K: Data, V: Send + 'static, V2: Data, F> Processor<K, V, K, V2> for MapValues<F>
where
    F: Fn(V) -> V2 + Send + Sync + 'static,
{
    fn process(
        &mut self,
        record: Record<K, V>,
        ctx: &mut ProcessorContext<'_, K, V2>,
    ) -> Result<(), ProcessingError> {
        let Record {
            key,
            value,
            timestamp,
            headers,
        } = record;
        ctx.forward(Record {
            key,
            value: (self.0)(value),
            timestamp,
            headers,
        });
        Ok(())
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    /// Replaces each record's value; key, timestamp and headers are kept.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Consumed};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let s = b.stream("in", ["in"], Consumed::with(Serdes::string(), Serdes::string()));
    /// let upper = s.map_values("upper", |v: String| v.to_uppercase());
    /// ```
    pub fn map_values<V2: Data>(
        &self,
        name: &str,
        f: impl Fn(V) -> V2 + Send + Sync + 'static,
    ) -> KStream<K, V2> {
        let f = Arc::new(f);
        self.attach(name, "map_values", move || MapValues(f.clone()))
    }
}
