//! The embedded broker: librdkafka's mock cluster, hosted in this process.
//!
//! It speaks the Kafka protocol on localhost, so any Kafka client in any process can use
//! it. Its limits, which are librdkafka's: no admin API (topics are created here, or
//! automatically with 4 partitions when a producer asks for an unknown topic), no log
//! compaction or retention settings, only a few megabytes kept per partition, nothing
//! persisted, and no transactions across restarts. It is for development and tests; never
//! a production fallback.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// A mock Kafka cluster running inside this process. Not `Send`: keep it on the thread
/// that created it, for as long as clients use it.
pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("bootstrap_servers", &self.bootstrap_servers())
            .finish()
    }
}

impl EmbeddedBroker {
    /// Starts a cluster of `brokers` brokers on localhost.
    pub fn start(brokers: i32) -> Result<Self, KafkaError> {
        Ok(EmbeddedBroker {
            cluster: MockCluster::new(brokers)?,
        })
    }

    /// The `bootstrap.servers` string clients use.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Delays every broker's responses by `delay` (to test slow brokers and back-pressure).
    pub fn set_round_trip_time(
        &self,
        brokers: i32,
        delay: std::time::Duration,
    ) -> Result<(), KafkaError> {
        for broker in 1..=brokers {
            self.cluster.broker_round_trip_time(broker, delay)?;
        }
        Ok(())
    }

    /// Makes the cluster answer the next requests of kind `api` with `errors`, one error
    /// per request, in order (to test how clients meet a broker's refusals).
    pub fn fail_next_requests(
        &self,
        api: rdkafka::types::RDKafkaApiKey,
        errors: &[rdkafka::types::RDKafkaRespErr],
    ) {
        self.cluster.request_errors(api, errors);
    }

    /// Creates a topic; an existing topic is left as it is.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), KafkaError> {
        match self.cluster.create_topic(name, partitions, 1) {
            Err(KafkaError::MockCluster(RDKafkaErrorCode::TopicAlreadyExists)) => Ok(()),
            other => other,
        }
    }
}
