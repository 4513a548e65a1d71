//! Throughput benchmark of this codec against serde_avro_fast, apache-avro's
//! value-tree path and serde_json, on realistic `ExecutionTicket` records.
//! Also hosts the ticket fixture (schema, Rust type, sample generator) so the
//! engine's benchmark harness and tests can share it.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{DecodePlan, EncodePlan, Schema};

/// The ExecutionTicket schema as shipped in the reference schemas.
pub const EXECUTION_TICKET_SCHEMA: &str =
    include_str!("../../../../schemas/execution-ticket/execution-ticket.avsc");

/// The ticket schema plus one reader-only field with a default, used to
/// benchmark a resolving (writer ≠ reader) decode plan.
pub fn execution_ticket_reader_schema_v2() -> String {
    let mut v: serde_json::Value = match serde_json::from_str(EXECUTION_TICKET_SCHEMA) {
        Ok(v) => v,
        Err(_) => return EXECUTION_TICKET_SCHEMA.to_string(),
    };
    if let Some(fields) = v.get_mut("fields").and_then(|f| f.as_array_mut()) {
        fields.push(serde_json::json!({"name": "tenant", "type": "string", "default": "default"}));
    }
    v.to_string()
}

#[allow(missing_docs, non_camel_case_types, clippy::upper_case_acronyms)]
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskType {
    BUILD,
    DEPLOY,
    TEST,
    VALIDATE,
    EXECUTE,
    COMPENSATE,
    QUERY,
}

#[allow(missing_docs, non_camel_case_types, clippy::upper_case_acronyms)]
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketStatus {
    PENDING,
    RUNNING,
    COMPLETED,
    FAILED,
    COMPENSATING,
    COMPENSATED,
}

#[allow(missing_docs, non_camel_case_types, clippy::upper_case_acronyms)]
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    LOW,
    NORMAL,
    HIGH,
    CRITICAL,
}

#[allow(missing_docs)]
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RiskBand {
    Low,
    Medium,
    High,
    Critical,
}

#[allow(missing_docs, non_camel_case_types, clippy::upper_case_acronyms)]
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    AT_MOST_ONCE,
    AT_LEAST_ONCE,
    EXACTLY_ONCE,
}

#[allow(missing_docs, non_camel_case_types, clippy::upper_case_acronyms)]
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    EVENTUAL,
    STRONG,
}

#[allow(missing_docs, non_camel_case_types, clippy::upper_case_acronyms)]
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    TRANSIENT,
    PERSISTENT,
}

#[allow(missing_docs, non_camel_case_types, clippy::upper_case_acronyms)]
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityLevel {
    PUBLIC,
    INTERNAL,
    CONFIDENTIAL,
    RESTRICTED,
}

/// The ticket's `SLA` record.
#[allow(missing_docs)]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Sla {
    pub deadline: i64,
    pub timeout_ms: i64,
    pub max_retries: i32,
}

/// The ticket's `QoS` record.
#[allow(missing_docs)]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct QoS {
    pub delivery_mode: DeliveryMode,
    pub consistency: Consistency,
    pub durability: Durability,
}

/// Rust mirror of `com.neuralhivemind.orchestration.ExecutionTicket`.
#[allow(missing_docs)]
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

/// `n` realistic tickets (~420 bytes Avro each): UUID ids, a 60-character
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
                    TaskType::BUILD,
                    TaskType::DEPLOY,
                    TaskType::TEST,
                    TaskType::EXECUTE,
                ]),
                description: format!(
                    "Deploy service {} to the staging cluster and verify",
                    r.hex(8)
                ),
                dependencies: (0..deps).map(|_| r.uuid()).collect(),
                status: r.pick(&[
                    TicketStatus::PENDING,
                    TicketStatus::RUNNING,
                    TicketStatus::COMPLETED,
                ]),
                priority: r.pick(&[Priority::NORMAL, Priority::HIGH]),
                risk_band: r.pick(&[RiskBand::Low, RiskBand::Medium, RiskBand::High]),
                sla: Sla {
                    deadline: 1_760_000_000_000 + (r.next() % 86_400_000) as i64,
                    timeout_ms: 30_000 + (r.next() % 600_000) as i64,
                    max_retries: 3,
                },
                qos: QoS {
                    delivery_mode: r
                        .pick(&[DeliveryMode::AT_LEAST_ONCE, DeliveryMode::EXACTLY_ONCE]),
                    consistency: Consistency::STRONG,
                    durability: Durability::PERSISTENT,
                },
                parameters,
                required_capabilities: vec!["k8s".to_string()],
                security_level: SecurityLevel::INTERNAL,
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

/// One measured benchmark case.
#[derive(Debug, Clone, Serialize)]
pub struct CodecBenchRow {
    /// Codec under test, e.g. `ours`, `serde_avro_fast`.
    pub codec: String,
    /// Operation, e.g. `encode`, `decode (identity)`.
    pub op: String,
    /// Records processed per second on one core.
    pub records_per_sec: f64,
    /// Average encoded size of one record in bytes.
    pub bytes_per_record: f64,
}

fn measure(duration: Duration, mut one_pass: impl FnMut() -> usize) -> f64 {
    // Warm up caches and allocator before timing.
    one_pass();
    let start = Instant::now();
    let mut records = 0usize;
    while start.elapsed() < duration {
        records += one_pass();
    }
    records as f64 / start.elapsed().as_secs_f64()
}

fn row(codec: &str, op: &str, rps: f64, bytes: f64) -> CodecBenchRow {
    CodecBenchRow {
        codec: codec.into(),
        op: op.into(),
        records_per_sec: rps,
        bytes_per_record: bytes,
    }
}

/// Runs every benchmark case for about `duration_per_case` and returns the
/// rows. Cases whose codec fails on the fixture are reported with 0 records/s
/// rather than aborting the run.
pub fn run_codec_bench(duration_per_case: Duration) -> Vec<CodecBenchRow> {
    let tickets = sample_tickets(256);
    let mut rows = Vec::new();
    let Ok(schema) = Schema::parse_str(EXECUTION_TICKET_SCHEMA) else {
        return rows;
    };
    let Ok(v2) = Schema::parse_str(&execution_ticket_reader_schema_v2()) else {
        return rows;
    };
    let (Ok(enc), Ok(ident), Ok(resolving)) = (
        EncodePlan::new(&schema),
        DecodePlan::identity(&schema),
        DecodePlan::new(&schema, &v2),
    ) else {
        return rows;
    };

    let mut encoded: Vec<Vec<u8>> = Vec::with_capacity(tickets.len());
    for t in &tickets {
        let mut out = Vec::new();
        if enc.encode(t, &mut out).is_err() {
            return rows;
        }
        encoded.push(out);
    }
    let avro_bytes = encoded.iter().map(Vec::len).sum::<usize>() as f64 / tickets.len() as f64;
    let json: Vec<Vec<u8>> = tickets
        .iter()
        .filter_map(|t| serde_json::to_vec(t).ok())
        .collect();
    let json_bytes = json.iter().map(Vec::len).sum::<usize>() as f64 / json.len().max(1) as f64;

    let mut buf = Vec::with_capacity(1024);
    rows.push(row(
        "ours",
        "encode",
        measure(duration_per_case, || {
            let mut n = 0;
            for t in &tickets {
                buf.clear();
                n += enc.encode(t, &mut buf).is_ok() as usize;
                black_box(&buf);
            }
            n
        }),
        avro_bytes,
    ));
    rows.push(row(
        "ours",
        "decode (identity)",
        measure(duration_per_case, || {
            encoded
                .iter()
                .filter(|b| black_box(ident.decode::<ExecutionTicket>(b)).is_ok())
                .count()
        }),
        avro_bytes,
    ));
    rows.push(row(
        "ours",
        "decode (resolving +1 field)",
        measure(duration_per_case, || {
            encoded
                .iter()
                .filter(|b| black_box(resolving.decode::<ExecutionTicket>(b)).is_ok())
                .count()
        }),
        avro_bytes,
    ));

    if let Ok(fast_schema) = EXECUTION_TICKET_SCHEMA.parse::<serde_avro_fast::Schema>() {
        let mut config = serde_avro_fast::ser::SerializerConfig::new(&fast_schema);
        let mut fbuf = Vec::with_capacity(1024);
        rows.push(row(
            "serde_avro_fast",
            "encode",
            measure(duration_per_case, || {
                let mut n = 0;
                for t in &tickets {
                    fbuf.clear();
                    match serde_avro_fast::to_datum(t, std::mem::take(&mut fbuf), &mut config) {
                        Ok(b) => {
                            fbuf = b;
                            n += 1;
                        }
                        Err(_) => fbuf = Vec::with_capacity(1024),
                    }
                    black_box(&fbuf);
                }
                n
            }),
            avro_bytes,
        ));
        rows.push(row(
            "serde_avro_fast",
            "decode",
            measure(duration_per_case, || {
                encoded
                    .iter()
                    .filter(|b| {
                        black_box(serde_avro_fast::from_datum_slice::<ExecutionTicket>(
                            b,
                            &fast_schema,
                        ))
                        .is_ok()
                    })
                    .count()
            }),
            avro_bytes,
        ));
    }

    let inner = schema.inner();
    rows.push(row(
        "apache-avro (Value)",
        "encode",
        measure(duration_per_case, || {
            let mut n = 0;
            for t in &tickets {
                if let Ok(v) = apache_avro::to_value(t)
                    && let Ok(b) = apache_avro::to_avro_datum(inner, v)
                {
                    black_box(b);
                    n += 1;
                }
            }
            n
        }),
        avro_bytes,
    ));
    rows.push(row(
        "apache-avro (Value)",
        "decode",
        measure(duration_per_case, || {
            let mut n = 0;
            for b in &encoded {
                if let Ok(v) = apache_avro::from_avro_datum(inner, &mut b.as_slice(), None)
                    && let Ok(t) = apache_avro::from_value::<ExecutionTicket>(&v)
                {
                    black_box(t);
                    n += 1;
                }
            }
            n
        }),
        avro_bytes,
    ));

    let mut jbuf = Vec::with_capacity(2048);
    rows.push(row(
        "serde_json",
        "encode",
        measure(duration_per_case, || {
            let mut n = 0;
            for t in &tickets {
                jbuf.clear();
                n += serde_json::to_writer(&mut jbuf, t).is_ok() as usize;
                black_box(&jbuf);
            }
            n
        }),
        json_bytes,
    ));
    rows.push(row(
        "serde_json",
        "decode",
        measure(duration_per_case, || {
            json.iter()
                .filter(|b| black_box(serde_json::from_slice::<ExecutionTicket>(b)).is_ok())
                .count()
        }),
        json_bytes,
    ));
    rows
}

/// Renders rows as a fixed-width text table, with each row's throughput
/// relative to serde_avro_fast for the same operation kind.
pub fn format_table(rows: &[CodecBenchRow]) -> String {
    let base = |op: &str| {
        let kind = if op.starts_with("encode") {
            "encode"
        } else {
            "decode"
        };
        rows.iter()
            .find(|r| r.codec == "serde_avro_fast" && r.op == kind)
            .map(|r| r.records_per_sec)
    };
    let mut s = format!(
        "{:<22} {:<28} {:>14} {:>10} {:>12}\n",
        "codec", "op", "records/s", "bytes/rec", "vs fast"
    );
    for r in rows {
        let rel = base(&r.op)
            .filter(|b| *b > 0.0)
            .map(|b| format!("{:.2}x", r.records_per_sec / b))
            .unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "{:<22} {:<28} {:>14.0} {:>10.1} {:>12}\n",
            r.codec, r.op, r.records_per_sec, r.bytes_per_record, rel
        ));
    }
    s
}
