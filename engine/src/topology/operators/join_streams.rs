//! Windowed stream-stream joins: `KStream::join`, `left_join` and `outer_join` of two
//! streams with the same key type, joining records whose timestamps are close enough
//! ([`JoinWindows`]), with Kafka Streams 3.x semantics.
//!
//! Each side buffers its records in a window store (keys: the key's bytes, then the
//! timestamp, then a sequence number, so duplicates are kept and one key's records in a
//! time range are one range scan). A record of this stream at `t` joins every buffered
//! record of the other stream in `[t - before, t + after]` (and symmetrically for the other
//! stream), emitting `joiner(this, other)` stamped with the later of the two timestamps.
//! Records expire from the window stores once stream time passes their timestamp plus
//! `before + after + grace`; a record that arrives that late is handled as a late record.
//!
//! Left and outer joins emit a record with `None` for the other side only once its window
//! has closed without a match (stream time past `t + after + grace`; for the other stream
//! of an outer join, `t + before + grace`), so a record that is matched later never
//! produces a spurious `None` result (KIP-633, KAFKA-10847). Until then it waits in a third
//! store, ordered by time; a record that arrives when its window is already past (`t +
//! after` before stream time) and finds no match is emitted with `None` at once, as in
//! Kafka Streams.
//!
//! Both streams must be co-partitioned (same key, same partition count); the runtime
//! refuses to start when their source topics' partition counts differ. Stream time is the
//! task's: the largest timestamp of any record the task has read.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::record::{Record, Timestamp};
use crate::serde::{Serde, Serdes, Written};
use crate::state::StoreError;
use crate::topology::builder::{Data, KStream, StoreBuilder, add_store};
use crate::topology::error::ProcessingError;
use crate::topology::processor::{Processor, ProcessorContext};

use super::branch::pass_through;
use super::window::{LateRecords, key_prefix, late_record, time_bytes, time_from_bytes};

/// How far apart in time two records may be to join, and how long out-of-order records
/// are still accepted.
///
/// ```
/// use engine::topology::JoinWindows;
/// use std::time::Duration;
/// // Payments up to 10 minutes after, or 1 minute before, their order.
/// let windows = JoinWindows::of(Duration::from_secs(600))
///     .before(Duration::from_secs(60))
///     .grace(Duration::from_secs(30));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinWindows {
    before: i64,
    after: i64,
    grace: i64,
    late: LateRecords,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl JoinWindows {
    /// Records join when their timestamps differ by at most `difference`, either way; no
    /// grace.
    pub fn of(difference: Duration) -> Self {
        JoinWindows {
            before: millis(difference),
            after: millis(difference),
            grace: 0,
            late: LateRecords::Count,
        }
    }
    /// How much earlier than a record of this stream a record of the other may be.
    pub fn before(mut self, before: Duration) -> Self {
        self.before = millis(before);
        self
    }
    /// How much later than a record of this stream a record of the other may be.
    pub fn after(mut self, after: Duration) -> Self {
        self.after = millis(after);
        self
    }
    /// How long after its window ends a record still accepts out-of-order matches.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = millis(grace);
        self
    }
    /// What late records become.
    pub fn late_records(mut self, late: LateRecords) -> Self {
        self.late = late;
        self
    }
    /// How long a record stays buffered: the whole window plus grace.
    fn retention(&self) -> i64 {
        self.before
            .saturating_add(self.after)
            .saturating_add(self.grace)
    }
}

/// The serdes of a stream-stream join's stores: the key, this stream's values and the
/// other stream's values (Kafka Streams' `StreamJoined`).
///
/// ```
/// use engine::serde::Serdes;
/// use engine::topology::StreamJoined;
/// let serdes = StreamJoined::with(Serdes::string(), Serdes::string(), Serdes::i64());
/// ```
pub struct StreamJoined<K, V, VO> {
    key: Arc<dyn Serde<K>>,
    this: Arc<dyn Serde<V>>,
    other: Arc<dyn Serde<VO>>,
}

impl<K, V, VO> StreamJoined<K, V, VO> {
    /// Keys with `key`, this stream's values with `this`, the other's with `other`.
    pub fn with(key: impl Serde<K>, this: impl Serde<V>, other: impl Serde<VO>) -> Self {
        StreamJoined {
            key: Arc::new(key),
            this: Arc::new(this),
            other: Arc::new(other),
        }
    }
}

/// The joined value from this side's value and the other side's, either possibly missing
/// (for left and outer joins); arguments in the processing side's order. `None` when the
/// join kind emits nothing for the pair (which the side processors never ask for).
type Joiner<VMe, VOther, VR> =
    Arc<dyn Fn(Option<&VMe>, Option<&VOther>) -> Option<VR> + Send + Sync>;

/// Side bytes in the key of the pending store: this stream's records sort first.
const THIS_SIDE: u8 = 0;
const OTHER_SIDE: u8 = 1;

/// Window store key: the framed key, the timestamp, the sequence number.
fn window_key(prefix: &[u8], t: Timestamp, seq: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&time_bytes(t));
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Timestamp and sequence number at the end of a window store key.
fn window_key_times(k: &[u8]) -> Option<(Timestamp, u64)> {
    let tail = k.get(k.len().checked_sub(16)?..)?;
    Some((
        time_from_bytes(tail)?,
        u64::from_be_bytes(tail[8..].try_into().ok()?),
    ))
}

/// Pending store key (records waiting for a match): timestamp, side, framed key, sequence
/// number, so the oldest come first.
fn pending_key(t: Timestamp, side: u8, prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut k = time_bytes(t).to_vec();
    k.push(side);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Timestamp, side and key bytes of a pending store key.
fn parse_pending_key(k: &[u8]) -> Option<(Timestamp, u8, &[u8])> {
    let t = time_from_bytes(k)?;
    let side = *k.get(8)?;
    let len = u32::from_be_bytes(k.get(9..13)?.try_into().ok()?) as usize;
    Some((t, side, k.get(13..13 + len)?))
}

fn store_error(e: StoreError) -> ProcessingError {
    ProcessingError::new(e.to_string())
}

/// One side of a stream-stream join: buffers its records, joins them with the other
/// side's, and emits records whose window closed without a match.
struct StreamJoinSide<K, VMe, VOther, VR> {
    me_store: String,
    other_store: String,
    /// Records waiting for a match (left and outer joins).
    pending_store: Option<String>,
    me_side: u8,
    /// Other records join one of this side at `t` within `[t - before, t + after]`.
    before: i64,
    after: i64,
    windows: JoinWindows,
    /// Whether this side's unmatched records are emitted (with `None` for the other).
    emit_unmatched: bool,
    joiner: Joiner<VMe, VOther, VR>,
    key_serde: Arc<dyn Serde<K>>,
    me_serde: Arc<dyn Serde<VMe>>,
    other_serde: Arc<dyn Serde<VOther>>,
    /// This side's window store keys by timestamp, for expiry.
    buffered: BTreeSet<(Timestamp, Vec<u8>)>,
    next_seq: u64,
}

impl<K: Data, VMe: Data, VOther: Data, VR: Data> StreamJoinSide<K, VMe, VOther, VR> {
    fn serde_error(&self, what: &str, e: impl std::fmt::Display) -> ProcessingError {
        ProcessingError::new(format!("join store `{}`: {what}: {e}", self.me_store))
    }

    /// Emits and forgets pending records (of either side) whose window closed.
    fn emit_closed(
        &mut self,
        now: Timestamp,
        ctx: &mut ProcessorContext<'_, K, VR>,
    ) -> Result<(), ProcessingError> {
        let Some(pending_store) = &self.pending_store else {
            return Ok(());
        };
        // A record of this side closes at t + after + grace, one of the other side at
        // t + before + grace; nothing newer than the earlier of the two can be closed.
        let horizon = now
            .saturating_sub(self.after.min(self.before))
            .saturating_sub(self.windows.grace);
        let bound = time_bytes(horizon);
        let entries = ctx
            .kv_store::<Vec<u8>, Vec<u8>>(pending_store)
            .and_then(|s| s.range(None, Some(&bound.to_vec())))
            .map_err(store_error)?;
        for (k, bytes) in entries {
            let Some((t, side, key_bytes)) = parse_pending_key(&k) else {
                continue;
            };
            let reach = if side == self.me_side {
                self.after
            } else {
                self.before
            };
            if t.saturating_add(reach).saturating_add(self.windows.grace) >= now {
                continue;
            }
            let key = self
                .key_serde
                .deserialize(&self.me_store, Some(key_bytes))
                .map_err(|e| self.serde_error("key", e))?;
            let joined = if side == self.me_side {
                let v = self
                    .me_serde
                    .deserialize(&self.me_store, Some(&bytes))
                    .map_err(|e| self.serde_error("value", e))?;
                (self.joiner)(Some(&v), None)
            } else {
                let v = self
                    .other_serde
                    .deserialize(&self.other_store, Some(&bytes))
                    .map_err(|e| self.serde_error("value", e))?;
                (self.joiner)(None, Some(&v))
            };
            ctx.kv_store::<Vec<u8>, Vec<u8>>(pending_store)
                .and_then(|mut s| s.delete(&k))
                .map_err(store_error)?;
            if let Some(joined) = joined {
                ctx.forward(Record::new(key, joined, t));
            }
        }
        Ok(())
    }

    /// Forgets this side's records that no future record can join.
    fn expire(
        &mut self,
        now: Timestamp,
        ctx: &mut ProcessorContext<'_, K, VR>,
    ) -> Result<(), ProcessingError> {
        let retention = self.windows.retention();
        while let Some((t, _)) = self.buffered.first() {
            if t.saturating_add(retention) >= now {
                break;
            }
            let Some((_, k)) = self.buffered.pop_first() else {
                break;
            };
            ctx.kv_store::<Vec<u8>, VMe>(&self.me_store)
                .and_then(|mut s| s.delete(&k))
                .map_err(store_error)?;
        }
        Ok(())
    }
}

impl<K: Data, VMe: Data, VOther: Data, VR: Data> Processor<K, VMe, K, VR>
    for StreamJoinSide<K, VMe, VOther, VR>
{
    fn init(&mut self, ctx: &mut ProcessorContext<'_, K, VR>) -> Result<(), ProcessingError> {
        // Rebuild the expiry index and the sequence from the (restored) window store.
        let entries = ctx
            .kv_store::<Vec<u8>, VMe>(&self.me_store)
            .and_then(|s| s.all())
            .map_err(store_error)?;
        for (k, _) in entries {
            if let Some((t, seq)) = window_key_times(&k) {
                self.next_seq = self.next_seq.max(seq + 1);
                self.buffered.insert((t, k));
            }
        }
        Ok(())
    }

    fn process(
        &mut self,
        record: Record<K, VMe>,
        ctx: &mut ProcessorContext<'_, K, VR>,
    ) -> Result<(), ProcessingError> {
        let now = ctx.stream_time();
        let t = record.timestamp;
        let retention = self.windows.retention();
        if t.saturating_add(retention) < now {
            // Before any store write: a late record that becomes an error must leave no
            // trace, since the task drops the output (and changelog) of a failed record.
            late_record(self.windows.late, t, now, self.windows.grace, || {
                ctx.count_skipped()
            })?;
            self.emit_closed(now, ctx)?;
            return self.expire(now, ctx);
        }
        self.emit_closed(now, ctx)?;
        self.expire(now, ctx)?;

        let mut key_bytes = Vec::new();
        match self
            .key_serde
            .serialize(&self.me_store, &record.key, &mut key_bytes)
        {
            Ok(Written::Bytes) => {}
            Ok(Written::Null) => return Err(self.serde_error("key", "a join key cannot be null")),
            Err(e) => return Err(self.serde_error("key", e)),
        }
        let prefix = key_prefix(&key_bytes);

        let from = window_key(&prefix, t.saturating_sub(self.before), 0);
        let to = window_key(&prefix, t.saturating_add(self.after).saturating_add(1), 0);
        let matches = ctx
            .kv_store::<Vec<u8>, VOther>(&self.other_store)
            .and_then(|s| s.range(Some(&from), Some(&to)))
            .map_err(store_error)?;
        let mut matched = false;
        for (k, other) in matches {
            let Some((other_t, seq)) = window_key_times(&k) else {
                continue;
            };
            // The other side may not have expired it yet.
            if other_t.saturating_add(retention) < now {
                continue;
            }
            matched = true;
            if let Some(pending_store) = &self.pending_store {
                let other_side = OTHER_SIDE - self.me_side;
                let pending = pending_key(other_t, other_side, &prefix, seq);
                let mut store = ctx
                    .kv_store::<Vec<u8>, Vec<u8>>(pending_store)
                    .map_err(store_error)?;
                if store.get(&pending).map_err(store_error)?.is_some() {
                    store.delete(&pending).map_err(store_error)?;
                }
            }
            if let Some(joined) = (self.joiner)(Some(&record.value), Some(&other)) {
                let mut out = Record::new(record.key.clone(), joined, t.max(other_t));
                out.headers = record.headers.clone();
                ctx.forward(out);
            }
        }

        let seq = self.next_seq;
        self.next_seq += 1;
        let own = window_key(&prefix, t, seq);
        ctx.kv_store::<Vec<u8>, VMe>(&self.me_store)
            .and_then(|mut s| s.put(&own, &record.value))
            .map_err(store_error)?;
        self.buffered.insert((t, own));

        if matched || !self.emit_unmatched {
            return Ok(());
        }
        match &self.pending_store {
            // Its window is already past: no record in order can still match it.
            Some(_) if t.saturating_add(self.after) < now => {}
            Some(pending_store) => {
                let mut bytes = Vec::new();
                self.me_serde
                    .serialize(&self.me_store, &record.value, &mut bytes)
                    .map_err(|e| self.serde_error("value", e))?;
                let pending = pending_key(t, self.me_side, &prefix, seq);
                return ctx
                    .kv_store::<Vec<u8>, Vec<u8>>(pending_store)
                    .and_then(|mut s| s.put(&pending, &bytes))
                    .map_err(store_error);
            }
            None => {}
        }
        if let Some(joined) = (self.joiner)(Some(&record.value), None) {
            ctx.forward(record.with_value(joined));
        }
        Ok(())
    }
}

/// Which records without a match are emitted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unmatched {
    None,
    This,
    Both,
}

impl<K: Data, V: Data> KStream<K, V> {
    /// Joins each record with every record of `other` with the same key whose timestamp
    /// is within `windows`, emitting `joiner(this, other)` per pair.
    ///
    /// Results for one key (a window of 10 ms, no grace):
    ///
    /// | time | this | other | result |
    /// |---|---|---|---|
    /// | 0 | `A` | | |
    /// | 5 | | `a` | `joiner(A, a)` at 5 |
    /// | 20 | `B` | | |
    /// | 40 | | `b` | |
    /// | 45 | | `c` | |
    /// | 50 | `C` | | `joiner(C, b)`, `joiner(C, c)` at 50 |
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic, JoinWindows, StreamJoined};
    /// # use engine::serde::Serdes;
    /// # use std::time::Duration;
    /// let b = TopologyBuilder::new("payments");
    /// let orders = b.stream(&Topic::new("orders", Serdes::string(), Serdes::string()));
    /// let payments = b.stream(&Topic::new("payments", Serdes::string(), Serdes::i64()));
    /// orders
    ///     .join(
    ///         "paid",
    ///         &payments,
    ///         |order: &String, cents: &i64| format!("{order} paid {cents}"),
    ///         JoinWindows::of(Duration::from_secs(600)),
    ///         StreamJoined::with(Serdes::string(), Serdes::string(), Serdes::i64()),
    ///     )
    ///     .to(&Topic::new("paid-orders", Serdes::string(), Serdes::string()));
    /// assert!(b.build().is_ok());
    /// ```
    pub fn join<VO: Data, VR: Data>(
        &self,
        name: &str,
        other: &KStream<K, VO>,
        joiner: impl Fn(&V, &VO) -> VR + Send + Sync + 'static,
        windows: JoinWindows,
        serdes: StreamJoined<K, V, VO>,
    ) -> KStream<K, VR> {
        let joiner: Joiner<V, VO, VR> = Arc::new(move |this, other| match (this, other) {
            (Some(t), Some(o)) => Some(joiner(t, o)),
            _ => None,
        });
        self.join_streams(name, other, joiner, windows, serdes, Unmatched::None)
    }

    /// Like [`KStream::join`], but a record of this stream that no record of `other`
    /// joins within its window is emitted as `joiner(this, None)` once its window closes
    /// (stream time past its timestamp plus `after` plus grace), never earlier.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic, JoinWindows, StreamJoined};
    /// # use engine::serde::Serdes;
    /// # use std::time::Duration;
    /// let b = TopologyBuilder::new("ads");
    /// let views = b.stream(&Topic::new("ad-views", Serdes::string(), Serdes::string()));
    /// let clicks = b.stream(&Topic::new("ad-clicks", Serdes::string(), Serdes::string()));
    /// views
    ///     .left_join(
    ///         "view-click",
    ///         &clicks,
    ///         |view: &String, click: Option<&String>| format!("{view}:{}", click.is_some()),
    ///         JoinWindows::of(Duration::from_secs(60)).grace(Duration::from_secs(5)),
    ///         StreamJoined::with(Serdes::string(), Serdes::string(), Serdes::string()),
    ///     )
    ///     .to(&Topic::new("view-clicks", Serdes::string(), Serdes::string()));
    /// assert!(b.build().is_ok());
    /// ```
    pub fn left_join<VO: Data, VR: Data>(
        &self,
        name: &str,
        other: &KStream<K, VO>,
        joiner: impl Fn(&V, Option<&VO>) -> VR + Send + Sync + 'static,
        windows: JoinWindows,
        serdes: StreamJoined<K, V, VO>,
    ) -> KStream<K, VR> {
        let joiner: Joiner<V, VO, VR> = Arc::new(move |this, other| this.map(|t| joiner(t, other)));
        self.join_streams(name, other, joiner, windows, serdes, Unmatched::This)
    }

    /// Like [`KStream::left_join`], and records of `other` that nothing joins are emitted
    /// too, as `joiner(None, other)`, once their window closes (stream time past their
    /// timestamp plus `before` plus grace).
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic, JoinWindows, StreamJoined};
    /// # use engine::serde::Serdes;
    /// # use std::time::Duration;
    /// let b = TopologyBuilder::new("reconcile");
    /// let ours = b.stream(&Topic::new("ledger", Serdes::string(), Serdes::i64()));
    /// let theirs = b.stream(&Topic::new("bank", Serdes::string(), Serdes::i64()));
    /// ours.outer_join(
    ///     "reconciled",
    ///     &theirs,
    ///     |a: Option<&i64>, b: Option<&i64>| a == b,
    ///     JoinWindows::of(Duration::from_secs(3600)),
    ///     StreamJoined::with(Serdes::string(), Serdes::i64(), Serdes::i64()),
    /// )
    /// .for_each(|_id: &String, _matches: &bool| {});
    /// assert!(b.build().is_ok());
    /// ```
    pub fn outer_join<VO: Data, VR: Data>(
        &self,
        name: &str,
        other: &KStream<K, VO>,
        joiner: impl Fn(Option<&V>, Option<&VO>) -> VR + Send + Sync + 'static,
        windows: JoinWindows,
        serdes: StreamJoined<K, V, VO>,
    ) -> KStream<K, VR> {
        self.join_streams(
            name,
            other,
            Arc::new(move |this, other| Some(joiner(this, other))),
            windows,
            serdes,
            Unmatched::Both,
        )
    }

    /// Declares the stores `<name>-this-store`, `<name>-other-store` (and
    /// `<name>-pending-store` for left and outer joins), the side processors
    /// `<name>-this` and `<name>-other`, and the node `name` merging their results.
    fn join_streams<VO: Data, VR: Data>(
        &self,
        name: &str,
        other: &KStream<K, VO>,
        joiner: Joiner<V, VO, VR>,
        windows: JoinWindows,
        serdes: StreamJoined<K, V, VO>,
        unmatched: Unmatched,
    ) -> KStream<K, VR> {
        let this_store = format!("{name}-this-store");
        let other_store = format!("{name}-other-store");
        let pending_store = (unmatched != Unmatched::None).then(|| format!("{name}-pending-store"));
        add_store(
            &self.state,
            StoreBuilder::persistent(&this_store, Serdes::bytes(), serdes.this.clone())
                .windowed(windows.retention()),
        );
        add_store(
            &self.state,
            StoreBuilder::persistent(&other_store, Serdes::bytes(), serdes.other.clone())
                .windowed(windows.retention()),
        );
        if let Some(pending) = &pending_store {
            add_store(
                &self.state,
                StoreBuilder::persistent(pending, Serdes::bytes(), Serdes::bytes())
                    .windowed(windows.retention()),
            );
        }
        let mut stores = vec![this_store.clone(), other_store.clone()];
        stores.extend(pending_store.clone());
        let operator = match unmatched {
            Unmatched::None => "join_streams",
            Unmatched::This => "left_join_streams",
            Unmatched::Both => "outer_join_streams",
        };

        let this_side: KStream<K, VR> = {
            let (this_store, other_store, pending_store, joiner, serdes) = (
                this_store.clone(),
                other_store.clone(),
                pending_store.clone(),
                joiner.clone(),
                (
                    serdes.key.clone(),
                    serdes.this.clone(),
                    serdes.other.clone(),
                ),
            );
            self.attach_with_stores(
                &format!("{name}-this"),
                operator,
                stores.clone(),
                move || StreamJoinSide {
                    me_store: this_store.clone(),
                    other_store: other_store.clone(),
                    pending_store: pending_store.clone(),
                    me_side: THIS_SIDE,
                    before: windows.before,
                    after: windows.after,
                    windows,
                    emit_unmatched: unmatched != Unmatched::None,
                    joiner: joiner.clone(),
                    key_serde: serdes.0.clone(),
                    me_serde: serdes.1.clone(),
                    other_serde: serdes.2.clone(),
                    buffered: BTreeSet::new(),
                    next_seq: 0,
                },
            )
        };
        let other_side: KStream<K, VR> = {
            let swapped: Joiner<VO, V, VR> = Arc::new(move |o, t| joiner(t, o));
            let serdes = (serdes.key, serdes.other, serdes.this);
            other.attach_with_stores(&format!("{name}-other"), operator, stores, move || {
                StreamJoinSide {
                    me_store: other_store.clone(),
                    other_store: this_store.clone(),
                    pending_store: pending_store.clone(),
                    me_side: OTHER_SIDE,
                    // Seen from the other stream, the window is mirrored.
                    before: windows.after,
                    after: windows.before,
                    windows,
                    emit_unmatched: unmatched == Unmatched::Both,
                    joiner: swapped.clone(),
                    key_serde: serdes.0.clone(),
                    me_serde: serdes.1.clone(),
                    other_serde: serdes.2.clone(),
                    buffered: BTreeSet::new(),
                    next_seq: 0,
                }
            })
        };
        self.state.borrow_mut().copartitioned.push((
            name.to_string(),
            vec![self.node.clone(), other.node.clone()],
        ));
        pass_through(
            &this_side,
            name,
            "merge",
            vec![this_side.node.clone(), other_side.node.clone()],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_keys_sort_by_time_then_side_and_parse_back() {
        let prefix = key_prefix(b"k");
        let early_other = pending_key(-5, OTHER_SIDE, &prefix, 9);
        let later_this = pending_key(3, THIS_SIDE, &prefix, 1);
        let later_other = pending_key(3, OTHER_SIDE, &prefix, 0);
        assert!(early_other < later_this && later_this < later_other);
        assert_eq!(
            parse_pending_key(&early_other),
            Some((-5, OTHER_SIDE, &b"k"[..]))
        );
        assert_eq!(
            window_key_times(&window_key(&prefix, -7, 42)),
            Some((-7, 42))
        );
    }
}
