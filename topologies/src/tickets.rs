//! The execution-ticket contract (`schemas/execution-ticket/execution-ticket.avsc`) as
//! Rust types, shared by the topologies that read or write tickets.

use std::collections::HashMap;

use engine::BuildContext;
use engine::serde::Serdes;
use engine::topology::{Topic, TopologyError};
use serde::{Deserialize, Serialize};

/// The Avro schema of [`ExecutionTicket`].
pub const EXECUTION_TICKET_SCHEMA: &str =
    include_str!("../../schemas/execution-ticket/execution-ticket.avsc");

/// The tickets' topic: written by `orchestrator-dynamic` and the ticket API, read by
/// `execution-ticket-service` and `worker-agents`.
pub const TOPIC: &str = "execution.tickets";

/// [`TOPIC`] with its serdes: keys are plan ids (null in some producers' records), values
/// the Avro contract (or the legacy JSON, read alike).
pub fn topic(ctx: &BuildContext) -> Result<Topic<Option<String>, ExecutionTicket>, TopologyError> {
    let value = ctx
        .avro
        .contract_value_serde::<ExecutionTicket>(EXECUTION_TICKET_SCHEMA)?;
    Ok(Topic::new(TOPIC, Serdes::nullable(Serdes::string()), value))
}

/// What a ticket asks a worker to do.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskType {
    /// Build an artifact.
    Build,
    /// Deploy it.
    Deploy,
    /// Test it.
    Test,
    /// Validate it.
    Validate,
    /// Run something.
    Execute,
    /// Undo an earlier ticket.
    Compensate,
    /// Read something.
    Query,
}

/// Where a ticket is in its life.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TicketStatus {
    /// Waiting for a worker.
    Pending,
    /// A worker runs it.
    Running,
    /// Done.
    Completed,
    /// Failed for good.
    Failed,
    /// Being undone.
    Compensating,
    /// Undone.
    Compensated,
}

/// Scheduling priority.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Priority {
    /// Low.
    Low,
    /// Normal (the default).
    Normal,
    /// High.
    High,
    /// Critical.
    Critical,
}

/// Risk of the plan the ticket belongs to.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum RiskBand {
    /// Low.
    Low,
    /// Medium (the default).
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

/// Delivery guarantee asked for.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeliveryMode {
    /// At most once.
    AtMostOnce,
    /// At least once.
    AtLeastOnce,
    /// Exactly once.
    ExactlyOnce,
}

/// Consistency asked for.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Consistency {
    /// Eventual.
    Eventual,
    /// Strong.
    Strong,
}

/// Durability asked for.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Durability {
    /// In memory.
    Transient,
    /// Persisted.
    Persistent,
}

/// Security classification.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SecurityLevel {
    /// Public.
    Public,
    /// Internal (the default).
    Internal,
    /// Confidential.
    Confidential,
    /// Restricted.
    Restricted,
}

/// Deadline and retry budget.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Sla {
    /// Epoch milliseconds by which the ticket must complete.
    pub deadline: i64,
    /// Timeout of one attempt, ms.
    pub timeout_ms: i64,
    /// Retries after the first attempt.
    pub max_retries: i32,
}

/// Quality of service.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct QoS {
    /// Delivery guarantee.
    pub delivery_mode: DeliveryMode,
    /// Consistency.
    pub consistency: Consistency,
    /// Durability.
    pub durability: Durability,
}

/// One unit of work of a plan.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ExecutionTicket {
    pub ticket_id: String,
    pub plan_id: String,
    pub intent_id: String,
    pub decision_id: String,
    pub correlation_id: Option<String>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub task_id: String,
    pub task_type: TaskType,
    pub description: String,
    pub dependencies: Vec<String>,
    pub status: TicketStatus,
    pub priority: Priority,
    pub risk_band: RiskBand,
    pub sla: Sla,
    pub qos: QoS,
    pub parameters: HashMap<String, String>,
    pub required_capabilities: Vec<String>,
    pub security_level: SecurityLevel,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub estimated_duration_ms: Option<i64>,
    pub actual_duration_ms: Option<i64>,
    pub retry_count: i32,
    pub error_message: Option<String>,
    pub compensation_ticket_id: Option<String>,
    pub metadata: HashMap<String, String>,
    pub schema_version: i32,
}

/// A valid ticket with plausible values, numbered `n`: for tests, examples and load
/// generators.
pub fn sample_ticket(n: u32, status: TicketStatus) -> ExecutionTicket {
    ExecutionTicket {
        ticket_id: format!("ticket-{n}"),
        plan_id: format!("plan-{}", n % 3),
        intent_id: "intent".into(),
        decision_id: "decision".into(),
        correlation_id: None,
        trace_id: Some("trace".into()),
        span_id: None,
        task_id: format!("task-{n}"),
        task_type: TaskType::Build,
        description: "build the artifact".into(),
        dependencies: vec![],
        status,
        priority: Priority::Normal,
        risk_band: RiskBand::Medium,
        sla: Sla {
            deadline: 1_000,
            timeout_ms: 60_000,
            max_retries: 2,
        },
        qos: QoS {
            delivery_mode: DeliveryMode::AtLeastOnce,
            consistency: Consistency::Eventual,
            durability: Durability::Persistent,
        },
        parameters: Default::default(),
        required_capabilities: vec![],
        security_level: SecurityLevel::Internal,
        created_at: 0,
        started_at: None,
        completed_at: None,
        estimated_duration_ms: None,
        actual_duration_ms: None,
        retry_count: 0,
        error_message: None,
        compensation_ticket_id: None,
        metadata: Default::default(),
        schema_version: 1,
    }
}

/// Deterministic pseudo-random generator so fixtures are reproducible
/// without a `rand` dependency.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            (b >> 48) & 0x3fff | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }

    fn hex(&mut self, n: usize) -> String {
        let mut s = String::with_capacity(n);
        while s.len() < n {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(n);
        s
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

/// `n` varied, realistic tickets (~470 bytes of Avro each), the same on every call, for
/// benchmarks and load generators: UUID ids, a 60-character
/// description, 2–3 dependencies and a few parameters.
pub fn sample_tickets(n: usize) -> Vec<ExecutionTicket> {
    let mut r = SplitMix(0x5eed);
    (0..n)
        .map(|i| {
            let deps = 2 + r.next().is_multiple_of(4) as usize;
            let mut parameters = HashMap::new();
            parameters.insert("image".to_string(), format!("app:{}", r.hex(8)));
            parameters.insert("replicas".to_string(), format!("{}", 1 + r.next() % 9));
            ExecutionTicket {
                ticket_id: r.uuid(),
                plan_id: r.uuid(),
                intent_id: r.uuid(),
                decision_id: r.uuid(),
                correlation_id: if i % 2 == 0 { Some(r.uuid()) } else { None },
                trace_id: Some(r.hex(32)),
                span_id: if i % 3 == 0 { None } else { Some(r.hex(16)) },
                task_id: r.uuid(),
                task_type: r.pick(&[
                    TaskType::Build,
                    TaskType::Deploy,
                    TaskType::Test,
                    TaskType::Execute,
                ]),
                description: format!(
                    "Deploy service {} to the staging cluster and verify",
                    r.hex(8)
                ),
                dependencies: (0..deps).map(|_| r.uuid()).collect(),
                status: r.pick(&[
                    TicketStatus::Pending,
                    TicketStatus::Running,
                    TicketStatus::Completed,
                ]),
                priority: r.pick(&[Priority::Normal, Priority::High]),
                risk_band: r.pick(&[RiskBand::Low, RiskBand::Medium, RiskBand::High]),
                sla: Sla {
                    deadline: 1_760_000_000_000 + (r.next() % 86_400_000) as i64,
                    timeout_ms: 30_000 + (r.next() % 600_000) as i64,
                    max_retries: 3,
                },
                qos: QoS {
                    delivery_mode: r.pick(&[DeliveryMode::AtLeastOnce, DeliveryMode::ExactlyOnce]),
                    consistency: Consistency::Strong,
                    durability: Durability::Persistent,
                },
                parameters,
                required_capabilities: vec!["k8s".to_string()],
                security_level: SecurityLevel::Internal,
                created_at: 1_759_990_000_000 + (r.next() % 86_400_000) as i64,
                started_at: if i % 2 == 0 {
                    Some(1_760_000_000_000)
                } else {
                    None
                },
                completed_at: None,
                estimated_duration_ms: Some(120_000),
                actual_duration_ms: None,
                retry_count: (r.next() % 3) as i32,
                error_message: None,
                compensation_ticket_id: None,
                metadata: HashMap::new(),
                schema_version: 1,
            }
        })
        .collect()
}
