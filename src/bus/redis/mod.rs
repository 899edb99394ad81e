//! The Redis bus: signals between replicas over pub/sub. Signals only — no key
//! is written and nothing of record passes through Redis; every handler reads
//! the store.
//!
//! Three tasks per bus, made once when it starts:
//! - **the dispatcher** owns the one subscription. It connects, SUBSCRIBEs both
//!   channels, and hands each arrival to the handlers; on any loss it backs off
//!   (100 ms doubling to 2 s, with jitter) and starts over. Reconnecting makes a
//!   new subscription, never a second dispatcher, so a message is dispatched once
//!   however often SUBSCRIBE was retried (a handler registered on every reconnect
//!   would run once per registration). It
//!   PINGs every second, so a dead server is noticed within about two even while
//!   nothing arrives, and after every reconnection it wakes every local waiter
//!   once (the catch-up: whatever was published while it was gone is read from the
//!   store).
//! - **the publisher** sends what this node publishes on its own connection,
//!   best effort: while the bus is down a publish is dropped and counted at once,
//!   never queued and never awaited by the caller.
//! - **the bridge** publishes this process's commits (`ChangeFeed::take_local`) on
//!   `{prefix}:changes`, at most one message per [`COALESCE`], so other replicas'
//!   claim loops, event tailers and log streams wake within milliseconds.
//!
//! Handlers: a `run-abort` arrival from another origin goes to every
//! [`Bus::subscribe`] receiver (the scheduler aborts the run durably, then cancels
//! its local shards); a `changes` arrival bumps the store's feed. Own echoes and
//! malformed messages are dropped and counted before any handler runs.
//!
//! Degraded mode is the absence of wake-ups, nothing more: the store's durable
//! abort mark, its change polls and the claim loop's backstop keep working, so a
//! lost message or a lost Redis delays, and never loses, anything runyard wrote.
//! (An abort published by another service while no node listens has no durable
//! twin: it is lost, which is why docs/replicas.md points such services at the HTTP
//! route when they need a guarantee.)
//!
//! Tests that catch a violation: `tests/redis_bus.rs` (two subscribers receive, the
//! publisher drops its echo; one dispatch per message after five forced
//! resubscribes; malformed messages dropped; a plain `PUBLISH` aborts a run;
//! reconnection after Redis restarts) and `tests/replicas.rs` (three replicas).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

mod publisher;
mod subscriber;

use super::wire::{self, Channels, Message};
use super::{Bus, BusCounters, BusStatus, Signal, new_origin};
use crate::config::BusSettings;
use crate::store::ChangeFeed;

/// Longest wait for a connection or a subscription.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the subscription is checked with a PING.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for a PING's answer or a PUBLISH.
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// First pause after a loss; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between attempts: a Redis that returns is used again within
/// this plus one connection.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// At most one `changes` message per this, per process.
pub const COALESCE: Duration = Duration::from_millis(20);
/// At most one warning per this for malformed arrivals.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// A subscription that lasted this long resets the reconnection backoff.
const STABLE: Duration = Duration::from_secs(5);

/// What this node sends.
enum Outgoing {
    Abort(String),
    Changes(u8),
}

/// Connected or not, and since when (epoch ms).
#[derive(Debug, Clone, Copy)]
struct Health {
    connected: bool,
    since_ms: i64,
}

struct Shared {
    origin: String,
    prefix: String,
    channels: Channels,
    client: redis::Client,
    url: String,
    handlers: broadcast::Sender<Signal>,
    outbox: mpsc::Sender<Outgoing>,
    health: watch::Sender<Health>,
    counters: BusCounters,
    feed: ChangeFeed,
    stop: CancellationToken,
}

/// The Redis bus of one process.
pub struct RedisBus {
    shared: Arc<Shared>,
}

/// A Redis URL that cannot be used at all (an unreachable server is not an error).
#[derive(Debug, thiserror::Error)]
#[error("invalid Redis URL {url}: {source}")]
pub struct BusUrlError {
    url: String,
    #[source]
    source: redis::RedisError,
}

impl RedisBus {
    /// What `runyard check` says of the Redis at `url`: one connection and a PING, within
    /// `timeout`, subscribing to nothing and publishing nothing.
    pub async fn probe(url: &str, timeout: Duration) -> Result<String, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let started = std::time::Instant::now();
        let ping = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        match tokio::time::timeout(timeout, ping).await {
            Ok(Ok(pong)) => Ok(format!("{pong} in {} ms", started.elapsed().as_millis())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
        }
    }

    /// Starts the bus's tasks. Returns at once: connecting happens in the
    /// background, and until it succeeds the bus is down (degraded mode, a warning).
    pub fn start(settings: &BusSettings, feed: ChangeFeed) -> Result<RedisBus, BusUrlError> {
        let url = crate::config::redact_url(&settings.url);
        let bad = |source| BusUrlError {
            url: url.clone(),
            source,
        };
        let info =
            redis::IntoConnectionInfo::into_connection_info(settings.url.as_str()).map_err(bad)?;
        let named = info
            .redis_settings()
            .clone()
            .set_lib_name("runyard", env!("CARGO_PKG_VERSION"));
        let client = redis::Client::open(info.set_redis_settings(named)).map_err(bad)?;
        let (outbox, outgoing) = mpsc::channel(1024);
        let shared = Arc::new(Shared {
            origin: new_origin(),
            prefix: settings.prefix.clone(),
            channels: Channels::new(&settings.prefix),
            client,
            url,
            handlers: broadcast::channel(1024).0,
            outbox,
            health: watch::channel(Health {
                connected: false,
                since_ms: crate::clock::now_ms(),
            })
            .0,
            counters: BusCounters::default(),
            feed,
            stop: CancellationToken::new(),
        });
        tokio::spawn(subscriber::dispatcher(shared.clone()));
        tokio::spawn(publisher::publisher(shared.clone(), outgoing));
        tokio::spawn(publisher::bridge(shared.clone()));
        Ok(RedisBus { shared })
    }

    /// Waits until the bus is connected, up to `timeout`; true when it is.
    pub async fn connected_within(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.health.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|h| h.connected))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The URL without its password, for messages.
    pub fn display(&self) -> &str {
        &self.shared.url
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

impl Bus for RedisBus {
    fn origin(&self) -> &str {
        &self.shared.origin
    }

    fn publish_abort(&self, run_id: &str) {
        self.shared.send(Outgoing::Abort(run_id.to_string()));
    }

    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.shared.handlers.subscribe()
    }

    fn status(&self) -> BusStatus {
        let h = *self.shared.health.borrow();
        let mut s = BusStatus::from_counters(
            "redis",
            h.connected,
            &self.shared.origin,
            &self.shared.counters,
        );
        s.prefix = Some(self.shared.prefix.clone());
        s.since = Some(crate::clock::rfc3339(h.since_ms));
        s
    }

    fn close(&self) {
        self.shared.stop.cancel();
    }
}

impl Shared {
    fn connected(&self) -> bool {
        self.health.borrow().connected
    }

    /// Queues a publish, or counts it dropped while the bus is down (never waits).
    fn send(&self, msg: Outgoing) {
        if !self.connected() || self.outbox.try_send(msg).is_err() {
            BusCounters::inc(&self.counters.dropped_unsent);
        }
    }

    /// Records a change of health; returns how long it was down when it comes back.
    fn set_connected(&self, connected: bool) -> Option<Duration> {
        let now = crate::clock::now_ms();
        let mut was_down_for = None;
        self.health.send_if_modified(|h| {
            if h.connected == connected {
                return false;
            }
            if connected {
                was_down_for = Some(Duration::from_millis((now - h.since_ms).max(0) as u64));
            }
            *h = Health {
                connected,
                since_ms: now,
            };
            true
        });
        was_down_for
    }

    /// Hands one arrival to the handlers, unless it is malformed or our own.
    fn dispatch(&self, channel: &str, payload: &[u8], last_warning: &mut Option<Instant>) {
        BusCounters::inc(&self.counters.received);
        let msg = match wire::decode(&self.channels, channel, payload) {
            Ok(m) => m,
            Err(why) => {
                BusCounters::inc(&self.counters.dropped_malformed);
                if last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    *last_warning = Some(Instant::now());
                    let shown: String =
                        String::from_utf8_lossy(payload).chars().take(120).collect();
                    tracing::warn!(channel, payload = %shown, "bus: dropped a malformed message: {why}");
                }
                return;
            }
        };
        if msg.origin() == Some(self.origin.as_str()) {
            BusCounters::inc(&self.counters.dropped_own);
            return;
        }
        BusCounters::inc(&self.counters.dispatched);
        match msg {
            Message::RunAbort { run_id, origin } => {
                BusCounters::inc(&self.counters.aborts_dispatched);
                // No receiver (a node shutting down) is fine: the durable mark stays.
                let _ = self.handlers.send(Signal::RunAbort { run_id, origin });
            }
            Message::Changes { kinds, .. } => self.feed.bump(kinds),
        }
    }
}
