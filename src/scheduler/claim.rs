//! The claim loop: while this node has free slots, claim queued jobs and start them.
//!
//! It wakes on the store's WORK feed (a trigger, a retry or requeue, a slot
//! freed anywhere on the store, another process's commit), on a local slot
//! freeing, when the earliest delayed retry falls due, and at worst every
//! [`POLL_BACKSTOP`] — never on a fixed scheduling tick. A node whose own jobs already
//! fill every cap it could claim under sends no claim at all ([`full_here`]): each
//! batch of triggers wakes the loop, and each such claim would find no room.
//! Test: `claim_ahead::a_node_whose_own_jobs_fill_the_cap_sends_no_claim_until_one_ends`.

use std::sync::Arc;
use std::time::Duration;

use super::{
    Inner, POLL_BACKSTOP, claim_params, claimable_needs, need_of, rescuer, resources, slot,
};
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
            let room = inner.resources.reserve(claimable_needs(&inner), free);
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
            let params = claim_params(&inner, room.max, room.allowed.as_deref());
            if full_here(&inner, &params) {
                // Nothing to ask the store: its answer would be empty whatever other
                // nodes run, until one of this node's own jobs ends, which wakes us (a
                // slot frees, or the end's commit moves the WORK feed).
                drop(room);
            } else {
                match claim_and_start(&inner, room, params).await {
                    None => continue, // took all it could: claim again, or wait for a slot
                    Some(until) => wait = wait.min(until),
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

/// Claims what `params` asks and starts each job on a slot of `room`; `None` when it got
/// all it asked (claim again at once), else how long to wait at most: until the earliest
/// delayed job falls due, or a little after a failed claim.
async fn claim_and_start(
    inner: &Arc<Inner>,
    mut room: resources::Reservation<'_>,
    params: crate::store::JobClaimParams,
) -> Option<Duration> {
    let (max, claimed_at) = (params.max, params.now);
    match inner.store.job_claim(params).await {
        Ok(out) => {
            let claimed = out.jobs.len();
            for claimed_job in out.jobs {
                let Ok(permit) = inner.slots.clone().try_acquire_owned() else {
                    tracing::error!("claimed more jobs than free slots; this is a bug");
                    break;
                };
                room.take(&claimed_job.id, need_of(inner, &claimed_job.pipeline));
                inner
                    .jobs
                    .spawn(slot::run(inner.clone(), claimed_job, permit));
            }
            drop(room);
            if claimed == max {
                return None;
            }
            let due = out
                .next_due
                .map(|due| Duration::from_millis((due - inner.store.clock_ms()).max(1) as u64));
            Some(due.unwrap_or(POLL_BACKSTOP))
        }
        Err(e) => {
            tracing::warn!("claim failed: {e}");
            if e.is_ambiguous() {
                rescuer::release_lost_claims(inner, &[claimed_at]).await;
            }
            Some(Duration::from_millis(500))
        }
    }
}

/// True when this node's own jobs already fill every cap a claim would have to fit
/// under: each pipeline it may claim is capped and runs its cap here, or the global cap
/// is met here. Caps count every node's jobs, so the store could give nothing; a claim
/// loop woken by each trigger (the WORK feed) would otherwise send a claim per batch of
/// triggers that finds no room.
fn full_here(inner: &Inner, p: &crate::store::JobClaimParams) -> bool {
    let every_pipeline_capped = !p.pipelines.is_empty() && p.pipelines.values().all(|c| *c > 0);
    if p.global_cap == 0 && !every_pipeline_capped {
        return false; // some pipeline has room whatever runs here: no need to count
    }
    let here = inner.registry.by_pipeline();
    let global = p.global_cap > 0 && here.values().sum::<u32>() as usize >= p.global_cap;
    let every_pipeline = every_pipeline_capped
        && p.pipelines
            .iter()
            .all(|(name, cap)| here.get(name).copied().unwrap_or(0) >= *cap);
    global || every_pipeline
}
