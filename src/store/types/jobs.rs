//! What the store takes and gives about jobs: claims, starts, output, progress, ends,
//! the stored job, its logs and the event log.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::model::{JobKind, JobStatus, Reason, RunStatus};

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
    /// Its run waited for other runs (`after`): the job is told where their summaries are
    /// (`RUNYARD_NEEDS_FILE`).
    pub has_needs: bool,
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
    /// Claim follow-up work for the freed slot in the same transaction.
    pub claim_next: Option<JobClaimParams>,
    /// The execution's start, when it ended before its start was recorded on its own.
    pub start: Option<JobStartParams>,
    /// The JSON the job wrote to `$RUNYARD_RESULT_FILE`, already validated.
    pub result: Option<String>,
    /// The caller goes on without the answer (its slot holds the next job to run), so
    /// the store may hold the end briefly to share one commit with other ends (SQLite:
    /// up to a millisecond, `store/sqlite/writer.rs`). It is still durable before it is
    /// answered.
    pub lingers: bool,
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
