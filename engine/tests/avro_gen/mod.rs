//! Random Avro schemas and values for the property tests (`proptest_codec`) and the
//! compatibility oracle (`compatibility_oracle`): each test crate includes this module
//! and uses part of it.
#![allow(dead_code)]

use apache_avro::types::Value;
use proptest::prelude::*;
use serde_json::{Value as J, json};

/// Random schema shape; names are assigned afterwards so they are unique.
pub fn schema_json() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        Just(json!("null")),
        Just(json!("boolean")),
        Just(json!("int")),
        Just(json!("long")),
        Just(json!("float")),
        Just(json!("double")),
        Just(json!("bytes")),
        Just(json!("string")),
        Just(json!({"type": "int", "logicalType": "date"})),
        Just(json!({"type": "int", "logicalType": "time-millis"})),
        Just(json!({"type": "long", "logicalType": "time-micros"})),
        Just(json!({"type": "long", "logicalType": "timestamp-millis"})),
        Just(json!({"type": "long", "logicalType": "timestamp-micros"})),
        Just(json!({"type": "long", "logicalType": "local-timestamp-millis"})),
        Just(json!({"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2})),
        (0usize..5).prop_map(|n| json!({"type": "fixed", "name": "?", "size": n})),
        (1usize..5).prop_map(|n| json!({"type": "enum", "name": "?", "symbols": (0..n).map(|i| format!("S{i}")).collect::<Vec<_>>()})),
    ];
    leaf.prop_recursive(4, 40, 5, |inner| {
        let non_union = inner
            .clone()
            .prop_filter("no nested unions", |j| !j.is_array() && j != "null");
        prop_oneof![
            inner
                .clone()
                .prop_map(|t| json!({"type": "array", "items": t})),
            inner
                .clone()
                .prop_map(|t| json!({"type": "map", "values": t})),
            (non_union.clone(), any::<bool>()).prop_map(|(t, null_first)| if null_first {
                json!(["null", t])
            } else {
                json!([t, "null"])
            }),
            non_union.prop_map(|t| {
                // A union of distinct wire types plus the generated type;
                // the spec forbids two branches of the same (int/string) type.
                let wire = t.get("type").unwrap_or(&t).clone();
                if wire == "int" || wire == "string" {
                    json!(["int", "string"])
                } else {
                    json!(["int", "string", t])
                }
            }),
            prop::collection::vec(inner, 1..5).prop_map(record),
        ]
    })
    .prop_map(|t| {
        if t.get("type") == Some(&json!("record")) {
            t
        } else {
            record(vec![t])
        }
    })
    .prop_map(|mut t| {
        let mut n = 0;
        name_all(&mut t, &mut n);
        t
    })
}

pub fn record(types: Vec<J>) -> J {
    let fields: Vec<J> = types
        .into_iter()
        .enumerate()
        .map(|(i, t)| json!({"name": format!("f{i}"), "type": t}))
        .collect();
    json!({"type": "record", "name": "?", "fields": fields})
}

pub fn name_all(j: &mut J, n: &mut usize) {
    match j {
        J::Array(items) => items.iter_mut().for_each(|i| name_all(i, n)),
        J::Object(o) => {
            if o.get("name") == Some(&json!("?")) {
                *n += 1;
                o.insert("name".into(), json!(format!("N{n}")));
            }
            for key in ["type", "items", "values"] {
                if let Some(v) = o.get_mut(key) {
                    name_all(v, n);
                }
            }
            if let Some(J::Array(fields)) = o.get_mut("fields") {
                for f in fields {
                    if let Some(t) = f.get_mut("type") {
                        name_all(t, n);
                    }
                }
            }
        }
        _ => {}
    }
}

/// A strategy for values conforming to `s` (no recursive schemas here).
pub fn value_for(s: &apache_avro::Schema) -> BoxedStrategy<Value> {
    values(s, false)
}

/// [`value_for`] with `bytes` and `fixed` values that are valid UTF-8 (ASCII), so that
/// a `bytes` -> `string` promotion reads them the same way in every implementation.
pub fn text_value_for(s: &apache_avro::Schema) -> BoxedStrategy<Value> {
    values(s, true)
}

fn values(s: &apache_avro::Schema, ascii: bool) -> BoxedStrategy<Value> {
    use apache_avro::Schema as S;
    let byte = move || {
        if ascii {
            (0x20u8..0x7f).boxed()
        } else {
            any::<u8>().boxed()
        }
    };
    match s {
        S::Null => Just(Value::Null).boxed(),
        S::Boolean => any::<bool>().prop_map(Value::Boolean).boxed(),
        S::Int => any::<i32>().prop_map(Value::Int).boxed(),
        S::Long => any::<i64>().prop_map(Value::Long).boxed(),
        S::Float => (-1e6f32..1e6).prop_map(Value::Float).boxed(),
        S::Double => (-1e12f64..1e12).prop_map(Value::Double).boxed(),
        S::Bytes => prop::collection::vec(byte(), 0..8)
            .prop_map(Value::Bytes)
            .boxed(),
        S::String => "[a-zé☃]{0,8}".prop_map(Value::String).boxed(),
        S::Date => any::<i32>().prop_map(Value::Date).boxed(),
        S::TimeMillis => (0i32..86_400_000).prop_map(Value::TimeMillis).boxed(),
        S::TimeMicros => (0i64..86_400_000_000).prop_map(Value::TimeMicros).boxed(),
        S::TimestampMillis => any::<i64>().prop_map(Value::TimestampMillis).boxed(),
        S::TimestampMicros => any::<i64>().prop_map(Value::TimestampMicros).boxed(),
        S::LocalTimestampMillis => any::<i64>().prop_map(Value::LocalTimestampMillis).boxed(),
        // apache-avro's resolution insists the byte length can hold the
        // declared precision (10 digits → at least 5 bytes).
        S::Decimal(_) => prop::collection::vec(byte(), 5..8)
            .prop_map(|b| Value::Decimal(apache_avro::Decimal::from(b)))
            .boxed(),
        S::Fixed(f) => {
            let n = f.size;
            prop::collection::vec(byte(), n..=n)
                .prop_map(move |b| Value::Fixed(n, b))
                .boxed()
        }
        S::Enum(e) => {
            let syms = e.symbols.clone();
            (0..syms.len())
                .prop_map(move |i| Value::Enum(i as u32, syms[i].clone()))
                .boxed()
        }
        S::Array(a) => prop::collection::vec(values(&a.items, ascii), 0..4)
            .prop_map(Value::Array)
            .boxed(),
        S::Map(m) => prop::collection::hash_map("[a-z]{0,3}", values(&m.types, ascii), 0..4)
            .prop_map(Value::Map)
            .boxed(),
        S::Union(u) => {
            let branches: Vec<BoxedStrategy<Value>> = u
                .variants()
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    values(b, ascii)
                        .prop_map(move |v| Value::Union(i as u32, Box::new(v)))
                        .boxed()
                })
                .collect();
            proptest::strategy::Union::new(branches).boxed()
        }
        S::Record(r) => {
            let names: Vec<String> = r.fields.iter().map(|f| f.name.clone()).collect();
            let vals: Vec<BoxedStrategy<Value>> =
                r.fields.iter().map(|f| values(&f.schema, ascii)).collect();
            vals.prop_map(move |vs| Value::Record(names.iter().cloned().zip(vs).collect()))
                .boxed()
        }
        other => panic!("generator does not produce {other:?}"),
    }
}
