//! `to`: the sink that serializes records and writes them to a topic.

use std::sync::Arc;

use crate::record::{ProducedRecord, Record};
use crate::serde::SerdeRole;
use crate::serde::{Serde, Written};
use crate::topology::builder::{
    Data, KStream, NodeKind, NodeSpec, Partitioner, Produced, add_node, prepare_fn,
};
use crate::topology::error::ProcessingError;
use crate::topology::node::{NodeInstance, TypeSig};
use crate::topology::processor::{Processor, ProcessorContext, ProcessorNode};

struct Sink<K, V> {
    node: Arc<str>,
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
            node: self.node.to_string(),
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
                        self.node, self.topic
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

impl<K: Data, V: Data> KStream<K, V> {
    /// Writes the stream to `topic` with `produced`'s serdes (and partitioner, if any).
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Consumed, Produced};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let s = b.stream("in", ["in"], Consumed::with(Serdes::string(), Serdes::string()));
    /// s.to("out", "output", Produced::with(Serdes::string(), Serdes::string())
    ///     .partitioner(|k: &String, _v: &String, n| k.len() as i32 % n));
    /// ```
    pub fn to(&self, name: &str, topic: &str, produced: Produced<K, V>) {
        let prepare = prepare_fn(
            name,
            vec![topic.to_string()],
            produced.key.clone(),
            produced.value.clone(),
            SerdeRole::Write,
        );
        let key_info = produced.key.info();
        let value_info = produced.value.info();
        let node: Arc<str> = Arc::from(name);
        let topic_name: Arc<str> = Arc::from(topic);
        let factory = Arc::new(move || {
            Box::new(ProcessorNode::<_, K, V, (), ()>::new(Sink {
                node: node.clone(),
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
                    topic: topic.to_string(),
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
