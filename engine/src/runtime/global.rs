//! Global tables on Kafka: one thread per global table reads EVERY partition of its topic
//! into the table's store, with a consumer of its own (manual assignment, no group, no
//! committed offsets).
//!
//! Start-up reads each partition up to the end offset it had when the runtime started
//! (the bootstrap) before the runner subscribes, so no stream task processes a record
//! before the table is complete; the thread then follows the topic until shutdown.
//!
//! The topic is the table's changelog. The checkpoint (`<store dir>.checkpoint`, one
//! `partition offset` line per partition) is written on clean close and deleted on open,
//! as for the tasks' stores: a store whose checkpoint is missing or does not fit the
//! topic (other partitions, offsets outside the retained range) is wiped and rebuilt
//! from the beginning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{ClientRole, ClientSettings, kafka_reason};
use crate::metrics::TopologyMetrics;
use crate::state::{BytesStore, StoreKind};
use crate::topology::{TaskStore, Topology};

use super::{RunSettings, RuntimeError};

/// Next offset to read, per partition.
type Positions = BTreeMap<i32, i64>;

/// The global tables of one runner: their stores and the threads keeping them current.
pub(crate) struct GlobalTables {
    stores: Arc<Vec<TaskStore>>,
    updaters: Vec<Updater>,
}

struct Updater {
    store: String,
    topic: String,
    bytes: Arc<dyn BytesStore>,
    checkpoint: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Positions>>,
}

impl Drop for Updater {
    fn drop(&mut self) {
        // An updater dropped without `close` (start-up failed) must not poll forever.
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn checkpoint_path(dir: &Path) -> PathBuf {
    let mut path = dir.to_path_buf().into_os_string();
    path.push(".checkpoint");
    PathBuf::from(path)
}

fn read_checkpoint(path: &Path) -> Option<Positions> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .map(|line| {
            let (p, o) = line.trim().split_once(' ')?;
            Some((p.parse().ok()?, o.parse().ok()?))
        })
        .collect()
}

fn write_checkpoint(path: &Path, positions: &Positions) -> std::io::Result<()> {
    let text: String = positions
        .iter()
        .map(|(p, o)| format!("{p} {o}\n"))
        .collect();
    let tmp = path.with_extension("checkpoint.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

fn client_error(what: &'static str) -> impl Fn(rdkafka::error::KafkaError) -> RuntimeError {
    move |e| RuntimeError::Client {
        what,
        reason: kafka_reason(&e),
    }
}

impl GlobalTables {
    /// Opens every global table's store and bootstraps it; returns once every store holds
    /// its topic up to the end offsets seen at start.
    pub(crate) async fn start(
        topology: &Topology,
        settings: &RunSettings,
        metrics: &Arc<TopologyMetrics>,
        partition_counts: &std::collections::HashMap<String, i32>,
    ) -> Result<GlobalTables, RuntimeError> {
        let app = topology.application_id().to_string();
        let state = &settings.state;
        let stores = crate::topology::Task::open_global_stores(topology, |spec| {
            state.open_global(&app, spec)
        })
        .map_err(|e| RuntimeError::Client {
            what: "global store open",
            reason: e.to_string(),
        })?;
        let stores = Arc::new(stores);
        let mut updaters = Vec::new();
        for (global, store) in topology.inner.globals.iter().zip(stores.iter()) {
            let partitions = partition_counts.get(&global.topic).copied().unwrap_or(1);
            let checkpoint = (store.spec().kind == StoreKind::Persistent)
                .then(|| checkpoint_path(&state.global_store_dir(&app, &store.spec().name)));
            let publish = |restoring: bool| {
                if let Some(ops) = &settings.ops {
                    ops.put_store(
                        &store.spec().name,
                        GLOBAL_PARTITION,
                        crate::ops::QueryableStore {
                            application: app.clone(),
                            store: store.bytes().clone(),
                            query: store.query().clone(),
                            restoring,
                        },
                    );
                }
            };
            publish(true);
            let stop = Arc::new(AtomicBool::new(false));
            let (done, bootstrapped) = tokio::sync::oneshot::channel();
            let follower = Follower {
                client: settings.client.clone(),
                application: app.clone(),
                global: global.clone(),
                store: store.bytes().clone(),
                partitions,
                checkpoint: checkpoint.clone(),
                timeout: settings.startup_timeout,
                metrics: metrics.clone(),
                stop: stop.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("global-{}", global.name))
                .spawn(move || follower.run(done))
                .map_err(|e| RuntimeError::Crashed {
                    application: app.clone(),
                    reason: format!("cannot start the global table thread: {e}"),
                })?;
            let mut updater = Updater {
                store: store.spec().name.clone(),
                topic: global.topic.clone(),
                bytes: store.bytes().clone(),
                checkpoint,
                stop,
                thread: Some(thread),
            };
            let started = Instant::now();
            let outcome = bootstrapped.await.unwrap_or_else(|_| {
                Err(RuntimeError::Crashed {
                    application: app.clone(),
                    reason: format!("the thread of global table `{}` ended", global.name),
                })
            });
            match outcome {
                Ok(records) => {
                    tracing::info!(application = %app, store = %updater.store, topic = %global.topic, records, elapsed_ms = started.elapsed().as_millis() as u64, "global store bootstrapped");
                    publish(false);
                    updaters.push(updater);
                }
                Err(error) => {
                    updater.stop.store(true, Ordering::Relaxed);
                    if let Some(thread) = updater.thread.take() {
                        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
                    }
                    return Err(error);
                }
            }
        }
        Ok(GlobalTables { stores, updaters })
    }

    /// The global stores, for the tasks.
    pub(crate) fn stores(&self) -> Arc<Vec<TaskStore>> {
        self.stores.clone()
    }

    /// Stops following the topics, then flushes each store and writes its checkpoint.
    pub(crate) async fn close(mut self, settings: &RunSettings, application: &str) {
        for updater in &mut self.updaters {
            if let Some(ops) = &settings.ops {
                ops.remove_store(&updater.store, GLOBAL_PARTITION);
            }
            updater.stop.store(true, Ordering::Relaxed);
            let Some(thread) = updater.thread.take() else {
                continue;
            };
            let bytes = updater.bytes.clone();
            let checkpoint = updater.checkpoint.clone();
            let written = tokio::task::spawn_blocking(move || {
                let positions = thread
                    .join()
                    .map_err(|_| "the global table thread panicked".to_string())?;
                let Some(path) = checkpoint else {
                    return Ok(());
                };
                bytes.flush().map_err(|e| e.to_string())?;
                write_checkpoint(&path, &positions).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            if let Err(error) = written {
                tracing::warn!(application = %application, store = %updater.store, topic = %updater.topic, %error, "no global checkpoint written: the next start reads the whole topic");
            }
        }
    }
}

/// The partition under which a global store is registered for interactive queries: it
/// holds every partition of its topic.
pub(crate) const GLOBAL_PARTITION: i32 = -1;

/// What one global table's thread needs.
struct Follower {
    client: ClientSettings,
    application: String,
    global: crate::topology::builder::GlobalDef,
    store: Arc<dyn BytesStore>,
    partitions: i32,
    checkpoint: Option<PathBuf>,
    timeout: Duration,
    metrics: Arc<TopologyMetrics>,
    stop: Arc<AtomicBool>,
}

type Bootstrapped = tokio::sync::oneshot::Sender<Result<u64, RuntimeError>>;

impl Follower {
    /// Bootstraps, reports it through `done`, then follows the topic until stopped;
    /// returns the next offset per partition (for the checkpoint).
    fn run(self, done: Bootstrapped) -> Positions {
        let (consumer, mut positions, ends) = match self.assign() {
            Ok(assigned) => assigned,
            Err(error) => {
                let _ = done.send(Err(error));
                return Positions::new();
            }
        };
        match self.bootstrap(&consumer, &mut positions, &ends) {
            Ok(records) => {
                TopologyMetrics::add(&self.metrics.global_restored_records, records);
                let _ = done.send(Ok(records));
            }
            Err(error) => {
                let _ = done.send(Err(error));
                return Positions::new();
            }
        }
        while !self.stop.load(Ordering::Relaxed) {
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(error)) => {
                    tracing::warn!(application = %self.application, topic = %self.global.topic, %error, "global table consumer error; retrying");
                }
                Some(Ok(m)) => {
                    positions.insert(m.partition(), m.offset() + 1);
                    if self.apply(&m) {
                        TopologyMetrics::add(&self.metrics.global_records, 1);
                    }
                }
            }
        }
        positions
    }

    /// Creates the consumer and assigns every partition at its start offset: the
    /// checkpoint's if it fits the topic, else the beginning (after wiping the store).
    /// Returns the consumer, the start offsets and the end offsets to bootstrap to.
    fn assign(&self) -> Result<(BaseConsumer, Positions, Positions), RuntimeError> {
        let topic = &self.global.topic;
        let consumer: BaseConsumer = self
            .client
            .client_config(ClientRole::Consumer)
            // librdkafka refuses `assign` without a group id; with manual assignment and
            // no commits the consumer never joins the group nor stores offsets in it.
            .set(
                "group.id",
                format!(
                    "{}-{}-global",
                    self.application, self.global.store.spec.name
                ),
            )
            .create()
            .map_err(client_error("global table consumer"))?;
        let mut lows = Positions::new();
        let mut ends = Positions::new();
        for partition in 0..self.partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, self.timeout)
                .map_err(client_error("global table watermarks"))?;
            lows.insert(partition, low);
            ends.insert(partition, high);
        }
        let checkpointed = self.checkpoint.as_deref().and_then(read_checkpoint);
        if let Some(path) = &self.checkpoint {
            // From now on the store may run ahead of the checkpoint until the next clean
            // close writes a new one.
            let _ = std::fs::remove_file(path);
        }
        let fits = |c: &Positions| {
            c.len() == lows.len()
                && c.iter().all(|(p, o)| {
                    matches!((lows.get(p), ends.get(p)), (Some(l), Some(h)) if (*l..=*h).contains(o))
                })
        };
        let positions = match checkpointed {
            Some(c) if fits(&c) => c,
            checkpointed => {
                if checkpointed.is_some() {
                    tracing::info!(application = %self.application, store = %self.global.store.spec.name, %topic, "global checkpoint does not fit the topic: rebuilding the store");
                }
                self.store.clear().map_err(|e| RuntimeError::Client {
                    what: "global store wipe",
                    reason: e.to_string(),
                })?;
                lows
            }
        };
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in &positions {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(client_error("global table assignment"))?;
        }
        consumer
            .assign(&tpl)
            .map_err(client_error("global table assignment"))?;
        Ok((consumer, positions, ends))
    }

    /// Reads every partition up to `ends`; returns how many records were read.
    fn bootstrap(
        &self,
        consumer: &BaseConsumer,
        positions: &mut Positions,
        ends: &Positions,
    ) -> Result<u64, RuntimeError> {
        let topic = &self.global.topic;
        let behind = |positions: &Positions| {
            ends.iter()
                .filter(|(p, end)| positions.get(p).copied().unwrap_or(0) < **end)
                .map(|(p, end)| (*p, positions.get(p).copied().unwrap_or(0), *end))
                .collect::<Vec<_>>()
        };
        let deadline = Instant::now() + self.timeout.max(Duration::from_secs(60));
        let mut records = 0;
        loop {
            let lagging = behind(positions);
            if lagging.is_empty() {
                return Ok(records);
            }
            if self.stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                return Err(RuntimeError::Client {
                    what: "global table bootstrap",
                    reason: format!(
                        "{topic}: stuck at (partition, offset, end) {lagging:?}; check the broker"
                    ),
                });
            }
            match consumer.poll(Duration::from_millis(200)) {
                // The last offsets before the end may hold no record a consumer sees
                // (transaction markers): the consumer's position says it is past them.
                None => advance_to_position(consumer, positions),
                Some(Err(e)) => return Err(client_error("global table bootstrap")(e)),
                Some(Ok(m)) => {
                    positions.insert(m.partition(), m.offset() + 1);
                    self.apply(&m);
                    records += 1;
                }
            }
        }
    }

    /// Applies one record; a record that cannot be applied is logged and skipped (the
    /// table must keep following its topic).
    fn apply(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> bool {
        match self.global.apply(&*self.store, m.key(), m.payload()) {
            Ok(changed) => changed,
            Err(error) => {
                TopologyMetrics::add(&self.metrics.deserialization_errors, 1);
                TopologyMetrics::add(&self.metrics.skipped, 1);
                tracing::warn!(application = %self.application, topic = %self.global.topic, partition = m.partition(), offset = m.offset(), %error, "global table record skipped");
                false
            }
        }
    }
}

/// Moves `positions` forward to the consumer's fetch positions where those are ahead.
fn advance_to_position(consumer: &BaseConsumer, positions: &mut Positions) {
    let Ok(fetched) = consumer.position() else {
        return;
    };
    for element in fetched.elements() {
        if let Offset::Offset(offset) = element.offset()
            && let Some(position) = positions.get_mut(&element.partition())
            && offset > *position
        {
            *position = offset;
        }
    }
}
