//! Session windows: `windowed_by(SessionWindows::with_inactivity_gap(gap))` groups a key's
//! records into sessions of activity separated by at least `gap` of inactivity, counting,
//! reducing or aggregating per session (Kafka Streams' semantics).
//!
//! A record joins every session of its key that ends at most `gap` before it or starts at
//! most `gap` after it (the gap is inclusive), so one record can bridge two sessions into
//! one. Sessions live in a store keyed by the key's bytes, then the session's end, then its
//! start, so a key's candidate sessions are one range scan. A session closes when stream
//! time passes its end plus the gap plus the grace period (`end + gap + grace <
//! stream time`, as in Kafka Streams 3.x); a record whose merged session would already be
//! closed is late and goes to the same late-record handling as time windows. Once closed, a
//! session is removed from the store (emitted first with [`Emit::OnWindowClose`]), so a
//! later record never merges with it.
//!
//! With [`Emit::OnUpdate`] each merge emits a tombstone (`None`) for every session it
//! replaces, then the new session with its aggregate, each stamped with its session's end.

use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::record::{Record, Timestamp};
use crate::serde::{I64Serde, Serde};
use crate::state::StoreError;
use crate::topology::builder::{Data, KStream, StoreBuilder, add_store};
use crate::topology::error::ProcessingError;
use crate::topology::processor::{Processor, ProcessorContext};

use super::aggregate::KGroupedStream;
use super::table::KTable;
use super::window::{
    Emit, LateRecords, Windowed, Windowing, key_prefix, late_record, ms, time_bytes,
    time_from_bytes,
};

/// Session windows: a key's records closer than the inactivity gap share a session.
///
/// ```
/// use engine::topology::{Emit, SessionWindows};
/// use std::time::Duration;
/// let sessions = SessionWindows::with_inactivity_gap(Duration::from_secs(300))
///     .grace(Duration::from_secs(30))
///     .emit(Emit::OnWindowClose);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionWindows {
    gap: i64,
    grace: i64,
    emit: Emit,
    late: LateRecords,
}

impl SessionWindows {
    /// Sessions that end after `gap` without a record (at least 1 ms); no grace,
    /// emitting on update.
    pub fn with_inactivity_gap(gap: Duration) -> Self {
        SessionWindows {
            gap: ms(gap),
            grace: 0,
            emit: Emit::OnUpdate,
            late: LateRecords::Count,
        }
    }
    /// How long after a session could last change it still accepts out-of-order records.
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
    /// Whether a session ending at `end` is closed at stream time `now`.
    fn closed(&self, end: Timestamp, now: Timestamp) -> bool {
        end.saturating_add(self.gap).saturating_add(self.grace) < now
    }
}

/// A grouped stream with session windows, ready to aggregate.
///
/// ```
/// # use engine::topology::{TopologyBuilder, Topic, Grouped, SessionWindows};
/// # use engine::serde::Serdes;
/// # use std::time::Duration;
/// let b = TopologyBuilder::new("visits");
/// let visits = b
///     .stream(&Topic::new("clicks", Serdes::string(), Serdes::string()))
///     .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
///     .windowed_by(SessionWindows::with_inactivity_gap(Duration::from_secs(1800)));
/// ```
pub struct SessionWindowedKStream<K, V> {
    grouped: KGroupedStream<K, V>,
    windows: SessionWindows,
}

impl<K: Data, V: Data> Windowing<K, V> for SessionWindows {
    type Stream = SessionWindowedKStream<K, V>;
    fn window(self, grouped: &KGroupedStream<K, V>) -> SessionWindowedKStream<K, V> {
        SessionWindowedKStream {
            grouped: grouped.clone(),
            windows: self,
        }
    }
}

type Fold<K, V, A> = Arc<dyn Fn(&K, V, Option<A>) -> A + Send + Sync>;
type Merge<K, A> = Arc<dyn Fn(&K, A, A) -> A + Send + Sync>;
type Init<A> = Arc<dyn Fn() -> A + Send + Sync>;

/// Store key of a session: the framed key, then end, then start.
fn session_key(prefix: &[u8], start: Timestamp, end: Timestamp) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&time_bytes(end));
    k.extend_from_slice(&time_bytes(start));
    k
}

/// Splits a store key into the key's bytes, start and end.
fn parse_session_key(k: &[u8]) -> Option<(&[u8], Timestamp, Timestamp)> {
    let len = u32::from_be_bytes(k.get(..4)?.try_into().ok()?) as usize;
    let key = k.get(4..4 + len)?;
    let times = k.get(4 + len..)?;
    if times.len() != 16 {
        return None;
    }
    Some((key, time_from_bytes(&times[8..])?, time_from_bytes(times)?))
}

struct SessionAggregate<K, V, A> {
    store: String,
    windows: SessionWindows,
    init: Option<Init<A>>,
    fold: Fold<K, V, A>,
    merge: Merge<K, A>,
    key_serde: Arc<dyn Serde<K>>,
    /// Sessions in the store by end, for closing: (end, store key).
    open: BTreeSet<(Timestamp, Vec<u8>)>,
    _types: PhantomData<fn(V)>,
}

fn store_error(e: StoreError) -> ProcessingError {
    ProcessingError::new(e.to_string())
}

impl<K: Data, V: Data, A: Data> SessionAggregate<K, V, A> {
    /// Removes every session closed at `now`, emitting it with `Emit::OnWindowClose`.
    fn close_until(
        &mut self,
        now: Timestamp,
        ctx: &mut ProcessorContext<'_, Windowed<K>, Option<A>>,
    ) -> Result<(), ProcessingError> {
        while let Some((end, _)) = self.open.first() {
            if !self.windows.closed(*end, now) {
                break;
            }
            let Some((_, store_key)) = self.open.pop_first() else {
                break;
            };
            let value = {
                let mut store = ctx
                    .kv_store::<Vec<u8>, A>(&self.store)
                    .map_err(store_error)?;
                let value = store.get(&store_key).map_err(store_error)?;
                store.delete(&store_key).map_err(store_error)?;
                value
            };
            if let (Some(value), Emit::OnWindowClose) = (value, self.windows.emit)
                && let Some((key_bytes, start, end)) = parse_session_key(&store_key)
            {
                let key = self
                    .key_serde
                    .deserialize(&self.store, Some(key_bytes))
                    .map_err(|e| ProcessingError::new(format!("session store key: {e}")))?;
                ctx.forward(Record::new(Windowed { key, start, end }, Some(value), end));
            }
        }
        Ok(())
    }
}

impl<K: Data, V: Data, A: Data> Processor<K, V, Windowed<K>, Option<A>>
    for SessionAggregate<K, V, A>
{
    fn init(
        &mut self,
        ctx: &mut ProcessorContext<'_, Windowed<K>, Option<A>>,
    ) -> Result<(), ProcessingError> {
        // Rebuild the index of open sessions from the (restored) store.
        let entries = ctx
            .kv_store::<Vec<u8>, A>(&self.store)
            .and_then(|s| s.all())
            .map_err(store_error)?;
        for (k, _) in entries {
            if let Some((_, _, end)) = parse_session_key(&k) {
                self.open.insert((end, k));
            }
        }
        Ok(())
    }

    fn process(
        &mut self,
        record: Record<K, V>,
        ctx: &mut ProcessorContext<'_, Windowed<K>, Option<A>>,
    ) -> Result<(), ProcessingError> {
        let now = ctx.stream_time();
        let t = record.timestamp;
        let gap = self.windows.gap;
        let mut key_bytes = Vec::new();
        self.key_serde
            .serialize(&self.store, &record.key, &mut key_bytes)
            .map_err(|e| ProcessingError::new(format!("session store key: {e}")))?;
        let prefix = key_prefix(&key_bytes);

        // Sessions ending at or after t - gap, in end order; keep those starting at or
        // before t + gap: both bounds inclusive, as in Kafka Streams.
        let mut from = prefix.clone();
        from.extend_from_slice(&time_bytes(t.saturating_sub(gap)));
        // Every key of this key's sessions is the prefix and 16 bytes of times.
        let mut to = prefix.clone();
        to.extend_from_slice(&[u8::MAX; 17]);
        let candidates: Vec<(Vec<u8>, A)> = ctx
            .kv_store::<Vec<u8>, A>(&self.store)
            .and_then(|s| s.range(Some(&from), Some(&to)))
            .map_err(store_error)?
            .into_iter()
            .filter(|(k, _)| {
                parse_session_key(k).is_some_and(|(_, start, _)| start <= t.saturating_add(gap))
            })
            .collect();

        let (mut start, mut end) = (t, t);
        let mut merged = self.init.as_ref().map(|init| init());
        let mut replaced = Vec::new();
        for (k, aggregate) in candidates {
            let Some((_, s, e)) = parse_session_key(&k) else {
                continue;
            };
            start = start.min(s);
            end = end.max(e);
            merged = Some(match merged {
                Some(m) => (self.merge)(&record.key, m, aggregate.clone()),
                None => aggregate.clone(),
            });
            replaced.push((k, s, e, aggregate));
        }

        if self.windows.closed(end, now) {
            late_record(self.windows.late, t, now, self.windows.grace, || {
                ctx.count_skipped()
            })?;
            return self.close_until(now, ctx);
        }

        let emit_updates = self.windows.emit == Emit::OnUpdate;
        let grew = (start, end) != (t, t);
        let next = (self.fold)(&record.key, record.value, merged);
        let new_key = session_key(&prefix, start, end);
        {
            let mut store = ctx
                .kv_store::<Vec<u8>, A>(&self.store)
                .map_err(store_error)?;
            if grew {
                for (k, _, e, _) in &replaced {
                    store.delete(k).map_err(store_error)?;
                    self.open.remove(&(*e, k.clone()));
                }
            }
            store.put(&new_key, &next).map_err(store_error)?;
        }
        self.open.insert((end, new_key));
        if emit_updates {
            if grew {
                for (_, s, e, _) in &replaced {
                    let mut tombstone = Record::new(
                        Windowed {
                            key: record.key.clone(),
                            start: *s,
                            end: *e,
                        },
                        None,
                        *e,
                    );
                    tombstone.headers = record.headers.clone();
                    ctx.forward(tombstone);
                }
            }
            let mut out = Record::new(
                Windowed {
                    key: record.key,
                    start,
                    end,
                },
                Some(next),
                end,
            );
            out.headers = record.headers;
            ctx.forward(out);
        }
        self.close_until(now, ctx)
    }
}

impl<K: Data, V: Data> SessionWindowedKStream<K, V> {
    fn sessions<A: Data>(
        &self,
        name: &str,
        store: &str,
        serde: impl Serde<A>,
        init: Option<Init<A>>,
        fold: Fold<K, V, A>,
        merge: Merge<K, A>,
    ) -> KTable<Windowed<K>, Option<A>> {
        let stream = &self.grouped.stream;
        add_store(
            &stream.state,
            StoreBuilder::persistent(store, crate::serde::Serdes::bytes(), serde)
                .windowed(self.windows.gap.saturating_add(self.windows.grace)),
        );
        let (store_name, windows, key_serde) =
            (store.to_string(), self.windows, self.grouped.key.clone());
        let updates: KStream<Windowed<K>, Option<A>> = stream.attach_with_stores(
            name,
            "session_aggregate",
            vec![store.to_string()],
            move || SessionAggregate {
                store: store_name.clone(),
                windows,
                init: init.clone(),
                fold: fold.clone(),
                merge: merge.clone(),
                key_serde: key_serde.clone(),
                open: BTreeSet::new(),
                _types: PhantomData,
            },
        );
        KTable::new(updates, store)
    }

    /// Folds values per key and session, starting from `init()`, in the RocksDB store
    /// `store`; when a record merges sessions, `merger(key, a, b)` combines their
    /// aggregates first (Kafka Streams' `Merger`). Values are `None` for tombstones of
    /// replaced sessions, so write them with a nullable serde.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic, Grouped, SessionWindows, WindowedSerde};
    /// # use engine::serde::Serdes;
    /// # use std::time::Duration;
    /// let b = TopologyBuilder::new("sessions");
    /// b.stream(&Topic::new("page-views", Serdes::string(), Serdes::i64()))
    ///     .group_by_key(Grouped::with(Serdes::string(), Serdes::i64()))
    ///     .windowed_by(SessionWindows::with_inactivity_gap(Duration::from_secs(300)))
    ///     .aggregate(
    ///         "time-on-site",
    ///         "time-on-site-store",
    ///         Serdes::i64(),
    ///         || 0,
    ///         |_user: &String, millis: i64, total: i64| total + millis,
    ///         |_user: &String, a: i64, b: i64| a + b,
    ///     )
    ///     .to_stream()
    ///     .to(&Topic::new("time-on-site", WindowedSerde::new(Serdes::string()), Serdes::nullable(Serdes::i64())));
    /// assert!(b.build().is_ok());
    /// ```
    pub fn aggregate<A: Data>(
        &self,
        name: &str,
        store: &str,
        serde: impl Serde<A>,
        init: impl Fn() -> A + Send + Sync + 'static,
        aggregator: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
        merger: impl Fn(&K, A, A) -> A + Send + Sync + 'static,
    ) -> KTable<Windowed<K>, Option<A>> {
        let init: Init<A> = Arc::new(init);
        let start = init.clone();
        let fold: Fold<K, V, A> = Arc::new(move |k: &K, v: V, current: Option<A>| {
            aggregator(k, v, current.unwrap_or_else(|| start()))
        });
        self.sessions(name, store, serde, Some(init), fold, Arc::new(merger))
    }

    /// Combines values per key and session with `f(aggregate, value)`; merged sessions
    /// combine their aggregates with `f` too.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic, Grouped, SessionWindows};
    /// # use engine::serde::Serdes;
    /// # use std::time::Duration;
    /// let b = TopologyBuilder::new("longest");
    /// let longest = b
    ///     .stream(&Topic::new("calls", Serdes::string(), Serdes::i64()))
    ///     .group_by_key(Grouped::with(Serdes::string(), Serdes::i64()))
    ///     .windowed_by(SessionWindows::with_inactivity_gap(Duration::from_secs(60)))
    ///     .reduce("longest", "longest-call", Serdes::i64(), |a: i64, b: i64| a.max(b));
    /// ```
    pub fn reduce(
        &self,
        name: &str,
        store: &str,
        serde: impl Serde<V>,
        f: impl Fn(V, V) -> V + Send + Sync + 'static,
    ) -> KTable<Windowed<K>, Option<V>> {
        let f = Arc::new(f);
        let merge_with = f.clone();
        let fold: Fold<K, V, V> = Arc::new(move |_k: &K, v: V, current: Option<V>| match current {
            Some(c) => f(c, v),
            None => v,
        });
        let merge: Merge<K, V> = Arc::new(move |_k: &K, a: V, b: V| merge_with(a, b));
        self.sessions(name, store, serde, None, fold, merge)
    }

    /// Counts records per key and session.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic, Grouped, SessionWindows};
    /// # use engine::serde::Serdes;
    /// # use std::time::Duration;
    /// let b = TopologyBuilder::new("visits");
    /// let clicks_per_visit = b
    ///     .stream(&Topic::new("clicks", Serdes::string(), Serdes::string()))
    ///     .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
    ///     .windowed_by(SessionWindows::with_inactivity_gap(Duration::from_secs(1800)))
    ///     .count("count", "clicks-per-visit");
    /// ```
    pub fn count(&self, name: &str, store: &str) -> KTable<Windowed<K>, Option<i64>> {
        self.sessions(
            name,
            store,
            I64Serde,
            Some(Arc::new(|| 0)),
            Arc::new(|_k: &K, _v: V, c: Option<i64>| c.unwrap_or(0) + 1),
            Arc::new(|_k: &K, a: i64, b: i64| a + b),
        )
    }
}
