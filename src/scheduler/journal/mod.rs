//! The journal of ends: what an execution ended with, kept on the node's disk until
//! the store has it.
//!
//! The invariant: **a job (or finalizer) whose process exited is not run again
//! because its node died before the store heard of the end**, when that node
//! comes back on the same `data_dir`.
//!
//! - As soon as the process has exited and its outcome is known, one line appended
//!   to the node's current segment, `data_dir/journal/{life}.{n}.log`, records the
//!   end (outcome, exit code, byte counts, result, an unrecorded start) and every
//!   output line not yet known to be stored, each batch with the line number it
//!   starts at. Once the store has answered the end, a `Done` line follows it in the
//!   same segment.
//! - Segments, not a file per end: creating, renaming and unlinking a file per job
//!   made the kernel allocate and free an inode for every end (ext4 searches its
//!   bitmap past recently deleted inodes), about a sixth of a PostgreSQL node's CPU
//!   on short jobs. An append is one `write`. A segment past [`SEGMENT_BYTES`] is
//!   retired (the next end opens a new one) and unlinked as soon as every end in it
//!   has been answered.
//! - Each segment is locked (`flock`) by the life that writes it, for as long as it
//!   holds it; the lock dies with the process. Replicas on one host may share a
//!   `data_dir`, so a replica that restarts replays only segments no live process
//!   holds, and never removes one a live neighbour still appends to.
//! - A node starting on that `data_dir` replays every end without its `Done`
//!   **before** it rescues orphans or claims anything: the output (conditional
//!   appends: a batch already stored adds nothing) and then the end (fenced by
//!   `claim_seq`: an execution another node has already re-queued changes
//!   nothing). So the previous life's finished work lands as finished. A last line
//!   cut short by the crash is skipped: its `write` had not returned, so the store
//!   had not been asked either, and the job is rescued like any orphan. Entries of
//!   the older format (one `{job}.{claim_seq}.json` file each) are replayed too.
//! - A write that fails part way (a full disk) is logged, its end goes to the store
//!   unjournaled (as it would without a journal), and the next line starts on a line
//!   of its own, so no whole line is lost with it. A segment with unreadable lines
//!   inside is replayed for what it holds and then set aside (`.bad`), not removed.
//! - Limits: a journal directory removed while the node runs is not noticed until
//!   the next segment (appends go on into the unlinked file); a segment holding an
//!   end the node gave up writing (it stopped) stays until the next start replays it.
//! - Durability: the line is in the page cache when the store write starts, so
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
//! The tests that would catch a violation:
//! `postgres_store::a_job_and_a_finalizer_that_ended_before_their_node_was_killed_do_not_run_again`
//! (through the binary), and `journal/tests.rs` (what a segment replays, and that
//! answered segments go).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::store::{JobFinishParams, JobStartParams, Outcome, OutputAppendParams, Store};

mod segments;
#[cfg(test)]
mod tests;

use segments::{Segments, done_line, remove_segment, unanswered};

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
    segments: Option<Arc<Segments>>,
}

impl Journal {
    /// A journal in `data_dir/journal`, or none.
    pub(super) fn new(data_dir: &Path, enabled: bool) -> Journal {
        Journal {
            segments: enabled.then(|| Arc::new(Segments::new(data_dir.join("journal")))),
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.segments.is_some()
    }

    /// Appends `entry` (a whole line, or a line no replay reads); a failure is logged
    /// and the end goes on to the store unjournaled, as it would without a journal.
    pub(super) fn record(&self, entry: &Entry) {
        if let Some(segments) = &self.segments
            && let Err(e) = segments.append_end(entry)
        {
            tracing::warn!(job = %entry.job_id, "cannot journal the job's end in {}: {e}", segments.dir().display());
        }
    }

    /// The store has the end: the journal marks it answered.
    pub(super) fn answer(&self, job_id: &str, claim_seq: i64) {
        if let Some(segments) = &self.segments {
            segments.answer(job_id, claim_seq);
        }
    }

    /// Replays every end a previous life left unanswered (output, then the end), oldest
    /// segment first, and removes each segment whose ends the store all answered (a
    /// segment with an end the store could not take now is kept, with `Done` lines for
    /// the rest, for the next start); returns how many ends were replayed.
    pub(super) async fn replay(&self, store: &dyn Store) -> usize {
        let Some(segments) = &self.segments else {
            return 0;
        };
        let Ok(listing) = std::fs::read_dir(segments.dir()) else {
            return 0;
        };
        let mut paths: Vec<PathBuf> = listing.flatten().map(|f| f.path()).collect();
        paths.sort();
        let mut replayed = 0;
        for path in paths {
            match path.extension().and_then(|e| e.to_str()) {
                Some("log") => replayed += replay_segment(store, &path).await,
                Some("json") => replayed += replay_file(store, &path).await,
                _ => {}
            }
        }
        replayed
    }
}

/// Replays one segment's unanswered ends; see [`Journal::replay`].
async fn replay_segment(store: &dyn Store, path: &Path) -> usize {
    // A segment a live process holds (a replica sharing this `data_dir`) is its own to
    // answer; one whose writer died is unlocked. The lock is held to the end here.
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0, // answered meanwhile
        Err(e) => {
            tracing::warn!("cannot open journal segment {}: {e}", path.display());
            return 0;
        }
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            tracing::debug!("journal segment {} is a live process's", path.display());
            return 0;
        }
        Err(std::fs::TryLockError::Error(e)) => {
            tracing::warn!("cannot lock journal segment {}: {e}", path.display());
            return 0;
        }
    }
    let mut text = Vec::new();
    if let Err(e) = file.read_to_end(&mut text) {
        tracing::warn!("cannot read journal segment {}: {e}", path.display());
        return 0;
    }
    let read = unanswered(&text);
    if read.cut_last {
        tracing::info!(
            "journal segment {} ends with a line its crash cut short (skipped)",
            path.display()
        );
    }
    let (mut replayed, mut kept) = (0, false);
    // A line the crash cut short is ended first, so the first `Done` is a line of its own.
    let mut answered = if text.last().is_some_and(|b| *b != b'\n') {
        vec![b'\n']
    } else {
        Vec::new()
    };
    for entry in &read.ends {
        if replay_one(store, entry).await {
            answered.extend(done_line(&entry.job_id, entry.claim_seq));
            replayed += 1;
        } else {
            kept = true;
        }
    }
    if !kept && read.unreadable > 0 {
        // Lines inside it could not be read (a write that failed part way, or damage):
        // what could be read has landed, and the file stays, set aside, as evidence.
        tracing::warn!(
            unreadable = read.unreadable,
            "journal segment {} has unreadable lines; set aside after replaying the rest",
            path.display()
        );
        let _ = std::fs::rename(path, path.with_extension("bad"));
    } else if !kept {
        remove_segment(path);
    } else if let Err(e) = file.write_all(&answered) {
        tracing::warn!(
            "cannot mark replayed ends answered in {}: {e}",
            path.display()
        );
    }
    replayed
}

/// Replays one end of the older format (a file per end) and removes it once answered.
/// An unreadable file is moved aside (`.bad`) with a warning, never replayed half.
async fn replay_file(store: &dyn Store, path: &Path) -> usize {
    let entry: Entry = match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(entry) => entry,
        Err(e) => {
            tracing::warn!("unreadable journal entry {} set aside: {e}", path.display());
            let _ = std::fs::rename(path, path.with_extension("bad"));
            return 0;
        }
    };
    if !replay_one(store, &entry).await {
        return 0;
    }
    remove_segment(path);
    1
}

/// Replays one end and logs how it went; true once the store answered it (applied or
/// refused by its fence), false when it must be kept for the next start.
async fn replay_one(store: &dyn Store, entry: &Entry) -> bool {
    match send(store, entry).await {
        Ok(applied) => {
            tracing::info!(job = %entry.job_id, claim_seq = entry.claim_seq, applied,
                "replayed the journaled end of a previous life's execution");
            true
        }
        Err(e) => {
            tracing::warn!(job = %entry.job_id,
                "cannot replay a journaled end now (kept for the next start): {e}");
            false
        }
    }
}

/// The output, then the end; `Ok(applied)` once the store answered the end.
async fn send(store: &dyn Store, entry: &Entry) -> Result<bool, crate::store::StoreError> {
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
