//! Server-Sent Events: the lifecycle event stream and per-job log streams.
//!
//! One [`EventTailer`] per process reads new events from the store when the
//! store's EVENTS feed changes and fans them out to SSE clients over a
//! broadcast channel. A client first subscribes, then
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
//! Test: `streams_and_connections::hundreds_of_sse_clients_each_get_every_event_once_in_order`;
//! figures: the benchmark's (h).
//!
//! **A gzip client shares the compression too** ([`gzip`]): a batch
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
//! five reads a second, not ten. Test: `streams_and_connections::a_log_stream_wakes_only_for_its_own_job`.
//!
//! **At shutdown a stream ends with what the drain stored.** The server stops
//! its streams only after the scheduler drained (running jobs finished, runs
//! finalised); each stream then reads the store once more — an event stream
//! everything after its cursor (within [`CLOSING_CATCH_UP`]), a log stream its
//! job's last lines and `end` — so every client of the node ends at the same
//! event, not wherever its last wake-up fell, and a gzip body still gets its
//! trailer. Test: `streams_and_connections::streams_end_at_shutdown_with_what_the_drain_stored`.
//!
//! The room: `tailer` (the one reader of new events), `events` (`GET /api/events`),
//! `logs` (a job's log stream and its plain-text download), `encoding` and `gzip`
//! (how a batch reaches identity and gzip clients); this file holds what they share —
//! the batch, the SSE wire format, `Last-Event-ID`, the stream limit and the response.

mod encoding;
mod events;
pub(super) mod gzip;
mod logs;
mod tailer;

use encoding::Encoding;
pub(in crate::api) use events::{__path_events, events};
pub(in crate::api) use logs::{__path_log_stream, __path_log_text, log_stream, log_text};
pub use tailer::EventTailer;
use tailer::batch_of;

use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;

use super::{ApiError, AppState};
use crate::store::StoredEvent;
use gzip::Segment;

pub(super) const REPLAY_PAGE: usize = 500;
/// Events the tailer reads at once: one pace's worth under a heavy stream of commits
/// (1,000 runs/s are 4,000 events/s, 1,000 per 250 ms), so each client gets one write
/// per pace and not one per page (every batch wakes every client).
pub(super) const TAILER_PAGE: usize = 2_000;
/// How long a stream may read the store for what it has not sent when the server stops.
pub(super) const CLOSING_CATCH_UP: Duration = Duration::from_secs(2);
pub(super) const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often a log stream looks by itself when its store needs no poll (a safety net
/// only: every change it must see wakes it).
pub(super) const LOG_SAFETY_POLL: Duration = Duration::from_secs(30);
/// A log stream reads the store at most this often (the first change after a quiet
/// spell is read at once).
pub const LOG_PACE: Duration = Duration::from_millis(200);
/// Batches the broadcast channel holds; a client further behind replays from the store.
/// (At most [`TAILER_PAGE`] events each: a lagging client pins at most this many.)
pub(super) const CHANNEL_BATCHES: usize = 64;
/// The tailer's pause after a broadcast, per listening client.
pub const PACE_PER_CLIENT: Duration = Duration::from_micros(250);
pub(super) const MIN_PACE: Duration = Duration::from_millis(2);
pub(super) const MAX_PACE: Duration = Duration::from_millis(250);
/// A client that drains a backlog sends at most about this much in one write.
pub(super) const COALESCE_BYTES: usize = 256 << 10;

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

/// Appends one SSE event (`id:`, `event:`, `data:` lines and the blank line). Data is
/// split at line breaks into several `data:` lines, as the format requires.
pub(super) fn write_event(buf: &mut Vec<u8>, id: Option<&str>, event: &str, data: &str) {
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

pub(super) fn write_stored(buf: &mut Vec<u8>, ev: &StoredEvent) {
    write_event(buf, Some(&ev.id.to_string()), &ev.name, &ev.data);
}

/// A keep-alive comment.
pub(super) const KEEP_ALIVE_COMMENT: &[u8] = b":\n\n";

pub(super) fn last_event_id(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
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

pub(super) fn stream_permit(
    state: &AppState,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
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
pub(super) fn sse<S: Stream<Item = Result<Bytes, Infallible>> + Send + 'static>(
    stream: S,
) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::encoding::GzipClient;
    use super::gzip::GzipStream;
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
