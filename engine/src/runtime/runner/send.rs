//! Sending: handing produced records to librdkafka, tracked until acknowledged.
//!
//! Every record carries a [`DeliveryToken`] naming the input offsets it holds back; the
//! producer's delivery callback (`callbacks`) gives it back to the offset tracker.
//! Changelog records wait for the outputs before them. A record the broker refuses
//! meets the production error policy here (fail, skip, or the dead-letter topic; under
//! exactly-once it aborts the transaction instead, see `commit`).

use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;

use crate::kafka::kafka_reason;
use crate::metrics::TopologyMetrics;
use crate::record::ProducedRecord;
use crate::runtime::RuntimeError;
use crate::runtime::tracker::{DeliveryFailure, DeliveryToken, OffsetTracker, Slot, Sources};
use crate::topology::{ErrorClass, OnError, RecordError, dead_letter_record};

use super::{EngineProducer, Loop};

impl Loop<'_> {
    /// Sends what one call into a task produced. Every record holds back its input
    /// offset (if any) and the deferred records the call released, so a released record
    /// commits only once its results are acknowledged.
    pub(super) async fn send_produced(
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
    pub(super) async fn send_ready_changelog(&mut self) {
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
    pub(super) fn slot(&mut self, topic: &str, partition: i32) -> Slot {
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

    /// Applies the production error policy to refused records.
    pub(super) async fn handle_failures(&mut self) -> Result<(), RuntimeError> {
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
pub(super) fn send_now(
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
