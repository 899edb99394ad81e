//! Runs that wait for runs: when a run created with `after` may go.
//!
//! A run created `after` other runs waits (`waiting`) until every one of them has
//! ended (its `finished_at` is set: shards and finalizer done). Then [`release`]
//! decides, from their final statuses and the run's [`AfterWhen`], whether it is
//! queued or skipped. The decision is the same on every backend; each backend makes it
//! in the transaction that ends the last of those runs (or creates the waiting run,
//! when they had all ended already), under a lock on the waiting run, so it is made
//! exactly once. Tests: `tests/store_contract/after.rs`.

use serde::{Deserialize, Serialize};

use super::RunStatus;

/// When a waiting run goes once every run it waits for has ended.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AfterWhen {
    /// Only if every one of them completed (the default).
    #[default]
    Success,
    /// Only if one of them did not complete (failed, aborted or skipped).
    Failure,
    /// Whatever they ended as.
    Always,
}

impl AfterWhen {
    /// The name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            AfterWhen::Success => "success",
            AfterWhen::Failure => "failure",
            AfterWhen::Always => "always",
        }
    }

    /// Parses a stored or configured name.
    pub fn from_name(name: &str) -> Option<AfterWhen> {
        match name {
            "success" => Some(AfterWhen::Success),
            "failure" => Some(AfterWhen::Failure),
            "always" => Some(AfterWhen::Always),
            _ => None,
        }
    }
}

/// What happens to a waiting run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// A run it waits for has not ended yet.
    Wait,
    /// Queue its jobs.
    Queue,
    /// End it `skipped`; its jobs end `aborted` with reason `skipped`.
    Skip,
}

/// The decision for a waiting run from the runs it waits for: each one's status and
/// whether it has ended (`finished_at` set; an aborted run has not ended until its
/// last shard and finalizer have).
pub fn release(when: AfterWhen, needs: impl IntoIterator<Item = (RunStatus, bool)>) -> Release {
    let mut all_completed = true;
    for (status, ended) in needs {
        if !ended {
            return Release::Wait;
        }
        all_completed &= status == RunStatus::Completed;
    }
    let go = match when {
        AfterWhen::Success => all_completed,
        AfterWhen::Failure => !all_completed,
        AfterWhen::Always => true,
    };
    if go { Release::Queue } else { Release::Skip }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RunStatus::*;

    #[test]
    fn a_run_waits_for_every_need_then_goes_as_its_rule_says() {
        let done = |s| (s, true);
        assert_eq!(
            release(AfterWhen::Always, [done(Completed), (Running, false)]),
            Release::Wait
        );
        let ok = [done(Completed), done(Completed)];
        let bad = [done(Completed), done(Failed)];
        assert_eq!(release(AfterWhen::Success, ok), Release::Queue);
        assert_eq!(release(AfterWhen::Success, bad), Release::Skip);
        assert_eq!(release(AfterWhen::Failure, ok), Release::Skip);
        assert_eq!(release(AfterWhen::Failure, bad), Release::Queue);
        assert_eq!(release(AfterWhen::Always, bad), Release::Queue);
        assert_eq!(
            release(AfterWhen::Success, [done(Skipped)]),
            Release::Skip,
            "a skipped need is not a success"
        );
        for name in ["success", "failure", "always"] {
            assert_eq!(AfterWhen::from_name(name).unwrap().as_str(), name);
        }
    }
}
