//! Property tests against apache-avro as the reference implementation:
//! random schemas and conforming values, schema evolutions, and garbage input.

use apache_avro::types::Value;
use engine::serde::avro::{DecodePlan, EncodePlan, Schema, encode_value, value_to_json};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Value as J, json};

mod avro_gen;
use avro_gen::{schema_json, value_for};

fn schema_and_value() -> impl Strategy<Value = (J, Value)> {
    schema_json().prop_flat_map(|j| {
        let s = apache_avro::Schema::parse(&j).expect("generated schema parses");
        let v = value_for(&s);
        (Just(j), v)
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    AddField(usize),
    RemoveField(usize),
    Promote(usize),
    AddEnumSymbol(usize),
    DropEnumSymbolWithDefault(usize),
    WrapInUnion(usize, bool),
    Reverse,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0usize..4).prop_map(Mutation::AddField),
        any::<usize>().prop_map(Mutation::RemoveField),
        any::<usize>().prop_map(Mutation::Promote),
        any::<usize>().prop_map(Mutation::AddEnumSymbol),
        any::<usize>().prop_map(Mutation::DropEnumSymbolWithDefault),
        (any::<usize>(), any::<bool>()).prop_map(|(i, b)| Mutation::WrapInUnion(i, b)),
        Just(Mutation::Reverse),
    ]
}

/// Applies a compatible evolution to the top-level record's fields.
fn evolve(writer: &J, muts: &[Mutation]) -> J {
    let mut r = writer.clone();
    let fields = r["fields"].as_array_mut().expect("record");
    for (k, m) in muts.iter().enumerate() {
        let n = fields.len();
        match m {
            Mutation::AddField(kind) => {
                let (t, d) = [
                    (json!("int"), json!(7)),
                    (json!("string"), json!("x")),
                    (json!(["null", "long"]), J::Null),
                    (json!({"type": "array", "items": "double"}), json!([1.5])),
                ][*kind]
                    .clone();
                fields.push(json!({"name": format!("added{k}"), "type": t, "default": d}));
            }
            Mutation::RemoveField(i) if n > 1 => {
                fields.remove(i % n);
            }
            Mutation::Promote(i) if n > 0 => {
                let t = &mut fields[i % n]["type"];
                let to = match t.as_str() {
                    Some("int") => ["long", "float", "double"][k % 3],
                    Some("long") => ["float", "double"][k % 2],
                    Some("float") => "double",
                    Some("string") => "bytes",
                    Some("bytes") => "string",
                    _ => continue,
                };
                *t = json!(to);
            }
            Mutation::AddEnumSymbol(i) if n > 0 => {
                if let Some(J::Array(syms)) = fields[i % n]["type"].get_mut("symbols") {
                    syms.push(json!(format!("NEW{k}")));
                }
            }
            Mutation::DropEnumSymbolWithDefault(i) if n > 0 => {
                let t = &mut fields[i % n]["type"];
                if let Some(J::Array(syms)) = t.get_mut("symbols")
                    && syms.len() > 1
                {
                    syms.pop();
                    let d = syms[0].clone();
                    t["default"] = d;
                }
            }
            Mutation::WrapInUnion(i, null_first) if n > 0 => {
                // A union field's default must match its first branch.
                let null_first = *null_first && fields[i % n].get("default").is_none_or(J::is_null);
                let t = &mut fields[i % n]["type"];
                if !t.is_array() && t != "null" {
                    *t = if null_first {
                        json!(["null", t.clone()])
                    } else {
                        json!([t.clone(), "null"])
                    };
                }
            }
            Mutation::Reverse => fields.reverse(),
            _ => {}
        }
    }
    r
}

/// Forgets union branch indices and bytes-vs-string distinctions, for
/// comparing against apache-avro's value-based union branch choice.
fn loose(v: &Value) -> J {
    match v {
        Value::Union(_, v) => loose(v),
        Value::Fixed(_, b) | Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => J::String(s.to_string()),
            Err(_) => value_to_json(v),
        },
        Value::Record(fs) => J::Object(fs.iter().map(|(k, v)| (k.clone(), loose(v))).collect()),
        Value::Map(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), loose(v))).collect()),
        Value::Array(a) => J::Array(a.iter().map(loose).collect()),
        other => value_to_json(other),
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/proptest_codec.txt",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// (a) + (b): our encoding equals apache-avro's, and we decode apache's
    /// bytes back to the same value (also through the serde path).
    #[test]
    fn encode_matches_apache_and_decodes((j, v) in schema_and_value()) {
        let schema = Schema::parse_str(&j.to_string()).unwrap();
        let plan = EncodePlan::new(&schema).unwrap();
        let mut ours = Vec::new();
        encode_value(&plan, &v, &mut ours).unwrap();
        let theirs = apache_avro::to_avro_datum(schema.inner(), v.clone()).unwrap();
        prop_assert_eq!(&ours, &theirs);
        let dec = DecodePlan::identity(&schema).unwrap();
        prop_assert_eq!(dec.decode_value(&theirs).unwrap(), v.clone());
        let via_serde: serde_json::Value = dec.decode(&theirs).unwrap();
        if !j.to_string().contains("bytes") && !j.to_string().contains("fixed") {
            prop_assert_eq!(via_serde, value_to_json(&v));
        }
        let back = engine::serde::avro::json_to_value(&value_to_json(&v), &schema);
        if let Ok(back) = back {
            // Plain JSON loses union indices only when two branches fit the
            // same JSON; re-encoding must still be valid data.
            let mut again = Vec::new();
            encode_value(&plan, &back, &mut again).unwrap();
            prop_assert!(dec.decode_value(&again).is_ok());
        }
    }

    /// (c): data written with a schema reads back through compatible
    /// evolutions exactly as apache-avro resolves it.
    #[test]
    fn evolution_matches_apache((j, v) in schema_and_value(), muts in prop::collection::vec(mutation(), 1..4)) {
        let writer = Schema::parse_str(&j.to_string()).unwrap();
        let rj = evolve(&j, &muts);
        let reader = Schema::parse_str(&rj.to_string()).unwrap();
        let bytes = apache_avro::to_avro_datum(writer.inner(), v.clone()).unwrap();
        let plan = DecodePlan::new(&writer, &reader).unwrap();
        let ours = plan.decode_value(&bytes);
        let theirs = apache_avro::from_avro_datum(writer.inner(), &mut bytes.as_slice(), Some(reader.inner()));
        match (ours, theirs) {
            (Ok(a), Ok(b)) if a == b => {}
            // apache-avro picks a reader union branch by *validating the
            // decoded value* rather than by the writer branch's type (e.g. it
            // reads an empty fixed as an empty string); the spec (and we)
            // match by type. Accept such cases when the data is the same.
            (Ok(a), Ok(b)) => prop_assert_eq!(loose(&a), loose(&b), "ours {:?}\napache {:?}", a, b),
            (Err(a), Err(_)) => prop_assert!(a.path().is_some()),
            (a, b) => prop_assert!(false, "ours {:?} vs apache {:?}\nreader {}", a, b, rj),
        }
        let _: Result<serde_json::Value, _> = plan.decode(&bytes);
    }

    /// (d): arbitrary bytes never panic, for identity and resolving plans.
    #[test]
    fn garbage_never_panics(j in schema_json(), muts in prop::collection::vec(mutation(), 0..3), bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let writer = Schema::parse_str(&j.to_string()).unwrap();
        let reader = Schema::parse_str(&evolve(&j, &muts).to_string()).unwrap();
        for plan in [DecodePlan::identity(&writer).unwrap(), DecodePlan::new(&writer, &reader).unwrap()] {
            let _ = plan.decode_value(&bytes);
            let _ = plan.decode::<serde_json::Value>(&bytes);
            let _ = plan.decode::<serde::de::IgnoredAny>(&bytes);
        }
    }
}
