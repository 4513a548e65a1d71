//! `branch`: routes each record to the first branch whose predicate accepts it.

use std::sync::Arc;

use crate::record::Record;
use crate::topology::builder::{Data, KStream, add_processor_node};
use crate::topology::error::ProcessingError;
use crate::topology::processor::{Processor, ProcessorContext};

type Predicate<K, V> = Arc<dyn Fn(&K, &V) -> bool + Send + Sync>;
/// Child node name and predicate, in branch order.
type Routes<K, V> = Arc<Vec<(String, Option<Predicate<K, V>>)>>;

/// One branch of [`KStream::branch`]: a name and the predicate that selects it.
pub struct Branch<K, V> {
    name: String,
    predicate: Option<Predicate<K, V>>,
}

impl<K, V> Branch<K, V> {
    /// Records for which `predicate` is true (and no earlier branch's was).
    pub fn when(name: &str, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> Self {
        Branch {
            name: name.to_string(),
            predicate: Some(Arc::new(predicate)),
        }
    }

    /// Every record no earlier branch took (Kafka Streams' `defaultBranch`).
    pub fn otherwise(name: &str) -> Self {
        Branch {
            name: name.to_string(),
            predicate: None,
        }
    }
}

struct Router<K, V> {
    routes: Routes<K, V>,
}

impl<K: Data, V: Data> Processor<K, V, K, V> for Router<K, V> {
    fn process(
        &mut self,
        record: Record<K, V>,
        ctx: &mut ProcessorContext<'_, K, V>,
    ) -> Result<(), ProcessingError> {
        for (child, predicate) in self.routes.iter() {
            if predicate
                .as_ref()
                .is_none_or(|p| p(&record.key, &record.value))
            {
                return ctx.forward_to(child, record);
            }
        }
        // No branch matched and there is no `otherwise`: the record is dropped by design,
        // as in Kafka Streams' `split()`.
        Ok(())
    }
}

struct PassThrough;

impl<K: Data, V: Data> Processor<K, V, K, V> for PassThrough {
    fn process(
        &mut self,
        record: Record<K, V>,
        ctx: &mut ProcessorContext<'_, K, V>,
    ) -> Result<(), ProcessingError> {
        ctx.forward(record);
        Ok(())
    }
}

pub(crate) fn pass_through<K: Data, V: Data>(
    stream: &KStream<K, V>,
    name: &str,
    operator: &'static str,
    parents: Vec<String>,
) -> KStream<K, V> {
    add_processor_node::<K, V, K, V, _>(&stream.state, name, operator, parents, Vec::new(), || {
        PassThrough
    });
    KStream::new(stream.state.clone(), name)
}

impl<K: Data, V: Data> KStream<K, V> {
    /// Splits the stream: each record goes to the first branch that accepts it. Branch
    /// `b` of node `name` is the node `name-b`; the streams are returned in branch order.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Consumed, Branch};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let s = b.stream("in", ["in"], Consumed::with(Serdes::string(), Serdes::i64()));
    /// let [big, small] = s
    ///     .branch("size", vec![
    ///         Branch::when("big", |_k: &String, v: &i64| *v > 100),
    ///         Branch::otherwise("small"),
    ///     ])
    ///     .try_into()
    ///     .ok()
    ///     .unwrap();
    /// ```
    pub fn branch(&self, name: &str, branches: Vec<Branch<K, V>>) -> Vec<KStream<K, V>> {
        let routes: Vec<(String, Option<Predicate<K, V>>)> = branches
            .into_iter()
            .map(|b| (format!("{name}-{}", b.name), b.predicate))
            .collect();
        let children: Vec<String> = routes.iter().map(|(n, _)| n.clone()).collect();
        let routes = Arc::new(routes);
        let _router: KStream<K, V> = self.attach(name, "branch", move || Router {
            routes: routes.clone(),
        });
        children
            .iter()
            .map(|child| pass_through(self, child, "branch_output", vec![name.to_string()]))
            .collect()
    }
}
