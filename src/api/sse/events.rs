//! `GET /api/events`: subscribe, replay from `Last-Event-ID`, then forward live batches
//! (a `resync` first when the cursor was pruned).

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use serde_json::json;
use tokio::sync::broadcast::{error::RecvError, error::TryRecvError};

use crate::api::{ApiError, AppState, ErrorBody};

use super::*;

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
        ("Accept-Encoding" = Option<String>, Header, nullable = false,
            description = "With `gzip` (as browsers send) the stream is gzip-encoded, every write \
                decodable on arrival (`Content-Encoding: gzip`)"),
    ),
    responses(
        (status = 200, description = "An endless SSE stream: `id:`, `event:` (the event name), \
            `data:` (its JSON); gzip-encoded when the request accepts gzip",
            content_type = "text/event-stream", body = SseEvent,
            headers(("Content-Encoding" = String, description = "`gzip` when the request accepted it"),
                    ("Vary" = String, description = "`accept-encoding`"))),
        (status = 400, description = "Last-Event-ID is not a non-negative integer", body = ErrorBody),
        (status = 503, description = "The store is unavailable or too many streams are open", body = ErrorBody),
    )
)]
pub(in crate::api) async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let resume = last_event_id(&headers)?;
    let permit = stream_permit(&state)?;
    let mut rx = state.tailer.tx.subscribe();
    // Subscribed first, then read the bounds: every later event reaches us live or by gap replay.
    let (pruned_through, live_from) = state.store.events_bounds().await?;
    let store = state.store.clone();
    let passed = state.tailer.last.clone();
    let shutdown = state.shutdown.clone();
    let (mut encoding, opening) = Encoding::negotiate(&headers, &state.tailer);
    let content_encoding = encoding.content_encoding();
    let stream = async_stream::stream! {
        let _permit = permit;
        if let Some(opening) = opening {
            yield Ok::<Bytes, Infallible>(opening);
        }
        let mut keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        let mut wrote = false;
        let mut cursor = match resume {
            None => live_from,
            Some(n) => {
                if n < pruned_through {
                    wrote = true;
                    yield Ok(encoding.own(SseEvent {
                        id: None,
                        event: "resync".into(),
                        data: json!({"lastEventId": n, "oldestRetained": pruned_through + 1}).to_string(),
                    }.bytes()));
                }
                n
            }
        };
        let mut replay = resume.is_some();
        let mut closing = false;
        loop {
            if replay {
                match store.events_after(cursor, REPLAY_PAGE).await {
                    Ok(batch) => {
                        let full = batch.len() == REPLAY_PAGE;
                        if let Some(b) = batch_of(cursor, &batch) {
                            cursor = b.last();
                            wrote = true;
                            yield Ok(encoding.own(b.wire));
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
            let first = tokio::select! {
                _ = shutdown.cancelled() => { closing = true; break }
                _ = keep_alive.tick() => None,
                r = rx.recv() => Some(r),
            };
            let Some(first) = first else {
                // Idle while the tailer has passed our cursor: something between was never
                // handed to us (a replay that read less than the tailer had passed, and no
                // batch since to show the gap): read it from the store.
                if passed.load(std::sync::atomic::Ordering::Acquire) > cursor {
                    replay = true;
                }
                if !std::mem::take(&mut wrote) {
                    yield Ok(encoding.keep_alive());
                }
                continue;
            };
            // This batch and whatever else is already waiting (a client that lagged
            // catches up in one write), up to a gap.
            let mut parts: Vec<Bytes> = Vec::new();
            // What is sent (compressed or not) and how much event text it carries (the
            // coalescing limit is on the latter, so gzip does not merge ten times more).
            let (mut size, mut plain) = (0, 0);
            let mut next = Some(first.map_err(Missing::from));
            let mut closed = false;
            while let Some(item) = next.take() {
                match item {
                    // Already sent (a replay went past it).
                    Ok(b) if b.last() <= cursor => {}
                    // The whole batch: the bytes every client shares.
                    Ok(b) if b.prev == cursor => {
                        cursor = b.last();
                        plain += b.wire.len();
                        let part = encoding.batch(&b);
                        size += part.len();
                        parts.push(part);
                    }
                    Ok(b) => match b.after(cursor) {
                        Some(part) => {
                            cursor = b.last();
                            plain += part.len();
                            let part = encoding.own(part);
                            size += part.len();
                            parts.push(part);
                        }
                        // Something between our cursor and it (ids the tailer passed
                        // while idle, or a replay that stopped short): fill it from the store.
                        None => { replay = true; break; }
                    },
                    Err(Lagged) => { replay = true; break; }
                    Err(Closed) => { closed = true; break; }
                }
                if plain < COALESCE_BYTES {
                    next = match rx.try_recv() {
                        Ok(b) => Some(Ok(b)),
                        Err(TryRecvError::Empty) => None,
                        Err(TryRecvError::Lagged(_)) => Some(Err(Lagged)),
                        Err(TryRecvError::Closed) => Some(Err(Closed)),
                    };
                }
            }
            match parts.len() {
                0 => {}
                1 => { wrote = true; yield Ok(parts.pop().expect("one part")); }
                _ => {
                    let mut all = Vec::with_capacity(size);
                    for p in &parts {
                        all.extend_from_slice(p);
                    }
                    wrote = true;
                    yield Ok(Bytes::from(all));
                }
            }
            if closed {
                break;
            }
        }
        // At shutdown (after the scheduler drained) the stream first takes every event
        // stored by then, whatever its channel still held or the tailer had not read: every
        // client of this node ends at the same event, not wherever its last wake-up fell.
        if closing {
            // Read whole before a byte is encoded: a catch-up cut short by the deadline
            // leaves the gzip stream as it was.
            let catch_up = async {
                let (mut after, mut batches) = (cursor, Vec::new());
                loop {
                    let page = store.events_after(after, REPLAY_PAGE).await?;
                    let full = page.len() == REPLAY_PAGE;
                    if let Some(b) = batch_of(after, &page) {
                        after = b.last();
                        batches.push(b);
                    }
                    if !full {
                        return Ok::<_, crate::store::StoreError>(batches);
                    }
                }
            };
            match tokio::time::timeout(CLOSING_CATCH_UP, catch_up).await {
                Ok(Ok(batches)) => {
                    for b in batches {
                        yield Ok(encoding.own(b.wire));
                    }
                }
                Ok(Err(e)) => tracing::warn!("event catch-up at shutdown failed: {e}"),
                Err(_) => tracing::warn!("event catch-up at shutdown timed out"),
            }
        }
        // The server ends the stream (shutdown, or a store that failed): a gzip body
        // gets its trailer, so the client sees a whole stream, not a cut one.
        if let Some(end) = encoding.finish() {
            yield Ok(end);
        }
    };
    let mut response = sse(stream);
    let h = response.headers_mut();
    h.insert(
        header::VARY,
        header::HeaderValue::from_static("accept-encoding"),
    );
    if let Some(coding) = content_encoding {
        h.insert(
            header::CONTENT_ENCODING,
            header::HeaderValue::from_static(coding),
        );
    }
    Ok(response)
}

/// Why a client's next batch is not there.
pub(super) enum Missing {
    Lagged,
    Closed,
}
use Missing::{Closed, Lagged};

impl From<RecvError> for Missing {
    fn from(e: RecvError) -> Missing {
        match e {
            RecvError::Lagged(_) => Lagged,
            RecvError::Closed => Closed,
        }
    }
}
