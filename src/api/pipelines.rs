//! `GET /api/pipelines` (every pipeline with its settings, queue, setup and circuit,
//! schedule and pause), `GET /api/pipelines/{id}/jobs`, pause and resume.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::runs::{PageQuery, RunPage, list_runs};
use super::{ApiError, AppState, ErrorBody};
use crate::clock::rfc3339;
use crate::config::{OnOrphan, ParamType};
use crate::store::PipelineNodeState;
use crate::store::transition::RetryOn;

/// The `{id}` of `/api/pipelines/{id}/…` (what the handlers extract, and its documentation).
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct PipelineIdParam {
    /// A pipeline name from `GET /api/pipelines`.
    pub(super) id: String,
}

/// `GET /api/pipelines` answer.
#[derive(Serialize, ToSchema)]
pub(super) struct PipelineList {
    /// Every configured pipeline, by name.
    pipelines: Vec<PipelineInfo>,
}

/// One configured pipeline with its queue counts.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct PipelineInfo {
    /// Its name.
    id: String,
    /// The command (argv with `{placeholders}`) as configured.
    command: Vec<String>,
    /// Working directory, when set.
    #[schema(value_type = Option<String>)]
    cwd: Option<PathBuf>,
    /// Wall-clock limit of one attempt, when set.
    timeout_ms: Option<u64>,
    /// Attempts including the first.
    max_attempts: u32,
    /// Only these failed exit codes are retried (`retry_exit_codes`), when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_exit_codes: Option<Vec<i32>>,
    /// These failed exit codes are never retried (`no_retry_exit_codes`), when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    no_retry_exit_codes: Option<Vec<i32>>,
    /// Jobs of this pipeline running at once over all nodes; 0 = no cap.
    concurrency: u32,
    /// Labels a node must have to claim its jobs (`requires`): `"*"` (present), a value,
    /// or a list of values; empty: any node.
    #[schema(value_type = Object)]
    requires: crate::model::Requirements,
    /// What one of its jobs needs of a node (`resources`; zero: only a slot).
    resources: crate::model::Resources,
    /// The template its runs are capped and shared fairly by (`concurrency_key`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency_key: Option<String>,
    /// Running jobs per key value over all nodes (`concurrency_per_key`; 0 = no cap).
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency_per_key: Option<u32>,
    /// Claim order of its runs unless a trigger gives one (higher first).
    priority: i32,
    /// Default shard count.
    shards: u32,
    /// What happens to a job whose node died.
    on_orphan: OnOrphan,
    /// Declared parameters by name.
    params: BTreeMap<String, ParamInfo>,
    /// The setup command and its state per node, when the pipeline has one.
    setup: Option<SetupInfo>,
    /// The circuit as a trigger sees it: open only when open on every node that tried the setup.
    circuit: Circuit,
    /// The finalizer command, when the pipeline has one.
    finalizer: Option<Vec<String>>,
    /// Default completion webhook of its runs.
    callback_url: Option<String>,
    /// Queued jobs.
    queued: u64,
    /// Running jobs.
    running: u64,
    /// Its schedule, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    schedule: Option<ScheduleInfo>,
    /// True while the pipeline is paused: no node claims its queued jobs.
    paused: bool,
    /// When it was paused (RFC 3339), while paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    paused_at: Option<String>,
    /// Who paused it (token label), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    paused_by: Option<String>,
}

/// A pipeline's schedule and when it fires next.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ScheduleInfo {
    /// The cron expression (5 fields, or 6 with leading seconds).
    cron: String,
    /// The IANA time zone it is evaluated in.
    time_zone: String,
    /// The parameters of its runs.
    params: BTreeMap<String, String>,
    /// The next tick (RFC 3339), as stored for every node.
    next_fire_at: Option<String>,
}

/// A declared parameter.
#[derive(Serialize, ToSchema)]
pub(super) struct ParamInfo {
    /// Value type.
    #[serde(rename = "type")]
    kind: ParamType,
    /// Used when a trigger omits it.
    default: Option<String>,
    /// True when there is no default.
    required: bool,
    /// The whole value must match this regular expression.
    pattern: Option<String>,
}

/// A pipeline's setup command and its state on each node that tried it.
#[derive(Serialize, ToSchema)]
pub(super) struct SetupInfo {
    /// The setup command.
    command: Vec<String>,
    /// Per-node setup and circuit state.
    nodes: Vec<PipelineNodeState>,
}

/// A setup circuit breaker's state.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(super) enum Circuit {
    /// Jobs are claimed.
    Closed,
    /// Setup failed too often: no job is claimed until the cooldown ends.
    Open,
    /// One trial setup decides.
    HalfOpen,
}

/// `GET /api/pipelines`: every configured pipeline with its parameters, setup state and counts.
#[utoipa::path(
    get,
    path = "/api/pipelines",
    tag = "pipelines",
    operation_id = "listPipelines",
    responses(
        (status = 200, description = "The configured pipelines", body = PipelineList),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<PipelineList>, ApiError> {
    let counts = state.store.pipeline_counts().await?;
    let states = state.store.pipeline_nodes_list().await?;
    let paused = state.store.pipelines_paused().await?;
    let schedules = state.store.schedules_list().await?;
    let now = state.store.clock_ms();
    let pipelines = state
        .scheduler
        .settings()
        .pipelines
        .values()
        .map(|p| {
            let c = counts.get(&p.name).copied().unwrap_or_default();
            let params = param_infos(&p.params);
            let nodes: Vec<PipelineNodeState> = states
                .iter()
                .filter(|s| s.pipeline == p.name)
                .cloned()
                .collect();
            // The pipeline's circuit as a trigger sees it: open only when open on every
            // node that has tried its setup (triggers check live nodes).
            let circuit = if p.setup.is_none() || nodes.is_empty() {
                Circuit::Closed
            } else if nodes.iter().all(|s| s.circuit == "open") {
                Circuit::Open
            } else if nodes.iter().any(|s| s.circuit == "half_open") {
                Circuit::HalfOpen
            } else {
                Circuit::Closed
            };
            let pause = paused.iter().find(|x| x.pipeline == p.name);
            let schedule = p.schedule.as_ref().map(|sch| ScheduleInfo {
                cron: sch.expr.clone(),
                time_zone: sch.tz_name.clone(),
                params: p.schedule_params.clone(),
                // The stored record when it is this schedule's (a node may not have
                // started it yet: then the tick it will store).
                next_fire_at: schedules
                    .iter()
                    .find(|r| r.pipeline == p.name && r.key == sch.key())
                    .map(|r| r.next_fire_at)
                    .or_else(|| sch.next_after(now))
                    .map(rfc3339),
            });
            let setup = p.setup.as_ref().map(|s| SetupInfo {
                command: s.command.clone(),
                nodes,
            });
            PipelineInfo {
                id: p.name.clone(),
                command: p.command.clone(),
                cwd: p.cwd.clone(),
                timeout_ms: p.timeout.map(|t| t.as_millis() as u64),
                max_attempts: p.max_attempts,
                retry_exit_codes: match &p.retry_on {
                    RetryOn::Only(codes) => Some(codes.clone()),
                    _ => None,
                },
                no_retry_exit_codes: match &p.retry_on {
                    RetryOn::Except(codes) => Some(codes.clone()),
                    _ => None,
                },
                concurrency: p.concurrency,
                requires: p.requires.clone(),
                resources: p.resources,
                concurrency_key: p.concurrency_key.as_ref().map(|t| t.to_string()),
                concurrency_per_key: p.concurrency_key.as_ref().map(|_| p.concurrency_per_key),
                priority: p.priority,
                shards: p.shards,
                on_orphan: p.on_orphan,
                params,
                setup,
                circuit,
                finalizer: p.finalizer.as_ref().map(|f| f.command.clone()),
                callback_url: p.callback_url.clone(),
                queued: c.queued,
                running: c.running,
                schedule,
                paused: pause.is_some(),
                paused_at: pause.map(|x| rfc3339(x.paused_at)),
                paused_by: pause.and_then(|x| x.paused_by.clone()),
            }
        })
        .collect();
    Ok(Json(PipelineList { pipelines }))
}

/// `GET /api/pipelines/{id}/jobs`: one page of the pipeline's runs, newest first.
#[utoipa::path(
    get,
    path = "/api/pipelines/{id}/jobs",
    tag = "pipelines",
    operation_id = "listPipelineRuns",
    params(PipelineIdParam, PageQuery),
    responses(
        (status = 200, description = "One page of the pipeline's runs with their jobs", body = RunPage),
        (status = 400, description = "limit, offset, status, run, param or actor out of range", body = ErrorBody),
        (status = 404, description = "Unknown pipeline", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn runs_of(
    State(state): State<AppState>,
    path: Result<Path<PipelineIdParam>, PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<RunPage>, ApiError> {
    let Path(PipelineIdParam { id: pipeline }) = path?;
    if !state.scheduler.settings().pipelines.contains_key(&pipeline) {
        return Err(ApiError::NotFound(format!(
            "Unknown pipeline: {}",
            pipeline.chars().take(100).collect::<String>()
        )));
    }
    let Query(q) = query?;
    list_runs(&state, Some(pipeline), &q).await
}

/// The answer to a pause or resume.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct PauseState {
    /// The pipeline.
    pipeline_id: String,
    /// Its state now.
    paused: bool,
    /// False when it already was in that state (nothing was written, no event emitted).
    changed: bool,
}

async fn set_paused(
    state: &AppState,
    actor: super::auth::Actor,
    path: Result<Path<PipelineIdParam>, PathRejection>,
    paused: bool,
) -> Result<Json<PauseState>, ApiError> {
    let Path(PipelineIdParam { id: pipeline }) = path?;
    match state.scheduler.pause(&pipeline, paused, actor.0).await? {
        None => Err(ApiError::NotFound(format!(
            "Unknown pipeline: {}",
            pipeline.chars().take(100).collect::<String>()
        ))),
        Some(changed) => Ok(Json(PauseState {
            pipeline_id: pipeline,
            paused,
            changed,
        })),
    }
}

/// `POST /api/pipelines/{id}/pause`: no node claims the pipeline's queued jobs until it is
/// resumed; triggers are still accepted (their answer says `paused`), running jobs finish.
/// Durable (stored), for every node on the store; emits `pipeline:paused`.
#[utoipa::path(
    post,
    path = "/api/pipelines/{id}/pause",
    tag = "pipelines",
    operation_id = "pausePipeline",
    params(PipelineIdParam),
    responses(
        (status = 200, description = "Paused (now or before: see `changed`)", body = PauseState),
        (status = 404, description = "Unknown pipeline", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn pause(
    State(state): State<AppState>,
    axum::Extension(actor): axum::Extension<super::auth::Actor>,
    path: Result<Path<PipelineIdParam>, PathRejection>,
) -> Result<Json<PauseState>, ApiError> {
    set_paused(&state, actor, path, true).await
}

/// `POST /api/pipelines/{id}/resume`: the pipeline's queued jobs are claimed again; emits
/// `pipeline:resumed`.
#[utoipa::path(
    post,
    path = "/api/pipelines/{id}/resume",
    tag = "pipelines",
    operation_id = "resumePipeline",
    params(PipelineIdParam),
    responses(
        (status = 200, description = "Resumed (now or before: see `changed`)", body = PauseState),
        (status = 404, description = "Unknown pipeline", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn resume(
    State(state): State<AppState>,
    axum::Extension(actor): axum::Extension<super::auth::Actor>,
    path: Result<Path<PipelineIdParam>, PathRejection>,
) -> Result<Json<PauseState>, ApiError> {
    set_paused(&state, actor, path, false).await
}

/// Declared parameters as the API shows them (a pipeline's or a workflow's).
pub(super) fn param_infos(
    params: &BTreeMap<String, crate::config::ParamSpec>,
) -> BTreeMap<String, ParamInfo> {
    params
        .iter()
        .map(|(name, spec)| {
            (
                name.clone(),
                ParamInfo {
                    kind: spec.kind,
                    default: spec.default.clone(),
                    required: spec.default.is_none(),
                    pattern: spec.pattern.as_ref().map(|r| {
                        r.as_str()
                            .trim_start_matches("^(?:")
                            .trim_end_matches(")$")
                            .to_string()
                    }),
                },
            )
        })
        .collect()
}
