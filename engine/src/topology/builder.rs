//! Declaring a topology: [`TopologyBuilder`] creates sources, [`KStream`] handles chain
//! operators, and `build()` validates the whole graph and freezes it into a [`Topology`].

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use crate::serde::{Serde, SerdeInfo, SerdeRole};

use std::any::Any;

use crate::state::typed::StoreSerdes;
use crate::state::{StoreKind, StoreQuery, StoreSpec};

use super::error::{DecodeError, Problem, TopologyError};
use super::node::{Datum, NodeFactory, NodeInstance, SourceDecoder, TypeSig};
use super::policy::ErrorPolicy;
use super::processor::{Processor, ProcessorNode};
use super::topic::Topic;

/// Bounds every key and value type in a topology meets: records are cloned when a stream
/// fans out, and tasks move between threads.
pub trait Data: Clone + Send + 'static {}
impl<T: Clone + Send + 'static> Data for T {}

/// What kind of node, with what it needs to run.
#[derive(Clone)]
pub(crate) enum NodeKind {
    Source {
        topics: Vec<String>,
        key: SerdeInfo,
        value: SerdeInfo,
        decoder: Arc<dyn SourceDecoder>,
    },
    Processor {
        operator: &'static str,
        factory: NodeFactory,
    },
    Sink {
        topic: String,
        key: SerdeInfo,
        value: SerdeInfo,
        factory: NodeFactory,
    },
}

/// Prepares a node's serdes for its topics; returns one message per failure, naming
/// the node by the name it is given (its final one: `named` may rename a node after
/// this closure was made).
pub(crate) type PrepareFn = Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// A closure preparing `key` and `value` for `topics` in `role`.
pub(crate) fn prepare_fn<K: 'static, V: 'static>(
    topics: Vec<String>,
    key: Arc<dyn Serde<K>>,
    value: Arc<dyn Serde<V>>,
    role: SerdeRole,
) -> PrepareFn {
    Arc::new(move |node: &str| {
        let mut problems = Vec::new();
        for topic in &topics {
            if let Err(e) = key.prepare(topic, role) {
                problems.push(format!("node `{node}`, key serde for `{topic}`: {e}"));
            }
            if let Err(e) = value.prepare(topic, role) {
                problems.push(format!("node `{node}`, value serde for `{topic}`: {e}"));
            }
        }
        problems
    })
}

/// One node as declared.
#[derive(Clone)]
pub(crate) struct NodeSpec {
    pub name: String,
    pub kind: NodeKind,
    /// Sources and sinks prepare their serdes before processing starts.
    pub prepare: Option<PrepareFn>,
    /// Stores the node may use.
    pub stores: Vec<String>,
    pub parents: Vec<String>,
    /// Types the node accepts (`None` for sources).
    pub input: Option<TypeSig>,
    /// Types the node emits (`None` for sinks).
    pub output: Option<TypeSig>,
}

impl NodeSpec {
    pub fn factory(&self) -> Option<&NodeFactory> {
        match &self.kind {
            NodeKind::Processor { factory, .. } | NodeKind::Sink { factory, .. } => Some(factory),
            NodeKind::Source { .. } => None,
        }
    }
}

pub(crate) struct BuilderState {
    pub application_id: String,
    pub nodes: Vec<NodeSpec>,
    pub stores: Vec<StoreDef>,
    pub routes: Vec<(String, String)>,
    pub services: Vec<crate::ops::ServiceRoutes>,
    pub error_policy: ErrorPolicy,
    /// Joins whose inputs must be co-partitioned: (join name, the input nodes).
    pub copartitioned: Vec<(String, Vec<String>)>,
    /// Global tables, materialized from every partition of their topic on every instance.
    pub globals: Vec<GlobalDef>,
    /// How many names have been generated (the number in the next one).
    pub generated_count: usize,
    /// Nodes whose names were generated and may still be changed with `named`.
    pub generated: HashSet<String>,
    /// Names that could not be given (reported with the other problems).
    pub naming_problems: Vec<Problem>,
}

impl BuilderState {
    /// A new node name for `operator`, as Kafka Streams makes them: the operator in
    /// upper case and a number counting the names generated before,
    /// e.g. `KSTREAM-FILTER-0000000003`. [`KStream::named`] can replace it.
    pub(crate) fn generate_name(&mut self, prefix: &str, operator: &str) -> String {
        let name = format!(
            "{prefix}-{}-{:010}",
            operator.replace('_', "").to_uppercase(),
            self.generated_count
        );
        self.generated_count += 1;
        self.generated.insert(name.clone());
        name
    }

    /// Renames node `old` to `new` (and every edge to it), if `old` was generated; records
    /// a problem otherwise. Returns the node's name afterwards.
    pub(crate) fn rename(&mut self, old: &str, new: &str) -> String {
        if !self.generated.remove(old) {
            self.naming_problems.push(Problem::FixedName {
                node: old.to_string(),
                name: new.to_string(),
            });
            return old.to_string();
        }
        for node in &mut self.nodes {
            if node.name == old {
                node.name = new.to_string();
            }
            for parent in &mut node.parents {
                if parent == old {
                    *parent = new.to_string();
                }
            }
        }
        for (_, inputs) in &mut self.copartitioned {
            for input in inputs {
                if input == old {
                    *input = new.to_string();
                }
            }
        }
        new.to_string()
    }
}

/// A global table as declared: its topic, its store, and how a record of the topic
/// becomes the store's bytes.
#[derive(Clone)]
pub(crate) struct GlobalDef {
    pub name: String,
    pub topic: String,
    pub store: StoreDef,
    pub codec: Arc<dyn super::operators::global_table::GlobalCodec>,
    pub prepare: PrepareFn,
}

/// A store as declared: its spec and its serdes (`StoreSerdes<K, V>`, type-erased).
#[derive(Clone)]
pub(crate) struct StoreDef {
    pub spec: StoreSpec,
    pub serdes: Arc<dyn Any + Send + Sync>,
    pub query: Arc<StoreQuery>,
}

/// Declares a key-value store for [`TopologyBuilder::add_store`].
///
/// ```
/// use engine::serde::Serdes;
/// use engine::topology::StoreBuilder;
/// use std::time::Duration;
/// let seen = StoreBuilder::persistent("seen", Serdes::string(), Serdes::i64())
///     .with_ttl(Duration::from_secs(3600));
/// ```
pub struct StoreBuilder<K, V> {
    spec: StoreSpec,
    serdes: StoreSerdes<K, V>,
}

impl<K: 'static, V: 'static> StoreBuilder<K, V> {
    fn new(name: &str, kind: StoreKind, key: impl Serde<K>, value: impl Serde<V>) -> Self {
        StoreBuilder {
            spec: StoreSpec {
                name: name.to_string(),
                kind,
                changelog: true,
                default_ttl: None,
                changelog_retention: None,
                caching: false,
                key_format: key.info().to_string(),
                value_format: value.info().to_string(),
            },
            serdes: StoreSerdes {
                key: Arc::new(key),
                value: Arc::new(value),
            },
        }
    }

    /// A RocksDB store (bounded memory; restored from its checkpoint and changelog tail).
    pub fn persistent(name: &str, key: impl Serde<K>, value: impl Serde<V>) -> Self {
        Self::new(name, StoreKind::Persistent, key, value)
    }

    /// An in-memory store (restored from its whole changelog on start).
    pub fn in_memory(name: &str, key: impl Serde<K>, value: impl Serde<V>) -> Self {
        Self::new(name, StoreKind::InMemory, key, value)
    }

    /// Entries expire this long after they are written (wall-clock time).
    pub fn with_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.spec.default_ttl = Some(ttl);
        self
    }

    /// A windowed store whose records matter for `retention` (window plus grace).
    pub(crate) fn windowed(mut self, retention_ms: i64) -> Self {
        self.spec.changelog_retention = Some(std::time::Duration::from_millis(
            u64::try_from(retention_ms).unwrap_or(0),
        ));
        self
    }

    /// The store's declaration and serdes.
    pub(crate) fn into_parts(self) -> (StoreSpec, StoreSerdes<K, V>) {
        (self.spec, self.serdes)
    }

    /// Puts a record cache in front of the store (only aggregations, which forward what
    /// leaves the cache, set this).
    pub(crate) fn with_caching(mut self, caching: bool) -> Self {
        self.spec.caching = caching;
        self
    }

    /// The store's name.
    pub(crate) fn name(&self) -> &str {
        &self.spec.name
    }

    /// No changelog: the store is lost with its instance (for caches only).
    pub fn without_changelog(mut self) -> Self {
        self.spec.changelog = false;
        self
    }
}

/// A store declared with [`TopologyBuilder::add_store`], with its key and value types:
/// a processor reads and writes it with `ctx.store(&handle)` without repeating its name
/// or types. Cheap to clone.
///
/// ```
/// use engine::serde::Serdes;
/// use engine::topology::{StoreBuilder, TopologyBuilder};
/// let b = TopologyBuilder::new("app");
/// let seen = b.add_store(StoreBuilder::persistent("seen", Serdes::string(), Serdes::i64()));
/// assert_eq!(seen.name(), "seen");
/// ```
pub struct StoreRef<K, V> {
    name: Arc<str>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for StoreRef<K, V> {
    fn clone(&self) -> Self {
        StoreRef {
            name: self.name.clone(),
            _types: PhantomData,
        }
    }
}

impl<K, V> std::fmt::Debug for StoreRef<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StoreRef").field(&self.name).finish()
    }
}

impl<K, V> StoreRef<K, V> {
    pub(crate) fn new(name: &str) -> Self {
        StoreRef {
            name: Arc::from(name),
            _types: PhantomData,
        }
    }

    /// The store's name (its changelog is `<application>-<name>-changelog`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Declares a topology.
///
/// ```
/// use engine::topology::{TopologyBuilder, Topic};
/// use engine::serde::Serdes;
///
/// let builder = TopologyBuilder::new("shout");
/// builder
///     .stream(&Topic::new("words", Serdes::string(), Serdes::string()))
///     .map_values(|v: String| v.to_uppercase())
///     .to(&Topic::new("shouts", Serdes::string(), Serdes::string()));
/// let topology = builder.build().unwrap();
/// assert!(topology.describe().contains("Sink: KSTREAM-SINK-0000000002 (topic: shouts)"));
/// ```
pub struct TopologyBuilder {
    pub(crate) state: Rc<RefCell<BuilderState>>,
}

impl TopologyBuilder {
    /// A builder for the topology with this application id (also its consumer group).
    pub fn new(application_id: impl Into<String>) -> Self {
        TopologyBuilder {
            state: Rc::new(RefCell::new(BuilderState {
                application_id: application_id.into(),
                nodes: Vec::new(),
                stores: Vec::new(),
                routes: Vec::new(),
                services: Vec::new(),
                error_policy: ErrorPolicy::default(),
                copartitioned: Vec::new(),
                globals: Vec::new(),
                generated_count: 0,
                generated: HashSet::new(),
                naming_problems: Vec::new(),
            })),
        }
    }

    /// Sets what happens to records that fail (default: fail the topology).
    pub fn error_policy(&self, policy: ErrorPolicy) -> &Self {
        self.state.borrow_mut().error_policy = policy;
        self
    }

    /// Adds a key-value store that processors can declare and use; the returned handle
    /// names it with its types (`ctx.store(&handle)` in a processor).
    pub fn add_store<K: 'static, V: 'static>(&self, store: StoreBuilder<K, V>) -> StoreRef<K, V> {
        add_store(&self.state, store)
    }

    /// Serves `GET {path}/{key}` from store `store` on the operations endpoint
    /// (`engine run --http`), e.g. `expose_store("/api/v1/tickets", "tickets")`.
    pub fn expose_store(&self, path: &str, store: &str) -> &Self {
        self.state
            .borrow_mut()
            .routes
            .push((path.trim_end_matches('/').to_string(), store.to_string()));
        self
    }

    /// Serves the routes `routes` builds on the operations endpoint (`engine run
    /// --http`), beside `/health`, `/metrics` and `/stores`: a service's own API, whose
    /// handlers read the topology's stores on every instance and produce to its topics
    /// through the [`ServiceContext`](crate::ops::ServiceContext) they are given.
    pub fn serve_http(
        &self,
        routes: impl Fn(crate::ops::ServiceContext) -> axum::Router + Send + Sync + 'static,
    ) -> &Self {
        self.state.borrow_mut().services.push(Arc::new(routes));
        self
    }

    /// A stream of the records of `topic`, decoded with its serdes. The source node's
    /// name is generated (`KSTREAM-SOURCE-0000000000`); `.named(..)` gives it one.
    pub fn stream<K: Data, V: Data>(&self, topic: &Topic<K, V>) -> KStream<K, V> {
        let name = self.state.borrow_mut().generate_name("KSTREAM", "source");
        add_source(&self.state, &name, topic)
    }

    /// Adds a processor fed by the nodes named in `parents` (the Processor API, for
    /// wiring by name); returns its output stream.
    pub fn add_processor<KIn: Data, VIn: Data, KOut: Data, VOut: Data, P>(
        &self,
        name: &str,
        parents: &[&str],
        factory: impl Fn() -> P + Send + Sync + 'static,
    ) -> KStream<KOut, VOut>
    where
        P: Processor<KIn, VIn, KOut, VOut>,
    {
        add_processor_node::<KIn, VIn, KOut, VOut, P>(
            &self.state,
            name,
            "process",
            parents.iter().map(|p| p.to_string()).collect(),
            Vec::new(),
            factory,
        );
        KStream::new(self.state.clone(), name)
    }

    /// Every problem with the topology as declared so far; empty when it is valid.
    pub fn validate(&self) -> Vec<Problem> {
        let state = self.state.borrow();
        let mut problems = state.naming_problems.clone();
        problems.extend(super::validate::problems(
            &state.nodes,
            &state.stores,
            &state.globals,
            &state.routes,
        ));
        problems
    }

    /// Validates and freezes the topology; the error lists every problem at once.
    pub fn build(self) -> Result<Topology, TopologyError> {
        let problems = self.validate();
        let state = self.state.borrow();
        if !problems.is_empty() {
            return Err(TopologyError::Invalid {
                topology: state.application_id.clone(),
                problems,
            });
        }
        Ok(Topology::freeze(&state))
    }
}

pub(crate) fn add_source<K: Data, V: Data>(
    state: &Rc<RefCell<BuilderState>>,
    name: &str,
    topic: &Topic<K, V>,
) -> KStream<K, V> {
    let topics = vec![topic.name().to_string()];
    let prepare = prepare_fn(
        topics.clone(),
        topic.key.clone(),
        topic.value.clone(),
        SerdeRole::Read,
    );
    let spec = NodeSpec {
        name: name.to_string(),
        prepare: Some(prepare),
        stores: Vec::new(),
        kind: NodeKind::Source {
            topics,
            key: topic.key.info(),
            value: topic.value.info(),
            decoder: Arc::new(TypedDecoder {
                key: topic.key.clone(),
                value: topic.value.clone(),
            }),
        },
        parents: Vec::new(),
        input: None,
        output: Some(TypeSig::of::<K, V>()),
    };
    state.borrow_mut().nodes.push(spec);
    KStream::new(state.clone(), name)
}

pub(crate) fn add_store<K: 'static, V: 'static>(
    state: &Rc<RefCell<BuilderState>>,
    store: StoreBuilder<K, V>,
) -> StoreRef<K, V> {
    let serdes = Arc::new(store.serdes);
    let handle = StoreRef::new(&store.spec.name);
    state.borrow_mut().stores.push(StoreDef {
        query: Arc::new(StoreQuery::new(&store.spec.name, serdes.clone())),
        spec: store.spec,
        serdes,
    });
    handle
}

pub(crate) fn add_node(state: &Rc<RefCell<BuilderState>>, spec: NodeSpec) {
    state.borrow_mut().nodes.push(spec);
}

pub(crate) fn add_processor_node<KIn: Data, VIn: Data, KOut: Data, VOut: Data, P>(
    state: &Rc<RefCell<BuilderState>>,
    name: &str,
    operator: &'static str,
    parents: Vec<String>,
    stores: Vec<String>,
    factory: impl Fn() -> P + Send + Sync + 'static,
) where
    P: Processor<KIn, VIn, KOut, VOut>,
{
    let factory: NodeFactory = Arc::new(move || {
        Box::new(ProcessorNode::<P, KIn, VIn, KOut, VOut>::new(factory())) as Box<dyn NodeInstance>
    });
    add_instance_node::<KIn, VIn, KOut, VOut>(state, name, operator, parents, stores, factory);
}

/// Adds a processor node whose per-task instances `factory` makes.
pub(crate) fn add_instance_node<KIn: Data, VIn: Data, KOut: Data, VOut: Data>(
    state: &Rc<RefCell<BuilderState>>,
    name: &str,
    operator: &'static str,
    parents: Vec<String>,
    stores: Vec<String>,
    factory: NodeFactory,
) {
    add_node(
        state,
        NodeSpec {
            name: name.to_string(),
            prepare: None,
            stores,
            kind: NodeKind::Processor { operator, factory },
            parents,
            input: Some(TypeSig::of::<KIn, VIn>()),
            output: Some(TypeSig::of::<KOut, VOut>()),
        },
    );
}

struct TypedDecoder<K, V> {
    key: Arc<dyn Serde<K>>,
    value: Arc<dyn Serde<V>>,
}

impl<K: Data, V: Data> SourceDecoder for TypedDecoder<K, V> {
    fn decode(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<(Datum, Datum), DecodeError> {
        let k = self
            .key
            .deserialize(topic, key)
            .map_err(|source| DecodeError {
                part: "key",
                source,
            })?;
        let v = self
            .value
            .deserialize(topic, value)
            .map_err(|source| DecodeError {
                part: "value",
                source,
            })?;
        Ok((Box::new(k), Box::new(v)))
    }
}

/// A typed stream of records: the output of one node, to which operators attach.
pub struct KStream<K, V> {
    pub(crate) state: Rc<RefCell<BuilderState>>,
    pub(crate) node: String,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for KStream<K, V> {
    fn clone(&self) -> Self {
        KStream::new(self.state.clone(), &self.node)
    }
}

impl<K, V> KStream<K, V> {
    pub(crate) fn new(state: Rc<RefCell<BuilderState>>, node: &str) -> Self {
        KStream {
            state,
            node: node.to_string(),
            _types: PhantomData,
        }
    }

    /// The application id of the topology being built.
    pub(crate) fn application_id(&self) -> String {
        self.state.borrow().application_id.clone()
    }

    /// The name of the node whose output this stream is.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// Names the node this stream comes out of, in place of the name generated for it
    /// (Kafka Streams' `Named.as`): names show in `describe()`, logs, metrics and
    /// errors. Only generated names can be changed; an operator whose name fixes a
    /// store or an internal topic (joins, aggregations, `repartition`, `table`) takes
    /// its name where it is called, and naming it here is reported by `build()`.
    ///
    /// ```
    /// # use engine::topology::{Topic, TopologyBuilder};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let words = Topic::new("words", Serdes::string(), Serdes::string());
    /// let non_empty = b
    ///     .stream(&words)
    ///     .filter(|_k: &String, v: &String| !v.is_empty())
    ///     .named("non-empty");
    /// assert_eq!(non_empty.node_name(), "non-empty");
    /// ```
    pub fn named(self, name: &str) -> KStream<K, V> {
        let name = self.state.borrow_mut().rename(&self.node, name);
        KStream::new(self.state, &name)
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    /// A generated name for a node of `operator` (see [`KStream::named`]).
    pub(crate) fn generate_name(&self, operator: &str) -> String {
        self.state.borrow_mut().generate_name("KSTREAM", operator)
    }

    /// Attaches a processor node with a generated name.
    pub(crate) fn attach_generated<K2: Data, V2: Data, P>(
        &self,
        operator: &'static str,
        factory: impl Fn() -> P + Send + Sync + 'static,
    ) -> KStream<K2, V2>
    where
        P: Processor<K, V, K2, V2>,
    {
        let name = self.generate_name(operator);
        self.attach(&name, operator, factory)
    }

    /// Attaches a processor node to this stream; the building block of every operator.
    pub(crate) fn attach<K2: Data, V2: Data, P>(
        &self,
        name: &str,
        operator: &'static str,
        factory: impl Fn() -> P + Send + Sync + 'static,
    ) -> KStream<K2, V2>
    where
        P: Processor<K, V, K2, V2>,
    {
        self.attach_with_stores(name, operator, Vec::new(), factory)
    }

    /// [`KStream::attach`] for a node that uses stores.
    pub(crate) fn attach_with_stores<K2: Data, V2: Data, P>(
        &self,
        name: &str,
        operator: &'static str,
        stores: Vec<String>,
        factory: impl Fn() -> P + Send + Sync + 'static,
    ) -> KStream<K2, V2>
    where
        P: Processor<K, V, K2, V2>,
    {
        add_processor_node::<K, V, K2, V2, P>(
            &self.state,
            name,
            operator,
            vec![self.node.clone()],
            stores,
            factory,
        );
        KStream::new(self.state.clone(), name)
    }
}

/// A validated topology, ready to run on Kafka or in the test driver. Cheap to clone.
#[derive(Clone)]
pub struct Topology {
    pub(crate) inner: Arc<TopologyInner>,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("application_id", &self.inner.application_id)
            .field("nodes", &self.inner.nodes.len())
            .finish()
    }
}

pub(crate) struct TopologyInner {
    pub application_id: String,
    pub nodes: Vec<NodeSpec>,
    pub children: Vec<Vec<usize>>,
    pub child_names: Vec<Vec<Arc<str>>>,
    pub sources_by_topic: HashMap<String, usize>,
    pub stores: Vec<StoreDef>,
    pub routes: Vec<(String, String)>,
    pub services: Vec<crate::ops::ServiceRoutes>,
    pub error_policy: ErrorPolicy,
    /// Joins and the source topics of their inputs, which must be co-partitioned.
    pub copartitioned: Vec<(String, Vec<String>)>,
    pub globals: Vec<GlobalDef>,
}

/// The topics of the sources a node reads from, through any number of operators, sorted.
fn source_topics_of(node: &str, nodes: &[NodeSpec]) -> Vec<String> {
    let by_name: HashMap<&str, &NodeSpec> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut topics = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut queue = vec![node];
    while let Some(name) = queue.pop() {
        if !seen.insert(name) {
            continue;
        }
        let Some(spec) = by_name.get(name) else {
            continue;
        };
        if let NodeKind::Source { topics: t, .. } = &spec.kind {
            topics.extend(t.iter().cloned());
        }
        queue.extend(spec.parents.iter().map(String::as_str));
    }
    topics.sort();
    topics.dedup();
    topics
}

impl Topology {
    fn freeze(state: &BuilderState) -> Topology {
        let index: HashMap<&str, usize> = state
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let mut children = vec![Vec::new(); state.nodes.len()];
        for (i, node) in state.nodes.iter().enumerate() {
            for parent in &node.parents {
                // Validation has proven every parent name resolves.
                if let Some(&p) = index.get(parent.as_str()) {
                    children[p].push(i);
                }
            }
        }
        let child_names = children
            .iter()
            .map(|c: &Vec<usize>| {
                c.iter()
                    .map(|&i| Arc::from(state.nodes[i].name.as_str()))
                    .collect()
            })
            .collect();
        let mut sources_by_topic = HashMap::new();
        for (i, node) in state.nodes.iter().enumerate() {
            if let NodeKind::Source { topics, .. } = &node.kind {
                for t in topics {
                    sources_by_topic.insert(t.clone(), i);
                }
            }
        }
        Topology {
            inner: Arc::new(TopologyInner {
                application_id: state.application_id.clone(),
                nodes: state.nodes.clone(),
                children,
                child_names,
                sources_by_topic,
                stores: state.stores.clone(),
                routes: state.routes.clone(),
                services: state.services.clone(),
                error_policy: state.error_policy.clone(),
                globals: state.globals.clone(),
                copartitioned: state
                    .copartitioned
                    .iter()
                    .map(|(join, inputs)| {
                        let mut topics: Vec<String> = inputs
                            .iter()
                            .flat_map(|i| source_topics_of(i, &state.nodes))
                            .collect();
                        topics.sort();
                        topics.dedup();
                        (join.clone(), topics)
                    })
                    .collect(),
            }),
        }
    }

    /// The application id: consumer group, and prefix of internal topics and stores.
    pub fn application_id(&self) -> &str {
        &self.inner.application_id
    }

    /// The error policy.
    pub fn error_policy(&self) -> &ErrorPolicy {
        &self.inner.error_policy
    }

    /// Topics the topology reads, sorted.
    pub fn source_topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self.inner.sources_by_topic.keys().cloned().collect();
        t.sort();
        t
    }

    /// Stores of the topology.
    pub fn stores(&self) -> Vec<StoreSpec> {
        self.inner.stores.iter().map(|s| s.spec.clone()).collect()
    }

    /// Topics of the global tables, sorted: read whole by every instance, outside the
    /// consumer group.
    pub fn global_topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self.inner.globals.iter().map(|g| g.topic.clone()).collect();
        t.sort();
        t.dedup();
        t
    }

    /// Stores of the global tables.
    pub fn global_stores(&self) -> Vec<StoreSpec> {
        self.inner
            .globals
            .iter()
            .map(|g| g.store.spec.clone())
            .collect()
    }

    /// Each store's name and interactive-query reader.
    pub(crate) fn store_queries(&self) -> Vec<(String, Arc<crate::state::StoreQuery>)> {
        self.inner
            .stores
            .iter()
            .map(|s| (s.spec.name.clone(), s.query.clone()))
            .collect()
    }

    /// Paths under which stores are served, with their store: `(path, store)`.
    pub fn exposed_stores(&self) -> &[(String, String)] {
        &self.inner.routes
    }

    /// The builders of the topology's own HTTP routes ([`TopologyBuilder::serve_http`]).
    pub fn services(&self) -> &[crate::ops::ServiceRoutes] {
        &self.inner.services
    }

    /// Changelog topics of the stores, sorted.
    pub fn changelog_topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .inner
            .stores
            .iter()
            .filter(|s| s.spec.changelog)
            .map(|s| s.spec.changelog_topic(&self.inner.application_id))
            .collect();
        t.sort();
        t
    }

    /// Topics the topology writes (sinks and dead-letter topics), sorted.
    pub fn sink_topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .inner
            .nodes
            .iter()
            .filter_map(|n| match &n.kind {
                NodeKind::Sink { topic, .. } => Some(topic.clone()),
                _ => None,
            })
            .chain(
                self.inner
                    .error_policy
                    .dead_letter_topics()
                    .into_iter()
                    .map(String::from),
            )
            .collect();
        t.sort();
        t.dedup();
        t
    }

    /// Prepares every source's and sink's serdes (registry contact, schema registration,
    /// fallback decisions); blocking. Returns every failure.
    pub fn prepare(&self) -> Result<(), Vec<String>> {
        let problems: Vec<String> = self
            .inner
            .nodes
            .iter()
            .filter_map(|n| n.prepare.as_ref().map(|p| p(&n.name)))
            .chain(self.inner.globals.iter().map(|g| (g.prepare)(&g.name)))
            .flatten()
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Checks that the inputs of every join read topics with the same partition count
    /// (given by `partition_counts`; topics it lacks are not checked). The runtime calls
    /// this once it knows the topics' partition counts, before processing anything.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic, StoreBuilder};
    /// # use engine::serde::Serdes;
    /// # use std::collections::{HashMap, HashSet};
    /// let b = TopologyBuilder::new("joined");
    /// let nullable = |t: &str| Topic::new(t, Serdes::string(), Serdes::nullable(Serdes::string()));
    /// let left = b.table("left", &nullable("left"), "left-store");
    /// let right = b.table("right", &nullable("right"), "right-store");
    /// left.join("both", &right, |l: &String, r: &String| format!("{l}{r}"),
    ///     StoreBuilder::persistent("both", Serdes::string(), Serdes::nullable(Serdes::string())))
    ///     .to_stream()
    ///     .for_each(|_k: &String, _v: &Option<String>| {});
    /// let topology = b.build().unwrap();
    /// let counts = HashMap::from([("left".to_string(), 3), ("right".to_string(), 4)]);
    /// assert!(topology.check_copartitioning(&counts).is_err());
    /// ```
    pub fn check_copartitioning(
        &self,
        partition_counts: &HashMap<String, i32>,
    ) -> Result<(), TopologyError> {
        let problems: Vec<Problem> = self
            .inner
            .copartitioned
            .iter()
            .filter_map(|(join, topics)| {
                let counts: Vec<(String, i32)> = topics
                    .iter()
                    .filter_map(|t| partition_counts.get(t).map(|n| (t.clone(), *n)))
                    .collect();
                let differ = counts.windows(2).any(|w| w[0].1 != w[1].1);
                differ.then(|| Problem::NotCoPartitioned {
                    join: join.clone(),
                    topics: counts,
                })
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TopologyError::Invalid {
                topology: self.inner.application_id.clone(),
                problems,
            })
        }
    }

    /// Every topic the topology touches (including changelogs and global topics), sorted.
    pub fn topics(&self) -> Vec<String> {
        let mut t = self.source_topics();
        t.extend(self.global_topics());
        t.extend(self.sink_topics());
        t.extend(self.changelog_topics());
        t.sort();
        t.dedup();
        t
    }
}
