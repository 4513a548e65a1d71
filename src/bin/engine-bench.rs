//! `engine-bench`: the benchmark harness. Measures the Avro codec, the
//! `ticket-pipeline` topology as its own process against `engine dev` (throughput
//! against a plain rdkafka floor, end-to-end latency, peak memory, start-up), the
//! stateful `ticket-counts` topology (throughput against the same floor, and restoring
//! its store from the changelog), and writes `BENCHMARKS.md` and `benchmarks.json`.
//! Run it through `scripts/bench`.
//!
//! Exit codes: `0` every figure measured (targets met or not: the table says which),
//! `1` a run failed, `2` usage error.

// The same allocator as the `engine` binary, so the codec figures are measured under
// the conditions the engine runs in (both codecs compared use it alike).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "engine_bench/codec.rs"]
mod codec;
#[path = "engine_bench/codec_bench.rs"]
mod codec_bench;
#[path = "engine_bench/machine.rs"]
mod machine;
#[path = "engine_bench/pipeline.rs"]
mod pipeline;
#[path = "engine_bench/processes.rs"]
mod processes;
#[path = "engine_bench/rebalance.rs"]
mod rebalance;
#[path = "engine_bench/report.rs"]
mod report;
#[path = "engine_bench/side_by_side.rs"]
mod side_by_side;
#[path = "engine_bench/stateful.rs"]
mod stateful;
#[path = "engine_bench/task_path.rs"]
mod task_path;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use processes::EngineCommand;
use report::{Figure, Report};

/// The latency chart, beside BENCHMARKS.md.
const CHART: &str = "BENCHMARKS-latency.png";

/// The binary's error type: every failure becomes a message and exit code 1.
pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const USAGE: &str = "\
usage: engine-bench [--engine PATH] [--out-dir DIR] [--records N] [--work-secs S]
                    [--latency-secs S] [--latency-rate R] [--codec-secs S]
                    [--engine-kafka K=V]... [--skip-pipeline] [--skip-state]
                    [--skip-rebalance] [--skip-side-by-side] [--rounds N]
                    [--restore-gib G] [--skip-throughput] [--skip-latency]
                    [--offer R[,R...]] [--only-engine]

  --engine PATH     the `engine` binary (default: next to this one)
  --out-dir DIR     where BENCHMARKS.md and benchmarks.json go (default: .)
  --records N       input tickets per throughput round (default 300000; capped to
                    what the mock cluster keeps, 5 MiB per partition)
  --work-secs S     on the mock cluster, each run of the floor and of the engine repeats
                    rounds until this much processing is timed (default 4)
  --latency-secs S  length of the fixed-rate latency run (default 10)
  --latency-rate R  its input rate in records/s (default: half the engine's measured
                    throughput)
  --engine-kafka K=V  passed to `engine run` as --kafka K=V (repeatable; default none,
                    and the tables say when any was given)
  --codec-secs S    time per codec case (default 2)
  --skip-pipeline   no ticket-pipeline figures (throughput, latency, memory, start-up)
  --skip-state      no ticket-counts figures (stateful throughput, restore)
  --skip-rebalance  no rebalance pauses (three ticket-counts processes on a real
                    Apache Kafka broker that scripts/kafka runs)
  --rounds N        interleaved runs of each throughput figure (the engine and the
                    floor alternating, and Kafka Streams on the real broker) and of each
                    restore beside Kafka Streams, reported as their median with min and
                    max (default 3)
  --restore-gib G   size of the changelog each tool restores beside the other, in GiB
                    of keys and values (default 1; 0 skips the restore runs)
  --skip-throughput  no side-by-side throughput, memory and start-up runs (the
                    latency runs then offer only the fixed rates)
  --skip-latency    no side-by-side latency runs
  --offer R[,R...]  the rates (records/s) the side-by-side latency runs offer, under
                    both guarantees, instead of 1,000, 10,000 and 50% and 80% of each
                    tool's measured throughput (for tuning runs)
  --only-engine     side-by-side latency runs of the engine alone, no Kafka Streams
                    (for tuning runs; its ratios to Kafka Streams are then not measured)
  --skip-side-by-side  no figures on a real broker beside Kafka Streams (throughput of
                    ticket-pipeline and ticket-counts under both guarantees, latency at
                    fixed offered rates, memory, start-up; needs the Kafka Streams
                    application scripts/bench builds with Maven in bench/kafka-streams)";

struct Options {
    engine: PathBuf,
    out_dir: PathBuf,
    records: usize,
    work_secs: f64,
    latency_secs: u64,
    latency_rate: Option<f64>,
    engine_kafka: Vec<String>,
    codec_secs: f64,
    skip_pipeline: bool,
    skip_state: bool,
    skip_rebalance: bool,
    skip_side_by_side: bool,
    rounds: usize,
    restore_gib: f64,
    skip_throughput: bool,
    skip_latency: bool,
    offer: Option<Vec<f64>>,
    only_engine: bool,
}

fn parse_args() -> std::result::Result<Options, String> {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("engine")))
        .unwrap_or_else(|| PathBuf::from("engine"));
    let mut o = Options {
        engine: sibling,
        out_dir: PathBuf::from("."),
        records: 300_000,
        work_secs: 4.0,
        latency_secs: 10,
        latency_rate: None,
        engine_kafka: Vec::new(),
        codec_secs: 2.0,
        skip_pipeline: false,
        skip_state: false,
        skip_rebalance: false,
        skip_side_by_side: false,
        rounds: 3,
        restore_gib: 1.0,
        skip_throughput: false,
        skip_latency: false,
        offer: None,
        only_engine: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--engine" => o.engine = value("--engine")?.into(),
            "--out-dir" => o.out_dir = value("--out-dir")?.into(),
            "--records" => {
                o.records = value("--records")?
                    .parse()
                    .map_err(|_| "--records must be a count")?
            }
            "--work-secs" => {
                o.work_secs = value("--work-secs")?
                    .parse()
                    .map_err(|_| "--work-secs must be seconds")?
            }
            "--latency-secs" => {
                o.latency_secs = value("--latency-secs")?
                    .parse()
                    .map_err(|_| "--latency-secs must be whole seconds")?
            }
            "--latency-rate" => {
                o.latency_rate = Some(
                    value("--latency-rate")?
                        .parse()
                        .map_err(|_| "--latency-rate must be records per second")?,
                )
            }
            "--engine-kafka" => o.engine_kafka.push(value("--engine-kafka")?),
            "--codec-secs" => {
                o.codec_secs = value("--codec-secs")?
                    .parse()
                    .map_err(|_| "--codec-secs must be seconds")?
            }
            "--skip-pipeline" => o.skip_pipeline = true,
            "--skip-state" => o.skip_state = true,
            "--skip-rebalance" => o.skip_rebalance = true,
            "--skip-side-by-side" => o.skip_side_by_side = true,
            "--skip-throughput" => o.skip_throughput = true,
            "--skip-latency" => o.skip_latency = true,
            "--only-engine" => o.only_engine = true,
            "--offer" => {
                let rates = value("--offer")?
                    .split(',')
                    .map(|r| r.trim().parse::<f64>().ok().filter(|r| *r > 0.0))
                    .collect::<Option<Vec<f64>>>()
                    .ok_or("--offer must be positive rates, comma-separated, e.g. 10000,60000")?;
                o.offer = Some(rates);
            }
            "--rounds" => {
                o.rounds = value("--rounds")?
                    .parse()
                    .map_err(|_| "--rounds must be a count")?
            }
            "--restore-gib" => {
                o.restore_gib = value("--restore-gib")?
                    .parse()
                    .map_err(|_| "--restore-gib must be GiB, e.g. 1 or 0.25")?
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if o.rounds == 0 || o.restore_gib.is_nan() || o.restore_gib < 0.0 {
        return Err("--rounds must be positive and --restore-gib not negative".into());
    }
    if o.records == 0 || o.latency_secs == 0 || o.codec_secs <= 0.0 || o.work_secs <= 0.0 {
        return Err(
            "--records, --work-secs, --latency-secs and --codec-secs must be positive".into(),
        );
    }
    Ok(o)
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(message) => {
            if message.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("engine-bench: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("engine-bench: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(options: &Options) -> Result<()> {
    let engine = EngineCommand {
        binary: options.engine.clone(),
        log_dir: processes::log_dir(&std::env::temp_dir())?,
    };
    let version = engine.output(&["--version"])?.trim().to_string();
    let machine = machine::Machine::detect(version);

    eprintln!("engine-bench: codec ({} s per case)", options.codec_secs);
    let (mut figures, table) = codec::figures(Duration::from_secs_f64(options.codec_secs));
    eprint!("{table}");
    figures.extend(task_path::figures(Duration::from_secs_f64(
        options.codec_secs,
    )));
    for f in figures
        .iter()
        .filter(|f| f.name.starts_with("per-record path"))
    {
        eprintln!("engine-bench: {}: {:?} records/s", f.name, f.value);
    }

    let mut setup = Vec::new();
    if options.skip_pipeline {
        figures.push(Figure::not_measured(
            "pipeline",
            "pipeline figures",
            "--skip-pipeline given",
        ));
    } else {
        let outcome = pipeline::run(
            &engine,
            &pipeline::PipelineOptions {
                round_records: options.records,
                work_secs: options.work_secs,
                runs: options.rounds,
                latency_secs: options.latency_secs,
                latency_rate: options.latency_rate,
                engine_kafka: options.engine_kafka.clone(),
            },
        )?;
        figures.extend(outcome.figures);
        setup.extend(outcome.setup);
    }
    if options.skip_state {
        figures.push(Figure::not_measured(
            "state",
            "stateful and restore figures",
            "--skip-state given",
        ));
    } else {
        let outcome = stateful::run(
            &engine,
            &stateful::StatefulOptions {
                round_records: options.records,
                work_secs: options.work_secs,
                runs: options.rounds,
            },
        )?;
        figures.extend(outcome.figures);
        setup.extend(outcome.setup);
    }
    if options.skip_rebalance {
        figures.push(Figure::not_measured(
            "rebalance",
            "rebalance pauses",
            "--skip-rebalance given",
        ));
    } else {
        let outcome = rebalance::run(&engine, &options.engine_kafka)?;
        figures.extend(outcome.figures);
        setup.extend(outcome.setup);
    }
    let mut chart = None;
    if options.skip_side_by_side {
        figures.push(Figure::not_measured(
            "side by side",
            "figures beside Kafka Streams on a real broker",
            "--skip-side-by-side given",
        ));
    } else {
        let streams = side_by_side::KafkaStreamsApp::locate()?;
        let result = side_by_side::run(
            &engine,
            &streams,
            &options.engine_kafka,
            &side_by_side::SideBySideOptions {
                rounds: options.rounds,
                restore_bytes: (options.restore_gib * (1u64 << 30) as f64) as u64,
                throughput: !options.skip_throughput,
                latency: !options.skip_latency,
                offer: options.offer.clone(),
                only_engine: options.only_engine,
            },
        )?;
        // Real Kafka first: what users run.
        let mock = std::mem::take(&mut figures);
        figures.extend(result.outcome.figures);
        figures.extend(mock);
        let mock_setup = std::mem::take(&mut setup);
        setup.extend(result.outcome.setup);
        setup.extend(mock_setup);
        let data = options.out_dir.join("benchmarks-latency.json");
        if result.latency.is_empty() {
            // Nothing to draw; no chart of an earlier run is left beside these figures.
            let _ = std::fs::remove_file(options.out_dir.join(CHART));
        }
        std::fs::write(&data, serde_json::to_string_pretty(&result.latency)? + "\n")?;
        let png = options.out_dir.join(CHART);
        let drawn = if result.latency.is_empty() {
            None
        } else {
            Some(
                std::process::Command::new("python3")
                    .arg("bench/latency_chart.py")
                    .arg(&data)
                    .arg(&png)
                    .status()?,
            )
        };
        if let Some(drawn) = drawn
            && !drawn.success()
        {
            return Err(format!(
                "bench/latency_chart.py could not draw {} ({drawn}); it needs matplotlib: \
                 python3 -m pip install matplotlib",
                png.display()
            )
            .into());
        }
        if !result.latency.is_empty() {
            chart = Some(CHART.to_string());
        }
    }
    setup.push((
        "process logs".into(),
        format!("`{}` (kept for inspection)", engine.log_dir.display()),
    ));

    let report = Report {
        machine,
        setup,
        figures,
        chart,
    };
    std::fs::write(options.out_dir.join("BENCHMARKS.md"), report.markdown())?;
    std::fs::write(
        options.out_dir.join("benchmarks.json"),
        report.json()? + "\n",
    )?;
    eprintln!(
        "engine-bench: wrote {} and {}",
        options.out_dir.join("BENCHMARKS.md").display(),
        options.out_dir.join("benchmarks.json").display()
    );
    Ok(())
}
