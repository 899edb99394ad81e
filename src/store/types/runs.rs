//! What the store takes and gives about runs: creating one, reading and listing them,
//! aborting, pruning, statistics, pause state and schedule ticks.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::{AfterWhen, JobKind, RunStatus};
use crate::store::*;

/// Per-job policy copied from the pipeline at trigger time, so a job keeps the
/// rules it was queued under and the store can decide retries on its own.
#[derive(Debug, Clone)]
pub struct JobPolicy {
    /// Attempts including the first.
    pub max_attempts: u32,
    /// Base of the exponential backoff between attempts.
    pub retry_backoff_ms: i64,
    /// `requeue` or `fail`.
    pub on_orphan: &'static str,
    /// Requeues (orphan or shutdown) before failing.
    pub max_orphan_requeues: u32,
    /// Which failed exit codes are retried (the rest fail at once).
    pub retry_on: transition::RetryOn,
}

/// `run_create` input.
#[derive(Debug, Clone)]
pub struct RunCreateParams {
    /// The new run's id (UUIDv7 string).
    pub run_id: String,
    /// Its jobs' ids in shard order.
    pub job_ids: Vec<String>,
    /// Pipeline name.
    pub pipeline: String,
    /// Validated parameter values.
    pub params: BTreeMap<String, String>,
    /// `api`, `cli` or `dashboard`.
    pub triggered_by: String,
    /// Who triggered (token label), when known.
    pub actor: Option<String>,
    /// Client-chosen key making the trigger idempotent per pipeline.
    pub idempotency_key: Option<String>,
    /// Retry and orphan rules.
    pub policy: JobPolicy,
    /// The pipeline has a finalizer: the run's landing queues `{runId}:finalize`.
    pub has_finalizer: bool,
    /// Completion webhook target (already checked).
    pub callback_url: Option<String>,
    /// Creation time (epoch ms).
    pub now: i64,
    /// Re-run, delay, priority and schedule of the run (all off by default).
    pub options: RunOptions,
}

/// What a run may carry besides its trigger's basics. The default is a plain
/// trigger: no re-run, due at once, priority 0, not scheduled.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The finished run this one re-runs.
    pub rerun_of: Option<String>,
    /// Shards copied from `rerun_of` as they ended there, terminal from the start
    /// (a re-run of failed shards); their jobs are not queued. See [`rerun`].
    pub kept: Vec<rerun::KeptShard>,
    /// No shard starts before this (epoch ms): a delayed run. `None` = due at once.
    pub not_before: Option<i64>,
    /// Higher is claimed first (bounded by [`claim_plan::PRIORITY_RANGE`]); FIFO within one.
    pub priority: i32,
    /// The schedule tick this run is for (epoch ms), when a schedule fired it.
    pub scheduled_for: Option<i64>,
    /// Its pipeline's `concurrency_key` rendered with its parameters: the key its jobs
    /// are capped (`concurrency_per_key`) and shared fairly by. `None`: no key.
    pub concurrency_key: Option<String>,
    /// Runs this one waits for (existing run ids, deduplicated): it is created
    /// `waiting`, and queued or skipped by the transaction that ends the last of them.
    pub after: Vec<String>,
    /// When it goes once they have ended (ignored without `after`).
    pub after_when: AfterWhen,
    /// `(workflow run id, step)` when it is a workflow step's run: its end counts off
    /// that workflow run.
    pub workflow: Option<(String, String)>,
}

/// `run_create` result.
#[derive(Debug, Clone)]
pub struct RunCreated {
    /// The run's id (an earlier run's when the idempotency key matched).
    pub run_id: String,
    /// Its job ids.
    pub job_ids: Vec<String>,
    /// Creation time (epoch ms).
    pub created_at: i64,
    /// True when an earlier run with the same idempotency key was returned.
    pub existing: bool,
    /// For an earlier run: the parameters it was created with (to detect a reused key).
    pub existing_params: Option<BTreeMap<String, String>>,
    /// For a run created `after` others: its status once created (`waiting`, or
    /// `queued`/`skipped` when they had all ended already). `None` otherwise.
    pub after_status: Option<RunStatus>,
    /// Whether the pipeline was paused when the run was created, when the store read it
    /// in the same transaction (`None`: ask [`Store::pipelines_paused`]).
    pub paused: Option<bool>,
}

/// `run_abort` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortOutcome {
    /// No such run.
    NotFound,
    /// The run had already completed or failed.
    Finished(RunStatus),
    /// The run is aborted (now or before).
    Aborted {
        /// Jobs not terminal at the moment of the abort (`queued` + `running`); 0 when
        /// the run was aborted before.
        aborted_jobs: u32,
        /// Queued jobs aborted there and then: they never run.
        queued: u32,
        /// Running jobs told to stop: each ends `aborted` unless it finishes first.
        running: u32,
    },
}

/// One run as stored, with its jobs (times in epoch ms); the API's `RunView` is made from it.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// Run id.
    pub run_id: String,
    /// Pipeline.
    pub pipeline_id: String,
    /// Status name.
    pub status: String,
    /// Parameters.
    pub parameters: BTreeMap<String, String>,
    /// Shards.
    pub shard_count: u32,
    /// Shards terminal for good.
    pub shards_done: u32,
    /// `api`, `cli`, `dashboard`.
    pub triggered_by: String,
    /// Token label, when known.
    pub actor: Option<String>,
    /// Epoch ms.
    pub created_at: i64,
    /// Epoch ms.
    pub started_at: Option<i64>,
    /// Epoch ms, when finalised.
    pub finished_at: Option<i64>,
    /// Status of the shards alone, once the last one landed.
    pub shards_status: Option<String>,
    /// Completion webhook target.
    pub callback_url: Option<String>,
    /// The run this one re-runs.
    pub rerun_of: Option<String>,
    /// Its priority.
    pub priority: i32,
    /// A delayed run's not-before time (epoch ms).
    pub run_at: Option<i64>,
    /// The schedule tick it is for, when a schedule fired it (epoch ms).
    pub scheduled_for: Option<i64>,
    /// Who aborted it, as JSON `{"actor", "node", "via"}`, when it was aborted.
    pub aborted_by: Option<String>,
    /// The runs it waits (or waited) for, in id order; empty for a plain run.
    pub after: Vec<String>,
    /// Its rule for going once they have ended (with `after` only).
    pub after_when: Option<AfterWhen>,
    /// The workflow run that created it, when it is a step's run.
    pub workflow_run_id: Option<String>,
    /// Its step in that workflow run.
    pub workflow_step: Option<String>,
    /// Its shard jobs in shard order.
    pub jobs: Vec<JobRecord>,
    /// Its finalize job, once queued.
    pub finalizer: Option<JobRecord>,
}

impl RunRecord {
    /// Files a job of this run as a shard or as its finalizer.
    pub fn attach(&mut self, job: JobRecord) {
        if job.kind == JobKind::Finalize {
            self.finalizer = Some(job);
        } else {
            self.jobs.push(job);
        }
    }
}

/// `runs_list` filter. Every field that is set must hold (AND).
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only this pipeline.
    pub pipeline: Option<String>,
    /// Only this status.
    pub status: Option<RunStatus>,
    /// Only runs whose id starts with this (lowercase hex digits and hyphens, as stored);
    /// without a hyphen and with 4–12 digits it also matches the id's last digits (the
    /// short form the dashboard shows).
    pub run_id: Option<String>,
    /// Only runs with this parameter (and, when given, this exact value).
    pub param: Option<ParamFilter>,
    /// Only runs triggered by this actor (token label), exactly.
    pub actor: Option<String>,
    /// Page size.
    pub limit: u32,
    /// Page offset.
    pub offset: u32,
}

/// `RunFilter::param`: a parameter name and optionally its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamFilter {
    /// Parameter name.
    pub name: String,
    /// Its exact value; `None` = any value.
    pub value: Option<String>,
}

/// `pipeline_stats` input: runs that finished in `[since, until)`, in buckets of `bucket_ms`.
#[derive(Debug, Clone, Copy)]
pub struct PipelineStatsParams {
    /// Window start (epoch ms).
    pub since: i64,
    /// Window end (epoch ms, exclusive).
    pub until: i64,
    /// Bucket width (ms); bucket `i` covers `[since + i·bucket_ms, since + (i+1)·bucket_ms)`.
    pub bucket_ms: i64,
}

/// `pipeline_stats` result row: the runs of one pipeline that ended with one status in one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineStatsRow {
    /// Pipeline.
    pub pipeline: String,
    /// Bucket index (0-based from `since`).
    pub bucket: u32,
    /// Terminal run status.
    pub status: String,
    /// Runs.
    pub runs: u64,
    /// Sum of their durations (started → finished; 0 for runs that never started), ms.
    pub duration_sum_ms: i64,
    /// Longest of them, ms.
    pub duration_max_ms: i64,
}

/// What one `runs_prune` call deleted.
#[derive(Debug, Clone, Copy, Default)]
pub struct PruneOutcome {
    /// Runs (with their jobs and output).
    pub runs: usize,
    /// Events.
    pub events: usize,
    /// A batch was full: call again.
    pub more: bool,
}

/// Queued and running counts of one pipeline.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PipelineCounts {
    /// Queued jobs (delayed ones included; those of runs still `waiting` are not).
    pub queued: u64,
    /// Running jobs.
    pub running: u64,
    /// The earliest due time (epoch ms) of its queued jobs, delayed ones included; `None`
    /// when none is queued.
    pub oldest_due_at: Option<i64>,
}

/// `pipeline_pause` input: pause or resume one pipeline.
#[derive(Debug, Clone)]
pub struct PipelinePauseParams {
    /// Pipeline name.
    pub pipeline: String,
    /// True to pause, false to resume.
    pub paused: bool,
    /// Who asked (token label), when known.
    pub actor: Option<String>,
    /// Now (epoch ms).
    pub now: i64,
}

/// A paused pipeline as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelinePause {
    /// Pipeline name.
    pub pipeline: String,
    /// When it was paused (epoch ms).
    pub paused_at: i64,
    /// Who paused it, when known.
    pub paused_by: Option<String>,
}

/// A scheduled pipeline's durable next-fire record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleState {
    /// Pipeline name.
    pub pipeline: String,
    /// The schedule the record was computed for (`expr @ zone`).
    pub key: String,
    /// The next tick to fire (epoch ms).
    pub next_fire_at: i64,
}

/// `schedule_fire` input: fire one tick of a pipeline's schedule.
#[derive(Debug, Clone)]
pub struct ScheduleFireParams {
    /// Pipeline name.
    pub pipeline: String,
    /// The schedule the fire was planned for.
    pub key: String,
    /// The stored next fire time the node read: the write applies only if it is still there.
    pub due: i64,
    /// The next fire time to store.
    pub next: i64,
    /// The run to queue (`triggeredBy: schedule`, `scheduled_for` set).
    pub run: RunCreateParams,
}
