//! The Redis bus: signals between replicas over pub/sub. Signals only — no key
//! is written and nothing of record passes through Redis; every handler reads
//! the store.
//!
//! Three tasks per bus, made once when it starts:
//! - **the dispatcher** owns the one subscription. It connects, SUBSCRIBEs both
//!   channels, and hands each arrival to the handlers; on any loss it backs off
//!   (100 ms doubling to 2 s, with jitter) and starts over. Reconnecting makes a
//!   new subscription, never a second dispatcher, so a message is dispatched once
//!   however often SUBSCRIBE was retried (the seeds' registered-once pitfall). It
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
//! Tests that catch a violation: `tests/bus.rs` (two subscribers receive, the
//! publisher drops its echo; one dispatch per message after five forced
//! resubscribes; malformed messages dropped; a plain `PUBLISH` aborts a run;
//! reconnection after Redis restarts) and `tests/replicas.rs` (three replicas).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::wire::{self, Channels, Message};
use super::{Bus, BusCounters, BusStatus, Signal, new_origin};
use crate::config::BusSettings;
use crate::store::{ChangeFeed, change};

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
        tokio::spawn(dispatcher(shared.clone()));
        tokio::spawn(publisher(shared.clone(), outgoing));
        tokio::spawn(bridge(shared.clone()));
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

/// The pause before attempt `n` (0-based) after a loss: doubling, capped, with ±25 % jitter.
fn backoff(n: u32) -> Duration {
    let base = BACKOFF_MIN
        .saturating_mul(1u32 << n.min(5))
        .min(BACKOFF_MAX);
    let jitter = (uuid::Uuid::new_v4().as_u128() % 500) as u32; // 0..500 ‰ of a half
    base.mul_f64(0.75 + f64::from(jitter) / 1000.0)
}

/// The one subscription of this process, for the bus's whole life.
async fn dispatcher(shared: Arc<Shared>) {
    let mut failures = 0u32;
    let mut last_warning = None;
    let mut ever_connected = false;
    loop {
        let mut subscribed_at = None;
        let outcome = subscription(
            &shared,
            &mut subscribed_at,
            &mut ever_connected,
            &mut last_warning,
        )
        .await;
        shared.set_connected(false);
        let Err(e) = outcome else { break };
        // A subscription that held for a while was a real recovery: the backoff starts
        // over. One that Redis drops at once (an output-buffer limit, a proxy) keeps
        // backing off, so a flapping server costs a reconnect every 2 s, not every 100 ms.
        if subscribed_at.is_some_and(|t: Instant| t.elapsed() >= STABLE) {
            failures = 0;
        }
        if failures == 0 {
            if ever_connected {
                tracing::warn!(url = %shared.url, "bus: lost Redis ({e}); reconnecting, store polls carry on meanwhile");
            } else {
                tracing::warn!(url = %shared.url, "bus: Redis unreachable ({e}); running degraded (store polls) until it answers");
            }
        } else {
            tracing::debug!("bus: reconnect attempt {failures} failed: {e}");
        }
        let pause = backoff(failures);
        failures = failures.saturating_add(1);
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// One connection's life: connect, subscribe, dispatch until it fails or the bus stops.
async fn subscription(
    shared: &Shared,
    subscribed_at: &mut Option<Instant>,
    ever_connected: &mut bool,
    last_warning: &mut Option<Instant>,
) -> Result<(), String> {
    let connect = async {
        let mut pubsub = shared.client.get_async_pubsub().await?;
        pubsub
            .subscribe(&[
                shared.channels.abort.as_str(),
                shared.channels.changes.as_str(),
            ])
            .await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    let pubsub = tokio::select! {
        _ = shared.stop.cancelled() => return Ok(()),
        r = tokio::time::timeout(CONNECT_TIMEOUT, connect) => r
            .map_err(|_| format!("no answer within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?,
    };
    let (mut sink, mut stream) = pubsub.split();
    if let Some(down_for) = shared.set_connected(true) {
        if *ever_connected {
            BusCounters::inc(&shared.counters.reconnects);
            tracing::info!(url = %shared.url, "bus: recovered after {:.1} s", down_for.as_secs_f64());
        } else {
            tracing::info!(url = %shared.url, prefix = %shared.prefix, origin = %shared.origin, "bus: Redis connected");
        }
    }
    *ever_connected = true;
    *subscribed_at = Some(Instant::now());
    // Catch-up, both ways: whatever was published while this node was not subscribed
    // is in the store, and so is what it committed meanwhile, which the others were
    // not told about.
    shared.feed.bump(change::ALL);
    shared.send(Outgoing::Changes(change::ALL));
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return Ok(()),
            msg = stream.next() => match msg {
                Some(m) => shared.dispatch(m.get_channel_name(), m.get_payload_bytes(), last_warning),
                None => return Err("connection closed".into()),
            },
            _ = ping.tick() => {
                match tokio::time::timeout(REPLY_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(format!("PING failed: {e}")),
                    Err(_) => return Err(format!("no PING answer within {REPLY_TIMEOUT:?}")),
                }
            }
        }
    }
}

/// Sends this node's messages on a connection of its own. A multiplexed connection
/// does not come back by itself once Redis closed it, so a failed PUBLISH is tried
/// once more on a fresh connection before it counts as unsent; messages queued while
/// the bus went down are dropped when taken (never waited on one by one), and queued
/// wake-ups are merged into one.
async fn publisher(shared: Arc<Shared>, mut outgoing: mpsc::Receiver<Outgoing>) {
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut warned = false;
    loop {
        let first = tokio::select! {
            _ = shared.stop.cancelled() => break,
            m = outgoing.recv() => match m { Some(m) => m, None => break },
        };
        let mut batch = vec![first];
        while let Ok(more) = outgoing.try_recv() {
            batch.push(more);
        }
        for msg in coalesce(batch) {
            if !shared.connected() {
                BusCounters::inc(&shared.counters.dropped_unsent);
                continue;
            }
            let (channel, payload) = match &msg {
                Outgoing::Abort(run_id) => (
                    &shared.channels.abort,
                    wire::encode_abort(run_id, &shared.origin),
                ),
                Outgoing::Changes(kinds) => (
                    &shared.channels.changes,
                    wire::encode_changes(*kinds, &shared.origin),
                ),
            };
            let mut why = String::new();
            let mut sent = false;
            for _attempt in 0..2 {
                match tokio::time::timeout(
                    REPLY_TIMEOUT,
                    publish_on(&shared, &mut conn, channel, &payload),
                )
                .await
                {
                    Ok(Ok(())) => {
                        sent = true;
                        break;
                    }
                    Ok(Err(e)) => why = e.to_string(),
                    Err(_) => why = format!("no answer within {REPLY_TIMEOUT:?}"),
                }
                conn = None;
            }
            if sent {
                BusCounters::inc(&shared.counters.published);
                warned = false;
            } else {
                BusCounters::inc(&shared.counters.dropped_unsent);
                if matches!(msg, Outgoing::Abort(_)) || !std::mem::replace(&mut warned, true) {
                    tracing::warn!(
                        "bus: publish on {channel} failed ({why}); other nodes see the store instead"
                    );
                }
            }
        }
    }
}

/// One PUBLISH, connecting first if there is no connection.
async fn publish_on(
    shared: &Shared,
    conn: &mut Option<redis::aio::MultiplexedConnection>,
    channel: &str,
    payload: &str,
) -> redis::RedisResult<()> {
    if conn.is_none() {
        *conn = Some(shared.client.get_multiplexed_async_connection().await?);
    }
    let c = conn.as_mut().expect("connected above");
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async::<i64>(c)
        .await
        .map(drop)
}

/// Aborts in order, and every wake-up of the batch as one message after them.
fn coalesce(batch: Vec<Outgoing>) -> Vec<Outgoing> {
    let mut kinds = 0u8;
    let mut out: Vec<Outgoing> = batch
        .into_iter()
        .filter_map(|m| match m {
            Outgoing::Changes(k) => {
                kinds |= k;
                None
            }
            abort => Some(abort),
        })
        .collect();
    if kinds != 0 {
        out.push(Outgoing::Changes(kinds));
    }
    out
}

/// Publishes this process's commits as wake-ups for the others, coalesced.
async fn bridge(shared: Arc<Shared>) {
    loop {
        let kinds = tokio::select! {
            _ = shared.stop.cancelled() => break,
            k = shared.feed.take_local() => k,
        };
        // While down, the others are polling the store; nothing to tell.
        if shared.connected() {
            shared.send(Outgoing::Changes(kinds));
        }
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            _ = tokio::time::sleep(COALESCE) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        for n in 0..10 {
            let b = backoff(n);
            let base = BACKOFF_MIN.saturating_mul(1 << n.min(5)).min(BACKOFF_MAX);
            assert!(
                b >= base.mul_f64(0.75) && b <= base.mul_f64(1.25),
                "{n}: {b:?}"
            );
        }
        assert!(backoff(20) <= BACKOFF_MAX.mul_f64(1.25));
    }
}
