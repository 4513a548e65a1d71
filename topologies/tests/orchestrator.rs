//! `orchestrator-dynamic` through the test driver: ticket fields and rules, dependency
//! mapping, deduplication, the decisions that make no tickets, bad plans, compensation
//! order and actions, incidents, and SLA violations on wall-clock time.

#![allow(clippy::unwrap_used)] // tests state their expectations with unwrap

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use engine::BuildContext;
use engine::registry::{MemoryRegistry, SchemaRegistry};
use engine::serde::{AvroContext, Serdes};
use engine::testing::{TestDriver, TestDriverOptions, TestInputTopic, TestOutputTopic};
use topologies::decisions::*;
use topologies::orchestrator::{
    self, DEAD_LETTER, DECISIONS, INCIDENTS, Incident, IncidentType, PLAN_STORE, PlanState,
    PlanStatus, RESULTS, SLA_VIOLATIONS, Severity, SlaViolation, TICKETS,
};
use topologies::results::*;
use topologies::tickets::*;

const NOW: i64 = 1_760_000_000_000;

struct Orchestrator {
    driver: TestDriver,
    decisions: TestInputTopic<Option<String>, ConsolidatedDecision>,
    results: TestInputTopic<Option<String>, ExecutionResult>,
    tickets: TestOutputTopic<Option<String>, ExecutionTicket>,
    incidents: TestOutputTopic<String, Incident>,
    violations: TestOutputTopic<String, SlaViolation>,
}

fn orchestrator() -> Orchestrator {
    let ctx = BuildContext {
        avro: AvroContext {
            registry: Some(SchemaRegistry::memory(Arc::new(MemoryRegistry::new()))),
            ..Default::default()
        },
        ..Default::default()
    };
    let driver = TestDriver::with_options(
        orchestrator::build(&ctx).unwrap(),
        TestDriverOptions {
            start_time: NOW,
            ..Default::default()
        },
    );
    let key = || Serdes::nullable(Serdes::string());
    Orchestrator {
        decisions: driver.input_topic(
            DECISIONS,
            key(),
            ctx.avro.value_serde(CONSOLIDATED_DECISION_SCHEMA).unwrap(),
        ),
        results: driver.input_topic(
            RESULTS,
            key(),
            ctx.avro.value_serde(EXECUTION_RESULT_SCHEMA).unwrap(),
        ),
        tickets: driver.output_topic(
            TICKETS,
            key(),
            ctx.avro.value_serde(EXECUTION_TICKET_SCHEMA).unwrap(),
        ),
        incidents: driver.output_topic(INCIDENTS, Serdes::string(), Serdes::json()),
        violations: driver.output_topic(SLA_VIOLATIONS, Serdes::string(), Serdes::json()),
        driver,
    }
}

fn task(id: &str, kind: &str, deps: &[&str], estimated: Option<i64>) -> PlanTask {
    PlanTask {
        task_id: id.into(),
        task_type: kind.into(),
        description: format!("do {id}"),
        dependencies: deps.iter().map(|d| d.to_string()).collect(),
        parameters: HashMap::from([("target".to_string(), "svc".to_string())]),
        estimated_duration_ms: estimated,
        required_capabilities: vec!["k8s".into()],
    }
}

/// An approved decision on plan `plan` with a diamond-free chain build -> test -> deploy
/// and an independent validate.
fn decision(id: &str, plan: &str, risk: RiskBand) -> ConsolidatedDecision {
    let mut d = generate_decisions(1, &GeneratorSettings::default())
        .pop()
        .unwrap();
    d.decision_id = id.into();
    d.plan_id = plan.into();
    d.final_decision = DecisionType::Approve;
    d.requires_human_review = false;
    d.correlation_id = Some("corr-1".into());
    d.trace_id = Some("trace-1".into());
    let plan = CognitivePlan {
        plan_id: plan.into(),
        tasks: vec![
            task("build", "BUILD", &[], Some(10_000)),
            task("test", "TEST", &["build"], Some(30_000)),
            task("deploy", "deploy", &["test"], None),
            task("validate", "VALIDATE", &[], Some(5_000)),
        ],
        execution_order: vec![
            "build".into(),
            "test".into(),
            "deploy".into(),
            "validate".into(),
        ],
        risk_band: Some(risk),
        metadata: HashMap::from([("workflow_id".to_string(), "wf-1".to_string())]),
    };
    d.cognitive_plan = Some(serde_json::to_string(&plan).unwrap());
    d
}

fn result(ticket: &str, status: ExecutionStatus, failure: Option<&str>) -> ExecutionResult {
    ExecutionResult {
        ticket_id: ticket.into(),
        status,
        result: ExecutionResultPayload {
            success: status == ExecutionStatus::Completed,
            metadata: failure
                .map(|f| HashMap::from([("failure".to_string(), f.to_string())]))
                .unwrap_or_default(),
            ..Default::default()
        },
        error_message: (status == ExecutionStatus::Failed).then(|| "boom".into()),
        actual_duration_ms: Some(10),
        agent_id: "worker-1".into(),
        timestamp: NOW,
        schema_version: 1,
    }
}

impl Orchestrator {
    fn approve(&self, d: ConsolidatedDecision) -> Vec<ExecutionTicket> {
        self.decisions.pipe(Some(d.plan_id.clone()), d).unwrap();
        self.tickets.read_values()
    }

    fn report(&self, ticket: &ExecutionTicket, status: ExecutionStatus, failure: Option<&str>) {
        self.results
            .pipe(
                Some(ticket.ticket_id.clone()),
                result(&ticket.ticket_id, status, failure),
            )
            .unwrap();
    }

    fn plan(&self, plan: &str) -> PlanState {
        self.driver
            .store_get::<String, PlanState>(PLAN_STORE, &plan.to_string())
            .unwrap()
    }
}

#[test]
fn an_approved_decision_becomes_one_ticket_per_task_in_execution_order() {
    let o = orchestrator();
    o.decisions
        .pipe(
            Some("plan-1".into()),
            decision("decision-1", "plan-1", RiskBand::High),
        )
        .unwrap();
    let records = o.tickets.read_key_values();
    assert!(records.iter().all(|(k, _)| k.as_deref() == Some("plan-1")));
    let tickets: Vec<ExecutionTicket> = records.into_iter().map(|(_, t)| t).collect();
    assert_eq!(
        tickets
            .iter()
            .map(|t| t.task_id.as_str())
            .collect::<Vec<_>>(),
        ["build", "test", "deploy", "validate"]
    );
    let by_task: HashMap<&str, &ExecutionTicket> =
        tickets.iter().map(|t| (t.task_id.as_str(), t)).collect();
    let (build, test, deploy, validate) = (
        by_task["build"],
        by_task["test"],
        by_task["deploy"],
        by_task["validate"],
    );
    // Dependencies are the ticket ids of this plan's tasks.
    assert!(build.dependencies.is_empty());
    assert!(validate.dependencies.is_empty());
    assert_eq!(test.dependencies, vec![build.ticket_id.clone()]);
    assert_eq!(deploy.dependencies, vec![test.ticket_id.clone()]);
    for t in &tickets {
        assert_eq!(t.status, TicketStatus::Pending);
        assert_eq!(t.plan_id, "plan-1");
        assert_eq!(t.decision_id, "decision-1");
        assert_eq!(t.correlation_id.as_deref(), Some("corr-1"));
        assert_eq!(t.trace_id.as_deref(), Some("trace-1"));
        assert_eq!(t.priority, Priority::Normal);
        assert_eq!(t.risk_band, RiskBand::High);
        assert_eq!(t.security_level, SecurityLevel::Internal);
        assert_eq!(t.sla.max_retries, 3, "high risk: 3 retries");
        assert_eq!(t.qos.delivery_mode, DeliveryMode::ExactlyOnce);
        assert_eq!(t.qos.consistency, Consistency::Strong);
        assert_eq!(t.qos.durability, Durability::Persistent);
        assert_eq!(t.created_at, NOW);
        assert_eq!(t.sla.deadline, t.created_at + t.sla.timeout_ms);
        assert_eq!(t.metadata["workflow_id"], "wf-1");
        assert_eq!(t.metadata["generated_by"], "orchestrator-dynamic");
        assert_eq!(uuid_version(&t.ticket_id), Some(5));
    }
    // timeout = max(60 s, 3 x estimate (default 60 s)).
    assert_eq!(build.sla.timeout_ms, 60_000);
    assert_eq!(test.sla.timeout_ms, 90_000);
    assert_eq!(deploy.sla.timeout_ms, 180_000);
    assert_eq!(
        deploy.task_type,
        TaskType::Deploy,
        "task types are read case-blind"
    );
}

fn uuid_version(s: &str) -> Option<usize> {
    uuid::Uuid::parse_str(s).ok().map(|u| u.get_version_num())
}

#[test]
fn risk_bands_set_retries_and_qos() {
    for (risk, retries, mode) in [
        (RiskBand::Critical, 5, DeliveryMode::ExactlyOnce),
        (RiskBand::High, 3, DeliveryMode::ExactlyOnce),
        (RiskBand::Medium, 2, DeliveryMode::AtLeastOnce),
        (RiskBand::Low, 1, DeliveryMode::AtLeastOnce),
    ] {
        let o = orchestrator();
        let tickets = o.approve(decision("d", "p", risk));
        assert!(
            tickets
                .iter()
                .all(|t| t.sla.max_retries == retries && t.qos.delivery_mode == mode),
            "{risk:?}"
        );
    }
}

#[test]
fn a_missing_correlation_id_gets_one_and_the_same_decision_gets_the_same_tickets() {
    let mut d = decision("decision-9", "plan-9", RiskBand::Low);
    d.correlation_id = None;
    let first = orchestrator().approve(d.clone());
    let again = orchestrator().approve(d);
    let corr = first[0].correlation_id.clone().unwrap();
    assert!(
        first
            .iter()
            .all(|t| t.correlation_id.as_deref() == Some(&*corr))
    );
    assert_eq!(
        first.iter().map(|t| &t.ticket_id).collect::<Vec<_>>(),
        again.iter().map(|t| &t.ticket_id).collect::<Vec<_>>(),
        "ticket ids derive from the decision, so a redelivery makes the same tickets"
    );
}

#[test]
fn rejected_reviewed_and_repeated_decisions_make_no_tickets() {
    let o = orchestrator();
    let mut rejected = decision("d-reject", "p1", RiskBand::Low);
    rejected.final_decision = DecisionType::Reject;
    assert!(o.approve(rejected).is_empty());
    let mut review = decision("d-review", "p2", RiskBand::Low);
    review.requires_human_review = true;
    assert!(o.approve(review).is_empty());
    let mut conditional = decision("d-cond", "p3", RiskBand::Low);
    conditional.final_decision = DecisionType::ReviewRequired;
    assert!(o.approve(conditional).is_empty());

    let d = decision("d-1", "p4", RiskBand::Low);
    assert_eq!(o.approve(d.clone()).len(), 4);
    assert!(o.approve(d).is_empty(), "a repeated decision id is skipped");
    assert_eq!(o.driver.metrics().skipped, 1);
}

#[test]
fn a_plan_the_generator_cannot_read_goes_to_the_dead_letter_topic_naming_the_field() {
    let o = orchestrator();
    type Breakage = Box<dyn Fn(&mut CognitivePlan)>;
    let cases: Vec<(&str, Breakage)> = vec![
        ("cognitive_plan.tasks", Box::new(|p| p.tasks.clear())),
        (
            "cognitive_plan.execution_order",
            Box::new(|p| p.execution_order.clear()),
        ),
        ("cognitive_plan.risk_band", Box::new(|p| p.risk_band = None)),
        (
            "cognitive_plan.tasks[1].dependencies[0]",
            Box::new(|p| p.tasks[1].dependencies = vec!["nope".into()]),
        ),
        (
            "cognitive_plan.tasks[0].task_type",
            Box::new(|p| p.tasks[0].task_type = "TRANSMOGRIFY".into()),
        ),
    ];
    for (i, (field, break_it)) in cases.iter().enumerate() {
        let mut d = decision(&format!("bad-{i}"), &format!("p-{i}"), RiskBand::Low);
        let mut plan: CognitivePlan =
            serde_json::from_str(d.cognitive_plan.as_deref().unwrap()).unwrap();
        break_it(&mut plan);
        d.cognitive_plan = Some(serde_json::to_string(&plan).unwrap());
        assert!(o.approve(d).is_empty());
        let dead = o.driver.read_raw(DEAD_LETTER).expect("dead-lettered");
        assert_eq!(dead.headers.last_str("engine.error.field"), Some(*field));
    }
    let mut d = decision("bad-json", "p-json", RiskBand::Low);
    d.cognitive_plan = Some("{not json".into());
    assert!(o.approve(d).is_empty());
    let dead = o.driver.read_raw(DEAD_LETTER).unwrap();
    assert_eq!(
        dead.headers.last_str("engine.error.field"),
        Some("cognitive_plan")
    );
}

#[test]
fn a_failure_compensates_the_completed_tickets_and_the_failed_one_in_reverse_topological_order() {
    let o = orchestrator();
    let tickets = o.approve(decision("d-1", "plan-1", RiskBand::Medium));
    let [build, test, deploy, validate] = <[ExecutionTicket; 4]>::try_from(tickets).unwrap();
    o.report(&build, ExecutionStatus::Running, None);
    o.report(&build, ExecutionStatus::Completed, None);
    o.report(&validate, ExecutionStatus::Completed, None);
    assert!(o.tickets.is_empty());
    o.report(&test, ExecutionStatus::Failed, Some("execution"));

    // Execution order build, test, deploy, validate; compensated: validate, test, build.
    let compensations = o.tickets.read_values();
    let originals: Vec<&str> = compensations
        .iter()
        .map(|c| c.parameters["original_ticket_id"].as_str())
        .collect();
    assert_eq!(
        originals,
        [
            validate.ticket_id.as_str(),
            test.ticket_id.as_str(),
            build.ticket_id.as_str()
        ]
    );
    let by_original: HashMap<&str, &ExecutionTicket> = compensations
        .iter()
        .map(|c| (c.parameters["original_ticket_id"].as_str(), c))
        .collect();
    let (c_build, c_test, c_validate) = (
        by_original[build.ticket_id.as_str()],
        by_original[test.ticket_id.as_str()],
        by_original[validate.ticket_id.as_str()],
    );
    assert_eq!(c_build.parameters["action"], "delete_artifacts");
    assert_eq!(c_test.parameters["action"], "cleanup_test_env");
    assert_eq!(c_validate.parameters["action"], "revert_approval");
    // Build is undone only after test's undo: test depended on build.
    assert_eq!(c_build.dependencies, vec![c_test.ticket_id.clone()]);
    assert!(c_test.dependencies.is_empty());
    for c in &compensations {
        let original = c.parameters["original_ticket_id"].as_str();
        assert_eq!(c.task_type, TaskType::Compensate);
        assert_eq!(c.status, TicketStatus::Pending);
        assert_eq!(c.task_id, format!("compensate-{}", &original[..8]));
        assert_eq!(c.sla.timeout_ms, 120_000);
        assert_eq!(c.sla.deadline, c.created_at + 120_000, "a real deadline");
        assert_eq!(c.plan_id, "plan-1");
        assert_eq!(c.decision_id, "d-1");
        assert_eq!(c.metadata["compensates"], original);
    }
    let incident = o.incidents.read_value().unwrap();
    assert_eq!(incident.incident_type, IncidentType::TicketFailed);
    assert_eq!(incident.ticket_id, test.ticket_id);
    assert_eq!(incident.plan_id, "plan-1");
    assert_eq!(
        incident.compensation_ticket_ids,
        compensations
            .iter()
            .map(|c| c.ticket_id.clone())
            .collect::<Vec<_>>()
    );
    let plan = o.plan("plan-1");
    assert_eq!(plan.status, PlanStatus::Failed);
    assert_eq!(
        plan.tickets[&build.ticket_id]
            .compensation_ticket_id
            .as_deref(),
        Some(c_build.ticket_id.as_str())
    );

    // deploy never ran (its dependency failed): nothing to undo, but an incident.
    o.report(&deploy, ExecutionStatus::Failed, Some("dependency"));
    assert!(o.tickets.is_empty());
    let incident = o.incidents.read_value().unwrap();
    assert_eq!(incident.ticket_id, deploy.ticket_id);
    assert!(incident.compensation_ticket_ids.is_empty());

    // The compensations complete: the plan is compensated.
    for c in &compensations {
        o.report(c, ExecutionStatus::Completed, None);
    }
    assert_eq!(o.plan("plan-1").status, PlanStatus::Compensated);
    assert!(o.incidents.is_empty());
}

#[test]
fn a_ticket_completing_after_its_plan_failed_is_compensated_too() {
    let o = orchestrator();
    let tickets = o.approve(decision("d-1", "plan-1", RiskBand::Low));
    let [build, _test, _deploy, validate] = <[ExecutionTicket; 4]>::try_from(tickets).unwrap();
    o.report(&build, ExecutionStatus::Failed, Some("execution"));
    let first = o.tickets.read_values();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].parameters["original_ticket_id"], build.ticket_id);
    o.report(&validate, ExecutionStatus::Completed, None);
    let late = o.tickets.read_values();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].parameters["original_ticket_id"], validate.ticket_id);
    // A duplicate report changes nothing.
    o.report(&validate, ExecutionStatus::Completed, None);
    assert!(o.tickets.is_empty());
}

#[test]
fn a_failed_compensation_raises_an_incident() {
    let o = orchestrator();
    let tickets = o.approve(decision("d-1", "plan-1", RiskBand::Critical));
    o.report(&tickets[0], ExecutionStatus::Failed, Some("execution"));
    let compensation = o.tickets.read_value().unwrap();
    let _ = o.incidents.read_value().unwrap();
    o.report(&compensation, ExecutionStatus::Failed, Some("execution"));
    let incident = o.incidents.read_value().unwrap();
    assert_eq!(incident.incident_type, IncidentType::CompensationFailed);
    assert_eq!(incident.severity, Severity::High);
    assert!(o.tickets.is_empty(), "compensations are not compensated");
}

#[test]
fn a_result_before_its_ticket_waits_for_it() {
    let o = orchestrator();
    let d = decision("d-1", "plan-1", RiskBand::Low);
    // Ticket ids are derived, so a fresh orchestrator tells us what they will be.
    let build = orchestrator().approve(d.clone()).remove(0);
    o.report(&build, ExecutionStatus::Failed, Some("execution"));
    assert!(o.tickets.is_empty());
    let tickets = o.approve(d);
    let compensation = tickets.last().unwrap();
    assert_eq!(tickets.len(), 5, "four tickets, then build's compensation");
    assert_eq!(compensation.task_type, TaskType::Compensate);
    assert_eq!(
        compensation.parameters["original_ticket_id"],
        build.ticket_id
    );
}

#[test]
fn a_deadline_passing_raises_one_sla_violation_per_unfinished_ticket_without_new_input() {
    let o = orchestrator();
    let tickets = o.approve(decision("d-1", "plan-1", RiskBand::Low));
    let [build, test, deploy, validate] = <[ExecutionTicket; 4]>::try_from(tickets).unwrap();
    o.report(&build, ExecutionStatus::Completed, None);
    o.report(&validate, ExecutionStatus::Running, None);
    // 61 s: build's and validate's 60 s deadlines passed; build completed in time.
    o.driver
        .advance_wall_clock(Duration::from_secs(61))
        .unwrap();
    let violations = o.violations.read_values();
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].ticket_id, validate.ticket_id);
    assert_eq!(violations[0].status, TicketStatus::Running);
    assert_eq!(violations[0].deadline, validate.sla.deadline);
    assert!(violations[0].overdue_ms >= 0);
    // Later checks do not repeat it; test (90 s) and deploy (180 s) follow.
    o.driver
        .advance_wall_clock(Duration::from_secs(30))
        .unwrap();
    let violations = o.violations.read_values();
    assert_eq!(
        violations.iter().map(|v| &v.ticket_id).collect::<Vec<_>>(),
        [&test.ticket_id]
    );
    o.report(&deploy, ExecutionStatus::Completed, None);
    o.driver
        .advance_wall_clock(Duration::from_secs(300))
        .unwrap();
    assert!(o.violations.is_empty());
    assert!(o.plan("plan-1").tickets[&validate.ticket_id].sla_violated);
}
