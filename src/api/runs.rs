//! Runs, jobs, logs and workers.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::history::{AttemptView, attempts};
use super::views::{DeliveryView, JobView, RunView};
use super::{ApiError, AppState, ErrorBody};
use crate::model::{self, MIN_SHORT_ID, RunId, RunStatus, parse_job_id, short_run_id};
use crate::store::{AbortOutcome, ParamFilter, RunFilter};

/// `?limit=&offset=&status=&run=&param=&actor=`.
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
    /// Only runs whose id starts with this (hex digits and hyphens, any case); 4–12 digits
    /// without a hyphen also match the id's last digits (the dashboard's short form).
    #[param(pattern = r"^[0-9a-fA-F-]{1,36}$")]
    run: Option<String>,
    /// Only runs with this parameter: `name` (any value) or `name=value` (exact value);
    /// a name is 1 to 64 characters without `=`.
    #[param(
        min_length = 1,
        max_length = 8300,
        pattern = r"^[^=]{1,64}(=[\s\S]*)?$"
    )]
    param: Option<String>,
    /// Only runs triggered by this actor (a token label), exactly.
    #[param(min_length = 1, max_length = 200)]
    actor: Option<String>,
}

/// The search part of a [`PageQuery`], validated.
struct Search {
    run: Option<String>,
    param: Option<ParamFilter>,
    actor: Option<String>,
}

fn search(q: &PageQuery) -> Result<Search, ApiError> {
    let run = match q.run.as_deref() {
        None => None,
        Some(r)
            if (1..=36).contains(&r.len())
                && r.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') =>
        {
            Some(r.to_ascii_lowercase())
        }
        Some(_) => {
            return Err(ApiError::BadRequest(
                "run must be 1 to 36 hex digits or hyphens (a run id or its start)".into(),
            ));
        }
    };
    let param = match q.param.as_deref() {
        None => None,
        Some(p) => {
            let (name, value) = match p.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (p, None),
            };
            if name.is_empty() || name.chars().count() > 64 || p.chars().count() > 8300 {
                return Err(ApiError::BadRequest(
                    "param must be `name` or `name=value` (a name of 1 to 64 characters, at most 8300 in all)"
                        .into(),
                ));
            }
            Some(ParamFilter {
                name: name.to_string(),
                value,
            })
        }
    };
    let actor = match q.actor.as_deref() {
        None => None,
        Some(a) if !a.is_empty() && a.chars().count() <= 200 => Some(a.to_string()),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "actor must be 1 to 200 characters".into(),
            ));
        }
    };
    Ok(Search { run, param, actor })
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

/// `GET /api/runs/{id}` answer: the run, its jobs' attempt history, and its webhook
/// deliveries when it has a callback.
#[derive(Serialize, ToSchema)]
pub(super) struct RunDetail {
    #[serde(flatten)]
    run: RunView,
    /// Completion webhook deliveries; present when the run has a `callbackUrl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    deliveries: Option<Vec<DeliveryView>>,
    /// Every execution of each job (shards and finalizer), oldest first, keyed by job id;
    /// derived from the run's stored events.
    attempts: BTreeMap<String, Vec<AttemptView>>,
    /// The same executions as one list (each with its `jobId`), in job then execution
    /// order: `jq '.executions[] | select(.outcome == "requeued")'`.
    executions: Vec<ExecutionView>,
}

/// One execution of one of a run's jobs.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ExecutionView {
    /// The job it executed.
    job_id: String,
    #[serde(flatten)]
    execution: AttemptView,
}

/// Events read to build a run's attempt history (a run of 1,000 shards with retries fits).
const HISTORY_EVENTS: usize = 20_000;

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
    /// Jobs that were not terminal when the abort landed (0 when it was aborted before):
    /// `queuedAborted` + `runningStopping`.
    aborted_jobs: u32,
    /// Queued jobs aborted there and then: they never run.
    queued_aborted: u32,
    /// Running jobs told to stop: each ends `aborted` unless it finishes first (its run
    /// stays `aborted` either way).
    running_stopping: u32,
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
pub(super) async fn run_id(
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
/// hex digits, or the last 8–12 (as the dashboard shows them), that match exactly one run
/// (404 when none does, 400 naming some candidates when several do).
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
    let mut found = state.store.run_ids_by_prefix(&prefix, 3).await?;
    let digits = id.to_ascii_lowercase();
    if found.is_empty() && digits.len() <= 12 && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        // The dashboard shows a run's last 8 digits (the random end of its UUIDv7; runs
        // made within a minute share their first 8), so those work too.
        let runs = state
            .store
            .runs_list(RunFilter {
                run_id: Some(digits.clone()),
                limit: 3,
                ..RunFilter::default()
            })
            .await?;
        found = runs
            .into_iter()
            .map(|r| r.run_id)
            .filter(|r| r.ends_with(&digits))
            .collect();
    }
    match found.as_slice() {
        [] => Err(ApiError::NotFound(format!(
            "Run not found: no run id starts or ends with {prefix}"
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
        (status = 400, description = "limit, offset, status, run, param or actor out of range", body = ErrorBody),
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
    let Search { run, param, actor } = search(q)?;
    let runs = state
        .store
        .runs_list(RunFilter {
            pipeline,
            status,
            run_id: run,
            param,
            actor,
            limit,
            offset,
        })
        .await?;
    let fleet = super::nodes::Fleet::load(state).await?;
    Ok(Json(RunPage {
        runs: runs
            .into_iter()
            .map(|r| {
                let mut view = RunView::from(r);
                fleet.annotate_run(state, &mut view);
                view
            })
            .collect(),
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
        Some(_) => Some(delivery_views(state.store.deliveries_of_run(&id).await?)),
        None => None,
    };
    let attempts = attempts(&state.store.run_events(&id, HISTORY_EVENTS).await?);
    let executions = attempts
        .iter()
        .flat_map(|(job, list)| {
            list.iter().map(|a| ExecutionView {
                job_id: job.clone(),
                execution: a.clone(),
            })
        })
        .collect();
    let mut run: RunView = run.into();
    super::nodes::Fleet::load(&state)
        .await?
        .annotate_run(&state, &mut run);
    Ok(Json(RunDetail {
        run,
        deliveries,
        attempts,
        executions,
    }))
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
    let deliveries = delivery_views(state.store.deliveries_of_run(&id).await?);
    Ok(Json(RunDeliveries {
        run_id: id,
        deliveries,
    }))
}

fn delivery_views(records: Vec<crate::store::DeliveryRecord>) -> Vec<DeliveryView> {
    records.into_iter().map(DeliveryView::from).collect()
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
    axum::Extension(actor): axum::Extension<super::auth::Actor>,
    headers: axum::http::HeaderMap,
    path: Result<Path<RunIdParam>, PathRejection>,
) -> Result<(StatusCode, Json<Aborted>), ApiError> {
    let id = run_id(&state, path).await?;
    let by = crate::scheduler::AbortedBy {
        actor: actor.0,
        via: super::pipelines::source(&headers),
    };
    match state.scheduler.abort(&id, by).await? {
        AbortOutcome::NotFound => Err(ApiError::NotFound(format!("Run not found: {id}"))),
        AbortOutcome::Finished(status) => Err(ApiError::Conflict(format!(
            "Run {id} already finished with status {status}"
        ))),
        AbortOutcome::Aborted {
            aborted_jobs,
            queued,
            running,
        } => Ok((
            StatusCode::ACCEPTED,
            Json(Aborted {
                run_id: id,
                status: "aborted",
                aborted_jobs,
                queued_aborted: queued,
                running_stopping: running,
            }),
        )),
    }
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
