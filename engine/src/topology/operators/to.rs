//! `to`: the sink that serializes records and writes them to a topic.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use crate::record::{ProducedRecord, Record};
use crate::serde::SerdeRole;
use crate::serde::{Serde, Written};
use crate::topology::builder::{
    BuilderState, Data, KStream, NodeKind, NodeSpec, add_node, prepare_fn,
};
use crate::topology::error::ProcessingError;
use crate::topology::node::{NodeInstance, TypeSig};
use crate::topology::processor::{Processor, ProcessorContext, ProcessorNode};
use crate::topology::topic::{Partitioner, Topic};

struct Sink<K, V> {
    topic: Arc<str>,
    key: Arc<dyn Serde<K>>,
    value: Arc<dyn Serde<V>>,
    partitioner: Option<Partitioner<K, V>>,
    /// Sizes of the last key and value written: each buffer starts at that capacity, so
    /// a record of about the same size is encoded without growing its buffer.
    last_len: (usize, usize),
}

impl<K: Data, V: Data> Processor<K, V, (), ()> for Sink<K, V> {
    fn process(
        &mut self,
        record: Record<K, V>,
        ctx: &mut ProcessorContext<'_, (), ()>,
    ) -> Result<(), ProcessingError> {
        let error = |part, source| ProcessingError::Serialize {
            node: ctx.node_name().to_string(),
            topic: self.topic.to_string(),
            part,
            source,
        };
        let mut key = Vec::with_capacity(self.last_len.0);
        let key = match self.key.serialize(&self.topic, &record.key, &mut key) {
            Ok(Written::Bytes) => Some(key),
            Ok(Written::Null) => None,
            Err(e) => return Err(error("key", e)),
        };
        let mut value = Vec::with_capacity(self.last_len.1);
        let value = match self.value.serialize(&self.topic, &record.value, &mut value) {
            Ok(Written::Bytes) => Some(value),
            Ok(Written::Null) => None,
            Err(e) => return Err(error("value", e)),
        };
        self.last_len = (
            key.as_ref().map_or(0, Vec::len),
            value.as_ref().map_or(0, Vec::len),
        );
        let partition = match &self.partitioner {
            None => None,
            Some(p) => {
                let count = ctx.partition_count(&self.topic).ok_or_else(|| {
                    ProcessingError::new(format!(
                        "sink `{}` has a partitioner but the partition count of `{}` is unknown",
                        ctx.node_name(),
                        self.topic
                    ))
                })?;
                Some(p(&record.key, &record.value, count).rem_euclid(count.max(1)))
            }
        };
        ctx.produce(ProducedRecord {
            topic: self.topic.clone(),
            partition,
            key,
            value,
            timestamp: record.timestamp,
            headers: record.headers,
        });
        Ok(())
    }
}

/// A node that ends a stream (the sink of [`KStream::to`], [`KStream::for_each`]), to
/// give it a name.
pub struct Terminal {
    pub(crate) state: Rc<RefCell<BuilderState>>,
    pub(crate) node: String,
}

impl Terminal {
    /// Names the node in place of its generated name (see [`KStream::named`]).
    pub fn named(self, name: &str) -> Terminal {
        let node = self.state.borrow_mut().rename(&self.node, name);
        Terminal {
            state: self.state,
            node,
        }
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.node
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    /// Writes the stream to `topic` with its serdes (and partitioner, if it has one).
    /// The sink's name is generated (`KSTREAM-SINK-0000000004`); `.named(..)` on the
    /// returned [`Terminal`] gives it one.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let input = Topic::new("in", Serdes::string(), Serdes::string());
    /// let output = Topic::new("output", Serdes::string(), Serdes::string())
    ///     .partitioner(|k: &String, _v: &String, n| k.len() as i32 % n);
    /// b.stream(&input).to(&output);
    /// ```
    pub fn to(&self, topic: &Topic<K, V>) -> Terminal {
        let name = self.generate_name("sink");
        self.to_node(&name, topic);
        Terminal {
            state: self.state.clone(),
            node: name,
        }
    }

    /// Adds the sink node `name` writing `topic`.
    pub(crate) fn to_node(&self, name: &str, topic: &Topic<K, V>) {
        let prepare = prepare_fn(
            vec![topic.name().to_string()],
            topic.key.clone(),
            topic.value.clone(),
            SerdeRole::Write,
        );
        let key_info = topic.key.info();
        let value_info = topic.value.info();
        let topic_name: Arc<str> = Arc::from(topic.name());
        let produced = topic.clone();
        let factory = Arc::new(move || {
            Box::new(ProcessorNode::<_, K, V, (), ()>::new(Sink {
                topic: topic_name.clone(),
                key: produced.key.clone(),
                value: produced.value.clone(),
                partitioner: produced.partitioner.clone(),
                last_len: (0, 0),
            })) as Box<dyn NodeInstance>
        });
        add_node(
            &self.state,
            NodeSpec {
                name: name.to_string(),
                prepare: Some(prepare),
                stores: Vec::new(),
                kind: NodeKind::Sink {
                    topic: topic.name().to_string(),
                    key: key_info,
                    value: value_info,
                    factory,
                },
                parents: vec![self.node.clone()],
                input: Some(TypeSig::of::<K, V>()),
                output: None,
            },
        );
    }
}
