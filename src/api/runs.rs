//! Runs, jobs, logs and workers.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, AppState, ErrorBody};
use crate::model::{self, MIN_SHORT_ID, RunId, RunStatus, parse_job_id, short_run_id};
use crate::store::{AbortOutcome, DeliveryView, JobView, RunFilter, RunView};

/// `?limit=&offset=&status=`.
#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PageQuery {
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// Runs to skip (default 0).
    #[param(minimum = 0, maximum = 100_000)]
    offset: Option<u32>,
    /// Only runs with this status.
    #[param(value_type = Option<RunStatus>)]
    status: Option<String>,
}

/// The `{id}` of `/api/runs/{id}…` (what the handlers extract, and its documentation).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct RunIdParam {
    /// A run id: a UUID (hyphenated or 32 hex digits; braced and `urn:uuid:` forms are accepted too),
    /// or a short id: its first 8 or more hex digits (with or without the hyphens) when they
    /// match one run only (400 when they match several). Answers use the lowercase hyphenated form.
    #[param(
        pattern = r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}|[0-9a-fA-F]{8,31}|[0-9a-fA-F]{8}(-([0-9a-fA-F]{0,3}|[0-9a-fA-F]{4}(-([0-9a-fA-F]{0,3}|[0-9a-fA-F]{4}(-([0-9a-fA-F]{0,3}|[0-9a-fA-F]{4}(-[0-9a-fA-F]{0,11})?))?))?))?)$"
    )]
    id: String,
}

/// The `{id}` of `/api/jobs/{id}…` (what the handlers extract, and its documentation).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct JobIdParam {
    /// A job id: `RUN` (single-shard run), `RUN:sN` (shard N, 0-based) or `RUN:finalize`,
    /// where RUN is a run id or a short one (see `/api/runs/{id}`).
    #[param(
        pattern = r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}|[0-9a-fA-F]{8,31}|[0-9a-fA-F]{8}(-([0-9a-fA-F]{0,3}|[0-9a-fA-F]{4}(-([0-9a-fA-F]{0,3}|[0-9a-fA-F]{4}(-([0-9a-fA-F]{0,3}|[0-9a-fA-F]{4}(-[0-9a-fA-F]{0,11})?))?))?))?)(:(s[0-9]{1,6}|finalize))?$"
    )]
    id: String,
}

/// One page of runs.
#[derive(Serialize, ToSchema)]
pub(super) struct RunPage {
    /// Newest first, each with its jobs.
    runs: Vec<RunView>,
    /// The page size used.
    limit: u32,
    /// The offset used.
    offset: u32,
}

/// `GET /api/runs/{id}` answer: the run, and its webhook deliveries when it has a callback.
#[derive(Serialize, ToSchema)]
pub(super) struct RunDetail {
    #[serde(flatten)]
    run: RunView,
    /// Completion webhook deliveries; present when the run has a `callbackUrl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    deliveries: Option<Vec<DeliveryView>>,
}

/// `GET /api/runs/{id}/deliveries` answer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct RunDeliveries {
    /// The run.
    run_id: String,
    /// Its completion webhooks with every attempt.
    deliveries: Vec<DeliveryView>,
}

/// `POST /api/runs/{id}/abort` answer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct Aborted {
    /// The run.
    run_id: String,
    /// Always `aborted`.
    #[schema(pattern = "^aborted$")]
    status: &'static str,
    /// Jobs that were not terminal when the abort landed (0 when it was aborted before).
    aborted_jobs: u32,
}

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

/// `GET /api/workers` answer.
#[derive(Serialize, ToSchema)]
pub(super) struct WorkerList {
    /// Every live node sharing the store.
    workers: Vec<WorkerView>,
}

/// One node.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct WorkerView {
    /// Node id (random per boot).
    id: String,
    /// Host name.
    host: String,
    /// OS pid.
    pid: u32,
    /// Slots (`max_workers`).
    slots: u32,
    /// Registration time (RFC 3339).
    started: String,
    /// Last heartbeat (RFC 3339).
    heartbeat: String,
    /// Jobs it runs now.
    running_jobs: Vec<String>,
    /// True for the node that answers.
    #[serde(rename = "self")]
    is_self: bool,
    /// For the answering node: `admitting`, or `held: <why>` while resource admission
    /// holds claims; null for other nodes.
    admission: Option<String>,
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

/// The canonical form of a run id from the path: any UUID spelling, or a unique prefix.
async fn run_id(
    state: &AppState,
    path: Result<Path<RunIdParam>, PathRejection>,
) -> Result<String, ApiError> {
    let Path(RunIdParam { id }) = path?;
    resolve_run_id(state, &id).await
}

/// The canonical form of a job id from the path (its run part may be a unique prefix).
pub(super) async fn job_id(
    state: &AppState,
    path: Result<Path<JobIdParam>, PathRejection>,
) -> Result<String, ApiError> {
    let Path(JobIdParam { id }) = path?;
    resolve_job_id(state, &id).await
}

/// A full run id in any UUID spelling, or a short id: at least [`MIN_SHORT_ID`] leading
/// hex digits that match exactly one run (404 when none does, 400 naming some
/// candidates when several do).
pub(super) async fn resolve_run_id(state: &AppState, id: &str) -> Result<String, ApiError> {
    if let Ok(run) = RunId::parse(id) {
        return Ok(run.to_string());
    }
    let Some(prefix) = short_run_id(id) else {
        return Err(ApiError::BadRequest(format!(
            "malformed run id: {} (a run id, or at least its first {MIN_SHORT_ID} hex digits)",
            id.chars().take(80).collect::<String>()
        )));
    };
    let found = state.store.run_ids_by_prefix(&prefix, 3).await?;
    match found.as_slice() {
        [] => Err(ApiError::NotFound(format!(
            "Run not found: no run id starts with {prefix}"
        ))),
        [one] => Ok(one.clone()),
        many => Err(ApiError::BadRequest(format!(
            "run id {prefix} is ambiguous: it starts {}{}; give more of the id",
            many[..2].join(", "),
            if many.len() > 2 { " and more" } else { "" }
        ))),
    }
}

/// `RUN`, `RUN:sN` or `RUN:finalize` in canonical form (lowercase hyphenated UUID, no
/// leading zeros), where RUN may be a unique prefix of a run id.
pub(super) async fn resolve_job_id(state: &AppState, id: &str) -> Result<String, ApiError> {
    if let Ok((run, part)) = parse_job_id(id) {
        return Ok(model::canonical_job_id(run, part));
    }
    let (run, part) = match id.split_once(':') {
        Some((run, part)) => (run, Some(part)),
        None => (id, None),
    };
    if short_run_id(run).is_none() {
        // Not a prefix either: the parser's own message.
        return Err(ApiError::BadRequest(
            parse_job_id(id)
                .err()
                .map_or_else(|| "malformed id".into(), |e| e.to_string()),
        ));
    }
    let full = resolve_run_id(state, run).await?;
    let spelled = match part {
        Some(part) => format!("{full}:{part}"),
        None => full,
    };
    let (run, part) = parse_job_id(&spelled).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(model::canonical_job_id(run, part))
}

/// `GET /api/runs`: one page of runs, newest first.
#[utoipa::path(
    get,
    path = "/api/runs",
    tag = "runs",
    operation_id = "listRuns",
    params(PageQuery),
    responses(
        (status = 200, description = "One page of runs with their jobs", body = RunPage),
        (status = 400, description = "limit, offset or status out of range", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn list(
    State(state): State<AppState>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<RunPage>, ApiError> {
    let Query(q) = query?;
    list_runs(&state, None, &q).await
}

/// One page of runs (newest first, jobs embedded), optionally of one pipeline.
pub(super) async fn list_runs(
    state: &AppState,
    pipeline: Option<String>,
    q: &PageQuery,
) -> Result<Json<RunPage>, ApiError> {
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
    Ok(Json(RunPage {
        runs,
        limit,
        offset,
    }))
}

/// `GET /api/runs/{id}`: one run with its jobs (and webhook deliveries).
#[utoipa::path(
    get,
    path = "/api/runs/{id}",
    tag = "runs",
    operation_id = "getRun",
    params(RunIdParam),
    responses(
        (status = 200, description = "The run", body = RunDetail),
        (status = 400, description = "Malformed or ambiguous run id", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn get(
    State(state): State<AppState>,
    path: Result<Path<RunIdParam>, PathRejection>,
) -> Result<Json<RunDetail>, ApiError> {
    let id = run_id(&state, path).await?;
    let run = state
        .store
        .run_get(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Run not found: {id}")))?;
    let deliveries = match run.callback_url {
        Some(_) => Some(state.store.deliveries_of_run(&id).await?),
        None => None,
    };
    Ok(Json(RunDetail { run, deliveries }))
}

/// `GET /api/runs/{id}/deliveries`: the run's completion webhooks with every attempt.
#[utoipa::path(
    get,
    path = "/api/runs/{id}/deliveries",
    tag = "runs",
    operation_id = "listRunDeliveries",
    params(RunIdParam),
    responses(
        (status = 200, description = "The run's webhook deliveries (empty without a callback)", body = RunDeliveries),
        (status = 400, description = "Malformed or ambiguous run id", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn deliveries(
    State(state): State<AppState>,
    path: Result<Path<RunIdParam>, PathRejection>,
) -> Result<Json<RunDeliveries>, ApiError> {
    let id = run_id(&state, path).await?;
    if state.store.run_get(&id).await?.is_none() {
        return Err(ApiError::NotFound(format!("Run not found: {id}")));
    }
    let deliveries = state.store.deliveries_of_run(&id).await?;
    Ok(Json(RunDeliveries {
        run_id: id,
        deliveries,
    }))
}

/// `POST /api/runs/{id}/abort`: marks the run aborted and stops its jobs' process trees.
#[utoipa::path(
    post,
    path = "/api/runs/{id}/abort",
    tag = "runs",
    operation_id = "abortRun",
    params(RunIdParam),
    responses(
        (status = 202, description = "Aborted (now, or already before)", body = Aborted),
        (status = 400, description = "Malformed or ambiguous run id", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 409, description = "The run already completed or failed", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn abort(
    State(state): State<AppState>,
    path: Result<Path<RunIdParam>, PathRejection>,
) -> Result<(StatusCode, Json<Aborted>), ApiError> {
    let id = run_id(&state, path).await?;
    match state.scheduler.abort(&id).await? {
        AbortOutcome::NotFound => Err(ApiError::NotFound(format!("Run not found: {id}"))),
        AbortOutcome::Finished(status) => Err(ApiError::Conflict(format!(
            "Run {id} already finished with status {status}"
        ))),
        AbortOutcome::Aborted { aborted_jobs } => Ok((
            StatusCode::ACCEPTED,
            Json(Aborted {
                run_id: id,
                status: "aborted",
                aborted_jobs,
            }),
        )),
    }
}

/// `GET /api/jobs/{id}`: one job.
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
    let job = state
        .store
        .job_get(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Job not found: {id}")))?;
    Ok(Json(job))
}

/// `?tail=N`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogsQuery {
    /// Only the last N lines of each stream.
    #[param(minimum = 1, maximum = 1_000_000)]
    tail: Option<usize>,
}

/// `GET /api/jobs/{id}/logs`: the job's stored output.
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
    Ok(Json(JobLogsView {
        job_id: id,
        stdout: logs.stdout,
        stderr: logs.stderr,
        total_size: total_size as u64,
        truncated: logs.truncated,
    }))
}

/// `GET /api/workers`: the live nodes sharing this store.
#[utoipa::path(
    get,
    path = "/api/workers",
    tag = "node",
    operation_id = "listWorkers",
    responses(
        (status = 200, description = "Every live node", body = WorkerList),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn workers(State(state): State<AppState>) -> Result<Json<WorkerList>, ApiError> {
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
        let is_self = node.id == state.scheduler.node_id();
        out.push(WorkerView {
            started: crate::clock::rfc3339(node.started_at),
            heartbeat: crate::clock::rfc3339(node.heartbeat_at),
            running_jobs: running,
            admission: is_self.then(|| {
                state
                    .scheduler
                    .admission_held()
                    .map_or("admitting".to_string(), |why| format!("held: {why}"))
            }),
            is_self,
            id: node.id,
            host: node.host,
            pid: node.pid,
            slots: node.slots,
        });
    }
    Ok(Json(WorkerList { workers: out }))
}
