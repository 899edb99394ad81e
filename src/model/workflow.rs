//! Workflow runs: a graph of steps, each step one run `after` the runs of its needs.
//!
//! A workflow run creates every step's run at once, in one transaction; a step with
//! needs is a run created `after` its needs' runs with the step's `when` (so its
//! release is the rule of [`super::after`], made exactly once where the last need
//! ends). A workflow run ends when the last run it created ends: the transaction that
//! ends that run counts it off (`steps_left`) under the workflow run's row, and
//! [`settle`] decides the status there, exactly once. Tests:
//! `tests/store_contract/workflows.rs`.

use serde::{Deserialize, Serialize};

use super::{AfterWhen, RunStatus, WorkflowStatus};

/// One step of a workflow run as it was created (stored with the workflow run, so a
/// later config change does not rewrite it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStep {
    /// The step's name in the workflow.
    pub name: String,
    /// The pipeline its run runs.
    pub pipeline: String,
    /// The steps whose runs it waits for.
    pub needs: Vec<String>,
    /// When it goes once they ended.
    pub when: AfterWhen,
    /// Its run's id.
    pub run_id: String,
    /// The run was kept from the workflow run this one re-runs (it completed there and
    /// its results flow on); it is not this workflow run's to count.
    #[serde(default)]
    pub kept: bool,
}

/// Whether a step's run counts against its workflow run when it ends: a run that
/// failed or was aborted (on its own, not by the workflow's abort) fails the workflow
/// run; a skipped one does not by itself (a skip follows a need that failed, which
/// counts, or a `when` that ruled it out, which is as the workflow says).
pub fn step_is_bad(status: RunStatus) -> bool {
    matches!(status, RunStatus::Failed | RunStatus::Aborted)
}

/// The status of a workflow run whose last step run ended.
pub fn settle(abort_requested: bool, steps_bad: i64) -> WorkflowStatus {
    if abort_requested {
        WorkflowStatus::Aborted
    } else if steps_bad > 0 {
        WorkflowStatus::Failed
    } else {
        WorkflowStatus::Completed
    }
}

/// The status shown for a workflow run: a stored terminal status as it is; otherwise
/// `running` once one of its step runs has left `waiting`/`queued`, else `queued`.
pub fn shown(stored: WorkflowStatus, steps: impl IntoIterator<Item = RunStatus>) -> WorkflowStatus {
    if stored.is_terminal() {
        return stored;
    }
    let started = steps
        .into_iter()
        .any(|s| !matches!(s, RunStatus::Waiting | RunStatus::Queued));
    if started {
        WorkflowStatus::Running
    } else {
        WorkflowStatus::Queued
    }
}

/// Orders steps so each comes after all its needs (ties by name); `None` on a cycle.
pub fn topological(steps: &[(String, Vec<String>)]) -> Option<Vec<&str>> {
    let mut order: Vec<&str> = Vec::with_capacity(steps.len());
    while order.len() < steps.len() {
        let mut ready: Vec<&str> = steps
            .iter()
            .filter(|(name, needs)| {
                !order.contains(&name.as_str()) && needs.iter().all(|n| order.contains(&n.as_str()))
            })
            .map(|(name, _)| name.as_str())
            .collect();
        if ready.is_empty() {
            return None;
        }
        ready.sort_unstable();
        order.extend(ready);
    }
    Some(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settles_abort_over_failure_over_success() {
        assert_eq!(settle(true, 0), WorkflowStatus::Aborted);
        assert_eq!(settle(true, 2), WorkflowStatus::Aborted);
        assert_eq!(settle(false, 1), WorkflowStatus::Failed);
        assert_eq!(settle(false, 0), WorkflowStatus::Completed);
        assert!(step_is_bad(RunStatus::Failed) && step_is_bad(RunStatus::Aborted));
        assert!(!step_is_bad(RunStatus::Skipped) && !step_is_bad(RunStatus::Completed));
    }

    #[test]
    fn shows_running_once_a_step_left_the_queue() {
        use RunStatus::*;
        let q = WorkflowStatus::Queued;
        assert_eq!(shown(q, [Queued, Waiting]), WorkflowStatus::Queued);
        assert_eq!(shown(q, [Completed, Waiting]), WorkflowStatus::Running);
        assert_eq!(
            shown(WorkflowStatus::Failed, [Running]),
            WorkflowStatus::Failed
        );
    }

    #[test]
    fn orders_needs_first_and_finds_cycles() {
        let s = |n: &str, needs: &[&str]| {
            (n.to_string(), needs.iter().map(|x| x.to_string()).collect())
        };
        let steps = vec![
            s("report", &["test"]),
            s("test", &["build"]),
            s("build", &[]),
            s("lint", &[]),
        ];
        assert_eq!(
            topological(&steps).unwrap(),
            ["build", "lint", "test", "report"]
        );
        let cycle = vec![s("a", &["b"]), s("b", &["a"]), s("c", &[])];
        assert!(topological(&cycle).is_none());
    }
}
