//! `ticket-pipeline` through the test driver, with an in-process schema registry.

#![allow(clippy::unwrap_used)] // tests state their expectations with unwrap

use std::sync::Arc;

use engine::BuildContext;
use engine::record::Headers;
use engine::registry::{MemoryRegistry, SchemaRegistry};
use engine::serde::{AvroContext, MAGIC_BYTE, Serdes};
use engine::testing::TestDriver;
use topologies::ticket_pipeline::{self, DEAD_LETTER, INPUT, OUTPUT};
use topologies::tickets::*;

fn context() -> BuildContext {
    BuildContext {
        avro: AvroContext {
            registry: Some(SchemaRegistry::memory(Arc::new(MemoryRegistry::new()))),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn ticket(n: u32, status: TicketStatus) -> ExecutionTicket {
    sample_ticket(n, status)
}

#[test]
fn pending_tickets_are_started_as_avro_and_others_dropped() {
    let ctx = context();
    let driver = TestDriver::new(ticket_pipeline::build(&ctx).unwrap());
    let serde = || {
        ctx.avro
            .value_serde::<ExecutionTicket>(EXECUTION_TICKET_SCHEMA)
            .unwrap()
    };
    let input = driver.input_topic(INPUT, Serdes::nullable(Serdes::string()), serde());
    input
        .pipe(Some("plan-1".into()), ticket(1, TicketStatus::Pending))
        .unwrap();
    input
        .pipe(Some("plan-2".into()), ticket(2, TicketStatus::Completed))
        .unwrap();
    let raw = driver.read_raw(OUTPUT).unwrap();
    assert_eq!(raw.value.as_ref().unwrap()[0], MAGIC_BYTE);
    assert!(
        driver.read_raw(OUTPUT).is_none(),
        "a COMPLETED ticket is not started"
    );
    let registry = ctx.avro.registry.as_ref().unwrap();
    let mut subjects = registry.subjects().unwrap();
    subjects.sort();
    assert_eq!(
        subjects,
        vec![format!("{INPUT}-value"), format!("{OUTPUT}-value")]
    );

    // Decoded, the ticket is the input with status RUNNING.
    input
        .pipe(Some("plan-3".into()), ticket(3, TicketStatus::Pending))
        .unwrap();
    let output = driver.output_topic(OUTPUT, Serdes::nullable(Serdes::string()), serde());
    let started = output.read_record().unwrap();
    assert_eq!(started.key.as_deref(), Some("plan-3"));
    assert_eq!(
        started.value,
        ExecutionTicket {
            status: TicketStatus::Running,
            ..ticket(3, TicketStatus::Pending)
        }
    );
}

#[test]
fn legacy_json_tickets_are_read_and_garbage_is_dead_lettered() {
    let ctx = context();
    let driver = TestDriver::new(ticket_pipeline::build(&ctx).unwrap());
    let json = serde_json::to_vec(&ticket(7, TicketStatus::Pending)).unwrap();
    driver
        .pipe_raw(INPUT, Some(b"plan-1"), Some(&json), 5, Headers::new())
        .unwrap();
    assert!(
        driver.read_raw(OUTPUT).is_some(),
        "a JSON ticket went through"
    );
    driver
        .pipe_raw(INPUT, Some(b"plan-1"), Some(b"\x00\x00"), 6, Headers::new())
        .unwrap();
    let dead = driver.read_raw(DEAD_LETTER).expect("a dead-letter record");
    assert_eq!(dead.value.as_deref(), Some(&b"\x00\x00"[..]));
    assert_eq!(dead.headers.last_str("engine.source.topic"), Some(INPUT));
    assert_eq!(
        dead.headers.last_str("engine.error.class"),
        Some("deserialization")
    );
}
