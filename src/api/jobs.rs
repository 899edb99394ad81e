//! One job: `GET /api/jobs/{id}` (a sharded run's id answers with the run as one job)
//! and its stored logs.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ids::{JobIdParam, job_id};
use super::views::JobView;
use super::{ApiError, AppState, ErrorBody};

/// `GET /api/jobs/{id}/logs` answer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct JobLogsView {
    /// The job.
    job_id: String,
    /// Stored stdout lines (the last `tail` when asked).
    stdout: Vec<String>,
    /// Stored stderr lines (the last `tail` when asked).
    stderr: Vec<String>,
    /// Bytes returned: each line plus its newline.
    total_size: u64,
    /// Capture hit `max_output_bytes`: the rest was counted, not kept.
    truncated: bool,
}

/// `GET /api/jobs/{id}`: one job. A sharded run's id (the trigger answer's `jobId`)
/// answers with the run as one job (`kind: run`) and its jobs in `shards`.
#[utoipa::path(
    get,
    path = "/api/jobs/{id}",
    tag = "jobs",
    operation_id = "getJob",
    params(JobIdParam),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 400, description = "Malformed job id, or an ambiguous short run id", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn job(
    State(state): State<AppState>,
    path: Result<Path<JobIdParam>, PathRejection>,
) -> Result<Json<JobView>, ApiError> {
    let id = job_id(&state, path).await?;
    let mut view = match state.store.job_get(&id).await? {
        Some(job) => JobView::from(job),
        // The trigger answer's `jobId` is the run id, which names no job of a sharded
        // run: answer with the run as one job and its shards.
        None => match sharded_run(&state, &id).await? {
            Some(run) => JobView::of_run(run),
            None => return Err(ApiError::NotFound(format!("Job not found: {id}"))),
        },
    };
    super::nodes::Fleet::load(&state)
        .await?
        .annotate(&state, &mut view);
    Ok(Json(view))
}

/// The 404 for a job id that names no job; for a sharded run's id (the trigger answer's
/// `jobId`) it names the run's jobs, whose one-job routes (a log stream, a log download)
/// take each of them.
pub(super) async fn job_not_found(state: &AppState, id: &str) -> ApiError {
    match sharded_run(state, id).await {
        Ok(Some(run)) => {
            let jobs: Vec<&str> = run.jobs.iter().map(|j| j.id.as_str()).collect();
            ApiError::NotFound(format!(
                "{id} is a run of {} shards, not one job: use one of its jobs ({}), or \
                 GET /api/jobs/{id} and /api/jobs/{id}/logs for all of them",
                run.shard_count,
                jobs.join(", ")
            ))
        }
        _ => ApiError::NotFound(format!("Job not found: {id}")),
    }
}

/// The sharded run `id` names, when it is a run id and not a job's.
async fn sharded_run(
    state: &AppState,
    id: &str,
) -> Result<Option<crate::store::RunRecord>, ApiError> {
    if id.contains(':') {
        return Ok(None);
    }
    Ok(state.store.run_get(id).await?)
}

/// `?tail=N`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogsQuery {
    /// Only the last N lines of each stream.
    #[param(minimum = 1, maximum = 1_000_000)]
    tail: Option<usize>,
}

/// `GET /api/jobs/{id}/logs`: the job's stored output. A sharded run's id answers with
/// every shard's lines and the finalizer's, each prefixed with its part (`[s0] `).
#[utoipa::path(
    get,
    path = "/api/jobs/{id}/logs",
    tag = "jobs",
    operation_id = "getJobLogs",
    params(JobIdParam, LogsQuery),
    responses(
        (status = 200, description = "Stored stdout and stderr lines", body = JobLogsView),
        (status = 400, description = "Malformed job id, an ambiguous short run id, or tail out of range", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn logs(
    State(state): State<AppState>,
    path: Result<Path<JobIdParam>, PathRejection>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Json<JobLogsView>, ApiError> {
    let id = job_id(&state, path).await?;
    let Query(q) = query?;
    if q.tail == Some(0) || q.tail.is_some_and(|t| t > 1_000_000) {
        return Err(ApiError::BadRequest(
            "tail must be between 1 and 1000000".into(),
        ));
    }
    let (stdout, stderr, truncated) = match state.store.job_logs(&id, q.tail).await? {
        Some(logs) => (logs.stdout, logs.stderr, logs.truncated),
        // A sharded run's id (the trigger answer's `jobId`): every shard's lines, and
        // the finalizer's, each prefixed with its part (`[s0] `, `[finalize] `).
        None => {
            let run = sharded_run(&state, &id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("Job not found: {id}")))?;
            let (mut stdout, mut stderr, mut truncated) = (Vec::new(), Vec::new(), false);
            for job in run.jobs.iter().chain(&run.finalizer) {
                let Some(logs) = state.store.job_logs(&job.id, q.tail).await? else {
                    continue;
                };
                let part = job.id.rsplit_once(':').map_or("s0", |(_, p)| p);
                stdout.extend(logs.stdout.iter().map(|l| format!("[{part}] {l}")));
                stderr.extend(logs.stderr.iter().map(|l| format!("[{part}] {l}")));
                truncated |= logs.truncated;
            }
            (stdout, stderr, truncated)
        }
    };
    // totalSize counts what is returned: each line's bytes plus its newline.
    let total_size: usize = stdout.iter().chain(&stderr).map(|l| l.len() + 1).sum();
    Ok(Json(JobLogsView {
        job_id: id,
        stdout,
        stderr,
        total_size: total_size as u64,
        truncated,
    }))
}
