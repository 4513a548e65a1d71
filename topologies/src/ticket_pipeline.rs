//! `ticket-pipeline`: the benchmark pipeline. Reads execution tickets, keeps the PENDING
//! ones, marks them RUNNING and writes them on. Undecodable input goes to
//! `bench.tickets.dlq` with its original bytes.

use engine::serde::Serdes;
use engine::topology::{Consumed, ErrorPolicy, Produced, Topology, TopologyBuilder, TopologyError};
use serde_json::Value;

/// Name and application id.
pub const NAME: &str = "ticket-pipeline";
/// Input topic.
pub const INPUT: &str = "bench.tickets.in";
/// Output topic.
pub const OUTPUT: &str = "bench.tickets.out";
/// Dead-letter topic.
pub const DEAD_LETTER: &str = "bench.tickets.dlq";

/// Builds the topology.
pub fn build() -> Result<Topology, TopologyError> {
    let builder = TopologyBuilder::new(NAME);
    builder.error_policy(ErrorPolicy::dead_letter(DEAD_LETTER));
    let key = || Serdes::nullable(Serdes::string());
    builder
        .stream(
            "tickets",
            [INPUT],
            Consumed::with(key(), Serdes::json::<Value>()),
        )
        .filter("pending", |_k, ticket: &Value| {
            ticket.get("status").and_then(Value::as_str) == Some("PENDING")
        })
        .map_values("start", |mut ticket: Value| {
            if let Some(status) = ticket.get_mut("status") {
                *status = Value::from("RUNNING");
            }
            ticket
        })
        .to(
            "started",
            OUTPUT,
            Produced::with(key(), Serdes::json::<Value>()),
        );
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::testing::TestDriver;
    use serde_json::json;

    #[test]
    fn pending_tickets_are_started_and_others_dropped() {
        let driver = TestDriver::new(build().unwrap());
        let input = driver.input_topic(
            INPUT,
            Serdes::nullable(Serdes::string()),
            Serdes::json::<Value>(),
        );
        let output = driver.output_topic(
            OUTPUT,
            Serdes::nullable(Serdes::string()),
            Serdes::json::<Value>(),
        );
        input
            .pipe(
                Some("p1".into()),
                json!({"ticket_id": "t1", "status": "PENDING"}),
            )
            .unwrap();
        input
            .pipe(
                Some("p1".into()),
                json!({"ticket_id": "t2", "status": "COMPLETED"}),
            )
            .unwrap();
        assert_eq!(
            output.read_key_values(),
            vec![(
                Some("p1".to_string()),
                json!({"ticket_id": "t1", "status": "RUNNING"})
            )]
        );
    }

    #[test]
    fn undecodable_tickets_are_dead_lettered_with_their_bytes() {
        let driver = TestDriver::new(build().unwrap());
        driver
            .pipe_raw(
                INPUT,
                Some(b"p1"),
                Some(b"{not json"),
                5,
                Default::default(),
            )
            .unwrap();
        let dead = driver.read_raw(DEAD_LETTER).expect("a dead-letter record");
        assert_eq!(dead.value.as_deref(), Some(&b"{not json"[..]));
        assert_eq!(dead.headers.last_str("engine.source.topic"), Some(INPUT));
        assert_eq!(
            dead.headers.last_str("engine.error.class"),
            Some("deserialization")
        );
    }
}
