//! Topology logic through the test driver: every operator, the processor context,
//! punctuations, validation, describe, and the error policy.

#![allow(clippy::unwrap_used)] // tests state their expectations with unwrap

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::record::{Headers, Record, Timestamp};
use engine::serde::{Serdes, StringSerde};
use engine::testing::{TestDriver, TestDriverOptions};
use engine::topology::{
    ErrorPolicy, OnError, Outcome, Problem, ProcessingError, Processor, ProcessorContext,
    PunctuationType, ScheduleId, Topic, TopologyBuilder, TopologyError,
};

fn strings(topic: &str) -> Topic<String, String> {
    Topic::new(topic, Serdes::string(), Serdes::string())
}

fn to_strings(topic: &str) -> Topic<String, String> {
    Topic::new(topic, Serdes::string(), Serdes::string())
}

fn s(v: &str) -> String {
    v.to_string()
}

struct Io {
    driver: TestDriver,
}

impl Io {
    fn new(builder: TopologyBuilder) -> Io {
        Io {
            driver: TestDriver::new(builder.build().expect("valid topology")),
        }
    }
    fn pipe(&self, k: &str, v: &str) {
        self.driver
            .input_topic("in", Serdes::string(), Serdes::string())
            .pipe(s(k), s(v))
            .expect("processed");
    }
    fn out(&self, topic: &str) -> Vec<(String, String)> {
        self.driver
            .output_topic(topic, Serdes::string(), Serdes::string())
            .read_key_values()
    }
}

#[test]
fn map_replaces_key_and_value_and_keeps_timestamp_and_headers() {
    let b = TopologyBuilder::new("t");
    b.stream(&strings("in"))
        .named("in")
        .map(|k: String, v: String| (v, k))
        .named("swap")
        .to(&to_strings("out"))
        .named("out");
    let driver = TestDriver::new(b.build().unwrap());
    let input = driver.input_topic("in", Serdes::string(), Serdes::string());
    let mut record = Record::new(s("k"), s("v"), 42);
    record.headers = Headers::new().with("trace", "abc");
    input.pipe_record(record).unwrap();
    let out = driver
        .output_topic("out", Serdes::string(), Serdes::string())
        .read_record()
        .unwrap();
    assert_eq!((out.key.as_str(), out.value.as_str()), ("v", "k"));
    assert_eq!(out.timestamp, 42);
    assert_eq!(out.headers.last_str("trace"), Some("abc"));
}

#[test]
fn a_record_kept_by_filter_reaches_every_child_whole() {
    // filter and peek pass the record on as it came (without unboxing it): each of the
    // filter's two children gets the same key, value, timestamp and headers.
    let b = TopologyBuilder::new("t");
    let kept = b
        .stream(&strings("in"))
        .named("in")
        .filter(|_k, v: &String| v.len() > 2)
        .named("long")
        .peek(|_k, _v| {})
        .named("look");
    kept.to(&to_strings("out")).named("out");
    kept.map_values(|v: String| v.to_uppercase())
        .named("upper")
        .to(&to_strings("out-upper"))
        .named("out-upper");
    let driver = TestDriver::new(b.build().unwrap());
    let input = driver.input_topic("in", Serdes::string(), Serdes::string());
    for (v, ts) in [("ab", 1), ("abc", 2)] {
        let mut record = Record::new(s("k"), s(v), ts);
        record.headers = Headers::new().with("trace", v);
        input.pipe_record(record).unwrap();
    }
    for (topic, value) in [("out", "abc"), ("out-upper", "ABC")] {
        let records = driver
            .output_topic(topic, Serdes::string(), Serdes::string())
            .read_records();
        assert_eq!(records.len(), 1, "{topic}: only the long value is kept");
        let r = &records[0];
        assert_eq!((r.key.as_str(), r.value.as_str()), ("k", value));
        assert_eq!(r.timestamp, 2);
        assert_eq!(r.headers.last_str("trace"), Some("abc"));
    }
}

#[test]
fn map_values_filter_and_select_key() {
    let b = TopologyBuilder::new("t");
    b.stream(&strings("in"))
        .named("in")
        .filter(|_k, v: &String| v.len() > 2)
        .named("long")
        .map_values(|v: String| v.len() as i64)
        .named("len")
        .select_key(|_k, n: &i64| format!("len-{n}"))
        .named("by-len")
        .to(&Topic::new("out", Serdes::string(), Serdes::i64()))
        .named("out");
    let io = Io::new(b);
    for v in ["a", "abc", "abcd", "xy"] {
        io.pipe("k", v);
    }
    let out = io
        .driver
        .output_topic("out", Serdes::string(), Serdes::i64())
        .read_key_values();
    assert_eq!(out, vec![(s("len-3"), 3), (s("len-4"), 4)]);
}

#[test]
fn flat_map_emits_in_order_and_nothing_for_empty() {
    let b = TopologyBuilder::new("t");
    b.stream(&strings("in"))
        .named("in")
        .flat_map(|k: String, v: String| {
            v.split_whitespace()
                .map(|w| (k.clone(), w.to_string()))
                .collect::<Vec<_>>()
        })
        .named("words")
        .to(&to_strings("out"))
        .named("out");
    let io = Io::new(b);
    io.pipe("a", "one two three");
    io.pipe("b", "");
    io.pipe("c", "four");
    assert_eq!(
        io.out("out"),
        vec![
            (s("a"), s("one")),
            (s("a"), s("two")),
            (s("a"), s("three")),
            (s("c"), s("four"))
        ]
    );
}

#[test]
fn branch_routes_to_the_first_match_and_drops_unmatched() {
    let b = TopologyBuilder::new("t");
    b.stream(&strings("in"))
        .split()
        .branch(
            |_k, v: &String| v.starts_with('a'),
            |a| drop(a.to(&to_strings("a"))),
        )
        .branch(
            |_k, v: &String| v.starts_with("ab"),
            |ab| drop(ab.to(&to_strings("ab"))),
        )
        .branch(
            |_k, v: &String| v.starts_with('b'),
            |b| drop(b.to(&to_strings("b"))),
        );
    let io = Io::new(b);
    for v in ["abc", "bcd", "zzz", "a"] {
        io.pipe("k", v);
    }
    assert_eq!(io.out("a"), vec![(s("k"), s("abc")), (s("k"), s("a"))]);
    assert!(io.out("ab").is_empty(), "first matching branch wins");
    assert_eq!(io.out("b"), vec![(s("k"), s("bcd"))]);
}

#[test]
fn branch_otherwise_takes_the_rest() {
    let b = TopologyBuilder::new("t");
    b.stream(&strings("in"))
        .split()
        .branch(|_k, v: &String| v == "x", |x| drop(x.to(&to_strings("x"))))
        .default_branch(|rest| drop(rest.to(&to_strings("rest"))));
    let io = Io::new(b);
    io.pipe("k", "x");
    io.pipe("k", "y");
    assert_eq!(io.out("x"), vec![(s("k"), s("x"))]);
    assert_eq!(io.out("rest"), vec![(s("k"), s("y"))]);
}

#[test]
fn merge_combines_two_streams_keeping_each_order() {
    let b = TopologyBuilder::new("t");
    let left = b.stream(&strings("in")).named("in");
    let right = b.stream(&strings("in2")).named("in2");
    left.merge(&right)
        .named("both")
        .to(&to_strings("out"))
        .named("out");
    let io = Io::new(b);
    let in2 = io
        .driver
        .input_topic("in2", Serdes::string(), Serdes::string());
    io.pipe("l", "1");
    in2.pipe(s("r"), s("2")).unwrap();
    io.pipe("l", "3");
    assert_eq!(
        io.out("out"),
        vec![(s("l"), s("1")), (s("r"), s("2")), (s("l"), s("3"))]
    );
}

#[test]
fn peek_and_for_each_see_every_record() {
    let peeked = Arc::new(Mutex::new(Vec::new()));
    let counted = Arc::new(AtomicUsize::new(0));
    let b = TopologyBuilder::new("t");
    let stream = b.stream(&strings("in")).named("in");
    let p = peeked.clone();
    stream
        .peek(move |k: &String, v: &String| p.lock().unwrap().push(format!("{k}={v}")))
        .named("look")
        .to(&to_strings("out"))
        .named("out");
    let c = counted.clone();
    stream
        .for_each(move |_k, _v| {
            c.fetch_add(1, Ordering::Relaxed);
        })
        .named("count");
    let io = Io::new(b);
    io.pipe("a", "1");
    io.pipe("b", "2");
    assert_eq!(*peeked.lock().unwrap(), vec!["a=1", "b=2"]);
    assert_eq!(counted.load(Ordering::Relaxed), 2);
    assert_eq!(io.out("out").len(), 2, "peek passes records on");
}

#[test]
fn fan_out_gives_each_child_its_own_copy_depth_first() {
    let b = TopologyBuilder::new("t");
    let stream = b.stream(&strings("in")).named("in");
    stream
        .map_values(|v: String| format!("{v}-1"))
        .named("first")
        .to(&to_strings("out"))
        .named("out1");
    stream
        .map_values(|v: String| format!("{v}-2"))
        .named("second")
        .to(&to_strings("out"))
        .named("out2");
    let io = Io::new(b);
    io.pipe("k", "a");
    io.pipe("k", "b");
    assert_eq!(
        io.out("out"),
        vec![
            (s("k"), s("a-1")),
            (s("k"), s("a-2")),
            (s("k"), s("b-1")),
            (s("k"), s("b-2"))
        ]
    );
}

/// Tags each record with its context, routes by parity, and counts on punctuations.
struct Inspect {
    seen: u64,
    wall: Option<ScheduleId>,
    stream: Option<ScheduleId>,
}

impl Processor<String, String, String, String> for Inspect {
    fn init(
        &mut self,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<(), ProcessingError> {
        self.wall = Some(ctx.schedule(Duration::from_secs(10), PunctuationType::WallClockTime));
        self.stream = Some(ctx.schedule(Duration::from_millis(100), PunctuationType::StreamTime));
        Ok(())
    }

    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<(), ProcessingError> {
        self.seen += 1;
        let tag = format!(
            "{}|topic={}|p={}|off={}|ts={}|h={}",
            record.value,
            ctx.topic().unwrap_or("-"),
            ctx.partition(),
            ctx.offset().unwrap_or(-1),
            record.timestamp,
            record.headers.last_str("h").unwrap_or("-"),
        );
        let child = if self.seen % 2 == 1 {
            "inspect-odd"
        } else {
            "inspect-even"
        };
        let key = record.key.clone();
        ctx.forward_to(child, record.with_key_value(key, tag))
    }

    fn punctuate(
        &mut self,
        schedule: ScheduleId,
        timestamp: Timestamp,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<(), ProcessingError> {
        let kind = if Some(schedule) == self.wall {
            "wall"
        } else {
            "stream"
        };
        let record = Record::new(
            s(kind),
            format!("seen={} at={timestamp}", self.seen),
            timestamp,
        );
        ctx.forward_to("inspect-punctuations", record)
    }
}

fn inspect_topology() -> TopologyBuilder {
    let b = TopologyBuilder::new("t");
    let out = b
        .stream(&strings("in"))
        .named("in")
        .process(|| Inspect {
            seen: 0,
            wall: None,
            stream: None,
        })
        .named("inspect");
    // A child of `inspect` besides the ones wired by name below.
    out.to(&to_strings("unused")).named("unused");
    b.add_processor::<String, String, String, String, _>("inspect-odd", &["inspect"], || Pass)
        .to(&to_strings("odd"))
        .named("odd");
    b.add_processor::<String, String, String, String, _>("inspect-even", &["inspect"], || Pass)
        .to(&to_strings("even"))
        .named("even");
    b.add_processor::<String, String, String, String, _>(
        "inspect-punctuations",
        &["inspect"],
        || Pass,
    )
    .to(&to_strings("punctuations"))
    .named("punct");
    b
}

struct Pass;
impl Processor<String, String, String, String> for Pass {
    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<(), ProcessingError> {
        ctx.forward(record);
        Ok(())
    }
}

#[test]
fn process_sees_its_context_and_forwards_to_named_children() {
    let io = Io::new(inspect_topology());
    let input = io
        .driver
        .input_topic("in", Serdes::string(), Serdes::string());
    let mut first = Record::new(s("k"), s("a"), 1_000);
    first.headers = Headers::new().with("h", "x");
    input.pipe_record(first).unwrap();
    input.pipe_at(s("k"), s("b"), 1_010).unwrap();
    input.pipe_at(s("k"), s("c"), 1_020).unwrap();
    assert_eq!(
        io.out("odd"),
        vec![
            (s("k"), s("a|topic=in|p=0|off=0|ts=1000|h=x")),
            (s("k"), s("c|topic=in|p=0|off=2|ts=1020|h=-"))
        ]
    );
    assert_eq!(
        io.out("even"),
        vec![(s("k"), s("b|topic=in|p=0|off=1|ts=1010|h=-"))]
    );
    assert!(
        io.out("unused").is_empty(),
        "forward_to reaches only the named child"
    );
}

#[test]
fn stream_time_punctuation_fires_as_timestamps_advance() {
    let io = Io::new(inspect_topology());
    let input = io
        .driver
        .input_topic("in", Serdes::string(), Serdes::string());
    input.pipe_at(s("k"), s("a"), 1_000).unwrap(); // first stream time: fires at 1_100
    input.pipe_at(s("k"), s("b"), 1_050).unwrap();
    assert!(io.out("punctuations").is_empty());
    input.pipe_at(s("k"), s("c"), 1_350).unwrap(); // fires once, however many intervals passed
    input.pipe_at(s("k"), s("d"), 1_000).unwrap(); // late record: stream time does not go back
    assert_eq!(
        io.out("punctuations"),
        vec![(s("stream"), s("seen=3 at=1350"))]
    );
    input.pipe_at(s("k"), s("e"), 1_400).unwrap(); // next due at 1_400 on the grid
    assert_eq!(
        io.out("punctuations"),
        vec![(s("stream"), s("seen=5 at=1400"))]
    );
}

#[test]
fn wall_clock_punctuation_fires_without_input() {
    let io = Io::new(inspect_topology());
    io.driver
        .advance_wall_clock(Duration::from_secs(9))
        .unwrap();
    assert!(io.out("punctuations").is_empty());
    io.driver
        .advance_wall_clock(Duration::from_secs(1))
        .unwrap();
    assert_eq!(
        io.out("punctuations"),
        vec![(s("wall"), s("seen=0 at=10000"))]
    );
    io.driver
        .advance_wall_clock(Duration::from_secs(35))
        .unwrap();
    assert_eq!(
        io.out("punctuations"),
        vec![(s("wall"), s("seen=0 at=45000"))],
        "missed intervals fire once"
    );
    assert_eq!(io.driver.metrics().punctuations, 2);
}

#[test]
fn sink_partitioner_chooses_the_partition() {
    let b = TopologyBuilder::new("t");
    b.stream(&strings("in"))
        .to(&to_strings("out").partitioner(|k: &String, _v: &String, n| k.len() as i32 % n));
    let driver = TestDriver::with_options(
        b.build().unwrap(),
        TestDriverOptions {
            partition_counts: [(s("out"), 3)].into_iter().collect(),
            ..Default::default()
        },
    );
    let input = driver.input_topic("in", Serdes::string(), Serdes::string());
    input.pipe(s("abcd"), s("v")).unwrap();
    input.pipe(s("ab"), s("v")).unwrap();
    assert_eq!(driver.read_raw("out").unwrap().partition, Some(1));
    assert_eq!(driver.read_raw("out").unwrap().partition, Some(2));
}

#[test]
fn records_written_to_a_topic_the_topology_reads_are_fed_back() {
    let b = TopologyBuilder::new("t");
    b.stream(&strings("in"))
        .named("in")
        .map_values(|v: String| format!("{v}+1"))
        .named("stage1")
        .to(&to_strings("mid"))
        .named("to-mid");
    b.stream(&strings("mid"))
        .named("mid")
        .map_values(|v: String| format!("{v}+2"))
        .named("stage2")
        .to(&to_strings("out"))
        .named("out");
    let io = Io::new(b);
    io.pipe("k", "v");
    assert_eq!(io.out("out"), vec![(s("k"), s("v+1+2"))]);
}

// ---- validation and describe ----

fn problems(b: TopologyBuilder) -> Vec<Problem> {
    match b.build() {
        Err(TopologyError::Invalid { problems, .. }) => problems,
        Ok(_) => panic!("expected an invalid topology"),
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[test]
fn validation_reports_every_problem_at_once() {
    let b = TopologyBuilder::new("t");
    let stream = b.stream(&strings("in")).named("in");
    stream
        .map_values(|v: String| v)
        .named("dup")
        .to(&to_strings("out"))
        .named("out");
    stream
        .map_values(|v: String| v)
        .named("dup")
        .to(&to_strings("out"))
        .named("out2");
    // Dangling edge: a parent that does not exist.
    b.add_processor::<String, String, String, String, _>("orphan", &["ghost"], || Pass)
        .to(&to_strings("out"))
        .named("orphan-out");
    // Cycle between two by-name processors, fed by nothing.
    b.add_processor::<String, String, String, String, _>("loop-a", &["loop-b"], || Pass);
    b.add_processor::<String, String, String, String, _>("loop-b", &["loop-a"], || Pass);
    // A child expecting other types than its parent produces.
    b.add_processor::<String, i64, String, String, _>("wrong-types", &["in"], || WrongTypes)
        .to(&to_strings("out"))
        .named("wrong-out");
    // A topic written with strings and read back as i64.
    stream.to(&to_strings("loopback")).named("to-loopback");
    b.stream(&Topic::new("loopback", Serdes::string(), Serdes::i64()))
        .named("loopback")
        .to(&Topic::new("out2", Serdes::string(), Serdes::i64()))
        .named("lb-out");
    // A pure transform whose output goes nowhere.
    stream.filter(|_k, _v| true).named("nowhere");
    let problems = problems(b);
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    let has = |f: &dyn Fn(&Problem) -> bool| problems.iter().any(f);
    assert!(
        has(&|p| matches!(p, Problem::DuplicateName { name } if name == "dup")),
        "{text:#?}"
    );
    assert!(
        has(
            &|p| matches!(p, Problem::UnknownParent { node, parent } if node == "orphan" && parent == "ghost")
        ),
        "{text:#?}"
    );
    assert!(
        has(
            &|p| matches!(p, Problem::Cycle { path } if path.contains(&s("loop-a")) && path.contains(&s("loop-b")))
        ),
        "{text:#?}"
    );
    assert!(
        has(&|p| matches!(p, Problem::Unreachable { node } if node == "loop-a")),
        "{text:#?}"
    );
    assert!(
        has(&|p| matches!(p, Problem::TypeMismatch { child, .. } if child == "wrong-types")),
        "{text:#?}"
    );
    assert!(
        has(&|p| matches!(p, Problem::SerdeMismatch { topic, .. } if topic == "loopback")),
        "{text:#?}"
    );
    assert!(
        has(&|p| matches!(p, Problem::NoOutput { node } if node == "nowhere")),
        "{text:#?}"
    );
    let type_text = text.iter().find(|t| t.contains("wrong-types")).unwrap();
    assert!(
        type_text.contains("(String, String)") && type_text.contains("(String, i64)"),
        "{type_text}"
    );
}

struct WrongTypes;
impl Processor<String, i64, String, String> for WrongTypes {
    fn process(
        &mut self,
        record: Record<String, i64>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<(), ProcessingError> {
        let v = record.value.to_string();
        ctx.forward(record.with_value(v));
        Ok(())
    }
}

#[test]
fn a_topology_without_sources_is_invalid() {
    let b = TopologyBuilder::new("t");
    assert_eq!(problems(b), vec![Problem::NoSource]);
}

#[test]
fn describe_lists_nodes_edges_and_serdes() {
    let b = TopologyBuilder::new("app");
    b.stream(&strings("input"))
        .named("src")
        .map_values(|v: String| v.to_uppercase())
        .named("upper")
        .to(&to_strings("output"))
        .named("sink");
    let t = b.build().unwrap();
    let text = t.describe();
    for line in [
        "Topology: app",
        "Sub-topology: 0",
        "Source: src (topics: [input]) (key: string<String>, value: string<String>)",
        "--> upper",
        "Processor: upper (map_values)",
        "<-- src",
        "Sink: sink (topic: output)",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
    let mermaid = t.describe_mermaid();
    assert!(mermaid.starts_with("flowchart LR"));
    assert!(mermaid.contains("t_input --> n0"), "{mermaid}");
    assert!(
        mermaid.contains("n0 --> n1") && mermaid.contains("n2 --> t_output"),
        "{mermaid}"
    );
    assert_eq!(t.source_topics(), vec![s("input")]);
    assert_eq!(t.sink_topics(), vec![s("output")]);
}

// ---- error policy ----

fn failing_topology(policy: ErrorPolicy) -> TestDriver {
    let b = TopologyBuilder::new("t");
    b.error_policy(policy);
    b.stream(&Topic::new("in", Serdes::string(), Serdes::i64()))
        .named("in")
        .map_values(|v: i64| {
            if v < 0 {
                panic!("negative value {v}");
            }
            v * 2
        })
        .named("check")
        .to(&Topic::new("out", Serdes::string(), Serdes::i64()))
        .named("out");
    TestDriver::new(b.build().unwrap())
}

#[test]
fn fail_policy_returns_the_error_with_topic_partition_offset_and_field() {
    let driver = failing_topology(ErrorPolicy::default());
    let err = driver
        .pipe_raw("in", Some(b"k"), Some(b"abc"), 0, Headers::new())
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("deserialization error on topic `in` partition 0 offset 0"),
        "{text}"
    );
    assert!(
        text.contains("field `value`") && text.contains("expected 8 bytes"),
        "{text}"
    );
    assert_eq!(driver.metrics().deserialization_errors, 1);
}

#[test]
fn skip_policy_counts_and_continues() {
    let driver = failing_topology(ErrorPolicy::all(OnError::Skip));
    assert_eq!(
        driver.pipe_raw("in", Some(b"k"), Some(b"abc"), 0, Headers::new()),
        Ok(Outcome::Skipped)
    );
    let input = driver.input_topic("in", StringSerde, Serdes::i64());
    assert_eq!(
        input.pipe(s("k"), -1),
        Ok(Outcome::Skipped),
        "a panic is a processing error"
    );
    assert_eq!(input.pipe(s("k"), 21), Ok(Outcome::Processed));
    let out = driver.output_topic("out", Serdes::string(), Serdes::i64());
    assert_eq!(out.read_key_values(), vec![(s("k"), 42)]);
    let m = driver.metrics();
    assert_eq!(
        (m.skipped, m.deserialization_errors, m.processing_errors),
        (2, 1, 1)
    );
}

#[test]
fn dead_letter_policy_keeps_original_bytes_and_says_why() {
    let driver = failing_topology(ErrorPolicy::dead_letter("dlq"));
    let headers = Headers::new().with("origin", "test");
    driver
        .pipe_raw("in", Some(b"k1"), Some(b"abc"), 77, headers)
        .unwrap();
    let input = driver.input_topic("in", StringSerde, Serdes::i64());
    input.pipe_at(s("k2"), -5, 78).unwrap();

    let first = driver.read_raw("dlq").unwrap();
    assert_eq!(first.key.as_deref(), Some(&b"k1"[..]));
    assert_eq!(first.value.as_deref(), Some(&b"abc"[..]));
    assert_eq!(first.timestamp, 77);
    let h = &first.headers;
    assert_eq!(
        h.last_str("origin"),
        Some("test"),
        "original headers are kept"
    );
    assert_eq!(h.last_str("engine.error.class"), Some("deserialization"));
    assert_eq!(h.last_str("engine.error.field"), Some("value"));
    assert_eq!(h.last_str("engine.source.topic"), Some("in"));
    assert_eq!(h.last_str("engine.source.partition"), Some("0"));
    assert_eq!(h.last_str("engine.source.offset"), Some("0"));
    assert_eq!(h.last_str("engine.source.timestamp"), Some("77"));
    assert_eq!(h.last_str("engine.application.id"), Some("t"));

    let second = driver.read_raw("dlq").unwrap();
    assert_eq!(second.value.as_deref(), Some(&(-5i64).to_be_bytes()[..]));
    assert_eq!(
        second.headers.last_str("engine.error.class"),
        Some("processing")
    );
    assert!(
        second
            .headers
            .last_str("engine.error.message")
            .unwrap()
            .contains("negative value -5")
    );
    assert_eq!(second.headers.last_str("engine.source.offset"), Some("1"));
    assert!(
        driver.read_raw("out").is_none(),
        "nothing of a failed record is written"
    );
    assert_eq!(driver.metrics().dead_lettered, 2);
}

#[test]
fn a_failing_record_leaves_no_partial_output() {
    let b = TopologyBuilder::new("t");
    b.error_policy(ErrorPolicy::all(OnError::Skip));
    let stream = b.stream(&strings("in")).named("in");
    stream.to(&to_strings("out")).named("first");
    stream
        .map_values(|v: String| -> String {
            if v == "bad" {
                panic!("bad record")
            }
            v
        })
        .named("explode")
        .to(&to_strings("out"))
        .named("second");
    let io = Io::new(b);
    io.pipe("k", "bad");
    io.pipe("k", "good");
    assert_eq!(
        io.out("out"),
        vec![(s("k"), s("good")), (s("k"), s("good"))]
    );
}

#[test]
fn null_keys_need_a_nullable_serde() {
    let b = TopologyBuilder::new("t");
    b.error_policy(ErrorPolicy::all(OnError::Skip));
    b.stream(&strings("in"))
        .named("in")
        .to(&to_strings("out"))
        .named("out");
    let driver = TestDriver::new(b.build().unwrap());
    assert_eq!(
        driver.pipe_raw("in", None, Some(b"v"), 0, Headers::new()),
        Ok(Outcome::Skipped)
    );

    let b = TopologyBuilder::new("t");
    b.stream(&Topic::new(
        "in",
        Serdes::nullable(Serdes::string()),
        Serdes::string(),
    ))
    .named("in")
    .to(&Topic::new(
        "out",
        Serdes::nullable(Serdes::string()),
        Serdes::string(),
    ))
    .named("out");
    let driver = TestDriver::new(b.build().unwrap());
    driver
        .pipe_raw("in", None, Some(b"v"), 0, Headers::new())
        .unwrap();
    assert_eq!(driver.read_raw("out").unwrap().key, None);
}
