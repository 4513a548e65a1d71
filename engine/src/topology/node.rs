//! The type-erased graph a task executes: records whose key and value are boxed, node
//! instances behind one object-safe trait, and the context a node runs in.
//!
//! The typed DSL (`builder`, `processor`) is a thin layer over this; keeping the graph
//! untyped lets one task hold nodes of any key and value types.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use crate::record::{Headers, ProducedRecord, RecordMetadata, Timestamp};
use crate::state::{BytesStore, CachingStore, StoreError, StoreSpec, typed::ChangelogWriter};

use super::error::ProcessingError;
use super::processor::{PunctuationType, ScheduleId};

/// A value that can be cloned behind a box, for fan-out to several children.
pub(crate) trait AnyData: Any + Send {
    fn clone_data(&self) -> Datum;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any + Send + Clone> AnyData for T {
    fn clone_data(&self) -> Datum {
        Box::new(self.clone())
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

pub(crate) type Datum = Box<dyn AnyData>;

/// Unboxes a datum into the type the receiving node was built for.
pub(crate) fn unbox<T: 'static>(datum: Datum, node: &str) -> Result<T, ProcessingError> {
    datum
        .into_any()
        .downcast::<T>()
        .map(|b| *b)
        .map_err(|_| ProcessingError::TypeMismatch {
            node: node.to_string(),
            expected: std::any::type_name::<T>(),
        })
}

/// Borrows a datum as the type the receiving node was built for, leaving it boxed.
pub(crate) fn borrow<'d, T: 'static>(
    datum: &'d Datum,
    node: &str,
) -> Result<&'d T, ProcessingError> {
    (**datum)
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| ProcessingError::TypeMismatch {
            node: node.to_string(),
            expected: std::any::type_name::<T>(),
        })
}

/// A record between two nodes.
pub(crate) struct ErasedRecord {
    pub key: Datum,
    pub value: Datum,
    pub timestamp: Timestamp,
    pub headers: Headers,
}

impl Clone for ErasedRecord {
    fn clone(&self) -> Self {
        ErasedRecord {
            key: self.key.clone_data(),
            value: self.value.clone_data(),
            timestamp: self.timestamp,
            headers: self.headers.clone(),
        }
    }
}

/// The Rust key and value types on one side of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TypeSig {
    pub key: TypeId,
    pub value: TypeId,
    pub key_name: &'static str,
    pub value_name: &'static str,
}

impl TypeSig {
    pub fn of<K: 'static, V: 'static>() -> Self {
        TypeSig {
            key: TypeId::of::<K>(),
            value: TypeId::of::<V>(),
            key_name: std::any::type_name::<K>(),
            value_name: std::any::type_name::<V>(),
        }
    }
}

/// One node of one task: created per task from its factory.
pub(crate) trait NodeInstance: Send {
    fn init(&mut self, _ctx: &mut NodeContext<'_>) -> Result<(), ProcessingError> {
        Ok(())
    }
    fn process(
        &mut self,
        record: ErasedRecord,
        ctx: &mut NodeContext<'_>,
    ) -> Result<(), ProcessingError>;
    fn punctuate(
        &mut self,
        _schedule: ScheduleId,
        _timestamp: Timestamp,
        _ctx: &mut NodeContext<'_>,
    ) -> Result<(), ProcessingError> {
        Ok(())
    }
    fn flush(&mut self, _ctx: &mut NodeContext<'_>) -> Result<(), ProcessingError> {
        Ok(())
    }
}

/// Creates a node's per-task instance.
pub(crate) type NodeFactory = Arc<dyn Fn() -> Box<dyn NodeInstance> + Send + Sync>;

/// Turns a source's raw bytes into an erased record.
pub(crate) trait SourceDecoder: Send + Sync {
    fn decode(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<(Datum, Datum), super::error::DecodeError>;
}

/// A punctuation registered by a node of a task.
#[derive(Clone, Debug)]
pub(crate) struct Schedule {
    pub node: usize,
    pub id: ScheduleId,
    pub kind: PunctuationType,
    pub interval_ms: i64,
    /// Next time (stream or wall-clock) at which it fires; `None` until the first
    /// stream time is known for stream-time schedules.
    pub next: Option<Timestamp>,
    pub cancelled: bool,
}

/// One store of one task.
pub struct TaskStore {
    pub(crate) spec: StoreSpec,
    pub(crate) store: Arc<dyn BytesStore>,
    /// `StoreSerdes<K, V>` of the store's types.
    pub(crate) serdes: Arc<dyn Any + Send + Sync>,
    /// `<application>-<store>-changelog`, when the store has a changelog.
    pub(crate) changelog_topic: Option<Arc<str>>,
    /// Reads the store as JSON for interactive queries.
    pub(crate) query: Arc<crate::state::StoreQuery>,
    /// The store's record cache, when it has one; `store` is then this cache, whose
    /// reads overlay cached writes on the store underneath.
    pub(crate) cache: Option<Arc<CachingStore>>,
    /// Undoes the store writes of a failed call (task stores only, not global ones).
    pub(crate) undo: Option<Arc<crate::state::UndoStore>>,
}

impl TaskStore {
    /// The store's declaration.
    pub fn spec(&self) -> &StoreSpec {
        &self.spec
    }
    /// The store's bytes, as processors and queries see them (through the record cache,
    /// if the store has one).
    pub fn bytes(&self) -> &Arc<dyn BytesStore> {
        &self.store
    }
    /// The store's record cache, if it has one.
    pub fn cache(&self) -> Option<&Arc<CachingStore>> {
        self.cache.as_ref()
    }
    /// Reads the store as JSON.
    pub fn query(&self) -> &Arc<crate::state::StoreQuery> {
        &self.query
    }
    /// Its changelog topic, if it has one.
    pub fn changelog_topic(&self) -> Option<&str> {
        self.changelog_topic.as_deref()
    }
}

/// Header on the last changelog record an input record caused: a restore applies an
/// input's store writes only when it sees all of them.
pub(crate) const CHANGELOG_LAST: &str = "engine.source.last";

/// Header on the changelog records a cache flush writes: `topic=offset;...`, the last
/// input processed per source topic, all of whose store writes the flush completes.
pub(crate) const CHANGELOG_POSITIONS: &str = "engine.source.positions";

/// Header on a changelog record that marks inputs complete: `topic=offset,...;...`, the
/// inputs at or before the marked positions that are deferred and not yet complete.
pub(crate) const CHANGELOG_DEFERRED: &str = "engine.source.deferred";

/// Header on every changelog record: the epoch of the task instance that wrote it. Each
/// new owner of a task takes an epoch above every one its restore saw, and a restore
/// ignores a record whose epoch is below one already read: the late write of an
/// instance that lost the task (a zombie).
pub(crate) const CHANGELOG_EPOCH: &str = "engine.epoch";

/// The key of the record a new owner writes to each changelog of its task once
/// restored, carrying its epoch (a tombstone: it never reaches a store).
pub(crate) const CHANGELOG_FENCE_KEY: &[u8] = b"\0engine.fence";

/// Where a node's output goes: sink records, and store changelog records (kept apart:
/// the runtime sends a changelog record only after the sink records produced before it
/// are acknowledged).
pub(crate) struct Output<'a> {
    pub produced: &'a mut Vec<ProducedRecord>,
    pub changelog: &'a mut Vec<ProducedRecord>,
    pub partition: i32,
    pub timestamp: Timestamp,
    pub stores: &'a [TaskStore],
    /// The input record being processed, stamped on changelog records so a restore knows
    /// which inputs the store already reflects.
    pub source: Option<&'a RecordMetadata>,
    /// The task's epoch (see [`CHANGELOG_EPOCH`]), as a header value.
    pub epoch: &'a [u8],
}

impl ChangelogWriter for Output<'_> {
    fn write(&mut self, store: &str, key: Vec<u8>, value: Option<Vec<u8>>) {
        let Some(topic) = self
            .stores
            .iter()
            .find(|s| s.spec.name == store)
            .and_then(|s| s.changelog_topic.clone())
        else {
            return;
        };
        let mut headers = Headers::new();
        headers.add(CHANGELOG_EPOCH, Some(self.epoch.to_vec()));
        if let Some(source) = self.source {
            headers.add(
                super::policy::headers::SOURCE_TOPIC,
                Some(source.topic.as_bytes().to_vec()),
            );
            headers.add(
                super::policy::headers::SOURCE_OFFSET,
                Some(source.offset.to_string().into_bytes()),
            );
        }
        self.changelog.push(ProducedRecord {
            topic,
            partition: Some(self.partition),
            key: Some(key),
            value,
            timestamp: self.timestamp,
            headers,
        });
    }
}

/// Read-only facts about the task a node runs in.
pub(crate) struct TaskInfo {
    pub application_id: Arc<str>,
    pub partition: i32,
    pub partition_counts: Arc<HashMap<String, i32>>,
    /// The global tables' stores, shared by every task of the instance (read-only).
    pub globals: Arc<Vec<TaskStore>>,
}

/// Everything a node may touch while it runs.
pub(crate) struct NodeContext<'a> {
    pub node: usize,
    pub node_name: &'a str,
    pub children: &'a [usize],
    pub child_names: &'a [Arc<str>],
    /// Records forwarded by the node, in order, with the child they go to.
    pub forwarded: &'a mut Vec<(usize, ErasedRecord)>,
    /// Records written by sinks and store changelogs.
    pub output: Output<'a>,
    /// Stores this node declared.
    pub allowed_stores: &'a [String],
    pub schedules: &'a mut Vec<Schedule>,
    pub next_schedule_id: &'a mut u32,
    pub metadata: Option<&'a RecordMetadata>,
    pub stream_time: Timestamp,
    pub wall_clock: Timestamp,
    pub task: &'a TaskInfo,
    pub metrics: &'a crate::metrics::TopologyMetrics,
    pub control: &'a mut TaskControl,
}

/// What processors asked of the runtime during one call into the task: records whose
/// commit they hold back, the ones they release, and whether input should pause.
#[derive(Debug, Default)]
pub(crate) struct TaskControl {
    /// Deferrals made while processing the current input record.
    pub deferred: u32,
    /// Deferrals released during the current call.
    pub completed: Vec<super::processor::Deferred>,
    /// Whether a processor asked to stop fetching this task's partition.
    pub pause: bool,
    /// Exactly-once: offsets commit with each transaction, so none can be deferred.
    pub exactly_once: bool,
}

/// The operations a typed `ProcessorContext` forwards to; object-safe so the typed
/// context can borrow a `NodeContext` of any lifetime.
pub(crate) trait NodeOps {
    fn forward(&mut self, record: ErasedRecord);
    fn forward_to(&mut self, child: &str, record: ErasedRecord) -> Result<(), ProcessingError>;
    fn child_names(&self) -> &[Arc<str>];
    fn node_name(&self) -> &str;
    fn metadata(&self) -> Option<&RecordMetadata>;
    fn task(&self) -> &TaskInfo;
    fn stream_time(&self) -> Timestamp;
    fn wall_clock(&self) -> Timestamp;
    fn schedule(&mut self, interval_ms: i64, kind: PunctuationType) -> ScheduleId;
    fn cancel(&mut self, id: ScheduleId);
    fn produce(&mut self, record: ProducedRecord);
    fn count_skipped(&mut self);
    fn control(&mut self) -> &mut TaskControl;
    fn store_access(
        &mut self,
        name: &str,
    ) -> Result<(&TaskStore, &mut dyn ChangelogWriter, Timestamp), StoreError>;
    fn global_store_access(&self, name: &str) -> Result<(&TaskStore, Timestamp), StoreError>;
}

impl NodeOps for NodeContext<'_> {
    fn child_names(&self) -> &[Arc<str>] {
        self.child_names
    }
    fn node_name(&self) -> &str {
        self.node_name
    }
    fn metadata(&self) -> Option<&RecordMetadata> {
        self.metadata
    }
    fn task(&self) -> &TaskInfo {
        self.task
    }
    fn stream_time(&self) -> Timestamp {
        self.stream_time
    }
    fn wall_clock(&self) -> Timestamp {
        self.wall_clock
    }
    fn produce(&mut self, record: ProducedRecord) {
        self.output.produced.push(record);
    }
    fn count_skipped(&mut self) {
        crate::metrics::TopologyMetrics::add(&self.metrics.skipped, 1);
    }
    fn control(&mut self) -> &mut TaskControl {
        self.control
    }
    fn store_access(
        &mut self,
        name: &str,
    ) -> Result<(&TaskStore, &mut dyn ChangelogWriter, Timestamp), StoreError> {
        let not_connected = || StoreError::NotConnected {
            node: self.node_name.to_string(),
            store: name.to_string(),
        };
        if !self.allowed_stores.iter().any(|s| s == name) {
            return Err(not_connected());
        }
        let stores: &[TaskStore] = self.output.stores;
        let store = stores
            .iter()
            .find(|s| s.spec.name == name)
            .ok_or_else(not_connected)?;
        Ok((store, &mut self.output, self.wall_clock))
    }

    fn global_store_access(&self, name: &str) -> Result<(&TaskStore, Timestamp), StoreError> {
        self.task
            .globals
            .iter()
            .find(|s| s.spec.name == name)
            .map(|s| (s, self.wall_clock))
            .ok_or_else(|| StoreError::NotGlobal {
                node: self.node_name.to_string(),
                store: name.to_string(),
            })
    }

    /// Sends a record to every child; the last child gets the original, the others a clone.
    fn forward(&mut self, record: ErasedRecord) {
        match self.children.split_last() {
            None => {}
            Some((last, rest)) => {
                for &child in rest {
                    self.forwarded.push((child, record.clone()));
                }
                self.forwarded.push((*last, record));
            }
        }
    }

    /// Sends a record to the child with this name.
    fn forward_to(&mut self, child: &str, record: ErasedRecord) -> Result<(), ProcessingError> {
        let index = self
            .child_names
            .iter()
            .position(|n| &**n == child)
            .ok_or_else(|| ProcessingError::UnknownChild {
                node: self.node_name.to_string(),
                child: child.to_string(),
                children: self.child_names.iter().map(|c| c.to_string()).collect(),
            })?;
        self.forwarded.push((self.children[index], record));
        Ok(())
    }

    fn schedule(&mut self, interval_ms: i64, kind: PunctuationType) -> ScheduleId {
        let id = ScheduleId(*self.next_schedule_id);
        *self.next_schedule_id += 1;
        let next = match kind {
            PunctuationType::WallClockTime => Some(self.wall_clock + interval_ms),
            PunctuationType::StreamTime => {
                (self.stream_time != Timestamp::MIN).then_some(self.stream_time + interval_ms)
            }
        };
        self.schedules.push(Schedule {
            node: self.node,
            id,
            kind,
            interval_ms: interval_ms.max(1),
            next,
            cancelled: false,
        });
        id
    }

    fn cancel(&mut self, id: ScheduleId) {
        for s in self.schedules.iter_mut() {
            if s.node == self.node && s.id == id {
                s.cancelled = true;
            }
        }
    }
}
