//! The claim loop: while this node has free slots, claim queued jobs and start them.
//!
//! It wakes on the store's WORK feed (a trigger, a retry or requeue, a slot
//! freed anywhere on the store, another process's commit), on a local slot
//! freeing, when the earliest delayed retry falls due, and at worst every
//! [`POLL_BACKSTOP`] — never on a fixed scheduling tick.

use std::sync::Arc;
use std::time::Duration;

use super::{Inner, POLL_BACKSTOP, claim_params, claimable_needs, need_of, rescuer, slot};
use crate::store::change;

pub(super) async fn claim_loop(inner: Arc<Inner>) {
    let mut work = inner.store.changes().subscribe(change::WORK);
    loop {
        if inner.stop_claiming.is_cancelled() {
            break;
        }
        work.borrow_and_update();
        let mut wait = POLL_BACKSTOP;
        let free = inner.slots.available_permits();
        // A node whose own lease is not trusted claims nothing (self-fencing), and past
        // a resource threshold nothing is claimed either; jobs wait in the queue.
        if free > 0 && !inner.lease.trusted() {
            wait = Duration::from_millis(100);
        } else if free > 0 && !inner.admission.check(&inner.settings.server) {
            wait = POLL_BACKSTOP;
        } else if free > 0 {
            // Room for what the jobs need of this node: a claim takes no more than fits.
            let mut room = inner.resources.reserve(claimable_needs(&inner), free);
            if room.max == 0 {
                drop(room);
                // Nothing fits until a job here ends (which frees a slot and wakes us).
                tokio::select! {
                    _ = inner.stop_claiming.cancelled() => break,
                    _ = inner.slot_freed.notified() => {}
                    _ = tokio::time::sleep(POLL_BACKSTOP) => {}
                }
                continue;
            }
            let max = room.max;
            let params = claim_params(&inner, max, room.allowed.as_deref());
            let claimed_at = params.now;
            match inner.store.job_claim(params).await {
                Ok(out) => {
                    let claimed = out.jobs.len();
                    for claimed_job in out.jobs {
                        let Ok(permit) = inner.slots.clone().try_acquire_owned() else {
                            tracing::error!("claimed more jobs than free slots; this is a bug");
                            break;
                        };
                        room.take(&claimed_job.id, need_of(&inner, &claimed_job.pipeline));
                        inner
                            .jobs
                            .spawn(slot::run(inner.clone(), claimed_job, permit));
                    }
                    drop(room);
                    if claimed == max {
                        continue; // took all it could: claim again, or wait for a slot
                    }
                    if let Some(due) = out.next_due {
                        let until =
                            Duration::from_millis((due - inner.store.clock_ms()).max(1) as u64);
                        wait = wait.min(until);
                    }
                }
                Err(e) => {
                    tracing::warn!("claim failed: {e}");
                    if e.is_ambiguous() {
                        rescuer::release_lost_claims(&inner, &[claimed_at]).await;
                    }
                    wait = Duration::from_millis(500);
                }
            }
        }
        tokio::select! {
            _ = inner.stop_claiming.cancelled() => break,
            _ = work.changed() => {}
            _ = inner.slot_freed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
