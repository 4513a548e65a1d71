//! Offset commits whose outcome the engine learns: bounded synchronous ones, and
//! asynchronous ones that report to the consumer's commit callback.
//!
//! librdkafka's synchronous commit (`rd_kafka_commit` with `async = 0`, what
//! rust-rdkafka's `CommitMode::Sync` calls) waits without bound: with no group
//! coordinator reachable the request sits in librdkafka's queue until one answers, which
//! never happens once the broker is gone. So shutdown and revocation commit through
//! `rd_kafka_commit_queue` with a queue of their own, and wait on that queue with a
//! timeout.

use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::bindings as rd;
use rdkafka::consumer::{Consumer, ConsumerContext};

/// Why a bounded commit did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// The broker did not answer in time; the commit may still happen later.
    #[error("no answer from the group coordinator within {0:?}")]
    TimedOut(Duration),
    /// The broker (or librdkafka) refused the commit.
    #[error("{0}")]
    Refused(String),
    /// The group is rebalancing (another member joined or left): the same commit may
    /// go through once the rebalance is over.
    #[error("Broker: Group rebalance in progress")]
    Rebalancing,
    /// The group has moved on to a generation this member has not joined yet (or no
    /// longer knows the member): librdkafka rejoins, once the application has served
    /// the revocation it raises, and the same commit may go through under the new
    /// generation.
    #[error("{0}")]
    GroupMovedOn(String),
}

impl CommitError {
    /// Whether the group is between generations, so that the commit may go through
    /// once the consumer has served the rebalance.
    pub fn group_rebalancing(&self) -> bool {
        matches!(
            self,
            CommitError::Rebalancing | CommitError::GroupMovedOn(_)
        )
    }
}

/// Commits `offsets` for `consumer`'s group and waits at most `timeout` for the answer.
///
/// The consumer's own `commit_callback` is not called for this commit: the caller learns
/// the outcome from the result.
pub fn commit_within<C, K>(
    consumer: &K,
    offsets: &TopicPartitionList,
    timeout: Duration,
) -> Result<(), CommitError>
where
    C: ConsumerContext,
    K: Consumer<C>,
{
    let client = consumer.client().native_ptr();
    let deadline = Instant::now() + timeout;
    // SAFETY: `client` is a live handle while `consumer` is borrowed. The queue created
    // here is destroyed on every path below; librdkafka keeps its own reference for the
    // commit's reply, so destroying it before the reply comes (a timeout) is allowed
    // (rdkafka.h: queues are reference counted). `offsets` is copied by
    // `rd_kafka_commit_queue` before it returns. Each event polled is destroyed once.
    #[allow(unsafe_code)]
    unsafe {
        let queue = rd::rd_kafka_queue_new(client);
        if queue.is_null() {
            return Err(CommitError::Refused(
                "librdkafka could not create a queue".into(),
            ));
        }
        let queued =
            rd::rd_kafka_commit_queue(client, offsets.ptr(), queue, None, std::ptr::null_mut());
        if queued != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            rd::rd_kafka_queue_destroy(queue);
            return Err(CommitError::Refused(error_name(queued)));
        }
        let outcome = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(CommitError::TimedOut(timeout));
            }
            let wait_ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
            let event = rd::rd_kafka_queue_poll(queue, wait_ms);
            if event.is_null() {
                continue;
            }
            let is_commit = rd::rd_kafka_event_type(event) == rd::RD_KAFKA_EVENT_OFFSET_COMMIT;
            let result = is_commit.then(|| commit_event_result(event));
            rd::rd_kafka_event_destroy(event);
            if let Some(result) = result {
                break result;
            }
        };
        rd::rd_kafka_queue_destroy(queue);
        outcome
    }
}

/// The outcome carried by an offset-commit event: its own error, else the first
/// partition's.
///
/// # Safety
/// `event` must be a live `RD_KAFKA_EVENT_OFFSET_COMMIT` event.
#[allow(unsafe_code)]
unsafe fn commit_event_result(event: *mut rd::rd_kafka_event_t) -> Result<(), CommitError> {
    // SAFETY: the caller guarantees a live commit event; the partition list it returns
    // belongs to the event and is only read here, before the event is destroyed.
    unsafe {
        let error = rd::rd_kafka_event_error(event);
        if error == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS {
            return Err(CommitError::Rebalancing);
        }
        if matches!(
            error,
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION
                | rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID
        ) {
            return Err(CommitError::GroupMovedOn(error_name(error)));
        }
        if error != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(CommitError::Refused(error_name(error)));
        }
        let partitions = rd::rd_kafka_event_topic_partition_list(event);
        if partitions.is_null() {
            return Ok(());
        }
        let list = &*partitions;
        let count = usize::try_from(list.cnt).unwrap_or(0);
        for i in 0..count {
            let element = &*list.elems.add(i);
            if element.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                let topic = std::ffi::CStr::from_ptr(element.topic).to_string_lossy();
                return Err(CommitError::Refused(format!(
                    "{topic}/{}: {}",
                    element.partition,
                    error_name(element.err)
                )));
            }
        }
        Ok(())
    }
}

fn error_name(code: rd::rd_kafka_resp_err_t) -> String {
    // SAFETY: librdkafka returns a static NUL-terminated string for every code.
    #[allow(unsafe_code)]
    unsafe {
        std::ffi::CStr::from_ptr(rd::rd_kafka_err2str(code))
            .to_string_lossy()
            .into_owned()
    }
}

/// Commits `offsets` without waiting; the outcome reaches the consumer context's
/// `commit_callback` when the consumer is next polled.
///
/// rust-rdkafka's `CommitMode::Async` calls `rd_kafka_commit` with neither a reply queue
/// nor a callback, so librdkafka reports nothing and `commit_callback` never runs
/// (fede1024/rust-rdkafka#856). Committing through `rd_kafka_commit_queue` with the
/// consumer's own queue makes librdkafka post the result there as an offset-commit event,
/// which rust-rdkafka's poll hands to `commit_callback`.
pub fn commit_async_reporting<C, K>(
    consumer: &K,
    offsets: &TopicPartitionList,
) -> Result<(), CommitError>
where
    C: ConsumerContext,
    K: Consumer<C>,
{
    let client = consumer.client().native_ptr();
    // SAFETY: `client` is a live handle while `consumer` is borrowed. The queue handle
    // from `rd_kafka_queue_get_consumer` is a new reference to the consumer queue, which
    // the client owns; it is released below on every path, and librdkafka keeps its own
    // reference for the commit's reply. `offsets` is copied before the call returns.
    #[allow(unsafe_code)]
    unsafe {
        let queue = rd::rd_kafka_queue_get_consumer(client);
        if queue.is_null() {
            return Err(CommitError::Refused(
                "the consumer has no group queue (no group.id)".into(),
            ));
        }
        let queued =
            rd::rd_kafka_commit_queue(client, offsets.ptr(), queue, None, std::ptr::null_mut());
        rd::rd_kafka_queue_destroy(queue);
        if queued == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            Ok(())
        } else {
            Err(CommitError::Refused(error_name(queued)))
        }
    }
}
