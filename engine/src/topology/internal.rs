//! The internal topics a topology needs, described as Kafka Streams creates them: one
//! changelog per store that has one, `<application>-<store>-changelog`, compacted
//! (windowed stores: compacted and deleted after their windows plus a day). The runtime
//! creates the missing ones on the broker and refuses to start on ones that do not fit.

use std::collections::BTreeMap;
use std::time::Duration;

use super::builder::Topology;

/// How much longer than its windows a windowed store's changelog keeps records (Kafka
/// Streams' `windowstore.changelog.additional.retention.ms`, one day): records a
/// restore still needs must not be deleted while the window is open.
pub const WINDOWED_CHANGELOG_ADDITIONAL_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// An internal topic: as many partitions as the topology has tasks (its source topics'
/// partitions), with the configurations below.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternalTopic {
    /// The topic.
    pub name: String,
    /// The store it is the changelog of.
    pub store: String,
    /// Topic configurations the engine requires (`cleanup.policy`, `retention.ms`).
    pub configs: BTreeMap<String, String>,
}

impl InternalTopic {
    /// Whether `cleanup_policy` (a topic's `cleanup.policy`) keeps the latest record of
    /// every key, as a changelog must.
    pub fn compacts(cleanup_policy: &str) -> bool {
        cleanup_policy.split(',').any(|p| p.trim() == "compact")
    }
}

impl Topology {
    /// The internal topics this topology needs: its stores' changelogs, sorted by name.
    ///
    /// ```
    /// # use engine::topology::{Consumed, Grouped, Produced, TopologyBuilder};
    /// # use engine::serde::Serdes;
    /// let b = TopologyBuilder::new("counts");
    /// b.stream("in", ["in"], Consumed::with(Serdes::string(), Serdes::string()))
    ///     .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
    ///     .count("count", "per-key")
    ///     .to_stream("updates")
    ///     .to("out", "counts", Produced::with(Serdes::string(), Serdes::i64()));
    /// let topics = b.build().unwrap().internal_topics();
    /// assert_eq!(topics[0].name, "counts-per-key-changelog");
    /// assert_eq!(topics[0].configs["cleanup.policy"], "compact");
    /// ```
    pub fn internal_topics(&self) -> Vec<InternalTopic> {
        let application = self.application_id();
        let mut topics: Vec<InternalTopic> = self
            .stores()
            .into_iter()
            .filter(|s| s.changelog)
            .map(|spec| {
                let configs = match spec.changelog_retention {
                    None => BTreeMap::from([("cleanup.policy".into(), "compact".into())]),
                    Some(retention) => {
                        let keep =
                            retention.saturating_add(WINDOWED_CHANGELOG_ADDITIONAL_RETENTION);
                        BTreeMap::from([
                            ("cleanup.policy".into(), "compact,delete".into()),
                            ("retention.ms".into(), keep.as_millis().to_string()),
                        ])
                    }
                };
                InternalTopic {
                    name: spec.changelog_topic(application),
                    store: spec.name,
                    configs,
                }
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        topics
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::serde::Serdes;
    use crate::topology::{Consumed, Grouped, TimeWindows, TopologyBuilder};

    #[test]
    fn a_windowed_store_changelog_is_compacted_and_deleted_after_its_windows_and_a_day() {
        let b = TopologyBuilder::new("clicks");
        let grouped = b
            .stream(
                "in",
                ["clicks"],
                Consumed::with(Serdes::string(), Serdes::string()),
            )
            .group_by_key(Grouped::with(Serdes::string(), Serdes::string()));
        grouped
            .windowed_by(TimeWindows::of(Duration::from_secs(60)).grace(Duration::from_secs(30)))
            .count("windowed", "per-minute")
            .to_stream("windowed-updates")
            .for_each("ignore", |_k, _v| {});
        grouped
            .count("total", "per-key")
            .to_stream("total-updates")
            .for_each("ignore-totals", |_k, _v| {});
        let topics = b.build().unwrap().internal_topics();
        let configs: Vec<(&str, Vec<(&str, &str)>)> = topics
            .iter()
            .map(|t| {
                (
                    t.name.as_str(),
                    t.configs
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            configs,
            [
                (
                    "clicks-per-key-changelog",
                    vec![("cleanup.policy", "compact")]
                ),
                (
                    "clicks-per-minute-changelog",
                    vec![
                        ("cleanup.policy", "compact,delete"),
                        ("retention.ms", "86490000")
                    ]
                ),
            ]
        );
    }
}
