//! One topology instance on Kafka: a consumer in the topology's group, a producer, and
//! the loop between them.
//!
//! consume -> task (deserialize, process, serialize) -> produce -> acknowledge -> commit.
//! Offsets are committed only up to records whose outputs the broker has acknowledged;
//! when too many records are in flight the assigned partitions are paused (librdkafka's
//! fetch queue is bounded, and nothing else buffers); revoked partitions are flushed and
//! committed before they go; shutdown drains, commits and closes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{
    BorrowedMessage, DeliveryResult, Header, Headers as _, Message, OwnedHeaders,
};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{
    ClientRole, CommitError, commit_async_reporting, commit_within, flush_promptly, forward_error,
    forward_log, forward_stats, kafka_reason,
};
use crate::metrics::{LagSource, PartitionLag, TopologyMetrics};
use crate::record::{Header as RecordHeader, Headers, ProducedRecord, RawRecord, Timestamp};
use crate::topology::{ErrorClass, OnError, RecordError, Task, Topology, dead_letter_record};

use super::tracker::{DeliveryFailure, DeliveryToken, OffsetTracker, Slot, Sources};
use super::{RunSettings, RuntimeError, Shutdown};

type EngineProducer = ThreadedProducer<ProduceContext>;

/// Records processed per wake-up before the loop checks its timers and shutdown again.
const MAX_BATCH: usize = 256;
/// How long the input must have been quiet before the record caches are flushed without
/// waiting for the commit interval.
const IDLE_FLUSH: Duration = Duration::from_millis(20);

/// Producer callbacks: acknowledgements feed the offset tracker.
pub(crate) struct ProduceContext {
    tracker: Arc<OffsetTracker>,
    metrics: Arc<TopologyMetrics>,
}

impl ClientContext for ProduceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        forward_log("producer", level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        forward_error("producer", &error, reason);
    }
    fn stats(&self, statistics: Statistics) {
        forward_stats("producer", &statistics);
    }
}

impl ProducerContext for ProduceContext {
    type DeliveryOpaque = Box<DeliveryToken>;

    fn delivery(&self, result: &DeliveryResult<'_>, token: Box<DeliveryToken>) {
        if token.epoch != self.tracker.epoch() {
            // Sent in a transaction since aborted: nothing waits for it any more.
            return;
        }
        match result {
            Ok(_) => {
                TopologyMetrics::add(&self.metrics.records_out, 1);
                self.tracker.acknowledged_all(&token.sources);
                self.tracker.settled(token.seq);
            }
            Err((error, message)) => self.tracker.failed(DeliveryFailure {
                sources: token.sources,
                seq: token.seq,
                asynchronous: true,
                error: error.clone(),
                topic: message.topic().to_string(),
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().map(<[u8]>::to_vec),
                timestamp: message.timestamp().to_millis().unwrap_or(0),
                headers: headers_of(message),
            }),
        }
    }
}

enum RebalanceEvent {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

/// Consumer callbacks: revoked partitions are flushed and committed before they go.
pub(crate) struct ConsumeContext {
    application_id: String,
    tracker: Arc<OffsetTracker>,
    metrics: Arc<TopologyMetrics>,
    /// The instance's producer (replaced when a transactional one is fenced).
    producer: Mutex<Option<Arc<EngineProducer>>>,
    /// Exactly-once: the producer is transactional, and a revocation commits the open
    /// transaction (or aborts it, and the tasks kept go back to their committed state).
    exactly_once: bool,
    /// Set when a revocation aborted the transaction: the tasks kept must be rewound.
    aborted: std::sync::atomic::AtomicBool,
    /// Set when the transactional producer failed for good: it must be replaced.
    producer_failed: std::sync::atomic::AtomicBool,
    events: Mutex<Vec<RebalanceEvent>>,
    /// Whether `events` holds anything: read for every record, so without the lock.
    rebalanced: std::sync::atomic::AtomicBool,
    /// Where revoked partitions stood, for resuming them if they come back.
    resume: Mutex<HashMap<(String, i32), i64>>,
    /// Committed offsets of the assigned partitions when they were assigned (-1: none):
    /// the position for lag until a partition delivers its first record.
    committed_at_assignment: Mutex<HashMap<(String, i32), i64>>,
    /// Revoked partitions whose offsets could not be committed: their stores get no
    /// checkpoint (a restore from it would not know which inputs are applied).
    uncommitted_revoked: Mutex<std::collections::HashSet<(String, i32)>>,
    /// Learns committed offsets of repartition topics, to delete what is committed.
    purger: Option<Arc<Mutex<super::topics::RepartitionPurger>>>,
    flush_timeout: Duration,
    /// Set when the final commit begins: a rebalance the group goes through while this
    /// instance leaves it (another instance leaving at the same time) has nothing to
    /// process here and nothing to commit but what the final commit carries, so its
    /// callbacks make no broker round trip. One of them, reading
    /// committed offsets, would otherwise wait out its whole timeout on a consumer
    /// being destroyed, and the shutdown with it.
    closing: std::sync::atomic::AtomicBool,
    /// Whether tasks restore stores when they open: their partitions are paused at
    /// assignment, before anything is fetched, and resumed once the task is ready.
    pause_assigned: bool,
}

impl ClientContext for ConsumeContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        forward_log("consumer", level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        forward_error("consumer", &error, reason);
    }
    fn stats(&self, statistics: Statistics) {
        forward_stats("consumer", &statistics);
        self.metrics.fetched.store(
            u64::try_from(statistics.rxmsgs).unwrap_or(0),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ConsumerContext for ConsumeContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) if self.is_closing() => {
                let partitions = partitions_of(tpl);
                tracing::info!(application = %self.application_id, ?partitions, "partitions revoked while leaving the group: the final commit takes care of them");
            }
            Rebalance::Revoke(tpl) => {
                let partitions = partitions_of(tpl);
                tracing::info!(application = %self.application_id, ?partitions, "partitions revoked: finishing their work");
                // The producer flush and the commit wait on the broker: let the executor's
                // other tasks (health, metrics, signals) run meanwhile.
                crate::executor::block_off_executor(|| self.finish_revoked(consumer, &partitions));
                self.push_event(RebalanceEvent::Revoked(partitions));
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(error) => {
                tracing::error!(application = %self.application_id, %error, "rebalance error")
            }
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if let Err(error) = &result {
            tracing::debug!(application = %self.application_id, %error, "offset commit refused; the offsets are offered again with the next commit");
        }
        if result.is_ok() {
            for e in offsets.elements() {
                if let Offset::Offset(o) = e.offset() {
                    self.tracker.confirm(e.topic(), e.partition(), o);
                    if let Some(purger) = &self.purger {
                        lock(purger).committed(e.topic(), e.partition(), o);
                    }
                }
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance
            && self.is_closing()
        {
            let partitions = partitions_of(tpl);
            tracing::info!(application = %self.application_id, ?partitions, "partitions assigned while leaving the group: not processed here");
            return;
        }
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions = partitions_of(tpl);
            // Reading the committed offsets waits on the broker (bounded).
            let (committed, resumed) = crate::executor::block_off_executor(|| {
                let committed = self.committed_offsets(consumer, &partitions);
                let resumed = self.resume_where_we_stopped(consumer, &partitions, &committed);
                (committed, resumed)
            });
            // Where processing starts: every input before it is complete (committed, or
            // acknowledged before this instance last gave the partition up).
            lock(&self.committed_at_assignment).extend(
                committed
                    .into_iter()
                    .chain(resumed)
                    .map(|(topic, partition, offset)| ((topic, partition), offset)),
            );
            if self.pause_assigned
                && let Err(error) = consumer.pause(tpl)
            {
                tracing::warn!(application = %self.application_id, %error, "could not pause the assigned partitions while their tasks restore");
            }
            if !partitions.is_empty() {
                TopologyMetrics::add(&self.metrics.rebalances, 1);
            }
            tracing::info!(application = %self.application_id, ?partitions, "partitions assigned");
            self.push_event(RebalanceEvent::Assigned(partitions));
        }
    }
}

impl ConsumeContext {
    fn is_closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::Acquire)
    }

    fn push_event(&self, event: RebalanceEvent) {
        lock(&self.events).push(event);
        self.rebalanced
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Flushes the outputs of revoked partitions and commits their offsets, each bounded
    /// by `flush_timeout`; partitions whose commit did not go through get no checkpoint.
    fn finish_revoked(&self, consumer: &BaseConsumer<Self>, partitions: &[(String, i32)]) {
        let numbers: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
        if self.exactly_once {
            self.finish_revoked_transaction(consumer, partitions);
            let mut committed = lock(&self.committed_at_assignment);
            for (topic, partition) in partitions {
                self.tracker.deactivate(topic, *partition);
                committed.remove(&(topic.clone(), *partition));
            }
            return;
        }
        if consumer.assignment_lost() {
            // The group went on without this instance (its session expired, or it was
            // fenced): the partitions may be another's already, so nothing more of
            // theirs is written or committed here.
            let dropped = self.tracker.drop_changelog(&numbers);
            tracing::warn!(application = %self.application_id, ?partitions, dropped_changelog_records = dropped, "assignment lost (the session expired or the member was fenced): the revoked tasks' unsent writes are dropped and their offsets left uncommitted; the new owner processes those records again");
            lock(&self.uncommitted_revoked).extend(partitions.iter().cloned());
            let mut committed = lock(&self.committed_at_assignment);
            for (topic, partition) in partitions {
                self.tracker.deactivate(topic, *partition);
                committed.remove(&(topic.clone(), *partition));
            }
            return;
        }
        let deadline = Instant::now() + self.flush_timeout;
        if let Some(producer) = lock(&self.producer).clone() {
            let mut flushed = flush_promptly(|t| producer.flush(t), self.flush_timeout);
            if flushed.is_ok() {
                // Every output is acknowledged: the changelog records may follow.
                for queued in self.tracker.drain_changelog() {
                    send_now(&producer, &self.tracker, &queued.record, queued.sources);
                }
                flushed = flush_promptly(
                    |t| producer.flush(t),
                    deadline.saturating_duration_since(Instant::now()),
                );
            }
            if let Err(error) = flushed {
                // Their changelog records wait for those outputs; once the partitions
                // are gone they must not be sent.
                let dropped = self.tracker.drop_changelog(&numbers);
                tracing::warn!(application = %self.application_id, %error, dropped_changelog_records = dropped, "not every output was acknowledged before the revocation; those offsets stay uncommitted and the revoked tasks' unsent changelog records are dropped");
            }
        }
        let commits = self
            .tracker
            .take_commits(|t, p| partitions.iter().any(|(rt, rp)| rt == t && *rp == p));
        // At least a moment for the commit, even when the flush used the whole budget.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        if let Err(error) = commit_bounded(consumer, &commits, left, &self.metrics, &self.tracker) {
            tracing::warn!(application = %self.application_id, %error, ?commits, "offsets of revoked partitions not committed: their records will be processed again by the next owner, and no checkpoint is written for them");
            lock(&self.uncommitted_revoked).extend(commits.iter().map(|(t, p, _)| (t.clone(), *p)));
        }
        // Remember where each partition stands: if the group gives it back but the
        // commit above was refused (the broker refuses commits mid-rebalance), the
        // consumer must resume here, not at the stale committed offset, or records
        // already in the stores would be applied twice.
        {
            let mut resume = lock(&self.resume);
            for (topic, partition) in partitions {
                if let Some(position) = self.tracker.position(topic, *partition) {
                    resume.insert((topic.clone(), *partition), position);
                }
            }
        }
        let mut committed = lock(&self.committed_at_assignment);
        for (topic, partition) in partitions {
            self.tracker.deactivate(topic, *partition);
            committed.remove(&(topic.clone(), *partition));
        }
    }

    /// Exactly-once: commits the open transaction, which holds the revoked tasks' work
    /// (and the other tasks', whose offsets commit with it); or, when the assignment was
    /// lost or the commit fails, aborts it: the next owner processes the revoked
    /// partitions' records again, and the tasks kept here go back to their committed
    /// state ([`Loop::rewind`]).
    fn finish_revoked_transaction(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[(String, i32)],
    ) {
        let Some(producer) = lock(&self.producer).clone() else {
            return;
        };
        let committed = if consumer.assignment_lost() {
            Err(super::transactions::TransactionFailure {
                reason: "the assignment was lost (the session expired or the member was fenced)"
                    .into(),
                fatal: false,
                group_moved_on: false,
            })
        } else {
            let deadline = Instant::now() + self.flush_timeout;
            let mut flushed = flush_promptly(|t| producer.flush(t), self.flush_timeout);
            if flushed.is_ok() {
                for queued in self.tracker.drain_changelog() {
                    send_now(&producer, &self.tracker, &queued.record, queued.sources);
                }
                flushed = flush_promptly(
                    |t| producer.flush(t),
                    deadline.saturating_duration_since(Instant::now()),
                );
            }
            let commits = self.tracker.take_commits(|_, _| true);
            flushed
                .map_err(|e| super::transactions::TransactionFailure {
                    reason: format!("not every output was acknowledged: {}", kafka_reason(&e)),
                    fatal: false,
                    group_moved_on: false,
                })
                .and_then(|()| {
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_secs(1));
                    super::transactions::commit(
                        &*producer,
                        &commits,
                        consumer.group_metadata().as_ref(),
                        left,
                    )
                })
                .map(|()| commits)
        };
        match committed {
            Ok(commits) => {
                self.committed_in_transaction(&commits);
                tracing::info!(application = %self.application_id, ?partitions, ?commits, "transaction committed before the revocation");
            }
            Err(failure) => {
                tracing::warn!(application = %self.application_id, ?partitions, reason = %failure.reason, "transaction aborted at the revocation: the revoked partitions' records since the last commit are processed again by their next owner, and the tasks kept here go back to their committed state");
                let replace = failure.fatal
                    || super::transactions::abort(&*producer, self.flush_timeout)
                        .inspect_err(|e| tracing::warn!(application = %self.application_id, reason = %e.reason, "the transactional producer is replaced"))
                        .is_err();
                if replace {
                    self.producer_failed
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                self.tracker.reset();
                self.aborted
                    .store(true, std::sync::atomic::Ordering::Release);
                lock(&self.uncommitted_revoked).extend(partitions.iter().cloned());
            }
        }
    }

    /// Learns the offsets a committed transaction held.
    fn committed_in_transaction(&self, commits: &[(String, i32, i64)]) {
        for (topic, partition, offset) in commits {
            self.tracker.confirm(topic, *partition, *offset);
            if let Some(purger) = &self.purger {
                lock(purger).committed(topic, *partition, *offset);
            }
        }
        if !commits.is_empty() {
            TopologyMetrics::add(&self.metrics.commits, 1);
        }
    }

    /// The group's committed offsets of `partitions` (-1: none); one broker round trip
    /// per assignment.
    fn committed_offsets(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[(String, i32)],
    ) -> Vec<(String, i32, i64)> {
        if partitions.is_empty() {
            return Vec::new();
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p) in partitions {
            tpl.add_partition(t, *p);
        }
        match consumer.committed_offsets(tpl, self.flush_timeout) {
            Ok(c) => partitions_of_offsets(&c),
            Err(error) => {
                tracing::warn!(application = %self.application_id, %error, "could not read the committed offsets of the assigned partitions");
                Vec::new()
            }
        }
    }

    /// Seeks partitions this instance had before to where it stopped, when that is past
    /// their committed offset; returns those it moved, with their new positions.
    fn resume_where_we_stopped(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[(String, i32)],
        committed: &[(String, i32, i64)],
    ) -> Vec<(String, i32, i64)> {
        let mut resumed = Vec::new();
        let remembered: Vec<(String, i32, i64)> = {
            let mut resume = lock(&self.resume);
            let found = partitions
                .iter()
                .filter_map(|(t, p)| resume.remove(&(t.clone(), *p)).map(|o| (t.clone(), *p, o)))
                .collect();
            resume.clear();
            found
        };
        for (topic, partition, position) in remembered {
            let committed = committed
                .iter()
                .find(|(t, p, _)| *t == topic && *p == partition)
                .map_or(-1, |(_, _, o)| *o);
            if position > committed {
                tracing::info!(application = %self.application_id, %topic, partition, position, committed, "resuming where this instance stopped (its last commit was refused)");
                match consumer.seek(
                    &topic,
                    partition,
                    Offset::Offset(position),
                    self.flush_timeout,
                ) {
                    Ok(()) => resumed.push((topic, partition, position)),
                    Err(error) => {
                        tracing::warn!(application = %self.application_id, %topic, partition, %error, "could not resume at the processed position")
                    }
                }
            }
        }
        resumed
    }

    /// Per source topic, where processing of `partition` starts (-1: from the start),
    /// as learnt at its assignment.
    fn start_offsets(&self, partition: i32) -> HashMap<String, i64> {
        lock(&self.committed_at_assignment)
            .iter()
            .filter(|((_, p), _)| *p == partition)
            .map(|((t, _), o)| (t.clone(), *o))
            .collect()
    }
}

fn partitions_of_offsets(tpl: &TopicPartitionList) -> Vec<(String, i32, i64)> {
    tpl.elements()
        .iter()
        .map(|e| {
            let o = match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            };
            (e.topic().to_string(), e.partition(), o)
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends a commit without waiting: the tracker (and the repartition purger) learn the
/// outcome from the consumer's commit callback.
fn commit_async<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    commits: &[(String, i32, i64)],
    application_id: &str,
    metrics: &TopologyMetrics,
) {
    if commits.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in commits {
        if let Err(error) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            tracing::error!(application = %application_id, topic, partition, offset, %error, "cannot build commit");
        }
    }
    match commit_async_reporting(consumer, &tpl) {
        Ok(()) => {
            TopologyMetrics::add(&metrics.commits, 1);
            tracing::debug!(application = %application_id, ?commits, "offsets committed");
        }
        Err(error) => {
            tracing::warn!(application = %application_id, %error, ?commits, "offset commit failed; it is retried with the next commit")
        }
    }
}

/// Commits `commits` synchronously, waiting at most `timeout` for the coordinator; the
/// tracker learns the committed offsets on success. Blocks: call it off the executor.
fn commit_bounded<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    commits: &[(String, i32, i64)],
    timeout: Duration,
    metrics: &TopologyMetrics,
    tracker: &OffsetTracker,
) -> Result<(), CommitError> {
    if commits.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in commits {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(|e| CommitError::Refused(kafka_reason(&e)))?;
    }
    commit_within(consumer, &tpl, timeout)?;
    for (topic, partition, offset) in commits {
        tracker.confirm(topic, *partition, *offset);
    }
    TopologyMetrics::add(&metrics.commits, 1);
    Ok(())
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

/// Consumer lag from librdkafka's local state: the high watermark its last fetch saw and
/// this instance's position, so a scrape costs no broker round trip.
///
/// It holds the consumer weakly: the consumer's context holds the metrics that hold this,
/// and a strong reference would keep a runner's consumer (and its group membership)
/// alive after the runner's future is dropped without finishing.
struct ConsumerLag {
    consumer: std::sync::Weak<StreamConsumer<ConsumeContext>>,
    tracker: Arc<OffsetTracker>,
}

impl LagSource for ConsumerLag {
    fn consumer_lag(&self) -> Vec<PartitionLag> {
        let Some(consumer) = self.consumer.upgrade() else {
            return Vec::new();
        };
        // The assignment, with the offset after the last record handed to the engine.
        let Ok(delivered) = consumer.position() else {
            return Vec::new();
        };
        let committed = lock(&consumer.context().committed_at_assignment);
        delivered
            .elements()
            .iter()
            .filter_map(|e| {
                let (topic, partition) = (e.topic(), e.partition());
                let (low, high) = cached_watermarks(&consumer, topic, partition)?;
                // Processed beats delivered: a record being processed still counts as lag.
                let position = self
                    .tracker
                    .processed_position(topic, partition)
                    .or(match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    })
                    .or_else(|| {
                        committed
                            .get(&(topic.to_string(), partition))
                            .copied()
                            .filter(|o| *o >= 0)
                    })
                    .or((low >= 0).then_some(low))?;
                Some(PartitionLag {
                    topic: topic.to_string(),
                    partition,
                    lag: (high - position).max(0),
                })
            })
            .collect()
    }
}

/// The low and high watermarks librdkafka last saw for a partition (the high one comes
/// with every fetch response; the low one only with statistics enabled), or `None` while
/// unknown. A local read: no request is sent.
fn cached_watermarks<C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<(i64, i64)> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // rust-rdkafka wraps only the querying `fetch_watermarks` (a broker round trip).
    // SAFETY: the client pointer is valid while `consumer` is borrowed; `topic` is a
    // NUL-terminated string alive for the call; librdkafka writes only the two
    // out-parameters, which live on this stack frame.
    #[allow(unsafe_code)]
    let error = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (error == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some((low, high))
}

/// The instance's producer: transactional under exactly-once, with Kafka Streams'
/// `transaction.timeout.ms` unless the configuration sets one.
fn create_producer(
    settings: &RunSettings,
    transactional_id: Option<&str>,
    tracker: &Arc<OffsetTracker>,
    metrics: &Arc<TopologyMetrics>,
) -> Result<Arc<EngineProducer>, RuntimeError> {
    let mut config = settings.client.client_config(ClientRole::Producer);
    if let Some(id) = transactional_id {
        config.set("transactional.id", id);
        if config.get("transaction.timeout.ms").is_none() {
            config.set(
                "transaction.timeout.ms",
                crate::config::defaults::EOS_TRANSACTION_TIMEOUT_MS.to_string(),
            );
        }
    }
    config
        .create_with_context(ProduceContext {
            tracker: tracker.clone(),
            metrics: metrics.clone(),
        })
        .map(Arc::new)
        .map_err(|source| RuntimeError::Client {
            what: "producer",
            reason: kafka_reason(&source),
        })
}

/// Initializes `producer`'s transactions and begins the first, off the executor.
async fn start_transactions(
    producer: Arc<EngineProducer>,
    timeout: Duration,
) -> Result<(), RuntimeError> {
    tokio::task::spawn_blocking(move || super::transactions::start(&*producer, timeout))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|reason| RuntimeError::Client {
            what: "transactional producer",
            reason,
        })
}

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

    /// Starts announcing this instance's partitions and reading the others', when the
    /// instances topic exists; without it, queries for keys held elsewhere get a 404.
    fn start_announcing(
        &self,
        ops: &Arc<crate::ops::OpsState>,
        advertised: &str,
        partition_counts: &HashMap<String, i32>,
    ) -> (
        Option<super::instances::Announcer>,
        Option<super::instances::AnnouncementReader>,
    ) {
        let app = self.topology.application_id();
        let topic = super::instances_topic(app);
        if !partition_counts.contains_key(&topic) {
            tracing::warn!(application = %app, %topic, "topic missing: queries for keys another instance holds get 404 instead of naming it; create the topic (1 partition, cleanup.policy=compact) to enable that");
            return (None, None);
        }
        ops.set_advertised(app, advertised);
        let client = &self.settings.client;
        let started = super::instances::Announcer::new(client, app, advertised).and_then(|a| {
            super::instances::AnnouncementReader::start(client, app, ops.clone()).map(|r| (a, r))
        });
        match started {
            Ok((announcer, reader)) => {
                tracing::info!(application = %app, %topic, %advertised, "announcing this instance's partitions for interactive queries");
                (Some(announcer), Some(reader))
            }
            Err(error) => {
                tracing::warn!(application = %app, %topic, %error, "cannot announce this instance; queries for keys held elsewhere get 404");
                (None, None)
            }
        }
    }

    /// Checks that the broker answers and every user topic exists; creates or validates
    /// the internal topics; returns every topic's partition count.
    async fn check_topics(
        &self,
        producer: &Arc<EngineProducer>,
    ) -> Result<HashMap<String, i32>, RuntimeError> {
        let producer = producer.clone();
        let timeout = self.settings.startup_timeout;
        let bootstrap = self.settings.client.bootstrap_servers.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(None, timeout).map(|m| {
                m.topics()
                    .iter()
                    .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                    .map(|t| {
                        (
                            t.name().to_string(),
                            i32::try_from(t.partitions().len()).unwrap_or(i32::MAX),
                        )
                    })
                    .collect::<HashMap<String, i32>>()
            })
        })
        .await
        .map_err(|e| RuntimeError::Client {
            what: "metadata request",
            reason: e.to_string(),
        })?
        .map_err(|e| RuntimeError::BrokerUnreachable {
            bootstrap: bootstrap.clone(),
            timeout,
            reason: kafka_reason(&e),
        })?;
        let announces = self.settings.ops.is_some() && self.settings.advertised_http.is_some();
        let metadata =
            super::topics::ensure_topics(&self.topology, &self.settings, metadata, announces)
                .await?;
        self.topology
            .check_copartitioning(&metadata)
            .map_err(RuntimeError::Topology)?;
        Ok(metadata)
    }
}

/// The assignor for a topology's consumer, unless `configured` names one that fits.
///
/// Task N owns partition N of every topic it reads, with its stores: an assignor that
/// places each topic's partitions on their own (cooperative-sticky, roundrobin) may give
/// `a` 2 to one instance and `b` 2 to another, and both would open task 2. Only `range`
/// keeps equal partition numbers together, so a task reading several topics gets it
/// (eager: every rebalance revokes every partition); a task reading one topic gets
/// incremental cooperative rebalancing (KIP-429), where the tasks that stay keep
/// running, caches and all.
fn assignment_strategy(
    configured: Option<&str>,
    sources: &[String],
) -> Result<Option<&'static str>, String> {
    match configured {
        None if sources.len() > 1 => Ok(Some("range")),
        None => Ok(Some("cooperative-sticky")),
        Some(strategy) if sources.len() > 1 && strategy.trim() != "range" => Err(format!(
            "consumer.partition.assignment.strategy = \"{strategy}\" does not keep the partitions of a task together: this topology's tasks read {} topics ({}), and each task must hold the same partition of all of them on one instance. Remove the property (the engine uses `range` for such topologies) or set it to \"range\"",
            sources.len(),
            sources.join(", ")
        )),
        Some(_) => Ok(None),
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

/// A task being opened (its stores restored) off the processing loop.
struct Restoring {
    id: u64,
    cancel: Arc<std::sync::atomic::AtomicBool>,
    /// Taken by [`Loop::join`].
    handle: Option<tokio::task::JoinHandle<Result<Option<Task>, RuntimeError>>>,
}

impl Drop for Restoring {
    /// A runner dropped without closing (its future cancelled) stops its restores too,
    /// so they release the stores.
    fn drop(&mut self) {
        self.cancel
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

/// The parts of an instance a task is opened with, owned so a restore can run on its
/// own (a spawned future).
#[derive(Clone)]
struct SharedForTasks {
    topology: Topology,
    settings: Arc<RunSettings>,
    metrics: Arc<TopologyMetrics>,
    globals: Arc<Vec<crate::topology::TaskStore>>,
    partition_counts: Arc<HashMap<String, i32>>,
    cache: Arc<crate::state::CacheBudget>,
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

    /// Drops the tasks of revoked partitions (after writing their checkpoints) and opens
    /// the tasks of assigned ones, restoring their stores, so state is queryable and
    /// punctuations run before the first record arrives.
    async fn apply_rebalances(&mut self) -> Result<(), RuntimeError> {
        let events = {
            let context = self.consumer.context();
            let mut queued = lock(&context.events);
            // Cleared under the lock, so an event pushed meanwhile sets it again after.
            context
                .rebalanced
                .store(false, std::sync::atomic::Ordering::Release);
            std::mem::take(&mut *queued)
        };
        let rebalanced = !events.is_empty();
        if rebalanced {
            self.slots.clear();
            self.metrics.assigned_partitions.store(
                self.assignment().len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        for event in events {
            match event {
                RebalanceEvent::Revoked(partitions) => {
                    let uncommitted =
                        std::mem::take(&mut *lock(&self.consumer.context().uncommitted_revoked));
                    let mut closing = Vec::new();
                    let mut cancelled = Vec::new();
                    for (topic, partition) in partitions {
                        self.task_paused.remove(&partition);
                        if let Some(task) = self.tasks.remove(&partition) {
                            let committed = !uncommitted.contains(&(topic, partition));
                            closing.push((task, committed));
                        } else if let Some(restoring) = self.restoring.remove(&partition) {
                            restoring
                                .cancel
                                .store(true, std::sync::atomic::Ordering::Relaxed);
                            cancelled.push((partition, restoring));
                        }
                    }
                    // Their stores must be closed before the partitions can come back.
                    for (partition, restoring) in cancelled {
                        match Self::join(self.topology, restoring).await {
                            // Restored before the cancel: nothing processed, nothing to
                            // commit; its checkpoint saves the next restore.
                            Ok(Some(task)) => closing.push((task, true)),
                            Ok(None) => {}
                            Err(error) => {
                                tracing::warn!(application = %self.topology.application_id(), partition, %error, "the restore of a revoked task failed")
                            }
                        }
                    }
                    // Checkpoints ask the broker for the changelogs' ends.
                    crate::executor::block_off_executor(|| {
                        for (task, committed) in closing {
                            self.close_task(task, committed);
                        }
                    });
                }
                RebalanceEvent::Assigned(partitions) => {
                    for (_, partition) in partitions {
                        if let Some(task) = self.tasks.remove(&partition) {
                            self.install(partition, task);
                        } else if self.restoring.contains_key(&partition) {
                        } else if self.consumer.context().pause_assigned {
                            // Restores run off the loop: the tasks already running go on,
                            // and the consumer keeps polling (and stays in the group).
                            self.start_restore(partition);
                        } else {
                            // Nothing to restore: ready at once.
                            self.open_now(partition).await?;
                        }
                    }
                }
            }
        }
        let context = self.consumer.context();
        if context
            .aborted
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            // A revocation aborted the transaction: the tasks kept lost their work since
            // the last commit too.
            if context
                .producer_failed
                .load(std::sync::atomic::Ordering::Acquire)
            {
                self.replace_producer().await?;
            }
            self.rewind().await?;
        }
        if rebalanced && let Some(announcer) = self.announcer {
            // After the tasks opened: a query sent here now finds (or waits for) the store.
            let held = self.assignment().into_iter().map(|(_, p)| p).collect();
            tokio::spawn(announcer.announce(held));
        }
        Ok(())
    }

    /// Starts opening the task of `partition` (restoring its stores) off the loop; its
    /// partitions stay paused until [`Self::finish_restore`] installs it.
    fn start_restore(&mut self, partition: i32) {
        let id = self.next_restore;
        self.next_restore += 1;
        let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let opening = open_task(
            self.shared.clone(),
            partition,
            now_ms(),
            self.consumer.context().start_offsets(partition),
            cancel.clone(),
        );
        let done = self.restored_tx.clone();
        let handle = tokio::spawn(async move {
            let opened = opening.await;
            let _ = done.send((partition, id));
            opened
        });
        self.restoring.insert(
            partition,
            Restoring {
                id,
                cancel,
                handle: Some(handle),
            },
        );
    }

    /// Installs the task whose restore `id` says it is done (unless it was revoked and
    /// its partition taken on by a later restore meanwhile).
    async fn finish_restore(&mut self, partition: i32, id: u64) -> Result<(), RuntimeError> {
        if self.restoring.get(&partition).is_none_or(|r| r.id != id) {
            return Ok(());
        }
        if let Some(restoring) = self.restoring.remove(&partition)
            && let Some(task) = Self::join(self.topology, restoring).await?
        {
            self.install(partition, task);
        }
        Ok(())
    }

    /// Opens the task of `partition` before going on: a record of it arrived while it
    /// was restoring (fetched before the pause), or it has nothing to restore.
    async fn open_now(&mut self, partition: i32) -> Result<(), RuntimeError> {
        let task = match self.restoring.remove(&partition) {
            Some(restoring) => Self::join(self.topology, restoring).await?,
            None => {
                open_task(
                    self.shared.clone(),
                    partition,
                    now_ms(),
                    self.consumer.context().start_offsets(partition),
                    Arc::new(std::sync::atomic::AtomicBool::new(false)),
                )
                .await?
            }
        };
        if let Some(task) = task {
            self.install(partition, task);
        }
        Ok(())
    }

    /// Waits for a restore to end. (Not a `&self` method: `Loop` is not `Sync`, and a
    /// shared borrow of it held across the wait would make the runner's future `!Send`.)
    async fn join(
        topology: &Topology,
        mut restoring: Restoring,
    ) -> Result<Option<Task>, RuntimeError> {
        let Some(handle) = restoring.handle.take() else {
            return Ok(None);
        };
        handle.await.map_err(|e| RuntimeError::Crashed {
            application: topology.application_id().to_string(),
            reason: e.to_string(),
        })?
    }

    /// A ready task takes its records: its partitions resume, unless the task itself
    /// holds them.
    fn install(&mut self, partition: i32, task: Task) {
        self.tasks.insert(partition, task);
        if !self.task_paused.contains(&partition) {
            self.set_partition_paused(false, partition);
        }
    }

    /// Stops the restores still running and waits for them; the tasks whose restore
    /// finished meanwhile join the others (to be closed with them).
    async fn stop_restores(&mut self) {
        let restoring: Vec<_> = self.restoring.drain().collect();
        for (_, r) in &restoring {
            r.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        for (partition, r) in restoring {
            match Self::join(self.topology, r).await {
                Ok(Some(task)) => {
                    self.tasks.insert(partition, task);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(application = %self.topology.application_id(), partition, %error, "a restore failed while stopping")
                }
            }
        }
    }

    fn assignment(&self) -> Vec<(String, i32)> {
        self.consumer
            .assignment()
            .map(|tpl| partitions_of(&tpl))
            .unwrap_or_default()
    }

    fn set_paused(&self, pause: bool, partitions: &[(String, i32)]) {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in partitions {
            tpl.add_partition(topic, *partition);
        }
        let result = if pause {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        if let Err(error) = result {
            tracing::warn!(application = %self.topology.application_id(), %error, pause, "could not change the pause state");
        }
    }

    /// Stops taking records in at the in-flight bound, and starts again at half of it.
    ///
    /// The consumer's partitions are not paused for this: librdkafka's `pause` purges
    /// what it has fetched for them, so every record behind the bound would be fetched
    /// again (and wait a fetch round trip) each time the bound is reached, which is the
    /// moment the broker is slowest. The fetched records wait in librdkafka's queue,
    /// which its own limits bound (`queued.max.messages.kbytes`).
    fn apply_backpressure(&mut self) {
        let in_flight = self.tracker.in_flight();
        let max = self.settings.max_in_flight;
        if !self.held && in_flight >= max {
            self.held = true;
            self.tracker.set_waiting(true);
            TopologyMetrics::add(&self.metrics.pauses, 1);
            tracing::debug!(application = %self.topology.application_id(), in_flight, max, "in-flight bound reached: taking no records until half of them are acknowledged");
        } else if self.held && in_flight <= max / 2 {
            self.held = false;
            self.tracker.set_waiting(false);
        }
    }

    /// Follows a task's request to stop or resume fetching its partition.
    fn set_task_paused(&mut self, partition: i32, pause: bool) {
        let changed = if pause {
            self.task_paused.insert(partition)
        } else {
            self.task_paused.remove(&partition)
        };
        if !changed {
            return;
        }
        tracing::debug!(application = %self.topology.application_id(), partition, pause, "a processor asked to change fetching of its partition");
        self.set_partition_paused(pause, partition);
    }

    /// Pauses or resumes fetching of the assigned topic partitions numbered `partition`.
    fn set_partition_paused(&self, pause: bool, partition: i32) {
        let partitions: Vec<_> = self
            .assignment()
            .into_iter()
            .filter(|(_, p)| *p == partition)
            .collect();
        self.set_paused(pause, &partitions);
    }

    /// Sends what one call into a task produced. Every record holds back its input
    /// offset (if any) and the deferred records the call released, so a released record
    /// commits only once its results are acknowledged.
    async fn send_produced(
        &mut self,
        source: Option<(Slot, i64)>,
        produced: &[ProducedRecord],
        changelog: Vec<ProducedRecord>,
        released: Vec<crate::topology::Deferred>,
    ) {
        let mut sources = Sources::of(source);
        for deferred in released {
            let slot = self.slot(&deferred.topic, deferred.partition);
            sources.released.push((slot, deferred.offset));
        }
        let outputs = u32::try_from(produced.len() + changelog.len()).unwrap_or(u32::MAX);
        for &released in &sources.released {
            self.tracker.release(released, outputs);
        }
        for record in produced {
            send(&self.producer, self.tracker, record, sources.clone()).await;
        }
        self.tracker.queue_changelog(changelog, &sources);
    }

    /// Sends the changelog records whose predecessors are all acknowledged.
    async fn send_ready_changelog(&mut self) {
        if self.consumer.assignment_lost() {
            // The revocation that follows drops them.
            return;
        }
        for queued in self.tracker.ready_changelog() {
            send(&self.producer, self.tracker, &queued.record, queued.sources).await;
        }
    }

    /// The tracker slot of a partition, cached so the hot path neither allocates nor
    /// takes the tracker's lock to find it (the cache is cleared on every rebalance).
    fn slot(&mut self, topic: &str, partition: i32) -> Slot {
        if let Some((_, _, slot)) = self
            .slots
            .iter()
            .find(|(t, p, _)| *p == partition && t == topic)
        {
            return *slot;
        }
        let slot = self.tracker.slot(topic, partition);
        self.slots.push((topic.to_string(), partition, slot));
        slot
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

    /// Withdraws a closing task's stores from queries, then, if its offsets are
    /// committed, flushes them and writes their checkpoints (its outputs are already
    /// acknowledged: revocation and shutdown flush the producer first). Blocks on the
    /// broker: call it off the executor.
    fn close_task(&self, task: Task, committed: bool) {
        let state = &self.settings.state;
        let app = self.topology.application_id();
        for store in task.stores() {
            if let Some(ops) = &self.settings.ops {
                ops.remove_store(&store.spec().name, task.partition());
            }
            if !committed {
                continue;
            }
            let Some(topic) = store.changelog_topic() else {
                continue;
            };
            let Some(path) =
                super::restore::checkpoint_path(state, app, task.partition(), store.spec())
            else {
                continue;
            };
            let end = super::restore::changelog_end(
                &self.settings.client,
                topic,
                task.partition(),
                self.settings.startup_timeout,
            );
            let written = store
                .bytes()
                .flush()
                .map_err(|e| e.to_string())
                .and_then(|()| end.map_err(|e| e.to_string()))
                .and_then(|end| {
                    super::restore::write_checkpoint(&path, end, task.epoch())
                        .map_err(|e| e.to_string())
                });
            if let Err(error) = written {
                tracing::warn!(application = %app, store = %store.spec().name, %error, "no checkpoint written: the next start restores the whole changelog");
            }
        }
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

/// Awaits a start-up step, or returns `None` if `shutdown` fires first (nothing has been
/// consumed yet, so there is nothing to commit).
async fn until_stopped<T>(
    shutdown: &mut Shutdown,
    application: &str,
    step: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        _ = shutdown.wait() => {
            tracing::info!(%application, "stopped while starting");
            None
        }
        done = step => Some(done),
    }
}

/// Stops announcing this instance, leaves the consumer group and closes every client by
/// `deadline` (at least a second after the close). The clients go to a thread of their
/// own: librdkafka's consumer close waits for the group coordinator, which may never
/// answer; past the deadline that thread is left behind (the process is stopping) and
/// the shutdown reported incomplete.
// Each argument is one client or thread of the runner, handed over to be closed.
#[allow(clippy::too_many_arguments)]
async fn release_clients(
    application: &str,
    deadline: Instant,
    announcer: Option<super::instances::Announcer>,
    reader: Option<super::instances::AnnouncementReader>,
    consumer: Arc<StreamConsumer<ConsumeContext>>,
    producer: Arc<EngineProducer>,
    globals: super::global::GlobalTables,
    settings: &RunSettings,
) -> Result<(), RuntimeError> {
    let deadline = deadline.max(Instant::now() + Duration::from_secs(1));
    let deadline = tokio::time::Instant::from_std(deadline);
    if let Some(announcer) = &announcer {
        // Other instances stop directing queries here.
        let _ = tokio::time::timeout_at(deadline, announcer.announce(Vec::new())).await;
    }
    let (done, released) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("{application}-close"))
        .spawn(move || {
            // The reader's thread polls in 200 ms steps; dropping it joins it.
            drop(reader);
            consumer.unsubscribe();
            drop(consumer);
            drop(producer);
            drop(announcer);
            let _ = done.send(());
        });
    let left = match spawned {
        Ok(_) => tokio::time::timeout_at(deadline, released).await.is_ok(),
        Err(_) => false,
    };
    let globals_closed = tokio::time::timeout_at(deadline, globals.close(settings, application))
        .await
        .is_ok();
    if left && globals_closed {
        return Ok(());
    }
    let unfinished = if left {
        "closing the global tables' consumers"
    } else {
        "leaving the consumer group and closing the Kafka clients"
    };
    tracing::error!(%application, unfinished, "shutdown timeout: the broker did not answer in time");
    Err(RuntimeError::ShutdownIncomplete {
        application: application.to_string(),
        unfinished: unfinished.to_string(),
        uncommitted: Vec::new(),
        in_flight: 0,
    })
}

/// How long a task waits for the stores of its previous incarnation in this process to
/// be released (a task closed and reopened at once: an abort's rewind, a partition
/// revoked and assigned back) before its open fails.
const STORE_RELEASE_PATIENCE: Duration = Duration::from_secs(10);

/// Calls `open` until it succeeds, fails otherwise than with a store this process still
/// holds, or `patience` has passed.
async fn when_released<T>(
    mut open: impl FnMut() -> Result<T, crate::state::StoreError>,
    patience: Duration,
) -> Result<T, crate::state::StoreError> {
    let deadline = Instant::now() + patience;
    loop {
        match open() {
            Err(e) if e.held_in_this_process() && Instant::now() < deadline => {
                tracing::debug!(error = %e, "store still held by this process; waiting for its release");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            opened => return opened,
        }
    }
}

/// Opens a task's stores, restores them from their changelogs, and creates the task;
/// `None` if `cancel` was set meanwhile (the stores are closed again by then).
async fn open_task(
    shared: SharedForTasks,
    partition: i32,
    now: Timestamp,
    committed: HashMap<String, i64>,
    cancel: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Option<Task>, RuntimeError> {
    let SharedForTasks {
        topology,
        settings,
        metrics,
        globals,
        partition_counts,
        cache,
    } = shared;
    let state = &settings.state;
    let stores = when_released(
        || Task::open_stores(&topology, partition, state, &cache),
        STORE_RELEASE_PATIENCE,
    )
    .await
    .map_err(|e| RuntimeError::Client {
        what: "store open",
        reason: e.to_string(),
    })?;
    let app = topology.application_id().to_string();
    let publish = |store: &crate::topology::TaskStore, restoring: bool| {
        if let Some(ops) = &settings.ops {
            ops.put_store(
                &store.spec().name,
                partition,
                crate::ops::QueryableStore {
                    application: topology.application_id().to_string(),
                    store: store.bytes().clone(),
                    query: store.query().clone(),
                    restoring,
                },
            );
        }
    };
    // Until the task is made, an early return (cancelled, failed) withdraws the stores
    // from queries: published, a store would stay open (and locked) in this process.
    let mut published = Published {
        ops: settings.ops.as_deref(),
        stores: stores.iter().map(|s| s.spec().name.clone()).collect(),
        partition,
        armed: true,
    };
    // The stores of a task restore in parallel, each from its own changelog.
    let mut restoring = Vec::new();
    for store in &stores {
        publish(store, true);
        let Some(topic) = store.changelog_topic() else {
            publish(store, false);
            continue;
        };
        let checkpoint = super::restore::checkpoint_path(state, &app, partition, store.spec());
        let (client, bytes, spec, topic, committed, metrics, cancel) = (
            settings.client.clone(),
            store.bytes().clone(),
            store.spec().clone(),
            topic.to_string(),
            committed.clone(),
            metrics.clone(),
            cancel.clone(),
        );
        let timeout = settings.startup_timeout;
        let restore = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            super::restore::restore(
                &client,
                &bytes,
                &spec,
                &topic,
                partition,
                checkpoint.as_deref(),
                &committed,
                timeout,
                &metrics.restored_records,
                &cancel,
            )
            .map(|restored| restored.map(|r| (r, started.elapsed())))
        });
        restoring.push((store, restore));
    }
    let mut restored_stores = Vec::new();
    let mut results = Vec::new();
    let mut outcome = Ok(());
    // Every restore is awaited, even after one failed or was cancelled: none may still
    // write to a store once this returns.
    for (store, restore) in restoring {
        let restored = restore
            .await
            .map_err(|e| RuntimeError::Crashed {
                application: app.clone(),
                reason: e.to_string(),
            })
            .and_then(|r| r);
        match restored {
            Ok(Some((restored, elapsed))) => {
                tracing::info!(application = %app, store = %restored.store, partition, records = restored.records, held = restored.held.len(), from_checkpoint = restored.from_checkpoint, elapsed_ms = elapsed.as_millis() as u64, "store restored");
                restored_stores.push(store);
                results.push(restored);
            }
            Ok(None) => {}
            Err(e) => outcome = Err(e),
        }
    }
    outcome?;
    if cancel.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::info!(application = %app, partition, "restore stopped: the task was revoked or the instance is stopping");
        return Ok(None);
    }
    // Every store now holds the inputs before the committed offset; of the later
    // ones, apply those every changelog has completely, and process the rest again.
    let cut = super::restore::cut(&results, &committed, &topology.source_topics());
    let unapplied = super::restore::unapplied(&results, &cut);
    let epoch = results.iter().map(|r| r.epoch).max().unwrap_or(0) + 1;
    let fenced: u64 = results.iter().map(|r| r.fenced).sum();
    if fenced > 0 {
        tracing::warn!(application = %app, partition, records = fenced, "changelog records written by an earlier owner after a later one took the task over (a zombie) are left out");
    }
    for (store, restored) in restored_stores.into_iter().zip(results) {
        let (complete, dropped): (Vec<_>, Vec<_>) = restored
            .held
            .into_iter()
            .partition(|(inputs, _)| super::restore::within(inputs, &cut));
        let writes: Vec<_> = complete.into_iter().map(|(_, w)| w).collect();
        let applied = super::restore::apply(store.bytes(), &writes)?;
        TopologyMetrics::add(&metrics.restored_records, applied);
        if !dropped.is_empty() {
            tracing::info!(application = %app, store = %restored.store, partition, records = dropped.len(), "changelog records of inputs not complete in every store (the previous owner stopped mid-way) are left out; those inputs are processed again");
        }
        publish(store, false);
    }
    let mut task = Task::new(
        &topology,
        partition,
        stores,
        globals,
        partition_counts,
        now,
        metrics.clone(),
    )
    .map_err(RuntimeError::Record)?;
    task.set_applied(cut, unapplied);
    task.set_epoch(epoch);
    task.set_exactly_once(settings.processing_guarantee.exactly_once());
    published.armed = false;
    Ok(Some(task))
}

/// The stores a task being opened published for queries; withdrawn when dropped armed.
struct Published<'a> {
    ops: Option<&'a crate::ops::OpsState>,
    stores: Vec<String>,
    partition: i32,
    armed: bool,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        if let (true, Some(ops)) = (self.armed, self.ops) {
            for store in &self.stores {
                ops.remove_store(store, self.partition);
            }
        }
    }
}

/// Hands a record to librdkafka once. A full queue gives the token back to retry with;
/// any other refusal becomes a delivery failure for the production error policy.
fn try_send(
    producer: &EngineProducer,
    tracker: &OffsetTracker,
    record: &ProducedRecord,
    token: Box<DeliveryToken>,
) -> Result<(), Box<DeliveryToken>> {
    let mut base =
        BaseRecord::<[u8], [u8], Box<DeliveryToken>>::with_opaque_to(&record.topic, token)
            .timestamp(record.timestamp);
    if let Some(key) = &record.key {
        base = base.key(key.as_slice());
    }
    if let Some(value) = &record.value {
        base = base.payload(value.as_slice());
    }
    if let Some(partition) = record.partition {
        base = base.partition(partition);
    }
    if !record.headers.is_empty() {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for h in record.headers.iter() {
            headers = headers.insert(Header {
                key: &h.key,
                value: h.value.as_deref(),
            });
        }
        base = base.headers(headers);
    }
    match producer.send(base) {
        Ok(()) => Ok(()),
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
            Err(back.delivery_opaque)
        }
        Err((error, back)) => {
            let token = back.delivery_opaque;
            tracker.failed(DeliveryFailure {
                sources: token.sources,
                seq: token.seq,
                asynchronous: false,
                error,
                topic: record.topic.to_string(),
                key: record.key.clone(),
                value: record.value.clone(),
                timestamp: record.timestamp,
                headers: record.headers.clone(),
            });
            Ok(())
        }
    }
}

/// [`send`] from a blocking context (a rebalance callback).
fn send_now(
    producer: &EngineProducer,
    tracker: &OffsetTracker,
    record: &ProducedRecord,
    sources: Sources,
) {
    let seq = tracker.next_seq();
    let epoch = tracker.epoch();
    let mut token = Box::new(DeliveryToken {
        sources,
        seq,
        epoch,
    });
    while let Err(back) = try_send(producer, tracker, record, token) {
        token = back;
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Hands a record to librdkafka, waiting while its queue is full. Refusals become
/// delivery failures, handled by the production error policy. A free function so the
/// processing loop (which owns non-`Sync` tasks) is not borrowed across the await.
async fn send(
    producer: &EngineProducer,
    tracker: &OffsetTracker,
    record: &ProducedRecord,
    sources: Sources,
) {
    let seq = tracker.next_seq();
    let epoch = tracker.epoch();
    let mut token = Box::new(DeliveryToken {
        sources,
        seq,
        epoch,
    });
    while let Err(back) = try_send(producer, tracker, record, token) {
        token = back;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

impl Loop<'_> {
    /// Applies the production error policy to refused records.
    async fn handle_failures(&mut self) -> Result<(), RuntimeError> {
        for failure in self.tracker.take_failures() {
            TopologyMetrics::add(&self.metrics.production_errors, 1);
            // A record librdkafka refuses at hand-over with `State` met a transaction
            // already failed (the broker aborted it, say, while the process was
            // frozen): like a refusal from the broker, it ends the transaction.
            let transaction_failed = failure.asynchronous
                || failure.error.rdkafka_error_code() == Some(RDKafkaErrorCode::State);
            if self.transactional_id.is_some() && transaction_failed {
                // The transaction cannot commit any more: its other records are lost
                // with it, so no policy can skip just this one.
                return self.failed_in_transaction(failure).await;
            }
            let (partition, offset) = failure
                .sources
                .source
                .map(|(_, o)| (-1, o))
                .unwrap_or((-1, -1));
            let error = RecordError {
                class: ErrorClass::Production,
                topic: failure.topic.clone(),
                partition,
                offset,
                field: None,
                message: format!(
                    "the broker did not accept a record for `{}` (caused by input offset {offset}): {}",
                    failure.topic,
                    kafka_reason(&failure.error)
                ),
            };
            match &self.topology.error_policy().production {
                OnError::Fail => return Err(RuntimeError::Record(error)),
                OnError::Skip => {
                    TopologyMetrics::add(&self.metrics.skipped, 1);
                    tracing::warn!(application = %self.topology.application_id(), %error, "output skipped by the error policy");
                    self.tracker.acknowledged_all(&failure.sources);
                    self.tracker.settled(failure.seq);
                }
                OnError::DeadLetter(topic) if *topic == failure.topic => {
                    return Err(RuntimeError::Record(RecordError {
                        message: format!(
                            "writing to the dead-letter topic failed: {}",
                            error.message
                        ),
                        ..error
                    }));
                }
                OnError::DeadLetter(topic) => {
                    TopologyMetrics::add(&self.metrics.dead_lettered, 1);
                    tracing::warn!(application = %self.topology.application_id(), %error, dead_letter_topic = %topic, "output sent to the dead-letter topic");
                    let record = dead_letter_record(
                        topic,
                        self.topology.application_id(),
                        &error,
                        failure.key.as_deref(),
                        failure.value.as_deref(),
                        failure.timestamp,
                        &failure.headers,
                    );
                    // The dead-letter write replaces the failed output.
                    self.tracker.add_output_all(&failure.sources);
                    self.tracker.acknowledged_all(&failure.sources);
                    self.tracker.settled(failure.seq);
                    send(&self.producer, self.tracker, &record, failure.sources).await;
                }
            }
        }
        Ok(())
    }

    /// Exactly-once: writes out the record caches and commits the transaction with the
    /// offsets after every record processed; a failure aborts it and rewinds.
    async fn commit_transaction(&mut self) -> Result<(), RuntimeError> {
        if self.consumer.assignment_lost() {
            // A zombie: the revocation that follows aborts.
            return Ok(());
        }
        self.flush_tasks().await?;
        self.send_ready_changelog().await;
        match self
            .try_commit_transaction(self.settings.shutdown_timeout)
            .await?
        {
            Ok(()) => Ok(()),
            Err(failure) => self.abort_and_rewind(failure).await,
        }
    }

    /// Flushes the producer, applies the production error policy, and commits the
    /// transaction with every complete offset. `Err` only for a failure that stops the
    /// topology; `Ok(Err)` when the transaction must be aborted.
    async fn try_commit_transaction(
        &mut self,
        timeout: Duration,
    ) -> Result<Result<(), super::transactions::TransactionFailure>, RuntimeError> {
        use super::transactions::TransactionFailure;
        let producer = self.producer.clone();
        let flushed =
            tokio::task::spawn_blocking(move || flush_promptly(|t| producer.flush(t), timeout))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| kafka_reason(&e)));
        if let Err(reason) = flushed {
            return Ok(Err(TransactionFailure {
                reason: format!("not every output was acknowledged: {reason}"),
                fatal: false,
                group_moved_on: false,
            }));
        }
        self.handle_failures().await?;
        if self.tracker.queued_changelog() > 0 || self.tracker.awaiting_acknowledgement() > 0 {
            // A dead-letter record replaced a refused one: it must be in too.
            self.send_ready_changelog().await;
            let producer = self.producer.clone();
            let _ =
                tokio::task::spawn_blocking(move || flush_promptly(|t| producer.flush(t), timeout))
                    .await;
        }
        let commits = self.tracker.take_commits(|_, _| true);
        let (producer, consumer, to_commit) = (
            self.producer.clone(),
            self.consumer.clone(),
            commits.clone(),
        );
        let committed = tokio::task::spawn_blocking(move || {
            super::transactions::commit(
                &*producer,
                &to_commit,
                consumer.group_metadata().as_ref(),
                timeout,
            )
        })
        .await
        .unwrap_or_else(|e| {
            Err(TransactionFailure {
                reason: e.to_string(),
                fatal: false,
                group_moved_on: false,
            })
        });
        if committed.is_ok() {
            self.consumer.context().committed_in_transaction(&commits);
            tracing::debug!(application = %self.topology.application_id(), ?commits, "transaction committed");
        }
        Ok(committed)
    }

    /// A record the broker refused inside the transaction: an error the transaction
    /// cannot survive (fencing, a timeout the coordinator aborted it for) aborts it and
    /// rewinds; one that would come back on every retry (the record or the topic is
    /// refused) stops the topology.
    async fn failed_in_transaction(
        &mut self,
        failure: super::tracker::DeliveryFailure,
    ) -> Result<(), RuntimeError> {
        let permanent = matches!(
            failure.error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge
                    | RDKafkaErrorCode::InvalidRecord
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::PolicyViolation
                    | RDKafkaErrorCode::UnknownTopicOrPartition
            )
        );
        let offset = failure.sources.source.map_or(-1, |(_, o)| o);
        if permanent {
            return Err(RuntimeError::Record(RecordError {
                class: ErrorClass::Production,
                topic: failure.topic.clone(),
                partition: -1,
                offset,
                field: None,
                message: format!(
                    "the broker refused a record for `{}` (caused by input offset {offset}): {}. Under exactly_once_v2 a refused output aborts its transaction, so the error policy cannot skip it; the inputs since the last commit are processed again at the next start",
                    failure.topic,
                    kafka_reason(&failure.error)
                ),
            }));
        }
        let fatal = self.producer.client().fatal_error().is_some();
        self.abort_and_rewind(super::transactions::TransactionFailure {
            reason: format!(
                "a record for `{}` was refused: {}",
                failure.topic,
                kafka_reason(&failure.error)
            ),
            fatal,
            group_moved_on: false,
        })
        .await
    }

    /// Aborts the open transaction (replacing the producer when it cannot go on), then
    /// rewinds every task to the last commit. The instance keeps running.
    async fn abort_and_rewind(
        &mut self,
        failure: super::transactions::TransactionFailure,
    ) -> Result<(), RuntimeError> {
        let app = self.topology.application_id().to_string();
        tracing::warn!(application = %app, reason = %failure.reason, partitions = ?self.assignment(), "transaction aborted: every task goes back to its last commit (inputs rewound, stores restored from their changelogs)");
        TopologyMetrics::add(&self.metrics.transactions_aborted, 1);
        let replace = failure.fatal
            || {
                let (producer, timeout) = (self.producer.clone(), self.settings.shutdown_timeout);
                tokio::task::spawn_blocking(move || super::transactions::abort(&*producer, timeout))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|f| f.reason))
                .inspect_err(|reason| tracing::warn!(application = %app, %reason, "the transactional producer is replaced"))
                .is_err()
            };
        self.tracker.reset();
        if replace {
            self.replace_producer().await?;
        }
        self.rewind().await
    }

    /// A new transactional producer with the same transactional id (which fences the
    /// old one, if it still lives).
    async fn replace_producer(&mut self) -> Result<(), RuntimeError> {
        let Some(id) = self.transactional_id.clone() else {
            return Ok(());
        };
        let producer = create_producer(self.settings, Some(&id), self.tracker, self.metrics)?;
        start_transactions(producer.clone(), self.settings.startup_timeout).await?;
        let context = self.consumer.context();
        *lock(&context.producer) = Some(producer.clone());
        context
            .producer_failed
            .store(false, std::sync::atomic::Ordering::Release);
        let old = std::mem::replace(&mut self.producer, producer);
        // Dropping a producer waits for librdkafka's threads: not on the executor.
        tokio::task::spawn_blocking(move || drop(old));
        tracing::info!(application = %self.topology.application_id(), transactional_id = %id, "new transactional producer ready");
        Ok(())
    }

    /// After an abort: closes every task without a checkpoint (its stores may hold
    /// writes the aborted transaction took back; reopening wipes and restores them from
    /// the committed changelog), seeks every assigned partition back to its committed
    /// offset, and reopens the tasks. Restores in progress go on: they read only
    /// committed records and processed nothing.
    async fn rewind(&mut self) -> Result<(), RuntimeError> {
        self.slots.clear();
        let assignment: Vec<(String, i32)> = self
            .assignment()
            .into_iter()
            .filter(|(_, p)| !self.restoring.contains_key(p))
            .collect();
        let tasks: Vec<Task> = std::mem::take(&mut self.tasks).into_values().collect();
        let reopen: Vec<i32> = tasks.iter().map(Task::partition).collect();
        crate::executor::block_off_executor(|| {
            for task in tasks {
                self.close_task(task, false);
            }
        });
        if assignment.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &assignment {
            tpl.add_partition(topic, *partition);
        }
        let timeout = self.settings.startup_timeout;
        let reset = self
            .settings
            .client
            .client_config(ClientRole::Consumer)
            .get("auto.offset.reset")
            .map(str::to_string);
        let rewound = crate::executor::block_off_executor(|| {
            let committed = self
                .consumer
                .committed_offsets(tpl, timeout)
                .map(|c| partitions_of_offsets(&c))
                .map_err(|e| kafka_reason(&e))?;
            for (topic, partition, offset) in &committed {
                let to = if *offset >= 0 {
                    Offset::Offset(*offset)
                } else if matches!(reset.as_deref(), Some("latest" | "largest" | "end")) {
                    Offset::End
                } else {
                    Offset::Beginning
                };
                self.consumer
                    .seek(topic, *partition, to, timeout)
                    .map_err(|e| format!("{topic} partition {partition}: {}", kafka_reason(&e)))?;
            }
            Ok::<_, String>(committed)
        });
        let committed = rewound.map_err(|reason| RuntimeError::Client {
            what: "rewind to the committed offsets",
            reason,
        })?;
        tracing::info!(application = %self.topology.application_id(), ?committed, "partitions rewound to their committed offsets");
        lock(&self.consumer.context().committed_at_assignment).extend(
            committed
                .into_iter()
                .map(|(topic, partition, offset)| ((topic, partition), offset)),
        );
        for partition in reopen {
            if self.consumer.context().pause_assigned {
                let partitions: Vec<_> = assignment
                    .iter()
                    .filter(|(_, p)| *p == partition)
                    .cloned()
                    .collect();
                self.set_paused(true, &partitions);
                self.start_restore(partition);
            } else {
                self.open_now(partition).await?;
            }
        }
        Ok(())
    }

    fn commit(&self) {
        let commits = self.tracker.take_commits(|_, _| true);
        commit_async(
            &**self.consumer,
            &commits,
            self.topology.application_id(),
            self.metrics,
        );
    }

    /// Flushes the record caches (after a clean stop), drains in-flight outputs, commits
    /// what is safe and writes the stores' checkpoints, all by `deadline`: three quarters
    /// of the time for the outputs, the rest (at least a second) for the commit. What
    /// could not be finished is logged and returned as [`RuntimeError::ShutdownIncomplete`];
    /// a store whose offsets were not committed gets no checkpoint.
    async fn close(&mut self, flush: bool, deadline: Instant) -> Result<(), RuntimeError> {
        if self.transactional_id.is_some() {
            return self.close_transaction(flush, deadline).await;
        }
        let app = self.topology.application_id().to_string();
        self.stop_restores().await;
        let started = Instant::now();
        let outputs_deadline = started + deadline.saturating_duration_since(started) * 3 / 4;
        let mut result = Ok(());
        if flush && let Err(e) = self.flush_tasks().await {
            result = Err(e);
        }
        let mut unacknowledged = false;
        loop {
            if let Err(e) = self.handle_failures().await {
                result = Err(e);
                break;
            }
            self.send_ready_changelog().await;
            let producer = self.producer.clone();
            let _ = tokio::task::spawn_blocking(move || {
                flush_promptly(|t| producer.flush(t), Duration::from_millis(200))
            })
            .await;
            // Deferred records stay uncommitted: their processors stop with the tasks.
            if self.tracker.awaiting_acknowledgement() == 0
                && !self.tracker.has_failures()
                && self.tracker.queued_changelog() == 0
            {
                break;
            }
            if Instant::now() >= outputs_deadline {
                unacknowledged = true;
                tracing::warn!(application = %app, in_flight = self.tracker.in_flight(), "shutdown timeout: some outputs are unacknowledged; their offsets stay uncommitted and will be reprocessed");
                break;
            }
        }
        let commits = self.tracker.take_commits(|_, _| true);
        let committed = self.final_commit(&commits, deadline).await;
        match committed {
            Ok(()) if !unacknowledged => {
                if !commits.is_empty() {
                    tracing::info!(application = %app, ?commits, "final offsets committed");
                }
                let tasks: Vec<Task> = std::mem::take(&mut self.tasks).into_values().collect();
                crate::executor::block_off_executor(|| {
                    for task in tasks {
                        self.close_task(task, true);
                    }
                });
                result
            }
            committed => {
                let in_flight = self.tracker.in_flight();
                let uncommitted = if committed.is_err() {
                    commits
                } else {
                    Vec::new()
                };
                let unfinished = match committed {
                    Err(error) => format!("the final commit failed ({error})"),
                    Ok(()) => "outputs were still unacknowledged".to_string(),
                };
                tracing::error!(application = %app, %unfinished, ?uncommitted, in_flight, "shutdown incomplete: no checkpoint written; the records after the last committed offsets will be processed again");
                result.and(Err(RuntimeError::ShutdownIncomplete {
                    application: app,
                    unfinished,
                    uncommitted,
                    in_flight,
                }))
            }
        }
    }
}

impl Loop<'_> {
    /// Commits `commits`, waiting at most until `deadline` (at least a second).
    ///
    /// Another instance leaving or joining at the same moment makes the group rebalance:
    /// the commit is refused while it does, or for carrying the generation before it.
    /// librdkafka rejoins under the new generation only once this consumer has served
    /// the rebalance (for a refused generation, a revocation of everything as lost), so
    /// between attempts the consumer is polled: its callbacks only log from now on, and
    /// the records it returns are dropped (they are after the offsets being committed).
    fn final_commit(
        &self,
        commits: &[(String, i32, i64)],
        deadline: Instant,
    ) -> impl Future<Output = Result<(), CommitError>> + Send + 'static {
        let (consumer, metrics, tracker, commits) = (
            self.consumer.clone(),
            self.metrics.clone(),
            self.tracker.clone(),
            commits.to_vec(),
        );
        let app = self.topology.application_id().to_string();
        consumer
            .context()
            .closing
            .store(true, std::sync::atomic::Ordering::Release);
        let deadline = Instant::now()
            + deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1));
        async move {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let (consumer_, metrics, tracker, to_commit) = (
                    consumer.clone(),
                    metrics.clone(),
                    tracker.clone(),
                    commits.clone(),
                );
                let committed = tokio::task::spawn_blocking(move || {
                    commit_bounded(&*consumer_, &to_commit, left, &metrics, &tracker)
                })
                .await
                .unwrap_or_else(|e| Err(CommitError::Refused(e.to_string())));
                match committed {
                    Err(error)
                        if error.group_rebalancing() && left > Duration::from_millis(100) =>
                    {
                        tracing::debug!(application = %app, %error, "final commit refused while the group rebalances: serving the rebalance, then committing again");
                        let served = tokio::time::Instant::now() + Duration::from_millis(100);
                        while tokio::time::timeout_at(served, consumer.recv())
                            .await
                            .is_ok()
                        {}
                    }
                    done => break done,
                }
            }
        }
    }

    /// [`Loop::close`] under exactly-once: the last transaction commits (after a clean
    /// stop) or aborts (after a failure); the stores get checkpoints only if it
    /// committed.
    async fn close_transaction(
        &mut self,
        flush: bool,
        deadline: Instant,
    ) -> Result<(), RuntimeError> {
        let app = self.topology.application_id().to_string();
        self.stop_restores().await;
        let mut result = Ok(());
        let mut group_moved_on = false;
        let committed = if !flush {
            Err("the topology failed".to_string())
        } else if self.consumer.assignment_lost() {
            Err("the assignment was lost".to_string())
        } else {
            match self.flush_tasks().await {
                Err(e) => {
                    result = Err(e);
                    Err("the record caches could not be written out".to_string())
                }
                Ok(()) => {
                    self.send_ready_changelog().await;
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_secs(1));
                    match self.try_commit_transaction(left).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(failure)) => {
                            group_moved_on = failure.group_moved_on;
                            Err(failure.reason)
                        }
                        Err(e) => {
                            let reason = e.to_string();
                            result = Err(e);
                            Err(reason)
                        }
                    }
                }
            }
        };
        let tasks: Vec<Task> = std::mem::take(&mut self.tasks).into_values().collect();
        match committed {
            Ok(()) => {
                tracing::info!(application = %app, "final transaction committed");
                crate::executor::block_off_executor(|| {
                    for task in tasks {
                        self.close_task(task, true);
                    }
                });
                result
            }
            Err(unfinished) => {
                let (producer, timeout) = (
                    self.producer.clone(),
                    deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_secs(1)),
                );
                let _ = tokio::task::spawn_blocking(move || {
                    super::transactions::abort(&*producer, timeout)
                })
                .await;
                self.tracker.reset();
                crate::executor::block_off_executor(|| {
                    for task in tasks {
                        self.close_task(task, false);
                    }
                });
                if !flush {
                    tracing::info!(application = %app, "final transaction aborted: the inputs since the last commit are processed again at the next start");
                    return result;
                }
                if group_moved_on {
                    // Another instance joined or left at this moment: as at any revocation
                    // under exactly-once, the aborted work is its next owner's to redo.
                    // Nothing is lost or doubled, and the stores get no checkpoint.
                    tracing::warn!(application = %app, %unfinished, "final transaction aborted because the group is rebalancing: the inputs since the last commit go to their next owner, as at a revocation");
                    return result;
                }
                tracing::error!(application = %app, %unfinished, "shutdown incomplete: the final transaction was aborted; the inputs since the last commit are processed again at the next start");
                result.and(Err(RuntimeError::ShutdownIncomplete {
                    application: app,
                    unfinished: format!("the final transaction did not commit ({unfinished})"),
                    uncommitted: Vec::new(),
                    in_flight: 0,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{assignment_strategy, when_released};
    use crate::state::StoreError;
    use std::time::Duration;

    /// A task whose restore was cancelled (revoked while restoring) must leave nothing
    /// open: not even the stores it published for queries, or the next open of the
    /// partition in this process finds them locked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_open_withdraws_its_stores_and_the_partition_opens_again() {
        use crate::serde::Serdes;
        use crate::topology::{Consumed, Grouped, TopologyBuilder};
        let broker = crate::kafka::EmbeddedBroker::start(1).unwrap();
        broker.create_topic("in", 1).unwrap();
        broker.create_topic("app-counts-changelog", 1).unwrap();
        let b = TopologyBuilder::new("app");
        b.stream(
            "in",
            ["in"],
            Consumed::with(Serdes::string(), Serdes::string()),
        )
        .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
        .count("count", "counts")
        .to_stream("updates")
        .for_each("ignore", |_k, _v| {});
        let topology = b.build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut settings = super::RunSettings::new(broker.bootstrap_servers());
        settings.state = crate::state::RocksSettings::new(dir.path(), 1 << 20, 1 << 20);
        let ops = std::sync::Arc::new(crate::ops::OpsState::default());
        settings.ops = Some(ops.clone());
        let shared = super::SharedForTasks {
            topology: topology.clone(),
            settings: std::sync::Arc::new(settings),
            metrics: Default::default(),
            globals: Default::default(),
            partition_counts: std::sync::Arc::new(
                [
                    ("in".to_string(), 1),
                    ("app-counts-changelog".to_string(), 1),
                ]
                .into(),
            ),
            cache: crate::state::CacheBudget::new(1 << 20),
        };
        let open = |cancelled: bool| {
            super::open_task(
                shared.clone(),
                0,
                0,
                Default::default(),
                std::sync::Arc::new(std::sync::atomic::AtomicBool::new(cancelled)),
            )
        };
        assert!(open(true).await.unwrap().is_none(), "cancelled");
        assert!(
            !ops.holds_store("counts", 0),
            "a cancelled task's stores are withdrawn from queries"
        );
        let task = open(false).await.expect("the partition opens again");
        assert!(task.is_some());
    }

    #[tokio::test]
    async fn a_store_still_held_by_this_process_is_opened_once_released() {
        let held = || {
            StoreError::Rocks {
            store: "s".into(),
            path: "/state/app/0/s".into(),
            message: "IO error: lock hold by current process, acquire time 1 acquiring thread 2: /state/app/0/s/LOCK: No locks available".into(),
        }
        };
        let mut attempts = 0;
        let opened = when_released(
            || {
                attempts += 1;
                if attempts < 3 {
                    Err(held())
                } else {
                    Ok(attempts)
                }
            },
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(opened.unwrap(), 3, "retried until released");
        let never = when_released(|| Err::<(), _>(held()), Duration::from_millis(100)).await;
        assert!(
            never.unwrap_err().held_in_this_process(),
            "gives up after its patience"
        );
        let mut calls = 0;
        let other = when_released(
            || {
                calls += 1;
                Err::<(), _>(StoreError::Rocks {
                    store: "s".into(),
                    path: "/state".into(),
                    message: "Corruption".into(),
                })
            },
            Duration::from_secs(5),
        )
        .await;
        assert!(other.is_err() && calls == 1, "other errors are not retried");
    }

    #[test]
    fn a_task_reading_several_topics_gets_range_and_other_assignors_are_refused_with_the_fix() {
        let one = ["in".to_string()];
        let two = ["in".to_string(), "app-by-id-repartition".to_string()];
        assert_eq!(
            assignment_strategy(None, &one),
            Ok(Some("cooperative-sticky"))
        );
        assert_eq!(assignment_strategy(Some("roundrobin"), &one), Ok(None));
        assert_eq!(assignment_strategy(None, &two), Ok(Some("range")));
        assert_eq!(assignment_strategy(Some("range"), &two), Ok(None));
        let refused = assignment_strategy(Some("cooperative-sticky"), &two).unwrap_err();
        assert!(
            refused.contains("in, app-by-id-repartition")
                && refused.contains("set it to \"range\""),
            "{refused}"
        );
    }
}
