//! Kafka client plumbing: building librdkafka configurations from the engine's settings
//! (with the properties the engine owns refused), forwarding librdkafka's logs, errors
//! and statistics to `tracing`, offset commits bounded in time, and the embedded broker.
//!
//! May depend on `rdkafka`; knows nothing of topologies.

mod commit;
mod embedded;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;

pub use commit::{CommitError, commit_async_reporting, commit_within};
pub use embedded::EmbeddedBroker;

/// librdkafka properties the engine sets itself; users are told what to use instead.
const OWNED_PROPERTIES: &[(&str, &str)] = &[
    (
        "bootstrap.servers",
        "use --bootstrap-servers or KAFKA_BOOTSTRAP_SERVERS",
    ),
    (
        "group.id",
        "the consumer group is the topology's application id",
    ),
    (
        "enable.auto.commit",
        "the engine commits offsets itself, after outputs are acknowledged",
    ),
    (
        "enable.auto.offset.store",
        "the engine stores offsets itself",
    ),
    (
        "transactional.id",
        "under `processing_guarantee = \"exactly_once_v2\"` the engine derives it from the application id and the instance id kept in the state directory",
    ),
];

/// Errors in client configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientConfigError {
    /// A property the engine manages.
    #[error("librdkafka property `{key}` is set by the engine: {hint}")]
    Owned {
        /// The property.
        key: String,
        /// What to do instead.
        hint: &'static str,
    },
    /// librdkafka refused a property or its value.
    #[error(
        "librdkafka refused `{key}={value}`: {reason} (see https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md)"
    )]
    Refused {
        /// The property.
        key: String,
        /// Its value.
        value: String,
        /// librdkafka's message.
        reason: String,
    },
}

/// Where the broker is, and the librdkafka properties passed through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientSettings {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// Extra librdkafka properties. Keys prefixed `consumer.` or `producer.` apply to
    /// that client only; others to both.
    pub properties: BTreeMap<String, String>,
}

/// Which client a configuration is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientRole {
    /// A consumer.
    Consumer,
    /// A producer.
    Producer,
    /// An admin client (topic creation and description).
    Admin,
}

impl ClientSettings {
    /// Checks every pass-through property against librdkafka, reporting all problems.
    pub fn validate(&self) -> Vec<ClientConfigError> {
        let mut errors = Vec::new();
        for (key, value) in &self.properties {
            let (role, bare) = split_role(key);
            if let Some((_, hint)) = OWNED_PROPERTIES.iter().find(|(k, _)| *k == bare) {
                errors.push(ClientConfigError::Owned {
                    key: key.clone(),
                    hint,
                });
                continue;
            }
            let mut probe = ClientConfig::new();
            probe.set(bare, value);
            // librdkafka checks names and values when the native config is created.
            if let Err(e) = probe.create_native_config() {
                let _ = role;
                errors.push(ClientConfigError::Refused {
                    key: key.clone(),
                    value: value.clone(),
                    reason: kafka_reason(&e),
                });
            }
        }
        errors
    }

    /// The properties that contradict exactly-once processing, each with its fix: the
    /// transactional producer needs idempotence, and inputs, restores and global tables
    /// must read only committed records.
    pub fn contradictions_of_exactly_once(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, value) in &self.properties {
            let (role, bare) = split_role(key);
            let value = value.trim();
            if bare == "enable.idempotence" && role != Some(ClientRole::Consumer) && value != "true"
            {
                problems.push(format!(
                    "`{key}={value}` contradicts processing_guarantee = \"exactly_once_v2\": a transactional producer is idempotent; remove the property"
                ));
            }
            if bare == "isolation.level"
                && role != Some(ClientRole::Producer)
                && value != "read_committed"
            {
                problems.push(format!(
                    "`{key}={value}` contradicts processing_guarantee = \"exactly_once_v2\": inputs, changelog restores and global tables must read only committed records; remove the property"
                ));
            }
        }
        problems
    }

    /// The librdkafka configuration for one client role, with defaults the engine relies
    /// on; user properties are applied last except the ones the engine owns.
    pub fn client_config(&self, role: ClientRole) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        // librdkafka drops messages above this level before they reach `tracing`; its
        // `debug` contexts are only useful with debug messages let through.
        let debugging = self.properties.keys().any(|k| split_role(k).1 == "debug");
        config.set_log_level(if debugging {
            RDKafkaLogLevel::Debug
        } else {
            RDKafkaLogLevel::Info
        });
        match role {
            ClientRole::Consumer => {
                config
                    .set("enable.auto.commit", "false")
                    .set("enable.auto.offset.store", "false")
                    .set("auto.offset.reset", "earliest")
                    .set("enable.partition.eof", "false")
                    // Once its prefetch queue holds `queued.min.messages` (100,000),
                    // librdkafka stops fetching for `fetch.queue.backoff.ms`, 1,000 by
                    // default: a task that drains the queue in a third of that then waits
                    // out the rest with nothing to do (ticket-counts on a real broker:
                    // stalls of up to 0.6 s, 135,000 records/s; with 10 ms, 214,000 and
                    // none). The Java consumer fetches again as soon as its buffer drains.
                    .set("fetch.queue.backoff.ms", "10");
            }
            ClientRole::Producer => {
                // Java clients partition keyed records with murmur2; matching it keeps
                // keys on the same partitions whichever client wrote them.
                config
                    .set("acks", "all")
                    .set("enable.idempotence", "true")
                    .set("partitioner", "murmur2_random")
                    // `[runtime] optimize_for` (latency, the default): see OptimizeFor.
                    .set("linger.ms", "5");
            }
            ClientRole::Admin => {}
        }
        for (key, value) in &self.properties {
            let (only, bare) = split_role(key);
            if only.is_none_or(|r| r == role) {
                config.set(bare, value);
            }
        }
        config
    }
}

fn split_role(key: &str) -> (Option<ClientRole>, &str) {
    if let Some(k) = key.strip_prefix("consumer.") {
        (Some(ClientRole::Consumer), k)
    } else if let Some(k) = key.strip_prefix("producer.") {
        (Some(ClientRole::Producer), k)
    } else {
        (None, key)
    }
}

/// The human part of a librdkafka error.
pub(crate) fn kafka_reason(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, desc, _, _) => desc.clone(),
        other => other.to_string(),
    }
}

/// Forwards librdkafka's logs, errors and statistics to `tracing`.
pub(crate) fn forward_log(client: &str, level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", client, facility, "{message}")
        }
        RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", client, facility, "{message}")
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", client, facility, "{message}")
        }
        RDKafkaLogLevel::Debug => {
            tracing::debug!(target: "librdkafka", client, facility, "{message}")
        }
    }
}

pub(crate) fn forward_error(client: &str, error: &KafkaError, reason: &str) {
    tracing::error!(target: "librdkafka", client, %error, "{reason}");
}

pub(crate) fn forward_stats(client: &str, stats: &Statistics) {
    tracing::info!(
        target: "librdkafka::stats",
        client,
        name = %stats.name,
        msg_cnt = stats.msg_cnt,
        tx_msgs = stats.txmsgs,
        rx_msgs = stats.rxmsgs,
        brokers = stats.brokers.len(),
        "statistics"
    );
}

/// Waits until every record a producer holds is delivered or has failed (its delivery
/// callback run), for at most `timeout`; `flush` is the producer's
/// [`Producer::flush`](rdkafka::producer::Producer::flush).
///
/// rust-rdkafka's `flush` waits for delivery reports in steps of up to 100 ms on the
/// report queue, which the polling thread of a `ThreadedProducer` serves instead, so a
/// flush with anything in flight took at least 100 ms however soon the broker answered:
/// under exactly-once, where every commit flushes, the processing loop stood still for
/// most of each 100 ms commit interval. This asks librdkafka to send what lingers and to
/// report whether anything is left (`flush` without waiting), and asks again every half
/// millisecond.
pub(crate) fn flush_promptly(
    flush: impl Fn(Duration) -> Result<(), KafkaError>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    loop {
        match flush(Duration::ZERO) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_micros(500)),
        }
    }
}

/// The partition Kafka's default partitioner (Java's, and librdkafka's `murmur2` and
/// `murmur2_random`) picks for a non-empty `key` among `partitions`.
pub fn default_partition(key: &[u8], partitions: i32) -> i32 {
    // Java's `Utils.toPositive` masks the sign bit rather than taking an absolute value.
    ((murmur2(key) & 0x7fff_ffff) as i32) % partitions.max(1)
}

/// Kafka's 32-bit murmur2 (seed 0x9747b28c), as `org.apache.kafka.common.utils.Utils`.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// A client context that only forwards logs, for auxiliary clients (admin checks,
/// the CLI's own produce and consume).
#[derive(Clone, Debug, Default)]
pub struct TracingContext {
    /// A label for log lines.
    pub client: &'static str,
}

impl rdkafka::consumer::ConsumerContext for TracingContext {}

impl ClientContext for TracingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        forward_log(self.client, level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        forward_error(self.client, &error, reason);
    }
    fn stats(&self, statistics: Statistics) {
        forward_stats(self.client, &statistics);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts delivery reports, as the runtime's producer context does.
    #[derive(Default)]
    struct Deliveries(std::sync::atomic::AtomicUsize);

    impl ClientContext for Deliveries {}

    impl rdkafka::producer::ProducerContext for Deliveries {
        type DeliveryOpaque = ();
        fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn flush_promptly_returns_once_every_delivery_callback_ran() {
        use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
        let broker = EmbeddedBroker::start(1).unwrap();
        broker.create_topic("out", 3).unwrap();
        let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .set("linger.ms", "50")
            .create_with_context(Deliveries::default())
            .unwrap();
        for i in 0..100 {
            let key = i.to_string();
            producer
                .send(BaseRecord::to("out").key(&key).payload("v"))
                .unwrap();
        }
        flush_promptly(|t| producer.flush(t), Duration::from_secs(30)).unwrap();
        // The polling thread ran every callback before the flush said it was done.
        assert_eq!(
            producer
                .context()
                .0
                .load(std::sync::atomic::Ordering::SeqCst),
            100
        );
        assert_eq!(producer.in_flight_count(), 0);
    }

    #[test]
    fn flush_promptly_gives_up_at_its_timeout() {
        use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
        // Nothing listens there: the record cannot be delivered.
        let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .create_with_context(Deliveries::default())
            .unwrap();
        producer
            .send(BaseRecord::to("out").key("k").payload("v"))
            .unwrap();
        let result = flush_promptly(|t| producer.flush(t), Duration::from_millis(200));
        assert!(matches!(result, Err(KafkaError::Flush(_))), "{result:?}");
        assert_eq!(producer.in_flight_count(), 1);
        producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    }

    #[test]
    fn murmur2_matches_kafkas_java_partitioner() {
        // From Kafka's UtilsTest.testMurmur2 (signed Java ints).
        let cases: [(&str, i32); 6] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key.as_bytes()) as i32, expected, "{key}");
        }
        // toPositive(-790332482) % 4 == (0x7fffffff & -790332482) % 4
        assert_eq!(
            default_partition(b"foobar", 4),
            ((-790332482_i32 & 0x7fff_ffff) % 4)
        );
    }

    #[test]
    fn owned_and_unknown_properties_are_refused_with_a_hint() {
        let settings = ClientSettings {
            bootstrap_servers: "localhost:9092".into(),
            properties: [
                ("group.id".to_string(), "x".to_string()),
                ("no.such.property".to_string(), "1".to_string()),
                ("linger.ms".to_string(), "not-a-number".to_string()),
                ("producer.linger.ms".to_string(), "20".to_string()),
            ]
            .into_iter()
            .collect(),
        };
        let errors: Vec<String> = settings.validate().iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("group.id") && e.contains("application id"))
        );
        assert!(errors.iter().any(|e| e.contains("no.such.property")));
        assert!(errors.iter().any(|e| e.contains("linger.ms=not-a-number")));
    }

    #[test]
    fn consumers_fetch_again_soon_after_their_prefetch_queue_was_full() {
        let settings = |properties: &[(&str, &str)]| ClientSettings {
            bootstrap_servers: "b:1".into(),
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let backoff = |s: &ClientSettings| {
            s.client_config(ClientRole::Consumer)
                .get("fetch.queue.backoff.ms")
                .map(str::to_string)
        };
        assert_eq!(backoff(&settings(&[])).as_deref(), Some("10"));
        assert_eq!(
            backoff(&settings(&[("consumer.fetch.queue.backoff.ms", "500")])).as_deref(),
            Some("500"),
            "a value the user sets wins"
        );
        // librdkafka knows the property (a consumer is created with it).
        let consumer: Result<rdkafka::consumer::BaseConsumer, _> = settings(&[])
            .client_config(ClientRole::Consumer)
            .set("group.id", "g")
            .create();
        assert!(consumer.is_ok(), "{:?}", consumer.err());
    }

    #[test]
    fn role_prefixed_properties_apply_to_one_client() {
        let settings = ClientSettings {
            bootstrap_servers: "b:1".into(),
            properties: [("producer.linger.ms".to_string(), "20".to_string())]
                .into_iter()
                .collect(),
        };
        assert_eq!(
            settings
                .client_config(ClientRole::Producer)
                .get("linger.ms"),
            Some("20")
        );
        assert_eq!(
            settings
                .client_config(ClientRole::Consumer)
                .get("linger.ms"),
            None
        );
    }
}
