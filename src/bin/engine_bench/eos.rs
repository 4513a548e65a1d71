//! Exactly-once beside at-least-once, on a real Apache Kafka broker (`scripts/kafka`;
//! the mock cluster does not hide aborted records, so `read_committed` is only real
//! there): `ticket-pipeline` and `ticket-counts` each work through the same preloaded
//! input under both guarantees, a fresh broker per run, and the pipeline's end-to-end
//! latency is measured at a fixed offered rate. Every figure is what a `read_committed`
//! consumer of the outputs sees.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::Result;
use super::pipeline::{INPUT, Input, PipelineOutcome, client, measure_latency, value_format};
use super::processes::{DevBroker, EngineCommand, Stopping, real_broker};
use super::report::{Figure, Target};

const PARTITIONS: i32 = 6;
/// Input records each throughput run works through.
const RECORDS: usize = 200_000;
/// Distinct keys of `ticket-counts`' input.
const KEYS: usize = 10_000;
/// Offered rate and duration of the latency runs.
const LATENCY_RATE: f64 = 5_000.0;
const LATENCY_SECS: u64 = 20;
const GUARANTEES: [&str; 2] = ["at_least_once", "exactly_once_v2"];
/// A run that makes no progress for this long has failed.
const STALL: Duration = Duration::from_secs(60);

/// Both topologies under both guarantees; `engine_kafka` goes to every `engine run` as
/// `--kafka K=V`.
pub fn run(engine: &EngineCommand, engine_kafka: &[String]) -> Result<PipelineOutcome> {
    // `engine dev` for its schema registry only.
    let mut dev = engine.dev("engine-dev-eos.log", &["--partitions", "1"])?;
    let result = measure(engine, &dev, engine_kafka);
    dev.process.stop();
    result
}

/// What one run measured.
#[derive(Default)]
struct Measured {
    rate: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    latency_note: String,
}

fn measure(
    engine: &EngineCommand,
    dev: &DevBroker,
    engine_kafka: &[String],
) -> Result<PipelineOutcome> {
    let format = value_format(engine, dev, "ticket-pipeline")?;
    let pipeline_input = Input::new(format)?;
    let counts_input = Input::keyed(format, KEYS)?;
    let mut results: HashMap<(&str, &str), Measured> = HashMap::new();
    for topology in ["ticket-pipeline", "ticket-counts"] {
        for guarantee in GUARANTEES {
            let input = if topology == "ticket-pipeline" {
                &pipeline_input
            } else {
                &counts_input
            };
            let measured = one_run(engine, dev, engine_kafka, topology, guarantee, input)?;
            eprintln!(
                "engine-bench: {topology} under {guarantee}: {:.0} records/s{}",
                measured.rate,
                measured
                    .p99_ms
                    .map(|p| format!(", p99 {p:.1} ms at {LATENCY_RATE:.0} records/s"))
                    .unwrap_or_default()
            );
            results.insert((topology, guarantee), measured);
        }
    }
    let mut figures = Vec::new();
    for topology in ["ticket-pipeline", "ticket-counts"] {
        let alos = &results[&(topology, "at_least_once")];
        let eos = &results[&(topology, "exactly_once_v2")];
        figures.push(
            Figure::new(
                "exactly-once",
                format!("{topology} throughput, at_least_once (real broker)"),
                alos.rate,
                "records/s",
                None,
                None,
            )
            .with_note("input records per second, commit interval 1000 ms"),
        );
        figures.push(
            Figure::new(
                "exactly-once",
                format!("{topology} throughput, exactly_once_v2 (real broker)"),
                eos.rate,
                "records/s",
                Some(("at_least_once, same run".into(), alos.rate)),
                Some(Target::RatioAtLeast(0.7)),
            )
            .with_note("input records per second, a transaction every 100 ms"),
        );
        if let (Some(alos_p99), Some(eos_p99)) = (alos.p99_ms, eos.p99_ms) {
            figures.push(
                Figure::new(
                    "exactly-once",
                    format!(
                        "{topology} p99 end to end at {LATENCY_RATE:.0} records/s, at_least_once"
                    ),
                    alos_p99,
                    "ms",
                    None,
                    None,
                )
                .with_note(alos.latency_note.clone()),
            );
            figures.push(
                Figure::new(
                    "exactly-once",
                    format!(
                        "{topology} p99 end to end at {LATENCY_RATE:.0} records/s, exactly_once_v2"
                    ),
                    eos_p99,
                    "ms",
                    Some(("at_least_once, same run".into(), alos_p99)),
                    None,
                )
                .with_note(eos.latency_note.clone()),
            );
        } else if topology == "ticket-counts" {
            figures.push(Figure::not_measured(
                "exactly-once",
                format!("{topology} p99 end to end"),
                "a count update stands for many inputs (the record cache coalesces them), so \
                 there is no per-input latency to time",
            ));
        }
    }
    let setup = vec![(
        "exactly-once runs".into(),
        format!(
            "Apache Kafka 4.3 (`scripts/kafka`, one node, a fresh broker per run), {PARTITIONS} \
             partitions; each run preloads {RECORDS} tickets (`ticket-pipeline`: 90% PENDING; \
             `ticket-counts`: {KEYS} keys) and times from the first output a `read_committed` \
             consumer sees to the one that completes the input (every kept ticket out; the \
             latest counts adding up to the input); then `ticket-pipeline` gets {LATENCY_RATE:.0} \
             records/s for {LATENCY_SECS} s, each output timed from its input's send; both \
             guarantees at their defaults (`commit_interval_ms` 1000 and 100, record cache \
             10 MiB){}",
            if engine_kafka.is_empty() {
                String::new()
            } else {
                format!("; `--kafka {}`", engine_kafka.join(" --kafka "))
            }
        ),
    )];
    Ok(PipelineOutcome { figures, setup })
}

/// One topology under one guarantee on a broker of its own.
fn one_run(
    engine: &EngineCommand,
    dev: &DevBroker,
    engine_kafka: &[String],
    topology: &str,
    guarantee: &str,
    input: &Input,
) -> Result<Measured> {
    let label = format!("{topology}-{guarantee}");
    let (mut broker, bootstrap) = real_broker(engine, &format!("kafka-eos-{label}.log"))?;
    let output = if topology == "ticket-pipeline" {
        "bench.tickets.out"
    } else {
        "bench.tickets.counts"
    };
    create_topics(&bootstrap, &[INPUT, output, "bench.tickets.dlq"])?;
    preload(&bootstrap, input)?;
    let state = engine.log_path(&format!("state-eos-{label}"));
    let _ = std::fs::remove_dir_all(&state);
    let state_arg = state.to_string_lossy().into_owned();
    let mut args = vec![
        topology,
        "--processing-guarantee",
        guarantee,
        "--state-dir",
        &state_arg,
    ];
    for property in engine_kafka {
        args.extend(["--kafka", property]);
    }
    let log = format!("engine-run-eos-{label}.log");
    let mut run = engine.run_on(&args, &bootstrap, dev.registry_url.as_deref(), &log)?;
    let mut measured = Measured::default();
    let timed = if topology == "ticket-pipeline" {
        let kept = (0..RECORDS).filter(|i| input.get(*i).2).count();
        time_outputs(&bootstrap, output, &mut run, |m, seen| {
            let _ = m;
            *seen += 1;
            *seen >= kept as i64
        })
    } else {
        let mut latest: HashMap<Vec<u8>, i64> = HashMap::new();
        time_outputs(&bootstrap, output, &mut run, move |m, total| {
            if let (Some(key), Some(value)) = (m.key(), m.payload())
                && let Ok(bytes) = <[u8; 8]>::try_from(value)
            {
                let count = i64::from_be_bytes(bytes);
                let previous = latest.insert(key.to_vec(), count).unwrap_or(0);
                *total += count - previous;
            }
            *total >= RECORDS as i64
        })
    };
    let span = timed.map_err(|e| format!("{e}; see {}", engine.log_path(&log).display()))?;
    measured.rate = RECORDS as f64 / span.as_secs_f64().max(1e-9);
    if topology == "ticket-pipeline" {
        let watcher: BaseConsumer = client(&bootstrap).create()?;
        let latency = measure_latency(
            &bootstrap,
            &watcher,
            input,
            RECORDS,
            LATENCY_RATE,
            Duration::from_secs(LATENCY_SECS),
            PARTITIONS,
        )?;
        let mut samples = latency.samples;
        samples.sort_unstable();
        measured.p50_ms = super::pipeline::percentile(&samples, 0.5);
        measured.p99_ms = super::pipeline::percentile(&samples, 0.99);
        measured.latency_note = format!(
            "p50 {:.1} ms; {} of {} outputs received",
            measured.p50_ms.unwrap_or(f64::NAN),
            samples.len(),
            latency.expected
        );
    }
    run.stop();
    broker.stop();
    let _ = std::fs::remove_dir_all(&state);
    Ok(measured)
}

/// Creates `topics` with `PARTITIONS` partitions each.
fn create_topics(bootstrap: &str, topics: &[&str]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client(bootstrap).create()?;
    let wanted: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(admin.create_topics(
        &wanted,
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))?;
    for result in results {
        if let Err((topic, code)) = result {
            return Err(format!("cannot create {topic}: {code}").into());
        }
    }
    Ok(())
}

/// Writes the first `RECORDS` records of `input` to the input topic.
fn preload(bootstrap: &str, input: &Input) -> Result<()> {
    let producer: BaseProducer = client(bootstrap).set("linger.ms", "20").create()?;
    for i in 0..RECORDS {
        let (key, value, _) = input.get(i);
        let mut record = BaseRecord::to(INPUT)
            .key(key.as_slice())
            .payload(value.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
        if i % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(())
}

/// Reads `topic` from the start with `isolation.level=read_committed`, handing each
/// record to `done` (with a running value of its own) until it says the input is
/// complete; returns the time from the first record to that one.
fn time_outputs(
    bootstrap: &str,
    topic: &str,
    run: &mut Stopping,
    mut done: impl FnMut(&rdkafka::message::BorrowedMessage<'_>, &mut i64) -> bool,
) -> Result<Duration> {
    let consumer: BaseConsumer = client(bootstrap)
        .set("group.id", "engine-bench-eos-watcher")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut first = None;
    let mut value = 0;
    let mut progress = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let now = Instant::now();
                let started = *first.get_or_insert(now);
                progress = now;
                if done(&m, &mut value) {
                    return Ok(now - started);
                }
            }
            Some(Err(e)) => return Err(format!("reading {topic}: {e}").into()),
            None => {
                if let Some(status) = run.exited() {
                    return Err(format!("engine run exited ({status})").into());
                }
                if progress.elapsed() > STALL {
                    return Err(format!(
                        "no new output on {topic} for {} s (at {value})",
                        STALL.as_secs()
                    )
                    .into());
                }
            }
        }
    }
}
