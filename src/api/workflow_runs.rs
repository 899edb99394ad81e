//! Workflow runs: listing them, one with each step's run, aborting one (every step run
//! stopped on whichever node runs it) and re-running one (every step, or only those
//! that did not complete).

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ids::{WorkflowRunIdParam, workflow_run_id};
use super::trigger::{json_body, source};
use super::views::DeliveryView;
use super::workflows::WorkflowTriggeredView;
use super::{ApiError, AppState, ErrorBody};
use crate::clock::rfc3339;
use crate::model::{AfterWhen, RunStatus, WorkflowStatus};
use crate::scheduler::WorkflowAbort;
use crate::store::{WorkflowRunFilter, WorkflowRunRecord};

/// One step of a workflow run, with its run's state.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct WorkflowStepRunView {
    /// The step's name.
    name: String,
    /// The pipeline its run runs.
    pipeline_id: String,
    /// The steps whose runs it waits for.
    needs: Vec<String>,
    /// When it goes once they ended.
    when: AfterWhen,
    /// Its run (`/api/runs/{runId}`).
    run_id: String,
    /// Its run was kept from the workflow run this one re-runs.
    kept: bool,
    /// Its run's status (absent when the run was pruned).
    status: Option<RunStatus>,
    /// Shards terminal for good.
    shards_done: u32,
    /// Its shard count.
    shard_count: u32,
    /// RFC 3339.
    started_at: Option<String>,
    /// RFC 3339.
    finished_at: Option<String>,
}

/// A workflow run.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct WorkflowRunView {
    /// Its id.
    workflow_run_id: String,
    /// The workflow.
    workflow_id: String,
    /// `queued`, `running` (a step's run has started), `completed`, `failed`, `aborted`.
    status: WorkflowStatus,
    /// Its parameters.
    parameters: BTreeMap<String, String>,
    /// Its steps, needs first.
    steps: Vec<WorkflowStepRunView>,
    /// `api`, `cli`, `dashboard`.
    triggered_by: String,
    /// Who triggered (token label), when known.
    actor: Option<String>,
    /// The workflow run it re-runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    rerun_of: Option<String>,
    /// Who aborted it (`{"actor", "node", "nodeName", "via"}`), once aborted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    aborted_by: Option<serde_json::Value>,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339, once ended.
    finished_at: Option<String>,
}

impl From<WorkflowRunRecord> for WorkflowRunView {
    fn from(w: WorkflowRunRecord) -> Self {
        let status = w.shown_status();
        let steps = w
            .steps
            .iter()
            .map(|s| {
                let run = w.run_of(s);
                WorkflowStepRunView {
                    name: s.name.clone(),
                    pipeline_id: s.pipeline.clone(),
                    needs: s.needs.clone(),
                    when: s.when,
                    run_id: s.run_id.clone(),
                    kept: s.kept,
                    status: run.map(|r| r.status),
                    shards_done: run.map_or(0, |r| r.shards_done),
                    shard_count: run.map_or(0, |r| r.shard_count),
                    started_at: run.and_then(|r| r.started_at).map(rfc3339),
                    finished_at: run.and_then(|r| r.finished_at).map(rfc3339),
                }
            })
            .collect();
        WorkflowRunView {
            workflow_run_id: w.id,
            workflow_id: w.workflow,
            status,
            parameters: w.params,
            steps,
            triggered_by: w.triggered_by,
            actor: w.actor,
            rerun_of: w.rerun_of,
            aborted_by: w
                .aborted_by
                .as_deref()
                .and_then(|t| serde_json::from_str(t).ok()),
            created_at: rfc3339(w.created_at),
            finished_at: w.finished_at.map(rfc3339),
        }
    }
}

/// `GET /api/workflow-runs/{id}` answer: the workflow run and, when it has a
/// `callbackUrl`, its `workflow.completed` webhook deliveries with every attempt.
#[derive(Serialize, ToSchema)]
pub(super) struct WorkflowRunDetail {
    #[serde(flatten)]
    workflow_run: WorkflowRunView,
    /// Its webhook deliveries; present when it has a `callbackUrl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    deliveries: Option<Vec<DeliveryView>>,
}

/// `?workflow=&status=&limit=&offset=`.
#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct WorkflowRunQuery {
    /// Only runs of this workflow.
    #[param(max_length = 200)]
    workflow: Option<String>,
    /// Only workflow runs with this status (`running` lists those not ended that have
    /// started; `queued` those that have not).
    #[param(value_type = Option<WorkflowStatus>)]
    status: Option<String>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// Workflow runs to skip (default 0).
    #[param(minimum = 0, maximum = 100_000)]
    offset: Option<u32>,
}

/// A page of workflow runs.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct WorkflowRunList {
    /// Newest first.
    workflow_runs: Vec<WorkflowRunView>,
}

/// `GET /api/workflow-runs`: workflow runs, newest first.
#[utoipa::path(
    get,
    path = "/api/workflow-runs",
    tag = "workflows",
    operation_id = "listWorkflowRuns",
    params(WorkflowRunQuery),
    responses(
        (status = 200, description = "Workflow runs, newest first", body = WorkflowRunList),
        (status = 400, description = "A bad status, limit or offset", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn list(
    State(state): State<AppState>,
    query: Result<Query<WorkflowRunQuery>, QueryRejection>,
) -> Result<Json<WorkflowRunList>, ApiError> {
    let Query(q) = query?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(s.parse::<WorkflowStatus>().map_err(|_| {
            ApiError::BadRequest(format!(
                "status must be one of queued, running, completed, failed, aborted, not {:?}",
                s.chars().take(40).collect::<String>()
            ))
        })?),
    };
    if q.workflow.as_ref().is_some_and(|w| w.chars().count() > 200) {
        return Err(ApiError::BadRequest(
            "workflow is a workflow's name: at most 200 characters".into(),
        ));
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) || q.offset.unwrap_or(0) > 100_000 {
        return Err(ApiError::BadRequest(
            "limit must be 1 to 500 and offset at most 100000".into(),
        ));
    }
    // `queued` and `running` are both stored as not ended (`queued`); the shown status
    // tells them apart, so those two are filtered after the read.
    let stored = status.map(|s| match s {
        WorkflowStatus::Running => WorkflowStatus::Queued,
        s => s,
    });
    let records = state
        .store
        .workflow_runs_list(WorkflowRunFilter {
            workflow: q.workflow,
            status: stored,
            limit: i64::from(limit),
            offset: i64::from(q.offset.unwrap_or(0)),
        })
        .await?;
    let workflow_runs = records
        .into_iter()
        .filter(|w| status.is_none_or(|s| w.shown_status() == s))
        .map(WorkflowRunView::from)
        .collect();
    Ok(Json(WorkflowRunList { workflow_runs }))
}

/// `GET /api/workflow-runs/{id}`: one workflow run with each step's run.
#[utoipa::path(
    get,
    path = "/api/workflow-runs/{id}",
    tag = "workflows",
    operation_id = "getWorkflowRun",
    params(WorkflowRunIdParam),
    responses(
        (status = 200, description = "The workflow run (with its webhook deliveries when it has a callback)", body = WorkflowRunDetail),
        (status = 400, description = "Malformed or ambiguous id", body = ErrorBody),
        (status = 404, description = "No such workflow run", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn get(
    State(state): State<AppState>,
    path: Result<Path<WorkflowRunIdParam>, PathRejection>,
) -> Result<Json<WorkflowRunDetail>, ApiError> {
    let id = workflow_run_id(&state, path).await?;
    let Some(w) = state.store.workflow_run_get(&id).await? else {
        return Err(ApiError::NotFound(format!("Workflow run not found: {id}")));
    };
    let deliveries = match w.callback_url {
        Some(_) => Some(
            state
                .store
                .deliveries_of_run(&id)
                .await?
                .into_iter()
                .map(DeliveryView::from)
                .collect(),
        ),
        None => None,
    };
    Ok(Json(WorkflowRunDetail {
        workflow_run: w.into(),
        deliveries,
    }))
}

/// The answer to an abort.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct WorkflowAborted {
    /// The workflow run.
    workflow_run_id: String,
    /// `aborted` (it ends so once its step runs have ended).
    status: WorkflowStatus,
    /// The step runs this call aborted.
    aborted_runs: Vec<String>,
}

/// `POST /api/workflow-runs/{id}/abort`: aborts every step run not ended (running ones
/// are stopped on whichever node runs them; waiting ones end `aborted`).
#[utoipa::path(
    post,
    path = "/api/workflow-runs/{id}/abort",
    tag = "workflows",
    operation_id = "abortWorkflowRun",
    params(WorkflowRunIdParam),
    responses(
        (status = 202, description = "Aborted (now, or already before)", body = WorkflowAborted),
        (status = 400, description = "Malformed or ambiguous id", body = ErrorBody),
        (status = 404, description = "No such workflow run", body = ErrorBody),
        (status = 409, description = "The workflow run already completed or failed", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn abort(
    State(state): State<AppState>,
    axum::Extension(actor): axum::Extension<super::auth::Actor>,
    headers: HeaderMap,
    path: Result<Path<WorkflowRunIdParam>, PathRejection>,
) -> Result<(StatusCode, Json<WorkflowAborted>), ApiError> {
    let id = workflow_run_id(&state, path).await?;
    let by = crate::scheduler::AbortedBy {
        actor: actor.0,
        via: source(&headers),
    };
    let aborted_runs = match state.scheduler.abort_workflow(&id, by).await? {
        WorkflowAbort::NotFound => {
            return Err(ApiError::NotFound(format!("Workflow run not found: {id}")));
        }
        WorkflowAbort::Finished(WorkflowStatus::Aborted) => Vec::new(),
        WorkflowAbort::Finished(status) => {
            return Err(ApiError::Conflict(format!(
                "Workflow run {id} already finished with status {status}"
            )));
        }
        WorkflowAbort::Aborted { runs } => runs,
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(WorkflowAborted {
            workflow_run_id: id,
            status: WorkflowStatus::Aborted,
            aborted_runs,
        }),
    ))
}

/// The body of `POST /api/workflow-runs/{id}/rerun` (empty means `{}`: every step).
#[derive(Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct WorkflowRerunBody {
    /// `failed`: only the steps whose run did not complete run again; completed ones are
    /// kept (their runs and results flow on). Absent: every step runs again.
    #[schema(pattern = "^failed$")]
    only: Option<String>,
}

/// `POST /api/workflow-runs/{id}/rerun`: a finished workflow run again, as a new one
/// (`rerunOf`), with the same parameters.
#[utoipa::path(
    post,
    path = "/api/workflow-runs/{id}/rerun",
    tag = "workflows",
    operation_id = "rerunWorkflowRun",
    params(
        WorkflowRunIdParam,
        ("X-Runyard-Source" = Option<String>, Header, nullable = false,
            description = "Who re-runs: `cli`, `dashboard`; anything else is recorded as `api`"),
    ),
    request_body(content = Option<WorkflowRerunBody>, content_type = "application/json",
        description = "May be empty (same as `{}`: every step)"),
    responses(
        (status = 202, description = "The new workflow run is created", body = WorkflowTriggeredView),
        (status = 400, description = "Malformed or ambiguous id, malformed body, `only` not `failed`, \
            or the workflow (or a step's pipeline) is no longer configured", body = ErrorBody),
        (status = 404, description = "No such workflow run", body = ErrorBody),
        (status = 409, description = "It has not finished, or every step completed (with `only: failed`)", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn rerun(
    State(state): State<AppState>,
    axum::Extension(actor): axum::Extension<super::auth::Actor>,
    path: Result<Path<WorkflowRunIdParam>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<WorkflowTriggeredView>), ApiError> {
    let id = workflow_run_id(&state, path).await?;
    let parsed: WorkflowRerunBody = json_body(body)?;
    let only_failed = match parsed.only.as_deref() {
        None => false,
        Some("failed") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "only must be \"failed\" (or absent for every step), not {:?}",
                other.chars().take(40).collect::<String>()
            )));
        }
    };
    let triggered = state
        .scheduler
        .rerun_workflow(&id, only_failed, source(&headers), actor.0)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(WorkflowTriggeredView::of(
            triggered,
            WorkflowStatus::Queued,
            Some(id),
        )),
    ))
}
