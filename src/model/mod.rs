//! Pure domain types shared by every module: ids, statuses, event names and the
//! policy rules a pipeline states (retried exit codes, priorities).
//!
//! Nothing here does I/O; `model` is the one module everyone may import, so it
//! stays free of tokio, SQL and the file system.

mod after;
mod event;
mod id;
mod placement;
mod policy;
mod resources;
mod status;
pub mod template;
mod workflow;

pub use after::{AfterWhen, Release, release};
pub use event::EventName;
pub use id::{
    JobIdError, JobKind, JobPart, MIN_SHORT_ID, RunId, canonical_job_id, finalize_job_id,
    job_id_for, parse_job_id, short_run_id,
};
pub use placement::{
    Labels, Requirement, Requirements, check_label_name, parse_labels, satisfies, unmet,
    unplaceable,
};
pub use policy::{PRIORITY_RANGE, RetryOn};
pub use resources::Resources;
pub use status::{JobStatus, Reason, RunStatus, StatusParseError, WorkflowStatus};
pub use workflow::{WorkflowStep, settle, shown, step_is_bad, topological};
