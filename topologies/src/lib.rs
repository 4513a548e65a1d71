//! The topologies the `engine` command runs, one file each, and [`catalog`], the list
//! `engine list` shows.
//!
//! May depend on `engine`; nothing depends on this crate but the command.

pub mod decisions;
pub mod execution_ticket_service;
pub mod executor;
pub mod orchestrator;
pub mod results;
pub mod ticket_api;
pub mod ticket_counts;
pub mod ticket_pipeline;
pub mod tickets;
pub mod worker_agents;

use engine::Catalog;

/// Every topology of the `engine` command.
pub fn catalog() -> Catalog {
    Catalog::new()
        .with(
            orchestrator::NAME,
            "plans.consensus -> approved decisions -> execution.tickets; execution.results -> compensation, orchestration.incidents, sla.violations",
            orchestrator::build,
        )
        .with(
            execution_ticket_service::NAME,
            "execution.tickets + execution.results + the API's commands -> ticket store (idempotent, valid transitions); the service's HTTP API at /api/v1/tickets",
            execution_ticket_service::build,
        )
        .with(
            worker_agents::NAME,
            "execution.tickets -> validation, dedup, dependency gate -> bounded execution with retries -> execution.results (exhausted -> execution.tickets.dlq)",
            worker_agents::build,
        )
        .with(
        ticket_pipeline::NAME,
        "bench.tickets.in -> PENDING tickets set RUNNING -> bench.tickets.out",
        ticket_pipeline::build,
    )
    .with(
        ticket_counts::NAME,
        "bench.tickets.in -> tickets per plan (RocksDB store tickets-per-plan) -> bench.tickets.counts",
        ticket_counts::build,
    )
}

/// The README's examples, compiled and run as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExamples;
