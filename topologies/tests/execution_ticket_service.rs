//! `execution-ticket-service` through the test driver: idempotency, one ticket per plan
//! and task, status transitions, and the dead-letter topic for what it cannot handle.

#![allow(clippy::unwrap_used)] // tests state their expectations with unwrap

use std::sync::Arc;

use engine::BuildContext;
use engine::record::Headers;
use engine::registry::{MemoryRegistry, SchemaRegistry};
use engine::serde::{AvroContext, Serdes};
use engine::testing::{TestDriver, TestInputTopic};
use topologies::execution_ticket_service::{
    self as service, DEAD_LETTER, RESULTS, TICKET_STORE, TICKETS, valid_transition,
};
use topologies::results::*;
use topologies::tickets::*;

struct Service {
    driver: TestDriver,
    tickets: TestInputTopic<Option<String>, ExecutionTicket>,
    results: TestInputTopic<Option<String>, ExecutionResult>,
}

fn service() -> Service {
    let ctx = BuildContext {
        avro: AvroContext {
            registry: Some(SchemaRegistry::memory(Arc::new(MemoryRegistry::new()))),
            ..Default::default()
        },
        ..Default::default()
    };
    let driver = TestDriver::new(service::build(&ctx).unwrap());
    let key = || Serdes::nullable(Serdes::string());
    let tickets = driver.input_topic(
        TICKETS,
        key(),
        ctx.avro.value_serde(EXECUTION_TICKET_SCHEMA).unwrap(),
    );
    let results = driver.input_topic(
        RESULTS,
        key(),
        ctx.avro.value_serde(EXECUTION_RESULT_SCHEMA).unwrap(),
    );
    Service {
        driver,
        tickets,
        results,
    }
}

fn result(ticket: &str, status: ExecutionStatus, at: i64) -> ExecutionResult {
    ExecutionResult {
        ticket_id: ticket.into(),
        status,
        result: ExecutionResultPayload {
            success: status == ExecutionStatus::Completed,
            ..Default::default()
        },
        error_message: (status == ExecutionStatus::Failed).then(|| "boom".into()),
        actual_duration_ms: Some(50),
        agent_id: "worker-1".into(),
        timestamp: at,
        schema_version: 1,
    }
}

impl Service {
    fn ticket(&self, id: &str) -> Option<ExecutionTicket> {
        self.driver
            .store_get::<String, ExecutionTicket>(TICKET_STORE, &id.to_string())
    }
    fn dead_letters(&self) -> Vec<(String, String)> {
        std::iter::from_fn(|| self.driver.read_raw(DEAD_LETTER))
            .map(|r| {
                (
                    r.headers
                        .last_str("engine.error.field")
                        .unwrap_or("")
                        .to_string(),
                    r.headers
                        .last_str("engine.error.message")
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .collect()
    }
}

#[test]
fn tickets_are_kept_once_by_idempotency_key() {
    let s = service();
    let mut first = sample_ticket(1, TicketStatus::Pending);
    first
        .metadata
        .insert("idempotency_key".into(), "idem-1".into());
    s.tickets
        .pipe(Some("plan-1".into()), first.clone())
        .unwrap();
    // Same idempotency key, another ticket id: a duplicate, skipped (and committed).
    let mut again = sample_ticket(2, TicketStatus::Pending);
    again
        .metadata
        .insert("idempotency_key".into(), "idem-1".into());
    s.tickets.pipe(Some("plan-1".into()), again).unwrap();
    assert_eq!(s.ticket("ticket-1"), Some(first));
    assert_eq!(s.ticket("ticket-2"), None);
    // Without an idempotency key the ticket id is the key.
    let third = sample_ticket(3, TicketStatus::Pending);
    s.tickets.pipe(None, third.clone()).unwrap();
    s.tickets.pipe(None, third).unwrap();
    assert_eq!(
        s.driver
            .store_entries::<String, ExecutionTicket>(TICKET_STORE)
            .unwrap()
            .len(),
        2
    );
    assert!(s.dead_letters().is_empty());
}

#[test]
fn a_second_ticket_for_the_same_plan_and_task_is_dead_lettered() {
    let s = service();
    s.tickets
        .pipe(None, sample_ticket(1, TicketStatus::Pending))
        .unwrap();
    let mut clash = sample_ticket(4, TicketStatus::Pending);
    clash.plan_id = "plan-1".into();
    clash.task_id = "task-1".into();
    s.tickets.pipe(None, clash).unwrap();
    let dead = s.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, "task_id");
    assert!(
        dead[0].1.contains("already has ticket `ticket-1`"),
        "{}",
        dead[0].1
    );
    assert_eq!(s.ticket("ticket-4"), None);
}

#[test]
fn results_move_tickets_through_valid_transitions_only() {
    let s = service();
    s.tickets
        .pipe(None, sample_ticket(1, TicketStatus::Pending))
        .unwrap();
    s.results
        .pipe(
            Some("ticket-1".into()),
            result("ticket-1", ExecutionStatus::Running, 10),
        )
        .unwrap();
    let running = s.ticket("ticket-1").unwrap();
    assert_eq!(
        (running.status, running.started_at),
        (TicketStatus::Running, Some(10))
    );
    s.results
        .pipe(
            Some("ticket-1".into()),
            result("ticket-1", ExecutionStatus::Failed, 20),
        )
        .unwrap();
    let failed = s.ticket("ticket-1").unwrap();
    assert_eq!(failed.status, TicketStatus::Failed);
    // The same report again (at-least-once delivery) is a duplicate, not an error.
    s.results
        .pipe(
            Some("ticket-1".into()),
            result("ticket-1", ExecutionStatus::Failed, 25),
        )
        .unwrap();
    assert_eq!(s.driver.metrics().skipped, 1);
    assert_eq!(s.ticket("ticket-1").unwrap().completed_at, Some(20));
    assert_eq!(
        (failed.completed_at, failed.error_message.as_deref()),
        (Some(20), Some("boom"))
    );
    // FAILED is final: a late COMPLETED is refused, and the ticket is unchanged.
    s.results
        .pipe(
            Some("ticket-1".into()),
            result("ticket-1", ExecutionStatus::Completed, 30),
        )
        .unwrap();
    assert_eq!(s.ticket("ticket-1").unwrap().status, TicketStatus::Failed);
    let dead = s.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "status");
    assert!(
        dead[0].1.contains("cannot go from Failed to Completed"),
        "{}",
        dead[0].1
    );
    // A result for a ticket nobody registered waits for it, then is dead-lettered.
    s.results
        .pipe(None, result("ghost", ExecutionStatus::Completed, 40))
        .unwrap();
    assert!(s.dead_letters().is_empty());
    s.driver
        .advance_wall_clock(service::ORPHAN_RESULT_TIMEOUT + std::time::Duration::from_secs(30))
        .unwrap();
    let dead = s.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "ticket_id");
    assert!(
        dead[0].1.contains("no ticket `ghost` arrived"),
        "{}",
        dead[0].1
    );
}

#[test]
fn a_result_that_overtakes_its_ticket_is_applied_when_the_ticket_arrives() {
    let s = service();
    s.results
        .pipe(
            Some("ticket-5".into()),
            result("ticket-5", ExecutionStatus::Running, 10),
        )
        .unwrap();
    s.results
        .pipe(
            Some("ticket-5".into()),
            result("ticket-5", ExecutionStatus::Completed, 20),
        )
        .unwrap();
    assert_eq!(s.ticket("ticket-5"), None);
    s.tickets
        .pipe(None, sample_ticket(5, TicketStatus::Pending))
        .unwrap();
    let stored = s.ticket("ticket-5").unwrap();
    assert_eq!(stored.status, TicketStatus::Completed);
    assert_eq!(
        (stored.started_at, stored.completed_at),
        (Some(10), Some(20))
    );
    s.driver
        .advance_wall_clock(service::ORPHAN_RESULT_TIMEOUT * 2)
        .unwrap();
    assert!(s.dead_letters().is_empty(), "nothing was left waiting");
}

#[test]
fn the_transition_table() {
    use ExecutionStatus as E;
    use TicketStatus as T;
    for (from, to, ok) in [
        (T::Pending, E::Running, true),
        (T::Pending, E::Completed, true),
        (T::Pending, E::Failed, true),
        (T::Running, E::Completed, true),
        (T::Running, E::Failed, true),
        (T::Running, E::Running, false),
        (T::Completed, E::Failed, false),
        (T::Failed, E::Completed, false),
        (T::Compensating, E::Completed, false),
        (T::Compensated, E::Running, false),
    ] {
        assert_eq!(valid_transition(from, to), ok, "{from:?} -> {to:?}");
    }
}

#[test]
fn legacy_json_tickets_are_read_and_garbage_is_dead_lettered_not_lost() {
    let s = service();
    let json = serde_json::to_vec(&sample_ticket(5, TicketStatus::Pending)).unwrap();
    s.driver
        .pipe_raw(TICKETS, None, Some(&json), 1, Headers::new())
        .unwrap();
    assert!(s.ticket("ticket-5").is_some(), "the JSON ticket was stored");
    s.driver
        .pipe_raw(TICKETS, None, Some(b"\x00\x01garbage"), 2, Headers::new())
        .unwrap();
    let dead = s.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, "value");
}

/// The HTTP API's changes, as commands on `execution-ticket-service.commands`: applied
/// in order with the results, each outcome recorded once (a redelivered command is not
/// applied again), refusals in the service's words.
#[test]
fn commands_change_tickets_as_the_services_routes_did_and_record_their_outcomes() {
    use service::{
        COMMAND_OUTCOMES_STORE, COMMANDS, CommandAction, CommandOutcome, Refusal, TicketCommand,
    };
    let s = service();
    let commands =
        s.driver
            .input_topic(COMMANDS, Serdes::string(), Serdes::json::<TicketCommand>());
    let send = |n: u32, ticket: &str, action: CommandAction| {
        let command = TicketCommand {
            command_id: format!("c{n}"),
            ticket_id: ticket.into(),
            action,
        };
        commands.pipe(ticket.into(), command).unwrap();
    };
    let outcome = |ticket: &str, n: u32| -> Result<ExecutionTicket, Refusal> {
        s.driver
            .store_get::<String, Vec<CommandOutcome>>(COMMAND_OUTCOMES_STORE, &ticket.into())
            .unwrap_or_default()
            .into_iter()
            .find(|o| o.command_id == format!("c{n}"))
            .unwrap_or_else(|| panic!("no outcome of c{n}"))
            .outcome
    };
    let refusal = |status: u16, detail: &str| {
        Err(Refusal {
            status,
            detail: detail.into(),
        })
    };
    s.tickets
        .pipe(None, sample_ticket(1, TicketStatus::Pending))
        .unwrap();
    // A retry of a ticket that has not failed, and of one nobody stored.
    send(1, "ticket-1", CommandAction::Retry);
    assert_eq!(
        outcome("ticket-1", 1),
        refusal(
            400,
            "Ticket deve estar em estado FAILED para retry, atual: PENDING"
        )
    );
    send(2, "ghost", CommandAction::Retry);
    assert_eq!(
        outcome("ghost", 2),
        refusal(404, "Ticket não encontrado: ghost")
    );
    // PATCH: any status, the message replaced, the result kept in metadata.
    send(
        3,
        "ticket-1",
        CommandAction::UpdateStatus {
            status: TicketStatus::Failed,
            error_message: Some("disk full".into()),
            actual_duration_ms: Some(70),
            result: Some("{\"a\": 1}".into()),
        },
    );
    let failed = outcome("ticket-1", 3).unwrap();
    assert_eq!(
        failed,
        s.ticket("ticket-1").unwrap(),
        "the store holds the outcome"
    );
    assert_eq!(failed.status, TicketStatus::Failed);
    assert_eq!(failed.error_message.as_deref(), Some("disk full"));
    assert_eq!(failed.actual_duration_ms, Some(70));
    assert_eq!(failed.metadata["result"], "{\"a\": 1}");
    // Retries: back to PENDING until sla.max_retries (2 in the sample) are used.
    send(4, "ticket-1", CommandAction::Retry);
    let retried = outcome("ticket-1", 4).unwrap();
    assert_eq!(
        (retried.status, retried.retry_count),
        (TicketStatus::Pending, 1)
    );
    // The same command delivered again is not applied twice.
    send(4, "ticket-1", CommandAction::Retry);
    assert_eq!(s.ticket("ticket-1").unwrap().retry_count, 1);
    for n in [5, 7] {
        s.results
            .pipe(
                Some("ticket-1".into()),
                result("ticket-1", ExecutionStatus::Failed, i64::from(n)),
            )
            .unwrap();
        send(n + 1, "ticket-1", CommandAction::Retry);
    }
    assert_eq!(outcome("ticket-1", 6).unwrap().retry_count, 2);
    assert_eq!(
        outcome("ticket-1", 8),
        refusal(400, "Limite de retries excedido: 2/2")
    );
    // Compensation: from FAILED (or RUNNING) only.
    send(
        9,
        "ticket-1",
        CommandAction::Compensate {
            compensation_ticket_id: "comp-1".into(),
        },
    );
    let compensating = outcome("ticket-1", 9).unwrap();
    assert_eq!(compensating.status, TicketStatus::Compensating);
    assert_eq!(
        compensating.compensation_ticket_id.as_deref(),
        Some("comp-1")
    );
    send(
        10,
        "ticket-1",
        CommandAction::Compensate {
            compensation_ticket_id: "comp-2".into(),
        },
    );
    assert_eq!(
        outcome("ticket-1", 10),
        refusal(
            400,
            "Ticket original deve estar em estado FAILED ou RUNNING, atual: COMPENSATING"
        )
    );
    assert!(s.dead_letters().is_empty());
}

#[test]
fn wrong_api_options_are_refused_with_the_fix() {
    let refusal = |options: &str| {
        let ctx = BuildContext {
            avro: AvroContext {
                registry: Some(SchemaRegistry::memory(Arc::new(MemoryRegistry::new()))),
                ..Default::default()
            },
            options: options.parse().unwrap(),
        };
        service::build(&ctx).unwrap_err().to_string()
    };
    let e = refusal("jwt_algorithm = \"RS256\"");
    assert!(e.contains("set it to \"HS256\""), "{e}");
    let e = refusal("jwt_secret = \"x\"");
    assert!(e.contains("known options: jwt_secret_key"), "{e}");
    let e = refusal("jwt_token_expiration_seconds = 0");
    assert!(e.contains("at least 1"), "{e}");
}
