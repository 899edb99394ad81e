//! Which shards a re-run repeats and which it keeps, decided above the backends.
//!
//! `POST /api/runs/{id}/rerun` makes a new run of a *finished* run: same pipeline,
//! parameters and shard count, `rerunOf` naming the original, which is never changed.
//! With `{"only": "failed"}` the shards that completed are *kept*: the new run gets a copy
//! of each (status, exit code, attempts, times, result; `keptFrom` names the original
//! job) already terminal and counted in `shards_done`, so its landing — and its finalizer,
//! which reads every shard's result from the summary — sees every shard, while only the
//! failed and aborted ones run again.
//!
//! Invariants, and the tests that catch their violation (conformance suite, both
//! backends): the original run and its jobs are unchanged; kept shards are terminal from
//! the start and counted once; the new run lands (and its finalizer runs) exactly once,
//! after the repeated shards (`a_rerun_of_failed_shards_keeps_the_others_and_the_finalizer_sees_all`).

use crate::model::JobStatus;

/// Whether a shard that ended with `status` is kept (not repeated) by a re-run of failed
/// shards: only a completed one is; failed and aborted ones run again.
pub fn keeps(status: &str) -> bool {
    status == JobStatus::Completed.as_str()
}

/// A shard a re-run keeps: the new run's job `job_id` is a copy of `from_job`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptShard {
    /// Its shard index.
    pub shard_index: u32,
    /// The new run's job id for it.
    pub job_id: String,
    /// The original run's job it copies.
    pub from_job: String,
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_completed_shards_are_kept() {
        assert!(super::keeps("completed"));
        for status in ["failed", "aborted", "queued", "running"] {
            assert!(!super::keeps(status), "{status}");
        }
    }
}
