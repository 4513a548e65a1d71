//! `ticket-pipeline`: the benchmark pipeline. Reads execution tickets (Avro through the
//! schema registry, or legacy JSON), keeps the PENDING ones, marks them RUNNING and
//! writes them as Avro. Undecodable input goes to `bench.tickets.dlq` with its original
//! bytes.

use engine::BuildContext;
use engine::serde::Serdes;
use engine::topology::{ErrorPolicy, Topic, Topology, TopologyBuilder, TopologyError};

use crate::tickets::{EXECUTION_TICKET_SCHEMA, ExecutionTicket, TicketStatus};

/// Name and application id.
pub const NAME: &str = "ticket-pipeline";
/// Input topic (value subject `bench.tickets.in-value`).
pub const INPUT: &str = "bench.tickets.in";
/// Output topic (value subject `bench.tickets.out-value`).
pub const OUTPUT: &str = "bench.tickets.out";
/// Dead-letter topic.
pub const DEAD_LETTER: &str = "bench.tickets.dlq";

/// Builds the topology.
pub fn build(ctx: &BuildContext) -> Result<Topology, TopologyError> {
    let tickets = std::sync::Arc::new(
        ctx.avro
            .contract_value_serde::<ExecutionTicket>(EXECUTION_TICKET_SCHEMA)?,
    );
    let input = Topic::new(INPUT, Serdes::nullable(Serdes::string()), tickets.clone());
    let output = Topic::new(OUTPUT, Serdes::nullable(Serdes::string()), tickets);
    let builder = TopologyBuilder::new(NAME);
    builder.error_policy(ErrorPolicy::dead_letter(DEAD_LETTER));
    builder
        .stream(&input)
        .filter(|_k, t: &ExecutionTicket| t.status == TicketStatus::Pending)
        .map_values(|mut t: ExecutionTicket| {
            t.status = TicketStatus::Running;
            t
        })
        .to(&output);
    builder.build()
}
