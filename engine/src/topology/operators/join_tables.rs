//! Table-table joins: `KTable::join`, `left_join` and `outer_join` of two tables with the
//! same key type, producing a table (Kafka Streams' table-table join semantics).
//!
//! Tables that can lose keys hold `Option<V>` values: a `None` update (a tombstone, read
//! from a topic with [`Serdes::nullable`](crate::serde::Serdes::nullable)) deletes the key
//! from the table's store. An update on either side looks up the other side's current value
//! in its store and recomputes the joined value for the key:
//!
//! - inner: joined while both sides have a value;
//! - left: joined while the left side has one (the right may be `None`);
//! - outer: joined while either side has one.
//!
//! When the key no longer joins, the result table gets a tombstone (`None`), but only if it
//! held a value for the key: a deletion of something that never joined emits nothing. The
//! joined record carries the timestamp of the update that caused it.
//!
//! Both tables must be co-partitioned (same key, same partition count): each update must
//! meet the other table's entries for its key in the same task. The runtime refuses to
//! start when the source topics of the two tables have different partition counts.

use std::marker::PhantomData;
use std::sync::Arc;

use crate::record::Record;
use crate::topology::builder::{Data, KStream, StoreBuilder, add_store};
use crate::topology::error::ProcessingError;
use crate::topology::processor::{Processor, ProcessorContext};

use super::branch::pass_through;
use super::table::KTable;

/// Computes the joined value from the two sides' current values, `None` when the key does
/// not join; arguments in this side's order (this side first).
type Combine<VMe, VOther, VR> =
    Arc<dyn Fn(Option<&VMe>, Option<&VOther>) -> Option<VR> + Send + Sync>;

/// Handles one side's updates: looks up the other side and updates the result table.
struct TableJoinSide<K, VMe, VOther, VR> {
    other_store: String,
    result_store: String,
    combine: Combine<VMe, VOther, VR>,
    _types: PhantomData<fn(K)>,
}

impl<K: Data, VMe: Data, VOther: Data, VR: Data> Processor<K, Option<VMe>, K, Option<VR>>
    for TableJoinSide<K, VMe, VOther, VR>
{
    fn process(
        &mut self,
        record: Record<K, Option<VMe>>,
        ctx: &mut ProcessorContext<'_, K, Option<VR>>,
    ) -> Result<(), ProcessingError> {
        let store_error = |e: crate::state::StoreError| ProcessingError::new(e.to_string());
        let other = ctx
            .kv_store::<K, Option<VOther>>(&self.other_store)
            .and_then(|s| s.get(&record.key))
            .map_err(store_error)?
            .flatten();
        let joined = (self.combine)(record.value.as_ref(), other.as_ref());
        {
            let mut result = ctx
                .kv_store::<K, Option<VR>>(&self.result_store)
                .map_err(store_error)?;
            match &joined {
                Some(value) => result
                    .put(&record.key, &Some(value.clone()))
                    .map_err(store_error)?,
                // Nothing joined before either: the result table has nothing to delete.
                None if result.get(&record.key).map_err(store_error)?.is_none() => {
                    return Ok(());
                }
                None => result.delete(&record.key).map_err(store_error)?,
            }
        }
        ctx.forward(record.with_value(joined));
        Ok(())
    }
}

impl<K: Data, V: Data> KTable<K, Option<V>> {
    /// Inner join with `other`: the result has a value for a key while both tables do,
    /// `joiner(this, other)`; when either side deletes the key, the result gets a
    /// tombstone. `store` materializes the result (its value serde must write `None` as
    /// null, e.g. `Serdes::nullable`).
    ///
    /// | this update | other update | result update |
    /// |---|---|---|
    /// | `A` | | |
    /// | | `b` | `joiner(A, b)` |
    /// | `C` | | `joiner(C, b)` |
    /// | | `None` | `None` |
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic, StoreBuilder};
    /// # use engine::serde::Serdes;
    /// let b = TopologyBuilder::new("profiles");
    /// let nullable = |t: &str| Topic::new(t, Serdes::string(), Serdes::nullable(Serdes::string()));
    /// let names = b.table("names", &nullable("names"), "names-store");
    /// let emails = b.table("emails", &nullable("emails"), "emails-store");
    /// names
    ///     .join(
    ///         "profiles",
    ///         &emails,
    ///         |name: &String, email: &String| format!("{name} <{email}>"),
    ///         StoreBuilder::persistent("profiles", Serdes::string(), Serdes::nullable(Serdes::string())),
    ///     )
    ///     .to_stream()
    ///     .to(&Topic::new("profiles", Serdes::string(), Serdes::nullable(Serdes::string())));
    /// assert!(b.build().is_ok());
    /// ```
    pub fn join<VO: Data, VR: Data>(
        &self,
        name: &str,
        other: &KTable<K, Option<VO>>,
        joiner: impl Fn(&V, &VO) -> VR + Send + Sync + 'static,
        store: StoreBuilder<K, Option<VR>>,
    ) -> KTable<K, Option<VR>> {
        let combine: Combine<V, VO, VR> = Arc::new(move |this, other| match (this, other) {
            (Some(t), Some(o)) => Some(joiner(t, o)),
            _ => None,
        });
        self.join_tables(name, "join_tables", other, combine, store)
    }

    /// Left join with `other`: the result has a value for a key while this table does,
    /// `joiner(this, other)` with `None` while `other` lacks the key; updates of `other`
    /// for keys this table lacks emit nothing.
    ///
    /// | this update | other update | result update |
    /// |---|---|---|
    /// | `A` | | `joiner(A, None)` |
    /// | | `b` | `joiner(A, b)` |
    /// | `None` | | `None` |
    /// | | `None` | |
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic, StoreBuilder};
    /// # use engine::serde::Serdes;
    /// let b = TopologyBuilder::new("orders");
    /// let nullable = |t: &str| Topic::new(t, Serdes::string(), Serdes::nullable(Serdes::string()));
    /// let orders = b.table("orders", &nullable("orders"), "orders-store");
    /// let shipments = b.table("shipments", &nullable("shipments"), "shipments-store");
    /// let status = orders.left_join(
    ///     "status",
    ///     &shipments,
    ///     |order: &String, shipment: Option<&String>| {
    ///         format!("{order}: {}", shipment.map_or("not shipped", |s| s.as_str()))
    ///     },
    ///     StoreBuilder::persistent("status", Serdes::string(), Serdes::nullable(Serdes::string())),
    /// );
    /// ```
    pub fn left_join<VO: Data, VR: Data>(
        &self,
        name: &str,
        other: &KTable<K, Option<VO>>,
        joiner: impl Fn(&V, Option<&VO>) -> VR + Send + Sync + 'static,
        store: StoreBuilder<K, Option<VR>>,
    ) -> KTable<K, Option<VR>> {
        let combine: Combine<V, VO, VR> =
            Arc::new(move |this, other| this.map(|t| joiner(t, other)));
        self.join_tables(name, "left_join_tables", other, combine, store)
    }

    /// Outer join with `other`: the result has a value for a key while either table does,
    /// `joiner(this, other)` with `None` for the side that lacks it.
    ///
    /// | this update | other update | result update |
    /// |---|---|---|
    /// | `A` | | `joiner(A, None)` |
    /// | | `b` | `joiner(A, b)` |
    /// | `None` | | `joiner(None, b)` |
    /// | | `None` | `None` |
    ///
    /// ```
    /// # use engine::topology::{TopologyBuilder, Topic, StoreBuilder};
    /// # use engine::serde::Serdes;
    /// let b = TopologyBuilder::new("inventory");
    /// let nullable = |t: &str| Topic::new(t, Serdes::string(), Serdes::nullable(Serdes::i64()));
    /// let store_a = b.table("a", &nullable("stock-a"), "stock-a-store");
    /// let store_b = b.table("b", &nullable("stock-b"), "stock-b-store");
    /// let total = store_a.outer_join(
    ///     "total",
    ///     &store_b,
    ///     |a: Option<&i64>, b: Option<&i64>| a.copied().unwrap_or(0) + b.copied().unwrap_or(0),
    ///     StoreBuilder::persistent("total", Serdes::string(), Serdes::nullable(Serdes::i64())),
    /// );
    /// ```
    pub fn outer_join<VO: Data, VR: Data>(
        &self,
        name: &str,
        other: &KTable<K, Option<VO>>,
        joiner: impl Fn(Option<&V>, Option<&VO>) -> VR + Send + Sync + 'static,
        store: StoreBuilder<K, Option<VR>>,
    ) -> KTable<K, Option<VR>> {
        let combine: Combine<V, VO, VR> = Arc::new(move |this, other| {
            (this.is_some() || other.is_some()).then(|| joiner(this, other))
        });
        self.join_tables(name, "outer_join_tables", other, combine, store)
    }

    /// Wires the two side processors (`<name>-this`, `<name>-other`) and the node `name`
    /// that merges their results.
    fn join_tables<VO: Data, VR: Data>(
        &self,
        name: &str,
        operator: &'static str,
        other: &KTable<K, Option<VO>>,
        combine: Combine<V, VO, VR>,
        store: StoreBuilder<K, Option<VR>>,
    ) -> KTable<K, Option<VR>> {
        let this_store = self.store_name().to_string();
        let other_store = other.store_name().to_string();
        let result_store = store.name().to_string();
        let updates = self.updates();
        add_store(&updates.state, store);

        let stores = vec![
            this_store.clone(),
            other_store.clone(),
            result_store.clone(),
        ];
        let this_side: KStream<K, Option<VR>> = {
            let (other_store, result_store, combine) =
                (other_store.clone(), result_store.clone(), combine.clone());
            updates.attach_with_stores(
                &format!("{name}-this"),
                operator,
                stores.clone(),
                move || TableJoinSide {
                    other_store: other_store.clone(),
                    result_store: result_store.clone(),
                    combine: combine.clone(),
                    _types: PhantomData,
                },
            )
        };
        let other_side: KStream<K, Option<VR>> = {
            let (this_store, result_store) = (this_store.clone(), result_store.clone());
            let swapped: Combine<VO, V, VR> = Arc::new(move |o, t| combine(t, o));
            other.updates().attach_with_stores(
                &format!("{name}-other"),
                operator,
                stores,
                move || TableJoinSide {
                    other_store: this_store.clone(),
                    result_store: result_store.clone(),
                    combine: swapped.clone(),
                    _types: PhantomData,
                },
            )
        };
        updates.state.borrow_mut().copartitioned.push((
            name.to_string(),
            vec![updates.node.clone(), other.updates().node.clone()],
        ));
        let merged = pass_through(
            &this_side,
            name,
            "merge",
            vec![this_side.node.clone(), other_side.node.clone()],
        );
        KTable::new(merged, &result_store)
    }
}
