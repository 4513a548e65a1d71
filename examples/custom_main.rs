//! Your own topologies behind the same `engine` command line.
//!
//! ```text
//! cargo run --release --example custom_main -- list
//! cargo run --release --example custom_main -- run word-lengths --embedded
//! ```

use engine::Catalog;
use engine::serde::Serdes;
use engine::topology::{ErrorPolicy, Topic, TopologyBuilder};

fn main() -> std::process::ExitCode {
    let catalog = Catalog::new().with(
        "word-lengths",
        "sentences -> one record per word with its length -> word-lengths",
        |_ctx| {
            let b = TopologyBuilder::new("word-lengths");
            b.error_policy(ErrorPolicy::dead_letter("sentences.dlq"));
            b.stream(&Topic::new(
                "sentences",
                Serdes::nullable(Serdes::string()),
                Serdes::string(),
            ))
            .named("sentences")
            .flat_map(|_key: Option<String>, line: String| {
                line.split_whitespace()
                    .map(|w| (w.to_lowercase(), w.len() as i64))
                    .collect::<Vec<_>>()
            })
            .named("words")
            .to(&Topic::new("word-lengths", Serdes::string(), Serdes::i64()))
            .named("lengths");
            b.build()
        },
    );
    engine::cli::main(catalog)
}
