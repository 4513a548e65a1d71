//! The figures of a run and how they are written: `BENCHMARKS.md` (for people) and
//! `benchmarks.json` (the same data, for tools).

use std::fmt::Write as _;

use serde::Serialize;

use super::machine::Machine;

/// Which way a target points.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// `ratio` (figure / reference) must be at least this.
    RatioAtLeast(f64),
    /// `ratio` (figure / reference) must be at most this (latency, memory, start-up).
    RatioAtMost(f64),
    /// The figure must be below this, in the figure's unit.
    Below(f64),
    /// The figure must be at least this, in the figure's unit.
    AtLeast(f64),
}

/// Whether a figure meets its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Met,
    Missed,
    /// Measured, with no target given.
    Reported,
    /// The target is met by the median, but the runs spread wider than
    /// [`MAX_SPREAD`] of it: not judged.
    Unsteady,
    NotMeasured,
}

/// One measured (or deliberately unmeasured) figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Group in the table: codec, pipeline, latency, memory, start-up, state, restore.
    pub group: &'static str,
    pub name: String,
    pub value: Option<f64>,
    pub unit: &'static str,
    /// What the figure is compared with, and its value in the same unit.
    pub reference: Option<String>,
    pub reference_value: Option<f64>,
    /// `value / reference_value`.
    pub ratio: Option<f64>,
    pub target: Option<Target>,
    pub status: Status,
    /// Why it is not measured, or what qualifies it.
    pub note: Option<String>,
}

impl Figure {
    /// A figure; the ratio and status follow from the reference and target.
    pub fn new(
        group: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        reference: Option<(String, f64)>,
        target: Option<Target>,
    ) -> Self {
        let ratio = reference
            .as_ref()
            .filter(|(_, r)| *r > 0.0)
            .map(|(_, r)| value / r);
        let (reference, reference_value) = match reference {
            Some((name, v)) => (Some(name), Some(v)),
            None => (None, None),
        };
        Self {
            group,
            name: name.into(),
            value: Some(value),
            unit,
            reference,
            reference_value,
            ratio,
            target,
            status: judge(target, value, ratio),
            note: None,
        }
    }

    /// A figure measured in several interleaved runs: `value` and `reference` are the
    /// medians, the ratio is the median of the runs' own ratios (each run's figure over
    /// the reference measured next to it), and a target the median meets is not judged
    /// when the runs spread wider than [`MAX_SPREAD`].
    pub fn from_runs(
        group: &'static str,
        name: impl Into<String>,
        runs: &Spread,
        unit: &'static str,
        reference: Option<(String, &Spread)>,
        ratios: Option<&Spread>,
        target: Option<Target>,
    ) -> Self {
        let mut figure = Self::new(
            group,
            name,
            runs.median,
            unit,
            reference.as_ref().map(|(n, r)| (n.clone(), r.median)),
            None,
        );
        figure.target = target;
        if let Some(ratios) = ratios {
            figure.ratio = Some(ratios.median);
        }
        figure.status = judge(target, runs.median, figure.ratio);
        let spreads = std::iter::once(runs)
            .chain(reference.as_ref().map(|(_, r)| *r))
            .chain(ratios);
        let widest = spreads.map(Spread::relative).fold(0.0, f64::max);
        let mut note = format!(
            "median of {} interleaved runs: {}",
            runs.runs,
            runs.range(unit)
        );
        if let Some(ratios) = ratios {
            let _ = write!(note, "; ratio {}", ratios.range("x"));
        }
        if figure.status == Status::Met && widest > MAX_SPREAD {
            figure.status = Status::Unsteady;
            let _ = write!(
                note,
                "; runs spread {:.0}% of the median, over {:.0}%",
                widest * 100.0,
                MAX_SPREAD * 100.0
            );
        }
        figure.note = Some(note);
        figure
    }

    /// A figure that could not be measured, and why; never a made-up number.
    pub fn not_measured(
        group: &'static str,
        name: impl Into<String>,
        why: impl Into<String>,
    ) -> Self {
        Self {
            group,
            name: name.into(),
            value: None,
            unit: "",
            reference: None,
            reference_value: None,
            ratio: None,
            target: None,
            status: Status::NotMeasured,
            note: Some(why.into()),
        }
    }

    /// Adds a qualifying note.
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    /// Adds to the note.
    pub fn and_note(mut self, more: impl AsRef<str>) -> Self {
        self.note = Some(match self.note.take() {
            Some(note) => format!("{note}; {}", more.as_ref()),
            None => more.as_ref().to_string(),
        });
        self
    }
}

/// One table row.
fn row(f: &Figure) -> String {
    let measured = match f.value {
        Some(v) => with_unit(v, f.unit),
        None => "not measured".into(),
    };
    let reference = match (&f.reference, f.reference_value) {
        (Some(name), Some(v)) => format!("{name}: {}", with_unit(v, f.unit)),
        (Some(name), None) => name.clone(),
        _ => "—".into(),
    };
    let ratio = f.ratio.map_or("—".into(), |r| format!("{r:.2}x"));
    let target = match f.target {
        Some(Target::RatioAtLeast(min)) => format!("≥ {min}x"),
        Some(Target::RatioAtMost(max)) => format!("≤ {max}x"),
        Some(Target::Below(max)) => format!("< {}", with_unit(max, f.unit)),
        Some(Target::AtLeast(min)) => format!("≥ {}", with_unit(min, f.unit)),
        None => "—".into(),
    };
    let status = match f.status {
        Status::Met => "met".to_string(),
        Status::Missed => "**missed**".to_string(),
        Status::Reported => "reported (no target)".to_string(),
        Status::Unsteady => "**not judged**".to_string(),
        Status::NotMeasured => "not measured".to_string(),
    };
    let status = match (&f.note, f.status) {
        (Some(note), Status::NotMeasured) => format!("not measured: {note}"),
        (Some(note), _) => format!("{status} ({note})"),
        (None, _) => status,
    };
    format!(
        "| {} | {} | {measured} | {reference} | {ratio} | {target} | {status} |",
        f.group, f.name
    )
}

/// Whether `value` (or its `ratio` to the reference) meets `target`.
fn judge(target: Option<Target>, value: f64, ratio: Option<f64>) -> Status {
    let met = match target {
        None => return Status::Reported,
        Some(Target::RatioAtLeast(min)) => ratio.is_some_and(|r| r >= min),
        Some(Target::RatioAtMost(max)) => ratio.is_some_and(|r| r <= max),
        Some(Target::Below(max)) => value < max,
        Some(Target::AtLeast(min)) => value >= min,
    };
    if met { Status::Met } else { Status::Missed }
}

/// Runs whose (max - min) / median is wider than this do not judge a target.
pub const MAX_SPREAD: f64 = 0.2;

/// The median of a figure's runs, with their minimum and maximum.
#[derive(Debug, Clone)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Spread {
    /// Of `values`; the median of an even count is the upper middle one, a measured run.
    pub fn of(mut values: Vec<f64>) -> Spread {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        Spread {
            median: if n == 0 { f64::NAN } else { values[n / 2] },
            min: values.first().copied().unwrap_or(f64::NAN),
            max: values.last().copied().unwrap_or(f64::NAN),
            runs: n,
        }
    }

    /// (max - min) / median; 0 for one run, infinite when the median is 0 or infinite.
    pub fn relative(&self) -> f64 {
        if self.runs < 2 || self.max == self.min {
            0.0
        } else if self.median.is_finite() && self.median > 0.0 {
            (self.max - self.min) / self.median
        } else {
            f64::INFINITY
        }
    }

    /// `min A, max B` in `unit`.
    pub fn range(&self, unit: &str) -> String {
        let show = |v: f64| {
            if unit == "x" {
                format!("{v:.2}x")
            } else {
                with_unit(v, unit)
            }
        };
        format!("min {}, max {}", show(self.min), show(self.max))
    }
}

/// Everything one run produced.
#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    /// How the run was set up (records, partitions, value format, durations...).
    pub setup: Vec<(String, String)>,
    pub figures: Vec<Figure>,
    /// The latency chart's file name, beside `BENCHMARKS.md`, if one was drawn.
    pub chart: Option<String>,
}

fn number(v: f64, unit: &str) -> String {
    if v.is_infinite() {
        // A latency percentile that falls among outputs that never arrived.
        return "∞".into();
    }
    let digits = if v.abs() >= 1000.0 || unit == "records/s" {
        0
    } else if v.abs() >= 10.0 {
        1
    } else {
        2
    };
    let text = format!("{v:.digits$}");
    // Thousands separators for large counts, so rates read at a glance.
    let (int, frac) = text
        .split_once('.')
        .map_or((text.as_str(), ""), |(i, f)| (i, f));
    let (sign, int) = int.strip_prefix('-').map_or(("", int), |i| ("-", i));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if frac.is_empty() {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}.{frac}")
    }
}

fn with_unit(v: f64, unit: &str) -> String {
    if unit.is_empty() {
        number(v, unit)
    } else {
        format!("{} {unit}", number(v, unit))
    }
}

impl Report {
    /// `BENCHMARKS.md`.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(s, "# Benchmarks\n");
        let _ = writeln!(
            s,
            "Generated by `scripts/bench` (the `engine-bench` binary); do not edit by hand. \
             The same data is in `benchmarks.json`.\n"
        );
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(s, "| CPU | {} |", m.cpu_model);
        let _ = writeln!(s, "| cores | {} |", m.cores);
        let _ = writeln!(s, "| RAM | {:.1} GiB |", m.ram_gib);
        let _ = writeln!(s, "| OS | {} |", m.os);
        let _ = writeln!(s, "| date | {} |", m.date_utc);
        let _ = writeln!(s, "| git commit | `{}` |", m.git_commit);
        let _ = writeln!(s, "| engine | {} |", m.engine_version);
        for (k, v) in &self.setup {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        // Real Kafka first (what users run), then the codec, then the quicker figures on
        // librdkafka's mock cluster.
        const SECTIONS: [&str; 3] = [
            "On a real Apache Kafka broker: the engine beside Kafka Streams and the rdkafka floor",
            "Codec (no broker)",
            "On librdkafka's mock cluster (`engine dev`): quicker, a second table",
        ];
        let section = |group: &str| match group {
            "exactly-once" | "rebalance" => 0,
            g if g.starts_with("side") => 0,
            "codec" => 1,
            _ => 2,
        };
        for (i, title) in SECTIONS.iter().enumerate() {
            let figures: Vec<&Figure> = self
                .figures
                .iter()
                .filter(|f| section(f.group) == i)
                .collect();
            if figures.is_empty() {
                continue;
            }
            let _ = writeln!(s, "\n## {title}");
            let _ = writeln!(
                s,
                "\n| group | figure | measured | reference | ratio | target | status |\n\
                 |---|---|---:|---|---:|---|---|"
            );
            for f in figures {
                let _ = writeln!(s, "{}", row(f));
            }
        }
        if let Some(chart) = &self.chart {
            let _ = writeln!(s, "\n![latency percentiles against offered rate]({chart})");
        }
        s.push_str(METHOD);
        s
    }

    /// `benchmarks.json`.
    pub fn json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }
}

const METHOD: &str = "
## How these are measured

- **Side by side, real broker** (src/bin/engine_bench/side_by_side.rs): one Apache Kafka
  broker from `scripts/kafka` (KRaft, one node, on the same 2 cores as everything else),
  every topic deleted and created afresh before each run (6 partitions). Three tools do
  the same work on the same input: the engine (`engine run`, its defaults), Kafka Streams
  (`bench/kafka-streams`, the same two topologies in its DSL, its defaults but
  `commit.interval.ms` the engine's (1000 under at_least_once, 25 under
  exactly_once_v2), JVM defaults, one stream thread) and the rdkafka floor (a
  consume-then-produce copy loop in the harness, librdkafka defaults). Each run warms up (100,000 records, so the JVM has compiled Kafka Streams' hot
  paths), then the process is frozen (SIGSTOP; the
  floor pauses its partitions) while 200,000 records are written, and the time runs from
  its thaw until a `read_committed` consumer in the harness has seen every output (for
  `ticket-counts`, until the latest counts add up to the input). Rounds alternate the tools
  and guarantees; each figure is the median of the rounds, each ratio the median of the
  rounds' own ratios, with min and max; a target the median meets is **not judged** when
  the rounds spread wider than 20% of the median. Peak RSS is `VmHWM` of the process
  (the JVM's at its default heap). Start-up is from spawning the process, its input
  waiting, to its first output on the broker. CPU is each process's user+system time over
  the timed window (no process is pinned: pinning the broker and a tool to one core each
  would cap both on 2 cores).
- **Latency, real broker**: one process per tool and guarantee; after a 5 s unmeasured
  warm-up at 1,000 records/s the harness offers fixed rates open-loop (it sends on
  schedule whatever comes out; `linger.ms=1`, so at most 1 ms of its own batching is
  counted, where 0 made the broker spend a core on produce requests), each for 20 s.
  Every record carries a sequence number; every output is matched to its input; outputs
  not seen 10 s after the last send count as infinitely late (∞), so a percentile cannot
  improve by losing records. A rate that loses more than 1% overloads the tool, and
  higher rates are not offered to it. The chart draws p50, p99 and p99.9 against the
  offered rate.
- **Restore, real broker**: the harness writes the changelog of `ticket-counts`' store
  itself, once per tool (the same plan-id keys and 8-byte counts, both tools' format), at
  least 1 GiB of keys and values over 1,000,000 keys; each tool then starts with an empty
  state directory, alternating, and the rate is records / (first partition's restore
  start to the last one's end), from the engine's `store restored` log lines and Kafka
  Streams' restore listener.
- **Codec**: `run_codec_bench` (src/bin/engine_bench/codec_bench.rs) on one thread, nothing else
  running: encode and decode of realistic `ExecutionTicket` records (~420 bytes of Avro),
  records per second on one core. Reference: serde_avro_fast on the same records.
- **Per-record path** (src/bin/engine_bench/task_path.rs), same thread, no broker: 256
  `PENDING` tickets in Confluent Avro through `ticket-pipeline`'s task in the test driver
  (decode, filter, map, encode, the engine's nodes between them), beside the same decode,
  status change and encode done by the ticket serde alone. Their ratio is what the
  engine's nodes (and the test driver) add to the codec per record.
- **Pipeline**: `engine dev` (its own process) hosts librdkafka's mock cluster with
  16-partition topics. Both tools are timed the same way, round by round: the tool is
  held (the engine frozen with SIGSTOP, the floor's partitions paused) while a round of
  tickets (90% `PENDING`) is produced to its input, then timed from being let go until
  the round's last output is acknowledged on the broker; the first round of each is not
  timed. The floor is a plain rdkafka loop in the harness (`BaseConsumer::poll` then
  `BaseProducer::send` of the same key and bytes, librdkafka defaults) copying its own
  input topic (the same records, so the engine never sees them). The engine is `engine
  run ticket-pipeline` as its own process (fresh consumer group, no config file, no
  `--kafka` properties); rate = input records per second. Runs of the engine and of the
  floor alternate (`--rounds`, each `--work-secs` of timed rounds; the engine frozen
  while the floor runs); each figure is the median of its runs and the ratio the median
  of each run's own ratio, with min and max, not judged when they spread over 20%.
- **Latency** (context only, one window, not judged: the mock cluster holds fetches):
  with the same `engine run` process caught up, the harness produces at half the
  engine's measured rate, each record carrying its send time (ns) in a header, and
  consumes the outputs; latency = consume time - send time. The load generator uses
  `linger.ms=0` so its own batching is not counted; the engine runs with its defaults.
- **Memory**: `VmHWM` (peak RSS) of the `engine run` process from `/proc/<pid>/status`,
  read before it is stopped, covering the pipeline and latency runs.
- **Start-up**: from spawning `engine run` (input already waiting) to its first output
  record being visible on the broker; includes joining the consumer group.
- **State**: a second `engine dev` with the `ticket-counts` topics. The input cycles
  through 10,000 plan ids (the record keys), so the RocksDB store `tickets-per-plan`
  holds 10,000 counts; every record updates its key's count in the record cache, which
  writes the store, the changelog and the count topic when it flushes (before commits and
  when the input goes quiet) or evicts, so updates of a key coalesce. `engine run
  ticket-counts` (own process, fresh `--state-dir`, no `--kafka` properties) is measured
  as the pipeline is (SIGSTOP while a round is produced), timed until the latest count of
  every key on the count topic adds up to every input record produced (a consumer in the
  harness reads the count topic, with `fetch.wait.max.ms=5` so the mock cluster's fetch
  hold does not delay what it sees), against the same rdkafka copy loop on the same broker
  and input, their runs alternating as the pipeline's do.
- **Restore**: that process is stopped, and a second one starts with an empty
  `--state-dir`, so each task rebuilds its store from the whole changelog once its
  partitions are assigned (a few thousand records are produced as well). Rate = the sum
  of `records=` over the `store restored` log lines / the time from the first restore's
  start to the last one's end (the tasks restore in parallel, off the processing loop).
  Each restore includes creating its changelog consumer and asking for watermarks; the
  note gives that fixed cost (from the first process, whose changelogs were empty). The
  changelog is bounded by the mock cluster's 5 MiB per partition.
- **Rebalance**: on a real Apache Kafka broker that `scripts/kafka` starts for this
  (the mock cluster holds back a member that joins after another left for a session
  timeout), `engine run ticket-counts` under a steady input (murmur2-partitioned like
  the engine's output, without the record cache, so every record is an output in its
  input's partition), then a second and a third instance join, the third leaves
  (SIGTERM) and the second crashes (SIGKILL), 10 s apart (16 s after the crash). A
  consumer in the harness notes when each output arrives; a pause is more than 500 ms
  without output from a partition, counted for the event it began after. Each figure is
  the longest pause of any partition; the note adds up all partitions' pauses. The
  sequence runs with the engine's default assignor (cooperative-sticky) and with the
  eager `range`. A crashed member's partitions wait for its session to expire (6 s
  here) before they move.
- The mock cluster keeps at most 5 MiB per partition, so the input is sized to fit
  (see *input records* above); everything runs on the same machine, broker included.
";
