//! The rules of a job's life, decided above the backend.
//!
//! A backend reads the job's fence row (locked, on PostgreSQL), hands it with
//! the reported [`Outcome`] to [`decide`], and records the [`Transition`] it
//! gets back with a write conditional on `(id, claim_seq, status='running')`.
//! No backend decides retries, requeues, aborts or backoff on its own, so the
//! two stores cannot drift apart (River keeps these rules above its drivers the
//! same way). Webhook retries use the same [`backoff_ms`].
//!
//! Invariants, and the tests that catch their violation (the store
//! conformance suite, `tests/store_contract.rs`, on both backends):
//! - an abort wins over a failure or a requeue (`abort_racing_a_natural_finish…`);
//! - a requeue keeps the attempt and is capped by `max_orphan_requeues`
//!   (`orphan_requeue_keeps_the_attempt_and_is_capped`);
//! - a failure retries while attempts remain, after a doubling delay
//!   (`claims_respect_pipeline_and_global_caps_and_retry_delays`, and the unit tests below).

use super::Outcome;
use crate::model::{JobKind, JobStatus, Reason};

/// The longest delay between two attempts (1 h).
pub const MAX_BACKOFF_MS: i64 = 3_600_000;

/// Exponential backoff before attempt `next` (2, 3, …): `base × 2^(next-2)`, capped at 1 h.
/// Jobs and webhook deliveries share it.
pub fn backoff_ms(base: i64, next: u32) -> i64 {
    base.saturating_mul(1i64 << (next.saturating_sub(2)).min(20))
        .min(MAX_BACKOFF_MS)
}

/// What a backend reads of a job before deciding how its execution ends.
#[derive(Debug, Clone)]
pub struct JobFence {
    /// Current status.
    pub status: String,
    /// Current claim.
    pub claim_seq: i64,
    /// Current attempt (1-based).
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Base of the retry backoff.
    pub retry_backoff_ms: i64,
    /// The run was aborted while this execution ran.
    pub abort_requested: bool,
    /// Requeues spent.
    pub orphan_requeues: u32,
    /// Requeues allowed.
    pub max_orphan_requeues: u32,
    /// `requeue` or `fail`.
    pub on_orphan: String,
    /// Its run.
    pub run_id: String,
    /// Its pipeline.
    pub pipeline: String,
    /// Its shard.
    pub shard_index: u32,
    /// Shard or finalizer.
    pub kind: JobKind,
}

impl JobFence {
    /// True when `claim_seq` is the current, running claim: only then may it write.
    pub fn is_held_by(&self, claim_seq: i64) -> bool {
        self.status == JobStatus::Running.as_str() && self.claim_seq == claim_seq
    }
}

/// The decided next state of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// New status.
    pub status: JobStatus,
    /// Why.
    pub reason: Option<Reason>,
    /// Attempt number after the transition.
    pub attempt: u32,
    /// Requeues spent after the transition.
    pub orphan_requeues: u32,
    /// When the job may be claimed again (epoch ms; `now` unless retried later).
    pub run_after: i64,
}

/// How an execution that reported `outcome` at `now` moves its job on.
pub fn decide(row: &JobFence, outcome: &Outcome, now: i64) -> Transition {
    let stay = |status, reason| Transition {
        status,
        reason,
        attempt: row.attempt,
        orphan_requeues: row.orphan_requeues,
        run_after: now,
    };
    match outcome {
        Outcome::Completed => stay(JobStatus::Completed, Some(Reason::ExitCode)),
        Outcome::Aborted => stay(JobStatus::Aborted, Some(Reason::Aborted)),
        _ if row.abort_requested => stay(JobStatus::Aborted, Some(Reason::Aborted)),
        Outcome::Failed { reason, .. } if row.attempt < row.max_attempts => Transition {
            status: JobStatus::Queued,
            reason: Some(*reason),
            attempt: row.attempt + 1,
            orphan_requeues: row.orphan_requeues,
            run_after: now + backoff_ms(row.retry_backoff_ms, row.attempt + 1),
        },
        Outcome::Failed { reason, .. } => stay(JobStatus::Failed, Some(*reason)),
        Outcome::Requeue { reason }
            if row.on_orphan == "requeue" && row.orphan_requeues < row.max_orphan_requeues =>
        {
            Transition {
                status: JobStatus::Queued,
                reason: Some(*reason),
                attempt: row.attempt,
                orphan_requeues: row.orphan_requeues + 1,
                run_after: now,
            }
        }
        Outcome::Requeue { reason } => stay(JobStatus::Failed, Some(*reason)),
        Outcome::Release { reason, .. } => stay(JobStatus::Queued, Some(*reason)),
    }
}

/// The error text an outcome carries into the job row.
pub fn outcome_error(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Failed { error, .. } | Outcome::Release { error, .. } => error.clone(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(attempt: u32, max_attempts: u32) -> JobFence {
        JobFence {
            status: "running".into(),
            claim_seq: 1,
            attempt,
            max_attempts,
            retry_backoff_ms: 1000,
            abort_requested: false,
            orphan_requeues: 0,
            max_orphan_requeues: 1,
            on_orphan: "requeue".into(),
            run_id: "r".into(),
            pipeline: "p".into(),
            shard_index: 0,
            kind: JobKind::Shard,
        }
    }

    #[test]
    fn backoff_doubles_from_the_second_attempt_and_is_capped() {
        assert_eq!(backoff_ms(1000, 2), 1000);
        assert_eq!(backoff_ms(1000, 3), 2000);
        assert_eq!(backoff_ms(1000, 4), 4000);
        assert_eq!(backoff_ms(1000, 40), MAX_BACKOFF_MS);
        assert_eq!(backoff_ms(i64::MAX, 2), MAX_BACKOFF_MS);
    }

    #[test]
    fn failures_retry_while_attempts_remain_then_fail() {
        let failed = Outcome::Failed {
            reason: Reason::ExitCode,
            error: None,
        };
        let t = decide(&fence(1, 3), &failed, 10_000);
        assert_eq!(
            (t.status, t.attempt, t.run_after),
            (JobStatus::Queued, 2, 11_000)
        );
        let t = decide(&fence(2, 3), &failed, 10_000);
        assert_eq!(
            (t.status, t.attempt, t.run_after),
            (JobStatus::Queued, 3, 12_000)
        );
        let t = decide(&fence(3, 3), &failed, 10_000);
        assert_eq!((t.status, t.attempt), (JobStatus::Failed, 3));
    }

    #[test]
    fn an_abort_wins_over_failure_and_requeue_but_not_over_completion() {
        let mut row = fence(1, 3);
        row.abort_requested = true;
        let failed = Outcome::Failed {
            reason: Reason::ExitCode,
            error: None,
        };
        let requeue = Outcome::Requeue {
            reason: Reason::Orphaned,
        };
        assert_eq!(decide(&row, &failed, 0).status, JobStatus::Aborted);
        assert_eq!(decide(&row, &requeue, 0).status, JobStatus::Aborted);
        assert_eq!(
            decide(&row, &Outcome::Completed, 0).status,
            JobStatus::Completed
        );
    }

    #[test]
    fn requeues_keep_the_attempt_and_are_capped() {
        let requeue = Outcome::Requeue {
            reason: Reason::Orphaned,
        };
        let mut row = fence(2, 3);
        let t = decide(&row, &requeue, 5);
        assert_eq!(
            (t.status, t.attempt, t.orphan_requeues),
            (JobStatus::Queued, 2, 1)
        );
        row.orphan_requeues = 1;
        assert_eq!(decide(&row, &requeue, 5).status, JobStatus::Failed);
        row.orphan_requeues = 0;
        row.on_orphan = "fail".into();
        assert_eq!(decide(&row, &requeue, 5).status, JobStatus::Failed);
    }
}
