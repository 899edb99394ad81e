//! The dashboard's session routes: `POST /api/session` exchanges a token for the signed
//! session cookie, `GET` says whether one is needed and held, `DELETE` clears it. The
//! cookie's format and checks live in [`auth`](super::auth).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::{Actor, now_secs, refuse, same_origin};
use super::{ApiError, AppState};

/// `POST /api/session` body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Login {
    /// An API token (never stored; exchanged for a signed session cookie).
    token: String,
}

/// `GET /api/session` answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct SessionStatus {
    /// The server has API tokens: every route but `/healthz` needs one.
    auth_required: bool,
    /// This request carries a valid token or session (always true without tokens).
    authenticated: bool,
    /// The token's label.
    actor: Option<String>,
}

/// `POST /api/session`: exchanges a token for a session cookie (the dashboard's login).
#[utoipa::path(
    post,
    path = "/api/session",
    tag = "session",
    operation_id = "login",
    request_body(content = Login, content_type = "application/json"),
    responses(
        (status = 204, description = "Logged in: `Set-Cookie: runyard_session=…; HttpOnly; SameSite=Strict`"),
        (status = 400, description = "Malformed body", body = super::ErrorBody),
        (status = 401, description = "The token is not accepted", body = super::ErrorBody),
        (status = 403, description = "Cross-origin login refused", body = super::ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = super::ErrorBody),
    )
)]
pub(super) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<Login>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    if headers.contains_key(header::ORIGIN) && !same_origin(&headers) {
        return Ok(refuse(StatusCode::FORBIDDEN, "cross-origin login refused"));
    }
    let Json(login) = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!(
                "request body is larger than {} bytes",
                super::MAX_BODY_BYTES
            ))
        } else {
            ApiError::BadRequest(e.body_text())
        }
    })?;
    if !state.auth.required() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let Some(label) = state.auth.check_token(&login.token) else {
        return Ok(refuse(StatusCode::UNAUTHORIZED, "invalid token"));
    };
    let cookie = state.auth.set_cookie(&state.auth.issue(label, now_secs()));
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| ApiError::BadRequest(e.to_string()))?,
    );
    Ok(resp)
}

/// `GET /api/session`: whether a token is needed and whether this request has one.
#[utoipa::path(
    get,
    path = "/api/session",
    tag = "session",
    operation_id = "session",
    responses((status = 200, description = "The login state", body = SessionStatus))
)]
pub(super) async fn status(
    State(state): State<AppState>,
    axum::Extension(actor): axum::Extension<Actor>,
) -> Json<SessionStatus> {
    Json(SessionStatus {
        auth_required: state.auth.required(),
        authenticated: !state.auth.required() || actor.0.is_some(),
        actor: actor.0,
    })
}

/// `DELETE /api/session`: ends the dashboard session (clears the cookie).
#[utoipa::path(
    delete,
    path = "/api/session",
    tag = "session",
    operation_id = "logout",
    responses(
        (status = 204, description = "Logged out: the cookie is cleared"),
        (status = 401, description = "No valid token or session", body = super::ErrorBody),
        (status = 403, description = "Cross-origin request refused", body = super::ErrorBody),
    )
)]
pub(super) async fn logout() -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("runyard_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    resp
}
