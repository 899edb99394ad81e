//! How a run ends: the rules both backends apply inside the transaction that
//! lands a run's last shard or ends its finalizer.
//!
//! The flow each backend runs in SQL is the same:
//! 1. `shards_done = shards_done + 1 WHERE shards_done < shard_count` (the counter
//!    predicate: exactly one transaction lands the last shard);
//! 2. when it lands, [`shards_status`] over every shard, recorded on the run;
//! 3. a run with a finalizer queues `{runId}:finalize` ([`FINALIZER_MAX_ATTEMPTS`],
//!    at least [`FINALIZER_MIN_REQUEUES`]), otherwise it turns terminal;
//! 4. when the finalize job ends for good, [`status_after_finalizer`];
//! 5. turning terminal (`WHERE finished_at IS NULL`) emits `run:completed` and,
//!    with a callback URL, writes the outbox row in the same transaction.
//!
//! Tests that catch a violation (conformance suite, both backends):
//! `last_two_shards_finishing_together…` (one `run:completed`),
//! `a_finalizer_runs_once_after_every_shard_and_gates_the_run`,
//! `an_aborted_run_still_gets_its_finalizer_and_stays_aborted`,
//! `a_terminal_run_with_a_callback_has_exactly_one_outbox_row`.

use crate::model::{JobStatus, RunStatus};

/// A finalizer runs once to completion: a failure is not retried.
pub const FINALIZER_MAX_ATTEMPTS: u32 = 1;
/// A finalizer orphaned by a crash runs again at least once.
pub const FINALIZER_MIN_REQUEUES: u32 = 1;

/// The shards' outcome once every shard is terminal; an aborted run stays aborted.
pub fn shards_status(current: &str, shards: impl IntoIterator<Item = JobStatus>) -> RunStatus {
    let current: RunStatus = current.parse().unwrap_or(RunStatus::Running);
    RunStatus::from_final_jobs(current, shards)
}

/// The run's final status once its finalizer ended with `finalizer`: an abort wins, a
/// finalizer that did not complete fails the run (the quality gate), else the shards decide.
pub fn status_after_finalizer(
    current: &str,
    finalizer: JobStatus,
    shards_status: Option<&str>,
) -> RunStatus {
    if current == RunStatus::Aborted.as_str() {
        RunStatus::Aborted
    } else if finalizer != JobStatus::Completed {
        RunStatus::Failed
    } else {
        shards_status
            .and_then(|s| s.parse().ok())
            .unwrap_or(RunStatus::Completed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_finalizer_gates_the_run_and_an_abort_wins() {
        use JobStatus::*;
        assert_eq!(
            status_after_finalizer("running", Completed, Some("failed")),
            RunStatus::Failed
        );
        assert_eq!(
            status_after_finalizer("running", Completed, Some("completed")),
            RunStatus::Completed
        );
        assert_eq!(
            status_after_finalizer("running", Failed, Some("completed")),
            RunStatus::Failed
        );
        assert_eq!(
            status_after_finalizer("aborted", Completed, Some("completed")),
            RunStatus::Aborted
        );
        assert_eq!(shards_status("aborted", [Completed]), RunStatus::Aborted);
        assert_eq!(
            shards_status("running", [Completed, Aborted]),
            RunStatus::Aborted
        );
        assert_eq!(
            shards_status("running", [Aborted, Failed]),
            RunStatus::Failed
        );
    }
}
