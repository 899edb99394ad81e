//! One job's task on this node: spawn, capture, wait, record, flush, finish.
//!
//! Ordering that keeps the invariants:
//! - the abort handle is registered *before* spawn, and the abort mark is
//!   re-read by the `job_start` write after spawn, so an abort racing the
//!   claim still wins; a process that ends within
//!   [`START_RECORD_DELAY`] has its start written by its finishing transaction
//!   instead (one commit instead of two for short jobs);
//! - if the spawned pid cannot be recorded, the child is killed (decision 11);
//! - output is flushed on a timer with no overlap (one flush loop, skipped
//!   ticks), once more after exit — retried until it lands (`job_output.rs`) —
//!   and only then is the terminal state written, so a finished job's log is
//!   complete when `job:completed` is emitted;
//! - the end is written by [`Ended::record`], which the slot runs behind it
//!   (`slot.rs`): the job stays registered, and counts as running in the store,
//!   until its end has landed.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Inner;
use super::abort::{CancelCause, Handle};
use super::job_end::{End, failed, finish, outcome_of, read_result};
use super::job_output::OutputSink;
use super::job_prepare::prepare;
use super::journal::Entry;
use super::workdir::WorkDir;
use crate::config::Pipeline;
use crate::executor::output::Totals;
use crate::executor::{Collector, Running, SpawnSpec};
use crate::model::{JobKind, Reason};
use crate::store::{ClaimedJob, JobStartParams, Outcome};

/// A process that ends sooner has its start recorded in its finishing transaction.
const START_RECORD_DELAY: Duration = Duration::from_millis(20);

/// An execution that has ended, holding everything its end record needs, so the slot can
/// start its next job while [`Ended::record`] writes this one's last output and end.
pub(super) struct Ended {
    job: ClaimedJob,
    end: End,
    /// The output not yet written (none when no process ran).
    sink: Option<OutputSink>,
}

impl Ended {
    /// A job that ends without a process: refused before spawn, or never started.
    pub(super) fn without_process(job: ClaimedJob, outcome: Outcome) -> Ended {
        Ended {
            job,
            end: End {
                outcome,
                exit_code: None,
                totals: Totals::default(),
                start: None,
                result: None,
            },
            sink: None,
        }
    }

    /// Writes the last output, then the end (retried until it lands or proves stale),
    /// claiming up to `want` jobs for the slot in the same transaction; returns them.
    /// The job stays registered until its end is written; `finish` frees its resources
    /// before it sizes the claim. `lingers`: the slot goes on without the answer (it holds
    /// its next job), so the end may wait a moment to share a commit.
    pub(super) async fn record(
        self,
        inner: Arc<Inner>,
        want: usize,
        lingers: bool,
    ) -> Vec<ClaimedJob> {
        let Ended { job, end, sink } = self;
        if let Some(mut sink) = sink {
            sink.finish().await;
        }
        let ended = finish(&inner, &job, end, want, lingers).await;
        if ended.is_some() {
            inner.journal.answer(&job.id, job.claim_seq);
        }
        inner.registry.remove(&job.id, job.claim_seq);
        ended.unwrap_or_default()
    }
}

/// Runs one job's process to its end (`handle` is registered already); the end is
/// returned unwritten.
pub(super) async fn run_one(inner: &Arc<Inner>, job: ClaimedJob, handle: Handle) -> Ended {
    let waited = (inner.store.clock_ms() - job.due_at).max(0) as u64;
    inner
        .metrics
        .claim_latency
        .observe(Duration::from_millis(waited));
    let Some(pipeline) = inner.settings.pipelines.get(&job.pipeline).cloned() else {
        // Claims only ask for configured pipelines; keep the slot accounting honest anyway.
        let outcome = failed(Reason::ExitCode, "pipeline is not configured on this node");
        return Ended::without_process(job, outcome);
    };
    let work = match prepare(inner, &job, &pipeline).await {
        Err(outcome) => return Ended::without_process(job, outcome),
        Ok(work) => work,
    };
    let collector = Collector::with_redactor(
        inner.settings.server.max_output_bytes,
        inner.redactor.clone(),
    );
    let spec = spawn_spec(&pipeline, &job, &work, &inner.resources.gpus_of(&job.id));
    match Running::spawn(&spec, collector.clone()) {
        Err(e) => {
            let message = format!("cannot start {}: {e}", spec.program.display());
            tracing::warn!(job = %job.id, "{message}");
            Ended::without_process(job, failed(Reason::ExitCode, &message))
        }
        Ok(running) => execute(inner, job, &pipeline, &handle, collector, running, &work).await,
    }
}

async fn execute(
    inner: &Arc<Inner>,
    job: ClaimedJob,
    pipeline: &Pipeline,
    handle: &Handle,
    collector: Arc<Collector>,
    running: Running,
    work: &WorkDir,
) -> Ended {
    let start = JobStartParams {
        job_id: job.id.clone(),
        claim_seq: job.claim_seq,
        pid: running.pid,
        proc_start: running.proc_start,
        now: inner.store.clock_ms(),
    };
    // The start is recorded on its own only if the process outlives START_RECORD_DELAY;
    // a shorter job gets its start written in its finishing transaction (one commit
    // instead of two). Until then the abort handle (registered before spawn) and the
    // abort sweep cover aborts, and recovery finds the processes by their
    // RUNYARD_JOB_ID/RUNYARD_CLAIM_SEQ environment if the node dies meanwhile.
    //
    // While the store is unreachable the start is tried again (the process runs on; the
    // lease watchdog stops it if the outage outlasts the lease): an outage alone never
    // costs a running job its execution. If the process ends first, its finishing
    // transaction records the start instead.
    let exited = CancellationToken::new();
    // True when the start is recorded (or need not be: the execution is being stopped).
    let record_start = async {
        let mut delay = Duration::from_millis(100);
        loop {
            let attempt = JobStartParams {
                now: inner.store.clock_ms(),
                ..start.clone()
            };
            match inner.store.job_start(attempt).await {
                Ok(Some(false)) => return true,
                Ok(Some(true)) => handle.cancel(CancelCause::Abort),
                Ok(None) => handle.cancel(CancelCause::Lost),
                Err(e) if e.is_unavailable() && !handle.token().is_cancelled() => {
                    if delay == Duration::from_millis(100) {
                        tracing::warn!(job = %job.id, "cannot record the spawned process yet (retrying): {e}");
                    }
                    tokio::select! {
                        _ = exited.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(1));
                    continue;
                }
                Err(e) => {
                    tracing::warn!(job = %job.id, "cannot record the spawned process, killing it: {e}");
                    handle.cancel(CancelCause::Lost);
                }
            }
            return true;
        }
    };
    // Flushing, recording the start and waiting run side by side in this one task;
    // the flusher stops once the process has ended.
    let flushing_done = CancellationToken::new();
    let mut sink = OutputSink::new(inner, &job, &collector, handle);
    let flusher = sink.run_until(&flushing_done);
    let run = async {
        // A lost execution (self-fence) gets a grace short enough to be gone before any
        // peer may run the job again.
        let grace = || match handle.cause() {
            Some(CancelCause::Lost) => {
                super::lease::kill_grace(inner.lease.length(), pipeline.kill_grace)
            }
            _ => pipeline.kill_grace,
        };
        let wait = running.wait(pipeline.timeout, grace, handle.token());
        tokio::pin!(wait);
        let early = tokio::select! {
            exit = &mut wait => Some(exit),
            _ = tokio::time::sleep(START_RECORD_DELAY) => None,
        };
        let (exit, unrecorded) = match early {
            Some(exit) => (exit, Some(start.clone())),
            None => {
                let wait = async {
                    let exit = wait.await;
                    exited.cancel();
                    exit
                };
                let (recorded, exit) = tokio::join!(record_start, wait);
                (exit, (!recorded).then(|| start.clone()))
            }
        };
        flushing_done.cancel();
        (exit, unrecorded)
    };
    let spawned = std::time::Instant::now();
    let ((exit, unrecorded), ()) = tokio::join!(run, flusher);
    inner.metrics.job_duration(&job.pipeline, spawned.elapsed());

    let totals = collector.finish();
    let outcome = outcome_of(&exit, handle.cause(), pipeline);
    let (result, result_error) = read_result(inner, work).await;
    if let Some(e) = result_error {
        tracing::warn!(job = %job.id, "{e}");
    }
    // The end and the unwritten output go to the journal before the store hears of them
    // (see journal/): a node killed from here on does not run this execution again.
    if inner.journal.enabled() {
        inner.journal.record(&Entry {
            job_id: job.id.clone(),
            claim_seq: job.claim_seq,
            output: sink.unwritten(),
            outcome: outcome.clone(),
            exit_code: exit.code,
            stdout_bytes: totals.stdout,
            stderr_bytes: totals.stderr,
            truncated: totals.truncated,
            result: result.clone(),
            start: unrecorded.as_ref().map(|s| (s.pid, s.proc_start, s.now)),
        });
    }
    Ended {
        job,
        end: End {
            outcome,
            exit_code: exit.code,
            totals,
            start: unrecorded,
            result,
        },
        sink: Some(sink),
    }
}

/// The argv and environment of one execution: placeholders substituted per argv element.
pub(crate) fn spawn_spec(
    pipeline: &Pipeline,
    job: &ClaimedJob,
    work: &WorkDir,
    gpus: &[u32],
) -> SpawnSpec {
    let summary = work.summary_path().display().to_string();
    let lookup = |name: &str| -> Option<String> {
        Some(match name {
            "run_id" => job.run_id.clone(),
            "job_id" => job.id.clone(),
            "shard_index" => job.shard_index.to_string(),
            "shard_number" => (job.shard_index + 1).to_string(),
            "shard_count" => job.shard_count.to_string(),
            "attempt" => job.attempt.to_string(),
            "summary_file" => summary.clone(),
            other => return job.params.get(other).cloned(),
        })
    };
    let (program, templates) = match (&pipeline.finalizer, job.kind) {
        (Some(fin), JobKind::Finalize) => (fin.program.clone(), &fin.args),
        _ => (pipeline.program.clone(), &pipeline.args),
    };
    let args = templates.iter().map(|t| t.render(lookup)).collect();
    let mut env: Vec<(String, String)> = pipeline
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain(
            pipeline
                .secret_env
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_string())),
        )
        .collect();
    env.extend([
        ("RUNYARD_RUN_ID".to_string(), job.run_id.clone()),
        ("RUNYARD_JOB_ID".to_string(), job.id.clone()),
        ("RUNYARD_PIPELINE".to_string(), job.pipeline.clone()),
        (
            "RUNYARD_SHARD_COUNT".to_string(),
            job.shard_count.to_string(),
        ),
        ("RUNYARD_ATTEMPT".to_string(), job.attempt.to_string()),
        // Lets recovery find this execution's processes even if its pid was never recorded.
        ("RUNYARD_CLAIM_SEQ".to_string(), job.claim_seq.to_string()),
        (
            "RUNYARD_RESULT_FILE".to_string(),
            work.result_path().display().to_string(),
        ),
    ]);
    match job.kind {
        JobKind::Shard => env.push((
            "RUNYARD_SHARD_INDEX".to_string(),
            job.shard_index.to_string(),
        )),
        JobKind::Finalize => {
            env.push(("RUNYARD_SUMMARY_FILE".to_string(), summary.clone()));
            env.push(("RUNYARD_RUN_STATUS".to_string(), work.run_status.clone()));
        }
    }
    if work.has_needs {
        env.push((
            "RUNYARD_NEEDS_FILE".to_string(),
            work.needs_path().display().to_string(),
        ));
    }
    if pipeline.resources.gpu > 0 {
        // This job's own GPUs: no running job on this node holds any of them.
        let ids: Vec<String> = gpus.iter().map(u32::to_string).collect();
        env.push(("RUNYARD_GPU_IDS".to_string(), ids.join(",")));
        env.push(("CUDA_VISIBLE_DEVICES".to_string(), ids.join(",")));
    }
    for (name, value) in &job.params {
        env.push((
            format!("RUNYARD_PARAM_{}", name.to_ascii_uppercase()),
            value.clone(),
        ));
    }
    SpawnSpec {
        program,
        args,
        cwd: pipeline.cwd.clone(),
        env,
    }
}
