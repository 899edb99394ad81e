//! The shared store: PostgreSQL, for many replicas on many hosts.
//!
//! (One concern past 400 lines: the `Store` impl as a table of one-line calls, plus
//! opening, migrating and the database clock; each transition's SQL has its own file.)
//!
//! Each [`Store`] method is one READ COMMITTED transaction on a pooled
//! connection (deadpool-postgres, statements prepared once per connection).
//! The rules come from the backend-neutral modules (`transition`,
//! `claim_plan`, `completion`, `payload`, `summary`); this module only has
//! SQL, transactions and what PostgreSQL needs that SQLite's single writer
//! gave for free:
//!
//! - **Caps under races.** `FOR UPDATE SKIP LOCKED` stops two claimers taking
//!   the same job, but not both counting the same free room. A claim that must
//!   respect a pipeline cap first takes transaction-scoped advisory locks (one
//!   key per capped pipeline, sorted, schema in the key) and counts after they
//!   are granted (SCALE-OUT §2.4: 28 running under a cap of 4 without it, 4
//!   with it). The global cap is token rows the claim statement locks
//!   `SKIP LOCKED` and gives to the jobs it claims, freed by a trigger when a
//!   job stops running ([`cap_tokens`]): no claim waits for another's commit.
//! - **Fencing.** The fence row is read `FOR UPDATE`, so the decision acts on
//!   the row as it is when written; every execution write is conditional on
//!   `(id, claim_seq, status='running')`.
//! - **Lock order** (no deadlocks between finish, abort, start and rescue):
//!   job rows in id order, then the run row, then anything else. Finish and
//!   start lock their job then update the run; abort locks the run's jobs in id
//!   order before it updates the run. Claims never wait on rows (SKIP LOCKED)
//!   and take the advisory cap locks last.
//! - **Event ids that never skip.** An event's id is `(xid << 16) | n` (its
//!   transaction's top-level id, then its index in the transaction); readers
//!   take only ids below the oldest transaction of this deployment still in
//!   flight in their snapshot (`read::HORIZON`), so an id a reader has passed
//!   can never commit later, and other programs' long transactions on the same
//!   server do not hold the streams back. A replica that dies inside a
//!   transaction holds them back until the server ends its session
//!   (`idle_in_transaction_session_timeout`, 5 s).
//!   Ids have gaps; the SSE code resumes by cursor, never by counting.
//! - **The database's clock.** Times are the database's (`runyard_now_ms()`),
//!   followed locally between samples with the monotonic clock
//!   ([`Store::clock_ms`]), so hosts whose clocks disagree agree on leases.
//! - **Sessions that cannot hold locks forever**: `idle_in_transaction_session_timeout`,
//!   `statement_timeout` and `lock_timeout` are set on every connection, so a
//!   frozen replica's locks (the cap key!) are released.
//! - **Faults.** Serialization failures, deadlocks and lock timeouts are retried
//!   (a few times, with jitter); a lost connection before COMMIT is retried on a
//!   fresh one; an unreachable database is [`StoreError::Unavailable`] (HTTP 503).
//! - **Changes made by other replicas** reach this process's [`ChangeFeed`]
//!   through a timed poll of the event horizon (every 250 ms) until a bus
//!   carries them; log streams poll on their own.

#[macro_use]
mod read;

mod after;
mod autocommit;
mod cap_tokens;
mod claim;
mod claim_keyed;
mod connect;
mod create_batch;
mod errors;
mod events;
mod executions;
mod finish;
mod finish_rows;
mod group_commit;
mod landing;
mod nodes;
mod outbox;
mod pipeline_state;
mod prune;
mod rows;
mod runs;
mod tx;
mod views;
mod workflows;

pub(crate) use errors::{connect_failure, pg_err};
pub(crate) use tx::{Tx, in_tx};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use deadpool_postgres::Pool;

use super::*;
use errors::pool_err;

/// The schema version this build migrates to (the number of migrations).
pub const SCHEMA_VERSION: i64 = connect::MIGRATIONS.len() as i64;
/// Retries of a transaction that lost a race or its connection before COMMIT.
pub(crate) const MAX_RETRIES: u32 = 4;

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user@host:port/db?…`
    pub url: String,
    /// Schema to use (created if missing); `None` = the connection's default (`public`).
    pub schema: Option<String>,
    /// Connections in the pool.
    pub pool_size: usize,
}

/// PostgreSQL implementation of [`super::Store`].
pub struct PgStore {
    pool: Pool,
    feed: ChangeFeed,
    /// Statements and commits sent, by operation (`runyard_store_*_total`).
    traffic: Arc<crate::store::Traffic>,
    /// Job ends waiting to share a transaction ([`group_commit`]).
    finishes: group_commit::FinishQueue,
    /// Plain run creations waiting to share a transaction ([`create_batch`]).
    creates: create_batch::CreateQueue,
    /// The global cap's tokens this handle made sure exist ([`cap_tokens`]).
    cap_tokens: cap_tokens::Tokens,
    clock: Arc<Mutex<ClockSample>>,
    stop: Arc<AtomicBool>,
    /// Where, for messages (the URL without a password).
    display: String,
}

/// The database clock at one instant of the local monotonic clock.
#[derive(Debug, Clone, Copy)]
struct ClockSample {
    db_ms: i64,
    at: Instant,
}

impl ClockSample {
    fn now(&self) -> i64 {
        self.db_ms + self.at.elapsed().as_millis() as i64
    }
}

impl PgStore {
    /// Where this store lives (the URL without its password).
    pub fn display(&self) -> &str {
        &self.display
    }
}

#[async_trait]
impl Store for PgStore {
    fn changes(&self) -> &ChangeFeed {
        &self.feed
    }

    fn traffic(&self) -> Vec<(&'static str, &'static str, u64, u64)> {
        self.traffic.by_backend("postgres")
    }

    fn clock_ms(&self) -> i64 {
        self.clock.lock().unwrap_or_else(|e| e.into_inner()).now()
    }

    async fn run_create(&self, p: RunCreateParams) -> StoreResult<RunCreated> {
        create_batch::run_create(self, p).await
    }
    async fn jobs_adopt_key(&self, pipeline: &str) -> StoreResult<u64> {
        claim_keyed::jobs_adopt_key(self, pipeline).await
    }
    async fn job_claim(&self, p: JobClaimParams) -> StoreResult<ClaimOutcome> {
        claim::job_claim(self, p).await
    }
    async fn job_start(&self, p: JobStartParams) -> StoreResult<Option<bool>> {
        executions::job_start(self, p).await
    }
    async fn job_output_append(&self, p: OutputAppendParams) -> StoreResult<bool> {
        let job_id = p.job_id.clone();
        let applied = executions::job_output_append(self, p).await?;
        if applied {
            // After COMMIT: wakes this job's log streams only (see `store::job_wakes`).
            self.feed.bump_output([job_id.as_str()]);
        }
        Ok(applied)
    }
    async fn job_progress(&self, p: JobProgressParams) -> StoreResult<bool> {
        executions::job_progress(self, p).await
    }
    async fn job_finish(&self, p: JobFinishParams) -> StoreResult<FinishOutcome> {
        let job_id = p.job_id.clone();
        let outcome = group_commit::job_finish(self, p).await?;
        if outcome.applied {
            self.feed.bump_job_state([job_id.as_str()]);
        }
        Ok(outcome)
    }
    async fn job_finish_many(&self, ps: Vec<JobFinishParams>) -> Vec<StoreResult<FinishOutcome>> {
        let mut ids: Vec<&str> = ps.iter().map(|p| p.job_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() < ps.len() {
            // One job twice: its ends must be written in order, one after the other.
            let mut answers = Vec::with_capacity(ps.len());
            for p in ps {
                answers.push(self.job_finish(p).await);
            }
            return answers;
        }
        let jobs: Vec<String> = ps.iter().map(|p| p.job_id.clone()).collect();
        let answers = group_commit::write_batch(self, ps).await;
        self.feed.bump_job_state(
            jobs.iter()
                .zip(&answers)
                .filter(|(_, a)| matches!(a, Ok(out) if out.applied))
                .map(|(id, _)| id.as_str()),
        );
        answers
    }
    async fn run_abort_by(
        &self,
        run_id: &str,
        now: i64,
        by: Option<String>,
    ) -> StoreResult<AbortOutcome> {
        let outcome = runs::run_abort(self, run_id, now, by).await?;
        self.feed.bump_run_state(run_id);
        Ok(outcome)
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
        self.read_nodes().await
    }
    async fn node_names(&self) -> StoreResult<HashMap<String, String>> {
        self.read_node_names().await
    }
    async fn jobs_running_on(&self, node_id: &str) -> StoreResult<Vec<RunningJob>> {
        self.read_running_on(node_id).await
    }
    async fn jobs_running_unowned(&self) -> StoreResult<Vec<RunningJob>> {
        self.read_running_unowned().await
    }
    async fn jobs_abort_requested(&self, node_id: &str) -> StoreResult<Vec<(String, i64)>> {
        self.read_abort_requested(node_id).await
    }
    async fn run_ids_by_prefix(&self, prefix: &str, limit: usize) -> StoreResult<Vec<String>> {
        self.read_run_ids_by_prefix(prefix, limit).await
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
        self.read_workflow_runs(&f, id).await
    }
    async fn workflow_run_ids_matching(
        &self,
        prefix: &str,
        suffix: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        self.read_workflow_run_ids_matching(prefix, suffix, limit)
            .await
    }
    async fn run_get(&self, run_id: &str) -> StoreResult<Option<RunRecord>> {
        self.read_run(run_id).await
    }
    async fn runs_list(&self, f: RunFilter) -> StoreResult<Vec<RunRecord>> {
        self.read_runs(&f).await
    }
    async fn job_get(&self, job_id: &str) -> StoreResult<Option<JobRecord>> {
        self.read_job(job_id).await
    }
    async fn job_logs(&self, job_id: &str, tail: Option<usize>) -> StoreResult<Option<JobLogs>> {
        self.read_logs(job_id, tail).await
    }
    async fn job_output_after(
        &self,
        job_id: &str,
        after: i64,
        limit: usize,
    ) -> StoreResult<Vec<LogLine>> {
        self.read_output_after(job_id, after, limit).await
    }
    async fn job_output_len(&self, job_id: &str) -> StoreResult<i64> {
        self.read_output_len(job_id).await
    }
    async fn events_after(&self, after: i64, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        self.read_events_after(after, limit).await
    }
    async fn events_bounds(&self) -> StoreResult<(i64, i64)> {
        self.read_event_bounds().await
    }
    async fn run_events(&self, run_id: &str, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        self.read_run_events(run_id, limit).await
    }
    async fn pipeline_stats(&self, p: PipelineStatsParams) -> StoreResult<Vec<PipelineStatsRow>> {
        self.read_pipeline_stats(&p).await
    }
    async fn pipeline_counts(&self) -> StoreResult<HashMap<String, PipelineCounts>> {
        self.read_pipeline_counts().await
    }
    async fn runs_prune(&self, before: i64, batch: usize) -> StoreResult<PruneOutcome> {
        prune::runs_prune(self, before, batch).await
    }
    async fn run_summary(&self, run_id: &str) -> StoreResult<Option<serde_json::Value>> {
        self.read_summary(run_id).await
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
        self.read_deliveries(run_id).await
    }
    async fn pipeline_node_set(&self, state: PipelineNodeState) -> StoreResult<()> {
        pipeline_state::pipeline_node_set(self, state).await
    }
    async fn pipeline_nodes_list(&self) -> StoreResult<Vec<PipelineNodeState>> {
        self.read_pipeline_nodes().await
    }
    async fn pipeline_pause(&self, p: PipelinePauseParams) -> StoreResult<bool> {
        pipeline_state::pipeline_pause(self, p).await
    }
    async fn pipelines_paused(&self) -> StoreResult<Vec<PipelinePause>> {
        self.read_paused().await
    }
    async fn schedules_list(&self) -> StoreResult<Vec<ScheduleState>> {
        self.read_schedules().await
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
        self.pool.close();
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
