//! `engine schema`, `engine produce` and `engine consume`: the registry and the topics
//! from the command line, the equivalent of `kcat -s avro` and the registry's REST calls.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::{Args, Subcommand, ValueEnum};
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};

use crate::config::EngineConfig;
use crate::registry::{SchemaRegistry, VersionRef};
use crate::serde::avro::{
    DecodePlan, EncodePlan, Schema, encode_value, json_to_value, value_to_json,
};
use crate::serde::{AvroContext, MAGIC_BYTE};

use super::{Failure, runtime, usage};

/// `engine schema ...`
#[derive(Subcommand, Debug)]
pub enum SchemaCommand {
    /// Register an .avsc file under a subject; prints the schema id.
    Register {
        /// Subject, e.g. `execution.tickets-value`.
        subject: String,
        /// Avro schema file.
        file: PathBuf,
    },
    /// Print a schema: a subject's latest (or --version N), or --id ID.
    Get {
        /// Subject (omit with --id).
        subject: Option<String>,
        /// Version of the subject.
        #[arg(long)]
        version: Option<i32>,
        /// Global schema id.
        #[arg(long)]
        id: Option<i32>,
    },
    /// Check whether an .avsc file is compatible with a subject under the subject's
    /// compatibility level, before deploying (exit 1 if not).
    Check {
        /// Subject.
        subject: String,
        /// Avro schema file.
        file: PathBuf,
    },
}

/// How `engine produce` encodes values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ValueFormat {
    /// Confluent Avro with the topic's schema.
    Avro,
    /// The JSON line as it is (legacy format).
    Json,
}

/// `engine produce TOPIC`
#[derive(Args, Debug)]
pub struct ProduceArgs {
    /// Topic to write.
    topic: String,
    /// Schema file; registered under `<topic>-value`. Without it, the subject's latest
    /// schema is used.
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Value format.
    #[arg(long, value_enum, default_value_t = ValueFormat::Avro)]
    format: ValueFormat,
    /// Take each record's key from this top-level JSON field.
    #[arg(long, conflicts_with = "key")]
    key_field: Option<String>,
    /// The same key for every record.
    #[arg(long)]
    key: Option<String>,
}

/// `engine consume TOPIC`
#[derive(Args, Debug)]
pub struct ConsumeArgs {
    /// Topic to read.
    topic: String,
    /// Start at the beginning of the topic instead of its end.
    #[arg(long)]
    from_beginning: bool,
    /// Stop after this many records.
    #[arg(long)]
    max: Option<u64>,
    /// Stop after this long without a record (ms), counted once every partition was
    /// read to its end (before the group assigns partitions, at most 30 s more).
    #[arg(long)]
    idle_timeout_ms: Option<u64>,
}

fn read_schema(path: &PathBuf) -> Result<(String, Schema), Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
    let schema = Schema::parse_str(&text).map_err(|e| {
        usage(format!(
            "{} is not a valid Avro schema: {e}",
            path.display()
        ))
    })?;
    Ok((text, schema))
}

fn registry(avro: &AvroContext) -> Result<&SchemaRegistry, Failure> {
    avro.registry.as_ref().ok_or_else(|| {
        usage(
            "no schema registry configured: set KAFKA_SCHEMA_REGISTRY_URL or --schema-registry-url",
        )
    })
}

fn bootstrap(config: &EngineConfig) -> Result<String, Failure> {
    config.bootstrap_servers.clone().ok_or_else(|| {
        usage("no Kafka broker configured: set KAFKA_BOOTSTRAP_SERVERS or --bootstrap-servers")
    })
}

/// Runs `engine schema ...`.
pub(super) fn schema(
    command: SchemaCommand,
    avro: &AvroContext,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let registry = registry(avro)?;
    let failed = |e: crate::registry::RegistryError| runtime(e.to_string());
    match command {
        SchemaCommand::Register { subject, file } => {
            let (text, _) = read_schema(&file)?;
            let id = registry.register(&subject, &text).map_err(failed)?;
            let _ = writeln!(out, "{id}");
        }
        SchemaCommand::Get {
            subject,
            version,
            id,
        } => match (subject, id) {
            (_, Some(id)) => {
                let text = registry.schema_by_id(id).map_err(failed)?;
                let _ = writeln!(out, "{text}");
            }
            (Some(subject), None) => {
                let v = version.map_or(VersionRef::Latest, VersionRef::Number);
                let found = registry.version(&subject, v).map_err(failed)?;
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::json!({"subject": found.subject, "version": found.version, "id": found.id, "schema": found.schema})
                );
            }
            (None, None) => return Err(usage("give a SUBJECT or --id ID")),
        },
        SchemaCommand::Check { subject, file } => {
            let (text, _) = read_schema(&file)?;
            let level = registry.compatibility(Some(&subject)).map_err(failed)?;
            let report = registry
                .check_compatibility(&subject, &text, VersionRef::Latest)
                .map_err(failed)?;
            if report.is_compatible {
                let _ = writeln!(out, "compatible with `{subject}` under {level}");
            } else {
                return Err(runtime(format!(
                    "{} is NOT compatible with `{subject}` under {level}:\n  {}",
                    file.display(),
                    report.messages.join("\n  ")
                )));
            }
        }
    }
    Ok(())
}

/// Counts acknowledgements and failures of `engine produce`.
#[derive(Default)]
struct Acks {
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Acks {}
impl ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::error!(error = %e, "record not delivered");
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// Runs `engine produce TOPIC`: JSON lines from stdin, one record each.
pub(super) fn produce(
    args: ProduceArgs,
    config: &EngineConfig,
    avro: &AvroContext,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let encoder = match args.format {
        ValueFormat::Json => None,
        ValueFormat::Avro => {
            let registry = registry(avro)?;
            let subject = format!("{}-value", args.topic);
            let failed = |e: crate::registry::RegistryError| runtime(e.to_string());
            let (id, schema) = match &args.schema {
                Some(path) => {
                    let (text, schema) = read_schema(path)?;
                    (registry.register(&subject, &text).map_err(failed)?, schema)
                }
                None => {
                    let latest = registry
                        .version(&subject, VersionRef::Latest)
                        .map_err(|e| {
                            runtime(format!(
                                "{e}; pass --schema FILE to register one, or --format json"
                            ))
                        })?;
                    let schema = Schema::parse_str(&latest.schema)
                        .map_err(|e| runtime(format!("schema of `{subject}`: {e}")))?;
                    (latest.id, schema)
                }
            };
            let plan = EncodePlan::new(&schema).map_err(|e| runtime(e.to_string()))?;
            Some((id, schema, plan))
        }
    };
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", bootstrap(config)?)
        .set("partitioner", "murmur2_random");
    for (k, v) in &config.kafka_properties {
        if let Some(k) = k
            .strip_prefix("producer.")
            .or((!k.starts_with("consumer.")).then_some(k))
        {
            client.set(k, v);
        }
    }
    let producer: BaseProducer<Acks> = client
        .create_with_context(Acks::default())
        .map_err(|e| runtime(format!("producer: {e}")))?;
    let stdin = std::io::stdin();
    let mut sent = 0u64;
    for (number, line) in stdin.lock().lines().enumerate() {
        let line = line.map_err(|e| runtime(format!("reading stdin: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let where_ = || format!("line {}", number + 1);
        let json: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| usage(format!("{} is not JSON: {e}", where_())))?;
        let key = match (&args.key, &args.key_field) {
            (Some(k), _) => Some(k.clone()),
            (None, Some(field)) => match json.get(field) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(other) => Some(other.to_string()),
                None => {
                    return Err(usage(format!(
                        "{} has no field `{field}` for the key",
                        where_()
                    )));
                }
            },
            (None, None) => None,
        };
        let payload = match &encoder {
            None => line.clone().into_bytes(),
            Some((id, schema, plan)) => {
                let value = json_to_value(&json, schema)
                    .map_err(|e| usage(format!("{} does not fit the schema: {e}", where_())))?;
                let mut buf = vec![MAGIC_BYTE];
                buf.extend_from_slice(&id.to_be_bytes());
                encode_value(plan, &value, &mut buf)
                    .map_err(|e| usage(format!("{} does not fit the schema: {e}", where_())))?;
                buf
            }
        };
        let mut record = BaseRecord::to(&args.topic).payload(&payload);
        if let Some(k) = &key {
            record = record.key(k.as_str());
        }
        let mut record = Some(record);
        while let Some(r) = record.take() {
            match producer.send(r) {
                Ok(()) => {}
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    producer.poll(Duration::from_millis(50));
                    record = Some(back);
                }
                Err((e, _)) => return Err(runtime(format!("{}: {e}", where_()))),
            }
        }
        producer.poll(Duration::ZERO);
        sent += 1;
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(|e| runtime(format!("not every record was acknowledged: {e}")))?;
    let acks = producer.context();
    let failed = acks.failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(runtime(format!(
            "{failed} of {sent} records were not delivered"
        )));
    }
    let _ = writeln!(
        out,
        "{} records produced to {}",
        acks.delivered.load(Ordering::Relaxed),
        args.topic
    );
    Ok(())
}

fn text_or_base64(bytes: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => serde_json::Value::from(s),
        Err(_) => {
            serde_json::json!({"base64": base64::engine::general_purpose::STANDARD.encode(bytes)})
        }
    }
}

/// Decodes one value: (format, schema id, JSON value).
fn decode_value(
    registry: Option<&SchemaRegistry>,
    plans: &mut std::collections::HashMap<i32, DecodePlan>,
    payload: Option<&[u8]>,
) -> (String, Option<i32>, serde_json::Value) {
    match payload {
        None => ("null".into(), None, serde_json::Value::Null),
        Some([MAGIC_BYTE, a, b, c, d, body @ ..]) => {
            let id = i32::from_be_bytes([*a, *b, *c, *d]);
            let plan = match plans.entry(id) {
                std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
                std::collections::hash_map::Entry::Vacant(e) => registry
                    .ok_or_else(|| "no schema registry configured".to_string())
                    .and_then(|r| r.schema_by_id(id).map_err(|e| e.to_string()))
                    .and_then(|text| Schema::parse_str(&text).map_err(|e| e.to_string()))
                    .and_then(|s| DecodePlan::identity(&s).map_err(|e| e.to_string()))
                    .map(|p| e.insert(p)),
            };
            match plan.and_then(|p| p.decode_value(body).map_err(|e| e.to_string())) {
                Ok(v) => ("avro".into(), Some(id), value_to_json(&v)),
                Err(error) => (
                    "avro-error".into(),
                    Some(id),
                    serde_json::json!({"error": error}),
                ),
            }
        }
        Some(bytes @ [b'{', ..]) => match serde_json::from_slice(bytes) {
            Ok(v) => ("json".into(), None, v),
            Err(_) => ("bytes".into(), None, text_or_base64(bytes)),
        },
        Some(bytes) => ("bytes".into(), None, text_or_base64(bytes)),
    }
}

/// How long `engine consume --idle-timeout-ms` waits beyond the timeout for the group to
/// assign partitions before it gives up (a missing topic is never assigned).
const UNASSIGNED_WAIT: Duration = Duration::from_secs(30);

/// Runs `engine consume TOPIC`.
pub(super) fn consume(
    args: ConsumeArgs,
    config: &EngineConfig,
    avro: &AvroContext,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap(config)?)
        .set(
            "group.id",
            format!("engine-consume-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        // The end of each partition is reported, so the idle timeout counts from there.
        .set("enable.partition.eof", "true")
        .set(
            "auto.offset.reset",
            if args.from_beginning {
                "earliest"
            } else {
                "latest"
            },
        )
        .create()
        .map_err(|e| runtime(format!("consumer: {e}")))?;
    consumer
        .subscribe(&[&args.topic])
        .map_err(|e| runtime(format!("subscribe to {}: {e}", args.topic)))?;
    let registry = avro.registry.as_ref();
    let mut plans = std::collections::HashMap::new();
    let mut count = 0u64;
    let started = Instant::now();
    // The last record, or the moment every partition was read to its end if later.
    let mut last = Instant::now();
    // Partitions read to their end since their last record.
    let mut at_end = std::collections::HashSet::new();
    let idle = args.idle_timeout_ms.map(Duration::from_millis);
    while args.max.is_none_or(|m| count < m) {
        if let Some(idle) = idle {
            let assigned = consumer.assignment().map_or(0, |a| a.count());
            if assigned == 0 {
                // The group has not assigned partitions yet (or the topic is missing).
                if started.elapsed() >= idle + UNASSIGNED_WAIT {
                    break;
                }
                last = Instant::now();
            } else if at_end.len() < assigned {
                // Still reading what is there: not idle.
                last = Instant::now();
            } else if last.elapsed() >= idle {
                break;
            }
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
            Some(Ok(m)) => {
                last = Instant::now();
                at_end.remove(&m.partition());
                count += 1;
                let (format, schema_id, value) = decode_value(registry, &mut plans, m.payload());
                let line = serde_json::json!({
                    "topic": m.topic(),
                    "partition": m.partition(),
                    "offset": m.offset(),
                    "timestamp": m.timestamp().to_millis(),
                    "key": m.key().map(text_or_base64),
                    "format": format,
                    "schema_id": schema_id,
                    "value": value,
                });
                if writeln!(out, "{line}").is_err() {
                    break;
                }
            }
        }
    }
    let _ = out.flush();
    Ok(())
}
