//! Consumer lag for the metrics endpoint, read from librdkafka's local state.
//!
//! A [`LagSource`] the runner hands its metrics while it runs: a scrape reads the
//! watermarks and positions librdkafka already holds, and the offset tracker's processed
//! positions, without a broker round trip. Its own file because it is the one place the
//! runner calls librdkafka's C API directly (`unsafe`).

use std::sync::Arc;

use rdkafka::Offset;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};

use crate::metrics::{LagSource, PartitionLag};
use crate::runtime::tracker::OffsetTracker;

use super::callbacks::ConsumeContext;
use super::lock;

/// Consumer lag from librdkafka's local state: the high watermark its last fetch saw and
/// this instance's position, so a scrape costs no broker round trip.
///
/// It holds the consumer weakly: the consumer's context holds the metrics that hold this,
/// and a strong reference would keep a runner's consumer (and its group membership)
/// alive after the runner's future is dropped without finishing.
pub(super) struct ConsumerLag {
    pub(super) consumer: std::sync::Weak<StreamConsumer<ConsumeContext>>,
    pub(super) tracker: Arc<OffsetTracker>,
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
