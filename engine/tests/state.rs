//! State through the test driver: stores, changelog records, aggregations, tables,
//! repartitioning and TTL.

#![allow(clippy::unwrap_used)] // tests state their expectations with unwrap

use std::time::Duration;

use engine::record::Record;
use engine::serde::Serdes;
use engine::testing::TestDriver;
use engine::topology::{
    ErrorPolicy, Grouped, OnError, Outcome, ProcessingError, Processor, ProcessorContext,
    StoreBuilder, Topic, TopologyBuilder,
};

fn s(v: &str) -> String {
    v.to_string()
}

fn strings(topic: &str) -> Topic<String, String> {
    Topic::new(topic, Serdes::string(), Serdes::string())
}

#[test]
fn count_by_key_keeps_a_store_emits_updates_and_writes_the_changelog() {
    let b = TopologyBuilder::new("clicks");
    b.stream(&strings("clicks"))
        .named("in")
        .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
        .count("count", "per-user")
        .to_stream()
        .named("updates")
        .to(&Topic::new("counts", Serdes::string(), Serdes::i64()))
        .named("out");
    let t = b.build().unwrap();
    assert_eq!(t.changelog_topics(), vec![s("clicks-per-user-changelog")]);
    assert!(t.topics().contains(&s("clicks-per-user-changelog")));
    let driver = TestDriver::new(t);
    let input = driver.input_topic("clicks", Serdes::string(), Serdes::string());
    for user in ["ann", "bob", "ann", "ann"] {
        input.pipe(s(user), s("click")).unwrap();
    }
    let out = driver.output_topic("counts", Serdes::string(), Serdes::i64());
    assert_eq!(
        out.read_key_values(),
        vec![(s("ann"), 1), (s("bob"), 1), (s("ann"), 2), (s("ann"), 3)]
    );
    assert_eq!(
        driver.store_entries::<String, i64>("per-user").unwrap(),
        vec![(s("ann"), 3), (s("bob"), 1)]
    );
    assert_eq!(
        driver.store_get::<String, i64>("per-user", &s("bob")),
        Some(1)
    );
    // Every update is in the changelog, keyed by the store key, partitioned like the task.
    let mut changelog = Vec::new();
    while let Some(r) = driver.read_raw("clicks-per-user-changelog") {
        assert_eq!(r.partition, Some(0));
        changelog.push(String::from_utf8(r.key.unwrap()).unwrap());
    }
    assert_eq!(changelog, vec!["ann", "bob", "ann", "ann"]);
}

#[test]
fn reduce_and_aggregate_fold_values_per_key() {
    let b = TopologyBuilder::new("sums");
    let grouped = b
        .stream(&Topic::new("amounts", Serdes::string(), Serdes::i64()))
        .named("in")
        .group_by_key(Grouped::with(Serdes::string(), Serdes::i64()));
    grouped
        .reduce("max", "max-store", Serdes::i64(), |a, b| a.max(b))
        .to_stream()
        .named("max-updates")
        .to(&Topic::new("max", Serdes::string(), Serdes::i64()))
        .named("max-out");
    grouped
        .aggregate(
            "history",
            "history-store",
            Serdes::string(),
            String::new,
            |_k, v, acc: String| format!("{acc}{v};"),
        )
        .to_stream()
        .named("history-updates")
        .to(&Topic::new("history", Serdes::string(), Serdes::string()))
        .named("history-out");
    let driver = TestDriver::new(b.build().unwrap());
    let input = driver.input_topic("amounts", Serdes::string(), Serdes::i64());
    for (k, v) in [("a", 5), ("a", 3), ("b", 1), ("a", 9)] {
        input.pipe(s(k), v).unwrap();
    }
    let max = driver.output_topic("max", Serdes::string(), Serdes::i64());
    assert_eq!(
        max.read_key_values(),
        vec![(s("a"), 5), (s("a"), 5), (s("b"), 1), (s("a"), 9)]
    );
    assert_eq!(
        driver
            .store_entries::<String, String>("history-store")
            .unwrap(),
        vec![(s("a"), s("5;3;9;")), (s("b"), s("1;"))]
    );
}

#[test]
fn group_by_repartitions_through_an_internal_topic() {
    let b = TopologyBuilder::new("words");
    b.stream(&strings("lines"))
        .named("in")
        .flat_map(|_k: String, line: String| {
            line.split_whitespace()
                .map(|w| (s(w), s(w)))
                .collect::<Vec<_>>()
        })
        .named("split")
        .group_by(
            "by-first-letter",
            |_k, w: &String| w[..1].to_string(),
            Grouped::with(Serdes::string(), Serdes::string()),
        )
        .count("count", "letters")
        .to_stream()
        .named("updates")
        .to(&Topic::new(
            "letter-counts",
            Serdes::string(),
            Serdes::i64(),
        ))
        .named("out");
    let t = b.build().unwrap();
    assert!(
        t.topics().contains(&s("words-by-first-letter-repartition")),
        "{:?}",
        t.topics()
    );
    let driver = TestDriver::new(t);
    let input = driver.input_topic("lines", Serdes::string(), Serdes::string());
    input.pipe(s("l1"), s("apple avocado banana")).unwrap();
    input.pipe(s("l2"), s("axe")).unwrap();
    assert_eq!(
        driver.store_entries::<String, i64>("letters").unwrap(),
        vec![(s("a"), 3), (s("b"), 1)]
    );
}

#[test]
fn tables_keep_the_latest_value_per_key() {
    let b = TopologyBuilder::new("profiles");
    b.table("users", &strings("users"), "users-store")
        .to_stream()
        .named("changes")
        .to(&Topic::new(
            "user-changes",
            Serdes::string(),
            Serdes::string(),
        ))
        .named("out");
    b.stream(&strings("events")).named("in").to_table(
        "latest",
        StoreBuilder::persistent("latest-store", Serdes::string(), Serdes::string()),
    );
    let driver = TestDriver::new(b.build().unwrap());
    let users = driver.input_topic("users", Serdes::string(), Serdes::string());
    users.pipe(s("u1"), s("Ann")).unwrap();
    users.pipe(s("u2"), s("Bob")).unwrap();
    users.pipe(s("u1"), s("Anna")).unwrap();
    assert_eq!(
        driver
            .store_entries::<String, String>("users-store")
            .unwrap(),
        vec![(s("u1"), s("Anna")), (s("u2"), s("Bob"))]
    );
    let events = driver.input_topic("events", Serdes::string(), Serdes::string());
    events.pipe(s("e"), s("first")).unwrap();
    events.pipe(s("e"), s("second")).unwrap();
    assert_eq!(
        driver.store_get::<String, String>("latest-store", &s("e")),
        Some(s("second"))
    );
}

/// Remembers ids for a while and drops repeats; uses a TTL store.
struct Dedup;

impl Processor<String, String, String, String> for Dedup {
    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<(), ProcessingError> {
        let seen = {
            let mut store = ctx
                .kv_store::<String, i64>("seen")
                .map_err(|e| ProcessingError::new(e.to_string()))?;
            let seen = store.get(&record.key).unwrap().is_some();
            if !seen {
                store.put(&record.key, &record.timestamp).unwrap();
            }
            seen
        };
        if !seen {
            ctx.forward(record);
        }
        Ok(())
    }
}

#[test]
fn ttl_entries_expire_on_wall_clock_time() {
    let b = TopologyBuilder::new("dedup");
    b.add_store(
        StoreBuilder::persistent("seen", Serdes::string(), Serdes::i64())
            .with_ttl(Duration::from_secs(60)),
    );
    b.stream(&strings("in"))
        .named("in")
        .process_with_stores(&["seen"], || Dedup)
        .named("dedup")
        .to(&Topic::new("out", Serdes::string(), Serdes::string()))
        .named("out");
    let driver = TestDriver::new(b.build().unwrap());
    let input = driver.input_topic("in", Serdes::string(), Serdes::string());
    let out = driver.output_topic("out", Serdes::string(), Serdes::string());
    input.pipe(s("id-1"), s("a")).unwrap();
    input.pipe(s("id-1"), s("b")).unwrap();
    assert_eq!(
        out.read_key_values(),
        vec![(s("id-1"), s("a"))],
        "a repeat is dropped"
    );
    driver.advance_wall_clock(Duration::from_secs(61)).unwrap();
    assert_eq!(
        driver.store_entries::<String, i64>("seen").unwrap(),
        vec![],
        "expired"
    );
    input.pipe(s("id-1"), s("c")).unwrap();
    assert_eq!(
        out.read_key_values(),
        vec![(s("id-1"), s("c"))],
        "after the TTL it is new again"
    );
}

#[test]
fn a_store_must_be_declared_and_exist() {
    let b = TopologyBuilder::new("t");
    b.stream(&strings("in"))
        .named("in")
        .process_with_stores(&["missing"], || Dedup)
        .named("dedup")
        .to(&Topic::new("out", Serdes::string(), Serdes::string()))
        .named("out");
    let err = b.build().unwrap_err().to_string();
    assert!(
        err.contains("uses store `missing`, which was never added"),
        "{err}"
    );

    // Declared store exists but the node did not name it: a processing error, not a crash.
    let b = TopologyBuilder::new("t");
    b.error_policy(ErrorPolicy::all(OnError::Skip));
    b.add_store(StoreBuilder::in_memory(
        "seen",
        Serdes::string(),
        Serdes::i64(),
    ));
    b.stream(&strings("in"))
        .named("in")
        .process(|| Dedup)
        .named("dedup")
        .to(&Topic::new("out", Serdes::string(), Serdes::string()))
        .named("out");
    let driver = TestDriver::new(b.build().unwrap());
    let input = driver.input_topic("in", Serdes::string(), Serdes::string());
    assert_eq!(input.pipe(s("k"), s("v")), Ok(Outcome::Skipped));
}

mod windows {
    use super::*;
    use engine::topology::{Emit, LateRecords, TimeWindows, Windowed, WindowedSerde};

    fn windowed_counts(windows: TimeWindows, policy: Option<ErrorPolicy>) -> TestDriver {
        let b = TopologyBuilder::new("w");
        if let Some(p) = policy {
            b.error_policy(p);
        }
        b.stream(&strings("in"))
            .named("in")
            .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
            .windowed_by(windows)
            .count("count", "windowed")
            .to_stream()
            .named("updates")
            .to(&Topic::new(
                "out",
                WindowedSerde::new(Serdes::string()),
                Serdes::i64(),
            ))
            .named("out");
        TestDriver::new(b.build().unwrap())
    }

    fn w(key: &str, start: i64, end: i64) -> Windowed<String> {
        Windowed {
            key: s(key),
            start,
            end,
        }
    }

    fn read(driver: &TestDriver) -> Vec<(Windowed<String>, i64)> {
        driver
            .output_topic("out", WindowedSerde::new(Serdes::string()), Serdes::i64())
            .read_key_values()
    }

    fn pipe(driver: &TestDriver, key: &str, at: i64) -> Outcome {
        driver
            .input_topic("in", Serdes::string(), Serdes::string())
            .pipe_at(s(key), s("x"), at)
            .unwrap()
    }

    #[test]
    fn tumbling_windows_count_per_key_and_window_on_every_update() {
        let d = windowed_counts(TimeWindows::of(Duration::from_secs(10)), None);
        pipe(&d, "a", 1_000);
        pipe(&d, "b", 2_000);
        pipe(&d, "a", 9_999);
        pipe(&d, "a", 10_000);
        // With no grace, [0,10) closed when stream time reached 10 s: b is late now.
        pipe(&d, "b", 3_000);
        assert_eq!(
            read(&d),
            vec![
                (w("a", 0, 10_000), 1),
                (w("b", 0, 10_000), 1),
                (w("a", 0, 10_000), 2),
                (w("a", 10_000, 20_000), 1)
            ]
        );
        assert_eq!(d.metrics().skipped, 1);
    }

    #[test]
    fn hopping_windows_count_a_record_in_every_window_containing_it() {
        let d = windowed_counts(
            TimeWindows::of(Duration::from_secs(10)).advance_by(Duration::from_secs(5)),
            None,
        );
        pipe(&d, "a", 7_000);
        let mut out = read(&d);
        out.sort();
        assert_eq!(
            out,
            vec![(w("a", 0, 10_000), 1), (w("a", 5_000, 15_000), 1)]
        );
    }

    #[test]
    fn records_within_grace_count_and_late_ones_are_counted_as_skipped() {
        let d = windowed_counts(
            TimeWindows::of(Duration::from_secs(10)).grace(Duration::from_secs(2)),
            None,
        );
        pipe(&d, "a", 1_000);
        pipe(&d, "a", 11_000); // stream time 11 s: [0,10) still open until 12 s
        pipe(&d, "a", 9_000); // out of order, within grace
        pipe(&d, "a", 12_500); // stream time 12.5 s: [0,10) closes
        assert_eq!(pipe(&d, "a", 3_000), Outcome::Processed); // late: dropped, counted
        assert_eq!(
            read(&d),
            vec![
                (w("a", 0, 10_000), 1),
                (w("a", 10_000, 20_000), 1),
                (w("a", 0, 10_000), 2),
                (w("a", 10_000, 20_000), 2)
            ]
        );
        assert_eq!(d.metrics().skipped, 1);
    }

    #[test]
    fn late_records_can_go_to_the_error_policy() {
        let d = windowed_counts(
            TimeWindows::of(Duration::from_secs(10)).late_records(LateRecords::ErrorPolicy),
            Some(ErrorPolicy::dead_letter("late")),
        );
        pipe(&d, "a", 15_000);
        assert_eq!(pipe(&d, "a", 1_000), Outcome::DeadLettered);
        let dead = d.read_raw("late").unwrap();
        assert_eq!(
            dead.headers.last_str("engine.error.field"),
            Some("timestamp")
        );
    }

    #[test]
    fn emit_on_window_close_emits_each_window_once_and_frees_its_store_entry() {
        let d = windowed_counts(
            TimeWindows::of(Duration::from_secs(10))
                .grace(Duration::from_secs(1))
                .emit(Emit::OnWindowClose),
            None,
        );
        pipe(&d, "a", 1_000);
        pipe(&d, "a", 5_000);
        pipe(&d, "b", 2_000);
        assert!(read(&d).is_empty(), "nothing before the window closes");
        pipe(&d, "c", 11_000); // 11 s = end + grace: [0,10) closes
        let mut out = read(&d);
        out.sort();
        assert_eq!(out, vec![(w("a", 0, 10_000), 2), (w("b", 0, 10_000), 1)]);
        assert_eq!(
            d.store_entries::<Vec<u8>, i64>("windowed").unwrap().len(),
            1,
            "only c's open window is left"
        );
    }

    #[test]
    fn windows_can_close_on_wall_clock_time_when_input_is_idle() {
        let d = windowed_counts(
            TimeWindows::of(Duration::from_secs(10))
                .emit(Emit::OnWindowClose)
                .close_on_wall_clock(),
            None,
        );
        pipe(&d, "a", 1_000);
        d.advance_wall_clock(Duration::from_secs(5)).unwrap();
        assert!(read(&d).is_empty());
        d.advance_wall_clock(Duration::from_secs(6)).unwrap(); // wall clock 11 s
        assert_eq!(read(&d), vec![(w("a", 0, 10_000), 1)]);
    }
}

mod sessions {
    use super::*;
    use engine::topology::{Emit, LateRecords, SessionWindows, Windowed, WindowedSerde};

    const GAP: Duration = Duration::from_secs(5);

    fn session_counts(windows: SessionWindows, policy: Option<ErrorPolicy>) -> TestDriver {
        let b = TopologyBuilder::new("s");
        if let Some(p) = policy {
            b.error_policy(p);
        }
        b.stream(&strings("in"))
            .named("in")
            .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
            .windowed_by(windows)
            .count("count", "sessions")
            .to_stream()
            .named("updates")
            .to(&Topic::new(
                "out",
                WindowedSerde::new(Serdes::string()),
                Serdes::nullable(Serdes::i64()),
            ))
            .named("out");
        TestDriver::new(b.build().unwrap())
    }

    fn w(key: &str, start: i64, end: i64) -> Windowed<String> {
        Windowed {
            key: s(key),
            start,
            end,
        }
    }

    /// Key, value and timestamp of everything written to `out`.
    fn read(driver: &TestDriver) -> Vec<(Windowed<String>, Option<i64>, i64)> {
        driver
            .output_topic(
                "out",
                WindowedSerde::new(Serdes::string()),
                Serdes::nullable(Serdes::i64()),
            )
            .read_records()
            .into_iter()
            .map(|r| (r.key, r.value, r.timestamp))
            .collect()
    }

    fn pipe(driver: &TestDriver, key: &str, at: i64) -> Outcome {
        driver
            .input_topic("in", Serdes::string(), Serdes::string())
            .pipe_at(s(key), s("x"), at)
            .unwrap()
    }

    #[test]
    fn records_within_the_gap_merge_and_replaced_sessions_get_tombstones() {
        let d = session_counts(SessionWindows::with_inactivity_gap(GAP), None);
        pipe(&d, "a", 0);
        pipe(&d, "b", 1_000);
        pipe(&d, "a", 3_000);
        pipe(&d, "a", 3_000); // same session again: [0,3000] grows by nothing
        pipe(&d, "a", 9_000); // 6 s after the session's end: a new session
        assert_eq!(
            read(&d),
            vec![
                (w("a", 0, 0), Some(1), 0),
                (w("b", 1_000, 1_000), Some(1), 1_000),
                (w("a", 0, 0), None, 0),
                (w("a", 0, 3_000), Some(2), 3_000),
                (w("a", 0, 3_000), None, 3_000),
                (w("a", 0, 3_000), Some(3), 3_000),
                (w("a", 9_000, 9_000), Some(1), 9_000),
            ]
        );
        assert_eq!(d.metrics().skipped, 0);
    }

    #[test]
    fn session_stores_are_changelogged_with_deletions_for_replaced_sessions() {
        let d = session_counts(SessionWindows::with_inactivity_gap(GAP), None);
        pipe(&d, "a", 0);
        pipe(&d, "a", 1_000);
        let mut changelog = Vec::new();
        while let Some(r) = d.read_raw("s-sessions-changelog") {
            changelog.push(r.value.is_some());
        }
        // [0,0] written, [0,0] deleted, [0,1000] written.
        assert_eq!(changelog, vec![true, false, true]);
    }

    #[test]
    fn the_inactivity_gap_is_inclusive() {
        let d = session_counts(
            SessionWindows::with_inactivity_gap(GAP).grace(Duration::from_secs(60)),
            None,
        );
        pipe(&d, "a", 10_000);
        pipe(&d, "a", 15_000); // exactly gap after: same session
        pipe(&d, "a", 5_000); // exactly gap before its start: same session
        pipe(&d, "a", 20_001); // 1 ms more than the gap: a new session
        assert_eq!(
            read(&d),
            vec![
                (w("a", 10_000, 10_000), Some(1), 10_000),
                (w("a", 10_000, 10_000), None, 10_000),
                (w("a", 10_000, 15_000), Some(2), 15_000),
                (w("a", 10_000, 15_000), None, 15_000),
                (w("a", 5_000, 15_000), Some(3), 15_000),
                (w("a", 20_001, 20_001), Some(1), 20_001),
            ]
        );
    }

    #[test]
    fn a_record_between_two_sessions_bridges_them_into_one() {
        let d = session_counts(
            SessionWindows::with_inactivity_gap(GAP).grace(Duration::from_secs(60)),
            None,
        );
        pipe(&d, "a", 0);
        pipe(&d, "a", 10_000);
        pipe(&d, "a", 5_000); // within gap of both
        assert_eq!(
            read(&d),
            vec![
                (w("a", 0, 0), Some(1), 0),
                (w("a", 10_000, 10_000), Some(1), 10_000),
                (w("a", 0, 0), None, 0),
                (w("a", 10_000, 10_000), None, 10_000),
                (w("a", 0, 10_000), Some(3), 10_000),
            ]
        );
        assert_eq!(
            d.store_entries::<Vec<u8>, i64>("sessions").unwrap().len(),
            1,
            "the bridged sessions are replaced by one"
        );
    }

    #[test]
    fn session_aggregates_merge_with_the_merger_and_reduce_with_the_reducer() {
        let b = TopologyBuilder::new("s");
        let views = b
            .stream(&Topic::new("in", Serdes::string(), Serdes::i64()))
            .named("in");
        let grouped = views.group_by_key(Grouped::with(Serdes::string(), Serdes::i64()));
        let sessions = SessionWindows::with_inactivity_gap(GAP).grace(Duration::from_secs(60));
        let nullable_i64 = |topic: &str| {
            Topic::new(
                topic,
                WindowedSerde::new(Serdes::string()),
                Serdes::nullable(Serdes::i64()),
            )
        };
        grouped
            .windowed_by(sessions)
            .aggregate(
                "sum",
                "sums",
                Serdes::i64(),
                || 100, // the initializer is merged in once per merge, as in Kafka Streams
                |_k: &String, v: i64, total: i64| total + v,
                |_k: &String, a: i64, b: i64| a + b - 100,
            )
            .to_stream()
            .named("sum-updates")
            .to(&nullable_i64("sums"))
            .named("sum-out");
        grouped
            .windowed_by(sessions)
            .reduce("max", "maxima", Serdes::i64(), |a: i64, b: i64| a.max(b))
            .to_stream()
            .named("max-updates")
            .to(&nullable_i64("maxima"))
            .named("max-out");
        let d = TestDriver::new(b.build().unwrap());
        let input = d.input_topic("in", Serdes::string(), Serdes::i64());
        input.pipe_at(s("a"), 1, 0).unwrap();
        input.pipe_at(s("a"), 7, 10_000).unwrap();
        input.pipe_at(s("a"), 3, 5_000).unwrap();
        let last = |topic: &str| {
            d.output_topic(
                topic,
                WindowedSerde::new(Serdes::string()),
                Serdes::nullable(Serdes::i64()),
            )
            .read_key_values()
            .pop()
            .unwrap()
        };
        assert_eq!(last("sums"), (w("a", 0, 10_000), Some(111)));
        assert_eq!(last("maxima"), (w("a", 0, 10_000), Some(7)));
    }

    #[test]
    fn records_for_sessions_closed_beyond_grace_are_late() {
        let d = session_counts(
            SessionWindows::with_inactivity_gap(GAP).grace(Duration::from_secs(2)),
            None,
        );
        pipe(&d, "a", 0);
        pipe(&d, "b", 7_000); // [0,0] closes after 0 + gap + grace = 7 s: still open
        assert_eq!(pipe(&d, "a", 1_000), Outcome::Processed);
        pipe(&d, "b", 8_001); // [0,1000] is now closed
        pipe(&d, "a", 900); // its own session [900,900] would be closed already: late
        assert_eq!(
            read(&d),
            vec![
                (w("a", 0, 0), Some(1), 0),
                (w("b", 7_000, 7_000), Some(1), 7_000),
                (w("a", 0, 0), None, 0),
                (w("a", 0, 1_000), Some(2), 1_000),
                (w("b", 7_000, 7_000), None, 7_000),
                (w("b", 7_000, 8_001), Some(2), 8_001),
            ]
        );
        assert_eq!(d.metrics().skipped, 1);
    }

    #[test]
    fn late_session_records_can_go_to_the_error_policy() {
        let d = session_counts(
            SessionWindows::with_inactivity_gap(GAP).late_records(LateRecords::ErrorPolicy),
            Some(ErrorPolicy::dead_letter("late")),
        );
        pipe(&d, "a", 20_000);
        assert_eq!(pipe(&d, "a", 1_000), Outcome::DeadLettered);
        let dead = d.read_raw("late").unwrap();
        assert_eq!(
            dead.headers.last_str("engine.error.field"),
            Some("timestamp")
        );
    }

    #[test]
    fn emit_on_window_close_emits_each_final_session_once() {
        let d = session_counts(
            SessionWindows::with_inactivity_gap(GAP).emit(Emit::OnWindowClose),
            None,
        );
        pipe(&d, "a", 0);
        pipe(&d, "a", 3_000);
        pipe(&d, "b", 1_000);
        pipe(&d, "c", 8_000); // a's [0,3000] closes only after 3 s + gap = 8 s
        assert_eq!(read(&d), vec![(w("b", 1_000, 1_000), Some(1), 1_000)]);
        pipe(&d, "c", 8_001);
        assert_eq!(read(&d), vec![(w("a", 0, 3_000), Some(2), 3_000)]);
        assert_eq!(
            d.store_entries::<Vec<u8>, i64>("sessions").unwrap().len(),
            1,
            "only c's open session is left"
        );
    }
}

mod table_joins {
    use super::*;
    use engine::topology::{Problem, TopologyError};
    use std::collections::HashMap;

    fn nullable(topic: &str) -> Topic<String, Option<String>> {
        Topic::new(topic, Serdes::string(), Serdes::nullable(Serdes::string()))
    }

    fn show(v: Option<&String>) -> String {
        v.map_or_else(|| s("null"), Clone::clone)
    }

    fn result_store(name: &str) -> StoreBuilder<String, Option<String>> {
        StoreBuilder::persistent(name, Serdes::string(), Serdes::nullable(Serdes::string()))
    }

    fn joins() -> engine::topology::Topology {
        let b = TopologyBuilder::new("tables");
        let left = b.table("left", &nullable("left"), "left-store");
        let right = b.table("right", &nullable("right"), "right-store");
        let produced =
            |topic: &str| Topic::new(topic, Serdes::string(), Serdes::nullable(Serdes::string()));
        left.join(
            "inner",
            &right,
            |l: &String, r: &String| format!("[{l},{r}]"),
            result_store("inner-store"),
        )
        .to_stream()
        .named("inner-updates")
        .to(&produced("inner"))
        .named("inner-out");
        left.left_join(
            "left-join",
            &right,
            |l: &String, r: Option<&String>| format!("[{l},{}]", show(r)),
            result_store("left-join-store"),
        )
        .to_stream()
        .named("left-updates")
        .to(&produced("left-join"))
        .named("left-out");
        left.outer_join(
            "outer",
            &right,
            |l: Option<&String>, r: Option<&String>| format!("[{},{}]", show(l), show(r)),
            result_store("outer-store"),
        )
        .to_stream()
        .named("outer-updates")
        .to(&produced("outer"))
        .named("outer-out");
        b.build().unwrap()
    }

    /// The update sequence of Kafka Streams' table-table join documentation: one key,
    /// timestamps 1..15, `None` for tombstones.
    fn run(topic: &str) -> Vec<(Option<String>, i64)> {
        let d = TestDriver::new(joins());
        let left = d.input_topic("left", Serdes::string(), Serdes::nullable(Serdes::string()));
        let right = d.input_topic(
            "right",
            Serdes::string(),
            Serdes::nullable(Serdes::string()),
        );
        let updates: [(&TestInput, Option<&str>); 15] = [
            (&left, None),
            (&right, None),
            (&left, Some("A")),
            (&right, Some("a")),
            (&left, Some("B")),
            (&right, Some("b")),
            (&left, None),
            (&right, None),
            (&left, Some("C")),
            (&right, Some("c")),
            (&right, None),
            (&left, None),
            (&right, None),
            (&right, Some("d")),
            (&left, Some("D")),
        ];
        for (t, (side, value)) in updates.into_iter().enumerate() {
            side.pipe_at(s("k"), value.map(s), t as i64 + 1).unwrap();
        }
        d.output_topic(topic, Serdes::string(), Serdes::nullable(Serdes::string()))
            .read_records()
            .into_iter()
            .map(|r| {
                assert_eq!(r.key, "k");
                (r.value, r.timestamp)
            })
            .collect()
    }

    type TestInput = engine::testing::TestInputTopic<String, Option<String>>;

    fn v(text: &str, at: i64) -> (Option<String>, i64) {
        (Some(s(text)), at)
    }

    #[test]
    fn inner_join_of_tables_follows_the_kafka_streams_results_table() {
        assert_eq!(
            run("inner"),
            vec![
                v("[A,a]", 4),
                v("[B,a]", 5),
                v("[B,b]", 6),
                (None, 7),
                v("[C,c]", 10),
                (None, 11),
                v("[D,d]", 15),
            ]
        );
    }

    #[test]
    fn left_join_of_tables_follows_the_kafka_streams_results_table() {
        assert_eq!(
            run("left-join"),
            vec![
                v("[A,null]", 3),
                v("[A,a]", 4),
                v("[B,a]", 5),
                v("[B,b]", 6),
                (None, 7),
                v("[C,null]", 9),
                v("[C,c]", 10),
                v("[C,null]", 11),
                (None, 12),
                v("[D,d]", 15),
            ]
        );
    }

    #[test]
    fn outer_join_of_tables_follows_the_kafka_streams_results_table() {
        assert_eq!(
            run("outer"),
            vec![
                v("[A,null]", 3),
                v("[A,a]", 4),
                v("[B,a]", 5),
                v("[B,b]", 6),
                v("[null,b]", 7),
                (None, 8),
                v("[C,null]", 9),
                v("[C,c]", 10),
                v("[C,null]", 11),
                (None, 12),
                v("[null,d]", 14),
                v("[D,d]", 15),
            ]
        );
    }

    #[test]
    fn the_joined_table_is_materialized_and_changelogged() {
        let topology = joins();
        assert!(
            topology
                .changelog_topics()
                .contains(&s("tables-outer-store-changelog"))
        );
        let d = TestDriver::new(topology);
        let left = d.input_topic("left", Serdes::string(), Serdes::nullable(Serdes::string()));
        let right = d.input_topic(
            "right",
            Serdes::string(),
            Serdes::nullable(Serdes::string()),
        );
        left.pipe(s("k1"), Some(s("A"))).unwrap();
        right.pipe(s("k1"), Some(s("a"))).unwrap();
        right.pipe(s("k2"), Some(s("b"))).unwrap();
        assert_eq!(
            d.store_entries::<String, Option<String>>("outer-store")
                .unwrap(),
            vec![(s("k1"), Some(s("[A,a]"))), (s("k2"), Some(s("[null,b]")))]
        );
        assert_eq!(
            d.store_entries::<String, Option<String>>("inner-store")
                .unwrap(),
            vec![(s("k1"), Some(s("[A,a]")))]
        );
        right.pipe(s("k1"), None).unwrap();
        assert_eq!(
            d.store_entries::<String, Option<String>>("inner-store")
                .unwrap(),
            vec![],
            "a tombstone deletes the joined entry"
        );
    }

    #[test]
    fn tables_read_from_topics_with_different_partition_counts_cannot_be_joined() {
        let topology = joins();
        let counts = HashMap::from([(s("left"), 4), (s("right"), 4)]);
        assert!(topology.check_copartitioning(&counts).is_ok());
        let counts = HashMap::from([(s("left"), 4), (s("right"), 6)]);
        let Err(TopologyError::Invalid { problems, .. }) = topology.check_copartitioning(&counts)
        else {
            panic!("left has 4 partitions and right 6: the joins must be refused");
        };
        assert_eq!(problems.len(), 3, "one problem per join: {problems:?}");
        assert!(problems.contains(&Problem::NotCoPartitioned {
            join: s("outer"),
            topics: vec![(s("left"), 4), (s("right"), 6)],
        }));
    }
}

mod stream_joins {
    use super::*;
    use engine::topology::{JoinWindows, StreamJoined};

    fn show(v: Option<&String>) -> String {
        v.map_or_else(|| s("null"), Clone::clone)
    }

    fn joined() -> StreamJoined<String, String, String> {
        StreamJoined::with(Serdes::string(), Serdes::string(), Serdes::string())
    }

    /// Inner, left and outer joins of `left` and `right` in one topology, writing to the
    /// topics `inner`, `left-join` and `outer`.
    fn joins(windows: JoinWindows, policy: Option<ErrorPolicy>) -> TestDriver {
        let b = TopologyBuilder::new("streams");
        if let Some(p) = policy {
            b.error_policy(p);
        }
        let left = b.stream(&strings("left")).named("left");
        let right = b.stream(&strings("right")).named("right");
        let produced = |topic: &str| Topic::new(topic, Serdes::string(), Serdes::string());
        left.join(
            "inner",
            &right,
            |l: &String, r: &String| format!("[{l},{r}]"),
            windows,
            joined(),
        )
        .to(&produced("inner"))
        .named("inner-out");
        left.left_join(
            "left-join",
            &right,
            |l: &String, r: Option<&String>| format!("[{l},{}]", show(r)),
            windows,
            joined(),
        )
        .to(&produced("left-join"))
        .named("left-out");
        left.outer_join(
            "outer",
            &right,
            |l: Option<&String>, r: Option<&String>| format!("[{},{}]", show(l), show(r)),
            windows,
            joined(),
        )
        .to(&produced("outer"))
        .named("outer-out");
        TestDriver::new(b.build().unwrap())
    }

    fn pipe(d: &TestDriver, topic: &str, value: &str, at: i64) -> Outcome {
        d.input_topic(topic, Serdes::string(), Serdes::string())
            .pipe_at(s("k"), s(value), at)
            .unwrap()
    }

    fn read(d: &TestDriver, topic: &str) -> Vec<(String, i64)> {
        d.output_topic(topic, Serdes::string(), Serdes::string())
            .read_records()
            .into_iter()
            .map(|r| (r.value, r.timestamp))
            .collect()
    }

    /// One key, a window of 10 ms either way, no grace.
    fn run_results_table() -> TestDriver {
        let d = joins(JoinWindows::of(Duration::from_millis(10)), None);
        pipe(&d, "left", "A", 0);
        pipe(&d, "right", "a", 5); // joins A
        pipe(&d, "left", "B", 20); // nothing within [10, 30]
        pipe(&d, "right", "b", 40); // B's window closed at 30: left and outer emit [B,null]
        pipe(&d, "right", "c", 45);
        pipe(&d, "left", "C", 50); // joins b and c
        pipe(&d, "left", "D", 70);
        pipe(&d, "right", "d", 100); // D's window closed at 80: [D,null]
        pipe(&d, "left", "E", 200); // d's window closed at 110: outer emits [null,d]
        d
    }

    fn r(text: &str, at: i64) -> (String, i64) {
        (s(text), at)
    }

    #[test]
    fn inner_stream_join_emits_each_pair_within_the_window() {
        let d = run_results_table();
        assert_eq!(
            read(&d, "inner"),
            vec![r("[A,a]", 5), r("[C,b]", 50), r("[C,c]", 50)]
        );
    }

    #[test]
    fn left_stream_join_emits_unmatched_records_only_once_their_window_closes() {
        let d = run_results_table();
        // No [A,null] before a arrived (no spurious result), and E's window is still open.
        assert_eq!(
            read(&d, "left-join"),
            vec![
                r("[A,a]", 5),
                r("[B,null]", 20),
                r("[C,b]", 50),
                r("[C,c]", 50),
                r("[D,null]", 70),
            ]
        );
    }

    #[test]
    fn outer_stream_join_emits_unmatched_records_of_both_sides_once_their_window_closes() {
        let d = run_results_table();
        assert_eq!(
            read(&d, "outer"),
            vec![
                r("[A,a]", 5),
                r("[B,null]", 20),
                r("[C,b]", 50),
                r("[C,c]", 50),
                r("[D,null]", 70),
                r("[null,d]", 100),
            ]
        );
    }

    #[test]
    fn out_of_order_records_join_within_grace_and_later_ones_are_late() {
        let d = joins(
            JoinWindows::of(Duration::from_millis(10)).grace(Duration::from_millis(5)),
            None,
        );
        pipe(&d, "left", "A", 0);
        pipe(&d, "right", "z", 14); // too far from A
        pipe(&d, "right", "a", 8); // out of order, joins A
        pipe(&d, "left", "X", 40); // A's and z's windows closed long ago
        // 9 + 10 + 10 + 5 < 40: past the window and grace of anything it could join.
        assert_eq!(pipe(&d, "right", "b", 9), Outcome::Processed);
        assert_eq!(d.metrics().skipped, 3, "each of the three joins dropped it");
        assert_eq!(read(&d, "inner"), vec![r("[A,a]", 8)]);
        assert_eq!(read(&d, "left-join"), vec![r("[A,a]", 8)]);
        assert_eq!(read(&d, "outer"), vec![r("[A,a]", 8), r("[null,z]", 14)]);
        // Buffered records expire after before + after + grace (25 ms) of stream time.
        assert_eq!(
            d.store_entries::<Vec<u8>, String>("inner-this-store")
                .unwrap()
                .len(),
            1,
            "only X is still buffered on the left"
        );
        assert_eq!(
            d.store_entries::<Vec<u8>, String>("inner-other-store")
                .unwrap()
                .len(),
            0,
            "z and a expired on the right"
        );
    }

    #[test]
    fn a_record_whose_window_is_already_past_is_emitted_unmatched_at_once() {
        let d = joins(
            JoinWindows::of(Duration::from_millis(10)).grace(Duration::from_millis(20)),
            None,
        );
        pipe(&d, "left", "A", 50);
        pipe(&d, "left", "B", 30); // 30 + 10 < 50, no match: emitted now, as in Kafka Streams
        assert_eq!(read(&d, "left-join"), vec![r("[B,null]", 30)]);
        pipe(&d, "right", "b", 35); // within grace: B still joins
        assert_eq!(read(&d, "left-join"), vec![r("[B,b]", 35)]);
    }

    #[test]
    fn asymmetric_windows_bound_each_side() {
        let d = joins(
            JoinWindows::of(Duration::from_millis(0))
                .after(Duration::from_millis(10))
                .grace(Duration::from_millis(100)),
            None,
        );
        pipe(&d, "left", "A", 100);
        pipe(&d, "right", "early", 99); // before A: outside [100, 110]
        pipe(&d, "right", "late", 110); // the end of A's window, inclusive
        pipe(&d, "right", "later", 111);
        assert_eq!(read(&d, "inner"), vec![r("[A,late]", 110)]);
    }

    #[test]
    fn join_buffers_are_changelogged_stores() {
        let d = joins(JoinWindows::of(Duration::from_millis(10)), None);
        pipe(&d, "left", "A", 0);
        assert!(d.read_raw("streams-outer-this-store-changelog").is_some());
        assert!(
            d.read_raw("streams-outer-pending-store-changelog")
                .is_some(),
            "A waits for a match in the pending store"
        );
        pipe(&d, "right", "a", 5);
        assert!(d.read_raw("streams-outer-other-store-changelog").is_some());
        let pending = d.read_raw("streams-outer-pending-store-changelog").unwrap();
        assert_eq!(
            pending.value, None,
            "the match removes A from the pending store"
        );
    }

    #[test]
    fn late_join_records_can_go_to_the_error_policy() {
        let d = joins(
            JoinWindows::of(Duration::from_millis(10))
                .late_records(engine::topology::LateRecords::ErrorPolicy),
            Some(ErrorPolicy::dead_letter("late")),
        );
        pipe(&d, "left", "A", 100);
        assert_eq!(pipe(&d, "right", "a", 10), Outcome::DeadLettered);
        assert!(d.read_raw("late").is_some());
    }
}

#[test]
fn stream_table_joins_see_the_table_as_of_each_record() {
    let b = TopologyBuilder::new("enrich");
    let users = b.table("users", &strings("users"), "users-store");
    let clicks = b.stream(&strings("clicks")).named("clicks");
    clicks
        .join_table("inner", &users, |click: &String, user: &String| {
            format!("{user}:{click}")
        })
        .to(&Topic::new("inner", Serdes::string(), Serdes::string()))
        .named("inner-out");
    clicks
        .left_join_table("left", &users, |click: &String, user: Option<&String>| {
            format!("{}:{click}", user.map_or("?", |u| u.as_str()))
        })
        .to(&Topic::new("left", Serdes::string(), Serdes::string()))
        .named("left-out");
    let driver = TestDriver::new(b.build().unwrap());
    let users_in = driver.input_topic("users", Serdes::string(), Serdes::string());
    let clicks_in = driver.input_topic("clicks", Serdes::string(), Serdes::string());
    clicks_in.pipe(s("u1"), s("home")).unwrap(); // no user yet
    users_in.pipe(s("u1"), s("Ann")).unwrap();
    clicks_in.pipe(s("u1"), s("cart")).unwrap();
    users_in.pipe(s("u1"), s("Anna")).unwrap();
    clicks_in.pipe(s("u1"), s("pay")).unwrap();
    let inner = driver.output_topic("inner", Serdes::string(), Serdes::string());
    let left = driver.output_topic("left", Serdes::string(), Serdes::string());
    assert_eq!(
        inner.read_key_values(),
        vec![(s("u1"), s("Ann:cart")), (s("u1"), s("Anna:pay"))]
    );
    assert_eq!(
        left.read_key_values(),
        vec![
            (s("u1"), s("?:home")),
            (s("u1"), s("Ann:cart")),
            (s("u1"), s("Anna:pay"))
        ]
    );
}

/// Fails every record whose value contains "bad": a node after a store write.
struct RejectBad;

impl Processor<String, String, String, String> for RejectBad {
    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<(), ProcessingError> {
        if record.value.contains("bad") {
            return Err(ProcessingError::new("rejected"));
        }
        ctx.forward(record);
        Ok(())
    }
}

#[test]
fn a_record_that_fails_after_a_store_write_leaves_neither_the_write_nor_its_changelog() {
    let b = TopologyBuilder::new("dedup");
    b.error_policy(ErrorPolicy::all(OnError::Skip));
    b.add_store(StoreBuilder::persistent(
        "seen",
        Serdes::string(),
        Serdes::i64(),
    ));
    b.stream(&strings("in"))
        .named("in")
        .process_with_stores(&["seen"], || Dedup)
        .named("dedup")
        .process(|| RejectBad)
        .named("reject")
        .to(&Topic::new("out", Serdes::string(), Serdes::string()))
        .named("out");
    let driver = TestDriver::new(b.build().unwrap());
    let input = driver.input_topic("in", Serdes::string(), Serdes::string());
    let out = driver.output_topic("out", Serdes::string(), Serdes::string());
    assert_eq!(input.pipe(s("id-1"), s("bad")), Ok(Outcome::Skipped));
    assert_eq!(
        driver.store_get::<String, i64>("seen", &s("id-1")),
        None,
        "the failed record's store write is undone"
    );
    assert!(
        driver.read_raw("dedup-seen-changelog").is_none(),
        "and never reaches the changelog"
    );
    // So the id is new when it comes again.
    assert_eq!(input.pipe(s("id-1"), s("good")), Ok(Outcome::Processed));
    assert_eq!(out.read_key_values(), vec![(s("id-1"), s("good"))]);
    assert!(
        driver
            .store_get::<String, i64>("seen", &s("id-1"))
            .is_some()
    );
    assert!(driver.read_raw("dedup-seen-changelog").is_some());
}

#[test]
fn a_record_that_fails_downstream_of_a_cache_eviction_leaves_the_cache_and_store_as_they_were() {
    let b = TopologyBuilder::new("joined");
    b.error_policy(ErrorPolicy::all(OnError::Skip));
    b.stream(&strings("in"))
        .named("in")
        .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
        .reduce("join", "joined-store", Serdes::string(), |a, v| a + &v)
        .to_stream()
        .named("updates")
        .process(|| RejectBad)
        .named("reject")
        .to(&Topic::new("out", Serdes::string(), Serdes::string()))
        .named("out");
    // A cache of 0 bytes evicts every write at once, inside the record that made it.
    let driver = TestDriver::with_options(
        b.build().unwrap(),
        engine::testing::TestDriverOptions {
            buffered_cache_bytes: Some(0),
            ..Default::default()
        },
    );
    let input = driver.input_topic("in", Serdes::string(), Serdes::string());
    let out = driver.output_topic("out", Serdes::string(), Serdes::string());
    input.pipe(s("ann"), s("a")).unwrap();
    assert_eq!(input.pipe(s("ann"), s("bad")), Ok(Outcome::Skipped));
    assert_eq!(
        driver.store_get::<String, String>("joined-store", &s("ann")),
        Some(s("a")),
        "the failed record's update is undone"
    );
    input.pipe(s("ann"), s("c")).unwrap();
    driver.commit().unwrap();
    assert_eq!(
        out.read_values(),
        vec![s("a"), s("ac")],
        "the next record folds into the state before the failed one"
    );
    let mut changelog = Vec::new();
    while let Some(r) = driver.read_raw("joined-joined-store-changelog") {
        changelog.push(String::from_utf8_lossy(r.value.as_deref().unwrap()).into_owned());
    }
    assert_eq!(changelog.len(), 2, "{changelog:?}");
    assert!(
        changelog.iter().all(|v| !v.contains("bad")),
        "{changelog:?}"
    );
}
