//! `deduplicate`: passes the first record of each id and drops the others seen within a
//! time window, remembering ids in a store (with a changelog, so a restarted or moved
//! task still knows them).
//!
//! A record processed again after a crash (at-least-once redelivery from the last
//! commit) is recognised as the first occurrence, not as a duplicate: the store keeps
//! where the id was first seen, and a record from that same topic, partition and offset
//! passes again, so its outputs are produced again as at-least-once promises.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::record::Record;
use crate::serde::{Serde, Serdes};
use crate::topology::builder::{Data, KStream, StoreBuilder, add_store};
use crate::topology::error::ProcessingError;
use crate::topology::processor::{Processor, ProcessorContext};

/// Where and when an id was first seen: the value of a deduplication store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstSeen {
    /// Source topic of the first record (empty for a punctuation's output).
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset (-1 for a punctuation's output).
    pub offset: i64,
    /// Its timestamp (absent in entries written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
}

type IdOf<K, V, I> = Arc<dyn Fn(&K, &V) -> I + Send + Sync>;

struct Deduplicate<K, V, I> {
    store: String,
    id_of: IdOf<K, V, I>,
    window_ms: i64,
}

impl<K: Data, V: Data, I: Data + std::fmt::Debug> Processor<K, V, K, V> for Deduplicate<K, V, I> {
    fn process(
        &mut self,
        record: Record<K, V>,
        ctx: &mut ProcessorContext<'_, K, V>,
    ) -> Result<(), ProcessingError> {
        let id = (self.id_of)(&record.key, &record.value);
        let here = match ctx.record_metadata() {
            Some(m) => FirstSeen {
                topic: m.topic.to_string(),
                partition: m.partition,
                offset: m.offset,
                timestamp: Some(record.timestamp),
            },
            None => FirstSeen {
                topic: String::new(),
                partition: ctx.partition(),
                offset: -1,
                timestamp: Some(record.timestamp),
            },
        };
        let mut seen = ctx.kv_store::<I, FirstSeen>(&self.store)?;
        let first = match seen.get(&id)? {
            None => true,
            // The first occurrence itself, redelivered after a crash.
            Some(at)
                if at.offset >= 0
                    && (&at.topic, at.partition, at.offset)
                        == (&here.topic, here.partition, here.offset) =>
            {
                true
            }
            // Seen long enough ago that the window has passed: a new first occurrence.
            Some(at) => at
                .timestamp
                .is_some_and(|ts| record.timestamp.saturating_sub(ts) > self.window_ms),
        };
        if first {
            seen.put(&id, &here)?;
            ctx.forward(record);
        } else {
            ctx.count_skipped();
            tracing::debug!(node = ctx.node_name(), ?id, "duplicate record dropped");
        }
        Ok(())
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    /// Passes the first record of each id (`id_of(key, value)`) and drops the records with
    /// an id already seen within `window` of the first one's timestamp (counted as
    /// skipped). Ids are kept in the store `name` (changelog
    /// `<application>-<name>-changelog`), each for `window` of wall-clock time after it
    /// was written; `id` serializes them. Every record of an id must reach the same task:
    /// key the stream by the id (or by something the id depends on) first, repartitioning
    /// if needed, as with any stateful operator.
    ///
    /// A record processed again after a crash (from the last committed offset) passes
    /// again: the store remembers where the id was first seen.
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic};
    /// # use engine::serde::Serdes;
    /// # use std::time::Duration;
    /// # let b = TopologyBuilder::new("app");
    /// # let payments = Topic::new("payments", Serdes::string(), Serdes::string());
    /// let once = b.stream(&payments).deduplicate(
    ///     "payment-ids",
    ///     |payment_id: &String, _v: &String| payment_id.clone(),
    ///     Serdes::string(),
    ///     Duration::from_secs(24 * 3600),
    /// );
    /// # once.for_each(|_, _| {});
    /// # b.build().unwrap();
    /// ```
    pub fn deduplicate<I: Data + std::fmt::Debug>(
        &self,
        name: &str,
        id_of: impl Fn(&K, &V) -> I + Send + Sync + 'static,
        id: impl Serde<I>,
        window: Duration,
    ) -> KStream<K, V> {
        add_store(
            &self.state,
            StoreBuilder::persistent(name, id, Serdes::json::<FirstSeen>()).with_ttl(window),
        );
        let id_of: IdOf<K, V, I> = Arc::new(id_of);
        let store = name.to_string();
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        self.attach_with_stores(name, "deduplicate", vec![store.clone()], move || {
            Deduplicate {
                store: store.clone(),
                id_of: id_of.clone(),
                window_ms,
            }
        })
    }
}
