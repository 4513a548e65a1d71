//! Whole-topology validation: every problem is found and reported at once, so a user
//! fixes a topology in one pass (duplicate names, dangling nodes and edges, cycles, type
//! and serde mismatches between connected nodes).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::serde::short_type_name;

use std::any::TypeId;

use super::builder::{GlobalDef, NodeKind, NodeSpec, StoreDef};
use super::error::Problem;
use super::node::TypeSig;
use super::operators::branch::BranchTypes;

/// Operators without side effects: if their output goes nowhere they are dead code.
const PURE_OPERATORS: &[&str] = &[
    "map",
    "map_values",
    "filter",
    "flat_map",
    "flat_map_values",
    "filter_map_values",
    "select_key",
    "merge",
    "branch",
    "to_stream",
    "join_table",
    "left_join_table",
    "join_tables",
    "left_join_tables",
    "outer_join_tables",
    "join_global",
    "left_join_global",
];

pub(crate) fn problems(
    nodes: &[NodeSpec],
    stores: &[StoreDef],
    globals: &[GlobalDef],
    routes: &[(String, String)],
) -> Vec<Problem> {
    let mut problems = Vec::new();

    let mut store_names = HashSet::new();
    for store in stores.iter().chain(globals.iter().map(|g| &g.store)) {
        if !valid_name(&store.spec.name) {
            problems.push(Problem::BadName {
                name: store.spec.name.clone(),
            });
        }
        if !store_names.insert(store.spec.name.as_str()) {
            problems.push(Problem::DuplicateName {
                name: store.spec.name.clone(),
            });
        }
    }
    for (path, store) in routes {
        if !store_names.contains(store.as_str()) || !path.starts_with('/') {
            problems.push(Problem::UnknownStore {
                node: format!("route {path}"),
                store: store.clone(),
            });
        }
    }
    for node in nodes {
        for store in &node.stores {
            if !store_names.contains(store.as_str()) {
                problems.push(Problem::UnknownStore {
                    node: node.name.clone(),
                    store: store.clone(),
                });
            }
        }
    }

    if !nodes
        .iter()
        .any(|n| matches!(n.kind, NodeKind::Source { .. }))
    {
        problems.push(Problem::NoSource);
    }

    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut reported_duplicates = HashSet::new();
    for (i, node) in nodes.iter().enumerate() {
        if !valid_name(&node.name) {
            problems.push(Problem::BadName {
                name: node.name.clone(),
            });
        }
        if index.insert(node.name.as_str(), i).is_some()
            && reported_duplicates.insert(node.name.as_str())
        {
            problems.push(Problem::DuplicateName {
                name: node.name.clone(),
            });
        }
    }
    // With duplicates, edges resolve to the first node of a name.
    for (i, node) in nodes.iter().enumerate() {
        index
            .entry(node.name.as_str())
            .and_modify(|e| *e = (*e).min(i));
    }

    let mut children: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, node) in nodes.iter().enumerate() {
        for parent in &node.parents {
            match index.get(parent.as_str()) {
                None => problems.push(Problem::UnknownParent {
                    node: node.name.clone(),
                    parent: parent.clone(),
                }),
                Some(&p) => {
                    children[p].push(i);
                    check_types(&nodes[p], node, &mut problems);
                }
            }
        }
    }

    // Cycles: depth-first search with colours; each cycle reported once by its node set.
    let mut colour = vec![0u8; nodes.len()];
    let mut stack = Vec::new();
    let mut seen_cycles = HashSet::new();
    for start in 0..nodes.len() {
        if colour[start] == 0 {
            find_cycles(
                start,
                &children,
                &mut colour,
                &mut stack,
                nodes,
                &mut problems,
                &mut seen_cycles,
            );
        }
    }

    // Reachability from sources.
    let mut reached = vec![false; nodes.len()];
    let mut queue: Vec<usize> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.kind, NodeKind::Source { .. }))
        .map(|(i, _)| i)
        .collect();
    while let Some(i) = queue.pop() {
        if !reached[i] {
            reached[i] = true;
            queue.extend(children[i].iter().copied());
        }
    }
    for (i, node) in nodes.iter().enumerate() {
        if !reached[i] {
            problems.push(Problem::Unreachable {
                node: node.name.clone(),
            });
        }
        let pure = match &node.kind {
            NodeKind::Source { .. } => true,
            NodeKind::Processor { operator, .. } => PURE_OPERATORS.contains(operator),
            NodeKind::Sink { .. } => false,
        };
        if pure && children[i].is_empty() {
            problems.push(Problem::NoOutput {
                node: node.name.clone(),
            });
        }
    }

    // Topics read twice, and topics written and read back with other serdes.
    let mut readers: BTreeMap<&str, Vec<&NodeSpec>> = BTreeMap::new();
    for node in nodes {
        if let NodeKind::Source { topics, .. } = &node.kind {
            for t in topics {
                readers.entry(t.as_str()).or_default().push(node);
            }
        }
    }
    for (topic, sources) in &readers {
        if sources.len() > 1 {
            problems.push(Problem::TopicReadTwice {
                topic: topic.to_string(),
                sources: sources.iter().map(|s| s.name.clone()).collect(),
            });
        }
    }
    // A global table's topic is read whole by every instance: no stream or other global
    // table may read it too (as in Kafka Streams).
    let mut global_readers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for global in globals {
        if !valid_name(&global.name) {
            problems.push(Problem::BadName {
                name: global.name.clone(),
            });
        }
        global_readers
            .entry(global.topic.as_str())
            .or_default()
            .push(global.name.clone());
    }
    for (topic, names) in global_readers {
        let streams = readers.get(topic).map(Vec::as_slice).unwrap_or_default();
        if names.len() + streams.len() > 1 {
            problems.push(Problem::TopicReadTwice {
                topic: topic.to_string(),
                sources: streams
                    .iter()
                    .map(|s| s.name.clone())
                    .chain(names)
                    .collect(),
            });
        }
    }
    for node in nodes {
        if let NodeKind::Sink {
            topic,
            key: sink_key,
            value: sink_value,
            ..
        } = &node.kind
        {
            for source in readers.get(topic.as_str()).into_iter().flatten() {
                if let NodeKind::Source { key, value, .. } = &source.kind
                    && (key != sink_key || value != sink_value)
                {
                    problems.push(Problem::SerdeMismatch {
                        topic: topic.clone(),
                        sink: format!("`{}` (key {sink_key}, value {sink_value})", node.name),
                        source: format!("`{}` (key {key}, value {value})", source.name),
                    });
                }
            }
        }
    }
    problems
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn describe_sig(sig: &TypeSig) -> String {
    format!(
        "({}, {})",
        short_type_name(sig.key_name),
        short_type_name(sig.value_name)
    )
}

fn check_types(parent: &NodeSpec, child: &NodeSpec, problems: &mut Vec<Problem>) {
    match (&parent.output, &child.input) {
        // A split's router gives each branch the types that branch declared.
        (Some(out), Some(_)) if out.value == TypeId::of::<BranchTypes>() => {}
        (Some(out), Some(input)) if out.key != input.key || out.value != input.value => problems
            .push(Problem::TypeMismatch {
                parent: parent.name.clone(),
                child: child.name.clone(),
                produces: describe_sig(out),
                expects: describe_sig(input),
            }),
        (None, _) => problems.push(Problem::TypeMismatch {
            parent: parent.name.clone(),
            child: child.name.clone(),
            produces: "nothing (it is a sink)".into(),
            expects: child
                .input
                .as_ref()
                .map(describe_sig)
                .unwrap_or_else(|| "nothing".into()),
        }),
        (Some(out), None) => problems.push(Problem::TypeMismatch {
            parent: parent.name.clone(),
            child: child.name.clone(),
            produces: describe_sig(out),
            expects: "no input (it is a source)".into(),
        }),
        _ => {}
    }
}

fn find_cycles(
    node: usize,
    children: &[Vec<usize>],
    colour: &mut [u8],
    stack: &mut Vec<usize>,
    nodes: &[NodeSpec],
    problems: &mut Vec<Problem>,
    seen: &mut HashSet<Vec<usize>>,
) {
    colour[node] = 1;
    stack.push(node);
    for &child in &children[node] {
        match colour[child] {
            0 => find_cycles(child, children, colour, stack, nodes, problems, seen),
            1 => {
                let from = stack.iter().position(|&n| n == child).unwrap_or(0);
                let cycle: Vec<usize> = stack[from..].to_vec();
                let mut key = cycle.clone();
                key.sort_unstable();
                if seen.insert(key) {
                    let mut path: Vec<String> =
                        cycle.iter().map(|&i| nodes[i].name.clone()).collect();
                    path.push(nodes[child].name.clone());
                    problems.push(Problem::Cycle { path });
                }
            }
            _ => {}
        }
    }
    stack.pop();
    colour[node] = 2;
}
