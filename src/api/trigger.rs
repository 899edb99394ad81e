//! `POST /api/pipelines/{id}/trigger`: the body read strictly (unknown fields, bad JSON
//! and wrong types are 400s with the field named), the request handed to the scheduler,
//! and the 202 answer (also a re-run's); where a request came from (`X-Runyard-Source`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::pipelines::PipelineIdParam;
use super::{ApiError, AppState, ErrorBody};
use crate::clock::rfc3339;
use crate::scheduler::{IDEMPOTENCY_KEY_RULE, TriggerRequest};

/// The body of `POST /api/pipelines/{id}/trigger` (empty means `{}`).
#[derive(Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct TriggerBody {
    /// Values of the pipeline's declared parameters (strings, integers or booleans; at most 64).
    /// Undeclared names are refused; omitted ones take their default or are missing (400).
    #[serde(default)]
    #[schema(schema_with = parameters_schema)]
    parameters: serde_json::Map<String, Value>,
    /// Shard count of this run (default: the pipeline's `shards`).
    #[schema(minimum = 1, maximum = 1000)]
    shards: Option<u32>,
    /// Completion webhook target: an absolute `https://` URL whose host resolves to global
    /// addresses only (unless the server allow-lists it); checked at trigger time (400).
    callback_url: Option<String>,
    /// Makes the trigger idempotent; same as the `Idempotency-Key` header (both must agree)
    /// and under the same rule: visible ASCII characters and spaces only.
    #[schema(min_length = 1, max_length = 200, pattern = r"^[ -~]*$")]
    idempotency_key: Option<String>,
    /// Start no shard before this long from now, e.g. `"10m"` or `"1h30m"` (at most the
    /// server's `retention`). Not with `runAt`.
    #[schema(example = "10m")]
    delay: Option<String>,
    /// Start no shard before this time: RFC 3339 with an offset (within `retention` from
    /// now; up to a minute in the past means now). Not with `delay`.
    #[schema(example = "2030-01-02T03:04:05Z")]
    run_at: Option<String>,
    /// Claim order: higher runs first, FIFO within a priority (default: the pipeline's
    /// `priority`, else 0).
    #[schema(minimum = -100, maximum = 100)]
    priority: Option<i64>,
    /// Runs this one waits for (ids or short ids, at most 100): it is `waiting` until
    /// every one of them has ended, then queued, or `skipped` when they did not end as
    /// `afterWhen` requires. An unknown id is a 400. Not with `delay` or `runAt`.
    #[schema(max_items = 100)]
    after: Option<Vec<String>>,
    /// With `after`: `success` (default; all completed), `failure` (one did not
    /// complete) or `always`.
    after_when: Option<crate::model::AfterWhen>,
}

/// `parameters`: an object of at most 64 string, integer or boolean values.
fn parameters_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Type};
    let value = OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(ObjectBuilder::new().schema_type(Type::Integer))
        .item(ObjectBuilder::new().schema_type(Type::Boolean));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .max_properties(Some(64))
        .additional_properties(Some(AdditionalProperties::RefOr(value.into())))
        .description(Some(
            "Values of the pipeline's declared parameters (strings, integers or booleans). \
             Undeclared names are refused; omitted ones take their default or are missing (400).",
        ))
        .build()
}

/// The answer to a trigger (and to a re-run).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct Triggered {
    /// The run id (also the job id of a single-shard run).
    job_id: String,
    /// The run id.
    run_id: String,
    /// Its jobs, one per shard, in shard order.
    job_ids: Vec<String>,
    /// The pipeline.
    pipeline_id: String,
    /// `queued`; with `after`, `waiting` (or `queued`/`skipped` when the runs it waits
    /// for had all ended already).
    #[schema(value_type = crate::model::RunStatus)]
    status: &'static str,
    /// When the run was created (RFC 3339).
    timestamp: String,
    /// Present (true) when an earlier trigger with the same idempotency key made the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotent_replay: Option<bool>,
    /// Present (true) when the pipeline is paused: the run is queued and waits until the
    /// pipeline is resumed.
    #[serde(skip_serializing_if = "Option::is_none")]
    paused: Option<bool>,
    /// For a re-run: the run it re-runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    rerun_of: Option<String>,
    /// A delayed run's not-before time (RFC 3339): no shard starts earlier.
    #[serde(skip_serializing_if = "Option::is_none")]
    run_at: Option<String>,
}

impl Triggered {
    /// The answer for a run the scheduler queued (`rerun_of` for a re-run).
    pub(super) fn of(t: crate::scheduler::Triggered, rerun_of: Option<String>) -> Triggered {
        Triggered {
            job_id: t.run_id.clone(),
            run_id: t.run_id,
            job_ids: t.job_ids,
            pipeline_id: t.pipeline,
            status: t.status.as_str(),
            timestamp: rfc3339(t.created_at),
            // A retried trigger: the run it names was created by the first one.
            idempotent_replay: t.existing.then_some(true),
            paused: t.paused.then_some(true),
            rerun_of,
            run_at: t.run_at.map(rfc3339),
        }
    }
}

/// A JSON body read strictly; an empty (or all-whitespace) body is `{}`.
pub(super) fn json_body<T: serde::de::DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// The idempotency key of a trigger: the `Idempotency-Key` header is the body field's
/// alias, and when both are given they must agree.
pub(super) fn idempotency_key(
    headers: &HeaderMap,
    in_body: Option<String>,
) -> Result<Option<String>, ApiError> {
    let header_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadRequest(IDEMPOTENCY_KEY_RULE.into()))?
                .to_string(),
        ),
    };
    match (header_key, in_body) {
        (Some(h), Some(b)) if h != b => Err(ApiError::BadRequest(
            "Idempotency-Key header and idempotencyKey differ".into(),
        )),
        (h, b) => Ok(h.or(b)),
    }
}

/// Who triggered, from the `X-Runyard-Source` header (`cli`, `dashboard`; default `api`).
pub(super) fn source(headers: &HeaderMap) -> String {
    match headers
        .get("x-runyard-source")
        .and_then(|v| v.to_str().ok())
    {
        Some("cli") => "cli".into(),
        Some("dashboard") => "dashboard".into(),
        _ => "api".into(),
    }
}

/// `POST /api/pipelines/{id}/trigger`: queues a run durably (committed before the answer).
#[utoipa::path(
    post,
    path = "/api/pipelines/{id}/trigger",
    tag = "pipelines",
    operation_id = "triggerPipeline",
    params(
        PipelineIdParam,
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 200,
            description = "Same as the body's `idempotencyKey`; when both are given they must be equal"),
        ("X-Runyard-Source" = Option<String>, Header, nullable = false,
            description = "Who triggers: `cli`, `dashboard`; anything else is recorded as `api`"),
    ),
    request_body(content = Option<TriggerBody>, content_type = "application/json",
        description = "May be empty (same as `{}`)"),
    responses(
        (status = 202, description = "Queued (or waiting, with `after`), or an idempotent replay of an earlier trigger", body = Triggered),
        (status = 400, description = "Unknown pipeline, malformed JSON, unknown field, bad parameter, \
            shards or callbackUrl, an unknown or ambiguous run in `after`, or the header and body keys differ", body = ErrorBody),
        (status = 409, description = "The idempotency key was used with other parameters or shards", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = ErrorBody),
        (status = 503, description = "The store is unavailable, or the pipeline's setup circuit is open \
            on every live node (with `Retry-After`)", body = ErrorBody,
            headers(("Retry-After" = Option<u64>, description = "Seconds, when the circuit is open"))),
    )
)]
pub(super) async fn trigger(
    State(state): State<AppState>,
    axum::Extension(actor): axum::Extension<super::auth::Actor>,
    path: Result<Path<PipelineIdParam>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Triggered>), ApiError> {
    let Path(PipelineIdParam { id: pipeline }) = path?;
    let parsed: TriggerBody = json_body(body)?;
    let idempotency_key = idempotency_key(&headers, parsed.idempotency_key)?;
    let wanted = parsed.after.unwrap_or_default();
    if wanted.len() > crate::scheduler::MAX_AFTER {
        return Err(ApiError::BadRequest(format!(
            "after names {} runs; at most {}",
            wanted.len(),
            crate::scheduler::MAX_AFTER
        )));
    }
    let mut after = Vec::new();
    for id in wanted {
        after.push(
            super::ids::resolve_run_id(&state, &id)
                .await
                .map_err(|e| match e {
                    ApiError::NotFound(_) => ApiError::BadRequest(format!(
                        "unknown run in after: {}",
                        id.chars().take(100).collect::<String>()
                    )),
                    e => e,
                })?,
        );
    }
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
            delay: parsed.delay,
            run_at: parsed.run_at,
            priority: parsed.priority,
            after,
            after_when: parsed.after_when.unwrap_or_default(),
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(Triggered::of(triggered, None))))
}
