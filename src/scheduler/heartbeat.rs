//! Liveness and the slow paths that back up fast signals.
//!
//! - The heartbeat loop beats every `heartbeat` with the jobs this node runs
//!   (a failed beat is tried again within a quarter second, see `lease.rs`);
//!   the store answers which of them must stop (aborted, or no longer this
//!   node's claim), and whether this node was declared dead meanwhile (then
//!   every local job is cancelled — its writes would be refused anyway — and
//!   the node registers again). The housekeeping loop, on the same period but
//!   apart so it never delays a beat, hands back jobs this node no longer runs
//!   and, now and then, runs the retention sweep.
//! - The rescuer runs every half heartbeat; the lease watchdog every fifth of
//!   one (self-fencing, see `lease.rs`).
//!
//! The abort sweep and the bus listener are in `abort/listen.rs`.

use std::sync::Arc;
use std::time::Duration;

use super::abort::CancelCause;
use super::{Inner, lease, rescuer};
use crate::store::NodeHeartbeatParams;

/// How often finished runs past `retention` are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Runs deleted per prune transaction, so a sweep never stalls claims.
const PRUNE_BATCH: usize = 100;

pub(super) async fn heartbeat_loop(inner: Arc<Inner>) {
    let every = inner.settings.server.heartbeat;
    let retry = lease::retry_every(every);
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = inner.stop_services.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        let started = tokio::time::Instant::now();
        // A failed beat is tried again within `retry`, not at the next beat: the lease
        // must be renewed as soon as the store is back, before the watchdog judges it.
        wait = if beat(&inner).await {
            every.saturating_sub(started.elapsed())
        } else {
            retry
        };
    }
}

/// The slow chores that used to follow each beat, on their own clock so a store that
/// hangs in one of them never delays a heartbeat: jobs this node no longer runs, and
/// now and then the retention sweep.
pub(super) async fn housekeeping_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.settings.server.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune: Option<tokio::time::Instant> = None;
    // Jobs the previous check found recorded here but not running (see
    // `resolve_forgotten`): handed back if this check finds them so again.
    let mut suspects = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = inner.stop_services.cancelled() => break,
            _ = tick.tick() => {}
        }
        match rescuer::resolve_forgotten(&inner, Some(&mut suspects)).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!("re-queued {n} job(s) this node no longer runs"),
            Err(e) => tracing::warn!("forgotten-job check failed: {e}"),
        }
        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(tokio::time::Instant::now());
            prune(&inner).await;
            adopt_keys(&inner).await;
        }
    }
}

/// Gives queued jobs of this node's keyed pipelines that have no key (queued by a node
/// whose config had no `concurrency_key` yet) the key `''`, so keyed claims take them.
pub(super) async fn adopt_keys(inner: &Inner) {
    for pipeline in inner.keyed.keys() {
        match inner.store.jobs_adopt_key(pipeline).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(%pipeline, "{n} queued job(s) without a concurrency key get the key \"\"")
            }
            Err(e) => tracing::warn!(%pipeline, "cannot give queued jobs a concurrency key: {e}"),
        }
    }
}

/// The orphan rescuer, on a clock of its own: every half heartbeat (with ±10 %
/// jitter, so replicas started together do not sweep in step). A dead node's jobs
/// are found at most half a beat after its lease ran out, not a whole beat: 35 s,
/// not 40 s, at the default 10 s heartbeat.
pub(super) async fn rescue_loop(inner: Arc<Inner>) {
    let every = inner.settings.server.heartbeat / 2;
    loop {
        let jitter = (uuid::Uuid::new_v4().as_u128() % 200) as f64 / 1000.0; // 0..0.2
        tokio::select! {
            _ = inner.stop_services.cancelled() => break,
            _ = tokio::time::sleep(every.mul_f64(0.9 + jitter)) => {}
        }
        if let Err(e) = rescuer::run_once(&inner).await {
            tracing::warn!("orphan rescue failed: {e}");
        }
    }
}

/// How long one heartbeat may take before it counts as failed (and is tried again on a
/// fresh round trip): a held connection must not stall the lease's renewal.
fn attempt_limit(heartbeat: Duration) -> Duration {
    heartbeat.max(Duration::from_secs(1))
}

/// One heartbeat; true when the store accepted it (or a re-registration).
async fn beat(inner: &Inner) -> bool {
    // The lease runs from *before* the round trip: the stored beat is no older.
    let started = std::time::Instant::now();
    let params = NodeHeartbeatParams {
        node_id: inner.node.id.clone(),
        running: inner.registry.snapshot(),
        now: inner.store.clock_ms(),
    };
    let limit = attempt_limit(inner.settings.server.heartbeat);
    let answer = match tokio::time::timeout(limit, inner.store.node_heartbeat(params)).await {
        Ok(answer) => answer,
        Err(_) => {
            inner.lease.failed();
            tracing::warn!(
                "heartbeat took longer than {:.1} s; trying again",
                limit.as_secs_f64()
            );
            return false;
        }
    };
    match answer {
        Ok(out) => {
            if out.registered && inner.lease.confirmed(started) {
                tracing::info!("a heartbeat was accepted again: claiming jobs");
            }
            for (job_id, claim_seq) in &out.cancel {
                tracing::info!(job = %job_id, "stopping a job that was aborted or is no longer ours");
                inner
                    .registry
                    .cancel(job_id, *claim_seq, CancelCause::Abort);
            }
            if out.registered {
                return true;
            }
            tracing::warn!(
                "this node was declared dead by a peer; stopping its jobs and registering again"
            );
            inner.registry.cancel_all(CancelCause::Lost);
            let node = crate::store::NodeRow {
                heartbeat_at: inner.store.clock_ms(),
                ..inner.node.clone()
            };
            match inner.store.node_register(node).await {
                Ok(()) => {
                    inner.lease.confirmed(started);
                    true
                }
                Err(e) => {
                    inner.lease.failed();
                    tracing::warn!("re-registration failed: {e}");
                    false
                }
            }
        }
        Err(e) => {
            inner.lease.failed();
            tracing::warn!("heartbeat failed: {e}");
            false
        }
    }
}

/// How often the lease is checked: a node frozen past its lease stops its jobs this
/// soon after it wakes, before its first round trip to the store.
fn watchdog_every(heartbeat: Duration) -> Duration {
    (heartbeat / 5).clamp(Duration::from_millis(10), Duration::from_millis(100))
}

/// Self-fencing (see `lease.rs`): when no heartbeat was accepted within the lease,
/// every local job is stopped (cause `Lost`: whatever it writes is fenced), and the
/// claim loop claims nothing until a heartbeat is accepted again.
pub(super) async fn lease_watchdog(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(watchdog_every(inner.settings.server.heartbeat));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = inner.stop_services.cancelled() => break,
            _ = tick.tick() => {}
        }
        if inner.lease.fence_if_expired() {
            let n = inner.registry.len();
            tracing::warn!(
                "no heartbeat accepted for {:.1} s (lease {:.1} s): stopping {n} job(s), which \
                 other nodes may be re-running, and claiming nothing until one is accepted",
                inner.lease.since_confirmed().as_secs_f64(),
                inner.lease.length().as_secs_f64()
            );
            crate::metrics::Metrics::add(&inner.metrics.self_fences, 1);
            inner.registry.cancel_all(CancelCause::Lost);
        }
    }
}

async fn prune(inner: &Inner) {
    let before = inner.store.clock_ms() - inner.settings.server.retention.as_millis() as i64;
    let (mut runs, mut events) = (0, 0);
    loop {
        match inner.store.runs_prune(before, PRUNE_BATCH).await {
            Ok(out) => {
                runs += out.runs;
                events += out.events;
                if !out.more {
                    break;
                }
                tokio::task::yield_now().await;
            }
            Err(e) => {
                tracing::warn!("retention sweep failed: {e}");
                break;
            }
        }
    }
    if runs + events > 0 {
        tracing::info!(
            runs,
            events,
            "pruned finished runs and events past retention"
        );
    }
}
