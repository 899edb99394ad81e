//! Runs, jobs, logs and workers.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::model::{self, RunId, RunStatus, parse_job_id};
use crate::store::{AbortOutcome, RunFilter};

/// `?limit=&offset=&status=`.
#[derive(Deserialize, Default)]
pub(super) struct PageQuery {
    limit: Option<u32>,
    offset: Option<u32>,
    status: Option<String>,
}

/// Deepest page offset (deeper pages cost a scan of everything before them).
const MAX_OFFSET: u32 = 100_000;

/// Validated paging: limit 1–500 (default 50), offset, optional status.
pub(super) fn page(q: &PageQuery) -> Result<(u32, u32, Option<RunStatus>), ApiError> {
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > 500 {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 500".into(),
        ));
    }
    let status = match &q.status {
        None => None,
        Some(s) => Some(s.parse::<RunStatus>().map_err(|_| {
            ApiError::BadRequest(format!(
                "unknown status {:?}; expected one of {}",
                s.chars().take(40).collect::<String>(),
                RunStatus::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?),
    };
    let offset = q.offset.unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err(ApiError::BadRequest(format!(
            "offset must be at most {MAX_OFFSET}"
        )));
    }
    Ok((limit, offset, status))
}

/// The canonical form of a run id from the path (any UUID spelling is accepted).
fn run_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = path?;
    let run = RunId::parse(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(run.to_string())
}

/// The canonical form of a job id from the path.
pub(super) fn job_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = path?;
    canonical_job_id(&id)
}

/// `RUN`, `RUN:sN` or `RUN:finalize` in canonical form (lowercase hyphenated UUID, no leading zeros).
pub(super) fn canonical_job_id(id: &str) -> Result<String, ApiError> {
    let (run, part) = parse_job_id(id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(model::canonical_job_id(run, part))
}

pub(super) async fn list(
    State(state): State<AppState>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query?;
    list_runs(&state, None, &q).await
}

/// One page of runs (newest first, jobs embedded), optionally of one pipeline.
pub(super) async fn list_runs(
    state: &AppState,
    pipeline: Option<String>,
    q: &PageQuery,
) -> Result<Json<Value>, ApiError> {
    let (limit, offset, status) = page(q)?;
    let runs = state
        .store
        .runs_list(RunFilter {
            pipeline,
            status,
            limit,
            offset,
        })
        .await?;
    Ok(Json(
        json!({ "runs": runs, "limit": limit, "offset": offset }),
    ))
}

pub(super) async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = run_id(path)?;
    let run = state
        .store
        .run_get(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Run not found: {id}")))?;
    let mut value = serde_json::to_value(run).unwrap_or_default();
    if value["callbackUrl"].is_string() {
        value["deliveries"] = json!(state.store.deliveries_of_run(&id).await?);
    }
    Ok(Json(value))
}

/// `GET /api/runs/{id}/deliveries`: the run's completion webhooks with every attempt.
pub(super) async fn deliveries(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = run_id(path)?;
    if state.store.run_get(&id).await?.is_none() {
        return Err(ApiError::NotFound(format!("Run not found: {id}")));
    }
    let deliveries = state.store.deliveries_of_run(&id).await?;
    Ok(Json(json!({"runId": id, "deliveries": deliveries})))
}

pub(super) async fn abort(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let id = run_id(path)?;
    match state.scheduler.abort(&id).await? {
        AbortOutcome::NotFound => Err(ApiError::NotFound(format!("Run not found: {id}"))),
        AbortOutcome::Finished(status) => Err(ApiError::Conflict(format!(
            "Run {id} already finished with status {status}"
        ))),
        AbortOutcome::Aborted { aborted_jobs } => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"runId": id, "status": "aborted", "abortedJobs": aborted_jobs})),
        )),
    }
}

pub(super) async fn job(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = job_id(path)?;
    let job = state
        .store
        .job_get(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Job not found: {id}")))?;
    Ok(Json(serde_json::to_value(job).unwrap_or_default()))
}

#[derive(Deserialize)]
pub(super) struct LogsQuery {
    tail: Option<usize>,
}

pub(super) async fn logs(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = job_id(path)?;
    let Query(q) = query?;
    if q.tail == Some(0) || q.tail.is_some_and(|t| t > 1_000_000) {
        return Err(ApiError::BadRequest(
            "tail must be between 1 and 1000000".into(),
        ));
    }
    let logs = state
        .store
        .job_logs(&id, q.tail)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Job not found: {id}")))?;
    // totalSize counts what is returned: each line's bytes plus its newline.
    let total_size: usize = logs
        .stdout
        .iter()
        .chain(&logs.stderr)
        .map(|l| l.len() + 1)
        .sum();
    Ok(Json(json!({
        "jobId": id,
        "stdout": logs.stdout,
        "stderr": logs.stderr,
        "totalSize": total_size,
        "truncated": logs.truncated,
    })))
}

pub(super) async fn workers(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let nodes = state.store.nodes_list().await?;
    let mut out = Vec::with_capacity(nodes.len());
    for node in nodes {
        let running: Vec<String> = state
            .store
            .jobs_running_on(&node.id)
            .await?
            .into_iter()
            .map(|j| j.id)
            .collect();
        out.push(json!({
            "id": node.id,
            "host": node.host,
            "pid": node.pid,
            "slots": node.slots,
            "started": crate::clock::rfc3339(node.started_at),
            "heartbeat": crate::clock::rfc3339(node.heartbeat_at),
            "runningJobs": running,
            "self": node.id == state.scheduler.node_id(),
            "admission": if node.id == state.scheduler.node_id() {
                state.scheduler.admission_held().map_or(json!("admitting"), |why| json!(format!("held: {why}")))
            } else {
                Value::Null
            },
        }));
    }
    Ok(Json(json!({ "workers": out })))
}
