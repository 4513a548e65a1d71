//! The rdkafka client contexts of a runner: librdkafka calls them on its own threads.
//!
//! The producer's delivery reports feed the offset tracker, so an input offset commits
//! once everything it caused is acknowledged. The consumer's rebalance callbacks finish
//! the work of revoked partitions (flush, commit, or commit the open transaction under
//! exactly-once) before they go, remember where assigned partitions start, and queue
//! [`RebalanceEvent`]s for the processing loop, which opens and closes the tasks (see
//! `tasks`). Kept apart from the loop because they run outside it and share with it only
//! what is behind a lock or an atomic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{flush_promptly, forward_error, forward_log, forward_stats, kafka_reason};
use crate::metrics::TopologyMetrics;
use crate::runtime::tracker::{DeliveryFailure, DeliveryToken, OffsetTracker};
use crate::runtime::{topics, transactions};

use super::commit::commit_bounded;
use super::send::send_now;
use super::{EngineProducer, headers_of, lock};

/// Producer callbacks: acknowledgements feed the offset tracker.
pub(super) struct ProduceContext {
    pub(super) tracker: Arc<OffsetTracker>,
    pub(super) metrics: Arc<TopologyMetrics>,
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

pub(super) enum RebalanceEvent {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

/// Consumer callbacks: revoked partitions are flushed and committed before they go.
pub(super) struct ConsumeContext {
    pub(super) application_id: String,
    pub(super) tracker: Arc<OffsetTracker>,
    pub(super) metrics: Arc<TopologyMetrics>,
    /// The instance's producer (replaced when a transactional one is fenced).
    pub(super) producer: Mutex<Option<Arc<EngineProducer>>>,
    /// Exactly-once: the producer is transactional, and a revocation commits the open
    /// transaction (or aborts it, and the tasks kept go back to their committed state).
    pub(super) exactly_once: bool,
    /// Set when a revocation aborted the transaction: the tasks kept must be rewound.
    pub(super) aborted: std::sync::atomic::AtomicBool,
    /// Set when the transactional producer failed for good: it must be replaced.
    pub(super) producer_failed: std::sync::atomic::AtomicBool,
    pub(super) events: Mutex<Vec<RebalanceEvent>>,
    /// Whether `events` holds anything: read for every record, so without the lock.
    pub(super) rebalanced: std::sync::atomic::AtomicBool,
    /// Where revoked partitions stood, for resuming them if they come back.
    pub(super) resume: Mutex<HashMap<(String, i32), i64>>,
    /// Committed offsets of the assigned partitions when they were assigned (-1: none):
    /// the position for lag until a partition delivers its first record.
    pub(super) committed_at_assignment: Mutex<HashMap<(String, i32), i64>>,
    /// Revoked partitions whose offsets could not be committed: their stores get no
    /// checkpoint (a restore from it would not know which inputs are applied).
    pub(super) uncommitted_revoked: Mutex<std::collections::HashSet<(String, i32)>>,
    /// Learns committed offsets of repartition topics, to delete what is committed.
    pub(super) purger: Option<Arc<Mutex<topics::RepartitionPurger>>>,
    pub(super) flush_timeout: Duration,
    /// Set when the final commit begins: a rebalance the group goes through while this
    /// instance leaves it (another instance leaving at the same time) has nothing to
    /// process here and nothing to commit but what the final commit carries, so its
    /// callbacks make no broker round trip. One of them, reading
    /// committed offsets, would otherwise wait out its whole timeout on a consumer
    /// being destroyed, and the shutdown with it.
    pub(super) closing: std::sync::atomic::AtomicBool,
    /// Whether tasks restore stores when they open: their partitions are paused at
    /// assignment, before anything is fetched, and resumed once the task is ready.
    pub(super) pause_assigned: bool,
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

pub(super) fn partitions_of(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
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
    /// state ([`Loop::rewind`](super::Loop::rewind)).
    fn finish_revoked_transaction(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[(String, i32)],
    ) {
        let Some(producer) = lock(&self.producer).clone() else {
            return;
        };
        let committed = if consumer.assignment_lost() {
            Err(transactions::TransactionFailure {
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
                .map_err(|e| transactions::TransactionFailure {
                    reason: format!("not every output was acknowledged: {}", kafka_reason(&e)),
                    fatal: false,
                    group_moved_on: false,
                })
                .and_then(|()| {
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_secs(1));
                    transactions::commit(
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
                    || transactions::abort(&*producer, self.flush_timeout)
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
    pub(super) fn committed_in_transaction(&self, commits: &[(String, i32, i64)]) {
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
    pub(super) fn start_offsets(&self, partition: i32) -> HashMap<String, i64> {
        lock(&self.committed_at_assignment)
            .iter()
            .filter(|((_, p), _)| *p == partition)
            .map(|((t, _), o)| (t.clone(), *o))
            .collect()
    }
}

pub(super) fn partitions_of_offsets(tpl: &TopicPartitionList) -> Vec<(String, i32, i64)> {
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
