//! The topology DSL: declaring a graph of sources, operators and sinks with typed keys
//! and values, validating it, describing it, and executing it one partition at a time
//! ([`Task`]).
//!
//! Knows serdes only through the [`Serde`](crate::serde::Serde) trait and no Kafka client,
//! so the test driver can run any topology without a broker. May depend on `record`,
//! `serde` and `metrics`.

pub(crate) mod builder;
mod describe;
mod error;
mod internal;
pub(crate) mod node;
mod operators;
mod policy;
mod processor;
pub(crate) mod task;
mod topic;
mod validate;

pub use builder::{Data, KStream, StoreBuilder, StoreRef, Topology, TopologyBuilder};
pub use error::{
    DecodeError, ErrorClass, Problem, ProcessingError, RecordError, Result, TopologyError,
};
pub use internal::{InternalTopic, InternalTopicRole, WINDOWED_CHANGELOG_ADDITIONAL_RETENTION};
pub use node::TaskStore;
pub(crate) use node::{
    CHANGELOG_DEFERRED, CHANGELOG_EPOCH, CHANGELOG_FENCE_KEY, CHANGELOG_LAST, CHANGELOG_POSITIONS,
};
pub use operators::{
    Branch, Emit, FirstSeen, GlobalKTable, Grouped, JoinWindows, Joined, KGroupedStream, KTable,
    LateRecords, SessionWindowedKStream, SessionWindows, Split, StreamJoined, Terminal,
    TimeWindowedKStream, TimeWindows, Windowed, WindowedSerde, Windowing,
};
pub use policy::{ErrorPolicy, OnError, headers as dead_letter_headers};
pub use processor::{Deferred, Processor, ProcessorContext, PunctuationType, ScheduleId};
pub(crate) use task::decode_deferred;
pub use task::{Outcome, Task};
pub use topic::{Partitioner, Topic};

pub(crate) use task::dead_letter_record;
