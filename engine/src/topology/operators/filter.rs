//! `filter`: keeps the records a predicate accepts.

use std::marker::PhantomData;
use std::sync::Arc;

use crate::topology::builder::{Data, KStream, add_instance_node};
use crate::topology::error::ProcessingError;
use crate::topology::node::{
    ErasedRecord, NodeContext, NodeFactory, NodeInstance, NodeOps, borrow,
};

/// A node that looks at a record without changing it and passes it on, or not, as it
/// came: the key and value stay in their boxes (no move out and no new box per hop, which
/// for a large value is an allocation and two copies).
pub(super) struct PassThrough<K, V, F> {
    keep: Arc<F>,
    _types: PhantomData<fn(K, V)>,
}

impl<K: Data, V: Data, F> NodeInstance for PassThrough<K, V, F>
where
    F: Fn(&K, &V) -> bool + Send + Sync + 'static,
{
    fn process(
        &mut self,
        record: ErasedRecord,
        ctx: &mut NodeContext<'_>,
    ) -> Result<(), ProcessingError> {
        let keep = (self.keep)(
            borrow::<K>(&record.key, ctx.node_name)?,
            borrow::<V>(&record.value, ctx.node_name)?,
        );
        if keep {
            ctx.forward(record);
        }
        Ok(())
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    /// Adds a [`PassThrough`] node: records for which `keep` is true go on unchanged.
    pub(super) fn attach_pass_through(
        &self,
        name: &str,
        operator: &'static str,
        keep: impl Fn(&K, &V) -> bool + Send + Sync + 'static,
    ) -> KStream<K, V> {
        let keep = Arc::new(keep);
        let factory: NodeFactory = Arc::new(move || {
            Box::new(PassThrough::<K, V, _> {
                keep: keep.clone(),
                _types: PhantomData,
            }) as Box<dyn NodeInstance>
        });
        add_instance_node::<K, V, K, V>(
            &self.state,
            name,
            operator,
            vec![self.node.clone()],
            Vec::new(),
            factory,
        );
        KStream::new(self.state.clone(), name)
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
        self.attach_pass_through(name, "filter", predicate)
    }
}
