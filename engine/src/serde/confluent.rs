//! Avro in the Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro
//! binary) backed by a schema registry, with the migration behaviour of the JSON-to-Avro
//! guide:
//!
//! - **Reading both formats.** Magic byte 0 is Avro, decoded with the writer schema
//!   fetched by id (cached) and resolved against the topology's schema; `{` is legacy
//!   JSON; anything else is an error for the error policy.
//! - **Validation before sending.** A value that does not fit the schema is refused with
//!   the failing field's path; no bytes are written.
//! - **Fallback at start-up.** When the registry does not answer at start-up
//!   ([`Serde::prepare`]), a serializer with `fallback = json` writes JSON and says so
//!   loudly (a WARN line, the `fallback_records` counter and a degraded health flag);
//!   with `fallback = fail` the topology refuses to start.
//! - **Registry down mid-run.** Cached schemas keep working; an unknown writer id is
//!   retried with backoff by the client, then becomes a deserialization error.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::executor::block_off_executor;
use crate::registry::{SchemaRegistry, VersionRef};

use super::avro::{AvroError, DecodePlan, EncodePlan, Schema};
use super::{Result, Serde, SerdeError, SerdeInfo, SerdeRole, Written};

/// Confluent's magic byte in front of every Avro record.
pub const MAGIC_BYTE: u8 = 0;

/// How a subject is named from the topic and the record (Confluent's strategies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectNameStrategy {
    /// `<topic>-key` / `<topic>-value` (the default).
    #[default]
    TopicName,
    /// The record's full name.
    RecordName,
    /// `<topic>-<record full name>`.
    TopicRecordName,
}

/// What a serializer does when the registry does not answer at start-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Write JSON, loudly (the migration guide's choice).
    #[default]
    Json,
    /// Refuse to start.
    Fail,
}

/// Settings of the Avro serdes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AvroSettings {
    /// Subject naming.
    pub subject_name_strategy: SubjectNameStrategy,
    /// Register the schema on first use (`auto.register.schemas`).
    pub auto_register: bool,
    /// Write with the subject's latest schema instead of the topology's
    /// (`use.latest.version`).
    pub use_latest_version: bool,
    /// Behaviour when the registry is down at start-up.
    pub fallback: Fallback,
}

impl Default for AvroSettings {
    fn default() -> Self {
        AvroSettings {
            subject_name_strategy: SubjectNameStrategy::TopicName,
            auto_register: true,
            use_latest_version: false,
            fallback: Fallback::Json,
        }
    }
}

/// Shared state of the registry as the serdes of a process see it: whether any of them
/// fell back to JSON, and how many records were written that way.
#[derive(Debug, Default)]
pub struct RegistryHealth {
    fallback_active: AtomicBool,
    fallback_records: AtomicU64,
    unknown_schema_errors: AtomicU64,
}

impl RegistryHealth {
    /// True when some serializer writes JSON because the registry was down at start-up.
    pub fn degraded(&self) -> bool {
        self.fallback_active.load(Ordering::Relaxed)
    }
    /// Records written as JSON because of the fallback.
    pub fn fallback_records(&self) -> u64 {
        self.fallback_records.load(Ordering::Relaxed)
    }
    /// Records whose writer schema could not be fetched.
    pub fn unknown_schema_errors(&self) -> u64 {
        self.unknown_schema_errors.load(Ordering::Relaxed)
    }
}

/// What a topology's build function needs to create Avro serdes: the registry (if one is
/// configured), the settings, and the shared health.
#[derive(Clone, Debug, Default)]
pub struct AvroContext {
    /// The registry; `None` when no URL is configured (serializers then fall back).
    pub registry: Option<SchemaRegistry>,
    /// Settings for every Avro serde built from this context.
    pub settings: AvroSettings,
    /// Shared health.
    pub health: Arc<RegistryHealth>,
    /// Schema notices already logged by serdes of this context (each once).
    pub notices: SchemaNotices,
}

impl AvroContext {
    /// An Avro serde for values of type `T` with the schema in `schema` (JSON text).
    /// What the schema's author could fix (a `logicalType` Avro ignores) is logged as a
    /// warning, once per schema and field for the whole context.
    pub fn value_serde<T>(&self, schema: &str) -> std::result::Result<AvroSerde<T>, AvroError> {
        AvroSerde::new(self, schema, false, SchemaOrigin::Authored)
    }

    /// An Avro serde for keys.
    pub fn key_serde<T>(&self, schema: &str) -> std::result::Result<AvroSerde<T>, AvroError> {
        AvroSerde::new(self, schema, true, SchemaOrigin::Authored)
    }

    /// An Avro value serde for a published contract whose shape this program does not
    /// own (a schema another team registers): its notices are logged at INFO, since
    /// nobody here can act on them.
    pub fn contract_value_serde<T>(
        &self,
        schema: &str,
    ) -> std::result::Result<AvroSerde<T>, AvroError> {
        AvroSerde::new(self, schema, false, SchemaOrigin::Contract)
    }
}

/// Who owns a schema, which decides how loudly its notices are logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchemaOrigin {
    /// Written with the topology: notices are warnings.
    Authored,
    /// A published contract the topology must follow as it is: notices are INFO.
    Contract,
}

/// The `(schema, notice)` pairs already logged: every serde built from one
/// [`AvroContext`] (one per process in the `engine` command) says each notice once.
#[derive(Clone, Debug, Default)]
pub struct SchemaNotices(Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>);

impl SchemaNotices {
    /// True the first time `(schema, notice)` is seen.
    fn first(&self, schema: &str, notice: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((schema.to_string(), notice.to_string()))
    }
}

struct Writer {
    id: i32,
    plan: EncodePlan,
}

/// Avro values of type `T` (serde-derived structs, or `serde_json::Value` for generic
/// records) in the Confluent wire format; reads legacy JSON too.
pub struct AvroSerde<T> {
    schema: Arc<Schema>,
    schema_text: Arc<str>,
    record_name: String,
    context: AvroContext,
    is_key: bool,
    json_fallback: AtomicBool,
    writers: RwLock<HashMap<String, Arc<Writer>>>,
    readers: RwLock<HashMap<i32, Arc<DecodePlan>>>,
    _type: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for AvroSerde<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroSerde")
            .field("record", &self.record_name)
            .field("is_key", &self.is_key)
            .finish()
    }
}

fn read_lock<V>(lock: &RwLock<V>) -> std::sync::RwLockReadGuard<'_, V> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write_lock<V>(lock: &RwLock<V>) -> std::sync::RwLockWriteGuard<'_, V> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl<T> AvroSerde<T> {
    /// A serde for `schema` (Avro schema JSON) using `context`'s registry and settings.
    pub fn new(
        context: &AvroContext,
        schema: &str,
        is_key: bool,
        origin: SchemaOrigin,
    ) -> std::result::Result<Self, AvroError> {
        let parsed = Schema::parse_str(schema)?;
        let record_name = match parsed.inner() {
            apache_avro::Schema::Record(r) => r.name.fullname(None),
            other => format!("{other:?}").chars().take(32).collect(),
        };
        for misplaced in parsed.misplaced_logical_types() {
            if !context.notices.first(&record_name, &misplaced) {
                continue;
            }
            const NOTICE: &str = "logicalType on a field, not on its type: Avro ignores it there, so the field keeps its underlying type (move it into the type to make it a logical type)";
            match origin {
                SchemaOrigin::Authored => {
                    tracing::warn!(schema = %record_name, field = %misplaced, "{NOTICE}")
                }
                SchemaOrigin::Contract => {
                    tracing::info!(schema = %record_name, field = %misplaced, "{NOTICE}")
                }
            }
        }
        Ok(AvroSerde {
            schema_text: Arc::from(parsed.schema_json()),
            schema: Arc::new(parsed),
            record_name,
            context: context.clone(),
            is_key,
            json_fallback: AtomicBool::new(false),
            writers: RwLock::new(HashMap::new()),
            readers: RwLock::new(HashMap::new()),
            _type: PhantomData,
        })
    }

    /// The subject this serde uses for `topic`.
    pub fn subject(&self, topic: &str) -> String {
        let suffix = if self.is_key { "key" } else { "value" };
        match self.context.settings.subject_name_strategy {
            SubjectNameStrategy::TopicName => format!("{topic}-{suffix}"),
            SubjectNameStrategy::RecordName => self.record_name.clone(),
            SubjectNameStrategy::TopicRecordName => format!("{topic}-{}", self.record_name),
        }
    }

    /// True once this serializer fell back to JSON.
    pub fn is_json_fallback(&self) -> bool {
        self.json_fallback.load(Ordering::Relaxed)
    }

    fn registry(&self) -> Result<&SchemaRegistry> {
        self.context.registry.as_ref().ok_or_else(|| SerdeError::Unserializable {
            field: None,
            reason: "no schema registry is configured: set KAFKA_SCHEMA_REGISTRY_URL or --schema-registry-url".into(),
        })
    }

    /// The schema id and encode plan for `topic`, resolved once through the registry.
    fn writer(&self, topic: &str) -> Result<Arc<Writer>> {
        if let Some(w) = read_lock(&self.writers).get(topic) {
            return Ok(w.clone());
        }
        let registry = self.registry()?;
        let subject = self.subject(topic);
        let settings = &self.context.settings;
        let failed = |e: crate::registry::RegistryError| SerdeError::Unserializable {
            field: None,
            reason: format!("schema registry, subject `{subject}`: {e}"),
        };
        let writer = block_off_executor(|| -> Result<Writer> {
            if settings.use_latest_version {
                let latest = registry
                    .version(&subject, VersionRef::Latest)
                    .map_err(failed)?;
                let schema = Schema::parse_str(&latest.schema).map_err(avro_to_serde_write)?;
                let plan = EncodePlan::new(&schema).map_err(avro_to_serde_write)?;
                Ok(Writer {
                    id: latest.id,
                    plan,
                })
            } else {
                let id = if settings.auto_register {
                    registry
                        .register(&subject, &self.schema_text)
                        .map_err(failed)?
                } else {
                    registry
                        .lookup(&subject, &self.schema_text)
                        .map_err(failed)?
                        .map(|v| v.id)
                        .ok_or_else(|| SerdeError::Unserializable {
                            field: None,
                            reason: format!("the schema is not registered under subject `{subject}` and auto_register is off: register it with `engine schema register {subject} FILE`"),
                        })?
                };
                let plan = EncodePlan::new(&self.schema).map_err(avro_to_serde_write)?;
                Ok(Writer { id, plan })
            }
        })?;
        let writer = Arc::new(writer);
        write_lock(&self.writers).insert(topic.to_string(), writer.clone());
        Ok(writer)
    }

    /// The decode plan from writer schema `id` to this serde's schema.
    fn reader(&self, id: i32) -> Result<Arc<DecodePlan>> {
        if let Some(plan) = read_lock(&self.readers).get(&id) {
            return Ok(plan.clone());
        }
        let registry = self.registry().map_err(|_| SerdeError::InvalidData {
            field: None,
            reason: format!("Avro record with schema id {id} but no schema registry is configured"),
        })?;
        let text = block_off_executor(|| registry.schema_by_id(id)).map_err(|e| {
            self.context
                .health
                .unknown_schema_errors
                .fetch_add(1, Ordering::Relaxed);
            SerdeError::InvalidData {
                field: None,
                reason: format!("writer schema id {id} could not be fetched: {e}"),
            }
        })?;
        let writer = Schema::parse_str(&text).map_err(|e| SerdeError::InvalidData {
            field: None,
            reason: format!("writer schema id {id} does not parse: {e}"),
        })?;
        let plan = DecodePlan::new(&writer, &self.schema).map_err(|e| SerdeError::InvalidData {
            field: e.path().map(String::from),
            reason: format!(
                "writer schema id {id} cannot be read with this topology's schema: {e}"
            ),
        })?;
        let plan = Arc::new(plan);
        write_lock(&self.readers).insert(id, plan.clone());
        Ok(plan)
    }
}

fn avro_to_serde_write(e: AvroError) -> SerdeError {
    SerdeError::Unserializable {
        field: e.path().map(String::from),
        reason: e.to_string(),
    }
}

impl<T: Serialize + DeserializeOwned + 'static> Serde<T> for AvroSerde<T> {
    fn serialize(&self, topic: &str, value: &T, out: &mut Vec<u8>) -> Result<Written> {
        if self.is_json_fallback() {
            self.context
                .health
                .fallback_records
                .fetch_add(1, Ordering::Relaxed);
            return super::JsonSerde::<T>::new().serialize(topic, value, out);
        }
        let writer = self.writer(topic)?;
        let start = out.len();
        out.push(MAGIC_BYTE);
        out.extend_from_slice(&writer.id.to_be_bytes());
        if let Err(e) = writer.plan.encode(value, out) {
            out.truncate(start);
            return Err(avro_to_serde_write(e));
        }
        Ok(Written::Bytes)
    }

    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<T> {
        let data = data.ok_or(SerdeError::UnexpectedNull)?;
        match data {
            [MAGIC_BYTE, a, b, c, d, body @ ..] => {
                let id = i32::from_be_bytes([*a, *b, *c, *d]);
                let plan = self.reader(id)?;
                plan.decode::<T>(body).map_err(|e| SerdeError::InvalidData {
                    field: e.path().map(String::from),
                    reason: format!("Avro (schema id {id}): {e}"),
                })
            }
            [b'{', ..] => super::JsonSerde::<T>::new().deserialize(topic, Some(data)),
            [first, ..] => Err(SerdeError::InvalidData {
                field: None,
                reason: format!(
                    "neither Confluent Avro (magic byte 0 and a 4-byte schema id) nor JSON (`{{`): first byte 0x{first:02x}, {} bytes",
                    data.len()
                ),
            }),
            [] => Err(SerdeError::InvalidData {
                field: None,
                reason: "empty payload: neither Avro nor JSON".into(),
            }),
        }
    }

    fn prepare(&self, topic: &str, role: SerdeRole) -> Result<()> {
        if role == SerdeRole::Read {
            return Ok(());
        }
        let reachable = match &self.context.registry {
            None => Err("no schema registry is configured".to_string()),
            Some(r) => block_off_executor(|| r.ping()).map_err(|e| e.to_string()),
        };
        match reachable {
            Ok(()) => self.writer(topic).map(|_| ()),
            Err(reason) => match self.context.settings.fallback {
                Fallback::Json => {
                    self.json_fallback.store(true, Ordering::Relaxed);
                    self.context
                        .health
                        .fallback_active
                        .store(true, Ordering::Relaxed);
                    tracing::warn!(
                        topic,
                        subject = %self.subject(topic),
                        %reason,
                        "schema registry not answering at start-up: writing JSON without schema validation (fallback = json); health is degraded"
                    );
                    Ok(())
                }
                Fallback::Fail => Err(SerdeError::Unserializable {
                    field: None,
                    reason: format!(
                        "schema registry not answering at start-up ({reason}) and fallback = fail: start the registry, fix KAFKA_SCHEMA_REGISTRY_URL, or set [schema_registry] fallback = \"json\""
                    ),
                }),
            },
        }
    }

    fn to_json(&self, value: &T) -> Option<serde_json::Value> {
        serde_json::to_value(value).ok()
    }

    fn parse(&self, text: &str) -> Option<T> {
        super::JsonSerde::<T>::new().parse(text)
    }

    fn info(&self) -> SerdeInfo {
        SerdeInfo {
            format: format!("avro({})", self.record_name),
            type_name: std::any::type_name::<T>(),
        }
    }
}
