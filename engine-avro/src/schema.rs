//! The [`Schema`] newtype: parsing (with the field-level `logicalType`
//! policy), Parsing Canonical Form, fingerprints, and named-type lookup shared
//! by the plan compilers.

use std::collections::HashMap;

use apache_avro::schema::{Name, ResolvedSchema, Schema as AvroSchema};

use super::error::{AvroError, Result};

/// A parsed Avro schema plus the original JSON text it came from.
///
/// Field-level `logicalType` attributes (e.g.
/// `{"name":"deadline","type":"long","logicalType":"timestamp-millis"}`) are
/// ignored by the Avro spec; apache-avro 0.21 however applies them to the
/// field's primitive type, which would change the decoded value shape. We strip
/// them before parsing so such fields are plain `long`s (identical wire
/// format), and remember them so the engine can warn once via
/// [`Schema::misplaced_logical_types`].
#[derive(Debug, Clone)]
pub struct Schema {
    inner: AvroSchema,
    json: String,
    misplaced: Vec<String>,
}

impl Schema {
    /// Parses an Avro schema from its JSON text.
    pub fn parse_str(text: &str) -> Result<Schema> {
        let mut raw: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| AvroError::Schema(format!("schema is not valid JSON: {e}")))?;
        let mut misplaced = Vec::new();
        strip_field_logical_types(&mut raw, "", &mut misplaced);
        let inner = AvroSchema::parse(&raw)?;
        // Building the name table up front rejects dangling references once,
        // here, instead of at plan-compile time.
        ResolvedSchema::try_from(&inner)?;
        Ok(Schema {
            inner,
            json: text.to_string(),
            misplaced,
        })
    }

    /// Wraps an already parsed apache-avro schema.
    pub fn from_avro(inner: AvroSchema) -> Result<Schema> {
        ResolvedSchema::try_from(&inner)?;
        let json = serde_json::to_string(&inner)
            .map_err(|e| AvroError::Schema(format!("cannot render schema as JSON: {e}")))?;
        Ok(Schema {
            inner,
            json,
            misplaced: Vec::new(),
        })
    }

    /// The underlying apache-avro schema.
    pub fn inner(&self) -> &AvroSchema {
        &self.inner
    }

    /// Avro Parsing Canonical Form of the schema.
    pub fn canonical_form(&self) -> String {
        self.inner.canonical_form()
    }

    /// The CRC-64-AVRO (Rabin) fingerprint of the Parsing Canonical Form, as
    /// used by Avro single-object encoding (little-endian bytes read as i64).
    pub fn fingerprint_rabin(&self) -> i64 {
        let fp = self.inner.fingerprint::<apache_avro::rabin::Rabin>();
        let mut b = [0u8; 8];
        // Rabin always yields 8 bytes; copy defensively so a change there
        // cannot panic here.
        let n = fp.bytes.len().min(8);
        b[..n].copy_from_slice(&fp.bytes[..n]);
        i64::from_le_bytes(b)
    }

    /// The schema JSON as originally supplied: what other producers register,
    /// so registering it yields the same subject version.
    pub fn schema_json(&self) -> String {
        self.json.clone()
    }

    /// Field-level `logicalType` attributes that were ignored, as
    /// `"<field path>: <logicalType>"` (e.g. `"sla.deadline: timestamp-millis"`).
    pub fn misplaced_logical_types(&self) -> Vec<String> {
        self.misplaced.clone()
    }
}

fn strip_field_logical_types(v: &mut serde_json::Value, path: &str, found: &mut Vec<String>) {
    match v {
        serde_json::Value::Array(items) => {
            for item in items {
                strip_field_logical_types(item, path, found);
            }
        }
        serde_json::Value::Object(obj) => {
            if let Some(serde_json::Value::Array(fields)) = obj.get_mut("fields") {
                for field in fields {
                    let serde_json::Value::Object(f) = field else {
                        continue;
                    };
                    let name = f.get("name").and_then(|n| n.as_str()).unwrap_or("?");
                    let fpath = if path.is_empty() {
                        name.to_string()
                    } else {
                        format!("{path}.{name}")
                    };
                    if let Some(lt) = f.remove("logicalType") {
                        let lt = lt
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| lt.to_string());
                        found.push(format!("{fpath}: {lt}"));
                    }
                    if let Some(t) = f.get_mut("type") {
                        strip_field_logical_types(t, &fpath, found);
                    }
                }
            }
            if let Some(items) = obj.get_mut("items") {
                strip_field_logical_types(items, &format!("{path}[]"), found);
            }
            if let Some(values) = obj.get_mut("values") {
                strip_field_logical_types(values, &format!("{path}{{}}"), found);
            }
        }
        _ => {}
    }
}

/// Named-type table used to follow `Schema::Ref`s while compiling plans.
pub(crate) struct Names<'s> {
    map: HashMap<Name, &'s AvroSchema>,
}

impl<'s> Names<'s> {
    pub(crate) fn new(schema: &'s AvroSchema) -> Result<Names<'s>> {
        let resolved = ResolvedSchema::try_from(schema)?;
        let map = resolved
            .get_names()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        Ok(Names { map })
    }

    /// Follows references until a concrete schema is reached.
    pub(crate) fn deref(&self, mut s: &'s AvroSchema) -> Result<&'s AvroSchema> {
        // A chain of refs longer than the table must be cyclic.
        for _ in 0..=self.map.len() {
            match s {
                AvroSchema::Ref { name } => {
                    s = self.map.get(name).copied().ok_or_else(|| {
                        AvroError::Schema(format!("unknown named type {}", name.fullname(None)))
                    })?;
                }
                other => return Ok(other),
            }
        }
        Err(AvroError::Schema("cyclic schema reference".into()))
    }
}

/// Full name of a named schema (record, enum, fixed and logical types on fixed).
pub(crate) fn full_name(s: &AvroSchema) -> Option<String> {
    s.name().map(|n| n.fullname(None))
}

/// Human readable type label used in error messages.
pub(crate) fn type_label(s: &AvroSchema) -> String {
    match s {
        AvroSchema::Null => "null".into(),
        AvroSchema::Boolean => "boolean".into(),
        AvroSchema::Int => "int".into(),
        AvroSchema::Long => "long".into(),
        AvroSchema::Float => "float".into(),
        AvroSchema::Double => "double".into(),
        AvroSchema::Bytes => "bytes".into(),
        AvroSchema::String => "string".into(),
        AvroSchema::Array(_) => "array".into(),
        AvroSchema::Map(_) => "map".into(),
        AvroSchema::Union(_) => "union".into(),
        AvroSchema::Record(r) => format!("record {}", r.name.fullname(None)),
        AvroSchema::Enum(e) => format!("enum {}", e.name.fullname(None)),
        AvroSchema::Fixed(f) => format!("fixed {}", f.name.fullname(None)),
        AvroSchema::Ref { name } => name.fullname(None),
        AvroSchema::Decimal(_) => "decimal".into(),
        AvroSchema::BigDecimal => "big-decimal".into(),
        AvroSchema::Uuid => "uuid".into(),
        AvroSchema::Date => "date".into(),
        AvroSchema::TimeMillis => "time-millis".into(),
        AvroSchema::TimeMicros => "time-micros".into(),
        AvroSchema::TimestampMillis => "timestamp-millis".into(),
        AvroSchema::TimestampMicros => "timestamp-micros".into(),
        AvroSchema::TimestampNanos => "timestamp-nanos".into(),
        AvroSchema::LocalTimestampMillis => "local-timestamp-millis".into(),
        AvroSchema::LocalTimestampMicros => "local-timestamp-micros".into(),
        AvroSchema::LocalTimestampNanos => "local-timestamp-nanos".into(),
        AvroSchema::Duration => "duration".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICKET: &str = include_str!("../../schemas/execution-ticket/execution-ticket.avsc");

    #[test]
    fn field_level_logical_types_are_reported_and_ignored() {
        let s = Schema::parse_str(TICKET).unwrap();
        let m = s.misplaced_logical_types();
        assert!(
            m.contains(&"sla.deadline: timestamp-millis".to_string()),
            "{m:?}"
        );
        assert!(
            m.contains(&"created_at: timestamp-millis".to_string()),
            "{m:?}"
        );
        assert!(
            m.contains(&"started_at: timestamp-millis".to_string()),
            "{m:?}"
        );
        // The field is a plain long, not apache-avro's TimestampMillis.
        let AvroSchema::Record(r) = s.inner() else {
            panic!("not a record")
        };
        let created = &r.fields[r.lookup["created_at"]];
        assert!(
            matches!(created.schema, AvroSchema::Long),
            "{:?}",
            created.schema
        );
        assert!(s.schema_json().contains("\"logicalType\""));
    }

    #[test]
    fn canonical_form_and_fingerprint() {
        let s = Schema::parse_str(r#"{"type":"record","name":"test","fields":[{"name":"a","type":"long","default":42},{"name":"b","type":"string"}]}"#).unwrap();
        assert_eq!(
            s.canonical_form(),
            r#"{"name":"test","type":"record","fields":[{"name":"a","type":"long"},{"name":"b","type":"string"}]}"#
        );
        let direct = apache_avro::Schema::parse_str(&s.canonical_form()).unwrap();
        let fp = direct.fingerprint::<apache_avro::rabin::Rabin>();
        assert_eq!(s.fingerprint_rabin().to_le_bytes().to_vec(), fp.bytes);
        assert_ne!(s.fingerprint_rabin(), 0);
    }

    #[test]
    fn bad_schemas_are_errors() {
        assert!(Schema::parse_str("{").is_err());
        assert!(
            Schema::parse_str(
                r#"{"type":"record","name":"a","fields":[{"name":"x","type":"Nope"}]}"#
            )
            .is_err()
        );
    }
}
