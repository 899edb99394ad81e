//! How one execution ends: its exit and cancel cause become an [`Outcome`], its result
//! file is read, and the fenced finishing transaction records it (retried until it lands
//! or proves stale) and may hand the slot its next job.

use super::abort::CancelCause;
use super::job_output::Persist;
use super::rescuer;
use super::workdir::WorkDir;
use super::{Inner, claim_params, claimable_needs, need_of};
use crate::config::Pipeline;
use crate::executor::{Ending, Exit};
use crate::metrics::JobEnd;
use crate::model::{JobStatus, Reason};
use crate::store::{ClaimedJob, JobFinishParams, JobStartParams, Outcome};

pub(super) fn outcome_of(exit: &Exit, cause: Option<CancelCause>, pipeline: &Pipeline) -> Outcome {
    match exit.ending {
        Ending::Exited if exit.success() => Outcome::Completed,
        Ending::Exited => {
            let error = exit
                .signal
                .map(|s| format!("killed by signal {s}"))
                .or_else(|| exit.code.map(|c| format!("exited with code {c}")));
            Outcome::Failed {
                reason: Reason::ExitCode,
                error,
            }
        }
        Ending::TimedOut => Outcome::Failed {
            reason: Reason::Timeout,
            error: Some(format!(
                "timed out after {:?}",
                pipeline.timeout.unwrap_or_default()
            )),
        },
        Ending::Cancelled => match cause {
            Some(CancelCause::Shutdown) => Outcome::Requeue {
                reason: Reason::Shutdown,
            },
            Some(CancelCause::Abort) => Outcome::Aborted,
            // The execution was lost (its start could not be recorded, or the node was
            // declared dead): if the claim is somehow still ours, hand the job back like
            // an orphan; otherwise the fence refuses the write. Never an abort nobody asked for.
            Some(CancelCause::Lost) | None => Outcome::Requeue {
                reason: Reason::Orphaned,
            },
        },
    }
}

pub(super) fn failed(reason: Reason, message: &str) -> Outcome {
    Outcome::Failed {
        reason,
        error: Some(message.to_string()),
    }
}

/// How an applied finish is counted.
pub(super) fn ending_of(status: JobStatus, outcome: &Outcome) -> JobEnd {
    match (status, outcome) {
        (JobStatus::Completed, _) => JobEnd::Completed,
        (JobStatus::Aborted, _) => JobEnd::Aborted,
        (JobStatus::Queued, Outcome::Failed { .. }) => JobEnd::Retried,
        (JobStatus::Queued, _) => JobEnd::Requeued,
        _ => JobEnd::Failed,
    }
}

/// The job's result file, read on a blocking thread (the job controls that path).
pub(super) async fn read_result(inner: &Inner, work: &WorkDir) -> (Option<String>, Option<String>) {
    // Most jobs write no result: one `lstat` (never blocks, follows nothing) says so
    // without a trip to the blocking pool.
    if std::fs::symlink_metadata(work.result_path())
        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    {
        return (None, None);
    }
    let redactor = inner.redactor.clone();
    let path = work.reader();
    let read = tokio::task::spawn_blocking(move || {
        path.read_result(&|text: &str| match &redactor {
            Some(r) => r.mask_str(text),
            None => text.to_string(),
        })
    })
    .await;
    match read {
        Ok(Ok(r)) => (r, None),
        Ok(Err(e)) => (None, Some(e)),
        Err(e) => (None, Some(format!("result file unreadable: {e}"))),
    }
}

/// How an execution ended, as its end record says.
pub(super) struct End {
    pub(super) outcome: Outcome,
    pub(super) exit_code: Option<i32>,
    pub(super) totals: crate::executor::output::Totals,
    /// The start, when the execution ended before it was recorded on its own.
    pub(super) start: Option<JobStartParams>,
    pub(super) result: Option<String>,
}

/// Records the execution's end (retried until it lands or proves stale) and, in the same
/// transaction, claims up to `want` jobs for this slot; returns what it claimed.
/// `lingers`: the slot goes on without the answer (see [`JobFinishParams::lingers`]).
pub(super) async fn finish(
    inner: &Inner,
    job: &ClaimedJob,
    end: End,
    want: usize,
    lingers: bool,
) -> Option<Vec<ClaimedJob>> {
    let params = JobFinishParams {
        job_id: job.id.clone(),
        claim_seq: job.claim_seq,
        outcome: end.outcome,
        exit_code: end.exit_code,
        stdout_bytes: end.totals.stdout,
        stderr_bytes: end.totals.stderr,
        truncated: end.totals.truncated,
        now: 0,
        claim_next: None,
        start: end.start,
        result: end.result,
        lingers,
    };
    // The end is retried until it lands (see `Persist`): the slot stays taken meanwhile
    // (caps fail closed). Given up, the job stays `running` and is resolved like any
    // orphan (by the rescuer once the node is gone).
    let mut persist = Persist::new("the job's end");
    // Times of claims whose commit answer was lost: the jobs they took are released.
    let mut lost_claims = Vec::new();
    loop {
        // Each try refills the slot in the same transaction unless the node is stopping,
        // holds claims for resources, or does not trust its own lease — judged, and the
        // clock read, at that try: a claim made after an outage must carry the time it
        // was made (`claimed_at` is what the forgotten-job check trusts not to re-queue a
        // job whose task is just starting).
        // The process has ended: what it held of this node is free for the next job.
        inner.resources.release(&job.id);
        let mut room = inner.resources.reserve(claimable_needs(inner), want);
        let claim_next = (want > 0
            && !inner.stop_claiming.is_cancelled()
            && inner.lease.trusted()
            && room.max > 0
            && inner.admission.check(&inner.settings.server))
        .then(|| claim_params(inner, room.max, room.allowed.as_deref()));
        let claimed_at = claim_next.as_ref().map(|c| c.now);
        let attempt = JobFinishParams {
            now: inner.store.clock_ms(),
            claim_next,
            ..params.clone()
        };
        let answer = inner.store.job_finish(attempt).await;
        if let Err(e) = &answer
            && e.is_ambiguous()
        {
            lost_claims.extend(claimed_at);
        }
        if !lost_claims.is_empty() && !matches!(&answer, Err(e) if e.is_unavailable()) {
            rescuer::release_lost_claims(inner, &std::mem::take(&mut lost_claims)).await;
        }
        match answer {
            Ok(out) => {
                if !out.applied {
                    tracing::info!(job = %job.id, "finish not applied: the claim is no longer ours");
                }
                if let Some(status) = out.status {
                    inner
                        .metrics
                        .job_ended(&job.pipeline, ending_of(status, &params.outcome));
                }
                for next in &out.next {
                    room.take(&next.id, need_of(inner, &next.pipeline));
                }
                return Some(out.next);
            }
            Err(e) => {
                if !persist.again(inner, job, &e).await {
                    return None;
                }
            }
        }
    }
}
