//! Server-Sent Events: the lifecycle event stream and per-job log streams.
//!
//! One [`EventTailer`] per process reads new events from the store when the
//! store's EVENTS feed changes and fans them out to SSE clients over a
//! broadcast channel (DESIGN decision 15). A client first subscribes, then
//! replays everything after its `Last-Event-ID` from the store, then forwards
//! live events. Event ids increase but may have gaps (PostgreSQL ids follow
//! transaction ids), so continuity is never judged by arithmetic on ids: each
//! broadcast event carries the id the tailer sent before it, and a client
//! forwards it only when that is its own cursor; otherwise it replays from the
//! store. A client that falls behind the channel replays too, and one whose id
//! was pruned (below the store's `pruned_through`) gets a `resync` event first.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use super::runs::JobIdParam;
use super::{ApiError, AppState, ErrorBody};
use crate::model::JobStatus;
use crate::store::{Store, StoredEvent, change};

const REPLAY_PAGE: usize = 500;
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often a log stream re-reads the store when nothing woke it.
const LOG_POLL: Duration = Duration::from_secs(1);

/// Fans stored events out to this process's SSE clients.
#[derive(Clone)]
pub struct EventTailer {
    /// `(id sent before it, event)`: a client whose cursor is that id may forward it.
    tx: broadcast::Sender<Arc<(i64, StoredEvent)>>,
    /// Highest event id broadcast (or passed while nobody listened).
    last: Arc<AtomicI64>,
}

impl EventTailer {
    /// Starts tailing from the newest stored event.
    pub async fn start(store: Arc<dyn Store>, stop: CancellationToken) -> EventTailer {
        let (tx, _) = broadcast::channel(1024);
        let start = store.events_bounds().await.map(|(_, max)| max).unwrap_or(0);
        let tailer = EventTailer {
            tx,
            last: Arc::new(AtomicI64::new(start)),
        };
        let t = tailer.clone();
        tokio::spawn(async move {
            let mut feed = store.changes().subscribe(change::EVENTS);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = feed.changed() => if r.is_err() { break },
                }
                // Nobody listens: read nothing, just move the cursor to the newest event
                // this process has committed. That id is loaded *before* the listener
                // check, so a client that subscribes after the check reads bounds at
                // least as new, and nothing it expects is skipped.
                let committed = store.changes().last_event();
                if t.tx.receiver_count() == 0 {
                    t.last.fetch_max(committed, Ordering::AcqRel);
                    continue;
                }
                loop {
                    let after = t.last.load(Ordering::Acquire);
                    let batch = match store.events_after(after, REPLAY_PAGE).await {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!("event tailer read failed: {e}");
                            break;
                        }
                    };
                    let full = batch.len() == REPLAY_PAGE;
                    for ev in batch {
                        let prev = t.last.fetch_max(ev.id, Ordering::AcqRel);
                        if ev.id > prev {
                            let _ = t.tx.send(Arc::new((prev, ev)));
                        }
                    }
                    if !full {
                        break;
                    }
                }
            }
        });
        tailer
    }
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    match headers.get("last-event-id") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| {
                ApiError::BadRequest("Last-Event-ID must be a non-negative integer".into())
            }),
    }
}

/// Most SSE streams open at once; past it a client gets 503 instead of the server
/// spending unbounded memory and reads on streams.
pub const MAX_STREAMS: usize = 1024;

fn stream_permit(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::Unavailable(format!("too many open streams (at most {MAX_STREAMS})"))
    })
}

/// One Server-Sent Event as a client reads it. Every event the streams send is built
/// from one, so its schema in `/api/openapi.json` is the wire shape (keep-alive
/// comments aside).
#[derive(utoipa::ToSchema)]
pub(super) struct SseEvent {
    /// What to send as `Last-Event-ID` to resume after this event: the event id on
    /// `/api/events`, the line's `seq` on log streams; absent on `resync` and `end`.
    id: Option<String>,
    /// `job:…` and `run:…` event names or `resync` on `/api/events`; `log` or `end` on log streams.
    event: String,
    /// One JSON object (the event's payload).
    data: String,
}

impl From<SseEvent> for Event {
    fn from(e: SseEvent) -> Event {
        let event = Event::default().event(e.event).data(e.data);
        match e.id {
            Some(id) => event.id(id),
            None => event,
        }
    }
}

fn sse_event(ev: &StoredEvent) -> Event {
    SseEvent {
        id: Some(ev.id.to_string()),
        event: ev.name.clone(),
        data: ev.data.clone(),
    }
    .into()
}

/// `GET /api/events`: every lifecycle event (`job:created`, `job:progress`, `run:completed`, …)
/// as Server-Sent Events with ids; never ends while the server runs.
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "events",
    operation_id = "streamEvents",
    params(
        ("Last-Event-ID" = Option<i64>, Header, nullable = false, minimum = 0, maximum = 9_223_372_036_854_775_807_i64,
            description = "Resume after this event id (replayed from the store); a `resync` event \
                comes first when it was pruned. Without it the stream starts with new events."),
    ),
    responses(
        (status = 200, description = "An endless SSE stream: `id:`, `event:` (the event name), \
            `data:` (its JSON)", content_type = "text/event-stream", body = SseEvent),
        (status = 400, description = "Last-Event-ID is not a non-negative integer", body = ErrorBody),
        (status = 503, description = "The store is unavailable or too many streams are open", body = ErrorBody),
    )
)]
pub(super) async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let resume = last_event_id(&headers)?;
    let permit = stream_permit(&state)?;
    let mut rx = state.tailer.tx.subscribe();
    // Subscribed first, then read the bounds: every later event reaches us live or by gap replay.
    let (pruned_through, live_from) = state.store.events_bounds().await?;
    let store = state.store.clone();
    let shutdown = state.shutdown.clone();
    let stream = async_stream::stream! {
        let _permit = permit;
        let mut cursor = match resume {
            None => live_from,
            Some(n) => {
                if n < pruned_through {
                    yield Ok::<Event, Infallible>(SseEvent {
                        id: None,
                        event: "resync".into(),
                        data: json!({"lastEventId": n, "oldestRetained": pruned_through + 1}).to_string(),
                    }.into());
                }
                n
            }
        };
        let mut replay = resume.is_some();
        loop {
            if replay {
                match store.events_after(cursor, REPLAY_PAGE).await {
                    Ok(batch) => {
                        let full = batch.len() == REPLAY_PAGE;
                        for ev in &batch {
                            cursor = ev.id;
                            yield Ok(sse_event(ev));
                        }
                        replay = full;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("event replay failed: {e}");
                        break;
                    }
                }
            }
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = rx.recv() => r,
            };
            match next {
                // The event right after our cursor: forward it.
                Ok(item) if item.0 == cursor => {
                    cursor = item.1.id;
                    yield Ok(sse_event(&item.1));
                }
                // Already sent (replay went past it).
                Ok(item) if item.1.id <= cursor => {}
                // Something between our cursor and it (ids the tailer passed while idle, or
                // a replay that stopped short): fill it from the store.
                Ok(_) => replay = true,
                Err(RecvError::Lagged(_)) => replay = true,
                Err(RecvError::Closed) => break,
            }
        }
    };
    Ok(sse(stream))
}

fn sse<S: Stream<Item = Result<Event, Infallible>> + Send + 'static>(
    stream: S,
) -> impl IntoResponse {
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// `?tail=N`: start with the last N stored lines instead of all of them.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct StreamQuery {
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
pub(super) async fn log_stream(
    State(state): State<AppState>,
    path: Result<Path<JobIdParam>, PathRejection>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let job_id = super::runs::job_id(&state, path).await?;
    let Query(q) = query?;
    if state.store.job_get(&job_id).await?.is_none() {
        return Err(ApiError::NotFound(format!("Job not found: {job_id}")));
    }
    let mut after = match (last_event_id(&headers)?, q.tail) {
        (Some(id), _) => id,
        (None, Some(n)) => state.store.job_output_len(&job_id).await? - 1 - n.min(1_000_000) as i64,
        (None, None) => -1,
    };
    let store = state.store.clone();
    let shutdown = state.shutdown.clone();
    let mut output = store.changes().subscribe(change::OUTPUT);
    let mut events = store.changes().subscribe(change::EVENTS);
    let permit = stream_permit(&state)?;
    let stream = async_stream::stream! {
        let _permit = permit;
        let mut ended: Option<String> = None;
        loop {
            output.borrow_and_update();
            events.borrow_and_update();
            let lines = match store.job_output_after(&job_id, after, REPLAY_PAGE).await {
                Ok(l) => l,
                Err(e) => { tracing::warn!("log stream read failed: {e}"); break; }
            };
            let got = lines.len();
            for line in lines {
                after = line.seq;
                yield Ok::<Event, Infallible>(SseEvent {
                    id: Some(line.seq.to_string()),
                    event: "log".into(),
                    data: json!({"seq": line.seq, "stream": line.stream, "line": line.line,
                                 "claimSeq": line.claim_seq, "timeMs": line.time}).to_string(),
                }.into());
            }
            if got > 0 {
                continue;
            }
            if let Some(status) = ended.take() {
                // Read empty *after* the terminal status was seen: the final flush
                // commits before the terminal write, so nothing is left to read.
                yield Ok(SseEvent {
                    id: None,
                    event: "end".into(),
                    data: json!({"jobId": job_id, "status": status}).to_string(),
                }.into());
                break;
            }
            let status = match store.job_get(&job_id).await {
                Ok(Some(job)) => job.status,
                _ => break,
            };
            if status.parse::<JobStatus>().is_ok_and(JobStatus::is_terminal) {
                // The last lines and the terminal write may both have committed between
                // the read above and this one: read once more before the end.
                ended = Some(status);
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = output.changed() => {}
                _ = events.changed() => {}
                // Output written by another replica reaches this process's feed only through
                // a bus; without one, look again after a while rather than wait forever.
                _ = tokio::time::sleep(LOG_POLL) => {}
            }
        }
    };
    Ok(sse(stream))
}

/// `?timestamps=`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogTextQuery {
    /// Start each line with its capture time (RFC 3339, UTC, ms: when its chunk was
    /// committed; `-` for output stored before schema v3) and a space.
    timestamps: Option<bool>,
}

/// Lines read from the store per chunk of a text download.
const TEXT_PAGE: usize = 10_000;

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
pub(super) async fn log_text(
    State(state): State<AppState>,
    path: Result<Path<JobIdParam>, PathRejection>,
    query: Result<Query<LogTextQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let job_id = super::runs::job_id(&state, path).await?;
    let Query(q) = query?;
    if state.store.job_get(&job_id).await?.is_none() {
        return Err(ApiError::NotFound(format!("Job not found: {job_id}")));
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
