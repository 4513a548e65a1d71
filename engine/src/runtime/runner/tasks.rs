//! Task lifecycle: the tasks of assigned partitions are opened (their stores restored
//! from their changelogs, off the processing loop), those of revoked partitions closed
//! (their checkpoints written when their offsets are committed).
//!
//! The consumer's rebalance callbacks (`callbacks`) only queue what changed; the loop
//! applies it here, between records. A task is opened with owned parts of the runner
//! ([`SharedForTasks`]) so its restore can run as a task of its own while the other
//! tasks go on processing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;

use crate::metrics::TopologyMetrics;
use crate::record::Timestamp;
use crate::runtime::{RunSettings, RuntimeError, restore};
use crate::topology::{Task, Topology};

use super::callbacks::RebalanceEvent;
use super::{Loop, lock, now_ms};

/// A task being opened (its stores restored) off the processing loop.
pub(super) struct Restoring {
    id: u64,
    cancel: Arc<std::sync::atomic::AtomicBool>,
    /// Taken by [`Loop::join`].
    handle: Option<tokio::task::JoinHandle<Result<Option<Task>, RuntimeError>>>,
}

impl Drop for Restoring {
    /// A runner dropped without closing (its future cancelled) stops its restores too,
    /// so they release the stores.
    fn drop(&mut self) {
        self.cancel
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

/// The parts of an instance a task is opened with, owned so a restore can run on its
/// own (a spawned future).
#[derive(Clone)]
pub(super) struct SharedForTasks {
    pub(super) topology: Topology,
    pub(super) settings: Arc<RunSettings>,
    pub(super) metrics: Arc<TopologyMetrics>,
    pub(super) globals: Arc<Vec<crate::topology::TaskStore>>,
    pub(super) partition_counts: Arc<HashMap<String, i32>>,
    pub(super) cache: Arc<crate::state::CacheBudget>,
}

impl Loop<'_> {
    /// Drops the tasks of revoked partitions (after writing their checkpoints) and opens
    /// the tasks of assigned ones, restoring their stores, so state is queryable and
    /// punctuations run before the first record arrives.
    pub(super) async fn apply_rebalances(&mut self) -> Result<(), RuntimeError> {
        let events = {
            let context = self.consumer.context();
            let mut queued = lock(&context.events);
            // Cleared under the lock, so an event pushed meanwhile sets it again after.
            context
                .rebalanced
                .store(false, std::sync::atomic::Ordering::Release);
            std::mem::take(&mut *queued)
        };
        let rebalanced = !events.is_empty();
        if rebalanced {
            self.slots.clear();
            self.metrics.assigned_partitions.store(
                self.assignment().len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        for event in events {
            match event {
                RebalanceEvent::Revoked(partitions) => {
                    let uncommitted =
                        std::mem::take(&mut *lock(&self.consumer.context().uncommitted_revoked));
                    let mut closing = Vec::new();
                    let mut cancelled = Vec::new();
                    for (topic, partition) in partitions {
                        self.task_paused.remove(&partition);
                        if let Some(task) = self.tasks.remove(&partition) {
                            let committed = !uncommitted.contains(&(topic, partition));
                            closing.push((task, committed));
                        } else if let Some(restoring) = self.restoring.remove(&partition) {
                            restoring
                                .cancel
                                .store(true, std::sync::atomic::Ordering::Relaxed);
                            cancelled.push((partition, restoring));
                        }
                    }
                    // Their stores must be closed before the partitions can come back.
                    for (partition, restoring) in cancelled {
                        match Self::join(self.topology, restoring).await {
                            // Restored before the cancel: nothing processed, nothing to
                            // commit; its checkpoint saves the next restore.
                            Ok(Some(task)) => closing.push((task, true)),
                            Ok(None) => {}
                            Err(error) => {
                                tracing::warn!(application = %self.topology.application_id(), partition, %error, "the restore of a revoked task failed")
                            }
                        }
                    }
                    // Checkpoints ask the broker for the changelogs' ends.
                    crate::executor::block_off_executor(|| {
                        for (task, committed) in closing {
                            self.close_task(task, committed);
                        }
                    });
                }
                RebalanceEvent::Assigned(partitions) => {
                    for (_, partition) in partitions {
                        if let Some(task) = self.tasks.remove(&partition) {
                            self.install(partition, task);
                        } else if self.restoring.contains_key(&partition) {
                        } else if self.consumer.context().pause_assigned {
                            // Restores run off the loop: the tasks already running go on,
                            // and the consumer keeps polling (and stays in the group).
                            self.start_restore(partition);
                        } else {
                            // Nothing to restore: ready at once.
                            self.open_now(partition).await?;
                        }
                    }
                }
            }
        }
        let context = self.consumer.context();
        if context
            .aborted
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            // A revocation aborted the transaction: the tasks kept lost their work since
            // the last commit too.
            if context
                .producer_failed
                .load(std::sync::atomic::Ordering::Acquire)
            {
                self.replace_producer().await?;
            }
            self.rewind().await?;
        }
        if rebalanced && let Some(announcer) = self.announcer {
            // After the tasks opened: a query sent here now finds (or waits for) the store.
            let held = self.assignment().into_iter().map(|(_, p)| p).collect();
            tokio::spawn(announcer.announce(held));
        }
        Ok(())
    }

    /// Starts opening the task of `partition` (restoring its stores) off the loop; its
    /// partitions stay paused until [`Self::finish_restore`] installs it.
    pub(super) fn start_restore(&mut self, partition: i32) {
        let id = self.next_restore;
        self.next_restore += 1;
        let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let opening = open_task(
            self.shared.clone(),
            partition,
            now_ms(),
            self.consumer.context().start_offsets(partition),
            cancel.clone(),
        );
        let done = self.restored_tx.clone();
        let handle = tokio::spawn(async move {
            let opened = opening.await;
            let _ = done.send((partition, id));
            opened
        });
        self.restoring.insert(
            partition,
            Restoring {
                id,
                cancel,
                handle: Some(handle),
            },
        );
    }

    /// Installs the task whose restore `id` says it is done (unless it was revoked and
    /// its partition taken on by a later restore meanwhile).
    pub(super) async fn finish_restore(
        &mut self,
        partition: i32,
        id: u64,
    ) -> Result<(), RuntimeError> {
        if self.restoring.get(&partition).is_none_or(|r| r.id != id) {
            return Ok(());
        }
        if let Some(restoring) = self.restoring.remove(&partition)
            && let Some(task) = Self::join(self.topology, restoring).await?
        {
            self.install(partition, task);
        }
        Ok(())
    }

    /// Opens the task of `partition` before going on: a record of it arrived while it
    /// was restoring (fetched before the pause), or it has nothing to restore.
    pub(super) async fn open_now(&mut self, partition: i32) -> Result<(), RuntimeError> {
        let task = match self.restoring.remove(&partition) {
            Some(restoring) => Self::join(self.topology, restoring).await?,
            None => {
                open_task(
                    self.shared.clone(),
                    partition,
                    now_ms(),
                    self.consumer.context().start_offsets(partition),
                    Arc::new(std::sync::atomic::AtomicBool::new(false)),
                )
                .await?
            }
        };
        if let Some(task) = task {
            self.install(partition, task);
        }
        Ok(())
    }

    /// Waits for a restore to end. (Not a `&self` method: `Loop` is not `Sync`, and a
    /// shared borrow of it held across the wait would make the runner's future `!Send`.)
    async fn join(
        topology: &Topology,
        mut restoring: Restoring,
    ) -> Result<Option<Task>, RuntimeError> {
        let Some(handle) = restoring.handle.take() else {
            return Ok(None);
        };
        handle.await.map_err(|e| RuntimeError::Crashed {
            application: topology.application_id().to_string(),
            reason: e.to_string(),
        })?
    }

    /// A ready task takes its records: its partitions resume, unless the task itself
    /// holds them.
    fn install(&mut self, partition: i32, task: Task) {
        self.tasks.insert(partition, task);
        if !self.task_paused.contains(&partition) {
            self.set_partition_paused(false, partition);
        }
    }

    /// Stops the restores still running and waits for them; the tasks whose restore
    /// finished meanwhile join the others (to be closed with them).
    pub(super) async fn stop_restores(&mut self) {
        let restoring: Vec<_> = self.restoring.drain().collect();
        for (_, r) in &restoring {
            r.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        for (partition, r) in restoring {
            match Self::join(self.topology, r).await {
                Ok(Some(task)) => {
                    self.tasks.insert(partition, task);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(application = %self.topology.application_id(), partition, %error, "a restore failed while stopping")
                }
            }
        }
    }

    /// Withdraws a closing task's stores from queries, then, if its offsets are
    /// committed, flushes them and writes their checkpoints (its outputs are already
    /// acknowledged: revocation and shutdown flush the producer first). Blocks on the
    /// broker: call it off the executor.
    pub(super) fn close_task(&self, task: Task, committed: bool) {
        let state = &self.settings.state;
        let app = self.topology.application_id();
        for store in task.stores() {
            if let Some(ops) = &self.settings.ops {
                ops.remove_store(&store.spec().name, task.partition());
            }
            if !committed {
                continue;
            }
            let Some(topic) = store.changelog_topic() else {
                continue;
            };
            let Some(path) = restore::checkpoint_path(state, app, task.partition(), store.spec())
            else {
                continue;
            };
            let end = restore::changelog_end(
                &self.settings.client,
                topic,
                task.partition(),
                self.settings.startup_timeout,
            );
            let written = store
                .bytes()
                .flush()
                .map_err(|e| e.to_string())
                .and_then(|()| end.map_err(|e| e.to_string()))
                .and_then(|end| {
                    restore::write_checkpoint(&path, end, task.epoch()).map_err(|e| e.to_string())
                });
            if let Err(error) = written {
                tracing::warn!(application = %app, store = %store.spec().name, %error, "no checkpoint written: the next start restores the whole changelog");
            }
        }
    }
}

/// How long a task waits for the stores of its previous incarnation in this process to
/// be released (a task closed and reopened at once: an abort's rewind, a partition
/// revoked and assigned back) before its open fails.
const STORE_RELEASE_PATIENCE: Duration = Duration::from_secs(10);

/// Calls `open` until it succeeds, fails otherwise than with a store this process still
/// holds, or `patience` has passed.
async fn when_released<T>(
    mut open: impl FnMut() -> Result<T, crate::state::StoreError>,
    patience: Duration,
) -> Result<T, crate::state::StoreError> {
    let deadline = Instant::now() + patience;
    loop {
        match open() {
            Err(e) if e.held_in_this_process() && Instant::now() < deadline => {
                tracing::debug!(error = %e, "store still held by this process; waiting for its release");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            opened => return opened,
        }
    }
}

/// Opens a task's stores, restores them from their changelogs, and creates the task;
/// `None` if `cancel` was set meanwhile (the stores are closed again by then).
async fn open_task(
    shared: SharedForTasks,
    partition: i32,
    now: Timestamp,
    committed: HashMap<String, i64>,
    cancel: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Option<Task>, RuntimeError> {
    let SharedForTasks {
        topology,
        settings,
        metrics,
        globals,
        partition_counts,
        cache,
    } = shared;
    let state = &settings.state;
    let stores = when_released(
        || Task::open_stores(&topology, partition, state, &cache),
        STORE_RELEASE_PATIENCE,
    )
    .await
    .map_err(|e| RuntimeError::Client {
        what: "store open",
        reason: e.to_string(),
    })?;
    let app = topology.application_id().to_string();
    let publish = |store: &crate::topology::TaskStore, restoring: bool| {
        if let Some(ops) = &settings.ops {
            ops.put_store(
                &store.spec().name,
                partition,
                crate::ops::QueryableStore {
                    application: topology.application_id().to_string(),
                    store: store.bytes().clone(),
                    query: store.query().clone(),
                    restoring,
                },
            );
        }
    };
    // Until the task is made, an early return (cancelled, failed) withdraws the stores
    // from queries: published, a store would stay open (and locked) in this process.
    let mut published = Published {
        ops: settings.ops.as_deref(),
        stores: stores.iter().map(|s| s.spec().name.clone()).collect(),
        partition,
        armed: true,
    };
    // The stores of a task restore in parallel, each from its own changelog.
    let mut restoring = Vec::new();
    for store in &stores {
        publish(store, true);
        let Some(topic) = store.changelog_topic() else {
            publish(store, false);
            continue;
        };
        let checkpoint = restore::checkpoint_path(state, &app, partition, store.spec());
        let (client, bytes, spec, topic, committed, metrics, cancel) = (
            settings.client.clone(),
            store.bytes().clone(),
            store.spec().clone(),
            topic.to_string(),
            committed.clone(),
            metrics.clone(),
            cancel.clone(),
        );
        let timeout = settings.startup_timeout;
        let restore = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            restore::restore(
                &client,
                &bytes,
                &spec,
                &topic,
                partition,
                checkpoint.as_deref(),
                &committed,
                timeout,
                &metrics.restored_records,
                &cancel,
            )
            .map(|restored| restored.map(|r| (r, started.elapsed())))
        });
        restoring.push((store, restore));
    }
    let mut restored_stores = Vec::new();
    let mut results = Vec::new();
    let mut outcome = Ok(());
    // Every restore is awaited, even after one failed or was cancelled: none may still
    // write to a store once this returns.
    for (store, restore) in restoring {
        let restored = restore
            .await
            .map_err(|e| RuntimeError::Crashed {
                application: app.clone(),
                reason: e.to_string(),
            })
            .and_then(|r| r);
        match restored {
            Ok(Some((restored, elapsed))) => {
                tracing::info!(application = %app, store = %restored.store, partition, records = restored.records, held = restored.held.len(), from_checkpoint = restored.from_checkpoint, elapsed_ms = elapsed.as_millis() as u64, "store restored");
                restored_stores.push(store);
                results.push(restored);
            }
            Ok(None) => {}
            Err(e) => outcome = Err(e),
        }
    }
    outcome?;
    if cancel.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::info!(application = %app, partition, "restore stopped: the task was revoked or the instance is stopping");
        return Ok(None);
    }
    // Every store now holds the inputs before the committed offset; of the later
    // ones, apply those every changelog has completely, and process the rest again.
    let cut = restore::cut(&results, &committed, &topology.source_topics());
    let unapplied = restore::unapplied(&results, &cut);
    let epoch = results.iter().map(|r| r.epoch).max().unwrap_or(0) + 1;
    let fenced: u64 = results.iter().map(|r| r.fenced).sum();
    if fenced > 0 {
        tracing::warn!(application = %app, partition, records = fenced, "changelog records written by an earlier owner after a later one took the task over (a zombie) are left out");
    }
    for (store, restored) in restored_stores.into_iter().zip(results) {
        let (complete, dropped): (Vec<_>, Vec<_>) = restored
            .held
            .into_iter()
            .partition(|(inputs, _)| restore::within(inputs, &cut));
        let writes: Vec<_> = complete.into_iter().map(|(_, w)| w).collect();
        let applied = restore::apply(store.bytes(), &writes)?;
        TopologyMetrics::add(&metrics.restored_records, applied);
        if !dropped.is_empty() {
            tracing::info!(application = %app, store = %restored.store, partition, records = dropped.len(), "changelog records of inputs not complete in every store (the previous owner stopped mid-way) are left out; those inputs are processed again");
        }
        publish(store, false);
    }
    let mut task = Task::new(
        &topology,
        partition,
        stores,
        globals,
        partition_counts,
        now,
        metrics.clone(),
    )
    .map_err(RuntimeError::Record)?;
    task.set_applied(cut, unapplied);
    task.set_epoch(epoch);
    task.set_exactly_once(settings.processing_guarantee.exactly_once());
    published.armed = false;
    Ok(Some(task))
}

/// The stores a task being opened published for queries; withdrawn when dropped armed.
struct Published<'a> {
    ops: Option<&'a crate::ops::OpsState>,
    stores: Vec<String>,
    partition: i32,
    armed: bool,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        if let (true, Some(ops)) = (self.armed, self.ops) {
            for store in &self.stores {
                ops.remove_store(store, self.partition);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::when_released;
    use crate::state::StoreError;
    use std::time::Duration;

    /// A task whose restore was cancelled (revoked while restoring) must leave nothing
    /// open: not even the stores it published for queries, or the next open of the
    /// partition in this process finds them locked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_open_withdraws_its_stores_and_the_partition_opens_again() {
        use crate::serde::Serdes;
        use crate::topology::{Grouped, Topic, TopologyBuilder};
        let broker = crate::kafka::EmbeddedBroker::start(1).unwrap();
        broker.create_topic("in", 1).unwrap();
        broker.create_topic("app-counts-changelog", 1).unwrap();
        let b = TopologyBuilder::new("app");
        b.stream(&Topic::new("in", Serdes::string(), Serdes::string()))
            .group_by_key(Grouped::with(Serdes::string(), Serdes::string()))
            .count("count", "counts")
            .to_stream()
            .for_each(|_k, _v| {});
        let topology = b.build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut settings = super::RunSettings::new(broker.bootstrap_servers());
        settings.state = crate::state::RocksSettings::new(dir.path(), 1 << 20, 1 << 20);
        let ops = std::sync::Arc::new(crate::ops::OpsState::default());
        settings.ops = Some(ops.clone());
        let shared = super::SharedForTasks {
            topology: topology.clone(),
            settings: std::sync::Arc::new(settings),
            metrics: Default::default(),
            globals: Default::default(),
            partition_counts: std::sync::Arc::new(
                [
                    ("in".to_string(), 1),
                    ("app-counts-changelog".to_string(), 1),
                ]
                .into(),
            ),
            cache: crate::state::CacheBudget::new(1 << 20),
        };
        let open = |cancelled: bool| {
            super::open_task(
                shared.clone(),
                0,
                0,
                Default::default(),
                std::sync::Arc::new(std::sync::atomic::AtomicBool::new(cancelled)),
            )
        };
        assert!(open(true).await.unwrap().is_none(), "cancelled");
        assert!(
            !ops.holds_store("counts", 0),
            "a cancelled task's stores are withdrawn from queries"
        );
        let task = open(false).await.expect("the partition opens again");
        assert!(task.is_some());
    }

    #[tokio::test]
    async fn a_store_still_held_by_this_process_is_opened_once_released() {
        let held = || {
            StoreError::Rocks {
            store: "s".into(),
            path: "/state/app/0/s".into(),
            message: "IO error: lock hold by current process, acquire time 1 acquiring thread 2: /state/app/0/s/LOCK: No locks available".into(),
        }
        };
        let mut attempts = 0;
        let opened = when_released(
            || {
                attempts += 1;
                if attempts < 3 {
                    Err(held())
                } else {
                    Ok(attempts)
                }
            },
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(opened.unwrap(), 3, "retried until released");
        let never = when_released(|| Err::<(), _>(held()), Duration::from_millis(100)).await;
        assert!(
            never.unwrap_err().held_in_this_process(),
            "gives up after its patience"
        );
        let mut calls = 0;
        let other = when_released(
            || {
                calls += 1;
                Err::<(), _>(StoreError::Rocks {
                    store: "s".into(),
                    path: "/state".into(),
                    message: "Corruption".into(),
                })
            },
            Duration::from_secs(5),
        )
        .await;
        assert!(other.is_err() && calls == 1, "other errors are not retried");
    }
}
