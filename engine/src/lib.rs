//! A stream-processing engine in the style of Kafka Streams: topologies declared in Rust
//! (source -> transforms -> sink) with typed serdes, run on Kafka through rdkafka, and
//! testable in-process without a broker.
//!
//! - [`topology`]: the DSL ([`topology::TopologyBuilder`], [`topology::KStream`]) and the
//!   per-partition executor.
//! - [`serde`]: how keys and values become bytes, including Avro in the Confluent wire format.
//! - [`registry`]: a Confluent Schema Registry client, an in-memory registry and its REST
//!   server (the `engine-registry` crate; a program that is not a topology can use it, and
//!   `engine-avro`, the codec, alone).
//! - [`state`]: key-value stores (RocksDB or memory) with changelogs.
//! - [`testing`]: the test driver, Kafka Streams' `TopologyTestDriver` equivalent.
//! - [`kafka`]: client configuration and the embedded broker (librdkafka's mock cluster).
//! - [`runtime`]: runs topologies on Kafka with at-least-once delivery.
//! - [`ops`]: the operations endpoint (health, Prometheus metrics, interactive queries).
//! - [`config`] and [`cli`]: the `engine` command, reusable from your own `main`.

pub mod catalog;
pub mod cli;
pub mod config;
mod executor;
pub mod kafka;
pub mod metrics;
pub mod ops;
pub mod record;
/// The schema registry (the `engine-registry` crate, with its `http` and `server`
/// features).
pub use engine_registry as registry;
pub mod runtime;
pub mod serde;
pub mod state;
pub mod testing;
pub mod topology;

pub use catalog::{BuildContext, Catalog};
