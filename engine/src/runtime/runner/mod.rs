//! One topology instance on Kafka: a consumer in the topology's group, a producer, and
//! the loop between them.
//!
//! consume -> task (deserialize, process, serialize) -> produce -> acknowledge -> commit.
//! Offsets are committed only up to records whose outputs the broker has acknowledged;
//! when too many records are in flight no more are taken in until half of them are
//! acknowledged (librdkafka's fetch queue is bounded, and nothing else buffers); revoked
//! partitions are flushed and committed before they go; shutdown drains, commits and
//! closes.
//!
//! This file holds the entry point ([`TopologyRunner`]) and the processing loop; the rest
//! is split by concern: `callbacks` (what librdkafka calls: delivery reports, rebalances,
//! commits), `startup` (the checks and clients before subscribing), `tasks` (opening and
//! closing tasks), `backpressure` (the in-flight bound, paused partitions), `send`
//! (produce and the production error policy), `commit` (offsets, transactions, abort and
//! rewind), `shutdown` (drain, final commit, closing the clients) and `lag` (consumer lag
//! for the metrics). They may depend on each other and on the rest of `runtime`, never
//! the other way round: only [`TopologyRunner`] is seen outside.

mod backpressure;
mod callbacks;
mod commit;
mod lag;
mod send;
mod shutdown;
mod startup;
mod tasks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers as _, Message};
use rdkafka::producer::ThreadedProducer;

use crate::kafka::{ClientRole, kafka_reason};
use crate::metrics::TopologyMetrics;
use crate::record::{Header as RecordHeader, Headers, ProducedRecord, RawRecord, Timestamp};
use crate::topology::{Task, Topology};

use super::tracker::{OffsetTracker, Slot};
use super::{RunSettings, RuntimeError, Shutdown};

use callbacks::{ConsumeContext, ProduceContext, partitions_of};
use lag::ConsumerLag;
use shutdown::release_clients;
use startup::{assignment_strategy, create_producer, start_transactions, until_stopped};
use tasks::{Restoring, SharedForTasks};

type EngineProducer = ThreadedProducer<ProduceContext>;

/// Records processed per wake-up before the loop checks its timers and shutdown again.
const MAX_BATCH: usize = 256;
/// How long the input must have been quiet before the record caches are flushed without
/// waiting for the commit interval.
const IDLE_FLUSH: Duration = Duration::from_millis(20);

/// Runs one topology on Kafka until shutdown or a fatal error.
pub struct TopologyRunner {
    topology: Topology,
    settings: RunSettings,
    metrics: Arc<TopologyMetrics>,
}

impl std::fmt::Debug for TopologyRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopologyRunner")
            .field("application_id", &self.topology.application_id())
            .finish()
    }
}

impl TopologyRunner {
    /// A runner for `topology` with `settings`.
    pub fn new(topology: Topology, settings: RunSettings) -> Self {
        TopologyRunner {
            topology,
            settings,
            metrics: Arc::new(TopologyMetrics::default()),
        }
    }

    /// The runner's live counters.
    pub fn metrics(&self) -> Arc<TopologyMetrics> {
        self.metrics.clone()
    }

    /// Connects, checks the topics, and processes until `shutdown` fires (clean exit) or
    /// a fatal error (the error policy says `fail`, or the broker is unusable).
    pub async fn run(self, mut shutdown: Shutdown) -> Result<(), RuntimeError> {
        let app = self.topology.application_id().to_string();
        let tracker = Arc::new(OffsetTracker::default());
        let settings = &self.settings;
        let exactly_once = settings.processing_guarantee.exactly_once();
        // Send order matters only where changelog records wait for earlier outputs; in a
        // transaction they all commit together, so they go at once.
        tracker.track_send_order(!exactly_once && !self.topology.changelog_topics().is_empty());
        // Held until the runner returns: no other instance takes this transactional id.
        let claim = if exactly_once {
            Some(
                super::transactions::claim_instance(&settings.state.state_dir, &app)
                    .map_err(RuntimeError::Config)?,
            )
        } else {
            None
        };
        let transactional_id = claim
            .as_ref()
            .map(|c| super::transactions::transactional_id(&app, &c.id));
        let producer = create_producer(
            settings,
            transactional_id.as_deref(),
            &tracker,
            &self.metrics,
        )?;

        if let Some(ops) = &settings.ops {
            ops.add_topology(&app, self.metrics.clone());
            ops.set_running(&app, false);
        }
        // A signal during start-up (topic checks, registry, global tables: each bounded by
        // startup_timeout_ms, and a global bootstrap may take longer) stops it at once.
        let Some(counts) = until_stopped(&mut shutdown, &app, self.check_topics(&producer)).await
        else {
            return Ok(());
        };
        let partition_counts = Arc::new(counts?);
        let mut announcer = None;
        let mut reader = None;
        if let Some(ops) = &settings.ops {
            ops.set_broker_reachable(true);
            let partitions = self
                .topology
                .source_topics()
                .iter()
                .filter_map(|t| partition_counts.get(t).copied())
                .max()
                .unwrap_or(1);
            for (store, query) in self.topology.store_queries() {
                ops.put_route(
                    &store,
                    crate::ops::StoreRoute {
                        application: app.clone(),
                        partitions,
                        query,
                    },
                );
            }
            if let Some(advertised) = &settings.advertised_http {
                (announcer, reader) = self.start_announcing(ops, advertised, &partition_counts);
            }
        }
        let topology = self.topology.clone();
        let prepared = tokio::task::spawn_blocking(move || topology.prepare());
        let Some(prepared) = until_stopped(&mut shutdown, &app, prepared).await else {
            return Ok(());
        };
        prepared
            .map_err(|e| RuntimeError::Crashed {
                application: app.clone(),
                reason: e.to_string(),
            })?
            .map_err(|problems| RuntimeError::Serdes { problems })?;

        // Before subscribing: no task may process a record before the global tables hold
        // their topics up to the end.
        let globals = super::global::GlobalTables::start(
            &self.topology,
            settings,
            &self.metrics,
            &partition_counts,
        );
        let Some(globals) = until_stopped(&mut shutdown, &app, globals).await else {
            return Ok(());
        };
        let globals = globals?;
        if let Some(id) = &transactional_id {
            let started = start_transactions(producer.clone(), settings.startup_timeout);
            let Some(started) = until_stopped(&mut shutdown, &app, started).await else {
                return Ok(());
            };
            started?;
            tracing::info!(application = %app, transactional_id = %id, "exactly-once: transactional producer ready");
        }

        let mut consumer_config = settings.client.client_config(ClientRole::Consumer);
        consumer_config.set("group.id", &app);
        let strategy = assignment_strategy(
            consumer_config.get("partition.assignment.strategy"),
            &self.topology.source_topics(),
        )
        .map_err(RuntimeError::Config)?;
        if let Some(strategy) = strategy {
            consumer_config.set("partition.assignment.strategy", strategy);
        }
        if consumer_config.get("heartbeat.interval.ms").is_none() {
            // A cooperative rebalance takes two rounds, and members learn of the second
            // from their next heartbeat: at librdkafka's 3 s, moved partitions idle up
            // to 3 s longer than they need to.
            consumer_config.set("heartbeat.interval.ms", "1000");
        }
        let consumer: Arc<StreamConsumer<ConsumeContext>> = consumer_config
            .create_with_context(ConsumeContext {
                application_id: app.clone(),
                tracker: tracker.clone(),
                metrics: self.metrics.clone(),
                producer: Mutex::new(Some(producer.clone())),
                exactly_once,
                aborted: Default::default(),
                producer_failed: Default::default(),
                events: Mutex::new(Vec::new()),
                rebalanced: Default::default(),
                resume: Mutex::new(HashMap::new()),
                committed_at_assignment: Mutex::new(HashMap::new()),
                uncommitted_revoked: Mutex::new(Default::default()),
                purger: super::topics::RepartitionPurger::new(&self.topology, settings)
                    .map(|p| Arc::new(Mutex::new(p))),
                flush_timeout: settings.shutdown_timeout,
                closing: std::sync::atomic::AtomicBool::new(false),
                pause_assigned: !self.topology.changelog_topics().is_empty(),
            })
            .map(Arc::new)
            .map_err(|source| RuntimeError::Client {
                what: "consumer",
                reason: kafka_reason(&source),
            })?;
        let sources = self.topology.source_topics();
        let source_refs: Vec<&str> = sources.iter().map(String::as_str).collect();
        consumer
            .subscribe(&source_refs)
            .map_err(|source| RuntimeError::Client {
                what: "subscription",
                reason: kafka_reason(&source),
            })?;
        tracing::info!(application = %app, topics = ?sources, bootstrap = %settings.client.bootstrap_servers, "topology started");
        if let Some(ops) = &settings.ops {
            ops.set_running(&app, true);
        }

        let (restored_tx, restored_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut run = Loop {
            topology: &self.topology,
            settings,
            metrics: &self.metrics,
            tracker: &tracker,
            producer: producer.clone(),
            transactional_id: transactional_id.clone(),
            consumer: &consumer,
            tasks: HashMap::new(),
            held: false,
            task_paused: Default::default(),
            out: Vec::new(),
            slots: Vec::new(),
            announcer: announcer.as_ref(),
            restoring: HashMap::new(),
            restored_tx,
            restored_rx,
            next_restore: 0,
            shared: SharedForTasks {
                topology: self.topology.clone(),
                settings: Arc::new(settings.clone()),
                metrics: self.metrics.clone(),
                globals: globals.stores(),
                partition_counts,
                // The memory the record caches of every task share (`cache_max_bytes`).
                cache: crate::state::CacheBudget::new(settings.cache_max_bytes),
            },
        };
        self.metrics.set_lag_source(Some(Arc::new(ConsumerLag {
            consumer: Arc::downgrade(&consumer),
            tracker: tracker.clone(),
        })));
        let result = run.process_until(&mut shutdown).await;
        // Waits for a scrape in progress; afterwards this function owns the consumer alone.
        self.metrics.set_lag_source(None);
        let deadline = Instant::now() + settings.shutdown_timeout;
        // After a failure the failed record's effect may sit in a cache: not written.
        let closed = run.close(result.is_ok(), deadline).await;
        // The one in use now (a fenced transactional producer is replaced).
        let producer = run.producer.clone();
        drop(run);
        consumer
            .context()
            .closing
            .store(true, std::sync::atomic::Ordering::Release);
        let released = release_clients(
            &app, deadline, announcer, reader, consumer, producer, globals, settings,
        )
        .await;
        tracing::info!(application = %app, metrics = ?self.metrics.snapshot(), "topology stopped");
        if let Some(ops) = &settings.ops {
            ops.set_running(&app, false);
        }
        result.and(closed).and(released)
    }
}

/// The state of the processing loop of one runner.
struct Loop<'a> {
    topology: &'a Topology,
    settings: &'a RunSettings,
    metrics: &'a Arc<TopologyMetrics>,
    tracker: &'a Arc<OffsetTracker>,
    producer: Arc<EngineProducer>,
    /// Exactly-once: the transactional id of `producer` (and of its replacements).
    transactional_id: Option<String>,
    consumer: &'a Arc<StreamConsumer<ConsumeContext>>,
    tasks: HashMap<i32, Task>,
    /// At the in-flight bound: no records are taken in until half are acknowledged.
    held: bool,
    /// Partitions whose task asked to stop fetching (`ProcessorContext::pause_input`).
    task_paused: std::collections::HashSet<i32>,
    out: Vec<ProducedRecord>,
    slots: Vec<(String, i32, Slot)>,
    /// Publishes the partitions held after each rebalance, if instances announce.
    announcer: Option<&'a super::instances::Announcer>,
    /// Tasks whose stores are restoring, off the processing loop; their partitions stay
    /// paused until they are done, while the other tasks go on.
    restoring: HashMap<i32, Restoring>,
    /// Each restore says here (partition, restore id) that it is done.
    restored_tx: tokio::sync::mpsc::UnboundedSender<(i32, u64)>,
    restored_rx: tokio::sync::mpsc::UnboundedReceiver<(i32, u64)>,
    next_restore: u64,
    /// What a restore running off the loop needs of the runner.
    shared: SharedForTasks,
}

impl Loop<'_> {
    async fn process_until(&mut self, shutdown: &mut Shutdown) -> Result<(), RuntimeError> {
        let mut commit_tick = tokio::time::interval(self.settings.commit_interval);
        let mut punctuation_tick = tokio::time::interval(self.settings.punctuation_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        punctuation_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.apply_rebalances().await?;
            self.handle_failures().await?;
            self.send_ready_changelog().await;
            self.apply_backpressure();
            self.metrics.set_in_flight(self.tracker.in_flight() as u64);
            let changelog_waits = self.tracker.queued_changelog() > 0;
            self.tracker.set_waiting(self.held || changelog_waits);
            let cached = self.settings.flush_caches_when_idle && self.has_cached_writes();
            // A zombie keeps polling, held at the bound or not, so the rebalance that takes its
            // tasks away is served.
            let poll = !self.held || self.consumer.assignment_lost();
            tokio::select! {
                biased;
                _ = shutdown.wait() => return Ok(()),
                _ = self.tracker.changed(), if self.held || changelog_waits => {}
                message = self.consumer.recv(), if poll => {
                    match message {
                        Ok(message) => self.process(&message).await?,
                        Err(error) => self.consumer_error(error)?,
                    }
                    // Drain what is already fetched without a full select per record;
                    // stop at the in-flight bound, a rebalance, or a bounded batch so
                    // ticks and shutdown are still served promptly.
                    for _ in 0..MAX_BATCH {
                        if self.tracker.in_flight() >= self.settings.max_in_flight
                            || self.rebalance_pending()
                        {
                            break;
                        }
                        match self.consumer.recv().now_or_never() {
                            Some(Ok(message)) => self.process(&message).await?,
                            Some(Err(error)) => self.consumer_error(error)?,
                            None => break,
                        }
                    }
                }
                _ = commit_tick.tick() => {
                    // Kafka Streams flushes on commit: what the caches hold is written
                    // out first, and the records it came from commit once it is
                    // acknowledged (a later commit).
                    if self.transactional_id.is_some() {
                        self.commit_transaction().await?;
                    } else {
                        self.flush_tasks().await?;
                        self.commit();
                    }
                    if let Some(purger) = &self.consumer.context().purger {
                        lock(purger).maybe_purge();
                    }
                }
                _ = punctuation_tick.tick() => self.punctuate().await?,
                Some((partition, id)) = self.restored_rx.recv() => {
                    self.finish_restore(partition, id).await?
                }
                // Input drained: no more updates are coming to coalesce with, so holding
                // them only delays them (and the commit of their records).
                // (An async block, so no timer is created while the branch is disabled.)
                _ = async { tokio::time::sleep(IDLE_FLUSH).await }, if cached => {
                    self.flush_tasks().await?
                }
            }
        }
    }

    fn consumer_error(&self, error: KafkaError) -> Result<(), RuntimeError> {
        let fatal = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Fatal
                    | RDKafkaErrorCode::Authentication
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::GroupAuthorizationFailed
            )
        );
        if fatal {
            return Err(RuntimeError::Client {
                what: "consumer",
                reason: kafka_reason(&error),
            });
        }
        tracing::warn!(application = %self.topology.application_id(), %error, "consumer error; retrying");
        Ok(())
    }

    fn rebalance_pending(&self) -> bool {
        self.consumer
            .context()
            .rebalanced
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn assignment(&self) -> Vec<(String, i32)> {
        self.consumer
            .assignment()
            .map(|tpl| partitions_of(&tpl))
            .unwrap_or_default()
    }

    async fn process(&mut self, message: &BorrowedMessage<'_>) -> Result<(), RuntimeError> {
        // The rebalance callbacks run inside `recv`, which may then return a record in
        // the same call: if its partition was revoked and assigned back, the old task
        // (and its record cache) must close before the new one takes the record, or the
        // record's update dies with the old task while its offset commits.
        if self.rebalance_pending() {
            self.apply_rebalances().await?;
        }
        if self.consumer.assignment_lost() {
            // A zombie until the group takes it back: the record is another's now (or
            // fetched again after the rejoin).
            return Ok(());
        }
        let taken = Instant::now();
        let now = now_ms();
        let partition = message.partition();
        let raw = RawRecord {
            topic: message.topic(),
            partition,
            offset: message.offset(),
            timestamp: message.timestamp().to_millis().unwrap_or(now),
            key: message.key(),
            value: message.payload(),
            headers: headers_of(message),
        };
        let slot = self.slot(raw.topic, partition);
        if !self.tasks.contains_key(&partition) {
            self.open_now(partition).await?;
        }
        let Some(task) = self.tasks.get_mut(&partition) else {
            return Ok(());
        };
        self.out.clear();
        task.process(&raw, now, &mut self.out)
            .map_err(RuntimeError::Record)?;
        let (deferred, released) = task.take_deferrals();
        let pause = task.input_paused();
        let changelog = task.take_changelog();
        let outputs = u32::try_from(self.out.len() + changelog.len()).unwrap_or(u32::MAX);
        self.tracker.processed(slot, raw.offset, outputs, deferred);
        let produced = std::mem::take(&mut self.out);
        self.send_produced(Some((slot, raw.offset)), &produced, changelog, released)
            .await;
        self.out = produced;
        self.set_task_paused(partition, pause);
        // One more monotonic clock read per record; the wall clock is derived from it.
        let took = taken.elapsed();
        self.metrics.processing_latency.observe(took);
        let finished_ms = now.saturating_add(i64::try_from(took.as_millis()).unwrap_or(0));
        let waited_ms = u64::try_from(finished_ms.saturating_sub(raw.timestamp)).unwrap_or(0);
        self.metrics
            .e2e_latency
            .observe(Duration::from_millis(waited_ms));
        Ok(())
    }

    /// Whether any task's record cache holds writes not yet flushed.
    fn has_cached_writes(&self) -> bool {
        self.tasks.values().any(Task::has_cached_writes)
    }

    /// Flushes every task's record caches and sends what that produced; each task's
    /// held input record is released with it, so it commits once that is acknowledged.
    async fn flush_tasks(&mut self) -> Result<(), RuntimeError> {
        // A revocation served by the last poll closes its tasks first: a revoked task's
        // cache must not be written out to partitions another instance owns now.
        if self.rebalance_pending() {
            self.apply_rebalances().await?;
        }
        let now = now_ms();
        let mut calls = Vec::new();
        for task in self.tasks.values_mut() {
            let mut produced = Vec::new();
            task.flush(now, &mut produced)
                .map_err(RuntimeError::Record)?;
            // A hold is released even when nothing was cached any more (an eviction
            // already wrote its record's effect out).
            let (_, released) = task.take_deferrals();
            let changelog = task.take_changelog();
            if !released.is_empty() || !produced.is_empty() || !changelog.is_empty() {
                calls.push((produced, changelog, released));
            }
        }
        for (produced, changelog, released) in calls {
            self.send_produced(None, &produced, changelog, released)
                .await;
        }
        Ok(())
    }

    async fn punctuate(&mut self) -> Result<(), RuntimeError> {
        if self.rebalance_pending() {
            self.apply_rebalances().await?;
        }
        let now = now_ms();
        let mut calls = Vec::new();
        for (&partition, task) in self.tasks.iter_mut() {
            let mut produced = Vec::new();
            task.punctuate_wall_clock(now, &mut produced)
                .map_err(RuntimeError::Record)?;
            let (_, released) = task.take_deferrals();
            let changelog = task.take_changelog();
            calls.push((
                partition,
                produced,
                changelog,
                released,
                task.input_paused(),
            ));
        }
        for (partition, produced, changelog, released, pause) in calls {
            self.send_produced(None, &produced, changelog, released)
                .await;
            self.set_task_paused(partition, pause);
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn headers_of(message: &BorrowedMessage<'_>) -> Headers {
    match message.headers() {
        None => Headers::new(),
        Some(h) => h
            .iter()
            .map(|h| RecordHeader {
                key: h.key.to_string(),
                value: h.value.map(<[u8]>::to_vec),
            })
            .collect(),
    }
}

fn now_ms() -> Timestamp {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
