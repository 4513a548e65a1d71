//! Generic (schema-shaped) values: decoding into and encoding from
//! `apache_avro::types::Value`, and conversion between values and plain JSON
//! (unions as bare values, the way `json.dumps` of a Python dict looks).

use std::collections::HashMap;

use apache_avro::schema::Schema as AvroSchema;
use apache_avro::types::Value;

use super::de::{MAX_DEPTH, next_block, read_branch, read_enum, skip};
use super::enc::{ENode, EncodePlan, node_label};
use super::error::{AvroError, Result};
use super::resolve::{DNode, DecodePlan, Lg, Step, WBranch};
use super::schema::{Names, Schema, type_label};
use super::wire::{
    read_bool, read_bytes, read_f32, read_f64, read_fixed, read_int, read_long, read_str,
    write_bytes, write_long,
};

impl DecodePlan {
    /// Decodes one datum into a generic value shaped like the reader schema
    /// (same shape `apache_avro::from_avro_datum(writer, Some(reader))` gives).
    pub fn decode_value(&self, bytes: &[u8]) -> Result<Value> {
        let mut input = bytes;
        let v = read_value(self, self.root, &mut input, 0)?;
        if !input.is_empty() {
            return Err(AvroError::TrailingBytes { count: input.len() });
        }
        Ok(v)
    }
}

fn with_lg_int(lg: Lg, v: i32) -> Value {
    match lg {
        Lg::Date => Value::Date(v),
        Lg::TimeMillis => Value::TimeMillis(v),
        _ => Value::Int(v),
    }
}

fn with_lg_long(lg: Lg, v: i64) -> Value {
    match lg {
        Lg::TimeMicros => Value::TimeMicros(v),
        Lg::TsMillis => Value::TimestampMillis(v),
        Lg::TsMicros => Value::TimestampMicros(v),
        Lg::TsNanos => Value::TimestampNanos(v),
        Lg::LocalTsMillis => Value::LocalTimestampMillis(v),
        Lg::LocalTsMicros => Value::LocalTimestampMicros(v),
        Lg::LocalTsNanos => Value::LocalTimestampNanos(v),
        _ => Value::Long(v),
    }
}

fn with_lg_bytes(lg: Lg, b: &[u8]) -> Result<Value> {
    Ok(match lg {
        Lg::Decimal => Value::Decimal(apache_avro::Decimal::from(b)),
        Lg::BigDecimal => {
            // apache-avro keeps its big-decimal codec private; round-trip
            // through it rather than re-implementing the format.
            let mut buf = Vec::with_capacity(b.len() + 10);
            write_bytes(&mut buf, b);
            apache_avro::from_avro_datum(&AvroSchema::BigDecimal, &mut buf.as_slice(), None)
                .map_err(|e| AvroError::decode(format!("invalid big-decimal: {e}")))?
        }
        _ => Value::Bytes(b.to_vec()),
    })
}

fn with_lg_str(lg: Lg, s: &str) -> Result<Value> {
    Ok(match lg {
        Lg::Uuid => Value::String(s.to_string())
            .resolve(&AvroSchema::Uuid)
            .map_err(|e| AvroError::decode(format!("invalid uuid `{s}`: {e}")))?,
        _ => Value::String(s.to_string()),
    })
}

fn with_lg_fixed(lg: Lg, b: &[u8]) -> Value {
    match lg {
        Lg::Decimal => Value::Decimal(apache_avro::Decimal::from(b)),
        Lg::Duration => {
            let mut a = [0u8; 12];
            if b.len() == 12 {
                a.copy_from_slice(b);
            }
            Value::Duration(apache_avro::Duration::from(a))
        }
        _ => Value::Fixed(b.len(), b.to_vec()),
    }
}

fn read_value(plan: &DecodePlan, node: usize, input: &mut &[u8], depth: u32) -> Result<Value> {
    if depth >= MAX_DEPTH {
        return Err(AvroError::decode(format!(
            "nesting deeper than {MAX_DEPTH} levels"
        )));
    }
    Ok(match &plan.nodes[node] {
        DNode::Null | DNode::Pending => Value::Null,
        DNode::Boolean => Value::Boolean(read_bool(input)?),
        DNode::Int(lg) => with_lg_int(*lg, read_int(input)?),
        DNode::Long(lg) => with_lg_long(*lg, read_long(input)?),
        DNode::IntToLong(lg) => with_lg_long(*lg, read_int(input)? as i64),
        DNode::IntToFloat => Value::Float(read_int(input)? as f32),
        DNode::IntToDouble => Value::Double(read_int(input)? as f64),
        DNode::LongToFloat => Value::Float(read_long(input)? as f32),
        DNode::LongToDouble => Value::Double(read_long(input)? as f64),
        DNode::Float => Value::Float(read_f32(input)?),
        DNode::FloatToDouble => Value::Double(read_f32(input)? as f64),
        DNode::Double => Value::Double(read_f64(input)?),
        DNode::Bytes(lg) | DNode::StringToBytes(lg) => with_lg_bytes(*lg, read_bytes(input)?)?,
        DNode::String(lg) | DNode::BytesToString(lg) => with_lg_str(*lg, read_str(input)?)?,
        DNode::Fixed { size, lg } => with_lg_fixed(*lg, read_fixed(input, *size, "fixed")?),
        DNode::Enum(e) => {
            let i = read_enum(e, input)?;
            Value::Enum(i as u32, e.symbols[i].to_string())
        }
        DNode::Array(item) => {
            let nz = plan.nonzero_width[*item];
            let mut zt = 0;
            let mut items = Vec::new();
            loop {
                let n = next_block(input, nz, &mut zt)?;
                if n == 0 {
                    break;
                }
                items.reserve(n.min(input.len() + 1));
                for _ in 0..n {
                    let i = items.len();
                    items.push(
                        read_value(plan, *item, input, depth + 1).map_err(|e| e.at_index(i))?,
                    );
                }
            }
            Value::Array(items)
        }
        DNode::Map(values) => {
            let mut zt = 0;
            let mut map = HashMap::new();
            loop {
                let n = next_block(input, true, &mut zt)?;
                if n == 0 {
                    break;
                }
                map.reserve(n.min(input.len() + 1));
                for _ in 0..n {
                    let k = read_str(input)?;
                    let v = read_value(plan, *values, input, depth + 1).map_err(|e| e.at_key(k))?;
                    map.insert(k.to_string(), v);
                }
            }
            Value::Map(map)
        }
        DNode::Record(r) => {
            let mut slots: Vec<Option<Value>> = (0..r.names.len()).map(|_| None).collect();
            for s in r.steps.iter() {
                match *s {
                    Step::Read { pos, node } => {
                        slots[pos] = Some(
                            read_value(plan, node, input, depth + 1)
                                .map_err(|e| e.in_field(&r.names[pos]))?,
                        );
                    }
                    Step::Skip {
                        node,
                        name_of_writer_field,
                    } => skip(plan, node, input, depth + 1)
                        .map_err(|e| e.in_field(&plan.skip_names[name_of_writer_field]))?,
                }
            }
            for d in r.defaults.iter() {
                let mut b: &[u8] = &d.bytes;
                slots[d.pos] = Some(
                    read_value(plan, d.node, &mut b, depth + 1)
                        .map_err(|e| e.in_field(&r.names[d.pos]))?,
                );
            }
            let mut fields = Vec::with_capacity(slots.len());
            for (name, v) in r.names.iter().zip(slots) {
                fields.push((name.to_string(), v.unwrap_or(Value::Null)));
            }
            Value::Record(fields)
        }
        DNode::WUnion(b) => match read_branch(b, input)? {
            WBranch::Ok {
                reader_index: Some(ri),
                node,
                ..
            } => Value::Union(*ri, Box::new(read_value(plan, *node, input, depth)?)),
            WBranch::Ok { node, .. } => read_value(plan, *node, input, depth)?,
            WBranch::Unresolvable(l) => {
                return Err(AvroError::decode(format!("unresolvable union branch {l}")));
            }
        },
        DNode::RUnion { index, node, .. } => {
            Value::Union(*index, Box::new(read_value(plan, *node, input, depth)?))
        }
    })
}

/// Encodes a generic value with a compiled plan, validating it against the
/// schema. Values may be given in either plain or logical form (`Long` for a
/// `timestamp-millis` field and vice versa); a non-`Union` value for a union
/// picks the first branch it fits.
pub fn encode_value(plan: &EncodePlan, value: &Value, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    let r = encode_value_at(plan, plan.root, value, out);
    if r.is_err() {
        out.truncate(start);
    }
    r
}

fn value_label(v: &Value) -> String {
    let s = format!("{v:?}");
    let head: String = s.chars().take(60).collect();
    if head.len() < s.len() {
        format!("{head}…")
    } else {
        head
    }
}

pub(crate) fn encode_value_at(
    plan: &EncodePlan,
    node: usize,
    value: &Value,
    out: &mut Vec<u8>,
) -> Result<()> {
    let n = &plan.nodes[node];
    let bad = || {
        AvroError::encode(format!(
            "expected {}, got {}",
            node_label(n),
            value_label(value)
        ))
    };
    match (n, value) {
        (ENode::Union(u), Value::Union(i, inner)) => {
            let b = *u.branches.get(*i as usize).ok_or_else(|| {
                AvroError::encode(format!(
                    "union branch index {i} out of range for {}",
                    node_label(n)
                ))
            })?;
            write_long(out, *i as i64);
            encode_value_at(plan, b, inner, out)
        }
        (ENode::Union(u), v) => {
            for (i, b) in u.branches.iter().enumerate() {
                let mark = out.len();
                write_long(out, i as i64);
                if encode_value_at(plan, *b, v, out).is_ok() {
                    return Ok(());
                }
                out.truncate(mark);
            }
            Err(AvroError::encode(format!(
                "no branch of {} accepts {}",
                node_label(n),
                value_label(v)
            )))
        }
        (_, Value::Union(_, inner)) => encode_value_at(plan, node, inner, out),
        (ENode::Null, Value::Null) => Ok(()),
        (ENode::Boolean, Value::Boolean(b)) => {
            out.push(*b as u8);
            Ok(())
        }
        (ENode::Int, Value::Int(v) | Value::Date(v) | Value::TimeMillis(v)) => {
            write_long(out, *v as i64);
            Ok(())
        }
        (
            ENode::Long,
            Value::Long(v)
            | Value::TimeMicros(v)
            | Value::TimestampMillis(v)
            | Value::TimestampMicros(v)
            | Value::TimestampNanos(v)
            | Value::LocalTimestampMillis(v)
            | Value::LocalTimestampMicros(v)
            | Value::LocalTimestampNanos(v),
        ) => {
            write_long(out, *v);
            Ok(())
        }
        (ENode::Long, Value::Int(v)) => {
            write_long(out, *v as i64);
            Ok(())
        }
        (ENode::Float, Value::Float(v)) => {
            out.extend_from_slice(&v.to_le_bytes());
            Ok(())
        }
        (ENode::Double, Value::Double(v)) => {
            out.extend_from_slice(&v.to_le_bytes());
            Ok(())
        }
        (ENode::Double, Value::Float(v)) => {
            out.extend_from_slice(&(*v as f64).to_le_bytes());
            Ok(())
        }
        (ENode::Bytes, Value::Bytes(b)) => {
            write_bytes(out, b);
            Ok(())
        }
        (ENode::Bytes, Value::Decimal(d)) => {
            let b = <Vec<u8>>::try_from(d)
                .map_err(|e| AvroError::encode(format!("bad decimal: {e}")))?;
            write_bytes(out, &b);
            Ok(())
        }
        (ENode::Bytes, v @ Value::BigDecimal(_)) => {
            let b = apache_avro::to_avro_datum(&AvroSchema::BigDecimal, v.clone())
                .map_err(|e| AvroError::encode(format!("bad big-decimal: {e}")))?;
            out.extend_from_slice(&b);
            Ok(())
        }
        (ENode::String, Value::String(s)) => {
            write_bytes(out, s.as_bytes());
            Ok(())
        }
        (ENode::String, Value::Uuid(u)) => {
            write_bytes(out, u.to_string().as_bytes());
            Ok(())
        }
        (ENode::Fixed { size, name }, Value::Fixed(_, b) | Value::Bytes(b)) => {
            if b.len() != *size {
                return Err(AvroError::encode(format!(
                    "fixed {name} needs exactly {size} bytes, got {}",
                    b.len()
                )));
            }
            out.extend_from_slice(b);
            Ok(())
        }
        (ENode::Fixed { size, .. }, Value::Decimal(d)) => {
            let b = <Vec<u8>>::try_from(d)
                .map_err(|e| AvroError::encode(format!("bad decimal: {e}")))?;
            if b.len() > *size {
                return Err(AvroError::encode(format!(
                    "decimal needs {} bytes, fixed has {size}",
                    b.len()
                )));
            }
            // Sign-extend the big-endian two's complement value to the size.
            let fill = if b.first().is_some_and(|x| x & 0x80 != 0) {
                0xff
            } else {
                0
            };
            out.extend(std::iter::repeat_n(fill, size - b.len()));
            out.extend_from_slice(&b);
            Ok(())
        }
        (ENode::Fixed { size: 12, .. }, Value::Duration(d)) => {
            let b: [u8; 12] = (*d).into();
            out.extend_from_slice(&b);
            Ok(())
        }
        (ENode::Fixed { size: 16, .. }, Value::Uuid(u)) => {
            out.extend_from_slice(u.as_bytes());
            Ok(())
        }
        (ENode::Enum { name, symbols }, Value::Enum(_, s) | Value::String(s)) => {
            match symbols.iter().position(|x| **x == **s) {
                Some(i) => {
                    write_long(out, i as i64);
                    Ok(())
                }
                None => Err(AvroError::encode(format!(
                    "symbol `{s}` is not in enum {name} (expected one of: {})",
                    symbols.join(", ")
                ))),
            }
        }
        (ENode::Array(item), Value::Array(items)) => {
            if !items.is_empty() {
                write_long(out, items.len() as i64);
                for (i, v) in items.iter().enumerate() {
                    encode_value_at(plan, *item, v, out).map_err(|e| e.at_index(i))?;
                }
            }
            out.push(0);
            Ok(())
        }
        (ENode::Map(values), Value::Map(m)) => {
            if !m.is_empty() {
                write_long(out, m.len() as i64);
                for (k, v) in m {
                    write_bytes(out, k.as_bytes());
                    encode_value_at(plan, *values, v, out).map_err(|e| e.at_key(k))?;
                }
            }
            out.push(0);
            Ok(())
        }
        (ENode::Record(r), Value::Record(fields)) => {
            for (i, f) in r.fields.iter().enumerate() {
                let v = match fields.get(i) {
                    Some((k, v)) if **k == *f.name => Some(v),
                    _ => fields.iter().find(|(k, _)| **k == *f.name).map(|(_, v)| v),
                };
                match (v, &f.default) {
                    (Some(v), _) => {
                        encode_value_at(plan, f.node, v, out).map_err(|e| e.in_field(&f.name))?
                    }
                    (None, Some(d)) => out.extend_from_slice(d),
                    (None, None) => {
                        return Err(AvroError::encode(format!(
                            "missing field of record {} (it has no default in the schema)",
                            r.name
                        ))
                        .in_field(&f.name));
                    }
                }
            }
            if let Some((k, _)) = fields
                .iter()
                .find(|(k, _)| !r.fields.iter().any(|f| *f.name == **k))
            {
                return Err(
                    AvroError::encode(format!("field is not in record {}", r.name)).in_field(k),
                );
            }
            Ok(())
        }
        _ => Err(bad()),
    }
}

/// Converts a generic value to plain JSON: unions become their bare value,
/// records and maps objects, enums their symbol, bytes/fixed strings whose
/// code points are the byte values (Avro's JSON convention), logical types
/// their underlying number/string.
pub fn value_to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    let latin1 = |b: &[u8]| J::String(b.iter().map(|&c| c as char).collect());
    match value {
        Value::Null => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::Int(v) | Value::Date(v) | Value::TimeMillis(v) => J::from(*v),
        Value::Long(v)
        | Value::TimeMicros(v)
        | Value::TimestampMillis(v)
        | Value::TimestampMicros(v)
        | Value::TimestampNanos(v)
        | Value::LocalTimestampMillis(v)
        | Value::LocalTimestampMicros(v)
        | Value::LocalTimestampNanos(v) => J::from(*v),
        Value::Float(f) => serde_json::Number::from_f64(*f as f64).map_or(J::Null, J::Number),
        Value::Double(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Bytes(b) | Value::Fixed(_, b) => latin1(b),
        Value::String(s) => J::String(s.clone()),
        Value::Enum(_, s) => J::String(s.clone()),
        Value::Union(_, v) => value_to_json(v),
        Value::Array(items) => J::Array(items.iter().map(value_to_json).collect()),
        Value::Map(m) => J::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), value_to_json(v)))
                .collect(),
        ),
        Value::Record(fields) => J::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), value_to_json(v)))
                .collect(),
        ),
        Value::Decimal(d) => latin1(&<Vec<u8>>::try_from(d).unwrap_or_default()),
        Value::BigDecimal(d) => J::String(d.to_string()),
        Value::Duration(d) => {
            let b: [u8; 12] = (*d).into();
            latin1(&b)
        }
        Value::Uuid(u) => J::String(u.to_string()),
    }
}

/// Converts plain JSON (unions as bare values) into a generic value shaped
/// like `schema`. For a union the first branch the JSON value fits is used
/// (`null` → null branch, integers → int/long/…, strings → string/enum/…,
/// objects → the first record whose fields fit, else a map).
pub fn json_to_value(json: &serde_json::Value, schema: &Schema) -> Result<Value> {
    let names = Names::new(schema.inner())?;
    json_to_value_named(json, schema.inner(), &names)
}

pub(crate) fn json_to_value_named(
    json: &serde_json::Value,
    schema: &AvroSchema,
    names: &Names,
) -> Result<Value> {
    use serde_json::Value as J;
    let s = names.deref(schema)?;
    let bad = || {
        let mut t = json.to_string();
        if t.len() > 60 {
            t = format!("{}…", t.chars().take(60).collect::<String>());
        }
        AvroError::json(format!("expected {}, got {t}", type_label(s)))
    };
    let int = |lo: i64, hi: i64| -> Result<i64> {
        match json.as_i64() {
            Some(v) if (lo..=hi).contains(&v) => Ok(v),
            Some(v) => Err(AvroError::json(format!(
                "{v} is out of range for {}",
                type_label(s)
            ))),
            None => Err(bad()),
        }
    };
    let i32r = || int(i32::MIN as i64, i32::MAX as i64).map(|v| v as i32);
    let i64r = || int(i64::MIN, i64::MAX);
    let bytes = || -> Result<Vec<u8>> {
        let J::String(t) = json else {
            return Err(bad());
        };
        t.chars()
            .map(|c| {
                u8::try_from(c as u32)
                    .map_err(|_| AvroError::json("bytes must be a string of code points 0..=255"))
            })
            .collect()
    };
    Ok(match s {
        AvroSchema::Null if json.is_null() => Value::Null,
        AvroSchema::Boolean => Value::Boolean(json.as_bool().ok_or_else(bad)?),
        AvroSchema::Int => Value::Int(i32r()?),
        AvroSchema::Date => Value::Date(i32r()?),
        AvroSchema::TimeMillis => Value::TimeMillis(i32r()?),
        AvroSchema::Long => Value::Long(i64r()?),
        AvroSchema::TimeMicros => Value::TimeMicros(i64r()?),
        AvroSchema::TimestampMillis => Value::TimestampMillis(i64r()?),
        AvroSchema::TimestampMicros => Value::TimestampMicros(i64r()?),
        AvroSchema::TimestampNanos => Value::TimestampNanos(i64r()?),
        AvroSchema::LocalTimestampMillis => Value::LocalTimestampMillis(i64r()?),
        AvroSchema::LocalTimestampMicros => Value::LocalTimestampMicros(i64r()?),
        AvroSchema::LocalTimestampNanos => Value::LocalTimestampNanos(i64r()?),
        AvroSchema::Float => Value::Float(json.as_f64().ok_or_else(bad)? as f32),
        AvroSchema::Double => Value::Double(json.as_f64().ok_or_else(bad)?),
        AvroSchema::String => Value::String(json.as_str().ok_or_else(bad)?.to_string()),
        AvroSchema::Uuid => with_lg_str(Lg::Uuid, json.as_str().ok_or_else(bad)?)
            .map_err(|e| AvroError::json(e.to_string()))?,
        AvroSchema::Bytes => Value::Bytes(bytes()?),
        AvroSchema::BigDecimal => {
            let t = json.as_str().ok_or_else(bad)?;
            Value::String(t.to_string())
                .resolve(&AvroSchema::BigDecimal)
                .map_err(|e| AvroError::json(format!("invalid big-decimal `{t}`: {e}")))?
        }
        AvroSchema::Decimal(d) => {
            let b = bytes()?;
            if let AvroSchema::Fixed(f) = names.deref(&d.inner)?
                && b.len() != f.size
            {
                return Err(AvroError::json(format!(
                    "decimal needs exactly {} bytes",
                    f.size
                )));
            }
            Value::Decimal(apache_avro::Decimal::from(b))
        }
        AvroSchema::Fixed(f) => {
            let b = bytes()?;
            if b.len() != f.size {
                return Err(AvroError::json(format!(
                    "fixed {} needs exactly {} bytes, got {}",
                    f.name.name,
                    f.size,
                    b.len()
                )));
            }
            Value::Fixed(f.size, b)
        }
        AvroSchema::Duration => {
            let b = bytes()?;
            let a: [u8; 12] = b
                .try_into()
                .map_err(|_| AvroError::json("duration needs exactly 12 bytes"))?;
            Value::Duration(apache_avro::Duration::from(a))
        }
        AvroSchema::Enum(e) => {
            let t = json.as_str().ok_or_else(bad)?;
            match e.symbols.iter().position(|x| x == t) {
                Some(i) => Value::Enum(i as u32, t.to_string()),
                None => {
                    return Err(AvroError::json(format!(
                        "symbol `{t}` is not in enum {} (expected one of: {})",
                        e.name.name,
                        e.symbols.join(", ")
                    )));
                }
            }
        }
        AvroSchema::Array(a) => {
            let J::Array(items) = json else {
                return Err(bad());
            };
            let mut out = Vec::with_capacity(items.len());
            for (i, v) in items.iter().enumerate() {
                out.push(json_to_value_named(v, &a.items, names).map_err(|e| e.at_index(i))?);
            }
            Value::Array(out)
        }
        AvroSchema::Map(m) => {
            let J::Object(obj) = json else {
                return Err(bad());
            };
            let mut out = HashMap::with_capacity(obj.len());
            for (k, v) in obj {
                out.insert(
                    k.clone(),
                    json_to_value_named(v, &m.types, names).map_err(|e| e.at_key(k))?,
                );
            }
            Value::Map(out)
        }
        AvroSchema::Record(r) => {
            let J::Object(obj) = json else {
                return Err(bad());
            };
            let mut out = Vec::with_capacity(r.fields.len());
            for f in &r.fields {
                let v = match (obj.get(&f.name), &f.default) {
                    (Some(v), _) => v,
                    (None, Some(d)) => d,
                    (None, None) if is_nullable(&f.schema, names) => &J::Null,
                    (None, None) => {
                        return Err(AvroError::json(format!(
                            "missing field of record {} (it has no default)",
                            r.name.name
                        ))
                        .in_field(&f.name));
                    }
                };
                out.push((
                    f.name.clone(),
                    json_to_value_named(v, &f.schema, names).map_err(|e| e.in_field(&f.name))?,
                ));
            }
            if let Some(k) = obj.keys().find(|k| !r.lookup.contains_key(*k)) {
                return Err(
                    AvroError::json(format!("field is not in record {}", r.name.name)).in_field(k),
                );
            }
            Value::Record(out)
        }
        AvroSchema::Union(u) => {
            let mut first_err = None;
            for (i, b) in u.variants().iter().enumerate() {
                if !json_fits(json, names.deref(b)?) {
                    continue;
                }
                match json_to_value_named(json, b, names) {
                    Ok(v) => return Ok(Value::Union(i as u32, Box::new(v))),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            return Err(first_err.unwrap_or_else(|| {
                AvroError::json(format!(
                    "no branch of union [{}] accepts {}",
                    u.variants()
                        .iter()
                        .map(type_label)
                        .collect::<Vec<_>>()
                        .join(", "),
                    json
                ))
            }));
        }
        _ => return Err(bad()),
    })
}

fn is_nullable(s: &AvroSchema, names: &Names) -> bool {
    match names.deref(s) {
        Ok(AvroSchema::Null) => true,
        Ok(AvroSchema::Union(u)) => u.variants().iter().any(|b| matches!(b, AvroSchema::Null)),
        _ => false,
    }
}

/// Cheap pre-check of whether a JSON value's type suits a union branch, so
/// integers prefer int/long branches over float/double, etc.
fn json_fits(json: &serde_json::Value, s: &AvroSchema) -> bool {
    use serde_json::Value as J;
    match json {
        J::Null => matches!(s, AvroSchema::Null),
        J::Bool(_) => matches!(s, AvroSchema::Boolean),
        J::Number(n) if n.is_i64() || n.is_u64() => !matches!(
            s,
            AvroSchema::Null
                | AvroSchema::Boolean
                | AvroSchema::String
                | AvroSchema::Bytes
                | AvroSchema::Uuid
                | AvroSchema::Enum(_)
                | AvroSchema::Fixed(_)
                | AvroSchema::Array(_)
                | AvroSchema::Map(_)
                | AvroSchema::Record(_)
                | AvroSchema::Decimal(_)
                | AvroSchema::BigDecimal
                | AvroSchema::Duration
        ),
        J::Number(_) => matches!(s, AvroSchema::Float | AvroSchema::Double),
        J::String(_) => matches!(
            s,
            AvroSchema::String
                | AvroSchema::Bytes
                | AvroSchema::Uuid
                | AvroSchema::Enum(_)
                | AvroSchema::Fixed(_)
                | AvroSchema::Decimal(_)
                | AvroSchema::BigDecimal
                | AvroSchema::Duration
        ),
        J::Array(_) => matches!(s, AvroSchema::Array(_)),
        J::Object(_) => matches!(s, AvroSchema::Record(_) | AvroSchema::Map(_)),
    }
}
