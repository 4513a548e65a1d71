//! `flat_map`: zero or more records for every record.

use std::sync::Arc;

use crate::record::Record;
use crate::topology::builder::{Data, KStream};
use crate::topology::error::ProcessingError;
use crate::topology::processor::{Processor, ProcessorContext};

struct FlatMap<F>(Arc<F>);

impl<K, V, K2: Data, V2: Data, I, F> Processor<K, V, K2, V2> for FlatMap<F>
where
    K: Send + 'static,
    V: Send + 'static,
    I: IntoIterator<Item = (K2, V2)>,
    F: Fn(K, V) -> I + Send + Sync + 'static,
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
        for (key, value) in (self.0)(key, value) {
            ctx.forward(Record {
                key,
                value,
                timestamp,
                headers: headers.clone(),
            });
        }
        Ok(())
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    /// Replaces each record with the records `f` returns, in order (each keeps the
    /// input's timestamp and headers).
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Consumed};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let s = b.stream("in", ["in"], Consumed::with(Serdes::string(), Serdes::string()));
    /// let words = s.flat_map("words", |_k: String, line: String| {
    ///     line.split_whitespace().map(|w| (w.to_string(), 1i64)).collect::<Vec<_>>()
    /// });
    /// ```
    pub fn flat_map<K2: Data, V2: Data, I>(
        &self,
        name: &str,
        f: impl Fn(K, V) -> I + Send + Sync + 'static,
    ) -> KStream<K2, V2>
    where
        I: IntoIterator<Item = (K2, V2)> + 'static,
    {
        let f = Arc::new(f);
        self.attach(name, "flat_map", move || FlatMap(f.clone()))
    }
}
