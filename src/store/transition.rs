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
//!   (`claims_respect_pipeline_and_global_caps_and_retry_delays`, and the unit tests below);
//! - a failure whose exit code the pipeline's [`RetryOn`] rule excludes is final at once,
//!   whatever attempts remain, while a timeout, a signal or another code still retries
//!   (`exit_codes_the_pipeline_does_not_retry_fail_at_once`).

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

pub use crate::model::RetryOn;

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
    /// Which failed exit codes are retried.
    pub retry_on: RetryOn,
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

/// The status and reason `outcome` leads to whatever the job's row holds: a completion
/// and an abort keep the attempt and requeue counts and end the job. A backend may then
/// write the end without reading the row first (the write's fence still applies); every
/// other outcome needs the row ([`decide`]).
pub fn decided_without_row(outcome: &Outcome) -> Option<(JobStatus, Reason)> {
    match outcome {
        Outcome::Completed => Some((JobStatus::Completed, Reason::ExitCode)),
        Outcome::Aborted => Some((JobStatus::Aborted, Reason::Aborted)),
        _ => None,
    }
}

/// How an execution that reported `outcome` (and, when it exited normally, `exit_code`)
/// at `now` moves its job on.
pub fn decide(row: &JobFence, outcome: &Outcome, exit_code: Option<i32>, now: i64) -> Transition {
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
        Outcome::Failed { reason, .. }
            if row.attempt < row.max_attempts
                && (*reason != Reason::ExitCode || row.retry_on.allows(exit_code)) =>
        {
            Transition {
                status: JobStatus::Queued,
                reason: Some(*reason),
                attempt: row.attempt + 1,
                orphan_requeues: row.orphan_requeues,
                run_after: now + backoff_ms(row.retry_backoff_ms, row.attempt + 1),
            }
        }
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
            retry_on: RetryOn::Any,
        }
    }

    #[test]
    fn what_is_decided_without_the_row_is_what_the_row_decides() {
        let mut row = fence(2, 3);
        row.abort_requested = true;
        row.orphan_requeues = 1;
        for outcome in [Outcome::Completed, Outcome::Aborted] {
            let (status, reason) = decided_without_row(&outcome).unwrap();
            let t = decide(&row, &outcome, Some(0), 500);
            assert_eq!((t.status, t.reason), (status, Some(reason)));
            assert_eq!((t.attempt, t.orphan_requeues, t.run_after), (2, 1, 500));
        }
        let failed = Outcome::Failed {
            reason: Reason::ExitCode,
            error: None,
        };
        assert_eq!(decided_without_row(&failed), None);
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
        let t = decide(&fence(1, 3), &failed, Some(1), 10_000);
        assert_eq!(
            (t.status, t.attempt, t.run_after),
            (JobStatus::Queued, 2, 11_000)
        );
        let t = decide(&fence(2, 3), &failed, Some(1), 10_000);
        assert_eq!(
            (t.status, t.attempt, t.run_after),
            (JobStatus::Queued, 3, 12_000)
        );
        let t = decide(&fence(3, 3), &failed, Some(1), 10_000);
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
        assert_eq!(decide(&row, &failed, Some(1), 0).status, JobStatus::Aborted);
        assert_eq!(
            decide(&row, &requeue, Some(1), 0).status,
            JobStatus::Aborted
        );
        assert_eq!(
            decide(&row, &Outcome::Completed, Some(1), 0).status,
            JobStatus::Completed
        );
    }

    #[test]
    fn exit_codes_the_rule_excludes_fail_at_once_and_codeless_failures_still_retry() {
        let failed = Outcome::Failed {
            reason: Reason::ExitCode,
            error: None,
        };
        let timeout = Outcome::Failed {
            reason: Reason::Timeout,
            error: None,
        };
        let mut row = fence(1, 3);
        row.retry_on = RetryOn::Except(vec![1]);
        assert_eq!(decide(&row, &failed, Some(1), 0).status, JobStatus::Failed);
        assert_eq!(decide(&row, &failed, Some(2), 0).status, JobStatus::Queued);
        assert_eq!(decide(&row, &timeout, None, 0).status, JobStatus::Queued);
        assert_eq!(decide(&row, &failed, None, 0).status, JobStatus::Queued);
        row.retry_on = RetryOn::Only(vec![137, 143]);
        assert_eq!(decide(&row, &failed, Some(1), 0).status, JobStatus::Failed);
        assert_eq!(
            decide(&row, &failed, Some(137), 0).status,
            JobStatus::Queued
        );
        assert_eq!(decide(&row, &timeout, None, 0).status, JobStatus::Queued);
        // Attempts still bound a retried code.
        assert_eq!(
            decide(&fence(3, 3), &failed, Some(137), 0).status,
            JobStatus::Failed
        );
    }

    #[test]
    fn the_retry_rule_survives_its_stored_form() {
        for rule in [
            RetryOn::Any,
            RetryOn::Only(vec![1, 2]),
            RetryOn::Except(vec![3]),
        ] {
            assert_eq!(RetryOn::from_column(rule.to_column().as_deref()), rule);
        }
    }

    #[test]
    fn requeues_keep_the_attempt_and_are_capped() {
        let requeue = Outcome::Requeue {
            reason: Reason::Orphaned,
        };
        let mut row = fence(2, 3);
        let t = decide(&row, &requeue, Some(1), 5);
        assert_eq!(
            (t.status, t.attempt, t.orphan_requeues),
            (JobStatus::Queued, 2, 1)
        );
        row.orphan_requeues = 1;
        assert_eq!(decide(&row, &requeue, Some(1), 5).status, JobStatus::Failed);
        row.orphan_requeues = 0;
        row.on_orphan = "fail".into();
        assert_eq!(decide(&row, &requeue, Some(1), 5).status, JobStatus::Failed);
    }
}
