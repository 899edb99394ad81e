//! Group commit of job ends: the ends that arrive while one transaction is in flight
//! share the next one.
//!
//! A finishing job queues its end and then either finds it answered or becomes a
//! writer (one of [`WRITERS`]): it takes every end queued so far (at most
//! [`MAX_BATCH`], one per job) and writes them in one transaction
//! ([`super::finish::finish_batch`]), with one claim that refills all their slots.
//! There is no timer: a lone end is written at once, and ends batch only when every
//! writer is busy and they would otherwise wait for the database anyway, so a batch
//! adds no latency. Each end is durable before its caller hears of it (the answer is
//! sent after COMMIT); a crash before COMMIT loses the batch's ends together, and each
//! caller's retry (or, after a node crash, the journal and the rescuer) resolves them.
//!
//! A batch that fails for a reason other than the database being out of reach is split:
//! each end is written alone, so one bad end never fails the others.

use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use tokio::sync::oneshot;

use super::finish::finish_batch;
use super::{PgStore, in_tx};
use crate::store::{
    ClaimedJob, FinishOutcome, JobClaimParams, JobFinishParams, StoreError, StoreResult,
};

/// Requests written in one transaction at most.
const MAX_BATCH: usize = 64;

/// Transactions writing ends at once, at most: one. Slots do not wait for their ends
/// (they claim ahead, `scheduler/slot.rs`), so what arrives while a transaction is in
/// flight waits for the next one and shares it. Measured with the `store` and
/// `throughput` benches on 2 cores: against two writers, one sends half the statements
/// and commits per job and drains faster (1,603 against 1,055 jobs/s from one process),
/// and under a global cap it stops two transactions of one process queueing on the cap's
/// lock (1,717 against 505 jobs/s).
const WRITERS: usize = 1;

/// Requests waiting for a transaction, and the right to run one: the ends of jobs here,
/// plain run creations in [`super::create_batch`].
pub(super) struct GroupCommit<P, A> {
    pending: Mutex<Vec<Waiting<P, A>>>,
    writers: tokio::sync::Semaphore,
}

/// Job ends waiting to share a transaction.
pub(super) type FinishQueue = GroupCommit<JobFinishParams, FinishOutcome>;

impl<P, A> GroupCommit<P, A> {
    /// A queue whose batches are written by at most `writers` transactions at once.
    pub(super) fn new(writers: usize) -> Self {
        GroupCommit {
            pending: Mutex::default(),
            writers: tokio::sync::Semaphore::new(writers),
        }
    }
}

impl Default for FinishQueue {
    fn default() -> Self {
        GroupCommit::new(WRITERS)
    }
}

struct Waiting<P, A> {
    p: P,
    answer: oneshot::Sender<StoreResult<A>>,
}

impl<P: Clone, A> GroupCommit<P, A> {
    /// Up to [`MAX_BATCH`] queued requests, oldest first, never two that `clash`.
    fn take(&self, clash: fn(&P, &P) -> bool) -> Vec<Waiting<P, A>> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch: Vec<Waiting<P, A>> = Vec::new();
        let mut rest = Vec::new();
        for w in pending.drain(..) {
            if batch.len() < MAX_BATCH && !batch.iter().any(|b| clash(&b.p, &w.p)) {
                batch.push(w);
            } else {
                rest.push(w);
            }
        }
        *pending = rest;
        batch
    }

    /// Queues `p` and waits for its answer, writing batches (`write`: one answer per
    /// request, in order) while it holds a writer's permit; see the module docs.
    pub(super) async fn submit<F, Fut>(
        &self,
        p: P,
        clash: fn(&P, &P) -> bool,
        write: F,
    ) -> StoreResult<A>
    where
        F: Fn(Vec<P>) -> Fut,
        Fut: std::future::Future<Output = Vec<StoreResult<A>>>,
    {
        let (send, mut answer) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Waiting { p, answer: send });
        loop {
            tokio::select! {
                biased;
                got = &mut answer => {
                    // A writer dropped mid-batch (its task was cancelled): whether that
                    // transaction committed is unknown.
                    return got.unwrap_or_else(|_| Err(StoreError::Ambiguous {
                        message: "the transaction writing this request was abandoned".into(),
                        source: None,
                    }));
                }
                _writer = self.writers.acquire() => {
                    let batch = self.take(clash);
                    if !batch.is_empty() {
                        let params: Vec<P> = batch.iter().map(|w| w.p.clone()).collect();
                        for (w, out) in batch.into_iter().zip(write(params).await) {
                            let _ = w.answer.send(out);
                        }
                    }
                }
            }
        }
    }
}

/// Writes `p` with whatever other ends are queued; see the module docs.
pub(super) async fn job_finish(s: &PgStore, p: JobFinishParams) -> StoreResult<FinishOutcome> {
    s.finishes
        .submit(
            p,
            |a, b| a.job_id == b.job_id,
            |batch| write_batch(s, batch),
        )
        .await
}

/// Writes `batch` (one end per job) in one transaction; one answer per end, in order.
/// A batch that fails for another reason than the database being out of reach is split,
/// so one end that cannot be written does not fail the others.
pub(super) async fn write_batch(
    s: &PgStore,
    batch: Vec<JobFinishParams>,
) -> Vec<StoreResult<FinishOutcome>> {
    let claim = combined_claim(&batch);
    // Set when a batch landed before its rows were read met a stale end: the retry
    // lands only what its read found held.
    let careful = AtomicBool::new(false);
    let written = in_tx!(s, "job_finish", tx => {
        let (mut outs, claimed) = finish_batch(tx, &batch, claim.as_ref(), &careful).await?;
        hand_out(&batch, &mut outs, claimed);
        outs
    });
    match written {
        Ok(outs) => outs.into_iter().map(Ok).collect(),
        Err(e) if batch.len() > 1 && !e.is_unavailable() && !e.is_ambiguous() => {
            tracing::debug!(
                "a batch of {} job ends failed, writing them one by one: {e}",
                batch.len()
            );
            let mut answers = Vec::with_capacity(batch.len());
            for p in batch {
                answers.extend(Box::pin(write_batch(s, vec![p])).await);
            }
            answers
        }
        Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
    }
}

/// One claim for every slot the batch frees: the newest caller's claim (its time is
/// the claim's, so a caller whose answer is lost releases exactly that claim) asking
/// for all of them.
fn combined_claim(batch: &[JobFinishParams]) -> Option<JobClaimParams> {
    let asks = batch.iter().filter_map(|p| p.claim_next.as_ref());
    let max: usize = asks.clone().map(|c| c.max).sum();
    let newest = asks.max_by_key(|c| c.now)?;
    Some(JobClaimParams {
        max,
        ..newest.clone()
    })
}

/// Gives each caller that asked for a claim its share of the claimed jobs, in order.
fn hand_out(batch: &[JobFinishParams], outs: &mut [FinishOutcome], jobs: Vec<ClaimedJob>) {
    let mut jobs = jobs.into_iter();
    for (p, out) in batch.iter().zip(outs.iter_mut()) {
        let Some(ask) = &p.claim_next else { continue };
        out.next.extend(jobs.by_ref().take(ask.max));
    }
}
