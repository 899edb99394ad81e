//! The HTTP API (axum): routes, shared state, body limits, JSON errors.
//!
//! Routes are the documented contract (`docs/http-api.md`). Handlers validate input, call the scheduler
//! (writes) or the store (reads), and map failures through [`error::ApiError`].
//! Every route is registered with `routes!` from its handler's
//! `#[utoipa::path]`, so `/api/openapi.json` lists exactly what is served
//! (see [`openapi`]). Every request passes [`auth::require`] (tokens or the
//! dashboard session) and a per-request deadline ([`REQUEST_TIMEOUT`] for
//! producing the response; streams then run on their own); bodies are capped
//! at [`MAX_BODY_BYTES`] (413, read no further) and must arrive in time (408,
//! `body`); connections whose client stops reading or sending are dropped
//! ([`conn`]); the server loop caps connections and keeps `/healthz` answerable
//! past the cap ([`listen`]).

pub mod auth;
mod body;
pub mod conn;
mod dashboard;
mod error;
mod history;
mod ids;
mod jobs;
pub mod listen;
mod memory;
mod nodes;
mod openapi;
mod pipelines;
mod rerun;
mod runs;
mod session;
pub mod sse;
mod stats;
mod trigger;
pub mod views;
mod workflow_runs;
mod workflows;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Json, Router};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::Auth;
pub use error::{ApiError, ErrorBody};
pub use openapi::BEARER_AUTH;
pub use sse::EventTailer;

use crate::config::Settings;
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

/// Every documented route: each handler's `#[utoipa::path]` gives its method and path.
fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(pipelines::list))
        .routes(routes!(trigger::trigger))
        .routes(routes!(pipelines::runs_of))
        .routes(routes!(pipelines::pause))
        .routes(routes!(pipelines::resume))
        .routes(routes!(runs::list))
        .routes(routes!(runs::get))
        .routes(routes!(runs::abort))
        .routes(routes!(rerun::rerun))
        .routes(routes!(runs::deliveries))
        .routes(routes!(workflows::list))
        .routes(routes!(workflows::trigger))
        .routes(routes!(workflow_runs::list))
        .routes(routes!(workflow_runs::get))
        .routes(routes!(workflow_runs::abort))
        .routes(routes!(workflow_runs::rerun))
        .routes(routes!(jobs::job))
        .routes(routes!(jobs::logs))
        .routes(routes!(sse::log_stream))
        .routes(routes!(sse::log_text))
        .routes(routes!(stats::stats))
        .routes(routes!(sse::events))
        .routes(routes!(nodes::workers))
        .routes(routes!(nodes::queue))
        .routes(routes!(openapi::document))
        .routes(routes!(session::status, session::login, session::logout))
        .routes(routes!(metrics))
        // The dashboard (static, embedded): `/` and `/assets/{file}`; see `dashboard.rs`.
        .routes(routes!(dashboard::index))
        .routes(routes!(dashboard::asset))
}

/// The OpenAPI document of a node running with `settings` (what `/api/openapi.json` serves).
pub fn openapi(settings: &Settings) -> utoipa::openapi::OpenApi {
    openapi::finish(documented().into_openapi(), settings)
}

/// The router with every route.
pub fn router(state: AppState) -> Router {
    let (routes, doc) = documented().split_for_parts();
    let doc = openapi::finish(doc, state.scheduler.settings());
    let doc = openapi::Document(
        serde_json::to_vec(&doc)
            .expect("the OpenAPI document serialises")
            .into(),
    );
    routes
        // Routes added here with `.route(…)` are not in the OpenAPI document;
        // tests/openapi.rs fails until each is documented (prefer `routes!` above).
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(doc))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Inside auth (an unauthenticated body is not waited for), inside the deadline.
        .layer(axum::middleware::from_fn_with_state(
            body::body_timeout(state.scheduler.settings().server.client_idle_timeout),
            body::require_in_time,
        ))
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

/// `GET /metrics`: this node's instruments and the store's job gauges, Prometheus text.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "node",
    operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain"),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let queue = nodes::queue_of(&state).await?;
    let pipelines: Vec<(String, u64, u64)> = queue
        .iter()
        .map(|q| (q.pipeline.clone(), q.queued, q.running))
        .collect();
    let backlog = queue
        .iter()
        .map(|q| (q.pipeline.clone(), q.oldest_queued_seconds, q.unplaceable))
        .collect();
    let paused = state
        .store
        .pipelines_paused()
        .await?
        .into_iter()
        .map(|p| p.pipeline)
        .collect();
    let snap = Snapshot {
        pipelines,
        sse_clients: sse::MAX_STREAMS - state.streams.available_permits(),
        slots: state.scheduler.slots(),
        bus: Some(state.scheduler.bus_status()),
        paused,
        store_traffic: state.store.traffic(),
        backlog,
        node: (
            state.scheduler.node_id().to_string(),
            state.scheduler.node_name().to_string(),
        ),
    };
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&snap),
    ))
}

/// `GET /healthz` answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`: the node answers HTTP.
    pub status: &'static str,
    /// This node's id.
    pub node: String,
}

/// `GET /healthz`: liveness, open without a token.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "node",
    operation_id = "healthz",
    responses((status = 200, description = "The node answers", body = Health))
)]
async fn healthz(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        node: state.scheduler.node_id().to_string(),
    })
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> (StatusCode, Json<ErrorBody>) {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(ErrorBody::new("method not allowed")),
    )
}
