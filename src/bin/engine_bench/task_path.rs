//! The per-record path in process, no broker: `ticket-pipeline`'s task (decode, filter,
//! map, encode, through the engine's nodes) beside the same decode and encode done by the
//! serde alone, on one thread. Their ratio is what the engine adds to the codec per
//! record, measured without librdkafka or a broker to blur it.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use engine::BuildContext;
use engine::record::Headers;
use engine::registry::{MemoryRegistry, SchemaRegistry};
use engine::serde::{AvroContext, Serde, Written};
use engine::testing::TestDriver;
use topologies::ticket_pipeline::{self, INPUT, OUTPUT};
use topologies::tickets::{EXECUTION_TICKET_SCHEMA, ExecutionTicket, TicketStatus, sample_tickets};

use super::codec_bench::measure;
use super::report::Figure;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Both figures, or why they could not be measured.
pub fn figures(per_case: Duration) -> Vec<Figure> {
    match measured(per_case) {
        Ok((serde_alone, task)) => vec![
            Figure::new(
                "codec",
                "per-record path: decode + encode by the serde alone",
                serde_alone,
                "records/s",
                None,
                None,
            ),
            Figure::new(
                "codec",
                "per-record path: ticket-pipeline's task (test driver)",
                task,
                "records/s",
                Some(("the serde alone".into(), serde_alone)),
                None,
            )
            .with_note(
                "what the engine's nodes add to the codec per record; the rest of the gap \
                 to the floor is librdkafka's consume and produce",
            ),
        ],
        Err(e) => vec![Figure::not_measured(
            "codec",
            "per-record path",
            e.to_string(),
        )],
    }
}

/// Records per second of the serde alone and of the task, on the same input.
fn measured(per_case: Duration) -> Result<(f64, f64)> {
    let ctx = BuildContext {
        avro: AvroContext {
            registry: Some(SchemaRegistry::memory(Arc::new(MemoryRegistry::new()))),
            ..Default::default()
        },
        ..Default::default()
    };
    let driver = TestDriver::new(ticket_pipeline::build(&ctx)?);
    let serde = ctx
        .avro
        .contract_value_serde::<ExecutionTicket>(EXECUTION_TICKET_SCHEMA)?;
    let mut input = Vec::new();
    for mut t in sample_tickets(256) {
        t.status = TicketStatus::Pending;
        let mut bytes = Vec::new();
        serde.serialize(INPUT, &t, &mut bytes)?;
        input.push((t.plan_id.into_bytes(), bytes));
    }
    // The output subject is registered by the task's first record, before timing.
    driver.pipe_raw(
        INPUT,
        Some(&input[0].0),
        Some(&input[0].1),
        0,
        Headers::new(),
    )?;
    driver
        .read_raw(OUTPUT)
        .ok_or("ticket-pipeline wrote nothing")?;

    let mut buf = Vec::new();
    let serde_alone = measure(per_case, || {
        let mut n = 0;
        for (_, bytes) in &input {
            let Ok(mut t) = serde.deserialize(INPUT, Some(bytes)) else {
                continue;
            };
            if t.status == TicketStatus::Pending {
                t.status = TicketStatus::Running;
                buf.clear();
                n += matches!(serde.serialize(OUTPUT, &t, &mut buf), Ok(Written::Bytes)) as usize;
                black_box(&buf);
            }
        }
        n
    });
    let mut timestamp = 0;
    let task = measure(per_case, || {
        let mut n = 0;
        for (key, bytes) in &input {
            timestamp += 1;
            if driver
                .pipe_raw(INPUT, Some(key), Some(bytes), timestamp, Headers::new())
                .is_ok()
            {
                n += black_box(driver.read_raw(OUTPUT)).is_some() as usize;
            }
        }
        n
    });
    Ok((serde_alone, task))
}
