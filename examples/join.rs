//! Joins: page views enriched with the viewer's region from a table of users
//! (Kafka Streams' stream-table join), and payments joined with their orders where a
//! payment may arrive before its order and waits for it up to an hour.
//!
//! ```text
//! cargo run --release --example join -- run enrich --embedded
//! ```

use std::time::Duration;

use engine::Catalog;
use engine::serde::Serdes;
use engine::topology::{Joined, Topic, Topology, TopologyBuilder, TopologyError};

fn views() -> Topic<String, String> {
    Topic::new("page-views", Serdes::string(), Serdes::string())
}
fn users() -> Topic<String, String> {
    Topic::new("user-regions", Serdes::string(), Serdes::string())
}
fn views_by_region() -> Topic<String, String> {
    Topic::new("page-views-by-region", Serdes::string(), Serdes::string())
}
fn orders() -> Topic<String, String> {
    Topic::new("orders", Serdes::string(), Serdes::string())
}
fn payments() -> Topic<String, i64> {
    Topic::new("payments", Serdes::string(), Serdes::i64())
}
fn paid_orders() -> Topic<String, String> {
    Topic::new("paid-orders", Serdes::string(), Serdes::string())
}

fn topology() -> Result<Topology, TopologyError> {
    let b = TopologyBuilder::new("enrich");
    // Both keyed by user id, with the same partition count (co-partitioned).
    let regions = b.table("regions", &users(), "regions-store");
    b.stream(&views())
        .left_join_table(
            "with-region",
            &regions,
            |page: &String, region: Option<&String>| {
                format!(
                    "{page} from {}",
                    region.map_or("an unknown region", String::as_str)
                )
            },
        )
        .to(&views_by_region());

    // Both keyed by order id. A payment whose order is not there yet waits for it.
    let open_orders = b.table("open-orders", &orders(), "orders-store");
    b.stream(&payments())
        .join_table_with_grace(
            "paid",
            &open_orders,
            |amount: i64, order: &String| format!("{order}: paid {amount}"),
            Joined::with(Serdes::string(), Serdes::i64()).grace(Duration::from_secs(3600)),
        )
        .to(&paid_orders());
    b.build()
}

fn main() -> std::process::ExitCode {
    let catalog = Catalog::new().with(
        "enrich",
        "page-views + user-regions -> page-views-by-region; payments + orders -> paid-orders",
        |_ctx| topology(),
    );
    engine::cli::main(catalog)
}

#[cfg(test)]
mod tests {
    use engine::testing::TestDriver;

    fn s(v: &str) -> String {
        v.to_string()
    }

    #[test]
    fn views_get_the_region_the_table_has_then() {
        let driver = TestDriver::new(super::topology().unwrap());
        driver
            .input(&super::views())
            .pipe(s("ann"), s("/home"))
            .unwrap();
        driver
            .input(&super::users())
            .pipe(s("ann"), s("EU"))
            .unwrap();
        driver
            .input(&super::views())
            .pipe(s("ann"), s("/cart"))
            .unwrap();
        assert_eq!(
            driver.output(&super::views_by_region()).read_values(),
            vec![s("/home from an unknown region"), s("/cart from EU")]
        );
    }

    #[test]
    fn a_payment_before_its_order_waits_for_it() {
        let driver = TestDriver::new(super::topology().unwrap());
        driver.input(&super::payments()).pipe(s("o-1"), 30).unwrap();
        assert!(driver.output(&super::paid_orders()).is_empty());
        driver
            .input(&super::orders())
            .pipe(s("o-1"), s("2 books"))
            .unwrap();
        assert_eq!(
            driver.output(&super::paid_orders()).read_values(),
            vec![s("2 books: paid 30")]
        );
    }
}
