//! `orchestrator-dynamic`: consolidated decisions in, execution tickets out; and the
//! saga that follows each plan's tickets.
//!
//! - `plans.consensus` is deduplicated by `decision_id`; only approved decisions that
//!   need no human review become tickets, one per task of the embedded cognitive plan,
//!   in execution order, on `execution.tickets` (key `plan_id`). Ticket ids are derived
//!   from the decision and task, so a decision processed again after a crash yields the
//!   same tickets, which the consumers deduplicate.
//! - `execution.results` move each plan's tickets through their states. When a ticket
//!   fails, the plan's completed tickets and the failed one are compensated in reverse
//!   topological order (each compensation ticket depends on the compensations of the
//!   tickets that depended on its original), a ticket completing later in a failed plan
//!   is compensated too, and an incident goes to `orchestration.incidents`.
//! - A ticket neither completed nor failed by its `sla.deadline` raises an SLA violation
//!   on `sla.violations`, checked on wall-clock time so it fires without new input.
//!
//! Unlike the service it replaces, compensation tickets are complete, valid tickets (with
//! a deadline), and a plan the generator cannot read goes to the dead-letter topic.
//! `GET /api/v1/plans/{plan_id}` shows a plan's state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use engine::BuildContext;
use engine::record::Record;
use engine::serde::Serdes;
use engine::topology::{
    Branch, ErrorPolicy, Grouped, Joined, KStream, Problem, ProcessingError, Processor,
    ProcessorContext, PunctuationType, ScheduleId, StoreBuilder, StoreRef, Topic, Topology,
    TopologyBuilder, TopologyError,
};
use serde::{Deserialize, Serialize};

use crate::decisions::{CognitivePlan, ConsolidatedDecision, DecisionType};
use crate::results::{ExecutionResult, ExecutionStatus};
use crate::tickets::{
    Consistency, DeliveryMode, Durability, ExecutionTicket, Priority, QoS, RiskBand, SecurityLevel,
    Sla, TaskType, TicketStatus,
};

/// Name and application id.
pub const NAME: &str = "orchestrator-dynamic";
/// Decisions in.
pub const DECISIONS: &str = crate::decisions::TOPIC;
/// Tickets out (and read back, to know which plan a result belongs to).
pub const TICKETS: &str = crate::tickets::TOPIC;
/// Results in.
pub const RESULTS: &str = crate::results::TOPIC;
/// Incidents out.
pub const INCIDENTS: &str = "orchestration.incidents";
/// SLA violations out.
pub const SLA_VIOLATIONS: &str = "sla.violations";
/// Records the orchestrator cannot handle, with their original bytes.
pub const DEAD_LETTER: &str = "orchestrator-dynamic.dlq";
/// decision id -> where it was first seen.
pub const DECISION_STORE: &str = "decisions-seen";
/// ticket id -> plan id.
pub const TICKET_INDEX: &str = "ticket-plans";
/// The join of results with their ticket's plan; a result that arrived before its
/// ticket waits in the join's store `results-with-plan-waiting` (kept a day).
pub const RESULTS_WITH_PLAN: &str = "results-with-plan";
/// plan id -> [`PlanState`].
pub const PLAN_STORE: &str = "plans";
/// `<deadline, 20 digits>/<ticket id>` -> plan id, for the SLA check.
pub const DEADLINE_STORE: &str = "deadlines";
/// Where plan states are served by `engine run --http`.
pub const API_PATH: &str = "/api/v1/plans";
/// `metadata.generated_by` of the tickets.
pub const GENERATED_BY: &str = "orchestrator-dynamic";

/// Fixed namespace of the name-based (v5) UUIDs this topology derives.
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f72_6368_6573_7472_6174_6f72_2d64_796e);

fn derived_id(name: &str) -> String {
    uuid::Uuid::new_v5(&ID_NAMESPACE, name.as_bytes()).to_string()
}

/// Options of `[topologies.orchestrator-dynamic]`.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct OrchestratorOptions {
    /// How often deadlines are checked, ms (default 1000).
    #[serde(default = "default_sla_check_ms")]
    pub sla_check_interval_ms: u64,
}

fn default_sla_check_ms() -> u64 {
    1000
}

impl Default for OrchestratorOptions {
    fn default() -> Self {
        OrchestratorOptions {
            sla_check_interval_ms: default_sla_check_ms(),
        }
    }
}

/// What an incident reports.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IncidentType {
    /// A ticket failed; its plan is being compensated.
    TicketFailed,
    /// A compensation ticket failed.
    CompensationFailed,
}

/// How urgent an incident is, from the plan's risk band.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    /// Critical or high risk.
    High,
    /// Medium or low risk.
    Medium,
}

impl From<RiskBand> for Severity {
    fn from(risk: RiskBand) -> Self {
        match risk {
            RiskBand::Critical | RiskBand::High => Severity::High,
            RiskBand::Medium | RiskBand::Low => Severity::Medium,
        }
    }
}

/// An incident on `orchestration.incidents`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Incident {
    pub incident_id: String,
    pub incident_type: IncidentType,
    pub severity: Severity,
    pub plan_id: String,
    pub decision_id: String,
    pub ticket_id: String,
    pub task_id: String,
    pub error_message: Option<String>,
    /// Compensation tickets emitted because of this failure, in emission order.
    pub compensation_ticket_ids: Vec<String>,
    pub timestamp: i64,
}

/// An SLA violation on `sla.violations`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SlaViolation {
    pub violation_id: String,
    pub plan_id: String,
    pub ticket_id: String,
    pub task_id: String,
    /// The ticket's status when the deadline passed.
    pub status: TicketStatus,
    pub deadline: i64,
    pub detected_at: i64,
    pub overdue_ms: i64,
}

/// The tickets generated for one approved decision.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PlanTickets {
    pub plan_id: String,
    pub decision_id: String,
    /// In execution order.
    pub tickets: Vec<ExecutionTicket>,
}

/// What the plan tracker sees, keyed by plan id.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum PlanEvent {
    /// A plan's tickets were generated.
    Tickets(PlanTickets),
    /// A worker reported on one of the plan's tickets.
    Result(ExecutionResult),
}

/// What the plan tracker emits.
// Records move by value once per hop; boxing the large variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum PlanOutput {
    /// A compensation ticket.
    Ticket(ExecutionTicket),
    /// An incident.
    Incident(Incident),
    /// An SLA violation.
    Violation(SlaViolation),
}

/// One ticket as the plan tracker knows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TrackedTicket {
    pub ticket: ExecutionTicket,
    pub status: TicketStatus,
    /// The compensation ticket emitted for it.
    pub compensation_ticket_id: Option<String>,
    /// Whether its deadline passed before it finished.
    #[serde(default)]
    pub sla_violated: bool,
}

/// Where a plan's saga stands.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PlanStatus {
    /// Results arrived before the plan's tickets (kept in `early_results`).
    #[default]
    Pending,
    /// Tickets are out; none failed.
    Running,
    /// Every ticket completed.
    Completed,
    /// A ticket failed: the plan is being compensated.
    Failed,
    /// Every compensation completed.
    Compensated,
}

/// Where a plan stands (stored in [`PLAN_STORE`], served at [`API_PATH`]).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct PlanState {
    pub plan_id: String,
    pub decision_id: String,
    pub status: PlanStatus,
    /// Ticket ids in execution order.
    pub order: Vec<String>,
    pub tickets: BTreeMap<String, TrackedTicket>,
    /// Compensation ticket id -> status.
    pub compensations: BTreeMap<String, TicketStatus>,
    /// Results that arrived before the plan's tickets.
    pub early_results: Vec<ExecutionResult>,
}

/// Whether a decision becomes tickets.
pub fn is_actionable(d: &ConsolidatedDecision) -> bool {
    d.final_decision == DecisionType::Approve && !d.requires_human_review
}

fn parse_task_type(s: &str) -> Option<TaskType> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_uppercase())).ok()
}

/// `sla.max_retries` by risk band.
pub fn max_retries(risk: RiskBand) -> i32 {
    match risk {
        RiskBand::Critical => 5,
        RiskBand::High => 3,
        RiskBand::Medium => 2,
        RiskBand::Low => 1,
    }
}

fn qos(risk: RiskBand) -> QoS {
    let strict = matches!(risk, RiskBand::Critical | RiskBand::High);
    QoS {
        delivery_mode: if strict {
            DeliveryMode::ExactlyOnce
        } else {
            DeliveryMode::AtLeastOnce
        },
        consistency: if strict {
            Consistency::Strong
        } else {
            Consistency::Eventual
        },
        durability: Durability::Persistent,
    }
}

/// The tickets of an approved decision, by the rules of FLOWS.md; an error names the
/// field of the plan that prevents it.
pub fn generate_tickets(
    decision: &ConsolidatedDecision,
    now: i64,
) -> Result<PlanTickets, ProcessingError> {
    let text = decision.cognitive_plan.as_deref().ok_or_else(|| {
        ProcessingError::field("cognitive_plan", "the decision carries no cognitive plan")
    })?;
    let plan: CognitivePlan = serde_json::from_str(text).map_err(|e| {
        ProcessingError::field(
            "cognitive_plan",
            format!("the cognitive plan is not valid JSON of the expected shape: {e}"),
        )
    })?;
    if plan.tasks.is_empty() {
        return Err(ProcessingError::field(
            "cognitive_plan.tasks",
            "the plan has no tasks",
        ));
    }
    if plan.execution_order.is_empty() {
        return Err(ProcessingError::field(
            "cognitive_plan.execution_order",
            "the plan has no execution order",
        ));
    }
    let risk = plan.risk_band.ok_or_else(|| {
        ProcessingError::field("cognitive_plan.risk_band", "the plan has no risk band")
    })?;
    let tasks: HashMap<&str, (usize, &crate::decisions::PlanTask)> = plan
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.task_id.as_str(), (i, t)))
        .collect();
    let ticket_of = |task_id: &str| derived_id(&format!("{}/{task_id}", decision.decision_id));
    let correlation_id = decision
        .correlation_id
        .clone()
        .unwrap_or_else(|| derived_id(&format!("correlation/{}", decision.decision_id)));
    let workflow_id = plan
        .metadata
        .get("workflow_id")
        .cloned()
        .unwrap_or_else(|| format!("workflow-{}", decision.plan_id));
    let mut tickets = Vec::with_capacity(plan.execution_order.len());
    for (position, task_id) in plan.execution_order.iter().enumerate() {
        let Some(&(index, task)) = tasks.get(task_id.as_str()) else {
            return Err(ProcessingError::field(
                format!("cognitive_plan.execution_order[{position}]"),
                format!("task `{task_id}` is not among the plan's tasks"),
            ));
        };
        let task_type = parse_task_type(&task.task_type).ok_or_else(|| {
            ProcessingError::field(
                format!("cognitive_plan.tasks[{index}].task_type"),
                format!(
                    "`{}` is not a ticket task type (BUILD, DEPLOY, TEST, VALIDATE, EXECUTE, COMPENSATE, QUERY)",
                    task.task_type
                ),
            )
        })?;
        let mut dependencies = Vec::with_capacity(task.dependencies.len());
        for (d, dep) in task.dependencies.iter().enumerate() {
            if !tasks.contains_key(dep.as_str()) {
                return Err(ProcessingError::field(
                    format!("cognitive_plan.tasks[{index}].dependencies[{d}]"),
                    format!("task `{task_id}` depends on `{dep}`, which is not in the plan"),
                ));
            }
            dependencies.push(ticket_of(dep));
        }
        let estimated = task.estimated_duration_ms.unwrap_or(60_000);
        let timeout_ms = (estimated.saturating_mul(3)).max(60_000);
        let metadata = HashMap::from([
            ("workflow_id".to_string(), workflow_id.clone()),
            ("generated_by".to_string(), GENERATED_BY.to_string()),
        ]);
        tickets.push(ExecutionTicket {
            ticket_id: ticket_of(task_id),
            plan_id: decision.plan_id.clone(),
            intent_id: decision.intent_id.clone(),
            decision_id: decision.decision_id.clone(),
            correlation_id: Some(correlation_id.clone()),
            trace_id: decision.trace_id.clone(),
            span_id: decision.span_id.clone(),
            task_id: task_id.clone(),
            task_type,
            description: task.description.clone(),
            dependencies,
            status: TicketStatus::Pending,
            priority: Priority::Normal,
            risk_band: risk,
            sla: Sla {
                deadline: now.saturating_add(timeout_ms),
                timeout_ms,
                max_retries: max_retries(risk),
            },
            qos: qos(risk),
            parameters: task.parameters.clone(),
            required_capabilities: task.required_capabilities.clone(),
            security_level: SecurityLevel::Internal,
            created_at: now,
            started_at: None,
            completed_at: None,
            estimated_duration_ms: task.estimated_duration_ms,
            actual_duration_ms: None,
            retry_count: 0,
            error_message: None,
            compensation_ticket_id: None,
            metadata,
            schema_version: 1,
        });
    }
    Ok(PlanTickets {
        plan_id: decision.plan_id.clone(),
        decision_id: decision.decision_id.clone(),
        tickets,
    })
}

/// `parameters.action` of a compensation ticket, by the original's type.
pub fn compensation_action(task_type: TaskType) -> &'static str {
    match task_type {
        TaskType::Build => "delete_artifacts",
        TaskType::Deploy => "rollback_deployment",
        TaskType::Test => "cleanup_test_env",
        TaskType::Validate => "revert_approval",
        TaskType::Execute => "rollback_execution",
        TaskType::Compensate | TaskType::Query => "generic_cleanup",
    }
}

/// Compensation ticket timeout, ms.
pub const COMPENSATION_TIMEOUT_MS: i64 = 120_000;

/// The compensation ticket of `original`, depending on `dependencies` (compensation
/// ticket ids that must complete first).
pub fn compensation_ticket(
    original: &ExecutionTicket,
    dependencies: Vec<String>,
    now: i64,
) -> ExecutionTicket {
    let short: String = original.ticket_id.chars().take(8).collect();
    let mut parameters = HashMap::from([
        (
            "action".to_string(),
            compensation_action(original.task_type).to_string(),
        ),
        ("original_ticket_id".to_string(), original.ticket_id.clone()),
        ("original_task_id".to_string(), original.task_id.clone()),
    ]);
    if let Some(target) = original.parameters.get("target") {
        parameters.insert("target".to_string(), target.clone());
    }
    let mut metadata = original.metadata.clone();
    metadata.insert("generated_by".to_string(), GENERATED_BY.to_string());
    metadata.insert("compensates".to_string(), original.ticket_id.clone());
    ExecutionTicket {
        ticket_id: derived_id(&format!("compensate/{}", original.ticket_id)),
        plan_id: original.plan_id.clone(),
        intent_id: original.intent_id.clone(),
        decision_id: original.decision_id.clone(),
        correlation_id: original.correlation_id.clone(),
        trace_id: original.trace_id.clone(),
        span_id: original.span_id.clone(),
        task_id: format!("compensate-{short}"),
        task_type: TaskType::Compensate,
        description: format!(
            "compensate {} ({:?}) of plan {}",
            original.task_id, original.task_type, original.plan_id
        ),
        dependencies,
        status: TicketStatus::Pending,
        priority: Priority::High,
        risk_band: original.risk_band,
        sla: Sla {
            deadline: now.saturating_add(COMPENSATION_TIMEOUT_MS),
            timeout_ms: COMPENSATION_TIMEOUT_MS,
            max_retries: max_retries(original.risk_band),
        },
        qos: original.qos.clone(),
        parameters,
        required_capabilities: original.required_capabilities.clone(),
        security_level: original.security_level,
        created_at: now,
        started_at: None,
        completed_at: None,
        estimated_duration_ms: original.estimated_duration_ms,
        actual_duration_ms: None,
        retry_count: 0,
        error_message: None,
        compensation_ticket_id: None,
        metadata,
        schema_version: 1,
    }
}

struct GenerateTickets;

impl Processor<String, ConsolidatedDecision, String, PlanTickets> for GenerateTickets {
    fn process(
        &mut self,
        record: Record<String, ConsolidatedDecision>,
        ctx: &mut ProcessorContext<'_, String, PlanTickets>,
    ) -> Result<(), ProcessingError> {
        let plan = generate_tickets(&record.value, ctx.wall_clock_time())?;
        tracing::debug!(plan_id = %plan.plan_id, decision_id = %plan.decision_id, tickets = plan.tickets.len(), "plan approved: tickets generated");
        ctx.forward(Record::new(plan.plan_id.clone(), plan, record.timestamp));
        Ok(())
    }
}

fn deadline_key(deadline: i64, ticket_id: &str) -> String {
    format!("{:020}/{ticket_id}", deadline.max(0))
}

fn is_finished(status: TicketStatus) -> bool {
    matches!(
        status,
        TicketStatus::Completed | TicketStatus::Failed | TicketStatus::Compensated
    )
}

/// Follows each plan's tickets; compensates, raises incidents and SLA violations.
struct TrackPlans {
    sla_check: Duration,
    plans: StoreRef<String, PlanState>,
    /// `deadline/ticket_id` -> plan id, so the due ones are a range scan.
    deadlines: StoreRef<String, String>,
}

type PlanCtx<'a> = ProcessorContext<'a, String, PlanOutput>;

impl TrackPlans {
    fn load(
        &self,
        ctx: &mut PlanCtx<'_>,
        plan_id: &str,
    ) -> Result<Option<PlanState>, ProcessingError> {
        Ok(ctx.store(&self.plans)?.get(&plan_id.to_string())?)
    }

    fn save(&self, ctx: &mut PlanCtx<'_>, plan: &PlanState) -> Result<(), ProcessingError> {
        Ok(ctx.store(&self.plans)?.put(&plan.plan_id, plan)?)
    }

    fn clear_deadline(
        &self,
        ctx: &mut PlanCtx<'_>,
        t: &ExecutionTicket,
    ) -> Result<(), ProcessingError> {
        let key = deadline_key(t.sla.deadline, &t.ticket_id);
        Ok(ctx.store(&self.deadlines)?.delete(&key)?)
    }

    fn start_plan(
        &self,
        ctx: &mut PlanCtx<'_>,
        plan: &mut PlanState,
        tickets: PlanTickets,
        timestamp: i64,
    ) -> Result<(), ProcessingError> {
        if !plan.order.is_empty() {
            // The same plan again (a redelivered decision): its tickets are known.
            return Ok(());
        }
        plan.plan_id = tickets.plan_id;
        plan.decision_id = tickets.decision_id;
        plan.status = PlanStatus::Running;
        let mut deadlines = ctx.store(&self.deadlines)?;
        for t in &tickets.tickets {
            deadlines.put(&deadline_key(t.sla.deadline, &t.ticket_id), &plan.plan_id)?;
        }
        for t in tickets.tickets {
            plan.order.push(t.ticket_id.clone());
            plan.tickets.insert(
                t.ticket_id.clone(),
                TrackedTicket {
                    status: TicketStatus::Pending,
                    ticket: t,
                    compensation_ticket_id: None,
                    sla_violated: false,
                },
            );
        }
        for result in std::mem::take(&mut plan.early_results) {
            self.apply(ctx, plan, result, timestamp)?;
        }
        Ok(())
    }

    /// Compensation tickets for `targets` (original ticket ids), in reverse execution
    /// order; each depends on the compensations of the targets that depended on its
    /// original.
    fn compensate(
        ctx: &mut PlanCtx<'_>,
        plan: &mut PlanState,
        targets: &BTreeSet<String>,
        timestamp: i64,
    ) -> Vec<String> {
        let now = ctx.wall_clock_time();
        let mut emitted = Vec::new();
        let order: Vec<String> = plan.order.iter().rev().cloned().collect();
        for id in order.iter().filter(|id| targets.contains(*id)) {
            let Some(tracked) = plan.tickets.get(id) else {
                continue;
            };
            if tracked.compensation_ticket_id.is_some() {
                continue;
            }
            let dependencies: Vec<String> = targets
                .iter()
                .filter_map(|other| plan.tickets.get(other))
                .filter(|other| other.ticket.dependencies.contains(id))
                .filter_map(|other| other.compensation_ticket_id.clone())
                .collect();
            let ticket = compensation_ticket(&tracked.ticket, dependencies, now);
            let comp_id = ticket.ticket_id.clone();
            if let Some(t) = plan.tickets.get_mut(id) {
                t.compensation_ticket_id = Some(comp_id.clone());
                t.ticket.compensation_ticket_id = Some(comp_id.clone());
            }
            plan.compensations
                .insert(comp_id.clone(), TicketStatus::Pending);
            tracing::debug!(plan_id = %plan.plan_id, original = %id, compensation = %comp_id, "compensation ticket emitted");
            ctx.forward(Record::new(
                plan.plan_id.clone(),
                PlanOutput::Ticket(ticket),
                timestamp,
            ));
            emitted.push(comp_id);
        }
        emitted
    }

    fn incident(
        ctx: &mut PlanCtx<'_>,
        plan: &PlanState,
        kind: IncidentType,
        ticket: &ExecutionTicket,
        error: Option<String>,
        compensations: Vec<String>,
        timestamp: i64,
    ) {
        let kind_name = match kind {
            IncidentType::TicketFailed => "TICKET_FAILED",
            IncidentType::CompensationFailed => "COMPENSATION_FAILED",
        };
        let incident = Incident {
            incident_id: derived_id(&format!("incident/{kind_name}/{}", ticket.ticket_id)),
            incident_type: kind,
            severity: Severity::from(ticket.risk_band),
            plan_id: plan.plan_id.clone(),
            decision_id: plan.decision_id.clone(),
            ticket_id: ticket.ticket_id.clone(),
            task_id: ticket.task_id.clone(),
            error_message: error,
            compensation_ticket_ids: compensations,
            timestamp: ctx.wall_clock_time(),
        };
        tracing::info!(plan_id = %plan.plan_id, ticket_id = %ticket.ticket_id, incident_type = kind_name, "incident raised");
        ctx.forward(Record::new(
            plan.plan_id.clone(),
            PlanOutput::Incident(incident),
            timestamp,
        ));
    }

    fn apply(
        &self,
        ctx: &mut PlanCtx<'_>,
        plan: &mut PlanState,
        result: ExecutionResult,
        timestamp: i64,
    ) -> Result<(), ProcessingError> {
        if plan.order.is_empty() {
            plan.early_results.push(result);
            return Ok(());
        }
        let id = result.ticket_id.clone();
        if let Some(status) = plan.compensations.get(&id).copied() {
            if is_finished(status) {
                return Ok(());
            }
            let new = match result.status {
                ExecutionStatus::Running => TicketStatus::Running,
                ExecutionStatus::Completed => TicketStatus::Completed,
                ExecutionStatus::Failed => TicketStatus::Failed,
            };
            plan.compensations.insert(id.clone(), new);
            if new == TicketStatus::Completed
                && let Some(original) = plan
                    .tickets
                    .values_mut()
                    .find(|t| t.compensation_ticket_id.as_deref() == Some(id.as_str()))
            {
                original.status = TicketStatus::Compensated;
            }
            if new == TicketStatus::Failed
                && let Some(original) = plan
                    .tickets
                    .values()
                    .find(|t| t.compensation_ticket_id.as_deref() == Some(id.as_str()))
                    .map(|t| t.ticket.clone())
            {
                let plan_view = plan.clone();
                Self::incident(
                    ctx,
                    &plan_view,
                    IncidentType::CompensationFailed,
                    &original,
                    result.error_message.clone(),
                    vec![],
                    timestamp,
                );
            }
            Self::update_status(plan);
            return Ok(());
        }
        let Some(tracked) = plan.tickets.get(&id) else {
            // Not a ticket of this plan's saga: nothing to follow.
            ctx.count_skipped();
            return Ok(());
        };
        let previous = tracked.status;
        if is_finished(previous) || previous == TicketStatus::Compensating {
            // A duplicate or late report: the first terminal result stands.
            return Ok(());
        }
        let ticket = tracked.ticket.clone();
        match result.status {
            ExecutionStatus::Running => {
                if let Some(t) = plan.tickets.get_mut(&id) {
                    t.status = TicketStatus::Running;
                }
            }
            ExecutionStatus::Completed => {
                self.clear_deadline(ctx, &ticket)?;
                if let Some(t) = plan.tickets.get_mut(&id) {
                    t.status = TicketStatus::Completed;
                }
                if plan.status == PlanStatus::Failed {
                    // A saga already compensating undoes late completions too.
                    let targets = BTreeSet::from([id.clone()]);
                    Self::compensate(ctx, plan, &targets, timestamp);
                }
            }
            ExecutionStatus::Failed => {
                self.clear_deadline(ctx, &ticket)?;
                if let Some(t) = plan.tickets.get_mut(&id) {
                    t.status = TicketStatus::Failed;
                }
                let executed =
                    result.result.metadata.get("failure").map(String::as_str) == Some("execution");
                let mut targets: BTreeSet<String> = if plan.status == PlanStatus::Failed {
                    BTreeSet::new()
                } else {
                    plan.tickets
                        .iter()
                        .filter(|(_, t)| t.status == TicketStatus::Completed)
                        .map(|(id, _)| id.clone())
                        .collect()
                };
                if executed {
                    targets.insert(id.clone());
                }
                plan.status = PlanStatus::Failed;
                let compensations = Self::compensate(ctx, plan, &targets, timestamp);
                let plan_view = plan.clone();
                Self::incident(
                    ctx,
                    &plan_view,
                    IncidentType::TicketFailed,
                    &ticket,
                    result.error_message.clone(),
                    compensations,
                    timestamp,
                );
            }
        }
        Self::update_status(plan);
        Ok(())
    }

    fn update_status(plan: &mut PlanState) {
        if plan.status == PlanStatus::Failed {
            let compensated = plan
                .compensations
                .values()
                .all(|s| *s == TicketStatus::Completed);
            let settled = plan
                .tickets
                .values()
                .all(|t| is_finished(t.status) || t.compensation_ticket_id.is_some());
            if compensated && settled && !plan.compensations.is_empty() {
                plan.status = PlanStatus::Compensated;
            }
        } else if plan
            .tickets
            .values()
            .all(|t| t.status == TicketStatus::Completed)
        {
            plan.status = PlanStatus::Completed;
        }
    }
}

impl Processor<String, PlanEvent, String, PlanOutput> for TrackPlans {
    fn init(
        &mut self,
        ctx: &mut ProcessorContext<'_, String, PlanOutput>,
    ) -> Result<(), ProcessingError> {
        ctx.schedule(self.sla_check, PunctuationType::WallClockTime);
        Ok(())
    }

    fn process(
        &mut self,
        record: Record<String, PlanEvent>,
        ctx: &mut ProcessorContext<'_, String, PlanOutput>,
    ) -> Result<(), ProcessingError> {
        let mut plan = self.load(ctx, &record.key)?.unwrap_or_else(|| PlanState {
            plan_id: record.key.clone(),
            ..PlanState::default()
        });
        match record.value {
            PlanEvent::Tickets(tickets) => {
                self.start_plan(ctx, &mut plan, tickets, record.timestamp)?
            }
            PlanEvent::Result(result) => self.apply(ctx, &mut plan, result, record.timestamp)?,
        }
        self.save(ctx, &plan)
    }

    fn punctuate(
        &mut self,
        _schedule: ScheduleId,
        now: i64,
        ctx: &mut ProcessorContext<'_, String, PlanOutput>,
    ) -> Result<(), ProcessingError> {
        // Keys sort by deadline; everything below `now + 1` is due.
        let due_before = format!("{:020}", now.saturating_add(1).max(0));
        let due = ctx.store(&self.deadlines)?.range(None, Some(&due_before))?;
        for (key, plan_id) in due {
            ctx.store(&self.deadlines)?.delete(&key)?;
            let Some(ticket_id) = key.split_once('/').map(|(_, t)| t.to_string()) else {
                continue;
            };
            let Some(mut plan) = self.load(ctx, &plan_id)? else {
                continue;
            };
            let Some(tracked) = plan.tickets.get_mut(&ticket_id) else {
                continue;
            };
            if is_finished(tracked.status) || tracked.sla_violated {
                continue;
            }
            tracked.sla_violated = true;
            let deadline = tracked.ticket.sla.deadline;
            let violation = SlaViolation {
                violation_id: derived_id(&format!("sla/{ticket_id}")),
                plan_id: plan_id.clone(),
                ticket_id: ticket_id.clone(),
                task_id: tracked.ticket.task_id.clone(),
                status: tracked.status,
                deadline,
                detected_at: now,
                overdue_ms: now - deadline,
            };
            tracing::warn!(plan_id = %plan_id, ticket_id = %ticket_id, overdue_ms = now - deadline, "SLA violated");
            ctx.forward(Record::new(
                plan_id.clone(),
                PlanOutput::Violation(violation),
                now,
            ));
            self.save(ctx, &plan)?;
        }
        Ok(())
    }
}

fn bad_option(e: impl std::fmt::Display) -> TopologyError {
    TopologyError::Invalid {
        topology: NAME.into(),
        problems: vec![Problem::BadOption {
            message: format!("[topologies.{NAME}]: {e} (known options: sla_check_interval_ms)"),
        }],
    }
}

/// Builds the topology.
pub fn build(ctx: &BuildContext) -> Result<Topology, TopologyError> {
    let options: OrchestratorOptions = toml::Value::Table(ctx.options.clone())
        .try_into()
        .map_err(bad_option)?;
    if options.sla_check_interval_ms == 0 {
        return Err(bad_option("sla_check_interval_ms must be at least 1"));
    }
    let sla_check = Duration::from_millis(options.sla_check_interval_ms);
    let decisions = crate::decisions::topic(ctx)?;
    let tickets = crate::tickets::topic(ctx)?;
    let results = crate::results::topic(ctx)?;
    let incidents = Topic::new(INCIDENTS, Serdes::string(), Serdes::json::<Incident>());
    let violations = Topic::new(SLA_VIOLATIONS, Serdes::string(), Serdes::json());
    let week = Duration::from_secs(7 * 24 * 3600);

    let b = TopologyBuilder::new(NAME);
    b.error_policy(ErrorPolicy::dead_letter(DEAD_LETTER));
    let plans_store = b.add_store(StoreBuilder::persistent(
        PLAN_STORE,
        Serdes::string(),
        Serdes::json::<PlanState>(),
    ));
    let deadlines = b.add_store(StoreBuilder::persistent(
        DEADLINE_STORE,
        Serdes::string(),
        Serdes::string(),
    ));
    b.expose_store(API_PATH, PLAN_STORE);

    // Decisions, once per decision id; the approved ones become a plan's tickets.
    let plans: KStream<String, PlanTickets> = b
        .stream(&decisions)
        .select_key(|_k, d: &ConsolidatedDecision| d.decision_id.clone())
        .repartition(
            "decisions-by-id",
            Grouped::with(Serdes::string(), Serdes::json()),
        )
        .deduplicate(
            DECISION_STORE,
            |id: &String, _d| id.clone(),
            Serdes::string(),
            week,
        )
        .filter(|_k, d| is_actionable(d))
        .process(|| GenerateTickets)
        .named("generate-tickets");
    plans
        .flat_map(|plan_id: String, p: PlanTickets| {
            p.tickets
                .into_iter()
                .map(move |t| (Some(plan_id.clone()), t))
        })
        .to(&tickets)
        .named("tickets-out");

    // Each result finds its plan through the ticket it reports on; a result that
    // overtook its ticket waits for it up to a day.
    let ticket_plans = b
        .stream(&tickets)
        .map(|_k, t: ExecutionTicket| (t.ticket_id, t.plan_id))
        .repartition(
            "tickets-by-id",
            Grouped::with(Serdes::string(), Serdes::string()),
        )
        .to_table(
            "ticket-plans",
            StoreBuilder::persistent(TICKET_INDEX, Serdes::string(), Serdes::string())
                .with_ttl(week),
        );
    let reported = b
        .stream(&results)
        .select_key(|_k, r: &ExecutionResult| r.ticket_id.clone())
        .repartition(
            "results-by-ticket",
            Grouped::with(Serdes::string(), Serdes::json()),
        )
        .join_table_with_grace(
            RESULTS_WITH_PLAN,
            &ticket_plans,
            |r: ExecutionResult, plan_id: &String| (plan_id.clone(), r),
            Joined::with(Serdes::string(), Serdes::json()).grace(Duration::from_secs(24 * 3600)),
        )
        .map(|_ticket_id, (plan_id, r)| (plan_id, PlanEvent::Result(r)));

    // Each plan's saga, partitioned by plan: compensations, incidents, SLA violations.
    plans
        .map_values(PlanEvent::Tickets)
        .merge(&reported)
        .repartition("by-plan", Grouped::with(Serdes::string(), Serdes::json()))
        .process_with_stores(&[PLAN_STORE, DEADLINE_STORE], move || TrackPlans {
            sla_check,
            plans: plans_store.clone(),
            deadlines: deadlines.clone(),
        })
        .named("track-plans")
        .split()
        .named("outputs")
        .branch_map(
            |_k, o| match o {
                PlanOutput::Ticket(t) => Branch::Take(t),
                other => Branch::Pass(other),
            },
            |compensations| {
                compensations
                    .map(|plan_id: String, t| (Some(plan_id), t))
                    .to(&tickets)
                    .named("compensations-out");
            },
        )
        .branch_map(
            |_k, o| match o {
                PlanOutput::Incident(i) => Branch::Take(i),
                other => Branch::Pass(other),
            },
            |raised| {
                raised
                    .select_key(|_k, i: &Incident| i.incident_id.clone())
                    .to(&incidents)
                    .named("incidents-out");
            },
        )
        .branch_map(
            |_k, o| match o {
                PlanOutput::Violation(v) => Branch::Take(v),
                other => Branch::Pass(other),
            },
            |late| {
                late.select_key(|_k, v: &SlaViolation| v.violation_id.clone())
                    .to(&violations)
                    .named("violations-out");
            },
        );
    b.build()
}
