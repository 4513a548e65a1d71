//! Restoring a task's stores from their changelogs, and the checkpoints that let a
//! restart replay only the tail.
//!
//! A checkpoint (`<store dir>.checkpoint`) is written only when a task closes cleanly
//! (revocation or shutdown, after its outputs are acknowledged and its store flushed) and
//! is deleted when the task opens again. A store without a checkpoint (first start, or a
//! crash) is wiped and rebuilt from the whole changelog: local data that may hold writes
//! the changelog never got is never trusted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{ClientRole, ClientSettings, kafka_reason};
use crate::state::{BytesStore, RocksSettings, StoreKind, StoreSpec};

use super::RuntimeError;

/// What one store's restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Restored {
    pub store: String,
    pub records: u64,
    pub from_checkpoint: bool,
    /// Per source topic, the last input offset whose store writes were all restored.
    pub applied: HashMap<String, i64>,
    /// Inputs at or before `applied` that are not applied: deferred and incomplete when
    /// the changelog was last marked.
    pub unapplied: std::collections::HashSet<(String, i64)>,
    /// Changelog records of an input cut short by a crash, left out.
    pub incomplete: u64,
}

fn header_text<'a>(m: &'a rdkafka::message::BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    use rdkafka::message::Headers;
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

fn apply(
    store: &Arc<dyn BytesStore>,
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
) -> Result<u64, RuntimeError> {
    let n = writes.len() as u64;
    for (key, value) in writes {
        match value {
            Some(v) => store.put(&key, &v),
            None => store.delete(&key),
        }
        .map_err(|e| RuntimeError::Client {
            what: "store restore",
            reason: e.to_string(),
        })?;
    }
    Ok(n)
}

/// Where a store's checkpoint lives (persistent stores only).
pub(crate) fn checkpoint_path(
    settings: &RocksSettings,
    application: &str,
    partition: i32,
    spec: &StoreSpec,
) -> Option<PathBuf> {
    (spec.kind == StoreKind::Persistent).then(|| {
        let mut dir = settings
            .store_dir(application, partition, &spec.name)
            .into_os_string();
        dir.push(".checkpoint");
        PathBuf::from(dir)
    })
}

fn read_checkpoint(path: &Path) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Writes a checkpoint: the changelog offset the store is complete up to (exclusive).
pub(crate) fn write_checkpoint(path: &Path, offset: i64) -> std::io::Result<()> {
    let tmp = path.with_extension("checkpoint.tmp");
    std::fs::write(&tmp, offset.to_string())?;
    std::fs::rename(tmp, path)
}

fn client_error(what: &'static str) -> impl Fn(rdkafka::error::KafkaError) -> RuntimeError {
    move |e| RuntimeError::Client {
        what,
        reason: kafka_reason(&e),
    }
}

/// The end (high watermark) of a changelog partition.
pub(crate) fn changelog_end(
    client: &ClientSettings,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<i64, RuntimeError> {
    let consumer: BaseConsumer = client
        .client_config(ClientRole::Consumer)
        .create()
        .map_err(client_error("changelog consumer"))?;
    let (_, high) = consumer
        .fetch_watermarks(topic, partition, timeout)
        .map_err(client_error("changelog watermarks"))?;
    Ok(high)
}

/// Brings `store` up to date with its changelog partition.
pub(crate) fn restore(
    client: &ClientSettings,
    store: &Arc<dyn BytesStore>,
    spec: &StoreSpec,
    topic: &str,
    partition: i32,
    checkpoint: Option<&Path>,
    timeout: Duration,
) -> Result<Restored, RuntimeError> {
    let consumer: BaseConsumer = client
        .client_config(ClientRole::Consumer)
        .set("group.id", format!("{topic}-restore"))
        .create()
        .map_err(client_error("changelog consumer"))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, timeout)
        .map_err(client_error("changelog watermarks"))?;
    let checkpointed = checkpoint.and_then(read_checkpoint);
    if let Some(path) = checkpoint {
        // From now on the local data may run ahead of the changelog until the next clean
        // close writes a new checkpoint.
        let _ = std::fs::remove_file(path);
    }
    let start = match checkpointed {
        Some(offset) if (low..=high).contains(&offset) => offset,
        _ => {
            store.clear().map_err(|e| RuntimeError::Client {
                what: "store wipe",
                reason: e.to_string(),
            })?;
            low
        }
    };
    let mut restored = Restored {
        store: spec.name.clone(),
        records: 0,
        from_checkpoint: checkpointed.is_some_and(|c| c == start),
        applied: HashMap::new(),
        unapplied: Default::default(),
        incomplete: 0,
    };
    if start >= high {
        return Ok(restored);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))
        .map_err(client_error("changelog assignment"))?;
    consumer
        .assign(&tpl)
        .map_err(client_error("changelog assignment"))?;
    let deadline = Instant::now() + timeout.max(Duration::from_secs(60));
    let mut next = start;
    // Writes of inputs not yet known to be complete, in log order.
    let mut pending: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    while next < high {
        if Instant::now() > deadline {
            return Err(RuntimeError::Client {
                what: "changelog restore",
                reason: format!("{topic} partition {partition}: stuck at offset {next} of {high}"),
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => return Err(client_error("changelog restore")(e)),
            Some(Ok(m)) => {
                next = m.offset() + 1;
                let Some(key) = m.key() else { continue };
                let source = header_text(&m, crate::topology::dead_letter_headers::SOURCE_TOPIC)
                    .zip(
                        header_text(&m, crate::topology::dead_letter_headers::SOURCE_OFFSET)
                            .and_then(|o| o.parse::<i64>().ok()),
                    )
                    .map(|(t, o)| vec![(t.to_string(), o)]);
                let positions = header_text(&m, crate::topology::CHANGELOG_POSITIONS).map(|p| {
                    p.split(';')
                        .filter_map(|pair| {
                            let (t, o) = pair.rsplit_once('=')?;
                            Some((t.to_string(), o.parse::<i64>().ok()?))
                        })
                        .collect::<Vec<_>>()
                });
                let write = (key.to_vec(), m.payload().map(<[u8]>::to_vec));
                let Some(inputs) = source.or(positions) else {
                    // Written by a punctuation: not tied to an input record.
                    restored.records += apply(store, vec![write])?;
                    continue;
                };
                pending.push(write);
                if header_text(&m, crate::topology::CHANGELOG_LAST).is_some() {
                    // Everything up to here is complete: the writes since the last mark,
                    // and the inputs this one names.
                    restored.records += apply(store, std::mem::take(&mut pending))?;
                    for (topic, offset) in inputs {
                        let applied = restored.applied.entry(topic).or_insert(offset);
                        *applied = (*applied).max(offset);
                    }
                    // Each mark names every input still deferred when it was written.
                    restored.unapplied = header_text(&m, crate::topology::CHANGELOG_DEFERRED)
                        .map(crate::topology::decode_deferred)
                        .unwrap_or_default()
                        .into_iter()
                        .collect();
                }
            }
        }
    }
    // An input whose writes end the log without their last one was cut short by a crash;
    // it is processed again, so none of its writes may be applied.
    restored.incomplete = pending.len() as u64;
    Ok(restored)
}
