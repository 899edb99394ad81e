//! Request bodies arrive in time or the client hears 408.
//!
//! **Invariant: a slow or broken client gets a 4xx, never a 5xx.** A handler
//! that extracts its body waits on the client; a body that never ends (chunked
//! without its last chunk, or shorter than its `Content-Length`) used to keep it
//! waiting until the 30 s handler deadline, which answers 503 — a server error
//! caused by a client. This layer reads every body before the handler runs,
//! within [`body_timeout`] of the request head (¾ of the client's idle timeout,
//! at most [`MAX_BODY_WAIT`]): late is `408` JSON with `Connection: close`, too
//! large is 413, a connection that breaks mid-body is 400. Bodies are capped at
//! [`super::MAX_BODY_BYTES`] and every route reads its body whole anyway, so
//! buffering here costs nothing extra. The 503 remains only for a store that is
//! down.
//!
//! Test: `streams_and_connections::a_body_that_never_arrives_is_408_well_before_the_handler_deadline`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;

use super::error::ApiError;

/// The longest a body may take to arrive, whatever `client_idle_timeout` says.
pub const MAX_BODY_WAIT: Duration = Duration::from_secs(10);

/// How long a request's body may take after its head: three quarters of the idle
/// timeout (so a stalled body hears 408 before its silent connection is closed), at
/// most [`MAX_BODY_WAIT`] (well inside the handler deadline).
pub fn body_timeout(client_idle_timeout: Duration) -> Duration {
    (client_idle_timeout * 3 / 4).min(MAX_BODY_WAIT)
}

/// Middleware: reads the body within the deadline (see the module docs).
pub async fn require_in_time(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if !has_body {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, super::MAX_BODY_BYTES);
    let bytes = match tokio::time::timeout(limit, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return ApiError::TooLarge(format!(
                "request body is larger than {} bytes",
                super::MAX_BODY_BYTES
            ))
            .into_response();
        }
        Ok(Err(e)) => {
            return ApiError::BadRequest(format!("reading the request body failed: {e}"))
                .into_response();
        }
        Err(_) => {
            return ApiError::TimedOut(format!(
                "request body not received within {} ms",
                limit.as_millis()
            ))
            .into_response();
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}
