//! `ApiError` → HTTP status + `{"error": "..."}`: the only place that mapping lives.
//!
//! Client mistakes are 4xx with a message that says what to fix; a store
//! outage is 503. Nothing a client sends can produce a 500.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::scheduler::TriggerError;
use crate::store::StoreError;

/// The body of every error answer (schema `Error` in `/api/openapi.json`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Error)]
pub struct ErrorBody {
    /// What went wrong and, for a client mistake, what to fix.
    pub error: String,
    /// Seconds until a retry may succeed; only on a 503 that also carries `Retry-After`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl ErrorBody {
    /// An error body with just a message.
    pub fn new(error: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: error.into(),
            retry_after: None,
        }
    }
}

/// An API failure.
#[derive(Debug)]
pub enum ApiError {
    /// 400.
    BadRequest(String),
    /// 404.
    NotFound(String),
    /// 409.
    Conflict(String),
    /// 408 with `Connection: close`: the client did not send its request in time.
    TimedOut(String),
    /// 413.
    TooLarge(String),
    /// 503: the store is unavailable.
    Unavailable(String),
    /// 503 with `Retry-After`: the work cannot be taken now (e.g. every setup circuit is open).
    RetryLater {
        /// What is wrong.
        message: String,
        /// Seconds until a retry may succeed.
        after_secs: u64,
    },
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            ApiError::TimedOut(m) => {
                return (
                    StatusCode::REQUEST_TIMEOUT,
                    [(axum::http::header::CONNECTION, "close")],
                    Json(ErrorBody::new(m)),
                )
                    .into_response();
            }
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            ApiError::RetryLater {
                message,
                after_secs,
            } => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(axum::http::header::RETRY_AFTER, after_secs.to_string())],
                    Json(ErrorBody {
                        error: message,
                        retry_after: Some(after_secs),
                    }),
                )
                    .into_response();
            }
        };
        (status, Json(ErrorBody::new(message))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::warn!("store error in API: {e}");
        match e {
            StoreError::Conflict { message } => ApiError::Conflict(message),
            // Unreachable, busy, closed, or a database error: nothing the client sent can
            // fix it, and nothing was written; the client may try again later.
            e => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<TriggerError> for ApiError {
    fn from(e: TriggerError) -> Self {
        match e {
            TriggerError::Store(s) => s.into(),
            e @ TriggerError::IdempotencyConflict { .. } => ApiError::Conflict(e.to_string()),
            e @ (TriggerError::NotFinished { .. }
            | TriggerError::NothingToRerun(_)
            | TriggerError::WorkflowNotFinished { .. }
            | TriggerError::NoStepToRerun(_)) => ApiError::Conflict(e.to_string()),
            e @ (TriggerError::RunNotFound(_) | TriggerError::WorkflowRunNotFound(_)) => {
                ApiError::NotFound(e.to_string())
            }
            TriggerError::Unavailable {
                message,
                retry_after,
            } => ApiError::RetryLater {
                message,
                after_secs: retry_after.as_secs().max(1),
            },
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(e: axum::extract::rejection::BytesRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!(
                "request body is larger than {} bytes",
                super::MAX_BODY_BYTES
            ))
        } else {
            ApiError::BadRequest(e.body_text())
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::BadRequest(e.body_text())
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(e: axum::extract::rejection::PathRejection) -> Self {
        ApiError::BadRequest(e.body_text())
    }
}
