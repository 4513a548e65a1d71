//! Unit tests for schema resolution, serde mapping and error reporting.

use std::collections::{BTreeMap, HashMap};

use apache_avro::types::Value;
use serde::{Deserialize, Serialize};

use super::*;

fn schema(s: &str) -> Schema {
    Schema::parse_str(s).expect("schema parses")
}

fn rec(fields: &str) -> Schema {
    schema(&format!(
        r#"{{"type":"record","name":"R","fields":[{fields}]}}"#
    ))
}

fn enc<T: Serialize>(s: &Schema, v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    EncodePlan::new(s).unwrap().encode(v, &mut out).unwrap();
    out
}

fn enc_err<T: Serialize>(s: &Schema, v: &T) -> AvroError {
    let mut out = Vec::new();
    let e = EncodePlan::new(s).unwrap().encode(v, &mut out).unwrap_err();
    assert!(out.is_empty(), "partial output must be truncated");
    e
}

fn read<T: serde::de::DeserializeOwned>(w: &Schema, r: &Schema, bytes: &[u8]) -> T {
    DecodePlan::new(w, r).unwrap().decode(bytes).unwrap()
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct A<T> {
    a: T,
}

#[test]
fn promotions() {
    fn check<W: Serialize, R: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
        wt: &str,
        rt: &str,
        w: W,
        expect: R,
        expect_value: Value,
    ) {
        let ws = rec(&format!(r#"{{"name":"a","type":"{wt}"}}"#));
        let rs = rec(&format!(r#"{{"name":"a","type":"{rt}"}}"#));
        let bytes = enc(&ws, &A { a: w });
        let got: A<R> = read(&ws, &rs, &bytes);
        assert_eq!(got.a, expect, "{wt} -> {rt}");
        let v = DecodePlan::new(&ws, &rs)
            .unwrap()
            .decode_value(&bytes)
            .unwrap();
        assert_eq!(v, Value::Record(vec![("a".into(), expect_value.clone())]));
        let ap = apache_avro::from_avro_datum(ws.inner(), &mut bytes.as_slice(), Some(rs.inner()))
            .unwrap();
        assert_eq!(
            ap,
            Value::Record(vec![("a".into(), expect_value)]),
            "apache agrees on {wt} -> {rt}"
        );
    }
    check("int", "long", 7i32, 7i64, Value::Long(7));
    check("int", "float", -3i32, -3f32, Value::Float(-3.0));
    check(
        "int",
        "double",
        1 << 30,
        (1 << 30) as f64,
        Value::Double((1 << 30) as f64),
    );
    check(
        "long",
        "float",
        1i64 << 40,
        (1i64 << 40) as f32,
        Value::Float((1i64 << 40) as f32),
    );
    check("long", "double", -5i64, -5f64, Value::Double(-5.0));
    check("float", "double", 1.5f32, 1.5f64, Value::Double(1.5));
    check(
        "string",
        "bytes",
        "hé",
        serde_bytes_vec("hé"),
        Value::Bytes("hé".as_bytes().to_vec()),
    );
    check(
        "bytes",
        "string",
        serde_bytes::Bytes::new(b"ok"),
        "ok".to_string(),
        Value::String("ok".into()),
    );
}

fn serde_bytes_vec(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

mod serde_bytes {
    //! Minimal stand-in for the `serde_bytes` crate (not a dependency).
    use serde::Serialize;
    pub struct Bytes<'a>(&'a [u8]);
    impl<'a> Bytes<'a> {
        pub fn new(b: &'a [u8]) -> Self {
            Bytes(b)
        }
    }
    impl Serialize for Bytes<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }
}

#[test]
fn promotion_errors_name_the_field() {
    let ws = rec(r#"{"name":"a","type":"long"}"#);
    let rs = rec(r#"{"name":"a","type":"int"}"#);
    let e = DecodePlan::new(&ws, &rs).unwrap_err();
    assert_eq!(e.path(), Some("a"), "{e}");
    assert!(e.to_string().contains("long cannot be read as int"), "{e}");
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone, Copy)]
enum Color {
    Red,
    Green,
    Blue,
}

#[test]
fn enum_resolution_and_default() {
    let ws = rec(
        r#"{"name":"c","type":{"type":"enum","name":"Color","symbols":["Red","Green","Blue"]}}"#,
    );
    let with_default = rec(
        r#"{"name":"c","type":{"type":"enum","name":"Color","symbols":["Green","Red"],"default":"Red"}}"#,
    );
    let no_default =
        rec(r#"{"name":"c","type":{"type":"enum","name":"Color","symbols":["Green","Red"]}}"#);
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct C {
        c: Color,
    }
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct S {
        c: String,
    }
    let bytes = enc(&ws, &C { c: Color::Blue });
    assert_eq!(bytes, vec![4]);
    let got: C = read(&ws, &with_default, &bytes);
    assert_eq!(got.c, Color::Red);
    let got: S = read(&ws, &with_default, &bytes);
    assert_eq!(got.c, "Red");
    let green = enc(&ws, &C { c: Color::Green });
    let got: C = read(&ws, &no_default, &green);
    assert_eq!(got.c, Color::Green);
    let v = DecodePlan::new(&ws, &no_default)
        .unwrap()
        .decode_value(&green)
        .unwrap();
    assert_eq!(
        v,
        Value::Record(vec![("c".into(), Value::Enum(0, "Green".into()))])
    );
    let e = DecodePlan::new(&ws, &no_default)
        .unwrap()
        .decode::<C>(&bytes)
        .unwrap_err();
    assert_eq!(e.path(), Some("c"), "{e}");
    assert!(e.to_string().contains("`Blue`"), "{e}");
}

#[test]
fn enum_encode_errors() {
    let s = rec(r#"{"name":"c","type":{"type":"enum","name":"Color","symbols":["Red","Green"]}}"#);
    #[derive(Serialize)]
    struct C {
        c: Color,
    }
    let e = enc_err(&s, &C { c: Color::Blue });
    assert_eq!(e.path(), Some("c"));
    assert!(
        e.to_string().contains("symbol `Blue` is not in enum Color"),
        "{e}"
    );
    // Strings are accepted as symbols too.
    assert_eq!(enc(&s, &serde_json::json!({"c": "Green"})), vec![2]);
    let e = enc_err(&s, &serde_json::json!({"c": "Mauve"}));
    assert_eq!(e.path(), Some("c"));
}

#[test]
fn union_matching() {
    // Non-union writer, union reader: first branch of the same type, else a
    // promotion.
    let ws = rec(r#"{"name":"a","type":"int"}"#);
    let rs = rec(r#"{"name":"a","type":["null","string","long"]}"#);
    let bytes = enc(&ws, &A { a: 5 });
    let got: A<Option<i64>> = read(&ws, &rs, &bytes);
    assert_eq!(got.a, Some(5));
    let v = DecodePlan::new(&ws, &rs)
        .unwrap()
        .decode_value(&bytes)
        .unwrap();
    assert_eq!(
        v,
        Value::Record(vec![(
            "a".into(),
            Value::Union(2, Box::new(Value::Long(5)))
        )])
    );

    // Union writer, non-union reader: works for branches that match.
    let ws = rec(r#"{"name":"a","type":["null","string"]}"#);
    let rs = rec(r#"{"name":"a","type":"string"}"#);
    let bytes = enc(&ws, &A { a: Some("x") });
    let got: A<String> = read(&ws, &rs, &bytes);
    assert_eq!(got.a, "x");
    let null = enc(&ws, &A::<Option<String>> { a: None });
    let e = DecodePlan::new(&ws, &rs)
        .unwrap()
        .decode::<A<String>>(&null)
        .unwrap_err();
    assert_eq!(e.path(), Some("a"), "{e}");

    // Union to union with the branches reordered; Option maps either way.
    let rs = rec(r#"{"name":"a","type":["string","null"]}"#);
    let got: A<Option<String>> = read(&ws, &rs, &bytes);
    assert_eq!(got.a.as_deref(), Some("x"));
    let got: A<Option<String>> = read(&ws, &rs, &null);
    assert_eq!(got.a, None);
    assert_eq!(enc(&rs, &A { a: Some("x") }), vec![0, 2, b'x']);
    assert_eq!(enc(&rs, &A::<Option<String>> { a: None }), vec![2]);

    // Named branches match by name.
    let ws = rec(
        r#"{"name":"a","type":[{"type":"record","name":"P","fields":[{"name":"x","type":"int"}]},{"type":"record","name":"Q","fields":[{"name":"y","type":"string"}]}]}"#,
    );
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Q {
        y: String,
    }
    let bytes = enc(
        &ws,
        &A {
            a: Q { y: "hi".into() },
        },
    );
    assert_eq!(bytes[0], 2, "struct name picks the Q branch");
    let rs = rec(
        r#"{"name":"a","type":[{"type":"record","name":"Q","fields":[{"name":"y","type":"string"}]},"null"]}"#,
    );
    let got: A<Option<Q>> = read(&ws, &rs, &bytes);
    assert_eq!(got.a, Some(Q { y: "hi".into() }));
    // P data cannot be read with this reader: error only when it occurs.
    #[derive(Serialize)]
    struct P {
        x: i32,
    }
    let p = enc(&ws, &A { a: P { x: 1 } });
    assert!(
        DecodePlan::new(&ws, &rs)
            .unwrap()
            .decode::<A<Option<Q>>>(&p)
            .is_err()
    );

    // Untagged-style access to a non-null union through serde_json::Value.
    let s = rec(r#"{"name":"a","type":["int","string"]}"#);
    let got: serde_json::Value = DecodePlan::identity(&s)
        .unwrap()
        .decode(&enc(&s, &A { a: "s" }))
        .unwrap();
    assert_eq!(got, serde_json::json!({"a": "s"}));
    // And a Rust enum whose variants are named after the branches.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum IntOrString {
        Int(i32),
        String(String),
    }
    let bytes = enc(
        &s,
        &A {
            a: IntOrString::Int(3),
        },
    );
    assert_eq!(bytes, vec![0, 6]);
    let got: A<IntOrString> = read(&s, &s, &enc(&s, &A { a: "q" }));
    assert_eq!(got.a, IntOrString::String("q".into()));
}

#[test]
fn union_no_branch_error() {
    let s = rec(r#"{"name":"a","type":["null","int"]}"#);
    let e = enc_err(&s, &A { a: Some("str") });
    assert_eq!(e.path(), Some("a"));
    assert!(
        e.to_string()
            .contains("no branch of union [null, int] accepts a string"),
        "{e}"
    );
}

#[test]
fn aliases() {
    let ws = schema(
        r#"{"type":"record","name":"Old","namespace":"n","fields":[{"name":"before","type":"int"}]}"#,
    );
    let rs = schema(
        r#"{"type":"record","name":"New","aliases":["n.Old"],"fields":[{"name":"after","type":"long","aliases":["before"]}]}"#,
    );
    #[derive(Serialize)]
    struct Old {
        before: i32,
    }
    #[derive(Deserialize, Debug, PartialEq)]
    struct New {
        after: i64,
    }
    let bytes = enc(&ws, &Old { before: 9 });
    let got: New = read(&ws, &rs, &bytes);
    assert_eq!(got, New { after: 9 });
    // Without the alias the names do not match.
    let rs2 = schema(
        r#"{"type":"record","name":"New","fields":[{"name":"after","type":"long","default":0}]}"#,
    );
    assert!(DecodePlan::new(&ws, &rs2).is_err());
}

#[test]
fn defaults_fill_reader_only_fields() {
    let ws = rec(r#"{"name":"a","type":"int"}"#);
    let rs = rec(r#"{"name":"a","type":"int"},
           {"name":"s","type":"string","default":"dflt"},
           {"name":"l","type":{"type":"array","items":"long"},"default":[1,2]},
           {"name":"o","type":["null","string"],"default":null},
           {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"]},"default":"Y"},
           {"name":"r","type":{"type":"record","name":"In","fields":[{"name":"q","type":"double"}]},"default":{"q":2.5}},
           {"name":"b","type":"bytes","default":"\u00ff"}"#);
    #[derive(Deserialize, Debug, PartialEq)]
    struct In {
        q: f64,
    }
    #[derive(Deserialize, Debug, PartialEq)]
    struct R {
        a: i32,
        s: String,
        l: Vec<i64>,
        o: Option<String>,
        e: String,
        r: In,
        #[serde(with = "bytes_de")]
        b: Vec<u8>,
    }
    let bytes = enc(&ws, &A { a: 1 });
    let got: R = read(&ws, &rs, &bytes);
    assert_eq!(
        got,
        R {
            a: 1,
            s: "dflt".into(),
            l: vec![1, 2],
            o: None,
            e: "Y".into(),
            r: In { q: 2.5 },
            b: vec![0xff]
        }
    );
    let mut v = DecodePlan::new(&ws, &rs)
        .unwrap()
        .decode_value(&bytes)
        .unwrap();
    let mut ap =
        apache_avro::from_avro_datum(ws.inner(), &mut bytes.as_slice(), Some(rs.inner())).unwrap();
    // apache-avro takes the UTF-8 bytes of a `bytes` default; the spec (and
    // we) read its code points as byte values. Compare the rest.
    if let (Value::Record(a), Value::Record(b)) = (&mut v, &mut ap) {
        assert_eq!(a.pop(), Some(("b".into(), Value::Bytes(vec![0xff]))));
        assert_eq!(
            b.pop(),
            Some(("b".into(), Value::Bytes("\u{ff}".as_bytes().to_vec())))
        );
    }
    assert_eq!(v, ap);

    let rs = rec(r#"{"name":"a","type":"int"},{"name":"nodefault","type":"int"}"#);
    let e = DecodePlan::new(&ws, &rs).unwrap_err();
    assert_eq!(e.path(), Some("nodefault"), "{e}");
    assert!(e.to_string().contains("has no default"), "{e}");
}

mod bytes_de {
    use serde::Deserializer;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
        }
        d.deserialize_bytes(V)
    }
}

#[test]
fn struct_field_order_and_encode_defaults() {
    let s = rec(
        r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":"B"},{"name":"c","type":"long"}"#,
    );
    #[derive(Serialize)]
    struct InOrder {
        a: i32,
        b: String,
        c: i64,
    }
    #[derive(Serialize)]
    struct Shuffled {
        c: i64,
        a: i32,
        b: String,
    }
    #[derive(Serialize)]
    struct Missing {
        c: i64,
        a: i32,
    }
    let want = enc(
        &s,
        &InOrder {
            a: 1,
            b: "B".into(),
            c: 3,
        },
    );
    assert_eq!(
        enc(
            &s,
            &Shuffled {
                c: 3,
                a: 1,
                b: "B".into()
            }
        ),
        want
    );
    assert_eq!(enc(&s, &Missing { c: 3, a: 1 }), want);
    #[derive(Serialize)]
    struct NoC {
        a: i32,
    }
    let e = enc_err(&s, &NoC { a: 1 });
    assert_eq!(e.path(), Some("c"));
    assert!(e.to_string().contains("missing field"), "{e}");
    #[derive(Serialize)]
    struct Extra {
        a: i32,
        c: i64,
        zzz: bool,
    }
    let e = enc_err(
        &s,
        &Extra {
            a: 1,
            c: 2,
            zzz: true,
        },
    );
    assert_eq!(e.path(), Some("zzz"));
    assert!(e.to_string().contains("not in record R"), "{e}");
    // serde_json maps can be written as records, keys in any order.
    let m = serde_json::json!({"c": 3, "a": 1});
    assert_eq!(enc(&s, &m), want);
}

#[test]
fn encode_error_paths() {
    let ticket = schema(include_str!(
        "../../schemas/execution-ticket/execution-ticket.avsc"
    ));
    let plan = EncodePlan::new(&ticket).unwrap();
    let mut good = json_ticket();
    let mut out = Vec::new();
    plan.encode(&good, &mut out).unwrap();
    assert!(!out.is_empty());

    let check = |v: &serde_json::Value, path: &str, msg: &str| {
        let mut out = Vec::new();
        let e = plan.encode(v, &mut out).unwrap_err();
        assert_eq!(e.path(), Some(path), "{e}");
        assert!(e.to_string().contains(msg), "{e}");
    };
    let mut v = good.clone();
    v["sla"]["deadline"] = serde_json::json!("tomorrow");
    check(&v, "sla.deadline", "expected long, got a string");
    let mut v = good.clone();
    v["dependencies"][2] = serde_json::json!(17);
    check(&v, "dependencies[2]", "expected string, got an integer");
    let mut v = good.clone();
    v["qos"]["delivery_mode"] = serde_json::json!("SOMETIMES");
    check(
        &v,
        "qos.delivery_mode",
        "symbol `SOMETIMES` is not in enum DeliveryMode",
    );
    let mut v = good.clone();
    v["sla"]["max_retries"] = serde_json::json!(1u64 << 40);
    check(&v, "sla.max_retries", "out of range for int");
    let mut v = good.clone();
    v["parameters"]["k"] = serde_json::json!(1.5);
    check(&v, "parameters[\"k\"]", "expected string");
    let mut v = good.clone();
    v["sla"].as_object_mut().unwrap().remove("timeout_ms");
    check(&v, "sla.timeout_ms", "missing field");
    good["surprise"] = serde_json::json!(1);
    check(&good, "surprise", "not in record ExecutionTicket");

    let fixed = rec(r#"{"name":"f","type":{"type":"fixed","name":"F","size":4}}"#);
    #[derive(Serialize)]
    struct F {
        f: [u8; 3],
    }
    let e = enc_err(&fixed, &F { f: [1, 2, 3] });
    assert_eq!(e.path(), Some("f"));
    assert!(
        e.to_string().contains("needs exactly 4 bytes, got 3"),
        "{e}"
    );
    let u = rec(r#"{"name":"a","type":"long"}"#);
    let e = enc_err(&u, &A { a: u64::MAX });
    assert!(e.to_string().contains("out of range for long"), "{e}");
}

fn json_ticket() -> serde_json::Value {
    serde_json::json!({
        "ticket_id": "t", "plan_id": "p", "intent_id": "i", "decision_id": "d",
        "correlation_id": null, "trace_id": "tr", "span_id": null,
        "task_id": "task", "task_type": "DEPLOY", "description": "desc",
        "dependencies": ["a", "b", "c"], "status": "RUNNING", "priority": "HIGH",
        "risk_band": "low",
        "sla": {"deadline": 1700000000000i64, "timeout_ms": 30000, "max_retries": 3},
        "qos": {"delivery_mode": "EXACTLY_ONCE", "consistency": "STRONG", "durability": "PERSISTENT"},
        "parameters": {"k": "v"}, "required_capabilities": [], "security_level": "INTERNAL",
        "created_at": 1700000000000i64, "started_at": null, "completed_at": null,
        "estimated_duration_ms": 1000, "actual_duration_ms": null, "retry_count": 0,
        "error_message": null, "compensation_ticket_id": null, "metadata": {}, "schema_version": 1
    })
}

#[test]
fn json_roundtrip_through_avro() {
    let ticket = schema(include_str!(
        "../../schemas/execution-ticket/execution-ticket.avsc"
    ));
    let j = json_ticket();
    let v = json_to_value(&j, &ticket).unwrap();
    let plan = EncodePlan::new(&ticket).unwrap();
    let mut out = Vec::new();
    encode_value(&plan, &v, &mut out).unwrap();
    assert_eq!(
        out,
        apache_avro::to_avro_datum(ticket.inner(), v.clone()).unwrap()
    );
    let back = DecodePlan::identity(&ticket)
        .unwrap()
        .decode_value(&out)
        .unwrap();
    assert_eq!(value_to_json(&back), j);
    // serde path and value path agree.
    let via_serde: serde_json::Value = DecodePlan::identity(&ticket).unwrap().decode(&out).unwrap();
    assert_eq!(via_serde, j);
    let mut out2 = Vec::new();
    plan.encode(&j, &mut out2).unwrap();
    assert_eq!(out2, out);

    let e = json_to_value(&serde_json::json!({"ticket_id": 5}), &ticket).unwrap_err();
    assert_eq!(e.path(), Some("ticket_id"), "{e}");
}

#[test]
fn decode_errors() {
    let s =
        rec(r#"{"name":"a","type":"string"},{"name":"b","type":{"type":"array","items":"int"}}"#);
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct R {
        a: String,
        b: Vec<i32>,
    }
    let bytes = enc(
        &s,
        &R {
            a: "hello".into(),
            b: vec![1, 2, 3],
        },
    );
    let plan = DecodePlan::identity(&s).unwrap();
    assert_eq!(
        plan.decode::<R>(&bytes).unwrap(),
        R {
            a: "hello".into(),
            b: vec![1, 2, 3]
        }
    );
    for cut in 0..bytes.len() {
        let e = plan.decode::<R>(&bytes[..cut]).unwrap_err();
        assert!(matches!(e, AvroError::Decode { .. }), "{e}");
        assert!(plan.decode_value(&bytes[..cut]).is_err());
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        plan.decode::<R>(&long),
        Err(AvroError::TrailingBytes { count: 1 })
    ));
    // Wrong element type for the target names the index.
    let mut bad = bytes.clone();
    let n = bad.len();
    bad[n - 2] = 0x7e; // last int = 63 fits; make the target reject it instead
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Narrow {
        a: String,
        b: Vec<bool>,
    }
    let e = plan.decode::<Narrow>(&bad).unwrap_err();
    assert_eq!(e.path(), Some("b[0]"), "{e}");
    // A huge array count is rejected without allocating.
    let huge = [
        0u8, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ];
    assert!(plan.decode::<R>(&huge).is_err());
    assert!(plan.decode_value(&huge).is_err());
}

#[test]
fn recursive_schema() {
    let s = schema(
        r#"{"type":"record","name":"Node","fields":[{"name":"v","type":"int"},{"name":"next","type":["null","Node"]}]}"#,
    );
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Node {
        v: i32,
        next: Option<Box<Node>>,
    }
    let n = Node {
        v: 1,
        next: Some(Box::new(Node { v: 2, next: None })),
    };
    let bytes = enc(&s, &n);
    assert_eq!(bytes, vec![2, 2, 4, 0]);
    let back: Node = read(&s, &s, &bytes);
    assert_eq!(back, n);
    // Deep hostile nesting errors out instead of overflowing the stack.
    let mut deep = Vec::new();
    for _ in 0..100_000 {
        deep.extend_from_slice(&[2, 2]);
    }
    let plan = DecodePlan::identity(&s).unwrap();
    assert!(plan.decode::<Node>(&deep).is_err());
    assert!(plan.decode::<serde_json::Value>(&deep).is_err());
    assert!(plan.decode_value(&deep).is_err());
}

#[test]
fn maps_bytes_fixed_and_ints() {
    let s = rec(r#"{"name":"m","type":{"type":"map","values":"int"}},
           {"name":"bt","type":{"type":"map","values":"long"}},
           {"name":"raw","type":"bytes"},
           {"name":"fx","type":{"type":"fixed","name":"F4","size":4}},
           {"name":"u8","type":"int"},{"name":"u64","type":"long"},{"name":"f","type":"float"}"#);
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct R {
        m: HashMap<String, i32>,
        bt: BTreeMap<String, i64>,
        raw: Vec<u8>,
        fx: [u8; 4],
        u8: u8,
        u64: u64,
        f: f32,
    }
    let r = R {
        m: HashMap::from([("x".into(), -1)]),
        bt: BTreeMap::from([("a".into(), 1), ("b".into(), 2)]),
        raw: vec![0, 255, 7],
        fx: [1, 2, 3, 4],
        u8: 200,
        u64: 1 << 62,
        f: 0.5,
    };
    let bytes = enc(&s, &r);
    let back: R = read(&s, &s, &bytes);
    assert_eq!(back, r);
    let v = DecodePlan::identity(&s)
        .unwrap()
        .decode_value(&bytes)
        .unwrap();
    // Map entry order follows the HashMap, so compare against apache-avro
    // encoding the very same value.
    let mut ours = Vec::new();
    encode_value(&EncodePlan::new(&s).unwrap(), &v, &mut ours).unwrap();
    assert_eq!(apache_avro::to_avro_datum(s.inner(), v).unwrap(), ours);
    assert_eq!(read::<R>(&s, &s, &ours), r);
    // Range checks on decode into narrower Rust types.
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Narrow {
        u8: i8,
    }
    let e = DecodePlan::identity(&s)
        .unwrap()
        .decode::<Narrow>(&bytes)
        .unwrap_err();
    assert_eq!(e.path(), Some("u8"), "{e}");
}

#[test]
fn misplaced_logical_types_keep_plain_types() {
    let s = rec(r#"{"name":"ts","type":"long","logicalType":"timestamp-millis"}"#);
    assert_eq!(
        s.misplaced_logical_types(),
        vec!["ts: timestamp-millis".to_string()]
    );
    let b = enc(&s, &serde_json::json!({"ts": 5}));
    let v = DecodePlan::identity(&s).unwrap().decode_value(&b).unwrap();
    assert_eq!(v, Value::Record(vec![("ts".into(), Value::Long(5))]));
    // A proper logical type on the type decodes as its logical value but
    // still reads into a plain integer.
    let p = rec(r#"{"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}}"#);
    assert!(p.misplaced_logical_types().is_empty());
    let v = DecodePlan::identity(&p).unwrap().decode_value(&b).unwrap();
    assert_eq!(
        v,
        Value::Record(vec![("ts".into(), Value::TimestampMillis(5))])
    );
    #[derive(Deserialize)]
    struct T {
        ts: i64,
    }
    assert_eq!(
        DecodePlan::identity(&p)
            .unwrap()
            .decode::<T>(&b)
            .unwrap()
            .ts,
        5
    );
}
