//! The journal of ends: what an execution ended with, kept on the node's disk until
//! the store has it.
//!
//! The invariant: **a job (or finalizer) whose process exited is not run again
//! because its node died before the store heard of the end**, when that node
//! comes back on the same `data_dir`.
//!
//! - As soon as the process has exited and its outcome is known, one file
//!   `data_dir/journal/{job}.{claim_seq}.json` records the end (outcome, exit
//!   code, byte counts, result, an unrecorded start) and every output line not
//!   yet known to be stored, each batch with the line number it starts at. The
//!   file is written to a temporary name and renamed, so a reader sees a whole
//!   entry or none. It is removed once the store has answered the end.
//! - A node starting on that `data_dir` replays every entry **before** it
//!   rescues orphans or claims anything: the output (conditional appends: a
//!   batch already stored adds nothing) and then the end (fenced by
//!   `claim_seq`: an execution another node has already re-queued changes
//!   nothing). So the previous life's finished work lands as finished.
//! - Durability: the entry is in the page cache when the store write starts, so
//!   a crash of the node's process (SIGKILL, OOM, panic) loses nothing. It is
//!   not fsynced: after a power loss the entry may be gone, and the job is then
//!   rescued like any orphan and runs again (at-least-once). A host that never
//!   comes back is rescued by its peers the same way, and so is one whose peers
//!   on the same host see its pid gone before it restarts.
//! - Only the PostgreSQL store journals. On SQLite the store is a local file
//!   written within a millisecond or two of the exit by the same process (an end
//!   its slot does not wait for lingers up to 1 ms to share a commit): the store
//!   itself is the journal, and the window between exit and commit is that long.
//!
//! The test that would catch a violation:
//! `postgres_store::a_job_and_a_finalizer_that_ended_before_their_node_was_killed_do_not_run_again`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::{JobFinishParams, JobStartParams, Outcome, OutputAppendParams, Store};

/// Output lines not yet known to be stored, and the line number they start at.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Lines {
    pub first_line: i64,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

/// One execution's end, as the store must hear it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Entry {
    pub job_id: String,
    pub claim_seq: i64,
    pub output: Vec<Lines>,
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub truncated: bool,
    pub result: Option<String>,
    /// `(pid, proc_start, when)` when the start was never recorded.
    pub start: Option<(u32, u64, i64)>,
}

impl Entry {
    /// The end as a finish with no claim of a next job.
    fn finish(&self, now: i64) -> JobFinishParams {
        JobFinishParams {
            job_id: self.job_id.clone(),
            claim_seq: self.claim_seq,
            outcome: self.outcome.clone(),
            exit_code: self.exit_code,
            stdout_bytes: self.stdout_bytes,
            stderr_bytes: self.stderr_bytes,
            truncated: self.truncated,
            now,
            claim_next: None,
            start: self.start.map(|(pid, proc_start, now)| JobStartParams {
                job_id: self.job_id.clone(),
                claim_seq: self.claim_seq,
                pid,
                proc_start,
                now,
            }),
            result: self.result.clone(),
            lingers: false,
        }
    }
}

/// The journal directory of one `data_dir` (`None`: this store needs none).
#[derive(Debug, Clone)]
pub(super) struct Journal {
    dir: Option<PathBuf>,
}

impl Journal {
    /// A journal in `data_dir/journal`, or none.
    pub(super) fn new(data_dir: &Path, enabled: bool) -> Journal {
        Journal {
            dir: enabled.then(|| data_dir.join("journal")),
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.dir.is_some()
    }

    fn path(dir: &Path, job_id: &str, claim_seq: i64) -> PathBuf {
        dir.join(format!("{job_id}.{claim_seq}.json"))
    }

    /// Writes `entry` (whole or not at all); a failure is logged and the end goes on to
    /// the store unjournaled, as it would without a journal.
    pub(super) fn record(&self, entry: &Entry) {
        let Some(dir) = &self.dir else { return };
        let path = Journal::path(dir, &entry.job_id, entry.claim_seq);
        let tmp = path.with_extension("tmp");
        // The directory is made when a write finds it missing, not before every entry.
        let written = serde_json::to_vec(entry)
            .map_err(std::io::Error::other)
            .and_then(|bytes| match std::fs::write(&tmp, &bytes) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&tmp, &bytes))
                }
                other => other,
            })
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(job = %entry.job_id, "cannot journal the job's end at {}: {e}", path.display());
        }
    }

    /// The store has the end: the entry goes.
    pub(super) fn remove(&self, job_id: &str, claim_seq: i64) {
        let Some(dir) = &self.dir else { return };
        let path = Journal::path(dir, job_id, claim_seq);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove journal entry {}: {e}", path.display());
        }
    }

    /// Replays every entry a previous life left (output, then the end) and removes each
    /// the store answered; returns how many were replayed. Unreadable entries are moved
    /// aside (`.bad`) with a warning, never replayed half.
    pub(super) async fn replay(&self, store: &dyn Store) -> usize {
        let Some(dir) = &self.dir else { return 0 };
        let Ok(listing) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut replayed = 0;
        for file in listing.flatten() {
            let path = file.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let entry: Entry = match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::warn!("unreadable journal entry {} set aside: {e}", path.display());
                    let _ = std::fs::rename(&path, path.with_extension("bad"));
                    continue;
                }
            };
            match replay_one(store, &entry).await {
                Ok(applied) => {
                    tracing::info!(job = %entry.job_id, claim_seq = entry.claim_seq, applied,
                        "replayed the journaled end of a previous life's execution");
                    self.remove(&entry.job_id, entry.claim_seq);
                    replayed += 1;
                }
                Err(e) => tracing::warn!(job = %entry.job_id,
                    "cannot replay a journaled end now (kept for the next start): {e}"),
            }
        }
        replayed
    }
}

/// The output, then the end; `Ok(applied)` once the store answered the end.
async fn replay_one(store: &dyn Store, entry: &Entry) -> Result<bool, crate::store::StoreError> {
    for lines in &entry.output {
        let append = OutputAppendParams {
            job_id: entry.job_id.clone(),
            claim_seq: entry.claim_seq,
            stdout: lines.stdout.clone(),
            stderr: lines.stderr.clone(),
            now: store.clock_ms(),
            first_line: Some(lines.first_line),
        };
        if !store.job_output_append(append).await? {
            break; // no longer this execution's claim: its end will be refused too
        }
    }
    Ok(store
        .job_finish(entry.finish(store.clock_ms()))
        .await?
        .applied)
}
