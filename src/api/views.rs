//! What the API shows of runs, jobs and deliveries: the store's records with times
//! as RFC 3339, durations worked out and results parsed. The store records facts; the
//! answers' shapes (and their OpenAPI schemas) live here.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::clock::rfc3339;
use crate::store::{DeliveryAttemptRecord, DeliveryRecord, JobRecord, RunRecord};

/// One job as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    /// Job id.
    pub id: String,
    /// `shard` or `finalize`; `run` when a sharded run's id (the trigger answer's
    /// `jobId`) was asked for: the run as one job, with its shards in `shards`.
    #[schema(pattern = "^(shard|finalize|run)$")]
    pub kind: &'static str,
    /// Run id.
    pub run_id: String,
    /// Pipeline.
    pub pipeline_id: String,
    /// 0-based shard.
    pub shard_index: u32,
    /// Shards in the run.
    pub shard_count: u32,
    /// Status.
    #[schema(value_type = crate::model::JobStatus)]
    pub status: String,
    /// Why it is terminal.
    #[schema(value_type = Option<crate::model::Reason>)]
    pub reason: Option<String>,
    /// Current (or last) attempt.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Times re-queued after an orphaning or shutdown.
    pub requeues: u32,
    /// Node running or last running it; null while it is queued (a re-queued job's
    /// earlier executions, with their nodes and pids, are in its run's `attempts`).
    pub node: Option<String>,
    /// The name of that node (`[server] node_name`).
    pub node_name: Option<String>,
    /// For a queued job that no live node can take (their labels miss its pipeline's
    /// `requires`): why, in one line; null when some live node can.
    pub unplaceable: Option<String>,
    /// Leader pid of the current or last execution; null while it is queued.
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
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, when the last execution started.
    pub started_at: Option<String>,
    /// RFC 3339.
    pub finished_at: Option<String>,
    /// Run time of the last execution in milliseconds, once it has ended.
    pub duration_ms: Option<i64>,
    /// The JSON result the job wrote to `$RUNYARD_RESULT_FILE`.
    pub result: Option<serde_json::Value>,
    /// For a shard a re-run of failed shards kept: the original run's job it copies
    /// (its logs are there). Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_from: Option<String>,
    /// For kind `run`: the run's shards (and its finalizer, last), each as a job.
    /// Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub shards: Option<Vec<JobView>>,
}

/// One run as the API shows it, with its jobs.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    /// Run id.
    pub run_id: String,
    /// Pipeline.
    pub pipeline_id: String,
    /// Status.
    #[schema(value_type = crate::model::RunStatus)]
    pub status: String,
    /// Parameters.
    pub parameters: BTreeMap<String, String>,
    /// Shards.
    pub shard_count: u32,
    /// Shards terminal for good.
    pub shards_done: u32,
    /// `api`, `cli`, `dashboard`, or `schedule`.
    pub triggered_by: String,
    /// Token label, when known.
    pub actor: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub started_at: Option<String>,
    /// RFC 3339, when finalised.
    pub finished_at: Option<String>,
    /// Status of the shards alone, once the last one landed (before any finalizer).
    #[schema(value_type = Option<crate::model::RunStatus>)]
    pub shards_status: Option<String>,
    /// Completion webhook target.
    pub callback_url: Option<String>,
    /// The run this one re-runs (`POST /api/runs/{id}/rerun`). Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<String>,
    /// Claim order (higher first).
    pub priority: i32,
    /// A delayed run's not-before time (RFC 3339): no shard started earlier. Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
    /// For a run its pipeline's schedule fired (`triggeredBy: schedule`): the tick it is
    /// for (RFC 3339). Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<String>,
    /// For an aborted run: who aborted it — `actor` (the token's label, or null), `node`
    /// (the id of the node that took the request) and its `nodeName`, and `via` (`api`,
    /// `cli`, `dashboard`, `bus`).
    /// Absent otherwise (and for runs aborted before this was recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub aborted_by: Option<serde_json::Value>,
    /// The runs it waits (or waited) for, triggered with `after`. Absent otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// With `after`: when it goes once they have ended (`success`, `failure`, `always`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_when: Option<crate::model::AfterWhen>,
    /// The workflow run that created it, when it is a workflow step's run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_run_id: Option<String>,
    /// Its step in that workflow run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_step: Option<String>,
    /// Its shard jobs in shard order.
    pub jobs: Vec<JobView>,
    /// Its finalize job, once queued.
    pub finalizer: Option<JobView>,
}

/// One delivery attempt as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryAttemptView {
    /// 1-based.
    pub attempt: u32,
    /// Node that made it.
    pub node: String,
    /// RFC 3339.
    pub started_at: String,
    /// Milliseconds.
    pub duration_ms: u64,
    /// HTTP status, when a response came.
    pub status_code: Option<u16>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A run's completion webhook as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
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
    /// RFC 3339, when pending.
    pub next_attempt_at: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, when delivered or given up.
    pub finished_at: Option<String>,
    /// Every attempt, oldest first.
    pub history: Vec<DeliveryAttemptView>,
}

impl From<JobRecord> for JobView {
    fn from(j: JobRecord) -> JobView {
        // A queued job runs nowhere: the node and pid of an execution that ended (a
        // requeue after its node died) would read as where it runs now.
        let queued = j.status == "queued";
        JobView {
            duration_ms: j.started_at.zip(j.finished_at).map(|(s, f)| (f - s).max(0)),
            created_at: rfc3339(j.created_at),
            started_at: j.started_at.map(rfc3339),
            finished_at: j.finished_at.map(rfc3339),
            result: j.result.and_then(|t| serde_json::from_str(&t).ok()),
            kind: j.kind.as_str(),
            id: j.id,
            run_id: j.run_id,
            pipeline_id: j.pipeline_id,
            shard_index: j.shard_index,
            shard_count: j.shard_count,
            status: j.status,
            reason: j.reason,
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            requeues: j.requeues,
            node: j.node.filter(|_| !queued),
            node_name: None,
            unplaceable: None,
            pid: j.pid.filter(|_| !queued),
            exit_code: j.exit_code,
            progress: j.progress,
            progress_message: j.progress_message,
            error: j.error,
            abort_requested: j.abort_requested,
            stdout_bytes: j.stdout_bytes,
            stderr_bytes: j.stderr_bytes,
            truncated: j.truncated,
            kept_from: j.kept_from,
            shards: None,
        }
    }
}

impl JobView {
    /// A sharded run seen as one job (what `GET /api/jobs/{runId}` answers, the run id
    /// being the trigger answer's `jobId`): the run's status and times, its shards'
    /// sums and least progress, and the jobs themselves in `shards`.
    pub fn of_run(run: RunRecord) -> JobView {
        let jobs: Vec<JobView> = run
            .jobs
            .into_iter()
            .chain(run.finalizer)
            .map(JobView::from)
            .collect();
        let sum = |f: fn(&JobView) -> u64| jobs.iter().map(f).sum::<u64>();
        JobView {
            id: run.run_id.clone(),
            kind: "run",
            run_id: run.run_id,
            pipeline_id: run.pipeline_id,
            shard_index: 0,
            shard_count: run.shard_count,
            status: run.status,
            reason: None,
            attempt: jobs.iter().map(|j| j.attempt).max().unwrap_or(1),
            max_attempts: jobs.iter().map(|j| j.max_attempts).max().unwrap_or(1),
            requeues: jobs.iter().map(|j| j.requeues).sum(),
            node: None,
            node_name: None,
            unplaceable: None,
            pid: None,
            exit_code: None,
            progress: jobs.iter().filter_map(|j| j.progress).min(),
            progress_message: None,
            error: None,
            abort_requested: jobs.iter().any(|j| j.abort_requested),
            stdout_bytes: sum(|j| j.stdout_bytes),
            stderr_bytes: sum(|j| j.stderr_bytes),
            truncated: jobs.iter().any(|j| j.truncated),
            created_at: rfc3339(run.created_at),
            started_at: run.started_at.map(rfc3339),
            finished_at: run.finished_at.map(rfc3339),
            duration_ms: run
                .started_at
                .zip(run.finished_at)
                .map(|(s, f)| (f - s).max(0)),
            result: None,
            kept_from: None,
            shards: Some(jobs),
        }
    }
}

impl From<RunRecord> for RunView {
    fn from(r: RunRecord) -> RunView {
        RunView {
            run_id: r.run_id,
            pipeline_id: r.pipeline_id,
            status: r.status,
            parameters: r.parameters,
            shard_count: r.shard_count,
            shards_done: r.shards_done,
            triggered_by: r.triggered_by,
            actor: r.actor,
            created_at: rfc3339(r.created_at),
            started_at: r.started_at.map(rfc3339),
            finished_at: r.finished_at.map(rfc3339),
            shards_status: r.shards_status,
            callback_url: r.callback_url,
            rerun_of: r.rerun_of,
            priority: r.priority,
            run_at: r.run_at.map(rfc3339),
            scheduled_for: r.scheduled_for.map(rfc3339),
            aborted_by: r
                .aborted_by
                .as_deref()
                .and_then(|t| serde_json::from_str(t).ok()),
            after: r.after,
            after_when: r.after_when,
            workflow_run_id: r.workflow_run_id,
            workflow_step: r.workflow_step,
            jobs: r.jobs.into_iter().map(JobView::from).collect(),
            finalizer: r.finalizer.map(JobView::from),
        }
    }
}

impl From<DeliveryAttemptRecord> for DeliveryAttemptView {
    fn from(a: DeliveryAttemptRecord) -> DeliveryAttemptView {
        DeliveryAttemptView {
            attempt: a.attempt,
            node: a.node,
            started_at: rfc3339(a.started_at),
            duration_ms: a.duration_ms,
            status_code: a.status_code,
            error: a.error,
        }
    }
}

impl From<DeliveryRecord> for DeliveryView {
    fn from(d: DeliveryRecord) -> DeliveryView {
        DeliveryView {
            id: d.id,
            run_id: d.run_id,
            url: d.url,
            status: d.status,
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at.map(rfc3339),
            created_at: rfc3339(d.created_at),
            finished_at: d.finished_at.map(rfc3339),
            history: d
                .history
                .into_iter()
                .map(DeliveryAttemptView::from)
                .collect(),
        }
    }
}
