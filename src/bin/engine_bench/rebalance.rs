//! The rebalance pause, on a real Apache Kafka broker (`scripts/kafka`; the mock cluster
//! delays a member that joins after another left by a whole session timeout): three
//! `engine run ticket-counts` processes under a steady input, a join, a second join, a
//! clean leave (SIGTERM) and a crash (SIGKILL), once with the engine's default
//! cooperative assignor and once with the eager `range`. Each figure is the longest time
//! a partition's output stopped after the event, with all partitions' pauses added up in
//! the note.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::Result;
use super::pipeline::{INPUT, Input, PipelineOutcome, client, value_format};
use super::processes::{DevBroker, EngineCommand, Stopping, real_broker};
use super::report::Figure;

const TOPOLOGY: &str = "ticket-counts";
const OUTPUT: &str = "bench.tickets.counts";
const PARTITIONS: i32 = 6;
/// Input records per second, spread over the keys (and so the partitions).
const RATE: usize = 2000;
const SESSION_TIMEOUT_MS: u64 = 6000;
/// Output silent longer than this counts as a pause (the input reaches every partition
/// every 50 ms, and without the record cache every record is an output).
const PAUSE: Duration = Duration::from_millis(500);

/// An event, the longest output pause of a partition after it, and all partitions'
/// pauses added up.
type Pauses = (String, Duration, Duration);

/// Runs both sequences on a broker of their own; `engine_kafka` goes to every `engine
/// run` as `--kafka K=V`.
pub fn run(engine: &EngineCommand, engine_kafka: &[String]) -> Result<PipelineOutcome> {
    let (mut kafka, bootstrap) = real_broker(engine, "kafka-broker.log")?;
    eprintln!("engine-bench: rebalance: Apache Kafka at {bootstrap}");
    // `engine dev` for its schema registry only.
    let mut dev = engine.dev("engine-dev-rebalance.log", &["--partitions", "1"])?;
    let target = Target {
        bootstrap,
        registry: dev.registry_url.clone(),
    };
    let result = sequences(engine, &dev, &target, engine_kafka);
    dev.process.stop();
    kafka.stop();
    result
}

/// The real broker, and `engine dev`'s registry.
struct Target {
    bootstrap: String,
    registry: Option<String>,
}

fn sequences(
    engine: &EngineCommand,
    dev: &DevBroker,
    broker: &Target,
    engine_kafka: &[String],
) -> Result<PipelineOutcome> {
    // The input's schema registered in the registry the engine reads it with.
    let format = value_format(engine, dev, TOPOLOGY)?;
    let input = Arc::new(Input::keyed(format, 1000)?);
    let config = engine.log_path("rebalance.toml");
    // Every record an output, committed often: a pause in the output is a pause in
    // processing.
    std::fs::write(
        &config,
        "[runtime]\ncache_max_bytes = 0\ncommit_interval_ms = 100\n",
    )?;
    let mut figures = Vec::new();
    let mut setup = Vec::new();
    for (label, strategy) in [("cooperative", None), ("eager", Some("range"))] {
        let (pauses, first) = sequence(
            engine,
            broker,
            &input,
            &config,
            (label, strategy),
            engine_kafka,
        )?;
        for (event, longest, total) in pauses {
            figures.push(
                Figure::new(
                    "rebalance",
                    format!("longest output pause of a partition: {event}, {label}"),
                    longest.as_secs_f64() * 1000.0,
                    "ms",
                    None,
                    None,
                )
                .with_note(format!(
                    "all partitions' pauses added up: {:.0} ms",
                    total.as_secs_f64() * 1000.0
                )),
            );
        }
        setup.push((
            format!("rebalance run, {label}"),
            format!(
                "Apache Kafka 4.3 (`scripts/kafka`, one node), {TOPOLOGY} with {PARTITIONS} \
                 partitions, {RATE} records/s over 1000 keys, `cache_max_bytes = 0`, \
                 `commit_interval_ms = 100`, session timeout {SESSION_TIMEOUT_MS} ms; {}; first \
                 instance's first output {:.1} s after its start; a pause is over {} ms without \
                 output from a partition while input flows{}",
                match strategy {
                    None => "the engine's default assignor (cooperative-sticky)".to_string(),
                    Some(s) => format!("`consumer.partition.assignment.strategy={s}`"),
                },
                first.as_secs_f64(),
                PAUSE.as_millis(),
                if engine_kafka.is_empty() {
                    String::new()
                } else {
                    format!("; `--kafka {}`", engine_kafka.join(" --kafka "))
                }
            ),
        ));
    }
    Ok(PipelineOutcome { figures, setup })
}

/// One sequence: A alone, B joins, C joins, C leaves (SIGTERM), B crashes (SIGKILL).
/// Returns, per event, the longest pause and the sum of pauses, and how long A took to
/// its first output.
fn sequence(
    engine: &EngineCommand,
    broker: &Target,
    input: &Arc<Input>,
    config: &std::path::Path,
    (label, strategy): (&str, Option<&str>),
    engine_kafka: &[String],
) -> Result<(Vec<Pauses>, Duration)> {
    let state = engine.log_path(&format!("state-rebalance-{label}"));
    let _ = std::fs::remove_dir_all(&state);
    let config = config.to_string_lossy().into_owned();
    let session = format!("consumer.session.timeout.ms={SESSION_TIMEOUT_MS}");
    let assignor = strategy.map(|s| format!("consumer.partition.assignment.strategy={s}"));
    let start = |name: &str| -> Result<Stopping> {
        let dir = state.join(name).to_string_lossy().into_owned();
        let mut args = vec![
            TOPOLOGY,
            "--create-topics",
            "--partitions",
            "6",
            "--config",
            &config,
            "--state-dir",
            &dir,
            "--kafka",
            &session,
        ];
        if let Some(a) = &assignor {
            args.extend(["--kafka", a]);
        }
        for property in engine_kafka {
            args.extend(["--kafka", property]);
        }
        engine.run_on(
            &args,
            &broker.bootstrap,
            broker.registry.as_deref(),
            &format!("engine-run-rebalance-{label}-{name}.log"),
        )
    };

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (bootstrap, stop) = (broker.bootstrap.clone(), stop.clone());
        std::thread::spawn(move || watch(&bootstrap, &stop))
    };
    let feeder = {
        let (bootstrap, stop, input) = (broker.bootstrap.clone(), stop.clone(), input.clone());
        std::thread::spawn(move || feed(&bootstrap, &stop, &input))
    };
    let started = Instant::now();
    let mut a = start("a")?;
    // Give the group, and the output, time to settle before the first event.
    std::thread::sleep(Duration::from_secs(15));
    let mut events: Vec<(Instant, String)> = Vec::new();
    let mut b = start("b")?;
    events.push((Instant::now(), "second instance joins".into()));
    std::thread::sleep(Duration::from_secs(10));
    let mut c = start("c")?;
    events.push((Instant::now(), "third instance joins".into()));
    std::thread::sleep(Duration::from_secs(10));
    c.stop();
    events.push((Instant::now(), "an instance leaves (SIGTERM)".into()));
    std::thread::sleep(Duration::from_secs(10));
    b.kill();
    events.push((Instant::now(), "an instance crashes (SIGKILL)".into()));
    std::thread::sleep(Duration::from_millis(SESSION_TIMEOUT_MS) + Duration::from_secs(6));
    let input_until = Instant::now();
    stop.store(true, Ordering::Relaxed);
    feeder.join().map_err(|_| "the feeder panicked")??;
    let arrivals = watcher.join().map_err(|_| "the watcher panicked")??;
    a.stop();
    let first = arrivals
        .first()
        .map(|(_, at)| at.duration_since(started))
        .ok_or("no output at all; see the engine run logs")?;
    let pauses = pauses_per_event(&arrivals, &events, input_until);
    for (event, longest, total) in &pauses {
        eprintln!(
            "engine-bench: rebalance ({label}): {event}: longest pause {:.0} ms, all {:.0} ms",
            longest.as_secs_f64() * 1000.0,
            total.as_secs_f64() * 1000.0
        );
    }
    let _ = std::fs::remove_dir_all(&state);
    Ok((pauses, first))
}

/// Input at `RATE`, in batches every 50 ms, until `stop`.
fn feed(bootstrap: &str, stop: &AtomicBool, input: &Input) -> Result<()> {
    // murmur2, as the engine's sink: a key's output lands in the partition of its input,
    // so an output partition's pause is its task's.
    let producer: BaseProducer = client(bootstrap)
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random")
        .create()?;
    let batch = RATE / 20;
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..batch {
            let (key, value, _) = input.get(i);
            i += 1;
            if let Err((e, _)) = producer.send(
                BaseRecord::to(INPUT)
                    .key(key.as_slice())
                    .payload(value.as_slice()),
            ) {
                return Err(format!("producing to {INPUT}: {e}").into());
            }
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(50));
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}

/// When each output record arrived, with its partition, until `stop`.
fn watch(bootstrap: &str, stop: &AtomicBool) -> Result<Vec<(i32, Instant)>> {
    let consumer: BaseConsumer = client(bootstrap)
        .set(
            "group.id",
            format!("engine-bench-rebalance-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "latest")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    // The output topic exists once the first instance created it.
    while consumer
        .fetch_metadata(Some(OUTPUT), Duration::from_secs(5))
        .map(|m| m.topics().first().is_none_or(|t| t.partitions().is_empty()))
        .unwrap_or(true)
    {
        if Instant::now() > deadline {
            return Err(format!("{OUTPUT} was not created within 60 s").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    consumer.subscribe(&[OUTPUT])?;
    let mut seen = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Some(m) = consumer.poll(Duration::from_millis(50)) {
            seen.push((m?.partition(), Instant::now()));
        }
    }
    Ok(seen)
}

/// Per event, the longest pause of a partition's output that began while it was the
/// latest event, and all partitions' pauses added up.
fn pauses_per_event(
    arrivals: &[(i32, Instant)],
    events: &[(Instant, String)],
    input_until: Instant,
) -> Vec<Pauses> {
    let mut last: BTreeMap<i32, Instant> = BTreeMap::new();
    let mut pauses = vec![(Duration::ZERO, Duration::ZERO); events.len()];
    for &(partition, at) in arrivals {
        if let Some(previous) = last.insert(partition, at) {
            let gap = at - previous;
            if gap <= PAUSE || previous > input_until {
                continue;
            }
            // A crashed instance's partitions go quiet just before the kill is recorded.
            if let Some(i) = events
                .iter()
                .rposition(|(t, _)| *t <= previous + Duration::from_secs(1))
            {
                pauses[i].0 = pauses[i].0.max(gap);
                pauses[i].1 += gap;
            }
        }
    }
    events
        .iter()
        .zip(pauses)
        .map(|((_, what), (longest, total))| (what.clone(), longest, total))
        .collect()
}
