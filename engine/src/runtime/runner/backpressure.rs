//! Holding input back: the in-flight bound, and pausing the fetching of partitions.
//!
//! At `max_in_flight` input records with unacknowledged outputs the loop stops taking
//! records in until half of them are acknowledged. Separately, partitions are paused
//! when a processor asks (`ProcessorContext::pause_input`) and while a task restores its
//! stores, and resumed when both are over.

use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;

use crate::metrics::TopologyMetrics;

use super::Loop;

impl Loop<'_> {
    pub(super) fn set_paused(&self, pause: bool, partitions: &[(String, i32)]) {
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
    pub(super) fn apply_backpressure(&mut self) {
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
    pub(super) fn set_task_paused(&mut self, partition: i32, pause: bool) {
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
    pub(super) fn set_partition_paused(&self, pause: bool, partition: i32) {
        let partitions: Vec<_> = self
            .assignment()
            .into_iter()
            .filter(|(_, p)| *p == partition)
            .collect();
        self.set_paused(pause, &partitions);
    }
}
