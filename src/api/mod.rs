//! The HTTP API (axum): routes, shared state, limits, access control, JSON errors.
//!
//! Routes follow DESIGN's table. Handlers validate input, call the scheduler
//! (writes) or the store (reads), and map failures through [`error::ApiError`].
//! Every request passes [`auth::require`] (tokens or the dashboard session)
//! and a per-request deadline ([`REQUEST_TIMEOUT`] for producing the response;
//! streams then run on their own); bodies are capped at [`MAX_BODY_BYTES`]
//! (413, read no further); connections whose client stops reading are
//! dropped ([`conn`]).

pub mod auth;
pub mod conn;
mod error;
pub mod events;
mod pipelines;
mod runs;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub use auth::Auth;
pub use error::ApiError;
pub use events::EventTailer;

use crate::metrics::{Metrics, Snapshot};
use crate::scheduler::Scheduler;
use crate::store::Store;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Longest a handler may take to produce its response (a stream's body then runs on).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// This node's scheduler.
    pub scheduler: Scheduler,
    /// The store (reads).
    pub store: Arc<dyn Store>,
    /// The process's event tailer.
    pub tailer: EventTailer,
    /// Cancelled when the server stops: streams end.
    pub shutdown: CancellationToken,
    /// One permit per open SSE stream.
    pub streams: Arc<tokio::sync::Semaphore>,
    /// Token and session checks.
    pub auth: Auth,
    /// This node's instruments.
    pub metrics: Arc<Metrics>,
}

/// The router with every route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/pipelines", get(pipelines::list))
        .route("/api/pipelines/{id}/trigger", post(pipelines::trigger))
        .route("/api/pipelines/{id}/jobs", get(pipelines::runs_of))
        .route("/api/runs", get(runs::list))
        .route("/api/runs/{id}", get(runs::get))
        .route("/api/runs/{id}/abort", post(runs::abort))
        .route("/api/runs/{id}/deliveries", get(runs::deliveries))
        .route("/api/jobs/{id}", get(runs::job))
        .route("/api/jobs/{id}/logs", get(runs::logs))
        .route("/api/jobs/{id}/logs/stream", get(events::log_stream))
        .route("/api/events", get(events::events))
        .route("/api/workers", get(runs::workers))
        .route(
            "/api/session",
            get(auth::status).post(auth::login).delete(auth::logout),
        )
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .layer(axum::middleware::from_fn(deadline))
        .with_state(state)
}

/// Answers 503 when a handler has not produced its response within [`REQUEST_TIMEOUT`].
async fn deadline(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::Unavailable(format!(
            "request timed out after {}s",
            REQUEST_TIMEOUT.as_secs()
        ))
        .into_response(),
    }
}

/// `GET /metrics`: Prometheus text.
async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<impl IntoResponse, ApiError> {
    let counts = state.store.pipeline_counts().await?;
    let mut pipelines: Vec<(String, u64, u64)> = state
        .scheduler
        .settings()
        .pipelines
        .keys()
        .map(|name| {
            let c = counts.get(name).copied().unwrap_or_default();
            (name.clone(), c.queued, c.running)
        })
        .collect();
    pipelines.sort();
    let snap = Snapshot {
        pipelines,
        sse_clients: events::MAX_STREAMS - state.streams.available_permits(),
        slots: state.scheduler.slots(),
    };
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&snap),
    ))
}

async fn healthz(axum::extract::State(state): axum::extract::State<AppState>) -> impl IntoResponse {
    Json(json!({"status": "ok", "node": state.scheduler.node_id()}))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> impl IntoResponse {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({"error": "method not allowed"})),
    )
}
