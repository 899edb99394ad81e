//! `POST /api/runs/{id}/rerun`: a finished run again, as a new run (`rerunOf`), every
//! shard or only those that failed or were aborted (the rule: [`crate::store::rerun`]).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use utoipa::ToSchema;

use super::ids::{RunIdParam, run_id};
use super::trigger::{Triggered, json_body, source};
use super::{ApiError, AppState, ErrorBody};
use crate::scheduler::RerunScope;

/// The body of `POST /api/runs/{id}/rerun` (empty means `{}`: every shard).
#[derive(Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RerunBody {
    /// `failed`: only the shards that failed or were aborted run again; completed ones
    /// keep their outcome and result in the new run (its finalizer sees every shard).
    /// Absent: every shard runs again.
    #[schema(pattern = "^failed$")]
    only: Option<String>,
}

/// `POST /api/runs/{id}/rerun`: queues a new run of a finished run with the same
/// parameters and shard count (`rerunOf` names the original, which is never changed).
#[utoipa::path(
    post,
    path = "/api/runs/{id}/rerun",
    tag = "runs",
    operation_id = "rerunRun",
    params(
        RunIdParam,
        ("X-Runyard-Source" = Option<String>, Header, nullable = false,
            description = "Who re-runs: `cli`, `dashboard`; anything else is recorded as `api`"),
    ),
    request_body(content = Option<RerunBody>, content_type = "application/json",
        description = "May be empty (same as `{}`: every shard)"),
    responses(
        (status = 202, description = "The new run is queued", body = Triggered),
        (status = 400, description = "Malformed or ambiguous run id, malformed body, `only` not `failed`, \
            or the run's pipeline is no longer configured", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 409, description = "The run has not finished, or it has no failed or aborted shard \
            (with `only: failed`)", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn rerun(
    State(state): State<AppState>,
    axum::Extension(actor): axum::Extension<super::auth::Actor>,
    path: Result<Path<RunIdParam>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Triggered>), ApiError> {
    let id = run_id(&state, path).await?;
    let parsed: RerunBody = json_body(body)?;
    let scope = match parsed.only.as_deref() {
        None => RerunScope::All,
        Some("failed") => RerunScope::Failed,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "only must be \"failed\" (or absent for every shard), not {:?}",
                other.chars().take(40).collect::<String>()
            )));
        }
    };
    let triggered = state
        .scheduler
        .rerun(&id, scope, source(&headers), actor.0)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Triggered::of(triggered, Some(id))),
    ))
}
