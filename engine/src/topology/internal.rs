//! The internal topics a topology needs, described as Kafka Streams creates them: one
//! changelog per store that has one, `<application>-<store>-changelog`, compacted
//! (windowed stores: compacted and deleted after their windows plus a day), and the
//! repartition topics `<application>-<name>-repartition` (deleted by time, and purged by
//! the runtime once their records are committed). The runtime creates the missing ones on
//! the broker and refuses to start on ones that do not fit.

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
    /// What it is for.
    pub role: InternalTopicRole,
    /// Topic configurations the engine requires (`cleanup.policy`, `retention.ms`).
    pub configs: BTreeMap<String, String>,
}

/// What an internal topic is for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InternalTopicRole {
    /// The changelog of this store.
    Changelog {
        /// The store.
        store: String,
    },
    /// Records re-keyed by `group_by` or `repartition`, written and read back by the
    /// topology so each key reaches one task.
    Repartition,
}

impl std::fmt::Display for InternalTopicRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InternalTopicRole::Changelog { store } => write!(f, "changelog of store `{store}`"),
            InternalTopicRole::Repartition => f.write_str("repartition topic"),
        }
    }
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
    /// # use engine::topology::{Topic, Grouped, TopologyBuilder};
    /// # use engine::serde::Serdes;
    /// let b = TopologyBuilder::new("counts");
    /// b.stream(&Topic::new("in", Serdes::string(), Serdes::string()))
    ///     .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
    ///     .count("count", "per-key")
    ///     .to_stream()
    ///     .to(&Topic::new("counts", Serdes::string(), Serdes::i64()));
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
                    role: InternalTopicRole::Changelog { store: spec.name },
                    configs,
                }
            })
            .collect();
        topics.extend(
            self.repartition_topics()
                .into_iter()
                .map(|name| InternalTopic {
                    name,
                    role: InternalTopicRole::Repartition,
                    // As Kafka Streams sets them: kept until purged once committed.
                    configs: BTreeMap::from([
                        ("cleanup.policy".into(), "delete".into()),
                        ("retention.ms".into(), "-1".into()),
                        ("segment.bytes".into(), "52428800".into()),
                    ]),
                }),
        );
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        topics
    }

    /// The repartition topics: `<application>-<name>-repartition`, written and read by
    /// this topology.
    pub fn repartition_topics(&self) -> Vec<String> {
        let prefix = format!("{}-", self.application_id());
        let sinks = self.sink_topics();
        self.source_topics()
            .into_iter()
            .filter(|t| t.starts_with(&prefix) && t.ends_with("-repartition") && sinks.contains(t))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::serde::Serdes;
    use crate::topology::{Grouped, TimeWindows, Topic, TopologyBuilder};

    #[test]
    fn a_windowed_store_changelog_is_compacted_and_deleted_after_its_windows_and_a_day() {
        let b = TopologyBuilder::new("clicks");
        let grouped = b
            .stream(&Topic::new("clicks", Serdes::string(), Serdes::string()))
            .named("in")
            .group_by_key(Grouped::with(Serdes::string(), Serdes::string()));
        grouped
            .windowed_by(TimeWindows::of(Duration::from_secs(60)).grace(Duration::from_secs(30)))
            .count("windowed", "per-minute")
            .to_stream()
            .named("windowed-updates")
            .for_each(|_k, _v| {})
            .named("ignore");
        grouped
            .count("total", "per-key")
            .to_stream()
            .named("total-updates")
            .for_each(|_k, _v| {})
            .named("ignore-totals");
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
