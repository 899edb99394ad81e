//! The run summary (the finalizer's `$RUNYARD_SUMMARY_FILE` and the webhook's
//! `data`) and the webhook envelope, built from plain rows for every backend.

use serde_json::{Value, json};

use crate::clock::rfc3339;
use crate::model::JobKind;

/// What the summary needs of the run row.
#[derive(Debug, Clone)]
pub struct RunRow {
    /// Pipeline.
    pub pipeline: String,
    /// Current status.
    pub status: String,
    /// Parameters as stored (JSON text).
    pub params: String,
    /// The shards' status, once they all landed.
    pub shards_status: Option<String>,
    /// `api`, `cli`, `dashboard`.
    pub triggered_by: String,
    /// Token label.
    pub actor: Option<String>,
    /// Epoch ms.
    pub created_at: i64,
    /// Epoch ms.
    pub started_at: Option<i64>,
    /// Epoch ms.
    pub finished_at: Option<i64>,
}

/// What the summary needs of each job row.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// Shard or finalizer.
    pub kind: JobKind,
    /// Job id.
    pub id: String,
    /// Shard index.
    pub shard_index: u32,
    /// Status.
    pub status: String,
    /// Reason.
    pub reason: Option<String>,
    /// Exit code of the last execution.
    pub exit_code: Option<i32>,
    /// Attempts made.
    pub attempt: u32,
    /// Epoch ms.
    pub started_at: Option<i64>,
    /// Epoch ms.
    pub finished_at: Option<i64>,
    /// The result JSON as stored.
    pub result: Option<String>,
}

fn job_entry(j: &JobRow) -> Value {
    json!({
        "jobId": j.id,
        "shardIndex": j.shard_index,
        "status": j.status,
        "reason": j.reason,
        "exitCode": j.exit_code,
        "attempts": j.attempt,
        "durationMs": j.started_at.zip(j.finished_at).map(|(s, f)| (f - s).max(0)),
        "result": j.result.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok()),
    })
}

/// The summary of a run from its row and its jobs (in shard order).
pub fn run_summary(run_id: &str, run: &RunRow, jobs: &[JobRow]) -> Value {
    let mut shards = Vec::new();
    let mut finalizer = Value::Null;
    for j in jobs {
        if j.kind == JobKind::Finalize {
            finalizer = job_entry(j);
        } else {
            shards.push(job_entry(j));
        }
    }
    json!({
        "runId": run_id,
        "pipelineId": run.pipeline,
        "status": run.status,
        "shardsStatus": run.shards_status,
        "parameters": serde_json::from_str::<Value>(&run.params).unwrap_or(Value::Null),
        "shardCount": shards.len(),
        "triggeredBy": run.triggered_by,
        "actor": run.actor,
        "createdAt": rfc3339(run.created_at),
        "startedAt": run.started_at.map(rfc3339),
        "finishedAt": run.finished_at.map(rfc3339),
        "shards": shards,
        "finalizer": finalizer,
    })
}

/// A completion webhook to write to the outbox: its stable `webhook-id` and body.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// `msg_<uuid>`: the `webhook-id`, the same on every retry.
    pub id: String,
    /// The JSON body.
    pub payload: String,
}

/// The `run.completed` webhook body around a run summary.
pub fn webhook_envelope(summary: Value, now: i64) -> Envelope {
    Envelope {
        id: format!("msg_{}", uuid::Uuid::now_v7().simple()),
        payload: json!({"type": "run.completed", "timestamp": rfc3339(now), "data": summary})
            .to_string(),
    }
}

/// The `workflow.completed` webhook body around a workflow run's summary (sent for
/// every end: completed, failed or aborted, as `run.completed` is).
pub fn workflow_webhook_envelope(summary: Value, now: i64) -> Envelope {
    Envelope {
        id: format!("msg_{}", uuid::Uuid::now_v7().simple()),
        payload: json!({"type": "workflow.completed", "timestamp": rfc3339(now), "data": summary})
            .to_string(),
    }
}

/// A workflow run's summary: the `workflow.completed` webhook's `data`, with each
/// step's run id and status.
pub fn workflow_summary(
    workflow_run_id: &str,
    workflow: &str,
    status: crate::model::WorkflowStatus,
    params: &str,
    steps: &[crate::model::WorkflowStep],
    mut run_status: impl FnMut(&str) -> Option<String>,
) -> Value {
    let steps: Vec<Value> = steps
        .iter()
        .map(|s| {
            json!({"name": s.name, "pipelineId": s.pipeline, "runId": s.run_id,
                   "status": run_status(&s.run_id), "needs": s.needs, "when": s.when, "kept": s.kept})
        })
        .collect();
    json!({
        "workflowRunId": workflow_run_id,
        "workflowId": workflow,
        "status": status.as_str(),
        "parameters": serde_json::from_str::<Value>(params).unwrap_or(Value::Null),
        "steps": steps,
    })
}
