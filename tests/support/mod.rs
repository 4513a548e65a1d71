//! Helpers shared by the integration tests: a Kafka client of our own (rdkafka, not the
//! engine) to produce input, read output and check committed offsets.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Sends the engine's logs to the test output when `RUST_LOG` is set.
pub fn logs() {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// A record read back from a topic.
#[derive(Clone, Debug)]
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: String,
}

pub async fn produce_keyed(bootstrap: &str, topic: &str, records: &[(String, String)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let sends = records.iter().map(|(k, v)| {
        producer.send(
            FutureRecord::to(topic).key(k.as_str()).payload(v.as_str()),
            Duration::from_secs(10),
        )
    });
    for result in futures::future::join_all(sends).await {
        result.expect("produced");
    }
}

/// Produces each `(partition, key, value)` to that partition of `topic`.
pub async fn produce_to_partitions(
    bootstrap: &str,
    topic: &str,
    records: &[(i32, String, String)],
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let sends = records.iter().map(|(p, k, v)| {
        producer.send(
            FutureRecord::to(topic)
                .partition(*p)
                .key(k.as_str())
                .payload(v.as_str()),
            Duration::from_secs(10),
        )
    });
    for result in futures::future::join_all(sends).await {
        result.expect("produced");
    }
}

pub async fn produce_bytes(bootstrap: &str, topic: &str, key: &[u8], value: &[u8]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(10),
        )
        .await
        .expect("produced");
}

/// Reads `topic` from the beginning until `count` records or `timeout`.
pub async fn consume(bootstrap: &str, topic: &str, count: usize, timeout: Duration) -> Vec<Read> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stream = consumer.stream();
    while out.len() < count {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(m))) => out.push(Read {
                partition: m.partition(),
                offset: m.offset(),
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                value: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            }),
            Ok(Some(Err(e))) => panic!("consumer error: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// Reads `topic` from the beginning until every value in `expected` was seen (duplicates
/// allowed, as at-least-once allows them) or `timeout`; returns everything read.
pub async fn consume_until_seen(
    bootstrap: &str,
    topic: &str,
    expected: &std::collections::BTreeSet<String>,
    timeout: Duration,
) -> Vec<Read> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let mut missing = expected.clone();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stream = consumer.stream();
    while !missing.is_empty() {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(m))) => {
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                missing.remove(&value);
                out.push(Read {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    value,
                });
            }
            Ok(Some(Err(e))) => panic!("consumer error: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// What `expected` lacks in `seen`, summarised for an assertion message.
pub fn missing_summary(
    expected: &std::collections::BTreeSet<String>,
    seen: &std::collections::BTreeSet<String>,
) -> String {
    let missing: Vec<&String> = expected.difference(seen).collect();
    let extra: Vec<&String> = seen.difference(expected).collect();
    format!(
        "{} missing (first: {:?}), {} unexpected (first: {:?})",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(5).collect::<Vec<_>>()
    )
}

/// Reads `count` records whose values are big-endian i64 counts, in partition order:
/// (key, count) pairs.
pub async fn consume_raw_counts(bootstrap: &str, topic: &str, count: usize) -> Vec<(String, i64)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut stream = consumer.stream();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.len() < count {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(m))) => {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                let bytes: [u8; 8] = m
                    .payload()
                    .unwrap_or_default()
                    .try_into()
                    .expect("an i64 count");
                out.push((key, i64::from_be_bytes(bytes)));
            }
            Ok(Some(Err(e))) => panic!("consumer error: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// Sum of the committed offsets of `group` on `topic`'s partitions.
pub async fn committed_total(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> i64 {
    let bootstrap = bootstrap.to_string();
    let group = group.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum()
    })
    .await
    .expect("join")
}

/// Polls `condition` every 50 ms until it holds; panics after `timeout`.
pub async fn wait_for(timeout: Duration, condition: impl Fn() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < timeout,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain HTTP/1.1 GET: (status, header block, body).
pub fn http_get_full(addr: &str, path: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let status = response[9..12].parse().expect("status");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status, head.to_string(), body.to_string())
}

/// The broker of the real-Kafka tier: `KAFKA_BOOTSTRAP_SERVERS` when
/// `RUN_KAFKA_INTEGRATION_TESTS=1` (`scripts/test` starts an Apache Kafka broker with
/// `scripts/kafka` and sets both). Without the flag the test says it is skipped and
/// returns `None`; with the flag and no address it fails, so the tier never passes by
/// skipping where it was asked for.
pub fn real_kafka() -> Option<String> {
    if std::env::var("RUN_KAFKA_INTEGRATION_TESTS").as_deref() != Ok("1") {
        eprintln!(
            "skipped: a real-Kafka test (scripts/test runs it; or set RUN_KAFKA_INTEGRATION_TESTS=1 and KAFKA_BOOTSTRAP_SERVERS)"
        );
        return None;
    }
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP_SERVERS")
        .expect("RUN_KAFKA_INTEGRATION_TESTS=1 needs KAFKA_BOOTSTRAP_SERVERS");
    logs();
    Some(bootstrap)
}

/// A name no earlier run on the same broker used.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A topic to create: name, partitions, configurations.
pub type TopicSpec<'a> = (&'a str, i32, &'a [(&'a str, &'a str)]);

/// Creates topics through the admin API.
pub async fn create_topics(bootstrap: &str, topics: &[TopicSpec<'_>]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions, configs)| {
            configs.iter().fold(
                NewTopic::new(name, *partitions, TopicReplication::Fixed(1)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    for result in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .expect("create topics")
    {
        result.expect("topic created");
    }
}

/// A topic's partition count and `cleanup.policy`, as the broker describes them.
pub async fn describe_topic(bootstrap: &str, topic: &str) -> Option<(i32, String)> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let t = metadata.topics().first()?;
    if t.error().is_some() || t.partitions().is_empty() {
        return None;
    }
    let configs = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .expect("describe configs");
    let policy = configs[0]
        .as_ref()
        .expect("topic config")
        .get("cleanup.policy")
        .and_then(|e| e.value.clone())
        .unwrap_or_default();
    Some((t.partitions().len() as i32, policy))
}

/// Every path under `dir`, recursively (files and directories).
pub fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path.to_string_lossy().into_owned());
    }
    out
}
