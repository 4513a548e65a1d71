//! The execution-result contract (`schemas/execution-result/execution-result.avsc`).

use std::collections::HashMap;

use engine::BuildContext;
use engine::serde::Serdes;
use engine::topology::{Topic, TopologyError};
use serde::{Deserialize, Serialize};

/// The Avro schema of [`ExecutionResult`].
pub const EXECUTION_RESULT_SCHEMA: &str =
    include_str!("../../schemas/execution-result/execution-result.avsc");

/// The results' topic: written by `worker-agents`, read by `orchestrator-dynamic` and
/// `execution-ticket-service`.
pub const TOPIC: &str = "execution.results";

/// [`TOPIC`] with its serdes: keys are ticket ids (nullable), values the Avro contract.
pub fn topic(ctx: &BuildContext) -> Result<Topic<Option<String>, ExecutionResult>, TopologyError> {
    let value = ctx
        .avro
        .contract_value_serde::<ExecutionResult>(EXECUTION_RESULT_SCHEMA)?;
    Ok(Topic::new(TOPIC, Serdes::nullable(Serdes::string()), value))
}

/// The status a worker reports.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionStatus {
    /// Done.
    Completed,
    /// Failed.
    Failed,
    /// Started.
    Running,
}

/// What the execution produced.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecutionResultPayload {
    /// Whether it succeeded.
    pub success: bool,
    /// Outputs.
    #[serde(default)]
    pub output: HashMap<String, String>,
    /// Metadata.
    #[serde(default)]
    pub metadata: HashMap<String, String>,
    /// Log lines.
    #[serde(default)]
    pub logs: Vec<String>,
}

/// A worker's report on one ticket.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ExecutionResult {
    /// The ticket.
    pub ticket_id: String,
    /// Its new status.
    pub status: ExecutionStatus,
    /// What it produced.
    pub result: ExecutionResultPayload,
    /// Why it failed.
    pub error_message: Option<String>,
    /// How long it ran.
    pub actual_duration_ms: Option<i64>,
    /// The worker.
    pub agent_id: String,
    /// When (epoch ms).
    pub timestamp: i64,
    /// Contract version.
    #[serde(default = "one")]
    pub schema_version: i32,
}

fn one() -> i32 {
    1
}
