//! Typed round trip of the reference `ExecutionTicket` schema, checked for
//! byte equality against serde_avro_fast and apache-avro.
#![allow(clippy::unwrap_used)] // tests state their expectations with unwrap

use std::collections::HashMap;

use engine::serde::avro::{DecodePlan, EncodePlan, Schema, value_to_json};
use serde::{Deserialize, Serialize};
use topologies::tickets::{EXECUTION_TICKET_SCHEMA, ExecutionTicket, sample_tickets};

#[test]
fn encode_decode_equals_and_matches_serde_avro_fast() {
    let schema = Schema::parse_str(EXECUTION_TICKET_SCHEMA).unwrap();
    let enc = EncodePlan::new(&schema).unwrap();
    let dec = DecodePlan::identity(&schema).unwrap();
    let fast: serde_avro_fast::Schema = EXECUTION_TICKET_SCHEMA.parse().unwrap();
    let mut fast_cfg = serde_avro_fast::ser::SerializerConfig::new(&fast);
    for t in sample_tickets(50) {
        let mut ours = Vec::new();
        enc.encode(&t, &mut ours).unwrap();
        let theirs = serde_avro_fast::to_datum_vec(&t, &mut fast_cfg).unwrap();
        assert_eq!(ours, theirs, "byte-identical to serde_avro_fast");
        let back: ExecutionTicket = dec.decode(&ours).unwrap();
        assert_eq!(back, t);
        let via_fast: ExecutionTicket = serde_avro_fast::from_datum_slice(&ours, &fast).unwrap();
        assert_eq!(via_fast, t);
        // apache-avro reads our bytes into the same JSON shape as our value path.
        let ap = apache_avro::from_avro_datum(schema.inner(), &mut ours.as_slice(), None).unwrap();
        let mine = dec.decode_value(&ours).unwrap();
        assert_eq!(value_to_json(&ap), value_to_json(&mine));
    }
}

/// The ticket schema plus a reader-only field with a default.
fn execution_ticket_reader_schema_v2() -> String {
    let mut v: serde_json::Value = serde_json::from_str(EXECUTION_TICKET_SCHEMA).unwrap();
    v["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "tenant", "type": "string", "default": "default"}));
    v.to_string()
}

#[test]
fn resolving_plan_fills_new_field() {
    let schema = Schema::parse_str(EXECUTION_TICKET_SCHEMA).unwrap();
    let v2 = Schema::parse_str(&execution_ticket_reader_schema_v2()).unwrap();
    let enc = EncodePlan::new(&schema).unwrap();
    let plan = DecodePlan::new(&schema, &v2).unwrap();
    let t = sample_tickets(1).remove(0);
    let mut bytes = Vec::new();
    enc.encode(&t, &mut bytes).unwrap();
    let back: ExecutionTicket = plan.decode(&bytes).unwrap();
    assert_eq!(back, t);
    let json: serde_json::Value = plan.decode(&bytes).unwrap();
    assert_eq!(json["tenant"], "default");
    let ap = apache_avro::from_avro_datum(schema.inner(), &mut bytes.as_slice(), Some(v2.inner()))
        .unwrap();
    assert_eq!(plan.decode_value(&bytes).unwrap(), ap);
}

/// The same ticket with fields declared in a different order and the
/// defaulted tail left out: encoding must still follow schema order.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct ShuffledTicket {
    description: String,
    ticket_id: String,
    sla: serde_json::Value,
    qos: serde_json::Value,
    plan_id: String,
    intent_id: String,
    decision_id: String,
    task_id: String,
    task_type: String,
    dependencies: Vec<String>,
    priority: String,
    risk_band: String,
    security_level: String,
    created_at: i64,
    parameters: HashMap<String, String>,
}

#[test]
fn out_of_order_struct_with_defaults() {
    let schema = Schema::parse_str(EXECUTION_TICKET_SCHEMA).unwrap();
    let enc = EncodePlan::new(&schema).unwrap();
    let dec = DecodePlan::identity(&schema).unwrap();
    let s = ShuffledTicket {
        description: "d".into(),
        ticket_id: "t".into(),
        sla: serde_json::json!({"max_retries": 2, "deadline": 5, "timeout_ms": 9}),
        qos: serde_json::json!({"delivery_mode": "AT_MOST_ONCE", "consistency": "EVENTUAL", "durability": "TRANSIENT"}),
        plan_id: "p".into(),
        intent_id: "i".into(),
        decision_id: "x".into(),
        task_id: "k".into(),
        task_type: "QUERY".into(),
        dependencies: vec!["a".into()],
        priority: "LOW".into(),
        risk_band: "critical".into(),
        security_level: "PUBLIC".into(),
        created_at: 42,
        parameters: HashMap::new(),
    };
    let mut bytes = Vec::new();
    enc.encode(&s, &mut bytes).unwrap();
    let full: ExecutionTicket = dec.decode(&bytes).unwrap();
    assert_eq!(full.ticket_id, "t");
    assert_eq!(full.sla.max_retries, 2);
    assert_eq!(
        full.schema_version, 1,
        "default written for the missing field"
    );
    assert_eq!(full.status as u8, 0, "enum default PENDING");
    let back: ShuffledTicket = dec.decode(&bytes).unwrap();
    assert_eq!(back, s);
    let ap = apache_avro::from_avro_datum(schema.inner(), &mut bytes.as_slice(), None).unwrap();
    assert_eq!(value_to_json(&ap)["sla"]["timeout_ms"], 9);
}

#[test]
fn other_reference_schemas_parse_and_compile() {
    for f in [
        "cognitive-plan",
        "consolidated-decision",
        "execution-result",
        "execution-ticket",
    ] {
        let text = std::fs::read_to_string(format!("../schemas/{f}/{f}.avsc")).unwrap();
        let s = Schema::parse_str(&text).unwrap();
        EncodePlan::new(&s).unwrap();
        DecodePlan::identity(&s).unwrap();
        assert!(!s.canonical_form().is_empty());
        println!(
            "{f}: misplaced logical types {:?}",
            s.misplaced_logical_types()
        );
    }
}
