//! Server-Sent Events: the lifecycle event stream and per-job log streams.
//!
//! One [`EventTailer`] per process reads new events from the store when the
//! store's EVENTS feed changes and fans them out to SSE clients over a
//! broadcast channel (DESIGN decision 15). A client first subscribes, then
//! replays everything after its `Last-Event-ID` from the store, then forwards
//! live events. Event ids increase but may have gaps (PostgreSQL ids follow
//! transaction ids), so continuity is never judged by arithmetic on ids: each
//! broadcast batch carries the id the tailer sent before it, and a client
//! forwards it only when its own cursor is that id or one inside the batch;
//! otherwise it replays from the store. A client that falls behind the
//! channel replays too, and one whose id was pruned (below the store's
//! `pruned_through`) gets a `resync` event first.
//!
//! **Fan-out costs one serialisation per event, not one per client.** The
//! tailer turns each store read into one [`Batch`]: the SSE bytes of all its
//! events, written once, shared by every client (`Bytes` are reference
//! counted; a client whose cursor is inside a batch sends a slice of it). A
//! client woken for several batches (it lagged) drains them all and sends them
//! as one write. The tailer paces itself: after a broadcast it reads again no
//! sooner than [`PACE_PER_CLIENT`] × clients (2 ms to 250 ms), so under a
//! stream of commits each client gets at most one write per pace, and the
//! fan-out's CPU cost stays a bounded fraction of a core whatever the audience
//! (the first event after a quiet spell goes out at once; later ones wait at
//! most one pace). Past its bytes, a client's write costs the server about
//! 10 µs (the syscall, loopback TCP, the reader's wake-up, the task; measured:
//! ~16k writes to 1,000 gzip clients cost 0.1–0.2 s of server CPU), so the
//! pace per client *is* that budget: at 0.25 ms per client the fan-out's writes
//! take about 4 % of a core, however many listen (at most [`MAX_STREAMS`]).
//! Test: `streams::hundreds_of_sse_clients_each_get_every_event_once_in_order`;
//! figures: the benchmark's (h).
//!
//! **A gzip client shares the compression too** ([`super::sse_gzip`]): a batch
//! is deflated once — by the tailer, on a blocking thread, while any gzip
//! client listens — and every gzip client sends the same compressed bytes;
//! what is a client's own (a slice, a replay, a `resync`) is compressed for it
//! alone.
//!
//! **A log stream wakes for its own job only** (`ChangeFeed::subscribe_output`):
//! a flush of its job costs it one store read; its job's status change, a
//! job-less `OUTPUT` bump (another process) or the store's output poll costs a
//! status read too. It reads at most every [`LOG_PACE`] (a read takes every
//! flush since the last), so a viewer of a job that flushes every 100 ms costs
//! five reads a second, not ten. Test: `streams::a_log_stream_wakes_only_for_its_own_job`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio_util::sync::CancellationToken;

use super::runs::JobIdParam;
use super::sse_gzip::{GzipStream, Segment, accepts_gzip};
use super::{ApiError, AppState, ErrorBody};
use crate::model::JobStatus;
use crate::store::{JobWake, Store, StoredEvent, change};

const REPLAY_PAGE: usize = 500;
/// Events the tailer reads at once: one pace's worth under a heavy stream of commits
/// (1,000 runs/s are 4,000 events/s, 1,000 per 250 ms), so each client gets one write
/// per pace and not one per page (every batch wakes every client).
const TAILER_PAGE: usize = 2_000;
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often a log stream looks by itself when its store needs no poll (a safety net
/// only: every change it must see wakes it).
const LOG_SAFETY_POLL: Duration = Duration::from_secs(30);
/// A log stream reads the store at most this often (the first change after a quiet
/// spell is read at once).
pub const LOG_PACE: Duration = Duration::from_millis(200);
/// Batches the broadcast channel holds; a client further behind replays from the store.
/// (At most [`TAILER_PAGE`] events each: a lagging client pins at most this many.)
const CHANNEL_BATCHES: usize = 64;
/// The tailer's pause after a broadcast, per listening client.
pub const PACE_PER_CLIENT: Duration = Duration::from_micros(250);
const MIN_PACE: Duration = Duration::from_millis(2);
const MAX_PACE: Duration = Duration::from_millis(250);
/// A client that drains a backlog sends at most about this much in one write.
const COALESCE_BYTES: usize = 256 << 10;

/// One store read's events, serialised once for every client.
pub struct Batch {
    /// The id the tailer sent before the first event.
    prev: i64,
    /// Each event's id, increasing.
    ids: Vec<i64>,
    /// Where each event starts in `wire`.
    starts: Vec<usize>,
    /// The SSE text of every event, in order.
    wire: Bytes,
    /// `wire` deflated: made by the tailer before the broadcast while a gzip client
    /// listens, else by the first gzip client that sends the whole batch.
    gzip: OnceLock<Segment>,
}

impl Batch {
    fn last(&self) -> i64 {
        self.ids.last().copied().unwrap_or(self.prev)
    }

    /// What a client whose cursor is `cursor` must send: the whole batch when the cursor
    /// is the id before it, the rest after the cursor's event when it is inside, `None`
    /// when the cursor is neither (a gap: replay from the store).
    fn after(&self, cursor: i64) -> Option<Bytes> {
        if cursor == self.prev {
            return Some(self.wire.clone());
        }
        let i = self.ids.binary_search(&cursor).ok()?;
        let from = self.starts.get(i + 1).copied().unwrap_or(self.wire.len());
        Some(self.wire.slice(from..))
    }

    /// The whole batch as a shared gzip segment.
    fn gzip(&self) -> &Segment {
        self.gzip.get_or_init(|| Segment::of(&self.wire))
    }
}

/// How one client's stream is written: as is, or as gzip whose batches are compressed
/// once for every gzip client (`sse_gzip`).
enum Encoding {
    Identity,
    Gzip {
        stream: GzipStream,
        /// Held for its `Drop`: the stream is counted while it lives.
        _counted: GzipClient,
    },
}

/// Counts a gzip client in [`EventTailer::gzip_clients`] while it lives.
struct GzipClient(Arc<AtomicUsize>);

impl Drop for GzipClient {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Encoding {
    /// gzip when the request accepts it, with the bytes that must open the body. Every
    /// `Accept-Encoding` line counts, as one list.
    fn negotiate(headers: &HeaderMap, tailer: &EventTailer) -> (Encoding, Option<Bytes>) {
        let accepted: Vec<&str> = headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if accepts_gzip(&accepted.join(",")) {
            tailer.gzip_clients.fetch_add(1, Ordering::AcqRel);
            let (stream, header) = GzipStream::start();
            let client = GzipClient(tailer.gzip_clients.clone());
            (
                Encoding::Gzip {
                    stream,
                    _counted: client,
                },
                Some(header),
            )
        } else {
            (Encoding::Identity, None)
        }
    }

    /// A whole broadcast batch: for gzip, the segment every gzip client shares.
    fn batch(&mut self, batch: &Batch) -> Bytes {
        match self {
            Encoding::Identity => batch.wire.clone(),
            Encoding::Gzip { stream, .. } => stream.send(batch.gzip()),
        }
    }

    /// Bytes only this client sends (a slice, a replay, a `resync`).
    fn own(&mut self, plain: Bytes) -> Bytes {
        match self {
            Encoding::Identity => plain,
            Encoding::Gzip { stream, .. } => stream.send(&Segment::of(&plain)),
        }
    }

    fn keep_alive(&mut self) -> Bytes {
        static GZIP: LazyLock<Segment> = LazyLock::new(|| Segment::of(KEEP_ALIVE_COMMENT));
        match self {
            Encoding::Identity => Bytes::from_static(KEEP_ALIVE_COMMENT),
            Encoding::Gzip { stream, .. } => stream.send(&GZIP),
        }
    }

    /// What ends the body when the server ends the stream.
    fn finish(self) -> Option<Bytes> {
        match self {
            Encoding::Identity => None,
            Encoding::Gzip { stream, .. } => Some(stream.finish()),
        }
    }

    fn content_encoding(&self) -> Option<&'static str> {
        match self {
            Encoding::Identity => None,
            Encoding::Gzip { .. } => Some("gzip"),
        }
    }
}

/// Fans stored events out to this process's SSE clients.
#[derive(Clone)]
pub struct EventTailer {
    tx: broadcast::Sender<Arc<Batch>>,
    /// Highest event id broadcast (or passed while nobody listened).
    last: Arc<AtomicI64>,
    /// Open streams that are gzip: while there are any, the tailer deflates each batch
    /// before it is broadcast (on a blocking thread), so no client waits for another's.
    gzip_clients: Arc<AtomicUsize>,
}

impl EventTailer {
    /// Starts tailing from the newest stored event.
    pub async fn start(store: Arc<dyn Store>, stop: CancellationToken) -> EventTailer {
        let (tx, _) = broadcast::channel(CHANNEL_BATCHES);
        let start = store.events_bounds().await.map(|(_, max)| max).unwrap_or(0);
        let tailer = EventTailer {
            tx,
            last: Arc::new(AtomicI64::new(start)),
            gzip_clients: Arc::new(AtomicUsize::new(0)),
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
                let clients = t.tx.receiver_count();
                if clients == 0 {
                    t.last.fetch_max(committed, Ordering::AcqRel);
                    continue;
                }
                loop {
                    let after = t.last.load(Ordering::Acquire);
                    let events = match store.events_after(after, TAILER_PAGE).await {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!("event tailer read failed: {e}");
                            break;
                        }
                    };
                    let full = events.len() == TAILER_PAGE;
                    if let Some(batch) = batch_of(after, &events) {
                        let batch = Arc::new(batch);
                        if t.gzip_clients.load(Ordering::Acquire) > 0 {
                            let b = batch.clone();
                            let _ = tokio::task::spawn_blocking(move || {
                                b.gzip();
                            })
                            .await;
                        }
                        t.last.fetch_max(batch.last(), Ordering::AcqRel);
                        let _ = t.tx.send(batch);
                    }
                    if !full {
                        break;
                    }
                }
                // Commits meanwhile mark the feed changed: the next round takes them all.
                let pace = (PACE_PER_CLIENT * clients as u32).clamp(MIN_PACE, MAX_PACE);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(pace) => {}
                }
            }
        });
        tailer
    }
}

/// The batch of the events after `after` (ids at or below it are dropped).
fn batch_of(after: i64, events: &[StoredEvent]) -> Option<Batch> {
    let fresh: Vec<&StoredEvent> = events.iter().filter(|e| e.id > after).collect();
    if fresh.is_empty() {
        return None;
    }
    let mut wire = Vec::with_capacity(fresh.iter().map(|e| e.data.len() + 48).sum());
    let mut ids = Vec::with_capacity(fresh.len());
    let mut starts = Vec::with_capacity(fresh.len());
    for ev in fresh {
        starts.push(wire.len());
        ids.push(ev.id);
        write_stored(&mut wire, ev);
    }
    Some(Batch {
        prev: after,
        ids,
        starts,
        wire: Bytes::from(wire),
        gzip: OnceLock::new(),
    })
}

/// Appends one SSE event (`id:`, `event:`, `data:` lines and the blank line). Data is
/// split at line breaks into several `data:` lines, as the format requires.
fn write_event(buf: &mut Vec<u8>, id: Option<&str>, event: &str, data: &str) {
    if let Some(id) = id {
        buf.extend_from_slice(b"id: ");
        buf.extend_from_slice(id.as_bytes());
        buf.push(b'\n');
    }
    buf.extend_from_slice(b"event: ");
    buf.extend_from_slice(event.as_bytes());
    buf.push(b'\n');
    let mut rest = data;
    loop {
        let cut = rest.find(['\n', '\r']);
        buf.extend_from_slice(b"data: ");
        buf.extend_from_slice(&rest.as_bytes()[..cut.unwrap_or(rest.len())]);
        buf.push(b'\n');
        match cut {
            None => break,
            Some(i) => {
                let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[i + skip..];
            }
        }
    }
    buf.push(b'\n');
}

fn write_stored(buf: &mut Vec<u8>, ev: &StoredEvent) {
    write_event(buf, Some(&ev.id.to_string()), &ev.name, &ev.data);
}

/// A keep-alive comment.
const KEEP_ALIVE_COMMENT: &[u8] = b":\n\n";

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

/// One Server-Sent Event as a client reads it. Every event the streams send is written
/// from these three fields, so its schema in `/api/openapi.json` is the wire shape
/// (keep-alive comments aside).
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

impl SseEvent {
    fn bytes(&self) -> Bytes {
        let mut buf = Vec::with_capacity(self.data.len() + 48);
        write_event(&mut buf, self.id.as_deref(), &self.event, &self.data);
        Bytes::from(buf)
    }
}

/// An SSE response over a stream of already-written event bytes.
fn sse<S: Stream<Item = Result<Bytes, Infallible>> + Send + 'static>(stream: S) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
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
pub(super) async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let resume = last_event_id(&headers)?;
    let permit = stream_permit(&state)?;
    let mut rx = state.tailer.tx.subscribe();
    // Subscribed first, then read the bounds: every later event reaches us live or by gap replay.
    let (pruned_through, live_from) = state.store.events_bounds().await?;
    let store = state.store.clone();
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
                _ = shutdown.cancelled() => break,
                _ = keep_alive.tick() => None,
                r = rx.recv() => Some(r),
            };
            let Some(first) = first else {
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
enum Missing {
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
) -> Result<Response, ApiError> {
    let job_id = super::runs::job_id(&state, path).await?;
    let Query(q) = query?;
    if state.store.job_get(&job_id).await?.is_none() {
        return Err(super::runs::job_not_found(&state, &job_id).await);
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
            // Paced: a busy job's viewer reads at most every LOG_PACE, each read taking
            // every flush since the last one (changes meanwhile are kept by `wakes`).
            let since = last_read.elapsed();
            if since < LOG_PACE {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(LOG_PACE - since) => {}
                }
            }
            // One deadline for the whole wait (keep-alive ticks must not push it on).
            let poll_at = tokio::time::Instant::now() + poll;
            look_at_status = loop {
                let woke = tokio::select! {
                    _ = shutdown.cancelled() => return,
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
        return Err(super::runs::job_not_found(&state, &job_id).await);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: i64, data: &str) -> StoredEvent {
        StoredEvent {
            id,
            name: "job:created".into(),
            data: data.into(),
        }
    }

    #[test]
    fn a_batch_is_written_once_and_sliced_after_any_cursor_inside_it() {
        let events = [ev(3, "{\"a\":1}"), ev(7, "{\"b\":2}"), ev(9, "{\"c\":3}")];
        let b = batch_of(2, &events).unwrap();
        let text = |bytes: Bytes| String::from_utf8(bytes.to_vec()).unwrap();
        let whole = "id: 3\nevent: job:created\ndata: {\"a\":1}\n\n\
                     id: 7\nevent: job:created\ndata: {\"b\":2}\n\n\
                     id: 9\nevent: job:created\ndata: {\"c\":3}\n\n";
        assert_eq!(text(b.after(2).unwrap()), whole);
        assert_eq!(
            text(b.after(7).unwrap()),
            "id: 9\nevent: job:created\ndata: {\"c\":3}\n\n"
        );
        assert_eq!(text(b.after(9).unwrap()), "");
        // A cursor that is neither the id before nor one inside: a gap, replay.
        assert!(b.after(1).is_none());
        assert!(b.after(5).is_none());
        assert_eq!(b.last(), 9);
        // Ids at or below the cursor are not in a batch.
        assert_eq!(batch_of(7, &events).unwrap().ids, vec![9]);
        assert!(batch_of(9, &events).is_none());
    }

    fn gzip_client(count: &Arc<AtomicUsize>) -> (Encoding, Vec<u8>) {
        count.fetch_add(1, Ordering::AcqRel);
        let (stream, header) = GzipStream::start();
        let client = GzipClient(count.clone());
        (
            Encoding::Gzip {
                stream,
                _counted: client,
            },
            header.to_vec(),
        )
    }

    fn gunzip(body: &[u8]) -> String {
        use std::io::Read;
        let mut out = String::new();
        flate2::read::GzDecoder::new(body)
            .read_to_string(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn gzip_clients_share_one_deflated_batch_and_a_slice_is_their_own() {
        let events = [ev(3, "{\"a\":1}"), ev(7, "{\"b\":2}"), ev(9, "{\"c\":3}")];
        let b = Arc::new(batch_of(2, &events).unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let (mut x, mut body_x) = gzip_client(&count);
        let (mut y, _) = gzip_client(&count);
        assert_eq!(count.load(Ordering::Acquire), 2);
        let from_x = x.batch(&b);
        let from_y = y.batch(&b);
        // The same bytes, not two compressions of them.
        assert_eq!(from_x.as_ptr(), from_y.as_ptr());
        body_x.extend_from_slice(&from_x);
        body_x.extend_from_slice(&x.finish().unwrap());
        assert_eq!(gunzip(&body_x), String::from_utf8(b.wire.to_vec()).unwrap());
        // A client whose cursor is inside the batch sends the rest, compressed for it.
        let (mut z, mut body_z) = gzip_client(&count);
        body_z.extend_from_slice(&z.own(b.after(7).unwrap()));
        body_z.extend_from_slice(&z.keep_alive());
        body_z.extend_from_slice(&z.finish().unwrap());
        assert_eq!(
            gunzip(&body_z),
            "id: 9\nevent: job:created\ndata: {\"c\":3}\n\n:\n\n"
        );
        // Finished and dropped streams are no longer counted; y still is.
        assert_eq!(count.load(Ordering::Acquire), 1);
        drop(y);
        assert_eq!(count.load(Ordering::Acquire), 0);
    }

    #[test]
    fn data_with_line_breaks_becomes_several_data_lines() {
        let mut buf = Vec::new();
        write_event(&mut buf, None, "end", "a\nb\r\nc\rd");
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "event: end\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }
}
