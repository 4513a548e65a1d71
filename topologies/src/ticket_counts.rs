//! `ticket-counts`: tickets per plan, kept in a RocksDB store with a changelog and
//! queryable through `engine run --http`. The stateful benchmark topology.

use engine::BuildContext;
use engine::serde::Serdes;
use engine::topology::{ErrorPolicy, Grouped, Topic, Topology, TopologyBuilder, TopologyError};

use crate::tickets::{EXECUTION_TICKET_SCHEMA, ExecutionTicket};

/// Name and application id.
pub const NAME: &str = "ticket-counts";
/// Input topic, keyed by plan id.
pub const INPUT: &str = "bench.tickets.in";
/// Count updates, keyed by plan id.
pub const OUTPUT: &str = "bench.tickets.counts";
/// The store: plan id -> tickets seen.
pub const STORE: &str = "tickets-per-plan";
/// Dead-letter topic.
pub const DEAD_LETTER: &str = "bench.tickets.counts.dlq";

/// Builds the topology.
pub fn build(ctx: &BuildContext) -> Result<Topology, TopologyError> {
    let tickets = ctx
        .avro
        .contract_value_serde::<ExecutionTicket>(EXECUTION_TICKET_SCHEMA)?;
    let builder = TopologyBuilder::new(NAME);
    builder.error_policy(ErrorPolicy::dead_letter(DEAD_LETTER));
    builder
        .stream(&Topic::new(INPUT, Serdes::string(), tickets))
        .map_values(|t: ExecutionTicket| t.plan_id)
        .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
        .count("count", STORE)
        .to_stream()
        .to(&Topic::new(OUTPUT, Serdes::string(), Serdes::i64()));
    builder.build()
}
