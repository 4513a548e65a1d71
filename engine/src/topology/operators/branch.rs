//! `split`: routes each record to the first branch that takes it (Kafka Streams'
//! `split().branch(..).defaultBranch(..)`), where a branch may narrow the value's type.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use crate::record::Record;
use crate::topology::builder::{Data, KStream, add_instance_node, add_processor_node};
use crate::topology::error::ProcessingError;
use crate::topology::node::{Datum, ErasedRecord, NodeContext, NodeFactory, NodeInstance, unbox};
use crate::topology::processor::{Processor, ProcessorContext};

/// One branch's test: the value for the branch (boxed, of the branch's type), or the
/// value handed back for the next branch.
type Route<K, V> = Arc<dyn Fn(&K, V) -> Result<Datum, V> + Send + Sync>;

/// The routes of a split, in branch order; the router's children are its branches in the
/// same order. Filled while the topology is declared, read when tasks are created.
type Routes<K, V> = Arc<Mutex<Vec<Route<K, V>>>>;

/// Sends each record to the child of the first route that takes it.
struct Router<K, V> {
    routes: Vec<Route<K, V>>,
}

impl<K: Data, V: Data> NodeInstance for Router<K, V> {
    fn process(
        &mut self,
        record: ErasedRecord,
        ctx: &mut NodeContext<'_>,
    ) -> Result<(), ProcessingError> {
        let key = unbox::<K>(record.key, ctx.node_name)?;
        let mut value = unbox::<V>(record.value, ctx.node_name)?;
        for (i, route) in self.routes.iter().enumerate() {
            match route(&key, value) {
                Ok(taken) => {
                    // Children are the branches, added in route order (see `Split::add`).
                    if let Some(&child) = ctx.children.get(i) {
                        ctx.forwarded.push((
                            child,
                            ErasedRecord {
                                key: Box::new(key),
                                value: taken,
                                timestamp: record.timestamp,
                                headers: record.headers,
                            },
                        ));
                    }
                    return Ok(());
                }
                Err(back) => value = back,
            }
        }
        // No branch took it and there is no default branch: dropped by design, as in
        // Kafka Streams' `split()`.
        Ok(())
    }
}

/// What a [`Split::branch_map`] function decides for a record: the branch takes it,
/// with the value the branch's stream carries, or passes it on to the next branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Branch<T, V> {
    /// The branch takes the record, with this value.
    Take(T),
    /// The next branch (or the default branch) gets the record, with its value back.
    Pass(V),
}

/// Marks the router's output: each child receives its own branch's types, which the
/// split checks when it declares them, so validation does not compare them to one type.
#[derive(Clone)]
pub(crate) struct BranchTypes;

/// A stream being split into branches ([`KStream::split`]). Each record goes to the
/// first branch that takes it; records no branch takes are dropped unless
/// [`Split::default_branch`] takes them.
pub struct Split<K, V> {
    stream: KStream<K, V>,
    router: String,
    routes: Routes<K, V>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K: Data, V: Data> KStream<K, V> {
    /// Splits the stream into branches declared one after the other. Each branch's
    /// stream is handed to a closure that continues it, as Kafka Streams'
    /// `Branched.withConsumer` does.
    ///
    /// ```
    /// # use engine::topology::{Branch, TopologyBuilder, Topic};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let amounts = Topic::new("amounts", Serdes::string(), Serdes::i64());
    /// # let big = Topic::new("big", Serdes::string(), Serdes::i64());
    /// # let small = Topic::new("small", Serdes::string(), Serdes::i64());
    /// b.stream(&amounts)
    ///     .split()
    ///     .branch(|_k, v: &i64| *v > 100, |s| { s.to(&big); })
    ///     .default_branch(|s| { s.to(&small); });
    /// # b.build().unwrap();
    /// ```
    pub fn split(&self) -> Split<K, V> {
        let router = self.generate_name("branch");
        let routes: Routes<K, V> = Arc::new(Mutex::new(Vec::new()));
        let declared = routes.clone();
        let factory: NodeFactory = Arc::new(move || {
            // Branches are all declared before any task exists; a poisoned lock means
            // a panic while declaring, which already failed the build.
            let routes = declared.lock().map(|r| r.clone()).unwrap_or_default();
            Box::new(Router::<K, V> { routes }) as Box<dyn NodeInstance>
        });
        add_instance_node::<K, V, (), BranchTypes>(
            &self.state,
            &router,
            "branch",
            vec![self.node.clone()],
            Vec::new(),
            factory,
        );
        // Generated: the router may be named until its first branch routes to it.
        Split {
            stream: self.clone(),
            router,
            routes,
            _types: PhantomData,
        }
    }
}

impl<K: Data, V: Data> Split<K, V> {
    /// Names the node that routes the records (`KSTREAM-BRANCH-..` otherwise).
    pub fn named(mut self, name: &str) -> Self {
        self.router = self.stream.state.borrow_mut().rename(&self.router, name);
        self
    }

    /// The records for which `predicate` is true (and no earlier branch took) go to
    /// the stream `then` receives.
    pub fn branch(
        self,
        predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static,
        then: impl FnOnce(KStream<K, V>),
    ) -> Self {
        self.branch_map(
            move |k, v| {
                if predicate(k, &v) {
                    Branch::Take(v)
                } else {
                    Branch::Pass(v)
                }
            },
            then,
        )
    }

    /// A branch that narrows the value: `f` returns [`Branch::Take`] with the branch's
    /// value to take the record, or [`Branch::Pass`] with the value to offer it to the
    /// next branch. With an enum, each branch receives its variant's contents, matched
    /// once.
    ///
    /// ```
    /// # use engine::topology::{Branch, TopologyBuilder, Topic};
    /// # use engine::serde::Serdes;
    /// #[derive(Clone)]
    /// enum Reading { Celsius(f64), Error(String) }
    /// # let b = TopologyBuilder::new("app");
    /// # let readings = b.stream(&Topic::new("in", Serdes::string(), Serdes::string()))
    /// #     .map_values(|v: String| v.parse().map(Reading::Celsius).unwrap_or(Reading::Error(v)));
    /// # let errors = Topic::new("errors", Serdes::string(), Serdes::string());
    /// readings
    ///     .split()
    ///     .branch_map(
    ///         |_k, r| match r {
    ///             Reading::Error(e) => Branch::Take(e),
    ///             other => Branch::Pass(other),
    ///         },
    ///         |errors_stream| { errors_stream.to(&errors); },
    ///     )
    ///     .default_branch(|celsius| { celsius.for_each(|_k, _v| {}); });
    /// # b.build().unwrap();
    /// ```
    pub fn branch_map<V2: Data>(
        self,
        f: impl Fn(&K, V) -> Branch<V2, V> + Send + Sync + 'static,
        then: impl FnOnce(KStream<K, V2>),
    ) -> Self {
        let route: Route<K, V> = Arc::new(move |k: &K, v: V| -> Result<Datum, V> {
            match f(k, v) {
                Branch::Take(taken) => Ok(Box::new(taken) as Datum),
                Branch::Pass(back) => Err(back),
            }
        });
        let stream = self.add::<V2>(route);
        then(stream);
        self
    }

    /// Every record no branch took goes to the stream `then` receives.
    pub fn default_branch(self, then: impl FnOnce(KStream<K, V>)) {
        let route: Route<K, V> =
            Arc::new(|_k: &K, v: V| -> Result<Datum, V> { Ok(Box::new(v) as Datum) });
        let stream = self.add::<V>(route);
        then(stream);
    }

    /// Declares the next branch: its route, and its node, the router's next child.
    fn add<V2: Data>(&self, route: Route<K, V>) -> KStream<K, V2> {
        let state = &self.stream.state;
        // The router now routes by position to its children: its name is fixed.
        state.borrow_mut().generated.remove(&self.router);
        let name = state.borrow_mut().generate_name("KSTREAM", "branch_child");
        if let Ok(mut routes) = self.routes.lock() {
            routes.push(route);
        }
        // Seen from the branch, the router emits the branch's types.
        KStream::<K, V2>::new(state.clone(), &self.router).attach_pass_through(
            &name,
            "branch_output",
            |_, _| Ok(true),
        )
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
