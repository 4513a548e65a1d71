//! `engine demo`: the three services end to end in one process.
//!
//! An embedded broker (librdkafka's mock cluster) and schema registry, the
//! `orchestrator-dynamic`, `execution-ticket-service` and `worker-agents` topologies on
//! one shared tokio executor, and a generator of consolidated decisions. A live line on
//! stderr shows records/s per topology and tickets by status; at the end the run is
//! reconciled against what an independent consumer saw on the topics and what the ticket
//! API answers, and the command exits 0 only if every check passes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, FromArgMatches};
use engine::BuildContext;
use engine::cli::Extension;
use engine::config::EngineConfig;
use engine::kafka::EmbeddedBroker;
use engine::metrics::TopologyMetrics;
use engine::registry::{MemoryRegistry, SchemaRegistry};
use engine::runtime::{Shutdown, TopologyRunner};
use engine::serde::{AvroContext, Serde, SerdeRole};
use engine::topology::Topology;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use topologies::decisions::{
    CONSOLIDATED_DECISION_SCHEMA, CognitivePlan, ConsolidatedDecision, GeneratorSettings,
    generate_decisions,
};
use topologies::orchestrator::{self, Incident, IncidentType, is_actionable};
use topologies::results::{EXECUTION_RESULT_SCHEMA, ExecutionResult, ExecutionStatus};
use topologies::tickets::{EXECUTION_TICKET_SCHEMA, ExecutionTicket, TaskType};
use topologies::{execution_ticket_service as ticket_service, worker_agents as worker};

/// `engine demo` arguments.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Consolidated decisions to generate (about 70% approve, the rest reject or ask for
    /// review; 2% are sent twice).
    #[arg(long, default_value_t = 1000)]
    decisions: usize,
    /// Chance that a task of an approved plan fails on every attempt (its plan is then
    /// compensated).
    #[arg(long, default_value_t = 0.05)]
    failure_rate: f64,
    /// Chance that one attempt fails and is retried.
    #[arg(long, default_value_t = 0.1)]
    transient_failure_rate: f64,
    /// Multiplies the tasks' estimated durations (50-500 ms) in the simulated executor.
    #[arg(long, default_value_t = 0.01)]
    time_scale: f64,
    /// Seed of the generator (the same seed sends the same decisions).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Give up (exit 1) if the run has not settled after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Serve /health, /metrics, /stores and the ticket API on this address while it
    /// runs (default: a free localhost port, used for the reconciliation).
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// The `demo` subcommand for [`engine::cli::main_with`].
pub fn extension() -> Extension {
    let command = DemoArgs::augment_args(clap::Command::new("demo").about(
        "Run orchestrator-dynamic, execution-ticket-service and worker-agents on an \
         embedded broker and registry with generated decisions; print a live view, then \
         reconcile (exit 0 only if nothing was lost or duplicated)",
    ));
    Extension {
        command,
        // The live view is the output; per-ticket logs would drown it.
        default_log: "warn",
        run: Box::new(|matches, config, out| {
            let args = match DemoArgs::from_arg_matches(matches) {
                Ok(args) => args,
                Err(e) => {
                    eprintln!("error: {e}");
                    return engine::cli::EXIT_USAGE;
                }
            };
            match run(args, config, out) {
                Ok(true) => engine::cli::EXIT_OK,
                Ok(false) => engine::cli::EXIT_RUNTIME,
                Err(Failure::Usage(e)) => {
                    eprintln!("error: {e}");
                    engine::cli::EXIT_USAGE
                }
                Err(Failure::Runtime(e)) => {
                    eprintln!("error: {e}");
                    engine::cli::EXIT_RUNTIME
                }
            }
        }),
    }
}

enum Failure {
    Usage(String),
    Runtime(String),
}

fn runtime_error(e: impl std::fmt::Display) -> Failure {
    Failure::Runtime(e.to_string())
}

fn check_args(a: &DemoArgs) -> Result<(), Failure> {
    let unit = |name: &str, v: f64| {
        if (0.0..=1.0).contains(&v) {
            Ok(())
        } else {
            Err(Failure::Usage(format!(
                "--{name} must be between 0 and 1, not {v}"
            )))
        }
    };
    unit("failure-rate", a.failure_rate)?;
    unit("transient-failure-rate", a.transient_failure_rate)?;
    if !(a.time_scale >= 0.0 && a.time_scale.is_finite()) {
        return Err(Failure::Usage(format!(
            "--time-scale must be 0 or more, not {}",
            a.time_scale
        )));
    }
    if a.partitions < 1 {
        return Err(Failure::Usage("--partitions must be at least 1".into()));
    }
    if a.decisions == 0 {
        return Err(Failure::Usage("--decisions must be at least 1".into()));
    }
    Ok(())
}

fn run(args: DemoArgs, config: &EngineConfig, out: &mut dyn Write) -> Result<bool, Failure> {
    check_args(&args)?;
    let executor = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(runtime_error)?;
    let summary = executor.block_on(demo(&args, config))?;
    if args.json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    } else {
        let _ = write!(out, "{}", summary.text());
    }
    Ok(summary.passed)
}

/// A ticket as the observer saw it on `execution.tickets`.
#[derive(Debug, Clone)]
struct SeenTicket {
    plan_id: String,
    task_id: String,
    /// The original ticket, for a compensation.
    compensates: Option<String>,
    records: u32,
}

/// What the observer saw of one ticket's results.
#[derive(Debug, Clone, Default)]
struct SeenResults {
    running: u32,
    terminal: Vec<(ExecutionStatus, Option<String>)>,
}

/// Everything the observer consumed.
#[derive(Debug, Default)]
struct Observed {
    tickets: HashMap<String, SeenTicket>,
    results: HashMap<String, SeenResults>,
    incidents: Vec<Incident>,
    violations: usize,
    /// Exhausted tickets on `execution.tickets.dlq` (JSON).
    exhausted: Vec<String>,
    /// Other dead letters, by topic.
    dead_letters: BTreeMap<String, usize>,
    undecodable: usize,
    records: u64,
}

impl Observed {
    fn status_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for id in self.tickets.keys() {
            let status = match self.results.get(id) {
                Some(r) => match r.terminal.first() {
                    Some((ExecutionStatus::Completed, _)) => "completed",
                    Some((_, _)) => "failed",
                    None if r.running > 0 => "running",
                    None => "pending",
                },
                None => "pending",
            };
            *counts.entry(status).or_default() += 1;
        }
        counts
    }
}

/// One reconciliation check.
#[derive(Serialize, Debug)]
struct Check {
    name: &'static str,
    passed: bool,
    detail: String,
}

/// The demo's result.
#[derive(Serialize, Debug)]
struct Summary {
    passed: bool,
    seconds: f64,
    /// `at_least_once` or `exactly_once_v2`.
    processing_guarantee: &'static str,
    decisions_generated: usize,
    decisions_sent: usize,
    approved: usize,
    rejected_or_review: usize,
    tickets: usize,
    compensation_tickets: usize,
    tickets_by_status: BTreeMap<&'static str, usize>,
    incidents: usize,
    sla_violations: usize,
    exhausted_tickets: usize,
    records_by_topology: BTreeMap<String, u64>,
    checks: Vec<Check>,
}

impl Summary {
    fn text(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "\nengine demo ({}): {} decisions ({} sent, duplicates included): {} approved, {} rejected or for review\n",
            self.processing_guarantee,
            self.decisions_generated,
            self.decisions_sent,
            self.approved,
            self.rejected_or_review
        ));
        s.push_str(&format!(
            "tickets: {} ({} compensations); by status: {}\n",
            self.tickets + self.compensation_tickets,
            self.compensation_tickets,
            self.tickets_by_status
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        s.push_str(&format!(
            "incidents {}, SLA violations {}, exhausted tickets dead-lettered {}\n",
            self.incidents, self.sla_violations, self.exhausted_tickets
        ));
        s.push_str(&format!(
            "records in per topology: {}\n",
            self.records_by_topology
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        s.push_str("reconciliation:\n");
        for c in &self.checks {
            s.push_str(&format!(
                "  [{}] {}: {}\n",
                if c.passed { "ok" } else { "FAILED" },
                c.name,
                c.detail
            ));
        }
        s.push_str(&format!(
            "{} in {:.1} s\n",
            if self.passed { "PASSED" } else { "FAILED" },
            self.seconds
        ));
        s
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The options the demo gives a topology, under any the configuration file sets.
fn options(config: &EngineConfig, name: &str, demo: &[(&str, toml::Value)]) -> toml::Table {
    let mut table = config
        .topology_options
        .get(name)
        .cloned()
        .unwrap_or_default();
    for (k, v) in demo {
        table.entry(k.to_string()).or_insert_with(|| v.clone());
    }
    table
}

async fn demo(args: &DemoArgs, config: &EngineConfig) -> Result<Summary, Failure> {
    let started = Instant::now();
    let broker = EmbeddedBroker::start(1)
        .map_err(|e| runtime_error(format!("cannot start the embedded broker: {e}")))?;
    let bootstrap = broker.bootstrap_servers();
    let registry = Arc::new(MemoryRegistry::new());
    let (registry_addr, registry_server) =
        engine::registry::server::serve(registry.clone(), SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(runtime_error)?;
    tokio::spawn(registry_server);
    let avro = AvroContext {
        registry: Some(SchemaRegistry::memory(registry)),
        settings: config.avro.clone(),
        health: Default::default(),
        notices: Default::default(),
    };
    let context = |name: &str, demo: &[(&str, toml::Value)]| BuildContext {
        avro: avro.clone(),
        options: options(config, name, demo),
    };
    let invalid = |e: engine::topology::TopologyError| Failure::Usage(e.to_string());
    let topologies: Vec<Topology> = vec![
        orchestrator::build(&context(orchestrator::NAME, &[])).map_err(invalid)?,
        ticket_service::build(&context(ticket_service::NAME, &[])).map_err(invalid)?,
        worker::build(&context(
            worker::NAME,
            &[
                ("time_scale", toml::Value::Float(args.time_scale)),
                (
                    "failure_rate",
                    toml::Value::Float(args.transient_failure_rate),
                ),
                ("retry_backoff_ms", toml::Value::Integer(20)),
                ("retry_backoff_max_ms", toml::Value::Integer(500)),
            ],
        ))
        .map_err(invalid)?,
    ];
    let mut topics: Vec<String> = topologies.iter().flat_map(Topology::topics).collect();
    topics.extend(
        [
            orchestrator::DECISIONS,
            orchestrator::INCIDENTS,
            orchestrator::SLA_VIOLATIONS,
            orchestrator::DEAD_LETTER,
            ticket_service::DEAD_LETTER,
            worker::DEAD_LETTER,
        ]
        .map(String::from),
    );
    topics.sort();
    topics.dedup();
    for topic in &topics {
        broker
            .create_topic(topic, args.partitions)
            .map_err(|e| runtime_error(format!("cannot create topic `{topic}`: {e}")))?;
    }

    let state = tempfile::tempdir().map_err(runtime_error)?;
    let mut settings = config.run_settings(&bootstrap);
    settings.state.state_dir = state.path().to_path_buf();
    for (k, v) in [
        ("consumer.session.timeout.ms", "6000"),
        ("consumer.fetch.wait.max.ms", "50"),
    ] {
        settings
            .client
            .properties
            .entry(k.into())
            .or_insert_with(|| v.into());
    }
    let ops = Arc::new(engine::ops::OpsState::default());
    ops.set_registry(avro.health.clone());
    let http = args
        .http
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let (http, ops_server) =
        engine::ops::serve(ops.clone(), &topologies, &settings.client, http)
            .map_err(|e| Failure::Usage(format!("--http {http}: cannot listen: {e}")))?;
    tokio::spawn(ops_server);
    settings.ops = Some(ops);
    eprintln!(
        "engine demo: broker {bootstrap} (embedded), schema registry http://{registry_addr}, operations and ticket API http://{http}, processing guarantee {}",
        config.processing_guarantee.name()
    );

    // The observer reads what the services write, independently of them.
    let observed = Arc::new(Mutex::new(Observed::default()));
    let (stop_observer, observer_stop) = Shutdown::new();
    let observer = tokio::spawn(observe(
        bootstrap.clone(),
        avro.clone(),
        observed.clone(),
        observer_stop,
    ));

    let (stop_all, stop) = Shutdown::new();
    let mut runners = tokio::task::JoinSet::new();
    let mut metrics: Vec<(String, Arc<TopologyMetrics>)> = Vec::new();
    for topology in topologies {
        let name = topology.application_id().to_string();
        let runner = TopologyRunner::new(topology, settings.clone());
        metrics.push((name.clone(), runner.metrics()));
        let stop = stop.clone();
        runners.spawn(async move { (name, runner.run(stop).await) });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while metrics
        .iter()
        .any(|(_, m)| m.snapshot().assigned_partitions == 0)
    {
        if Instant::now() > deadline {
            return Err(runtime_error(
                "the topologies did not get their partitions within 30 s",
            ));
        }
        if let Some(Ok((name, Err(e)))) = runners.try_join_next() {
            return Err(runtime_error(format!("{name} stopped: {e}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Generate and send the decisions.
    let decisions = generate_decisions(
        args.decisions,
        &GeneratorSettings {
            seed: args.seed,
            failure_rate: args.failure_rate,
            now: now_ms(),
            ..Default::default()
        },
    );
    send_decisions(&bootstrap, &avro, &decisions).await?;
    let mut distinct: HashMap<String, &ConsolidatedDecision> = HashMap::new();
    for d in &decisions {
        distinct.entry(d.decision_id.clone()).or_insert(d);
    }
    // plan id -> task ids, for the approved ones.
    let mut expected: HashMap<String, HashSet<String>> = HashMap::new();
    let mut others: HashSet<String> = HashSet::new();
    for d in distinct.values() {
        if is_actionable(d) {
            let plan: CognitivePlan = d
                .cognitive_plan
                .as_deref()
                .and_then(|p| serde_json::from_str(p).ok())
                .ok_or_else(|| runtime_error("the generator made an unreadable plan"))?;
            expected.insert(
                d.plan_id.clone(),
                plan.tasks.into_iter().map(|t| t.task_id).collect(),
            );
        } else {
            others.insert(d.plan_id.clone());
        }
    }
    let expected_tickets: usize = expected.values().map(HashSet::len).sum();

    // Live view until settled.
    let timeout = Duration::from_secs(args.timeout_secs);
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut last_tick = Instant::now();
    let mut settled_since: Option<(Instant, u64)> = None;
    let mut timed_out = false;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(Ok((name, result))) = runners.try_join_next() {
            return Err(runtime_error(format!(
                "{name} stopped during the demo: {result:?}"
            )));
        }
        let elapsed = last_tick.elapsed().as_secs_f64().max(0.001);
        last_tick = Instant::now();
        let rates: Vec<String> = metrics
            .iter()
            .map(|(name, m)| {
                let now = m.snapshot().records_in;
                let before = last.insert(name.clone(), now).unwrap_or(0);
                format!("{name} {:.0}/s", (now - before) as f64 / elapsed)
            })
            .collect();
        let (line, done, records) = {
            let o = observed.lock().unwrap_or_else(|p| p.into_inner());
            let counts = o.status_counts();
            let originals = o
                .tickets
                .values()
                .filter(|t| t.compensates.is_none())
                .count();
            let all_terminal = o
                .tickets
                .keys()
                .all(|id| o.results.get(id).is_some_and(|r| !r.terminal.is_empty()));
            let line = format!(
                "[{:>4.0}s] {} | tickets {}/{} {}",
                started.elapsed().as_secs_f64(),
                rates.join(", "),
                originals,
                expected_tickets,
                counts
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            (
                line,
                originals >= expected_tickets && all_terminal,
                o.records,
            )
        };
        if terminal {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
        // Settled: everything terminal and nothing new for 3 s (late compensations,
        // duplicates and dead letters would show up by then).
        if done {
            match settled_since {
                Some((since, seen)) if seen == records => {
                    if since.elapsed() >= Duration::from_secs(3) {
                        break;
                    }
                }
                _ => settled_since = Some((Instant::now(), records)),
            }
        } else {
            settled_since = None;
        }
        if started.elapsed() > timeout {
            timed_out = true;
            break;
        }
    }
    if terminal {
        eprintln!();
    }

    // Ask the ticket service what it stored, through its API, before stopping.
    let stored = stored_statuses(http).await;
    stop_all.trigger();
    while let Some(joined) = runners.join_next().await {
        if let Ok((name, Err(e))) = joined {
            eprintln!("{name} stopped with an error: {e}");
        }
    }
    stop_observer.trigger();
    let _ = observer.await;
    drop(broker);

    let o = observed.lock().unwrap_or_else(|p| p.into_inner());
    let checks = reconcile(&o, &expected, &others, stored, timed_out);
    let compensation_tickets = o
        .tickets
        .values()
        .filter(|t| t.compensates.is_some())
        .count();
    Ok(Summary {
        passed: checks.iter().all(|c| c.passed),
        seconds: started.elapsed().as_secs_f64(),
        processing_guarantee: config.processing_guarantee.name(),
        decisions_generated: distinct.len(),
        decisions_sent: decisions.len(),
        approved: expected.len(),
        rejected_or_review: others.len(),
        tickets: o.tickets.len() - compensation_tickets,
        compensation_tickets,
        tickets_by_status: o.status_counts(),
        incidents: o.incidents.len(),
        sla_violations: o.violations,
        exhausted_tickets: o.exhausted.len(),
        records_by_topology: metrics
            .iter()
            .map(|(n, m)| (n.clone(), m.snapshot().records_in))
            .collect(),
        checks,
    })
}

async fn send_decisions(
    bootstrap: &str,
    avro: &AvroContext,
    decisions: &[ConsolidatedDecision],
) -> Result<(), Failure> {
    let serde = avro
        .value_serde::<ConsolidatedDecision>(CONSOLIDATED_DECISION_SCHEMA)
        .map_err(runtime_error)?;
    serde
        .prepare(orchestrator::DECISIONS, SerdeRole::Write)
        .map_err(runtime_error)?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .map_err(runtime_error)?;
    let mut deliveries = Vec::with_capacity(decisions.len());
    for d in decisions {
        let mut bytes = Vec::new();
        serde
            .serialize(orchestrator::DECISIONS, d, &mut bytes)
            .map_err(runtime_error)?;
        let record = FutureRecord::to(orchestrator::DECISIONS)
            .key(&d.plan_id)
            .payload(&bytes);
        deliveries.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| runtime_error(e))?,
        );
    }
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                return Err(runtime_error(format!("a decision was not delivered: {e}")));
            }
            Err(_) => return Err(runtime_error("the producer went away")),
        }
    }
    Ok(())
}

/// Consumes what the services write until stopped.
async fn observe(
    bootstrap: String,
    avro: AvroContext,
    observed: Arc<Mutex<Observed>>,
    mut stop: Shutdown,
) -> Result<(), String> {
    let tickets = avro
        .value_serde::<ExecutionTicket>(EXECUTION_TICKET_SCHEMA)
        .map_err(|e| e.to_string())?;
    let results = avro
        .value_serde::<ExecutionResult>(EXECUTION_RESULT_SCHEMA)
        .map_err(|e| e.to_string())?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "engine-demo-observer")
        // What the services committed: under exactly_once_v2, records of aborted
        // transactions are not theirs to count (the embedded broker shows them anyway).
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("fetch.wait.max.ms", "50")
        .create()
        .map_err(|e| e.to_string())?;
    let topics = [
        orchestrator::TICKETS,
        orchestrator::RESULTS,
        orchestrator::INCIDENTS,
        orchestrator::SLA_VIOLATIONS,
        orchestrator::DEAD_LETTER,
        ticket_service::DEAD_LETTER,
        worker::DEAD_LETTER,
    ];
    consumer.subscribe(&topics).map_err(|e| e.to_string())?;
    loop {
        let message = tokio::select! {
            _ = stop.wait() => return Ok(()),
            m = consumer.recv() => m,
        };
        let Ok(message) = message else {
            continue;
        };
        let topic = message.topic().to_string();
        let payload = message.payload();
        let mut o = observed.lock().unwrap_or_else(|p| p.into_inner());
        o.records += 1;
        match topic.as_str() {
            orchestrator::TICKETS => match tickets.deserialize(&topic, payload) {
                Ok(t) => {
                    let compensates = (t.task_type == TaskType::Compensate)
                        .then(|| t.parameters.get("original_ticket_id").cloned())
                        .flatten();
                    o.tickets
                        .entry(t.ticket_id.clone())
                        .or_insert(SeenTicket {
                            plan_id: t.plan_id,
                            task_id: t.task_id,
                            compensates,
                            records: 0,
                        })
                        .records += 1;
                }
                Err(_) => o.undecodable += 1,
            },
            orchestrator::RESULTS => match results.deserialize(&topic, payload) {
                Ok(r) => {
                    let seen = o.results.entry(r.ticket_id.clone()).or_default();
                    match r.status {
                        ExecutionStatus::Running => seen.running += 1,
                        status => seen
                            .terminal
                            .push((status, r.result.metadata.get("failure").cloned())),
                    }
                }
                Err(_) => o.undecodable += 1,
            },
            orchestrator::INCIDENTS => match payload.map(serde_json::from_slice::<Incident>) {
                Some(Ok(i)) => o.incidents.push(i),
                _ => o.undecodable += 1,
            },
            orchestrator::SLA_VIOLATIONS => o.violations += 1,
            worker::DEAD_LETTER
                if message
                    .headers()
                    .is_none_or(|h| !h.iter().any(|h| h.key.starts_with("engine.error"))) =>
            {
                match payload.map(serde_json::from_slice::<worker::DeadLetterTicket>) {
                    Some(Ok(d)) => o.exhausted.push(d.payload.ticket_id),
                    _ => o.undecodable += 1,
                }
            }
            _ => *o.dead_letters.entry(topic).or_default() += 1,
        }
    }
}

/// ticket id -> status the ticket service stored, through its list route.
async fn stored_statuses(http: SocketAddr) -> Result<HashMap<String, String>, String> {
    // Through the service's own list route, as its clients read it: pages of 1,000.
    tokio::task::spawn_blocking(move || {
        let mut statuses = HashMap::new();
        loop {
            let url = format!(
                "http://{http}{}/?offset={}&limit=1000",
                ticket_service::API_PATH,
                statuses.len()
            );
            let text = ureq::get(&url)
                .call()
                .map_err(|e| format!("GET {url}: {e}"))?
                .body_mut()
                .with_config()
                .limit(u64::MAX)
                .read_to_string()
                .map_err(|e| format!("GET {url}: {e}"))?;
            let body: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("GET {url}: {e}"))?;
            let page = body["tickets"].as_array().cloned().unwrap_or_default();
            for ticket in &page {
                if let (Some(id), Some(status)) =
                    (ticket["ticket_id"].as_str(), ticket["status"].as_str())
                {
                    statuses.insert(id.to_string(), status.to_string());
                }
            }
            let total = body["total"].as_u64().unwrap_or(0);
            if page.is_empty() || statuses.len() as u64 >= total {
                return Ok(statuses);
            }
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

fn check(name: &'static str, problems: Vec<String>, ok: String) -> Check {
    let passed = problems.is_empty();
    let detail = if passed {
        ok
    } else {
        let n = problems.len();
        let mut shown: Vec<String> = problems.into_iter().take(5).collect();
        if n > 5 {
            shown.push(format!("... {} more", n - 5));
        }
        format!("{n} problem(s): {}", shown.join("; "))
    };
    Check {
        name,
        passed,
        detail,
    }
}

fn reconcile(
    o: &Observed,
    expected: &HashMap<String, HashSet<String>>,
    others: &HashSet<String>,
    stored: Result<HashMap<String, String>, String>,
    timed_out: bool,
) -> Vec<Check> {
    let mut checks = Vec::new();
    checks.push(check(
        "settled",
        if timed_out {
            vec!["the run did not settle before --timeout-secs".into()]
        } else {
            vec![]
        },
        "every ticket reached a terminal state".into(),
    ));

    // Originals: exactly the approved plans' tasks, each once.
    let mut seen: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut problems = Vec::new();
    for (id, t) in &o.tickets {
        if t.compensates.is_some() {
            continue;
        }
        if others.contains(&t.plan_id) {
            problems.push(format!(
                "plan {} was not approved but got ticket {id}",
                t.plan_id
            ));
        } else if !seen.entry(&t.plan_id).or_default().insert(&t.task_id) {
            problems.push(format!(
                "plan {} task {} has two tickets",
                t.plan_id, t.task_id
            ));
        }
    }
    for (plan, tasks) in expected {
        let got = seen.get(plan.as_str()).cloned().unwrap_or_default();
        for task in tasks {
            if !got.contains(task.as_str()) {
                problems.push(format!("plan {plan} task {task} got no ticket"));
            }
        }
    }
    let expected_total: usize = expected.values().map(HashSet::len).sum();
    checks.push(check(
        "tickets",
        problems,
        format!(
            "{expected_total} tickets for {} approved plans, one per task; none for the {} others",
            expected.len(),
            others.len()
        ),
    ));

    let duplicated: Vec<String> = o
        .tickets
        .iter()
        .filter(|(_, t)| t.records != 1)
        .map(|(id, t)| format!("ticket {id} written {} times", t.records))
        .collect();
    checks.push(check(
        "no-duplicate-tickets",
        duplicated,
        "every ticket written once to execution.tickets".into(),
    ));

    let mut problems = Vec::new();
    for id in o.tickets.keys() {
        match o.results.get(id).map(|r| r.terminal.len()) {
            None | Some(0) => problems.push(format!("ticket {id} has no final result")),
            Some(1) => {}
            Some(n) => problems.push(format!("ticket {id} has {n} final results")),
        }
    }
    for id in o.results.keys() {
        if !o.tickets.contains_key(id) {
            problems.push(format!("a result for unknown ticket {id}"));
        }
    }
    checks.push(check(
        "one-final-result-per-ticket",
        problems,
        format!(
            "{} tickets, one COMPLETED or FAILED result each",
            o.tickets.len()
        ),
    ));

    // The saga: in a plan with a failed ticket, every completed ticket and every
    // executed failed one is compensated once; nothing else is.
    let final_of = |id: &str| o.results.get(id).and_then(|r| r.terminal.first().cloned());
    let mut plans: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut compensated: HashMap<&str, usize> = HashMap::new();
    for (id, t) in &o.tickets {
        match &t.compensates {
            None => plans.entry(&t.plan_id).or_default().push(id),
            Some(original) => *compensated.entry(original.as_str()).or_default() += 1,
        }
    }
    let mut problems = Vec::new();
    let mut failed_originals = 0;
    let mut expected_compensations = 0;
    for (plan, ids) in &plans {
        let failed = ids
            .iter()
            .any(|id| matches!(final_of(id), Some((ExecutionStatus::Failed, _))));
        for id in ids {
            let outcome = final_of(id);
            if matches!(outcome, Some((ExecutionStatus::Failed, _))) {
                failed_originals += 1;
            }
            let should = failed
                && match &outcome {
                    Some((ExecutionStatus::Completed, _)) => true,
                    Some((ExecutionStatus::Failed, failure)) => {
                        failure.as_deref() == Some("execution")
                    }
                    _ => false,
                };
            expected_compensations += usize::from(should);
            let got = compensated.get(id).copied().unwrap_or(0);
            if got != usize::from(should) {
                problems.push(format!(
                    "plan {plan} ticket {id} ({outcome:?}) has {got} compensations, expected {}",
                    usize::from(should)
                ));
            }
        }
    }
    checks.push(check(
        "compensations",
        problems,
        format!(
            "{expected_compensations} compensation tickets for the plans with failures, none elsewhere"
        ),
    ));

    let ticket_failed = o
        .incidents
        .iter()
        .filter(|i| i.incident_type == IncidentType::TicketFailed)
        .count();
    let failed_compensations = o
        .tickets
        .iter()
        .filter(|(id, t)| {
            t.compensates.is_some() && matches!(final_of(id), Some((ExecutionStatus::Failed, _)))
        })
        .count();
    let compensation_failed = o.incidents.len() - ticket_failed;
    let mut problems = Vec::new();
    if ticket_failed != failed_originals {
        problems.push(format!(
            "{ticket_failed} TICKET_FAILED incidents for {failed_originals} failed tickets"
        ));
    }
    if compensation_failed != failed_compensations {
        problems.push(format!(
            "{compensation_failed} COMPENSATION_FAILED incidents for {failed_compensations} failed compensations"
        ));
    }
    checks.push(check(
        "incidents",
        problems,
        format!("one per failed ticket ({ticket_failed}) and failed compensation ({compensation_failed})"),
    ));

    let executed_failures: HashSet<&str> = o
        .tickets
        .keys()
        .filter(|id| {
            matches!(final_of(id), Some((ExecutionStatus::Failed, Some(f))) if f == "execution")
        })
        .map(String::as_str)
        .collect();
    let exhausted: HashSet<&str> = o.exhausted.iter().map(String::as_str).collect();
    let mut problems = Vec::new();
    if exhausted.len() != o.exhausted.len() {
        problems.push("a ticket was dead-lettered twice".into());
    }
    for id in executed_failures.symmetric_difference(&exhausted) {
        problems.push(format!("ticket {id}: exhausted and dead-lettered disagree"));
    }
    checks.push(check(
        "exhausted-tickets-dead-lettered",
        problems,
        format!(
            "{} tickets out of attempts, each on execution.tickets.dlq once",
            exhausted.len()
        ),
    ));

    let mut problems: Vec<String> = o
        .dead_letters
        .iter()
        .map(|(topic, n)| format!("{n} records on {topic}"))
        .collect();
    if o.undecodable > 0 {
        problems.push(format!(
            "{} records the observer could not decode",
            o.undecodable
        ));
    }
    checks.push(check(
        "no-other-dead-letters",
        problems,
        "nothing rejected by any topology".into(),
    ));

    let problems = match stored {
        Err(e) => vec![e],
        Ok(stored) => {
            let mut problems = Vec::new();
            for id in o.tickets.keys() {
                let want = match final_of(id) {
                    Some((ExecutionStatus::Completed, _)) => "COMPLETED",
                    Some((ExecutionStatus::Failed, _)) => "FAILED",
                    _ => "PENDING or RUNNING",
                };
                match stored.get(id) {
                    None => problems.push(format!("ticket {id} is not in the ticket store")),
                    Some(got) if got != want => {
                        problems.push(format!("ticket {id}: store says {got}, results say {want}"))
                    }
                    Some(_) => {}
                }
            }
            if stored.len() != o.tickets.len() {
                problems.push(format!(
                    "the ticket store holds {} tickets, the topic {}",
                    stored.len(),
                    o.tickets.len()
                ));
            }
            problems
        }
    };
    checks.push(check(
        "ticket-api-agrees",
        problems,
        "the ticket service's store matches every final result".into(),
    ));
    checks
}
