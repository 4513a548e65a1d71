//! The runtime: topologies on Kafka, all on one shared tokio executor.
//!
//! Joins the topology layer to rdkafka. One [`TopologyRunner`] per topology instance:
//! its consumer group is the application id, so more instances share the partitions.
//! At-least-once: an input offset is committed only after everything it caused has been
//! acknowledged by the broker.
//! Global tables are read whole by every instance, outside the group, by a thread each
//! (`global`), bootstrapped before the runner subscribes.

mod global;
mod instances;
mod restore;
mod runner;
mod topics;
mod tracker;
mod transactions;

use std::time::Duration;

use tokio::sync::watch;

use crate::kafka::ClientSettings;
use crate::state::RocksSettings;
use crate::topology::{RecordError, Topology};

pub use instances::instances_topic;
pub use runner::TopologyRunner;

/// The exit code of the `engine` command when a shutdown could not finish within
/// `shutdown_timeout` or was cut short by a second signal.
pub const SHUTDOWN_INCOMPLETE_EXIT_CODE: u8 = 3;

/// How topologies run.
#[derive(Clone, Debug)]
pub struct RunSettings {
    /// Broker address and librdkafka properties.
    pub client: ClientSettings,
    /// How often offsets are committed.
    pub commit_interval: Duration,
    /// Input records whose outputs are unacknowledged before partitions are paused.
    pub max_in_flight: usize,
    /// How long to wait for the broker at start-up.
    pub startup_timeout: Duration,
    /// How long to wait for outputs to be acknowledged at shutdown or revocation.
    pub shutdown_timeout: Duration,
    /// How often wall-clock punctuations are checked.
    pub punctuation_interval: Duration,
    /// Where and how RocksDB stores live.
    pub state: RocksSettings,
    /// Bytes the record caches of this runner's tasks hold together, at most (the
    /// aggregations' caches; 0 writes every update through at once).
    pub cache_max_bytes: usize,
    /// Also flush the record caches when the input has been quiet for a moment (20 ms),
    /// not only before commits (default true: a caught-up task has nothing to coalesce
    /// its cached updates with, so holding them only delays them).
    pub flush_caches_when_idle: bool,
    /// Create missing user topics (sources, sinks, dead-letter and global topics) with
    /// this many partitions (`engine run --create-topics`, for development); `None`: a
    /// missing user topic stops the start.
    pub create_topics: Option<i32>,
    /// Replication factor of the topics the engine creates (-1: the broker's default).
    pub replication_factor: i32,
    /// Extra configurations for every internal topic the engine creates (Kafka Streams'
    /// `topic.*` properties), e.g. `min.insync.replicas`.
    pub internal_topic_configs: std::collections::BTreeMap<String, String>,
    /// How often the committed records of repartition topics are deleted.
    pub repartition_purge_interval: Duration,
    /// At-least-once, or exactly-once with one transactional producer per instance.
    pub processing_guarantee: crate::config::ProcessingGuarantee,
    /// Where health, metrics and stores are reported for the operations endpoint.
    pub ops: Option<std::sync::Arc<crate::ops::OpsState>>,
    /// `host:port` at which other instances reach this one's operations endpoint. With
    /// `ops`, each topology announces its partitions under this address on
    /// [`instances_topic`] and reads the other instances' announcements, so a query for
    /// a key held elsewhere names its owner.
    pub advertised_http: Option<String>,
}

impl RunSettings {
    /// Defaults for everything but the broker address.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        RunSettings {
            client: ClientSettings {
                bootstrap_servers: bootstrap_servers.into(),
                properties: Default::default(),
            },
            commit_interval: Duration::from_millis(crate::config::defaults::COMMIT_INTERVAL_MS),
            max_in_flight: crate::config::defaults::MAX_IN_FLIGHT,
            startup_timeout: Duration::from_millis(crate::config::defaults::STARTUP_TIMEOUT_MS),
            shutdown_timeout: Duration::from_millis(crate::config::defaults::SHUTDOWN_TIMEOUT_MS),
            punctuation_interval: Duration::from_millis(100),
            state: RocksSettings::new(
                std::env::temp_dir().join("engine-state"),
                crate::config::defaults::BLOCK_CACHE_BYTES,
                crate::config::defaults::WRITE_BUFFER_BYTES,
            ),
            cache_max_bytes: crate::config::defaults::CACHE_MAX_BYTES,
            flush_caches_when_idle: true,
            create_topics: None,
            replication_factor: crate::config::defaults::REPLICATION_FACTOR,
            internal_topic_configs: Default::default(),
            repartition_purge_interval: Duration::from_millis(
                crate::config::defaults::REPARTITION_PURGE_INTERVAL_MS,
            ),
            processing_guarantee: Default::default(),
            ops: None,
            advertised_http: None,
        }
    }
}

/// Why a topology stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// No broker answered at start-up.
    #[error(
        "no Kafka broker answered at {bootstrap} within {timeout:?} ({reason}); check KAFKA_BOOTSTRAP_SERVERS / --bootstrap-servers, or use --embedded for a local in-process broker"
    )]
    BrokerUnreachable {
        /// The address tried.
        bootstrap: String,
        /// How long it waited.
        timeout: Duration,
        /// librdkafka's message.
        reason: String,
    },
    /// Topics the topology reads or writes do not exist (internal topics are created).
    #[error("topics missing on the broker at {bootstrap}: {}. Create them (kafka-topics.sh --bootstrap-server {bootstrap} --create --topic NAME --partitions N), or for development pass --create-topics, start `engine dev --topic NAME:N`, or run with --embedded", topics.join(", "))]
    MissingTopics {
        /// The broker.
        bootstrap: String,
        /// The missing topics.
        topics: Vec<String>,
    },
    /// Existing internal topics do not fit the topology (partition count, cleanup policy).
    #[error("internal topics do not fit the topology:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    InternalTopics {
        /// Each problem with its fix.
        problems: Vec<String>,
    },
    /// A Kafka client could not be created or used.
    #[error("kafka {what} failed: {reason}")]
    Client {
        /// Which client or operation.
        what: &'static str,
        /// librdkafka's message.
        reason: String,
    },
    /// Serdes could not get ready (e.g. the registry is down and `fallback = fail`).
    #[error("serdes not ready:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Serdes {
        /// Every failure.
        problems: Vec<String>,
    },
    /// The topics do not fit the topology (e.g. a join's inputs are not co-partitioned).
    #[error("{0}")]
    Topology(crate::topology::TopologyError),
    /// A record failed and the error policy says `fail`; its offset was not committed.
    #[error(
        "stopped by the error policy (its offset is not committed; fix the cause or change the policy, then restart): {0}"
    )]
    Record(RecordError),
    /// The shutdown did not finish within `shutdown_timeout` (the broker did not answer,
    /// or outputs stayed unacknowledged): the offsets named were not committed, and the
    /// records after the last committed offsets will be processed again.
    #[error(
        "shutdown of `{application}` incomplete: {unfinished}; {} input records had unacknowledged outputs{}. The next start processes the records after the last committed offsets again",
        in_flight,
        if uncommitted.is_empty() { String::new() } else {
            format!("; offsets not committed: {}", uncommitted.iter().map(|(t, p, o)| format!("{t}/{p}@{o}")).collect::<Vec<_>>().join(", "))
        }
    )]
    ShutdownIncomplete {
        /// The topology.
        application: String,
        /// What could not be finished.
        unfinished: String,
        /// `(topic, partition, offset)` commits that did not go through.
        uncommitted: Vec<(String, i32, i64)>,
        /// Input records whose outputs were still unacknowledged.
        in_flight: usize,
    },
    /// The configuration does not fit the topology; the message says how to fix it.
    #[error("configuration refused: {0}")]
    Config(String),
    /// A topology task panicked or was cancelled.
    #[error("topology `{application}` crashed: {reason}")]
    Crashed {
        /// The topology.
        application: String,
        /// What happened.
        reason: String,
    },
}

/// Tells runners to stop. Cloneable; every clone sees the same trigger.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// Fires a [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl ShutdownTrigger {
    /// Asks every runner to drain, commit and stop.
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// A shutdown signal and its trigger.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// A shutdown that fires on SIGINT or SIGTERM. A second signal ends the process at
    /// once with [`SHUTDOWN_INCOMPLETE_EXIT_CODE`], without waiting for the drain and
    /// commit (what was not committed is processed again after a restart). Must be called
    /// inside a tokio runtime.
    pub fn on_signals() -> Shutdown {
        let (trigger, shutdown) = Shutdown::new();
        let mut signals = Signals::new();
        tokio::spawn(async move {
            signals.next().await;
            tracing::info!(
                "signal received: draining, committing and stopping (a second signal stops at once)"
            );
            trigger.trigger();
            signals.next().await;
            tracing::warn!(
                "second signal: stopping now; offsets not yet committed will be processed again after a restart"
            );
            std::process::exit(i32::from(SHUTDOWN_INCOMPLETE_EXIT_CODE));
        });
        shutdown
    }

    /// True once triggered.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until triggered (or the trigger is dropped).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// SIGINT and SIGTERM, listened to from creation on (so a signal between two waits is
/// not missed).
struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Signals {
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Signals(
            signal(SignalKind::interrupt())
                .and_then(|int| Ok((int, signal(SignalKind::terminate())?)))
                .ok(),
        )
    }

    async fn next(&mut self) {
        match &mut self.0 {
            Some((int, term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// Runs several topologies on the current tokio runtime until `shutdown`; the first
/// fatal error stops the others cleanly and is returned.
pub async fn run_topologies(
    topologies: Vec<Topology>,
    settings: RunSettings,
    mut shutdown: Shutdown,
) -> Result<(), RuntimeError> {
    let (stop_all, stop) = Shutdown::new();
    let mut handles = tokio::task::JoinSet::new();
    for topology in topologies {
        let application = topology.application_id().to_string();
        let runner = TopologyRunner::new(topology, settings.clone());
        let stop = stop.clone();
        handles.spawn(async move { (application, runner.run(stop).await) });
    }
    let mut first_error = None;
    loop {
        tokio::select! {
            _ = shutdown.wait(), if !stop.is_triggered() => stop_all.trigger(),
            joined = handles.join_next() => match joined {
                None => break,
                Some(Ok((_, Ok(())))) => {}
                Some(Ok((application, Err(error)))) => {
                    tracing::error!(%application, %error, "topology failed");
                    first_error.get_or_insert(error);
                    stop_all.trigger();
                }
                Some(Err(join_error)) => {
                    first_error.get_or_insert(RuntimeError::Crashed {
                        application: "?".into(),
                        reason: join_error.to_string(),
                    });
                    stop_all.trigger();
                }
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}
