//! `worker-agents`: tickets in, executions, results out.
//!
//! - Tickets from `execution.tickets` are checked: a ticket not PENDING is skipped (an
//!   update of a ticket already handed out, counted in `skipped`); one with an empty id,
//!   task id or plan id, or one that cannot be decoded, goes to `execution.tickets.dlq`
//!   with its original bytes.
//! - Repartitioned by plan, so a plan's tickets and their dependencies meet in one task,
//!   they are deduplicated by `ticket_id` (finished, in the `ticket-outcomes` store, or in
//!   progress) and wait until every dependency is COMPLETED; a FAILED dependency, or
//!   waiting past `sla.deadline`, fails the ticket without running it.
//! - At most `max_in_flight` tickets (10) execute at once; input pauses when running and
//!   ready tickets reach 80% of that and resumes at 50%. Each ticket gets
//!   `sla.max_retries + 1` attempts of at most `sla.timeout_ms * 1.5` each, with a backoff
//!   of `min(2 s * 2^n, 60 s)` between them.
//! - A RUNNING result when execution starts and a COMPLETED or FAILED one when it ends go
//!   to `execution.results` (key `ticket_id`); a ticket whose attempts are exhausted also
//!   goes to `execution.tickets.dlq` as JSON, with `original_error`, `error_type`,
//!   `retry_count` and `last_failure_timestamp`.
//!
//! Unlike the service it replaces, a crash never loses a ticket: every ticket accepted
//! and not finished is kept in the `ticket-jobs` store (with its changelog), written with
//! the ticket's acceptance and deleted with its final result, and a task picks those
//! tickets up again when it opens, on whichever instance. Under at-least-once the
//! ticket's record is also deferred until its final result is acknowledged; under
//! exactly-once (where records cannot be deferred) the store alone carries the pending
//! work, and its writes commit in the same transaction as the results, so a ticket gets
//! exactly one final result. An execution interrupted by a crash runs again (its RUNNING
//! result is reported again). Undecodable records reach the dead-letter topic.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use engine::BuildContext;
use engine::record::Record;
use engine::serde::Serdes;
use engine::topology::{
    Branch, Deferred, ErrorPolicy, Grouped, Problem, ProcessingError, Processor, ProcessorContext,
    PunctuationType, ScheduleId, StoreBuilder, StoreRef, Topic, Topology, TopologyBuilder,
    TopologyError,
};
use serde::{Deserialize, Serialize};

use crate::executor::{ExecutionOutput, Executor, ShellExecutor, SimulatedExecutor};
use crate::results::{ExecutionResult, ExecutionResultPayload, ExecutionStatus};
use crate::tickets::{ExecutionTicket, TaskType, TicketStatus};

/// Name and application id.
pub const NAME: &str = "worker-agents";
/// Tickets in.
pub const TICKETS: &str = crate::tickets::TOPIC;
/// Results out.
pub const RESULTS: &str = crate::results::TOPIC;
/// Invalid tickets (original bytes) and exhausted ones (JSON).
pub const DEAD_LETTER: &str = "execution.tickets.dlq";
/// ticket id -> final status (COMPLETED or FAILED) of the tickets this worker finished.
pub const OUTCOME_STORE: &str = "ticket-outcomes";
/// ticket id -> ticket, for the tickets accepted and not finished (waiting or running).
pub const JOBS_STORE: &str = "ticket-jobs";

/// Which executor `worker-agents` runs tickets with (`executor = "..."`).
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// Sleeps each ticket's estimated duration and fails at `failure_rate` (default).
    #[default]
    Simulated,
    /// Runs the command configured for the ticket's task type.
    Shell,
}

/// Options of `[topologies.worker-agents]`.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct WorkerOptions {
    /// `agent_id` of the results (default `worker-agents`).
    #[serde(default = "default_agent_id")]
    pub agent_id: String,
    /// Tickets executing at once per task (default 10).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Which executor runs the tickets.
    #[serde(default)]
    pub executor: ExecutorKind,
    /// Simulated executor: chance that an attempt fails (default 0).
    #[serde(default)]
    pub failure_rate: f64,
    /// Simulated executor: multiplies the tickets' estimated durations (default 1).
    #[serde(default = "one")]
    pub time_scale: f64,
    /// Shell executor: command per task type, e.g. `BUILD = "make build"`.
    #[serde(default)]
    pub commands: HashMap<String, String>,
    /// First retry backoff, ms (default 2000); doubles per attempt.
    #[serde(default = "default_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// Longest retry backoff, ms (default 60000).
    #[serde(default = "default_backoff_max_ms")]
    pub retry_backoff_max_ms: u64,
    /// How often finished executions and waiting tickets are looked at, ms (default 20).
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
}

fn default_agent_id() -> String {
    NAME.to_string()
}
fn default_max_in_flight() -> usize {
    10
}
fn one() -> f64 {
    1.0
}
fn default_backoff_ms() -> u64 {
    2000
}
fn default_backoff_max_ms() -> u64 {
    60_000
}
fn default_poll_ms() -> u64 {
    20
}

impl Default for WorkerOptions {
    fn default() -> Self {
        // An empty table takes every default.
        toml::Value::Table(toml::Table::new())
            .try_into()
            .unwrap_or_else(|_| unreachable!("every option has a default"))
    }
}

/// The worker's settings, shared by its tasks.
#[derive(Clone)]
pub struct WorkerSettings {
    /// `agent_id` of the results.
    pub agent_id: String,
    /// Tickets executing at once per task.
    pub max_in_flight: usize,
    /// What runs the tickets.
    pub executor: Arc<dyn Executor>,
    /// First retry backoff.
    pub retry_backoff: Duration,
    /// Longest retry backoff.
    pub retry_backoff_max: Duration,
    /// How often finished executions and waiting tickets are looked at.
    pub poll_interval: Duration,
}

impl std::fmt::Debug for WorkerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerSettings")
            .field("agent_id", &self.agent_id)
            .field("max_in_flight", &self.max_in_flight)
            .field("executor", &self.executor.name())
            .finish()
    }
}

impl WorkerSettings {
    /// Settings from the options, or what is wrong with them.
    pub fn from_options(o: &WorkerOptions) -> Result<Self, String> {
        if o.max_in_flight == 0 {
            return Err("max_in_flight must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&o.failure_rate) {
            return Err(format!(
                "failure_rate must be between 0 and 1, not {}",
                o.failure_rate
            ));
        }
        if !(o.time_scale >= 0.0 && o.time_scale.is_finite()) {
            return Err(format!(
                "time_scale must be 0 or more, not {}",
                o.time_scale
            ));
        }
        if o.poll_interval_ms == 0 {
            return Err("poll_interval_ms must be at least 1".into());
        }
        let executor: Arc<dyn Executor> = match o.executor {
            ExecutorKind::Simulated => {
                if !o.commands.is_empty() {
                    return Err(
                        "commands are for executor = \"shell\"; remove them or set executor = \"shell\""
                            .into(),
                    );
                }
                Arc::new(SimulatedExecutor {
                    failure_rate: o.failure_rate,
                    time_scale: o.time_scale,
                })
            }
            ExecutorKind::Shell => {
                if o.commands.is_empty() {
                    return Err(
                        "executor = \"shell\" needs commands, e.g. [topologies.worker-agents.commands] BUILD = \"make build\""
                            .into(),
                    );
                }
                let mut commands = HashMap::new();
                for (kind, command) in &o.commands {
                    let task_type: TaskType = serde_json::from_value(serde_json::Value::String(
                        kind.to_ascii_uppercase(),
                    ))
                    .map_err(|_| {
                        format!(
                            "commands.{kind}: not a task type (BUILD, DEPLOY, TEST, VALIDATE, EXECUTE, COMPENSATE, QUERY)"
                        )
                    })?;
                    commands.insert(task_type, command.clone());
                }
                Arc::new(ShellExecutor { commands })
            }
        };
        Ok(WorkerSettings {
            agent_id: o.agent_id.clone(),
            max_in_flight: o.max_in_flight,
            executor,
            retry_backoff: Duration::from_millis(o.retry_backoff_ms),
            retry_backoff_max: Duration::from_millis(o.retry_backoff_max_ms),
            poll_interval: Duration::from_millis(o.poll_interval_ms),
        })
    }

    /// Wait before attempt `n + 1` after attempt `n` failed.
    pub fn backoff(&self, n: u32) -> Duration {
        self.retry_backoff
            .saturating_mul(2u32.saturating_pow(n))
            .min(self.retry_backoff_max)
    }
}

/// An exhausted ticket on the dead-letter topic.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DeadLetterTicket {
    /// The ticket as received.
    pub payload: ExecutionTicket,
    /// The last attempt's error.
    pub original_error: String,
    /// `ExecutionFailed` or `Timeout`.
    pub error_type: String,
    /// Attempts after the first.
    pub retry_count: u32,
    /// Epoch ms of the last failure.
    pub last_failure_timestamp: i64,
}

/// What the executing processor emits.
// Records move by value once per hop; boxing the large variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerOutput {
    /// A status report.
    Result(ExecutionResult),
    /// An exhausted ticket.
    DeadLetter(DeadLetterTicket),
}

/// Skips tickets that are not PENDING; refuses ones without identity.
struct Validate;

impl Processor<Option<String>, ExecutionTicket, Option<String>, ExecutionTicket> for Validate {
    fn process(
        &mut self,
        record: Record<Option<String>, ExecutionTicket>,
        ctx: &mut ProcessorContext<'_, Option<String>, ExecutionTicket>,
    ) -> Result<(), ProcessingError> {
        let t = &record.value;
        for (field, value) in [
            ("ticket_id", &t.ticket_id),
            ("task_id", &t.task_id),
            ("plan_id", &t.plan_id),
        ] {
            if value.trim().is_empty() {
                return Err(ProcessingError::field(field, "is empty"));
            }
        }
        if t.status != TicketStatus::Pending {
            tracing::debug!(ticket_id = %t.ticket_id, status = ?t.status, "ticket not PENDING: skipped");
            ctx.count_skipped();
            return Ok(());
        }
        ctx.forward(record);
        Ok(())
    }
}

/// How one execution ended, sent back from the executor's task.
struct Finished {
    ticket_id: String,
    outcome: Result<ExecutionOutput, String>,
    error_type: &'static str,
    attempts: u32,
    elapsed: Duration,
}

/// Runs a ticket's attempts with timeouts and backoff.
async fn run_attempts(settings: WorkerSettings, ticket: ExecutionTicket) -> Finished {
    let attempts = u32::try_from(ticket.sla.max_retries.max(0)).unwrap_or(0) + 1;
    let timeout = Duration::from_millis(u64::try_from(ticket.sla.timeout_ms.max(1)).unwrap_or(1))
        .mul_f64(1.5);
    let start = Instant::now();
    let mut last_error = String::new();
    let mut error_type = "ExecutionFailed";
    for attempt in 0..attempts {
        match tokio::time::timeout(timeout, settings.executor.execute(&ticket, attempt)).await {
            Ok(Ok(output)) => {
                return Finished {
                    ticket_id: ticket.ticket_id,
                    outcome: Ok(output),
                    error_type: "",
                    attempts: attempt + 1,
                    elapsed: start.elapsed(),
                };
            }
            Ok(Err(e)) => {
                last_error = e;
                error_type = "ExecutionFailed";
            }
            Err(_) => {
                last_error = format!("attempt {} timed out after {timeout:?}", attempt + 1);
                error_type = "Timeout";
            }
        }
        tracing::debug!(ticket_id = %ticket.ticket_id, attempt = attempt + 1, attempts, error = %last_error, "attempt failed");
        if attempt + 1 < attempts {
            tokio::time::sleep(settings.backoff(attempt)).await;
        }
    }
    Finished {
        ticket_id: ticket.ticket_id,
        outcome: Err(last_error),
        error_type,
        attempts,
        elapsed: start.elapsed(),
    }
}

/// A ticket this task holds: waiting for dependencies, ready, or running.
struct Job {
    ticket: ExecutionTicket,
    deferred: Option<Deferred>,
}

enum Gate {
    Open,
    Wait,
    Fail(&'static str, String),
}

/// Gates, executes and reports the tickets of one partition.
struct Execute {
    settings: WorkerSettings,
    /// [`OUTCOME_STORE`]: the final status of each ticket run here.
    outcomes: StoreRef<String, TicketStatus>,
    /// [`JOBS_STORE`]: the tickets accepted and not finished.
    accepted: StoreRef<String, ExecutionTicket>,
    runtime: Option<tokio::runtime::Handle>,
    sender: Sender<Finished>,
    finished: Receiver<Finished>,
    jobs: HashMap<String, Job>,
    waiting: Vec<String>,
    ready: VecDeque<String>,
    running: usize,
    paused: bool,
}

type Ctx<'a> = ProcessorContext<'a, String, WorkerOutput>;

impl Execute {
    fn new(
        settings: WorkerSettings,
        outcomes: StoreRef<String, TicketStatus>,
        accepted: StoreRef<String, ExecutionTicket>,
    ) -> Self {
        let (sender, finished) = channel();
        Execute {
            settings,
            outcomes,
            accepted,
            runtime: None,
            sender,
            finished,
            jobs: HashMap::new(),
            waiting: Vec::new(),
            ready: VecDeque::new(),
            running: 0,
            paused: false,
        }
    }

    fn outcome(
        &self,
        ctx: &mut Ctx<'_>,
        ticket_id: &str,
    ) -> Result<Option<TicketStatus>, ProcessingError> {
        Ok(ctx.store(&self.outcomes)?.get(&ticket_id.to_string())?)
    }

    fn gate(&self, ctx: &mut Ctx<'_>, ticket: &ExecutionTicket) -> Result<Gate, ProcessingError> {
        let mut wait = false;
        for dep in &ticket.dependencies {
            match self.outcome(ctx, dep)? {
                Some(TicketStatus::Completed) => {}
                Some(TicketStatus::Failed) => {
                    return Ok(Gate::Fail("dependency", format!("dependency {dep} failed")));
                }
                _ => wait = true,
            }
        }
        if !wait {
            return Ok(Gate::Open);
        }
        let now = ctx.wall_clock_time();
        if now > ticket.sla.deadline {
            return Ok(Gate::Fail(
                "deadline",
                format!(
                    "dependencies were not completed by the deadline ({} ms ago)",
                    now - ticket.sla.deadline
                ),
            ));
        }
        Ok(Gate::Wait)
    }

    fn report(
        &self,
        ctx: &mut Ctx<'_>,
        ticket: &ExecutionTicket,
        status: ExecutionStatus,
        payload: ExecutionResultPayload,
        error_message: Option<String>,
        actual_duration_ms: Option<i64>,
    ) {
        let now = ctx.wall_clock_time();
        let result = ExecutionResult {
            ticket_id: ticket.ticket_id.clone(),
            status,
            result: payload,
            error_message,
            actual_duration_ms,
            agent_id: self.settings.agent_id.clone(),
            timestamp: now,
            schema_version: 1,
        };
        ctx.forward(Record::new(
            ticket.ticket_id.clone(),
            WorkerOutput::Result(result),
            now,
        ));
    }

    fn metadata(
        &self,
        ticket: &ExecutionTicket,
        pairs: &[(&str, String)],
    ) -> HashMap<String, String> {
        let mut m = HashMap::from([
            ("plan_id".to_string(), ticket.plan_id.clone()),
            (
                "executor".to_string(),
                self.settings.executor.name().to_string(),
            ),
        ]);
        for (k, v) in pairs {
            m.insert(k.to_string(), v.clone());
        }
        m
    }

    /// Records the final status, reports it, and releases the ticket's record.
    fn settle(
        &mut self,
        ctx: &mut Ctx<'_>,
        job: Job,
        status: TicketStatus,
    ) -> Result<(), ProcessingError> {
        ctx.store(&self.outcomes)?
            .put(&job.ticket.ticket_id, &status)?;
        ctx.store(&self.accepted)?.delete(&job.ticket.ticket_id)?;
        if let Some(d) = job.deferred {
            ctx.complete(d);
        }
        Ok(())
    }

    fn fail_unexecuted(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: &str,
        failure: &'static str,
        message: String,
    ) -> Result<(), ProcessingError> {
        let Some(job) = self.jobs.remove(id) else {
            return Ok(());
        };
        tracing::debug!(ticket_id = %id, failure, %message, "ticket failed without running");
        let payload = ExecutionResultPayload {
            success: false,
            metadata: self.metadata(&job.ticket, &[("failure", failure.to_string())]),
            ..Default::default()
        };
        self.report(
            ctx,
            &job.ticket,
            ExecutionStatus::Failed,
            payload,
            Some(message),
            Some(0),
        );
        self.settle(ctx, job, TicketStatus::Failed)
    }

    fn start(&mut self, ctx: &mut Ctx<'_>, id: &str) -> Result<(), ProcessingError> {
        let Some(runtime) = self.runtime.clone() else {
            return Err(ProcessingError::new(
                "worker-agents executes tickets on the tokio runtime, and none is running",
            ));
        };
        let Some(job) = self.jobs.get(id) else {
            return Ok(());
        };
        let ticket = job.ticket.clone();
        let payload = ExecutionResultPayload {
            success: false,
            metadata: self.metadata(&ticket, &[]),
            ..Default::default()
        };
        self.report(ctx, &ticket, ExecutionStatus::Running, payload, None, None);
        self.running += 1;
        let settings = self.settings.clone();
        let sender = self.sender.clone();
        runtime.spawn(async move {
            let finished = run_attempts(settings, ticket).await;
            // The task may be gone (partition revoked): its record runs again elsewhere.
            let _ = sender.send(finished);
        });
        Ok(())
    }

    fn finish(&mut self, ctx: &mut Ctx<'_>, f: Finished) -> Result<(), ProcessingError> {
        self.running = self.running.saturating_sub(1);
        let Some(job) = self.jobs.remove(&f.ticket_id) else {
            return Ok(());
        };
        let duration = i64::try_from(f.elapsed.as_millis()).unwrap_or(i64::MAX);
        let attempts = [("attempts", f.attempts.to_string())];
        match f.outcome {
            Ok(output) => {
                let payload = ExecutionResultPayload {
                    success: true,
                    output: output.output,
                    metadata: self.metadata(&job.ticket, &attempts),
                    logs: output.logs,
                };
                self.report(
                    ctx,
                    &job.ticket,
                    ExecutionStatus::Completed,
                    payload,
                    None,
                    Some(duration),
                );
                self.settle(ctx, job, TicketStatus::Completed)
            }
            Err(error) => {
                let payload = ExecutionResultPayload {
                    success: false,
                    metadata: self.metadata(
                        &job.ticket,
                        &[
                            ("failure", "execution".to_string()),
                            ("attempts", f.attempts.to_string()),
                        ],
                    ),
                    ..Default::default()
                };
                self.report(
                    ctx,
                    &job.ticket,
                    ExecutionStatus::Failed,
                    payload,
                    Some(error.clone()),
                    Some(duration),
                );
                let now = ctx.wall_clock_time();
                tracing::info!(ticket_id = %job.ticket.ticket_id, attempts = f.attempts, %error, "ticket exhausted its attempts: dead-lettered");
                ctx.forward(Record::new(
                    job.ticket.ticket_id.clone(),
                    WorkerOutput::DeadLetter(DeadLetterTicket {
                        payload: job.ticket.clone(),
                        original_error: error,
                        error_type: f.error_type.to_string(),
                        retry_count: f.attempts.saturating_sub(1),
                        last_failure_timestamp: now,
                    }),
                    now,
                ));
                self.settle(ctx, job, TicketStatus::Failed)
            }
        }
    }

    /// Takes finished executions, opens gates, starts what fits, and sets backpressure.
    fn pump(&mut self, ctx: &mut Ctx<'_>) -> Result<(), ProcessingError> {
        loop {
            let mut progress = false;
            while let Ok(f) = self.finished.try_recv() {
                self.finish(ctx, f)?;
                progress = true;
            }
            for id in std::mem::take(&mut self.waiting) {
                let Some(job) = self.jobs.get(&id) else {
                    continue;
                };
                let ticket = job.ticket.clone();
                match self.gate(ctx, &ticket)? {
                    Gate::Open => self.ready.push_back(id),
                    Gate::Wait => self.waiting.push(id),
                    Gate::Fail(failure, message) => {
                        self.fail_unexecuted(ctx, &id, failure, message)?;
                        progress = true;
                    }
                }
            }
            while self.running < self.settings.max_in_flight {
                let Some(id) = self.ready.pop_front() else {
                    break;
                };
                self.start(ctx, &id)?;
            }
            if !progress {
                break;
            }
        }
        let load = self.running + self.ready.len();
        let max = self.settings.max_in_flight;
        let (pause_at, resume_at) = ((max * 8).div_ceil(10).max(1), max / 2);
        if !self.paused && load >= pause_at {
            self.paused = true;
            ctx.pause_input(true);
        } else if self.paused && load <= resume_at {
            self.paused = false;
            ctx.pause_input(false);
        }
        Ok(())
    }
}

impl Processor<String, ExecutionTicket, String, WorkerOutput> for Execute {
    fn init(&mut self, ctx: &mut Ctx<'_>) -> Result<(), ProcessingError> {
        self.runtime = tokio::runtime::Handle::try_current().ok();
        ctx.schedule(self.settings.poll_interval, PunctuationType::WallClockTime);
        // Tickets accepted by this task before (here or on another instance) and not
        // finished: they wait and run again. The first punctuation starts them.
        let pending = ctx.store(&self.accepted)?.all()?;
        if !pending.is_empty() {
            tracing::info!(
                partition = ctx.partition(),
                tickets = pending.len(),
                "resuming the tickets accepted and not finished"
            );
        }
        for (id, ticket) in pending {
            self.jobs.insert(
                id.clone(),
                Job {
                    ticket,
                    deferred: None,
                },
            );
            self.waiting.push(id);
        }
        Ok(())
    }

    fn process(
        &mut self,
        record: Record<String, ExecutionTicket>,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), ProcessingError> {
        let ticket = record.value;
        let id = ticket.ticket_id.clone();
        if self.jobs.contains_key(&id) || self.outcome(ctx, &id)?.is_some() {
            tracing::debug!(ticket_id = %id, "duplicate ticket skipped");
            ctx.count_skipped();
            return Ok(());
        }
        ctx.store(&self.accepted)?.put(&id, &ticket)?;
        // At-least-once: the record also stays uncommitted until the ticket's final
        // result is acknowledged (`None` under exactly-once: the store write commits
        // with the transaction).
        let deferred = ctx.defer();
        self.jobs.insert(id.clone(), Job { ticket, deferred });
        self.waiting.push(id);
        self.pump(ctx)
    }

    fn punctuate(
        &mut self,
        _schedule: ScheduleId,
        _timestamp: i64,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), ProcessingError> {
        self.pump(ctx)
    }
}

fn bad_option(message: impl std::fmt::Display) -> TopologyError {
    TopologyError::Invalid {
        topology: NAME.into(),
        problems: vec![Problem::BadOption {
            message: format!("[topologies.{NAME}]: {message}"),
        }],
    }
}

/// Builds the topology from `[topologies.worker-agents]`.
pub fn build(ctx: &BuildContext) -> Result<Topology, TopologyError> {
    let options: WorkerOptions = toml::Value::Table(ctx.options.clone())
        .try_into()
        .map_err(bad_option)?;
    let settings = WorkerSettings::from_options(&options).map_err(bad_option)?;
    build_with(ctx, settings)
}

/// Builds the topology with `settings` (an executor of your own, for instance).
pub fn build_with(ctx: &BuildContext, settings: WorkerSettings) -> Result<Topology, TopologyError> {
    let tickets = crate::tickets::topic(ctx)?;
    let results = crate::results::topic(ctx)?;
    let b = TopologyBuilder::new(NAME);
    b.error_policy(ErrorPolicy::dead_letter(DEAD_LETTER));
    let outcomes = b.add_store(
        StoreBuilder::persistent(
            OUTCOME_STORE,
            Serdes::string(),
            Serdes::json::<TicketStatus>(),
        )
        .with_ttl(Duration::from_secs(7 * 24 * 3600)),
    );
    let accepted = b.add_store(StoreBuilder::persistent(
        JOBS_STORE,
        Serdes::string(),
        Serdes::json::<ExecutionTicket>(),
    ));
    let outputs = b
        .stream(&tickets)
        .process(|| Validate)
        .named("validate")
        .select_key(|_k, t: &ExecutionTicket| t.plan_id.clone())
        .named("by-plan")
        .repartition(
            "tickets-by-plan",
            Grouped::with(Serdes::string(), Serdes::json::<ExecutionTicket>()),
        )
        .process_with_stores(&[OUTCOME_STORE, JOBS_STORE], move || {
            Execute::new(settings.clone(), outcomes.clone(), accepted.clone())
        })
        .named("execute");
    let dead_letters = Topic::new(
        DEAD_LETTER,
        Serdes::string(),
        Serdes::json::<DeadLetterTicket>(),
    );
    outputs
        .split()
        .named("outputs")
        .branch_map(
            |_k, o| match o {
                WorkerOutput::Result(r) => Branch::Take(r),
                other => Branch::Pass(other),
            },
            |reported| {
                reported
                    .map(|k: String, r| (Some(k), r))
                    .to(&results)
                    .named("results-out");
            },
        )
        .branch_map(
            |_k, o| match o {
                WorkerOutput::DeadLetter(d) => Branch::Take(d),
                other => Branch::Pass(other),
            },
            |exhausted| {
                exhausted.to(&dead_letters).named("dead-letters-out");
            },
        );
    b.build()
}
