//! What a runner does before it subscribes: creating its producer (and starting its
//! transactions under exactly-once), checking that the broker answers and the topics
//! exist and fit, choosing the consumer's assignor, and starting the announcements of
//! this instance for interactive queries.
//!
//! The steps that wait on the broker are bounded by `startup_timeout`, and the runner
//! awaits each through [`until_stopped`], so a shutdown cuts the start-up short: nothing
//! has been consumed yet, so nothing needs committing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::Producer;

use crate::kafka::{ClientRole, kafka_reason};
use crate::metrics::TopologyMetrics;
use crate::runtime::tracker::OffsetTracker;
use crate::runtime::{
    RunSettings, RuntimeError, Shutdown, instances, instances_topic, topics, transactions,
};

use super::callbacks::ProduceContext;
use super::{EngineProducer, TopologyRunner};

/// The instance's producer: transactional under exactly-once, with Kafka Streams'
/// `transaction.timeout.ms` unless the configuration sets one.
pub(super) fn create_producer(
    settings: &RunSettings,
    transactional_id: Option<&str>,
    tracker: &Arc<OffsetTracker>,
    metrics: &Arc<TopologyMetrics>,
) -> Result<Arc<EngineProducer>, RuntimeError> {
    let mut config = settings.client.client_config(ClientRole::Producer);
    if let Some(id) = transactional_id {
        config.set("transactional.id", id);
        if config.get("transaction.timeout.ms").is_none() {
            config.set(
                "transaction.timeout.ms",
                crate::config::defaults::EOS_TRANSACTION_TIMEOUT_MS.to_string(),
            );
        }
    }
    config
        .create_with_context(ProduceContext {
            tracker: tracker.clone(),
            metrics: metrics.clone(),
        })
        .map(Arc::new)
        .map_err(|source| RuntimeError::Client {
            what: "producer",
            reason: kafka_reason(&source),
        })
}

/// Initializes `producer`'s transactions and begins the first, off the executor.
pub(super) async fn start_transactions(
    producer: Arc<EngineProducer>,
    timeout: Duration,
) -> Result<(), RuntimeError> {
    tokio::task::spawn_blocking(move || transactions::start(&*producer, timeout))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|reason| RuntimeError::Client {
            what: "transactional producer",
            reason,
        })
}

impl TopologyRunner {
    /// Starts announcing this instance's partitions and reading the others', when the
    /// instances topic exists; without it, queries for keys held elsewhere get a 404.
    pub(super) fn start_announcing(
        &self,
        ops: &Arc<crate::ops::OpsState>,
        advertised: &str,
        partition_counts: &HashMap<String, i32>,
    ) -> (
        Option<instances::Announcer>,
        Option<instances::AnnouncementReader>,
    ) {
        let app = self.topology.application_id();
        let topic = instances_topic(app);
        if !partition_counts.contains_key(&topic) {
            tracing::warn!(application = %app, %topic, "topic missing: queries for keys another instance holds get 404 instead of naming it; create the topic (1 partition, cleanup.policy=compact) to enable that");
            return (None, None);
        }
        ops.set_advertised(app, advertised);
        let client = &self.settings.client;
        let started = instances::Announcer::new(client, app, advertised).and_then(|a| {
            instances::AnnouncementReader::start(client, app, ops.clone()).map(|r| (a, r))
        });
        match started {
            Ok((announcer, reader)) => {
                tracing::info!(application = %app, %topic, %advertised, "announcing this instance's partitions for interactive queries");
                (Some(announcer), Some(reader))
            }
            Err(error) => {
                tracing::warn!(application = %app, %topic, %error, "cannot announce this instance; queries for keys held elsewhere get 404");
                (None, None)
            }
        }
    }

    /// Checks that the broker answers and every user topic exists; creates or validates
    /// the internal topics; returns every topic's partition count.
    pub(super) async fn check_topics(
        &self,
        producer: &Arc<EngineProducer>,
    ) -> Result<HashMap<String, i32>, RuntimeError> {
        let producer = producer.clone();
        let timeout = self.settings.startup_timeout;
        let bootstrap = self.settings.client.bootstrap_servers.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(None, timeout).map(|m| {
                m.topics()
                    .iter()
                    .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                    .map(|t| {
                        (
                            t.name().to_string(),
                            i32::try_from(t.partitions().len()).unwrap_or(i32::MAX),
                        )
                    })
                    .collect::<HashMap<String, i32>>()
            })
        })
        .await
        .map_err(|e| RuntimeError::Client {
            what: "metadata request",
            reason: e.to_string(),
        })?
        .map_err(|e| RuntimeError::BrokerUnreachable {
            bootstrap: bootstrap.clone(),
            timeout,
            reason: kafka_reason(&e),
        })?;
        let announces = self.settings.ops.is_some() && self.settings.advertised_http.is_some();
        let metadata =
            topics::ensure_topics(&self.topology, &self.settings, metadata, announces).await?;
        self.topology
            .check_copartitioning(&metadata)
            .map_err(RuntimeError::Topology)?;
        Ok(metadata)
    }
}

/// The assignor for a topology's consumer, unless `configured` names one that fits.
///
/// Task N owns partition N of every topic it reads, with its stores: an assignor that
/// places each topic's partitions on their own (cooperative-sticky, roundrobin) may give
/// `a` 2 to one instance and `b` 2 to another, and both would open task 2. Only `range`
/// keeps equal partition numbers together, so a task reading several topics gets it
/// (eager: every rebalance revokes every partition); a task reading one topic gets
/// incremental cooperative rebalancing (KIP-429), where the tasks that stay keep
/// running, caches and all.
pub(super) fn assignment_strategy(
    configured: Option<&str>,
    sources: &[String],
) -> Result<Option<&'static str>, String> {
    match configured {
        None if sources.len() > 1 => Ok(Some("range")),
        None => Ok(Some("cooperative-sticky")),
        Some(strategy) if sources.len() > 1 && strategy.trim() != "range" => Err(format!(
            "consumer.partition.assignment.strategy = \"{strategy}\" does not keep the partitions of a task together: this topology's tasks read {} topics ({}), and each task must hold the same partition of all of them on one instance. Remove the property (the engine uses `range` for such topologies) or set it to \"range\"",
            sources.len(),
            sources.join(", ")
        )),
        Some(_) => Ok(None),
    }
}

/// Awaits a start-up step, or returns `None` if `shutdown` fires first (nothing has been
/// consumed yet, so there is nothing to commit).
pub(super) async fn until_stopped<T>(
    shutdown: &mut Shutdown,
    application: &str,
    step: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        _ = shutdown.wait() => {
            tracing::info!(%application, "stopped while starting");
            None
        }
        done = step => Some(done),
    }
}

#[cfg(test)]
mod tests {
    use super::assignment_strategy;

    #[test]
    fn a_task_reading_several_topics_gets_range_and_other_assignors_are_refused_with_the_fix() {
        let one = ["in".to_string()];
        let two = ["in".to_string(), "app-by-id-repartition".to_string()];
        assert_eq!(
            assignment_strategy(None, &one),
            Ok(Some("cooperative-sticky"))
        );
        assert_eq!(assignment_strategy(Some("roundrobin"), &one), Ok(None));
        assert_eq!(assignment_strategy(None, &two), Ok(Some("range")));
        assert_eq!(assignment_strategy(Some("range"), &two), Ok(None));
        let refused = assignment_strategy(Some("cooperative-sticky"), &two).unwrap_err();
        assert!(
            refused.contains("in, app-by-id-repartition")
                && refused.contains("set it to \"range\""),
            "{refused}"
        );
    }
}
