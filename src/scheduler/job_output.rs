//! A running job's output and progress on their way to the store.
//!
//! The invariant: **every line the collector kept reaches the store exactly once**
//! while the claim is this node's, whatever the store does meanwhile.
//!
//! - Lines taken from the collector are never dropped: a batch whose write
//!   failed waits in the [`OutputSink`] and is sent again *as it was* (same
//!   lines, same first line number) before anything newer; lines that arrive
//!   meanwhile are gathered into one unsent batch behind it. Memory stays
//!   bounded by the collector's per-stream cap (`max_output_bytes`): past it the
//!   collector only counts bytes and the stored log ends with its truncation
//!   marker.
//! - Every append names the line number it must start at (the job's stored
//!   line count at the claim plus the lines this execution wrote). A retry of a
//!   batch whose commit landed but whose answer was lost finds the log already
//!   ending after it and adds nothing: no duplicated lines.
//! - After the process exits, the last flush is retried like the job's end
//!   ([`Persist`]) *before* the end is written, so a job that ends while the
//!   store is unreachable keeps its last lines, and `job:completed` is never
//!   emitted over a log that misses them.
//!
//! Tests that would catch a violation: `postgres_store::output_of_a_job_that_ends_during_an_outage_is_stored_once`
//! and the store contract's `an_append_retried_after_its_commit_adds_nothing`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Inner;
use super::abort::{CancelCause, Handle};
use super::journal::Lines;
use crate::executor::Collector;
use crate::executor::output::Batch;
use crate::store::{ClaimedJob, JobProgressParams, OutputAppendParams, StoreError};

/// Progress events are coalesced to at most this often per job.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// How a job task keeps trying a write the store must take (its last output, its end):
/// at least once a second while the store is unreachable, so it lands within a second
/// of the store coming back. A node that is shutting down, or a database error (a bug,
/// a damaged store: it does not go away by itself), gives up after 8 tries.
pub(super) struct Persist {
    what: &'static str,
    delay: Duration,
    attempt: u32,
}

impl Persist {
    pub(super) fn new(what: &'static str) -> Persist {
        Persist {
            what,
            delay: Duration::from_millis(100),
            attempt: 0,
        }
    }

    /// After a failed try: waits and returns true to try again, or false to give up.
    pub(super) async fn again(&mut self, inner: &Inner, job: &ClaimedJob, e: &StoreError) -> bool {
        self.attempt += 1;
        let attempt = self.attempt;
        if attempt <= 3 || attempt.is_multiple_of(30) {
            tracing::warn!(job = %job.id, attempt, "cannot record {} (retrying): {e}", self.what);
        }
        if attempt >= 8 && (inner.stop_claiming.is_cancelled() || !e.is_unavailable()) {
            tracing::warn!(job = %job.id, "giving up on recording {}: {e}", self.what);
            return false;
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(1));
        true
    }
}

/// What one flush did.
enum Flushed {
    /// Nothing is left unwritten (or the claim is gone and nothing ever will be).
    Done,
    /// A batch waits for the store.
    Failed(StoreError),
}

/// One execution's output between the collector and the store.
pub(super) struct OutputSink {
    inner: Arc<Inner>,
    job: ClaimedJob,
    collector: Arc<Collector>,
    handle: Handle,
    /// The line number the next batch starts at.
    next_line: i64,
    /// A batch whose write failed: its commit may have landed, so it is sent again
    /// exactly as it was.
    unknown: Option<Batch>,
    /// Lines taken from the collector since, never sent.
    unsent: Batch,
}

impl OutputSink {
    /// The sink owns what it writes for, so the job's last flush and its end can be
    /// written after the slot has moved on to its next job.
    pub(super) fn new(
        inner: &Arc<Inner>,
        job: &ClaimedJob,
        collector: &Arc<Collector>,
        handle: &Handle,
    ) -> OutputSink {
        OutputSink {
            inner: inner.clone(),
            job: job.clone(),
            collector: collector.clone(),
            handle: handle.clone(),
            next_line: job.output_lines,
            unknown: None,
            unsent: Batch::default(),
        }
    }

    /// Takes what the collector holds (freeing its buffer: readers paused at its
    /// high-water mark go on) and writes everything unwritten, oldest first.
    async fn flush(&mut self) -> Flushed {
        self.unsent.append(self.collector.take());
        if let Some(batch) = self.unknown.take()
            && let Err(e) = self.send(&batch).await
        {
            self.unknown = Some(batch);
            return Flushed::Failed(e);
        }
        if self.unsent.is_empty() {
            return Flushed::Done;
        }
        let batch = std::mem::take(&mut self.unsent);
        match self.send(&batch).await {
            Ok(()) => Flushed::Done,
            Err(e) => {
                self.unknown = Some(batch);
                Flushed::Failed(e)
            }
        }
    }

    /// Every line not yet known to be stored (taking what the collector holds), each batch
    /// with the line number it must start at: what the journal keeps until the store has it.
    pub(super) fn unwritten(&mut self) -> Vec<Lines> {
        self.unsent.append(self.collector.take());
        let mut first_line = self.next_line;
        let mut out = Vec::new();
        for batch in self.unknown.iter().chain([&self.unsent]) {
            if batch.is_empty() {
                continue;
            }
            out.push(Lines {
                first_line,
                stdout: batch.stdout.clone(),
                stderr: batch.stderr.clone(),
            });
            first_line += (batch.stdout.len() + batch.stderr.len()) as i64;
        }
        out
    }

    /// One conditional append; `Ok` when written (or found written, or refused because
    /// the claim is no longer ours: the execution is then stopped).
    async fn send(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let lines = (batch.stdout.len() + batch.stderr.len()) as i64;
        let params = OutputAppendParams {
            job_id: self.job.id.clone(),
            claim_seq: self.job.claim_seq,
            stdout: batch.stdout.clone(),
            stderr: batch.stderr.clone(),
            now: self.inner.store.clock_ms(),
            first_line: Some(self.next_line),
        };
        if self.inner.store.job_output_append(params).await? {
            self.next_line += lines;
            if let Some(t) = batch.oldest {
                self.inner.metrics.flush_lag.observe(t.elapsed());
            }
        } else {
            self.handle.cancel(CancelCause::Lost);
        }
        Ok(())
    }

    /// Flushes on the output timer (and early when the collector asks) and reports
    /// progress on its own, until `done`. One loop does every flush in turn, so a flush
    /// never overlaps the previous one.
    pub(super) async fn run_until(&mut self, done: &CancellationToken) {
        let every = self.inner.settings.server.output_flush_interval;
        let start = tokio::time::Instant::now();
        let mut output_tick = tokio::time::interval_at(start + every, every);
        output_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut progress_tick =
            tokio::time::interval_at(start + PROGRESS_INTERVAL, PROGRESS_INTERVAL);
        progress_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = done.cancelled() => break,
                _ = output_tick.tick() => self.flush_once().await,
                _ = self.collector.flush_wanted() => self.flush_once().await,
                _ = progress_tick.tick() => self.flush_progress().await,
            }
        }
    }

    async fn flush_once(&mut self) {
        if let Flushed::Failed(e) = self.flush().await {
            tracing::warn!(job = %self.job.id, "output flush failed (kept for the next one): {e}");
        }
    }

    /// The last flush after the process ended, retried until it lands (see [`Persist`];
    /// a flush given up is logged with the reason), then the last progress report.
    pub(super) async fn finish(&mut self) {
        let mut persist = Persist::new("the job's last output");
        while let Flushed::Failed(e) = self.flush().await {
            if !persist.again(&self.inner, &self.job, &e).await {
                break;
            }
        }
        self.flush_progress().await;
    }

    async fn flush_progress(&self) {
        let Some((percent, message)) = self.collector.take_progress() else {
            return;
        };
        let params = JobProgressParams {
            job_id: self.job.id.clone(),
            claim_seq: self.job.claim_seq,
            percent,
            message,
            now: self.inner.store.clock_ms(),
        };
        if let Err(e) = self.inner.store.job_progress(params).await {
            tracing::warn!(job = %self.job.id, "progress update failed: {e}");
        }
    }
}
