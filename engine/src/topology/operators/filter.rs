//! `filter` and `try_filter`: keep the records a predicate accepts.

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
    F: Fn(&K, &V) -> Result<bool, ProcessingError> + Send + Sync + 'static,
{
    fn process(
        &mut self,
        record: ErasedRecord,
        ctx: &mut NodeContext<'_>,
    ) -> Result<(), ProcessingError> {
        let keep = (self.keep)(
            borrow::<K>(&record.key, ctx.node_name)?,
            borrow::<V>(&record.value, ctx.node_name)?,
        )?;
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
        keep: impl Fn(&K, &V) -> Result<bool, ProcessingError> + Send + Sync + 'static,
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
    /// # use engine::topology::{TopologyBuilder, Topic};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let s = b.stream(&Topic::new("in", Serdes::string(), Serdes::string()));
    /// let non_empty = s.filter(|_k: &String, v: &String| !v.is_empty());
    /// ```
    pub fn filter(
        &self,
        predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static,
    ) -> KStream<K, V> {
        let name = self.generate_name("filter");
        self.attach_pass_through(&name, "filter", move |k, v| Ok(predicate(k, v)))
    }

    /// [`KStream::filter`] with a predicate that may fail: an `Err` goes to the error
    /// policy (see [`KStream::try_map`]).
    ///
    /// ```
    /// # use engine::topology::{ProcessingError, TopologyBuilder, Topic};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let s = b.stream(&Topic::new("in", Serdes::string(), Serdes::string()));
    /// let large = s.try_filter(|_k: &String, v: &String| {
    ///     let n: i64 = v.parse().map_err(|_| ProcessingError::field("amount", "not a number"))?;
    ///     Ok(n > 100)
    /// });
    /// ```
    pub fn try_filter(
        &self,
        predicate: impl Fn(&K, &V) -> Result<bool, ProcessingError> + Send + Sync + 'static,
    ) -> KStream<K, V> {
        let name = self.generate_name("filter");
        self.attach_pass_through(&name, "filter", predicate)
    }
}
