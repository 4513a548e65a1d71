//! [`Topic`]: a topic's name with the serdes of its keys and values, declared once and
//! used by every source and sink of it (`b.stream(&orders)`, `.to(&orders)`), so the
//! two sides of a topic cannot disagree on its serdes.

use std::sync::Arc;

use crate::serde::Serde;

/// Chooses a partition from the key, the value and the topic's partition count.
pub type Partitioner<K, V> = Arc<dyn Fn(&K, &V, i32) -> i32 + Send + Sync>;

/// A topic with the serdes of its keys and values (and, for sinks, an optional
/// partitioner). Cheap to clone: the serdes are shared.
///
/// ```
/// use engine::serde::Serdes;
/// use engine::topology::{Topic, TopologyBuilder};
///
/// let words = Topic::new("words", Serdes::string(), Serdes::string());
/// let shouts = Topic::new("shouts", Serdes::string(), Serdes::string());
/// let b = TopologyBuilder::new("shout");
/// b.stream(&words)
///     .map_values(|v: String| v.to_uppercase())
///     .to(&shouts);
/// let topology = b.build().unwrap();
/// assert_eq!(topology.source_topics(), ["words"]);
/// assert_eq!(topology.sink_topics(), ["shouts"]);
/// ```
pub struct Topic<K, V> {
    pub(crate) name: String,
    pub(crate) key: Arc<dyn Serde<K>>,
    pub(crate) value: Arc<dyn Serde<V>>,
    pub(crate) partitioner: Option<Partitioner<K, V>>,
}

impl<K, V> Clone for Topic<K, V> {
    fn clone(&self) -> Self {
        Topic {
            name: self.name.clone(),
            key: self.key.clone(),
            value: self.value.clone(),
            partitioner: self.partitioner.clone(),
        }
    }
}

impl<K: 'static, V: 'static> std::fmt::Debug for Topic<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topic")
            .field("name", &self.name)
            .field("key", &self.key.info())
            .field("value", &self.value.info())
            .field("partitioner", &self.partitioner.is_some())
            .finish()
    }
}

impl<K, V> Topic<K, V> {
    /// Topic `name`, whose keys `key` and values `value` read and write.
    pub fn new(name: impl Into<String>, key: impl Serde<K>, value: impl Serde<V>) -> Self {
        Topic {
            name: name.into(),
            key: Arc::new(key),
            value: Arc::new(value),
            partitioner: None,
        }
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sinks of this handle choose the partition with `f(key, value, partition_count)`
    /// (the result is taken modulo the count) instead of the producer's hash of the key.
    pub fn partitioner(mut self, f: impl Fn(&K, &V, i32) -> i32 + Send + Sync + 'static) -> Self {
        self.partitioner = Some(Arc::new(f));
        self
    }

    /// The key serde.
    pub fn key_serde(&self) -> Arc<dyn Serde<K>> {
        self.key.clone()
    }

    /// The value serde.
    pub fn value_serde(&self) -> Arc<dyn Serde<V>> {
        self.value.clone()
    }
}
