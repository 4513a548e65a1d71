//! `peek` and `for_each`: look at every record for a side effect.

use crate::topology::builder::{Data, KStream};

impl<K: Data, V: Data> KStream<K, V> {
    /// Calls `f` on every record and passes it on unchanged.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Consumed};
    /// # use engine::serde::Serdes;
    /// # let b = TopologyBuilder::new("app");
    /// # let s = b.stream("in", ["in"], Consumed::with(Serdes::string(), Serdes::string()));
    /// let logged = s.peek("log", |k: &String, v: &String| tracing::debug!(%k, %v, "seen"));
    /// ```
    pub fn peek(&self, name: &str, f: impl Fn(&K, &V) + Send + Sync + 'static) -> KStream<K, V> {
        self.attach_pass_through(name, "peek", move |k, v| {
            f(k, v);
            true
        })
    }

    /// Calls `f` on every record; a terminal operation with no output.
    pub fn for_each(&self, name: &str, f: impl Fn(&K, &V) + Send + Sync + 'static) {
        let _: KStream<K, V> = self.attach_pass_through(name, "for_each", move |k, v| {
            f(k, v);
            true
        });
    }
}
