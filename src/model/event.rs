//! Event names as they appear in the store, SSE `event:` lines and webhooks.

use std::fmt;

/// The lifecycle events, named as the HTTP API documents them (`docs/http-api.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventName {
    /// A job was queued by a trigger.
    JobCreated,
    /// A job's process was spawned.
    JobStarted,
    /// A job printed `::progress <n> <msg>`.
    JobProgress,
    /// A job exited 0.
    JobCompleted,
    /// A job attempt failed (the job may still be retried: see `status`).
    JobFailed,
    /// A job was aborted.
    JobAborted,
    /// A run turned terminal; emitted exactly once per run.
    RunCompleted,
    /// A waiting run's last need ended and it was queued.
    RunReleased,
    /// A waiting run's needs did not end as it required: it ends `skipped`.
    RunSkipped,
    /// A workflow run was created with every step's run.
    WorkflowCreated,
    /// A workflow run ended: every step ended, none failed.
    WorkflowCompleted,
    /// A workflow run ended with a step failed or aborted.
    WorkflowFailed,
    /// A workflow run was aborted.
    WorkflowAborted,
    /// A pipeline was paused: no node claims its queued jobs until it is resumed.
    PipelinePaused,
    /// A paused pipeline was resumed.
    PipelineResumed,
}

impl EventName {
    /// True for a workflow run's events (stored under the workflow run's id; their
    /// payload names it `workflowRunId`).
    pub fn is_workflow(self) -> bool {
        matches!(
            self,
            EventName::WorkflowCreated
                | EventName::WorkflowCompleted
                | EventName::WorkflowFailed
                | EventName::WorkflowAborted
        )
    }

    /// The wire name, e.g. `job:created`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventName::JobCreated => "job:created",
            EventName::JobStarted => "job:started",
            EventName::JobProgress => "job:progress",
            EventName::JobCompleted => "job:completed",
            EventName::JobFailed => "job:failed",
            EventName::JobAborted => "job:aborted",
            EventName::RunCompleted => "run:completed",
            EventName::RunReleased => "run:released",
            EventName::RunSkipped => "run:skipped",
            EventName::WorkflowCreated => "workflow:created",
            EventName::WorkflowCompleted => "workflow:completed",
            EventName::WorkflowFailed => "workflow:failed",
            EventName::WorkflowAborted => "workflow:aborted",
            EventName::PipelinePaused => "pipeline:paused",
            EventName::PipelineResumed => "pipeline:resumed",
        }
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
