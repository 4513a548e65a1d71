//! The cross-process figures: the rdkafka floor, `engine run ticket-pipeline`'s
//! throughput, end-to-end latency, peak memory and start-up, all against one `engine dev`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engine::registry::{MockRegistries, RegistryConfig, SchemaRegistry};
use engine::serde::avro::{EncodePlan, Schema};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use topologies::tickets::{EXECUTION_TICKET_SCHEMA, ExecutionTicket, TicketStatus, sample_tickets};

use super::Result;
use super::processes::{DevBroker, EngineCommand, Stopping};
use super::report::{Figure, Spread, Target};

const TOPOLOGY: &str = "ticket-pipeline";
pub(super) const INPUT: &str = "bench.tickets.in";
const OUTPUT: &str = "bench.tickets.out";
const DEAD_LETTER: &str = "bench.tickets.dlq";
pub(super) const INPUT_SUBJECT: &str = "bench.tickets.in-value";
/// The floor loop's own input (the same records), so the engine never sees it.
pub(super) const FLOOR_INPUT: &str = "bench.floor.in";
/// Where the floor loop copies its input.
pub(super) const FLOOR_OUTPUT: &str = "bench.floor.out";
pub(super) const PARTITIONS: i32 = 16;
/// librdkafka's mock cluster drops a partition's oldest batches beyond 5 MiB.
const MOCK_PARTITION_BYTES: f64 = 5.0 * 1024.0 * 1024.0;
/// Header carrying the latency run's send time, nanoseconds since the Unix epoch.
const SENT_HEADER: &str = "engine-bench.sent-ns";
/// Distinct tickets cycled through to make the input.
const POOL: usize = 4000;
pub(super) const TIMEOUT: Duration = Duration::from_secs(10);

/// What the pipeline run is asked to do.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Tickets per round, capped to what the mock cluster keeps.
    pub round_records: usize,
    /// In each run, rounds repeat until this much processing has been timed.
    pub work_secs: f64,
    /// Interleaved runs of the engine and the floor; figures are their medians.
    pub runs: usize,
    pub latency_secs: u64,
    /// Input rate of the latency run; default half the engine's throughput.
    pub latency_rate: Option<f64>,
    /// librdkafka properties for `engine run` (`--kafka`); none by default.
    pub engine_kafka: Vec<String>,
}

/// Its figures, and how it was set up.
pub struct PipelineOutcome {
    pub figures: Vec<Figure>,
    pub setup: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ValueFormat {
    Json,
    /// Confluent wire format with this schema id.
    Avro(i32),
}

/// Pre-encoded input records: key, value, and whether the topology keeps it.
pub(super) struct Input {
    pool: Vec<(Vec<u8>, Vec<u8>, bool)>,
}

impl Input {
    pub(super) fn new(format: ValueFormat) -> Result<Self> {
        let plan = EncodePlan::new(&Schema::parse_str(EXECUTION_TICKET_SCHEMA)?)?;
        let mut pool = Vec::with_capacity(POOL);
        for (i, mut ticket) in sample_tickets(POOL).into_iter().enumerate() {
            // Nine in ten pass the topology's PENDING filter.
            let pending = i % 10 != 9;
            ticket.status = if pending {
                TicketStatus::Pending
            } else {
                TicketStatus::Completed
            };
            let value = encode(&plan, format, &ticket)?;
            pool.push((ticket.plan_id.clone().into_bytes(), value, pending));
        }
        Ok(Self { pool })
    }

    /// One ticket per key (its plan id), `keys` distinct keys, none filtered out: the
    /// stateful topology updates a count for every record.
    pub fn keyed(format: ValueFormat, keys: usize) -> Result<Self> {
        let plan = EncodePlan::new(&Schema::parse_str(EXECUTION_TICKET_SCHEMA)?)?;
        let mut pool = Vec::with_capacity(keys);
        for mut ticket in sample_tickets(keys) {
            ticket.status = TicketStatus::Pending;
            let value = encode(&plan, format, &ticket)?;
            pool.push((ticket.plan_id.clone().into_bytes(), value, true));
        }
        Ok(Self { pool })
    }

    pub fn distinct_keys(&self) -> usize {
        self.pool
            .iter()
            .map(|r| r.0.as_slice())
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    pub(super) fn get(&self, i: usize) -> &(Vec<u8>, Vec<u8>, bool) {
        &self.pool[i % self.pool.len()]
    }

    fn pending_in(&self, range: std::ops::Range<usize>) -> usize {
        range.filter(|i| self.get(*i).2).count()
    }

    pub fn mean_value_bytes(&self) -> f64 {
        self.pool.iter().map(|r| r.1.len()).sum::<usize>() as f64 / self.pool.len() as f64
    }

    fn mean_record_bytes(&self) -> f64 {
        self.pool
            .iter()
            .map(|r| r.0.len() + r.1.len())
            .sum::<usize>() as f64
            / self.pool.len() as f64
    }
}

impl ValueFormat {
    pub fn describe(self) -> String {
        match self {
            ValueFormat::Json => "JSON".to_string(),
            ValueFormat::Avro(id) => {
                format!("Avro, Confluent wire format (schema id {id} under `{INPUT_SUBJECT}`)")
            }
        }
    }
}

/// Avro when the broker comes with a registry and `topology` is not still on JSON; the
/// input schema is registered then.
pub(super) fn value_format(
    engine: &EngineCommand,
    dev: &DevBroker,
    topology: &str,
) -> Result<ValueFormat> {
    let described = engine.output(&["describe", topology])?;
    let topology_json = described
        .lines()
        .any(|l| l.contains("Source:") && l.contains("value: json"));
    Ok(match &dev.registry_url {
        Some(url) if !topology_json => {
            let registry =
                SchemaRegistry::connect(RegistryConfig::new(url.clone()), &MockRegistries::new())?;
            ValueFormat::Avro(registry.register(INPUT_SUBJECT, EXECUTION_TICKET_SCHEMA)?)
        }
        _ => ValueFormat::Json,
    })
}

/// A round is as much input as the mock cluster keeps (with margin for uneven
/// partitions and batch overhead), so nothing is dropped before it is read.
pub(super) fn round_size(input: &Input, requested: usize) -> usize {
    let per_record = input.mean_record_bytes() + 40.0;
    let fits = (MOCK_PARTITION_BYTES * f64::from(PARTITIONS) * 0.75 / per_record) as usize;
    requested.min(fits)
}

fn encode(plan: &EncodePlan, format: ValueFormat, ticket: &ExecutionTicket) -> Result<Vec<u8>> {
    Ok(match format {
        ValueFormat::Json => serde_json::to_vec(ticket)?,
        ValueFormat::Avro(id) => {
            let mut out = vec![0u8];
            out.extend_from_slice(&id.to_be_bytes());
            plan.encode(ticket, &mut out)?;
            out
        }
    })
}

pub(super) fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

/// Sends, waiting while librdkafka's queue is full.
pub(super) fn send(producer: &BaseProducer, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(5));
            }
            Err((e, back)) => return Err(format!("producing to {}: {e}", back.topic).into()),
        }
    }
}

/// Sum over partitions of (end offset, start offset).
pub(super) fn offsets(consumer: &BaseConsumer, topic: &str) -> Result<(i64, i64)> {
    let (mut high, mut low) = (0, 0);
    for p in 0..PARTITIONS {
        let (l, h) = consumer.fetch_watermarks(topic, p, TIMEOUT)?;
        low += l;
        high += h;
    }
    Ok((high, low))
}

/// Records on `topic` now: the sum of end offsets, in one request.
pub(super) fn end_offset_total(consumer: &BaseConsumer, topic: &str) -> Result<i64> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::End)?;
    }
    let ends = consumer.offsets_for_times(tpl, TIMEOUT)?;
    let mut total = 0;
    for e in ends.elements() {
        match e.offset() {
            Offset::Offset(o) => total += o,
            _ => return Ok(offsets(consumer, topic)?.0),
        }
    }
    Ok(total)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Runs every cross-process figure.
pub fn run(engine: &EngineCommand, options: &PipelineOptions) -> Result<PipelineOutcome> {
    let mut setup = Vec::new();
    let partitions = PARTITIONS.to_string();
    let floor_topics = floor_topics();
    let mut dev = engine.dev(
        "engine-dev.log",
        &[
            "--topology",
            TOPOLOGY,
            "--partitions",
            &partitions,
            "--topic",
            &floor_topics[0],
            "--topic",
            &floor_topics[1],
        ],
    )?;
    eprintln!(
        "engine-bench: engine dev up at {} (registry: {})",
        dev.bootstrap_servers,
        dev.registry_url.as_deref().unwrap_or("none")
    );

    let format = value_format(engine, &dev, TOPOLOGY)?;
    let input = Input::new(format)?;
    setup.push(("value format".into(), format.describe()));
    let n = round_size(&input, options.round_records);
    setup.push((
        "input".into(),
        format!(
            "rounds of {n} tickets (90% PENDING), value {:.0} bytes, {PARTITIONS} partitions; \
             {} interleaved runs of the engine and the floor, each repeating rounds until {} s \
             of processing is timed",
            input.mean_value_bytes(),
            options.runs,
            options.work_secs
        ),
    ));

    let watcher: BaseConsumer = client(&dev.bootstrap_servers).create()?;
    let producer: BaseProducer = client(&dev.bootstrap_servers).create()?;
    let mut rounds = Rounds {
        producer: &producer,
        watcher: &watcher,
        input: &input,
        topic: INPUT,
        n,
        next: 0,
    };
    let mut floor_rounds = Rounds {
        topic: FLOOR_INPUT,
        ..rounds.clone()
    };
    let mut floor = Floor::new(&dev.bootstrap_servers);
    let figures = engine_run(
        engine,
        &dev,
        &mut rounds,
        (&mut floor, &mut floor_rounds),
        options,
        &mut setup,
    )?;
    dev.process.stop();
    Ok(PipelineOutcome { figures, setup })
}

/// What [`interleave`] measured.
pub(super) struct Interleaved {
    /// The engine's rate in each of its runs.
    pub engine_rates: Vec<f64>,
    pub floor_runs: Vec<Rate>,
    /// The engine's timed seconds, records and rounds over all its runs.
    pub secs: f64,
    pub records: usize,
    pub timed: usize,
}

/// Interleaved throughput runs: `runs` times, the engine process repeats rounds until
/// `work_secs` are timed (frozen while each round is produced, timed from being let go
/// until `wait` has seen the round's effect, `want` outputs, on the broker), then the
/// floor runs as long, the engine frozen meanwhile.
pub(super) fn interleave(
    (runs, work_secs): (usize, f64),
    run: &mut Stopping,
    rounds: &mut Rounds<'_>,
    want: &mut i64,
    (floor, floor_rounds): (&mut Floor, &mut Rounds<'_>),
    wait: &mut dyn FnMut(&mut Stopping, i64) -> Result<Instant>,
) -> Result<Interleaved> {
    let (mut secs, mut records, mut timed) = (0.0, 0, 0);
    let (mut engine_rates, mut floor_runs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (mut run_secs, mut run_records, mut run_timed) = (0.0, 0, 0);
        while run_secs < work_secs && run_timed < MAX_ROUNDS {
            run.pause()?;
            let produced = rounds.produce();
            let started = Instant::now();
            run.resume()?;
            *want += produced? as i64;
            let done = wait(run, *want)?;
            run_secs += done.duration_since(started).as_secs_f64();
            run_records += rounds.n;
            run_timed += 1;
        }
        engine_rates.push(run_records as f64 / run_secs.max(1e-9));
        (secs, records, timed) = (secs + run_secs, records + run_records, timed + run_timed);
        run.pause()?;
        let floor_run = floor.run(floor_rounds, work_secs);
        run.resume()?;
        floor_runs.push(floor_run?);
    }
    Ok(Interleaved {
        engine_rates,
        floor_runs,
        secs,
        records,
        timed,
    })
}

/// `engine dev --topic` arguments for the floor's input and output topics.
pub(super) fn floor_topics() -> [String; 2] {
    [
        format!("{FLOOR_INPUT}:{PARTITIONS}"),
        format!("{FLOOR_OUTPUT}:{PARTITIONS}"),
    ]
}

/// The floor's and the engine's figures from their interleaved runs: medians with
/// min and max, the engine's ratio the median of each run's own ratio.
pub(super) fn interleaved_figures(
    group: &'static str,
    engine_figure: &str,
    engine_rates: &[f64],
    floor_rates: &[f64],
    target: Target,
    engine_note: &str,
) -> [Figure; 2] {
    let floor = Spread::of(floor_rates.to_vec());
    let engine = Spread::of(engine_rates.to_vec());
    let ratios = Spread::of(
        engine_rates
            .iter()
            .zip(floor_rates)
            .map(|(e, f)| e / f)
            .collect(),
    );
    [
        Figure::from_runs(
            group,
            "rdkafka floor: consume-then-produce copy in the harness",
            &floor,
            "records/s",
            None,
            None,
            None,
        )
        .and_note("input records per second"),
        Figure::from_runs(
            group,
            engine_figure,
            &engine,
            "records/s",
            Some(("rdkafka floor".into(), &floor)),
            Some(&ratios),
            Some(target),
        )
        .and_note(engine_note),
    ]
}

/// How long without new output before a run counts as stalled.
pub(super) const STALL: Duration = Duration::from_secs(30);

/// The property that makes the mock cluster answer fetches as a real broker would.
const NO_FETCH_HOLD: &str = "consumer.fetch.wait.max.ms=1";

const ENGINE_FIGURE: &str = "engine run ticket-pipeline (own process)";

/// Produces the input in rounds that fit the mock cluster, continuing through the
/// ticket pool so every round is different.
#[derive(Clone)]
pub(super) struct Rounds<'a> {
    pub producer: &'a BaseProducer,
    pub watcher: &'a BaseConsumer,
    pub input: &'a Input,
    /// The topic the rounds go to: the engine's input or the floor's.
    pub topic: &'static str,
    pub n: usize,
    pub next: usize,
}

impl Rounds<'_> {
    /// Produces one round and waits for the broker to acknowledge it; returns how many
    /// of its records pass the topology's filter.
    pub fn produce(&mut self) -> Result<usize> {
        self.produce_n(self.n)
    }

    pub fn produce_n(&mut self, n: usize) -> Result<usize> {
        let range = self.next..self.next + n;
        let topic = self.topic;
        let (before, _) = offsets(self.watcher, topic)?;
        for i in range.clone() {
            let (key, value, _) = self.input.get(i);
            send(
                self.producer,
                BaseRecord::to(topic)
                    .key(key.as_slice())
                    .payload(value.as_slice()),
            )?;
            if i.is_multiple_of(1000) {
                self.producer.poll(Duration::ZERO);
            }
        }
        self.producer.flush(Duration::from_secs(120))?;
        let (after, _) = offsets(self.watcher, topic)?;
        if after - before != n as i64 {
            return Err(format!(
                "{topic} grew by {} records, expected {n}: the broker refused part of the input",
                after - before,
            )
            .into());
        }
        self.next = range.end;
        Ok(self.input.pending_in(range))
    }
}

pub(super) struct Rate {
    pub rate: f64,
    pub secs: f64,
    pub rounds: usize,
    pub records: usize,
}

/// Rounds after the first (connection set-up and group join) are timed.
pub(super) const MAX_ROUNDS: usize = 500;

/// The rdkafka floor on the mock cluster: a plain consume-then-produce loop with
/// librdkafka's defaults, copying its own input topic (the same records as the
/// engine's) so that its runs can interleave with the engine's. Each run sets up its
/// clients afresh (a group member left unpolled while the engine runs could not be
/// closed) and does not time its first round (connections, first fetches), as the
/// engine's first round is not timed; its partitions are paused while a round is
/// produced, so it never reads ahead of the timed window.
pub(super) struct Floor {
    bootstrap: String,
}

impl Floor {
    pub fn new(bootstrap: &str) -> Floor {
        Floor {
            bootstrap: bootstrap.to_string(),
        }
    }

    /// One run: rounds of `rounds` (which go to the floor's input) until `work_secs`
    /// of copying are timed.
    pub fn run(&mut self, rounds: &mut Rounds<'_>, work_secs: f64) -> Result<Rate> {
        let consumer: BaseConsumer = client(&self.bootstrap)
            .set("group.id", "engine-bench-floor")
            .set("auto.offset.reset", "earliest")
            .create()?;
        let producer: BaseProducer = client(&self.bootstrap).create()?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            let (_, high) = rounds.watcher.fetch_watermarks(FLOOR_INPUT, p, TIMEOUT)?;
            assignment.add_partition_offset(FLOOR_INPUT, p, Offset::Offset(high))?;
        }
        consumer.assign(&assignment)?;
        let (mut secs, mut records, mut timed) = (0.0, 0, 0);
        for round in 0..MAX_ROUNDS {
            if round > 1 && secs >= work_secs {
                break;
            }
            consumer.pause(&assignment)?;
            rounds.produce()?;
            let started = Instant::now();
            consumer.resume(&assignment)?;
            copy(&consumer, &producer, rounds.n)?;
            if round > 0 {
                secs += started.elapsed().as_secs_f64();
                records += rounds.n;
                timed += 1;
            }
        }
        Ok(Rate {
            rate: records as f64 / secs.max(1e-9),
            secs,
            rounds: timed,
            records,
        })
    }
}

/// The floor's loop: copies `n` records as they are to the floor's output, then waits
/// for the broker to acknowledge them.
pub(super) fn copy(consumer: &BaseConsumer, producer: &BaseProducer, n: usize) -> Result<()> {
    let mut copied = 0usize;
    let mut last_progress = Instant::now();
    while copied < n {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let mut record = BaseRecord::<[u8], [u8]>::to(FLOOR_OUTPUT);
                if let Some(k) = m.key() {
                    record = record.key(k);
                }
                if let Some(v) = m.payload() {
                    record = record.payload(v);
                }
                send(producer, record)?;
                copied += 1;
                last_progress = Instant::now();
                if copied.is_multiple_of(1000) {
                    producer.poll(Duration::ZERO);
                }
            }
            Some(Err(e)) => return Err(format!("floor consumer: {e}").into()),
            None if last_progress.elapsed() > Duration::from_secs(60) => {
                return Err(format!("floor loop stalled after {copied} of {n} records").into());
            }
            None => {}
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(())
}

/// Start-up, throughput, latency and memory of one `engine run` process.
fn engine_run(
    engine: &EngineCommand,
    dev: &DevBroker,
    rounds: &mut Rounds<'_>,
    (floor, floor_rounds): (&mut Floor, &mut Rounds<'_>),
    options: &PipelineOptions,
    setup: &mut Vec<(String, String)>,
) -> Result<Vec<Figure>> {
    let watcher = rounds.watcher;
    let log = engine.log_path("engine-run.log");
    let exited = |status: std::process::ExitStatus| -> Box<dyn std::error::Error + Send + Sync> {
        format!("engine run exited ({status}); see {}", log.display()).into()
    };
    let stalled = |done: i64, want: i64| -> Box<dyn std::error::Error + Send + Sync> {
        let dead = offsets(watcher, DEAD_LETTER).map_or(0, |o| o.0);
        format!(
            "engine run stalled at {done} of {want} outputs ({dead} records dead-lettered); see {}",
            log.display()
        )
        .into()
    };

    // Start-up: the first round waits on the broker before the process exists.
    let mut want = rounds.produce()? as i64;
    let spawned = Instant::now();
    let mut args = vec![TOPOLOGY];
    for property in &options.engine_kafka {
        args.extend(["--kafka", property.as_str()]);
    }
    let mut run = engine.run(&args, dev, "engine-run.log")?;
    loop {
        if let Some(status) = run.exited() {
            return Err(exited(status));
        }
        if end_offset_total(watcher, OUTPUT)? > 0 {
            break;
        }
        if spawned.elapsed() > Duration::from_secs(120) {
            return Err(stalled(0, want));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let startup_ms = spawned.elapsed().as_secs_f64() * 1000.0;
    eprintln!("engine-bench: first output {startup_ms:.0} ms after spawn");

    // Waits until `want` outputs are on the broker; returns when they were seen.
    let wait_for =
        |run: &mut super::processes::Stopping, want: i64, patience: Duration| -> Result<Instant> {
            let mut seen = -1;
            let mut progress_at = Instant::now();
            loop {
                let count = end_offset_total(watcher, OUTPUT)?;
                if count >= want {
                    return Ok(Instant::now());
                }
                if let Some(status) = run.exited() {
                    return Err(exited(status));
                }
                if count > seen {
                    seen = count;
                    progress_at = Instant::now();
                } else if progress_at.elapsed() > patience {
                    return Err(stalled(count, want));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        };
    wait_for(&mut run, want, STALL)?;

    // Throughput: the process is frozen while each round is produced, then timed from
    // being let go until the round's last output is on the broker. Runs of the engine
    // and of the floor alternate (the engine frozen while the floor runs).
    let Interleaved {
        engine_rates,
        floor_runs,
        secs,
        records,
        timed,
    } = interleave(
        (options.runs, options.work_secs),
        &mut run,
        rounds,
        &mut want,
        (floor, floor_rounds),
        &mut |run, want| wait_for(run, want, STALL),
    )?;
    let rate = Spread::of(engine_rates.clone()).median;
    let pipeline_rss = run.peak_rss_bytes()?;
    eprintln!(
        "engine-bench: engine {rate:.0} input records/s (median of {} runs), floor {:.0}",
        engine_rates.len(),
        Spread::of(floor_runs.iter().map(|f| f.rate).collect()).median
    );
    setup.push((
        "engine run properties".into(),
        if options.engine_kafka.is_empty() {
            "none: librdkafka defaults plus what the engine sets itself".to_string()
        } else {
            options
                .engine_kafka
                .iter()
                .map(|p| format!("`--kafka {p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        },
    ));
    setup.push((
        "engine run".into(),
        format!("{timed} rounds, {records} records in {secs:.2} s over {} runs (first round, with start-up, not timed)", engine_rates.len()),
    ));
    setup.push((
        "floor run".into(),
        format!(
            "{} rounds, {} records in {:.2} s over {} runs (its first round not timed), each run after one of the engine's",
            floor_runs.iter().map(|f| f.rounds).sum::<usize>(),
            floor_runs.iter().map(|f| f.records).sum::<usize>(),
            floor_runs.iter().map(|f| f.secs).sum::<f64>(),
            floor_runs.len()
        ),
    ));

    let latency_rate = options.latency_rate.unwrap_or(rate / 2.0);
    let latency = measure_latency(
        &dev.bootstrap_servers,
        watcher,
        rounds.input,
        rounds.next,
        latency_rate,
        Duration::from_secs(options.latency_secs),
        PARTITIONS,
        1,
    )?;
    if let Some(status) = run.exited() {
        return Err(exited(status));
    }
    let peak_rss = run.peak_rss_bytes()?;
    run.stop();

    // The same latency run once more with the one property that removes the mock
    // cluster's fetch hold (an empty fetch is answered only after fetch.wait.max.ms,
    // 500 ms by default, where a real broker answers as soon as data arrives).
    args.extend(["--kafka", NO_FETCH_HOLD]);
    let mut second = engine.run(&args, dev, "engine-run-no-fetch-hold.log")?;
    let warm_up = end_offset_total(watcher, OUTPUT)? + rounds.produce_n(1000)? as i64;
    // The mock cluster lets a member join a group another just left only after about
    // session.timeout.ms (45 s by default), so this start is slow.
    wait_for(&mut second, warm_up, Duration::from_secs(90))?;
    let unheld = measure_latency(
        &dev.bootstrap_servers,
        watcher,
        rounds.input,
        rounds.next,
        latency_rate,
        Duration::from_secs(options.latency_secs),
        PARTITIONS,
        1,
    )?;
    if let Some(status) = second.exited() {
        return Err(exited(status));
    }
    second.stop();
    let latency_received = latency.samples.len() + unheld.samples.len();
    let latency_expected = latency.expected + unheld.expected;
    setup.push((
        "latency run".into(),
        format!(
            "{:.0} records/s for {} s ({}), twice (default, then without the fetch hold): {} of {} outputs received{}",
            latency_rate,
            options.latency_secs,
            if options.latency_rate.is_some() {
                "rate given with --latency-rate"
            } else {
                "half the engine's measured rate"
            },
            latency_received,
            latency_expected,
            if latency.from_timestamps + unheld.from_timestamps > 0 {
                format!(
                    ", {} timed by record timestamp (ms) for lack of the header",
                    latency.from_timestamps + unheld.from_timestamps
                )
            } else {
                String::new()
            }
        ),
    ));

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let floor_rates: Vec<f64> = floor_runs.iter().map(|f| f.rate).collect();
    let mut figures = interleaved_figures(
        "pipeline",
        ENGINE_FIGURE,
        &engine_rates,
        &floor_rates,
        Target::RatioAtLeast(0.8),
        "input records per second",
    )
    .to_vec();
    for (run, targeted, label) in [
        (latency, true, String::new()),
        (unheld, false, format!(", with `--kafka {NO_FETCH_HOLD}`")),
    ] {
        let missing = run.expected.saturating_sub(run.samples.len());
        let mut samples = run.samples;
        samples.sort_unstable();
        for (name, q) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
            let figure = format!("end-to-end {name} at {latency_rate:.0} records/s{label}");
            let Some(ms) = percentile(&samples, q) else {
                figures.push(Figure::not_measured(
                    "latency",
                    figure,
                    "no output received during the latency run",
                ));
                continue;
            };
            // One window on the mock cluster, whose fetch hold dominates: context, not
            // judged (the latency targets are judged on the real broker, over rounds).
            let mut f = Figure::new("latency", figure, ms, "ms", None, None);
            let mut notes = vec![format!(
                "one {} s window, context only{}",
                options.latency_secs,
                if targeted {
                    ""
                } else {
                    "; removes the mock cluster's fetch hold"
                }
            )];
            if missing > 0 {
                notes.push(format!(
                    "{missing} outputs not received within 10 s of the last input: overloaded, \
                     and the percentiles understate"
                ));
            }
            f = f.with_note(notes.join("; "));
            figures.push(f);
        }
    }
    figures.push(
        Figure::new(
            "memory",
            "peak RSS of engine run (VmHWM)",
            mib(peak_rss),
            "MiB",
            Some(("target".into(), 150.0)),
            Some(Target::Below(150.0)),
        )
        .with_note(format!(
            "{:.1} MiB after the throughput run alone",
            mib(pipeline_rss)
        )),
    );
    figures.push(Figure::new(
        "start-up",
        "spawn to first output record",
        startup_ms,
        "ms",
        None,
        None,
    ));
    Ok(figures)
}

pub(super) struct Latency {
    pub samples: Vec<u64>,
    pub expected: usize,
    pub from_timestamps: usize,
}

/// `q`-quantile of sorted nanosecond samples, in milliseconds (nearest rank).
pub(super) fn percentile(sorted: &[u64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1] as f64 / 1e6)
}

/// Produces at `rate` for `duration`, stamping each record, and times its outputs on
/// `partitions` partitions (read with `fetch.wait.max.ms` = `fetch_wait_ms`).
// One argument per part of the run.
#[allow(clippy::too_many_arguments)]
pub(super) fn measure_latency(
    bootstrap: &str,
    watcher: &BaseConsumer,
    input: &Input,
    offset: usize,
    rate: f64,
    duration: Duration,
    partitions: i32,
    fetch_wait_ms: u32,
) -> Result<Latency> {
    // Start reading the output exactly where it ends now.
    // The mock cluster holds an empty fetch for the whole fetch.wait.max.ms, however soon
    // data arrives; the harness's own reader should not add that to the figure.
    let consumer: BaseConsumer = client(bootstrap)
        .set("group.id", "engine-bench-latency")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (_, high) = watcher.fetch_watermarks(OUTPUT, p, TIMEOUT)?;
        tpl.add_partition_offset(OUTPUT, p, Offset::Offset(high))?;
    }
    consumer.assign(&tpl)?;

    let expected = Arc::new(AtomicU64::new(u64::MAX));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let expected = expected.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut from_timestamps = 0;
            let mut give_up: Option<Instant> = None;
            while (samples.len() as u64) < expected.load(Ordering::Acquire) {
                if done.load(Ordering::Acquire) {
                    let at = *give_up.get_or_insert_with(|| Instant::now() + TIMEOUT);
                    if Instant::now() > at {
                        break;
                    }
                }
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let received = now_ns();
                let sent = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == SENT_HEADER))
                    .and_then(|h| h.value)
                    .and_then(|v| <[u8; 8]>::try_from(v).ok())
                    .map(u64::from_be_bytes);
                let sent = match sent {
                    Some(s) => s,
                    None => {
                        from_timestamps += 1;
                        m.timestamp()
                            .to_millis()
                            .map_or(received, |ms| ms as u64 * 1_000_000)
                    }
                };
                samples.push(received.saturating_sub(sent));
            }
            (samples, from_timestamps)
        })
    };

    // linger.ms=0: the load generator's own batching is not the engine's latency.
    let producer: BaseProducer = client(bootstrap).set("linger.ms", "0").create()?;
    let start = Instant::now();
    let mut sent = 0usize;
    while start.elapsed() < duration {
        let due = (start.elapsed().as_secs_f64() * rate) as usize;
        while sent < due {
            let (key, value, _) = input.get(offset + sent);
            let stamp = now_ns().to_be_bytes();
            let headers = OwnedHeaders::new().insert(Header {
                key: SENT_HEADER,
                value: Some(&stamp[..]),
            });
            send(
                &producer,
                BaseRecord::to(INPUT)
                    .key(key.as_slice())
                    .payload(value.as_slice())
                    .headers(headers),
            )?;
            sent += 1;
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_micros(500));
    }
    producer.flush(Duration::from_secs(30))?;
    let want = input.pending_in(offset..offset + sent);
    expected.store(want as u64, Ordering::Release);
    done.store(true, Ordering::Release);
    let (samples, from_timestamps) = reader
        .join()
        .map_err(|_| "the latency reader thread panicked")?;
    Ok(Latency {
        samples,
        expected: want,
        from_timestamps,
    })
}
