//! Runs: listing and searching them, one run with its executions and deliveries, and
//! aborting one.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::history::{AttemptView, attempts};
use super::ids::{RunIdParam, run_id};
use super::views::{DeliveryView, RunView};
use super::{ApiError, AppState, ErrorBody};
use crate::model::RunStatus;
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
        via: super::trigger::source(&headers),
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
