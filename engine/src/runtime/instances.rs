//! Which instance holds which partitions, so an interactive query for a key held
//! elsewhere can name the instance that holds it (Kafka Streams' `queryMetadataForKey`
//! over `application.server`).
//!
//! librdkafka's built-in assignors do not let a member put its own data in the group
//! metadata, so each instance announces itself on `<application>-instances` instead: on
//! every rebalance it writes, keyed by its advertised address, the partitions it holds;
//! at shutdown it writes an empty list. Every instance reads the whole topic and hands
//! the announcements to the operations endpoint, where the latest claim of a partition
//! (by offset: the topic has one partition, so offsets order every announcement) names
//! its owner.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{ClientRole, ClientSettings, TracingContext, kafka_reason};
use crate::ops::OpsState;

/// The topic where instances of `application_id` announce their partitions: one
/// partition, `cleanup.policy=compact`.
pub fn instances_topic(application_id: &str) -> String {
    format!("{application_id}-instances")
}

/// What one instance publishes.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Announcement {
    /// Address of its operations endpoint, `host:port`.
    http: String,
    /// Partitions it holds now (task partitions, as numbered in the source topics).
    partitions: Vec<i32>,
}

/// Writes this instance's announcements.
pub(crate) struct Announcer {
    producer: FutureProducer<TracingContext>,
    topic: String,
    advertised: String,
    application: String,
}

impl Announcer {
    pub(crate) fn new(
        client: &ClientSettings,
        application: &str,
        advertised: &str,
    ) -> Result<Self, String> {
        let producer = client
            .client_config(ClientRole::Producer)
            .create_with_context(TracingContext {
                client: "instances-producer",
            })
            .map_err(|e| kafka_reason(&e))?;
        Ok(Announcer {
            producer,
            topic: instances_topic(application),
            advertised: advertised.to_string(),
            application: application.to_string(),
        })
    }

    /// Announces that this instance holds `partitions` (empty: none, it is leaving).
    /// The record is queued before this returns, so announcements keep the order of the
    /// calls; the returned future completes when the broker acknowledged (or refused) it.
    pub(crate) fn announce(
        &self,
        mut partitions: Vec<i32>,
    ) -> impl Future<Output = ()> + Send + 'static {
        partitions.sort_unstable();
        partitions.dedup();
        let announcement = Announcement {
            http: self.advertised.clone(),
            partitions,
        };
        // Serializing a string and integers cannot fail.
        let value = serde_json::to_vec(&announcement).unwrap_or_default();
        let record = FutureRecord::to(&self.topic)
            .key(self.advertised.as_bytes())
            .payload(&value)
            .partition(0);
        let queued = self
            .producer
            .send_result(record)
            .map_err(|(error, _)| error);
        let (topic, application) = (self.topic.clone(), self.application.clone());
        async move {
            let delivered = match queued {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((error, _))) => Err(error.to_string()),
                    Err(_) => Err("the producer was dropped".to_string()),
                },
                Err(error) => Err(error.to_string()),
            };
            match delivered {
                Ok(()) => {
                    tracing::debug!(%application, %topic, partitions = ?announcement.partitions, "partitions announced")
                }
                Err(error) => {
                    tracing::warn!(%application, %topic, %error, "could not announce this instance's partitions; other instances cannot direct queries here until the next rebalance")
                }
            }
        }
    }
}

/// Reads every announcement into `ops` until dropped.
pub(crate) struct AnnouncementReader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AnnouncementReader {
    /// Starts reading `<application>-instances` from the beginning on a thread of its own.
    pub(crate) fn start(
        client: &ClientSettings,
        application: &str,
        ops: Arc<OpsState>,
    ) -> Result<Self, String> {
        let topic = instances_topic(application);
        let consumer: BaseConsumer<TracingContext> = client
            .client_config(ClientRole::Consumer)
            // Needed by librdkafka's consumer; it never joins the group (assign only)
            // and never commits.
            .set("group.id", format!("{topic}-reader"))
            .create_with_context(TracingContext {
                client: "instances-consumer",
            })
            .map_err(|e| kafka_reason(&e))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Beginning)
            .map_err(|e| kafka_reason(&e))?;
        consumer.assign(&tpl).map_err(|e| kafka_reason(&e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let application = application.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("{topic}-reader"))
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    let Some(result) = consumer.poll(Duration::from_millis(200)) else {
                        continue;
                    };
                    let message = match result {
                        Ok(m) => m,
                        Err(error) => {
                            tracing::debug!(%application, %topic, %error, "instances topic read error; retrying");
                            continue;
                        }
                    };
                    let Some(payload) = message.payload() else {
                        continue;
                    };
                    match serde_json::from_slice::<Announcement>(payload) {
                        Ok(a) => {
                            ops.announced(&application, &a.http, a.partitions, message.offset())
                        }
                        Err(error) => {
                            tracing::warn!(%application, %topic, offset = message.offset(), %error, "not an instance announcement; ignored")
                        }
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(AnnouncementReader {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for AnnouncementReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
