//! The DSL's declaring forms, through the test driver: topics declared once, generated
//! and given names, closures that may fail into the error policy, typed splits, typed
//! store handles, deduplication and the stream-table join that waits for its table.

use std::time::Duration;

use engine::record::Record;
use engine::serde::Serdes;
use engine::state::StoreError;
use engine::testing::TestDriver;
use engine::topology::{
    Branch, ErrorClass, ErrorPolicy, Joined, Problem, ProcessingError, Processor, ProcessorContext,
    StoreBuilder, StoreRef, Topic, TopologyBuilder, TopologyError,
};

fn s(v: &str) -> String {
    v.to_string()
}

fn strings(topic: &str) -> Topic<String, String> {
    Topic::new(topic, Serdes::string(), Serdes::string())
}

#[test]
fn nodes_get_kafka_streams_style_names_unless_named() {
    let b = TopologyBuilder::new("t");
    b.stream(&strings("in"))
        .filter(|_k, v: &String| !v.is_empty())
        .map_values(|v: String| v.len() as i64)
        .named("lengths")
        .to(&Topic::new("out", Serdes::string(), Serdes::i64()));
    let text = b.build().unwrap().describe();
    for node in [
        "KSTREAM-SOURCE-0000000000",
        "KSTREAM-FILTER-0000000001",
        "lengths",
        "KSTREAM-SINK-0000000003",
    ] {
        assert!(text.contains(node), "{node} missing from:\n{text}");
    }
    assert!(!text.contains("KSTREAM-MAPVALUES"), "renamed:\n{text}");
}

#[test]
fn a_name_given_where_it_fixes_a_store_cannot_be_changed_later() {
    let b = TopologyBuilder::new("t");
    b.stream(&strings("in"))
        .deduplicate(
            "seen",
            |k: &String, _v: &String| k.clone(),
            Serdes::string(),
            Duration::from_secs(60),
        )
        .named("other")
        .to(&strings("out"));
    let Err(TopologyError::Invalid { problems, .. }) = b.build() else {
        panic!("renaming a node that names its store must be refused");
    };
    assert_eq!(
        problems,
        vec![Problem::FixedName {
            node: s("seen"),
            name: s("other"),
        }]
    );
    assert!(
        problems[0]
            .to_string()
            .contains("pass `other` to the operator"),
        "says how to fix it: {}",
        problems[0]
    );
}

#[test]
fn two_nodes_named_alike_are_reported() {
    let b = TopologyBuilder::new("t");
    let source = b.stream(&strings("in")).named("x");
    source.peek(|_, _| {}).named("x").to(&strings("out"));
    let problems = b.validate();
    assert!(
        problems.contains(&Problem::DuplicateName { name: s("x") }),
        "{problems:?}"
    );
}

#[test]
fn topics_declared_once_serve_the_source_the_sink_and_the_driver() {
    let words = strings("words");
    let shouts = strings("shouts");
    let b = TopologyBuilder::new("t");
    b.stream(&words)
        .map_values(|v: String| v.to_uppercase())
        .to(&shouts);
    let driver = TestDriver::new(b.build().unwrap());
    driver.input(&words).pipe(s("k"), s("hey")).unwrap();
    assert_eq!(
        driver.output(&shouts).read_key_values(),
        vec![(s("k"), s("HEY"))]
    );
}

#[test]
fn try_map_values_errors_reach_the_error_policy_with_their_field() {
    let amounts = strings("amounts");
    let b = TopologyBuilder::new("t");
    b.error_policy(ErrorPolicy::dead_letter("amounts.dlq"));
    b.stream(&amounts)
        .try_map_values(|_k, v: String| {
            v.parse::<i64>()
                .map_err(|e| ProcessingError::field("amount", e.to_string()))
        })
        .to(&Topic::new("parsed", Serdes::string(), Serdes::i64()));
    let driver = TestDriver::new(b.build().unwrap());
    let input = driver.input(&amounts);
    input.pipe(s("a"), s("12")).unwrap();
    input.pipe(s("b"), s("twelve")).unwrap();
    assert_eq!(
        driver
            .output_topic("parsed", Serdes::string(), Serdes::i64())
            .read_key_values(),
        vec![(s("a"), 12)]
    );
    let dead = driver.read_raw("amounts.dlq").expect("dead-lettered");
    assert_eq!(
        dead.value.as_deref(),
        Some(&b"twelve"[..]),
        "original bytes"
    );
    let field = dead
        .headers
        .last_str(engine::topology::dead_letter_headers::ERROR_FIELD);
    assert_eq!(field, Some("amount"));
}

#[test]
fn try_map_and_try_filter_fail_the_record_under_the_default_policy() {
    let b = TopologyBuilder::new("t");
    let kept = b
        .stream(&strings("in"))
        .try_filter(|_k, v: &String| {
            if v.is_empty() {
                Err(ProcessingError::field("value", "empty"))
            } else {
                Ok(v != "drop")
            }
        })
        .try_map(|k: String, v: String| {
            let n: i64 = v
                .parse()
                .map_err(|_| ProcessingError::field("count", format!("`{v}` is not a number")))?;
            Ok((k, n * 2))
        });
    kept.to(&Topic::new("out", Serdes::string(), Serdes::i64()));
    let driver = TestDriver::new(b.build().unwrap());
    let input = driver.input(&strings("in"));
    input.pipe(s("k"), s("21")).unwrap();
    input.pipe(s("k"), s("drop")).unwrap();
    let err = input.pipe(s("k"), s("")).unwrap_err();
    assert_eq!(
        (err.class, err.field.as_deref()),
        (ErrorClass::Processing, Some("value"))
    );
    let err = input.pipe(s("k"), s("x")).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("count"));
    assert!(err.to_string().contains("`x` is not a number"), "{err}");
    assert_eq!(
        driver
            .output_topic("out", Serdes::string(), Serdes::i64())
            .read_values(),
        vec![42]
    );
}

#[test]
fn filter_map_values_and_flat_map_values_keep_the_key() {
    let b = TopologyBuilder::new("t");
    let source = b.stream(&strings("in"));
    source
        .filter_map_values(|_k, v: String| v.parse::<i64>().ok())
        .to(&Topic::new("numbers", Serdes::string(), Serdes::i64()));
    source
        .flat_map_values(|v: String| v.split(',').map(str::to_string).collect::<Vec<_>>())
        .to(&strings("parts"));
    let driver = TestDriver::new(b.build().unwrap());
    driver.input(&strings("in")).pipe(s("k"), s("1,2")).unwrap();
    driver.input(&strings("in")).pipe(s("j"), s("7")).unwrap();
    assert_eq!(
        driver
            .output_topic("numbers", Serdes::string(), Serdes::i64())
            .read_key_values(),
        vec![(s("j"), 7)]
    );
    assert_eq!(
        driver.output(&strings("parts")).read_key_values(),
        vec![(s("k"), s("1")), (s("k"), s("2")), (s("j"), s("7"))]
    );
}

#[derive(Clone, Debug, PartialEq)]
enum Reading {
    Celsius(f64),
    Broken(String),
}

#[test]
fn split_branches_narrow_the_type_once_and_the_default_takes_the_rest() {
    let b = TopologyBuilder::new("t");
    let temperatures = Topic::new("celsius", Serdes::string(), Serdes::json::<f64>());
    b.stream(&strings("in"))
        .map_values(|v: String| match v.parse() {
            Ok(c) => Reading::Celsius(c),
            Err(_) => Reading::Broken(v),
        })
        .split()
        .named("route")
        .branch_map(
            |_k, r| match r {
                Reading::Celsius(c) if c > 100.0 => Branch::Take(c),
                other => Branch::Pass(other),
            },
            |boiling| drop(boiling.to(&temperatures.clone())),
        )
        .branch_map(
            |_k, r| match r {
                Reading::Broken(text) => Branch::Take(text),
                other => Branch::Pass(other),
            },
            |broken| drop(broken.to(&strings("broken"))),
        )
        .default_branch(|rest| {
            rest.map_values(|r| format!("{r:?}")).to(&strings("rest"));
        });
    let topology = b.build().unwrap();
    assert!(topology.describe().contains("route"));
    let driver = TestDriver::new(topology);
    for v in ["120", "oops", "20", "101.5"] {
        driver.input(&strings("in")).pipe(s("k"), s(v)).unwrap();
    }
    assert_eq!(
        driver.output(&temperatures).read_values(),
        vec![120.0, 101.5]
    );
    assert_eq!(
        driver.output(&strings("broken")).read_values(),
        vec![s("oops")]
    );
    assert_eq!(
        driver.output(&strings("rest")).read_values(),
        vec![s("Celsius(20.0)")]
    );
}

#[test]
fn a_split_without_default_drops_what_no_branch_takes() {
    let b = TopologyBuilder::new("t");
    b.stream(&strings("in")).split().branch(
        |_k, v: &String| v.starts_with('a'),
        |a| drop(a.to(&strings("a"))),
    );
    let driver = TestDriver::new(b.build().unwrap());
    for v in ["apple", "banana"] {
        driver.input(&strings("in")).pipe(s("k"), s(v)).unwrap();
    }
    assert_eq!(driver.output(&strings("a")).read_values(), vec![s("apple")]);
}

/// Counts per key with a typed store handle and `?` on store errors.
struct CountWithHandle {
    counts: StoreRef<String, i64>,
}

impl Processor<String, String, String, i64> for CountWithHandle {
    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, i64>,
    ) -> Result<(), ProcessingError> {
        let mut counts = ctx.store(&self.counts)?;
        let n = counts.get(&record.key)?.unwrap_or(0) + 1;
        counts.put(&record.key, &n)?;
        ctx.forward(record.with_value(n));
        Ok(())
    }
}

#[test]
fn a_store_handle_types_the_store_and_its_errors_convert() {
    let b = TopologyBuilder::new("t");
    let counts = b.add_store(StoreBuilder::in_memory(
        "counts",
        Serdes::string(),
        Serdes::i64(),
    ));
    let handle = counts.clone();
    b.stream(&strings("in"))
        .process_with_stores(&[counts.name()], move || CountWithHandle {
            counts: handle.clone(),
        })
        .to(&Topic::new("out", Serdes::string(), Serdes::i64()));
    let driver = TestDriver::new(b.build().unwrap());
    for k in ["a", "b", "a"] {
        driver.input(&strings("in")).pipe(s(k), s("x")).unwrap();
    }
    assert_eq!(
        driver
            .output_topic("out", Serdes::string(), Serdes::i64())
            .read_values(),
        vec![1, 1, 2]
    );
    assert_eq!(driver.store_get::<String, i64>("counts", &s("a")), Some(2));

    // Without declaring the store, the node's `?` turns the store error into a
    // processing error that keeps it as its source.
    let b = TopologyBuilder::new("t");
    let counts = b.add_store(StoreBuilder::in_memory(
        "counts",
        Serdes::string(),
        Serdes::i64(),
    ));
    b.stream(&strings("in"))
        .process(move || CountWithHandle {
            counts: counts.clone(),
        })
        .to(&Topic::new("out", Serdes::string(), Serdes::i64()));
    let driver = TestDriver::new(b.build().unwrap());
    let err = driver
        .input(&strings("in"))
        .pipe(s("a"), s("x"))
        .unwrap_err();
    assert!(err.message.contains("counts"), "{err}");
    let converted = ProcessingError::from(StoreError::NotConnected {
        node: s("n"),
        store: s("counts"),
    });
    assert!(
        std::error::Error::source(&converted).is_some(),
        "the store error is kept as the source: {converted:?}"
    );
}

#[test]
fn deduplicate_passes_the_first_of_each_id_within_the_window() {
    let b = TopologyBuilder::new("t");
    b.stream(&strings("in"))
        .deduplicate(
            "ids",
            |_k: &String, v: &String| v.split(':').next().unwrap_or("").to_string(),
            Serdes::string(),
            Duration::from_secs(60),
        )
        .to(&strings("out"));
    let driver = TestDriver::new(b.build().unwrap());
    let input = driver.input(&strings("in"));
    input.pipe_at(s("k"), s("1:first"), 1_000).unwrap();
    input.pipe_at(s("k"), s("2:first"), 2_000).unwrap();
    input.pipe_at(s("k"), s("1:again"), 30_000).unwrap();
    // The window (60 s after the first one) has passed: a new first occurrence.
    input.pipe_at(s("k"), s("1:later"), 62_000).unwrap();
    input.pipe_at(s("k"), s("1:again"), 63_000).unwrap();
    assert_eq!(
        driver.output(&strings("out")).read_values(),
        vec![s("1:first"), s("2:first"), s("1:later")]
    );
    assert_eq!(
        driver.metrics().skipped,
        2,
        "duplicates are counted as skipped"
    );
    let seen = driver
        .store_get::<String, engine::topology::FirstSeen>("ids", &s("1"))
        .expect("remembered");
    assert_eq!((seen.offset, seen.timestamp), (3, Some(62_000)));
}

#[test]
fn join_table_with_grace_joins_at_once_or_when_the_table_gets_the_key() {
    let orders = strings("orders");
    let payments = Topic::new("payments", Serdes::string(), Serdes::i64());
    let paid = strings("paid");
    let b = TopologyBuilder::new("t");
    let table = b.table("orders", &orders, "orders-store");
    b.stream(&payments)
        .join_table_with_grace(
            "paid-orders",
            &table,
            |amount: i64, order: &String| format!("{order}={amount}"),
            Joined::with(Serdes::string(), Serdes::i64()).grace(Duration::from_secs(3600)),
        )
        .to(&paid);
    let topology = b.build().unwrap();
    assert!(
        topology
            .stores()
            .iter()
            .any(|s| s.name == "paid-orders-waiting")
    );
    let driver = TestDriver::new(topology);
    driver.input(&orders).pipe(s("o1"), s("book")).unwrap();
    driver.input(&payments).pipe_at(s("o1"), 10, 100).unwrap();
    // Two payments overtake their order, and wait for it.
    driver.input(&payments).pipe_at(s("o2"), 20, 200).unwrap();
    driver.input(&payments).pipe_at(s("o2"), 21, 300).unwrap();
    assert_eq!(driver.output(&paid).read_values(), vec![s("book=10")]);
    driver
        .input(&orders)
        .pipe_at(s("o2"), s("pen"), 400)
        .unwrap();
    let released = driver.output(&paid).read_records();
    assert_eq!(
        released
            .iter()
            .map(|r| (r.key.as_str(), r.value.as_str(), r.timestamp))
            .collect::<Vec<_>>(),
        vec![("o2", "pen=20", 200), ("o2", "pen=21", 300)],
        "in arrival order, with their own timestamps"
    );
    assert_eq!(
        driver.store_get::<String, Vec<(i64, i64)>>("paid-orders-waiting", &s("o2")),
        None,
        "released records leave the store"
    );
    // The order changes later: nothing is waiting any more.
    driver.input(&orders).pipe(s("o2"), s("pencil")).unwrap();
    assert!(driver.output(&paid).is_empty());
}

#[test]
fn a_narrowing_step_whose_output_goes_nowhere_is_reported() {
    let b = TopologyBuilder::new("t");
    let source = b.stream(&strings("in"));
    source.to(&strings("copy"));
    source
        .filter_map_values(|_k, v: String| v.parse::<i64>().ok())
        .named("numbers");
    assert!(
        b.validate()
            .contains(&Problem::NoOutput { node: s("numbers") }),
        "{:?}",
        b.validate()
    );
}
