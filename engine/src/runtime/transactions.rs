//! Exactly-once (KIP-447, Kafka Streams' `exactly_once_v2`): one transactional producer
//! per instance, whose transactions hold the outputs, the changelog records and the
//! consumed offsets of a commit interval.
//!
//! The `transactional.id` is `<application id>-<instance id>`, the instance id a UUID
//! kept in the state directory, so a restarted instance takes over (and fences) the
//! producer of its previous life, and its open transaction is aborted at once rather
//! than when the broker's transaction timeout expires. Zombies of another instance are
//! fenced by the consumer group's generation, which comes with the offsets
//! (`send_offsets_to_transaction` with the consumer's group metadata).
//!
//! Every call here waits on the broker: call them off the executor.

use std::path::Path;
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::kafka_reason;

/// The name of the file, in `<state dir>/<application>/`, holding the instance id.
const INSTANCE_ID_FILE: &str = "instance.id";
/// The file, next to it, that the running instance holds locked.
const INSTANCE_LOCK_FILE: &str = "instance.lock";

/// Holds the instance id of a state directory for the life of the instance: a second
/// instance on the same state directory would share its transactional id, and the two
/// would fence each other's producer forever.
#[derive(Debug)]
pub(crate) struct InstanceClaim {
    /// The instance id.
    pub id: String,
    _lock: std::fs::File,
}

/// Claims the instance id of `application` in `state_dir` (created on first use), or
/// says why not.
pub(crate) fn claim_instance(state_dir: &Path, application: &str) -> Result<InstanceClaim, String> {
    let dir = state_dir.join(application);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(INSTANCE_LOCK_FILE);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // `File::try_lock` is newer than the crate's minimum Rust version.
    // SAFETY: the descriptor belongs to `lock`, open for this call; flock takes no
    // pointers. The lock lives as long as the descriptor (released when `lock` drops or
    // the process dies).
    #[allow(unsafe_code)]
    let locked = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&lock),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if locked != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(format!(
                "the state directory {} is in use by another running instance of `{application}`: under exactly_once_v2 an instance's transactional id comes from its state directory, and two instances sharing one would fence each other. Give each instance its own --state-dir (runtime.state_dir)",
                state_dir.display()
            ));
        }
        return Err(format!("cannot lock {}: {error}", path.display()));
    }
    let id = instance_id(state_dir, application)
        .map_err(|e| format!("cannot keep the instance id in {}: {e}", dir.display()))?;
    Ok(InstanceClaim { id, _lock: lock })
}

/// This instance's id for `application`: read from the state directory, or created
/// there on first use.
pub(crate) fn instance_id(state_dir: &Path, application: &str) -> std::io::Result<String> {
    let dir = state_dir.join(application);
    let path = dir.join(INSTANCE_ID_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim();
        if uuid::Uuid::parse_str(id).is_ok() {
            return Ok(id.to_string());
        }
        tracing::warn!(path = %path.display(), "not an instance id; a new one replaces it");
    }
    std::fs::create_dir_all(&dir)?;
    let id = uuid::Uuid::new_v4().to_string();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &id)?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

/// The `transactional.id` of an instance.
pub(crate) fn transactional_id(application: &str, instance_id: &str) -> String {
    format!("{application}-{instance_id}")
}

/// Why a transaction did not commit.
#[derive(Debug)]
pub(crate) struct TransactionFailure {
    /// What failed, for the log.
    pub reason: String,
    /// The producer cannot go on (fenced by a newer instance with its transactional id,
    /// or a fatal error): a new one must be created.
    pub fatal: bool,
    /// The group coordinator refused the offsets because the group has moved on (it is
    /// rebalancing, or has a newer generation): the revoked partitions' work belongs to
    /// their next owner, as at any revocation.
    pub group_moved_on: bool,
}

impl TransactionFailure {
    fn of(step: &str, error: &KafkaError) -> Self {
        let fatal = match error {
            KafkaError::Transaction(e) => e.is_fatal(),
            _ => false,
        };
        let group_moved_on = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::IllegalGeneration
                    | RDKafkaErrorCode::RebalanceInProgress
                    | RDKafkaErrorCode::UnknownMemberId
            )
        );
        TransactionFailure {
            reason: format!("{step}: {}", kafka_reason(error)),
            fatal,
            group_moved_on,
        }
    }
}

/// Commits the open transaction with `offsets` (the next offset to consume, per input
/// partition) and begins the next one. The producer is flushed first: every output
/// sent so far is in the transaction.
pub(crate) fn commit<P: Producer<C>, C: rdkafka::producer::ProducerContext>(
    producer: &P,
    offsets: &[(String, i32, i64)],
    group: Option<&ConsumerGroupMetadata>,
    timeout: Duration,
) -> Result<(), TransactionFailure> {
    if !offsets.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in offsets {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(|e| TransactionFailure::of("offsets", &e))?;
        }
        let Some(group) = group else {
            return Err(TransactionFailure {
                reason: "the consumer has no group metadata (it is not in its group)".into(),
                fatal: false,
                group_moved_on: false,
            });
        };
        producer
            .send_offsets_to_transaction(&tpl, group, timeout)
            .map_err(|e| TransactionFailure::of("sending the offsets to the transaction", &e))?;
    }
    let committed = producer.commit_transaction(timeout).or_else(|e| match &e {
        // librdkafka: a retriable error (a timeout) may be retried.
        KafkaError::Transaction(t) if t.is_retriable() => producer.commit_transaction(timeout),
        _ => Err(e),
    });
    committed.map_err(|e| TransactionFailure::of("committing the transaction", &e))?;
    producer
        .begin_transaction()
        .map_err(|e| TransactionFailure::of("beginning the next transaction", &e))
}

/// Aborts the open transaction and begins the next one; an error means the producer
/// must be replaced.
pub(crate) fn abort<P: Producer<C>, C: rdkafka::producer::ProducerContext>(
    producer: &P,
    timeout: Duration,
) -> Result<(), TransactionFailure> {
    producer
        .abort_transaction(timeout)
        .map_err(|e| TransactionFailure::of("aborting the transaction", &e))?;
    producer
        .begin_transaction()
        .map_err(|e| TransactionFailure::of("beginning the next transaction", &e))
}

/// Initializes a new transactional producer (fencing any earlier producer with its
/// transactional id, and aborting that one's open transaction) and begins a transaction.
pub(crate) fn start<P: Producer<C>, C: rdkafka::producer::ProducerContext>(
    producer: &P,
    timeout: Duration,
) -> Result<(), String> {
    producer.init_transactions(timeout).map_err(|e| {
        format!(
            "initializing the transactional producer: {}",
            kafka_reason(&e)
        )
    })?;
    producer
        .begin_transaction()
        .map_err(|e| format!("beginning a transaction: {}", kafka_reason(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_running_instance_claims_a_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = claim_instance(dir.path(), "app").unwrap();
        let refused = claim_instance(dir.path(), "app").unwrap_err();
        assert!(
            refused.contains("in use by another running instance of `app`")
                && refused.contains("its own --state-dir"),
            "{refused}"
        );
        assert!(
            claim_instance(dir.path(), "other").is_ok(),
            "per application"
        );
        let id = first.id.clone();
        drop(first);
        assert_eq!(
            claim_instance(dir.path(), "app").unwrap().id,
            id,
            "released with the instance, the same id"
        );
    }

    #[test]
    fn the_instance_id_is_kept_in_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = instance_id(dir.path(), "app").unwrap();
        assert_eq!(instance_id(dir.path(), "app").unwrap(), first, "stable");
        assert_ne!(
            instance_id(dir.path(), "other").unwrap(),
            first,
            "one per application"
        );
        let elsewhere = tempfile::tempdir().unwrap();
        assert_ne!(instance_id(elsewhere.path(), "app").unwrap(), first);
        assert_eq!(
            transactional_id("app", &first),
            format!("app-{first}"),
            "the application id, then the instance id"
        );
    }
}
