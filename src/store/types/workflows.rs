//! Workflow runs: what creating one takes, what reading one gives, what aborting one
//! answers.

use std::collections::BTreeMap;

use crate::model::{RunStatus, WorkflowStatus, WorkflowStep};

use super::RunCreateParams;

/// `workflow_create` parameters: the workflow run and every step's new run.
#[derive(Debug, Clone)]
pub struct WorkflowCreateParams {
    /// The new workflow run's id (UUIDv7 string).
    pub workflow_run_id: String,
    /// The workflow's name.
    pub workflow: String,
    /// Its validated parameters.
    pub params: BTreeMap<String, String>,
    /// Every step, with its run's id (kept ones name the earlier run).
    pub steps: Vec<WorkflowStep>,
    /// The runs to create, needs first: each step's that is not kept, with
    /// `options.workflow` set and `options.after` naming its needs' runs.
    pub runs: Vec<RunCreateParams>,
    /// Client-chosen key making the trigger idempotent per workflow.
    pub idempotency_key: Option<String>,
    /// `api`, `cli` or `dashboard`.
    pub triggered_by: String,
    /// Who triggered (token label), when known.
    pub actor: Option<String>,
    /// Completion webhook target (already checked).
    pub callback_url: Option<String>,
    /// The workflow run this one re-runs.
    pub rerun_of: Option<String>,
    /// Creation time (epoch ms).
    pub now: i64,
}

/// `workflow_create` result.
#[derive(Debug, Clone)]
pub struct WorkflowCreated {
    /// The workflow run's id (an earlier one's when the idempotency key matched).
    pub workflow_run_id: String,
    /// Its steps with their runs' ids.
    pub steps: Vec<WorkflowStep>,
    /// Creation time (epoch ms).
    pub created_at: i64,
    /// The idempotency key matched an earlier workflow run: nothing was created.
    pub existing: bool,
    /// That earlier run's parameters (a replay must carry the same).
    pub existing_params: Option<BTreeMap<String, String>>,
}

/// A step's run as a workflow run's view shows it.
#[derive(Debug, Clone)]
pub struct StepRunState {
    /// Run id.
    pub run_id: String,
    /// Its status.
    pub status: RunStatus,
    /// Shards terminal for good, of how many.
    pub shards_done: u32,
    /// Its shard count.
    pub shard_count: u32,
    /// Epoch ms.
    pub started_at: Option<i64>,
    /// Epoch ms.
    pub finished_at: Option<i64>,
}

/// One workflow run as stored, with its steps' runs.
#[derive(Debug, Clone)]
pub struct WorkflowRunRecord {
    /// Its id.
    pub id: String,
    /// The workflow's name.
    pub workflow: String,
    /// The stored status (`queued` until it ends; see [`crate::model::shown`]).
    pub status: WorkflowStatus,
    /// Its parameters.
    pub params: BTreeMap<String, String>,
    /// Its steps as created.
    pub steps: Vec<WorkflowStep>,
    /// The step runs' states (a pruned run is missing).
    pub runs: Vec<StepRunState>,
    /// `api`, `cli`, `dashboard`.
    pub triggered_by: String,
    /// Token label, when known.
    pub actor: Option<String>,
    /// Completion webhook target.
    pub callback_url: Option<String>,
    /// The workflow run this one re-runs.
    pub rerun_of: Option<String>,
    /// Its abort was asked for.
    pub abort_requested: bool,
    /// Who aborted it (JSON `{"actor", "node", "via"}`).
    pub aborted_by: Option<String>,
    /// Epoch ms.
    pub created_at: i64,
    /// Epoch ms, once ended.
    pub finished_at: Option<i64>,
}

impl WorkflowRunRecord {
    /// The status to show (derived `running` while a step run has started).
    pub fn shown_status(&self) -> WorkflowStatus {
        crate::model::shown(self.status, self.runs.iter().map(|r| r.status))
    }

    /// The state of a step's run.
    pub fn run_of(&self, step: &WorkflowStep) -> Option<&StepRunState> {
        self.runs.iter().find(|r| r.run_id == step.run_id)
    }
}

/// `workflow_runs_list` filter.
#[derive(Debug, Clone, Default)]
pub struct WorkflowRunFilter {
    /// Only this workflow.
    pub workflow: Option<String>,
    /// Only this stored status (`queued` = not ended).
    pub status: Option<WorkflowStatus>,
    /// Newest first, at most this many.
    pub limit: i64,
    /// Skip this many.
    pub offset: i64,
}

/// `workflow_abort_mark` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkflowAbortMark {
    /// No such workflow run.
    NotFound,
    /// It had ended already, so.
    Finished(WorkflowStatus),
    /// Marked (or marked before): these of its runs are to be aborted, dependents first.
    Marked {
        /// Its own step runs, not yet ended, dependents first.
        runs: Vec<String>,
    },
}

/// The step runs a workflow run created (not kept ones), dependents first.
pub fn own_runs_dependents_first(steps_text: &str) -> Vec<String> {
    let steps: Vec<WorkflowStep> = serde_json::from_str(steps_text).unwrap_or_default();
    steps
        .into_iter()
        .rev()
        .filter(|s| !s.kept)
        .map(|s| s.run_id)
        .collect()
}
