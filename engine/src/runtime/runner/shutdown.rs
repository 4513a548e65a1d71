//! Stopping: drain the outputs, commit (or commit the last transaction), write the
//! stores' checkpoints and release the clients, all within `shutdown_timeout`.
//!
//! What cannot be finished in time is reported as [`RuntimeError::ShutdownIncomplete`]
//! (the records after the last committed offsets are processed again at the next start);
//! a store whose offsets were not committed gets no checkpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::Producer;

use crate::kafka::{CommitError, flush_promptly};
use crate::runtime::{RunSettings, RuntimeError, global, instances, transactions};
use crate::topology::Task;

use super::callbacks::ConsumeContext;
use super::commit::commit_bounded;
use super::{EngineProducer, Loop};

impl Loop<'_> {
    /// Flushes the record caches (after a clean stop), drains in-flight outputs, commits
    /// what is safe and writes the stores' checkpoints, all by `deadline`: three quarters
    /// of the time for the outputs, the rest (at least a second) for the commit. What
    /// could not be finished is logged and returned as [`RuntimeError::ShutdownIncomplete`];
    /// a store whose offsets were not committed gets no checkpoint.
    pub(super) async fn close(
        &mut self,
        flush: bool,
        deadline: Instant,
    ) -> Result<(), RuntimeError> {
        if self.transactional_id.is_some() {
            return self.close_transaction(flush, deadline).await;
        }
        let app = self.topology.application_id().to_string();
        self.stop_restores().await;
        let started = Instant::now();
        let outputs_deadline = started + deadline.saturating_duration_since(started) * 3 / 4;
        let mut result = Ok(());
        if flush && let Err(e) = self.flush_tasks().await {
            result = Err(e);
        }
        let mut unacknowledged = false;
        loop {
            if let Err(e) = self.handle_failures().await {
                result = Err(e);
                break;
            }
            self.send_ready_changelog().await;
            let producer = self.producer.clone();
            let _ = tokio::task::spawn_blocking(move || {
                flush_promptly(|t| producer.flush(t), Duration::from_millis(200))
            })
            .await;
            // Deferred records stay uncommitted: their processors stop with the tasks.
            if self.tracker.awaiting_acknowledgement() == 0
                && !self.tracker.has_failures()
                && self.tracker.queued_changelog() == 0
            {
                break;
            }
            if Instant::now() >= outputs_deadline {
                unacknowledged = true;
                tracing::warn!(application = %app, in_flight = self.tracker.in_flight(), "shutdown timeout: some outputs are unacknowledged; their offsets stay uncommitted and will be reprocessed");
                break;
            }
        }
        let commits = self.tracker.take_commits(|_, _| true);
        let committed = self.final_commit(&commits, deadline).await;
        match committed {
            Ok(()) if !unacknowledged => {
                if !commits.is_empty() {
                    tracing::info!(application = %app, ?commits, "final offsets committed");
                }
                let tasks: Vec<Task> = std::mem::take(&mut self.tasks).into_values().collect();
                crate::executor::block_off_executor(|| {
                    for task in tasks {
                        self.close_task(task, true);
                    }
                });
                result
            }
            committed => {
                let in_flight = self.tracker.in_flight();
                let uncommitted = if committed.is_err() {
                    commits
                } else {
                    Vec::new()
                };
                let unfinished = match committed {
                    Err(error) => format!("the final commit failed ({error})"),
                    Ok(()) => "outputs were still unacknowledged".to_string(),
                };
                tracing::error!(application = %app, %unfinished, ?uncommitted, in_flight, "shutdown incomplete: no checkpoint written; the records after the last committed offsets will be processed again");
                result.and(Err(RuntimeError::ShutdownIncomplete {
                    application: app,
                    unfinished,
                    uncommitted,
                    in_flight,
                }))
            }
        }
    }

    /// Commits `commits`, waiting at most until `deadline` (at least a second).
    ///
    /// Another instance leaving or joining at the same moment makes the group rebalance:
    /// the commit is refused while it does, or for carrying the generation before it.
    /// librdkafka rejoins under the new generation only once this consumer has served
    /// the rebalance (for a refused generation, a revocation of everything as lost), so
    /// between attempts the consumer is polled: its callbacks only log from now on, and
    /// the records it returns are dropped (they are after the offsets being committed).
    fn final_commit(
        &self,
        commits: &[(String, i32, i64)],
        deadline: Instant,
    ) -> impl Future<Output = Result<(), CommitError>> + Send + 'static {
        let (consumer, metrics, tracker, commits) = (
            self.consumer.clone(),
            self.metrics.clone(),
            self.tracker.clone(),
            commits.to_vec(),
        );
        let app = self.topology.application_id().to_string();
        consumer
            .context()
            .closing
            .store(true, std::sync::atomic::Ordering::Release);
        let deadline = Instant::now()
            + deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1));
        async move {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let (consumer_, metrics, tracker, to_commit) = (
                    consumer.clone(),
                    metrics.clone(),
                    tracker.clone(),
                    commits.clone(),
                );
                let committed = tokio::task::spawn_blocking(move || {
                    commit_bounded(&*consumer_, &to_commit, left, &metrics, &tracker)
                })
                .await
                .unwrap_or_else(|e| Err(CommitError::Refused(e.to_string())));
                match committed {
                    Err(error)
                        if error.group_rebalancing() && left > Duration::from_millis(100) =>
                    {
                        tracing::debug!(application = %app, %error, "final commit refused while the group rebalances: serving the rebalance, then committing again");
                        let served = tokio::time::Instant::now() + Duration::from_millis(100);
                        while tokio::time::timeout_at(served, consumer.recv())
                            .await
                            .is_ok()
                        {}
                    }
                    done => break done,
                }
            }
        }
    }

    /// [`Loop::close`] under exactly-once: the last transaction commits (after a clean
    /// stop) or aborts (after a failure); the stores get checkpoints only if it
    /// committed.
    async fn close_transaction(
        &mut self,
        flush: bool,
        deadline: Instant,
    ) -> Result<(), RuntimeError> {
        let app = self.topology.application_id().to_string();
        self.stop_restores().await;
        let mut result = Ok(());
        let mut group_moved_on = false;
        let committed = if !flush {
            Err("the topology failed".to_string())
        } else if self.consumer.assignment_lost() {
            Err("the assignment was lost".to_string())
        } else {
            match self.flush_tasks().await {
                Err(e) => {
                    result = Err(e);
                    Err("the record caches could not be written out".to_string())
                }
                Ok(()) => {
                    self.send_ready_changelog().await;
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_secs(1));
                    match self.try_commit_transaction(left).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(failure)) => {
                            group_moved_on = failure.group_moved_on;
                            Err(failure.reason)
                        }
                        Err(e) => {
                            let reason = e.to_string();
                            result = Err(e);
                            Err(reason)
                        }
                    }
                }
            }
        };
        let tasks: Vec<Task> = std::mem::take(&mut self.tasks).into_values().collect();
        match committed {
            Ok(()) => {
                tracing::info!(application = %app, "final transaction committed");
                crate::executor::block_off_executor(|| {
                    for task in tasks {
                        self.close_task(task, true);
                    }
                });
                result
            }
            Err(unfinished) => {
                let (producer, timeout) = (
                    self.producer.clone(),
                    deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_secs(1)),
                );
                let _ =
                    tokio::task::spawn_blocking(move || transactions::abort(&*producer, timeout))
                        .await;
                self.tracker.reset();
                crate::executor::block_off_executor(|| {
                    for task in tasks {
                        self.close_task(task, false);
                    }
                });
                if !flush {
                    tracing::info!(application = %app, "final transaction aborted: the inputs since the last commit are processed again at the next start");
                    return result;
                }
                if group_moved_on {
                    // Another instance joined or left at this moment: as at any revocation
                    // under exactly-once, the aborted work is its next owner's to redo.
                    // Nothing is lost or doubled, and the stores get no checkpoint.
                    tracing::warn!(application = %app, %unfinished, "final transaction aborted because the group is rebalancing: the inputs since the last commit go to their next owner, as at a revocation");
                    return result;
                }
                tracing::error!(application = %app, %unfinished, "shutdown incomplete: the final transaction was aborted; the inputs since the last commit are processed again at the next start");
                result.and(Err(RuntimeError::ShutdownIncomplete {
                    application: app,
                    unfinished: format!("the final transaction did not commit ({unfinished})"),
                    uncommitted: Vec::new(),
                    in_flight: 0,
                }))
            }
        }
    }
}

/// Stops announcing this instance, leaves the consumer group and closes every client by
/// `deadline` (at least a second after the close). The clients go to a thread of their
/// own: librdkafka's consumer close waits for the group coordinator, which may never
/// answer; past the deadline that thread is left behind (the process is stopping) and
/// the shutdown reported incomplete.
// Each argument is one client or thread of the runner, handed over to be closed.
#[allow(clippy::too_many_arguments)]
pub(super) async fn release_clients(
    application: &str,
    deadline: Instant,
    announcer: Option<instances::Announcer>,
    reader: Option<instances::AnnouncementReader>,
    consumer: Arc<StreamConsumer<ConsumeContext>>,
    producer: Arc<EngineProducer>,
    globals: global::GlobalTables,
    settings: &RunSettings,
) -> Result<(), RuntimeError> {
    let deadline = deadline.max(Instant::now() + Duration::from_secs(1));
    let deadline = tokio::time::Instant::from_std(deadline);
    if let Some(announcer) = &announcer {
        // Other instances stop directing queries here.
        let _ = tokio::time::timeout_at(deadline, announcer.announce(Vec::new())).await;
    }
    let (done, released) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("{application}-close"))
        .spawn(move || {
            // The reader's thread polls in 200 ms steps; dropping it joins it.
            drop(reader);
            consumer.unsubscribe();
            drop(consumer);
            drop(producer);
            drop(announcer);
            let _ = done.send(());
        });
    let left = match spawned {
        Ok(_) => tokio::time::timeout_at(deadline, released).await.is_ok(),
        Err(_) => false,
    };
    let globals_closed = tokio::time::timeout_at(deadline, globals.close(settings, application))
        .await
        .is_ok();
    if left && globals_closed {
        return Ok(());
    }
    let unfinished = if left {
        "closing the global tables' consumers"
    } else {
        "leaving the consumer group and closing the Kafka clients"
    };
    tracing::error!(%application, unfinished, "shutdown timeout: the broker did not answer in time");
    Err(RuntimeError::ShutdownIncomplete {
        application: application.to_string(),
        unfinished: unfinished.to_string(),
        uncommitted: Vec::new(),
        in_flight: 0,
    })
}
