//! Runs that wait for runs, above the backends: how a waiting run's jobs are held, and
//! the order of what a release writes. The decision itself is [`crate::model::release`].
//!
//! Invariant: a waiting run is released (queued or skipped) exactly once, in the
//! transaction that ends the last run it waits for — or in its own creation, when those
//! had all ended already — on whichever node that happens. Each backend serialises
//! the decision on the waiting run (PostgreSQL: its row locked `FOR UPDATE`, its needs
//! read in a later statement; SQLite: its one writer), and a run's end looks for
//! dependents only when `has_dependents` is set, which a dependent's creation writes on
//! each need's row under that row's lock. The race that would catch a double or lost
//! release: `tests/store_contract/after.rs`
//! (`two_needs_ending_at_once_on_two_handles_release_their_dependent_once`).
//!
//! A skipped run ends like any run (`run:completed`, its webhook's outbox row), and its
//! own dependents are released in the same transaction in turn.

use super::RunOptions;

/// `run_after` of a waiting run's held jobs: never due until the release sets it to now.
pub const WAITING_RUN_AFTER: i64 = i64::MAX;

/// When a new run's jobs are due and whether they start held: a waiting run's are held
/// until released; a delayed run's until its time.
pub fn job_due(options: &RunOptions, now: i64) -> (i64, bool) {
    if !options.after.is_empty() {
        return (WAITING_RUN_AFTER, true);
    }
    let run_after = options.not_before.map_or(now, |t| t.max(now));
    (run_after, super::claim_plan::held(run_after, now))
}
