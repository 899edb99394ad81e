//! Run, job and workflow run ids as a client may give them — whole, or short: the last 8 hex digits
//! the dashboard shows, or a prefix of 8 or more — resolved to the stored id (an
//! ambiguous one is a 400 naming the runs it matches, an unknown one a 404).

use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiError, AppState};
use crate::model::{self, MIN_SHORT_ID, RunId, parse_job_id, short_run_id};
use crate::store::RunFilter;

/// The `{id}` of `/api/runs/{id}…` (what the handlers extract, and its documentation).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct RunIdParam {
    /// A run id: a UUID (hyphenated or 32 hex digits; braced and `urn:uuid:` forms are accepted too),
    /// or a short id: its first 8 or more hex digits (with or without the hyphens) when they
    /// match one run only (400 when they match several). Answers use the lowercase hyphenated form.
    #[param(
        pattern = r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}|[0-9a-fA-F]{8,31}|[0-9a-fA-F]{8}(-([0-9a-fA-F]{0,3}|[0-9a-fA-F]{4}(-([0-9a-fA-F]{0,3}|[0-9a-fA-F]{4}(-([0-9a-fA-F]{0,3}|[0-9a-fA-F]{4}(-[0-9a-fA-F]{0,11})?))?))?))?)$"
    )]
    id: String,
}

/// The `{id}` of `/api/jobs/{id}…` (what the handlers extract, and its documentation).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct JobIdParam {
    /// A job id: `RUN` (single-shard run), `RUN:sN` (shard N, 0-based) or `RUN:finalize`,
    /// where RUN is a run id or a short one (see `/api/runs/{id}`).
    #[param(
        pattern = r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}|[0-9a-fA-F]{8,31}|[0-9a-fA-F]{8}(-([0-9a-fA-F]{0,3}|[0-9a-fA-F]{4}(-([0-9a-fA-F]{0,3}|[0-9a-fA-F]{4}(-([0-9a-fA-F]{0,3}|[0-9a-fA-F]{4}(-[0-9a-fA-F]{0,11})?))?))?))?)(:(s[0-9]{1,6}|finalize))?$"
    )]
    id: String,
}

/// The canonical form of a run id from the path: any UUID spelling, or a unique prefix.
pub(super) async fn run_id(
    state: &AppState,
    path: Result<Path<RunIdParam>, PathRejection>,
) -> Result<String, ApiError> {
    let Path(RunIdParam { id }) = path?;
    resolve_run_id(state, &id).await
}

/// The canonical form of a job id from the path (its run part may be a unique prefix).
pub(super) async fn job_id(
    state: &AppState,
    path: Result<Path<JobIdParam>, PathRejection>,
) -> Result<String, ApiError> {
    let Path(JobIdParam { id }) = path?;
    resolve_job_id(state, &id).await
}

/// A full run id in any UUID spelling, or a short id: at least [`MIN_SHORT_ID`] leading
/// hex digits, or the last 8–12 (as the dashboard shows them), that match exactly one run
/// (404 when none does, 400 naming some candidates when several do).
pub(super) async fn resolve_run_id(state: &AppState, id: &str) -> Result<String, ApiError> {
    if let Ok(run) = RunId::parse(id) {
        return Ok(run.to_string());
    }
    let Some(prefix) = short_run_id(id) else {
        return Err(ApiError::BadRequest(format!(
            "malformed run id: {} (a run id, or at least its first {MIN_SHORT_ID} hex digits)",
            id.chars().take(80).collect::<String>()
        )));
    };
    let mut found = state.store.run_ids_by_prefix(&prefix, 3).await?;
    let digits = id.to_ascii_lowercase();
    if found.is_empty() && digits.len() <= 12 && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        // The dashboard shows a run's last 8 digits (the random end of its UUIDv7; runs
        // made within a minute share their first 8), so those work too.
        let runs = state
            .store
            .runs_list(RunFilter {
                run_id: Some(digits.clone()),
                limit: 3,
                ..RunFilter::default()
            })
            .await?;
        found = runs
            .into_iter()
            .map(|r| r.run_id)
            .filter(|r| r.ends_with(&digits))
            .collect();
    }
    match found.as_slice() {
        [] => Err(ApiError::NotFound(format!(
            "Run not found: no run id starts or ends with {prefix}"
        ))),
        [one] => Ok(one.clone()),
        many => Err(ApiError::BadRequest(format!(
            "run id {prefix} is ambiguous: it starts {}{}; give more of the id",
            many[..2].join(", "),
            if many.len() > 2 { " and more" } else { "" }
        ))),
    }
}

/// `RUN`, `RUN:sN` or `RUN:finalize` in canonical form (lowercase hyphenated UUID, no
/// leading zeros), where RUN may be a unique prefix of a run id.
pub(super) async fn resolve_job_id(state: &AppState, id: &str) -> Result<String, ApiError> {
    if let Ok((run, part)) = parse_job_id(id) {
        return Ok(model::canonical_job_id(run, part));
    }
    let (run, part) = match id.split_once(':') {
        Some((run, part)) => (run, Some(part)),
        None => (id, None),
    };
    if short_run_id(run).is_none() {
        // Not a prefix either: the parser's own message.
        return Err(ApiError::BadRequest(
            parse_job_id(id)
                .err()
                .map_or_else(|| "malformed id".into(), |e| e.to_string()),
        ));
    }
    let full = resolve_run_id(state, run).await?;
    let spelled = match part {
        Some(part) => format!("{full}:{part}"),
        None => full,
    };
    let (run, part) = parse_job_id(&spelled).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(model::canonical_job_id(run, part))
}

/// The `{id}` of `/api/workflow-runs/{id}…`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct WorkflowRunIdParam {
    /// A workflow run id (a UUID), or a short one: its last 8 hex digits (as shown
    /// everywhere) or its first 8 or more, when they match one workflow run only (400
    /// when they match several).
    #[param(
        pattern = r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}|[0-9a-fA-F]{8,31}|[0-9a-fA-F]{8}(-([0-9a-fA-F]{0,3}|[0-9a-fA-F]{4}(-([0-9a-fA-F]{0,3}|[0-9a-fA-F]{4}(-([0-9a-fA-F]{0,3}|[0-9a-fA-F]{4}(-[0-9a-fA-F]{0,11})?))?))?))?)$"
    )]
    id: String,
}

/// The stored id of a workflow run from the path: a UUID, or a unique prefix.
pub(super) async fn workflow_run_id(
    state: &AppState,
    path: Result<Path<WorkflowRunIdParam>, PathRejection>,
) -> Result<String, ApiError> {
    let Path(WorkflowRunIdParam { id }) = path?;
    if let Ok(run) = RunId::parse(&id) {
        return Ok(run.to_string());
    }
    let Some(prefix) = short_run_id(&id) else {
        return Err(ApiError::BadRequest(format!(
            "malformed workflow run id: {} (an id, or at least its first {MIN_SHORT_ID} hex digits)",
            id.chars().take(80).collect::<String>()
        )));
    };
    // The short form shown everywhere is the id's last 8 digits (its random end).
    let digits = id.to_ascii_lowercase();
    let suffix = (digits.len() <= 12 && digits.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(digits.as_str());
    let found = state
        .store
        .workflow_run_ids_matching(&prefix, suffix, 3)
        .await?;
    match found.as_slice() {
        [] => Err(ApiError::NotFound(format!("Workflow run not found: {id}"))),
        [one] => Ok(one.clone()),
        several => Err(ApiError::BadRequest(format!(
            "ambiguous workflow run id {id}: it matches {}",
            several.join(", ")
        ))),
    }
}
