//! `select_key`: a new key computed from each record.

use std::sync::Arc;

use crate::record::Record;
use crate::topology::builder::{Data, KStream};
use crate::topology::error::ProcessingError;
use crate::topology::processor::{Processor, ProcessorContext};

struct SelectKey<F>(Arc<F>);

impl<K: Send + 'static, V: Data, K2: Data, F> Processor<K, V, K2, V> for SelectKey<F>
where
    F: Fn(&K, &V) -> K2 + Send + Sync + 'static,
{
    fn process(
        &mut self,
        record: Record<K, V>,
        ctx: &mut ProcessorContext<'_, K2, V>,
    ) -> Result<(), ProcessingError> {
        let key = (self.0)(&record.key, &record.value);
        ctx.forward(record.with_key(key));
        Ok(())
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    /// Re-keys each record with `f(key, value)`; the value is kept.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let s = b.stream(&Topic::new("in", Serdes::string(), Serdes::string()));
    /// let by_first_word = s.select_key(|_k: &String, v: &String| {
    ///     v.split_whitespace().next().unwrap_or_default().to_string()
    /// });
    /// ```
    pub fn select_key<K2: Data>(
        &self,
        f: impl Fn(&K, &V) -> K2 + Send + Sync + 'static,
    ) -> KStream<K2, V> {
        let name = self.generate_name("key_select");
        self.select_key_node(&name, f)
    }

    /// Adds the `select_key` node `name`.
    pub(crate) fn select_key_node<K2: Data>(
        &self,
        name: &str,
        f: impl Fn(&K, &V) -> K2 + Send + Sync + 'static,
    ) -> KStream<K2, V> {
        let f = Arc::new(f);
        self.attach(name, "select_key", move || SelectKey(f.clone()))
    }
}
