//! What a job needs before its process starts: the pipeline's setup on this node, its
//! work directory (the result file), and what it is told — a finalizer the run's
//! summary, a job of a run created `after` others their summaries (`RUNYARD_NEEDS_FILE`).

use std::sync::Arc;

use super::Inner;
use super::job_end::failed;
use super::setup::{SetupBlocked, SetupContext};
use super::workdir::WorkDir;
use crate::config::Pipeline;
use crate::model::{JobKind, Reason};
use crate::store::{ClaimedJob, Outcome};

/// Everything a job needs before its process starts: the pipeline's setup on this node,
/// and its work directory (result file; the finalizer's summary). `Err` is how it ends
/// instead of running.
pub(super) async fn prepare(
    inner: &Arc<Inner>,
    job: &ClaimedJob,
    pipeline: &Pipeline,
) -> Result<WorkDir, Outcome> {
    let ctx = SetupContext {
        store: &inner.store,
        node_id: &inner.node.id,
        data_dir: &inner.settings.server.data_dir,
        stop: &inner.stop_jobs,
        redactor: inner.redactor.clone(),
    };
    if let Err(blocked) = inner.setups.ensure(&ctx, pipeline).await {
        let error = match blocked {
            SetupBlocked::Failed(message) => message,
            SetupBlocked::CircuitOpen => "the pipeline's circuit is open on this node".to_string(),
        };
        return Err(Outcome::Release {
            reason: Reason::SetupFailed,
            error: Some(error),
        });
    }
    let mut work = WorkDir::create(&inner.settings.server.data_dir, job).map_err(|e| {
        failed(
            Reason::ExitCode,
            &format!("cannot create the job's work directory: {e}"),
        )
    })?;
    if job.has_needs {
        let needs = match needs_of(inner, &job.run_id).await {
            Ok(needs) => needs,
            Err(e) => {
                // Not the job's fault: hand it back for another try.
                tracing::warn!(job = %job.id, "cannot read the runs it waited for: {e}");
                return Err(Outcome::Requeue {
                    reason: Reason::Orphaned,
                });
            }
        };
        work.write_needs(needs).map_err(|e| {
            failed(
                Reason::ExitCode,
                &format!("cannot write the needs file: {e}"),
            )
        })?;
    }
    if job.kind == JobKind::Finalize {
        let summary = match inner.store.run_summary(&job.run_id).await {
            Ok(Some(summary)) => summary,
            Ok(None) => return Err(failed(Reason::ExitCode, "the run is gone")),
            // Not the finalizer's fault: hand it back for another try.
            Err(e) => {
                tracing::warn!(job = %job.id, "cannot read the run summary: {e}");
                return Err(Outcome::Requeue {
                    reason: Reason::Orphaned,
                });
            }
        };
        work.write_summary(&summary).map_err(|e| {
            failed(
                Reason::ExitCode,
                &format!("cannot write the run summary: {e}"),
            )
        })?;
    }
    Ok(work)
}

/// The summaries of the runs `run_id` waited for, in id order (a run pruned since is
/// left out).
async fn needs_of(
    inner: &Inner,
    run_id: &str,
) -> Result<Vec<serde_json::Value>, crate::store::StoreError> {
    let after = match inner.store.run_get(run_id).await? {
        Some(run) => run.after,
        None => Vec::new(),
    };
    let mut needs = Vec::with_capacity(after.len());
    for need in after {
        if let Some(summary) = inner.store.run_summary(&need).await? {
            needs.push(summary);
        }
    }
    Ok(needs)
}
