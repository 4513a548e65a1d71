//! Time windows: `windowed_by` tumbling or hopping windows with a grace period, counting
//! or aggregating per key and window. Late records (for a window already closed) are
//! counted or sent to the error policy; results are emitted on every update or only once
//! per window when it closes. A window closes when stream time passes its end plus the
//! grace period, or, with `close_on_wall_clock`, when wall-clock time does: so windows
//! close even when input is idle.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::record::{Record, Timestamp};
use crate::serde::{I64Serde, Result as SerdeResult, Serde, SerdeError, SerdeInfo, Written};
use crate::topology::builder::{Data, KStream, StoreBuilder, add_store};
use crate::topology::error::ProcessingError;
use crate::topology::processor::{Processor, ProcessorContext, PunctuationType};

use super::aggregate::KGroupedStream;
use super::table::KTable;

/// A key and the window it was aggregated in, in ms: `[start, end)` for time windows,
/// `[start, end]` (both inclusive: the first and last record) for sessions.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Windowed<K> {
    /// The record key.
    pub key: K,
    /// Window start (inclusive).
    pub start: Timestamp,
    /// Window end (exclusive for time windows, inclusive for sessions).
    pub end: Timestamp,
}

/// Serde of [`Windowed`] keys: the key's bytes, then start and end as big-endian i64
/// (so a key's windows sort by start).
pub struct WindowedSerde<K> {
    key: Arc<dyn Serde<K>>,
}

impl<K> WindowedSerde<K> {
    /// Around the key's serde.
    pub fn new(key: impl Serde<K>) -> Self {
        WindowedSerde { key: Arc::new(key) }
    }
}

impl<K: 'static> Serde<Windowed<K>> for WindowedSerde<K> {
    fn serialize(
        &self,
        topic: &str,
        value: &Windowed<K>,
        out: &mut Vec<u8>,
    ) -> SerdeResult<Written> {
        self.key.serialize(topic, &value.key, out)?;
        out.extend_from_slice(&value.start.to_be_bytes());
        out.extend_from_slice(&value.end.to_be_bytes());
        Ok(Written::Bytes)
    }
    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> SerdeResult<Windowed<K>> {
        let data = data.ok_or(SerdeError::UnexpectedNull)?;
        if data.len() < 16 {
            return Err(SerdeError::InvalidData {
                field: None,
                reason: format!("a windowed key needs at least 16 bytes, got {}", data.len()),
            });
        }
        let (key, times) = data.split_at(data.len() - 16);
        let start = i64::from_be_bytes(times[..8].try_into().unwrap_or_default());
        let end = i64::from_be_bytes(times[8..].try_into().unwrap_or_default());
        Ok(Windowed {
            key: self.key.deserialize(topic, Some(key))?,
            start,
            end,
        })
    }
    fn to_json(&self, value: &Windowed<K>) -> Option<serde_json::Value> {
        Some(
            serde_json::json!({"key": self.key.to_json(&value.key)?, "start": value.start, "end": value.end}),
        )
    }
    fn info(&self) -> SerdeInfo {
        let inner = self.key.info();
        SerdeInfo {
            format: format!("windowed-{}", inner.format),
            type_name: std::any::type_name::<Windowed<K>>(),
        }
    }
}

/// When windowed results are emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// After every update (Kafka Streams' default).
    OnUpdate,
    /// Once per window, when it closes (Kafka Streams' `suppress(untilWindowCloses)`).
    OnWindowClose,
}

/// What happens to a record that arrives after its window closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LateRecords {
    /// Logged and counted in the `skipped` metric (Kafka Streams' behaviour).
    Count,
    /// A processing error, handled by the topology's error policy.
    ErrorPolicy,
}

/// Tumbling or hopping time windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeWindows {
    size: i64,
    advance: i64,
    grace: i64,
    emit: Emit,
    late: LateRecords,
    wall_clock: bool,
}

pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl TimeWindows {
    /// Tumbling windows of `size`, no grace, emitting on update.
    pub fn of(size: Duration) -> Self {
        TimeWindows {
            size: ms(size),
            advance: ms(size),
            grace: 0,
            emit: Emit::OnUpdate,
            late: LateRecords::Count,
            wall_clock: false,
        }
    }
    /// Hopping windows: a new window every `advance` (at most the size).
    pub fn advance_by(mut self, advance: Duration) -> Self {
        self.advance = ms(advance).min(self.size);
        self
    }
    /// How long after its end a window still accepts out-of-order records.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        self
    }
    /// When results are emitted.
    pub fn emit(mut self, emit: Emit) -> Self {
        self.emit = emit;
        self
    }
    /// What late records become.
    pub fn late_records(mut self, late: LateRecords) -> Self {
        self.late = late;
        self
    }
    /// Also close windows when wall-clock time passes their end plus grace, so results
    /// come out even when input stops (checked every second).
    pub fn close_on_wall_clock(mut self) -> Self {
        self.wall_clock = true;
        self
    }

    /// Starts of the windows containing `t`.
    fn starts(&self, t: Timestamp) -> impl Iterator<Item = Timestamp> + use<> {
        let last = t - t.rem_euclid(self.advance);
        let (size, advance) = (self.size, self.advance);
        (0..)
            .map(move |i| last - i * advance)
            .take_while(move |s| *s > t - size)
    }
}

/// A grouped stream with windows, ready to aggregate.
pub struct TimeWindowedKStream<K, V> {
    grouped: KGroupedStream<K, V>,
    windows: TimeWindows,
}

/// Windows a grouped stream can be aggregated in: [`TimeWindows`] or
/// [`SessionWindows`](super::SessionWindows); what [`KGroupedStream::windowed_by`] takes.
///
/// ```
/// use engine::topology::{SessionWindowedKStream, SessionWindows, Windowing};
/// use std::time::Duration;
/// fn sessions_of<W: Windowing<String, String, Stream = SessionWindowedKStream<String, String>>>(
///     w: W,
/// ) -> W {
///     w
/// }
/// sessions_of(SessionWindows::with_inactivity_gap(Duration::from_secs(60)));
/// ```
pub trait Windowing<K, V> {
    /// The windowed stream these windows make of a grouped stream.
    type Stream;
    /// Windows `grouped`.
    fn window(self, grouped: &KGroupedStream<K, V>) -> Self::Stream;
}

impl<K: Data, V: Data> Windowing<K, V> for TimeWindows {
    type Stream = TimeWindowedKStream<K, V>;
    fn window(self, grouped: &KGroupedStream<K, V>) -> TimeWindowedKStream<K, V> {
        TimeWindowedKStream {
            grouped: grouped.clone(),
            windows: self,
        }
    }
}

impl<K: Data, V: Data> KGroupedStream<K, V> {
    /// Aggregates per key and window: time windows ([`TimeWindows`]) or sessions
    /// ([`SessionWindows`](super::SessionWindows)).
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic, Grouped, TimeWindows};
    /// # use engine::serde::Serdes;
    /// # use std::time::Duration;
    /// let b = TopologyBuilder::new("per-minute");
    /// let per_minute = b
    ///     .stream(&Topic::new("clicks", Serdes::string(), Serdes::string()))
    ///     .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
    ///     .windowed_by(TimeWindows::of(Duration::from_secs(60)))
    ///     .count("count", "clicks-per-minute");
    /// ```
    pub fn windowed_by<W: Windowing<K, V>>(&self, windows: W) -> W::Stream {
        windows.window(self)
    }
}

/// A key's bytes framed with their length, so one key's entries are a prefix no other
/// key's entries share (`"a"` must not find `"ab"`).
pub(crate) fn key_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 4);
    // Keys longer than 4 GiB cannot reach a store; saturate rather than wrap.
    out.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// A timestamp as 8 bytes that sort bytewise in time order, negative times included.
pub(crate) fn time_bytes(t: Timestamp) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`time_bytes`]; `None` when fewer than 8 bytes are given.
pub(crate) fn time_from_bytes(bytes: &[u8]) -> Option<Timestamp> {
    let raw: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(raw) ^ (1 << 63)) as i64)
}

/// Handles a record that arrived after the window it belongs to closed: counted as
/// skipped, or an error for the error policy, as `late` says.
pub(crate) fn late_record(
    late: LateRecords,
    timestamp: Timestamp,
    stream_time: Timestamp,
    grace: i64,
    count_skipped: impl FnOnce(),
) -> Result<(), ProcessingError> {
    match late {
        LateRecords::ErrorPolicy => Err(ProcessingError::field(
            "timestamp",
            format!(
                "record at {timestamp} is late: its window closed (stream time {stream_time}, grace {grace} ms)"
            ),
        )),
        LateRecords::Count => {
            tracing::debug!(
                timestamp,
                stream_time,
                "late record dropped from closed windows"
            );
            count_skipped();
            Ok(())
        }
    }
}

type Fold<K, V, A> = Arc<dyn Fn(&K, V, Option<A>) -> A + Send + Sync>;

/// Store key: the key's bytes, then the window start.
fn store_key(key: &[u8], start: Timestamp) -> Vec<u8> {
    let mut k = key.to_vec();
    k.extend_from_slice(&start.to_be_bytes());
    k
}

struct WindowAggregate<K, V, A> {
    store: String,
    windows: TimeWindows,
    fold: Fold<K, V, A>,
    key_serde: Arc<dyn Serde<K>>,
    /// Open windows by end, for emitting on close: end -> (key, start).
    open: BTreeMap<(Timestamp, Vec<u8>), (K, Timestamp)>,
    closed_up_to: Timestamp,
    _types: PhantomData<fn(V)>,
}

impl<K: Data, V: Data, A: Data> WindowAggregate<K, V, A> {
    fn key_bytes(&self, key: &K) -> Result<Vec<u8>, ProcessingError> {
        let mut out = Vec::new();
        self.key_serde
            .serialize(&self.store, key, &mut out)
            .map_err(|e| ProcessingError::new(format!("window store key: {e}")))?;
        Ok(out)
    }

    /// Emits and forgets every window whose end plus grace is at or before `now`.
    fn close_until(
        &mut self,
        now: Timestamp,
        ctx: &mut ProcessorContext<'_, Windowed<K>, A>,
    ) -> Result<(), ProcessingError> {
        self.closed_up_to = self.closed_up_to.max(now);
        let store_error = |e: crate::state::StoreError| ProcessingError::new(e.to_string());
        while let Some(((end, key_bytes), _)) = self.open.first_key_value() {
            if end.saturating_add(self.windows.grace) > now {
                break;
            }
            let (end, key_bytes) = (*end, key_bytes.clone());
            let Some((key, start)) = self.open.remove(&(end, key_bytes.clone())) else {
                break;
            };
            let aggregate = {
                let mut store = ctx
                    .kv_store::<Vec<u8>, A>(&self.store)
                    .map_err(store_error)?;
                let k = store_key(&key_bytes, start);
                let value = store.get(&k).map_err(store_error)?;
                store.delete(&k).map_err(store_error)?;
                value
            };
            if let (Some(value), Emit::OnWindowClose) = (aggregate, self.windows.emit) {
                ctx.forward(Record::new(Windowed { key, start, end }, value, end - 1));
            }
        }
        Ok(())
    }
}

impl<K: Data, V: Data, A: Data> Processor<K, V, Windowed<K>, A> for WindowAggregate<K, V, A> {
    fn init(
        &mut self,
        ctx: &mut ProcessorContext<'_, Windowed<K>, A>,
    ) -> Result<(), ProcessingError> {
        // Rebuild the index of open windows from the (restored) store.
        let entries = ctx
            .kv_store::<Vec<u8>, A>(&self.store)
            .and_then(|s| s.all())
            .map_err(|e| ProcessingError::new(e.to_string()))?;
        for (k, _) in entries {
            if k.len() < 8 {
                continue;
            }
            let (key_bytes, start) = k.split_at(k.len() - 8);
            let start = i64::from_be_bytes(start.try_into().unwrap_or_default());
            if let Ok(key) = self.key_serde.deserialize(&self.store, Some(key_bytes)) {
                self.open.insert(
                    (start + self.windows.size, key_bytes.to_vec()),
                    (key, start),
                );
            }
        }
        if self.windows.wall_clock {
            ctx.schedule(Duration::from_secs(1), PunctuationType::WallClockTime);
        }
        Ok(())
    }

    fn process(
        &mut self,
        record: Record<K, V>,
        ctx: &mut ProcessorContext<'_, Windowed<K>, A>,
    ) -> Result<(), ProcessingError> {
        let store_error = |e: crate::state::StoreError| ProcessingError::new(e.to_string());
        let now = ctx.stream_time().max(self.closed_up_to);
        let key_bytes = self.key_bytes(&record.key)?;
        let t = record.timestamp;
        let mut late = 0;
        for start in self.windows.starts(t).collect::<Vec<_>>() {
            let end = start + self.windows.size;
            if end.saturating_add(self.windows.grace) <= now {
                late += 1;
                continue;
            }
            let k = store_key(&key_bytes, start);
            let aggregate = {
                let mut store = ctx
                    .kv_store::<Vec<u8>, A>(&self.store)
                    .map_err(store_error)?;
                let current = store.get(&k).map_err(store_error)?;
                let next = (self.fold)(&record.key, record.value.clone(), current);
                store.put(&k, &next).map_err(store_error)?;
                next
            };
            self.open
                .entry((end, key_bytes.clone()))
                .or_insert_with(|| (record.key.clone(), start));
            if self.windows.emit == Emit::OnUpdate {
                let mut out = Record::new(
                    Windowed {
                        key: record.key.clone(),
                        start,
                        end,
                    },
                    aggregate,
                    t,
                );
                out.headers = record.headers.clone();
                ctx.forward(out);
            }
        }
        if late > 0 {
            late_record(self.windows.late, t, now, self.windows.grace, || {
                ctx.count_skipped()
            })?;
        }
        self.close_until(ctx.stream_time().max(self.closed_up_to), ctx)
    }

    fn punctuate(
        &mut self,
        _schedule: crate::topology::ScheduleId,
        timestamp: Timestamp,
        ctx: &mut ProcessorContext<'_, Windowed<K>, A>,
    ) -> Result<(), ProcessingError> {
        self.close_until(timestamp.max(ctx.stream_time()), ctx)
    }
}

impl<K: Data, V: Data> TimeWindowedKStream<K, V> {
    /// Folds values per key and window, starting from `init()`, in the RocksDB store
    /// `store` (keys: the key's bytes and the window start).
    pub fn aggregate<A: Data>(
        &self,
        name: &str,
        store: &str,
        serde: impl Serde<A>,
        init: impl Fn() -> A + Send + Sync + 'static,
        f: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
    ) -> KTable<Windowed<K>, A> {
        let fold: Fold<K, V, A> =
            Arc::new(move |k: &K, v: V, current: Option<A>| f(k, v, current.unwrap_or_else(&init)));
        let stream = &self.grouped.stream;
        add_store(
            &stream.state,
            StoreBuilder::persistent(store, crate::serde::Serdes::bytes(), serde)
                .windowed(self.windows.size.saturating_add(self.windows.grace)),
        );
        let (store_name, windows, key_serde) =
            (store.to_string(), self.windows, self.grouped.key.clone());
        let updates: KStream<Windowed<K>, A> = stream.attach_with_stores(
            name,
            "windowed_aggregate",
            vec![store.to_string()],
            move || WindowAggregate {
                store: store_name.clone(),
                windows,
                fold: fold.clone(),
                key_serde: key_serde.clone(),
                open: BTreeMap::new(),
                closed_up_to: Timestamp::MIN,
                _types: PhantomData,
            },
        );
        KTable::new(updates, store)
    }

    /// Counts records per key and window.
    pub fn count(&self, name: &str, store: &str) -> KTable<Windowed<K>, i64> {
        self.aggregate(name, store, I64Serde, || 0, |_k, _v, c| c + 1)
    }
}
