//! Job and run statuses, their wire names, and which of them are terminal.
//!
//! Terminal statuses never change: every store write that moves a job or run
//! is conditional on the current status being non-terminal.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A status name that is not one of ours.
#[derive(Debug, Error)]
#[error("unknown status: {0}")]
pub struct StatusParseError(pub String);

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// The name used in the API, the store and events.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }

        impl FromStr for $name {
            type Err = StatusParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s { $($wire => Ok($name::$variant),)+ _ => Err(StatusParseError(s.to_string())) }
            }
        }
    };
}

wire_enum!(
    /// Where a job is in its life. A job waiting for a retry is `Queued` with `attempt > 1`.
    JobStatus {
        /// Waiting to be claimed.
        Queued => "queued",
        /// Claimed by a node and (about to be) executing.
        Running => "running",
        /// Exited 0.
        Completed => "completed",
        /// Failed with no attempts left.
        Failed => "failed",
        /// Cancelled by an abort of its run.
        Aborted => "aborted",
    }
);

wire_enum!(
    /// Where a run is in its life; derived from its jobs.
    RunStatus {
        /// Created after other runs (`after`): its jobs wait, unclaimable, until every
        /// run it waits for has ended; then it is queued or skipped.
        Waiting => "waiting",
        /// No shard has started yet.
        Queued => "queued",
        /// At least one shard has started.
        Running => "running",
        /// Every shard completed.
        Completed => "completed",
        /// A shard failed for good.
        Failed => "failed",
        /// Aborted by a user.
        Aborted => "aborted",
        /// Never ran: the runs it waited for did not end as its `afterWhen` requires.
        Skipped => "skipped",
    }
);

wire_enum!(
    /// The status of a workflow run (the runs of its steps together).
    WorkflowStatus {
        /// No step's run has started yet.
        Queued => "queued",
        /// A step's run has started (shown, never stored: derived from the steps).
        Running => "running",
        /// Every step's run ended, none failed or was aborted.
        Completed => "completed",
        /// A step's run failed or was aborted on its own.
        Failed => "failed",
        /// The workflow run was aborted.
        Aborted => "aborted",
    }
);

wire_enum!(
    /// Why a job reached its terminal status.
    Reason {
        /// The process exited; see the exit code.
        ExitCode => "exit_code",
        /// The pipeline's timeout expired.
        Timeout => "timeout",
        /// Its node died and the orphan could not be re-queued.
        Orphaned => "orphaned",
        /// The pipeline's setup command failed.
        SetupFailed => "setup_failed",
        /// Its run was aborted.
        Aborted => "aborted",
        /// The node shut down and the job could not be re-queued.
        Shutdown => "shutdown",
        /// Its run was skipped (it waited for runs that did not end as required); the
        /// job never ran and ends `aborted`.
        Skipped => "skipped",
    }
);

impl JobStatus {
    /// True for statuses that never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Aborted
        )
    }
}

impl WorkflowStatus {
    /// True for statuses that never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            WorkflowStatus::Completed | WorkflowStatus::Failed | WorkflowStatus::Aborted
        )
    }
}

impl RunStatus {
    /// True for statuses that never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Aborted | RunStatus::Skipped
        )
    }

    /// The final status of a run from its jobs' final statuses, keeping an abort.
    pub fn from_final_jobs(
        current: RunStatus,
        jobs: impl IntoIterator<Item = JobStatus>,
    ) -> RunStatus {
        if current == RunStatus::Aborted {
            return RunStatus::Aborted;
        }
        let mut status = RunStatus::Completed;
        for job in jobs {
            match job {
                JobStatus::Failed => return RunStatus::Failed,
                JobStatus::Aborted => status = RunStatus::Aborted,
                _ => {}
            }
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>().unwrap(), *s);
        }
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>().unwrap(), *s);
        }
        assert!("done".parse::<JobStatus>().is_err());
    }

    #[test]
    fn run_status_follows_jobs_and_keeps_abort() {
        use JobStatus::*;
        assert_eq!(
            RunStatus::from_final_jobs(RunStatus::Running, [Completed, Completed]),
            RunStatus::Completed
        );
        assert_eq!(
            RunStatus::from_final_jobs(RunStatus::Running, [Completed, Failed]),
            RunStatus::Failed
        );
        assert_eq!(
            RunStatus::from_final_jobs(RunStatus::Aborted, [Completed, Failed]),
            RunStatus::Aborted
        );
    }
}
