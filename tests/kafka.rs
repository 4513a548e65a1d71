//! Kafka behaviour on the embedded broker (librdkafka's mock cluster): per-partition
//! order, at-least-once across restarts, two instances sharing and taking over
//! partitions, the in-flight bound, commits at shutdown (also against a slow broker or
//! none), consumer lag, and queries naming the instance that holds a key.
//!
//! The `real_kafka_` tests need Kafka's own behaviour (the admin API, compaction, real
//! rebalances) and run on an Apache Kafka broker: `scripts/test` starts one.

#![allow(clippy::unwrap_used)] // tests state their expectations with unwrap

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use engine::kafka::EmbeddedBroker;
use engine::runtime::{RunSettings, Shutdown, TopologyRunner};
use engine::serde::Serdes;
use engine::state::RocksSettings;
use engine::topology::{Grouped, Topic, Topology, TopologyBuilder};
use support::{
    committed_total, consume, consume_until_seen, missing_summary, produce_keyed, wait_for, walk,
};

/// Appends `!` to every value: enough to see every record went through.
fn shout(app: &str) -> Topology {
    let b = TopologyBuilder::new(app);
    b.stream(&Topic::new("in", Serdes::string(), Serdes::string()))
        .named("in")
        .map_values(|v: String| format!("{v}!"))
        .named("shout")
        .to(&Topic::new("out", Serdes::string(), Serdes::string()))
        .named("out");
    b.build().expect("valid")
}

fn settings(broker: &EmbeddedBroker) -> RunSettings {
    let mut s = RunSettings::new(broker.bootstrap_servers());
    s.commit_interval = Duration::from_millis(200);
    s.startup_timeout = Duration::from_secs(10);
    // The mock cluster waits session.timeout.ms - 1 s before letting a member join a
    // group someone just left; keep it short (6 s is the broker's usual minimum).
    s.client
        .properties
        .insert("consumer.session.timeout.ms".into(), "6000".into());
    if let Ok(debug) = std::env::var("KAFKA_DEBUG") {
        s.client.properties.insert("consumer.debug".into(), debug);
    }
    s
}

fn broker(partitions: i32) -> EmbeddedBroker {
    support::logs();
    let broker = EmbeddedBroker::start(1).expect("mock cluster");
    broker.create_topic("in", partitions).unwrap();
    broker.create_topic("out", partitions).unwrap();
    broker
}

/// `key-N` -> values `N:0`, `N:1`, ... in order.
fn keyed_inputs(keys: usize, per_key: usize, offset: usize) -> Vec<(String, String)> {
    (offset..offset + per_key)
        .flat_map(|i| (0..keys).map(move |k| (format!("key-{k}"), format!("{k}:{i}"))))
        .collect()
}

fn sequence(value: &str) -> usize {
    value
        .trim_end_matches('!')
        .split(':')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("value k:i!")
}

#[test]
fn per_partition_order_is_kept() {
    let broker = broker(4);
    let bootstrap = broker.bootstrap_servers();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let inputs = keyed_inputs(8, 250, 0);
        produce_keyed(&bootstrap, "in", &inputs).await;
        let (trigger, shutdown) = Shutdown::new();
        let runner = TopologyRunner::new(shout("order"), settings(&broker));
        let handle = tokio::spawn(runner.run(shutdown));
        let out = consume(&bootstrap, "out", inputs.len(), Duration::from_secs(60)).await;
        trigger.trigger();
        handle.await.unwrap().unwrap();
        assert_eq!(out.len(), inputs.len());
        let mut last: BTreeMap<String, usize> = BTreeMap::new();
        let mut partitions_of_key: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
        for r in &out {
            let n = sequence(&r.value);
            if let Some(prev) = last.insert(r.key.clone(), n) {
                assert_eq!(n, prev + 1, "key {} out of order: {prev} then {n}", r.key);
            }
            partitions_of_key
                .entry(r.key.clone())
                .or_default()
                .insert(r.partition);
        }
        assert!(
            partitions_of_key.values().all(|p| p.len() == 1),
            "a key stays on one partition"
        );
    });
}

#[test]
fn shutdown_commits_and_a_restart_loses_nothing() {
    let broker = broker(3);
    let bootstrap = broker.bootstrap_servers();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let first = keyed_inputs(6, 100, 0);
        produce_keyed(&bootstrap, "in", &first).await;

        // First run: stop it as soon as part of the input has come out.
        let (trigger, shutdown) = Shutdown::new();
        let runner = TopologyRunner::new(shout("restart"), settings(&broker));
        let metrics = runner.metrics();
        let handle = tokio::spawn(runner.run(shutdown));
        wait_for(Duration::from_secs(30), || {
            metrics.snapshot().records_out >= 100
        })
        .await;
        trigger.trigger();
        handle.await.unwrap().unwrap();
        let processed = metrics.snapshot().records_in;
        let committed = committed_total(&bootstrap, "restart", "in", 3).await;
        assert_eq!(
            committed, processed as i64,
            "shutdown commits exactly what was processed and acknowledged"
        );

        // More input while it is down, then a second run in the same group.
        let second = keyed_inputs(6, 100, 100);
        produce_keyed(&bootstrap, "in", &second).await;
        let (trigger, shutdown) = Shutdown::new();
        let runner = TopologyRunner::new(shout("restart"), settings(&broker));
        let metrics2 = runner.metrics();
        let handle = tokio::spawn(runner.run(shutdown));
        let total = first.len() + second.len();
        wait_for(Duration::from_secs(30), || {
            metrics2.snapshot().records_out as usize >= total - processed as usize
        })
        .await;
        trigger.trigger();
        handle.await.unwrap().unwrap();

        let expected: BTreeSet<String> = first
            .iter()
            .chain(&second)
            .map(|(_, v)| format!("{v}!"))
            .collect();
        let out = consume_until_seen(&bootstrap, "out", &expected, Duration::from_secs(30)).await;
        let seen: BTreeSet<String> = out.iter().map(|r| r.value.clone()).collect();
        assert!(
            seen == expected,
            "every input came out: {}",
            missing_summary(&expected, &seen)
        );
        assert_eq!(
            out.len(),
            total,
            "a clean shutdown leaves no duplicates either"
        );
        assert_eq!(
            committed_total(&bootstrap, "restart", "in", 3).await,
            total as i64
        );
    });
}

#[test]
fn two_instances_share_partitions_and_one_takes_over() {
    let broker = broker(4);
    let bootstrap = broker.bootstrap_servers();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (trigger_a, shutdown_a) = Shutdown::new();
        let (trigger_b, shutdown_b) = Shutdown::new();
        let a = TopologyRunner::new(shout("pair"), settings(&broker));
        let b = TopologyRunner::new(shout("pair"), settings(&broker));
        let (metrics_a, metrics_b) = (a.metrics(), b.metrics());
        let handle_a = tokio::spawn(a.run(shutdown_a));
        let handle_b = tokio::spawn(b.run(shutdown_b));
        // Let both join before input arrives, so the group settles on two members.
        wait_for(Duration::from_secs(30), || {
            let (a, b) = (metrics_a.snapshot(), metrics_b.snapshot());
            a.assigned_partitions > 0 && a.assigned_partitions + b.assigned_partitions == 4
        })
        .await;

        let first = keyed_inputs(16, 50, 0);
        produce_keyed(&bootstrap, "in", &first).await;
        wait_for(Duration::from_secs(30), || {
            metrics_a.snapshot().records_out + metrics_b.snapshot().records_out
                >= first.len() as u64
        })
        .await;
        let (in_a, in_b) = (
            metrics_a.snapshot().records_in,
            metrics_b.snapshot().records_in,
        );
        assert!(
            in_a > 0 && in_b > 0,
            "both instances got partitions: a={in_a} b={in_b}"
        );

        trigger_a.trigger();
        handle_a.await.unwrap().unwrap();
        let second = keyed_inputs(16, 50, 50);
        produce_keyed(&bootstrap, "in", &second).await;
        let total = first.len() + second.len();
        let expected: BTreeSet<String> = first
            .iter()
            .chain(&second)
            .map(|(_, v)| format!("{v}!"))
            .collect();
        let out = consume_until_seen(&bootstrap, "out", &expected, Duration::from_secs(60)).await;
        trigger_b.trigger();
        handle_b.await.unwrap().unwrap();
        let seen: BTreeSet<String> = out.iter().map(|r| r.value.clone()).collect();
        assert!(
            seen == expected,
            "the survivor processed the partitions it took over: {}",
            missing_summary(&expected, &seen)
        );
        let _ = total;
        assert!(
            metrics_b.snapshot().records_in > in_b,
            "the survivor took over after the other left"
        );
    });
}

/// Runs `shout(app)` over `inputs` with an in-flight bound of 50 while every broker
/// answer takes `round_trip` (acknowledgements slower than the intake), until every
/// output came out; the metrics once the statistics after the last fetch are in.
async fn run_against_the_bound(
    broker: &EmbeddedBroker,
    app: &str,
    inputs: &[(String, String)],
    round_trip: Duration,
) -> engine::metrics::MetricsSnapshot {
    produce_keyed(&broker.bootstrap_servers(), "in", inputs).await;
    broker.set_round_trip_time(1, round_trip).unwrap();
    let mut s = settings(broker);
    s.max_in_flight = 50;
    for (key, value) in [
        ("producer.linger.ms", "0"),
        ("producer.batch.num.messages", "10"),
        ("statistics.interval.ms", "50"),
    ] {
        s.client.properties.insert(key.into(), value.into());
    }
    let (trigger, shutdown) = Shutdown::new();
    let runner = TopologyRunner::new(shout(app), s);
    let metrics = runner.metrics();
    let handle = tokio::spawn(runner.run(shutdown));
    wait_for(Duration::from_secs(90), || {
        metrics.snapshot().records_out >= inputs.len() as u64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = metrics.snapshot();
    trigger.trigger();
    handle.await.unwrap().unwrap();
    m
}

#[test]
fn the_in_flight_bound_holds_when_the_broker_is_slow() {
    let broker = broker(2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let inputs = keyed_inputs(4, 300, 0);
        let m = run_against_the_bound(&broker, "bounded", &inputs, Duration::from_millis(30)).await;
        assert_eq!(
            m.records_out,
            inputs.len() as u64,
            "everything was delivered"
        );
        assert!(m.pauses >= 1, "the bound was reached: {m:?}");
        assert!(
            m.in_flight_peak <= 50,
            "in flight never exceeded the bound: {m:?}"
        );
    });
}

/// The in-flight bound stops taking records in without dropping what the consumer has
/// fetched: librdkafka's `pause` purges a partition's fetched records, so pausing at the
/// bound made every record behind it cross the network again (and wait a fetch round
/// trip), each time the bound was reached. Here the bound is reached again and again
/// (slow acknowledgements, 50 records), and every record is still fetched about once.
#[test]
fn the_in_flight_bound_keeps_the_records_already_fetched() {
    let broker = broker(2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let inputs = keyed_inputs(4, 500, 0);
        let m = run_against_the_bound(&broker, "bounded-fetch", &inputs, Duration::from_millis(20))
            .await;
        assert!(
            m.pauses >= 5,
            "the bound was reached again and again: {m:?}"
        );
        assert!(
            m.fetched >= inputs.len() as u64,
            "the statistics counted the fetched records: {m:?}"
        );
        assert!(
            m.fetched <= inputs.len() as u64 * 11 / 10,
            "{} records fetched for {} inputs: records were fetched again after the bound \
             stopped the intake: {m:?}",
            m.fetched,
            inputs.len()
        );
    });
}

/// Runs `shout(app)` until `inputs` (already produced) all came out, with commits held
/// back to the shutdown (a 10-minute commit interval): the final commit carries
/// everything. Returns the shutdown trigger and the runner's handle.
async fn processed_but_uncommitted(
    broker: &EmbeddedBroker,
    app: &str,
    inputs: &[(String, String)],
    shutdown_timeout: Duration,
) -> (
    engine::runtime::ShutdownTrigger,
    tokio::task::JoinHandle<Result<(), engine::runtime::RuntimeError>>,
) {
    produce_keyed(&broker.bootstrap_servers(), "in", inputs).await;
    let mut s = settings(broker);
    s.commit_interval = Duration::from_secs(600);
    s.shutdown_timeout = shutdown_timeout;
    let (trigger, shutdown) = Shutdown::new();
    let runner = TopologyRunner::new(shout(app), s);
    let metrics = runner.metrics();
    let handle = tokio::spawn(runner.run(shutdown));
    wait_for(Duration::from_secs(60), || {
        metrics.snapshot().records_out >= inputs.len() as u64
    })
    .await;
    (trigger, handle)
}

#[test]
fn a_clean_shutdown_against_a_slow_broker_still_commits_everything() {
    let broker = broker(2);
    let bootstrap = broker.bootstrap_servers();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let inputs = keyed_inputs(4, 50, 0);
        let (trigger, handle) =
            processed_but_uncommitted(&broker, "slow-commit", &inputs, Duration::from_secs(30))
                .await;
        // Every answer of the broker now takes 700 ms, the final commit's too.
        broker
            .set_round_trip_time(1, Duration::from_millis(700))
            .unwrap();
        trigger.trigger();
        handle
            .await
            .unwrap()
            .expect("a slow broker still lets the shutdown finish");
        broker.set_round_trip_time(1, Duration::ZERO).unwrap();
        assert_eq!(
            committed_total(&bootstrap, "slow-commit", "in", 2).await,
            inputs.len() as i64,
            "the final commit went through"
        );
    });
}

/// Another instance leaving (or joining) at the moment this one stops makes the group
/// move to a new generation, and the final commit, sent with the old one, is refused
/// with ILLEGAL_GENERATION. librdkafka then counts the assignment as lost and rejoins
/// only once the application has served that revocation. The cluster answers the
/// final commit that way here; the commit must still go through, under the generation
/// the rejoin brings, and the stop be clean.
#[test]
fn a_final_commit_refused_for_an_old_generation_goes_through_after_the_rejoin() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let broker = broker(2);
    let bootstrap = broker.bootstrap_servers();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let inputs = keyed_inputs(4, 50, 0);
        let (trigger, handle) =
            processed_but_uncommitted(&broker, "old-generation", &inputs, Duration::from_secs(30))
                .await;
        broker.fail_next_requests(
            RDKafkaApiKey::OffsetCommit,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION],
        );
        trigger.trigger();
        handle
            .await
            .unwrap()
            .expect("the stop is clean once the commit went through");
        assert_eq!(
            committed_total(&bootstrap, "old-generation", "in", 2).await,
            inputs.len() as i64,
            "the final commit went through"
        );
    });
}

/// A guard on the bound, not a reproduction: with the in-process mock cluster destroyed,
/// librdkafka's old synchronous commit failed fast rather than hanging (the hang of a
/// broker process that went away is reproduced by the process test
/// `sigterm_with_the_broker_gone_ends_within_the_shutdown_timeout_with_exit_3`). What
/// this checks is the outcome: an incomplete shutdown naming every uncommitted partition.
#[test]
fn with_the_broker_gone_a_shutdown_ends_within_its_timeout_and_says_what_was_not_committed() {
    let broker = broker(2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let inputs = keyed_inputs(8, 13, 0);
        let (trigger, handle) =
            processed_but_uncommitted(&broker, "broker-gone", &inputs, Duration::from_secs(3))
                .await;
        drop(broker);
        trigger.trigger();
        // Not a timing assertion: without a bound the shutdown never ends.
        let stopped = tokio::time::timeout(Duration::from_secs(60), handle)
            .await
            .expect("the shutdown ends although the broker is gone")
            .unwrap();
        match stopped {
            Err(engine::runtime::RuntimeError::ShutdownIncomplete { uncommitted, .. }) => {
                let partitions: BTreeSet<(String, i32)> =
                    uncommitted.into_iter().map(|(t, p, _)| (t, p)).collect();
                assert_eq!(
                    partitions,
                    BTreeSet::from([("in".to_string(), 0), ("in".to_string(), 1)]),
                    "the error names every partition whose offsets were not committed"
                );
            }
            other => panic!("expected an incomplete shutdown, got {other:?}"),
        }
    });
}

/// On the real broker of the real-Kafka tier: the same pipeline, with topics created
/// through the admin API the mock cluster lacks.
#[test]
fn real_kafka_round_trip() {
    let Some(bootstrap) = support::real_kafka() else {
        return;
    };
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (input, output) = (format!("it-in-{suffix}"), format!("it-out-{suffix}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("admin client");
        let topics = [
            NewTopic::new(&input, 3, TopicReplication::Fixed(1)),
            NewTopic::new(&output, 3, TopicReplication::Fixed(1)),
        ];
        for r in admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .expect("create topics")
        {
            r.expect("topic created");
        }
        let b = TopologyBuilder::new(format!("it-{suffix}"));
        b.stream(&Topic::new(
            input.clone(),
            Serdes::string(),
            Serdes::string(),
        ))
        .named("in")
        .map_values(|v: String| format!("{v}!"))
        .named("shout")
        .to(&Topic::new(&output, Serdes::string(), Serdes::string()))
        .named("out");
        let inputs = keyed_inputs(4, 50, 0);
        produce_keyed(&bootstrap, &input, &inputs).await;
        let (trigger, shutdown) = Shutdown::new();
        let runner = TopologyRunner::new(b.build().unwrap(), RunSettings::new(bootstrap.clone()));
        let handle = tokio::spawn(runner.run(shutdown));
        let out = consume(&bootstrap, &output, inputs.len(), Duration::from_secs(60)).await;
        trigger.trigger();
        handle.await.unwrap().unwrap();
        assert_eq!(out.len(), inputs.len());
    });
}

/// Counts records per key in RocksDB, emitting each new count (without the record
/// cache), or the coalesced counts the cache writes out (with it).
fn counter(app: &str, caching: bool) -> Topology {
    counter_on(app, &["in"], "out", caching)
}

/// [`counter`] reading `inputs` (co-partitioned) and writing `output`.
fn counter_on(app: &str, inputs: &[&str], output: &str, caching: bool) -> Topology {
    let b = TopologyBuilder::new(app);
    let mut sources = inputs
        .iter()
        .map(|t| b.stream(&Topic::new(*t, Serdes::string(), Serdes::string())));
    let first = sources.next().expect("at least one input");
    sources
        .fold(first, |merged, s| merged.merge(&s))
        .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
        .with_caching(caching)
        .count("count", "per-key")
        .to_stream()
        .named("updates")
        .to(&Topic::new(output, Serdes::string(), Serdes::i64()))
        .named("out");
    b.build().expect("valid")
}

/// Where a test runs: librdkafka's mock cluster, or the Apache Kafka broker of the
/// real-Kafka tier with topics of the test's own (the broker is shared by every test).
struct Cluster {
    bootstrap: String,
    /// Kept alive while the test runs; `None` on the real broker.
    mock: Option<EmbeddedBroker>,
    input: String,
    output: String,
    /// A prefix for application ids (unique on the real broker).
    app_prefix: String,
}

impl Cluster {
    /// The mock cluster with `in` and `out` of `partitions` partitions, and the
    /// changelogs of `stores` of application `app` (the mock has no admin API: the
    /// engine cannot create them there).
    fn mock(partitions: i32, app: &str, stores: &[&str]) -> Cluster {
        let broker = broker(partitions);
        for store in stores {
            broker
                .create_topic(&format!("{app}-{store}-changelog"), partitions)
                .unwrap();
        }
        Cluster {
            bootstrap: broker.bootstrap_servers(),
            mock: Some(broker),
            input: "in".into(),
            output: "out".into(),
            app_prefix: String::new(),
        }
    }

    /// The real broker with fresh input and output topics of `partitions` partitions;
    /// the engine creates the internal topics.
    async fn real(bootstrap: String, partitions: i32) -> Cluster {
        let (input, output) = (support::unique("in"), support::unique("out"));
        support::create_topics(
            &bootstrap,
            &[(&input, partitions, &[]), (&output, partitions, &[])],
        )
        .await;
        Cluster {
            bootstrap,
            mock: None,
            input,
            output,
            app_prefix: support::unique("app"),
        }
    }

    fn app(&self, name: &str) -> String {
        if self.app_prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}-{name}", self.app_prefix)
        }
    }

    fn settings(&self) -> RunSettings {
        match &self.mock {
            Some(broker) => settings(broker),
            None => {
                let mut s = RunSettings::new(self.bootstrap.clone());
                s.commit_interval = Duration::from_millis(200);
                s.startup_timeout = Duration::from_secs(20);
                s.client
                    .properties
                    .insert("consumer.session.timeout.ms".into(), "10000".into());
                s
            }
        }
    }

    fn counter(&self, app: &str, caching: bool) -> Topology {
        counter_on(app, &[&self.input], &self.output, caching)
    }
}

#[test]
fn stores_restore_from_their_changelog_and_a_checkpoint_limits_restore_to_the_tail() {
    let broker = broker(3);
    broker.create_topic("restore-per-key-changelog", 3).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let state = tempfile::tempdir().unwrap();
    let with_state = |dir: &std::path::Path| {
        let mut s = settings(&broker);
        s.state = RocksSettings::new(dir, 1 << 20, 1 << 20);
        s
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let run = |dir: std::path::PathBuf, records_out: u64| {
            let runner = TopologyRunner::new(counter("restore", false), with_state(&dir));
            let metrics = runner.metrics();
            let (trigger, shutdown) = Shutdown::new();
            let handle = tokio::spawn(runner.run(shutdown));
            async move {
                wait_for(Duration::from_secs(30), || {
                    metrics.snapshot().records_out >= records_out
                })
                .await;
                trigger.trigger();
                handle.await.unwrap().unwrap();
                metrics.snapshot()
            }
        };
        // First run: 6 keys x 50; every update goes out and to the changelog.
        produce_keyed(&bootstrap, "in", &keyed_inputs(6, 50, 0)).await;
        let first = run(state.path().to_path_buf(), 600).await;
        assert_eq!(
            first.restored_records, 0,
            "nothing to restore on a first start"
        );
        let checkpoints = walk(state.path())
            .into_iter()
            .filter(|p| p.ends_with(".checkpoint"))
            .count();
        assert!(checkpoints >= 1, "a clean stop leaves checkpoints");

        // Restart on the same state: the checkpoints say the stores are complete, so only
        // the changelog tail (empty) is read, and counting continues from 50.
        produce_keyed(&bootstrap, "in", &keyed_inputs(6, 10, 50)).await;
        let second = run(state.path().to_path_buf(), 120).await;
        assert_eq!(
            second.restored_records, 0,
            "restore read only the tail: {second:?}"
        );

        // A new instance without local state rebuilds everything from the changelog.
        let fresh = tempfile::tempdir().unwrap();
        produce_keyed(&bootstrap, "in", &keyed_inputs(6, 1, 60)).await;
        let third = run(fresh.path().to_path_buf(), 12).await;
        assert_eq!(
            third.restored_records, 360,
            "the whole changelog: {third:?}"
        );

        let mut last: BTreeMap<String, i64> = BTreeMap::new();
        let counts = support::consume_raw_counts(&bootstrap, "out", 600 + 120 + 12).await;
        for (key, count) in counts {
            last.insert(key, count);
        }
        assert_eq!(last.len(), 6);
        assert!(
            last.values().all(|&c| c == 61),
            "every key counted 61 times: {last:?}"
        );
    });
}

#[test]
fn when_one_instance_stops_the_other_restores_its_state_and_carries_on() {
    let cluster = Cluster::mock(4, "handover", &["per-key"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(hand_over(&cluster));
}

#[test]
fn real_kafka_when_one_instance_stops_the_other_restores_its_state_and_carries_on() {
    let Some(bootstrap) = support::real_kafka() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cluster = Cluster::real(bootstrap, 4).await;
        hand_over(&cluster).await;
    });
}

/// Instance A counts every partition; B joins and takes some over; A stops and B takes
/// the rest over, restoring A's stores from their changelogs and counting on from them.
async fn hand_over(cluster: &Cluster) {
    let bootstrap = &cluster.bootstrap;
    let app = cluster.app("handover");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let with_state = |dir: &std::path::Path| {
        let mut s = cluster.settings();
        s.state = RocksSettings::new(dir, 1 << 20, 1 << 20);
        s
    };
    let a = TopologyRunner::new(cluster.counter(&app, false), with_state(dir_a.path()));
    let b = TopologyRunner::new(cluster.counter(&app, false), with_state(dir_b.path()));
    let (metrics_a, metrics_b) = (a.metrics(), b.metrics());
    let (stop_a, shutdown_a) = Shutdown::new();
    let (stop_b, shutdown_b) = Shutdown::new();
    // A alone counts 16 keys x 20 on every partition, so every store holds state
    // only A built (whatever the group later does with the partitions).
    let handle_a = tokio::spawn(a.run(shutdown_a));
    wait_for(Duration::from_secs(60), || {
        metrics_a.snapshot().assigned_partitions == 4
    })
    .await;
    produce_keyed(bootstrap, &cluster.input, &keyed_inputs(16, 20, 0)).await;
    wait_for(Duration::from_secs(30), || {
        metrics_a.snapshot().records_out >= 320
    })
    .await;
    // B joins and takes some partitions over; then A stops and B takes the rest.
    let handle_b = tokio::spawn(b.run(shutdown_b));
    wait_for(Duration::from_secs(60), || {
        let (a, b) = (metrics_a.snapshot(), metrics_b.snapshot());
        a.assigned_partitions > 0
            && b.assigned_partitions > 0
            && a.assigned_partitions + b.assigned_partitions == 4
    })
    .await;
    let restored_before = metrics_b.snapshot().restored_records;
    stop_a.trigger();
    handle_a.await.unwrap().unwrap();
    // B takes A's partitions over: their stores come from the changelog.
    wait_for(Duration::from_secs(60), || {
        metrics_b.snapshot().assigned_partitions == 4
    })
    .await;
    produce_keyed(bootstrap, &cluster.input, &keyed_inputs(16, 5, 20)).await;
    let counts = support::consume_raw_counts(bootstrap, &cluster.output, 320 + 80).await;
    stop_b.trigger();
    handle_b.await.unwrap().unwrap();
    let restored = metrics_b.snapshot().restored_records - restored_before;
    assert!(
        restored >= 1,
        "the survivor restored the other's stores: {restored}"
    );
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for (key, count) in counts {
        last.insert(key, count);
    }
    assert_eq!(last.len(), 16);
    assert!(
        last.values().all(|&c| c == 25),
        "every key counted on from its restored state: {last:?}"
    );
}

/// The latest count per key on `topic` once every key of `expected` has its expected
/// count (or, after 30 s, whatever was read).
async fn latest_counts(
    bootstrap: &str,
    topic: &str,
    expected: &BTreeMap<String, i64>,
) -> BTreeMap<String, i64> {
    use futures::StreamExt;
    use rdkafka::Message;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("latest-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut stream = consumer.stream();
    let mut latest = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while latest != *expected {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(m))) => {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                let bytes: [u8; 8] = m.payload().unwrap_or_default().try_into().unwrap();
                latest.insert(key, i64::from_be_bytes(bytes));
            }
            Ok(Some(Err(e))) => panic!("consumer error: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    latest
}

async fn wait_for_commits(bootstrap: &str, group: &str, partitions: i32, total: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let committed = committed_total(bootstrap, group, "in", partitions).await;
        if committed >= total {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{committed} of {total} offsets committed within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn cached_counts_commit_only_once_flushed_so_restarts_after_stops_and_drops_lose_nothing() {
    let broker = broker(3);
    broker.create_topic("cached-per-key-changelog", 3).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    // Flushes happen only before commits here (none when the input goes quiet), so
    // whatever is not committed is still only in the cache.
    let runner = |dir: &std::path::Path, commit_ms: u64| {
        let mut s = settings(&broker);
        s.state = RocksSettings::new(dir, 1 << 20, 1 << 20);
        s.commit_interval = Duration::from_millis(commit_ms);
        s.flush_caches_when_idle = false;
        let runner = TopologyRunner::new(counter("cached", true), s);
        let metrics = runner.metrics();
        let (trigger, shutdown) = Shutdown::new();
        (tokio::spawn(runner.run(shutdown)), metrics, trigger)
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // 1. A clean stop with everything still cached (the first commit is a minute
        //    away): the stop flushes, then commits all of it.
        produce_keyed(&bootstrap, "in", &keyed_inputs(6, 50, 0)).await;
        let (handle, metrics, stop) = runner(dirs[0].path(), 60_000);
        wait_for(Duration::from_secs(30), || {
            metrics.snapshot().records_in >= 300
        })
        .await;
        assert_eq!(committed_total(&bootstrap, "cached", "in", 3).await, 0);
        stop.trigger();
        handle.await.unwrap().unwrap();
        assert_eq!(committed_total(&bootstrap, "cached", "in", 3).await, 300);
        assert!(
            metrics.snapshot().records_out < 300,
            "updates coalesced: {:?}",
            metrics.snapshot()
        );

        // 2. 60 records counted only in the cache when a second instance joins: the
        //    revocation commits what is done and drops the cache of each task that
        //    moves, so the commit (and where this instance resumes a partition it gets
        //    back) must stop at the first cached record; Y counts those again, once,
        //    while X's remaining tasks keep their caches (cooperative rebalancing).
        produce_keyed(&bootstrap, "in", &keyed_inputs(6, 10, 50)).await;
        let (handle_x, metrics_x, stop_x) = runner(dirs[1].path(), 60_000);
        wait_for(Duration::from_secs(30), || {
            metrics_x.snapshot().records_in >= 60
        })
        .await;
        let (handle_y, metrics_y, stop_y) = runner(dirs[2].path(), 60_000);
        wait_for(Duration::from_secs(30), || {
            let (x, y) = (metrics_x.snapshot(), metrics_y.snapshot());
            x.assigned_partitions > 0
                && y.assigned_partitions > 0
                && x.assigned_partitions + y.assigned_partitions == 3
                && y.records_in > 0
        })
        .await;
        assert_eq!(committed_total(&bootstrap, "cached", "in", 3).await, 300);
        stop_x.trigger();
        stop_y.trigger();
        handle_x.await.unwrap().unwrap();
        handle_y.await.unwrap().unwrap();
        assert_eq!(committed_total(&bootstrap, "cached", "in", 3).await, 360);

        // 3. Dropped abruptly while 30 records are counted only in the cache: none of
        //    them was committed (or written), so the next run counts them once.
        produce_keyed(&bootstrap, "in", &keyed_inputs(6, 5, 60)).await;
        let (handle, metrics, _stop) = runner(dirs[3].path(), 60_000);
        wait_for(Duration::from_secs(30), || {
            metrics.snapshot().records_in >= 30
        })
        .await;
        handle.abort();
        let _ = handle.await;
        assert_eq!(committed_total(&bootstrap, "cached", "in", 3).await, 360);

        // 4. A run that commits often, dropped abruptly once everything is committed:
        //    each commit covered only records whose counts were flushed and
        //    acknowledged, so nothing committed was left in the cache.
        let (handle, _metrics, _stop) = runner(dirs[4].path(), 200);
        wait_for_commits(&bootstrap, "cached", 3, 390).await;
        handle.abort();
        let _ = handle.await;

        // 5. A fresh instance rebuilds the counts from the changelog alone and counts on.
        produce_keyed(&bootstrap, "in", &keyed_inputs(6, 1, 65)).await;
        let (handle, metrics, stop) = runner(dirs[5].path(), 200);
        wait_for_commits(&bootstrap, "cached", 3, 396).await;
        stop.trigger();
        handle.await.unwrap().unwrap();
        assert!(metrics.snapshot().restored_records > 0);

        let expected: BTreeMap<String, i64> = (0..6).map(|k| (format!("key-{k}"), 66)).collect();
        assert_eq!(
            latest_counts(&bootstrap, "out", &expected).await,
            expected,
            "every key counted exactly 66 times, no record lost or counted twice"
        );
    });
}

/// Holds records whose value starts with `hold` until `release` is set, then forwards
/// them from a wall-clock punctuation; asks to pause input while it holds any.
struct HoldUntilReleased {
    release: std::sync::Arc<std::sync::atomic::AtomicBool>,
    held: Vec<(engine::topology::Deferred, String, String)>,
}

impl engine::topology::Processor<String, String, String, String> for HoldUntilReleased {
    fn init(
        &mut self,
        ctx: &mut engine::topology::ProcessorContext<'_, String, String>,
    ) -> Result<(), engine::topology::ProcessingError> {
        ctx.schedule(
            Duration::from_millis(50),
            engine::topology::PunctuationType::WallClockTime,
        );
        Ok(())
    }

    fn process(
        &mut self,
        record: engine::record::Record<String, String>,
        ctx: &mut engine::topology::ProcessorContext<'_, String, String>,
    ) -> Result<(), engine::topology::ProcessingError> {
        if record.value.starts_with("hold") {
            let deferred = ctx.defer().expect("a record is being processed");
            self.held.push((deferred, record.key, record.value));
        } else {
            ctx.forward(record);
        }
        Ok(())
    }

    fn punctuate(
        &mut self,
        _schedule: engine::topology::ScheduleId,
        timestamp: i64,
        ctx: &mut engine::topology::ProcessorContext<'_, String, String>,
    ) -> Result<(), engine::topology::ProcessingError> {
        if self.release.load(std::sync::atomic::Ordering::SeqCst) {
            for (deferred, key, value) in self.held.drain(..) {
                ctx.forward(engine::record::Record::new(
                    key,
                    format!("released {value}"),
                    timestamp,
                ));
                ctx.complete(deferred);
            }
        }
        Ok(())
    }
}

#[test]
fn a_deferred_record_is_committed_only_after_its_release_is_acknowledged() {
    let broker = broker(1);
    let bootstrap = broker.bootstrap_servers();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let release = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let b = TopologyBuilder::new("deferring");
        let flag = release.clone();
        b.stream(&Topic::new("in", Serdes::string(), Serdes::string()))
            .named("in")
            .process(move || HoldUntilReleased {
                release: flag.clone(),
                held: Vec::new(),
            })
            .named("hold")
            .to(&Topic::new("out", Serdes::string(), Serdes::string()))
            .named("out");
        let topology = b.build().expect("valid");
        let inputs: Vec<(String, String)> = ["a", "hold-1", "b", "c"]
            .iter()
            .map(|v| ("k".to_string(), v.to_string()))
            .collect();
        produce_keyed(&bootstrap, "in", &inputs).await;
        let (trigger, shutdown) = Shutdown::new();
        let runner = TopologyRunner::new(topology, settings(&broker));
        let metrics = runner.metrics();
        let handle = tokio::spawn(runner.run(shutdown));
        wait_for(Duration::from_secs(30), || {
            metrics.snapshot().records_out >= 3
        })
        .await;
        // The record before the held one commits; several commit intervals (200 ms)
        // later, the commit still stops at the held record.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while committed_total(&bootstrap, "deferring", "in", 1).await < 1 {
            assert!(std::time::Instant::now() < deadline, "nothing committed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            committed_total(&bootstrap, "deferring", "in", 1).await,
            1,
            "offsets from the held record on stay uncommitted"
        );
        release.store(true, std::sync::atomic::Ordering::SeqCst);
        let out = consume(&bootstrap, "out", 4, Duration::from_secs(30)).await;
        assert_eq!(
            out.iter().map(|r| r.value.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c", "released hold-1"]
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while committed_total(&bootstrap, "deferring", "in", 1).await != 4 {
            assert!(
                std::time::Instant::now() < deadline,
                "the release lets the commit reach the end"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        trigger.trigger();
        handle.await.unwrap().unwrap();
    });
}

/// Holds records in processing until opened (or a minute passed, so a failing test
/// cannot hang its runtime).
#[derive(Clone, Default)]
struct Gate(std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    fn wait(&self) {
        let (open, changed) = &*self.0;
        let guard = open.lock().unwrap();
        let _ = changed
            .wait_timeout_while(guard, Duration::from_secs(60), |open| !*open)
            .unwrap();
    }

    fn open(&self) {
        let (open, changed) = &*self.0;
        *open.lock().unwrap() = true;
        changed.notify_all();
    }
}

/// `shout`, with every record waiting for `gate`.
fn gated(app: &str, gate: Gate) -> Topology {
    let b = TopologyBuilder::new(app);
    b.stream(&Topic::new("in", Serdes::string(), Serdes::string()))
        .named("in")
        .map_values(move |v: String| {
            gate.wait();
            format!("{v}!")
        })
        .named("wait")
        .to(&Topic::new("out", Serdes::string(), Serdes::string()))
        .named("out");
    b.build().expect("valid")
}

#[test]
fn consumer_lag_shows_the_backlog_and_drops_to_zero_once_processed() {
    let broker = broker(2);
    let bootstrap = broker.bootstrap_servers();
    let gate = Gate::default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let input = keyed_inputs(8, 25, 0);
        produce_keyed(&bootstrap, "in", &input).await;
        let ops = std::sync::Arc::new(engine::ops::OpsState::default());
        let mut s = settings(&broker);
        s.ops = Some(ops.clone());
        let runner = TopologyRunner::new(gated("lag", gate.clone()), s);
        let metrics = runner.metrics();
        let (trigger, shutdown) = Shutdown::new();
        let handle = tokio::spawn(runner.run(shutdown));

        // The first record is stuck in processing: the whole backlog but at most that
        // record (already taken from the consumer) is lag, on both partitions.
        wait_for(Duration::from_secs(30), || {
            let lag = metrics.consumer_lag();
            lag.len() == 2 && lag.iter().map(|l| l.lag).sum::<i64>() >= input.len() as i64 - 1
        })
        .await;
        let lag = metrics.consumer_lag();
        assert!(
            lag.iter().map(|l| l.lag).sum::<i64>() <= input.len() as i64,
            "{lag:?}"
        );
        assert_eq!(
            lag.iter()
                .map(|l| (l.topic.as_str(), l.partition))
                .collect::<Vec<_>>(),
            [("in", 0), ("in", 1)]
        );
        let text = ops.prometheus();
        for l in &lag {
            let line = format!(
                "engine_consumer_lag{{application=\"lag\",topic=\"in\",partition=\"{}\"}} {}",
                l.partition, l.lag
            );
            assert!(text.contains(&line), "{line} in\n{text}");
        }

        gate.open();
        wait_for(Duration::from_secs(30), || {
            let lag = metrics.consumer_lag();
            metrics.snapshot().records_in == input.len() as u64
                && lag.len() == 2
                && lag.iter().all(|l| l.lag == 0)
        })
        .await;
        let text = ops.prometheus();
        assert!(
            text.contains(
                "engine_consumer_lag{application=\"lag\",topic=\"in\",partition=\"1\"} 0"
            ),
            "{text}"
        );
        // Every processed record was timed, from the consumer and from its timestamp.
        let n = input.len() as u64;
        assert_eq!(metrics.processing_latency.snapshot().count, n);
        assert_eq!(metrics.e2e_latency.snapshot().count, n);
        assert!(
            text.contains(&format!(
                "engine_processing_latency_seconds_count{{application=\"lag\"}} {n}"
            )),
            "{text}"
        );

        trigger.trigger();
        handle.await.unwrap().unwrap();
        assert!(
            metrics.consumer_lag().is_empty(),
            "no lag is reported for partitions no longer held"
        );
    });
}

/// Serves `ops` on a free local port; returns the address.
fn serve_ops(ops: &std::sync::Arc<engine::ops::OpsState>) -> String {
    let (addr, server) = engine::ops::serve(
        ops.clone(),
        &[],
        &engine::kafka::ClientSettings::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    tokio::spawn(server);
    addr.to_string()
}

#[test]
fn a_query_for_a_key_the_other_instance_holds_names_that_instance_and_the_new_owner_answers_after_a_hand_over()
 {
    let broker = broker(4);
    broker.create_topic("owners-per-key-changelog", 4).unwrap();
    broker
        .create_topic(&engine::runtime::instances_topic("owners"), 1)
        .unwrap();
    let bootstrap = broker.bootstrap_servers();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (ops_a, ops_b) = (
            std::sync::Arc::new(engine::ops::OpsState::default()),
            std::sync::Arc::new(engine::ops::OpsState::default()),
        );
        let (addr_a, addr_b) = (serve_ops(&ops_a), serve_ops(&ops_b));
        let instance = |dir: &std::path::Path, ops: &std::sync::Arc<_>, addr: &str| {
            let mut s = settings(&broker);
            s.state = RocksSettings::new(dir, 1 << 20, 1 << 20);
            s.ops = Some(std::sync::Arc::clone(ops));
            s.advertised_http = Some(addr.to_string());
            TopologyRunner::new(counter("owners", true), s)
        };
        let a = instance(dir_a.path(), &ops_a, &addr_a);
        let b = instance(dir_b.path(), &ops_b, &addr_b);
        let (metrics_a, metrics_b) = (a.metrics(), b.metrics());
        let (stop_a, shutdown_a) = Shutdown::new();
        let (stop_b, shutdown_b) = Shutdown::new();
        // A alone first: it reports lag for all four partitions...
        let handle_a = tokio::spawn(a.run(shutdown_a));
        wait_for(Duration::from_secs(30), || {
            metrics_a.consumer_lag().len() == 4
        })
        .await;
        let handle_b = tokio::spawn(b.run(shutdown_b));
        wait_for(Duration::from_secs(30), || {
            let (a, b) = (metrics_a.snapshot(), metrics_b.snapshot());
            a.assigned_partitions > 0
                && b.assigned_partitions > 0
                && a.assigned_partitions + b.assigned_partitions == 4
        })
        .await;
        // ...and once B took some, only for those it kept.
        let partitions = |lag: Vec<engine::metrics::PartitionLag>| -> BTreeSet<i32> {
            lag.into_iter().map(|l| l.partition).collect()
        };
        wait_for(Duration::from_secs(30), || {
            let (a, b) = (
                partitions(metrics_a.consumer_lag()),
                partitions(metrics_b.consumer_lag()),
            );
            a.len() as u64 == metrics_a.snapshot().assigned_partitions
                && a.len() + b.len() == 4
                && a.is_disjoint(&b)
        })
        .await;
        let input = keyed_inputs(16, 3, 0);
        produce_keyed(&bootstrap, "in", &input).await;
        // Counted through the record cache: queries see the counts cached or written.
        wait_for(Duration::from_secs(30), || {
            metrics_a.snapshot().records_in + metrics_b.snapshot().records_in >= input.len() as u64
        })
        .await;

        // Each key is answered by the instance holding it and, once the announcements
        // are read, redirected by the other to it.
        let keys: Vec<String> = (0..16).map(|k| format!("key-{k}")).collect();
        let answers =
            |from: &str, key: &str| support::http_get_full(from, &format!("/stores/per-key/{key}"));
        let settled = || {
            keys.iter().all(|key| {
                let (a, b) = (answers(&addr_a, key).0, answers(&addr_b, key).0);
                (a, b) == (200, 421) || (a, b) == (421, 200)
            })
        };
        wait_for(Duration::from_secs(30), settled).await;
        let mut redirected = [0, 0];
        for key in &keys {
            for (i, (here, there)) in [(&addr_a, &addr_b), (&addr_b, &addr_a)].iter().enumerate() {
                let (status, head, body) = answers(here, key);
                if status != 421 {
                    continue;
                }
                redirected[i] += 1;
                let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(json["error"], "not local", "{body}");
                assert_eq!(json["owner"], format!("http://{there}"), "{body}");
                let location = format!("location: http://{there}/stores/per-key/{key}");
                assert!(
                    head.to_lowercase().contains(&location),
                    "{location} in {head}"
                );
                // The named instance has the key, in the partition the answer gave.
                let (status, _, found) = answers(there, key);
                assert_eq!(status, 200, "{found}");
                let found: serde_json::Value = serde_json::from_str(&found).unwrap();
                assert_eq!(found["partition"], json["partition"], "{found} vs {body}");
                assert_eq!(found["value"], 3, "{found}");
            }
        }
        assert!(
            redirected[0] > 0 && redirected[1] > 0,
            "both instances hold keys the other redirects to: {redirected:?}"
        );

        // A stops: B takes its partitions over, restores them from the changelog, and
        // answers every key itself.
        stop_a.trigger();
        handle_a.await.unwrap().unwrap();
        wait_for(Duration::from_secs(60), || {
            metrics_b.snapshot().assigned_partitions == 4
        })
        .await;
        wait_for(Duration::from_secs(30), || {
            keys.iter().all(|key| answers(&addr_b, key).0 == 200)
        })
        .await;
        for key in &keys {
            let (_, _, found) = answers(&addr_b, key);
            let found: serde_json::Value = serde_json::from_str(&found).unwrap();
            assert_eq!(found["value"], 3, "{key} from the new owner: {found}");
        }
        stop_b.trigger();
        handle_b.await.unwrap().unwrap();
    });
}

/// Orders on `in` (value: a product id) named from the global table of `products`; an
/// inner join, so an order whose product the table lacks produces nothing.
fn order_namer(app: &str) -> Topology {
    let b = TopologyBuilder::new(app);
    let products = b.global_table(
        "products",
        &Topic::new("products", Serdes::string(), Serdes::string()),
        "products-store",
    );
    b.stream(&Topic::new("in", Serdes::string(), Serdes::string()))
        .named("in")
        .join_global(
            "named",
            &products,
            |_order: &String, product: &String| product.clone(),
            |product: &String, name: &String| format!("{product}={name}"),
        )
        .to(&Topic::new("out", Serdes::string(), Serdes::string()))
        .named("out");
    b.build().expect("valid")
}

/// Products `p{partition}-{i}` named `name-{partition}-{i}`, on their partition.
fn products(partitions: i32, per_partition: usize, first: usize) -> Vec<(i32, String, String)> {
    (0..partitions)
        .flat_map(|p| {
            (first..first + per_partition)
                .map(move |i| (p, format!("p{p}-{i}"), format!("name-{p}-{i}")))
        })
        .collect()
}

/// One order per product on every partition of `in`, so whichever `in` partitions an
/// instance holds, it looks up products of every partition of the global topic.
fn orders_for(
    products: &[(i32, String, String)],
    in_partitions: i32,
    tag: &str,
) -> Vec<(i32, String, String)> {
    (0..in_partitions)
        .flat_map(|q| {
            products
                .iter()
                .map(move |(_, product, _)| (q, format!("{tag}-{q}-{product}"), product.clone()))
        })
        .collect()
}

#[test]
fn every_instance_holds_every_partition_of_a_global_table_and_a_restart_reads_only_the_tail() {
    let broker = broker(4);
    broker.create_topic("products", 3).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let first = products(3, 4, 0);
        support::produce_to_partitions(&bootstrap, "products", &first).await;
        let ops_a = std::sync::Arc::new(engine::ops::OpsState::default());
        let addr_a = serve_ops(&ops_a);
        let instance = |dir: &std::path::Path, ops: Option<&std::sync::Arc<_>>| {
            let mut s = settings(&broker);
            s.state = RocksSettings::new(dir, 1 << 20, 1 << 20);
            s.ops = ops.map(std::sync::Arc::clone);
            TopologyRunner::new(order_namer("globals"), s)
        };
        let a = instance(dir_a.path(), Some(&ops_a));
        let b = instance(dir_b.path(), None);
        let (metrics_a, metrics_b) = (a.metrics(), b.metrics());
        let (stop_a, shutdown_a) = Shutdown::new();
        let (stop_b, shutdown_b) = Shutdown::new();
        let handle_a = tokio::spawn(a.run(shutdown_a));
        let handle_b = tokio::spawn(b.run(shutdown_b));
        wait_for(Duration::from_secs(30), || {
            let (a, b) = (metrics_a.snapshot(), metrics_b.snapshot());
            a.assigned_partitions > 0
                && b.assigned_partitions > 0
                && a.assigned_partitions + b.assigned_partitions == 4
        })
        .await;
        // Both bootstrapped the whole topic, not a share of it.
        assert_eq!(metrics_a.snapshot().global_restored_records, 12);
        assert_eq!(metrics_b.snapshot().global_restored_records, 12);

        let orders = orders_for(&first, 4, "first");
        support::produce_to_partitions(&bootstrap, "in", &orders).await;
        let expected: BTreeSet<String> = orders
            .iter()
            .map(|(_, _, product)| {
                let (p, i) = product[1..].split_once('-').unwrap();
                format!("{product}=name-{p}-{i}")
            })
            .collect();
        let out = consume_until_seen(&bootstrap, "out", &expected, Duration::from_secs(60)).await;
        let seen: BTreeSet<String> = out.iter().map(|r| r.value.clone()).collect();
        assert!(seen == expected, "{}", missing_summary(&expected, &seen));
        wait_for(Duration::from_secs(30), || {
            metrics_a.snapshot().records_out + metrics_b.snapshot().records_out == 48
        })
        .await;
        for (name, m) in [("A", metrics_a.snapshot()), ("B", metrics_b.snapshot())] {
            // Each instance processed whole `in` partitions (12 orders, products of all
            // three global partitions, each) and the inner join dropped none of them.
            assert_eq!(m.records_in, 12 * m.assigned_partitions, "{name}: {m:?}");
            assert_eq!(
                m.records_out, m.records_in,
                "{name} found every product: {m:?}"
            );
        }
        // The global store is queryable on the operations endpoint, any key of any
        // partition.
        for key in ["p0-0", "p1-3", "p2-2"] {
            let (status, _, body) =
                support::http_get_full(&addr_a, &format!("/stores/products-store/{key}"));
            assert_eq!(status, 200, "{body}");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(json["value"], format!("name-{}", &key[1..]), "{body}");
        }

        // A product added while running reaches both instances.
        support::produce_to_partitions(
            &bootstrap,
            "products",
            &[(1, "p1-9".to_string(), "name-1-9".to_string())],
        )
        .await;
        wait_for(Duration::from_secs(30), || {
            metrics_a.snapshot().global_records == 1 && metrics_b.snapshot().global_records == 1
        })
        .await;
        stop_a.trigger();
        stop_b.trigger();
        handle_a.await.unwrap().unwrap();
        handle_b.await.unwrap().unwrap();
        assert!(
            walk(dir_a.path())
                .iter()
                .any(|p| p.ends_with("globals/global/products-store.checkpoint")),
            "a clean stop leaves a global checkpoint"
        );

        // Five more products while it is down: a restart on the same state reads only
        // those, and still has the ones from before.
        let tail: Vec<_> = products(3, 2, 20).into_iter().take(5).collect();
        support::produce_to_partitions(&bootstrap, "products", &tail).await;
        let a = instance(dir_a.path(), None);
        let metrics = a.metrics();
        let (stop, shutdown) = Shutdown::new();
        let handle = tokio::spawn(a.run(shutdown));
        wait_for(Duration::from_secs(30), || {
            metrics.snapshot().assigned_partitions == 4
        })
        .await;
        assert_eq!(
            metrics.snapshot().global_restored_records,
            5,
            "the restart read only the tail: {:?}",
            metrics.snapshot()
        );
        let late: Vec<(i32, String, String)> = [
            (0, "late-old", "p0-1"),
            (1, "late-new", &tail[4].1),
            (2, "late-live", "p1-9"),
        ]
        .iter()
        .map(|(q, k, v)| (*q, k.to_string(), v.to_string()))
        .collect();
        support::produce_to_partitions(&bootstrap, "in", &late).await;
        wait_for(Duration::from_secs(30), || {
            metrics.snapshot().records_out == 3
        })
        .await;
        stop.trigger();
        handle.await.unwrap().unwrap();
        assert_eq!(metrics.snapshot().records_in, 3, "{:?}", metrics.snapshot());

        // A checkpoint that does not fit the topic (an offset past its end) is not
        // trusted: the store is wiped and rebuilt from the whole topic (12 + 1 + 5).
        let checkpoint = dir_a
            .path()
            .join("globals/global/products-store.checkpoint");
        assert!(
            checkpoint.exists(),
            "the second clean stop wrote a checkpoint"
        );
        std::fs::write(&checkpoint, "0 999\n1 0\n2 0\n").unwrap();
        let a = instance(dir_a.path(), None);
        let metrics = a.metrics();
        let (stop, shutdown) = Shutdown::new();
        let handle = tokio::spawn(a.run(shutdown));
        wait_for(Duration::from_secs(30), || {
            metrics.snapshot().assigned_partitions == 4
        })
        .await;
        stop.trigger();
        handle.await.unwrap().unwrap();
        assert_eq!(
            metrics.snapshot().global_restored_records,
            18,
            "{:?}",
            metrics.snapshot()
        );
    });
}

/// Runs `topology` until `expected` latest counts appear on `output`; returns them.
async fn count_until(
    cluster: &Cluster,
    topology: Topology,
    settings: RunSettings,
    expected: &BTreeMap<String, i64>,
) -> BTreeMap<String, i64> {
    let (trigger, shutdown) = Shutdown::new();
    let handle = tokio::spawn(TopologyRunner::new(topology, settings).run(shutdown));
    let latest = latest_counts(&cluster.bootstrap, &cluster.output, expected).await;
    trigger.trigger();
    handle.await.unwrap().unwrap();
    latest
}

fn counts_of(inputs: &[(String, String)]) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for (key, _) in inputs {
        *counts.entry(key.clone()).or_insert(0) += 1;
    }
    counts
}

#[test]
fn real_kafka_internal_topics_are_created_compacted_with_one_partition_per_task() {
    let Some(bootstrap) = support::real_kafka() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cluster = Cluster::real(bootstrap, 3).await;
        let app = cluster.app("created");
        let changelog = format!("{app}-per-key-changelog");
        assert_eq!(
            support::describe_topic(&cluster.bootstrap, &changelog).await,
            None
        );
        let inputs = keyed_inputs(6, 10, 0);
        produce_keyed(&cluster.bootstrap, &cluster.input, &inputs).await;
        let expected = counts_of(&inputs);
        let latest = count_until(
            &cluster,
            cluster.counter(&app, true),
            cluster.settings(),
            &expected,
        )
        .await;
        assert_eq!(latest, expected);
        assert_eq!(
            support::describe_topic(&cluster.bootstrap, &changelog).await,
            Some((3, "compact".to_string())),
            "the engine created the changelog: one partition per task, compacted"
        );
    });
}

#[test]
fn real_kafka_an_internal_topic_that_does_not_fit_is_refused_with_the_fix() {
    let Some(bootstrap) = support::real_kafka() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cluster = Cluster::real(bootstrap, 3).await;
        let (few, deleting) = (cluster.app("few"), cluster.app("deleting"));
        let (few_log, deleting_log) = (
            format!("{few}-per-key-changelog"),
            format!("{deleting}-per-key-changelog"),
        );
        support::create_topics(
            &cluster.bootstrap,
            &[
                (&few_log, 2, &[("cleanup.policy", "compact")]),
                (&deleting_log, 3, &[("cleanup.policy", "delete")]),
            ],
        )
        .await;
        let refusal = |app: String| {
            let runner = TopologyRunner::new(cluster.counter(&app, true), cluster.settings());
            async move {
                let (_trigger, shutdown) = Shutdown::new();
                match runner.run(shutdown).await {
                    Err(e @ engine::runtime::RuntimeError::InternalTopics { .. }) => e.to_string(),
                    other => panic!("expected a refusal, got {other:?}"),
                }
            }
        };
        let message = refusal(few).await;
        assert!(
            message.contains(&format!("`{few_log}`"))
                && message.contains("has 2 partitions, the topology needs 3")
                && message.contains("kafka-topics.sh"),
            "{message}"
        );
        let message = refusal(deleting).await;
        assert!(
            message.contains(&format!("`{deleting_log}`"))
                && message.contains("cleanup.policy=delete")
                && message.contains(&format!(
                    "--entity-name {deleting_log} --add-config cleanup.policy=compact"
                )),
            "{message}"
        );
    });
}

/// How many records `topic` holds now, read from the beginning.
async fn records_in(bootstrap: &str, topic: &str, partitions: i32) -> usize {
    let bootstrap = bootstrap.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", format!("count-{}", uuid::Uuid::new_v4()))
            .create()
            .unwrap();
        let mut ends = BTreeMap::new();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
                .unwrap();
            ends.insert(p, high);
            tpl.add_partition_offset(&topic, p, rdkafka::Offset::Offset(low))
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut count = 0;
        let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while ends
            .iter()
            .any(|(p, end)| positions.get(p).copied().unwrap_or(0) < *end)
            && std::time::Instant::now() < deadline
        {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    use rdkafka::Message;
                    count += 1;
                    positions.insert(m.partition(), m.offset() + 1);
                }
                Some(Err(e)) => panic!("{e}"),
                None => {
                    // Compaction leaves gaps: the position says how far the fetch got.
                    if let Ok(p) = consumer.position() {
                        for e in p.elements() {
                            if let rdkafka::Offset::Offset(o) = e.offset() {
                                positions.insert(e.partition(), o);
                            }
                        }
                    }
                }
            }
        }
        count
    })
    .await
    .unwrap()
}

#[test]
fn real_kafka_a_restore_from_a_compacted_changelog_yields_the_same_counts() {
    let Some(bootstrap) = support::real_kafka() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cluster = Cluster::real(bootstrap, 2).await;
        let app = cluster.app("compacted");
        let changelog = format!("{app}-per-key-changelog");
        // Small segments the cleaner may compact at once (the engine accepts an existing
        // changelog that is compacted and has the right partition count).
        support::create_topics(
            &cluster.bootstrap,
            &[(
                &changelog,
                2,
                &[
                    ("cleanup.policy", "compact"),
                    ("segment.ms", "100"),
                    ("min.cleanable.dirty.ratio", "0.01"),
                    ("delete.retention.ms", "100"),
                ],
            )],
        )
        .await;
        // First instance: 4 keys counted to 50 in five rounds (every update written
        // through to the changelog), so segments roll between rounds.
        let dir_a = tempfile::tempdir().unwrap();
        let mut s = cluster.settings();
        s.state = RocksSettings::new(dir_a.path(), 1 << 20, 1 << 20);
        let (trigger, shutdown) = Shutdown::new();
        let runner = TopologyRunner::new(cluster.counter(&app, false), s);
        let metrics = runner.metrics();
        let handle = tokio::spawn(runner.run(shutdown));
        for round in 0..5 {
            produce_keyed(
                &cluster.bootstrap,
                &cluster.input,
                &keyed_inputs(4, 10, round * 10),
            )
            .await;
            wait_for(Duration::from_secs(30), || {
                metrics.snapshot().records_out >= 40 * (round as u64 + 1)
            })
            .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        trigger.trigger();
        handle.await.unwrap().unwrap();
        // The cleaner compacts the rolled segments: fewer records than the 200 written.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        let mut held = records_in(&cluster.bootstrap, &changelog, 2).await;
        while held >= 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the broker never compacted the changelog ({held} records)"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
            held = records_in(&cluster.bootstrap, &changelog, 2).await;
        }
        // A second instance with no local state restores from the compacted log and
        // counts on: one more record per key makes 51.
        produce_keyed(&cluster.bootstrap, &cluster.input, &keyed_inputs(4, 1, 50)).await;
        let dir_b = tempfile::tempdir().unwrap();
        let mut s = cluster.settings();
        s.state = RocksSettings::new(dir_b.path(), 1 << 20, 1 << 20);
        let expected: BTreeMap<String, i64> = (0..4).map(|k| (format!("key-{k}"), 51)).collect();
        let latest = count_until(&cluster, cluster.counter(&app, false), s, &expected).await;
        assert_eq!(
            latest, expected,
            "restored from {held} compacted records, the counts are those of 200 updates"
        );
    });
}

#[test]
fn real_kafka_three_instances_joining_and_leaving_keep_exact_counts() {
    let Some(bootstrap) = support::real_kafka() else {
        return;
    };
    churn(bootstrap, None);
}

#[test]
fn real_kafka_three_instances_joining_and_leaving_keep_exact_counts_with_eager_rebalancing() {
    let Some(bootstrap) = support::real_kafka() else {
        return;
    };
    // What a topology reading several topics gets (`range`): every rebalance revokes and
    // reassigns every partition.
    churn(bootstrap, Some("range"));
}

/// Instances a, b and c join one after the other under continuous input, then c and b
/// stop: the counts stay exact, and no partition's output pauses 10 s or more.
/// `strategy`: the consumer's assignor, if not the engine's default.
fn churn(bootstrap: String, strategy: Option<&str>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cluster = Cluster::real(bootstrap, 6).await;
        let app = cluster.app("churn");
        // Continuous input: 12 keys, one record each every 100 ms, while instances come
        // and go.
        let stop_input = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let producer = {
            let (bootstrap, input, stop) = (
                cluster.bootstrap.clone(),
                cluster.input.clone(),
                stop_input.clone(),
            );
            tokio::spawn(async move {
                let mut sent = Vec::new();
                let mut round = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let batch = keyed_inputs(12, 1, round);
                    produce_keyed(&bootstrap, &input, &batch).await;
                    sent.extend(batch);
                    round += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                sent
            })
        };
        // Arrival times of outputs per partition, to find the longest stall.
        let watcher = {
            let (bootstrap, output) = (cluster.bootstrap.clone(), cluster.output.clone());
            let stop = stop_input.clone();
            tokio::spawn(async move { longest_gap_per_partition(&bootstrap, &output, stop).await })
        };
        let start = |name: &str| {
            let dir = tempfile::tempdir().unwrap();
            let mut s = cluster.settings();
            s.state = RocksSettings::new(dir.path(), 1 << 20, 1 << 20);
            if let Some(strategy) = strategy {
                s.client.properties.insert(
                    "consumer.partition.assignment.strategy".into(),
                    strategy.into(),
                );
            }
            let runner = TopologyRunner::new(cluster.counter(&app, true), s);
            let metrics = runner.metrics();
            let (trigger, shutdown) = Shutdown::new();
            eprintln!("instance {name} starting");
            (tokio::spawn(runner.run(shutdown)), trigger, metrics, dir)
        };
        let settle = || tokio::time::sleep(Duration::from_secs(6));
        let a = start("a");
        settle().await;
        let b = start("b");
        settle().await;
        let c = start("c");
        settle().await;
        for (handle, trigger, _, _dir) in [c, b] {
            trigger.trigger();
            handle.await.unwrap().unwrap();
            settle().await;
        }
        stop_input.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = producer.await.unwrap();
        let expected = counts_of(&sent);
        let latest = latest_counts(&cluster.bootstrap, &cluster.output, &expected).await;
        let (handle, trigger, metrics, _dir) = a;
        trigger.trigger();
        handle.await.unwrap().unwrap();
        let (gaps, stalled) = watcher.await.unwrap();
        assert_eq!(latest, expected, "every record counted exactly once");
        assert!(metrics.snapshot().records_in > 0);
        // Not a performance figure: a partition left without an owner waits for the
        // session timeout (10 s) of a member that did not leave; a clean leave hands it
        // over well before.
        let longest = gaps.values().max().copied().unwrap_or_default();
        eprintln!(
            "longest gap between outputs per partition {gaps:?}; time in gaps over 500 ms per partition {stalled:?}, {:?} in all",
            stalled.values().sum::<Duration>()
        );
        assert!(
            longest < Duration::from_secs(10),
            "a partition stalled for {longest:?}: {gaps:?}"
        );
    });
}

/// Reads `topic` until `stop` is set (and a second more); returns, per partition, the
/// longest time between two records' arrivals.
async fn longest_gap_per_partition(
    bootstrap: &str,
    topic: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (BTreeMap<i32, Duration>, BTreeMap<i32, Duration>) {
    use futures::StreamExt;
    use rdkafka::Message;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("gaps-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "50")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut stream = consumer.stream();
    let mut last: BTreeMap<i32, tokio::time::Instant> = BTreeMap::new();
    let mut longest: BTreeMap<i32, Duration> = BTreeMap::new();
    // Per partition, the time spent in gaps over 500 ms (the input comes every 100 ms).
    let mut stalled: BTreeMap<i32, Duration> = BTreeMap::new();
    let mut stopped_at = None;
    loop {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            let at = *stopped_at.get_or_insert_with(tokio::time::Instant::now);
            if at.elapsed() > Duration::from_secs(1) {
                return (longest, stalled);
            }
        }
        if let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(200), stream.next()).await
        {
            let now = tokio::time::Instant::now();
            if let Some(previous) = last.insert(m.partition(), now) {
                let gap = longest.entry(m.partition()).or_default();
                *gap = (*gap).max(now - previous);
                if now - previous > Duration::from_millis(500) {
                    *stalled.entry(m.partition()).or_default() += now - previous;
                }
            }
        }
    }
}

#[test]
fn real_kafka_a_repartition_topic_is_created_and_purged_once_committed() {
    let Some(bootstrap) = support::real_kafka() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cluster = Cluster::real(bootstrap, 2).await;
        let app = cluster.app("rekeyed");
        // Counts per value: re-keyed through `<app>-by-value-repartition`.
        let b = TopologyBuilder::new(&app);
        b.stream(&Topic::new(
            cluster.input.as_str(),
            Serdes::string(),
            Serdes::string(),
        ))
        .named("in")
        .group_by(
            "by-value",
            |_k: &String, v: &String| v.clone(),
            Grouped::with(Serdes::string(), Serdes::string()),
        )
        .count("count", "per-value")
        .to_stream()
        .named("updates")
        .to(&Topic::new(
            &cluster.output,
            Serdes::string(),
            Serdes::i64(),
        ))
        .named("out");
        let topology = b.build().unwrap();
        let repartition = format!("{app}-by-value-repartition");
        assert_eq!(
            topology.repartition_topics(),
            std::slice::from_ref(&repartition)
        );
        let inputs: Vec<(String, String)> = (0..200)
            .map(|i| (format!("k{i}"), format!("v{}", i % 5)))
            .collect();
        produce_keyed(&cluster.bootstrap, &cluster.input, &inputs).await;
        let mut s = cluster.settings();
        s.repartition_purge_interval = Duration::from_millis(200);
        let (trigger, shutdown) = Shutdown::new();
        let handle = tokio::spawn(TopologyRunner::new(topology, s).run(shutdown));
        let expected: BTreeMap<String, i64> = (0..5).map(|v| (format!("v{v}"), 40)).collect();
        let latest = latest_counts(&cluster.bootstrap, &cluster.output, &expected).await;
        assert_eq!(latest, expected);
        assert_eq!(
            support::describe_topic(&cluster.bootstrap, &repartition).await,
            Some((2, "delete".to_string())),
            "the engine created the repartition topic"
        );
        // Every record of the repartition topic is committed: the purge deletes them all.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let watermarks = watermarks(&cluster.bootstrap, &repartition, 2).await;
            let written: i64 = watermarks.iter().map(|(_, high)| high).sum();
            assert_eq!(
                written, 200,
                "every record went through the repartition topic"
            );
            if watermarks.iter().all(|(low, high)| low == high) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "committed records were never deleted: {watermarks:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        trigger.trigger();
        handle.await.unwrap().unwrap();
    });
}

/// The (low, high) watermarks of each partition of `topic`.
async fn watermarks(bootstrap: &str, topic: &str, partitions: i32) -> Vec<(i64, i64)> {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        (0..partitions)
            .map(|p| {
                consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .unwrap()
            })
            .collect()
    })
    .await
    .unwrap()
}

#[test]
fn real_kafka_missing_user_topics_are_refused_unless_asked_to_create_them() {
    let Some(bootstrap) = support::real_kafka() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (input, output) = (support::unique("absent-in"), support::unique("absent-out"));
        let app = support::unique("create");
        let pipeline = || {
            let b = TopologyBuilder::new(&app);
            b.stream(&Topic::new(
                input.as_str(),
                Serdes::string(),
                Serdes::string(),
            ))
            .named("in")
            .map_values(|v: String| format!("{v}!"))
            .named("shout")
            .to(&Topic::new(&output, Serdes::string(), Serdes::string()))
            .named("out");
            b.build().unwrap()
        };
        let mut s = RunSettings::new(bootstrap.clone());
        s.startup_timeout = Duration::from_secs(20);
        // Without --create-topics: refused, naming both topics, nothing created.
        let (_trigger, shutdown) = Shutdown::new();
        match TopologyRunner::new(pipeline(), s.clone())
            .run(shutdown)
            .await
        {
            Err(e @ engine::runtime::RuntimeError::MissingTopics { .. }) => {
                let message = e.to_string();
                assert!(
                    message.contains(&input) && message.contains(&output),
                    "{message}"
                );
                assert!(message.contains("--create-topics"), "{message}");
            }
            other => panic!("expected missing topics, got {other:?}"),
        }
        assert_eq!(support::describe_topic(&bootstrap, &input).await, None);
        // With it: created with the partitions asked for, and the pipeline runs.
        s.create_topics = Some(3);
        let (trigger, shutdown) = Shutdown::new();
        let handle = tokio::spawn(TopologyRunner::new(pipeline(), s).run(shutdown));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while support::describe_topic(&bootstrap, &input).await.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{input} never created"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            support::describe_topic(&bootstrap, &output).await,
            Some((3, "delete".to_string()))
        );
        produce_keyed(&bootstrap, &input, &keyed_inputs(3, 5, 0)).await;
        let out = consume(&bootstrap, &output, 15, Duration::from_secs(30)).await;
        trigger.trigger();
        handle.await.unwrap().unwrap();
        assert_eq!(out.len(), 15);
    });
}

/// `app`: topic `input` through `processor`, which uses the persistent stores `stores`
/// (string keys, values through `value()`), to topic `output`.
fn through_stores<V: 'static, S: engine::serde::Serde<V>, P>(
    app: &str,
    input: &str,
    output: &str,
    stores: &[&str],
    value: impl Fn() -> S,
    processor: impl Fn() -> P + Send + Sync + 'static,
) -> Topology
where
    P: engine::topology::Processor<String, String, String, String>,
{
    let b = TopologyBuilder::new(app);
    for store in stores {
        b.add_store(engine::topology::StoreBuilder::persistent(
            store,
            Serdes::string(),
            value(),
        ));
    }
    b.stream(&Topic::new(input, Serdes::string(), Serdes::string()))
        .named("in")
        .process_with_stores(stores, processor)
        .named("process")
        .to(&Topic::new(output, Serdes::string(), Serdes::string()))
        .named("out");
    b.build().expect("valid")
}

/// Runs `topology` on `broker` with its stores under `dir`, committing every 100 ms.
fn spawn_with_state(
    broker: &EmbeddedBroker,
    dir: &std::path::Path,
    topology: Topology,
) -> (
    tokio::task::JoinHandle<Result<(), engine::runtime::RuntimeError>>,
    std::sync::Arc<engine::metrics::TopologyMetrics>,
    engine::runtime::ShutdownTrigger,
) {
    let mut s = settings(broker);
    s.state = RocksSettings::new(dir, 1 << 20, 1 << 20);
    s.commit_interval = Duration::from_millis(100);
    let runner = TopologyRunner::new(topology, s);
    let metrics = runner.metrics();
    let (trigger, shutdown) = Shutdown::new();
    (tokio::spawn(runner.run(shutdown)), metrics, trigger)
}

/// As worker-agents does: every record is deferred; a `fast-` one finishes at once and
/// is settled (store write, output, release) by the next call into the processor, often
/// the `process` of a later record; a `slow-` one is settled by a punctuation once
/// `release` is set.
struct SettleLater {
    release: std::sync::Arc<std::sync::atomic::AtomicBool>,
    finished: Vec<(engine::topology::Deferred, String)>,
    slow: Vec<(engine::topology::Deferred, String)>,
}

impl SettleLater {
    fn settle(
        ctx: &mut engine::topology::ProcessorContext<'_, String, String>,
        settled: Vec<(engine::topology::Deferred, String)>,
    ) -> Result<(), engine::topology::ProcessingError> {
        for (deferred, value) in settled {
            ctx.kv_store::<String, String>("done")
                .and_then(|mut s| s.put(&value, &"done".to_string()))
                .map_err(|e| engine::topology::ProcessingError::new(e.to_string()))?;
            let now = ctx.wall_clock_time();
            ctx.forward(engine::record::Record::new(
                "k".to_string(),
                format!("done {value}"),
                now,
            ));
            ctx.complete(deferred);
        }
        Ok(())
    }
}

impl engine::topology::Processor<String, String, String, String> for SettleLater {
    fn init(
        &mut self,
        ctx: &mut engine::topology::ProcessorContext<'_, String, String>,
    ) -> Result<(), engine::topology::ProcessingError> {
        ctx.schedule(
            Duration::from_millis(50),
            engine::topology::PunctuationType::WallClockTime,
        );
        Ok(())
    }

    fn process(
        &mut self,
        record: engine::record::Record<String, String>,
        ctx: &mut engine::topology::ProcessorContext<'_, String, String>,
    ) -> Result<(), engine::topology::ProcessingError> {
        Self::settle(ctx, std::mem::take(&mut self.finished))?;
        let deferred = ctx.defer().expect("a record is being processed");
        if record.value.starts_with("slow") {
            self.slow.push((deferred, record.value));
        } else {
            self.finished.push((deferred, record.value));
        }
        Ok(())
    }

    fn punctuate(
        &mut self,
        _schedule: engine::topology::ScheduleId,
        _timestamp: i64,
        ctx: &mut engine::topology::ProcessorContext<'_, String, String>,
    ) -> Result<(), engine::topology::ProcessingError> {
        if self.release.load(std::sync::atomic::Ordering::SeqCst) {
            Self::settle(ctx, std::mem::take(&mut self.slow))?;
        }
        Ok(())
    }
}

#[test]
fn a_deferred_record_is_not_restored_as_applied_when_a_store_write_of_another_lands_first() {
    let broker = broker(1);
    broker.create_topic("settling-done-changelog", 1).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let release = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let topology = || {
        let b = TopologyBuilder::new("settling");
        b.add_store(engine::topology::StoreBuilder::persistent(
            "done",
            Serdes::string(),
            Serdes::string(),
        ));
        let flag = release.clone();
        b.stream(&Topic::new("in", Serdes::string(), Serdes::string()))
            .named("in")
            .process_with_stores(&["done"], move || SettleLater {
                release: flag.clone(),
                finished: Vec::new(),
                slow: Vec::new(),
            })
            .named("settle")
            .to(&Topic::new("out", Serdes::string(), Serdes::string()))
            .named("out");
        b.build().expect("valid")
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let run = |dir: &std::path::Path| spawn_with_state(&broker, dir, topology());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let inputs: Vec<(String, String)> = ["fast-1", "slow-2"]
            .iter()
            .map(|v| ("k".to_string(), v.to_string()))
            .collect();
        produce_keyed(&bootstrap, "in", &inputs).await;
        // fast-1 is settled while slow-2 is processed: its store write reaches the
        // changelog, and fast-1's offset commits; slow-2 waits. Then the instance dies.
        let (handle, _metrics, _stop) = run(dirs[0].path());
        let changelog = consume(
            &bootstrap,
            "settling-done-changelog",
            1,
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(
            changelog.len(),
            1,
            "fast-1's store write is in the changelog"
        );
        wait_for_commits(&bootstrap, "settling", 1, 1).await;
        handle.abort();
        let _ = handle.await;

        // The next instance restores the store and gets slow-2 again: it must run it.
        release.store(true, std::sync::atomic::Ordering::SeqCst);
        let (handle, metrics, stop) = run(dirs[1].path());
        let out = consume_until_seen(
            &bootstrap,
            "out",
            &["done fast-1", "done slow-2"]
                .iter()
                .map(|v| v.to_string())
                .collect(),
            Duration::from_secs(30),
        )
        .await;
        stop.trigger();
        handle.await.unwrap().unwrap();
        assert!(
            out.iter().any(|r| r.value == "done slow-2"),
            "slow-2 was skipped as if applied: {out:?}, {:?}",
            metrics.snapshot()
        );
    });
}

/// Writes `both-N` to stores `a` and `b`, `b-N` to `b` only; answers `check-N` with
/// what `a` holds for N.
struct TwoStores;

impl engine::topology::Processor<String, String, String, String> for TwoStores {
    fn process(
        &mut self,
        record: engine::record::Record<String, String>,
        ctx: &mut engine::topology::ProcessorContext<'_, String, String>,
    ) -> Result<(), engine::topology::ProcessingError> {
        let error =
            |e: engine::state::StoreError| engine::topology::ProcessingError::new(e.to_string());
        let (kind, n) = record.value.split_once('-').expect("kind-N");
        let n = n.to_string();
        match kind {
            "both" => {
                ctx.kv_store::<String, String>("a")
                    .and_then(|mut a| a.put(&n, &record.value))
                    .map_err(error)?;
                ctx.kv_store::<String, String>("b")
                    .and_then(|mut b| b.put(&n, &record.value))
                    .map_err(error)?;
            }
            "b" => ctx
                .kv_store::<String, String>("b")
                .and_then(|mut b| b.put(&n, &record.value))
                .map_err(error)?,
            _ => {
                let held = ctx
                    .kv_store::<String, String>("a")
                    .and_then(|a| a.get(&n))
                    .map_err(error)?;
                ctx.forward(record.with_value(format!("a[{n}]={held:?}")));
            }
        }
        Ok(())
    }
}

#[test]
fn every_store_of_a_task_restores_the_writes_of_committed_inputs() {
    let broker = broker(1);
    broker.create_topic("two-a-changelog", 1).unwrap();
    broker.create_topic("two-b-changelog", 1).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let topology = || {
        through_stores("two", "in", "out", &["a", "b"], Serdes::string, || {
            TwoStores
        })
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let run = |dir: &std::path::Path| {
        let (handle, _metrics, trigger) = spawn_with_state(&broker, dir, topology());
        (handle, trigger)
    };
    let inputs = |values: &[&str]| -> Vec<(String, String)> {
        values
            .iter()
            .map(|v| ("k".to_string(), v.to_string()))
            .collect()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        produce_keyed(&bootstrap, "in", &inputs(&["both-1", "b-2", "b-3"])).await;
        let (handle, _stop) = run(dirs[0].path());
        wait_for_commits(&bootstrap, "two", 1, 3).await;
        handle.abort();
        let _ = handle.await;

        // A fresh instance restores both stores; every input was committed, so store
        // `a` must hold what both-1 wrote.
        produce_keyed(&bootstrap, "in", &inputs(&["check-1"])).await;
        let (handle, stop) = run(dirs[1].path());
        let out = consume(&bootstrap, "out", 1, Duration::from_secs(30)).await;
        stop.trigger();
        handle.await.unwrap().unwrap();
        assert_eq!(
            out.iter().map(|r| r.value.as_str()).collect::<Vec<_>>(),
            [r#"a[1]=Some("both-1")"#]
        );
    });
}

/// Counts every record per key in two stores, `a` first, then `b`; answers `check`
/// with both counts.
struct CountTwice;

impl engine::topology::Processor<String, String, String, String> for CountTwice {
    fn process(
        &mut self,
        record: engine::record::Record<String, String>,
        ctx: &mut engine::topology::ProcessorContext<'_, String, String>,
    ) -> Result<(), engine::topology::ProcessingError> {
        let error =
            |e: engine::state::StoreError| engine::topology::ProcessingError::new(e.to_string());
        let mut counts = Vec::new();
        for store in ["a", "b"] {
            let mut s = ctx.kv_store::<String, i64>(store).map_err(error)?;
            let n = s.get(&record.key).map_err(error)?.unwrap_or(0);
            if record.value == "check" {
                counts.push(n);
            } else {
                s.put(&record.key, &(n + 1)).map_err(error)?;
            }
        }
        if record.value == "check" {
            ctx.forward(record.with_value(format!("{counts:?}")));
        }
        Ok(())
    }
}

#[test]
fn a_task_with_two_stores_killed_mid_stream_restores_exact_counts_in_both() {
    let broker = broker(2);
    broker.create_topic("twice-a-changelog", 2).unwrap();
    broker.create_topic("twice-b-changelog", 2).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let topology = || {
        through_stores("twice", "in", "out", &["a", "b"], Serdes::i64, || {
            CountTwice
        })
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let run = |dir: &std::path::Path| spawn_with_state(&broker, dir, topology());
    const KEYS: usize = 8;
    const PER_KEY: usize = 1500;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (handle, metrics, _stop) = run(dirs[0].path());
        // Input keeps coming while the instance is killed (aborted: no flush, no commit).
        let feeder = {
            let bootstrap = bootstrap.clone();
            tokio::spawn(async move {
                for chunk in 0..PER_KEY / 100 {
                    produce_keyed(&bootstrap, "in", &keyed_inputs(KEYS, 100, chunk * 100)).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        wait_for(Duration::from_secs(60), || {
            metrics.snapshot().records_in >= (KEYS * PER_KEY / 3) as u64
        })
        .await;
        handle.abort();
        let _ = handle.await;
        let (handle, _metrics, stop) = run(dirs[1].path());
        feeder.await.unwrap();
        wait_for_commits(&bootstrap, "twice", 2, (KEYS * PER_KEY) as i64).await;
        let checks: Vec<(String, String)> = (0..KEYS)
            .map(|k| (format!("key-{k}"), "check".to_string()))
            .collect();
        produce_keyed(&bootstrap, "in", &checks).await;
        let out = consume(&bootstrap, "out", KEYS, Duration::from_secs(30)).await;
        stop.trigger();
        handle.await.unwrap().unwrap();
        let counts: BTreeMap<String, String> = out.into_iter().map(|r| (r.key, r.value)).collect();
        let expected: BTreeMap<String, String> = (0..KEYS)
            .map(|k| (format!("key-{k}"), format!("[{PER_KEY}, {PER_KEY}]")))
            .collect();
        assert_eq!(
            counts, expected,
            "both stores count every input once across the kill"
        );
    });
}

/// Answers a record with what its function makes of the value of the record's key in
/// store `s`.
struct ReadStore<V>(fn(Option<V>) -> String);

impl<V: 'static> engine::topology::Processor<String, String, String, String> for ReadStore<V> {
    fn process(
        &mut self,
        record: engine::record::Record<String, String>,
        ctx: &mut engine::topology::ProcessorContext<'_, String, String>,
    ) -> Result<(), engine::topology::ProcessingError> {
        let held = ctx
            .kv_store::<String, V>("s")
            .and_then(|s| s.get(&record.key))
            .map_err(|e| engine::topology::ProcessingError::new(e.to_string()))?;
        ctx.forward(record.with_value((self.0)(held)));
        Ok(())
    }
}

#[test]
fn a_restore_ignores_changelog_writes_of_an_owner_older_than_one_before_it() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let broker = broker(1);
    broker.create_topic("fencing-s-changelog", 1).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        // The owner of epoch 2 writes k=5; then the one of epoch 1, which lost the task
        // but did not know yet, writes k=1: a zombie's write.
        for (epoch, count, key) in [(2, 5_i64, "k"), (1, 1, "k"), (1, 7, "other")] {
            let mut value = vec![0_u8];
            value.extend_from_slice(&count.to_be_bytes());
            let epoch = epoch.to_string();
            let headers = OwnedHeaders::new().insert(Header {
                key: "engine.epoch",
                value: Some(epoch.as_bytes()),
            });
            producer
                .send(
                    FutureRecord::to("fencing-s-changelog")
                        .partition(0)
                        .key(key)
                        .payload(&value)
                        .headers(headers),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let topology = through_stores("fencing", "in", "out", &["s"], Serdes::i64, || {
            ReadStore(|held: Option<i64>| format!("{held:?}"))
        });
        let (handle, _metrics, trigger) = spawn_with_state(&broker, dir.path(), topology);
        let checks: Vec<(String, String)> = ["k", "other"]
            .iter()
            .map(|k| (k.to_string(), "check".to_string()))
            .collect();
        produce_keyed(&bootstrap, "in", &checks).await;
        let out = consume(&bootstrap, "out", 2, Duration::from_secs(30)).await;
        trigger.trigger();
        handle.await.unwrap().unwrap();
        assert_eq!(
            out.iter().map(|r| r.value.as_str()).collect::<Vec<_>>(),
            ["Some(5)", "None"],
            "the zombie's writes after the newer owner's are left out"
        );
        // The restored task took an epoch above both, and fenced its changelog with it.
        let changelog = consume(
            &bootstrap,
            "fencing-s-changelog",
            4,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(changelog.len(), 4, "{changelog:?}");
        assert_eq!(changelog[3].key, "\0engine.fence");
    });
}

#[test]
fn a_task_reading_two_topics_gets_the_same_partition_of_both_on_one_instance() {
    let cluster = Cluster::mock(6, "pairs", &["per-key"]);
    if let Some(broker) = &cluster.mock {
        broker.create_topic("in2", 6).unwrap();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(co_partitioned(&cluster, "in2"));
}

#[test]
fn real_kafka_a_task_reading_two_topics_gets_the_same_partition_of_both_on_one_instance() {
    let Some(bootstrap) = support::real_kafka() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cluster = Cluster::real(bootstrap, 6).await;
        let second = support::unique("in2");
        support::create_topics(&cluster.bootstrap, &[(&second, 6, &[])]).await;
        co_partitioned(&cluster, &second).await;
    });
}

/// Task N owns partition N of every input topic (and its stores): were the first input's
/// partition 2 on one instance and `second`'s on another, both would open task 2's stores
/// and write its changelog. Per-topic assignment (cooperative-sticky) does not keep them
/// together once partitions move: three instances join one by one, one leaves.
async fn co_partitioned(cluster: &Cluster, second: &str) {
    let app = cluster.app("pairs");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let start = |i: usize| {
        let mut s = cluster.settings();
        s.state = RocksSettings::new(dirs[i].path(), 1 << 20, 1 << 20);
        s.commit_interval = Duration::from_millis(100);
        let topology = counter_on(&app, &[&cluster.input, second], &cluster.output, false);
        let runner = TopologyRunner::new(topology, s);
        let metrics = runner.metrics();
        let (trigger, shutdown) = Shutdown::new();
        (tokio::spawn(runner.run(shutdown)), metrics, trigger)
    };
    let mut instances = Vec::new();
    let held = |metrics: &engine::metrics::TopologyMetrics, topic: &str| -> BTreeSet<i32> {
        metrics
            .consumer_lag()
            .into_iter()
            .filter(|l| l.topic == topic)
            .map(|l| l.partition)
            .collect()
    };
    let mut round = 0;
    let mut assignments = Vec::new();
    // Joins and leaves: each moves some partitions and keeps the rest in place.
    for (starting, leaving) in [
        (Some(0), None),
        (Some(1), None),
        (Some(2), None),
        (None, Some(1)),
    ] {
        if let Some(i) = starting {
            instances.push(start(i));
        }
        if let Some(i) = leaving {
            let (handle, _, trigger) = instances.remove(i);
            trigger.trigger();
            stopped(handle.await.unwrap());
        }
        // Input on every partition, so each instance fetches (and knows the lag of)
        // what it holds.
        let inputs = keyed_inputs(24, 2, round);
        round += 2;
        produce_keyed(&cluster.bootstrap, &cluster.input, &inputs).await;
        produce_keyed(&cluster.bootstrap, second, &inputs).await;
        let settled = || {
            instances
                .iter()
                .all(|(_, m, _)| m.snapshot().assigned_partitions > 0)
                && instances
                    .iter()
                    .map(|(_, m, _)| held(m, &cluster.input).len() + held(m, second).len())
                    .sum::<usize>()
                    == 12
        };
        wait_for(Duration::from_secs(60), settled).await;
        assignments.push(
            instances
                .iter()
                .map(|(_, m, _)| (held(m, &cluster.input), held(m, second)))
                .collect::<Vec<_>>(),
        );
    }
    for (_, _, trigger) in &instances {
        trigger.trigger();
    }
    for (handle, _, _) in instances {
        stopped(handle.await.unwrap());
    }
    eprintln!("assignments {assignments:?}");
    for (of_first, of_second) in assignments.iter().flatten() {
        assert_eq!(
            of_first, of_second,
            "one instance holds partitions {of_first:?} of {} but {of_second:?} of {second}: {assignments:?}",
            cluster.input
        );
    }
}

/// A runner's end when others leave or join at the same time: a clean stop, or (its final
/// commit refused while the group rebalances) an incomplete one; nothing else.
fn stopped(result: Result<(), engine::runtime::RuntimeError>) {
    match result {
        Ok(()) | Err(engine::runtime::RuntimeError::ShutdownIncomplete { .. }) => {}
        Err(e) => panic!("the instance failed: {e}"),
    }
}

/// Writes `records` values of `len` bytes (stored framing included) to partition 0 of
/// `topic`, keys `k00000000`, `k00000001`, ...
fn fill_changelog(bootstrap: &str, topic: &str, records: usize, len: usize) {
    use rdkafka::error::RDKafkaErrorCode;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .unwrap();
    // A stored value: no expiry (framing byte 0), then the string.
    let mut value = vec![0_u8];
    value.resize(len, b'x');
    for i in 0..records {
        let key = format!("k{i:08}");
        loop {
            match producer.send(BaseRecord::to(topic).partition(0).key(&key).payload(&value)) {
                Ok(()) => break,
                Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("produce to {topic}: {e}"),
            }
        }
        if i % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(300)).unwrap();
}

#[test]
fn real_kafka_a_1_gib_restore_keeps_the_consumer_in_the_group_while_the_other_tasks_run() {
    let Some(bootstrap) = support::real_kafka() else {
        return;
    };
    // More than 1 GiB in task 0's changelog: 2^20 values of 1 KiB.
    const RECORDS: usize = 1 << 20;
    const LEN: usize = 1025;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cluster = Cluster::real(bootstrap.clone(), 2).await;
        let app = cluster.app("big-restore");
        let changelog = format!("{app}-s-changelog");
        support::create_topics(
            &bootstrap,
            &[(&changelog, 2, &[("cleanup.policy", "compact")])],
        )
        .await;
        let filled = std::time::Instant::now();
        {
            let (bootstrap, changelog) = (bootstrap.clone(), changelog.clone());
            tokio::task::spawn_blocking(move || fill_changelog(&bootstrap, &changelog, RECORDS, LEN))
                .await
                .unwrap();
        }
        let ends = watermarks(&bootstrap, &changelog, 2).await;
        assert_eq!(ends[0].1, RECORDS as i64, "the changelog holds every record");
        eprintln!(
            "{} MiB written to {changelog} in {:?}",
            (RECORDS * LEN) >> 20,
            filled.elapsed()
        );

        let dir = tempfile::tempdir().unwrap();
        let mut s = cluster.settings();
        s.state = RocksSettings::new(dir.path(), 64 << 20, 1 << 20);
        // The shortest poll interval the broker allows (its minimum session timeout is
        // 6 s): a loop that stops polling while it restores leaves the group after it.
        for (key, value) in [
            ("consumer.session.timeout.ms", "6000"),
            ("consumer.max.poll.interval.ms", "6000"),
        ] {
            s.client.properties.insert(key.into(), value.into());
        }
        let topology = through_stores(
            &app,
            &cluster.input,
            &cluster.output,
            &["s"],
            Serdes::string,
            || ReadStore(|held: Option<String>| format!("{:?}", held.map(|v| v.len()))),
        );
        let runner = TopologyRunner::new(topology, s);
        let metrics = runner.metrics();
        let (trigger, shutdown) = Shutdown::new();
        let started = std::time::Instant::now();
        let handle = tokio::spawn(runner.run(shutdown));

        // Task 1 has nothing to restore: it answers while task 0 restores.
        let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        let ask = |partition: i32, key: &str| {
            let (producer, input, key) = (producer.clone(), cluster.input.clone(), key.to_string());
            async move {
                producer
                    .send(
                        rdkafka::producer::FutureRecord::to(&input)
                            .partition(partition)
                            .key(&key)
                            .payload("check"),
                        Duration::from_secs(10),
                    )
                    .await
                    .unwrap();
            }
        };
        ask(1, "k00000001").await;
        let first = consume(&bootstrap, &cluster.output, 1, Duration::from_secs(60)).await;
        let restored_then = metrics.snapshot().restored_records;
        assert_eq!(first[0].value, "None", "task 1 holds nothing: {first:?}");
        eprintln!(
            "task 1 answered {:?} after start, with {restored_then} of task 0's {RECORDS} records restored",
            started.elapsed()
        );
        assert!(
            restored_then < RECORDS as u64,
            "task 1 answered only once task 0's restore was over"
        );

        // Task 0 answers from its restored store once the restore is over.
        ask(0, &format!("k{:08}", RECORDS - 1)).await;
        wait_for(Duration::from_secs(600), || {
            metrics.snapshot().restored_records >= RECORDS as u64
        })
        .await;
        let restore_took = started.elapsed();
        let out = consume(&bootstrap, &cluster.output, 2, Duration::from_secs(30)).await;
        trigger.trigger();
        handle.await.unwrap().unwrap();
        let snapshot = metrics.snapshot();
        eprintln!(
            "restored {} records in {restore_took:?} from the start ({:.0} records/s, {:.0} MiB/s); {} assignments",
            snapshot.restored_records,
            snapshot.restored_records as f64 / restore_took.as_secs_f64(),
            (snapshot.restored_records as f64 * LEN as f64 / f64::from(1 << 20))
                / restore_took.as_secs_f64(),
            snapshot.rebalances
        );
        let last = format!("k{:08}", RECORDS - 1);
        let answer = out.iter().find(|r| r.key == last).expect("task 0 answered");
        assert_eq!(answer.value, format!("Some({})", LEN - 1));
        assert_eq!(
            snapshot.restored_records, RECORDS as u64,
            "restored once, whole"
        );
        assert_eq!(
            snapshot.rebalances, 1,
            "the consumer stayed in the group: one assignment, no rejoin"
        );
    });
}
