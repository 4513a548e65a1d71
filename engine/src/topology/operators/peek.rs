//! `peek` and `for_each`: look at every record for a side effect.

use std::sync::Arc;

use crate::record::Record;
use crate::topology::builder::{Data, KStream};
use crate::topology::error::ProcessingError;
use crate::topology::processor::{Processor, ProcessorContext};

struct Peek<F>(Arc<F>);

impl<K: Data, V: Data, F> Processor<K, V, K, V> for Peek<F>
where
    F: Fn(&K, &V) + Send + Sync + 'static,
{
    fn process(
        &mut self,
        record: Record<K, V>,
        ctx: &mut ProcessorContext<'_, K, V>,
    ) -> Result<(), ProcessingError> {
        (self.0)(&record.key, &record.value);
        ctx.forward(record);
        Ok(())
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    /// Calls `f` on every record and passes it on unchanged.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Consumed};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let s = b.stream("in", ["in"], Consumed::with(Serdes::string(), Serdes::string()));
    /// let logged = s.peek("log", |k: &String, v: &String| tracing::debug!(%k, %v, "seen"));
    /// ```
    pub fn peek(&self, name: &str, f: impl Fn(&K, &V) + Send + Sync + 'static) -> KStream<K, V> {
        let f = Arc::new(f);
        self.attach(name, "peek", move || Peek(f.clone()))
    }

    /// Calls `f` on every record; a terminal operation with no output.
    pub fn for_each(&self, name: &str, f: impl Fn(&K, &V) + Send + Sync + 'static) {
        let f = Arc::new(f);
        let _: KStream<K, V> = self.attach(name, "for_each", move || Peek(f.clone()));
    }
}
