//! The processor API: what `KStream::process` runs, and what every built-in operator is
//! written in. A processor sees one record at a time with its context (key, value,
//! timestamp, headers, source partition and offset), forwards records to all or named
//! children, and can schedule punctuations on stream time or wall-clock time.

use std::marker::PhantomData;
use std::time::Duration;

use crate::record::{ProducedRecord, Record, RecordMetadata, Timestamp};
use crate::state::typed::StoreSerdes;
use crate::state::{KeyValueStore, ReadOnlyKeyValueStore, StoreError};

use super::error::ProcessingError;
use super::node::{ErasedRecord, NodeContext, NodeInstance, NodeOps, unbox};

/// When a punctuation's clock advances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PunctuationType {
    /// The largest record timestamp the task has seen; advances only with input.
    StreamTime,
    /// The system clock; fires even when no input arrives.
    WallClockTime,
}

/// A consumed record whose commit a processor holds back until it calls
/// [`ProcessorContext::complete`]: work that finishes after `process` returns (an
/// execution, a call to another system) keeps its input uncommitted until its results
/// are written. Offsets commit in order, so later records of the same partition wait too.
///
/// A deferral lives as long as its task: when the partition is revoked or the process
/// stops, the record is processed again by the next owner, from the last commit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Deferred {
    /// Source topic of the held record.
    pub topic: std::sync::Arc<str>,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

/// Identifies one scheduled punctuation of a processor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ScheduleId(pub(crate) u32);

/// Custom record processing, one instance per task (partition).
///
/// ```
/// use engine::topology::{Processor, ProcessorContext, ProcessingError};
/// use engine::record::Record;
///
/// /// Forwards each value with its source offset appended.
/// struct TagOffset;
///
/// impl Processor<String, String, String, String> for TagOffset {
///     fn process(
///         &mut self,
///         record: Record<String, String>,
///         ctx: &mut ProcessorContext<'_, String, String>,
///     ) -> Result<(), ProcessingError> {
///         let offset = ctx.offset().unwrap_or(-1);
///         let value = format!("{}@{offset}", record.value);
///         ctx.forward(record.with_value(value));
///         Ok(())
///     }
/// }
/// ```
pub trait Processor<KIn, VIn, KOut, VOut>: Send + 'static {
    /// Called once when the task starts, before any record.
    fn init(&mut self, _ctx: &mut ProcessorContext<'_, KOut, VOut>) -> Result<(), ProcessingError> {
        Ok(())
    }

    /// Handles one record.
    fn process(
        &mut self,
        record: Record<KIn, VIn>,
        ctx: &mut ProcessorContext<'_, KOut, VOut>,
    ) -> Result<(), ProcessingError>;

    /// Called when a schedule made with [`ProcessorContext::schedule`] fires.
    fn punctuate(
        &mut self,
        _schedule: ScheduleId,
        _timestamp: Timestamp,
        _ctx: &mut ProcessorContext<'_, KOut, VOut>,
    ) -> Result<(), ProcessingError> {
        Ok(())
    }

    /// Called when the task flushes: before the runtime commits its offsets (every
    /// commit interval and at a clean shutdown), when input went quiet while a record
    /// cache held updates, and in the test driver after every input record (unless it
    /// buffers) and on `commit()`. Write out what the processor buffers (the
    /// aggregations write their record cache here); what it forwards is processed like a
    /// punctuation's output. A flush does not hold offsets by itself: records whose
    /// effect a processor buffers should be held with [`ProcessorContext::defer`].
    fn flush(
        &mut self,
        _ctx: &mut ProcessorContext<'_, KOut, VOut>,
    ) -> Result<(), ProcessingError> {
        Ok(())
    }
}

/// What a processor can see and do while it handles a record or a punctuation.
pub struct ProcessorContext<'a, K, V> {
    inner: &'a mut (dyn NodeOps + 'a),
    _types: PhantomData<fn(K, V)>,
}

impl<'a, K, V> ProcessorContext<'a, K, V> {
    pub(crate) fn new(inner: &'a mut (dyn NodeOps + 'a)) -> Self {
        ProcessorContext {
            inner,
            _types: PhantomData,
        }
    }
}

impl<K: Clone + Send + 'static, V: Clone + Send + 'static> ProcessorContext<'_, K, V> {
    /// Sends a record to every child of this node.
    pub fn forward(&mut self, record: Record<K, V>) {
        self.inner.forward(erase(record));
    }

    /// Sends a record to the child with this name only.
    pub fn forward_to(&mut self, child: &str, record: Record<K, V>) -> Result<(), ProcessingError> {
        self.inner.forward_to(child, erase(record))
    }

    /// Names of this node's children, for `forward_to`.
    pub fn children(&self) -> impl Iterator<Item = &str> {
        self.inner.child_names().iter().map(|c| &**c)
    }

    /// Topic, partition and offset of the record being processed (`None` in a punctuation).
    pub fn record_metadata(&self) -> Option<&RecordMetadata> {
        self.inner.metadata()
    }

    /// Source topic of the record being processed.
    pub fn topic(&self) -> Option<&str> {
        self.inner.metadata().map(|m| &*m.topic)
    }

    /// Offset of the record being processed.
    pub fn offset(&self) -> Option<i64> {
        self.inner.metadata().map(|m| m.offset)
    }

    /// The partition of the task this processor instance belongs to.
    pub fn partition(&self) -> i32 {
        self.inner.task().partition
    }

    /// The name of the node this processor runs as.
    pub fn node_name(&self) -> &str {
        self.inner.node_name()
    }

    /// The application id (consumer group) of the topology.
    pub fn application_id(&self) -> &str {
        &self.inner.task().application_id
    }

    /// Largest record timestamp this task has seen (`i64::MIN` before the first record).
    pub fn stream_time(&self) -> Timestamp {
        self.inner.stream_time()
    }

    /// Current wall-clock time as the runtime (or test driver) sees it.
    pub fn wall_clock_time(&self) -> Timestamp {
        self.inner.wall_clock()
    }

    /// Number of partitions of a topic, when the runtime knows it (sink topics).
    pub fn partition_count(&self, topic: &str) -> Option<i32> {
        self.inner.task().partition_counts.get(topic).copied()
    }

    /// Calls [`Processor::punctuate`] every `interval` of the chosen clock.
    pub fn schedule(&mut self, interval: Duration, kind: PunctuationType) -> ScheduleId {
        let ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        self.inner.schedule(ms, kind)
    }

    /// Stops a schedule.
    pub fn cancel(&mut self, schedule: ScheduleId) {
        self.inner.cancel(schedule)
    }

    /// The store `name`, typed with its key and value types. The node must have declared
    /// it (`process_with_stores`); its writes also go to the store's changelog.
    pub fn kv_store<SK: 'static, SV: 'static>(
        &mut self,
        name: &str,
    ) -> Result<KeyValueStore<'_, SK, SV>, StoreError> {
        let (handle, writer, now) = self.inner.store_access(name)?;
        let serdes = typed_serdes::<SK, SV>(handle)?;
        Ok(KeyValueStore {
            spec: &handle.spec,
            store: &handle.store,
            serdes,
            changelog: Some(writer),
            cache: handle.cache.as_deref(),
            now,
            _types: PhantomData,
        })
    }

    /// The store `store` declared with [`TopologyBuilder::add_store`](super::TopologyBuilder::add_store),
    /// typed by its handle. The node must have declared it (`process_with_stores`).
    pub fn store<SK: 'static, SV: 'static>(
        &mut self,
        store: &super::StoreRef<SK, SV>,
    ) -> Result<KeyValueStore<'_, SK, SV>, StoreError> {
        self.kv_store(store.name())
    }

    /// The store of a global table (`TopologyBuilder::global_table`), read-only: every
    /// node may read it without declaring it. It holds every partition of the table's
    /// topic, as of the moment of the call.
    pub fn global_store<SK: 'static, SV: 'static>(
        &self,
        name: &str,
    ) -> Result<ReadOnlyKeyValueStore<'_, SK, SV>, StoreError> {
        let (handle, now) = self.inner.global_store_access(name)?;
        let serdes = typed_serdes::<SK, SV>(handle)?;
        Ok(ReadOnlyKeyValueStore {
            inner: KeyValueStore {
                spec: &handle.spec,
                store: &handle.store,
                serdes,
                changelog: None,
                cache: None,
                now,
                _types: PhantomData,
            },
        })
    }

    /// Holds back the commit of the record being processed until
    /// [`complete`](Self::complete) is called with the returned handle and everything
    /// produced up to that call is acknowledged. `None` in a punctuation (there is no
    /// input record). If processing the record then fails, the error policy handles the
    /// record and the deferral is dropped.
    ///
    /// Also `None` under exactly-once (`processing_guarantee = "exactly_once_v2"`): the
    /// offsets of a commit interval commit in its transaction with the outputs, so a
    /// record cannot stay uncommitted while later ones commit. Work that outlives
    /// `process` keeps what it needs in a store instead (written in the same
    /// transaction) and picks it up again in `init` after a restart, as
    /// `worker-agents` does with its pending tickets.
    pub fn defer(&mut self) -> Option<Deferred> {
        if self.inner.control().exactly_once {
            return None;
        }
        let metadata = self.inner.metadata()?;
        let deferred = Deferred {
            topic: metadata.topic.clone(),
            partition: metadata.partition,
            offset: metadata.offset,
        };
        self.inner.control().deferred += 1;
        Some(deferred)
    }

    /// Releases a record held by [`defer`](Self::defer): its offset can be committed once
    /// what this call (the `process` or `punctuate` it runs in) produces is acknowledged.
    pub fn complete(&mut self, deferred: Deferred) {
        self.inner.control().completed.push(deferred);
    }

    /// Asks the runtime to stop (`true`) or resume (`false`) fetching this task's
    /// partition: backpressure for processors that buffer work, such as deferred
    /// executions. Records already fetched may still arrive. Punctuations keep running
    /// while paused, so a processor can resume from one.
    pub fn pause_input(&mut self, pause: bool) {
        self.inner.control().pause = pause;
    }

    /// Counts a record the processor dropped on purpose (e.g. late for its window) in the
    /// `skipped` metric.
    pub fn count_skipped(&mut self) {
        self.inner.count_skipped()
    }

    /// Writes already-serialized bytes (used by sinks).
    pub(crate) fn produce(&mut self, record: ProducedRecord) {
        self.inner.produce(record)
    }
}

/// A store's serdes as the types a processor asks for, or an error naming both.
fn typed_serdes<SK: 'static, SV: 'static>(
    handle: &super::node::TaskStore,
) -> Result<&StoreSerdes<SK, SV>, StoreError> {
    handle
        .serdes
        .downcast_ref::<StoreSerdes<SK, SV>>()
        .ok_or_else(|| StoreError::Serde {
            store: handle.spec.name.clone(),
            part: "types",
            message: format!(
                "the store holds other types than ({}, {})",
                std::any::type_name::<SK>(),
                std::any::type_name::<SV>()
            ),
        })
}

pub(crate) fn erase<K: Clone + Send + 'static, V: Clone + Send + 'static>(
    record: Record<K, V>,
) -> ErasedRecord {
    ErasedRecord {
        key: Box::new(record.key),
        value: Box::new(record.value),
        timestamp: record.timestamp,
        headers: record.headers,
    }
}

/// Runs a typed [`Processor`] as an erased graph node.
pub(crate) struct ProcessorNode<P, KIn, VIn, KOut, VOut> {
    pub processor: P,
    pub _types: PhantomData<fn(KIn, VIn, KOut, VOut)>,
}

impl<P, KIn, VIn, KOut, VOut> ProcessorNode<P, KIn, VIn, KOut, VOut> {
    pub fn new(processor: P) -> Self {
        ProcessorNode {
            processor,
            _types: PhantomData,
        }
    }
}

impl<P, KIn, VIn, KOut, VOut> NodeInstance for ProcessorNode<P, KIn, VIn, KOut, VOut>
where
    P: Processor<KIn, VIn, KOut, VOut>,
    KIn: Send + 'static,
    VIn: Send + 'static,
    KOut: Clone + Send + 'static,
    VOut: Clone + Send + 'static,
{
    fn init(&mut self, ctx: &mut NodeContext<'_>) -> Result<(), ProcessingError> {
        self.processor.init(&mut ProcessorContext::new(ctx))
    }

    fn process(
        &mut self,
        record: ErasedRecord,
        ctx: &mut NodeContext<'_>,
    ) -> Result<(), ProcessingError> {
        let record = Record {
            key: unbox::<KIn>(record.key, ctx.node_name)?,
            value: unbox::<VIn>(record.value, ctx.node_name)?,
            timestamp: record.timestamp,
            headers: record.headers,
        };
        self.processor
            .process(record, &mut ProcessorContext::new(ctx))
    }

    fn punctuate(
        &mut self,
        schedule: super::processor::ScheduleId,
        timestamp: Timestamp,
        ctx: &mut NodeContext<'_>,
    ) -> Result<(), ProcessingError> {
        self.processor
            .punctuate(schedule, timestamp, &mut ProcessorContext::new(ctx))
    }

    fn flush(&mut self, ctx: &mut NodeContext<'_>) -> Result<(), ProcessingError> {
        self.processor.flush(&mut ProcessorContext::new(ctx))
    }
}
