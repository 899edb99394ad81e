//! The events a transition emits, built once for every backend.
//!
//! A backend decides nothing here: it passes what it read and wrote, gets a
//! [`NewEvent`] back, and inserts it in the same transaction. Every payload
//! gets the same envelope (`runId`, `timestamp`) from [`NewEvent::data_text`],
//! so the SSE stream reads the same on SQLite and PostgreSQL.

use serde_json::{Value, json};

use super::transition::{JobFence, Transition};
use crate::clock::rfc3339;
use crate::model::{EventName, JobKind, JobStatus, Reason, RunStatus};

/// An event to insert in the transaction that caused it.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// `job:created`, …
    pub name: EventName,
    /// The run it belongs to.
    pub run_id: String,
    /// The payload without its envelope.
    pub data: Value,
}

impl NewEvent {
    fn new(name: EventName, run_id: &str, data: Value) -> NewEvent {
        NewEvent {
            name,
            run_id: run_id.to_string(),
            data,
        }
    }

    /// The stored JSON text: the payload with `runId` (unless it is a pipeline's event,
    /// stored with an empty run id) and `timestamp` added (in place: no copy of the
    /// payload on the path every transition takes).
    pub fn data_text(&mut self, now: i64) -> String {
        if let Value::Object(map) = &mut self.data {
            if self.name.is_workflow() {
                map.insert("workflowRunId".into(), json!(self.run_id));
            } else if !self.run_id.is_empty() {
                map.insert("runId".into(), json!(self.run_id));
            }
            map.insert("timestamp".into(), json!(rfc3339(now)));
        }
        self.data.to_string()
    }
}

/// A pipeline was paused or resumed (`pipeline:paused` / `pipeline:resumed`). It belongs to
/// no run: stored with an empty run id, and its payload has no `runId`.
pub fn pipeline_paused(pipeline: &str, paused: bool, actor: Option<&str>) -> NewEvent {
    NewEvent::new(
        if paused {
            EventName::PipelinePaused
        } else {
            EventName::PipelineResumed
        },
        "",
        json!({"pipelineId": pipeline, "paused": paused, "actor": actor}),
    )
}

/// A shard job queued by a trigger.
pub fn shard_created(
    run_id: &str,
    job_id: &str,
    pipeline: &str,
    shard_index: u32,
    shard_count: u32,
    triggered_by: &str,
    actor: Option<&str>,
) -> NewEvent {
    NewEvent::new(
        EventName::JobCreated,
        run_id,
        json!({"jobId": job_id, "pipelineId": pipeline, "status": "queued", "shardIndex": shard_index,
               "shardCount": shard_count, "triggeredBy": triggered_by, "actor": actor}),
    )
}

/// A run's finalize job, queued when its last shard landed.
pub fn finalizer_created(run_id: &str, job_id: &str, pipeline: &str, shard_index: u32) -> NewEvent {
    NewEvent::new(
        EventName::JobCreated,
        run_id,
        json!({"jobId": job_id, "pipelineId": pipeline, "status": "queued", "kind": JobKind::Finalize.as_str(),
               "shardIndex": shard_index}),
    )
}

/// An execution's process was spawned (`claimSeq` tells executions of one job apart).
pub fn job_started(
    run_id: &str,
    job_id: &str,
    pipeline: &str,
    shard_index: u32,
    attempt: u32,
    pid: u32,
    claim_seq: i64,
) -> NewEvent {
    NewEvent::new(
        EventName::JobStarted,
        run_id,
        json!({"jobId": job_id, "pipelineId": pipeline, "status": "running", "shardIndex": shard_index,
               "attempt": attempt, "pid": pid, "claimSeq": claim_seq}),
    )
}

/// A `::progress` line was recorded.
pub fn job_progress(
    run_id: &str,
    job_id: &str,
    pipeline: &str,
    shard_index: u32,
    percent: u8,
    message: &str,
) -> NewEvent {
    NewEvent::new(
        EventName::JobProgress,
        run_id,
        json!({"jobId": job_id, "pipelineId": pipeline, "status": "running", "shardIndex": shard_index,
               "progress": percent, "message": message}),
    )
}

/// An execution ended and its job moved on as `t` decided (terminal, retry or requeue).
pub fn job_ended(
    job_id: &str,
    row: &JobFence,
    t: &Transition,
    exit_code: Option<i32>,
    error: Option<&str>,
) -> NewEvent {
    let name = match t.status {
        JobStatus::Completed => EventName::JobCompleted,
        JobStatus::Aborted => EventName::JobAborted,
        _ => EventName::JobFailed,
    };
    let mut data = json!({
        "jobId": job_id, "pipelineId": row.pipeline, "status": t.status.as_str(),
        "shardIndex": row.shard_index, "attempt": row.attempt, "exitCode": exit_code,
        "reason": t.reason.map(|r| r.as_str()), "claimSeq": row.claim_seq,
    });
    if row.kind == JobKind::Finalize {
        data["kind"] = json!(row.kind.as_str());
    }
    if t.status == JobStatus::Queued {
        data["nextAttempt"] = json!(t.attempt);
        data["retryAt"] = json!(rfc3339(t.run_after));
    }
    if let Some(e) = error {
        data["error"] = json!(e);
    }
    NewEvent::new(name, &row.run_id, data)
}

/// A queued shard was aborted with its run (it never ran).
pub fn queued_job_aborted(
    run_id: &str,
    job_id: &str,
    pipeline: &str,
    shard_index: u32,
) -> NewEvent {
    queued_job_ended(run_id, job_id, pipeline, shard_index, Reason::Aborted)
}

/// `job:aborted` for a queued job that ends without running: its run was aborted, or
/// skipped (`reason`).
pub fn queued_job_ended(
    run_id: &str,
    job_id: &str,
    pipeline: &str,
    shard_index: u32,
    reason: Reason,
) -> NewEvent {
    NewEvent::new(
        EventName::JobAborted,
        run_id,
        json!({"jobId": job_id, "pipelineId": pipeline, "status": "aborted", "shardIndex": shard_index,
               "reason": reason.as_str()}),
    )
}

/// `run:released`: a waiting run's last need ended as it required; its jobs are queued.
pub fn run_released(run_id: &str, pipeline: &str, after: &[String]) -> NewEvent {
    NewEvent::new(
        EventName::RunReleased,
        run_id,
        json!({"pipelineId": pipeline, "status": "queued", "after": after}),
    )
}

/// `run:skipped`: a waiting run's needs did not end as it required; it never runs
/// (`run:completed` with status `skipped` follows).
pub fn run_skipped(run_id: &str, pipeline: &str, after: &[String]) -> NewEvent {
    NewEvent::new(
        EventName::RunSkipped,
        run_id,
        json!({"pipelineId": pipeline, "status": "skipped", "after": after}),
    )
}

/// `workflow:created`: a workflow run and every step's run were created.
pub fn workflow_created(
    workflow_run_id: &str,
    workflow: &str,
    steps: &[crate::model::WorkflowStep],
    rerun_of: Option<&str>,
) -> NewEvent {
    let runs: serde_json::Map<String, Value> = steps
        .iter()
        .map(|s| (s.name.clone(), json!(s.run_id)))
        .collect();
    NewEvent::new(
        EventName::WorkflowCreated,
        workflow_run_id,
        json!({"workflowId": workflow, "status": "queued", "runs": runs, "rerunOf": rerun_of}),
    )
}

/// `workflow:completed` / `workflow:failed` / `workflow:aborted`: the workflow run's
/// last step run ended (emitted exactly once per workflow run).
pub fn workflow_ended(
    workflow_run_id: &str,
    workflow: &str,
    status: crate::model::WorkflowStatus,
    aborted_by: Option<&str>,
) -> NewEvent {
    use crate::model::WorkflowStatus;
    let name = match status {
        WorkflowStatus::Failed => EventName::WorkflowFailed,
        WorkflowStatus::Aborted => EventName::WorkflowAborted,
        _ => EventName::WorkflowCompleted,
    };
    let mut data = json!({"workflowId": workflow, "status": status.as_str()});
    if let Some(by) = aborted_by.and_then(|t| serde_json::from_str::<Value>(t).ok()) {
        data["abortedBy"] = by;
    }
    NewEvent::new(name, workflow_run_id, data)
}

/// The run turned terminal (emitted exactly once per run).
pub fn run_completed(
    run_id: &str,
    pipeline: &str,
    status: RunStatus,
    shard_count: u32,
    finalizer: Option<(&str, Option<i32>)>,
    aborted_by: Option<&str>,
) -> NewEvent {
    let mut data =
        json!({"pipelineId": pipeline, "status": status.as_str(), "shardCount": shard_count});
    if let Some((fin_status, exit_code)) = finalizer {
        data["finalizer"] = json!({"status": fin_status, "exitCode": exit_code});
    }
    // Who aborted an aborted run (`{"actor", "node", "via"}`).
    if let Some(by) = aborted_by.and_then(|t| serde_json::from_str::<Value>(t).ok()) {
        data["abortedBy"] = by;
    }
    NewEvent::new(EventName::RunCompleted, run_id, data)
}
