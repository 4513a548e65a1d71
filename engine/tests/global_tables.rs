//! Global tables through the test driver: `join_global` and `left_join_global` with key
//! mapping, updates and tombstones; the global store as processors and the driver see
//! it; validation of global tables.

#![allow(clippy::unwrap_used)] // tests state their expectations with unwrap

use engine::record::{Headers, Record};
use engine::serde::Serdes;
use engine::testing::TestDriver;
use engine::topology::{
    Outcome, Problem, ProcessingError, Processor, ProcessorContext, Topic, TopologyBuilder,
    TopologyError,
};

fn strings(topic: &str) -> Topic<String, String> {
    Topic::new(topic, Serdes::string(), Serdes::string())
}

fn s(v: &str) -> String {
    v.to_string()
}

/// Orders keyed by order id, valued `product:quantity`, joined with the product names of
/// the global table `products` (keyed by product id): inner to `named`, left to `all`.
fn orders_with_products() -> TestDriver {
    let b = TopologyBuilder::new("orders");
    let products = b.global_table("products", &strings("products"), "products-store");
    let orders = b.stream(&strings("orders")).named("orders");
    let product_of = |_id: &String, order: &String| order.split(':').next().unwrap().to_string();
    orders
        .join_global(
            "named-orders",
            &products,
            product_of,
            |order: &String, name: &String| format!("{order} = {name}"),
        )
        .to(&Topic::new("named", Serdes::string(), Serdes::string()))
        .named("to-named");
    orders
        .left_join_global(
            "all-orders",
            &products,
            product_of,
            |order: &String, name: Option<&String>| {
                format!(
                    "{order} = {}",
                    name.map_or("unknown product", String::as_str)
                )
            },
        )
        .to(&Topic::new("all", Serdes::string(), Serdes::string()))
        .named("to-all");
    TestDriver::new(b.build().unwrap())
}

#[test]
fn stream_records_join_the_global_table_by_their_mapped_key_as_of_their_processing() {
    let driver = orders_with_products();
    let products = driver.input_topic("products", Serdes::string(), Serdes::string());
    let orders = driver.input_topic("orders", Serdes::string(), Serdes::string());
    let named = driver.output_topic("named", Serdes::string(), Serdes::string());
    let all = driver.output_topic("all", Serdes::string(), Serdes::string());

    // Before the product exists: the inner join drops the order, the left join keeps it.
    orders.pipe(s("order-1"), s("p1:2")).unwrap();
    assert!(named.is_empty());
    assert_eq!(
        all.read_key_values(),
        [(s("order-1"), s("p1:2 = unknown product"))]
    );

    // A record piped to the global topic is in the store at once, and goes nowhere else.
    products.pipe(s("p1"), s("kettle")).unwrap();
    products.pipe(s("p2"), s("toaster")).unwrap();
    assert!(named.is_empty() && all.is_empty());
    assert_eq!(
        driver.store_entries::<String, String>("products-store"),
        Some(vec![(s("p1"), s("kettle")), (s("p2"), s("toaster"))])
    );
    orders.pipe(s("order-2"), s("p1:1")).unwrap();
    orders.pipe(s("order-3"), s("p2:5")).unwrap();
    // The result keeps the stream record's key, not the table's.
    assert_eq!(
        named.read_key_values(),
        [
            (s("order-2"), s("p1:1 = kettle")),
            (s("order-3"), s("p2:5 = toaster"))
        ]
    );
    assert_eq!(all.read_values(), [s("p1:1 = kettle"), s("p2:5 = toaster")]);

    // An update replaces the value for later records only.
    products.pipe(s("p1"), s("electric kettle")).unwrap();
    orders.pipe(s("order-4"), s("p1:3")).unwrap();
    assert_eq!(named.read_values(), [s("p1:3 = electric kettle")]);
    assert_eq!(all.read_values(), [s("p1:3 = electric kettle")]);

    // A tombstone (null value) deletes the key: inner drops, left joins with None.
    driver
        .pipe_raw("products", Some(b"p1"), None, 0, Headers::new())
        .unwrap();
    assert_eq!(
        driver.store_get::<String, String>("products-store", &s("p1")),
        None
    );
    orders.pipe(s("order-5"), s("p1:1")).unwrap();
    orders.pipe(s("order-6"), s("p2:1")).unwrap();
    assert_eq!(
        named.read_key_values(),
        [(s("order-6"), s("p2:1 = toaster"))]
    );
    assert_eq!(
        all.read_key_values(),
        [
            (s("order-5"), s("p1:1 = unknown product")),
            (s("order-6"), s("p2:1 = toaster"))
        ]
    );
    // A record without a key cannot be a table entry: ignored, as in Kafka Streams.
    driver
        .pipe_raw("products", None, Some(b"nameless"), 0, Headers::new())
        .unwrap();
    assert_eq!(
        driver.store_entries::<String, String>("products-store"),
        Some(vec![(s("p2"), s("toaster"))])
    );
    // A value that does not deserialize is skipped and counted; the table is unchanged.
    let outcome = driver
        .pipe_raw(
            "products",
            Some(b"p3"),
            Some(&[0xff, 0xfe]),
            0,
            Headers::new(),
        )
        .unwrap();
    assert_eq!(outcome, Outcome::Skipped);
    assert_eq!(driver.metrics().skipped, 1);
    assert_eq!(
        driver.store_get::<String, String>("products-store", &s("p3")),
        None
    );
}

#[test]
fn records_the_topology_writes_to_a_global_topic_update_the_global_store() {
    let b = TopologyBuilder::new("feedback");
    let names = b.global_table("names", &strings("names"), "names-store");
    // Renames are written to the global topic; lookups see them.
    b.stream(&strings("renames"))
        .named("renames")
        .to(&Topic::new("names", Serdes::string(), Serdes::string()))
        .named("to-names");
    b.stream(&strings("lookups"))
        .named("lookups")
        .join_global(
            "named",
            &names,
            |_k: &String, v: &String| v.clone(),
            |v: &String, name: &String| format!("{v}={name}"),
        )
        .to(&Topic::new("out", Serdes::string(), Serdes::string()))
        .named("out");
    let driver = TestDriver::new(b.build().unwrap());
    let renames = driver.input_topic("renames", Serdes::string(), Serdes::string());
    let lookups = driver.input_topic("lookups", Serdes::string(), Serdes::string());
    let out = driver.output_topic("out", Serdes::string(), Serdes::string());
    renames.pipe(s("u1"), s("Ada")).unwrap();
    lookups.pipe(s("x"), s("u1")).unwrap();
    assert_eq!(out.read_values(), [s("u1=Ada")]);
}

/// Reads the global store `store` for each record's value and forwards what it found.
struct ReadGlobal {
    store: &'static str,
}

impl Processor<String, String, String, String> for ReadGlobal {
    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<(), ProcessingError> {
        let found = ctx
            .global_store::<String, String>(self.store)
            .and_then(|s| {
                let one = s.get(&record.value)?;
                Ok(format!("{one:?} of {}", s.all()?.len()))
            })
            .map_err(|e| ProcessingError::new(e.to_string()))?;
        ctx.forward(record.with_value(found));
        Ok(())
    }
}

#[test]
fn any_processor_reads_a_global_store_without_declaring_it_and_an_unknown_one_fails() {
    let build = |store: &'static str| {
        let b = TopologyBuilder::new("reader");
        b.global_table("colours", &strings("colours"), "colours-store");
        b.stream(&strings("in"))
            .named("in")
            .process(move || ReadGlobal { store })
            .named("read")
            .to(&Topic::new("out", Serdes::string(), Serdes::string()))
            .named("out");
        TestDriver::new(b.build().unwrap())
    };
    let driver = build("colours-store");
    let colours = driver.input_topic("colours", Serdes::string(), Serdes::string());
    colours.pipe(s("sky"), s("blue")).unwrap();
    colours.pipe(s("grass"), s("green")).unwrap();
    driver
        .input_topic("in", Serdes::string(), Serdes::string())
        .pipe(s("k"), s("sky"))
        .unwrap();
    let out = driver.output_topic("out", Serdes::string(), Serdes::string());
    assert_eq!(out.read_values(), [s("Some(\"blue\") of 2")]);

    let wrong = build("no-such-store");
    let error = wrong
        .input_topic("in", Serdes::string(), Serdes::string())
        .pipe(s("k"), s("sky"))
        .unwrap_err();
    assert!(
        error.message.contains("no-such-store") && error.message.contains("global_table"),
        "{error}"
    );
}

#[test]
fn a_global_topic_is_not_a_source_topic_but_is_among_the_topics_the_topology_needs() {
    let b = TopologyBuilder::new("topics");
    let t = b.global_table("g", &strings("global-topic"), "g-store");
    b.stream(&strings("in"))
        .named("in")
        .join_global(
            "j",
            &t,
            |k: &String, _v: &String| k.clone(),
            |v: &String, g: &String| format!("{v}{g}"),
        )
        .to(&Topic::new("out", Serdes::string(), Serdes::string()))
        .named("out");
    let topology = b.build().unwrap();
    assert_eq!(topology.source_topics(), [s("in")]);
    assert_eq!(topology.global_topics(), [s("global-topic")]);
    assert!(topology.topics().contains(&s("global-topic")));
    assert!(
        topology.changelog_topics().is_empty(),
        "the global topic is its own changelog"
    );
    assert_eq!(
        topology
            .global_stores()
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["g-store"]
    );
    assert!(
        topology
            .describe()
            .contains("Global table: g (topic: global-topic) (store: g-store)")
    );
}

#[test]
fn a_topic_read_by_a_stream_and_a_global_table_or_a_shared_store_name_is_reported() {
    let b = TopologyBuilder::new("invalid");
    b.global_table("g", &strings("shared"), "store");
    b.table("t", &strings("other"), "store")
        .to_stream()
        .named("updates")
        .to(&Topic::new("out", Serdes::string(), Serdes::string()))
        .named("out");
    b.stream(&strings("shared"))
        .named("s")
        .to(&Topic::new("out2", Serdes::string(), Serdes::string()))
        .named("out2");
    let Err(TopologyError::Invalid { problems, .. }) = b.build() else {
        panic!("invalid topology accepted");
    };
    assert!(
        problems.iter().any(|p| matches!(p,
            Problem::TopicReadTwice { topic, sources } if topic == "shared"
                && sources.contains(&s("g")) && sources.contains(&s("s")))),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, Problem::DuplicateName { name } if name == "store")),
        "{problems:?}"
    );
}
