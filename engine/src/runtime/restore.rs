//! Restoring a task's stores from their changelogs, and the checkpoints that let a
//! restart replay only the tail.
//!
//! A checkpoint (`<store dir>.checkpoint`) is written only when a task closes cleanly
//! (revocation or shutdown, after its outputs are acknowledged and its store flushed) and
//! is deleted when the task opens again. A store without a checkpoint (first start, or a
//! crash) is wiped and rebuilt from the whole changelog: local data that may hold writes
//! the changelog never got is never trusted.
//!
//! A task's stores are restored together: the writes of inputs past the committed
//! offset are applied only for the inputs every store's changelog has completely, and
//! the rest are processed again (see [`Restored`] and [`cut`]), so the stores agree with
//! each other and with the inputs skipped as already applied.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{ClientRole, ClientSettings, kafka_reason};
use crate::state::{BytesStore, RocksSettings, StoreKind, StoreSpec};

use super::RuntimeError;

/// What one store's restore did.
///
/// Every changelog record names the input it belongs to (`engine.source.topic` and
/// `.offset`), or the last input processed per source topic when a flush or punctuation
/// wrote it (`engine.source.positions`); the last record of a call in each changelog
/// marks its inputs complete in that changelog (`engine.source.last`), except the
/// deferred ones it names (`engine.source.deferred`). Writes of inputs before the
/// group's committed offset are complete in every changelog (commits wait for them) and
/// are applied at once; the others are held until every store of the task is read and
/// [`cut`] says which inputs all of them have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Restored {
    pub store: String,
    pub records: u64,
    pub from_checkpoint: bool,
    /// Per source topic, the last input this changelog marks complete.
    pub applied: HashMap<String, i64>,
    /// The marks, in log order.
    pub marks: Vec<Mark>,
    /// Writes of inputs at or after the committed offset, in log order, with the inputs
    /// they belong to.
    pub held: Vec<(Vec<(String, i64)>, Write)>,
    /// The highest epoch of the task's owners seen (in the checkpoint or the log).
    pub epoch: u64,
    /// Records left out because an owner with a higher epoch had written before them.
    pub fenced: u64,
}

/// A changelog record marking inputs complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    /// The inputs it completes, per source topic (everything up to these offsets).
    pub positions: Vec<(String, i64)>,
    /// Inputs up to those positions that were deferred and not complete.
    pub deferred: Vec<(String, i64)>,
}

/// A store write: key and value (`None`: a deletion).
pub(crate) type Write = (Vec<u8>, Option<Vec<u8>>);

/// Per source topic, the last input whose store writes every restored store of the
/// task holds: the later of the committed offset and the last input every changelog
/// marks complete. Writes of later inputs are dropped and those inputs processed again.
pub(crate) fn cut(
    restored: &[Restored],
    committed: &HashMap<String, i64>,
    topics: &[String],
) -> HashMap<String, i64> {
    topics
        .iter()
        .map(|topic| {
            let marked = restored
                .iter()
                .map(|r| r.applied.get(topic).copied().unwrap_or(i64::MIN))
                .min()
                .unwrap_or(i64::MIN);
            let committed = committed.get(topic).map_or(i64::MIN, |c| c - 1);
            (topic.clone(), marked.max(committed))
        })
        .collect()
}

/// Whether every input in `inputs` is at or before `cut`.
pub(crate) fn within(inputs: &[(String, i64)], cut: &HashMap<String, i64>) -> bool {
    inputs
        .iter()
        .all(|(t, o)| cut.get(t).is_some_and(|c| o <= c))
}

/// The inputs at or before `cut` that are not applied: per source topic, the deferred
/// ones named by the latest mark within the cut.
pub(crate) fn unapplied(
    restored: &[Restored],
    cut: &HashMap<String, i64>,
) -> std::collections::HashSet<(String, i64)> {
    let mut out = std::collections::HashSet::new();
    for topic in cut.keys() {
        let latest = restored
            .iter()
            .flat_map(|r| &r.marks)
            .filter(|m| within(&m.positions, cut))
            .filter_map(|m| {
                let (_, o) = m.positions.iter().find(|(t, _)| t == topic)?;
                Some((*o, m))
            })
            .max_by_key(|(o, _)| *o);
        if let Some((_, mark)) = latest {
            out.extend(mark.deferred.iter().filter(|(t, _)| t == topic).cloned());
        }
    }
    out
}

fn header_text<'a>(m: &'a rdkafka::message::BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    use rdkafka::message::Headers;
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

pub(crate) fn apply(store: &Arc<dyn BytesStore>, writes: &[Write]) -> Result<u64, RuntimeError> {
    store
        .write_batch(writes)
        .map_err(|e| RuntimeError::Client {
            what: "store restore",
            reason: e.to_string(),
        })?;
    Ok(writes.len() as u64)
}

/// Writes applied to a store as one batch during a restore.
const RESTORE_BATCH: usize = 4096;

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

/// The offset a checkpoint names, and the epoch of the owner that wrote it.
fn read_checkpoint(path: &Path) -> Option<(i64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut fields = text.split_whitespace();
    let offset = fields.next()?.parse().ok()?;
    let epoch = fields.next().and_then(|e| e.parse().ok()).unwrap_or(0);
    Some((offset, epoch))
}

/// Writes a checkpoint: the changelog offset the store is complete up to (exclusive),
/// and the epoch of the owner writing it.
pub(crate) fn write_checkpoint(path: &Path, offset: i64, epoch: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("checkpoint.tmp");
    std::fs::write(&tmp, format!("{offset} {epoch}"))?;
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

/// Brings `store` up to date with its changelog partition, except the writes of inputs
/// at or after `committed` (per source topic), which it returns held (see [`Restored`]).
/// Adds the records it applies to `progress` as it goes. Once `cancel` is set (the
/// task was revoked, or the instance stops) it returns `None` soon after, leaving a
/// checkpoint where it stopped when it holds no writes back, so the next restore goes
/// on from there.
// One argument per part of the restore; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn restore(
    client: &ClientSettings,
    store: &Arc<dyn BytesStore>,
    spec: &StoreSpec,
    topic: &str,
    partition: i32,
    checkpoint: Option<&Path>,
    committed: &HashMap<String, i64>,
    timeout: Duration,
    progress: &AtomicU64,
    cancel: &AtomicBool,
) -> Result<Option<Restored>, RuntimeError> {
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
        Some((offset, _)) if (low..=high).contains(&offset) => offset,
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
        from_checkpoint: checkpointed.is_some_and(|(c, _)| c == start),
        applied: HashMap::new(),
        marks: Vec::new(),
        held: Vec::new(),
        epoch: checkpointed.map_or(0, |(_, e)| e),
        fenced: 0,
    };
    let complete: HashMap<String, i64> =
        committed.iter().map(|(t, c)| (t.clone(), c - 1)).collect();
    if start >= high {
        return Ok(Some(restored));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))
        .map_err(client_error("changelog assignment"))?;
    consumer
        .assign(&tpl)
        .map_err(client_error("changelog assignment"))?;
    // A restore that makes progress may take as long as it needs; one that reads
    // nothing for this long is stuck.
    let stuck_after = timeout.max(Duration::from_secs(60));
    let mut last_progress = Instant::now();
    let mut next = start;
    let mut progress_at = start;
    let mut batch: Vec<Write> = Vec::with_capacity(RESTORE_BATCH);
    let flush = |batch: &mut Vec<Write>, restored: &mut Restored| -> Result<(), RuntimeError> {
        if batch.is_empty() {
            return Ok(());
        }
        // The same buffer serves every batch: no allocation per batch.
        let applied = apply(store, batch)?;
        batch.clear();
        restored.records += applied;
        progress.fetch_add(applied, Ordering::Relaxed);
        Ok(())
    };
    while next < high {
        if cancel.load(Ordering::Relaxed) {
            flush(&mut batch, &mut restored)?;
            if let Some(path) = checkpoint
                && restored.held.is_empty()
                && store.flush().is_ok()
            {
                // Everything before `next` is in the store, durably: the next owner of
                // this store (likely this instance again) goes on from here.
                let _ = write_checkpoint(path, next, restored.epoch);
            }
            return Ok(None);
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {
                flush(&mut batch, &mut restored)?;
                // Only a poll that brought nothing can mean stuck, so no clock is read
                // per record: progress is an offset beyond the one last seen here.
                if next > progress_at {
                    progress_at = next;
                    last_progress = Instant::now();
                } else if last_progress.elapsed() > stuck_after {
                    return Err(RuntimeError::Client {
                        what: "changelog restore",
                        reason: format!(
                            "{topic} partition {partition}: stuck at offset {next} of {high}"
                        ),
                    });
                }
                // Transaction markers (exactly-once changelogs) take offsets but are never
                // delivered: the consumer's position says when they are passed. Under
                // `read_committed` the position also waits for open transactions to end.
                if let Ok(position) = consumer.position()
                    && let Some(Offset::Offset(at)) = position
                        .find_partition(topic, partition)
                        .map(|e| e.offset())
                    && at > next
                {
                    next = at;
                    last_progress = Instant::now();
                }
            }
            Some(Err(e)) => return Err(client_error("changelog restore")(e)),
            Some(Ok(m)) => {
                next = m.offset() + 1;
                if batch.len() >= RESTORE_BATCH {
                    flush(&mut batch, &mut restored)?;
                }
                let Some(key) = m.key() else { continue };
                if let Some(epoch) =
                    header_text(&m, crate::topology::CHANGELOG_EPOCH).and_then(|e| e.parse().ok())
                {
                    if epoch < restored.epoch {
                        // Written by an owner that had lost the task to a later one.
                        restored.fenced += 1;
                        continue;
                    }
                    restored.epoch = epoch;
                }
                if key == crate::topology::CHANGELOG_FENCE_KEY {
                    continue;
                }
                let write = (key.to_vec(), m.payload().map(<[u8]>::to_vec));
                let Some(inputs) = inputs_of(&m) else {
                    // Written by a punctuation while a cache held writes: not tied to
                    // an input record.
                    batch.push(write);
                    continue;
                };
                if header_text(&m, crate::topology::CHANGELOG_LAST).is_some() {
                    for (topic, offset) in &inputs {
                        let applied = restored.applied.entry(topic.clone()).or_insert(*offset);
                        *applied = (*applied).max(*offset);
                    }
                    restored.marks.push(Mark {
                        positions: inputs.clone(),
                        deferred: header_text(&m, crate::topology::CHANGELOG_DEFERRED)
                            .map(crate::topology::decode_deferred)
                            .unwrap_or_default(),
                    });
                }
                if within(&inputs, &complete) {
                    batch.push(write);
                } else {
                    restored.held.push((inputs, write));
                }
            }
        }
    }
    flush(&mut batch, &mut restored)?;
    Ok(Some(restored))
}

/// The inputs a changelog record belongs to, from its headers; `None` if it names none.
fn inputs_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<Vec<(String, i64)>> {
    let source = header_text(m, crate::topology::dead_letter_headers::SOURCE_TOPIC)
        .zip(
            header_text(m, crate::topology::dead_letter_headers::SOURCE_OFFSET)
                .and_then(|o| o.parse::<i64>().ok()),
        )
        .map(|(t, o)| vec![(t.to_string(), o)]);
    source.or_else(|| {
        header_text(m, crate::topology::CHANGELOG_POSITIONS).map(|p| {
            p.split(';')
                .filter_map(|pair| {
                    let (t, o) = pair.rsplit_once('=')?;
                    Some((t.to_string(), o.parse::<i64>().ok()?))
                })
                .collect()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restored(applied: &[(&str, i64)], marks: Vec<Mark>) -> Restored {
        Restored {
            store: "s".into(),
            records: 0,
            from_checkpoint: false,
            applied: applied.iter().map(|(t, o)| (t.to_string(), *o)).collect(),
            marks,
            held: Vec::new(),
            epoch: 0,
            fenced: 0,
        }
    }

    fn mark(position: i64, deferred: &[i64]) -> Mark {
        Mark {
            positions: vec![("in".into(), position)],
            deferred: deferred.iter().map(|o| ("in".to_string(), *o)).collect(),
        }
    }

    #[test]
    fn a_cancelled_restore_leaves_a_checkpoint_the_next_one_goes_on_from() {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        // Enough that the restore is still reading when the cancel comes (under the mock
        // cluster's 5 MiB per partition).
        const RECORDS: i64 = 50_000;
        let broker = crate::kafka::EmbeddedBroker::start(1).unwrap();
        broker.create_topic("app-s-changelog", 1).unwrap();
        let client = ClientSettings {
            bootstrap_servers: broker.bootstrap_servers(),
            ..Default::default()
        };
        let producer: BaseProducer = client.client_config(ClientRole::Producer).create().unwrap();
        for i in 0..RECORDS {
            let key = format!("k{i:05}");
            producer
                .send(BaseRecord::to("app-s-changelog").key(&key).payload("v"))
                .unwrap();
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(30)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = dir.path().join("s.checkpoint");
        let spec = StoreSpec {
            name: "s".into(),
            kind: StoreKind::Persistent,
            changelog: true,
            default_ttl: None,
            changelog_retention: None,
            caching: false,
            key_format: "bytes".into(),
            value_format: "bytes".into(),
        };
        let store: Arc<dyn BytesStore> = Arc::new(crate::state::MemoryStore::default());
        let run = |progress: &AtomicU64, cancel: &AtomicBool| {
            restore(
                &client,
                &store,
                &spec,
                "app-s-changelog",
                0,
                Some(&checkpoint),
                &HashMap::new(),
                Duration::from_secs(10),
                progress,
                cancel,
            )
            .unwrap()
        };

        // Cancelled once the first batch is in.
        let (progress, cancel) = (AtomicU64::new(0), AtomicBool::new(false));
        let cancelled = std::thread::scope(|scope| {
            scope.spawn(|| {
                while progress.load(Ordering::Relaxed) == 0 {
                    std::thread::yield_now();
                }
                cancel.store(true, Ordering::Relaxed);
            });
            run(&progress, &cancel)
        });
        assert_eq!(cancelled, None);
        let (stopped_at, _) = read_checkpoint(&checkpoint).expect("a checkpoint");
        assert!(
            0 < stopped_at && stopped_at < RECORDS,
            "stopped mid-way: {stopped_at}"
        );
        assert_eq!(
            store.approximate_len(),
            stopped_at as u64,
            "exactly what it read"
        );

        // The next restore reads only the rest.
        let restored = run(&AtomicU64::new(0), &AtomicBool::new(false)).expect("not cancelled");
        assert!(restored.from_checkpoint);
        assert_eq!(restored.records, (RECORDS - stopped_at) as u64);
        assert_eq!(store.approximate_len(), RECORDS as u64);
    }

    #[test]
    fn the_cut_is_the_last_input_every_store_has_or_the_committed_one() {
        let topics = vec!["in".to_string()];
        let stores = [
            restored(&[("in", 10)], vec![mark(10, &[])]),
            restored(&[("in", 5)], vec![mark(5, &[])]),
        ];
        let committed = |c: Option<i64>| -> HashMap<String, i64> {
            c.into_iter().map(|c| ("in".to_string(), c)).collect()
        };
        assert_eq!(cut(&stores, &committed(None), &topics)["in"], 5);
        assert_eq!(cut(&stores, &committed(Some(8)), &topics)["in"], 7);
        assert_eq!(cut(&stores, &committed(Some(3)), &topics)["in"], 5);
        // A store that marks nothing holds nothing past the committed offset.
        let unmarked = [stores[0].clone(), restored(&[], Vec::new())];
        assert_eq!(cut(&unmarked, &committed(Some(3)), &topics)["in"], 2);
    }

    #[test]
    fn unapplied_inputs_come_from_the_latest_mark_within_the_cut() {
        let stores = [
            restored(&[("in", 9)], vec![mark(4, &[2, 3]), mark(9, &[3, 8])]),
            restored(&[("in", 6)], vec![mark(6, &[3])]),
        ];
        let cut: HashMap<String, i64> = [("in".to_string(), 6)].into();
        let unapplied = unapplied(&stores, &cut);
        assert_eq!(unapplied, [("in".to_string(), 3)].into_iter().collect());
    }
}
