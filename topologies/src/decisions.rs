//! The consolidated-decision contract (`schemas/consolidated-decision/`) and the cognitive
//! plan it carries as a JSON string (`schemas/cognitive-plan/`), as Rust types; and a
//! reproducible generator of decisions for the demo and the tests.

use std::collections::HashMap;

use engine::BuildContext;
use engine::serde::Serdes;
use engine::topology::{Topic, TopologyError};
use serde::{Deserialize, Serialize};

use crate::tickets::RiskBand;

/// The Avro schema of [`ConsolidatedDecision`].
pub const CONSOLIDATED_DECISION_SCHEMA: &str =
    include_str!("../../schemas/consolidated-decision/consolidated-decision.avsc");

/// The decisions' topic, written by the consensus service.
pub const TOPIC: &str = "plans.consensus";

/// [`TOPIC`] with its serdes: nullable string keys, values the Avro contract.
pub fn topic(
    ctx: &BuildContext,
) -> Result<Topic<Option<String>, ConsolidatedDecision>, TopologyError> {
    let value = ctx
        .avro
        .contract_value_serde::<ConsolidatedDecision>(CONSOLIDATED_DECISION_SCHEMA)?;
    Ok(Topic::new(TOPIC, Serdes::nullable(Serdes::string()), value))
}

/// The consensus outcome.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum DecisionType {
    /// Go ahead.
    Approve,
    /// Do not.
    Reject,
    /// A human must look first.
    ReviewRequired,
    /// Approved under conditions a human checks.
    Conditional,
}

/// How the consensus was reached.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ConsensusMethod {
    /// Bayesian aggregation.
    Bayesian,
    /// Voting.
    Voting,
    /// Everyone agreed.
    Unanimous,
    /// A fallback rule.
    Fallback,
}

/// Kind of workflow.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowType {
    /// Orchestration (the default).
    Orchestration,
    /// Generation.
    Generation,
}

/// One specialist's vote.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SpecialistVote {
    pub specialist_type: String,
    pub opinion_id: String,
    pub confidence_score: f64,
    pub risk_score: f64,
    pub recommendation: String,
    pub weight: f64,
    pub processing_time_ms: i64,
}

/// Figures of the consensus.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ConsensusMetrics {
    pub divergence_score: f64,
    pub convergence_time_ms: i64,
    pub unanimous: bool,
    pub fallback_used: bool,
    pub pheromone_strength: f64,
    pub bayesian_confidence: f64,
    pub voting_confidence: f64,
}

/// A decision of the consensus engine on a plan (`plans.consensus`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ConsolidatedDecision {
    pub decision_id: String,
    pub plan_id: String,
    pub intent_id: String,
    pub correlation_id: Option<String>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub final_decision: DecisionType,
    pub consensus_method: ConsensusMethod,
    pub aggregated_confidence: f64,
    pub aggregated_risk: f64,
    pub specialist_votes: Vec<SpecialistVote>,
    pub consensus_metrics: ConsensusMetrics,
    pub explainability_token: String,
    pub reasoning_summary: String,
    pub compliance_checks: HashMap<String, bool>,
    pub guardrails_triggered: Vec<String>,
    /// The cognitive plan as a JSON string ([`CognitivePlan`]).
    pub cognitive_plan: Option<String>,
    #[serde(default = "orchestration")]
    pub workflow_type: WorkflowType,
    pub context_id: Option<String>,
    #[serde(default = "half")]
    pub workflow_confidence: f64,
    pub workflow_reasoning: Option<String>,
    pub requires_human_review: bool,
    pub created_at: i64,
    pub valid_until: Option<i64>,
    pub metadata: HashMap<String, String>,
    pub hash: String,
    #[serde(default = "two")]
    pub schema_version: i32,
}

fn orchestration() -> WorkflowType {
    WorkflowType::Orchestration
}
fn half() -> f64 {
    0.5
}
fn two() -> i32 {
    2
}

/// One task of a cognitive plan.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PlanTask {
    pub task_id: String,
    /// Upper-case task type (`BUILD`, `DEPLOY`, ...).
    pub task_type: String,
    #[serde(default)]
    pub description: String,
    /// Task ids of this plan that must complete first.
    #[serde(default)]
    pub dependencies: Vec<String>,
    #[serde(default)]
    pub parameters: HashMap<String, String>,
    #[serde(default)]
    pub estimated_duration_ms: Option<i64>,
    #[serde(default)]
    pub required_capabilities: Vec<String>,
}

/// The plan a decision approves, as far as ticket generation reads it. Missing
/// collections stay empty so the generator can say which one is missing.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CognitivePlan {
    #[serde(default)]
    pub plan_id: String,
    #[serde(default)]
    pub tasks: Vec<PlanTask>,
    #[serde(default)]
    pub execution_order: Vec<String>,
    #[serde(default)]
    pub risk_band: Option<RiskBand>,
    #[serde(default)]
    pub metadata: HashMap<String, String>,
}

/// Deterministic pseudo-random numbers (SplitMix64), so generated runs are reproducible
/// from a seed.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A number in `[lo, hi)` (`lo` if the range is empty).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next_u64() % (hi - lo)
        }
    }

    /// A random version-4-shaped UUID.
    pub fn uuid(&mut self) -> String {
        let (a, b) = (self.next_u64(), self.next_u64());
        uuid::Uuid::from_u64_pair(a, b).to_string()
    }
}

/// What [`generate_decisions`] makes.
#[derive(Clone, Debug)]
pub struct GeneratorSettings {
    /// Seed of the run.
    pub seed: u64,
    /// Share of decisions that approve (the rest split between reject and review).
    pub approve_share: f64,
    /// Chance that a task of an approved plan fails on every attempt (marked in its
    /// parameters as `simulate = fail`, which the simulated executor obeys).
    pub failure_rate: f64,
    /// Share of decisions sent a second time (same `decision_id`).
    pub duplicate_share: f64,
    /// Creation time of the decisions.
    pub now: i64,
}

impl Default for GeneratorSettings {
    fn default() -> Self {
        GeneratorSettings {
            seed: 42,
            approve_share: 0.7,
            failure_rate: 0.05,
            duplicate_share: 0.02,
            now: 0,
        }
    }
}

const TASK_TYPES: [&str; 5] = ["BUILD", "TEST", "DEPLOY", "VALIDATE", "EXECUTE"];

/// `n` distinct decisions, plus the duplicates [`GeneratorSettings::duplicate_share`]
/// asks for, in sending order. Approved plans have 2-6 tasks, each depending on up to two
/// earlier ones.
pub fn generate_decisions(n: usize, settings: &GeneratorSettings) -> Vec<ConsolidatedDecision> {
    let mut r = SplitMix(settings.seed);
    let mut out = Vec::with_capacity(n + n / 20);
    for i in 0..n {
        let roll = r.unit();
        let (final_decision, review) = if roll < settings.approve_share {
            (DecisionType::Approve, false)
        } else if roll < settings.approve_share + (1.0 - settings.approve_share) / 2.0 {
            (DecisionType::Reject, false)
        } else {
            (DecisionType::ReviewRequired, true)
        };
        let plan_id = format!("plan-{i:06}-{}", &r.uuid()[..8]);
        let risk_band = [
            RiskBand::Low,
            RiskBand::Medium,
            RiskBand::High,
            RiskBand::Critical,
        ][r.between(0, 4) as usize];
        let tasks: Vec<PlanTask> = (0..r.between(2, 7))
            .map(|t| {
                let mut dependencies = Vec::new();
                if t > 0 {
                    for _ in 0..r.between(1, 3) {
                        let dep = format!("task-{}", r.between(0, t));
                        if !dependencies.contains(&dep) {
                            dependencies.push(dep);
                        }
                    }
                }
                let mut parameters = HashMap::new();
                parameters.insert("target".to_string(), format!("svc-{}", r.between(0, 50)));
                if r.unit() < settings.failure_rate {
                    parameters.insert("simulate".to_string(), "fail".to_string());
                }
                PlanTask {
                    task_id: format!("task-{t}"),
                    task_type: TASK_TYPES[r.between(0, 5) as usize].to_string(),
                    description: format!("step {t} of {plan_id}"),
                    dependencies,
                    parameters,
                    estimated_duration_ms: Some(r.between(50, 500) as i64),
                    required_capabilities: vec![],
                }
            })
            .collect();
        let plan = CognitivePlan {
            plan_id: plan_id.clone(),
            execution_order: tasks.iter().map(|t| t.task_id.clone()).collect(),
            tasks,
            risk_band: Some(risk_band),
            metadata: HashMap::new(),
        };
        let decision = ConsolidatedDecision {
            decision_id: r.uuid(),
            plan_id,
            intent_id: r.uuid(),
            correlation_id: (i % 2 == 0).then(|| r.uuid()),
            trace_id: Some(format!("{:032x}", r.next_u64() as u128)),
            span_id: None,
            final_decision,
            consensus_method: ConsensusMethod::Bayesian,
            aggregated_confidence: 0.5 + r.unit() / 2.0,
            aggregated_risk: r.unit(),
            specialist_votes: vec![SpecialistVote {
                specialist_type: "technical".into(),
                opinion_id: r.uuid(),
                confidence_score: 0.9,
                risk_score: 0.2,
                recommendation: "approve".into(),
                weight: 1.0,
                processing_time_ms: 12,
            }],
            consensus_metrics: ConsensusMetrics {
                divergence_score: 0.1,
                convergence_time_ms: 40,
                unanimous: false,
                fallback_used: false,
                pheromone_strength: 0.5,
                bayesian_confidence: 0.8,
                voting_confidence: 0.7,
            },
            explainability_token: r.uuid(),
            reasoning_summary: "generated".into(),
            compliance_checks: HashMap::from([("gdpr".to_string(), true)]),
            guardrails_triggered: vec![],
            cognitive_plan: Some(serde_json::to_string(&plan).unwrap_or_default()),
            workflow_type: WorkflowType::Orchestration,
            context_id: None,
            workflow_confidence: 0.5,
            workflow_reasoning: None,
            requires_human_review: review,
            created_at: settings.now,
            valid_until: None,
            metadata: HashMap::new(),
            hash: format!("{:016x}", r.next_u64()),
            schema_version: 2,
        };
        let duplicate = r.unit() < settings.duplicate_share;
        if duplicate {
            out.push(decision.clone());
        }
        out.push(decision);
    }
    out
}
