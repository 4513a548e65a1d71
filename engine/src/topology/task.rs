//! A task: one instance of a topology's nodes for one partition, executing records
//! depth-first through the graph. The runtime and the test driver both drive tasks; the
//! task itself knows nothing of Kafka. It applies the error policy, so a bad record
//! becomes a skip, a dead-letter record, or an error for the caller to stop on.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crate::metrics::TopologyMetrics;
use crate::record::{Headers, ProducedRecord, RawRecord, RecordMetadata, Timestamp};

use super::builder::{Topology, TopologyInner};
use super::error::{ErrorClass, ProcessingError, RecordError};
use crate::state::{CacheBudget, CachingStore, StoreError, StoreSupplier};

use super::node::{
    ErasedRecord, NodeContext, NodeInstance, Output, Schedule, TaskControl, TaskInfo, TaskStore,
};
use super::policy::{OnError, headers};
use super::processor::{Deferred, PunctuationType};

/// What became of one input record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It went through the topology.
    Processed,
    /// The error policy skipped it.
    Skipped,
    /// The error policy wrote it to a dead-letter topic.
    DeadLettered,
    /// The restored stores already reflect it (see [`Task::set_applied`]).
    AlreadyApplied,
}

/// One partition's instance of a topology.
pub struct Task {
    topology: Arc<TopologyInner>,
    info: TaskInfo,
    nodes: Vec<Option<Box<dyn NodeInstance>>>,
    schedules: Vec<Schedule>,
    next_schedule_id: u32,
    stream_time: Timestamp,
    stack: Vec<(usize, ErasedRecord)>,
    forwarded: Vec<(usize, ErasedRecord)>,
    topic_names: HashMap<String, Arc<str>>,
    stores: Vec<TaskStore>,
    metrics: Arc<TopologyMetrics>,
    control: TaskControl,
    /// Changelog records written since the last `take_changelog`.
    changelog: Vec<ProducedRecord>,
    /// The last input offset processed per source topic, stamped on a flush's changelog.
    positions: Vec<(Arc<str>, i64)>,
    /// Per source topic, the last offset whose store writes the restored stores already
    /// hold: a record at or before it is not applied again.
    applied: HashMap<String, i64>,
    /// Inputs at or before `applied` that the restored stores do not reflect: they were
    /// deferred and not yet complete when the changelog last said what was applied.
    unapplied: std::collections::HashSet<(String, i64)>,
    /// Input records deferred by processors and not yet completed, with how many
    /// deferrals each still has: they are named on every changelog record that marks
    /// inputs as applied, as exceptions.
    deferred: std::collections::BTreeMap<(Arc<str>, i64), u32>,
    /// How many of `control.completed` were already taken off `deferred`.
    completions_counted: usize,
    /// Input records held for the record cache, released by the last flush.
    released_holds: Vec<Deferred>,
    /// This instance's epoch for the task, and its header value.
    epoch: u64,
    epoch_header: Vec<u8>,
    /// The record caches of the task's stores.
    caches: Vec<Arc<CachingStore>>,
    /// The first input record whose effect is only in a record cache since the last
    /// flush: deferred, so neither it nor any later offset of the partition commits
    /// before the flush that writes it out is acknowledged.
    cache_hold: Option<Deferred>,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("application_id", &self.info.application_id)
            .field("partition", &self.info.partition)
            .finish()
    }
}

impl Task {
    /// Opens the stores of `partition` (not yet restored); stores declared with caching
    /// get a record cache charged to `cache`.
    pub fn open_stores(
        topology: &Topology,
        partition: i32,
        supplier: &dyn StoreSupplier,
        cache: &Arc<CacheBudget>,
    ) -> Result<Vec<TaskStore>, StoreError> {
        let app = &topology.inner.application_id;
        topology
            .inner
            .stores
            .iter()
            .map(|def| {
                let undo = Arc::new(crate::state::UndoStore::new(
                    supplier.open(app, partition, &def.spec)?,
                ));
                let opened: Arc<dyn crate::state::BytesStore> = undo.clone();
                let cached = def.spec.caching.then(|| {
                    Arc::new(CachingStore::new(
                        &def.spec.name,
                        opened.clone(),
                        cache.clone(),
                    ))
                });
                Ok(TaskStore {
                    store: match &cached {
                        Some(c) => c.clone(),
                        None => opened,
                    },
                    cache: cached,
                    undo: Some(undo),
                    changelog_topic: def
                        .spec
                        .changelog
                        .then(|| Arc::from(def.spec.changelog_topic(app).as_str())),
                    spec: def.spec.clone(),
                    serdes: def.serdes.clone(),
                    query: def.query.clone(),
                })
            })
            .collect()
    }

    /// Opens the stores of the topology's global tables with `open` (given the store's
    /// spec), not yet bootstrapped; one set per instance, shared by its tasks.
    pub fn open_global_stores(
        topology: &Topology,
        open: impl Fn(&crate::state::StoreSpec) -> Result<Arc<dyn crate::state::BytesStore>, StoreError>,
    ) -> Result<Vec<TaskStore>, StoreError> {
        topology
            .inner
            .globals
            .iter()
            .map(|global| {
                Ok(TaskStore {
                    store: open(&global.store.spec)?,
                    changelog_topic: None,
                    spec: global.store.spec.clone(),
                    serdes: global.store.serdes.clone(),
                    query: global.store.query.clone(),
                    cache: None,
                    undo: None,
                })
            })
            .collect()
    }

    /// Creates the nodes for `partition` over its (restored) `stores` and the instance's
    /// (bootstrapped) global stores, and runs their `init`.
    pub fn new(
        topology: &Topology,
        partition: i32,
        stores: Vec<TaskStore>,
        globals: Arc<Vec<TaskStore>>,
        partition_counts: Arc<HashMap<String, i32>>,
        wall_clock: Timestamp,
        metrics: Arc<TopologyMetrics>,
    ) -> Result<Task, RecordError> {
        let inner = topology.inner.clone();
        let nodes = inner
            .nodes
            .iter()
            .map(|spec| spec.factory().map(|f| f()))
            .collect();
        let topic_names = inner
            .sources_by_topic
            .keys()
            .map(|t| (t.clone(), Arc::from(t.as_str())))
            .collect();
        let caches: Vec<Arc<CachingStore>> =
            stores.iter().filter_map(|s| s.cache.clone()).collect();
        let mut task = Task {
            info: TaskInfo {
                application_id: Arc::from(inner.application_id.as_str()),
                partition,
                partition_counts,
                globals,
            },
            topology: inner,
            nodes,
            schedules: Vec::new(),
            next_schedule_id: 0,
            stream_time: Timestamp::MIN,
            stack: Vec::new(),
            forwarded: Vec::new(),
            topic_names,
            stores,
            metrics,
            control: TaskControl::default(),
            changelog: Vec::new(),
            positions: Vec::new(),
            applied: HashMap::new(),
            unapplied: Default::default(),
            deferred: Default::default(),
            completions_counted: 0,
            released_holds: Vec::new(),
            epoch: 0,
            epoch_header: b"0".to_vec(),
            caches,
            cache_hold: None,
        };
        let mut produced = Vec::new();
        for i in 0..task.nodes.len() {
            task.call(i, None, wall_clock, &mut produced, |node, ctx| {
                node.init(ctx)
            })
            .map_err(|e| RecordError {
                class: ErrorClass::Processing,
                topic: String::new(),
                partition,
                offset: -1,
                field: e.field_name().map(String::from),
                message: format!("init of node `{}` failed: {e}", task.topology.nodes[i].name),
            })?;
        }
        Ok(task)
    }

    /// Runs the task under exactly-once: processors cannot defer records
    /// ([`ProcessorContext::defer`](super::ProcessorContext::defer) returns `None`).
    pub fn set_exactly_once(&mut self, on: bool) {
        self.control.exactly_once = on;
    }

    /// The partition this task owns.
    pub fn partition(&self) -> i32 {
        self.info.partition
    }

    /// The task's stores.
    pub(crate) fn stores(&self) -> &[TaskStore] {
        &self.stores
    }

    /// What processors deferred and released since the last call: how many deferrals the
    /// last processed input record got, and the deferrals released (by `process` or a
    /// punctuation). The caller keeps the deferred record's offset uncommitted until its
    /// release, and the release until what the releasing call produced is acknowledged.
    pub fn take_deferrals(&mut self) -> (u32, Vec<Deferred>) {
        self.count_completions();
        self.completions_counted = 0;
        let mut released = std::mem::take(&mut self.control.completed);
        released.append(&mut self.released_holds);
        (std::mem::take(&mut self.control.deferred), released)
    }

    /// Takes the deferrals processors completed since the last call off `deferred`.
    fn count_completions(&mut self) {
        for d in &self.control.completed[self.completions_counted..] {
            let key = (d.topic.clone(), d.offset);
            if let Some(n) = self.deferred.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.deferred.remove(&key);
                }
            }
        }
        self.completions_counted = self.control.completed.len();
    }

    /// Marks the changelog records from `mark` on as completing every input processed
    /// so far, except the deferred ones it names, unless a record cache still holds an
    /// earlier input's effect (a restore counts everything up to a marked record as
    /// applied). `positions`: also stamp the last processed offset per source topic on
    /// them (writes of a flush or a punctuation, which no input record caused).
    fn mark_complete(&mut self, mark: usize, positions: bool) {
        self.count_completions();
        if self.changelog.len() <= mark || self.has_cached_writes() {
            return;
        }
        if positions {
            let positions: String = self
                .positions
                .iter()
                .map(|(t, o)| format!("{t}={o}"))
                .collect::<Vec<_>>()
                .join(";");
            for record in &mut self.changelog[mark..] {
                record.headers.add(
                    super::node::CHANGELOG_POSITIONS,
                    Some(positions.as_bytes().to_vec()),
                );
            }
        }
        let deferred = (!self.deferred.is_empty()).then(|| encode_deferred(&self.deferred));
        // Each store's changelog is restored on its own: mark the last record of each.
        let mut marked: Vec<Arc<str>> = Vec::new();
        for record in self.changelog[mark..].iter_mut().rev() {
            if marked.contains(&record.topic) {
                continue;
            }
            marked.push(record.topic.clone());
            record
                .headers
                .add(super::node::CHANGELOG_LAST, Some(b"1".to_vec()));
            if let Some(deferred) = &deferred {
                record.headers.add(
                    super::node::CHANGELOG_DEFERRED,
                    Some(deferred.as_bytes().to_vec()),
                );
            }
        }
    }

    /// Changelog records the stores got since the last call (sent by the runtime once
    /// the sink records produced before them are acknowledged).
    pub fn take_changelog(&mut self) -> Vec<ProducedRecord> {
        std::mem::take(&mut self.changelog)
    }

    /// Marks inputs up to these offsets (per source topic) as already reflected in the
    /// restored stores: such records are skipped instead of applied twice.
    /// `unapplied` names the inputs at or before those offsets that are not reflected
    /// (deferred, and incomplete when the changelog was last marked).
    pub fn set_applied(
        &mut self,
        applied: HashMap<String, i64>,
        unapplied: std::collections::HashSet<(String, i64)>,
    ) {
        self.applied = applied;
        self.unapplied = unapplied;
    }

    /// Takes `epoch` for the changelog records this task writes, and queues a fence
    /// record with it to each changelog: from there on, a restore ignores the writes of
    /// an earlier owner (see [`CHANGELOG_EPOCH`](super::node::CHANGELOG_EPOCH)).
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.epoch_header = epoch.to_string().into_bytes();
        for store in &self.stores {
            let Some(topic) = &store.changelog_topic else {
                continue;
            };
            let mut headers = Headers::new();
            headers.add(
                super::node::CHANGELOG_EPOCH,
                Some(self.epoch_header.clone()),
            );
            self.changelog.push(ProducedRecord {
                topic: topic.clone(),
                partition: Some(self.info.partition),
                key: Some(super::node::CHANGELOG_FENCE_KEY.to_vec()),
                value: None,
                timestamp: self.stream_time.max(0),
                headers,
            });
        }
    }

    /// The task's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether a processor asked to stop fetching this task's partition.
    pub fn input_paused(&self) -> bool {
        self.control.pause
    }

    /// Largest timestamp seen so far.
    pub fn stream_time(&self) -> Timestamp {
        self.stream_time
    }

    /// Runs one consumed record through the topology, appending what it produces (and
    /// any dead-letter record) to `out`. An `Err` means the policy is `fail`: nothing the
    /// record caused is left in `out`, and the caller must stop before committing it.
    pub fn process(
        &mut self,
        raw: &RawRecord<'_>,
        wall_clock: Timestamp,
        out: &mut Vec<ProducedRecord>,
    ) -> Result<Outcome, RecordError> {
        let outcome = self.process_record(raw, wall_clock, out)?;
        match self.positions.iter_mut().find(|(t, _)| **t == *raw.topic) {
            Some((_, offset)) => *offset = raw.offset,
            None => self.positions.push((Arc::from(raw.topic), raw.offset)),
        }
        if self.cache_hold.is_none() && self.has_cached_writes() {
            // This record (or one before it that failed) left an effect only in a cache:
            // hold its offset, and so every later one, until the flush is acknowledged.
            let topic = self
                .topic_names
                .get(raw.topic)
                .cloned()
                .unwrap_or_else(|| Arc::from(raw.topic));
            self.cache_hold = Some(Deferred {
                topic,
                partition: raw.partition,
                offset: raw.offset,
            });
            self.control.deferred += 1;
        }
        Ok(outcome)
    }

    /// Whether a record cache of the task holds writes its store and changelog do not
    /// have yet.
    pub fn has_cached_writes(&self) -> bool {
        self.caches.iter().any(|c| c.dirty_entries() > 0)
    }

    /// Calls every processor's `flush`, so the record caches are written out (store,
    /// changelog, and the updates the aggregations forward), appending what that
    /// produces to `out`, and releases the input record held since the last flush: the
    /// runtime calls this before it commits, so no offset commits while its effect is
    /// only in memory. The release is reported by [`take_deferrals`](Self::take_deferrals)
    /// and is done once what this call produced is acknowledged.
    pub fn flush(
        &mut self,
        wall_clock: Timestamp,
        out: &mut Vec<ProducedRecord>,
    ) -> Result<(), RecordError> {
        let changelog_mark = self.changelog.len();
        for node in 0..self.nodes.len() {
            self.run_detached(node, "flush", wall_clock, out, |n, ctx| n.flush(ctx))?;
        }
        // The flush completes the store writes of every input processed so far.
        self.mark_complete(changelog_mark, true);
        if let Some(hold) = self.cache_hold.take() {
            self.released_holds.push(hold);
        }
        Ok(())
    }

    fn process_record(
        &mut self,
        raw: &RawRecord<'_>,
        wall_clock: Timestamp,
        out: &mut Vec<ProducedRecord>,
    ) -> Result<Outcome, RecordError> {
        TopologyMetrics::add(&self.metrics.records_in, 1);
        self.control.deferred = 0;
        if self
            .applied
            .get(raw.topic)
            .is_some_and(|&applied| raw.offset <= applied)
            && !self
                .unapplied
                .contains(&(raw.topic.to_string(), raw.offset))
        {
            // Its store writes reached the changelog (and so its outputs the broker)
            // before the previous owner stopped without committing it.
            TopologyMetrics::add(&self.metrics.replayed_skipped, 1);
            return Ok(Outcome::AlreadyApplied);
        }
        let Some(&source) = self.topology.sources_by_topic.get(raw.topic) else {
            return self.on_error(
                ErrorClass::Processing,
                raw,
                None,
                format!("no source of this topology reads topic `{}`", raw.topic),
                out,
            );
        };
        let super::builder::NodeKind::Source { decoder, .. } = &self.topology.nodes[source].kind
        else {
            // `sources_by_topic` only ever points at source nodes (built in `freeze`).
            return self.on_error(
                ErrorClass::Processing,
                raw,
                None,
                "internal: topic mapped to a non-source node".into(),
                out,
            );
        };
        let (key, value) = match decoder.decode(raw.topic, raw.key, raw.value) {
            Ok(kv) => kv,
            Err(e) => {
                let field = e.source.field().map(|f| format!("{}.{f}", e.part));
                let field = field.or_else(|| Some(e.part.to_string()));
                return self.on_error(ErrorClass::Deserialization, raw, field, e.to_string(), out);
            }
        };
        self.stream_time = self.stream_time.max(raw.timestamp);
        let record = ErasedRecord {
            key,
            value,
            timestamp: raw.timestamp,
            headers: raw.headers.clone(),
        };
        let metadata = RecordMetadata {
            topic: self
                .topic_names
                .get(raw.topic)
                .cloned()
                .unwrap_or_else(|| Arc::from(raw.topic)),
            partition: raw.partition,
            offset: raw.offset,
        };
        let mark = out.len();
        let changelog_mark = self.changelog.len();
        let children = &self.topology.children[source];
        self.stack.clear();
        if let Some((last, rest)) = children.split_last() {
            // Clones for all children but the last, which takes the original; pushed so
            // the first child is on top of the stack and runs first.
            let mut clones: Vec<_> = rest.iter().map(|&c| (c, record.clone())).collect();
            self.stack.push((*last, record));
            while let Some(clone) = clones.pop() {
                self.stack.push(clone);
            }
        }
        self.begin_call();
        if let Err(failure) = self.drain(Some(&metadata), wall_clock, out) {
            let (node, e) = *failure;
            out.truncate(mark);
            self.changelog.truncate(changelog_mark);
            self.undo_call(raw.topic, raw.partition, raw.offset)?;
            // The error policy handles the record: nothing holds it any more.
            self.control.deferred = 0;
            let field = e.field_name().map(String::from);
            let message = format!("node `{node}`: {e}");
            return self.on_error(ErrorClass::Processing, raw, field, message, out);
        }
        self.commit_call();
        if self.control.deferred > 0 {
            *self
                .deferred
                .entry((metadata.topic.clone(), raw.offset))
                .or_insert(0) += self.control.deferred;
        }
        // Its changelog records carry its offset; the last one marks it complete.
        self.mark_complete(changelog_mark, false);
        self.fire(
            PunctuationType::StreamTime,
            self.stream_time,
            wall_clock,
            out,
        )?;
        Ok(Outcome::Processed)
    }

    /// Fires the wall-clock punctuations that are due at `now`.
    pub fn punctuate_wall_clock(
        &mut self,
        now: Timestamp,
        out: &mut Vec<ProducedRecord>,
    ) -> Result<(), RecordError> {
        self.fire(PunctuationType::WallClockTime, now, now, out)
    }

    fn fire(
        &mut self,
        kind: PunctuationType,
        now: Timestamp,
        wall_clock: Timestamp,
        out: &mut Vec<ProducedRecord>,
    ) -> Result<(), RecordError> {
        if self.schedules.is_empty() {
            return Ok(());
        }
        let mut index = 0;
        while index < self.schedules.len() {
            let s = &mut self.schedules[index];
            index += 1;
            if s.kind != kind || s.cancelled {
                continue;
            }
            let next = *s.next.get_or_insert(now.saturating_add(s.interval_ms));
            if now < next {
                continue;
            }
            // Fire once however many intervals were missed, then realign to the grid.
            let missed = (now - next) / s.interval_ms + 1;
            s.next = Some(next + missed * s.interval_ms);
            let (node, id) = (s.node, s.id);
            TopologyMetrics::add(&self.metrics.punctuations, 1);
            let changelog_mark = self.changelog.len();
            self.run_detached(node, "punctuation", wall_clock, out, |n, ctx| {
                n.punctuate(id, now, ctx)
            })?;
            // What it wrote (completing deferred records, say) is complete with it.
            self.mark_complete(changelog_mark, true);
        }
        Ok(())
    }

    /// Runs a call into `node` that has no input record (a punctuation, a flush) and
    /// what it forwards; a failure is the error policy's, with no record to dead-letter.
    fn run_detached(
        &mut self,
        node: usize,
        what: &str,
        wall_clock: Timestamp,
        out: &mut Vec<ProducedRecord>,
        f: impl FnOnce(&mut dyn NodeInstance, &mut NodeContext<'_>) -> Result<(), ProcessingError>,
    ) -> Result<(), RecordError> {
        let mark = out.len();
        let changelog_mark = self.changelog.len();
        self.begin_call();
        let result = self
            .call(node, None, wall_clock, out, f)
            .map_err(|e| Box::new((self.topology.nodes[node].name.clone(), e)))
            .and_then(|()| {
                self.stack.clear();
                let forwarded: Vec<_> = self.forwarded.drain(..).rev().collect();
                self.stack.extend(forwarded);
                self.drain(None, wall_clock, out)
            });
        if let Err(failure) = result {
            let (node, e) = *failure;
            out.truncate(mark);
            self.changelog.truncate(changelog_mark);
            self.undo_call("", self.info.partition, -1)?;
            TopologyMetrics::add(&self.metrics.processing_errors, 1);
            let error = RecordError {
                class: ErrorClass::Processing,
                topic: String::new(),
                partition: self.info.partition,
                offset: -1,
                field: e.field_name().map(String::from),
                message: format!("{what} of node `{node}`: {e}"),
            };
            match self.topology.error_policy.processing {
                OnError::Fail => return Err(error),
                // There is no input record to dead-letter: count and log it.
                OnError::Skip | OnError::DeadLetter(_) => {
                    TopologyMetrics::add(&self.metrics.skipped, 1);
                    tracing::warn!(application = %self.info.application_id, %error, "{what} failed; skipped by the error policy");
                }
            }
        } else {
            self.commit_call();
        }
        Ok(())
    }

    /// Starts recording the stores' writes, so a failing call can be undone.
    fn begin_call(&self) {
        for store in &self.stores {
            if let Some(undo) = &store.undo {
                undo.begin();
            }
            if let Some(cache) = &store.cache {
                cache.begin();
            }
        }
    }

    /// Keeps the writes of the call that succeeded.
    fn commit_call(&self) {
        for store in &self.stores {
            if let Some(cache) = &store.cache {
                cache.commit();
            }
            if let Some(undo) = &store.undo {
                undo.commit();
            }
        }
    }

    /// Undoes the store writes of the call that failed, caches first (their rollback
    /// puts back entries whose eviction wrote the store underneath, which is undone
    /// next). A store that cannot be put back is fatal whatever the error policy.
    fn undo_call(&self, topic: &str, partition: i32, offset: i64) -> Result<(), RecordError> {
        for store in &self.stores {
            if let Some(cache) = &store.cache {
                cache.rollback();
            }
            if let Some(undo) = &store.undo
                && let Err(e) = undo.rollback()
            {
                return Err(RecordError {
                    class: ErrorClass::Processing,
                    topic: topic.to_string(),
                    partition,
                    offset,
                    field: None,
                    message: format!(
                        "the failed record's writes to store `{}` could not be undone: {e}",
                        store.spec.name
                    ),
                });
            }
        }
        Ok(())
    }

    /// Processes the stack depth-first until it is empty.
    fn drain(
        &mut self,
        metadata: Option<&RecordMetadata>,
        wall_clock: Timestamp,
        out: &mut Vec<ProducedRecord>,
    ) -> Result<(), Box<(String, ProcessingError)>> {
        while let Some((node, record)) = self.stack.pop() {
            self.call(node, metadata, wall_clock, out, |n, ctx| {
                n.process(record, ctx)
            })
            .map_err(|e| (self.topology.nodes[node].name.clone(), e))?;
            // Reverse so the first record forwarded is processed first.
            while let Some(next) = self.forwarded.pop() {
                self.stack.push(next);
            }
        }
        Ok(())
    }

    /// Calls one node with a context, catching panics so a bad record cannot kill the task.
    fn call(
        &mut self,
        node: usize,
        metadata: Option<&RecordMetadata>,
        wall_clock: Timestamp,
        out: &mut Vec<ProducedRecord>,
        f: impl FnOnce(&mut dyn NodeInstance, &mut NodeContext<'_>) -> Result<(), ProcessingError>,
    ) -> Result<(), ProcessingError> {
        let Some(instance) = self.nodes[node].as_deref_mut() else {
            return Ok(());
        };
        self.forwarded.clear();
        let timestamp = if self.stream_time == Timestamp::MIN {
            wall_clock
        } else {
            self.stream_time
        };
        let mut ctx = NodeContext {
            node,
            node_name: &self.topology.nodes[node].name,
            children: &self.topology.children[node],
            child_names: &self.topology.child_names[node],
            forwarded: &mut self.forwarded,
            output: Output {
                produced: out,
                changelog: &mut self.changelog,
                partition: self.info.partition,
                timestamp,
                stores: &self.stores,
                source: metadata,
                epoch: &self.epoch_header,
            },
            allowed_stores: &self.topology.nodes[node].stores,
            schedules: &mut self.schedules,
            next_schedule_id: &mut self.next_schedule_id,
            metadata,
            stream_time: self.stream_time,
            wall_clock,
            task: &self.info,
            metrics: &self.metrics,
            control: &mut self.control,
        };
        match catch_unwind(AssertUnwindSafe(|| f(instance, &mut ctx))) {
            Ok(result) => result,
            Err(panic) => Err(ProcessingError::Panicked {
                node: self.topology.nodes[node].name.clone(),
                message: panic_message(&panic),
            }),
        }
    }

    fn on_error(
        &mut self,
        class: ErrorClass,
        raw: &RawRecord<'_>,
        field: Option<String>,
        message: String,
        out: &mut Vec<ProducedRecord>,
    ) -> Result<Outcome, RecordError> {
        let counter = match class {
            ErrorClass::Deserialization => &self.metrics.deserialization_errors,
            ErrorClass::Processing => &self.metrics.processing_errors,
            ErrorClass::Production => &self.metrics.production_errors,
        };
        TopologyMetrics::add(counter, 1);
        let error = RecordError {
            class,
            topic: raw.topic.to_string(),
            partition: raw.partition,
            offset: raw.offset,
            field,
            message,
        };
        match self.topology.error_policy.for_class(class) {
            OnError::Fail => Err(error),
            OnError::Skip => {
                TopologyMetrics::add(&self.metrics.skipped, 1);
                tracing::warn!(
                    application = %self.info.application_id,
                    topic = raw.topic,
                    partition = raw.partition,
                    offset = raw.offset,
                    field = error.field.as_deref().unwrap_or(""),
                    %error,
                    "record skipped by the error policy"
                );
                Ok(Outcome::Skipped)
            }
            OnError::DeadLetter(topic) => {
                TopologyMetrics::add(&self.metrics.dead_lettered, 1);
                tracing::warn!(
                    application = %self.info.application_id,
                    topic = raw.topic,
                    partition = raw.partition,
                    offset = raw.offset,
                    dead_letter_topic = %topic,
                    %error,
                    "record sent to the dead-letter topic"
                );
                out.push(dead_letter_record(
                    topic,
                    &self.info.application_id,
                    &error,
                    raw.key,
                    raw.value,
                    raw.timestamp,
                    &raw.headers,
                ));
                Ok(Outcome::DeadLettered)
            }
        }
    }
}

/// The record the error policy writes to a dead-letter topic: the original bytes and
/// headers, plus headers saying what failed and where.
pub(crate) fn dead_letter_record(
    topic: &str,
    application_id: &str,
    error: &RecordError,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    timestamp: Timestamp,
    original_headers: &Headers,
) -> ProducedRecord {
    let mut h = original_headers.clone();
    h.add(
        headers::ERROR_CLASS,
        Some(error.class.as_str().as_bytes().to_vec()),
    );
    h.add(
        headers::ERROR_MESSAGE,
        Some(error.message.as_bytes().to_vec()),
    );
    if let Some(field) = &error.field {
        h.add(headers::ERROR_FIELD, Some(field.as_bytes().to_vec()));
    }
    h.add(headers::SOURCE_TOPIC, Some(error.topic.as_bytes().to_vec()));
    h.add(
        headers::SOURCE_PARTITION,
        Some(error.partition.to_string().into_bytes()),
    );
    h.add(
        headers::SOURCE_OFFSET,
        Some(error.offset.to_string().into_bytes()),
    );
    h.add(
        headers::SOURCE_TIMESTAMP,
        Some(timestamp.to_string().into_bytes()),
    );
    h.add(
        headers::APPLICATION_ID,
        Some(application_id.as_bytes().to_vec()),
    );
    ProducedRecord {
        topic: Arc::from(topic),
        partition: None,
        key: key.map(<[u8]>::to_vec),
        value: value.map(<[u8]>::to_vec),
        timestamp,
        headers: h,
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".into()
    }
}

/// `topic=offset,offset;topic=offset`: the deferred inputs a changelog mark excepts.
fn encode_deferred(deferred: &std::collections::BTreeMap<(Arc<str>, i64), u32>) -> String {
    let mut out = String::new();
    let mut current: Option<&str> = None;
    for (topic, offset) in deferred.keys() {
        if current == Some(&**topic) {
            out.push(',');
        } else {
            if current.is_some() {
                out.push(';');
            }
            out.push_str(topic);
            out.push('=');
            current = Some(topic);
        }
        out.push_str(&offset.to_string());
    }
    out
}

/// The inputs named by [`encode_deferred`].
pub(crate) fn decode_deferred(text: &str) -> Vec<(String, i64)> {
    text.split(';')
        .filter_map(|part| part.rsplit_once('='))
        .flat_map(|(topic, offsets)| {
            offsets
                .split(',')
                .filter_map(|o| o.parse().ok())
                .map(move |o| (topic.to_string(), o))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_inputs_round_trip_through_their_header() {
        let deferred: std::collections::BTreeMap<(Arc<str>, i64), u32> = [
            ((Arc::from("a.b"), 3), 1),
            ((Arc::from("a.b"), 10), 2),
            ((Arc::from("c"), 7), 1),
        ]
        .into_iter()
        .collect();
        let text = encode_deferred(&deferred);
        assert_eq!(text, "a.b=3,10;c=7");
        assert_eq!(
            decode_deferred(&text),
            vec![("a.b".into(), 3), ("a.b".into(), 10), ("c".into(), 7)]
        );
        assert!(decode_deferred("").is_empty());
    }
}
