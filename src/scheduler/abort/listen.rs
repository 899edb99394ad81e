//! How an abort from anywhere reaches this node's jobs.
//!
//! - The abort sweep reacts to the store's ABORT feed (this process's aborts;
//!   other processes' via `PRAGMA data_version` within ~50 ms on SQLite, via the
//!   bus's `changes` wake-up, and in any case within [`ABORT_POLL`]).
//! - The bus listener aborts runs named on the bus's abort channel (durable mark
//!   first) and cancels their local jobs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use super::CancelCause;
use crate::bus::Signal;
use crate::scheduler::Inner;
use crate::store::{AbortOutcome, StoreError, change};

/// How often running jobs are checked against the durable abort mark when nothing woke
/// the sweep: another replica's abort reaches this node within this (plus the kill),
/// whether or not a bus carried the signal.
const ABORT_POLL: std::time::Duration = std::time::Duration::from_secs(2);

pub(in crate::scheduler) async fn abort_sweep_loop(inner: Arc<Inner>) {
    let mut aborts = inner.store.changes().subscribe(change::ABORT);
    loop {
        tokio::select! {
            _ = inner.stop_services.cancelled() => break,
            changed = aborts.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(ABORT_POLL) => {}
        }
        if inner.registry.is_empty() {
            continue;
        }
        match inner.store.jobs_abort_requested(&inner.node.id).await {
            Ok(ids) => {
                for (id, claim_seq) in ids {
                    inner.registry.cancel(&id, claim_seq, CancelCause::Abort);
                }
            }
            Err(e) => tracing::warn!("abort sweep failed: {e}"),
        }
    }
}

/// Handles foreign `run-abort` messages: the durable mark first (idempotent: a
/// replica that published it has already written it; another service may not
/// have), then this node's shards of the run, through the same
/// `abort_all_shards_for_run` as the API route. The mark comes first so no shard
/// can end `aborted` under a run that is not, whatever published the message.
///
/// Anyone may publish, so the work is bounded: at most [`BUS_ABORTS_AT_ONCE`] run at
/// once, a run already being handled is not handled twice, and past that messages
/// are shed (counted, warned about at most every 10 s). A flood can then cost a few
/// store connections, never the heartbeats and job writes that keep this node alive;
/// a shed abort published by a replica still lands through its durable mark.
pub(in crate::scheduler) async fn bus_listener(inner: Arc<Inner>) {
    let mut rx = inner.bus.subscribe();
    let permits = Arc::new(tokio::sync::Semaphore::new(BUS_ABORTS_AT_ONCE));
    let in_flight: Arc<InFlight> = Arc::default();
    let throttle = Arc::new(Throttle::default());
    let mut shed = 0u64;
    loop {
        let signal = tokio::select! {
            _ = inner.stop_services.cancelled() => break,
            s = rx.recv() => s,
        };
        match signal {
            Ok(Signal::RunAbort { run_id, origin }) => {
                if !in_flight.lock().insert(run_id.clone()) {
                    continue;
                }
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    in_flight.lock().remove(&run_id);
                    shed += 1;
                    if throttle.ready() {
                        tracing::warn!(
                            shed,
                            "bus: more than {BUS_ABORTS_AT_ONCE} foreign aborts at once; shedding \
                             (a replica's abort still lands through its durable mark)"
                        );
                    }
                    continue;
                };
                // Apart, so a store that is slow or down holds up no other message.
                let (inner2, in_flight, throttle) =
                    (inner.clone(), in_flight.clone(), throttle.clone());
                inner.services.spawn(async move {
                    abort_from_bus(&inner2, &run_id, origin.as_deref(), &throttle).await;
                    crate::metrics::Metrics::add(&inner2.metrics.bus_aborts_handled, 1);
                    in_flight.lock().remove(&run_id);
                    drop(permit);
                });
            }
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    "bus listener lagged by {n} messages; aborts made by replicas land through their durable mark"
                )
            }
            Err(RecvError::Closed) => break,
        }
    }
}

/// Runs whose foreign abort is being handled now.
#[derive(Default)]
struct InFlight(std::sync::Mutex<std::collections::HashSet<String>>);

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Foreign aborts handled at once by one node.
const BUS_ABORTS_AT_ONCE: usize = 4;

/// At most one warning per [`Throttle::EVERY`] for one kind of untrusted input.
#[derive(Default)]
struct Throttle(std::sync::Mutex<Option<std::time::Instant>>);

impl Throttle {
    const EVERY: Duration = Duration::from_secs(10);

    fn ready(&self) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return false;
        }
        *last = Some(std::time::Instant::now());
        true
    }
}

/// Tries for this long to write a foreign abort's mark while the store is unavailable.
const BUS_ABORT_RETRY: Duration = Duration::from_secs(30);

async fn abort_from_bus(
    inner: &Arc<Inner>,
    run_id: &str,
    origin: Option<&str>,
    throttle: &Throttle,
) {
    let deadline = tokio::time::Instant::now() + BUS_ABORT_RETRY;
    let outcome = loop {
        // Who published it is not known here: the message carries the publishing process's
        // origin only (a replica that published it has marked the run itself already).
        let by = super::AbortedBy {
            actor: None,
            via: "bus".into(),
        }
        .json(&inner.node, origin);
        match inner
            .store
            .run_abort_by(run_id, inner.store.clock_ms(), Some(by))
            .await
        {
            Err(StoreError::Unavailable { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::select! {
                    _ = inner.stop_services.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                }
            }
            other => break other,
        }
    };
    match outcome {
        Ok(AbortOutcome::Aborted { aborted_jobs, .. }) => {
            let n = inner.registry.abort_all_shards_for_run(run_id);
            tracing::debug!(run = %run_id, origin, cancelled = n, aborted_jobs, "abort from the bus");
        }
        Ok(AbortOutcome::NotFound) => {
            if throttle.ready() {
                tracing::warn!(run = %run_id, origin, "bus: abort of an unknown run ignored (such warnings: at most one per 10 s)")
            }
        }
        Ok(AbortOutcome::Finished(status)) => {
            tracing::debug!(run = %run_id, %status, "bus: abort of a finished run ignored")
        }
        Err(e) => {
            if throttle.ready() {
                tracing::warn!(run = %run_id, origin, "bus: could not abort the run: {e}")
            }
        }
    }
}
