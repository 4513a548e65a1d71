//! The topics on the broker at start-up, as Kafka Streams manages them.
//!
//! User topics (sources, sinks, dead-letter and global topics) must exist: a missing one
//! stops the start, naming it, unless `create_topics` asks for them (development).
//! Internal topics (store changelogs, and `<application>-instances` for instances that
//! announce their partitions) are created through the admin API when missing, with one
//! partition per task and the configurations the engine requires, and validated when
//! present: a wrong partition count or a changelog that is not compacted refuses the
//! start with the command that fixes it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::kafka::{ClientRole, ClientSettings, kafka_reason};
use crate::topology::{InternalTopic, Topology};

use super::{RunSettings, RuntimeError};

/// A topic to create or check: name, partitions, required configurations.
#[derive(Clone, Debug)]
struct Wanted {
    name: String,
    partitions: i32,
    configs: BTreeMap<String, String>,
    /// What it is, for messages.
    role: String,
    /// Internal topics also get `internal_topic_configs`.
    internal: bool,
}

/// Makes the broker hold every topic `topology` needs; returns every topic's partition
/// count. `metadata` holds the partition counts of the topics that exist now.
pub(crate) async fn ensure_topics(
    topology: &Topology,
    settings: &RunSettings,
    mut metadata: HashMap<String, i32>,
    announces: bool,
) -> Result<HashMap<String, i32>, RuntimeError> {
    let bootstrap = &settings.client.bootstrap_servers;
    let admin = admin(&settings.client)?;
    let internal = topology.internal_topics();
    let instances = super::instances_topic(topology.application_id());
    let is_internal = |t: &str| t == instances || internal.iter().any(|i| i.name == t);
    let missing_user: Vec<String> = topology
        .topics()
        .into_iter()
        .filter(|t| !is_internal(t) && !metadata.contains_key(t))
        .collect();
    if !missing_user.is_empty() {
        let Some(partitions) = settings.create_topics else {
            return Err(RuntimeError::MissingTopics {
                bootstrap: bootstrap.clone(),
                topics: missing_user,
            });
        };
        let wanted: Vec<Wanted> = missing_user
            .iter()
            .map(|t| Wanted {
                name: t.clone(),
                partitions,
                configs: BTreeMap::new(),
                role: "topic".into(),
                internal: false,
            })
            .collect();
        create(&admin, settings, &wanted).await?;
        for w in &wanted {
            metadata.insert(w.name.clone(), w.partitions);
        }
    }

    // One task per partition of the source topics the user provides (co-partitioned
    // where it matters); repartition topics follow them.
    let tasks = topology
        .source_topics()
        .iter()
        .filter(|t| !is_internal(t))
        .filter_map(|t| metadata.get(t).copied())
        .max()
        .unwrap_or(1);
    let mut wanted: Vec<Wanted> = internal
        .iter()
        .map(|topic| internal_topic(topic, tasks))
        .collect();
    if announces {
        wanted.push(Wanted {
            name: instances,
            partitions: 1,
            configs: BTreeMap::from([("cleanup.policy".into(), "compact".into())]),
            role: "instances topic".into(),
            internal: true,
        });
    }
    let (present, absent): (Vec<Wanted>, Vec<Wanted>) = wanted
        .into_iter()
        .partition(|w| metadata.contains_key(&w.name));
    validate(&admin, settings, &present, &metadata).await?;
    if !absent.is_empty() {
        create(&admin, settings, &absent).await?;
        for w in &absent {
            tracing::info!(application = %topology.application_id(), topic = %w.name, partitions = w.partitions, configs = ?w.configs, "internal topic created");
            metadata.insert(w.name.clone(), w.partitions);
        }
    }
    Ok(metadata)
}

fn internal_topic(topic: &InternalTopic, partitions: i32) -> Wanted {
    Wanted {
        name: topic.name.clone(),
        partitions,
        configs: topic.configs.clone(),
        role: topic.role.to_string(),
        internal: true,
    }
}

fn admin(client: &ClientSettings) -> Result<AdminClient<DefaultClientContext>, RuntimeError> {
    client
        .client_config(ClientRole::Admin)
        .create()
        .map_err(|e| RuntimeError::Client {
            what: "admin client",
            reason: kafka_reason(&e),
        })
}

fn options(timeout: Duration) -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout))
}

/// Creates `topics` (one that appeared meanwhile, created by another instance, is fine)
/// and waits until the broker's metadata shows them.
async fn create(
    admin: &AdminClient<DefaultClientContext>,
    settings: &RunSettings,
    topics: &[Wanted],
) -> Result<(), RuntimeError> {
    // Configurations for every internal topic first, then the ones the engine requires.
    let configs: Vec<Vec<(String, String)>> = topics
        .iter()
        .map(|w| {
            let mut all = BTreeMap::new();
            if w.internal {
                all.extend(settings.internal_topic_configs.clone());
            }
            all.extend(w.configs.clone());
            all.into_iter().collect()
        })
        .collect();
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .zip(&configs)
        .map(|(w, configs)| {
            configs.iter().fold(
                NewTopic::new(
                    &w.name,
                    w.partitions,
                    TopicReplication::Fixed(settings.replication_factor),
                ),
                |topic, (k, v)| topic.set(k, v),
            )
        })
        .collect();
    let results = admin
        .create_topics(&new_topics, &options(settings.startup_timeout))
        .await
        .map_err(|e| RuntimeError::Client {
            what: "topic creation",
            reason: kafka_reason(&e),
        })?;
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|r| match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => None,
            Err((topic, code)) => Some(format!("{topic}: {code}")),
        })
        .collect();
    if !failures.is_empty() {
        return Err(RuntimeError::Client {
            what: "topic creation",
            reason: format!(
                "{} (the broker must allow this client to create topics: CREATE on the cluster or on the topics; or create them yourself as `engine describe` lists them)",
                failures.join("; ")
            ),
        });
    }
    wait_until_visible(admin, topics, settings.startup_timeout).await
}

/// Waits until every topic has all its partitions in the metadata (each with a leader),
/// so the consumer, producer and restore that follow find them.
async fn wait_until_visible(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[Wanted],
    timeout: Duration,
) -> Result<(), RuntimeError> {
    let deadline = Instant::now() + timeout;
    loop {
        let pending: Vec<String> = crate::executor::block_off_executor(|| {
            topics
                .iter()
                .filter(|w| {
                    admin
                        .inner()
                        .fetch_metadata(Some(&w.name), Duration::from_secs(2))
                        .ok()
                        .and_then(|m| {
                            m.topics().first().map(|t| {
                                t.error().is_none()
                                    && i32::try_from(t.partitions().len()).ok()
                                        == Some(w.partitions)
                                    && t.partitions().iter().all(|p| p.leader() >= 0)
                            })
                        })
                        != Some(true)
                })
                .map(|w| w.name.clone())
                .collect()
        });
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(RuntimeError::Client {
                what: "topic creation",
                reason: format!(
                    "created, but not visible with leaders within {timeout:?}: {}",
                    pending.join(", ")
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks existing internal topics: partition count, and `cleanup.policy` where the
/// broker answers `DescribeConfigs` (librdkafka's mock cluster does not: there the
/// policy is not checked).
async fn validate(
    admin: &AdminClient<DefaultClientContext>,
    settings: &RunSettings,
    topics: &[Wanted],
    metadata: &HashMap<String, i32>,
) -> Result<(), RuntimeError> {
    if topics.is_empty() {
        return Ok(());
    }
    let bootstrap = &settings.client.bootstrap_servers;
    let mut problems = Vec::new();
    for w in topics {
        let actual = metadata.get(&w.name).copied().unwrap_or(0);
        if actual != w.partitions {
            problems.push(format!(
                "`{}` ({}) has {actual} partitions, the topology needs {} (one per task). Its contents cannot be re-partitioned: delete it (kafka-topics.sh --bootstrap-server {bootstrap} --delete --topic {}) and reset the application (kafka-streams-application-reset.sh or kafka-consumer-groups.sh --reset-offsets) so the engine rebuilds it from the input",
                w.name, w.role, w.partitions, w.name
            ));
        }
    }
    let specifiers: Vec<ResourceSpecifier<'_>> = topics
        .iter()
        .map(|w| ResourceSpecifier::Topic(&w.name))
        .collect();
    match admin
        .describe_configs(&specifiers, &options(settings.startup_timeout))
        .await
    {
        Err(error) => {
            tracing::info!(%error, "the broker does not describe topic configurations (librdkafka's mock cluster?): cleanup.policy of the internal topics not checked");
        }
        Ok(results) => {
            for (w, result) in topics.iter().zip(results) {
                let Some(required) = w.configs.get("cleanup.policy") else {
                    continue;
                };
                let actual = match &result {
                    Ok(resource) => resource
                        .get("cleanup.policy")
                        .and_then(|e| e.value.clone())
                        .unwrap_or_else(|| "delete".into()),
                    Err(code) => {
                        tracing::info!(topic = %w.name, %code, "cannot describe the topic's configuration: cleanup.policy not checked");
                        continue;
                    }
                };
                if InternalTopic::compacts(required) && !InternalTopic::compacts(&actual) {
                    problems.push(format!(
                        "`{}` ({}) has cleanup.policy={actual}; it must be compacted or a restore loses the state of keys not updated within the retention. Fix: kafka-configs.sh --bootstrap-server {bootstrap} --alter --entity-type topics --entity-name {} --add-config cleanup.policy={required}",
                        w.name, w.role, w.name
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(RuntimeError::InternalTopics { problems })
    }
}

/// Deletes the records of repartition topics below their committed offsets
/// (DeleteRecords), as Kafka Streams purges them, so those topics do not grow without
/// bound. Committed offsets come from the consumer's commit callback.
pub(crate) struct RepartitionPurger {
    admin: std::sync::Arc<AdminClient<DefaultClientContext>>,
    topics: Vec<String>,
    /// Committed offsets not yet purged, by (topic, partition).
    committed: std::sync::Mutex<HashMap<(String, i32), i64>>,
    purged: HashMap<(String, i32), i64>,
    last: Instant,
    interval: Duration,
    timeout: Duration,
    application: String,
}

impl RepartitionPurger {
    /// A purger for `topology`'s repartition topics; `None` when it has none.
    pub(crate) fn new(topology: &Topology, settings: &RunSettings) -> Option<Self> {
        let topics = topology.repartition_topics();
        if topics.is_empty() {
            return None;
        }
        let admin = match admin(&settings.client) {
            Ok(admin) => admin,
            Err(error) => {
                tracing::warn!(application = %topology.application_id(), %error, "repartition topics will not be purged");
                return None;
            }
        };
        Some(RepartitionPurger {
            admin: std::sync::Arc::new(admin),
            topics,
            committed: Default::default(),
            purged: HashMap::new(),
            last: Instant::now(),
            interval: settings.repartition_purge_interval,
            timeout: settings.startup_timeout,
            application: topology.application_id().to_string(),
        })
    }

    /// Notes an offset the broker confirmed as committed.
    pub(crate) fn committed(&self, topic: &str, partition: i32, offset: i64) {
        if self.topics.iter().any(|t| t == topic) {
            let mut committed = self.committed.lock().unwrap_or_else(|p| p.into_inner());
            let entry = committed
                .entry((topic.to_string(), partition))
                .or_insert(offset);
            *entry = (*entry).max(offset);
        }
    }

    /// Every `repartition_purge_interval`, asks the broker to delete what is committed (without
    /// waiting for the answer: a failed purge is retried with the next one).
    pub(crate) fn maybe_purge(&mut self) {
        if self.last.elapsed() < self.interval {
            return;
        }
        self.last = Instant::now();
        let committed: Vec<((String, i32), i64)> = self
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(tp, o)| self.purged.get(*tp).is_none_or(|p| *o > p))
            .map(|(tp, o)| (tp.clone(), *o))
            .collect();
        if committed.is_empty() {
            return;
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        for ((topic, partition), offset) in &committed {
            if tpl
                .add_partition_offset(topic, *partition, rdkafka::Offset::Offset(*offset))
                .is_err()
            {
                return;
            }
        }
        self.purged.extend(committed);
        let deleting = self.admin.delete_records(&tpl, &options(self.timeout));
        let application = self.application.clone();
        tokio::spawn(async move {
            match deleting.await {
                Ok(result) => {
                    tracing::debug!(%application, partitions = result.count(), "committed records of repartition topics deleted")
                }
                Err(error) => {
                    tracing::warn!(%application, %error, "could not delete committed records of repartition topics; retried at the next purge")
                }
            }
        });
    }
}
