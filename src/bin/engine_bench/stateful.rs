//! The stateful figures, against their own `engine dev`: `engine run ticket-counts`
//! (a RocksDB count per plan id, with a changelog) against the same rdkafka floor, then
//! a second `engine run ticket-counts` with an empty state directory, which must
//! rebuild its store from the changelog the first one wrote.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::BaseProducer;
use rdkafka::{Offset, TopicPartitionList};

use super::Result;
use super::pipeline::{
    FLOOR_INPUT, Floor, INPUT, Input, Interleaved, PARTITIONS, PipelineOutcome, Rounds, STALL,
    client, floor_topics, interleave, interleaved_figures, offsets, round_size, value_format,
};
use super::processes::{DevBroker, EngineCommand, Stopping};
use super::report::{Figure, Target};

const TOPOLOGY: &str = "ticket-counts";
const OUTPUT: &str = "bench.tickets.counts";
const DEAD_LETTER: &str = "bench.tickets.counts.dlq";
const CHANGELOG: &str = "ticket-counts-tickets-per-plan-changelog";
/// Distinct plan ids (record keys), so the store holds more than fits in a cache line
/// or two and RocksDB does real reads and writes.
const KEYS: usize = 10_000;
/// One store per task, one task per input partition.
const RESTORES: usize = PARTITIONS as usize;
/// New input that makes the restoring process open every task.
const TRIGGER_RECORDS: usize = 2000;
const ENGINE_FIGURE: &str = "engine run ticket-counts (own process, RocksDB count per key)";

/// What the stateful run is asked to do.
#[derive(Debug, Clone)]
pub struct StatefulOptions {
    /// Tickets per round, capped to what the mock cluster keeps.
    pub round_records: usize,
    /// In each run, rounds repeat until this much processing has been timed.
    pub work_secs: f64,
    /// Interleaved runs of the engine and the floor; figures are their medians.
    pub runs: usize,
}

/// Runs the stateful and restore figures.
pub fn run(engine: &EngineCommand, options: &StatefulOptions) -> Result<PipelineOutcome> {
    let partitions = PARTITIONS.to_string();
    let floor_topics = floor_topics();
    let mut dev = engine.dev(
        "engine-dev-state.log",
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
        "engine-bench: stateful: engine dev up at {}",
        dev.bootstrap_servers
    );
    let format = value_format(engine, &dev, TOPOLOGY)?;
    let input = Input::keyed(format, KEYS)?;
    let n = round_size(&input, options.round_records);
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
    let mut setup = vec![(
        "stateful input".into(),
        format!(
            "rounds of {n} tickets keyed by plan id, {} distinct keys cycled, value {:.0} bytes, \
             {PARTITIONS} partitions, {}; own `engine dev`",
            input.distinct_keys(),
            input.mean_value_bytes(),
            format.describe(),
        ),
    )];

    let state_dirs = [
        fresh_dir(&engine.log_dir.join("state-ticket-counts"))?,
        fresh_dir(&engine.log_dir.join("state-ticket-counts-restore"))?,
    ];
    let outcome = measure(
        engine,
        &dev,
        &mut rounds,
        (&mut floor, &mut floor_rounds),
        options,
        &state_dirs,
        &mut setup,
    );
    // The stores are only needed while their process runs; the logs stay.
    for dir in &state_dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    let figures = outcome?;
    dev.process.stop();
    Ok(PipelineOutcome { figures, setup })
}

fn fresh_dir(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(dir.to_path_buf())
}

/// Throughput of the first `engine run ticket-counts`, then the restore of the second.
fn measure(
    engine: &EngineCommand,
    dev: &DevBroker,
    rounds: &mut Rounds<'_>,
    (floor, floor_rounds): (&mut Floor, &mut Rounds<'_>),
    options: &StatefulOptions,
    state_dirs: &[PathBuf; 2],
    setup: &mut Vec<(String, String)>,
) -> Result<Vec<Figure>> {
    let watcher = rounds.watcher;
    let mut counts = CountWatcher::new(&dev.bootstrap_servers)?;
    let log = "engine-run-ticket-counts.log";
    let state = state_dirs[0].to_string_lossy().into_owned();
    let mut want = rounds.produce()? as i64;
    let mut run = engine.run(&[TOPOLOGY, "--state-dir", &state], dev, log)?;
    wait_for(
        engine,
        &mut counts,
        &mut run,
        log,
        want,
        Duration::from_secs(120),
    )?;

    // Same method as the pipeline: frozen while a round is produced, timed from being
    // let go until the round's effect is on the broker: the latest counts add up to
    // every input record (the record cache coalesces updates, so their number is not
    // the number of inputs).
    // Runs of the engine and of the floor alternate (the engine frozen while the floor
    // runs), on the same 10k-key input.
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
        &mut |run, want| wait_for(engine, &mut counts, run, log, want, STALL),
    )?;
    let peak_rss = run.peak_rss_bytes()?;
    eprintln!(
        "engine-bench: ticket-counts {:.0} input records/s (median of {} runs)",
        super::report::Spread::of(engine_rates.clone()).median,
        engine_rates.len()
    );
    setup.push((
        "engine run ticket-counts".into(),
        format!(
            "{timed} rounds, {records} records in {secs:.2} s over {} runs (first round, with \
             start-up, not timed); fresh `--state-dir`, no `--kafka` properties; {} count \
             updates for {want} input records (the record cache coalesces updates of a key)",
            engine_rates.len(),
            counts.updates
        ),
    ));
    setup.push((
        "stateful floor run".into(),
        format!(
            "{} rounds, {} records in {:.2} s over {} runs (same 10k-key input, its first \
             round not timed), each run after one of the engine's",
            floor_runs.iter().map(|f| f.rounds).sum::<usize>(),
            floor_runs.iter().map(|f| f.records).sum::<usize>(),
            floor_runs.iter().map(|f| f.secs).sum::<f64>(),
            floor_runs.len()
        ),
    ));
    let floor_rates: Vec<f64> = floor_runs.iter().map(|f| f.rate).collect();
    let throughput = interleaved_figures(
        "state",
        ENGINE_FIGURE,
        &engine_rates,
        &floor_rates,
        Target::RatioAtLeast(0.5),
        &format!(
            "input records per second until the latest counts add up to the input, \
             {KEYS} distinct keys, updates coalesced by the record cache"
        ),
    );
    run.stop();

    // What the changelog holds now: the mock cluster drops a partition's oldest batches
    // beyond 5 MiB, so this is what a restore can read.
    let (high, low) = offsets(watcher, CHANGELOG)?;
    let held = high - low;

    let restore_log = "engine-run-ticket-counts-restore.log";
    let state = state_dirs[1].to_string_lossy().into_owned();
    let spawned = Instant::now();
    let mut second = engine.run(&[TOPOLOGY, "--state-dir", &state], dev, restore_log)?;
    // A task (and so its restore) opens at its partition's first record: a little new
    // input, cycling through the keys, reaches every partition.
    rounds.produce_n(TRIGGER_RECORDS)?;
    // The mock cluster lets a member join a group another just left only after about
    // session.timeout.ms (45 s by default), so restores begin late.
    let restores = loop {
        let lines = restore_lines(&engine.log_path(restore_log))?;
        if lines.len() >= RESTORES {
            break lines;
        }
        if let Some(status) = second.exited() {
            return Err(format!(
                "the restoring engine run exited ({status}); see {}",
                engine.log_path(restore_log).display()
            )
            .into());
        }
        if spawned.elapsed() > Duration::from_secs(180) {
            return Err(format!(
                "{} of {RESTORES} stores restored within 180 s; see {}",
                lines.len(),
                engine.log_path(restore_log).display()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    second.stop();

    let restored: u64 = restores.iter().map(|r| r.records).sum();
    let elapsed_ms: u64 = restores.iter().map(|r| r.elapsed_ms).sum();
    let span_ms = restores
        .iter()
        .map(|r| r.logged_at_ms)
        .fold(f64::MIN, f64::max)
        - restores
            .iter()
            .map(|r| r.logged_at_ms - r.elapsed_ms as f64)
            .fold(f64::MAX, f64::min);
    let from_checkpoint = restores.iter().filter(|r| r.from_checkpoint).count();
    // The tasks restore in parallel: the rate is over the wall-clock span.
    let restore_rate = restored as f64 / (span_ms.max(1.0) / 1000.0);
    // The first process restored empty changelogs: what a restore costs before it reads
    // a record (a consumer and a watermark request per partition).
    let empty: Vec<u64> = restore_lines(&engine.log_path(log))?
        .iter()
        .filter(|r| r.records == 0)
        .map(|r| r.elapsed_ms)
        .collect();
    let fixed_ms = if empty.is_empty() {
        None
    } else {
        Some(empty.iter().sum::<u64>() as f64 / empty.len() as f64)
    };
    eprintln!(
        "engine-bench: restored {restored} records in {elapsed_ms} ms ({restore_rate:.0} records/s)"
    );
    setup.push((
        "restore run".into(),
        format!(
            "second `engine run ticket-counts` with an empty `--state-dir` after the first \
             stopped: {} stores (one per partition) restored {restored} records, the whole \
             changelog ({held} records held of {high} written); restores sum to {elapsed_ms} ms, \
             first start to last end {span_ms:.0} ms{}",
            restores.len(),
            if from_checkpoint > 0 {
                format!("; {from_checkpoint} unexpectedly from a checkpoint")
            } else {
                String::new()
            }
        ),
    ));

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let [floor_figure, engine_figure] = throughput;
    Ok(vec![
        floor_figure,
        engine_figure,
        Figure::new(
            "state",
            "peak RSS of engine run ticket-counts (VmHWM)",
            mib(peak_rss),
            "MiB",
            None,
            None,
        ),
        Figure::new(
            "restore",
            "restore rate from changelog (fresh --state-dir)",
            restore_rate,
            "records/s",
            None,
            None,
        )
        .with_note(format!(
            "one run, context only (the restore target is judged on the real broker, over \
             1 GiB and rounds); {restored} records / {span_ms:.0} ms from the first restore's \
             start to the last one's end ({} partitions restoring in parallel, their own times summing to \
             {elapsed_ms} ms, each including its changelog consumer's set-up{})",
            restores.len(),
            match fixed_ms {
                Some(ms) => format!(", {ms:.0} ms on an empty changelog"),
                None => String::new(),
            }
        )),
        Figure::new(
            "restore",
            "records restored",
            restored as f64,
            "records",
            None,
            None,
        )
        .with_note(format!(
            "{PARTITIONS} partitions; bounded by the mock cluster's 5 MiB per partition"
        )),
    ])
}

/// Reads the count topic and keeps the latest count of every plan id: their sum is the
/// number of input records whose effect is on the broker, however many updates the
/// engine's record cache coalesced.
struct CountWatcher {
    consumer: BaseConsumer,
    latest: HashMap<Vec<u8>, i64>,
    total: i64,
    updates: u64,
}

impl CountWatcher {
    fn new(bootstrap: &str) -> Result<Self> {
        // The mock cluster holds an empty fetch for the whole fetch.wait.max.ms (500 ms by
        // default) even when records arrive meanwhile: the watcher would see a round's
        // last counts that late. 5 ms bounds what observing adds, as the 10 ms
        // end-offset polling does for the pipeline.
        let consumer: BaseConsumer = client(bootstrap)
            .set("group.id", "engine-bench-count-watcher")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "5")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(OUTPUT, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(CountWatcher {
            consumer,
            latest: HashMap::new(),
            total: 0,
            updates: 0,
        })
    }

    /// Takes every update already fetched; returns the sum of the latest counts.
    fn poll(&mut self) -> Result<i64> {
        while let Some(message) = self.consumer.poll(Duration::ZERO) {
            let message = message?;
            let (Some(key), Some(value)) = (message.key(), message.payload()) else {
                continue;
            };
            let Ok(bytes) = <[u8; 8]>::try_from(value) else {
                return Err(format!("a count of {OUTPUT} is not 8 bytes").into());
            };
            let count = i64::from_be_bytes(bytes);
            let previous = self.latest.insert(key.to_vec(), count).unwrap_or(0);
            self.total += count - previous;
            self.updates += 1;
        }
        Ok(self.total)
    }
}

/// Waits until the latest counts add up to `want` input records; returns when they did.
fn wait_for(
    engine: &EngineCommand,
    counts: &mut CountWatcher,
    run: &mut Stopping,
    log: &str,
    want: i64,
    patience: Duration,
) -> Result<Instant> {
    let mut seen = -1;
    let mut progress_at = Instant::now();
    loop {
        let count = counts.poll()?;
        if count >= want {
            return Ok(Instant::now());
        }
        if let Some(status) = run.exited() {
            return Err(format!(
                "engine run {TOPOLOGY} exited ({status}); see {}",
                engine.log_path(log).display()
            )
            .into());
        }
        if count > seen {
            seen = count;
            progress_at = Instant::now();
        } else if progress_at.elapsed() > patience {
            let dead = offsets(&counts.consumer, DEAD_LETTER).map_or(0, |o| o.0);
            return Err(format!(
                "engine run {TOPOLOGY} stalled at {count} of {want} counted records ({dead} \
                 records dead-lettered); see {}",
                engine.log_path(log).display()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One `store restored` log line.
#[derive(Debug, PartialEq)]
pub(super) struct RestoreLine {
    pub records: u64,
    pub elapsed_ms: u64,
    pub from_checkpoint: bool,
    /// The line's timestamp, milliseconds since midnight UTC.
    pub logged_at_ms: f64,
}

pub(super) fn restore_lines(log: &Path) -> Result<Vec<RestoreLine>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    Ok(text
        .lines()
        .filter(|l| l.contains("store restored"))
        .filter_map(parse_restore_line)
        .collect())
}

/// Parses `2026-11-27T06:40:01.375760Z  INFO engine::runtime::runner: store restored
/// application=... records=N from_checkpoint=false elapsed_ms=M` (field order free).
fn parse_restore_line(line: &str) -> Option<RestoreLine> {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
    };
    let time = line.split_whitespace().next()?.split_once('T')?.1;
    let time = time.trim_end_matches('Z');
    let mut parts = time.split(':');
    let (h, m, s): (f64, f64, f64) = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    Some(RestoreLine {
        records: field("records")?.parse().ok()?,
        elapsed_ms: field("elapsed_ms")?.parse().ok()?,
        from_checkpoint: field("from_checkpoint")? == "true",
        logged_at_ms: ((h * 60.0 + m) * 60.0 + s) * 1000.0,
    })
}
