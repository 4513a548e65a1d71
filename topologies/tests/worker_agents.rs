//! `worker-agents` through the test driver (its executions run on a tokio runtime):
//! validation filters, deduplication, dependency gating, retries, timeouts, the
//! dead-letter topic, bounded concurrency with input pausing, and records held
//! uncommitted until their result.

#![allow(clippy::unwrap_used)] // tests state their expectations with unwrap

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use engine::BuildContext;
use engine::record::Headers;
use engine::registry::{MemoryRegistry, SchemaRegistry};
use engine::serde::{AvroContext, Serde, Serdes};
use engine::testing::{TestDriver, TestDriverOptions, TestInputTopic, TestOutputTopic};
use topologies::executor::{Attempt, ExecutionOutput, Executor, SimulatedExecutor};
use topologies::results::*;
use topologies::tickets::*;
use topologies::worker_agents::{
    self as worker, DEAD_LETTER, DeadLetterTicket, RESULTS, TICKETS, WorkerOptions, WorkerSettings,
};

const NOW: i64 = 1_760_000_000_000;

/// Runs attempts while `open` (else waits), failing the first `fail_first` attempts of
/// every ticket; counts attempts and the most running at once.
#[derive(Clone, Default)]
struct TestExecutor {
    open: Arc<AtomicBool>,
    fail_first: u32,
    hang: bool,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    attempts: Arc<AtomicUsize>,
}

impl Executor for TestExecutor {
    fn execute(&self, ticket: &ExecutionTicket, attempt: u32) -> Attempt {
        let me = self.clone();
        let id = ticket.ticket_id.clone();
        Box::pin(async move {
            me.attempts.fetch_add(1, Ordering::SeqCst);
            let now = me.running.fetch_add(1, Ordering::SeqCst) + 1;
            me.peak.fetch_max(now, Ordering::SeqCst);
            while !me.open.load(Ordering::SeqCst) || me.hang {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            me.running.fetch_sub(1, Ordering::SeqCst);
            if attempt < me.fail_first {
                Err(format!("attempt {attempt} of {id} failed"))
            } else {
                Ok(ExecutionOutput {
                    output: HashMap::from([("attempt".to_string(), attempt.to_string())]),
                    logs: vec![],
                })
            }
        })
    }

    fn name(&self) -> &'static str {
        "test"
    }
}

struct Worker {
    driver: TestDriver,
    tickets: TestInputTopic<Option<String>, ExecutionTicket>,
    results: TestOutputTopic<Option<String>, ExecutionResult>,
    _runtime: tokio::runtime::Runtime,
}

fn settings(executor: impl Executor) -> WorkerSettings {
    let mut s = WorkerSettings::from_options(&WorkerOptions::default()).unwrap();
    s.executor = Arc::new(executor);
    s.retry_backoff = Duration::from_millis(1);
    s.poll_interval = Duration::from_millis(5);
    s
}

fn worker(settings: WorkerSettings) -> Worker {
    worker_with(settings, false)
}

fn worker_with(settings: WorkerSettings, exactly_once: bool) -> Worker {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let ctx = BuildContext {
        avro: AvroContext {
            registry: Some(SchemaRegistry::memory(Arc::new(MemoryRegistry::new()))),
            ..Default::default()
        },
        ..Default::default()
    };
    let driver = TestDriver::with_options(
        worker::build_with(&ctx, settings).unwrap(),
        TestDriverOptions {
            start_time: NOW,
            exactly_once,
            ..Default::default()
        },
    );
    let key = || Serdes::nullable(Serdes::string());
    Worker {
        tickets: driver.input_topic(
            TICKETS,
            key(),
            ctx.avro.value_serde(EXECUTION_TICKET_SCHEMA).unwrap(),
        ),
        results: driver.output_topic(
            RESULTS,
            key(),
            ctx.avro.value_serde(EXECUTION_RESULT_SCHEMA).unwrap(),
        ),
        driver,
        _runtime: runtime,
    }
}

fn ticket(id: &str, deps: &[&str]) -> ExecutionTicket {
    let mut t = sample_ticket(0, TicketStatus::Pending);
    t.ticket_id = id.into();
    t.task_id = format!("task-{id}");
    t.plan_id = "plan-1".into();
    t.dependencies = deps.iter().map(|d| d.to_string()).collect();
    t.sla = Sla {
        deadline: NOW + 60_000,
        timeout_ms: 60_000,
        max_retries: 2,
    };
    t
}

impl Worker {
    fn send(&self, t: ExecutionTicket) {
        self.tickets.pipe(Some(t.plan_id.clone()), t).unwrap();
    }

    /// Lets punctuations run (on the driver's clock, 5 ms per step) until `n` results
    /// are out; the executions finish on the runtime meanwhile.
    fn results(&self, n: usize) -> Vec<ExecutionResult> {
        let start = Instant::now();
        let mut out = Vec::new();
        while out.len() < n {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "only {} of {n} results: {out:?}",
                out.len()
            );
            self.driver
                .advance_wall_clock(Duration::from_millis(5))
                .unwrap();
            out.extend(self.results.read_values());
            std::thread::sleep(Duration::from_millis(1));
        }
        out
    }

    fn exhausted(&self) -> Vec<DeadLetterTicket> {
        std::iter::from_fn(|| self.driver.read_raw(DEAD_LETTER))
            .map(|r| {
                Serdes::json::<DeadLetterTicket>()
                    .deserialize(DEAD_LETTER, r.value.as_deref())
                    .unwrap()
            })
            .collect()
    }
}

fn statuses(results: &[ExecutionResult]) -> Vec<(String, ExecutionStatus)> {
    results
        .iter()
        .map(|r| (r.ticket_id.clone(), r.status))
        .collect()
}

#[test]
fn a_ticket_runs_and_its_record_stays_uncommitted_until_its_result() {
    let executor = TestExecutor::default();
    let w = worker(settings(executor.clone()));
    w.send(ticket("a", &[]));
    let running = w.results(1);
    assert_eq!(
        statuses(&running),
        [("a".to_string(), ExecutionStatus::Running)]
    );
    assert_eq!(
        w.driver.deferred_records().len(),
        1,
        "the ticket's record is held while it runs"
    );
    executor.open.store(true, Ordering::SeqCst);
    let done = w.results(1);
    let r = &done[0];
    assert_eq!(r.status, ExecutionStatus::Completed);
    assert!(r.result.success);
    assert_eq!(r.agent_id, "worker-agents");
    assert!(r.actual_duration_ms.is_some());
    assert_eq!(r.result.metadata["attempts"], "1");
    assert_eq!(r.result.output["attempt"], "0");
    assert!(
        w.driver.deferred_records().is_empty(),
        "released with its result"
    );
}

#[test]
fn under_exactly_once_a_ticket_running_at_a_crash_runs_again_after_it_and_gets_one_final_result() {
    let executor = TestExecutor::default();
    let w = worker_with(settings(executor.clone()), true);
    w.send(ticket("a", &[]));
    w.send(ticket("b", &["a"]));
    assert_eq!(
        statuses(&w.results(1)),
        [("a".to_string(), ExecutionStatus::Running)]
    );
    assert!(
        w.driver.deferred_records().is_empty(),
        "no record is deferred under exactly-once: the offsets commit with the transaction"
    );
    assert_eq!(
        w.driver
            .store_entries::<String, ExecutionTicket>(worker::JOBS_STORE)
            .unwrap()
            .len(),
        2,
        "both accepted tickets are kept, with the acceptance"
    );
    // The commit, then a crash: the execution in progress and everything in memory are
    // gone; the new task finds both tickets in the store.
    {
        // Processors start on the runtime, as the engine opens tasks.
        let _entered = w._runtime.enter();
        w.driver.restart().unwrap();
    }
    executor.open.store(true, Ordering::SeqCst);
    let after = w.results(4);
    assert_eq!(
        statuses(&after),
        [
            ("a".to_string(), ExecutionStatus::Running),
            ("a".to_string(), ExecutionStatus::Completed),
            ("b".to_string(), ExecutionStatus::Running),
            ("b".to_string(), ExecutionStatus::Completed),
        ],
        "a runs again from the start, b still waits for it"
    );
    for _ in 0..20 {
        w.driver
            .advance_wall_clock(Duration::from_millis(5))
            .unwrap();
    }
    assert!(w.results.is_empty(), "one final result per ticket");
    assert_eq!(
        w.driver
            .store_entries::<String, ExecutionTicket>(worker::JOBS_STORE)
            .unwrap(),
        vec![],
        "finished tickets leave the store with their result"
    );
    // A ticket delivered again (a replay) after its result is a duplicate.
    w.send(ticket("a", &[]));
    w.driver
        .advance_wall_clock(Duration::from_millis(5))
        .unwrap();
    assert!(w.results.is_empty());
}

#[test]
fn tickets_not_pending_are_skipped_invalid_ones_dead_lettered_and_duplicates_run_once() {
    let executor = TestExecutor {
        open: Arc::new(AtomicBool::new(true)),
        ..Default::default()
    };
    let w = worker(settings(executor.clone()));
    let mut running = ticket("r", &[]);
    running.status = TicketStatus::Running;
    w.send(running);
    let mut nameless = ticket("x", &[]);
    nameless.task_id = " ".into();
    w.send(nameless);
    let dead = w.driver.read_raw(DEAD_LETTER).unwrap();
    assert_eq!(dead.headers.last_str("engine.error.field"), Some("task_id"));
    w.driver
        .pipe_raw(
            TICKETS,
            None,
            Some(b"{\"ticket_id\": 1}"),
            NOW,
            Headers::new(),
        )
        .unwrap();
    assert!(
        w.driver.read_raw(DEAD_LETTER).is_some(),
        "undecodable: dead-lettered"
    );

    w.send(ticket("a", &[]));
    w.send(ticket("a", &[]));
    let results = w.results(2);
    assert_eq!(
        statuses(&results),
        [
            ("a".to_string(), ExecutionStatus::Running),
            ("a".to_string(), ExecutionStatus::Completed)
        ]
    );
    w.send(ticket("a", &[]));
    w.driver
        .advance_wall_clock(Duration::from_millis(50))
        .unwrap();
    assert!(w.results.is_empty(), "a finished ticket is not run again");
    assert_eq!(executor.attempts.load(Ordering::SeqCst), 1);
    assert_eq!(
        w.driver.metrics().skipped,
        3,
        "not PENDING, and two duplicates"
    );
}

#[test]
fn a_ticket_waits_for_its_dependencies_to_complete() {
    let executor = TestExecutor {
        open: Arc::new(AtomicBool::new(true)),
        ..Default::default()
    };
    let w = worker(settings(executor));
    w.send(ticket("c", &["a", "b"]));
    w.send(ticket("b", &["a"]));
    w.driver
        .advance_wall_clock(Duration::from_millis(50))
        .unwrap();
    assert!(w.results.is_empty(), "nothing runs before its dependencies");
    assert_eq!(
        w.driver.deferred_records().len(),
        2,
        "waiting tickets are held"
    );
    w.send(ticket("a", &[]));
    let results = w.results(6);
    let order: Vec<String> = results
        .iter()
        .filter(|r| r.status == ExecutionStatus::Completed)
        .map(|r| r.ticket_id.clone())
        .collect();
    assert_eq!(order, ["a", "b", "c"]);
    let started_b = results
        .iter()
        .position(|r| r.ticket_id == "b" && r.status == ExecutionStatus::Running)
        .unwrap();
    let completed_a = results
        .iter()
        .position(|r| r.ticket_id == "a" && r.status == ExecutionStatus::Completed)
        .unwrap();
    assert!(completed_a < started_b);
    assert!(w.driver.deferred_records().is_empty());
}

#[test]
fn a_failed_dependency_or_a_passed_deadline_fails_the_ticket_without_running_it() {
    let executor = TestExecutor {
        open: Arc::new(AtomicBool::new(true)),
        fail_first: u32::MAX,
        ..Default::default()
    };
    let w = worker(settings(executor.clone()));
    let mut a = ticket("a", &[]);
    a.sla.max_retries = 0;
    w.send(ticket("b", &["a"]));
    w.send(a);
    let results = w.results(3);
    assert_eq!(
        statuses(&results),
        [
            ("a".to_string(), ExecutionStatus::Running),
            ("a".to_string(), ExecutionStatus::Failed),
            ("b".to_string(), ExecutionStatus::Failed)
        ]
    );
    assert_eq!(results[1].result.metadata["failure"], "execution");
    assert_eq!(results[2].result.metadata["failure"], "dependency");
    assert!(
        results[2]
            .error_message
            .as_deref()
            .unwrap()
            .contains("a failed")
    );
    let exhausted = w.exhausted();
    assert_eq!(
        exhausted.len(),
        1,
        "only the executed ticket is dead-lettered"
    );
    assert_eq!(exhausted[0].payload.ticket_id, "a");
    assert_eq!(executor.attempts.load(Ordering::SeqCst), 1);

    let mut late = ticket("late", &["never"]);
    late.sla.deadline = NOW + 1_000;
    w.send(late);
    w.driver.advance_wall_clock(Duration::from_secs(2)).unwrap();
    let results = w.results(1);
    assert_eq!(results[0].ticket_id, "late");
    assert_eq!(results[0].status, ExecutionStatus::Failed);
    assert_eq!(results[0].result.metadata["failure"], "deadline");
}

#[test]
fn failed_attempts_are_retried_up_to_max_retries_then_dead_lettered() {
    let flaky = TestExecutor {
        open: Arc::new(AtomicBool::new(true)),
        fail_first: 2,
        ..Default::default()
    };
    let w = worker(settings(flaky.clone()));
    w.send(ticket("ok-on-third", &[]));
    let results = w.results(2);
    assert_eq!(results[1].status, ExecutionStatus::Completed);
    assert_eq!(results[1].result.metadata["attempts"], "3");
    assert_eq!(flaky.attempts.load(Ordering::SeqCst), 3);

    let mut once_more = ticket("needs-four", &[]);
    once_more.sla.max_retries = 2;
    let always = TestExecutor {
        open: Arc::new(AtomicBool::new(true)),
        fail_first: 3,
        ..Default::default()
    };
    let w = worker(settings(always.clone()));
    w.send(once_more);
    let results = w.results(2);
    assert_eq!(results[1].status, ExecutionStatus::Failed);
    assert_eq!(results[1].result.metadata["attempts"], "3");
    assert!(!results[1].result.success);
    assert_eq!(always.attempts.load(Ordering::SeqCst), 3, "max_retries + 1");
    let dead = w.exhausted();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].retry_count, 2);
    assert_eq!(dead[0].error_type, "ExecutionFailed");
    assert!(dead[0].original_error.contains("attempt 2"));
    assert_eq!(dead[0].payload.ticket_id, "needs-four");
    assert!(dead[0].last_failure_timestamp >= NOW);
}

#[test]
fn an_attempt_longer_than_one_and_a_half_timeouts_is_abandoned() {
    let hanging = TestExecutor {
        open: Arc::new(AtomicBool::new(true)),
        hang: true,
        ..Default::default()
    };
    let w = worker(settings(hanging));
    let mut t = ticket("slow", &[]);
    t.sla.timeout_ms = 20;
    t.sla.max_retries = 1;
    w.send(t);
    let results = w.results(2);
    assert_eq!(results[1].status, ExecutionStatus::Failed);
    let dead = w.exhausted();
    assert_eq!(dead[0].error_type, "Timeout");
    assert!(
        dead[0].original_error.contains("timed out after 30ms"),
        "{}",
        dead[0].original_error
    );
}

#[test]
fn at_most_ten_run_at_once_and_input_pauses_at_eighty_percent() {
    let executor = TestExecutor::default();
    let w = worker(settings(executor.clone()));
    for i in 0..7 {
        w.send(ticket(&format!("t{i}"), &[]));
    }
    assert!(!w.driver.input_paused(), "7 of 10: keep fetching");
    w.send(ticket("t7", &[]));
    assert!(w.driver.input_paused(), "8 of 10: pause");
    for i in 8..14 {
        w.send(ticket(&format!("t{i}"), &[]));
    }
    let running = w.results(10);
    assert!(running.iter().all(|r| r.status == ExecutionStatus::Running));
    w.driver
        .advance_wall_clock(Duration::from_millis(50))
        .unwrap();
    assert!(w.results.is_empty(), "the other four wait for a slot");
    assert_eq!(w.driver.deferred_records().len(), 14);
    executor.open.store(true, Ordering::SeqCst);
    let rest = w.results(18);
    assert_eq!(
        rest.iter()
            .filter(|r| r.status == ExecutionStatus::Completed)
            .count(),
        14
    );
    assert!(executor.peak.load(Ordering::SeqCst) <= 10);
    assert!(!w.driver.input_paused(), "resumed once the load fell");
    assert!(w.driver.deferred_records().is_empty());
}

#[test]
fn options_are_checked_with_a_fix() {
    let build = |toml_text: &str| {
        let ctx = BuildContext {
            avro: AvroContext {
                registry: Some(SchemaRegistry::memory(Arc::new(MemoryRegistry::new()))),
                ..Default::default()
            },
            options: toml_text.parse().unwrap(),
        };
        worker::build(&ctx).map(|_| ()).map_err(|e| e.to_string())
    };
    assert!(build("").is_ok());
    assert!(build("failure_rate = 0.2\ntime_scale = 0.01").is_ok());
    assert!(build("executor = \"shell\"\n[commands]\nBUILD = \"true\"").is_ok());
    for (text, hint) in [
        ("max_in_flight = 0", "at least 1"),
        ("failure_rate = 2.0", "between 0 and 1"),
        ("executor = \"k8s\"", "expected `simulated` or `shell`"),
        ("executor = \"shell\"", "needs commands"),
        (
            "executor = \"shell\"\n[commands]\nCOOK = \"x\"",
            "not a task type",
        ),
        ("max_inflight = 3", "unknown field"),
    ] {
        let err = build(text).unwrap_err();
        assert!(err.contains(hint), "{text}: {err}");
    }
}

#[test]
fn the_simulated_executor_drives_a_plan_end_to_end() {
    let w = worker(settings(SimulatedExecutor {
        failure_rate: 0.0,
        time_scale: 0.0,
    }));
    w.send(ticket("a", &[]));
    w.send(ticket("b", &["a"]));
    let results = w.results(4);
    assert!(
        results
            .iter()
            .filter(|r| r.status == ExecutionStatus::Completed)
            .count()
            == 2
    );
}
