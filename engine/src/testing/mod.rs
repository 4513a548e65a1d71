//! The test driver: runs a topology in-process with no broker, the equivalent of Kafka
//! Streams' `TopologyTestDriver`. Pipe records into input topics, read what the topology
//! wrote to output topics, and advance wall-clock time to fire punctuations.
//!
//! Everything runs synchronously on one task (partition 0). Records a topology writes to
//! a topic it also reads are fed back in, as a broker would.
//!
//! Global tables (`TopologyBuilder::global_table`): a record piped (or written by the
//! topology) to a global table's topic updates its store immediately, before the call
//! returns, so the next stream record joins with it. There is no bootstrap phase: pipe
//! the table's records first to model a table that exists before the stream starts. A
//! record of a global topic that does not deserialize is skipped (`Outcome::Skipped`,
//! counted in `skipped`), as the runtime does.
//!
//! ```
//! use engine::serde::Serdes;
//! use engine::testing::TestDriver;
//! use engine::topology::{Topic, TopologyBuilder};
//!
//! let b = TopologyBuilder::new("upper");
//! b.stream(&Topic::new("in", Serdes::string(), Serdes::string())).named("in")
//!     .map_values(|v: String| v.to_uppercase()).named("upper")
//!     .to(&Topic::new("out", Serdes::string(), Serdes::string())).named("out");
//! let driver = TestDriver::new(b.build().unwrap());
//! let input = driver.input_topic("in", Serdes::string(), Serdes::string());
//! let output = driver.output_topic("out", Serdes::string(), Serdes::string());
//! input.pipe("k".to_string(), "hello".to_string()).unwrap();
//! assert_eq!(output.read_key_value(), Some(("k".to_string(), "HELLO".to_string())));
//! ```

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{MetricsSnapshot, TopologyMetrics};
use crate::record::{Headers, ProducedRecord, RawRecord, Record, Timestamp};
use crate::serde::{Serde, Written};
use crate::state::typed::StoreSerdes;
use crate::state::{CacheBudget, InMemorySupplier, framing};
use crate::topology::{Outcome, RecordError, Task, TaskStore, Topology};

/// Options for [`TestDriver::with_options`].
#[derive(Clone, Debug, Default)]
pub struct TestDriverOptions {
    /// Initial wall-clock time in ms (default 0).
    pub start_time: Timestamp,
    /// Partition counts of topics, for sinks with a partitioner (default 1).
    pub partition_counts: HashMap<String, i32>,
    /// `None` (the default): the aggregations' record caches are flushed after every
    /// input record, as Kafka Streams' `TopologyTestDriver` does, so every update is
    /// emitted. `Some(bytes)`: caches hold at most `bytes` together and keep updates
    /// until [`TestDriver::commit`] or an eviction, as the runtime does between commits.
    pub buffered_cache_bytes: Option<usize>,
    /// Run the task as under `processing_guarantee = "exactly_once_v2"`: processors
    /// cannot defer records (`ProcessorContext::defer` returns `None`).
    pub exactly_once: bool,
}

struct DriverState {
    topology: Topology,
    task: Task,
    /// The global tables' stores (the task reads the same ones).
    globals: Arc<Vec<TaskStore>>,
    next_offset: HashMap<String, i64>,
    outputs: HashMap<String, VecDeque<ProducedRecord>>,
    wall_clock: Timestamp,
    metrics: Arc<TopologyMetrics>,
    /// Input records held by `ProcessorContext::defer` and not yet released.
    deferred: Vec<(String, i64)>,
    /// Whether caches keep updates until `commit` (else they flush after every record).
    buffered: bool,
    /// What a restart needs to open the task again.
    counts: Arc<HashMap<String, i32>>,
    budget: Arc<CacheBudget>,
    exactly_once: bool,
}

/// Hands a restarted task the stores its previous life wrote.
struct Reopen(HashMap<String, Arc<dyn crate::state::BytesStore>>);

impl crate::state::StoreSupplier for Reopen {
    fn open(
        &self,
        _application: &str,
        _partition: i32,
        spec: &crate::state::StoreSpec,
    ) -> crate::state::Result<Arc<dyn crate::state::BytesStore>> {
        Ok(self
            .0
            .get(&spec.name)
            .cloned()
            .unwrap_or_else(|| Arc::new(crate::state::MemoryStore::default())))
    }
}

/// Runs a topology in-process; see the module documentation.
pub struct TestDriver {
    state: Rc<RefCell<DriverState>>,
}

impl TestDriver {
    /// A driver with wall-clock time starting at 0.
    pub fn new(topology: Topology) -> Self {
        Self::with_options(topology, TestDriverOptions::default())
    }

    /// A driver with the given options.
    ///
    /// # Panics
    /// If a serde cannot get ready, a join's input topics have different partition counts
    /// in `options`, or a processor's `init` fails: the topology cannot start.
    pub fn with_options(topology: Topology, options: TestDriverOptions) -> Self {
        if let Err(problems) = topology.prepare() {
            panic!(
                "topology `{}` serdes are not ready: {}",
                topology.application_id(),
                problems.join("; ")
            );
        }
        let metrics = Arc::new(TopologyMetrics::default());
        let mut counts = options.partition_counts;
        for t in topology.topics() {
            counts.entry(t).or_insert(1);
        }
        if let Err(e) = topology.check_copartitioning(&counts) {
            panic!("{e}");
        }
        let budget = CacheBudget::new(options.buffered_cache_bytes.unwrap_or(usize::MAX));
        let stores = match Task::open_stores(&topology, 0, &InMemorySupplier, &budget) {
            Ok(stores) => stores,
            Err(e) => panic!("stores of `{}` cannot open: {e}", topology.application_id()),
        };
        let globals = match Task::open_global_stores(&topology, |_| {
            Ok(Arc::new(crate::state::MemoryStore::default()))
        }) {
            Ok(globals) => Arc::new(globals),
            Err(e) => panic!(
                "global stores of `{}` cannot open: {e}",
                topology.application_id()
            ),
        };
        let counts = Arc::new(counts);
        let task = match Task::new(
            &topology,
            0,
            stores,
            globals.clone(),
            counts.clone(),
            options.start_time,
            metrics.clone(),
        ) {
            Ok(mut task) => {
                task.set_exactly_once(options.exactly_once);
                task
            }
            Err(e) => panic!(
                "topology `{}` failed to start: {e}",
                topology.application_id()
            ),
        };
        TestDriver {
            state: Rc::new(RefCell::new(DriverState {
                topology,
                task,
                globals,
                next_offset: HashMap::new(),
                outputs: HashMap::new(),
                wall_clock: options.start_time,
                metrics,
                deferred: Vec::new(),
                buffered: options.buffered_cache_bytes.is_some(),
                counts,
                budget,
                exactly_once: options.exactly_once,
            })),
        }
    }

    /// A typed handle for piping records into `topic`.
    pub fn input_topic<K, V>(
        &self,
        topic: &str,
        key: impl Serde<K>,
        value: impl Serde<V>,
    ) -> TestInputTopic<K, V> {
        TestInputTopic {
            state: self.state.clone(),
            topic: topic.to_string(),
            key: Box::new(key),
            value: Box::new(value),
        }
    }

    /// A typed handle for reading what the topology wrote to `topic`.
    pub fn output_topic<K, V>(
        &self,
        topic: &str,
        key: impl Serde<K>,
        value: impl Serde<V>,
    ) -> TestOutputTopic<K, V> {
        TestOutputTopic {
            state: self.state.clone(),
            topic: topic.to_string(),
            key: Box::new(key),
            value: Box::new(value),
        }
    }

    /// [`TestDriver::input_topic`] for a declared [`Topic`](crate::topology::Topic), with
    /// its serdes.
    pub fn input<K: 'static, V: 'static>(
        &self,
        topic: &crate::topology::Topic<K, V>,
    ) -> TestInputTopic<K, V> {
        self.input_topic(topic.name(), topic.key_serde(), topic.value_serde())
    }

    /// [`TestDriver::output_topic`] for a declared [`Topic`](crate::topology::Topic), with
    /// its serdes.
    pub fn output<K: 'static, V: 'static>(
        &self,
        topic: &crate::topology::Topic<K, V>,
    ) -> TestOutputTopic<K, V> {
        self.output_topic(topic.name(), topic.key_serde(), topic.value_serde())
    }

    /// Pipes raw bytes, for testing how bad input is handled.
    pub fn pipe_raw(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: Timestamp,
        headers: Headers,
    ) -> Result<Outcome, RecordError> {
        self.state
            .borrow_mut()
            .pipe(topic, key, value, timestamp, headers)
    }

    /// Reads the next raw record written to `topic` (including dead-letter topics).
    pub fn read_raw(&self, topic: &str) -> Option<ProducedRecord> {
        self.state
            .borrow_mut()
            .outputs
            .get_mut(topic)
            .and_then(VecDeque::pop_front)
    }

    /// Advances wall-clock time, firing wall-clock punctuations that become due.
    pub fn advance_wall_clock(&self, by: Duration) -> Result<(), RecordError> {
        let mut state = self.state.borrow_mut();
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        state.wall_clock = state.wall_clock.saturating_add(by);
        let now = state.wall_clock;
        let mut produced = Vec::new();
        state.task.punctuate_wall_clock(now, &mut produced)?;
        produced.extend(state.task.take_changelog());
        state.track_deferrals(None);
        state.route(produced)?;
        state.flush_unless_buffered()
    }

    /// What the runtime does before it commits: flushes the record caches (their store
    /// writes, changelog records and coalesced updates reach the outputs) and releases
    /// the input record they held. Only needed with
    /// [`TestDriverOptions::buffered_cache_bytes`]; otherwise caches flush after every
    /// record.
    pub fn commit(&self) -> Result<(), RecordError> {
        self.state.borrow_mut().flush()
    }

    /// What a commit followed by a crash and a restart of the instance does to the task:
    /// the record caches are written out (the commit), then the processors are dropped
    /// with everything they hold in memory and created again (their `init` runs) over
    /// the stores as they were. Deferred records are forgotten (the runtime would
    /// process them again; pipe them again to say so).
    ///
    /// # Errors
    /// The commit's flush or a processor's `init` failed.
    pub fn restart(&self) -> Result<(), RecordError> {
        let mut state = self.state.borrow_mut();
        state.flush()?;
        let kept: HashMap<String, Arc<dyn crate::state::BytesStore>> = state
            .task
            .stores()
            .iter()
            .filter_map(|s| {
                let undo = s.undo.clone()?;
                Some((
                    s.spec.name.clone(),
                    undo as Arc<dyn crate::state::BytesStore>,
                ))
            })
            .collect();
        let stores =
            Task::open_stores(&state.topology, 0, &Reopen(kept), &state.budget).map_err(|e| {
                RecordError {
                    class: crate::topology::ErrorClass::Processing,
                    topic: String::new(),
                    partition: 0,
                    offset: -1,
                    field: None,
                    message: format!("stores cannot open again: {e}"),
                }
            })?;
        let mut task = Task::new(
            &state.topology,
            0,
            stores,
            state.globals.clone(),
            state.counts.clone(),
            state.wall_clock,
            state.metrics.clone(),
        )?;
        task.set_exactly_once(state.exactly_once);
        state.task = task;
        state.deferred.clear();
        Ok(())
    }

    /// Input records a processor holds with `ProcessorContext::defer` and has not
    /// released, as (topic, offset): the ones the runtime would not commit yet.
    pub fn deferred_records(&self) -> Vec<(String, i64)> {
        self.state.borrow().deferred.clone()
    }

    /// Whether a processor asked the runtime to stop fetching input
    /// (`ProcessorContext::pause_input`).
    pub fn input_paused(&self) -> bool {
        self.state.borrow().task.input_paused()
    }

    /// Every unexpired entry of store `name`, decoded with the store's serdes, in key
    /// order; `None` if there is no such store or it holds other types.
    pub fn store_entries<K: 'static, V: 'static>(&self, name: &str) -> Option<Vec<(K, V)>> {
        let state = self.state.borrow();
        let store = state
            .task
            .stores()
            .iter()
            .chain(state.globals.iter())
            .find(|s| s.spec().name == name)?;
        let serdes = store.serdes.downcast_ref::<StoreSerdes<K, V>>()?;
        let entries = store.bytes().range(None, None).ok()?;
        let now = state.wall_clock;
        let mut out = Vec::new();
        for (k, stored) in entries {
            let Some(v) = framing::unframe(&stored, now) else {
                continue;
            };
            out.push((
                serdes.key.deserialize(name, Some(&k)).ok()?,
                serdes.value.deserialize(name, Some(v)).ok()?,
            ));
        }
        Some(out)
    }

    /// The value of `key` in store `name`.
    pub fn store_get<K: PartialEq + 'static, V: 'static>(&self, name: &str, key: &K) -> Option<V> {
        self.store_entries::<K, V>(name)?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Current wall-clock time of the driver.
    pub fn wall_clock(&self) -> Timestamp {
        self.state.borrow().wall_clock
    }

    /// Counters of the topology.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.state.borrow().metrics.snapshot()
    }
}

impl DriverState {
    fn pipe(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: Timestamp,
        headers: Headers,
    ) -> Result<Outcome, RecordError> {
        let offset = self.next_offset.entry(topic.to_string()).or_insert(0);
        let raw = RawRecord {
            topic,
            partition: 0,
            offset: *offset,
            timestamp,
            key,
            value,
            headers,
        };
        *offset += 1;
        if let Some(outcome) = self.apply_global(&raw) {
            return Ok(outcome);
        }
        let mut produced = Vec::new();
        let outcome = self.task.process(&raw, self.wall_clock, &mut produced)?;
        produced.extend(self.task.take_changelog());
        self.track_deferrals(Some((topic, raw.offset)));
        self.route(produced)?;
        self.flush_unless_buffered()?;
        Ok(outcome)
    }

    /// Applies a record of a global table's topic to its store; `None` for other
    /// topics. As in the runtime, a record that does not deserialize is counted and
    /// skipped whatever the error policy (the table keeps following its topic).
    fn apply_global(&self, raw: &RawRecord<'_>) -> Option<Outcome> {
        let global = self
            .topology
            .inner
            .globals
            .iter()
            .find(|g| g.topic == raw.topic)?;
        let store = self
            .globals
            .iter()
            .find(|s| s.spec().name == global.store.spec.name)?;
        match global.apply(&**store.bytes(), raw.key, raw.value) {
            Ok(_) => Some(Outcome::Processed),
            Err(error) => {
                TopologyMetrics::add(&self.metrics.deserialization_errors, 1);
                TopologyMetrics::add(&self.metrics.skipped, 1);
                tracing::warn!(topic = raw.topic, offset = raw.offset, %error, "global table record skipped");
                Some(Outcome::Skipped)
            }
        }
    }

    fn flush_unless_buffered(&mut self) -> Result<(), RecordError> {
        if self.buffered {
            return Ok(());
        }
        self.flush()
    }

    /// Flushes the caches until what the flush fed back into the topology (a topic it
    /// also reads) left nothing cached, or a bounded number of rounds passed (a topology
    /// that aggregates its own updates forever).
    fn flush(&mut self) -> Result<(), RecordError> {
        for _ in 0..1000 {
            let mut produced = Vec::new();
            self.task.flush(self.wall_clock, &mut produced)?;
            produced.extend(self.task.take_changelog());
            self.track_deferrals(None);
            self.route(produced)?;
            if !self.task.has_cached_writes() {
                break;
            }
        }
        Ok(())
    }

    fn track_deferrals(&mut self, input: Option<(&str, i64)>) {
        let (deferrals, released) = self.task.take_deferrals();
        if let Some((topic, offset)) = input {
            for _ in 0..deferrals {
                self.deferred.push((topic.to_string(), offset));
            }
        }
        for r in released {
            if let Some(i) = self
                .deferred
                .iter()
                .position(|(t, o)| **t == *r.topic && *o == r.offset)
            {
                self.deferred.remove(i);
            }
        }
    }

    /// Sends produced records to the outputs, or back into the topology when it reads
    /// the topic.
    fn route(&mut self, produced: Vec<ProducedRecord>) -> Result<(), RecordError> {
        let mut queue: VecDeque<ProducedRecord> = produced.into();
        while let Some(record) = queue.pop_front() {
            TopologyMetrics::add(&self.metrics.records_out, 1);
            if self
                .topology
                .source_topics()
                .iter()
                .any(|t| **t == *record.topic)
            {
                let mut more = Vec::new();
                let offset = self
                    .next_offset
                    .entry(record.topic.to_string())
                    .or_insert(0);
                let raw = RawRecord {
                    topic: &record.topic,
                    partition: 0,
                    offset: *offset,
                    timestamp: record.timestamp,
                    key: record.key.as_deref(),
                    value: record.value.as_deref(),
                    headers: record.headers.clone(),
                };
                let at = *offset;
                *offset += 1;
                self.task.process(&raw, self.wall_clock, &mut more)?;
                more.extend(self.task.take_changelog());
                self.track_deferrals(Some((&record.topic, at)));
                queue.extend(more);
            } else if self
                .topology
                .global_topics()
                .iter()
                .any(|t| **t == *record.topic)
            {
                let raw = RawRecord {
                    topic: &record.topic,
                    partition: 0,
                    offset: -1,
                    timestamp: record.timestamp,
                    key: record.key.as_deref(),
                    value: record.value.as_deref(),
                    headers: record.headers.clone(),
                };
                self.apply_global(&raw);
            }
            self.outputs
                .entry(record.topic.to_string())
                .or_default()
                .push_back(record);
        }
        Ok(())
    }
}

/// Typed input to one topic of a [`TestDriver`].
pub struct TestInputTopic<K, V> {
    state: Rc<RefCell<DriverState>>,
    topic: String,
    key: Box<dyn Serde<K>>,
    value: Box<dyn Serde<V>>,
}

impl<K: 'static, V: 'static> TestInputTopic<K, V> {
    /// Pipes a record stamped with the driver's current wall-clock time.
    pub fn pipe(&self, key: K, value: V) -> Result<Outcome, RecordError> {
        let now = self.state.borrow().wall_clock;
        self.pipe_record(Record::new(key, value, now))
    }

    /// Pipes a record with an explicit timestamp.
    pub fn pipe_at(&self, key: K, value: V, timestamp: Timestamp) -> Result<Outcome, RecordError> {
        self.pipe_record(Record::new(key, value, timestamp))
    }

    /// Pipes a full record (key, value, timestamp, headers).
    ///
    /// # Panics
    /// If the test's own serdes cannot serialize the record.
    pub fn pipe_record(&self, record: Record<K, V>) -> Result<Outcome, RecordError> {
        let mut key = Vec::new();
        let key = match self.key.serialize(&self.topic, &record.key, &mut key) {
            Ok(Written::Bytes) => Some(key),
            Ok(Written::Null) => None,
            Err(e) => panic!("test input key does not serialize: {e}"),
        };
        let mut value = Vec::new();
        let value = match self.value.serialize(&self.topic, &record.value, &mut value) {
            Ok(Written::Bytes) => Some(value),
            Ok(Written::Null) => None,
            Err(e) => panic!("test input value does not serialize: {e}"),
        };
        self.state.borrow_mut().pipe(
            &self.topic,
            key.as_deref(),
            value.as_deref(),
            record.timestamp,
            record.headers,
        )
    }
}

/// Typed output of one topic of a [`TestDriver`].
pub struct TestOutputTopic<K, V> {
    state: Rc<RefCell<DriverState>>,
    topic: String,
    key: Box<dyn Serde<K>>,
    value: Box<dyn Serde<V>>,
}

impl<K: 'static, V: 'static> TestOutputTopic<K, V> {
    /// The next record, decoded; `None` when the topic has nothing more.
    ///
    /// # Panics
    /// If the record does not decode with the test's serdes: that is a test failure.
    pub fn read_record(&self) -> Option<Record<K, V>> {
        let raw = self
            .state
            .borrow_mut()
            .outputs
            .get_mut(&self.topic)
            .and_then(VecDeque::pop_front)?;
        let key = self
            .key
            .deserialize(&self.topic, raw.key.as_deref())
            .unwrap_or_else(|e| panic!("output key on `{}` does not decode: {e}", self.topic));
        let value = self
            .value
            .deserialize(&self.topic, raw.value.as_deref())
            .unwrap_or_else(|e| panic!("output value on `{}` does not decode: {e}", self.topic));
        Some(Record {
            key,
            value,
            timestamp: raw.timestamp,
            headers: raw.headers,
        })
    }

    /// The next key and value.
    pub fn read_key_value(&self) -> Option<(K, V)> {
        self.read_record().map(|r| (r.key, r.value))
    }

    /// The next value.
    pub fn read_value(&self) -> Option<V> {
        self.read_record().map(|r| r.value)
    }

    /// Every remaining record.
    pub fn read_records(&self) -> Vec<Record<K, V>> {
        std::iter::from_fn(|| self.read_record()).collect()
    }

    /// Every remaining value.
    pub fn read_values(&self) -> Vec<V> {
        std::iter::from_fn(|| self.read_value()).collect()
    }

    /// Every remaining key and value.
    pub fn read_key_values(&self) -> Vec<(K, V)> {
        std::iter::from_fn(|| self.read_key_value()).collect()
    }

    /// True when nothing is left to read.
    pub fn is_empty(&self) -> bool {
        self.state
            .borrow()
            .outputs
            .get(&self.topic)
            .is_none_or(VecDeque::is_empty)
    }
}
