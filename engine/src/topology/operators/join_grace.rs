//! `join_table_with_grace`: a stream-table join in which a stream record whose key the
//! table does not have yet waits for it, up to a grace period, instead of being dropped.
//!
//! For streams whose records can arrive before the table entry they belong to (a
//! result before the ticket that announced it, a payment before its order): records
//! with a match join at once, as in [`KStream::join_table`]; the others wait in a store
//! keyed like the table (`<name>-waiting`, with a changelog) and are joined, in arrival
//! order and with their own timestamps, when the table gets their key. A record that
//! waited longer than the grace period (wall-clock, the store's TTL) is dropped.
//!
//! Kafka Streams' grace period on a stream-table join (KIP-923) is a different
//! mechanism for the same problem: it delays every stream record by the grace period
//! and joins it against a versioned table as of its timestamp. Here only records
//! without a match wait, and they join with the value that arrives.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::record::Record;
use crate::serde::{Serde, SerdeError, SerdeInfo, Written};
use crate::topology::builder::{Data, KStream, StoreBuilder, add_store};
use crate::topology::error::ProcessingError;
use crate::topology::processor::{Processor, ProcessorContext};

use super::branch::pass_through;
use super::table::KTable;

type Joiner<V, VT, VR> = Arc<dyn Fn(V, &VT) -> VR + Send + Sync>;

/// Records of one key waiting for the table: `(timestamp, value)` in arrival order.
type Waiting<V> = Vec<(i64, V)>;

/// The serdes of the waiting records and how long they may wait
/// ([`KStream::join_table_with_grace`]).
pub struct Joined<K, V> {
    key: Arc<dyn Serde<K>>,
    value: Arc<dyn Serde<V>>,
    grace: Duration,
}

impl<K: 'static, V: 'static> Joined<K, V> {
    /// Waiting records are stored with these serdes; they wait up to a day unless
    /// [`Joined::grace`] says otherwise.
    pub fn with(key: impl Serde<K>, value: impl Serde<V>) -> Self {
        Joined {
            key: Arc::new(key),
            value: Arc::new(value),
            grace: Duration::from_secs(24 * 3600),
        }
    }

    /// How long a record may wait for its key in the table.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
}

/// Stream side: joins with the table's current value, or waits.
struct Probe<K, V, VT, VR> {
    table: String,
    waiting: String,
    joiner: Joiner<V, VT, VR>,
    _types: PhantomData<fn(K)>,
}

impl<K: Data, V: Data, VT: Data, VR: Data> Processor<K, V, K, VR> for Probe<K, V, VT, VR> {
    fn process(
        &mut self,
        record: Record<K, V>,
        ctx: &mut ProcessorContext<'_, K, VR>,
    ) -> Result<(), ProcessingError> {
        let current = ctx.kv_store::<K, VT>(&self.table)?.get(&record.key)?;
        match current {
            Some(t) => {
                let Record {
                    key,
                    value,
                    timestamp,
                    headers,
                } = record;
                let value = (self.joiner)(value, &t);
                ctx.forward(Record {
                    key,
                    value,
                    timestamp,
                    headers,
                });
            }
            None => {
                let mut waiting = ctx.kv_store::<K, Waiting<V>>(&self.waiting)?;
                let mut list = waiting.get(&record.key)?.unwrap_or_default();
                list.push((record.timestamp, record.value));
                waiting.put(&record.key, &list)?;
            }
        }
        Ok(())
    }
}

/// Table side: when the table gets a key, joins the records that waited for it.
struct Release<K, V, VT, VR> {
    waiting: String,
    joiner: Joiner<V, VT, VR>,
    _types: PhantomData<fn(K)>,
}

impl<K: Data, V: Data, VT: Data, VR: Data> Processor<K, VT, K, VR> for Release<K, V, VT, VR> {
    fn process(
        &mut self,
        record: Record<K, VT>,
        ctx: &mut ProcessorContext<'_, K, VR>,
    ) -> Result<(), ProcessingError> {
        let released = {
            let mut waiting = ctx.kv_store::<K, Waiting<V>>(&self.waiting)?;
            let list = waiting.get(&record.key)?;
            if list.is_some() {
                waiting.delete(&record.key)?;
            }
            list.unwrap_or_default()
        };
        for (timestamp, value) in released {
            let joined = (self.joiner)(value, &record.value);
            ctx.forward(Record {
                key: record.key.clone(),
                value: joined,
                timestamp,
                headers: record.headers.clone(),
            });
        }
        Ok(())
    }
}

impl<K: Data, V: Data> KStream<K, V> {
    /// Joins each record (by value: `joiner` may move it into the result) with the
    /// table's value for its key; a record whose key the
    /// table lacks waits for it up to `joined`'s grace period (see the module's
    /// documentation). The nodes are `<name>` (the joined stream), `<name>-stream` and
    /// `<name>-table`; the waiting records are in the store `<name>-waiting`. The
    /// stream and the table must be co-partitioned.
    ///
    /// ```
    /// # use engine::topology::{Joined, TopologyBuilder, Topic};
    /// # use engine::serde::Serdes;
    /// # use std::time::Duration;
    /// let b = TopologyBuilder::new("payments");
    /// let orders = b.table("orders", &Topic::new("orders", Serdes::string(), Serdes::string()), "orders-store");
    /// b.stream(&Topic::new("payments", Serdes::string(), Serdes::i64()))
    ///     .join_table_with_grace(
    ///         "paid-orders",
    ///         &orders,
    ///         |amount: i64, order: &String| format!("{order}: {amount}"),
    ///         Joined::with(Serdes::string(), Serdes::i64()).grace(Duration::from_secs(3600)),
    ///     )
    ///     .to(&Topic::new("paid", Serdes::string(), Serdes::string()));
    /// assert!(b.build().is_ok());
    /// ```
    pub fn join_table_with_grace<VT: Data, VR: Data>(
        &self,
        name: &str,
        table: &KTable<K, VT>,
        joiner: impl Fn(V, &VT) -> VR + Send + Sync + 'static,
        joined: Joined<K, V>,
    ) -> KStream<K, VR> {
        let waiting = format!("{name}-waiting");
        add_store(
            &self.state,
            StoreBuilder::persistent(
                &waiting,
                joined.key,
                WaitingSerde {
                    value: joined.value,
                },
            )
            .with_ttl(joined.grace),
        );
        let joiner: Joiner<V, VT, VR> = Arc::new(joiner);
        let table_store = table.store_name().to_string();
        let (probe_joiner, probe_waiting) = (joiner.clone(), waiting.clone());
        let probed = self.attach_with_stores(
            &format!("{name}-stream"),
            "join_table_with_grace",
            vec![table_store.clone(), waiting.clone()],
            move || Probe {
                table: table_store.clone(),
                waiting: probe_waiting.clone(),
                joiner: probe_joiner.clone(),
                _types: PhantomData,
            },
        );
        let released: KStream<K, VR> = table.updates().attach_with_stores(
            &format!("{name}-table"),
            "join_table_with_grace",
            vec![waiting.clone()],
            move || Release {
                waiting: waiting.clone(),
                joiner: joiner.clone(),
                _types: PhantomData,
            },
        );
        self.state.borrow_mut().copartitioned.push((
            name.to_string(),
            vec![self.node.clone(), table.updates().node.clone()],
        ));
        pass_through(
            &probed,
            name,
            "merge",
            vec![probed.node.clone(), released.node.clone()],
        )
    }
}

/// Stores the waiting records of a key: a count, then per record its timestamp and its
/// value as `value` serializes it (length-prefixed; `u32::MAX` for a null).
struct WaitingSerde<V> {
    value: Arc<dyn Serde<V>>,
}

impl<V: 'static> Serde<Waiting<V>> for WaitingSerde<V> {
    fn serialize(
        &self,
        topic: &str,
        list: &Waiting<V>,
        out: &mut Vec<u8>,
    ) -> crate::serde::Result<Written> {
        out.extend_from_slice(&u32::try_from(list.len()).unwrap_or(u32::MAX).to_be_bytes());
        for (timestamp, value) in list {
            out.extend_from_slice(&timestamp.to_be_bytes());
            let mut bytes = Vec::new();
            match self.value.serialize(topic, value, &mut bytes)? {
                Written::Bytes => {
                    let len =
                        u32::try_from(bytes.len()).map_err(|_| SerdeError::Unserializable {
                            field: None,
                            reason: "a waiting record of 4 GiB or more".into(),
                        })?;
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(&bytes);
                }
                Written::Null => out.extend_from_slice(&u32::MAX.to_be_bytes()),
            }
        }
        Ok(Written::Bytes)
    }

    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> crate::serde::Result<Waiting<V>> {
        let mut input = data.ok_or(SerdeError::UnexpectedNull)?;
        let count = u32::from_be_bytes(take::<4>(&mut input)?);
        let mut list = Vec::with_capacity(count.min(1024) as usize);
        for _ in 0..count {
            let timestamp = i64::from_be_bytes(take::<8>(&mut input)?);
            let len = u32::from_be_bytes(take::<4>(&mut input)?);
            let bytes = if len == u32::MAX {
                None
            } else {
                Some(take_slice(&mut input, len as usize)?)
            };
            list.push((timestamp, self.value.deserialize(topic, bytes)?));
        }
        Ok(list)
    }

    fn info(&self) -> SerdeInfo {
        SerdeInfo {
            format: format!("waiting<{}>", self.value.info().format),
            type_name: std::any::type_name::<Waiting<V>>(),
        }
    }
}

fn truncated() -> SerdeError {
    SerdeError::InvalidData {
        field: None,
        reason: "a truncated list of waiting records".into(),
    }
}

/// The next `n` bytes of `input`, which moves past them.
fn take_slice<'a>(input: &mut &'a [u8], n: usize) -> crate::serde::Result<&'a [u8]> {
    if input.len() < n {
        return Err(truncated());
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

/// The next `N` bytes of `input` as an array.
fn take<const N: usize>(input: &mut &[u8]) -> crate::serde::Result<[u8; N]> {
    take_slice(input, N)?.try_into().map_err(|_| truncated())
}
