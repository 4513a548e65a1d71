//! Committing what is complete: input offsets under at-least-once, the open transaction
//! under exactly-once.
//!
//! At-least-once commits go without waiting (the consumer's commit callback tells the
//! tracker), except where a revocation or the shutdown must know the outcome
//! ([`commit_bounded`]). Under exactly-once a transaction that cannot commit is aborted,
//! its producer replaced if it cannot go on, and every task rewound to the last commit.

use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{
    ClientRole, CommitError, commit_async_reporting, commit_within, flush_promptly, kafka_reason,
};
use crate::metrics::TopologyMetrics;
use crate::runtime::tracker::{DeliveryFailure, OffsetTracker};
use crate::runtime::{RuntimeError, transactions};
use crate::topology::{ErrorClass, RecordError, Task};

use super::callbacks::partitions_of_offsets;
use super::startup::{create_producer, start_transactions};
use super::{Loop, lock};

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
pub(super) fn commit_bounded<C: ConsumerContext>(
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

impl Loop<'_> {
    pub(super) fn commit(&self) {
        let commits = self.tracker.take_commits(|_, _| true);
        commit_async(
            &**self.consumer,
            &commits,
            self.topology.application_id(),
            self.metrics,
        );
    }

    /// Exactly-once: writes out the record caches and commits the transaction with the
    /// offsets after every record processed; a failure aborts it and rewinds.
    pub(super) async fn commit_transaction(&mut self) -> Result<(), RuntimeError> {
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
    pub(super) async fn try_commit_transaction(
        &mut self,
        timeout: Duration,
    ) -> Result<Result<(), transactions::TransactionFailure>, RuntimeError> {
        use transactions::TransactionFailure;
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
            transactions::commit(
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
    pub(super) async fn failed_in_transaction(
        &mut self,
        failure: DeliveryFailure,
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
        self.abort_and_rewind(transactions::TransactionFailure {
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
        failure: transactions::TransactionFailure,
    ) -> Result<(), RuntimeError> {
        let app = self.topology.application_id().to_string();
        tracing::warn!(application = %app, reason = %failure.reason, partitions = ?self.assignment(), "transaction aborted: every task goes back to its last commit (inputs rewound, stores restored from their changelogs)");
        TopologyMetrics::add(&self.metrics.transactions_aborted, 1);
        let replace = failure.fatal
            || {
                let (producer, timeout) = (self.producer.clone(), self.settings.shutdown_timeout);
                tokio::task::spawn_blocking(move || transactions::abort(&*producer, timeout))
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
    pub(super) async fn replace_producer(&mut self) -> Result<(), RuntimeError> {
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
    pub(super) async fn rewind(&mut self) -> Result<(), RuntimeError> {
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
}
