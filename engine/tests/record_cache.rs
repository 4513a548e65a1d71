//! The aggregations' record cache through the test driver, buffering as the runtime does
//! between commits: updates coalesce until a commit, the least recently used entry is
//! written out at the memory bound, the first cached record is held uncommitted until the
//! flush, and reads (later records, queries) see cached values.

#![allow(clippy::unwrap_used)] // tests state their expectations with unwrap

use engine::serde::Serdes;
use engine::state::CACHE_ENTRY_OVERHEAD;
use engine::testing::{TestDriver, TestDriverOptions};
use engine::topology::{Grouped, Topic, Topology, TopologyBuilder};

fn s(v: &str) -> String {
    v.to_string()
}

const CHANGELOG: &str = "clicks-per-user-changelog";

/// Clicks counted per user into `per-user`, every emitted count to `counts`; lookups
/// joined with the count table to `seen`.
fn clicks(caching: bool) -> Topology {
    let b = TopologyBuilder::new("clicks");
    let counts = b
        .stream(&Topic::new("clicks", Serdes::string(), Serdes::string()))
        .named("in")
        .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
        .with_caching(caching)
        .count("count", "per-user");
    counts
        .to_stream()
        .named("updates")
        .to(&Topic::new("counts", Serdes::string(), Serdes::i64()))
        .named("out");
    b.stream(&Topic::new("lookups", Serdes::string(), Serdes::string()))
        .named("lookups")
        .join_table("seen-join", &counts, |_: &String, count: &i64| *count)
        .to(&Topic::new("seen", Serdes::string(), Serdes::i64()))
        .named("seen");
    b.build().unwrap()
}

fn buffered(topology: Topology, bytes: usize) -> TestDriver {
    TestDriver::with_options(
        topology,
        TestDriverOptions {
            buffered_cache_bytes: Some(bytes),
            ..Default::default()
        },
    )
}

fn changelog_keys(driver: &TestDriver) -> Vec<String> {
    let mut keys = Vec::new();
    while let Some(r) = driver.read_raw(CHANGELOG) {
        keys.push(String::from_utf8(r.key.unwrap()).unwrap());
    }
    keys
}

#[test]
fn updates_of_a_key_coalesce_until_the_flush_before_a_commit() {
    let driver = buffered(clicks(true), 1 << 20);
    let input = driver.input_topic("clicks", Serdes::string(), Serdes::string());
    let out = driver.output_topic("counts", Serdes::string(), Serdes::i64());
    for user in ["ann", "bob", "ann", "ann"] {
        input.pipe(s(user), s("click")).unwrap();
    }
    assert!(out.is_empty(), "nothing leaves the cache before the flush");
    assert!(changelog_keys(&driver).is_empty());
    // The first cached record holds its offset (and so every later one) uncommitted.
    assert_eq!(driver.deferred_records(), vec![(s("clicks"), 0)]);

    driver.commit().unwrap();
    // One update per key, least recently updated first, with its latest count.
    assert_eq!(out.read_key_values(), vec![(s("bob"), 1), (s("ann"), 3)]);
    assert_eq!(changelog_keys(&driver), vec!["bob", "ann"]);
    assert!(
        driver.deferred_records().is_empty(),
        "the flush released it"
    );

    // The next interval starts a new hold at its first record.
    input.pipe(s("bob"), s("click")).unwrap();
    assert_eq!(driver.deferred_records(), vec![(s("clicks"), 4)]);
    driver.commit().unwrap();
    assert_eq!(out.read_key_values(), vec![(s("bob"), 2)]);
    // A commit with nothing cached emits nothing.
    driver.commit().unwrap();
    assert!(out.is_empty());
}

#[test]
fn at_the_memory_bound_the_least_recently_used_entry_is_written_out() {
    // Room for two entries: a one-letter key and a framed i64 (flag byte + 8 bytes).
    let entry = 1 + 9 + CACHE_ENTRY_OVERHEAD;
    let driver = buffered(clicks(true), 2 * entry);
    let input = driver.input_topic("clicks", Serdes::string(), Serdes::string());
    let out = driver.output_topic("counts", Serdes::string(), Serdes::i64());
    for user in ["a", "b", "a"] {
        input.pipe(s(user), s("click")).unwrap();
    }
    assert!(out.is_empty(), "two entries fit");
    input.pipe(s("c"), s("click")).unwrap();
    // `b` was used least recently: evicted, so written to the store, changelog and out.
    assert_eq!(out.read_key_values(), vec![(s("b"), 1)]);
    assert_eq!(changelog_keys(&driver), vec!["b"]);
    // Its record stays held: `a` and `c`, cached since offset 0, are not written yet.
    assert_eq!(driver.deferred_records(), vec![(s("clicks"), 0)]);
    // An evicted key reads back from the store and keeps counting.
    input.pipe(s("b"), s("click")).unwrap();
    assert_eq!(
        out.read_key_values(),
        vec![(s("a"), 2)],
        "b came back, a left"
    );
    driver.commit().unwrap();
    assert_eq!(out.read_key_values(), vec![(s("c"), 1), (s("b"), 2)]);
    assert_eq!(
        driver.store_entries::<String, i64>("per-user").unwrap(),
        vec![(s("a"), 2), (s("b"), 2), (s("c"), 1)]
    );
}

#[test]
fn later_records_and_queries_see_cached_values() {
    let driver = buffered(clicks(true), 1 << 20);
    let input = driver.input_topic("clicks", Serdes::string(), Serdes::string());
    let lookups = driver.input_topic("lookups", Serdes::string(), Serdes::string());
    let seen = driver.output_topic("seen", Serdes::string(), Serdes::i64());
    for _ in 0..3 {
        input.pipe(s("ann"), s("click")).unwrap();
    }
    assert!(changelog_keys(&driver).is_empty(), "still only cached");
    // The store as queries read it, and a join reading the table, see the cached count.
    assert_eq!(
        driver.store_get::<String, i64>("per-user", &s("ann")),
        Some(3)
    );
    lookups.pipe(s("ann"), s("?")).unwrap();
    assert_eq!(seen.read_key_values(), vec![(s("ann"), 3)]);
}

#[test]
fn with_caching_disabled_every_update_is_emitted_at_once() {
    let driver = buffered(clicks(false), 1 << 20);
    let input = driver.input_topic("clicks", Serdes::string(), Serdes::string());
    let out = driver.output_topic("counts", Serdes::string(), Serdes::i64());
    for user in ["ann", "bob", "ann"] {
        input.pipe(s(user), s("click")).unwrap();
    }
    assert_eq!(
        out.read_key_values(),
        vec![(s("ann"), 1), (s("bob"), 1), (s("ann"), 2)]
    );
    assert_eq!(changelog_keys(&driver), vec!["ann", "bob", "ann"]);
    assert!(driver.deferred_records().is_empty(), "nothing held");
}

#[test]
fn by_default_the_driver_flushes_after_every_record() {
    let driver = TestDriver::new(clicks(true));
    let input = driver.input_topic("clicks", Serdes::string(), Serdes::string());
    let out = driver.output_topic("counts", Serdes::string(), Serdes::i64());
    for user in ["ann", "ann"] {
        input.pipe(s(user), s("click")).unwrap();
    }
    assert_eq!(out.read_key_values(), vec![(s("ann"), 1), (s("ann"), 2)]);
    assert!(driver.deferred_records().is_empty());
}
