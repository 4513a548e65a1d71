//! `map_values`, `try_map_values` and `filter_map_values`: a new value for every record
//! (or for the records a function keeps), the key unchanged.

use std::sync::Arc;

use crate::record::Record;
use crate::topology::builder::{Data, KStream};
use crate::topology::error::ProcessingError;
use crate::topology::processor::{Processor, ProcessorContext};

/// Forwards the value `f` returns, if any, with the record's key, timestamp and headers.
struct MapValues<F>(Arc<F>);

impl<K: Data, V: Send + 'static, V2: Data, F> Processor<K, V, K, V2> for MapValues<F>
where
    F: Fn(&K, V) -> Result<Option<V2>, ProcessingError> + Send + Sync + 'static,
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
        if let Some(value) = (self.0)(&key, value)? {
            ctx.forward(Record {
                key,
                value,
                timestamp,
                headers,
            });
        }
        Ok(())
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    /// Replaces each record's value; key, timestamp and headers are kept.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let s = b.stream(&Topic::new("in", Serdes::string(), Serdes::string()));
    /// let upper = s.map_values(|v: String| v.to_uppercase());
    /// ```
    pub fn map_values<V2: Data>(
        &self,
        f: impl Fn(V) -> V2 + Send + Sync + 'static,
    ) -> KStream<K, V2> {
        let f =
            Arc::new(move |_: &K, v: V| -> Result<Option<V2>, ProcessingError> { Ok(Some(f(v))) });
        self.attach_generated("map_values", move || MapValues(f.clone()))
    }

    /// [`KStream::map_values`] with a function of the key and value that may refuse a
    /// record: an `Err` goes to the error policy (see [`KStream::try_map`]).
    ///
    /// ```
    /// # use engine::topology::{ProcessingError, TopologyBuilder, Topic};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let s = b.stream(&Topic::new("in", Serdes::string(), Serdes::string()));
    /// let parsed = s.try_map_values(|_k: &String, v: String| {
    ///     v.parse::<i64>().map_err(|e| ProcessingError::field("count", e.to_string()))
    /// });
    /// ```
    pub fn try_map_values<V2: Data>(
        &self,
        f: impl Fn(&K, V) -> Result<V2, ProcessingError> + Send + Sync + 'static,
    ) -> KStream<K, V2> {
        let f = Arc::new(move |k: &K, v: V| -> Result<Option<V2>, ProcessingError> {
            f(k, v).map(Some)
        });
        self.attach_generated("map_values", move || MapValues(f.clone()))
    }

    /// Keeps the records for which `f` returns a value, with that value: a filter and a
    /// `map_values` in one step, which narrows an enum to one of its variants.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let s = b.stream(&Topic::new("in", Serdes::string(), Serdes::string()));
    /// let numbers = s.filter_map_values(|_k: &String, v: String| v.parse::<i64>().ok());
    /// ```
    pub fn filter_map_values<V2: Data>(
        &self,
        f: impl Fn(&K, V) -> Option<V2> + Send + Sync + 'static,
    ) -> KStream<K, V2> {
        let f = Arc::new(move |k: &K, v: V| -> Result<Option<V2>, ProcessingError> { Ok(f(k, v)) });
        self.attach_generated("filter_map_values", move || MapValues(f.clone()))
    }
}
