//! A slot's task: it runs the jobs it holds one after another, and writes each one's end
//! behind it while the next one already runs.
//!
//! Without claim-ahead a slot whose process has exited waits for its end's commit (which
//! claims its next job in the same transaction) before it can start anything: on
//! PostgreSQL that round trip is longer than a short job. So a slot holds up to
//! [`CLAIM_AHEAD`] jobs beyond the one it runs: each end claims what keeps the slot at
//! that depth, and at an exit the slot starts the job it holds at once while the end is
//! written; ends that are in flight together share a transaction
//! (`store/postgres/group_commit.rs`).
//!
//! What it keeps:
//! - **An end is durable before anyone hears of it**, and the job counts as running (for
//!   caps, the forgotten-job check and aborts) until then: [`Ended::record`] writes it,
//!   then unregisters the job.
//! - **A job held but not started is the slot's** (registered, so an abort reaches it) and
//!   starts only if nothing stopped it: an abort ends it `aborted`, a shutdown or a lease
//!   this node no longer trusts hands it back to the queue unstarted, spending nothing.
//! - **No job waits behind a long one**: when the running job outlives [`HOLD_BEHIND`], the
//!   jobs the slot holds (and those its ends in flight claim) go back to the queue
//!   unstarted, for any node; the slot holds nothing more until a job ends within it
//!   again. A job of higher priority triggered meanwhile may wait for the short jobs held
//!   before it: at most [`CLAIM_AHEAD`] per slot, each under [`HOLD_BEHIND`].
//! - **Claim-ahead never bends a cap**: with a global, pipeline or per-key cap, or with
//!   resources declared, a slot holds only what it runs (a held job would count against
//!   the cap while idle).
//!
//! Tests that catch a violation: `claim_ahead::a_slot_holding_a_job_behind_a_long_one_hands_it_back_unstarted`
//! and every conformance race (the store's fencing is unchanged). An abort that reaches a
//! held job before it starts has no test of its own: a job is held for under 50 ms.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;

use super::Inner;
use super::abort::{CancelCause, Handle};
use super::job::{Ended, run_one};
use crate::model::Reason;
use crate::store::{ClaimedJob, Outcome};

/// Jobs a slot holds beyond the one it runs, when no cap applies. Measured on PostgreSQL
/// (`throughput`, 2 slots of `/bin/true`): 657 runs/s without, 898 holding 2, 1,017
/// holding 3, 1,068–1,114 holding 4.
const CLAIM_AHEAD: usize = 4;

/// How long a held job may wait behind the running one before it is handed back.
const HOLD_BEHIND: Duration = Duration::from_millis(50);

/// Runs `job` and then, on the same slot, whatever its ends claim, until none is left.
pub(super) async fn run(inner: Arc<Inner>, job: ClaimedJob, permit: OwnedSemaphorePermit) {
    let ahead = claim_ahead(&inner);
    let mut held: VecDeque<(ClaimedJob, Handle)> = VecDeque::from([hold(&inner, job)]);
    // Ends being written, oldest first; each brings what it claimed for this slot.
    let mut ends: VecDeque<JoinHandle<Vec<ClaimedJob>>> = VecDeque::new();
    // Hand-backs being written (they claim nothing).
    let mut returns: Vec<JoinHandle<Vec<ClaimedJob>>> = Vec::new();
    // Held jobs only pay while jobs are short: after one outlives HOLD_BEHIND the slot
    // holds nothing more until one ends within it again (no claim-and-hand-back churn
    // on a pipeline of long jobs).
    let mut holding = ahead;
    loop {
        let Some((job, handle)) = held.pop_front() else {
            let Some(end) = ends.pop_front() else { break };
            held.extend(joined(end).await.into_iter().map(|j| hold(&inner, j)));
            continue;
        };
        let ended = match not_to_start(&inner, &handle) {
            Some(outcome) => Ended::without_process(job, outcome),
            None => {
                let run = run_one(&inner, job, handle);
                tokio::pin!(run);
                let behind = tokio::time::sleep(HOLD_BEHIND);
                tokio::pin!(behind);
                let mut watching = ahead > 0;
                let ended = loop {
                    tokio::select! {
                        ended = &mut run => break ended,
                        _ = &mut behind, if watching => {
                            watching = false;
                            let jobs = std::mem::take(&mut held);
                            let claiming = std::mem::take(&mut ends);
                            if !jobs.is_empty() || !claiming.is_empty() {
                                returns.push(tokio::spawn(hand_back(inner.clone(), jobs, claiming)));
                            }
                        }
                    }
                };
                // Still watching: it ended within HOLD_BEHIND.
                holding = if watching { ahead } else { 0 };
                ended
            }
        };
        let want = (1 + holding).saturating_sub(held.len() + ends.len());
        // With a held job to start next, or an earlier end to take the next job from,
        // the slot does not wait for this end first: it may linger to share a commit
        // with other ends. (A slot under a cap holds nothing and waits for each end.)
        let lingers = !held.is_empty() || !ends.is_empty();
        ends.push_back(tokio::spawn(ended.record(inner.clone(), want, lingers)));
    }
    for r in returns {
        joined(r).await;
    }
    drop(permit);
    inner.slot_freed.notify_one();
}

/// How many jobs a slot holds beyond the one it runs on this node.
fn claim_ahead(inner: &Inner) -> usize {
    let capped = inner.settings.server.max_workers_global > 0
        || inner.claimable.values().any(|cap| *cap > 0)
        || !inner.keyed.is_empty();
    if capped || inner.resources.active() {
        0
    } else {
        CLAIM_AHEAD
    }
}

/// Takes a claimed job into the slot: registered from now on, so an abort reaches it.
fn hold(inner: &Inner, job: ClaimedJob) -> (ClaimedJob, Handle) {
    let handle = Handle::new(
        &inner.stop_jobs,
        &job.run_id,
        job.shard_index,
        &job.pipeline,
        job.claim_seq,
    );
    inner.registry.register(&job.id, handle.clone());
    (job, handle)
}

/// Why a held job must not start now, as the outcome it ends with instead.
fn not_to_start(inner: &Inner, handle: &Handle) -> Option<Outcome> {
    let unstarted = |reason| Outcome::Release {
        reason,
        error: Some("handed back unstarted".into()),
    };
    match handle.cause() {
        Some(CancelCause::Abort) => return Some(Outcome::Aborted),
        Some(CancelCause::Shutdown) => return Some(unstarted(Reason::Shutdown)),
        Some(CancelCause::Lost) => return Some(unstarted(Reason::Orphaned)),
        None => {}
    }
    if inner.stop_claiming.is_cancelled() {
        Some(unstarted(Reason::Shutdown))
    } else if !inner.lease.trusted() {
        Some(unstarted(Reason::Orphaned))
    } else {
        None
    }
}

/// Gives back, unstarted, the jobs a slot held behind a long job and those its ends in
/// flight claim: back to the queue without spending an attempt or a requeue.
async fn hand_back(
    inner: Arc<Inner>,
    held: VecDeque<(ClaimedJob, Handle)>,
    ends: VecDeque<JoinHandle<Vec<ClaimedJob>>>,
) -> Vec<ClaimedJob> {
    let aborted = |handle: &Handle| handle.cause() == Some(CancelCause::Abort);
    let mut jobs: Vec<(ClaimedJob, bool)> = held
        .into_iter()
        .map(|(job, handle)| (job, aborted(&handle)))
        .collect();
    for end in ends {
        jobs.extend(joined(end).await.into_iter().map(|job| (job, false)));
    }
    for (job, aborted) in jobs {
        let outcome = match aborted {
            true => Outcome::Aborted,
            false => Outcome::Release {
                reason: Reason::Orphaned,
                error: Some("held behind a long job; handed back unstarted".into()),
            },
        };
        Ended::without_process(job, outcome)
            .record(inner.clone(), 0, false)
            .await;
    }
    Vec::new()
}

/// What a spawned end or hand-back returned (nothing if its task failed).
async fn joined(task: JoinHandle<Vec<ClaimedJob>>) -> Vec<ClaimedJob> {
    task.await.unwrap_or_else(|e| {
        tracing::error!("a job's end task failed (the forgotten-job check resolves its job): {e}");
        Vec::new()
    })
}
