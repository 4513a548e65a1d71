//! `Topology::describe`: the shape of a topology as text (in the spirit of Kafka Streams'
//! `Topology#describe`) and as a Mermaid flowchart.

use std::fmt::Write;

use super::builder::{NodeKind, Topology};

impl Topology {
    /// Sub-topologies with their sources, processors and sinks, each with its edges.
    pub fn describe(&self) -> String {
        let inner = &self.inner;
        let mut out = String::new();
        let _ = writeln!(out, "Topology: {}", inner.application_id);
        let policy = &inner.error_policy;
        let _ = writeln!(
            out,
            "Error policy: deserialization={:?} processing={:?} production={:?}",
            policy.deserialization, policy.processing, policy.production
        );
        for (number, members) in self.sub_topologies().iter().enumerate() {
            let _ = writeln!(out, "   Sub-topology: {number}");
            for &i in members {
                let node = &inner.nodes[i];
                match &node.kind {
                    NodeKind::Source {
                        topics, key, value, ..
                    } => {
                        let _ = writeln!(
                            out,
                            "    Source: {} (topics: [{}]) (key: {key}, value: {value})",
                            node.name,
                            topics.join(", ")
                        );
                    }
                    NodeKind::Processor { operator, .. } => {
                        let _ = writeln!(out, "    Processor: {} ({operator})", node.name);
                    }
                    NodeKind::Sink {
                        topic, key, value, ..
                    } => {
                        let _ = writeln!(
                            out,
                            "    Sink: {} (topic: {topic}) (key: {key}, value: {value})",
                            node.name
                        );
                    }
                }
                let children: Vec<&str> = inner.child_names[i].iter().map(|c| &**c).collect();
                if !children.is_empty() {
                    let _ = writeln!(out, "      --> {}", children.join(", "));
                }
                if !node.parents.is_empty() {
                    let _ = writeln!(out, "      <-- {}", node.parents.join(", "));
                }
            }
        }
        for global in &inner.globals {
            let _ = writeln!(
                out,
                "   Global table: {} (topic: {}) (store: {})",
                global.name, global.topic, global.store.spec.name
            );
        }
        let internal = self.internal_topics();
        if !internal.is_empty() {
            let _ = writeln!(
                out,
                "Internal topics (created at start-up when missing; one partition per task):"
            );
            for topic in internal {
                let configs: Vec<String> = topic
                    .configs
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let _ = writeln!(
                    out,
                    "   {} ({}) ({})",
                    topic.name,
                    topic.role,
                    configs.join(", ")
                );
            }
        }
        out
    }

    /// The topology as a Mermaid flowchart: topics are cylinders, nodes are boxes.
    pub fn describe_mermaid(&self) -> String {
        let inner = &self.inner;
        let mut out = String::from("flowchart LR\n");
        let id = |i: usize| format!("n{i}");
        let topic_id = |t: &str| {
            format!(
                "t_{}",
                t.chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect::<String>()
            )
        };
        let mut topics = std::collections::BTreeSet::new();
        for (number, members) in self.sub_topologies().iter().enumerate() {
            let _ = writeln!(out, "  subgraph sub{number}[\"sub-topology {number}\"]");
            for &i in members {
                let node = &inner.nodes[i];
                let label = match &node.kind {
                    NodeKind::Source { .. } => format!("source: {}", node.name),
                    NodeKind::Processor { operator, .. } => format!("{operator}: {}", node.name),
                    NodeKind::Sink { .. } => format!("sink: {}", node.name),
                };
                let _ = writeln!(out, "    {}[\"{label}\"]", id(i));
            }
            let _ = writeln!(out, "  end");
        }
        for (i, node) in inner.nodes.iter().enumerate() {
            match &node.kind {
                NodeKind::Source { topics: ts, .. } => {
                    for t in ts {
                        topics.insert(t.clone());
                        let _ = writeln!(out, "  {} --> {}", topic_id(t), id(i));
                    }
                }
                NodeKind::Sink { topic, .. } => {
                    topics.insert(topic.clone());
                    let _ = writeln!(out, "  {} --> {}", id(i), topic_id(topic));
                }
                NodeKind::Processor { .. } => {}
            }
            for &child in &inner.children[i] {
                let _ = writeln!(out, "  {} --> {}", id(i), id(child));
            }
        }
        for t in &topics {
            let _ = writeln!(out, "  {}[(\"{t}\")]", topic_id(t));
        }
        out
    }

    /// Connected components of the node graph, each in declaration order.
    fn sub_topologies(&self) -> Vec<Vec<usize>> {
        let n = self.inner.nodes.len();
        let mut parent: Vec<usize> = (0..n).collect();
        fn find(parent: &mut [usize], mut x: usize) -> usize {
            while parent[x] != x {
                parent[x] = parent[parent[x]];
                x = parent[x];
            }
            x
        }
        for (i, children) in self.inner.children.iter().enumerate() {
            for &c in children {
                let (a, b) = (find(&mut parent, i), find(&mut parent, c));
                parent[a.max(b)] = a.min(b);
            }
        }
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for i in 0..n {
            let root = find(&mut parent, i);
            match groups.iter_mut().find(|(r, _)| *r == root) {
                Some((_, members)) => members.push(i),
                None => groups.push((root, vec![i])),
            }
        }
        groups.into_iter().map(|(_, m)| m).collect()
    }
}
