//! A windowed aggregation: clicks counted per user in tumbling one-minute windows that
//! accept records up to ten seconds late, each window's count emitted once, when it
//! closes (Kafka Streams' `suppress(untilWindowCloses)`).
//!
//! ```text
//! cargo run --release --example windowed_aggregation -- run clicks-per-minute --embedded
//! ```

use std::time::Duration;

use engine::Catalog;
use engine::serde::Serdes;
use engine::topology::{
    Emit, Grouped, TimeWindows, Topic, Topology, TopologyBuilder, TopologyError, Windowed,
};

fn clicks() -> Topic<String, String> {
    Topic::new("clicks", Serdes::string(), Serdes::string())
}

/// `user@window-start` -> clicks in that minute.
fn per_minute() -> Topic<String, i64> {
    Topic::new("clicks-per-minute", Serdes::string(), Serdes::i64())
}

fn topology() -> Result<Topology, TopologyError> {
    let b = TopologyBuilder::new("clicks-per-minute");
    b.stream(&clicks())
        .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
        .windowed_by(
            TimeWindows::of(Duration::from_secs(60))
                .grace(Duration::from_secs(10))
                .emit(Emit::OnWindowClose),
        )
        .count("count", "clicks-per-minute-store")
        .to_stream()
        .map(|w: Windowed<String>, count: i64| (format!("{}@{}", w.key, w.start), count))
        .to(&per_minute());
    b.build()
}

fn main() -> std::process::ExitCode {
    let catalog = Catalog::new().with(
        "clicks-per-minute",
        "clicks -> clicks per user and minute (emitted when the minute closes) -> clicks-per-minute",
        |_ctx| topology(),
    );
    engine::cli::main(catalog)
}

#[cfg(test)]
mod tests {
    use engine::testing::TestDriver;

    #[test]
    fn each_minute_is_counted_once_when_it_closes() {
        let driver = TestDriver::new(super::topology().unwrap());
        let clicks = driver.input(&super::clicks());
        let ann = || "ann".to_string();
        clicks.pipe_at(ann(), "/a".into(), 1_000).unwrap();
        clicks.pipe_at(ann(), "/b".into(), 59_000).unwrap();
        clicks.pipe_at(ann(), "/c".into(), 65_000).unwrap();
        assert!(
            driver.output(&super::per_minute()).is_empty(),
            "the first minute is open until 70 s"
        );
        // A late click within the grace period still counts.
        clicks.pipe_at(ann(), "/late".into(), 30_000).unwrap();
        clicks.pipe_at(ann(), "/d".into(), 71_000).unwrap();
        assert_eq!(
            driver.output(&super::per_minute()).read_key_values(),
            vec![("ann@0".to_string(), 3)]
        );
    }
}
