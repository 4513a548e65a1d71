//! `ticket-pipeline`: the benchmark pipeline. Reads execution tickets (Avro through the
//! schema registry, or legacy JSON), keeps the PENDING ones, marks them RUNNING and
//! writes them as Avro. Undecodable input goes to `bench.tickets.dlq` with its original
//! bytes.

use engine::BuildContext;
use engine::serde::Serdes;
use engine::topology::{
    Consumed, ErrorPolicy, Problem, Produced, Topology, TopologyBuilder, TopologyError,
};

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
    let tickets = || {
        ctx.avro
            .contract_value_serde::<ExecutionTicket>(EXECUTION_TICKET_SCHEMA)
            .map_err(|e| TopologyError::Invalid {
                topology: NAME.into(),
                problems: vec![Problem::Serde {
                    node: "tickets".into(),
                    message: e.to_string(),
                }],
            })
    };
    let key = || Serdes::nullable(Serdes::string());
    let builder = TopologyBuilder::new(NAME);
    builder.error_policy(ErrorPolicy::dead_letter(DEAD_LETTER));
    builder
        .stream("tickets", [INPUT], Consumed::with(key(), tickets()?))
        .filter("pending", |_k, t: &ExecutionTicket| {
            t.status == TicketStatus::Pending
        })
        .map_values("start", |mut t: ExecutionTicket| {
            t.status = TicketStatus::Running;
            t
        })
        .to("started", OUTPUT, Produced::with(key(), tickets()?));
    builder.build()
}
