//! The engine beside Kafka Streams and the rdkafka floor, on one real Apache Kafka
//! broker (`scripts/kafka`), in one run: `ticket-pipeline` and `ticket-counts` under both
//! guarantees, written idiomatically for Kafka Streams in `bench/kafka-streams/` (built
//! by `scripts/bench`). Every throughput figure is the median of interleaved rounds, each
//! run on freshly created topics with the same input; latency is measured open-loop at
//! fixed offered rates, every output matched to its input by a sequence number, and an
//! output that never arrives counts as infinitely late.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use super::Result;
use super::pipeline::{
    FLOOR_OUTPUT, INPUT, Input, PipelineOutcome, client, copy, send, value_format,
};
use super::processes::{DevBroker, EngineCommand, Stopping, real_broker};
use super::report::{Figure, Spread, Target};

const PARTITIONS: i32 = 6;
/// Input records each throughput run works through, after its warm-up.
const RECORDS: usize = 200_000;
/// Enough for the JVM to compile Kafka Streams' hot paths before the timing starts:
/// after 2,000 its timed runs were partly interpreted (1.5 cores for 40,000 records/s,
/// where a warmed-up process kept up with 85,000 records/s on half a core).
const WARM_UP: usize = 100_000;
/// Distinct keys of `ticket-counts`' input.
const KEYS: usize = 10_000;
/// A run that makes no progress for this long has failed.
const STALL: Duration = Duration::from_secs(60);
/// How long each offered rate is held.
const LATENCY_SECS: u64 = 20;
/// Windows of `LATENCY_SECS` held at each offered rate; the figures are their medians.
const LATENCY_WINDOWS: usize = 3;
/// Unmeasured load at the first rate before the measured ones.
const WARM_UP_OFFER: Duration = Duration::from_secs(5);
/// After the last input of a rate, how long its outputs may still arrive.
const DRAIN: Duration = Duration::from_secs(10);
/// Rates every tool is offered, besides fractions of the measured maxima.
const FIXED_RATES: [f64; 2] = [1_000.0, 10_000.0];
const MAX_FRACTIONS: [f64; 2] = [0.5, 0.8];
/// A rate at which more than this share of outputs never arrived overloads the tool;
/// higher rates are not offered to it.
const OVERLOAD: f64 = 0.01;
/// Distinct keys of that changelog: the store ends up holding this many counts.
const RESTORE_KEYS: usize = 1_000_000;
const RESTORE_TARGET: f64 = 300_000.0;
/// The engine's changelog of `ticket-counts`' store, and Kafka Streams' of the
/// application id its restore runs use.
const ENGINE_CHANGELOG: &str = "ticket-counts-tickets-per-plan-changelog";
const STREAMS_RESTORE_APP: &str = "kstreams-restore";
/// Header with the latency run's sequence number (u64, big-endian).
const SEQ_HEADER: &str = "engine-bench.seq";
const PIPELINE_OUTPUT: &str = "bench.tickets.out";
const COUNTS_OUTPUT: &str = "bench.tickets.counts";
/// The Kafka Streams application, built by `scripts/bench`.
const STREAMS_PROJECT: &str = "bench/kafka-streams";
const STREAMS_MAIN: &str = "local.streamengine.bench.Main";
/// Table groups of these figures.
const GROUP: &str = "side by side";
const LATENCY_GROUP: &str = "side-by-side latency";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Tool {
    Engine,
    Streams,
}

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Engine => "engine",
            Tool::Streams => "Kafka Streams",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Guarantee {
    AtLeastOnce,
    ExactlyOnce,
}

impl Guarantee {
    fn name(self) -> &'static str {
        match self {
            Guarantee::AtLeastOnce => "at_least_once",
            Guarantee::ExactlyOnce => "exactly_once_v2",
        }
    }
}

const TOPOLOGIES: [&str; 2] = ["ticket-pipeline", "ticket-counts"];
const GUARANTEES: [Guarantee; 2] = [Guarantee::AtLeastOnce, Guarantee::ExactlyOnce];
const TOOLS: [Tool; 2] = [Tool::Engine, Tool::Streams];

/// Where the harness finds Java and the built Kafka Streams application.
pub struct KafkaStreamsApp {
    classpath: String,
    version: String,
}

impl KafkaStreamsApp {
    /// The application `scripts/bench` built; an error says how to build it.
    pub fn locate() -> Result<Self> {
        let root = Path::new(STREAMS_PROJECT);
        let classes = root.join("target/classes");
        let deps = root.join("target/dependency");
        if !classes.is_dir() || !deps.is_dir() {
            return Err(format!(
                "the Kafka Streams application is not built ({} missing); run scripts/bench, \
                 or: mvn -q -B -f {STREAMS_PROJECT}/pom.xml package \
                 dependency:copy-dependencies -DincludeScope=runtime",
                classes.display()
            )
            .into());
        }
        let version = std::fs::read_dir(&deps)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .find_map(|n| {
                n.strip_prefix("kafka-streams-")
                    .and_then(|v| v.strip_suffix(".jar"))
                    .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "unknown".into());
        Ok(Self {
            classpath: format!("{}:{}/*", classes.display(), deps.display()),
            version,
        })
    }
}

/// What the side-by-side runs are asked to do.
pub struct SideBySideOptions {
    /// Interleaved rounds of every throughput and restore figure; each figure is their
    /// median.
    pub rounds: usize,
    /// Bytes of keys and values in each changelog the restore runs read (the log on the
    /// broker is larger by the records' framing); 0 skips the restore runs.
    pub restore_bytes: u64,
    /// Whether the throughput runs (with memory and start-up) run.
    pub throughput: bool,
    /// Whether the latency runs run (at the fixed rates only without the throughput
    /// runs, which give each tool's maximum).
    pub latency: bool,
    /// The rates the latency runs offer, instead of the fixed rates and fractions of
    /// the maxima.
    pub offer: Option<Vec<f64>>,
    /// Latency runs of the engine alone, without Kafka Streams.
    pub only_engine: bool,
}

/// Everything a run needs: the broker, the registry, both tools.
struct Bench<'a> {
    options: &'a SideBySideOptions,
    engine: &'a EngineCommand,
    streams: &'a KafkaStreamsApp,
    bootstrap: String,
    broker_pid: u32,
    registry: Option<String>,
    engine_kafka: &'a [String],
}

/// What one throughput run measured.
#[derive(Debug, Clone, Default)]
struct Run {
    rate: f64,
    peak_rss: Option<f64>,
    startup_ms: Option<f64>,
    cpu: Cpu,
}

/// CPU seconds used during a timed window, per process.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    tool: f64,
    broker: f64,
    harness: f64,
    secs: f64,
}

impl Cpu {
    fn describe(&self) -> String {
        format!(
            "CPU over the timed {:.1} s: tool {:.0}%, broker {:.0}%, harness {:.0}%",
            self.secs,
            self.tool / self.secs.max(1e-9) * 100.0,
            self.broker / self.secs.max(1e-9) * 100.0,
            self.harness / self.secs.max(1e-9) * 100.0
        )
    }
}

/// One offered rate of a latency run.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyPoint {
    pub tool: &'static str,
    pub guarantee: &'static str,
    pub offered: f64,
    /// Milliseconds; `None` where the percentile falls among outputs that never arrived.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
    /// The p99 of each window held at this rate, in order (infinite: outputs lost).
    pub p99_windows: Vec<f64>,
    pub expected: usize,
    pub missing: usize,
    pub achieved: f64,
    pub tool_cpu: f64,
    pub broker_cpu: f64,
    pub harness_cpu: f64,
}

/// The side-by-side figures, and the latency points for the chart.
pub struct SideBySide {
    pub outcome: PipelineOutcome,
    pub latency: Vec<LatencyPoint>,
}

pub fn run(
    engine: &EngineCommand,
    streams: &KafkaStreamsApp,
    engine_kafka: &[String],
    options: &SideBySideOptions,
) -> Result<SideBySide> {
    // `engine dev` for its schema registry only.
    let mut dev = engine.dev("engine-dev-side-by-side.log", &["--partitions", "1"])?;
    let (mut broker, bootstrap) = real_broker(engine, "kafka-side-by-side.log")?;
    let bench = Bench {
        options,
        engine,
        streams,
        bootstrap,
        broker_pid: broker.pid(),
        registry: dev.registry_url.clone(),
        engine_kafka,
    };
    let result = measure(&bench, &dev);
    broker.stop();
    dev.process.stop();
    result
}

type Key = (&'static str, Guarantee);

fn measure(bench: &Bench<'_>, dev: &DevBroker) -> Result<SideBySide> {
    let format = value_format(bench.engine, dev, "ticket-pipeline")?;
    let pipeline_input = Input::new(format)?;
    let counts_input = Input::keyed(format, KEYS)?;
    let input = |topology: &str| {
        if topology == "ticket-pipeline" {
            &pipeline_input
        } else {
            &counts_input
        }
    };
    let mut runs: HashMap<(Key, Tool), Vec<Run>> = HashMap::new();
    let mut floors: HashMap<&str, Vec<f64>> = HashMap::new();
    // Interleaved, so a drift of the machine touches every tool alike.
    let throughput_rounds = if bench.options.throughput {
        bench.options.rounds
    } else {
        0
    };
    for round in 1..=throughput_rounds {
        for topology in TOPOLOGIES {
            let floor = floor_run(bench, input(topology), topology)?;
            eprintln!(
                "engine-bench: side by side, {topology}, rdkafka floor (round {round}): \
                 {floor:.0} records/s"
            );
            floors.entry(topology).or_default().push(floor);
            for guarantee in GUARANTEES {
                for tool in TOOLS {
                    let label = format!(
                        "{topology}-{}-{}-{round}",
                        tool.label().replace(' ', "-").to_lowercase(),
                        guarantee.name()
                    );
                    let run =
                        throughput_run(bench, tool, topology, guarantee, input(topology), &label)?;
                    eprintln!(
                        "engine-bench: side by side, {topology}, {} under {} (round {round}): \
                         {:.0} records/s, peak RSS {:.0} MiB{}; {}",
                        tool.label(),
                        guarantee.name(),
                        run.rate,
                        run.peak_rss.unwrap_or(f64::NAN) / 1048576.0,
                        run.startup_ms
                            .map(|s| format!(", first output {s:.0} ms after spawn"))
                            .unwrap_or_default(),
                        run.cpu.describe()
                    );
                    runs.entry(((topology, guarantee), tool))
                        .or_default()
                        .push(run);
                }
            }
        }
    }
    let mut figures = Vec::new();
    if bench.options.throughput {
        throughput_figures(&runs, &floors, &mut figures);
        resource_figures(&runs, &mut figures);
    } else {
        figures.push(Figure::not_measured(
            GROUP,
            "throughput, memory and start-up beside Kafka Streams",
            "--skip-throughput given",
        ));
    }

    // Latency: each tool's maximum is its median at-least-once pipeline throughput.
    let max = |tool: Tool| {
        runs.get(&(("ticket-pipeline", Guarantee::AtLeastOnce), tool))
            .map(|r| Spread::of(r.iter().map(|r| r.rate).collect()).median)
    };
    let mut rates: Vec<f64> = FIXED_RATES.to_vec();
    for tool in TOOLS {
        for fraction in MAX_FRACTIONS {
            if let Some(max) = max(tool) {
                rates.push((max * fraction / 1000.0).round() * 1000.0);
            }
        }
    }
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    let mut latency = Vec::new();
    for guarantee in GUARANTEES.iter().copied().filter(|_| bench.options.latency) {
        // Under exactly-once, the fixed rates only: the chart is of at-least-once.
        let offered: Vec<f64> = match (&bench.options.offer, guarantee) {
            (Some(offer), _) => offer.clone(),
            (None, Guarantee::AtLeastOnce) => rates.clone(),
            (None, Guarantee::ExactlyOnce) => FIXED_RATES.to_vec(),
        };
        let tools = TOOLS
            .into_iter()
            .filter(|t| *t == Tool::Engine || !bench.options.only_engine);
        for tool in tools {
            latency.extend(latency_run(
                bench,
                tool,
                guarantee,
                &pipeline_input,
                &offered,
            )?);
        }
    }
    if bench.options.latency {
        latency_figures(&latency, &mut figures);
    } else {
        figures.push(Figure::not_measured(
            LATENCY_GROUP,
            "latency beside Kafka Streams",
            "--skip-latency given",
        ));
    }
    if bench.options.restore_bytes > 0 {
        let restores = restore_runs(bench, &counts_input)?;
        restore_figures(&restores, &mut figures, bench.options.restore_bytes);
    } else {
        figures.push(Figure::not_measured(
            GROUP,
            "ticket-counts: restore",
            "--restore-gib 0 given",
        ));
    }

    let setup = vec![
        (
            "side-by-side runs".into(),
            format!(
                "Apache Kafka 4.3 (`scripts/kafka`, one node, KRaft) for every tool, topics of \
                 {PARTITIONS} partitions deleted and created afresh for every run; Kafka Streams \
                 {} (`bench/kafka-streams`, Java {}, JVM defaults, one stream thread, its \
                 defaults but `commit.interval.ms` the engine's (1000 under at_least_once, 25 \
                 under exactly_once_v2), the Avro serde a few lines over Apache Avro's GenericRecord in Confluent's wire \
                 format); the engine with its defaults{}; {} rounds, each running the \
                 rdkafka floor, then the engine and Kafka Streams under both guarantees; each \
                 run warms up with {WARM_UP} tickets, then the process is frozen (SIGSTOP) while \
                 {RECORDS} more are written (`ticket-pipeline`: 90% PENDING; `ticket-counts`: \
                 {KEYS} keys) and timed from its thaw until a `read_committed` consumer has \
                 seen every kept ticket out (the latest counts adding up to the input); the \
                 floor copies the same input with a plain rdkafka consume-then-produce loop; \
                 no process is pinned to a core (2 cores shared by broker, tool and harness)",
                bench.streams.version,
                java_version(),
                if bench.engine_kafka.is_empty() {
                    String::new()
                } else {
                    format!(" and `--kafka {}`", bench.engine_kafka.join(" --kafka "))
                },
                bench.options.rounds,
            ),
        ),
        (
            "latency runs".into(),
            format!(
                "on the same broker, one process per tool and guarantee: after a warm-up the \
                 harness offers `ticket-pipeline` fixed rates open-loop (sends on schedule \
                 whatever comes out), each for {LATENCY_WINDOWS} consecutive windows of \
                 {LATENCY_SECS} s (each figure the median of its windows): {} records/s under \
                 at_least_once (1,000, 10,000, and 50% and 80% of each tool's median \
                 throughput), {} under exactly_once_v2; every record carries a sequence number \
                 and its send time, every output is matched to its input, an output not seen \
                 {} s after the last send counts as infinitely late; a rate that loses more \
                 than {:.0}% of outputs overloads the tool, and higher rates are not offered \
                 to it; the load generator sends with `linger.ms=1`; chart: \
                 [BENCHMARKS-latency.png](BENCHMARKS-latency.png)",
                rates
                    .iter()
                    .map(|r| format!("{r:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                FIXED_RATES
                    .iter()
                    .map(|r| format!("{r:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                DRAIN.as_secs(),
                OVERLOAD * 100.0
            ),
        ),
    ];
    Ok(SideBySide {
        outcome: PipelineOutcome { figures, setup },
        latency,
    })
}

fn java_version() -> String {
    Command::new("java")
        .arg("-version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .and_then(|l| l.split('"').nth(1).map(str::to_string))
        })
        .unwrap_or_else(|| "unknown".into())
}

fn throughput_figures(
    runs: &HashMap<(Key, Tool), Vec<Run>>,
    floors: &HashMap<&str, Vec<f64>>,
    figures: &mut Vec<Figure>,
) {
    let rates =
        |key: Key, tool: Tool| -> Vec<f64> { runs[&(key, tool)].iter().map(|r| r.rate).collect() };
    let ratios = |a: &[f64], b: &[f64]| Spread::of(a.iter().zip(b).map(|(a, b)| a / b).collect());
    for topology in TOPOLOGIES {
        let floor = &floors[topology];
        let floor_spread = Spread::of(floor.clone());
        figures.push(Figure::from_runs(
            GROUP,
            format!("{topology}: rdkafka floor (consume-then-produce copy)"),
            &floor_spread,
            "records/s",
            None,
            None,
            None,
        ));
        for guarantee in GUARANTEES {
            let engine = rates((topology, guarantee), Tool::Engine);
            let streams = rates((topology, guarantee), Tool::Streams);
            let streams_spread = Spread::of(streams.clone());
            figures.push(Figure::from_runs(
                GROUP,
                format!("{topology}: Kafka Streams, {}", guarantee.name()),
                &streams_spread,
                "records/s",
                None,
                None,
                None,
            ));
            figures.push(Figure::from_runs(
                GROUP,
                format!("{topology}: engine, {}", guarantee.name()),
                &Spread::of(engine.clone()),
                "records/s",
                Some((
                    format!("Kafka Streams, {}", guarantee.name()),
                    &streams_spread,
                )),
                Some(&ratios(&engine, &streams)),
                Some(Target::RatioAtLeast(2.0)),
            ));
            if topology == "ticket-pipeline" && guarantee == Guarantee::AtLeastOnce {
                figures.push(Figure::from_runs(
                    GROUP,
                    format!("{topology}: engine, at_least_once, against the floor"),
                    &Spread::of(engine.clone()),
                    "records/s",
                    Some(("rdkafka floor".into(), &floor_spread)),
                    Some(&ratios(&engine, floor)),
                    Some(Target::RatioAtLeast(0.9)),
                ));
            }
        }
        // What exactly-once costs each tool.
        for tool in TOOLS {
            let alos = rates((topology, Guarantee::AtLeastOnce), tool);
            let eos = rates((topology, Guarantee::ExactlyOnce), tool);
            figures.push(
                Figure::from_runs(
                    "exactly-once",
                    format!(
                        "{topology}: {} exactly_once_v2 against its at_least_once",
                        tool.label()
                    ),
                    &Spread::of(eos.clone()),
                    "records/s",
                    Some(("at_least_once".into(), &Spread::of(alos.clone()))),
                    Some(&ratios(&eos, &alos)),
                    (tool == Tool::Engine).then_some(Target::RatioAtLeast(0.7)),
                )
                .and_note(format!(
                    "a transaction every {} ms (the engine's default, given to Kafka \
                     Streams too)",
                    engine::config::defaults::EOS_LATENCY_COMMIT_INTERVAL_MS
                )),
            );
        }
    }
}

fn resource_figures(runs: &HashMap<(Key, Tool), Vec<Run>>, figures: &mut Vec<Figure>) {
    let of = |topology: &'static str, tool: Tool, figure: fn(&Run) -> Option<f64>| -> Vec<f64> {
        runs[&((topology, Guarantee::AtLeastOnce), tool)]
            .iter()
            .filter_map(figure)
            .collect()
    };
    for topology in TOPOLOGIES {
        let rss = |r: &Run| r.peak_rss.map(|b| b / 1048576.0);
        versus(
            figures,
            &format!("{topology}: peak RSS, {{}}, at_least_once"),
            &of(topology, Tool::Engine, rss),
            &of(topology, Tool::Streams, rss),
            "MiB",
            Target::RatioAtMost(0.25),
            "VmHWM of the process through its run",
        );
    }
    let startup = |r: &Run| r.startup_ms;
    versus(
        figures,
        "ticket-pipeline: start-up to first output, {}",
        &of("ticket-pipeline", Tool::Engine, startup),
        &of("ticket-pipeline", Tool::Streams, startup),
        "ms",
        Target::RatioAtMost(0.2),
        "from spawning the process, its input waiting, to its first output on the broker",
    );
}

/// Kafka Streams' figure, then the engine's against it, from the same (at-least-once)
/// rounds; nothing when a round lacks one of them.
/// `name` holds `{}` where the tool's name goes.
fn versus(
    figures: &mut Vec<Figure>,
    name: &str,
    engine: &[f64],
    streams: &[f64],
    unit: &'static str,
    target: Target,
    note: &str,
) {
    if engine.len() != streams.len() || engine.is_empty() {
        return;
    }
    let ratios = Spread::of(engine.iter().zip(streams).map(|(a, b)| a / b).collect());
    let streams_spread = Spread::of(streams.to_vec());
    figures.push(Figure::from_runs(
        GROUP,
        name.replace("{}", "Kafka Streams"),
        &streams_spread,
        unit,
        None,
        None,
        None,
    ));
    figures.push(
        Figure::from_runs(
            GROUP,
            name.replace("{}", "engine"),
            &Spread::of(engine.to_vec()),
            unit,
            Some(("Kafka Streams".into(), &streams_spread)),
            Some(&ratios),
            Some(target),
        )
        .and_note(note),
    );
}

fn latency_figures(points: &[LatencyPoint], figures: &mut Vec<Figure>) {
    let find = |tool: Tool, guarantee: Guarantee, rate: f64| {
        points.iter().find(|p| {
            p.tool == tool.label() && p.guarantee == guarantee.name() && p.offered == rate
        })
    };
    for guarantee in GUARANTEES {
        let mut rates: Vec<f64> = points
            .iter()
            .filter(|p| p.guarantee == guarantee.name())
            .map(|p| p.offered)
            .collect();
        rates.sort_by(f64::total_cmp);
        rates.dedup();
        for rate in rates {
            let describe = |p: &LatencyPoint| {
                format!(
                    "p50 {}, p99.9 {}, max {}; {} of {} outputs never arrived; achieved {:.0} records/s; CPU: tool {:.0}%, broker {:.0}%, harness {:.0}%",
                    ms(p.p50),
                    ms(p.p999),
                    ms(p.max),
                    p.missing,
                    p.expected,
                    p.achieved,
                    p.tool_cpu * 100.0,
                    p.broker_cpu * 100.0,
                    p.harness_cpu * 100.0
                )
            };
            let streams = find(Tool::Streams, guarantee, rate);
            let engine = find(Tool::Engine, guarantee, rate);
            let name = |tool: Tool| {
                format!(
                    "p99 at {rate:.0} records/s, {}, {}",
                    tool.label(),
                    guarantee.name()
                )
            };
            match streams {
                Some(p) => figures.push(
                    windowed(Figure::from_runs(
                        LATENCY_GROUP,
                        name(Tool::Streams),
                        &Spread::of(p.p99_windows.clone()),
                        "ms",
                        None,
                        None,
                        None,
                    ))
                    .and_note(describe(p)),
                ),
                None => figures.push(Figure::not_measured(
                    LATENCY_GROUP,
                    name(Tool::Streams),
                    "overloaded at a lower rate",
                )),
            }
            match engine {
                Some(p) => {
                    let target = if rate == 10_000.0 && guarantee == Guarantee::AtLeastOnce {
                        Target::Below(10.0)
                    } else {
                        Target::RatioAtMost(0.5)
                    };
                    let engine_windows = Spread::of(p.p99_windows.clone());
                    let streams_windows = streams.map(|s| Spread::of(s.p99_windows.clone()));
                    // Each of the engine's windows over Kafka Streams' window of the same
                    // place in its sequence.
                    let ratios = streams.map(|s| {
                        Spread::of(
                            p.p99_windows
                                .iter()
                                .zip(&s.p99_windows)
                                .map(|(e, k)| e / k)
                                .collect(),
                        )
                    });
                    let mut figure = windowed(Figure::from_runs(
                        LATENCY_GROUP,
                        name(Tool::Engine),
                        &engine_windows,
                        "ms",
                        streams_windows
                            .as_ref()
                            .map(|w| ("Kafka Streams".to_string(), w)),
                        ratios.as_ref(),
                        Some(Target::RatioAtMost(0.5)),
                    ))
                    .and_note(describe(p));
                    if let Some(s) = streams
                        && s.p99.is_none()
                        && p.p99.is_some()
                    {
                        // Kafka Streams lost outputs at this rate; the engine did not.
                        figure.ratio = Some(0.0);
                        figure.status = super::report::Status::Met;
                    }
                    if matches!(target, Target::Below(_)) {
                        let below = windowed(Figure::from_runs(
                            LATENCY_GROUP,
                            format!("{} (absolute)", name(Tool::Engine)),
                            &engine_windows,
                            "ms",
                            None,
                            None,
                            Some(target),
                        ));
                        figures.push(figure);
                        figures.push(below);
                    } else {
                        figures.push(figure);
                    }
                }
                None => figures.push(Figure::not_measured(
                    LATENCY_GROUP,
                    name(Tool::Engine),
                    "overloaded at a lower rate",
                )),
            }
        }
    }
}

/// A latency figure's note says what its runs are: consecutive windows of one process.
fn windowed(mut figure: Figure) -> Figure {
    figure.note = figure.note.map(|n| {
        n.replacen(
            "interleaved runs",
            &format!("consecutive {LATENCY_SECS} s windows"),
            1,
        )
    });
    figure
}

fn ms(v: Option<f64>) -> String {
    v.map_or("∞".into(), |v| format!("{v:.1} ms"))
}

/// Deletes every topic but the broker's own, then creates `topics`, so each run starts
/// empty: no input, output, changelog or committed offset of a run before.
fn fresh_topics(bootstrap: &str, topics: &[&str]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client(bootstrap).create()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let existing = |admin: &AdminClient<DefaultClientContext>| -> Result<Vec<String>> {
        let metadata = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))?;
        Ok(metadata
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|n| !n.starts_with("__") && n != "_schemas")
            .collect())
    };
    let old = existing(&admin)?;
    if !old.is_empty() {
        let names: Vec<&str> = old.iter().map(String::as_str).collect();
        runtime.block_on(admin.delete_topics(&names, &options))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !existing(&admin)?.is_empty() {
            if Instant::now() > deadline {
                return Err(format!("topics {old:?} still exist 60 s after their deletion").into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let wanted: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let results = runtime.block_on(admin.create_topics(&wanted, &options))?;
        let failed: Vec<_> = results.into_iter().filter_map(|r| r.err()).collect();
        if failed.is_empty() {
            return Ok(());
        }
        // A deleted topic of the same name may still be going away.
        if Instant::now() > deadline
            || failed
                .iter()
                .any(|(_, code)| *code != RDKafkaErrorCode::TopicAlreadyExists)
        {
            return Err(format!("cannot create topics: {failed:?}").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Writes records `range` of `input` to the input topic, acknowledged.
fn produce(bootstrap: &str, input: &Input, range: std::ops::Range<usize>) -> Result<()> {
    let producer: BaseProducer = client(bootstrap).set("linger.ms", "20").create()?;
    for i in range {
        let (key, value, _) = input.get(i);
        send(
            &producer,
            BaseRecord::to(INPUT)
                .key(key.as_slice())
                .payload(value.as_slice()),
        )?;
        if i % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(())
}

/// Starts `tool` on `topology`.
fn spawn(
    bench: &Bench<'_>,
    tool: Tool,
    topology: &str,
    guarantee: Guarantee,
    label: &str,
) -> Result<(Stopping, PathBuf, PathBuf)> {
    let state = bench.engine.log_path(&format!("state-{label}"));
    let _ = std::fs::remove_dir_all(&state);
    let log = bench.engine.log_path(&format!("run-{label}.log"));
    let process = match tool {
        Tool::Engine => {
            let state_arg = state.to_string_lossy().into_owned();
            let mut args = vec![
                topology,
                "--processing-guarantee",
                guarantee.name(),
                "--state-dir",
                &state_arg,
            ];
            for property in bench.engine_kafka {
                args.extend(["--kafka", property]);
            }
            let name = log
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("run.log");
            bench
                .engine
                .run_on(&args, &bench.bootstrap, bench.registry.as_deref(), name)?
        }
        Tool::Streams => {
            return spawn_streams(
                bench,
                topology,
                guarantee,
                &format!("kstreams-{label}"),
                label,
            );
        }
    };
    Ok((process, state, log))
}

/// Starts the Kafka Streams application on `topology` as `application_id`.
fn spawn_streams(
    bench: &Bench<'_>,
    topology: &str,
    guarantee: Guarantee,
    application_id: &str,
    label: &str,
) -> Result<(Stopping, PathBuf, PathBuf)> {
    let state = bench.engine.log_path(&format!("state-{label}"));
    let _ = std::fs::remove_dir_all(&state);
    let log = bench.engine.log_path(&format!("run-{label}.log"));
    let registry = bench
        .registry
        .as_deref()
        .ok_or("Kafka Streams needs the schema registry of `engine dev`")?;
    let out = std::fs::File::create(&log)?;
    let child = Command::new("java")
        .args([
            "-cp",
            &bench.streams.classpath,
            STREAMS_MAIN,
            "--topology",
            topology,
            "--bootstrap-servers",
            &bench.bootstrap,
            "--schema-registry-url",
            registry,
            "--application-id",
            application_id,
            "--state-dir",
            &state.to_string_lossy(),
            "--processing-guarantee",
            guarantee.name(),
        ])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .map_err(|e| format!("java (the Kafka Streams application): {e}"))?;
    Ok((Stopping::new("Kafka Streams", child), state, log))
}

fn output_of(topology: &str) -> &'static str {
    if topology == "ticket-pipeline" {
        PIPELINE_OUTPUT
    } else {
        COUNTS_OUTPUT
    }
}

/// One tool on one topology under one guarantee: warm-up, then a timed batch.
fn throughput_run(
    bench: &Bench<'_>,
    tool: Tool,
    topology: &str,
    guarantee: Guarantee,
    input: &Input,
    label: &str,
) -> Result<Run> {
    let output = output_of(topology);
    fresh_topics(
        &bench.bootstrap,
        &[
            INPUT,
            output,
            "bench.tickets.dlq",
            "bench.tickets.counts.dlq",
        ],
    )?;
    let counts = topology == "ticket-counts";
    let want = |records: usize| -> i64 {
        if counts {
            records as i64
        } else {
            (0..records).filter(|i| input.get(*i).2).count() as i64
        }
    };
    // The warm-up input waits before the process starts: its first output times start-up.
    produce(&bench.bootstrap, input, 0..WARM_UP)?;
    let mut watcher = Watcher::new(&bench.bootstrap, output, counts)?;
    let spawned = Instant::now();
    let (mut process, state, log) = spawn(bench, tool, topology, guarantee, label)?;
    let failed =
        |e: Box<dyn std::error::Error + Send + Sync>| -> Box<dyn std::error::Error + Send + Sync> {
            format!("{} on {topology}: {e}; see {}", tool.label(), log.display()).into()
        };
    watcher
        .wait_for(1, &mut exited(&mut process))
        .map_err(failed)?;
    let startup_ms = spawned.elapsed().as_secs_f64() * 1000.0;
    watcher
        .wait_for(want(WARM_UP), &mut exited(&mut process))
        .map_err(failed)?;
    process.pause()?;
    produce(&bench.bootstrap, input, WARM_UP..WARM_UP + RECORDS)?;
    let before = cpu_now(bench, &process);
    process.resume()?;
    let started = Instant::now();
    watcher
        .wait_for(want(WARM_UP + RECORDS), &mut exited(&mut process))
        .map_err(failed)?;
    let secs = started.elapsed().as_secs_f64();
    let after = cpu_now(bench, &process);
    let run = Run {
        rate: RECORDS as f64 / secs.max(1e-9),
        peak_rss: process.peak_rss_bytes().ok().map(|b| b as f64),
        startup_ms: Some(startup_ms),
        cpu: Cpu {
            tool: after.tool - before.tool,
            broker: after.broker - before.broker,
            harness: after.harness - before.harness,
            secs,
        },
    };
    drop(watcher);
    process.stop();
    let _ = std::fs::remove_dir_all(&state);
    Ok(run)
}

/// The floor: a plain rdkafka loop copying the same input, all of it written first.
fn floor_run(bench: &Bench<'_>, input: &Input, topology: &str) -> Result<f64> {
    fresh_topics(&bench.bootstrap, &[INPUT, FLOOR_OUTPUT])?;
    let consumer: BaseConsumer = client(&bench.bootstrap)
        .set("group.id", format!("engine-bench-floor-{topology}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    let producer: BaseProducer = client(&bench.bootstrap).create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment.add_partition_offset(INPUT, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut watcher = Watcher::new(&bench.bootstrap, FLOOR_OUTPUT, false)?;
    // As the tools are: a warm-up copied untimed, then the loop holds still (its
    // partitions paused, so nothing is prefetched) while the timed input is written,
    // and the time runs from its resumption until the copies are all readable.
    produce(&bench.bootstrap, input, 0..WARM_UP)?;
    copy(&consumer, &producer, WARM_UP)?;
    watcher.wait_for(WARM_UP as i64, &mut || None)?;
    consumer.pause(&consumer.assignment()?)?;
    produce(&bench.bootstrap, input, WARM_UP..WARM_UP + RECORDS)?;
    let started = Instant::now();
    consumer.resume(&consumer.assignment()?)?;
    copy(&consumer, &producer, RECORDS)?;
    watcher.wait_for((WARM_UP + RECORDS) as i64, &mut || None)?;
    Ok(RECORDS as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// Open-loop latency of one process per tool and guarantee, rate after rate.
fn latency_run(
    bench: &Bench<'_>,
    tool: Tool,
    guarantee: Guarantee,
    input: &Input,
    rates: &[f64],
) -> Result<Vec<LatencyPoint>> {
    fresh_topics(
        &bench.bootstrap,
        &[INPUT, PIPELINE_OUTPUT, "bench.tickets.dlq"],
    )?;
    produce(&bench.bootstrap, input, 0..WARM_UP)?;
    let label = format!(
        "latency-{}-{}",
        tool.label().replace(' ', "-").to_lowercase(),
        guarantee.name()
    );
    let mut watcher = Watcher::new(&bench.bootstrap, PIPELINE_OUTPUT, false)?;
    let (mut process, state, log) = spawn(bench, tool, "ticket-pipeline", guarantee, &label)?;
    let warm = (0..WARM_UP).filter(|i| input.get(*i).2).count() as i64;
    watcher
        .wait_for(warm, &mut exited(&mut process))
        .map_err(|e| {
            format!(
                "{} latency warm-up: {e}; see {}",
                tool.label(),
                log.display()
            )
        })?;
    drop(watcher);
    let mut next = WARM_UP;
    // The process's first seconds under load (its JIT, caches and connections, the
    // broker's for the new topics) are not its steady state: offered, not measured.
    offer(bench, input, &mut next, FIXED_RATES[0], WARM_UP_OFFER)?;
    let mut points = Vec::new();
    for &rate in rates {
        let before = cpu_now(bench, &process);
        let started = Instant::now();
        // Consecutive windows at this rate; each percentile is their median.
        let mut windows = Vec::new();
        for _ in 0..LATENCY_WINDOWS {
            let window = offer(
                bench,
                input,
                &mut next,
                rate,
                Duration::from_secs(LATENCY_SECS),
            )?;
            let lost = window.expected - window.samples.len();
            let overloaded = lost as f64 > OVERLOAD * window.expected as f64;
            windows.push(window);
            if overloaded {
                break;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let after = cpu_now(bench, &process);
        if let Some(status) = process.exited() {
            return Err(format!(
                "{} exited during the latency run ({status}); see {}",
                tool.label(),
                log.display()
            )
            .into());
        }
        let each: Vec<_> = windows
            .iter()
            .map(|w| percentiles(&w.samples, w.expected))
            .collect();
        let median = |pick: fn(&Percentiles) -> Option<f64>| {
            let m = Spread::of(
                each.iter()
                    .map(|p| pick(p).unwrap_or(f64::INFINITY))
                    .collect(),
            )
            .median;
            m.is_finite().then_some(m)
        };
        let (p50, p99, p999, max) = (
            median(|p| p.0),
            median(|p| p.1),
            median(|p| p.2),
            median(|p| p.3),
        );
        let p99_windows: Vec<f64> = each.iter().map(|p| p.1.unwrap_or(f64::INFINITY)).collect();
        let expected: usize = windows.iter().map(|w| w.expected).sum();
        let missing: usize = windows.iter().map(|w| w.expected - w.samples.len()).sum();
        let achieved = windows.iter().map(|w| w.achieved).sum::<f64>() / windows.len() as f64;
        eprintln!(
            "engine-bench: latency, {} under {} at {rate:.0} records/s, median of {} windows: p50 {}, p99 {}, p99.9 {}, max {}; {missing} of {expected} outputs never arrived",
            tool.label(),
            guarantee.name(),
            windows.len(),
            ms(p50),
            ms(p99),
            ms(p999),
            ms(max),
        );
        points.push(LatencyPoint {
            tool: tool.label(),
            guarantee: guarantee.name(),
            offered: rate,
            p50,
            p99,
            p999,
            max,
            p99_windows,
            expected,
            missing,
            achieved,
            tool_cpu: (after.tool - before.tool) / secs,
            broker_cpu: (after.broker - before.broker) / secs,
            harness_cpu: (after.harness - before.harness) / secs,
        });
        if missing as f64 > OVERLOAD * expected as f64 {
            eprintln!(
                "engine-bench: {} overloaded at {rate:.0} records/s; higher rates not offered",
                tool.label()
            );
            break;
        }
    }
    process.stop();
    let _ = std::fs::remove_dir_all(&state);
    Ok(points)
}

/// The outputs of one offered rate.
struct Offered {
    /// Latencies in nanoseconds of the outputs that arrived, one per input.
    samples: Vec<u64>,
    expected: usize,
    achieved: f64,
}

/// Offers `rate` records/s for `duration`, from input record `next` on; returns
/// the latency of every output matched to its input by sequence number.
fn offer(
    bench: &Bench<'_>,
    input: &Input,
    next: &mut usize,
    rate: f64,
    duration: Duration,
) -> Result<Offered> {
    let first = *next as u64;
    let consumer: BaseConsumer = client(&bench.bootstrap)
        .set("group.id", "engine-bench-latency")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        // From the output's current end: earlier rates' outputs are not this rate's.
        let (_, high) = consumer.fetch_watermarks(PIPELINE_OUTPUT, p, Duration::from_secs(10))?;
        tpl.add_partition_offset(PIPELINE_OUTPUT, p, Offset::Offset(high))?;
    }
    consumer.assign(&tpl)?;
    let expected: Arc<std::sync::Mutex<Option<HashSet<u64>>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let expected = expected.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            // seq -> receive time (ns since the epoch).
            let mut received: BTreeMap<u64, u64> = BTreeMap::new();
            let mut give_up: Option<Instant> = None;
            loop {
                if done.load(Ordering::Acquire) {
                    let at = *give_up.get_or_insert_with(|| Instant::now() + DRAIN);
                    let all = expected
                        .lock()
                        .ok()
                        .and_then(|e| {
                            e.as_ref()
                                .map(|e| e.iter().all(|s| received.contains_key(s)))
                        })
                        .unwrap_or(false);
                    if all || Instant::now() > at {
                        break;
                    }
                }
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) else {
                    continue;
                };
                let now = now_ns();
                if let Some(seq) = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == SEQ_HEADER))
                    .and_then(|h| h.value)
                    .and_then(|v| <[u8; 8]>::try_from(v).ok())
                    .map(u64::from_be_bytes)
                    && seq >= first
                {
                    received.entry(seq).or_insert(now);
                }
            }
            received
        })
    };
    // linger.ms=1: each record's latency includes at most 1 ms of the load generator's
    // own batching, while the broker gets batches, not a request per record (with 0 the
    // broker spent a whole core on requests at 10,000 records/s, and both tools' p50
    // passed 200 ms there).
    let producer: BaseProducer = client(&bench.bootstrap).set("linger.ms", "1").create()?;
    let start = Instant::now();
    let mut sent = 0usize;
    let mut kept = HashSet::new();
    let mut stamps = HashMap::new();
    while start.elapsed() < duration {
        let due = (start.elapsed().as_secs_f64() * rate) as usize;
        while sent < due {
            let seq = *next as u64;
            let (key, value, pending) = input.get(*next);
            let stamp = now_ns();
            let seq_bytes = seq.to_be_bytes();
            let headers = OwnedHeaders::new().insert(Header {
                key: SEQ_HEADER,
                value: Some(&seq_bytes[..]),
            });
            send(
                &producer,
                BaseRecord::to(INPUT)
                    .key(key.as_slice())
                    .payload(value.as_slice())
                    .headers(headers),
            )?;
            if *pending {
                kept.insert(seq);
                stamps.insert(seq, stamp);
            }
            *next += 1;
            sent += 1;
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_micros(200));
    }
    let achieved = sent as f64 / start.elapsed().as_secs_f64();
    producer.flush(Duration::from_secs(30))?;
    let want = kept.len();
    if let Ok(mut e) = expected.lock() {
        *e = Some(kept);
    }
    done.store(true, Ordering::Release);
    let received = reader
        .join()
        .map_err(|_| "the latency reader thread panicked")?;
    let samples = received
        .iter()
        .filter_map(|(seq, at)| stamps.get(seq).map(|sent| at.saturating_sub(*sent)))
        .collect();
    Ok(Offered {
        samples,
        expected: want,
        achieved,
    })
}

/// p50, p99, p99.9 and max in ms, counting the `expected - samples.len()` outputs that
/// never arrived as infinitely late (`None`).
/// p50, p99, p99.9 and max in milliseconds; `None` among outputs that never arrived.
type Percentiles = (Option<f64>, Option<f64>, Option<f64>, Option<f64>);

fn percentiles(samples: &[u64], expected: usize) -> Percentiles {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let n = expected.max(sorted.len());
    let at = |q: f64| -> Option<f64> {
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        sorted.get(rank).map(|ns| *ns as f64 / 1e6)
    };
    (at(0.5), at(0.99), at(0.999), at(1.0))
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// CPU seconds so far of the tool, the broker (with its JVM) and the harness.
fn cpu_now(bench: &Bench<'_>, process: &Stopping) -> Cpu {
    Cpu {
        tool: tree_cpu_secs(process.pid()),
        broker: tree_cpu_secs(bench.broker_pid),
        harness: own_cpu_secs(std::process::id()),
        secs: 0.0,
    }
}

/// User and system CPU seconds of `pid` and its descendants.
fn tree_cpu_secs(pid: u32) -> f64 {
    let children: f64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .map(tree_cpu_secs)
        .sum();
    own_cpu_secs(pid) + children
}

/// User and system CPU seconds of `pid`'s threads, not its children.
fn own_cpu_secs(pid: u32) -> f64 {
    // Linux's USER_HZ is 100 on every architecture the engine builds for.
    const TICKS: f64 = 100.0;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // After the command: state is field 3; utime 14 and stime 15 (1-based).
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / TICKS)
        })
        .unwrap_or(0.0)
}

/// For [`Watcher::wait_for`]: whether `process` exited, and how.
fn exited(process: &mut Stopping) -> impl FnMut() -> Option<String> + '_ {
    move || {
        process
            .exited()
            .map(|status| format!("the process exited ({status})"))
    }
}

/// Reads an output from the start with `isolation.level=read_committed`: how many
/// records came out, or (for counts) the sum of every key's latest count, which is how
/// many inputs are counted however many updates the record caches coalesced.
struct Watcher {
    consumer: BaseConsumer,
    topic: String,
    counts: Option<HashMap<Vec<u8>, i64>>,
    total: i64,
}

impl Watcher {
    fn new(bootstrap: &str, topic: &str, counts: bool) -> Result<Self> {
        let consumer: BaseConsumer = client(bootstrap)
            .set("group.id", "engine-bench-watcher")
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

    /// Reads until the total reaches `want`; `exited` says why the writer is gone.
    fn wait_for(&mut self, want: i64, exited: &mut dyn FnMut() -> Option<String>) -> Result<()> {
        let mut progress = Instant::now();
        while self.total < want {
            match self.consumer.poll(Duration::from_millis(20)) {
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
                    if let Some(why) = exited() {
                        return Err(why.into());
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

/// What the restore runs measured, per tool: records per second of each round.
struct Restores {
    records: u64,
    log_bytes: u64,
    rates: HashMap<Tool, Vec<f64>>,
}

/// Writes one changelog of at least `restore_bytes` for each tool's `ticket-counts`
/// store (the same keys and counts, in the format both keep: UTF-8 plan id, 8-byte
/// big-endian count), then starts each tool with an empty state directory,
/// once per round, alternating, and times the restore from the first
/// partition's start to the last one's end.
fn restore_runs(bench: &Bench<'_>, input: &Input) -> Result<Restores> {
    let streams_changelog = format!("{STREAMS_RESTORE_APP}-tickets-per-plan-changelog");
    fresh_topics(
        &bench.bootstrap,
        &[INPUT, COUNTS_OUTPUT, "bench.tickets.counts.dlq"],
    )?;
    create_compacted(&bench.bootstrap, &[ENGINE_CHANGELOG, &streams_changelog])?;
    let mut records = 0;
    for changelog in [ENGINE_CHANGELOG, streams_changelog.as_str()] {
        let started = Instant::now();
        records = write_changelog(&bench.bootstrap, changelog, bench.options.restore_bytes)?;
        eprintln!(
            "engine-bench: restore: wrote {records} records to {changelog} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let log_bytes = log_size(bench, ENGINE_CHANGELOG);
    let mut rates: HashMap<Tool, Vec<f64>> = HashMap::new();
    let mut trigger = 0;
    for round in 1..=bench.options.rounds {
        for tool in TOOLS {
            let label = format!(
                "restore-{}-{round}",
                tool.label().replace(' ', "-").to_lowercase()
            );
            let rate = restore_run(bench, tool, input, &mut trigger, records, &label)?;
            eprintln!(
                "engine-bench: restore of {records} records, {} (round {round}): {rate:.0} records/s",
                tool.label()
            );
            rates.entry(tool).or_default().push(rate);
        }
    }
    Ok(Restores {
        records,
        log_bytes,
        rates,
    })
}

/// Creates `topics` compacted, as changelogs are, with `PARTITIONS` partitions.
fn create_compacted(bootstrap: &str, topics: &[&str]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client(bootstrap).create()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let wanted: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1))
                .set("cleanup.policy", "compact")
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in runtime.block_on(admin.create_topics(&wanted, &options))? {
        if let Err((topic, code)) = result {
            return Err(format!("cannot create {topic}: {code}").into());
        }
    }
    Ok(())
}

/// Writes count updates of `RESTORE_KEYS` plan ids to `changelog` until their keys and
/// values add up to `limit` bytes; returns how many records.
fn write_changelog(bootstrap: &str, changelog: &str, limit: u64) -> Result<u64> {
    let producer: BaseProducer = client(bootstrap)
        .set("linger.ms", "50")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let (mut bytes, mut records) = (0u64, 0u64);
    let mut i = 0usize;
    while bytes < limit {
        let key = format!("plan-{:031}", i % RESTORE_KEYS);
        let count = (i / RESTORE_KEYS + 1) as i64;
        let value = count.to_be_bytes();
        send(
            &producer,
            BaseRecord::<[u8], [u8]>::to(changelog)
                .key(key.as_bytes())
                .payload(&value[..])
                .partition((i % PARTITIONS as usize) as i32),
        )?;
        bytes += (key.len() + value.len()) as u64;
        records += 1;
        i += 1;
        if i.is_multiple_of(10_000) {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(300))?;
    Ok(records)
}

/// Bytes of `topic`'s log on the broker (its partition directories), 0 if unknown.
fn log_size(bench: &Bench<'_>, topic: &str) -> u64 {
    // The broker's data directory is a temporary directory of scripts/kafka's; find the
    // partition directories through the broker's open files.
    let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", broker_java_pid(bench.broker_pid)))
    else {
        return 0;
    };
    let mut dirs = HashSet::new();
    for fd in fds.filter_map(|f| f.ok()) {
        if let Ok(target) = std::fs::read_link(fd.path())
            && let Some(parent) = target.parent()
            && parent
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{topic}-")))
        {
            dirs.insert(parent.to_path_buf());
        }
    }
    dirs.iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten())
        .filter_map(|f| f.ok())
        .filter(|f| f.file_name().to_string_lossy().ends_with(".log"))
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// The broker's JVM: the descendant of `scripts/kafka` running `kafka.Kafka`.
fn broker_java_pid(script: u32) -> u32 {
    let children = |pid: u32| -> Vec<u32> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .filter_map(|t| t.ok())
            .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
            .flat_map(|c| {
                c.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let mut queue = vec![script];
    while let Some(pid) = queue.pop() {
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.contains("kafka.Kafka") {
            return pid;
        }
        queue.extend(children(pid));
    }
    script
}

/// One restore: `tool` on `ticket-counts` with an empty state directory; records per
/// second from the first partition's restore start to the last one's end.
fn restore_run(
    bench: &Bench<'_>,
    tool: Tool,
    input: &Input,
    trigger: &mut usize,
    records: u64,
    label: &str,
) -> Result<f64> {
    let (mut process, state, log) = match tool {
        Tool::Engine => spawn(bench, tool, "ticket-counts", Guarantee::AtLeastOnce, label)?,
        Tool::Streams => spawn_streams(
            bench,
            "ticket-counts",
            Guarantee::AtLeastOnce,
            STREAMS_RESTORE_APP,
            label,
        )?,
    };
    // The engine opens a task (and so restores it) at its partition's first record.
    produce(bench.bootstrap.as_str(), input, *trigger..*trigger + 200)?;
    *trigger += 200;
    let deadline = Instant::now() + Duration::from_secs(600);
    let span_ms = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let span = match tool {
            Tool::Engine => {
                let lines = super::stateful::restore_lines(&log)?;
                let full: Vec<_> = lines.iter().filter(|l| l.records > 0).collect();
                (full.len() >= PARTITIONS as usize).then(|| {
                    let start = full
                        .iter()
                        .map(|l| l.logged_at_ms - l.elapsed_ms as f64)
                        .fold(f64::INFINITY, f64::min);
                    let end = full.iter().map(|l| l.logged_at_ms).fold(0.0, f64::max);
                    (end - start, full.iter().map(|l| l.records).sum::<u64>())
                })
            }
            Tool::Streams => {
                let at = |l: &str| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix("at_ms="))
                        .and_then(|v| v.parse::<f64>().ok())
                };
                let starts: Vec<f64> = text
                    .lines()
                    .filter(|l| l.starts_with("kstreams: restore-start"))
                    .filter_map(at)
                    .collect();
                let ends: Vec<&str> = text
                    .lines()
                    .filter(|l| l.starts_with("kstreams: restore-end"))
                    .collect();
                (ends.len() >= PARTITIONS as usize).then(|| {
                    let start = starts.iter().copied().fold(f64::INFINITY, f64::min);
                    let end = ends.iter().filter_map(|l| at(l)).fold(0.0, f64::max);
                    let restored = ends
                        .iter()
                        .filter_map(|l| {
                            l.split_whitespace()
                                .find_map(|w| w.strip_prefix("records="))
                                .and_then(|v| v.parse::<u64>().ok())
                        })
                        .sum::<u64>();
                    (end - start, restored)
                })
            }
        };
        if let Some((span, restored)) = span {
            if restored < records {
                return Err(format!(
                    "{} restored {restored} of the changelog's {records} records; see {}",
                    tool.label(),
                    log.display()
                )
                .into());
            }
            break span;
        }
        if let Some(status) = process.exited() {
            return Err(format!(
                "{} exited during its restore ({status}); see {}",
                tool.label(),
                log.display()
            )
            .into());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not restore its store within 600 s; see {}",
                tool.label(),
                log.display()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    process.stop();
    let _ = std::fs::remove_dir_all(&state);
    Ok(records as f64 / (span_ms / 1000.0).max(1e-9))
}

fn restore_figures(restores: &Restores, figures: &mut Vec<Figure>, bytes: u64) {
    let engine = &restores.rates[&Tool::Engine];
    let streams = &restores.rates[&Tool::Streams];
    let streams_spread = Spread::of(streams.clone());
    let ratios = Spread::of(engine.iter().zip(streams).map(|(a, b)| a / b).collect());
    let size = format!(
        "{} records, {:.2} GiB of keys and values, {:.2} GiB of log on the broker, {RESTORE_KEYS} keys",
        restores.records,
        bytes as f64 / (1u64 << 30) as f64,
        restores.log_bytes as f64 / (1u64 << 30) as f64
    );
    figures.push(
        Figure::from_runs(
            GROUP,
            "ticket-counts: restore, Kafka Streams",
            &streams_spread,
            "records/s",
            None,
            None,
            None,
        )
        .and_note(&size),
    );
    figures.push(
        Figure::from_runs(
            GROUP,
            "ticket-counts: restore, engine",
            &Spread::of(engine.clone()),
            "records/s",
            Some(("Kafka Streams".into(), &streams_spread)),
            Some(&ratios),
            Some(Target::RatioAtLeast(2.0)),
        )
        .and_note(&size),
    );
    figures.push(Figure::from_runs(
        GROUP,
        "ticket-counts: restore, engine (absolute)",
        &Spread::of(engine.clone()),
        "records/s",
        None,
        None,
        Some(Target::AtLeast(RESTORE_TARGET)),
    ));
}
