//! The embedded store: one SQLite file in WAL mode, shareable by several
//! `runyard serve` processes on one host.
//!
//! This file is the store's struct and its `Store` impl as a table of one-line calls;
//! opening is in `connect.rs`, the writer in `writer.rs`, and each concern's SQL in a
//! file of its own (the same names as the PostgreSQL backend's).
//!
//! Writes go through **one writer thread per process** with group commit: callers send closures over a channel; the thread
//! takes every waiting request, runs them in one `BEGIN IMMEDIATE`
//! transaction and commits once (if one request fails, the batch is rolled back
//! and each request runs again in a transaction of its own, so one failing request
//! takes no other with it), and only then answers each caller. Nothing is
//! acknowledged before it is committed. `BEGIN IMMEDIATE` takes the write lock
//! up front, so `busy_timeout` applies and no deferred transaction is ever
//! upgraded into an instant `SQLITE_BUSY`.
//!
//! Since a failed request never commits any of its statements, no statement needs
//! SQLite's own statement-level rollback: the hot path's `UPDATE … RETURNING` (a
//! claim, a run's landing and its end) say `OR FAIL`, which opens no statement
//! journal. Otherwise each of them allocated, filled and freed a 64 KiB in-memory
//! journal (three per job, seen with a `malloc` uprobe; docs/benchmarks.md).
//!
//! Reads use a small pool of separate connections on the blocking pool.
//! Other processes' commits are noticed through `PRAGMA data_version`, polled
//! every 50 ms by a watcher thread that bumps the [`ChangeFeed`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

mod after;
mod cap_waits;
mod claim;
mod completion;
mod connect;
mod errors;
mod events;
mod executions;
mod finish;
mod nodes;
mod outbox;
mod pipeline_state;
mod prune;
mod runs;
mod views;
mod workflows;
mod writer;

use claim::*;
use connect::*;
use executions::*;
use runs::*;
use writer::*;

use completion::{Landed, finalizer_ended, land_terminal};

use super::payload::{self, NewEvent};
use super::transition::{JobFence, RetryOn, decide, outcome_error};
use super::*;
use crate::config::Synchronous;
use crate::model::JobKind;

/// Held jobs one claim releases at most (the rest on the next claims: a due backlog is
/// released in slices, never in one long transaction).
const RELEASE_BATCH: usize = 1000;
const MAX_BATCH: usize = 512;
/// How long an end that may wait ([`JobFinishParams::lingers`]) is held for other ends to
/// share its commit. Measured with `throughput` (2 slots of `/bin/true`, 3 sittings in
/// turns): ends written at once, 0.99 commits per run, 1,458–1,597 runs/s at 493–550 µs
/// of server CPU per run; held up to 1 ms, 0.35–0.37 commits per run, 1,506–1,714 runs/s
/// at 420–513 µs (a commit's WAL frames, one per page it changed, were a quarter of the
/// server's CPU, `perf`). Holding every end 2 ms instead of 1 gained nothing more.
const END_LINGER: Duration = Duration::from_millis(1);
/// Events deleted per pruned-run batch slot.
const EVENTS_PER_RUN_PRUNED: usize = 20;
/// Runs a parameterless statement through the statement cache (no re-parsing).
fn exec_cached(conn: &Connection, sql: &str) -> StoreResult<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// SQLite implementation of [`Store`].
pub struct SqliteStore {
    writer: Mutex<Option<mpsc::UnboundedSender<Box<dyn WriteOp>>>>,
    /// The write connection, shared by the writer thread and the inline fast path.
    conn: Arc<Mutex<Connection>>,
    /// Whether uncontended writes may run on the caller's thread (not with
    /// `synchronous = FULL`, whose commits fsync).
    inline: bool,
    readers: Arc<ReaderPool>,
    read_slots: tokio::sync::Semaphore,
    feed: ChangeFeed,
    /// Statements and commits of its writes, by operation (`runyard_store_*_total`).
    traffic: Arc<Traffic>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl SqliteStore {}

// ---------------------------------------------------------------- write helpers

/// Inserts an event built by [`payload`] in the open transaction.
fn emit(conn: &Connection, mut event: NewEvent, now: i64) -> StoreResult<()> {
    let data = event.data_text(now);
    conn.prepare_cached(
        "INSERT INTO events (name, run_id, data, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![event.name.as_str(), event.run_id, data, now])?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    fn changes(&self) -> &ChangeFeed {
        &self.feed
    }

    fn traffic(&self) -> Vec<(&'static str, &'static str, u64, u64)> {
        self.traffic.by_backend("sqlite")
    }

    async fn run_create(&self, p: RunCreateParams) -> StoreResult<RunCreated> {
        runs::run_create(self, p).await
    }

    async fn jobs_adopt_key(&self, pipeline: &str) -> StoreResult<u64> {
        claim::jobs_adopt_key(self, pipeline).await
    }
    async fn job_claim(&self, p: JobClaimParams) -> StoreResult<ClaimOutcome> {
        claim::job_claim(self, p).await
    }

    async fn job_start(&self, p: JobStartParams) -> StoreResult<Option<bool>> {
        executions::job_start(self, p).await
    }

    async fn job_output_append(&self, p: OutputAppendParams) -> StoreResult<bool> {
        executions::job_output_append(self, p).await
    }

    async fn job_progress(&self, p: JobProgressParams) -> StoreResult<bool> {
        executions::job_progress(self, p).await
    }

    async fn job_finish(&self, p: JobFinishParams) -> StoreResult<FinishOutcome> {
        finish::job_finish(self, p).await
    }

    async fn run_abort_by(
        &self,
        run_id: &str,
        now: i64,
        by: Option<String>,
    ) -> StoreResult<AbortOutcome> {
        runs::run_abort_by(self, run_id, now, by).await
    }

    async fn node_register(&self, node: NodeRow) -> StoreResult<()> {
        nodes::node_register(self, node).await
    }

    async fn node_heartbeat(&self, p: NodeHeartbeatParams) -> StoreResult<HeartbeatOutcome> {
        nodes::node_heartbeat(self, p).await
    }

    async fn node_remove(&self, node_id: &str) -> StoreResult<()> {
        nodes::node_remove(self, node_id).await
    }

    async fn node_remove_stale(&self, node_id: &str, seen_heartbeat_at: i64) -> StoreResult<bool> {
        nodes::node_remove_stale(self, node_id, seen_heartbeat_at).await
    }

    async fn nodes_list(&self) -> StoreResult<Vec<NodeRow>> {
        nodes::nodes_list(self).await
    }
    async fn node_names(&self) -> StoreResult<HashMap<String, String>> {
        nodes::node_names(self).await
    }

    async fn jobs_running_on(&self, node_id: &str) -> StoreResult<Vec<RunningJob>> {
        nodes::jobs_running_on(self, node_id).await
    }

    async fn jobs_running_unowned(&self) -> StoreResult<Vec<RunningJob>> {
        nodes::jobs_running_unowned(self).await
    }

    async fn jobs_abort_requested(&self, node_id: &str) -> StoreResult<Vec<(String, i64)>> {
        nodes::jobs_abort_requested(self, node_id).await
    }

    async fn run_ids_by_prefix(&self, prefix: &str, limit: usize) -> StoreResult<Vec<String>> {
        views::run_ids_by_prefix(self, prefix, limit).await
    }

    async fn workflow_create(&self, p: WorkflowCreateParams) -> StoreResult<WorkflowCreated> {
        workflows::workflow_create(self, p).await
    }
    async fn workflow_abort_mark(
        &self,
        id: &str,
        by: Option<String>,
    ) -> StoreResult<WorkflowAbortMark> {
        workflows::workflow_abort_mark(self, id, by).await
    }
    async fn workflow_runs_read(
        &self,
        f: WorkflowRunFilter,
        id: Option<&str>,
    ) -> StoreResult<Vec<WorkflowRunRecord>> {
        workflows::workflow_runs_read(self, f, id).await
    }
    async fn workflow_run_ids_matching(
        &self,
        prefix: &str,
        suffix: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        workflows::workflow_run_ids_matching(self, prefix, suffix, limit).await
    }
    async fn run_get(&self, run_id: &str) -> StoreResult<Option<RunRecord>> {
        views::run_get(self, run_id).await
    }

    async fn runs_list(&self, f: RunFilter) -> StoreResult<Vec<RunRecord>> {
        views::runs_list(self, f).await
    }

    async fn job_get(&self, job_id: &str) -> StoreResult<Option<JobRecord>> {
        views::job_get(self, job_id).await
    }

    async fn job_logs(&self, job_id: &str, tail: Option<usize>) -> StoreResult<Option<JobLogs>> {
        executions::job_logs(self, job_id, tail).await
    }

    async fn job_output_after(
        &self,
        job_id: &str,
        after: i64,
        limit: usize,
    ) -> StoreResult<Vec<LogLine>> {
        executions::job_output_after(self, job_id, after, limit).await
    }

    async fn job_output_len(&self, job_id: &str) -> StoreResult<i64> {
        executions::job_output_len(self, job_id).await
    }

    async fn events_after(&self, after: i64, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        events::events_after(self, after, limit).await
    }

    async fn events_bounds(&self) -> StoreResult<(i64, i64)> {
        events::events_bounds(self).await
    }

    async fn run_events(&self, run_id: &str, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        events::run_events(self, run_id, limit).await
    }

    async fn pipeline_stats(&self, p: PipelineStatsParams) -> StoreResult<Vec<PipelineStatsRow>> {
        pipeline_state::pipeline_stats(self, p).await
    }

    async fn pipeline_counts(&self) -> StoreResult<HashMap<String, PipelineCounts>> {
        pipeline_state::pipeline_counts(self).await
    }

    async fn runs_prune(&self, before: i64, batch: usize) -> StoreResult<PruneOutcome> {
        prune::runs_prune(self, before, batch).await
    }

    async fn run_summary(&self, run_id: &str) -> StoreResult<Option<Value>> {
        views::run_summary(self, run_id).await
    }

    async fn deliveries_claim(
        &self,
        node_id: &str,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<PendingDelivery>> {
        outbox::deliveries_claim(self, node_id, now, lease_ms, limit).await
    }

    async fn delivery_record(&self, p: DeliveryRecordParams) -> StoreResult<bool> {
        outbox::delivery_record(self, p).await
    }

    async fn deliveries_of_run(&self, run_id: &str) -> StoreResult<Vec<DeliveryRecord>> {
        outbox::deliveries_of_run(self, run_id).await
    }

    async fn pipeline_node_set(&self, state: PipelineNodeState) -> StoreResult<()> {
        pipeline_state::pipeline_node_set(self, state).await
    }

    async fn pipeline_nodes_list(&self) -> StoreResult<Vec<PipelineNodeState>> {
        pipeline_state::pipeline_nodes_list(self).await
    }

    async fn pipeline_pause(&self, p: PipelinePauseParams) -> StoreResult<bool> {
        pipeline_state::pipeline_pause(self, p).await
    }

    async fn pipelines_paused(&self) -> StoreResult<Vec<PipelinePause>> {
        pipeline_state::pipelines_paused(self).await
    }

    async fn schedules_list(&self) -> StoreResult<Vec<ScheduleState>> {
        pipeline_state::schedules_list(self).await
    }

    async fn schedule_init(
        &self,
        pipeline: &str,
        key: &str,
        next_fire_at: i64,
        now: i64,
    ) -> StoreResult<bool> {
        pipeline_state::schedule_init(self, pipeline, key, next_fire_at, now).await
    }

    async fn schedule_fire(&self, p: ScheduleFireParams) -> StoreResult<Option<RunCreated>> {
        pipeline_state::schedule_fire(self, p).await
    }

    async fn close(&self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the sender ends the writer loop once queued writes are committed.
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        let threads: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        self.readers
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests;
