//! Errors of the topology layer: building and validating a topology, and the errors a
//! record can meet on its way through one (which the error policy then routes).

use std::fmt;

use crate::serde::SerdeError;

/// Result of topology operations.
pub type Result<T, E = TopologyError> = std::result::Result<T, E>;

/// A topology that cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// `validate()` found problems; all of them are listed.
    #[error("topology `{topology}` is invalid:\n{}", list(.problems))]
    Invalid {
        /// Application id of the topology.
        topology: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
    /// An Avro schema given to a serde could not be used (it does not parse, or does not
    /// fit the Rust type).
    #[error("{0}")]
    Schema(#[from] crate::serde::avro::AvroError),
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One thing wrong with a topology's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// `named` was called on a node whose name its operator fixed.
    FixedName {
        /// The node's name.
        node: String,
        /// The name asked for.
        name: String,
    },
    /// Two nodes share a name.
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A node names a parent that does not exist.
    UnknownParent {
        /// The node.
        node: String,
        /// The missing parent.
        parent: String,
    },
    /// A node no source feeds.
    Unreachable {
        /// The node.
        node: String,
    },
    /// A processor or source whose records go nowhere.
    NoOutput {
        /// The node.
        node: String,
    },
    /// Nodes that feed each other in a loop.
    Cycle {
        /// The nodes of the loop, in order.
        path: Vec<String>,
    },
    /// A child expects other key or value types than its parent produces.
    TypeMismatch {
        /// Parent node.
        parent: String,
        /// Child node.
        child: String,
        /// What the parent produces.
        produces: String,
        /// What the child expects.
        expects: String,
    },
    /// A topic is written and read in this topology with serdes that disagree.
    SerdeMismatch {
        /// The topic.
        topic: String,
        /// The sink writing it and its serdes.
        sink: String,
        /// The source reading it and its serdes.
        source: String,
    },
    /// Two sources read the same topic.
    TopicReadTwice {
        /// The topic.
        topic: String,
        /// The sources.
        sources: Vec<String>,
    },
    /// A topology with no source.
    NoSource,
    /// A node uses a store that was not added with `add_store`.
    UnknownStore {
        /// The node.
        node: String,
        /// The store.
        store: String,
    },
    /// A serde could not be built (for example its schema does not parse).
    Serde {
        /// The node.
        node: String,
        /// What is wrong.
        message: String,
    },
    /// A node name that is empty or has characters topic and store names cannot carry.
    BadName {
        /// The name.
        name: String,
    },
    /// An option of the topology's `[topologies.NAME]` configuration table is wrong.
    BadOption {
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The inputs of a join read topics with different partition counts, so records of
    /// one key would meet in different tasks.
    NotCoPartitioned {
        /// The join node.
        join: String,
        /// Each input topic with its partition count.
        topics: Vec<(String, i32)>,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::DuplicateName { name } => write!(
                f,
                "duplicate node name `{name}`: give each node its own name"
            ),
            Problem::UnknownParent { node, parent } => write!(
                f,
                "node `{node}` names parent `{parent}`, which does not exist (dangling edge)"
            ),
            Problem::Unreachable { node } => {
                write!(f, "node `{node}` is not fed by any source (dangling node)")
            }
            Problem::NoOutput { node } => write!(
                f,
                "node `{node}` has no children: its records go nowhere (add a sink, or use for_each for side effects)"
            ),
            Problem::Cycle { path } => write!(f, "cycle: {}", path.join(" -> ")),
            Problem::TypeMismatch {
                parent,
                child,
                produces,
                expects,
            } => write!(
                f,
                "`{parent}` produces {produces} but its child `{child}` expects {expects}"
            ),
            Problem::SerdeMismatch {
                topic,
                sink,
                source,
            } => write!(
                f,
                "topic `{topic}` is written by {sink} but read by {source}: the serdes must agree"
            ),
            Problem::TopicReadTwice { topic, sources } => write!(
                f,
                "topic `{topic}` is read by several sources ({}); read it once and share the stream",
                sources.join(", ")
            ),
            Problem::NoSource => write!(
                f,
                "the topology has no source: add one with `builder.stream(..)`"
            ),
            Problem::UnknownStore { node, store } => write!(
                f,
                "node `{node}` uses store `{store}`, which was never added (builder.add_store)"
            ),
            Problem::Serde { node, message } => write!(f, "serde of node `{node}`: {message}"),
            Problem::BadName { name } => write!(
                f,
                "node name `{name}` must be non-empty and use only ASCII letters, digits, '.', '_' and '-'"
            ),
            Problem::FixedName { node, name } => write!(
                f,
                "node `{node}` cannot be renamed `{name}`: its name was given where it was declared (it names a store, an internal topic or a branch); pass `{name}` to the operator instead of calling `named`"
            ),
            Problem::BadOption { message } => write!(f, "configuration option: {message}"),
            Problem::NotCoPartitioned { join, topics } => write!(
                f,
                "join `{join}` reads topics with different partition counts ({}): both sides must be co-partitioned; repartition one side to the other's partition count",
                topics
                    .iter()
                    .map(|(t, n)| format!("`{t}`: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// A processor's failure on one record or punctuation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessingError {
    /// The processor refused the record.
    #[error("{}{message}", field_prefix(.field))]
    Failed {
        /// The field at fault, when the processor knows it.
        field: Option<String>,
        /// What went wrong.
        message: String,
    },
    /// The processor panicked; the panic was caught so the task survives.
    #[error("node `{node}` panicked: {message}")]
    Panicked {
        /// The node.
        node: String,
        /// The panic message.
        message: String,
    },
    /// A record reached a node built for other types (only possible through by-name wiring
    /// that `validate()` would have reported).
    #[error("node `{node}` received a record that is not {expected}")]
    TypeMismatch {
        /// The node.
        node: String,
        /// The type it expected.
        expected: &'static str,
    },
    /// `forward_to` named a child that is not connected.
    #[error("node `{node}` forwarded to `{child}`, which is not one of its children {children:?}")]
    UnknownChild {
        /// The node.
        node: String,
        /// The requested child.
        child: String,
        /// Its real children.
        children: Vec<String>,
    },
    /// A store could not be read or written.
    #[error("{0}")]
    Store(#[from] crate::state::StoreError),
    /// A serde failed inside a processor (a sink's failure is [`Self::Serialize`]).
    #[error("{0}")]
    Serde(#[from] SerdeError),
    /// A sink could not serialize.
    #[error("sink `{node}` could not serialize the {part} for topic `{topic}`: {source}")]
    Serialize {
        /// The sink.
        node: String,
        /// The topic.
        topic: String,
        /// `key` or `value`.
        part: &'static str,
        /// The serde's error.
        source: SerdeError,
    },
}

fn field_prefix(field: &Option<String>) -> String {
    match field {
        Some(f) => format!("field `{f}`: "),
        None => String::new(),
    }
}

impl ProcessingError {
    /// A processing failure with a message.
    pub fn new(message: impl Into<String>) -> Self {
        ProcessingError::Failed {
            field: None,
            message: message.into(),
        }
    }

    /// A processing failure about one field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ProcessingError::Failed {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub(crate) fn field_name(&self) -> Option<&str> {
        match self {
            ProcessingError::Failed { field, .. } => field.as_deref(),
            ProcessingError::Serialize { source, .. } | ProcessingError::Serde(source) => {
                source.field()
            }
            _ => None,
        }
    }
}

/// A source could not decode a record.
#[derive(Debug, thiserror::Error)]
#[error("could not deserialize the {part}: {source}")]
pub struct DecodeError {
    /// `key` or `value`.
    pub part: &'static str,
    /// The serde's error.
    pub source: SerdeError,
}

/// Which stage a record failed in; each has its own error policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The bytes could not be decoded.
    Deserialization,
    /// A processor failed or panicked, or a sink could not serialize.
    Processing,
    /// The broker did not accept a produced record.
    Production,
}

impl ErrorClass {
    /// Lower-case name, used in logs, metrics and dead-letter headers.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Deserialization => "deserialization",
            ErrorClass::Processing => "processing",
            ErrorClass::Production => "production",
        }
    }
}

/// A record that failed, with where it came from: what the error policy acts on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} error on topic `{topic}` partition {partition} offset {offset}{}: {message}", class.as_str(), field.as_ref().map(|f| format!(" field `{f}`")).unwrap_or_default())]
pub struct RecordError {
    /// The stage.
    pub class: ErrorClass,
    /// Source topic (or the destination topic, for production errors).
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset (-1 for a record produced by a punctuation).
    pub offset: i64,
    /// The field at fault, when known.
    pub field: Option<String>,
    /// What went wrong.
    pub message: String,
}
