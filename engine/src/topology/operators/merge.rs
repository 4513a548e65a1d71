//! `merge`: one stream with the records of two.

use crate::topology::builder::{Data, KStream};

use super::branch::pass_through;

impl<K: Data, V: Data> KStream<K, V> {
    /// The records of both streams, each stream's order kept (no order between them).
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// let a = b.stream(&Topic::new("a", Serdes::string(), Serdes::string()));
    /// let c = b.stream(&Topic::new("c", Serdes::string(), Serdes::string()));
    /// let both = a.merge(&c);
    /// ```
    pub fn merge(&self, other: &KStream<K, V>) -> KStream<K, V> {
        let name = self.generate_name("merge");
        pass_through(
            self,
            &name,
            "merge",
            vec![self.node.clone(), other.node.clone()],
        )
    }
}
