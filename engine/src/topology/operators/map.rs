//! `map` and `try_map`: a new key and value for every record.

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
    F: Fn(K, V) -> Result<(K2, V2), ProcessingError> + Send + Sync + 'static,
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
        let (key, value) = (self.0)(key, value)?;
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
    /// # use engine::topology::{TopologyBuilder, Topic};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let s = b.stream(&Topic::new("in", Serdes::string(), Serdes::string()));
    /// let lengths = s.map(|k: String, v: String| (k, v.len() as i64));
    /// ```
    pub fn map<K2: Data, V2: Data>(
        &self,
        f: impl Fn(K, V) -> (K2, V2) + Send + Sync + 'static,
    ) -> KStream<K2, V2> {
        let f = Arc::new(move |k: K, v: V| -> Result<(K2, V2), ProcessingError> { Ok(f(k, v)) });
        self.attach_generated("map", move || Map(f.clone()))
    }

    /// [`KStream::map`] with a function that may refuse a record: an `Err` goes to the
    /// topology's error policy with the record's topic, partition and offset (and the
    /// field, for [`ProcessingError::field`]); `?` works on store and serde errors.
    ///
    /// ```
    /// # use engine::topology::{ProcessingError, TopologyBuilder, Topic};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let s = b.stream(&Topic::new("in", Serdes::string(), Serdes::string()));
    /// let amounts = s.try_map(|k: String, v: String| {
    ///     let amount: i64 = v
    ///         .parse()
    ///         .map_err(|e| ProcessingError::field("amount", format!("not a number: {e}")))?;
    ///     Ok((k, amount))
    /// });
    /// ```
    pub fn try_map<K2: Data, V2: Data>(
        &self,
        f: impl Fn(K, V) -> Result<(K2, V2), ProcessingError> + Send + Sync + 'static,
    ) -> KStream<K2, V2> {
        let f = Arc::new(f);
        self.attach_generated("map", move || Map(f.clone()))
    }
}
