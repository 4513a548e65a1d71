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
/// Input records each throughput run works through, after a warm-up.
const RECORDS: usize = 200_000;
const WARM_UP: usize = 2_000;
/// Distinct keys of `ticket-counts`' input.
const KEYS: usize = 10_000;
/// Offered rate and duration of the latency runs.
const LATENCY_RATE: f64 = 5_000.0;
const LATENCY_SECS: u64 = 10;
const GUARANTEES: [&str; 2] = ["at_least_once", "exactly_once_v2"];
/// Runs of each figure; the figure is their median.
const ROUNDS: usize = 3;
/// A run that makes no progress for this long has failed.
const STALL: Duration = Duration::from_secs(60);

/// The median of a figure's runs, with their minimum and maximum.
struct Spread {
    median: f64,
    min: f64,
    max: f64,
    runs: usize,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Spread {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        Spread {
            median: if n == 0 { f64::NAN } else { values[n / 2] },
            min: values.first().copied().unwrap_or(f64::NAN),
            max: values.last().copied().unwrap_or(f64::NAN),
            runs: n,
        }
    }

    fn describe(&self, decimals: usize) -> String {
        format!(
            "median of {} interleaved runs, min {:.*}, max {:.*}",
            self.runs, decimals, self.min, decimals, self.max
        )
    }
}

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
    let mut runs: HashMap<(&str, &str), Vec<Measured>> = HashMap::new();
    // Interleaved, so a drift of the machine touches both guarantees alike.
    for round in 1..=ROUNDS {
        for topology in ["ticket-pipeline", "ticket-counts"] {
            for guarantee in GUARANTEES {
                let input = if topology == "ticket-pipeline" {
                    &pipeline_input
                } else {
                    &counts_input
                };
                let label = format!("{topology}-{guarantee}-{round}");
                let measured = one_run(
                    engine,
                    dev,
                    engine_kafka,
                    topology,
                    guarantee,
                    input,
                    &label,
                )?;
                eprintln!(
                    "engine-bench: {topology} under {guarantee} (round {round}): {:.0} records/s{}",
                    measured.rate,
                    measured
                        .p99_ms
                        .map(|p| format!(
                            ", p50 {:.1} ms, p99 {p:.1} ms at {LATENCY_RATE:.0} records/s",
                            measured.p50_ms.unwrap_or(f64::NAN)
                        ))
                        .unwrap_or_default()
                );
                runs.entry((topology, guarantee))
                    .or_default()
                    .push(measured);
            }
        }
    }
    let mut figures = Vec::new();
    for topology in ["ticket-pipeline", "ticket-counts"] {
        let alos = &runs[&(topology, "at_least_once")];
        let eos = &runs[&(topology, "exactly_once_v2")];
        let rates = |m: &[Measured]| Spread::of(m.iter().map(|m| m.rate).collect());
        let (alos_rate, eos_rate) = (rates(alos), rates(eos));
        figures.push(
            Figure::new(
                "exactly-once",
                format!("{topology} throughput, at_least_once (real broker)"),
                alos_rate.median,
                "records/s",
                None,
                None,
            )
            .with_note(format!(
                "input records per second, commit interval 1000 ms; {}",
                alos_rate.describe(0)
            )),
        );
        figures.push(
            Figure::new(
                "exactly-once",
                format!("{topology} throughput, exactly_once_v2 (real broker)"),
                eos_rate.median,
                "records/s",
                Some(("at_least_once, same run".into(), alos_rate.median)),
                Some(Target::RatioAtLeast(0.7)),
            )
            .with_note(format!(
                "input records per second, a transaction every 100 ms; {}",
                eos_rate.describe(0)
            )),
        );
        let p99 = |m: &[Measured]| {
            let v: Vec<f64> = m.iter().filter_map(|m| m.p99_ms).collect();
            (v.len() == m.len()).then(|| Spread::of(v))
        };
        let p50 = |m: &[Measured]| Spread::of(m.iter().filter_map(|m| m.p50_ms).collect());
        match (p99(alos), p99(eos)) {
            (Some(alos_p99), Some(eos_p99)) => {
                figures.push(
                    Figure::new(
                        "exactly-once",
                        format!(
                            "{topology} p99 end to end at {LATENCY_RATE:.0} records/s, at_least_once"
                        ),
                        alos_p99.median,
                        "ms",
                        None,
                        None,
                    )
                    .with_note(format!(
                        "{}; p50 median {:.1} ms",
                        alos_p99.describe(1),
                        p50(alos).median
                    )),
                );
                figures.push(
                    Figure::new(
                        "exactly-once",
                        format!(
                            "{topology} p99 end to end at {LATENCY_RATE:.0} records/s, exactly_once_v2"
                        ),
                        eos_p99.median,
                        "ms",
                        Some(("at_least_once, same run".into(), alos_p99.median)),
                        None,
                    )
                    .with_note(format!(
                        "{}; p50 median {:.1} ms (outputs are visible when their transaction commits)",
                        eos_p99.describe(1),
                        p50(eos).median
                    )),
                );
            }
            _ if topology == "ticket-counts" => figures.push(Figure::not_measured(
                "exactly-once",
                format!("{topology} p99 end to end"),
                "a count update stands for many inputs (the record cache coalesces them), so \
                 there is no per-input latency to time",
            )),
            _ => {}
        }
    }
    let setup = vec![(
        "exactly-once runs".into(),
        format!(
            "Apache Kafka 4.3 (`scripts/kafka`, one node, a fresh broker per run), {PARTITIONS} \
             partitions, {ROUNDS} rounds alternating the guarantees; each run warms up with \
             {WARM_UP} tickets, then the process is frozen (SIGSTOP) while {RECORDS} more are \
             written (`ticket-pipeline`: 90% PENDING; `ticket-counts`: {KEYS} keys) and timed \
             from its thaw until a `read_committed` consumer has seen every kept ticket out (the \
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
    label: &str,
) -> Result<Measured> {
    let (mut broker, bootstrap) = real_broker(engine, &format!("kafka-eos-{label}.log"))?;
    let (output, dead_letter) = if topology == "ticket-pipeline" {
        ("bench.tickets.out", "bench.tickets.dlq")
    } else {
        ("bench.tickets.counts", "bench.tickets.counts.dlq")
    };
    create_topics(&bootstrap, &[INPUT, output, dead_letter])?;
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
    let counts = topology == "ticket-counts";
    let mut watcher = Watcher::new(&bootstrap, output, counts)?;
    let want = |records: usize| -> i64 {
        if counts {
            records as i64
        } else {
            (0..records).filter(|i| input.get(*i).2).count() as i64
        }
    };
    let failed =
        |e: Box<dyn std::error::Error + Send + Sync>| -> Box<dyn std::error::Error + Send + Sync> {
            format!("{e}; see {}", engine.log_path(&log).display()).into()
        };
    // Warm up (group joined, tasks open, first transaction done), then freeze the
    // process while the input is written, so the timing starts with all of it there.
    produce(&bootstrap, input, 0..WARM_UP)?;
    watcher.wait_for(want(WARM_UP), &mut run).map_err(failed)?;
    run.pause()?;
    produce(&bootstrap, input, WARM_UP..WARM_UP + RECORDS)?;
    run.resume()?;
    let started = Instant::now();
    watcher
        .wait_for(want(WARM_UP + RECORDS), &mut run)
        .map_err(failed)?;
    let mut measured = Measured {
        rate: RECORDS as f64 / started.elapsed().as_secs_f64().max(1e-9),
        ..Measured::default()
    };
    // Its consumer would go on fetching in the background through the latency run.
    drop(watcher);
    if topology == "ticket-pipeline" {
        let watcher: BaseConsumer = client(&bootstrap).create()?;
        let latency = measure_latency(
            &bootstrap,
            &watcher,
            input,
            WARM_UP + RECORDS,
            LATENCY_RATE,
            Duration::from_secs(LATENCY_SECS),
            PARTITIONS,
            // A real broker answers a fetch as soon as data arrives: librdkafka's
            // default wait costs nothing, where 1 ms would flood the broker.
            500,
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

/// Writes records `range` of `input` to the input topic.
fn produce(bootstrap: &str, input: &Input, range: std::ops::Range<usize>) -> Result<()> {
    let producer: BaseProducer = client(bootstrap).set("linger.ms", "20").create()?;
    for i in range {
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

/// Reads the output from the start with `isolation.level=read_committed`: how many
/// records came out, or (for counts) the sum of every key's latest count, which is how
/// many inputs are counted however many updates the record cache coalesced.
struct Watcher {
    consumer: BaseConsumer,
    topic: String,
    counts: Option<HashMap<Vec<u8>, i64>>,
    total: i64,
}

impl Watcher {
    fn new(bootstrap: &str, topic: &str, counts: bool) -> Result<Self> {
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
        Ok(Watcher {
            consumer,
            topic: topic.to_string(),
            counts: counts.then(HashMap::new),
            total: 0,
        })
    }

    /// Reads until the total reaches `want`.
    fn wait_for(&mut self, want: i64, run: &mut Stopping) -> Result<()> {
        let mut progress = Instant::now();
        while self.total < want {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    progress = Instant::now();
                    match &mut self.counts {
                        None => self.total += 1,
                        Some(latest) => {
                            if let (Some(key), Some(value)) = (m.key(), m.payload())
                                && let Ok(bytes) = <[u8; 8]>::try_from(value)
                            {
                                let count = i64::from_be_bytes(bytes);
                                let previous = latest.insert(key.to_vec(), count).unwrap_or(0);
                                self.total += count - previous;
                            }
                        }
                    }
                }
                Some(Err(e)) => return Err(format!("reading {}: {e}", self.topic).into()),
                None => {
                    if let Some(status) = run.exited() {
                        return Err(format!("engine run exited ({status})").into());
                    }
                    if progress.elapsed() > STALL {
                        return Err(format!(
                            "no new output on {} for {} s (at {} of {want})",
                            self.topic,
                            STALL.as_secs(),
                            self.total
                        )
                        .into());
                    }
                }
            }
        }
        Ok(())
    }
}
