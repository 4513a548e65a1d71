//! The `engine` command as users run it: real processes for `dev` and `run`, and the
//! command-line contract (listing, describing, validation, configuration errors, exit
//! codes).

#![allow(clippy::unwrap_used)] // tests state their expectations with unwrap

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use engine::Catalog;
use engine::serde::Serdes;
use engine::topology::{Topic, TopologyBuilder};
use serde_json::{Value, json};
use support::{committed_total, consume, produce_keyed};
use topologies::tickets::{TicketStatus, sample_ticket};

fn engine() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_engine"));
    c.env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env_remove("KAFKA_SCHEMA_REGISTRY_URL")
        .env_remove("ENGINE_CONFIG");
    c
}

fn output(c: &mut Command) -> (i32, String, String) {
    let o = c.output().expect("engine runs");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Kills the child when the test ends, however it ends.
struct Running(Child);
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn list_shows_one_topology_per_line_with_a_description() {
    let (code, out, _) = output(engine().arg("list"));
    assert_eq!(code, 0);
    let line = out
        .lines()
        .find(|l| l.starts_with("ticket-pipeline"))
        .expect("ticket-pipeline listed");
    assert!(line.contains("bench.tickets.in"), "{line}");
}

#[test]
fn describe_prints_text_and_mermaid() {
    let (code, out, _) = output(engine().args(["describe", "ticket-pipeline"]));
    assert_eq!(code, 0);
    assert!(
        out.contains("Source: KSTREAM-SOURCE-0000000000 (topics: [bench.tickets.in])"),
        "{out}"
    );
    let (code, out, _) =
        output(engine().args(["describe", "ticket-pipeline", "--format", "mermaid"]));
    assert_eq!(code, 0);
    assert!(out.starts_with("flowchart LR"), "{out}");
}

#[test]
fn unknown_topology_and_bad_usage_exit_2() {
    let (code, _, err) = output(engine().args(["describe", "nope"]));
    assert_eq!(code, 2);
    assert!(
        err.contains("no topology named `nope`") && err.contains("ticket-pipeline"),
        "{err}"
    );
    let (code, _, _) = output(engine().args(["frobnicate"]));
    assert_eq!(code, 2);
    let (code, out, _) = output(engine().arg("--version"));
    assert_eq!(code, 0);
    assert!(out.starts_with("engine "), "{out}");
}

#[test]
fn an_invalid_topology_prints_all_its_problems_and_exits_2() {
    let catalog = Catalog::new().with("broken", "two problems", |_| {
        let b = TopologyBuilder::new("broken");
        let s = b
            .stream(&Topic::new("in", Serdes::string(), Serdes::string()))
            .named("in");
        s.to(&Topic::new("out", Serdes::string(), Serdes::string()))
            .named("same");
        s.to(&Topic::new("out2", Serdes::string(), Serdes::string()))
            .named("same");
        s.filter(|_k, _v| true).named("dead-end");
        b.build()
    });
    for command in [
        vec!["engine", "validate", "broken"],
        vec!["engine", "run", "broken", "--embedded"],
    ] {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = engine::cli::run(&catalog, command.clone(), &mut out, &mut err);
        let err = String::from_utf8(err).unwrap();
        assert_eq!(code, 2, "{command:?}: {err}");
        assert!(err.contains("duplicate node name `same`"), "{err}");
        assert!(err.contains("node `dead-end` has no children"), "{err}");
    }
}

#[test]
fn run_without_a_broker_refuses_to_start_and_says_how_to_configure_one() {
    let (code, _, err) = output(engine().args(["run", "ticket-pipeline"]));
    assert_eq!(code, 2);
    assert!(
        err.contains("KAFKA_BOOTSTRAP_SERVERS") && err.contains("--embedded"),
        "{err}"
    );
}

#[test]
fn bad_configuration_is_refused_with_how_to_fix_it() {
    let (code, _, err) = output(engine().args([
        "run",
        "ticket-pipeline",
        "--bootstrap-servers",
        "localhost:9092",
        "--kafka",
        "no.such.property=1",
        "--kafka",
        "group.id=mine",
    ]));
    assert_eq!(code, 2);
    assert!(err.contains("no.such.property"), "{err}");
    assert!(
        err.contains("group.id") && err.contains("application id"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("engine.toml");
    std::fs::write(&file, "[kafka]\nbootstrap = \"x:1\"\n").unwrap();
    let (code, _, err) = output(
        engine()
            .args(["validate", "ticket-pipeline", "--config"])
            .arg(&file),
    );
    assert_eq!(code, 2);
    assert!(err.contains("unknown field `bootstrap`"), "{err}");

    let (code, _, err) = output(engine().args([
        "run",
        "ticket-pipeline",
        "--http",
        "127.0.0.1:0",
        "--advertised-http",
        "http://engine-0:8080",
    ]));
    assert_eq!(code, 2);
    assert!(
        err.contains("--advertised-http") && err.contains("HOST:PORT"),
        "{err}"
    );

    // Exactly-once refuses what contradicts it, each with its fix.
    let (code, _, err) = output(engine().args([
        "run",
        "ticket-pipeline",
        "--bootstrap-servers",
        "localhost:9092",
        "--processing-guarantee",
        "exactly_once_v2",
        "--kafka",
        "consumer.isolation.level=read_uncommitted",
        "--kafka",
        "transactional.id=mine",
    ]));
    assert_eq!(code, 2);
    assert!(
        err.contains("consumer.isolation.level=read_uncommitted")
            && err.contains("must read only committed records; remove the property")
            && err.contains("transactional.id")
            && err.contains("instance id kept in the state directory"),
        "{err}"
    );
}

#[test]
fn an_unreachable_broker_fails_in_bounded_time_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("engine.toml");
    std::fs::write(&file, "[runtime]\nstartup_timeout_ms = 2000\n").unwrap();
    let start = Instant::now();
    let (code, _, err) = output(
        engine()
            .args(["run", "ticket-pipeline", "--config"])
            .arg(&file)
            .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1"),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no Kafka broker answered at 127.0.0.1:1"),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn sigterm_during_start_up_stops_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("engine.toml");
    // Start-up would wait two minutes for a broker that never answers.
    std::fs::write(&file, "[runtime]\nstartup_timeout_ms = 120000\n").unwrap();
    let mut run = Running(
        engine()
            .args(["run", "ticket-pipeline", "--config"])
            .arg(&file)
            .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("engine run starts"),
    );
    std::thread::sleep(Duration::from_secs(2));
    signal(&run.0, "-TERM");
    // Not a timing assertion: without the signal honoured it runs for two minutes.
    let (code, log) = exit_within(&mut run, Duration::from_secs(30));
    assert_eq!(
        code,
        Some(0),
        "nothing was consumed, so nothing is left to commit: {log}"
    );
    assert!(log.contains("stopped while starting"), "{log}");
}

/// Starts `engine dev`; returns it with the broker and registry addresses it printed.
fn engine_dev(args: &[&str]) -> (Running, String, String) {
    let mut child = engine()
        .arg("dev")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("engine dev starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = |prefix: &str| {
        let mut text = String::new();
        stdout.read_line(&mut text).unwrap();
        text.trim()
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected {prefix}..., got {text:?}"))
            .to_string()
    };
    let bootstrap = line("KAFKA_BOOTSTRAP_SERVERS=");
    let registry = line("KAFKA_SCHEMA_REGISTRY_URL=");
    (Running(child), bootstrap, registry)
}

/// Feeds `lines` to `engine produce` on stdin.
fn engine_produce(bootstrap: &str, registry: &str, args: &[&str], lines: &[String]) -> String {
    use std::io::Write;
    let mut child = engine()
        .arg("produce")
        .args(args)
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("KAFKA_SCHEMA_REGISTRY_URL", registry)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("engine produce starts");
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "engine produce failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads `max` records with `engine consume --from-beginning`, as JSON.
fn engine_consume(bootstrap: &str, registry: &str, topic: &str, max: usize) -> Vec<Value> {
    let (code, out, err) = output(
        engine()
            .args([
                "consume",
                topic,
                "--from-beginning",
                "--idle-timeout-ms",
                "20000",
                "--max",
            ])
            .arg(max.to_string())
            .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
            .env("KAFKA_SCHEMA_REGISTRY_URL", registry),
    );
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ticket_json(n: u32, status: TicketStatus) -> String {
    serde_json::to_string(&sample_ticket(n, status)).unwrap()
}

const TICKET_SCHEMA_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/schemas/execution-ticket/execution-ticket.avsc"
);

#[test]
fn engine_run_processes_avro_and_json_from_engine_dev_and_stops_cleanly_on_sigterm() {
    let (_dev, bootstrap, registry) =
        engine_dev(&["--topology", "ticket-pipeline", "--partitions", "4"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut run = Running(
        engine()
            .args(["run", "ticket-pipeline"])
            .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
            .env("KAFKA_SCHEMA_REGISTRY_URL", &registry)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("engine run starts"),
    );
    // Avro through `engine produce`: 75 PENDING, 25 COMPLETED.
    let avro: Vec<String> = (0..100)
        .map(|n| {
            let status = if n % 4 == 0 {
                TicketStatus::Completed
            } else {
                TicketStatus::Pending
            };
            ticket_json(n, status)
        })
        .collect();
    let said = engine_produce(
        &bootstrap,
        &registry,
        &[
            "bench.tickets.in",
            "--schema",
            TICKET_SCHEMA_FILE,
            "--key-field",
            "plan_id",
        ],
        &avro,
    );
    assert!(said.contains("100 records produced"), "{said}");
    // Legacy JSON from a client still on JSON, and one undecodable record.
    let json: Vec<(String, String)> = (100..150)
        .map(|n| {
            (
                format!("plan-{}", n % 3),
                ticket_json(n, TicketStatus::Pending),
            )
        })
        .collect();
    rt.block_on(async {
        produce_keyed(&bootstrap, "bench.tickets.in", &json).await;
        support::produce_bytes(&bootstrap, "bench.tickets.in", b"plan-0", b"\x00garbage").await;
    });

    let out = engine_consume(&bootstrap, &registry, "bench.tickets.out", 125);
    assert_eq!(out.len(), 125, "every PENDING ticket came out");
    let mut ids = std::collections::BTreeSet::new();
    for r in &out {
        assert_eq!(r["format"], "avro", "{r}");
        assert!(r["schema_id"].as_i64().is_some(), "{r}");
        assert_eq!(r["value"]["status"], "RUNNING", "{r}");
        assert_eq!(r["key"], r["value"]["plan_id"], "key kept: {r}");
        ids.insert(r["value"]["ticket_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 125, "no duplicates");
    let dead = rt.block_on(consume(
        &bootstrap,
        "bench.tickets.dlq",
        1,
        Duration::from_secs(30),
    ));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value.as_bytes(), b"\x00garbage");

    // SIGTERM: drain, commit, exit 0.
    let pid = run.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = run.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "engine run did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut log = String::new();
    if let Some(mut stderr) = run.0.stderr.take() {
        use std::io::Read;
        let _ = stderr.read_to_string(&mut log);
    }
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("topology stopped"), "{log}");
    let committed = rt.block_on(committed_total(
        &bootstrap,
        "ticket-pipeline",
        "bench.tickets.in",
        4,
    ));
    assert_eq!(
        committed, 151,
        "every input offset was committed at shutdown"
    );
}

#[test]
fn engine_schema_registers_gets_and_checks_against_the_dev_registry() {
    let (_dev, _bootstrap, registry) = engine_dev(&[]);
    let schema = |args: &[&str]| {
        output(
            engine()
                .arg("schema")
                .args(args)
                .env("KAFKA_SCHEMA_REGISTRY_URL", &registry),
        )
    };
    let (code, out, err) = schema(&["register", "tickets-value", TICKET_SCHEMA_FILE]);
    assert_eq!(code, 0, "{err}");
    let id: i32 = out.trim().parse().unwrap();
    let (code, out, _) = schema(&["get", "tickets-value"]);
    assert_eq!(code, 0);
    let got: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (got["id"].as_i64(), got["version"].as_i64()),
        (Some(id as i64), Some(1))
    );

    let dir = tempfile::tempdir().unwrap();
    let mut evolved: Value =
        serde_json::from_str(&std::fs::read_to_string(TICKET_SCHEMA_FILE).unwrap()).unwrap();
    evolved["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "tenant", "type": "string", "default": "main"}));
    let compatible = dir.path().join("compatible.avsc");
    std::fs::write(&compatible, evolved.to_string()).unwrap();
    let (code, out, err) = schema(&["check", "tickets-value", compatible.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("compatible") && out.contains("BACKWARD"),
        "{out}"
    );

    evolved["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "region", "type": "string"}));
    let incompatible = dir.path().join("incompatible.avsc");
    std::fs::write(&incompatible, evolved.to_string()).unwrap();
    let (code, _, err) = schema(&["check", "tickets-value", incompatible.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("NOT compatible") && err.contains("region"),
        "{err}"
    );
}

const PYTHON_INTEROP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/engine/tests/python/kafka_interop.py"
);

/// Runs the Python interoperability script with `input` on stdin.
fn python(bootstrap: &str, registry: &str, args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("python3")
        .arg(PYTHON_INTEROP)
        .args(args)
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("KAFKA_SCHEMA_REGISTRY_URL", registry)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/test installs confluent-kafka and fastavro)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn python_confluent_clients_and_the_engine_read_each_others_avro() {
    let kafka = Kafka::mock(&[
        "--topic",
        "interop.from-python:2",
        "--topic",
        "interop.from-engine:2",
    ]);
    python_and_engine_interoperate(&kafka, "interop.from-python", "interop.from-engine");
}

#[test]
fn real_kafka_python_confluent_clients_and_the_engine_read_each_others_avro() {
    let Some(bootstrap) = support::real_kafka() else {
        return;
    };
    let (from_python, from_engine) = (
        support::unique("interop.from-python"),
        support::unique("interop.from-engine"),
    );
    let kafka = Kafka::real_topics(bootstrap, &[&from_python, &from_engine], 2);
    python_and_engine_interoperate(&kafka, &from_python, &from_engine);
}

/// confluent-kafka's AvroSerializer and AvroDeserializer (Python) and the engine read
/// each other's records, field for field, through the same schema registry.
fn python_and_engine_interoperate(kafka: &Kafka, from_python: &str, from_engine: &str) {
    let (bootstrap, registry) = (&kafka.bootstrap, &kafka.registry);
    let tickets: Vec<Value> = (0..20u32)
        .map(|n| {
            let status = if n % 2 == 0 {
                TicketStatus::Pending
            } else {
                TicketStatus::Failed
            };
            let mut t = sample_ticket(n, status);
            t.parameters.insert("attempt".into(), n.to_string());
            t.dependencies = (0..n % 3).map(|d| format!("ticket-{d}")).collect();
            t.error_message = (n % 2 == 1).then(|| format!("failure {n}"));
            serde_json::to_value(t).unwrap()
        })
        .collect();
    let lines: Vec<String> = tickets.iter().map(Value::to_string).collect();

    // Python writes with AvroSerializer; the engine decodes.
    python(
        bootstrap,
        registry,
        &["produce", from_python, TICKET_SCHEMA_FILE],
        &lines.join("\n"),
    );
    let read = engine_consume(bootstrap, registry, from_python, tickets.len());
    let mut decoded: Vec<Value> = read
        .iter()
        .map(|r| {
            assert_eq!(r["format"], "avro", "{r}");
            assert_eq!(r["key"], r["value"]["ticket_id"]);
            r["value"].clone()
        })
        .collect();
    decoded.sort_by_key(|v| v["ticket_id"].as_str().unwrap().to_string());
    let mut expected = tickets.clone();
    expected.sort_by_key(|v| v["ticket_id"].as_str().unwrap().to_string());
    assert_eq!(
        decoded, expected,
        "what Python wrote, the engine decodes field for field"
    );

    // The engine writes; Python decodes with AvroDeserializer.
    engine_produce(
        bootstrap,
        registry,
        &[
            from_engine,
            "--schema",
            TICKET_SCHEMA_FILE,
            "--key-field",
            "ticket_id",
        ],
        &lines,
    );
    let printed = python(
        bootstrap,
        registry,
        &["consume", from_engine, &tickets.len().to_string()],
        "",
    );
    let mut from_python: Vec<Value> = printed
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["value"].clone())
        .collect();
    from_python.sort_by_key(|v| v["ticket_id"].as_str().unwrap().to_string());
    assert_eq!(
        from_python, expected,
        "what the engine wrote, Python decodes field for field"
    );
}

/// A plain HTTP/1.1 GET: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_send(addr, "GET", path, "")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_stateful_topology_answers_queries_health_and_metrics_over_http() {
    let (_dev, bootstrap, registry) =
        engine_dev(&["--topology", "ticket-counts", "--partitions", "2"]);
    let state = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let _run = Running(
        engine()
            .args(["run", "ticket-counts", "--http", &addr, "--state-dir"])
            .arg(state.path())
            .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
            .env("KAFKA_SCHEMA_REGISTRY_URL", &registry)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("engine run starts"),
    );
    // 30 tickets over plans plan-0, plan-1, plan-2: 10 each.
    let tickets: Vec<String> = (0..30)
        .map(|n| ticket_json(n, TicketStatus::Pending))
        .collect();
    engine_produce(
        &bootstrap,
        &registry,
        &[
            "bench.tickets.in",
            "--schema",
            TICKET_SCHEMA_FILE,
            "--key-field",
            "plan_id",
        ],
        &tickets,
    );
    // Until every partition is restored and every ticket counted (503 while restoring).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = if std::net::TcpStream::connect(&addr).is_ok() {
            http_get(&addr, "/stores/tickets-per-plan?prefix=plan-")
        } else {
            (0, String::new())
        };
        if status == 200 {
            let all: Value = serde_json::from_str(&body).unwrap();
            let counts: Vec<i64> = all["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["value"].as_i64().unwrap())
                .collect();
            if counts == vec![10, 10, 10] {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "counts never reached 10 per plan: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) = http_get(&addr, "/stores/tickets-per-plan/plan-1");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["key"].as_str(), v["value"].as_i64()),
        (Some("plan-1"), Some(10)),
        "{body}"
    );
    let (status, body) = http_get(&addr, "/stores/tickets-per-plan/plan-99");
    assert_eq!(status, 404, "{body}");
    let (status, body) = http_get(&addr, "/health");
    assert_eq!(status, 200, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (health["live"].as_bool(), health["ready"].as_bool()),
        (Some(true), Some(true)),
        "{body}"
    );
    assert_eq!(health["registry"]["fallback_to_json"], false, "{body}");
    let (status, body) = http_get(&addr, "/health/live");
    assert_eq!((status, body.as_str()), (200, r#"{"live":true}"#));
    let (status, metrics) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("engine_records_in_total{application=\"ticket-counts\"} 30"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "engine_store_entries{application=\"ticket-counts\",store=\"tickets-per-plan\""
        ),
        "{metrics}"
    );
    // Everything consumed was processed: no lag on either partition, 30 records timed.
    for partition in 0..2 {
        let line = format!(
            "engine_consumer_lag{{application=\"ticket-counts\",topic=\"bench.tickets.in\",partition=\"{partition}\"}} 0"
        );
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    assert!(
        metrics
            .contains("engine_processing_latency_seconds_count{application=\"ticket-counts\"} 30"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "engine_record_e2e_latency_seconds_bucket{application=\"ticket-counts\",le=\"+Inf\"} 30"
        ),
        "{metrics}"
    );
}

const RESULT_SCHEMA_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/schemas/execution-result/execution-result.avsc"
);

#[test]
fn the_ticket_service_answers_its_api_from_the_store() {
    let (_dev, bootstrap, registry) = engine_dev(&[
        "--topology",
        "execution-ticket-service",
        "--partitions",
        "2",
    ]);
    let state = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let _run = Running(
        engine()
            .args([
                "run",
                "execution-ticket-service",
                "--http",
                &addr,
                "--state-dir",
            ])
            .arg(state.path())
            .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
            .env("KAFKA_SCHEMA_REGISTRY_URL", &registry)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("engine run starts"),
    );
    // A worker only reports on a ticket it has seen: wait until the service has it.
    store_four_tickets(&bootstrap, &registry, &addr);
    let results: Vec<String> = [("ticket-1", "RUNNING", 10), ("ticket-1", "COMPLETED", 20)]
        .iter()
        .map(|(id, status, at)| {
            json!({"ticket_id": id, "status": status, "result": {"success": true, "output": {}, "metadata": {}, "logs": []},
                   "error_message": null, "actual_duration_ms": 10, "agent_id": "w1", "timestamp": at, "schema_version": 1})
                .to_string()
        })
        .collect();
    // Results are keyed by ticket id; one partition's order is what keeps them in order.
    engine_produce(
        &bootstrap,
        &registry,
        &[
            "execution.results",
            "--schema",
            RESULT_SCHEMA_FILE,
            "--key-field",
            "ticket_id",
        ],
        &results,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let ticket = loop {
        let (status, body) = if std::net::TcpStream::connect(&addr).is_ok() {
            http_get(&addr, "/api/v1/tickets/ticket-1")
        } else {
            (0, String::new())
        };
        if status == 200 {
            let v: Value = serde_json::from_str(&body).unwrap();
            if v["status"] == "COMPLETED" {
                break v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "ticket-1 never COMPLETED: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(ticket["started_at"], 10);
    assert_eq!(ticket["completed_at"], 20);
    let (status, body) = http_get(&addr, "/api/v1/tickets/ticket-2");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(&addr, "/api/v1/tickets/no-such-ticket");
    assert_eq!(status, 404);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"detail": "Ticket not found"})
    );
}

/// `method path` with a JSON body: the status and the body.
fn http_send(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn json_of(answer: &(u16, String)) -> Value {
    serde_json::from_str(&answer.1).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/ticket-api/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Checks an HS256 token's signature with Python's own `hmac` (not the engine's code)
/// and returns its claims.
fn verified_claims(token: &str, secret: &str) -> Value {
    let script = "import sys, hmac, hashlib, base64, json\n\
        token, secret = sys.argv[1], sys.argv[2]\n\
        head, claims, signature = token.split('.')\n\
        pad = lambda s: s + '=' * (-len(s) % 4)\n\
        expected = hmac.new(secret.encode(), (head + '.' + claims).encode(), hashlib.sha256).digest()\n\
        assert hmac.compare_digest(base64.urlsafe_b64decode(pad(signature)), expected), 'bad signature'\n\
        assert json.loads(base64.urlsafe_b64decode(pad(head))) == {'alg': 'HS256', 'typ': 'JWT'}\n\
        print(base64.urlsafe_b64decode(pad(claims)).decode())\n";
    let out = Command::new("python3")
        .args(["-c", script, token, secret])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The routes of the Python service, answered by two instances sharing the store's
/// partitions: each answers for every ticket (asking the other for the ones it does
/// not hold), with the service's bodies, compared field by field with fixtures written
/// from the service's models.
#[test]
fn the_ticket_api_answers_as_the_service_it_replaces_from_either_of_two_instances() {
    let (_dev, bootstrap, registry) = engine_dev(&[
        "--topology",
        "execution-ticket-service",
        "--partitions",
        "4",
    ]);
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[topologies.execution-ticket-service]\njwt_secret_key = \"s3cret\"\njwt_token_expiration_seconds = 600\n",
    )
    .unwrap();
    let states = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let addrs: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let _instances: Vec<Running> = (0..2)
        .map(|i| {
            Running(
                engine()
                    .args([
                        "run",
                        "execution-ticket-service",
                        "--http",
                        &addrs[i],
                        "--config",
                    ])
                    .arg(config.path())
                    .arg("--state-dir")
                    .arg(states[i].path())
                    .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
                    .env("KAFKA_SCHEMA_REGISTRY_URL", &registry)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("engine run starts"),
            )
        })
        .collect();
    let (a, b) = (addrs[0].as_str(), addrs[1].as_str());
    // Both instances up, each holding part of the store, and each knowing the other's.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ready = addrs.iter().all(|addr| {
            std::net::TcpStream::connect(addr).is_ok()
                && http_get(addr, "/api/v1/tickets/?limit=1").0 == 200
        });
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the instances never answered a list"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // POST: the service's defaults and coercions, 201 once stored.
    let created = http_send(
        a,
        "POST",
        "/api/v1/tickets/",
        &fixture("create-request.json"),
    );
    assert_eq!(created.0, 201, "{created:?}");
    let expected: Value = serde_json::from_str(&fixture("created-ticket.json")).unwrap();
    let body = json_of(&created);
    let fields = expected.as_object().unwrap();
    assert_eq!(
        body.as_object()
            .unwrap()
            .keys()
            .collect::<std::collections::BTreeSet<_>>(),
        fields.keys().collect::<std::collections::BTreeSet<_>>(),
        "the model's 30 fields"
    );
    for (field, value) in fields {
        assert_eq!(&body[field], value, "field {field}");
    }
    let id = expected["ticket_id"].as_str().unwrap();
    // A ticket without id, time or status gets them; one COMPLETED; one refused.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut minimal: Value = serde_json::from_str(&fixture("create-request.json")).unwrap();
    for generated in ["ticket_id", "created_at"] {
        minimal.as_object_mut().unwrap().remove(generated);
    }
    minimal["task_id"] = json!("task-test");
    minimal["task_type"] = json!("TEST");
    let generated = http_send(b, "POST", "/api/v1/tickets", &minimal.to_string());
    assert_eq!(generated.0, 201, "{generated:?}");
    let generated = json_of(&generated);
    let generated_id = generated["ticket_id"].as_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&generated_id).is_ok(), "{generated}");
    assert!(generated["created_at"].as_i64().unwrap() >= before);
    assert_eq!(generated["status"], "PENDING");
    let mut done = minimal.clone();
    done["task_id"] = json!("task-deploy");
    done["plan_id"] = json!("plan-b");
    done["status"] = json!("COMPLETED");
    done["created_at"] = json!(1);
    let done = json_of(&http_send(a, "POST", "/api/v1/tickets/", &done.to_string()));
    let done_id = done["ticket_id"].as_str().unwrap().to_string();
    let mut refused = minimal.clone();
    refused.as_object_mut().unwrap().remove("plan_id");
    let refused = http_send(a, "POST", "/api/v1/tickets/", &refused.to_string());
    assert_eq!(refused.0, 422, "{refused:?}");
    let reason = json_of(&refused)["detail"].as_str().unwrap().to_string();
    assert_eq!(
        reason,
        "Validation error: 1 validation error for ExecutionTicket\nplan_id\n  Field required"
    );

    let ids = [id.to_string(), generated_id.clone(), done_id.clone()];
    for addr in [a, b] {
        // Every ticket from either instance: the other's are asked for, not 421.
        for ticket_id in &ids {
            let got = http_get(addr, &format!("/api/v1/tickets/{ticket_id}"));
            assert_eq!(got.0, 200, "{addr}: {got:?}");
            assert_eq!(json_of(&got)["ticket_id"], json!(ticket_id));
        }
        assert_eq!(
            json_of(&http_get(addr, &format!("/api/v1/tickets/{id}"))),
            expected
        );
        let missing = http_get(addr, "/api/v1/tickets/no-such-ticket");
        assert_eq!(missing.0, 404);
        assert_eq!(json_of(&missing), json!({"detail": "Ticket not found"}));

        // The list spans both instances, newest first, filtered and paged.
        let all = json_of(&http_get(addr, "/api/v1/tickets/"));
        assert_eq!(all["total"], 3, "{all}");
        assert_eq!(
            (all["offset"].clone(), all["limit"].clone()),
            (json!(0), json!(100))
        );
        let order: Vec<&str> = all["tickets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["ticket_id"].as_str().unwrap())
            .collect();
        assert_eq!(order, [generated_id.as_str(), id, done_id.as_str()]);
        assert_eq!(all["tickets"][1], expected);
        let page = json_of(&http_get(
            addr,
            "/api/v1/tickets/?plan_id=plan-a&offset=1&limit=1",
        ));
        assert_eq!(page["total"], 2, "{page}");
        assert_eq!(page["tickets"].as_array().unwrap().len(), 1);
        assert_eq!(page["tickets"][0]["ticket_id"], json!(id));
        let completed = json_of(&http_get(addr, "/api/v1/tickets/?status=COMPLETED"));
        assert_eq!(completed["total"], 1);
        assert_eq!(completed["tickets"][0]["ticket_id"], json!(done_id));
        let none = json_of(&http_get(addr, "/api/v1/tickets/?intent_id=other"));
        assert_eq!(none["total"], 0);
        let too_many = http_get(addr, "/api/v1/tickets/?limit=1001");
        assert_eq!(too_many.0, 422);
        assert_eq!(
            json_of(&too_many),
            json!({"detail": [{"type": "less_than_equal", "loc": ["query", "limit"],
                "msg": "Input should be less than or equal to 1000", "input": "1001", "ctx": {"le": 1000}}]})
        );
        assert_eq!(http_get(addr, "/api/v1/tickets/?status=DONE").0, 422);

        // The result, decoded from the JSON string the contract's metadata holds.
        assert_eq!(
            json_of(&http_get(addr, &format!("/api/v1/tickets/{id}/result"))),
            json!({"ticket_id": id, "status": "PENDING", "result": {"artifact": "api:1.2", "size": 3}})
        );
        assert_eq!(
            json_of(&http_get(
                addr,
                &format!("/api/v1/tickets/{done_id}/result")
            )),
            json!({"ticket_id": done_id, "status": "COMPLETED", "result": {"artifact": "api:1.2", "size": 3}})
        );

        // A token scoped to a PENDING ticket; none for a finished one.
        let token = json_of(&http_get(addr, &format!("/api/v1/tickets/{id}/token")));
        assert_eq!(token["token_type"], "Bearer");
        assert_eq!(token["expires_in"], 600);
        assert_eq!(token["ticket_id"], json!(id));
        let scopes = json!([
            "ticket:read",
            "ticket:update",
            "task:build",
            "security:elevated"
        ]);
        assert_eq!(token["scopes"], scopes);
        let claims = verified_claims(token["access_token"].as_str().unwrap(), "s3cret");
        assert_eq!(claims["sub"], json!(id));
        assert_eq!(claims["ticket_id"], json!(id));
        assert_eq!(claims["plan_id"], "plan-a");
        assert_eq!(claims["aud"], "worker-agents");
        assert_eq!(claims["iss"], "neural-hive-mind");
        assert_eq!(claims["scopes"], scopes);
        assert_eq!(claims["exp"], token["expires_at"]);
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            600
        );
        let forbidden = http_get(addr, &format!("/api/v1/tickets/{done_id}/token"));
        assert_eq!(forbidden.0, 403);
        assert_eq!(
            json_of(&forbidden),
            json!({"detail": "Cannot generate token for ticket with status COMPLETED"})
        );
    }

    // Changes go through Kafka as commands; each answer is the ticket once applied, and
    // a read from the other instance right after sees it.
    let patch = json!({"status": "FAILED", "error_message": "boom", "actual_duration_ms": 42,
                       "result_data": {"ok": false, "files": ["a.txt"]}});
    let patched = http_send(
        b,
        "PATCH",
        &format!("/api/v1/tickets/{id}/status"),
        &patch.to_string(),
    );
    assert_eq!(patched.0, 200, "{patched:?}");
    let mut failed = expected.clone();
    failed["status"] = json!("FAILED");
    failed["error_message"] = json!("boom");
    failed["actual_duration_ms"] = json!(42);
    failed["metadata"]["result"] = json!("{\"files\": [\"a.txt\"], \"ok\": false}");
    for (field, value) in failed.as_object().unwrap() {
        assert_eq!(&json_of(&patched)[field], value, "field {field}");
    }
    assert_eq!(
        json_of(&http_get(a, &format!("/api/v1/tickets/{id}"))),
        failed
    );
    assert_eq!(
        json_of(&http_get(a, &format!("/api/v1/tickets/{id}/result")))["result"],
        json!({"ok": false, "files": ["a.txt"]})
    );
    let bad = http_send(
        a,
        "PATCH",
        &format!("/api/v1/tickets/{id}/status"),
        r#"{"status": "DONE"}"#,
    );
    assert_eq!(bad.0, 422, "{bad:?}");
    assert_eq!(json_of(&bad)["detail"][0]["loc"], json!(["body", "status"]));
    let missing = http_send(
        a,
        "PATCH",
        "/api/v1/tickets/nope/status",
        r#"{"status": "FAILED"}"#,
    );
    assert_eq!(
        (missing.0, json_of(&missing)),
        (404, json!({"detail": "Ticket not found"}))
    );

    let retried = http_send(a, "POST", &format!("/api/v1/tickets/{id}/retry"), "");
    assert_eq!(retried.0, 200, "{retried:?}");
    let retried = json_of(&retried);
    assert_eq!(
        (retried["status"].clone(), retried["retry_count"].clone()),
        (json!("PENDING"), json!(1))
    );
    assert_eq!(
        json_of(&http_get(b, &format!("/api/v1/tickets/{id}"))),
        retried
    );
    let again = http_send(b, "POST", &format!("/api/v1/tickets/{id}/retry"), "");
    assert_eq!(
        (again.0, json_of(&again)),
        (
            400,
            json!({"detail": "Ticket deve estar em estado FAILED para retry, atual: PENDING"})
        )
    );
    let nobody = http_send(b, "POST", "/api/v1/tickets/nope/retry", "");
    assert_eq!(
        (nobody.0, json_of(&nobody)),
        (404, json!({"detail": "Ticket não encontrado: nope"}))
    );

    let compensate = json!({"original_ticket_id": id, "reason": "deploy broke", "compensation_action": "rollback",
                            "parameters": {"to": "v1", "force": true}});
    let early = http_send(
        a,
        "POST",
        "/api/v1/tickets/compensation",
        &compensate.to_string(),
    );
    assert_eq!(
        (early.0, json_of(&early)),
        (
            400,
            json!({"detail": "Ticket original deve estar em estado FAILED ou RUNNING, atual: PENDING"})
        )
    );
    let running = http_send(
        a,
        "PATCH",
        &format!("/api/v1/tickets/{id}/status"),
        r#"{"status": "RUNNING"}"#,
    );
    assert_eq!(json_of(&running)["status"], "RUNNING");
    assert_eq!(
        json_of(&running)["error_message"],
        Value::Null,
        "replaced, as the service does"
    );
    let compensated = http_send(
        b,
        "POST",
        "/api/v1/tickets/compensation",
        &compensate.to_string(),
    );
    assert_eq!(compensated.0, 200, "{compensated:?}");
    let compensated = json_of(&compensated);
    let compensation_id = compensated["ticket_id"].as_str().unwrap().to_string();
    assert_eq!(
        compensated,
        json!({"ticket_id": compensation_id, "original_ticket_id": id, "status": "PENDING",
               "action": "rollback", "reason": "deploy broke"})
    );
    let original = json_of(&http_get(a, &format!("/api/v1/tickets/{id}")));
    assert_eq!(original["status"], "COMPENSATING");
    assert_eq!(original["compensation_ticket_id"], json!(compensation_id));
    let compensation = json_of(&http_get(a, &format!("/api/v1/tickets/{compensation_id}")));
    assert_eq!(compensation["task_type"], "COMPENSATE");
    assert_eq!(compensation["task_id"], "compensate-0b1c2d3e");
    assert_eq!(compensation["status"], "PENDING");
    assert_eq!(compensation["plan_id"], "plan-a");
    assert_eq!(compensation["sla"]["timeout_ms"], 120_000);
    assert_eq!(
        compensation["parameters"],
        json!({"action": "rollback", "reason": "deploy broke", "original_ticket_id": id,
               "original_task_type": "BUILD", "to": "v1", "force": "true"})
    );
    assert_eq!(
        compensation["metadata"],
        json!({"compensation_reason": "deploy broke", "original_task_type": "BUILD", "original_status": "RUNNING"})
    );
    let unknown = http_send(
        a,
        "POST",
        "/api/v1/tickets/compensation",
        r#"{"original_ticket_id": "nope", "reason": "r", "compensation_action": "a"}"#,
    );
    assert_eq!(
        (unknown.0, json_of(&unknown)),
        (
            404,
            json!({"detail": "Ticket original nao encontrado: nope"})
        )
    );
    let incomplete = http_send(
        a,
        "POST",
        "/api/v1/tickets/compensation",
        r#"{"reason": "r"}"#,
    );
    assert_eq!(incomplete.0, 422);

    let openapi = json_of(&http_get(a, "/openapi.json"));
    for path in [
        "/api/v1/tickets/",
        "/api/v1/tickets/{ticket_id}",
        "/api/v1/tickets/{ticket_id}/result",
        "/api/v1/tickets/{ticket_id}/token",
        "/api/v1/tickets/{ticket_id}/status",
        "/api/v1/tickets/{ticket_id}/retry",
        "/api/v1/tickets/compensation",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} in {openapi}");
    }
    assert_eq!(
        openapi["components"]["schemas"]["ExecutionTicket"]["properties"]["status"]["enum"],
        json!([
            "PENDING",
            "RUNNING",
            "COMPLETED",
            "FAILED",
            "COMPENSATING",
            "COMPENSATED"
        ])
    );
}

const DECISION_SCHEMA_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/schemas/consolidated-decision/consolidated-decision.avsc"
);

/// Reads a whole topic: every record until `idle_ms` pass without one.
fn engine_consume_all(bootstrap: &str, registry: &str, topic: &str, idle_ms: u64) -> Vec<Value> {
    let (code, out, err) = output(
        engine()
            .args(["consume", topic, "--from-beginning", "--idle-timeout-ms"])
            .arg(idle_ms.to_string())
            .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
            .env("KAFKA_SCHEMA_REGISTRY_URL", registry),
    );
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn consume_with_an_idle_timeout_reads_to_the_end_before_idle_time_counts() {
    let kafka = Kafka::mock(&["--topology", "ticket-pipeline"]);
    let lines: Vec<String> = (0..20).map(|i| format!("{{\"n\": {i}}}")).collect();
    engine_produce(
        &kafka.bootstrap,
        &kafka.registry,
        &["bench.tickets.in", "--format", "json"],
        &lines,
    );
    // An idle timeout far shorter than joining the group and fetching: the records
    // are there, and the consumer reaches the end of the topic before it counts.
    let read = engine_consume_all(&kafka.bootstrap, &kafka.registry, "bench.tickets.in", 1);
    assert_eq!(read.len(), 20, "{read:?}");
}

/// The final status of a ticket through the ticket API, once it is final; `check` is
/// called between tries (it panics if a service is gone).
fn final_status(addr: &str, ticket_id: &str, deadline: Instant, check: &mut dyn FnMut()) -> String {
    loop {
        check();
        let (status, body) = if std::net::TcpStream::connect(addr).is_ok() {
            http_get(addr, &format!("/api/v1/tickets/{ticket_id}"))
        } else {
            (0, String::new())
        };
        if status == 200 {
            let v: Value = serde_json::from_str(&body).unwrap();
            let s = v["status"].as_str().unwrap_or("").to_string();
            if s == "COMPLETED" || s == "FAILED" {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "ticket {ticket_id} never finished: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_three_services_run_as_three_processes_against_engine_dev() {
    let kafka = Kafka::mock(&[
        "--topology",
        "orchestrator-dynamic",
        "--topology",
        "execution-ticket-service",
        "--topology",
        "worker-agents",
        "--topic",
        "plans.consensus",
        "--topic",
        "orchestration.incidents",
        "--topic",
        "sla.violations",
        "--partitions",
        "2",
    ]);
    three_services_reconcile(&kafka);
}

#[test]
fn real_kafka_the_three_services_under_exactly_once_reconcile_with_failures_and_a_kill_of_each() {
    let Some(_) = support::real_kafka() else {
        return;
    };
    // A broker of its own: the catalog's topic names are fixed, and the test above uses
    // them on the shared one.
    let dir = tempfile::tempdir().unwrap();
    let broker = OwnBroker::start(&dir.path().join("kafka.log"));
    let kafka = Kafka::real(
        broker.bootstrap.clone(),
        &[
            "orchestrator-dynamic",
            "execution-ticket-service",
            "worker-agents",
        ],
        2,
    );
    three_services(&kafka, true);
}

#[test]
fn real_kafka_the_three_services_run_as_three_processes_and_create_their_internal_topics() {
    let Some(bootstrap) = support::real_kafka() else {
        return;
    };
    const SERVICES: [&str; 3] = [
        "orchestrator-dynamic",
        "execution-ticket-service",
        "worker-agents",
    ];
    let kafka = Kafka::real(bootstrap, &SERVICES, 2);
    three_services_reconcile(&kafka);
    // The engine created every internal topic (the test created only sources and sinks):
    // one partition per task, changelogs compacted, repartition topics deleted by time.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut changelogs, mut repartitions) = (0, 0);
    for name in SERVICES {
        for topic in build_topology(name).internal_topics() {
            let described = rt.block_on(support::describe_topic(&kafka.bootstrap, &topic.name));
            assert_eq!(
                described,
                Some((2, topic.configs["cleanup.policy"].clone())),
                "internal topic {}",
                topic.name
            );
            match topic.role {
                engine::topology::InternalTopicRole::Repartition => repartitions += 1,
                _ => changelogs += 1,
            }
        }
    }
    assert!(
        changelogs >= 3 && repartitions >= 3,
        "the services keep state and re-key: {changelogs} changelogs, {repartitions} repartition topics"
    );
}

/// Where the process tests' Kafka is: `engine dev` (librdkafka's mock cluster and a
/// schema registry), or the real broker of the real-Kafka tier, with `engine dev`
/// serving only its schema registry and the topologies' user topics created through the
/// admin API (the engine creates the internal ones).
struct Kafka {
    bootstrap: String,
    registry: String,
    _dev: Running,
}

impl Kafka {
    fn mock(dev_args: &[&str]) -> Kafka {
        let (dev, bootstrap, registry) = engine_dev(dev_args);
        Kafka {
            bootstrap,
            registry,
            _dev: dev,
        }
    }

    /// The real broker with the user topics of `topologies`.
    fn real(bootstrap: String, topologies: &[&str], partitions: i32) -> Kafka {
        let mut topics = std::collections::BTreeSet::new();
        for name in topologies {
            let topology = build_topology(name);
            let internal: Vec<String> = topology
                .internal_topics()
                .into_iter()
                .map(|t| t.name)
                .collect();
            topics.extend(
                topology
                    .topics()
                    .into_iter()
                    .filter(|t| !internal.contains(t)),
            );
        }
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        Kafka::real_topics(bootstrap, &topics, partitions)
    }

    /// The real broker with `topics`.
    fn real_topics(bootstrap: String, topics: &[&str], partitions: i32) -> Kafka {
        let (dev, _, registry) = engine_dev(&[]);
        let wanted: Vec<support::TopicSpec<'_>> =
            topics.iter().map(|t| (*t, partitions, &[][..])).collect();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(support::create_topics(&bootstrap, &wanted));
        Kafka {
            bootstrap,
            registry,
            _dev: dev,
        }
    }
}

/// A topology of the `engine` command, built in the test (for its topic names).
fn build_topology(name: &str) -> engine::topology::Topology {
    use engine::registry::{MemoryRegistry, SchemaRegistry};
    use engine::serde::AvroContext;
    let context = engine::BuildContext {
        avro: AvroContext {
            registry: Some(SchemaRegistry::memory(std::sync::Arc::new(
                MemoryRegistry::new(),
            ))),
            ..Default::default()
        },
        ..Default::default()
    };
    topologies::catalog()
        .get(name)
        .expect("a topology of the catalog")
        .build(&context)
        .expect("valid")
}

/// orchestrator-dynamic, execution-ticket-service and worker-agents as three `engine
/// run` processes: every approved decision's tasks become tickets once, every ticket
/// finishes with one final result that the ticket API agrees with, failures are
/// compensated and raise incidents.
fn three_services_reconcile(kafka: &Kafka) {
    three_services(kafka, false);
}

/// [`three_services_reconcile`], or under exactly-once with a fifth of the executions'
/// attempts failing and each service SIGKILLed once mid-run and started again (static
/// membership: it takes its partitions back at once). The checks read the topics with
/// `engine consume`, whose consumer reads committed records only (librdkafka's default
/// `isolation.level`).
fn three_services(kafka: &Kafka, exactly_once_with_kills: bool) {
    use std::collections::{BTreeMap, HashMap, HashSet};
    use topologies::decisions::{CognitivePlan, GeneratorSettings, generate_decisions};

    let (bootstrap, registry) = (&kafka.bootstrap, &kafka.registry);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("engine.toml");
    // Under the kills, executions take 50-500 ms, so the worker dies with some running.
    let time_scale = if exactly_once_with_kills { 1.0 } else { 0.01 };
    let workers = format!(
        "[topologies.worker-agents]\ntime_scale = {time_scale}\nretry_backoff_ms = 20\nretry_backoff_max_ms = 100\n"
    );
    std::fs::write(
        &config,
        if exactly_once_with_kills {
            format!("{workers}failure_rate = 0.2\n[runtime]\nprocessing_guarantee = \"exactly_once_v2\"\n")
        } else {
            workers
        },
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let service = |name: &str, http: Option<&str>, life: u32| {
        let mut c = engine();
        c.args(["run", name, "--config"])
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.path().join(name))
            .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
            .env("KAFKA_SCHEMA_REGISTRY_URL", registry)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(format!("{name}-{life}.log"))).unwrap());
        if exactly_once_with_kills {
            c.args(["--kafka", &format!("consumer.group.instance.id={name}-0")]);
        }
        if let Some(http) = http {
            c.args(["--http", http]);
        }
        Running(c.spawn().expect("engine run starts"))
    };
    let (orchestrator_addr, worker_addr) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let services = [
        (
            "orchestrator-dynamic",
            exactly_once_with_kills.then_some(orchestrator_addr.as_str()),
        ),
        ("execution-ticket-service", Some(addr.as_str())),
        (
            "worker-agents",
            exactly_once_with_kills.then_some(worker_addr.as_str()),
        ),
    ];
    let mut running: Vec<Running> = services
        .iter()
        .map(|(name, http)| service(name, *http, 0))
        .collect();

    let decisions = generate_decisions(
        if exactly_once_with_kills { 60 } else { 20 },
        &GeneratorSettings {
            seed: 7,
            failure_rate: 0.15,
            duplicate_share: 0.1,
            now: 1_760_000_000_000,
            ..Default::default()
        },
    );
    let mut expected: HashMap<String, HashSet<String>> = HashMap::new();
    for d in decisions
        .iter()
        .filter(|d| topologies::orchestrator::is_actionable(d))
    {
        let plan: CognitivePlan =
            serde_json::from_str(d.cognitive_plan.as_deref().unwrap()).unwrap();
        expected.insert(
            d.plan_id.clone(),
            plan.tasks.into_iter().map(|t| t.task_id).collect(),
        );
    }
    let expected_tickets: usize = expected.values().map(HashSet::len).sum();
    assert!(
        expected_tickets > 0 && decisions.len() > 20,
        "the seed gives approvals and duplicates"
    );
    let lines: Vec<String> = decisions
        .iter()
        .map(|d| serde_json::to_string(d).unwrap())
        .collect();
    engine_produce(
        bootstrap,
        registry,
        &[
            "plans.consensus",
            "--schema",
            DECISION_SCHEMA_FILE,
            "--key-field",
            "plan_id",
        ],
        &lines,
    );
    if exactly_once_with_kills {
        // Each service dies once while tickets flow, mid-transaction, and comes back:
        // the orchestrator and the ticket service once tickets are stored, the worker
        // once a ticket it holds (waiting or running) has stayed in its store across a
        // few commits, so the committed store has it too.
        let first_key = |addr: &str, store: &str| -> Option<String> {
            std::net::TcpStream::connect(addr).ok()?;
            let (_, body) = http_get(addr, &format!("/stores/{store}?limit=1"));
            let v: Value = serde_json::from_str(&body).ok()?;
            v["entries"][0]["key"].as_str().map(String::from)
        };
        let pending_for_a_while = || {
            let Some(ticket) = first_key(&worker_addr, "ticket-jobs") else {
                return false;
            };
            std::thread::sleep(Duration::from_millis(300));
            http_get(&worker_addr, &format!("/stores/ticket-jobs/{ticket}")).0 == 200
        };
        for (i, (name, http)) in services.iter().enumerate() {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !(first_key(&addr, "tickets").is_some() && (i < 2 || pending_for_a_while())) {
                assert!(Instant::now() < deadline, "{name} never got work");
                std::thread::sleep(Duration::from_millis(20));
            }
            running[i].0.kill().unwrap();
            running[i].0.wait().unwrap();
            running[i] = service(name, *http, 1);
        }
    }

    // A service that exited says why, rather than the API going silent.
    let lives: Vec<u32> = if exactly_once_with_kills {
        vec![1; 3]
    } else {
        vec![0; 3]
    };
    let mut all_running = || {
        for (((name, _), process), life) in services.iter().zip(&mut running).zip(&lives) {
            if let Some(status) = process.0.try_wait().unwrap() {
                let log = dir.path().join(format!("{name}-{life}.log"));
                panic!(
                    "{name} exited ({status}):\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
    };
    // Every original ticket finishes, as the ticket API reports it.
    let originals = engine_consume(bootstrap, registry, "execution.tickets", expected_tickets);
    let deadline = Instant::now() + Duration::from_secs(120);
    for t in &originals {
        final_status(
            &addr,
            t["value"]["ticket_id"].as_str().unwrap(),
            deadline,
            &mut all_running,
        );
    }
    // Then the whole topic: originals once each, per approved plan task, and
    // compensations, which finish too.
    let all = engine_consume_all(bootstrap, registry, "execution.tickets", 5000);
    let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
    let mut ids = HashSet::new();
    let mut compensations = Vec::new();
    for t in &all {
        let v = &t["value"];
        let id = v["ticket_id"].as_str().unwrap().to_string();
        assert!(ids.insert(id.clone()), "ticket {id} written twice");
        if v["task_type"] == "COMPENSATE" {
            compensations.push(id);
        } else {
            assert!(
                seen.entry(v["plan_id"].as_str().unwrap().into())
                    .or_default()
                    .insert(v["task_id"].as_str().unwrap().into()),
                "a plan task got two tickets"
            );
            assert_eq!(t["key"], v["plan_id"], "tickets are keyed by plan");
        }
    }
    assert_eq!(
        seen, expected,
        "one ticket per task of each approved decision"
    );
    let mut finals: BTreeMap<String, String> = BTreeMap::new();
    for id in &ids {
        finals.insert(
            id.clone(),
            final_status(&addr, id, deadline, &mut all_running),
        );
    }
    let failed = finals.values().filter(|s| *s == "FAILED").count();
    assert!(failed > 0, "the seed makes some tasks fail");
    assert!(!compensations.is_empty(), "failures are compensated");

    // One final result per ticket on execution.results, agreeing with the API.
    let results = engine_consume_all(bootstrap, registry, "execution.results", 5000);
    let mut final_results: HashMap<String, Vec<String>> = HashMap::new();
    for r in &results {
        assert_eq!(r["format"], "avro", "results are Avro");
        let v = &r["value"];
        if v["status"] != "RUNNING" {
            final_results
                .entry(v["ticket_id"].as_str().unwrap().into())
                .or_default()
                .push(v["status"].as_str().unwrap().into());
        }
    }
    for (id, status) in &finals {
        assert_eq!(
            final_results.get(id),
            Some(&vec![status.clone()]),
            "ticket {id}: one final result, the one the API shows"
        );
    }
    let incidents = engine_consume(bootstrap, registry, "orchestration.incidents", 1);
    assert_eq!(incidents.len(), 1, "failures raise incidents");
    assert_eq!(incidents[0]["value"]["incident_type"], "TICKET_FAILED");
    if exactly_once_with_kills {
        let log = |life: u32| {
            std::fs::read_to_string(dir.path().join(format!("worker-agents-{life}.log")))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("engine::runtime") || l.contains("resuming"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            log(1).contains("resuming the tickets accepted and not finished"),
            "the worker was killed with tickets in progress, and its next life resumed them:\n{}\n---\n{}",
            log(0),
            log(1)
        );
    }
}

#[test]
fn engine_demo_reconciles_and_says_so_in_json() {
    let (code, out, err) = output(engine().args([
        "demo",
        "--decisions",
        "60",
        "--failure-rate",
        "0.2",
        "--json",
        "--log",
        "warn",
    ]));
    assert_eq!(code, 0, "{out}\n{err}");
    let summary: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["passed"], true);
    assert_eq!(summary["decisions_generated"], 60);
    assert!(summary["approved"].as_u64().unwrap() > 0);
    assert!(
        summary["compensation_tickets"].as_u64().unwrap() > 0,
        "{summary}"
    );
    let checks = summary["checks"].as_array().unwrap();
    assert!(checks.len() >= 9 && checks.iter().all(|c| c["passed"] == true));
    assert!(err.contains("tickets"), "a live view on stderr: {err}");
    assert!(
        !err.contains("logicalType") && !err.contains("apache_avro"),
        "the shipped contracts' notices are INFO, below the demo's first screen: {err}"
    );

    // The same under exactly-once (on the embedded broker: transactions, without the
    // hiding of aborted records that the real-broker tests check).
    let (code, out, err) = output(engine().args([
        "demo",
        "--processing-guarantee",
        "exactly_once_v2",
        "--decisions",
        "30",
        "--failure-rate",
        "0.2",
        "--json",
        "--log",
        "warn",
    ]));
    assert_eq!(code, 0, "{out}\n{err}");
    let summary: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["passed"], true, "{summary}");
    assert_eq!(summary["processing_guarantee"], "exactly_once_v2");

    let (code, _, err) = output(engine().args(["demo", "--failure-rate", "2"]));
    assert_eq!(code, 2);
    assert!(
        err.contains("--failure-rate must be between 0 and 1"),
        "{err}"
    );
}

/// Sums a Prometheus series over its label sets.
fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[test]
fn an_instance_killed_mid_run_restarts_with_exact_store_contents() {
    let kafka = Kafka::mock(&["--topology", "ticket-counts", "--partitions", "2"]);
    killed_instance_restarts_exactly(&kafka);
}

#[test]
fn real_kafka_an_instance_killed_mid_run_restarts_with_exact_store_contents() {
    let Some(bootstrap) = support::real_kafka() else {
        return;
    };
    let kafka = Kafka::real(bootstrap, &["ticket-counts"], 2);
    killed_instance_restarts_exactly(&kafka);
}

/// `ticket-counts` killed with SIGKILL mid-stream and started again: its store counts
/// every input exactly once, and no output counts past the truth.
fn killed_instance_restarts_exactly(kafka: &Kafka) {
    let (bootstrap, registry) = (&kafka.bootstrap, &kafka.registry);
    let state = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    // Without the record cache every input writes the changelog at once, so a kill
    // almost surely lands between a changelog write and its offset's commit.
    let config = state.path().join("engine.toml");
    std::fs::write(&config, "[runtime]\ncache_max_bytes = 0\n").unwrap();
    let start = || {
        engine()
            .args(["run", "ticket-counts", "--http", &addr, "--config"])
            .arg(&config)
            .arg("--state-dir")
            .arg(state.path().join("state"))
            // The mock cluster lets a restarted member in once the old one's session
            // expired: keep it short.
            .args(["--kafka", "consumer.session.timeout.ms=6000"])
            .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
            .env("KAFKA_SCHEMA_REGISTRY_URL", registry)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("engine run starts")
    };
    const PLANS: u32 = 20;
    const TICKETS: u32 = 40_000;
    let lines: Vec<String> = (0..TICKETS)
        .map(|n| {
            let mut t = sample_ticket(n, TicketStatus::Pending);
            t.plan_id = format!("plan-{}", n % PLANS);
            serde_json::to_string(&t).unwrap()
        })
        .collect();
    let mut first = Running(start());
    // Input keeps arriving while the instance runs, and it is killed mid-stream.
    let (mut producer, feeder) = feed_tickets(bootstrap, registry, lines, 2000, 50);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "the first instance never got going"
        );
        if std::net::TcpStream::connect(&addr).is_ok() {
            let (_, text) = http_get(&addr, "/metrics");
            if metric_sum(&text, "engine_records_in_total").unwrap_or(0.0) >= 5000.0 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    first.0.kill().unwrap(); // SIGKILL: no flush, no commit, no checkpoint
    first.0.wait().unwrap();
    let _second = Running(start());
    feeder.join().unwrap();
    assert!(producer.wait().unwrap().success());

    // Done when everything is consumed and nothing is left to commit.
    let deadline = Instant::now() + Duration::from_secs(120);
    let counts: std::collections::BTreeMap<String, i64> = loop {
        assert!(
            Instant::now() < deadline,
            "the restarted instance did not catch up"
        );
        std::thread::sleep(Duration::from_millis(500));
        if std::net::TcpStream::connect(&addr).is_err() {
            continue;
        }
        let (_, text) = http_get(&addr, "/metrics");
        let lag = metric_sum(&text, "engine_consumer_lag");
        let (status, body) = http_get(&addr, "/stores/tickets-per-plan?limit=1000");
        if status != 200 || lag != Some(0.0) {
            continue;
        }
        let v: Value = serde_json::from_str(&body).unwrap();
        let counts: std::collections::BTreeMap<String, i64> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["key"].as_str().unwrap().to_string(),
                    e["value"].as_i64().unwrap(),
                )
            })
            .collect();
        if counts.values().sum::<i64>() >= i64::from(TICKETS) {
            break counts;
        }
    };
    let expected: std::collections::BTreeMap<String, i64> = (0..PLANS)
        .map(|p| (format!("plan-{p}"), i64::from(TICKETS / PLANS)))
        .collect();
    assert_eq!(
        counts, expected,
        "the store counts every ticket exactly once across the crash"
    );
    // Outputs may repeat an update (at-least-once) but never count past the truth: each
    // plan's highest update is exact.
    assert_eq!(highest_counts(bootstrap, &expected), expected);
}

/// The highest count `ticket-counts` output per plan on `bench.tickets.counts`, read
/// until they are `expected` (or for 60 s).
fn highest_counts(
    bootstrap: &str,
    expected: &std::collections::BTreeMap<String, i64>,
) -> std::collections::BTreeMap<String, i64> {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use rdkafka::consumer::{Consumer, StreamConsumer};
        use rdkafka::message::Message;
        let consumer: StreamConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set(
                "group.id",
                format!("counts-reader-{}", uuid::Uuid::new_v4()),
            )
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["bench.tickets.counts"]).unwrap();
        let mut highest = std::collections::BTreeMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while highest != *expected {
            let Ok(Ok(m)) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
                break;
            };
            let key = String::from_utf8_lossy(m.key().unwrap()).into_owned();
            let count = i64::from_be_bytes(m.payload().unwrap().try_into().unwrap());
            let h = highest.entry(key).or_insert(count);
            *h = (*h).max(count);
        }
        highest
    })
}

/// `engine produce TOPIC` of ticket JSON lines (keyed by plan), and its stdin.
fn ticket_producer(
    topic: &str,
    bootstrap: &str,
    registry: &str,
) -> (Child, std::process::ChildStdin) {
    let mut producer = engine()
        .args(["produce", topic, "--schema", TICKET_SCHEMA_FILE])
        .args(["--key-field", "plan_id"])
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("KAFKA_SCHEMA_REGISTRY_URL", registry)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = producer.stdin.take().unwrap();
    (producer, stdin)
}

/// Feeds ticket JSON `lines` to `engine produce bench.tickets.in` (keyed by plan), `chunk`
/// at a time every `pause_ms`; returns the producer and the feeding thread.
fn feed_tickets(
    bootstrap: &str,
    registry: &str,
    lines: Vec<String>,
    chunk: usize,
    pause_ms: u64,
) -> (Child, std::thread::JoinHandle<()>) {
    use std::io::Write;
    let (producer, mut stdin) = ticket_producer("bench.tickets.in", bootstrap, registry);
    let feeder = std::thread::spawn(move || {
        for chunk in lines.chunks(chunk) {
            for line in chunk {
                writeln!(stdin, "{line}").unwrap();
            }
            stdin.flush().unwrap();
            std::thread::sleep(Duration::from_millis(pause_ms));
        }
    });
    (producer, feeder)
}

/// Produces tickets 0 to 3 (PENDING) to `execution.tickets` and waits until the ticket
/// service at `addr` has stored ticket-1.
fn store_four_tickets(bootstrap: &str, registry: &str, addr: &str) {
    let tickets: Vec<String> = (0..4)
        .map(|n| ticket_json(n, TicketStatus::Pending))
        .collect();
    engine_produce(
        bootstrap,
        registry,
        &[
            "execution.tickets",
            "--schema",
            TICKET_SCHEMA_FILE,
            "--key-field",
            "plan_id",
        ],
        &tickets,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(std::net::TcpStream::connect(addr).is_ok()
        && http_get(addr, "/api/v1/tickets/ticket-1").0 == 200)
    {
        assert!(Instant::now() < deadline, "ticket-1 never stored");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends `signal` (`-TERM`, `-INT`) to a child.
fn signal(child: &Child, signal: &str) {
    assert!(
        Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// Waits up to `limit` for a child to exit; returns its exit code and its stderr.
fn exit_within(run: &mut Running, limit: Duration) -> (Option<i32>, String) {
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = run.0.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if status.is_none() {
        let _ = run.0.kill();
        let _ = run.0.wait();
    }
    let mut log = String::new();
    if let Some(mut stderr) = run.0.stderr.take() {
        use std::io::Read;
        let _ = stderr.read_to_string(&mut log);
    }
    assert!(
        status.is_some(),
        "engine run still running after {limit:?}:\n{log}"
    );
    (status.and_then(|s| s.code()), log)
}

/// `engine run execution-ticket-service --http` against `engine dev` with `runtime`
/// (TOML of the `[runtime]` table), once it has stored a ticket whose offset is not yet
/// committed (commits wait 10 minutes). Returns engine dev, the service and its address.
fn ticket_service_with_uncommitted_input(
    runtime: &str,
    state: &std::path::Path,
) -> (Running, Running, String) {
    let (dev, bootstrap, registry) = engine_dev(&[
        "--topology",
        "execution-ticket-service",
        "--partitions",
        "2",
    ]);
    let config = state.join("engine.toml");
    std::fs::write(
        &config,
        format!("[runtime]\ncommit_interval_ms = 600000\n{runtime}\n"),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let run = Running(
        engine()
            .args([
                "run",
                "execution-ticket-service",
                "--http",
                &addr,
                "--config",
            ])
            .arg(&config)
            .arg("--state-dir")
            .arg(state.join("stores"))
            .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
            .env("KAFKA_SCHEMA_REGISTRY_URL", &registry)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("engine run starts"),
    );
    store_four_tickets(&bootstrap, &registry, &addr);
    (dev, run, addr)
}

#[test]
fn sigterm_with_the_broker_gone_ends_within_the_shutdown_timeout_with_exit_3() {
    let state = tempfile::tempdir().unwrap();
    let (dev, mut run, addr) =
        ticket_service_with_uncommitted_input("shutdown_timeout_ms = 4000", state.path());
    drop(dev);
    signal(&run.0, "-TERM");
    // While the shutdown waits for a broker that is gone, the executor still serves.
    std::thread::sleep(Duration::from_millis(1500));
    let (status, _) = http_get(&addr, "/health");
    assert!(
        status == 200 || status == 503,
        "/health answers during the shutdown"
    );
    // Not a timing assertion: without a bound the process never exits (the 4 s budget
    // plus a wide margin for a loaded machine).
    let (code, log) = exit_within(&mut run, Duration::from_secs(40));
    assert_eq!(code, Some(3), "{log}");
    assert!(
        log.contains("shutdown of `execution-ticket-service` incomplete"),
        "{log}"
    );
    assert!(
        log.contains("offsets not committed: execution.tickets/"),
        "the partitions whose offsets were not committed are named: {log}"
    );
    let checkpoints: Vec<String> = support::walk(&state.path().join("stores"))
        .into_iter()
        .filter(|p| p.ends_with(".checkpoint"))
        .collect();
    assert!(
        checkpoints.is_empty(),
        "no checkpoint is written for uncommitted state: {checkpoints:?}"
    );
}

#[test]
fn a_second_signal_stops_at_once() {
    let state = tempfile::tempdir().unwrap();
    let (dev, mut run, _) =
        ticket_service_with_uncommitted_input("shutdown_timeout_ms = 600000", state.path());
    drop(dev);
    signal(&run.0, "-TERM");
    std::thread::sleep(Duration::from_millis(1000));
    signal(&run.0, "-INT");
    // The first signal alone would wait up to 10 minutes for the broker.
    let (code, log) = exit_within(&mut run, Duration::from_secs(30));
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains("second signal"), "{log}");
}

#[test]
fn schema_notices_are_logged_once_per_schema_and_field() {
    // The orchestrator builds serdes of the ticket contract for several nodes; its
    // fields with a logicalType Avro ignores are each reported once, at INFO.
    let (code, _, err) = output(engine().args(["validate", "orchestrator-dynamic"]));
    assert_eq!(code, 0, "{err}");
    let notices: Vec<&str> = err.lines().filter(|l| l.contains("logicalType")).collect();
    assert!(
        !notices.is_empty(),
        "the notice is said where an author can act: {err}"
    );
    let mut seen = std::collections::BTreeSet::new();
    for line in &notices {
        assert!(
            line.contains("INFO"),
            "a shipped contract's notice is INFO: {line}"
        );
        let at = line.find("schema=").expect("the notice names its schema");
        assert!(seen.insert(line[at..].to_string()), "said twice: {line}");
    }
    assert!(
        !err.contains("apache_avro"),
        "apache-avro's own duplicate is quiet: {err}"
    );
}

#[test]
fn a_frozen_instance_whose_tasks_moved_on_leaves_no_trace_in_restored_state() {
    // On the mock cluster only: the catalog's topic names are fixed, and the real-Kafka
    // tier's kill test already uses ticket-counts' topics and group on the shared broker.
    let kafka = Kafka::mock(&["--topology", "ticket-counts", "--partitions", "2"]);
    zombie_writes_leave_no_trace(&kafka);
}

/// The counts of `ticket-counts` at `addr` once its lag is 0, if it answers.
fn settled_counts(addr: &str) -> Option<std::collections::BTreeMap<String, i64>> {
    std::net::TcpStream::connect(addr).ok()?;
    let (_, text) = http_get(addr, "/metrics");
    if metric_sum(&text, "engine_consumer_lag") != Some(0.0) {
        return None;
    }
    let (status, body) = http_get(addr, "/stores/tickets-per-plan?limit=1000");
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    Some(
        v["entries"]
            .as_array()?
            .iter()
            .filter_map(|e| Some((e["key"].as_str()?.to_string(), e["value"].as_i64()?)))
            .collect(),
    )
}

/// `ticket-counts` A is frozen (SIGSTOP) mid-stream with writes queued; B takes its
/// tasks over and counts everything; A is thawed (SIGCONT) and rejoins. Whatever A still
/// had queued must not end up in the stores: a third instance restoring from the
/// changelogs alone counts every ticket exactly once.
fn zombie_writes_leave_no_trace(kafka: &Kafka) {
    let (bootstrap, registry) = (&kafka.bootstrap, &kafka.registry);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("engine.toml");
    // Every input writes the changelog at once, so a frozen instance holds some unsent.
    std::fs::write(
        &config,
        "[runtime]\ncache_max_bytes = 0\ncommit_interval_ms = 100\n",
    )
    .unwrap();
    let start = |name: &str, addr: &str| {
        Running(
            engine()
                .args(["run", "ticket-counts", "--http", addr, "--config"])
                .arg(&config)
                .arg("--state-dir")
                .arg(dir.path().join(name))
                .args(["--kafka", "consumer.session.timeout.ms=6000"])
                .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
                .env("KAFKA_SCHEMA_REGISTRY_URL", registry)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap())
                .spawn()
                .expect("engine run starts"),
        )
    };
    const PLANS: u32 = 20;
    const TICKETS: u32 = 20_000;
    let lines: Vec<String> = (0..TICKETS)
        .map(|n| {
            let mut t = sample_ticket(n, TicketStatus::Pending);
            t.plan_id = format!("plan-{}", n % PLANS);
            serde_json::to_string(&t).unwrap()
        })
        .collect();
    let addr_a = format!("127.0.0.1:{}", free_port());
    let mut a = start("a", &addr_a);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(std::net::TcpStream::connect(&addr_a).is_ok()
        && metric_sum(
            &http_get(&addr_a, "/metrics").1,
            "engine_assigned_partitions",
        )
        .unwrap_or(0.0)
            >= 2.0)
    {
        assert!(Instant::now() < deadline, "A never got its partitions");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Input keeps arriving (500 tickets every 100 ms), so A is frozen mid-stream.
    let (mut producer, feeder) = feed_tickets(bootstrap, registry, lines, 500, 100);
    let expected: std::collections::BTreeMap<String, i64> = (0..PLANS)
        .map(|p| (format!("plan-{p}"), i64::from(TICKETS / PLANS)))
        .collect();
    let wait = |what: &str, limit: Duration, mut done: Box<dyn FnMut() -> bool + '_>| {
        let deadline = Instant::now() + limit;
        while !done() {
            let logs: Vec<String> = ["a", "b", "c"]
                .iter()
                .filter_map(|n| std::fs::read_to_string(dir.path().join(format!("{n}.log"))).ok())
                .collect();
            assert!(
                Instant::now() < deadline,
                "{what}:\n{}",
                logs.join("\n---\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    wait(
        "A never got going",
        Duration::from_secs(60),
        Box::new(|| {
            std::net::TcpStream::connect(&addr_a).is_ok()
                && metric_sum(&http_get(&addr_a, "/metrics").1, "engine_records_in_total")
                    .unwrap_or(0.0)
                    >= 4000.0
        }),
    );
    signal(&a.0, "-STOP");
    feeder.join().unwrap();
    assert!(producer.wait().unwrap().success());
    let addr_b = format!("127.0.0.1:{}", free_port());
    let mut b = start("b", &addr_b);
    wait(
        "B did not take over and count everything",
        Duration::from_secs(120),
        Box::new(|| settled_counts(&addr_b).is_some_and(|c| c == expected)),
    );
    signal(&a.0, "-CONT");
    wait(
        "A did not rejoin",
        Duration::from_secs(60),
        Box::new(|| {
            metric_sum(
                &http_get(&addr_a, "/metrics").1,
                "engine_assigned_partitions",
            )
            .unwrap_or(0.0)
                > 0.0
                && settled_counts(&addr_a).is_some()
                && settled_counts(&addr_b).is_some()
        }),
    );
    std::thread::sleep(Duration::from_secs(2));
    // A's view after it rejoined: its restored tasks hold B's counts, not its own.
    let mut merged = std::collections::BTreeMap::new();
    for addr in [&addr_a, &addr_b] {
        for (plan, count) in settled_counts(addr).unwrap_or_default() {
            let previous = merged.insert(plan.clone(), count);
            assert!(
                previous.is_none_or(|p| p == count),
                "{plan}: {previous:?} and {count} on two instances"
            );
        }
    }
    assert_eq!(
        merged, expected,
        "the two instances' stores after A rejoined"
    );
    for run in [&a, &b] {
        signal(&run.0, "-TERM");
    }
    for run in [&mut a, &mut b] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while run.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "an instance did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let addr_c = format!("127.0.0.1:{}", free_port());
    let _c = start("c", &addr_c);
    let mut last = None;
    wait(
        "a fresh instance does not restore the exact counts",
        Duration::from_secs(60),
        Box::new(|| {
            last = settled_counts(&addr_c).filter(|c| c.values().sum::<i64>() > 0);
            last.as_ref() == Some(&expected)
        }),
    );
}

/// An Apache Kafka broker of a test's own (`scripts/kafka`), for real-tier tests that use
/// the catalog's fixed topic names and groups while other tests use them on the shared
/// broker. Stopped (SIGTERM) when dropped.
struct OwnBroker {
    child: Child,
    bootstrap: String,
}

impl OwnBroker {
    fn start(log: &std::path::Path) -> OwnBroker {
        let mut child = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("scripts/kafka starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let bootstrap = line
            .trim()
            .strip_prefix("KAFKA_BOOTSTRAP_SERVERS=")
            .unwrap_or_else(|| {
                panic!(
                    "scripts/kafka did not start: {line:?}\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .to_string();
        OwnBroker { child, bootstrap }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        signal(&self.child, "-TERM");
        let deadline = Instant::now() + Duration::from_secs(40);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Feeds tickets `ticket-0`, `ticket-1`, ... (plan `plan-{n % plans}`, PENDING, due in an
/// hour) to `engine produce TOPIC`, `chunk` every `pause_ms`, until `stop` is set; the
/// thread returns how many it fed once the producer has exited.
fn feed_tickets_until(
    topic: &str,
    bootstrap: &str,
    registry: &str,
    plans: u32,
    (chunk, pause_ms): (u32, u64),
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u32> {
    use std::io::Write;
    let (mut producer, mut stdin) = ticket_producer(topic, bootstrap, registry);
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 3_600_000;
    std::thread::spawn(move || {
        let mut n = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for _ in 0..chunk {
                let mut t = sample_ticket(n, TicketStatus::Pending);
                t.plan_id = format!("plan-{}", n % plans);
                t.sla.deadline = deadline;
                writeln!(stdin, "{}", serde_json::to_string(&t).unwrap()).unwrap();
                n += 1;
            }
            stdin.flush().unwrap();
            std::thread::sleep(Duration::from_millis(pause_ms));
        }
        drop(stdin);
        assert!(producer.wait().unwrap().success(), "engine produce {n}");
        n
    })
}

/// Reads `topic` from the start until `stop` is set; returns when each record arrived,
/// with its partition.
fn arrivals(
    bootstrap: String,
    topic: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(i32, Instant)>> {
    std::thread::spawn(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::Message;
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", format!("arrivals-{}", uuid::Uuid::new_v4()))
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "20")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let mut seen = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                seen.push((m.partition(), Instant::now()));
            }
        }
        seen
    })
}

/// Per event, the longest pause of any partition's output that began while it was the
/// latest event, and the pauses of all partitions added up (a pause: more than 500 ms
/// without output while input flowed).
fn pauses_per_event(
    arrivals: &[(i32, Instant)],
    events: &[(Instant, String)],
    input_until: Instant,
) -> Vec<(String, Duration, Duration)> {
    let mut last: std::collections::BTreeMap<i32, Instant> = Default::default();
    let mut pauses = vec![(Duration::ZERO, Duration::ZERO); events.len()];
    for &(partition, at) in arrivals {
        if let Some(previous) = last.insert(partition, at) {
            let gap = at - previous;
            if gap <= Duration::from_millis(500) || previous > input_until {
                continue;
            }
            // A partition of a killed instance goes quiet just before the kill is
            // recorded: give the event a moment.
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

#[test]
fn real_kafka_ten_rebalances_under_kills_stops_and_starts_keep_counts_exact_and_lose_no_ticket() {
    let Some(_) = support::real_kafka() else {
        return;
    };
    rebalance_storm(None);
}

#[test]
fn real_kafka_ten_eager_rebalances_under_kills_stops_and_starts_keep_counts_exact_and_lose_no_ticket()
 {
    let Some(_) = support::real_kafka() else {
        return;
    };
    // As before cooperative rebalancing was the default: every rebalance revokes all.
    rebalance_storm(Some("range"));
}

/// Three `ticket-counts` instances and one `worker-agents` under continuous input, on a
/// broker of their own; ten rebalances of `ticket-counts` (SIGKILL, SIGTERM, start), two
/// restarts of `worker-agents` (SIGKILL, SIGTERM). Then: every count exact, every
/// ticket executed (none lost), and the longest output pause per rebalance reported.
fn rebalance_storm(strategy: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let broker = OwnBroker::start(&dir.path().join("broker.log"));
    let kafka = Kafka::real(
        broker.bootstrap.clone(),
        &["ticket-counts", "worker-agents"],
        6,
    );
    let (bootstrap, registry) = (&kafka.bootstrap, &kafka.registry);
    const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
    let config = dir.path().join("engine.toml");
    std::fs::write(
        &config,
        "[runtime]\ncache_max_bytes = 0\ncommit_interval_ms = 100\n\n\
         [topologies.worker-agents]\ntime_scale = 0.005\n",
    )
    .unwrap();
    let start = |topology: &str, name: &str, addr: &str| {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join(format!("{name}.log")))
            .unwrap();
        let mut c = engine();
        c.args(["run", topology, "--http", addr, "--config"])
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.path().join(name))
            .args([
                "--kafka",
                &format!(
                    "consumer.session.timeout.ms={}",
                    SESSION_TIMEOUT.as_millis()
                ),
            ]);
        if let (Some(strategy), "ticket-counts") = (strategy, topology) {
            c.args([
                "--kafka",
                &format!("consumer.partition.assignment.strategy={strategy}"),
            ]);
        }
        Running(
            c.env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
                .env("KAFKA_SCHEMA_REGISTRY_URL", registry)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("engine run starts"),
        )
    };
    let assigned = |addr: &str| {
        std::net::TcpStream::connect(addr).is_ok()
            && metric_sum(&http_get(addr, "/metrics").1, "engine_assigned_partitions")
                .unwrap_or(0.0)
                > 0.0
    };
    let logs = || {
        ["a", "b", "c", "w"]
            .iter()
            .filter_map(|n| {
                let log = std::fs::read_to_string(dir.path().join(format!("{n}.log"))).ok()?;
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                Some(format!(
                    "--- {n}:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let wait = |what: &str, limit: Duration, done: &mut dyn FnMut() -> bool| {
        let deadline = Instant::now() + limit;
        while !done() {
            assert!(Instant::now() < deadline, "{what}\n{}", logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    let names = ["a", "b", "c"];
    let addrs: Vec<String> = (0..4)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let mut counts: Vec<Option<Running>> = names
        .iter()
        .zip(&addrs)
        .map(|(name, addr)| Some(start("ticket-counts", name, addr)))
        .collect();
    let worker_addr = &addrs[3];
    let mut worker = Some(start("worker-agents", "w", worker_addr));
    wait(
        "the instances never all got partitions",
        Duration::from_secs(120),
        &mut || addrs.iter().all(|a| assigned(a)),
    );

    // Tickets to each topology until the last event has settled.
    const PLANS: u32 = 20;
    let stop_watch = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = arrivals(
        bootstrap.clone(),
        "bench.tickets.counts",
        stop_watch.clone(),
    );
    let stop_input = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counts_feeder = feed_tickets_until(
        "bench.tickets.in",
        bootstrap,
        registry,
        PLANS,
        (20, 100),
        stop_input.clone(),
    );
    // worker-agents finishes about 90 tickets a second here (a 5 ms simulated
    // execution, picked up by a 100 ms punctuation when input is paused): 50 a second.
    let worker_feeder = feed_tickets_until(
        "execution.tickets",
        bootstrap,
        registry,
        PLANS,
        (5, 100),
        stop_input.clone(),
    );
    std::thread::sleep(Duration::from_secs(5));

    let mut events: Vec<(Instant, String)> = Vec::new();
    let plan: [(&str, usize); 10] = [
        ("SIGKILL", 0),
        ("start", 0),
        ("SIGTERM", 1),
        ("start", 1),
        ("SIGKILL", 2),
        ("start", 2),
        ("SIGTERM", 0),
        ("start", 0),
        ("SIGKILL", 1),
        ("start", 1),
    ];
    let mut worker_restarts = 0;
    for (step, (action, i)) in plan.into_iter().enumerate() {
        match action {
            "start" => counts[i] = Some(start("ticket-counts", names[i], &addrs[i])),
            "SIGKILL" => {
                let mut run = counts[i].take().unwrap();
                run.0.kill().unwrap();
                run.0.wait().unwrap();
            }
            _ => {
                let mut run = counts[i].take().unwrap();
                signal(&run.0, "-TERM");
                let (code, _) = exit_within(&mut run, Duration::from_secs(30));
                assert_eq!(code, Some(0), "{} stopped cleanly\n{}", names[i], logs());
            }
        }
        events.push((Instant::now(), format!("{action} {}", names[i])));
        // worker-agents goes down with the third and the seventh event, and comes back
        // with the next.
        match step {
            2 => {
                let mut run = worker.take().unwrap();
                run.0.kill().unwrap();
                run.0.wait().unwrap();
            }
            6 => {
                let mut run = worker.take().unwrap();
                signal(&run.0, "-TERM");
                let (code, _) = exit_within(&mut run, Duration::from_secs(30));
                assert_eq!(code, Some(0), "worker-agents stopped cleanly\n{}", logs());
            }
            3 | 7 => {
                worker = Some(start("worker-agents", "w", worker_addr));
                worker_restarts += 1;
            }
            _ => {}
        }
        // Long enough for a killed member's session to expire and the group to settle.
        std::thread::sleep(if action == "SIGKILL" {
            SESSION_TIMEOUT + Duration::from_secs(3)
        } else {
            Duration::from_secs(5)
        });
    }
    stop_input.store(true, std::sync::atomic::Ordering::Relaxed);
    let input_until = Instant::now();
    let began = events[0].0;
    eprintln!("events done in {:?}", input_until - began);
    let counted = counts_feeder.join().unwrap();
    let executed = worker_feeder.join().unwrap();

    let expected: std::collections::BTreeMap<String, i64> = (0..PLANS)
        .map(|p| {
            let of_plan = (0..counted).filter(|n| n % PLANS == p).count();
            (format!("plan-{p}"), of_plan as i64)
        })
        .collect();
    let mut merged = std::collections::BTreeMap::new();
    wait(
        "the three instances did not settle on exact counts",
        Duration::from_secs(120),
        &mut || {
            merged.clear();
            for addr in &addrs[..3] {
                match settled_counts(addr) {
                    Some(c) => merged.extend(c),
                    None => return false,
                }
            }
            merged == expected
        },
    );
    eprintln!("counts settled {:?} after the first event", began.elapsed());
    stop_watch.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    let pauses = pauses_per_event(&seen, &events, input_until);
    eprintln!(
        "assignor {}: per rebalance, the longest output pause of a partition / all partitions' pauses added up: {}",
        strategy.unwrap_or("cooperative-sticky (default)"),
        pauses
            .iter()
            .map(|(what, longest, total)| format!(
                "{what}: {:.2} s / {:.2} s",
                longest.as_secs_f64(),
                total.as_secs_f64()
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Every ticket executed, within its budget for each owner it had.
    wait(
        "worker-agents did not finish the tickets",
        Duration::from_secs(300),
        &mut || {
            if std::net::TcpStream::connect(worker_addr).is_err() {
                return false;
            }
            let text = http_get(worker_addr, "/metrics").1;
            metric_sum(&text, "engine_consumer_lag") == Some(0.0)
                && metric_sum(&text, "engine_in_flight") == Some(0.0)
        },
    );
    eprintln!(
        "worker-agents done {:?} after the first event",
        began.elapsed()
    );
    let mut runs: std::collections::HashMap<String, (u32, u32)> = Default::default();
    let results = engine_consume_all(bootstrap, registry, "execution.results", 2000);
    for r in &results {
        let v = &r["value"];
        let entry = runs
            .entry(v["ticket_id"].as_str().unwrap().to_string())
            .or_default();
        match v["status"].as_str().unwrap() {
            "RUNNING" => entry.0 += 1,
            "COMPLETED" => entry.1 += 1,
            other => panic!("ticket {} ended {other}: {v}", v["ticket_id"]),
        }
    }
    let lost: Vec<u32> = (0..executed)
        .filter(|n| runs.get(&format!("ticket-{n}")).is_none_or(|r| r.1 == 0))
        .collect();
    assert!(
        lost.is_empty(),
        "{} tickets never completed, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    eprintln!("results read {:?} after the first event", began.elapsed());
    let again = runs.values().filter(|r| r.0 > 1).count();
    let most = runs.values().map(|r| r.0).max().unwrap_or(0);
    eprintln!(
        "worker-agents: {executed} tickets completed; {again} ran more than once (in flight when worker-agents was stopped or killed), at most {most} times"
    );
    assert!(
        most <= 1 + worker_restarts,
        "a ticket ran {most} times with {worker_restarts} restarts of worker-agents"
    );

    // Outputs may repeat an update but never count past the truth.
    let highest = highest_counts(bootstrap, &expected);
    assert_eq!(highest, expected, "the highest count output per plan");
    // A clean leave or a join rebalances at once; a killed member is noticed only when
    // its session expires, so its partitions wait up to that long before the rebalance.
    for (what, gap, _) in &pauses {
        let limit = if what.starts_with("SIGKILL") {
            SESSION_TIMEOUT * 2
        } else {
            SESSION_TIMEOUT
        };
        assert!(
            *gap < limit,
            "output paused {gap:?} after {what}: {pauses:?}"
        );
    }
    drop(counts);
    drop(worker);
}

/// What a `read_committed` reader sees of `ticket-pipeline` and `ticket-counts` on a
/// broker.
#[derive(Debug, Default)]
struct CommittedOutputs {
    /// How many times each ticket id came out of the pipeline.
    tickets: std::collections::HashMap<String, u32>,
    /// Per plan, the counts `ticket-counts` wrote, in order.
    counts: std::collections::BTreeMap<String, Vec<i64>>,
}

impl CommittedOutputs {
    /// Reads `bench.tickets.out` and `bench.tickets.counts` from the start with
    /// `isolation.level=read_committed`, until both have been quiet for 5 s.
    fn read(bootstrap: &str) -> CommittedOutputs {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::Message;
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("verifier-{}", uuid::Uuid::new_v4()))
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        consumer
            .subscribe(&["bench.tickets.out", "bench.tickets.counts"])
            .unwrap();
        let mut seen = CommittedOutputs::default();
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < Duration::from_secs(5) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            quiet_since = Instant::now();
            let value = m.payload().unwrap();
            if m.topic() == "bench.tickets.out" {
                // Confluent framing (magic byte, schema id), then the Avro record, whose
                // first field is `ticket_id`: a zigzag varint length and the bytes.
                let (length, at) = zigzag(&value[5..]);
                let start = 5 + at;
                let id = String::from_utf8(value[start..start + length as usize].to_vec()).unwrap();
                *seen.tickets.entry(id).or_default() += 1;
            } else {
                let plan = String::from_utf8_lossy(m.key().unwrap()).into_owned();
                let count = i64::from_be_bytes(value.try_into().unwrap());
                seen.counts.entry(plan).or_default().push(count);
            }
        }
        seen
    }

    /// What was seen of `fed` tickets, for the test's output.
    fn summary(&self, fed: u32) -> String {
        format!(
            "{fed} tickets fed; {} distinct out, {} duplicates; {} count updates, {} repeated",
            self.tickets.len(),
            self.duplicate_outputs(),
            self.counts.values().map(Vec::len).sum::<usize>(),
            self.repeated_counts()
        )
    }

    /// Outputs beyond the first of a ticket.
    fn duplicate_outputs(&self) -> u32 {
        self.tickets.values().map(|n| n - 1).sum()
    }

    /// Count updates that do not rise above the plan's previous one: a count written
    /// again after a crash.
    fn repeated_counts(&self) -> usize {
        self.counts
            .values()
            .map(|c| c.windows(2).filter(|w| w[1] <= w[0]).count())
            .sum()
    }

    /// Each plan's last count.
    fn final_counts(&self) -> std::collections::BTreeMap<String, i64> {
        self.counts
            .iter()
            .filter_map(|(plan, c)| Some((plan.clone(), *c.last()?)))
            .collect()
    }
}

/// An Avro long (zigzag varint) at the start of `bytes`, and its length in bytes.
fn zigzag(bytes: &[u8]) -> (i64, usize) {
    let (mut value, mut shift) = (0_u64, 0);
    for (i, b) in bytes.iter().enumerate() {
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return (((value >> 1) as i64) ^ -((value & 1) as i64), i + 1);
        }
        shift += 7;
    }
    panic!("truncated varint");
}

/// The expected final counts of `tickets` tickets over `plans` plans (`plan-{n % plans}`).
fn counts_of(tickets: u32, plans: u32) -> std::collections::BTreeMap<String, i64> {
    (0..plans)
        .map(|p| {
            let n = (0..tickets).filter(|n| n % plans == p).count();
            (format!("plan-{p}"), n as i64)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// A broker of its own with the topics of `ticket-pipeline` and `ticket-counts`, a
/// directory for state and logs, and a configuration file with `processing_guarantee`.
struct TwoTopologies {
    // Dropped in this order: the registry, then the broker, then the directory.
    kafka: Kafka,
    _broker: OwnBroker,
    config: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl TwoTopologies {
    fn start(guarantee: &str) -> TwoTopologies {
        let dir = tempfile::tempdir().unwrap();
        let broker = OwnBroker::start(&dir.path().join("kafka.log"));
        let kafka = Kafka::real(
            broker.bootstrap.clone(),
            &["ticket-pipeline", "ticket-counts"],
            2,
        );
        let config = dir.path().join("engine.toml");
        std::fs::write(
            &config,
            format!("[runtime]\nprocessing_guarantee = \"{guarantee}\"\n"),
        )
        .unwrap();
        TwoTopologies {
            kafka,
            _broker: broker,
            config,
            dir,
        }
    }

    /// `engine run ticket-pipeline ticket-counts` on this rig's broker and config with
    /// `args`, serving `addr`; state in `<dir>/<name>`, stderr in `<dir>/<name>.log`.
    fn run(&self, name: &str, addr: &str, args: &[&str]) -> Running {
        Running(
            engine()
                .args(["run", "ticket-pipeline", "ticket-counts", "--http", addr])
                .arg("--config")
                .arg(&self.config)
                .arg("--state-dir")
                .arg(self.dir.path().join(name))
                .args(args)
                .env("KAFKA_BOOTSTRAP_SERVERS", &self.kafka.bootstrap)
                .env("KAFKA_SCHEMA_REGISTRY_URL", &self.kafka.registry)
                .env("ENGINE_LOG", "info,librdkafka=warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap())
                .spawn()
                .expect("engine run starts"),
        )
    }
}

/// `ticket-pipeline` and `ticket-counts` in one `engine run` on a broker of their own,
/// under continuous input (2,000 tickets/s), SIGKILLed `kills` times at random points
/// and started again (static membership: a restart takes its partitions back at once),
/// then stopped with SIGTERM. Returns what `read_committed` readers see, and how many
/// tickets went in.
fn kill_loop(guarantee: &str, kills: u32) -> (CommittedOutputs, u32) {
    const PLANS: u32 = 20;
    let rig = TwoTopologies::start(guarantee);
    let (dir, config) = (&rig.dir, &rig.config);
    let (bootstrap, registry) = (&rig.kafka.bootstrap, &rig.kafka.registry);
    let addr = format!("127.0.0.1:{}", free_port());
    let log = |life: u32| dir.path().join(format!("life-{life}.log"));
    let start = |life: u32| {
        Running(
            engine()
                .args(["run", "ticket-pipeline", "ticket-counts", "--http", &addr])
                .arg("--config")
                .arg(config)
                .arg("--state-dir")
                .arg(dir.path().join("state"))
                .args(["--kafka", "consumer.group.instance.id=kill-loop"])
                .args(["--kafka", "consumer.session.timeout.ms=10000"])
                .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
                .env("KAFKA_SCHEMA_REGISTRY_URL", registry)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log(life)).unwrap())
                .spawn()
                .expect("engine run starts"),
        )
    };
    let records_in = || {
        std::net::TcpStream::connect(&addr)
            .ok()
            .and_then(|_| metric_sum(&http_get(&addr, "/metrics").1, "engine_records_in_total"))
            .unwrap_or(0.0)
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = feed_tickets_until(
        "bench.tickets.in",
        bootstrap,
        registry,
        PLANS,
        (100, 50),
        stop.clone(),
    );
    // Kill points spread over the first second of processing after each restart.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut random_ms = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % 1000
    };
    let mut running = start(0);
    for life in 0..kills {
        let deadline = Instant::now() + Duration::from_secs(90);
        while records_in() < 500.0 {
            assert!(
                Instant::now() < deadline,
                "life {life} never processed input:\n{}",
                std::fs::read_to_string(log(life)).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(random_ms()));
        running.0.kill().unwrap(); // SIGKILL: mid-transaction, no commit, no checkpoint
        running.0.wait().unwrap();
        running = start(life + 1);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let fed = feeder.join().unwrap();
    // The last life catches up, then stops cleanly (its last transaction commits).
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        assert!(
            Instant::now() < deadline,
            "the last life did not catch up:\n{}",
            std::fs::read_to_string(log(kills)).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
        if std::net::TcpStream::connect(&addr).is_err() {
            continue;
        }
        // The lag gauge has no series for a partition still restoring (paused, it
        // fetches nothing): the counts must add up too.
        let text = http_get(&addr, "/metrics").1;
        if metric_sum(&text, "engine_assigned_partitions") == Some(4.0)
            && settled_counts(&addr).is_some_and(|c| c.values().sum::<i64>() == i64::from(fed))
        {
            break;
        }
    }
    signal(&running.0, "-TERM");
    let (code, _) = exit_within(&mut running, Duration::from_secs(60));
    assert_eq!(
        code,
        Some(0),
        "clean stop:\n{}",
        std::fs::read_to_string(log(kills)).unwrap_or_default()
    );
    let seen = CommittedOutputs::read(bootstrap);
    eprintln!("{guarantee}, {kills} kills: {}", seen.summary(fed));
    (seen, fed)
}

#[test]
fn real_kafka_exactly_once_under_twenty_kills_gives_one_output_per_input_and_exact_counts() {
    let Some(_) = support::real_kafka() else {
        return;
    };
    let (seen, fed) = kill_loop("exactly_once_v2", 20);
    assert_exactly_once(&seen, fed);
}

/// The same kills under at-least-once: nothing is lost, but inputs processed since the
/// last commit come out again, which the verifier above sees (so it can fail).
#[test]
fn real_kafka_at_least_once_under_the_same_kills_repeats_outputs() {
    let Some(_) = support::real_kafka() else {
        return;
    };
    let (seen, fed) = kill_loop("at_least_once", 5);
    let missing = (0..fed)
        .filter(|n| !seen.tickets.contains_key(&format!("ticket-{n}")))
        .count();
    assert_eq!(missing, 0, "nothing lost ({fed} fed)");
    assert!(
        seen.duplicate_outputs() > 0 || seen.repeated_counts() > 0,
        "five kills mid-stream under at-least-once repeat some output"
    );
}

/// How an exactly-once instance is frozen in [`frozen_instance`].
enum Freeze {
    /// Past its session timeout, while a second instance takes its partitions over.
    PastItsSession,
    /// Past its `transaction.timeout.ms` (2 s) but within its session: the broker aborts
    /// its open transaction, the group keeps it.
    PastItsTransactionTimeout,
}

/// `ticket-pipeline` and `ticket-counts` under exactly-once in instance A (and B for
/// [`Freeze::PastItsSession`]) on a broker of their own, under continuous input; A is
/// frozen with SIGSTOP mid-stream, then thawed with SIGCONT, and must go on (rejoin the
/// group, or recover from its aborted transaction). Returns what `read_committed`
/// readers see once both stopped cleanly, and how many tickets went in.
fn frozen_instance(freeze: Freeze) -> (CommittedOutputs, u32) {
    const PLANS: u32 = 20;
    let rig = TwoTopologies::start("exactly_once_v2");
    let dir = &rig.dir;
    let (bootstrap, registry) = (&rig.kafka.bootstrap, &rig.kafka.registry);
    let kafka_args: &[&str] = match freeze {
        Freeze::PastItsSession => &["--kafka", "consumer.session.timeout.ms=6000"],
        Freeze::PastItsTransactionTimeout => &[
            "--kafka",
            "consumer.session.timeout.ms=45000",
            "--kafka",
            "producer.transaction.timeout.ms=2000",
        ],
    };
    let start = |name: &str, addr: &str| rig.run(name, addr, kafka_args);
    let logs = || {
        ["a", "b"]
            .iter()
            .filter_map(|n| std::fs::read_to_string(dir.path().join(format!("{n}.log"))).ok())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let metric = |addr: &str, name: &str| {
        std::net::TcpStream::connect(addr)
            .ok()
            .and_then(|_| metric_sum(&http_get(addr, "/metrics").1, name))
            .unwrap_or(0.0)
    };
    let wait = |what: &str, limit: Duration, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + limit;
        while !done() {
            assert!(Instant::now() < deadline, "{what}:\n{}", logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let addr_a = format!("127.0.0.1:{}", free_port());
    let mut a = start("a", &addr_a);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = feed_tickets_until(
        "bench.tickets.in",
        bootstrap,
        registry,
        PLANS,
        (100, 50),
        stop.clone(),
    );
    wait("A never got going", Duration::from_secs(90), &|| {
        metric(&addr_a, "engine_records_in_total") >= 4000.0
    });
    signal(&a.0, "-STOP");
    let addr_b = format!("127.0.0.1:{}", free_port());
    let mut b = None;
    match freeze {
        Freeze::PastItsSession => {
            b = Some(start("b", &addr_b));
            wait(
                "B did not take every partition over and process",
                Duration::from_secs(120),
                &|| {
                    metric(&addr_b, "engine_assigned_partitions") == 4.0
                        && metric(&addr_b, "engine_records_in_total") >= 4000.0
                },
            );
        }
        Freeze::PastItsTransactionTimeout => std::thread::sleep(Duration::from_secs(6)),
    }
    signal(&a.0, "-CONT");
    match freeze {
        Freeze::PastItsSession => wait("A did not rejoin", Duration::from_secs(90), &|| {
            metric(&addr_a, "engine_assigned_partitions") > 0.0
                && metric(&addr_b, "engine_assigned_partitions") < 4.0
        }),
        Freeze::PastItsTransactionTimeout => {
            // The broker times out only a transaction with records in it: a freeze that
            // lands between two transactions (one committed, the next not yet written
            // to) leaves nothing to abort. Then A is frozen again, up to three times.
            let aborted = || metric(&addr_a, "engine_transactions_aborted_total") >= 1.0;
            for _ in 1..3 {
                let deadline = Instant::now() + Duration::from_secs(20);
                while !aborted() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(200));
                }
                if aborted() {
                    break;
                }
                signal(&a.0, "-STOP");
                std::thread::sleep(Duration::from_secs(6));
                signal(&a.0, "-CONT");
            }
            wait(
                "A's transaction was not aborted after three freezes",
                Duration::from_secs(60),
                &aborted,
            );
            let before = metric(&addr_a, "engine_records_in_total");
            wait("A did not go on", Duration::from_secs(60), &|| {
                metric(&addr_a, "engine_records_in_total") >= before + 2000.0
            });
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let fed = feeder.join().unwrap();
    let addrs: Vec<&str> = match &b {
        Some(_) => vec![&addr_a, &addr_b],
        None => vec![&addr_a],
    };
    wait(
        "the instances did not catch up",
        Duration::from_secs(120),
        &|| {
            let held: f64 = addrs
                .iter()
                .map(|a| metric(a, "engine_assigned_partitions"))
                .sum();
            // Each instance's counts, once its lag is 0 (a restoring partition has no lag
            // series: the counts must add up too).
            let counted: Option<i64> = addrs
                .iter()
                .map(|a| {
                    let held = std::net::TcpStream::connect(a).is_ok()
                        && http_get(a, "/stores/tickets-per-plan?limit=1").0 != 404;
                    if held {
                        settled_counts(a).map(|c| c.values().sum::<i64>())
                    } else {
                        Some(0)
                    }
                })
                .sum();
            held == 4.0 && counted == Some(i64::from(fed))
        },
    );
    for run in std::iter::once(&mut a).chain(b.as_mut()) {
        signal(&run.0, "-TERM");
        let (code, _) = exit_within(run, Duration::from_secs(60));
        assert_eq!(code, Some(0), "clean stop:\n{}", logs());
    }
    let seen = CommittedOutputs::read(bootstrap);
    eprintln!("{}", seen.summary(fed));
    (seen, fed)
}

/// Every ticket fed came out of the pipeline exactly once, and the counts are exact and
/// never repeat an update.
fn assert_exactly_once(seen: &CommittedOutputs, fed: u32) {
    let missing = (0..fed)
        .filter(|n| !seen.tickets.contains_key(&format!("ticket-{n}")))
        .count();
    assert_eq!(
        missing, 0,
        "every input came out of the pipeline ({fed} fed)"
    );
    assert_eq!(
        seen.duplicate_outputs(),
        0,
        "no input came out twice ({fed} fed)"
    );
    let (counted, expected) = (seen.final_counts(), counts_of(fed, 20));
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(plan, n)| counted.get(*plan) != Some(n))
        .map(|(plan, n)| (plan, *n, counted.get(plan), seen.counts.get(plan)))
        .collect();
    assert!(
        wrong.is_empty(),
        "exact final counts; (plan, expected, counted, updates): {wrong:?}"
    );
    assert_eq!(
        seen.repeated_counts(),
        0,
        "no count was written twice or went back: {:?}",
        seen.counts
    );
}

#[test]
fn real_kafka_exactly_once_a_frozen_zombie_writes_nothing_visible_and_rejoins() {
    let Some(_) = support::real_kafka() else {
        return;
    };
    let (seen, fed) = frozen_instance(Freeze::PastItsSession);
    assert_exactly_once(&seen, fed);
}

/// Two instances stopped at nearly the same moment, under input: the second one leaves
/// the group while it rebalances for the first one leaving, and can be handed partitions
/// in the middle of its own close. Both must stop cleanly (exit 0, within the shutdown
/// timeout), for gaps between the two signals that put the rebalance before, inside and
/// after the second one's close (heartbeats every 100 ms, so it lands quickly).
#[test]
fn real_kafka_two_instances_stopped_together_both_stop_cleanly() {
    two_instances_stopped_together_both_stop_cleanly("exactly_once_v2");
}

/// The same under at-least-once, where the second one's final commit may meet the
/// group's new generation and must go through after the rejoin.
#[test]
fn real_kafka_two_at_least_once_instances_stopped_together_both_stop_cleanly() {
    two_instances_stopped_together_both_stop_cleanly("at_least_once");
}

fn two_instances_stopped_together_both_stop_cleanly(guarantee: &str) {
    let Some(_) = support::real_kafka() else {
        return;
    };
    let rig = TwoTopologies::start(guarantee);
    let (dir, config) = (&rig.dir, &rig.config);
    let (bootstrap, registry) = (&rig.kafka.bootstrap, &rig.kafka.registry);
    // The only table in the file is [runtime]: this line belongs to it.
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str("shutdown_timeout_ms = 10000\n");
    std::fs::write(config, text).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = feed_tickets_until(
        "bench.tickets.in",
        bootstrap,
        registry,
        20,
        (50, 50),
        stop.clone(),
    );
    let start = |name: &str, addr: &str| {
        rig.run(
            name,
            addr,
            &["--kafka", "consumer.heartbeat.interval.ms=100"],
        )
    };
    let assigned = |addr: &str| {
        std::net::TcpStream::connect(addr)
            .ok()
            .and_then(|_| metric_sum(&http_get(addr, "/metrics").1, "engine_assigned_partitions"))
            .unwrap_or(0.0)
    };
    for (round, gap_ms) in [0u64, 150, 300, 450, 600, 900].into_iter().enumerate() {
        let (addr_a, addr_b) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let mut a = start(&format!("a{round}"), &addr_a);
        let mut b = start(&format!("b{round}"), &addr_b);
        let deadline = Instant::now() + Duration::from_secs(90);
        // Each instance holds one partition of each topology's two.
        while assigned(&addr_a) != 2.0 || assigned(&addr_b) != 2.0 {
            assert!(
                Instant::now() < deadline,
                "round {round}: the two instances never shared the partitions"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(1));
        signal(&a.0, "-TERM");
        std::thread::sleep(Duration::from_millis(gap_ms));
        signal(&b.0, "-TERM");
        let (code_a, _) = exit_within(&mut a, Duration::from_secs(20));
        let (code_b, _) = exit_within(&mut b, Duration::from_secs(20));
        let log = |name: &str| {
            std::fs::read_to_string(dir.path().join(format!("{name}{round}.log")))
                .unwrap_or_default()
        };
        assert_eq!(
            code_a,
            Some(0),
            "round {round} (gap {gap_ms} ms), the first to stop:\n{}",
            log("a")
        );
        assert_eq!(
            code_b,
            Some(0),
            "round {round} (gap {gap_ms} ms), the second to stop:\n{}",
            log("b")
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    feeder.join().unwrap();
}

#[test]
fn real_kafka_exactly_once_a_transaction_timed_out_by_the_broker_is_aborted_and_the_instance_recovers()
 {
    let Some(_) = support::real_kafka() else {
        return;
    };
    let (seen, fed) = frozen_instance(Freeze::PastItsTransactionTimeout);
    assert_exactly_once(&seen, fed);
}
