//! Which consumed offsets are safe to commit.
//!
//! A record is done when every record it caused has been acknowledged by the broker. Per
//! partition, offsets are processed in order, so the pending ones form a queue; the
//! committable offset is the first pending one (or the one after the last processed).
//! Delivery callbacks run on the producer's thread, hence the mutex; it is never held
//! across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rdkafka::error::KafkaError;
use tokio::sync::Notify;

use crate::record::{Headers, Timestamp};

/// Identifies the (topic, partition) a delivery belongs to, and which assignment of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub index: u32,
    pub generation: u32,
}

/// The input offsets a produced record holds back: the record that caused it (`None`
/// for punctuation output) and any deferred records released by the same call.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sources {
    pub source: Option<(Slot, i64)>,
    /// Deferred records released by the call that produced the record.
    pub released: Vec<(Slot, i64)>,
}

impl Sources {
    pub fn of(source: Option<(Slot, i64)>) -> Self {
        Sources {
            source,
            released: Vec::new(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = (Slot, i64)> + '_ {
        self.source.into_iter().chain(self.released.iter().copied())
    }
}

/// Carried through the producer with each record.
#[derive(Debug)]
pub(crate) struct DeliveryToken {
    pub sources: Sources,
    /// Position of the record in send order.
    pub seq: u64,
    /// The tracker's epoch when it was sent: deliveries of an earlier epoch (records of
    /// an aborted transaction) are ignored.
    pub epoch: u64,
}

/// Which sends are settled (acknowledged, or handled by the error policy), in send order:
/// a changelog record waits until everything sent before it is settled.
#[derive(Debug, Default)]
struct SendOrder {
    /// Sequence number of the oldest unsettled send (every earlier one is settled).
    base: u64,
    /// Settled flags from `base` on.
    settled: VecDeque<bool>,
}

impl SendOrder {
    fn next(&mut self) -> u64 {
        self.settled.push_back(false);
        self.base + self.settled.len() as u64 - 1
    }

    fn settle(&mut self, seq: u64) {
        if let Some(flag) = seq
            .checked_sub(self.base)
            .and_then(|i| self.settled.get_mut(i as usize))
        {
            *flag = true;
        }
        while self.settled.front() == Some(&true) {
            self.settled.pop_front();
            self.base += 1;
        }
    }

    /// The sequence number the next send gets.
    fn upcoming(&self) -> u64 {
        self.base + self.settled.len() as u64
    }
}

/// A changelog record waiting for the sends before it to settle.
#[derive(Debug)]
pub(crate) struct QueuedChangelog {
    /// Everything sent with a smaller sequence number must settle first.
    pub after: u64,
    pub record: crate::record::ProducedRecord,
    pub sources: Sources,
}

/// A record the broker refused.
#[derive(Debug)]
pub(crate) struct DeliveryFailure {
    pub sources: Sources,
    pub seq: u64,
    /// Reported by the broker (or librdkafka) after the send, not refused by `send`: in
    /// a transaction, such a failure makes the transaction abort.
    pub asynchronous: bool,
    pub error: KafkaError,
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp: Timestamp,
    pub headers: Headers,
}

#[derive(Debug)]
struct PartitionProgress {
    topic: String,
    partition: i32,
    generation: u32,
    active: bool,
    /// (offset, outputs not yet acknowledged plus unreleased deferrals, unreleased
    /// deferrals), offsets increasing.
    pending: VecDeque<(i64, u32, u32)>,
    /// The offset after the last processed record (-1: none yet).
    next_offset: i64,
    /// Last committed offset (-1: none).
    committed: i64,
}

impl PartitionProgress {
    /// The offset after the last record whose outputs are all acknowledged, whether or
    /// not it is committed already.
    fn complete_up_to(&self) -> Option<i64> {
        match self.pending.front() {
            Some((offset, _, _)) => Some(*offset),
            None if self.next_offset >= 0 => Some(self.next_offset),
            None => None,
        }
    }

    /// [`Self::complete_up_to`], if it is past the committed offset.
    fn committable(&self) -> Option<i64> {
        self.complete_up_to().filter(|&o| o > self.committed)
    }
}

#[derive(Debug, Default)]
struct TrackerState {
    partitions: Vec<PartitionProgress>,
    slots: HashMap<(String, i32), u32>,
    failures: Vec<DeliveryFailure>,
    order: SendOrder,
    changelog: VecDeque<QueuedChangelog>,
}

/// Offsets in flight for one topology instance.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    state: Mutex<TrackerState>,
    /// Whether sends get sequence numbers (only topologies with changelogs need them).
    ordered: AtomicBool,
    in_flight: AtomicUsize,
    waiting: AtomicBool,
    notify: Notify,
    /// Bumped when everything in flight is given up (an aborted transaction).
    epoch: std::sync::atomic::AtomicU64,
}

impl OffsetTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerState> {
        // A panic while holding the lock leaves plain counters behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot of a partition, created (or re-activated) on first use.
    pub fn slot(&self, topic: &str, partition: i32) -> Slot {
        let mut state = self.lock();
        if let Some(&index) = state.slots.get(&(topic.to_string(), partition)) {
            let p = &mut state.partitions[index as usize];
            if !p.active {
                p.active = true;
                p.generation += 1;
                p.pending.clear();
                p.next_offset = -1;
                p.committed = -1;
            }
            return Slot {
                index,
                generation: p.generation,
            };
        }
        let index = u32::try_from(state.partitions.len()).unwrap_or(u32::MAX);
        state.partitions.push(PartitionProgress {
            topic: topic.to_string(),
            partition,
            generation: 0,
            active: true,
            pending: VecDeque::new(),
            next_offset: -1,
            committed: -1,
        });
        state.slots.insert((topic.to_string(), partition), index);
        Slot {
            index,
            generation: 0,
        }
    }

    /// Records that `offset` was processed, caused `outputs` records, and is held by
    /// `deferrals` processors until they release it ([`OffsetTracker::release`]).
    pub fn processed(&self, slot: Slot, offset: i64, outputs: u32, deferrals: u32) {
        let mut state = self.lock();
        let p = &mut state.partitions[slot.index as usize];
        if p.generation != slot.generation {
            return;
        }
        p.next_offset = offset + 1;
        let n = outputs.saturating_add(deferrals);
        if n > 0 {
            p.pending.push_back((offset, n, deferrals));
            self.in_flight.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A processor released its deferral of `source`; the call that released it
    /// produced `outputs` records, which must be acknowledged before the offset is done.
    pub fn release(&self, source: (Slot, i64), outputs: u32) {
        let (slot, offset) = source;
        {
            let mut state = self.lock();
            let p = &mut state.partitions[slot.index as usize];
            if p.generation != slot.generation {
                return;
            }
            let Ok(i) = p.pending.binary_search_by_key(&offset, |e| e.0) else {
                return;
            };
            if p.pending[i].2 == 0 {
                // Released twice: the first release already counted.
                return;
            }
            p.pending[i].2 -= 1;
            p.pending[i].1 = p.pending[i].1.saturating_add(outputs);
        }
        self.acknowledged(Some(source));
    }

    /// Input records waiting for the broker to acknowledge outputs (deferrals not
    /// counted): what a clean shutdown waits for.
    pub fn awaiting_acknowledgement(&self) -> usize {
        let state = self.lock();
        state
            .partitions
            .iter()
            .filter(|p| p.active)
            .map(|p| p.pending.iter().filter(|e| e.1 > e.2).count())
            .sum()
    }

    /// One output of `offset` was acknowledged (or dealt with by the error policy).
    pub fn acknowledged(&self, source: Option<(Slot, i64)>) {
        let Some((slot, offset)) = source else {
            return;
        };
        let mut state = self.lock();
        let p = &mut state.partitions[slot.index as usize];
        if p.generation != slot.generation {
            return;
        }
        if let Ok(i) = p.pending.binary_search_by_key(&offset, |e| e.0) {
            p.pending[i].1 = p.pending[i].1.saturating_sub(1);
            if p.pending[i].1 == 0 {
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
        }
        while p.pending.front().is_some_and(|e| e.1 == 0) {
            p.pending.pop_front();
        }
        drop(state);
        if self.waiting.load(Ordering::Relaxed) {
            self.notify.notify_one();
        }
    }

    /// Every input offset a record holds back: one of its outputs was acknowledged.
    pub fn acknowledged_all(&self, sources: &Sources) {
        for source in sources.iter() {
            self.acknowledged(Some(source));
        }
    }

    /// One more output for every offset in `sources`.
    pub fn add_output_all(&self, sources: &Sources) {
        for source in sources.iter() {
            self.add_output(Some(source));
        }
    }

    /// Whether to number sends, so changelog records can wait for the outputs before
    /// them. Off, sends cost no lock and changelog records go out at once.
    pub fn track_send_order(&self, on: bool) {
        self.ordered.store(on, Ordering::Relaxed);
    }

    /// A sequence number for the next send (`u64::MAX`: not tracked).
    pub fn next_seq(&self) -> u64 {
        if !self.ordered.load(Ordering::Relaxed) {
            return u64::MAX;
        }
        self.lock().order.next()
    }

    /// A send was acknowledged or dealt with by the error policy.
    pub fn settled(&self, seq: u64) {
        if seq == u64::MAX {
            return;
        }
        self.lock().order.settle(seq);
        if self.waiting.load(Ordering::Relaxed) {
            self.notify.notify_one();
        }
    }

    /// Queues changelog records until every record sent so far has settled: a store
    /// update reaches its changelog only after the outputs of the same records, so a
    /// restored store never holds the effect of a record whose outputs were lost.
    pub fn queue_changelog(&self, records: Vec<crate::record::ProducedRecord>, sources: &Sources) {
        if records.is_empty() {
            return;
        }
        let mut state = self.lock();
        let after = state.order.upcoming();
        for record in records {
            state.changelog.push_back(QueuedChangelog {
                after,
                record,
                sources: sources.clone(),
            });
        }
    }

    /// Queued changelog records whose predecessors have all settled.
    pub fn ready_changelog(&self) -> Vec<QueuedChangelog> {
        let mut state = self.lock();
        let base = state.order.base;
        let mut ready = Vec::new();
        while state.changelog.front().is_some_and(|c| c.after <= base) {
            if let Some(c) = state.changelog.pop_front() {
                ready.push(c);
            }
        }
        ready
    }

    /// Changelog records still queued.
    pub fn queued_changelog(&self) -> usize {
        self.lock().changelog.len()
    }

    /// Drops the queued changelog records of the tasks of `partitions` (revoked before
    /// they could be sent): another instance owns those changelogs now. Returns how
    /// many were dropped.
    pub fn drop_changelog(&self, partitions: &[i32]) -> usize {
        let mut state = self.lock();
        let before = state.changelog.len();
        state
            .changelog
            .retain(|c| !c.record.partition.is_some_and(|p| partitions.contains(&p)));
        before - state.changelog.len()
    }

    /// Every queued changelog record, ready or not (for shutdown and revocation, after
    /// the producer was flushed).
    pub fn drain_changelog(&self) -> Vec<QueuedChangelog> {
        self.lock().changelog.drain(..).collect()
    }

    /// One more output for an offset already pending (a dead-letter write replacing a
    /// failed delivery).
    pub fn add_output(&self, source: Option<(Slot, i64)>) {
        let Some((slot, offset)) = source else {
            return;
        };
        let mut state = self.lock();
        let p = &mut state.partitions[slot.index as usize];
        if p.generation != slot.generation {
            return;
        }
        if let Ok(i) = p.pending.binary_search_by_key(&offset, |e| e.0) {
            p.pending[i].1 += 1;
        }
    }

    /// A delivery failed; the runtime applies the production error policy to it.
    pub fn failed(&self, failure: DeliveryFailure) {
        self.lock().failures.push(failure);
        self.notify.notify_one();
    }

    /// Failures not yet handled.
    pub fn take_failures(&self) -> Vec<DeliveryFailure> {
        std::mem::take(&mut self.lock().failures)
    }

    /// Whether failures wait to be handled.
    pub fn has_failures(&self) -> bool {
        !self.lock().failures.is_empty()
    }

    /// Input records whose outputs are not all acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Waits for an acknowledgement or a failure (call `set_waiting(true)` first).
    pub async fn changed(&self) {
        self.notify.notified().await
    }

    /// Whether the runtime is waiting for acknowledgements (so callbacks wake it).
    pub fn set_waiting(&self, waiting: bool) {
        self.waiting.store(waiting, Ordering::Relaxed);
    }

    /// Offsets to commit, per partition, for `filter`ed active partitions: those beyond
    /// what the broker confirmed. Nothing is marked until [`OffsetTracker::confirm`], so a
    /// commit the broker refuses (say, during a rebalance) is sent again.
    pub fn take_commits(&self, filter: impl Fn(&str, i32) -> bool) -> Vec<(String, i32, i64)> {
        let state = self.lock();
        let mut out = Vec::new();
        for p in state.partitions.iter().filter(|p| p.active) {
            if !filter(&p.topic, p.partition) {
                continue;
            }
            if let Some(offset) = p.committable() {
                out.push((p.topic.clone(), p.partition, offset));
            }
        }
        out
    }

    /// The current epoch, for the tokens of records sent now.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Gives up everything in flight (a transaction was aborted): every partition is
    /// forgotten, queued changelog records and failures are dropped, and deliveries of
    /// records sent before are ignored from now on.
    pub fn reset(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let mut state = self.lock();
        for p in state.partitions.iter_mut().filter(|p| p.active) {
            p.active = false;
            p.pending.clear();
        }
        state.changelog.clear();
        state.failures.clear();
        state.order = SendOrder::default();
        self.in_flight.store(0, Ordering::Relaxed);
    }

    /// The broker confirmed a commit.
    pub fn confirm(&self, topic: &str, partition: i32, offset: i64) {
        let mut state = self.lock();
        if let Some(&index) = state.slots.get(&(topic.to_string(), partition)) {
            let p = &mut state.partitions[index as usize];
            p.committed = p.committed.max(offset);
        }
    }

    /// Where processing of a partition stands: the offset after the last record whose
    /// outputs are all acknowledged (`None` if nothing was processed).
    pub fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        let state = self.lock();
        let index = *state.slots.get(&(topic.to_string(), partition))?;
        let p = &state.partitions[index as usize];
        // Not `committable`: once the commit reached a pending record, it would fall back
        // to the offset after the last record processed, past that pending one.
        p.complete_up_to().filter(|_| p.active)
    }

    /// The offset after the last record processed from an assigned partition (`None`
    /// before its first record).
    pub fn processed_position(&self, topic: &str, partition: i32) -> Option<i64> {
        let state = self.lock();
        let index = *state.slots.get(&(topic.to_string(), partition))?;
        let p = &state.partitions[index as usize];
        (p.active && p.next_offset >= 0).then_some(p.next_offset)
    }

    /// Forgets revoked partitions; later deliveries for them are ignored.
    pub fn deactivate(&self, topic: &str, partition: i32) {
        let mut state = self.lock();
        if let Some(&index) = state.slots.get(&(topic.to_string(), partition)) {
            let p = &mut state.partitions[index as usize];
            if p.active {
                let pending = p.pending.iter().filter(|e| e.1 > 0).count();
                self.in_flight.fetch_sub(pending, Ordering::Relaxed);
                p.active = false;
                p.pending.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_stop_at_the_first_unacknowledged_offset() {
        let t = OffsetTracker::default();
        let s = t.slot("in", 0);
        t.processed(s, 10, 1, 0);
        t.processed(s, 11, 0, 0);
        t.processed(s, 12, 2, 0);
        assert_eq!(t.in_flight(), 2);
        assert_eq!(t.take_commits(|_, _| true), vec![("in".to_string(), 0, 10)]);
        // Not confirmed: offered again.
        assert_eq!(t.take_commits(|_, _| true), vec![("in".to_string(), 0, 10)]);
        t.confirm("in", 0, 10);
        t.acknowledged(Some((s, 12)));
        t.acknowledged(Some((s, 12)));
        // 10 still pending: nothing new to commit.
        assert!(t.take_commits(|_, _| true).is_empty());
        t.acknowledged(Some((s, 10)));
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.take_commits(|_, _| true), vec![("in".to_string(), 0, 13)]);
        assert_eq!(t.position("in", 0), Some(13));
    }

    #[test]
    fn the_position_stops_at_a_pending_record_already_committed_up_to() {
        // 20 is held (a record cache, a deferral) and the commit up to it is confirmed:
        // a consumer resuming at the position must get 20 again, not 22.
        let t = OffsetTracker::default();
        let s = t.slot("in", 0);
        t.processed(s, 19, 0, 0);
        t.processed(s, 20, 0, 1);
        t.processed(s, 21, 0, 0);
        assert_eq!(t.take_commits(|_, _| true), vec![("in".to_string(), 0, 20)]);
        t.confirm("in", 0, 20);
        assert!(t.take_commits(|_, _| true).is_empty());
        assert_eq!(t.position("in", 0), Some(20));
    }

    #[test]
    fn a_deferred_offset_commits_after_its_release_and_the_release_outputs() {
        let t = OffsetTracker::default();
        let s = t.slot("in", 0);
        t.processed(s, 3, 0, 1);
        t.processed(s, 4, 1, 0);
        t.acknowledged(Some((s, 4)));
        assert_eq!(t.take_commits(|_, _| true), vec![("in".to_string(), 0, 3)]);
        assert_eq!(
            t.awaiting_acknowledgement(),
            0,
            "a deferral is not an output"
        );
        t.release((s, 3), 2);
        assert_eq!(t.awaiting_acknowledgement(), 1);
        t.acknowledged(Some((s, 3)));
        assert_eq!(t.take_commits(|_, _| true), vec![("in".to_string(), 0, 3)]);
        // A second release of the same deferral changes nothing.
        t.release((s, 3), 0);
        assert_eq!(t.take_commits(|_, _| true), vec![("in".to_string(), 0, 3)]);
        t.acknowledged(Some((s, 3)));
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.take_commits(|_, _| true), vec![("in".to_string(), 0, 5)]);
    }

    #[test]
    fn changelog_records_wait_for_every_earlier_send_to_settle() {
        let record = || crate::record::ProducedRecord {
            topic: "app-store-changelog".into(),
            partition: Some(0),
            key: Some(b"k".to_vec()),
            value: Some(b"v".to_vec()),
            timestamp: 0,
            headers: Default::default(),
        };
        let t = OffsetTracker::default();
        t.track_send_order(true);
        let (first, second) = (t.next_seq(), t.next_seq());
        t.queue_changelog(vec![record(), record()], &Sources::default());
        let later = t.next_seq();
        assert!(t.ready_changelog().is_empty());
        t.settled(second);
        assert!(
            t.ready_changelog().is_empty(),
            "the first send is not settled"
        );
        t.settled(first);
        assert_eq!(
            t.ready_changelog().len(),
            2,
            "a later send does not hold them"
        );
        t.settled(later);
        assert_eq!(t.queued_changelog(), 0);

        let unordered = OffsetTracker::default();
        let _ = unordered.next_seq();
        unordered.queue_changelog(vec![record()], &Sources::default());
        assert_eq!(
            unordered.ready_changelog().len(),
            1,
            "no order kept: at once"
        );
    }

    #[test]
    fn deliveries_of_a_previous_assignment_are_ignored() {
        let t = OffsetTracker::default();
        let s = t.slot("in", 1);
        t.processed(s, 5, 1, 0);
        t.deactivate("in", 1);
        assert_eq!(t.in_flight(), 0);
        let s2 = t.slot("in", 1);
        assert_ne!(s, s2);
        t.processed(s2, 7, 1, 0);
        t.acknowledged(Some((s, 5)));
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.take_commits(|_, _| true), vec![("in".to_string(), 1, 7)]);
    }
}
