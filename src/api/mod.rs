//! The HTTP API (axum): routes, shared state, body limits, JSON errors.
//!
//! Routes follow DESIGN's table. Handlers validate input, call the scheduler
//! (writes) or the store (reads), and map failures through [`error::ApiError`].

mod dashboard;
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

pub use error::ApiError;
pub use events::EventTailer;

use crate::scheduler::Scheduler;
use crate::store::Store;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1 << 20;

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
        // The dashboard (static, embedded): `/` and `/assets/{file}`; see `dashboard.rs`.
        .merge(dashboard::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
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
