//! `merge`: one stream with the records of two.

use crate::topology::builder::{Data, KStream};

use super::branch::pass_through;

impl<K: Data, V: Data> KStream<K, V> {
    /// The records of both streams, each stream's order kept (no order between them).
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Consumed};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// let a = b.stream("a", ["a"], Consumed::with(Serdes::string(), Serdes::string()));
    /// let c = b.stream("c", ["c"], Consumed::with(Serdes::string(), Serdes::string()));
    /// let both = a.merge("both", &c);
    /// ```
    pub fn merge(&self, name: &str, other: &KStream<K, V>) -> KStream<K, V> {
        pass_through(
            self,
            name,
            "merge",
            vec![self.node.clone(), other.node.clone()],
        )
    }
}
