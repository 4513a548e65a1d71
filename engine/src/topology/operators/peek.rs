//! `peek` and `for_each`: look at every record for a side effect.

use crate::topology::builder::{Data, KStream};

use super::to::Terminal;

impl<K: Data, V: Data> KStream<K, V> {
    /// Calls `f` on every record and passes it on unchanged.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let s = b.stream(&Topic::new("in", Serdes::string(), Serdes::string()));
    /// let logged = s.peek(|k: &String, v: &String| tracing::debug!(%k, %v, "seen"));
    /// ```
    pub fn peek(&self, f: impl Fn(&K, &V) + Send + Sync + 'static) -> KStream<K, V> {
        let name = self.generate_name("peek");
        self.attach_pass_through(&name, "peek", move |k, v| {
            f(k, v);
            Ok(true)
        })
    }

    /// Calls `f` on every record; a terminal operation with no output.
    pub fn for_each(&self, f: impl Fn(&K, &V) + Send + Sync + 'static) -> Terminal {
        let name = self.generate_name("for_each");
        let _: KStream<K, V> = self.attach_pass_through(&name, "for_each", move |k, v| {
            f(k, v);
            Ok(true)
        });
        Terminal {
            state: self.state.clone(),
            node: name,
        }
    }
}
