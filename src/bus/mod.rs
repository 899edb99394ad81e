//! Fast signals between nodes. Never the source of truth: every signal here is
//! also durable in the store (an abort mark, a queued row), and nodes poll the
//! store as a backstop, so a lost message only delays, never loses, work.
//!
//! - [`LocalBus`]: one process, in memory (the default; a node alone, or replicas
//!   that rely on store polls).
//! - [`RedisBus`]: Redis pub/sub between replicas (`[bus] url`), carrying the
//!   documented abort channel and "something changed" wake-ups; see
//!   its module for the dispatcher, reconnection and degraded mode.
//!
//! Every bus stamps its messages with an origin made once, when the bus starts
//! (one bus per process, so once per process): 16 random bytes in hex. A node
//! drops messages carrying its own origin before any handler sees them.

mod local;
mod redis;
pub mod wire;

pub use local::LocalBus;
pub use redis::RedisBus;

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::broadcast;

/// A signal handed to this node's handlers (foreign messages only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// `{prefix}:run-abort`: abort the run (durable mark) and cancel its local jobs.
    RunAbort {
        /// The aborted run.
        run_id: String,
        /// The publisher's origin (`None` when it did not say).
        origin: Option<String>,
    },
}

/// A fresh origin: 16 random bytes as 32 hex digits.
pub fn new_origin() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: a v4 UUID's bits are the next best (never expected).
        bytes = uuid::Uuid::new_v4().into_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Counters of one bus (`/metrics`, `GET /api/workers`).
#[derive(Debug, Default)]
pub struct BusCounters {
    /// Messages handed to Redis.
    pub published: AtomicU64,
    /// Messages that arrived (including own echoes and malformed ones).
    pub received: AtomicU64,
    /// Arrivals from other origins handed to the handlers.
    pub dispatched: AtomicU64,
    /// Of those, `run-abort` messages.
    pub aborts_dispatched: AtomicU64,
    /// Arrivals dropped as malformed.
    pub dropped_malformed: AtomicU64,
    /// Arrivals dropped because they were this node's own.
    pub dropped_own: AtomicU64,
    /// Publishes dropped because the bus was down or Redis refused them.
    pub dropped_unsent: AtomicU64,
    /// Successful reconnections after a loss.
    pub reconnects: AtomicU64,
}

impl BusCounters {
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Adds one.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Which bus a node uses and how it is doing (`GET /api/workers`, the nodes page, `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BusStatus {
    /// `local` (in-process: this node only) or `redis`.
    pub kind: &'static str,
    /// Connected now (always true for the in-process bus). While false, signals are
    /// late, never lost: nodes poll the store.
    pub connected: bool,
    /// This process's origin id, stamped on everything it publishes.
    pub origin: String,
    /// The channel prefix (Redis only).
    pub prefix: Option<String>,
    /// When `connected` last changed (RFC 3339; Redis only).
    pub since: Option<String>,
    /// Reconnections after a loss.
    pub reconnects: u64,
    /// Messages published.
    pub published: u64,
    /// Messages that arrived, this node's own echoes included.
    pub received: u64,
    /// Arrivals from other origins handed to this node's handlers.
    pub dispatched: u64,
    /// Of those, `run-abort` messages (the rest are `changes` wake-ups).
    pub aborts_dispatched: u64,
    /// Messages lost to this node's handlers or to the others: malformed arrivals, and
    /// publishes made while down, refused by Redis or past a full queue (own echoes are
    /// expected and only in `droppedByReason`).
    pub dropped: u64,
    /// The drops by reason: `malformed`, `own_origin`, `unsent`.
    #[schema(value_type = std::collections::BTreeMap<String, u64>)]
    #[serde(serialize_with = "reasons")]
    pub dropped_by_reason: [(&'static str, u64); 3],
}

fn reasons<S: serde::Serializer>(r: &[(&'static str, u64); 3], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(r.len()))?;
    for (k, v) in r {
        m.serialize_entry(k, v)?;
    }
    m.end()
}

impl BusStatus {
    fn from_counters(
        kind: &'static str,
        connected: bool,
        origin: &str,
        c: &BusCounters,
    ) -> BusStatus {
        let by_reason = [
            ("malformed", BusCounters::get(&c.dropped_malformed)),
            ("own_origin", BusCounters::get(&c.dropped_own)),
            ("unsent", BusCounters::get(&c.dropped_unsent)),
        ];
        BusStatus {
            kind,
            connected,
            origin: origin.to_string(),
            prefix: None,
            since: None,
            reconnects: BusCounters::get(&c.reconnects),
            published: BusCounters::get(&c.published),
            received: BusCounters::get(&c.received),
            dispatched: BusCounters::get(&c.dispatched),
            aborts_dispatched: BusCounters::get(&c.aborts_dispatched),
            dropped: by_reason
                .iter()
                .filter(|(reason, _)| *reason != "own_origin")
                .map(|(_, n)| n)
                .sum(),
            dropped_by_reason: by_reason,
        }
    }
}

/// The signalling seam.
pub trait Bus: Send + Sync {
    /// This process's origin id.
    fn origin(&self) -> &str;
    /// Tells every other node that `run_id` was aborted. Best effort: failure is
    /// counted and logged, never returned.
    fn publish_abort(&self, run_id: &str);
    /// A receiver of every foreign signal that arrives after this call. Each
    /// handler holds its own receiver, so one failing handler stops no other.
    fn subscribe(&self) -> broadcast::Receiver<Signal>;
    /// Which bus this is and how it is doing.
    fn status(&self) -> BusStatus;
    /// Stops the bus's tasks (the last step of a node's shutdown).
    fn close(&self) {}
}
