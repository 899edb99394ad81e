//! The dispatcher: this process's one subscription, for the bus's whole life — connect,
//! SUBSCRIBE, PING, dispatch, and on any loss back off and start over (never a second
//! dispatcher, so a message is dispatched once however often SUBSCRIBE was retried).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::{
    BACKOFF_MAX, BACKOFF_MIN, BusCounters, CONNECT_TIMEOUT, Outgoing, PING_EVERY, REPLY_TIMEOUT,
    STABLE, Shared,
};
use crate::store::change;

/// The pause before attempt `n` (0-based) after a loss: doubling, capped, with ±25 % jitter.
fn backoff(n: u32) -> Duration {
    let base = BACKOFF_MIN
        .saturating_mul(1u32 << n.min(5))
        .min(BACKOFF_MAX);
    let jitter = (uuid::Uuid::new_v4().as_u128() % 500) as u32; // 0..500 ‰ of a half
    base.mul_f64(0.75 + f64::from(jitter) / 1000.0)
}

/// The one subscription of this process, for the bus's whole life.
pub(super) async fn dispatcher(shared: Arc<Shared>) {
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
