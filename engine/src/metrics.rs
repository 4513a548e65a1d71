//! Counters a running topology keeps: records in and out, errors by class, skipped and
//! dead-lettered records, in-flight records and pauses; latency histograms; and, through
//! a [`LagSource`] the runtime installs, consumer lag. Shared by the task, the runtime
//! and the test driver; read by logs, tests and the metrics endpoint.
//!
//! Knows no Kafka client: lag comes from whatever implements [`LagSource`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the processing-latency buckets, in seconds (100 µs to 10 s).
pub const PROCESSING_LATENCY_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Upper bounds of the end-to-end latency buckets, in seconds (1 ms to 1 h): records may
/// wait far longer in a topic than in processing.
pub const E2E_LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// A fixed-bucket histogram of durations: one atomic per bucket, lock-free to observe.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in nanoseconds, increasing.
    bounds_ns: Vec<u64>,
    /// Upper bounds in seconds, as rendered.
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

/// A point-in-time copy of a [`Histogram`], cumulative like Prometheus' buckets.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations <= bound)`, increasing; `+Inf` excluded.
    pub buckets: Vec<(f64, u64)>,
    /// Every observation (the `+Inf` bucket).
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum_seconds: f64,
}

impl Histogram {
    /// An empty histogram with these upper bounds (seconds, increasing).
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds_ns: bounds.iter().map(|b| (b * 1e9) as u64).collect(),
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Counts one observation.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self
            .bounds_ns
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(self.bounds_ns.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Cumulative counts; `count` is the sum of the buckets, so the `+Inf` bucket always
    /// equals it even while other threads observe.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, n) in self.bounds.iter().zip(self.buckets.iter()) {
            running += n.load(Ordering::Relaxed);
            buckets.push((*bound, running));
        }
        let inf = self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count: running + inf,
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// Lag of one assigned partition: records between this instance's position (the next
/// offset to process) and the partition's end (high watermark).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionLag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// High watermark minus position, at least 0.
    pub lag: i64,
}

/// Reports the consumer lag of the partitions assigned now. Implemented by the runtime
/// over its consumer; must answer from local state, without a broker round trip.
pub trait LagSource: Send + Sync {
    /// One entry per assigned partition whose end and position are known.
    fn consumer_lag(&self) -> Vec<PartitionLag>;
}

#[derive(Default)]
struct LagSlot(Mutex<Option<Arc<dyn LagSource>>>);

impl std::fmt::Debug for LagSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LagSlot")
    }
}

/// Live counters of one topology instance.
#[derive(Debug)]
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
    pub(crate) fetched: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) punctuations: AtomicU64,
    pub(crate) assigned_partitions: AtomicU64,
    pub(crate) rebalances: AtomicU64,
    pub(crate) transactions_aborted: AtomicU64,
    pub(crate) restored_records: AtomicU64,
    pub(crate) replayed_skipped: AtomicU64,
    pub(crate) global_restored_records: AtomicU64,
    pub(crate) global_records: AtomicU64,
    /// From taking a record from the consumer to the end of its processing (its outputs
    /// handed to the producer).
    pub processing_latency: Histogram,
    /// From a record's timestamp to the end of its processing.
    pub e2e_latency: Histogram,
    lag: LagSlot,
}

impl Default for TopologyMetrics {
    fn default() -> Self {
        TopologyMetrics {
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            deserialization_errors: AtomicU64::new(0),
            processing_errors: AtomicU64::new(0),
            production_errors: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            in_flight_peak: AtomicU64::new(0),
            pauses: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            punctuations: AtomicU64::new(0),
            assigned_partitions: AtomicU64::new(0),
            rebalances: AtomicU64::new(0),
            transactions_aborted: AtomicU64::new(0),
            restored_records: AtomicU64::new(0),
            replayed_skipped: AtomicU64::new(0),
            global_restored_records: AtomicU64::new(0),
            global_records: AtomicU64::new(0),
            processing_latency: Histogram::new(PROCESSING_LATENCY_BOUNDS),
            e2e_latency: Histogram::new(E2E_LATENCY_BOUNDS),
            lag: LagSlot::default(),
        }
    }
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
    /// Times the in-flight bound stopped taking records in.
    pub pauses: u64,
    /// Records the consumer received from brokers, records fetched again included
    /// (librdkafka's `rxmsgs`); updated with its statistics, so only when
    /// `statistics.interval.ms` is set.
    pub fetched: u64,
    /// Offset commits made.
    pub commits: u64,
    /// Punctuations fired.
    pub punctuations: u64,
    /// Partitions currently assigned to this instance.
    pub assigned_partitions: u64,
    /// Assignments received from the group (each rebalance this instance took part in
    /// that gave it partitions, the first included).
    pub rebalances: u64,
    /// Transactions aborted under exactly-once (each rewound the tasks to their last
    /// commit).
    pub transactions_aborted: u64,
    /// Changelog records applied while restoring stores.
    pub restored_records: u64,
    /// Records skipped because the restored stores already held their effect (their
    /// offset was not committed before the previous owner stopped).
    pub replayed_skipped: u64,
    /// Records of global tables' topics read while bootstrapping their stores at start
    /// (only the tail after a checkpoint).
    pub global_restored_records: u64,
    /// Records of global tables' topics applied after the bootstrap, while running.
    pub global_records: u64,
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
            fetched: r(&self.fetched),
            commits: r(&self.commits),
            punctuations: r(&self.punctuations),
            assigned_partitions: r(&self.assigned_partitions),
            rebalances: r(&self.rebalances),
            transactions_aborted: r(&self.transactions_aborted),
            restored_records: r(&self.restored_records),
            replayed_skipped: r(&self.replayed_skipped),
            global_restored_records: r(&self.global_restored_records),
            global_records: r(&self.global_records),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Consumer lag per assigned partition, sorted; empty when not running on Kafka.
    pub fn consumer_lag(&self) -> Vec<PartitionLag> {
        // The lock is held while the source answers, so `set_lag_source(None)` waits for
        // a scrape in progress and the runtime stays the last owner of its consumer.
        let slot = self.lag.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut lag = slot.as_ref().map(|s| s.consumer_lag()).unwrap_or_default();
        lag.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        lag
    }

    pub(crate) fn set_lag_source(&self, source: Option<Arc<dyn LagSource>>) {
        *self.lag.0.lock().unwrap_or_else(|p| p.into_inner()) = source;
    }

    pub(crate) fn set_in_flight(&self, n: u64) {
        self.in_flight.store(n, Ordering::Relaxed);
        self.in_flight_peak.fetch_max(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::new(PROCESSING_LATENCY_BOUNDS);
        h.observe(Duration::from_micros(50)); // <= 100 µs
        h.observe(Duration::from_micros(100)); // exactly on the bound: <= 100 µs
        h.observe(Duration::from_millis(3)); // <= 5 ms
        h.observe(Duration::from_secs(60)); // beyond 10 s: +Inf only
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], (0.0001, 2));
        let at = |bound: f64| s.buckets.iter().find(|(b, _)| *b == bound).map(|(_, n)| *n);
        assert_eq!(at(0.0025), Some(2));
        assert_eq!(at(0.005), Some(3));
        assert_eq!(at(10.0), Some(3), "60 s is counted in +Inf only");
        assert!((s.sum_seconds - 60.00315).abs() < 1e-9, "{}", s.sum_seconds);
    }
}
