//! The durable source of truth: the [`Store`] trait, its parameter and view
//! types, and the change feed that wakes waiters when the store changes.
//!
//! The trait is internal and free to change (like River's driver interface):
//! one method per state transition, named noun-first (`job_claim`,
//! `job_finish`, `run_abort`, `node_heartbeat`), each taking a params struct.
//! Every write made on behalf of an execution is conditional on
//! `(job id, claim_seq, status = 'running')` and reports whether it applied, so
//! a stale node's late write changes nothing. Run
//! finalisation happens inside the transaction that lands `shards_done` on
//! `shard_count` (decision 6), so it happens exactly once with no lock outside
//! the store.
//!
//! The seam is "decide above, record below": the rules of a job's life
//! ([`transition`]), of a claim ([`claim_plan`]), of a run's end
//! ([`completion`]), the event payloads ([`payload`]) and the run summary
//! ([`summary`]) are plain functions shared by both backends; [`sqlite`] and
//! [`postgres`] keep only their SQL and transactions. One conformance suite
//! (`tests/store_contract.rs`) runs every contract test on both.
//!
//! This file is the trait, a table of one method per transition; its parameter and view
//! types are in `types/` (runs, jobs, nodes, deliveries), the change feed in `feed.rs`,
//! the statement and commit counters in `traffic.rs`.

pub mod after;
pub mod cap_share;
pub mod claim_plan;
pub mod completion;
mod error;
mod feed;
pub mod job_wakes;
mod key_scan;
pub mod payload;
pub mod postgres;
pub mod refill;
pub mod rerun;
pub mod sqlite;
pub mod summary;
mod traffic;
pub mod transition;
mod types;

pub use error::{ErrorSource, StoreError, StoreResult};
pub use feed::{ChangeFeed, change};
pub use job_wakes::{JobSubscription, JobWake};
pub use traffic::Traffic;
pub use types::*;

use std::collections::HashMap;

use async_trait::async_trait;

use crate::model::{JobStatus, RunStatus};

/// The storage seam. Internal API, free to change; both backends pass the same tests.
#[async_trait]
pub trait Store: Send + Sync {
    /// The feed of committed changes (local commits and, for SQLite, other processes').
    fn changes(&self) -> &ChangeFeed;

    /// `(backend, op, statements, commits)` of this store's writes so far.
    fn traffic(&self) -> Vec<(&'static str, &'static str, u64, u64)>;

    /// The store's clock (epoch ms): every lease, heartbeat and due time is judged by it,
    /// so nodes whose host clocks disagree still agree on who is late. SQLite lives on one
    /// host and uses that host's clock; PostgreSQL follows the database server's clock.
    fn clock_ms(&self) -> i64 {
        crate::clock::now_ms()
    }

    /// Writes a run and its jobs (status `queued`) and their `job:created` events in one transaction.
    async fn run_create(&self, p: RunCreateParams) -> StoreResult<RunCreated>;
    /// Gives the key `''` to `pipeline`'s queued jobs that have none (queued before the
    /// pipeline had a `concurrency_key`), so keyed claims see them; returns how many.
    async fn jobs_adopt_key(&self, pipeline: &str) -> StoreResult<u64>;
    /// Claims queued jobs for a node within its slots and the caps.
    async fn job_claim(&self, p: JobClaimParams) -> StoreResult<ClaimOutcome>;
    /// Records the spawned process; `None` when the claim is no longer ours,
    /// otherwise whether an abort was requested meanwhile.
    async fn job_start(&self, p: JobStartParams) -> StoreResult<Option<bool>>;
    /// Appends output lines; false when the claim is no longer ours.
    async fn job_output_append(&self, p: OutputAppendParams) -> StoreResult<bool>;
    /// Records progress and emits `job:progress`; false when the claim is no longer ours.
    async fn job_progress(&self, p: JobProgressParams) -> StoreResult<bool>;
    /// Ends an execution (terminal, retry or requeue) and finalises the run when it lands.
    async fn job_finish(&self, p: JobFinishParams) -> StoreResult<FinishOutcome>;
    /// Ends several executions, each fenced on its own claim and answered on its own, as
    /// [`Store::job_finish`] would one by one: a stale end changes nothing and fails none
    /// of the others. A backend that batches writes them in one transaction (PostgreSQL;
    /// its `job_finish` batches ends that arrive together the same way).
    async fn job_finish_many(&self, ps: Vec<JobFinishParams>) -> Vec<StoreResult<FinishOutcome>> {
        let mut answers = Vec::with_capacity(ps.len());
        for p in ps {
            answers.push(self.job_finish(p).await);
        }
        answers
    }
    /// Aborts a run: marks it, aborts queued jobs, flags running ones.
    async fn run_abort(&self, run_id: &str, now: i64) -> StoreResult<AbortOutcome> {
        self.run_abort_by(run_id, now, None).await
    }
    /// Aborts a run, recording who asked (`by`: JSON `{"actor", "node", "via"}`) when
    /// this call is the one that marks it.
    async fn run_abort_by(
        &self,
        run_id: &str,
        now: i64,
        by: Option<String>,
    ) -> StoreResult<AbortOutcome>;

    /// Creates a workflow run and every step's run (needs first) in one transaction,
    /// with `workflow:created`; idempotent by key per workflow (a replay creates
    /// nothing and names the earlier workflow run). A step whose needs all ended
    /// already is released before it commits.
    async fn workflow_create(&self, p: WorkflowCreateParams) -> StoreResult<WorkflowCreated>;
    /// Marks a workflow run aborted (its end will say `aborted`) and names its step runs
    /// still to abort, dependents first; the caller aborts each with
    /// [`Store::run_abort_by`]. Marking twice is harmless.
    async fn workflow_abort_mark(
        &self,
        id: &str,
        by: Option<String>,
    ) -> StoreResult<WorkflowAbortMark>;
    /// One workflow run with its step runs' states.
    async fn workflow_run_get(&self, id: &str) -> StoreResult<Option<WorkflowRunRecord>> {
        let f = WorkflowRunFilter {
            limit: 1,
            ..Default::default()
        };
        Ok(self
            .workflow_runs_read(f, Some(id))
            .await?
            .into_iter()
            .next())
    }
    /// Workflow runs, newest first.
    async fn workflow_runs_list(
        &self,
        f: WorkflowRunFilter,
    ) -> StoreResult<Vec<WorkflowRunRecord>> {
        self.workflow_runs_read(f, None).await
    }
    /// Workflow runs by filter, or the one with `id`.
    async fn workflow_runs_read(
        &self,
        f: WorkflowRunFilter,
        id: Option<&str>,
    ) -> StoreResult<Vec<WorkflowRunRecord>>;
    /// Ids of workflow runs that start with `prefix` or, when given, end with `suffix`
    /// (the short form shown everywhere: the random end of a UUIDv7), in id order, at
    /// most `limit`.
    async fn workflow_run_ids_matching(
        &self,
        prefix: &str,
        suffix: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>>;

    /// Inserts or replaces this node's row.
    async fn node_register(&self, node: NodeRow) -> StoreResult<()>;
    /// Beats and learns which of its jobs the node must cancel.
    async fn node_heartbeat(&self, p: NodeHeartbeatParams) -> StoreResult<HeartbeatOutcome>;
    /// Deletes a node's row (deregistration).
    async fn node_remove(&self, node_id: &str) -> StoreResult<()>;
    /// Compare-and-delete of a node judged dead: removes its row only if its heartbeat
    /// is still `seen_heartbeat_at`, so a node that beat after it was judged keeps its
    /// row (and its jobs). True when this call removed it: the caller owns the rescue
    /// of its jobs; every other rescuer's call returns false.
    async fn node_remove_stale(&self, node_id: &str, seen_heartbeat_at: i64) -> StoreResult<bool>;
    /// Every registered node.
    async fn nodes_list(&self) -> StoreResult<Vec<NodeRow>>;
    /// The name of every node id registered in the last [`NODE_NAME_KEEP_MS`], live or
    /// gone (a finished job's view names the node that ran it).
    async fn node_names(&self) -> StoreResult<HashMap<String, String>>;
    /// Jobs in `running` owned by a node.
    async fn jobs_running_on(&self, node_id: &str) -> StoreResult<Vec<RunningJob>>;
    /// Jobs in `running` whose node has no row any more (stranded: e.g. their end could not
    /// be recorded before the node stopped). A live node always has a row, because claims
    /// require it.
    async fn jobs_running_unowned(&self) -> StoreResult<Vec<RunningJob>>;
    /// Running executions `(job id, claim_seq)` whose run was aborted, among those owned by a node.
    async fn jobs_abort_requested(&self, node_id: &str) -> StoreResult<Vec<(String, i64)>>;

    /// One run with its jobs.
    async fn run_get(&self, run_id: &str) -> StoreResult<Option<RunRecord>>;
    /// Ids of runs that start with `prefix` (a short id), in id order, at most `limit`:
    /// a range scan of the primary key, so asking for 2 tells unique from ambiguous.
    async fn run_ids_by_prefix(&self, prefix: &str, limit: usize) -> StoreResult<Vec<String>>;
    /// Runs, newest first, with their jobs.
    async fn runs_list(&self, f: RunFilter) -> StoreResult<Vec<RunRecord>>;
    /// One job.
    async fn job_get(&self, job_id: &str) -> StoreResult<Option<JobRecord>>;
    /// A job's stored output; `tail` keeps the last N lines of each stream.
    async fn job_logs(&self, job_id: &str, tail: Option<usize>) -> StoreResult<Option<JobLogs>>;
    /// Output lines with sequence number > `after`, at most `limit`.
    async fn job_output_after(
        &self,
        job_id: &str,
        after: i64,
        limit: usize,
    ) -> StoreResult<Vec<LogLine>>;
    /// The sequence number the job's next output line will get (= lines stored so far).
    async fn job_output_len(&self, job_id: &str) -> StoreResult<i64>;
    /// Events with id > `after`, at most `limit`, in id order. No event with an id at or
    /// below the last one returned can appear later (PostgreSQL reads below the horizon of
    /// transactions still in flight), so a cursor never skips a late commit.
    async fn events_after(&self, after: i64, limit: usize) -> StoreResult<Vec<StoredEvent>>;
    /// `(pruned_through, newest)`: events with ids up to `pruned_through` may have been
    /// deleted (a reader resuming below it missed some), and `newest` is the highest id a
    /// reader can see now. Ids increase but may have gaps (PostgreSQL), so readers resume
    /// by cursor and never count ids.
    async fn events_bounds(&self) -> StoreResult<(i64, i64)>;
    /// One run's events in id order, without `job:progress`, at most `limit` (the oldest),
    /// as committed when read: a history, not a cursor (no horizon, unlike
    /// [`Store::events_after`]).
    async fn run_events(&self, run_id: &str, limit: usize) -> StoreResult<Vec<StoredEvent>>;
    /// Runs that finished in the window, counted per pipeline, bucket and status, with
    /// their durations (the dashboard's throughput, failure and duration charts).
    async fn pipeline_stats(&self, p: PipelineStatsParams) -> StoreResult<Vec<PipelineStatsRow>>;
    /// Queued and running counts per pipeline.
    async fn pipeline_counts(&self) -> StoreResult<HashMap<String, PipelineCounts>>;
    /// Deletes up to `batch` finished runs older than `before` with their jobs and output,
    /// and a bounded number of events older than `before` (never of unfinished runs).
    async fn runs_prune(&self, before: i64, batch: usize) -> StoreResult<PruneOutcome>;

    /// The run's summary (shards with status, reason, exit code, attempts, duration and result;
    /// the finalizer once it ran): the finalizer's input and the webhook's payload.
    async fn run_summary(&self, run_id: &str) -> StoreResult<Option<serde_json::Value>>;

    /// Leases up to `limit` due webhook deliveries to `node_id` for `lease_ms`.
    async fn deliveries_claim(
        &self,
        node_id: &str,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<PendingDelivery>>;
    /// Records one attempt and what happens next; false when the lease was lost.
    async fn delivery_record(&self, p: DeliveryRecordParams) -> StoreResult<bool>;
    /// A run's webhook deliveries with their attempts.
    async fn deliveries_of_run(&self, run_id: &str) -> StoreResult<Vec<DeliveryRecord>>;

    /// Writes one node's setup/circuit state for a pipeline.
    async fn pipeline_node_set(&self, state: PipelineNodeState) -> StoreResult<()>;
    /// Setup/circuit states of every registered node.
    async fn pipeline_nodes_list(&self) -> StoreResult<Vec<PipelineNodeState>>;

    /// Pauses or resumes a pipeline for every node on the store; true when its state
    /// changed, and then `pipeline:paused` / `pipeline:resumed` is emitted in the same
    /// transaction (pausing a paused pipeline changes and emits nothing). Every later claim
    /// leaves a paused pipeline's jobs queued.
    async fn pipeline_pause(&self, p: PipelinePauseParams) -> StoreResult<bool>;
    /// The paused pipelines, by name.
    async fn pipelines_paused(&self) -> StoreResult<Vec<PipelinePause>>;

    /// Every stored schedule record.
    async fn schedules_list(&self) -> StoreResult<Vec<ScheduleState>>;
    /// Stores `next_fire_at` for schedule `key` of `pipeline` unless the record already holds
    /// `key` (the first node to start the schedule, or one whose schedule changed, sets it);
    /// true when it wrote.
    async fn schedule_init(
        &self,
        pipeline: &str,
        key: &str,
        next_fire_at: i64,
        now: i64,
    ) -> StoreResult<bool>;
    /// Fires one tick: only if the record still holds `(key, due)`, advances it to `next` and
    /// creates the run, in one transaction. `None` when another node fired it first (or the
    /// schedule changed): each tick fires exactly once over every node.
    async fn schedule_fire(&self, p: ScheduleFireParams) -> StoreResult<Option<RunCreated>>;

    /// Stops background work and closes connections; later calls fail with `Closed`.
    async fn close(&self);
}
