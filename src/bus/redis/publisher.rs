//! What this node sends: the publisher (aborts and wake-ups, best effort, never queued
//! while the bus is down) and the bridge from this process's commits to `{prefix}:changes`.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::wire;
use super::{BusCounters, COALESCE, Outgoing, REPLY_TIMEOUT, Shared};

/// Sends this node's messages on a connection of its own. A multiplexed connection
/// does not come back by itself once Redis closed it, so a failed PUBLISH is tried
/// once more on a fresh connection before it counts as unsent; messages queued while
/// the bus went down are dropped when taken (never waited on one by one), and queued
/// wake-ups are merged into one.
pub(super) async fn publisher(shared: Arc<Shared>, mut outgoing: mpsc::Receiver<Outgoing>) {
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
pub(super) async fn bridge(shared: Arc<Shared>) {
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
