//! The JSON-to-Avro migration behaviour, through the test driver: both formats read on
//! one topic, validation before sending, the JSON fallback when the registry is down at
//! start-up (and refusing to start with `fallback = fail`), and a registry going down
//! mid-run.

#![allow(clippy::unwrap_used)] // tests state their expectations with unwrap

use std::sync::Arc;
use std::time::Duration;

use engine::record::Headers;
use engine::registry::{MemoryRegistry, RegistryConfig, SchemaRegistry, server};
use engine::serde::{
    AvroContext, AvroSerde, AvroSettings, Fallback, MAGIC_BYTE, Serde, SerdeRole, Serdes,
};
use engine::testing::TestDriver;
use engine::topology::{ErrorPolicy, Outcome, Topic, Topology, TopologyBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const ORDER_SCHEMA: &str = r#"{"type": "record", "name": "Order", "namespace": "shop", "fields": [
    {"name": "id", "type": "string"},
    {"name": "amount", "type": "long"},
    {"name": "note", "type": ["null", "string"], "default": null}
]}"#;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    id: String,
    amount: i64,
    note: Option<String>,
}

fn memory_context() -> AvroContext {
    AvroContext {
        registry: Some(SchemaRegistry::memory(Arc::new(MemoryRegistry::new()))),
        ..Default::default()
    }
}

fn unreachable_context(fallback: Fallback) -> AvroContext {
    let config = RegistryConfig::new("http://127.0.0.1:1").with_retries(
        1,
        Duration::from_millis(10),
        Duration::from_millis(20),
    );
    AvroContext {
        registry: Some(SchemaRegistry::connect(config, &Default::default()).unwrap()),
        settings: AvroSettings {
            fallback,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// orders -> amount doubled -> doubled, with a dead-letter topic.
fn doubler(ctx: &AvroContext) -> Topology {
    let serde = || ctx.value_serde::<Order>(ORDER_SCHEMA).unwrap();
    let b = TopologyBuilder::new("doubler");
    b.error_policy(ErrorPolicy::dead_letter("orders.dlq"));
    b.stream(&Topic::new("orders", Serdes::string(), serde()))
        .named("orders")
        .map_values(|mut o: Order| {
            o.amount *= 2;
            o
        })
        .named("double")
        .to(&Topic::new("doubled", Serdes::string(), serde()))
        .named("doubled");
    b.build().unwrap()
}

fn order(id: &str, amount: i64) -> Order {
    Order {
        id: id.into(),
        amount,
        note: None,
    }
}

#[test]
fn avro_and_legacy_json_are_read_from_one_topic_and_anything_else_is_dead_lettered() {
    let ctx = memory_context();
    let driver = TestDriver::new(doubler(&ctx));
    // An upstream producer already on Avro, sharing the registry.
    let upstream: AvroSerde<Order> = ctx.value_serde(ORDER_SCHEMA).unwrap();
    let mut avro = Vec::new();
    upstream
        .serialize("orders", &order("a", 1), &mut avro)
        .unwrap();
    assert_eq!(avro[0], MAGIC_BYTE);
    driver
        .pipe_raw("orders", Some(b"k"), Some(&avro), 1, Headers::new())
        .unwrap();
    // A producer still on JSON.
    let legacy = br#"{"id": "b", "amount": 2, "note": "legacy"}"#;
    driver
        .pipe_raw("orders", Some(b"k"), Some(legacy), 2, Headers::new())
        .unwrap();
    // Neither.
    let garbage = b"\x07not a record";
    assert_eq!(
        driver.pipe_raw("orders", Some(b"k"), Some(garbage), 3, Headers::new()),
        Ok(Outcome::DeadLettered)
    );

    let first = read_order(&driver);
    assert_eq!(first.0[0], MAGIC_BYTE, "output is Avro");
    assert_eq!(first.1, order("a", 2));
    let second = read_order(&driver);
    assert_eq!(
        second.1,
        Order {
            id: "b".into(),
            amount: 4,
            note: Some("legacy".into())
        }
    );

    let dead = driver.read_raw("orders.dlq").unwrap();
    assert_eq!(dead.value.as_deref(), Some(&garbage[..]));
    let message = dead.headers.last_str("engine.error.message").unwrap();
    assert!(
        message.contains("neither Confluent Avro") && message.contains("0x07"),
        "{message}"
    );
    assert_eq!(dead.headers.last_str("engine.source.offset"), Some("2"));
}

/// Reads the next output of `doubled` as raw bytes and decoded with the order schema.
fn read_order(driver: &TestDriver) -> (Vec<u8>, Order) {
    let bytes = driver.read_raw("doubled").unwrap().value.unwrap();
    let [MAGIC_BYTE, _, _, _, _, body @ ..] = bytes.as_slice() else {
        panic!("not Confluent Avro: {bytes:?}");
    };
    let schema = engine::serde::avro::Schema::parse_str(ORDER_SCHEMA).unwrap();
    let decoded = engine::serde::avro::DecodePlan::identity(&schema)
        .unwrap()
        .decode::<Order>(body)
        .unwrap();
    (bytes, decoded)
}

#[test]
fn a_value_that_does_not_fit_its_schema_is_refused_naming_the_field_and_nothing_is_sent() {
    let ctx = memory_context();
    let generic = || ctx.value_serde::<Value>(ORDER_SCHEMA).unwrap();
    let b = TopologyBuilder::new("validate");
    b.error_policy(ErrorPolicy::dead_letter("dlq"));
    b.stream(&Topic::new("in", Serdes::string(), Serdes::json::<Value>()))
        .named("in")
        .to(&Topic::new("out", Serdes::string(), generic()))
        .named("out");
    let driver = TestDriver::new(b.build().unwrap());
    let input = driver.input_topic("in", Serdes::string(), Serdes::json::<Value>());
    input
        .pipe("k".into(), json!({"id": "x", "amount": 5}))
        .unwrap();
    assert!(
        driver.read_raw("out").is_some(),
        "a conforming value is written"
    );
    input
        .pipe("k".into(), json!({"id": "y", "amount": "five"}))
        .unwrap();
    assert!(
        driver.read_raw("out").is_none(),
        "nothing is sent for a bad value"
    );
    let dead = driver.read_raw("dlq").unwrap();
    assert_eq!(
        dead.headers.last_str("engine.error.class"),
        Some("processing")
    );
    assert_eq!(dead.headers.last_str("engine.error.field"), Some("amount"));
}

#[test]
fn registry_down_at_start_up_falls_back_to_json_loudly() {
    let ctx = unreachable_context(Fallback::Json);
    let driver = TestDriver::new(doubler(&ctx));
    assert!(ctx.health.degraded(), "health says degraded");
    let input = driver.input_topic("orders", Serdes::string(), Serdes::json::<Order>());
    input.pipe("k".into(), order("a", 21)).unwrap();
    let out = driver.read_raw("doubled").unwrap();
    let value: Value = serde_json::from_slice(out.value.as_deref().unwrap()).unwrap();
    assert_eq!(value, json!({"id": "a", "amount": 42, "note": null}));
    assert_eq!(ctx.health.fallback_records(), 1, "counted");
}

#[test]
fn registry_down_at_start_up_with_fallback_fail_refuses_to_start() {
    let ctx = unreachable_context(Fallback::Fail);
    let problems = doubler(&ctx).prepare().unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("node `doubled`") && problems[0].contains("fallback = fail"),
        "{}",
        problems[0]
    );
}

#[test]
fn registry_down_mid_run_keeps_cached_schemas_and_dead_letters_unknown_ids() {
    let memory = Arc::new(MemoryRegistry::new());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (addr, serving) = {
        let _guard = rt.enter();
        server::serve(memory.clone(), "127.0.0.1:0".parse().unwrap()).unwrap()
    };
    let server = rt.spawn(serving);
    let config = RegistryConfig::new(format!("http://{addr}")).with_retries(
        2,
        Duration::from_millis(10),
        Duration::from_millis(50),
    );
    let ctx = AvroContext {
        registry: Some(SchemaRegistry::connect(config, &Default::default()).unwrap()),
        ..Default::default()
    };
    let driver = TestDriver::new(doubler(&ctx));
    let upstream: AvroSerde<Order> = ctx.value_serde(ORDER_SCHEMA).unwrap();
    let mut avro = Vec::new();
    upstream
        .serialize("orders", &order("a", 1), &mut avro)
        .unwrap();
    driver
        .pipe_raw("orders", Some(b"k"), Some(&avro), 1, Headers::new())
        .unwrap();
    assert!(driver.read_raw("doubled").is_some());

    server.abort();
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
    // The writer id is cached: the same schema still decodes and encodes.
    assert_eq!(
        driver.pipe_raw("orders", Some(b"k"), Some(&avro), 2, Headers::new()),
        Ok(Outcome::Processed)
    );
    assert!(driver.read_raw("doubled").is_some());
    // An id never seen: retried, then the error policy.
    let mut unknown = avro.clone();
    unknown[1..5].copy_from_slice(&999i32.to_be_bytes());
    assert_eq!(
        driver.pipe_raw("orders", Some(b"k"), Some(&unknown), 3, Headers::new()),
        Ok(Outcome::DeadLettered)
    );
    let dead = driver.read_raw("orders.dlq").unwrap();
    let message = dead.headers.last_str("engine.error.message").unwrap();
    assert!(message.contains("schema id 999"), "{message}");
    assert_eq!(ctx.health.unknown_schema_errors(), 1);
}

#[test]
fn keys_and_values_use_topic_name_subjects_by_default() {
    let ctx = memory_context();
    let value: AvroSerde<Order> = ctx.value_serde(ORDER_SCHEMA).unwrap();
    let key: AvroSerde<Order> = ctx.key_serde(ORDER_SCHEMA).unwrap();
    assert_eq!(value.subject("orders"), "orders-value");
    assert_eq!(key.subject("orders"), "orders-key");
    value.prepare("orders", SerdeRole::Write).unwrap();
    let registry = ctx.registry.as_ref().unwrap();
    assert_eq!(
        registry.subjects().unwrap(),
        vec!["orders-value".to_string()]
    );
}
