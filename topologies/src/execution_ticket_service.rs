//! `execution-ticket-service`: the ticket store. Tickets from `execution.tickets` are
//! kept once each (idempotency key `metadata.idempotency_key`, else `ticket_id`; one
//! ticket per plan and task), results from `execution.results` move them through the
//! valid status transitions only, and the service's HTTP API ([`crate::ticket_api`])
//! answers from the store and writes through `execution.tickets`. Unlike the service it replaces, it reads Avro and legacy JSON alike, and a
//! record it cannot handle goes to the dead-letter topic instead of being skipped by a
//! later commit.

use std::time::Duration;

use engine::BuildContext;
use engine::record::Record;
use engine::serde::Serdes;
use engine::topology::{
    ErrorPolicy, Grouped, ProcessingError, Processor, ProcessorContext, PunctuationType,
    ScheduleId, StoreBuilder, StoreRef, Topic, Topology, TopologyBuilder, TopologyError,
};

use crate::results::{ExecutionResult, ExecutionStatus};
use crate::tickets::{ExecutionTicket, TicketStatus};

/// Name and application id.
pub const NAME: &str = "execution-ticket-service";
/// Tickets in.
pub const TICKETS: &str = crate::tickets::TOPIC;
/// Results in.
pub const RESULTS: &str = crate::results::TOPIC;
/// Records the service cannot handle, with their original bytes.
pub const DEAD_LETTER: &str = "execution-ticket-service.dlq";
/// ticket id -> ticket (JSON).
pub const TICKET_STORE: &str = "tickets";
/// `plan_id/task_id` -> ticket id.
pub const PLAN_TASK_STORE: &str = "plan-tasks";
/// Idempotency key -> where it was first seen; kept a week.
pub const IDEMPOTENCY_STORE: &str = "idempotency-keys";
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
/// Changes asked through the HTTP API (`PATCH .../status`, `POST .../retry`,
/// `POST /compensation`), keyed by ticket id, as JSON [`TicketCommand`]s: applied to the
/// store in order with the workers' results, so every change flows through Kafka and
/// the changelog.
pub const COMMANDS: &str = "execution-ticket-service.commands";
/// Ticket id -> the outcomes of the latest commands on it (the API waits for its own);
/// kept a day.
pub const COMMAND_OUTCOMES_STORE: &str = "command-outcomes";
/// Outcomes kept per ticket: a redelivered command among them is not applied twice.
const OUTCOMES_KEPT: usize = 16;

/// A change to one ticket, asked through the HTTP API.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TicketCommand {
    /// Unique per request: its outcome is found by it.
    pub command_id: String,
    /// The ticket changed.
    pub ticket_id: String,
    /// What to do.
    pub action: CommandAction,
}

/// What a [`TicketCommand`] does, as the service's routes do it.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CommandAction {
    /// `PATCH .../status`: any status; the error message replaced (cleared when absent);
    /// the duration and `metadata["result"]` set when given.
    UpdateStatus {
        /// The new status.
        status: TicketStatus,
        /// Replaces the ticket's.
        error_message: Option<String>,
        /// Set when given.
        actual_duration_ms: Option<i64>,
        /// `metadata["result"]` (a JSON text), set when given.
        result: Option<String>,
    },
    /// `POST .../retry`: a FAILED ticket with retries left goes back to PENDING.
    Retry,
    /// `POST /compensation`: a FAILED or RUNNING ticket is COMPENSATING, by this ticket.
    Compensate {
        /// The compensation ticket's id.
        compensation_ticket_id: String,
    },
}

/// Why a command was not applied: the HTTP status and the service's `detail`.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 400 or 404.
    pub status: u16,
    /// The service's reason.
    pub detail: String,
}

/// What became of a command: the ticket after it, or why it was refused.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    /// The command's id.
    pub command_id: String,
    /// The resulting ticket, or the refusal.
    pub outcome: Result<ExecutionTicket, Refusal>,
}

/// A status as its contract symbol (`FAILED`).
pub fn status_symbol(status: TicketStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The refusal of `action` on a ticket that is not stored, in the route's words.
pub fn not_found(action: &CommandAction, ticket_id: &str) -> Refusal {
    let detail = match action {
        CommandAction::UpdateStatus { .. } => "Ticket not found".to_string(),
        CommandAction::Retry => format!("Ticket não encontrado: {ticket_id}"),
        CommandAction::Compensate { .. } => format!("Ticket original nao encontrado: {ticket_id}"),
    };
    Refusal {
        status: 404,
        detail,
    }
}

/// Applies `action` to `ticket` as the service's route does, or says why not.
pub fn apply_command(ticket: &mut ExecutionTicket, action: &CommandAction) -> Result<(), Refusal> {
    let refuse = |detail: String| Refusal {
        status: 400,
        detail,
    };
    match action {
        CommandAction::UpdateStatus {
            status,
            error_message,
            actual_duration_ms,
            result,
        } => {
            ticket.status = *status;
            ticket.error_message.clone_from(error_message);
            if actual_duration_ms.is_some() {
                ticket.actual_duration_ms = *actual_duration_ms;
            }
            if let Some(result) = result {
                ticket.metadata.insert("result".into(), result.clone());
            }
        }
        CommandAction::Retry => {
            if ticket.status != TicketStatus::Failed {
                return Err(refuse(format!(
                    "Ticket deve estar em estado FAILED para retry, atual: {}",
                    status_symbol(ticket.status)
                )));
            }
            let max = ticket.sla.max_retries;
            if ticket.retry_count >= max {
                return Err(refuse(format!(
                    "Limite de retries excedido: {}/{max}",
                    ticket.retry_count
                )));
            }
            ticket.retry_count += 1;
            ticket.status = TicketStatus::Pending;
        }
        CommandAction::Compensate {
            compensation_ticket_id,
        } => {
            if !matches!(ticket.status, TicketStatus::Failed | TicketStatus::Running) {
                return Err(refuse(format!(
                    "Ticket original deve estar em estado FAILED ou RUNNING, atual: {}",
                    status_symbol(ticket.status)
                )));
            }
            ticket.compensation_ticket_id = Some(compensation_ticket_id.clone());
            ticket.status = TicketStatus::Compensating;
        }
    }
    Ok(())
}

/// Applies the API's commands to the stored tickets (runs partitioned by ticket id) and
/// records each outcome for the API to answer with.
/// The service's stores, typed, shared by its processors.
#[derive(Clone)]
struct Stores {
    /// [`TICKET_STORE`].
    tickets: StoreRef<String, ExecutionTicket>,
    /// [`PENDING_RESULTS_STORE`].
    pending: StoreRef<String, Vec<(i64, ExecutionResult)>>,
    /// [`PLAN_TASK_STORE`].
    plan_tasks: StoreRef<String, String>,
    /// [`COMMAND_OUTCOMES_STORE`].
    outcomes: StoreRef<String, Vec<CommandOutcome>>,
}

struct ApplyCommand {
    stores: Stores,
}

impl Processor<String, TicketCommand, String, ExecutionResult> for ApplyCommand {
    fn process(
        &mut self,
        record: Record<String, TicketCommand>,
        ctx: &mut ProcessorContext<'_, String, ExecutionResult>,
    ) -> Result<(), ProcessingError> {
        let command = record.value;
        let id = command.ticket_id.clone();
        let mut outcomes = ctx
            .store(&self.stores.outcomes)?
            .get(&id)?
            .unwrap_or_default();
        if outcomes.iter().any(|o| o.command_id == command.command_id) {
            // Delivered again (at-least-once): applied already.
            ctx.count_skipped();
            return Ok(());
        }
        let outcome = {
            let mut tickets = ctx.store(&self.stores.tickets)?;
            match tickets.get(&id)? {
                None => Err(not_found(&command.action, &id)),
                Some(mut ticket) => match apply_command(&mut ticket, &command.action) {
                    Ok(()) => {
                        tickets.put(&id, &ticket)?;
                        Ok(ticket)
                    }
                    Err(refusal) => Err(refusal),
                },
            }
        };
        outcomes.push(CommandOutcome {
            command_id: command.command_id,
            outcome,
        });
        if outcomes.len() > OUTCOMES_KEPT {
            outcomes.remove(0);
        }
        Ok(ctx.store(&self.stores.outcomes)?.put(&id, &outcomes)?)
    }
}
/// Where the ticket API is served by `engine run --http`.
pub use crate::ticket_api::API_PATH;

/// `[topologies.execution-ticket-service]`: the HTTP API's settings.
#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ServiceOptions {
    /// Secret of the tokens of `GET /api/v1/tickets/{id}/token` (HS256); else the
    /// `JWT_SECRET_KEY` environment variable, as the service reads it.
    jwt_secret_key: Option<String>,
    #[serde(default = "hs256")]
    jwt_algorithm: String,
    #[serde(default = "an_hour")]
    jwt_token_expiration_seconds: u64,
    /// How long `POST /api/v1/tickets/` waits for the ticket to be stored.
    #[serde(default = "ten_seconds")]
    api_write_timeout_ms: u64,
}

fn hs256() -> String {
    "HS256".into()
}
fn an_hour() -> u64 {
    3600
}
fn ten_seconds() -> u64 {
    10_000
}

fn bad_option(e: impl std::fmt::Display) -> TopologyError {
    TopologyError::Invalid {
        topology: NAME.into(),
        problems: vec![engine::topology::Problem::BadOption {
            message: format!(
                "[topologies.{NAME}]: {e} (known options: jwt_secret_key, jwt_algorithm, jwt_token_expiration_seconds, api_write_timeout_ms)"
            ),
        }],
    }
}

fn api_options(ctx: &BuildContext) -> Result<crate::ticket_api::ApiOptions, TopologyError> {
    let o: ServiceOptions = toml::Value::Table(ctx.options.clone())
        .try_into()
        .map_err(bad_option)?;
    if o.jwt_algorithm != "HS256" {
        return Err(bad_option(format!(
            "jwt_algorithm = \"{}\" is not supported; tokens are signed with HS256: remove the option or set it to \"HS256\"",
            o.jwt_algorithm
        )));
    }
    if o.jwt_token_expiration_seconds == 0 {
        return Err(bad_option(
            "jwt_token_expiration_seconds must be at least 1 (the service's default is 3600)",
        ));
    }
    if o.api_write_timeout_ms == 0 {
        return Err(bad_option("api_write_timeout_ms must be at least 1"));
    }
    if o.jwt_secret_key.as_deref() == Some("") {
        return Err(bad_option(
            "jwt_secret_key is empty; set a secret, or remove it to leave tokens unserved",
        ));
    }
    // As the service reads it (its settings come from the environment): a deployment
    // passes the secret from a Secret rather than a configuration file.
    let jwt_secret_key = o.jwt_secret_key.or_else(|| {
        std::env::var("JWT_SECRET_KEY")
            .ok()
            .filter(|s| !s.is_empty())
    });
    Ok(crate::ticket_api::ApiOptions {
        jwt_secret_key,
        token_lifetime: Duration::from_secs(o.jwt_token_expiration_seconds),
        write_timeout: Duration::from_millis(o.api_write_timeout_ms),
    })
}

/// The ticket's idempotency key: `metadata.idempotency_key`, else its id.
fn idempotency_key(ticket: &ExecutionTicket) -> String {
    ticket
        .metadata
        .get("idempotency_key")
        .cloned()
        .unwrap_or_else(|| ticket.ticket_id.clone())
}

/// Refuses a second ticket for a plan's task (runs partitioned by plan).
struct OnePerTask {
    stores: Stores,
}

impl Processor<String, ExecutionTicket, String, ExecutionTicket> for OnePerTask {
    fn process(
        &mut self,
        record: Record<String, ExecutionTicket>,
        ctx: &mut ProcessorContext<'_, String, ExecutionTicket>,
    ) -> Result<(), ProcessingError> {
        let ticket = &record.value;
        let plan_task = format!("{}/{}", ticket.plan_id, ticket.task_id);
        {
            let mut plan_tasks = ctx.store(&self.stores.plan_tasks)?;
            match plan_tasks.get(&plan_task)? {
                Some(existing) if existing != ticket.ticket_id => {
                    return Err(ProcessingError::field(
                        "task_id",
                        format!(
                            "plan `{}` already has ticket `{existing}` for task `{}`; ticket `{}` is a conflicting duplicate",
                            ticket.plan_id, ticket.task_id, ticket.ticket_id
                        ),
                    ));
                }
                _ => plan_tasks.put(&plan_task, &ticket.ticket_id)?,
            }
        }
        ctx.forward(record);
        Ok(())
    }
}

/// Results that arrived before their ticket was stored: ticket id -> (arrival time,
/// result), in arrival order. Tickets take three hops to the store and results one, so a
/// fast worker's report often overtakes its ticket.
pub const PENDING_RESULTS_STORE: &str = "results-awaiting-ticket";

/// How long a result waits for its ticket before it is dead-lettered (as JSON).
pub const ORPHAN_RESULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Stores the ticket (runs partitioned by ticket id, like the results) and applies the
/// results that were waiting for it.
struct Store {
    stores: Stores,
}

impl Processor<String, ExecutionTicket, String, ExecutionResult> for Store {
    fn process(
        &mut self,
        record: Record<String, ExecutionTicket>,
        ctx: &mut ProcessorContext<'_, String, ExecutionResult>,
    ) -> Result<(), ProcessingError> {
        let mut ticket = record.value;
        let waiting = {
            let mut pending = ctx.store(&self.stores.pending)?;
            let waiting = pending.get(&record.key)?;
            if waiting.is_some() {
                pending.delete(&record.key)?;
            }
            waiting.unwrap_or_default()
        };
        for (_, result) in waiting {
            match apply(&mut ticket, result) {
                Ok(Applied::Changed) => {}
                Ok(Applied::Duplicate) => ctx.count_skipped(),
                Err(e) => {
                    // The result's own record was committed when it was buffered; there is
                    // no original to dead-letter, so say so loudly and count it.
                    tracing::warn!(ticket_id = %record.key, error = %e, "a buffered result does not apply to its ticket: skipped");
                    ctx.count_skipped();
                }
            }
        }
        Ok(ctx.store(&self.stores.tickets)?.put(&record.key, &ticket)?)
    }
}

/// Whether a ticket may move from `from` to what a worker reports.
pub fn valid_transition(from: TicketStatus, to: ExecutionStatus) -> bool {
    use ExecutionStatus as E;
    use TicketStatus as T;
    matches!(
        (from, to),
        (T::Pending, E::Running | E::Completed | E::Failed)
            | (T::Running, E::Completed | E::Failed)
    )
}

/// The ticket status a worker's report moves a ticket to.
fn reported_status(status: ExecutionStatus) -> TicketStatus {
    match status {
        ExecutionStatus::Running => TicketStatus::Running,
        ExecutionStatus::Completed => TicketStatus::Completed,
        ExecutionStatus::Failed => TicketStatus::Failed,
    }
}

enum Applied {
    Changed,
    Duplicate,
}

/// Moves `ticket` to the status `result` reports; an invalid transition is an error
/// naming the field.
fn apply(
    ticket: &mut ExecutionTicket,
    result: ExecutionResult,
) -> Result<Applied, ProcessingError> {
    if ticket.status == reported_status(result.status) {
        // The same report again (results are delivered at least once): nothing to do.
        return Ok(Applied::Duplicate);
    }
    if !valid_transition(ticket.status, result.status) {
        return Err(ProcessingError::field(
            "status",
            format!(
                "ticket `{}` cannot go from {:?} to {:?}",
                ticket.ticket_id, ticket.status, result.status
            ),
        ));
    }
    ticket.status = reported_status(result.status);
    if result.status == ExecutionStatus::Running {
        ticket.started_at = Some(result.timestamp);
    } else {
        ticket.completed_at = Some(result.timestamp);
        ticket.actual_duration_ms = result.actual_duration_ms;
        ticket.error_message = result.error_message;
    }
    Ok(Applied::Changed)
}

/// Applies results to the stored tickets; a result whose ticket is not stored yet waits
/// for it, and goes to the dead-letter topic if it does not come within
/// [`ORPHAN_RESULT_TIMEOUT`].
struct ApplyResult {
    stores: Stores,
    orphan_timeout: Duration,
}

impl Processor<String, ExecutionResult, String, ExecutionResult> for ApplyResult {
    fn init(
        &mut self,
        ctx: &mut ProcessorContext<'_, String, ExecutionResult>,
    ) -> Result<(), ProcessingError> {
        let every = (self.orphan_timeout / 10).max(Duration::from_millis(100));
        ctx.schedule(every, PunctuationType::WallClockTime);
        Ok(())
    }

    fn process(
        &mut self,
        record: Record<String, ExecutionResult>,
        ctx: &mut ProcessorContext<'_, String, ExecutionResult>,
    ) -> Result<(), ProcessingError> {
        let result = record.value;
        let stored = ctx.store(&self.stores.tickets)?.get(&result.ticket_id)?;
        let Some(mut ticket) = stored else {
            let now = ctx.wall_clock_time();
            let mut pending = ctx.store(&self.stores.pending)?;
            let id = result.ticket_id.clone();
            let mut waiting = pending.get(&id)?.unwrap_or_default();
            waiting.push((now, result));
            pending.put(&id, &waiting)?;
            return Ok(());
        };
        match apply(&mut ticket, result)? {
            Applied::Duplicate => {
                ctx.count_skipped();
                Ok(())
            }
            Applied::Changed => Ok(ctx
                .store(&self.stores.tickets)?
                .put(&ticket.ticket_id, &ticket)?),
        }
    }

    fn punctuate(
        &mut self,
        _schedule: ScheduleId,
        now: i64,
        ctx: &mut ProcessorContext<'_, String, ExecutionResult>,
    ) -> Result<(), ProcessingError> {
        let timeout = i64::try_from(self.orphan_timeout.as_millis()).unwrap_or(i64::MAX);
        let expired: Vec<(String, Vec<(i64, ExecutionResult)>)> = ctx
            .store(&self.stores.pending)?
            .all()?
            .into_iter()
            .filter(|(_, waiting)| waiting.first().is_some_and(|(at, _)| now - at >= timeout))
            .collect();
        for (id, waiting) in expired {
            ctx.store(&self.stores.pending)?.delete(&id)?;
            for (at, result) in waiting {
                tracing::warn!(ticket_id = %id, waited_ms = now - at, "a result's ticket never arrived: dead-lettered");
                let mut orphan = Record::new(id.clone(), result, now);
                orphan.headers.add(
                    engine::topology::dead_letter_headers::ERROR_CLASS,
                    Some(b"processing".to_vec()),
                );
                orphan.headers.add(
                    engine::topology::dead_letter_headers::ERROR_FIELD,
                    Some(b"ticket_id".to_vec()),
                );
                orphan.headers.add(
                    engine::topology::dead_letter_headers::ERROR_MESSAGE,
                    Some(
                        format!(
                            "no ticket `{id}` arrived within {} ms of its result",
                            now - at
                        )
                        .into_bytes(),
                    ),
                );
                ctx.forward(orphan);
            }
        }
        Ok(())
    }
}

/// Builds the topology.
pub fn build(ctx: &BuildContext) -> Result<Topology, TopologyError> {
    let options = api_options(ctx)?;
    let tickets = crate::tickets::topic(ctx)?;
    let results = crate::results::topic(ctx)?;
    let commands = Topic::new(COMMANDS, Serdes::string(), Serdes::json::<TicketCommand>());
    let orphans = Topic::new(
        DEAD_LETTER,
        Serdes::string(),
        Serdes::json::<ExecutionResult>(),
    );
    let api_tickets = tickets.value_serde();
    let b = TopologyBuilder::new(NAME);
    b.error_policy(ErrorPolicy::dead_letter(DEAD_LETTER));
    let stores = Stores {
        tickets: b.add_store(StoreBuilder::persistent(
            TICKET_STORE,
            Serdes::string(),
            Serdes::json(),
        )),
        pending: b.add_store(StoreBuilder::persistent(
            PENDING_RESULTS_STORE,
            Serdes::string(),
            Serdes::json(),
        )),
        plan_tasks: b.add_store(StoreBuilder::persistent(
            PLAN_TASK_STORE,
            Serdes::string(),
            Serdes::string(),
        )),
        outcomes: b.add_store(
            StoreBuilder::persistent(COMMAND_OUTCOMES_STORE, Serdes::string(), Serdes::json())
                .with_ttl(Duration::from_secs(24 * 3600)),
        ),
    };
    b.serve_http(move |service| {
        crate::ticket_api::routes(service, api_tickets.clone(), options.clone())
    });

    // Tickets arrive keyed by plan (orchestrator) or ticket (REST); each check runs in the
    // task that owns its key, so the stream is repartitioned for each.
    let stored = b
        .stream(&tickets)
        .select_key(|_k, t: &ExecutionTicket| idempotency_key(t))
        .repartition(
            "tickets-by-idempotency-key",
            Grouped::with(Serdes::string(), Serdes::json()),
        )
        .deduplicate(
            IDEMPOTENCY_STORE,
            |key: &String, _t| key.clone(),
            Serdes::string(),
            WEEK,
        )
        .select_key(|_k, t: &ExecutionTicket| t.plan_id.clone())
        .repartition(
            "tickets-by-plan",
            Grouped::with(Serdes::string(), Serdes::json()),
        )
        .process_with_stores(&[PLAN_TASK_STORE], {
            let stores = stores.clone();
            move || OnePerTask {
                stores: stores.clone(),
            }
        })
        .named("one-per-task")
        .select_key(|_k, t: &ExecutionTicket| t.ticket_id.clone())
        .repartition(
            "tickets-by-id",
            Grouped::with(Serdes::string(), Serdes::json()),
        )
        .process_with_stores(&[TICKET_STORE, PENDING_RESULTS_STORE], {
            let stores = stores.clone();
            move || Store {
                stores: stores.clone(),
            }
        })
        .named("store");

    // Results move the stored tickets; one whose ticket never comes is dead-lettered.
    let orphan_timeout = ORPHAN_RESULT_TIMEOUT;
    let orphaned = b
        .stream(&results)
        .select_key(|_k, r: &ExecutionResult| r.ticket_id.clone())
        .repartition(
            "results-by-id",
            Grouped::with(Serdes::string(), Serdes::json()),
        )
        .process_with_stores(&[TICKET_STORE, PENDING_RESULTS_STORE], {
            let stores = stores.clone();
            move || ApplyResult {
                stores: stores.clone(),
                orphan_timeout,
            }
        })
        .named("apply-result");
    stored.merge(&orphaned).to(&orphans).named("orphans-out");

    // The API's commands, applied in order with the results.
    b.stream(&commands)
        .repartition(
            "commands-by-id",
            Grouped::with(Serdes::string(), Serdes::json()),
        )
        .process_with_stores(&[TICKET_STORE, COMMAND_OUTCOMES_STORE], move || {
            ApplyCommand {
                stores: stores.clone(),
            }
        })
        .named("apply-command");
    b.build()
}
