//! Counters a running topology keeps: records in and out, errors by class, skipped and
//! dead-lettered records, in-flight records and pauses. Shared by the task, the runtime
//! and the test driver; read by logs, tests and (later) the metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one topology instance.
#[derive(Debug, Default)]
pub struct TopologyMetrics {
    pub(crate) records_in: AtomicU64,
    pub(crate) records_out: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) deserialization_errors: AtomicU64,
    pub(crate) processing_errors: AtomicU64,
    pub(crate) production_errors: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) in_flight_peak: AtomicU64,
    pub(crate) pauses: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) punctuations: AtomicU64,
    pub(crate) assigned_partitions: AtomicU64,
    pub(crate) restored_records: AtomicU64,
}

/// A point-in-time copy of [`TopologyMetrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MetricsSnapshot {
    /// Records consumed.
    pub records_in: u64,
    /// Records produced (acknowledged by the broker, or written in the test driver).
    pub records_out: u64,
    /// Records skipped by the error policy.
    pub skipped: u64,
    /// Records written to a dead-letter topic.
    pub dead_lettered: u64,
    /// Records that did not deserialize.
    pub deserialization_errors: u64,
    /// Records whose processing failed.
    pub processing_errors: u64,
    /// Records the broker refused.
    pub production_errors: u64,
    /// Consumed records whose outputs are not yet acknowledged.
    pub in_flight: u64,
    /// Highest `in_flight` seen.
    pub in_flight_peak: u64,
    /// Times consumption was paused because of the in-flight bound.
    pub pauses: u64,
    /// Offset commits made.
    pub commits: u64,
    /// Punctuations fired.
    pub punctuations: u64,
    /// Partitions currently assigned to this instance.
    pub assigned_partitions: u64,
    /// Changelog records applied while restoring stores.
    pub restored_records: u64,
}

impl TopologyMetrics {
    /// Copies every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            records_in: r(&self.records_in),
            records_out: r(&self.records_out),
            skipped: r(&self.skipped),
            dead_lettered: r(&self.dead_lettered),
            deserialization_errors: r(&self.deserialization_errors),
            processing_errors: r(&self.processing_errors),
            production_errors: r(&self.production_errors),
            in_flight: r(&self.in_flight),
            in_flight_peak: r(&self.in_flight_peak),
            pauses: r(&self.pauses),
            commits: r(&self.commits),
            punctuations: r(&self.punctuations),
            assigned_partitions: r(&self.assigned_partitions),
            restored_records: r(&self.restored_records),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set_in_flight(&self, n: u64) {
        self.in_flight.store(n, Ordering::Relaxed);
        self.in_flight_peak.fetch_max(n, Ordering::Relaxed);
    }
}
