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
    /// # use engine::topology::{TopologyBuilder, Topic};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let s = b.stream(&Topic::new("in", Serdes::string(), Serdes::string()));
    /// let words = s.flat_map(|_k: String, line: String| {
    ///     line.split_whitespace().map(|w| (w.to_string(), 1i64)).collect::<Vec<_>>()
    /// });
    /// ```
    pub fn flat_map<K2: Data, V2: Data, I>(
        &self,
        f: impl Fn(K, V) -> I + Send + Sync + 'static,
    ) -> KStream<K2, V2>
    where
        I: IntoIterator<Item = (K2, V2)> + 'static,
    {
        let f = Arc::new(f);
        self.attach_generated("flat_map", move || FlatMap(f.clone()))
    }

    /// Replaces each record with one record per value `f` returns, each with the input's
    /// key, timestamp and headers (Kafka Streams' `flatMapValues`).
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let s = b.stream(&Topic::new("in", Serdes::string(), Serdes::string()));
    /// let words = s.flat_map_values(|line: String| {
    ///     line.split_whitespace().map(str::to_string).collect::<Vec<_>>()
    /// });
    /// ```
    pub fn flat_map_values<V2: Data, I>(
        &self,
        f: impl Fn(V) -> I + Send + Sync + 'static,
    ) -> KStream<K, V2>
    where
        I: IntoIterator<Item = V2> + 'static,
    {
        let f = Arc::new(move |k: K, v: V| {
            let values = f(v).into_iter();
            values.map(move |v| (k.clone(), v))
        });
        self.attach_generated("flat_map_values", move || FlatMap(f.clone()))
    }
}
