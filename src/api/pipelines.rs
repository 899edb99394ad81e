//! `GET /api/pipelines`, `POST /api/pipelines/{id}/trigger`, `GET /api/pipelines/{id}/jobs`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::runs::{PageQuery, list_runs};
use super::{ApiError, AppState};
use crate::clock::rfc3339;
use crate::scheduler::TriggerRequest;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TriggerBody {
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
    shards: Option<u32>,
    callback_url: Option<String>,
    idempotency_key: Option<String>,
}

/// Who triggered, from the `X-Runyard-Source` header (`cli`, `dashboard`; default `api`).
fn source(headers: &HeaderMap) -> String {
    match headers
        .get("x-runyard-source")
        .and_then(|v| v.to_str().ok())
    {
        Some("cli") => "cli".into(),
        Some("dashboard") => "dashboard".into(),
        _ => "api".into(),
    }
}

pub(super) async fn trigger(
    State(state): State<AppState>,
    axum::Extension(actor): axum::Extension<super::auth::Actor>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path(pipeline) = path?;
    let body = body?;
    let parsed: TriggerBody = if body.iter().all(u8::is_ascii_whitespace) {
        TriggerBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?
    };
    // The `Idempotency-Key` header is the body field's alias; when both are given they must agree.
    let header_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?
                .to_string(),
        ),
    };
    let idempotency_key = match (header_key, parsed.idempotency_key) {
        (Some(h), Some(b)) if h != b => {
            return Err(ApiError::BadRequest(
                "Idempotency-Key header and idempotencyKey differ".into(),
            ));
        }
        (h, b) => h.or(b),
    };
    let triggered = state
        .scheduler
        .trigger(TriggerRequest {
            pipeline,
            parameters: parsed.parameters,
            shards: parsed.shards,
            idempotency_key,
            callback_url: parsed.callback_url,
            actor: actor.0,
            triggered_by: source(&headers),
        })
        .await?;
    let mut answer = json!({
        "jobId": triggered.run_id,
        "runId": triggered.run_id,
        "jobIds": triggered.job_ids,
        "pipelineId": triggered.pipeline,
        "status": "queued",
        "timestamp": rfc3339(triggered.created_at),
    });
    if triggered.existing {
        // A retried trigger: the run it names was created by the first one.
        answer["idempotentReplay"] = json!(true);
    }
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let counts = state.store.pipeline_counts().await?;
    let states = state.store.pipeline_nodes_list().await?;
    let pipelines: Vec<Value> = state
        .scheduler
        .settings()
        .pipelines
        .values()
        .map(|p| {
            let c = counts.get(&p.name).copied().unwrap_or_default();
            let params: serde_json::Map<String, Value> = p
                .params
                .iter()
                .map(|(name, spec)| {
                    (
                        name.clone(),
                        json!({
                            "type": format!("{:?}", spec.kind).to_lowercase(),
                            "default": spec.default,
                            "required": spec.default.is_none(),
                            "pattern": spec.pattern.as_ref().map(|r| r.as_str().trim_start_matches("^(?:").trim_end_matches(")$").to_string()),
                        }),
                    )
                })
                .collect();
            let nodes: Vec<&crate::store::PipelineNodeState> =
                states.iter().filter(|s| s.pipeline == p.name).collect();
            // The pipeline's circuit as a trigger sees it: open only when open on every
            // node that has tried its setup (DESIGN decision 19; triggers check live nodes).
            let circuit = if p.setup.is_none() || nodes.is_empty() {
                "closed"
            } else if nodes.iter().all(|s| s.circuit == "open") {
                "open"
            } else if nodes.iter().any(|s| s.circuit == "half_open") {
                "half_open"
            } else {
                "closed"
            };
            let setup = p.setup.as_ref().map(|s| {
                json!({
                    "command": s.command,
                    "nodes": nodes,
                })
            });
            json!({
                "id": p.name,
                "command": p.command,
                "cwd": p.cwd,
                "timeoutMs": p.timeout.map(|t| t.as_millis() as u64),
                "maxAttempts": p.max_attempts,
                "concurrency": p.concurrency,
                "shards": p.shards,
                "onOrphan": p.on_orphan.as_str(),
                "params": params,
                "setup": setup,
                "circuit": circuit,
                "finalizer": p.finalizer.as_ref().map(|f| &f.command),
                "callbackUrl": p.callback_url,
                "queued": c.queued,
                "running": c.running,
            })
        })
        .collect();
    Ok(Json(json!({ "pipelines": pipelines })))
}

pub(super) async fn runs_of(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(pipeline) = path?;
    if !state.scheduler.settings().pipelines.contains_key(&pipeline) {
        return Err(ApiError::NotFound(format!(
            "Unknown pipeline: {}",
            pipeline.chars().take(100).collect::<String>()
        )));
    }
    let Query(q) = query?;
    list_runs(&state, Some(pipeline), &q).await
}
