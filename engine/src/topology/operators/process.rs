//! `process`: a custom [`Processor`] with full access to its context.

use crate::topology::builder::{Data, KStream};
use crate::topology::processor::Processor;

impl<K: Data, V: Data> KStream<K, V> {
    /// Runs a custom processor; `factory` makes one instance per task (partition).
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic, Processor, ProcessorContext, ProcessingError};
    /// # use engine::record::Record;
    /// # use engine::serde::Serdes;
    /// struct Count(i64);
    /// impl Processor<String, String, String, i64> for Count {
    ///     fn process(&mut self, r: Record<String, String>, ctx: &mut ProcessorContext<'_, String, i64>)
    ///         -> Result<(), ProcessingError> {
    ///         self.0 += 1;
    ///         ctx.forward(r.with_value(self.0));
    ///         Ok(())
    ///     }
    /// }
    /// # let b = TopologyBuilder::new("app");
    /// # let s = b.stream(&Topic::new("in", Serdes::string(), Serdes::string()));
    /// let counts = s.process(|| Count(0));
    /// ```
    pub fn process<K2: Data, V2: Data, P>(
        &self,
        factory: impl Fn() -> P + Send + Sync + 'static,
    ) -> KStream<K2, V2>
    where
        P: Processor<K, V, K2, V2>,
    {
        self.attach_generated("process", factory)
    }

    /// [`KStream::process`] for a processor that uses the named stores (added with
    /// `TopologyBuilder::add_store`) through `ctx.kv_store`.
    pub fn process_with_stores<K2: Data, V2: Data, P>(
        &self,
        stores: &[&str],
        factory: impl Fn() -> P + Send + Sync + 'static,
    ) -> KStream<K2, V2>
    where
        P: Processor<K, V, K2, V2>,
    {
        let stores = stores.iter().map(|s| s.to_string()).collect();
        let name = self.generate_name("process");
        self.attach_with_stores(&name, "process", stores, factory)
    }
}
