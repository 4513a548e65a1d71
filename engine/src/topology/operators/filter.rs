//! `filter`: keeps the records a predicate accepts.

use std::sync::Arc;

use crate::record::Record;
use crate::topology::builder::{Data, KStream};
use crate::topology::error::ProcessingError;
use crate::topology::processor::{Processor, ProcessorContext};

struct Filter<F>(Arc<F>);

impl<K: Data, V: Data, F> Processor<K, V, K, V> for Filter<F>
where
    F: Fn(&K, &V) -> bool + Send + Sync + 'static,
{
    fn process(
        &mut self,
        record: Record<K, V>,
        ctx: &mut ProcessorContext<'_, K, V>,
    ) -> Result<(), ProcessingError> {
        if (self.0)(&record.key, &record.value) {
            ctx.forward(record);
        }
        Ok(())
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    /// Keeps the records for which `predicate` is true.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Consumed};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let s = b.stream("in", ["in"], Consumed::with(Serdes::string(), Serdes::string()));
    /// let non_empty = s.filter("non-empty", |_k: &String, v: &String| !v.is_empty());
    /// ```
    pub fn filter(
        &self,
        name: &str,
        predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static,
    ) -> KStream<K, V> {
        let f = Arc::new(predicate);
        self.attach(name, "filter", move || Filter(f.clone()))
    }
}
