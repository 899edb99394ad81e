//! A job's log stream (`GET /api/jobs/{id}/logs/stream`: stored lines, live lines, then
//! `end`) and its plain-text download (`GET /api/jobs/{id}/logs/text`).

use std::convert::Infallible;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::ids::JobIdParam;
use crate::api::{ApiError, AppState, ErrorBody};
use crate::model::JobStatus;
use crate::store::JobWake;

use super::*;

/// `?tail=N`: start with the last N stored lines instead of all of them.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(in crate::api) struct StreamQuery {
    /// Start with the last N stored lines instead of all of them (values above 1000000 count as 1000000).
    #[param(minimum = 0)]
    tail: Option<u64>,
}

/// `GET /api/jobs/{id}/logs/stream`: stored lines, then live lines until the job ends.
#[utoipa::path(
    get,
    path = "/api/jobs/{id}/logs/stream",
    tag = "events",
    operation_id = "streamJobLogs",
    params(
        JobIdParam,
        StreamQuery,
        ("Last-Event-ID" = Option<i64>, Header, nullable = false, minimum = 0, maximum = 9_223_372_036_854_775_807_i64,
            description = "Resume after this line sequence number (takes precedence over `tail`)"),
    ),
    responses(
        (status = 200, description = "SSE: `log` events (`{\"seq\", \"stream\", \"line\", \"claimSeq\", \"timeMs\"}`, \
            id = seq; `claimSeq` names the execution (attempt) that wrote the line, `timeMs` is the epoch ms \
            its chunk was committed, or null for output stored before schema v3), \
            then one `end` event (`{\"jobId\", \"status\"}`) when the job is terminal",
            content_type = "text/event-stream", body = SseEvent),
        (status = 400, description = "Malformed job id, tail or Last-Event-ID", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 503, description = "The store is unavailable or too many streams are open", body = ErrorBody),
    )
)]
pub(in crate::api) async fn log_stream(
    State(state): State<AppState>,
    path: Result<Path<JobIdParam>, PathRejection>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let job_id = crate::api::ids::job_id(&state, path).await?;
    let Query(q) = query?;
    if state.store.job_get(&job_id).await?.is_none() {
        return Err(crate::api::jobs::job_not_found(&state, &job_id).await);
    }
    let mut after = match (last_event_id(&headers)?, q.tail) {
        (Some(id), _) => id,
        (None, Some(n)) => state.store.job_output_len(&job_id).await? - 1 - n.min(1_000_000) as i64,
        (None, None) => -1,
    };
    let store = state.store.clone();
    let shutdown = state.shutdown.clone();
    let metrics = state.metrics.clone();
    // Followed before the first read: every later change of the job wakes us.
    let mut wakes = store.changes().subscribe_output(&job_id);
    let poll = store.changes().output_poll().unwrap_or(LOG_SAFETY_POLL);
    let permit = stream_permit(&state)?;
    let stream = async_stream::stream! {
        let _permit = permit;
        let mut keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        let mut wrote = false;
        let mut look_at_status = true;
        // Shutdown: one last read (status and lines) so a job the drain finished shows
        // its final lines and its `end`, then the stream ends.
        let mut closing = false;
        let mut last_read;
        loop {
            last_read = tokio::time::Instant::now();
            // The status is read before the lines: the final flush commits before the
            // terminal write, so lines read after a terminal status are all there are.
            let status = if look_at_status {
                match store.job_get(&job_id).await {
                    Ok(Some(job)) => Some(job.status),
                    _ => break,
                }
            } else {
                None
            };
            loop {
                let lines = match store.job_output_after(&job_id, after, REPLAY_PAGE).await {
                    Ok(l) => l,
                    Err(e) => { tracing::warn!("log stream read failed: {e}"); return; }
                };
                // A page ends at a chunk boundary: fewer lines than asked means no more.
                let full = lines.len() >= REPLAY_PAGE;
                if !lines.is_empty() {
                    let mut buf = Vec::with_capacity(lines.iter().map(|l| l.line.len() + 96).sum());
                    for line in &lines {
                        after = line.seq;
                        let data = json!({"seq": line.seq, "stream": line.stream, "line": line.line,
                                          "claimSeq": line.claim_seq, "timeMs": line.time}).to_string();
                        write_event(&mut buf, Some(&line.seq.to_string()), "log", &data);
                    }
                    wrote = true;
                    yield Ok::<Bytes, Infallible>(Bytes::from(buf));
                }
                if !full {
                    break;
                }
            }
            if let Some(status) = status
                && status.parse::<JobStatus>().is_ok_and(JobStatus::is_terminal)
            {
                yield Ok(SseEvent {
                    id: None,
                    event: "end".into(),
                    data: json!({"jobId": job_id, "status": status}).to_string(),
                }.bytes());
                break;
            }
            if closing {
                break;
            }
            // Paced: a busy job's viewer reads at most every LOG_PACE, each read taking
            // every flush since the last one (changes meanwhile are kept by `wakes`).
            let since = last_read.elapsed();
            if since < LOG_PACE {
                tokio::select! {
                    _ = shutdown.cancelled() => { closing = true; look_at_status = true; continue; }
                    _ = tokio::time::sleep(LOG_PACE - since) => {}
                }
            }
            // One deadline for the whole wait (keep-alive ticks must not push it on).
            let poll_at = tokio::time::Instant::now() + poll;
            look_at_status = loop {
                let woke = tokio::select! {
                    _ = shutdown.cancelled() => { closing = true; Some(true) }
                    _ = keep_alive.tick() => None,
                    w = wakes.changed() => match w {
                        None => return,
                        Some(JobWake::Output) => Some(false),
                        Some(JobWake::State | JobWake::Unknown) => Some(true),
                    },
                    // Output written by another replica reaches no feed without a bus:
                    // the store says how often to look (a long safety net otherwise).
                    _ = tokio::time::sleep_until(poll_at) => Some(true),
                };
                match woke {
                    Some(status_too) => break status_too,
                    None => {
                        if !std::mem::take(&mut wrote) {
                            yield Ok(Bytes::from_static(KEEP_ALIVE_COMMENT));
                        }
                    }
                }
            };
            metrics.log_stream_wakeups.fetch_add(1, Ordering::Relaxed);
        }
    };
    Ok(sse(stream))
}

/// `?timestamps=`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(in crate::api) struct LogTextQuery {
    /// Start each line with its capture time (RFC 3339, UTC, ms: when its chunk was
    /// committed; `-` for output stored before schema v3) and a space.
    timestamps: Option<bool>,
}

/// Lines read from the store per chunk of a text download.
pub(super) const TEXT_PAGE: usize = 10_000;

/// `GET /api/jobs/{id}/logs/text`: the whole stored log as plain text, in capture order.
#[utoipa::path(
    get,
    path = "/api/jobs/{id}/logs/text",
    tag = "jobs",
    operation_id = "downloadJobLog",
    params(JobIdParam, LogTextQuery),
    responses(
        (status = 200, description = "Every stored line of every attempt (stdout and stderr as they were \
            captured; the streams interleave at flush granularity), one per line, as an attachment \
            named after the job", body = String, content_type = "text/plain"),
        (status = 400, description = "Malformed job id or timestamps", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 503, description = "The store is unavailable or too many streams are open", body = ErrorBody),
    )
)]
pub(in crate::api) async fn log_text(
    State(state): State<AppState>,
    path: Result<Path<JobIdParam>, PathRejection>,
    query: Result<Query<LogTextQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let job_id = crate::api::ids::job_id(&state, path).await?;
    let Query(q) = query?;
    if state.store.job_get(&job_id).await?.is_none() {
        return Err(crate::api::jobs::job_not_found(&state, &job_id).await);
    }
    let timestamps = q.timestamps.unwrap_or(false);
    let store = state.store.clone();
    let permit = stream_permit(&state)?;
    let filename = format!("{}.log", job_id.replace(':', "_"));
    let body = async_stream::stream! {
        let _permit = permit;
        let mut after = -1;
        loop {
            let lines = match store.job_output_after(&job_id, after, TEXT_PAGE).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("log download read failed: {e}");
                    yield Err(std::io::Error::other(e.to_string()));
                    break;
                }
            };
            if lines.is_empty() {
                break;
            }
            let mut chunk = String::with_capacity(lines.iter().map(|l| l.line.len() + 32).sum());
            for line in &lines {
                after = line.seq;
                if timestamps {
                    match line.time {
                        Some(t) => chunk.push_str(&crate::clock::rfc3339(t)),
                        None => chunk.push('-'),
                    }
                    chunk.push(' ');
                }
                chunk.push_str(&line.line);
                chunk.push('\n');
            }
            yield Ok::<_, std::io::Error>(axum::body::Bytes::from(chunk));
        }
    };
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        axum::body::Body::from_stream(body),
    ))
}
