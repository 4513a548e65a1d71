//! Word count, Kafka Streams' first example: lines of text in, the running count of each
//! word out, kept in a RocksDB store with a changelog.
//!
//! ```text
//! cargo run --release --example word_count -- run word-count --embedded
//! ```

use engine::Catalog;
use engine::serde::Serdes;
use engine::topology::{Grouped, Topic, Topology, TopologyBuilder, TopologyError};

/// Lines in; null keys are fine.
fn lines() -> Topic<Option<String>, String> {
    Topic::new(
        "text-lines",
        Serdes::nullable(Serdes::string()),
        Serdes::string(),
    )
}

/// Each word's count, updated at every commit (the record cache coalesces updates).
fn counts() -> Topic<String, i64> {
    Topic::new("word-counts", Serdes::string(), Serdes::i64())
}

fn topology() -> Result<Topology, TopologyError> {
    let b = TopologyBuilder::new("word-count");
    b.stream(&lines())
        .flat_map_values(|line: String| {
            line.to_lowercase()
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .group_by(
            "words",
            |_k, word: &String| word.clone(),
            Grouped::with(Serdes::string(), Serdes::string()),
        )
        .count("count", "counts-store")
        .to_stream()
        .to(&counts());
    b.build()
}

fn main() -> std::process::ExitCode {
    let catalog = Catalog::new().with(
        "word-count",
        "text-lines -> words -> word-counts (RocksDB store counts-store)",
        |_ctx| topology(),
    );
    engine::cli::main(catalog)
}

#[cfg(test)]
mod tests {
    use engine::testing::TestDriver;

    #[test]
    fn counts_each_word_across_lines() {
        let driver = TestDriver::new(super::topology().unwrap());
        let lines = driver.input(&super::lines());
        lines.pipe(None, "the cat".to_string()).unwrap();
        lines.pipe(None, "The dog".to_string()).unwrap();
        let counts = driver.output(&super::counts()).read_key_values();
        assert_eq!(counts.last(), Some(&("dog".to_string(), 1)));
        assert!(counts.contains(&("the".to_string(), 2)), "{counts:?}");
        assert_eq!(
            driver.store_get::<String, i64>("counts-store", &"cat".to_string()),
            Some(1)
        );
    }
}
