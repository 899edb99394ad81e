//! Workflows: the configured ones (`GET /api/workflows`) and triggering one
//! (`POST /api/workflows/{id}/trigger`: every step's run created in one transaction,
//! before the 202), with the answer a re-run shares. Workflow runs themselves — list,
//! one, abort, re-run — are in `workflow_runs.rs`. Tests: `tests/workflows.rs`,
//! `tests/openapi.rs` (answers as documented).

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::pipelines::{ParamInfo, param_infos};
use super::trigger::{idempotency_key, json_body, source};
use super::{ApiError, AppState, ErrorBody};
use crate::clock::rfc3339;
use crate::model::{AfterWhen, WorkflowStatus};
use crate::scheduler::{WorkflowTriggerRequest, WorkflowTriggered};

/// The `{id}` of `/api/workflows/{id}…`: a configured workflow's name.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct WorkflowIdParam {
    /// The workflow's name (its `[workflows.NAME]` table).
    #[param(max_length = 200)]
    id: String,
}

/// A configured workflow.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct WorkflowView {
    /// Its name.
    id: String,
    /// Declared parameters by name.
    params: BTreeMap<String, ParamInfo>,
    /// Its steps, needs first.
    steps: Vec<WorkflowStepView>,
}

/// One configured step.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct WorkflowStepView {
    /// The step's name.
    name: String,
    /// The pipeline it runs.
    pipeline_id: String,
    /// The steps it waits for.
    needs: Vec<String>,
    /// When it goes once they ended.
    when: AfterWhen,
}

/// The configured workflows.
#[derive(Serialize, ToSchema)]
pub(super) struct WorkflowList {
    /// By name.
    workflows: Vec<WorkflowView>,
}

/// `GET /api/workflows`: every configured workflow with its steps.
#[utoipa::path(
    get,
    path = "/api/workflows",
    tag = "workflows",
    operation_id = "listWorkflows",
    responses((status = 200, description = "The configured workflows", body = WorkflowList))
)]
pub(super) async fn list(State(state): State<AppState>) -> Json<WorkflowList> {
    let workflows = state
        .scheduler
        .settings()
        .workflows
        .values()
        .map(|w| WorkflowView {
            id: w.name.clone(),
            params: param_infos(&w.params),
            steps: w
                .steps
                .iter()
                .map(|s| WorkflowStepView {
                    name: s.name.clone(),
                    pipeline_id: s.pipeline.clone(),
                    needs: s.needs.clone(),
                    when: s.when,
                })
                .collect(),
        })
        .collect();
    Json(WorkflowList { workflows })
}

/// The body of `POST /api/workflows/{id}/trigger` (empty means `{}`).
#[derive(Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct WorkflowTriggerBody {
    /// Values of the workflow's declared parameters (strings, integers or booleans; at
    /// most 64). Each step's parameters are rendered from them and checked by its pipeline.
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: serde_json::Map<String, Value>,
    /// Makes the trigger idempotent per workflow; same as the `Idempotency-Key` header.
    #[schema(min_length = 1, max_length = 200, pattern = r"^[ -~]*$")]
    idempotency_key: Option<String>,
    /// `workflow.completed` webhook target (checked like a run's `callbackUrl`).
    callback_url: Option<String>,
}

/// The answer to a workflow trigger (and re-run).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct WorkflowTriggeredView {
    /// The workflow run's id.
    workflow_run_id: String,
    /// The workflow.
    workflow_id: String,
    /// `queued` for a new workflow run; a replay's status as it is now.
    status: WorkflowStatus,
    /// Each step's run id, by step name.
    runs: BTreeMap<String, String>,
    /// When it was created (RFC 3339).
    timestamp: String,
    /// Present (true) when an earlier trigger with the same idempotency key made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotent_replay: Option<bool>,
    /// For a re-run: the workflow run it re-runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    rerun_of: Option<String>,
}

impl WorkflowTriggeredView {
    pub(super) fn of(
        t: WorkflowTriggered,
        status: WorkflowStatus,
        rerun_of: Option<String>,
    ) -> WorkflowTriggeredView {
        WorkflowTriggeredView {
            runs: t
                .steps
                .iter()
                .map(|s| (s.name.clone(), s.run_id.clone()))
                .collect(),
            workflow_run_id: t.workflow_run_id,
            workflow_id: t.workflow,
            status,
            timestamp: rfc3339(t.created_at),
            idempotent_replay: t.existing.then_some(true),
            rerun_of,
        }
    }
}

/// `POST /api/workflows/{id}/trigger`: creates a workflow run and every step's run in
/// one transaction (committed before the answer); a step with needs is `waiting`.
#[utoipa::path(
    post,
    path = "/api/workflows/{id}/trigger",
    tag = "workflows",
    operation_id = "triggerWorkflow",
    params(
        WorkflowIdParam,
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 200,
            description = "Same as the body's `idempotencyKey`; when both are given they must be equal"),
        ("X-Runyard-Source" = Option<String>, Header, nullable = false,
            description = "Who triggers: `cli`, `dashboard`; anything else is recorded as `api`"),
    ),
    request_body(content = Option<WorkflowTriggerBody>, content_type = "application/json",
        description = "May be empty (same as `{}`)"),
    responses(
        (status = 202, description = "Created, or an idempotent replay of an earlier trigger", body = WorkflowTriggeredView),
        (status = 400, description = "Unknown workflow, malformed JSON, unknown field, a bad parameter \
            (the workflow's, or a step's as its pipeline checks it), bad callbackUrl, or the header and body keys differ", body = ErrorBody),
        (status = 409, description = "The idempotency key was used with other parameters", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn trigger(
    State(state): State<AppState>,
    axum::Extension(actor): axum::Extension<super::auth::Actor>,
    path: Result<Path<WorkflowIdParam>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<WorkflowTriggeredView>), ApiError> {
    let Path(WorkflowIdParam { id }) = path?;
    let parsed: WorkflowTriggerBody = json_body(body)?;
    let idempotency_key = idempotency_key(&headers, parsed.idempotency_key)?;
    let triggered = state
        .scheduler
        .trigger_workflow(WorkflowTriggerRequest {
            workflow: id,
            parameters: parsed.parameters,
            idempotency_key,
            callback_url: parsed.callback_url,
            triggered_by: source(&headers),
            actor: actor.0,
        })
        .await?;
    let status = if triggered.existing {
        state
            .scheduler
            .workflow_run(&triggered.workflow_run_id)
            .await?
            .map_or(WorkflowStatus::Queued, |w| w.shown_status())
    } else {
        WorkflowStatus::Queued
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(WorkflowTriggeredView::of(triggered, status, None)),
    ))
}
