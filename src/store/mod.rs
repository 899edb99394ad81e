//! The durable source of truth: the [`Store`] trait, its parameter and view
//! types, and the change feed that wakes waiters when the store changes.
//!
//! The trait is internal and free to change (like River's driver interface):
//! one method per state transition, named noun-first (`job_claim`,
//! `job_finish`, `run_abort`, `node_heartbeat`), each taking a params struct.
//! Every write made on behalf of an execution is conditional on
//! `(job id, claim_seq, status = 'running')` and reports whether it applied, so
//! a stale node's late write changes nothing (DESIGN decision 3). Run
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

pub mod claim_plan;
pub mod completion;
mod error;
pub mod job_wakes;
pub mod payload;
pub mod postgres;
pub mod rerun;
pub mod sqlite;
pub mod summary;
pub mod transition;

pub use error::{ErrorSource, StoreError, StoreResult};
pub use job_wakes::{JobSubscription, JobWake};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::watch;

use crate::model::{JobKind, JobStatus, Reason, RunStatus};

/// Kinds of change the feed reports (bit flags).
pub mod change {
    /// New or re-queued work, or a slot freed somewhere: claimers should look.
    pub const WORK: u8 = 1;
    /// New events: SSE tailers should read.
    pub const EVENTS: u8 = 2;
    /// New output lines: log streams should read.
    pub const OUTPUT: u8 = 4;
    /// An abort was requested: nodes should cancel their matching jobs.
    pub const ABORT: u8 = 8;
    /// Everything (a change made by another process on the same store).
    pub const ALL: u8 = WORK | EVENTS | OUTPUT | ABORT;
}

/// Counters bumped after each commit, one per change kind; waiters hold receivers.
#[derive(Clone)]
pub struct ChangeFeed {
    senders: Arc<[watch::Sender<u64>; 4]>,
    /// Highest event id known to be readable: committed by this process's writer
    /// (SQLite), or seen below the horizon by the change poll (PostgreSQL).
    last_event: Arc<std::sync::atomic::AtomicI64>,
    /// Kinds this process committed since the bus last took them ([`ChangeFeed::take_local`]).
    local: Arc<LocalCommits>,
    /// Followers of single jobs' output and status ([`job_wakes`]).
    jobs: job_wakes::JobWakes,
    /// How often a follower of a job must look by itself, in ms (0: never needed),
    /// because this feed cannot see other nodes' output.
    output_poll_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// This process's own commits, for the bus to tell other replicas about. Kept apart
/// from [`ChangeFeed::bump`], which also carries wake-ups *from* other processes:
/// republishing those would echo every change around the cluster forever.
#[derive(Default)]
struct LocalCommits {
    kinds: std::sync::atomic::AtomicU8,
    notify: tokio::sync::Notify,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        ChangeFeed {
            senders: Arc::new(std::array::from_fn(|_| watch::channel(0).0)),
            last_event: Arc::default(),
            local: Arc::default(),
            jobs: job_wakes::JobWakes::default(),
            output_poll_ms: Arc::default(),
        }
    }
}

impl ChangeFeed {
    /// Bumps the counters of every kind in `kinds`.
    pub fn bump(&self, kinds: u8) {
        for (bit, tx) in self.senders.iter().enumerate() {
            if kinds & (1 << bit) != 0 {
                tx.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
    }

    /// Bumps `kinds` for a commit made by this process: wakes local waiters as
    /// [`ChangeFeed::bump`] does, and records the kinds for the bus to publish.
    pub fn bump_local(&self, kinds: u8) {
        self.bump(kinds);
        self.note_local(kinds);
    }

    /// Records kinds this process committed, for the bus's bridge only.
    fn note_local(&self, kinds: u8) {
        self.local
            .kinds
            .fetch_or(kinds, std::sync::atomic::Ordering::AcqRel);
        self.local.notify.notify_one();
    }

    /// Waits until this process has committed something since the last call, then
    /// takes the kinds committed meanwhile (one taker: the bus's bridge).
    pub async fn take_local(&self) -> u8 {
        loop {
            let kinds = self
                .local
                .kinds
                .swap(0, std::sync::atomic::Ordering::AcqRel);
            if kinds != 0 {
                return kinds;
            }
            self.local.notify.notified().await;
        }
    }

    /// Records that events up to `id` are committed (called by the writer after COMMIT).
    pub fn publish_last_event(&self, id: i64) {
        self.last_event
            .fetch_max(id, std::sync::atomic::Ordering::AcqRel);
    }

    /// Highest event id known to be readable (0 before the first).
    pub fn last_event(&self) -> i64 {
        self.last_event.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A receiver for one kind (`change::WORK`, …).
    pub fn subscribe(&self, kind: u8) -> watch::Receiver<u64> {
        let bit = kind.trailing_zeros() as usize;
        self.senders[bit.min(3)].subscribe()
    }

    /// New output of `jobs` is committed: wakes their followers only. (A bump of
    /// `change::OUTPUT` without job ids still wakes every follower.)
    pub fn bump_output<'a>(&self, jobs: impl IntoIterator<Item = &'a str>) {
        self.jobs.bump_output(jobs);
        // Other nodes hear it through the bus as a plain OUTPUT wake (kinds carry no
        // job ids), which wakes their followers of any job.
        self.note_local(change::OUTPUT);
    }

    /// The status of `jobs` changed (committed): wakes their followers only.
    pub fn bump_job_state<'a>(&self, jobs: impl IntoIterator<Item = &'a str>) {
        self.jobs.bump_state(jobs);
    }

    /// The status of any job of `run_id` may have changed (an abort): wakes their followers.
    pub fn bump_run_state(&self, run_id: &str) {
        self.jobs.bump_run_state(run_id);
    }

    /// Follows one job's output and status (see [`job_wakes`]).
    pub fn subscribe_output(&self, job_id: &str) -> JobSubscription {
        self.jobs.subscribe(job_id, self.subscribe(change::OUTPUT))
    }

    /// Jobs somebody follows on this process.
    pub fn followed_jobs(&self) -> usize {
        self.jobs.followed()
    }

    /// Says that this feed cannot see output committed by other nodes, so a follower must
    /// look by itself every `every` (PostgreSQL without a bus); `None` undoes it (a bus
    /// that carries output wake-ups).
    pub fn set_output_poll(&self, every: Option<std::time::Duration>) {
        let ms = every.map_or(0, |d| d.as_millis().max(1) as u64);
        self.output_poll_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// How often a follower must look by itself, if at all.
    pub fn output_poll(&self) -> Option<std::time::Duration> {
        match self
            .output_poll_ms
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => None,
            ms => Some(std::time::Duration::from_millis(ms)),
        }
    }
}

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

/// What a run may carry besides its trigger's basics (issue 11). The default is a plain
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
    /// Whether the pipeline was paused when the run was created, when the store read it
    /// in the same transaction (`None`: ask [`Store::pipelines_paused`]).
    pub paused: Option<bool>,
}

/// `job_claim` input.
#[derive(Debug, Clone)]
pub struct JobClaimParams {
    /// The claiming node.
    pub node_id: String,
    /// At most this many jobs (the node's free slots).
    pub max: usize,
    /// Cap on running jobs over every node; 0 = none.
    pub global_cap: usize,
    /// Pipelines this node can run, with their concurrency caps (0 = none).
    pub pipelines: HashMap<String, u32>,
    /// Of those, the pipelines with a `concurrency_key`: their per-key cap
    /// (`concurrency_per_key`, 0 = none). Their jobs are claimed fairly over keys.
    pub keyed: HashMap<String, u32>,
    /// Now (epoch ms); jobs whose `run_after` is later wait.
    pub now: i64,
}

/// A job handed to a node by `job_claim`.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// Job id.
    pub id: String,
    /// Run id.
    pub run_id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// 0-based shard index.
    pub shard_index: u32,
    /// Shards in the run.
    pub shard_count: u32,
    /// Attempt number (1-based).
    pub attempt: u32,
    /// Fencing token of this claim.
    pub claim_seq: i64,
    /// Its priority (claims take higher first).
    pub priority: i32,
    /// The run's parameters.
    pub params: BTreeMap<String, String>,
    /// A shard or the run's finalizer.
    pub kind: JobKind,
    /// When it became due (epoch ms): queued, or its retry backoff ended.
    pub due_at: i64,
    /// Output lines the job had stored when it was claimed: the line number its first
    /// output line of this execution gets (appends are conditional on it, so a flush
    /// retried after an ambiguous commit writes nothing twice).
    pub output_lines: i64,
}

/// `job_claim` result.
#[derive(Debug, Clone, Default)]
pub struct ClaimOutcome {
    /// Jobs now running on the node.
    pub jobs: Vec<ClaimedJob>,
    /// When the earliest held job (a retry's backoff, a delayed run) becomes due, if any.
    pub next_due: Option<i64>,
}

/// `job_start` input: the spawned process, recorded for recovery.
#[derive(Debug, Clone)]
pub struct JobStartParams {
    /// Job id.
    pub job_id: String,
    /// Fence.
    pub claim_seq: i64,
    /// Leader pid (= process group id).
    pub pid: u32,
    /// The leader's start time in clock ticks since boot (pid-reuse guard).
    pub proc_start: u64,
    /// Now.
    pub now: i64,
}

/// `job_output_append` input: lines captured since the last flush.
#[derive(Debug, Clone)]
pub struct OutputAppendParams {
    /// Job id.
    pub job_id: String,
    /// Fence.
    pub claim_seq: i64,
    /// New stdout lines.
    pub stdout: Vec<String>,
    /// New stderr lines.
    pub stderr: Vec<String>,
    /// The flush's time (epoch ms), stored with the chunk: every line of it shows this time.
    pub now: i64,
    /// The line number the batch must start at (the job's stored line count). When the
    /// log already ends at `first_line` + the batch's lines, the batch is taken as written
    /// (a retry of a commit whose answer was lost) and nothing is added. `None` appends
    /// wherever the log ends.
    pub first_line: Option<i64>,
}

/// `job_progress` input.
#[derive(Debug, Clone)]
pub struct JobProgressParams {
    /// Job id.
    pub job_id: String,
    /// Fence.
    pub claim_seq: i64,
    /// 0–100.
    pub percent: u8,
    /// Free text after the number.
    pub message: String,
    /// Now.
    pub now: i64,
}

/// Statements and commits a store sent, by operation: what `/metrics` shows as
/// `runyard_store_statements_total` and `runyard_store_commits_total`: the statements
/// and commits of a store's write transactions, by operation (BEGIN, COMMIT and
/// ROLLBACK are not statements here). On SQLite a commit covers a batch of writes and is
/// counted on the batch's first operation.
#[derive(Debug, Default)]
pub struct Traffic(std::sync::Mutex<BTreeMap<&'static str, (u64, u64)>>);

impl Traffic {
    /// One transaction of `op` that sent `statements` and `commits` COMMITs.
    pub fn record(&self, op: &'static str, statements: u64, commits: u64) {
        let mut by_op = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = by_op.entry(op).or_default();
        entry.0 += statements;
        entry.1 += commits;
    }

    /// `(backend, op, statements, commits)` so far, as [`Store::traffic`] answers.
    pub fn by_backend(&self, backend: &'static str) -> Vec<(&'static str, &'static str, u64, u64)> {
        self.snapshot()
            .into_iter()
            .map(|(op, s, c)| (backend, op, s, c))
            .collect()
    }

    /// `(op, statements, commits)` so far.
    pub fn snapshot(&self) -> Vec<(&'static str, u64, u64)> {
        let by_op = self.0.lock().unwrap_or_else(|e| e.into_inner());
        by_op.iter().map(|(op, (s, c))| (*op, *s, *c)).collect()
    }
}

/// How an execution ended, as reported by the node that ran it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Exit code 0.
    Completed,
    /// The attempt failed; the store retries while attempts remain.
    Failed {
        /// `exit_code` or `timeout`.
        reason: Reason,
        /// Human-readable detail (spawn error, signal).
        error: Option<String>,
    },
    /// Put back in the queue without spending an attempt (`orphaned` or `shutdown`),
    /// within `max_orphan_requeues` and the pipeline's `on_orphan` policy.
    Requeue {
        /// `orphaned` or `shutdown`.
        reason: Reason,
    },
    /// Killed because its run was aborted.
    Aborted,
    /// Never started here (its pipeline's setup failed on this node): back to the queue
    /// as it was, spending neither an attempt nor a requeue, for a node that can run it.
    Release {
        /// `setup_failed`.
        reason: Reason,
        /// Why.
        error: Option<String>,
    },
}

/// `job_finish` input.
#[derive(Debug, Clone)]
pub struct JobFinishParams {
    /// Job id.
    pub job_id: String,
    /// Fence.
    pub claim_seq: i64,
    /// What happened.
    pub outcome: Outcome,
    /// The process's exit code, when it exited normally.
    pub exit_code: Option<i32>,
    /// Bytes the job wrote to stdout (all of them, stored or not).
    pub stdout_bytes: u64,
    /// Bytes the job wrote to stderr.
    pub stderr_bytes: u64,
    /// Whether either stream hit the cap.
    pub truncated: bool,
    /// Now.
    pub now: i64,
    /// Claim follow-up work for the freed slot in the same transaction (DESIGN decision 14).
    pub claim_next: Option<JobClaimParams>,
    /// The execution's start, when it ended before its start was recorded on its own.
    pub start: Option<JobStartParams>,
    /// The JSON the job wrote to `$RUNYARD_RESULT_FILE`, already validated.
    pub result: Option<String>,
}

/// `job_finish` result.
#[derive(Debug, Clone)]
pub struct FinishOutcome {
    /// False when the fence did not match (the write changed nothing).
    pub applied: bool,
    /// The job's status after the write.
    pub status: Option<JobStatus>,
    /// Set when this write finalised the run.
    pub run_finalized: Option<RunStatus>,
    /// Jobs claimed for the freed slot (when `claim_next` was given).
    pub next: Vec<ClaimedJob>,
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

/// A node's registration row.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRow {
    /// Random per boot of the process.
    pub id: String,
    /// Host name.
    pub host: String,
    /// OS pid.
    pub pid: u32,
    /// The process's start time (clock ticks since boot).
    #[serde(skip)]
    pub proc_start: u64,
    /// The kernel boot id.
    #[serde(skip)]
    pub boot_id: String,
    /// Slots (`max_workers`).
    pub slots: u32,
    /// Registration time (epoch ms).
    pub started_at: i64,
    /// Last heartbeat (epoch ms).
    pub heartbeat_at: i64,
    /// Its name, unique among registered nodes (empty for a node from before names).
    pub name: String,
    /// Where its API is reached (`advertise_url`), if it said.
    pub url: Option<String>,
    /// Its labels, matched against pipelines' `requires`.
    pub labels: crate::model::Labels,
    /// Digest of the config it runs ([`crate::config::Settings::config_digest`]).
    pub config_digest: String,
    /// What it has for its jobs (`[server] resources`).
    pub capacity: crate::model::Resources,
}

impl NodeRow {
    /// `{"url", "labels", "configDigest", "capacity"}`: the `info` column both stores keep.
    pub fn info_json(&self) -> String {
        serde_json::json!({"url": self.url, "labels": self.labels,
            "configDigest": self.config_digest, "capacity": self.capacity})
        .to_string()
    }

    /// Fills `url`, `labels` and `config_digest` from an `info` column (absent or
    /// unreadable: left empty, as for a node from before names).
    pub fn with_info(mut self, info: Option<&str>) -> NodeRow {
        #[derive(serde::Deserialize, Default)]
        #[serde(rename_all = "camelCase", default)]
        struct Info {
            url: Option<String>,
            labels: crate::model::Labels,
            config_digest: String,
            capacity: crate::model::Resources,
        }
        let info: Info = info
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default();
        self.url = info.url;
        self.labels = info.labels;
        self.config_digest = info.config_digest;
        self.capacity = info.capacity;
        self
    }
}

/// How long a node id's name is kept after the node is gone (`node_names`).
pub const NODE_NAME_KEEP_MS: i64 = 90 * 86_400_000;

/// `node_heartbeat` input.
#[derive(Debug, Clone)]
pub struct NodeHeartbeatParams {
    /// This node.
    pub node_id: String,
    /// The jobs it runs, with their fences.
    pub running: Vec<(String, i64)>,
    /// Now.
    pub now: i64,
}

/// `node_heartbeat` result.
#[derive(Debug, Clone, Default)]
pub struct HeartbeatOutcome {
    /// False when the node row is gone (another node proved it dead).
    pub registered: bool,
    /// Of the listed executions `(job id, claim_seq)`, those this node must stop:
    /// aborted, or no longer its claim.
    pub cancel: Vec<(String, i64)>,
}

/// A running job as recorded for recovery.
#[derive(Debug, Clone)]
pub struct RunningJob {
    /// Job id.
    pub id: String,
    /// Fence.
    pub claim_seq: i64,
    /// Leader pid, once started.
    pub pid: Option<u32>,
    /// Leader start time.
    pub proc_start: Option<u64>,
    /// When it was claimed (epoch ms).
    pub claimed_at: i64,
}

/// One job as stored (times in epoch ms); the API's `JobView` is made from it.
#[derive(Debug, Clone)]
pub struct JobRecord {
    /// Job id.
    pub id: String,
    /// Shard or finalizer.
    pub kind: JobKind,
    /// Run id.
    pub run_id: String,
    /// Pipeline.
    pub pipeline_id: String,
    /// 0-based shard.
    pub shard_index: u32,
    /// Shards in the run.
    pub shard_count: u32,
    /// Status name.
    pub status: String,
    /// Why it is terminal.
    pub reason: Option<String>,
    /// Current (or last) attempt.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Times re-queued after an orphaning or shutdown.
    pub requeues: u32,
    /// Node running or last running it.
    pub node: Option<String>,
    /// Leader pid of the current or last execution.
    pub pid: Option<u32>,
    /// Exit code of the last execution.
    pub exit_code: Option<i32>,
    /// Last reported progress (0–100).
    pub progress: Option<u8>,
    /// Last progress message.
    pub progress_message: Option<String>,
    /// Error detail.
    pub error: Option<String>,
    /// An abort is waiting for the process to exit.
    pub abort_requested: bool,
    /// Bytes written to stdout by the last execution.
    pub stdout_bytes: u64,
    /// Bytes written to stderr by the last execution.
    pub stderr_bytes: u64,
    /// Output hit the cap.
    pub truncated: bool,
    /// Epoch ms.
    pub created_at: i64,
    /// Epoch ms, when the last execution started.
    pub started_at: Option<i64>,
    /// Epoch ms.
    pub finished_at: Option<i64>,
    /// The JSON text the job wrote to `$RUNYARD_RESULT_FILE`.
    pub result: Option<String>,
    /// For a shard a re-run kept: the original run's job it is a copy of.
    pub kept_from: Option<String>,
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

/// Stored output of a job.
#[derive(Debug, Clone, Default)]
pub struct JobLogs {
    /// stdout lines.
    pub stdout: Vec<String>,
    /// stderr lines.
    pub stderr: Vec<String>,
    /// Whether capture hit the cap.
    pub truncated: bool,
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One stored output line with its per-job sequence number.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// Per-job sequence number (SSE id of log streams).
    pub seq: i64,
    /// Stream.
    pub stream: Stream,
    /// Text.
    pub line: String,
    /// The execution (claim) that wrote it: lines of one attempt share it.
    pub claim_seq: i64,
    /// When its chunk was committed (epoch ms of the flush); `None` for output stored
    /// before the store recorded it.
    pub time: Option<i64>,
}

/// One stored event.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Monotonic id (SSE `id:`).
    pub id: i64,
    /// `job:created`, …
    pub name: String,
    /// JSON payload.
    pub data: String,
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
    /// Queued jobs.
    pub queued: u64,
    /// Running jobs.
    pub running: u64,
    /// The earliest due time (epoch ms) of its queued jobs, delayed ones included; `None`
    /// when none is queued.
    pub oldest_due_at: Option<i64>,
}

/// A completion webhook due for delivery, leased to one node.
#[derive(Debug, Clone)]
pub struct PendingDelivery {
    /// The `webhook-id`: stable over retries, so receivers can deduplicate.
    pub id: String,
    /// Run it reports.
    pub run_id: String,
    /// Target.
    pub url: String,
    /// JSON body.
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// What one delivery attempt decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryNext {
    /// The receiver answered 2xx.
    Delivered,
    /// Try again at this time (epoch ms).
    RetryAt(i64),
    /// Attempts exhausted (or not retryable): give up.
    GiveUp,
}

/// `delivery_record` input.
#[derive(Debug, Clone)]
pub struct DeliveryRecordParams {
    /// Delivery id.
    pub id: String,
    /// The node that made the attempt (must hold the lease).
    pub node_id: String,
    /// Attempt start (epoch ms).
    pub started_at: i64,
    /// How long it took.
    pub duration_ms: u64,
    /// HTTP status, when a response came.
    pub status_code: Option<u16>,
    /// Why it failed.
    pub error: Option<String>,
    /// What happens next.
    pub next: DeliveryNext,
}

/// One delivery attempt as stored.
#[derive(Debug, Clone)]
pub struct DeliveryAttemptRecord {
    /// 1-based.
    pub attempt: u32,
    /// Node that made it.
    pub node: String,
    /// Epoch ms.
    pub started_at: i64,
    /// Milliseconds.
    pub duration_ms: u64,
    /// HTTP status, when a response came.
    pub status_code: Option<u16>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A run's completion webhook as stored, with its attempts.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    /// The `webhook-id`.
    pub id: String,
    /// Run.
    pub run_id: String,
    /// Target.
    pub url: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// Epoch ms of the next attempt, when pending.
    pub next_attempt_at: Option<i64>,
    /// Epoch ms.
    pub created_at: i64,
    /// Epoch ms, when delivered or given up.
    pub finished_at: Option<i64>,
    /// Every attempt, oldest first.
    pub history: Vec<DeliveryAttemptRecord>,
}

/// One node's setup and circuit state for one pipeline (DESIGN decision 19).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineNodeState {
    /// Node.
    pub node_id: String,
    /// Pipeline.
    pub pipeline: String,
    /// `pending`, `running`, `ready` or `failed`.
    pub setup: String,
    /// Setup failures in a row.
    pub failures: u32,
    /// `closed`, `open` or `half_open`.
    pub circuit: String,
    /// While open: when the trial setup becomes possible (epoch ms).
    #[serde(skip)]
    pub open_until: Option<i64>,
    /// Output tail or reason of the last failure.
    pub last_error: Option<String>,
    /// When written (epoch ms).
    #[serde(skip)]
    pub updated_at: i64,
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
    /// One run's events in id order, without `job:progress`, at most `limit` (the oldest).
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
