//! The abort registry: job id → cancellation handle of a local execution.
//!
//! A job's entry is registered before its process is spawned and removed when
//! its task ends. Cancelling records *why* (first cause wins) so the job task
//! can report the right outcome: an abort ends the job `aborted`, a shutdown
//! re-queues it, a lost claim writes nothing that could land (the fence
//! refuses it). The API route and the bus subscriber both call
//! [`AbortRegistry::abort_all_shards_for_run`]; the route's way in is
//! `Scheduler::abort` (here too): the durable mark, then local cancellation, then the bus.

mod listen;

pub(in crate::scheduler) use listen::{abort_sweep_loop, bus_listener};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{AbortOutcome, StoreError};

/// Why a local execution was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelCause {
    /// Its run was aborted.
    Abort,
    /// The node is shutting down.
    Shutdown,
    /// The store says the claim is no longer ours.
    Lost,
}

/// Cancellation handle of one local execution.
#[derive(Clone)]
pub struct Handle {
    token: CancellationToken,
    cause: Arc<OnceLock<CancelCause>>,
    /// The job's run.
    pub run_id: String,
    /// 0-based shard index.
    pub shard_index: u32,
    /// Pipeline name.
    pub pipeline: String,
    /// Fence of the execution.
    pub claim_seq: i64,
}

impl Handle {
    /// A handle whose token is a child of `parent`.
    pub fn new(
        parent: &CancellationToken,
        run_id: &str,
        shard_index: u32,
        pipeline: &str,
        claim_seq: i64,
    ) -> Handle {
        Handle {
            token: parent.child_token(),
            cause: Arc::default(),
            run_id: run_id.to_string(),
            shard_index,
            pipeline: pipeline.to_string(),
            claim_seq,
        }
    }

    /// Records `cause` (unless one is recorded) and cancels.
    pub fn cancel(&self, cause: CancelCause) {
        let _ = self.cause.set(cause);
        self.token.cancel();
    }

    /// The token the executor watches.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Why it was cancelled; a cancelled parent token without a cause means shutdown.
    pub fn cause(&self) -> Option<CancelCause> {
        self.cause
            .get()
            .copied()
            .or_else(|| self.token.is_cancelled().then_some(CancelCause::Shutdown))
    }
}

/// Local executions by job id.
#[derive(Default)]
pub struct AbortRegistry {
    entries: Mutex<HashMap<String, Handle>>,
}

impl AbortRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Handle>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a job's handle.
    pub fn register(&self, job_id: &str, handle: Handle) {
        self.lock().insert(job_id.to_string(), handle);
    }

    /// Removes a job's handle (its task ended), unless a newer execution replaced it.
    pub fn remove(&self, job_id: &str, claim_seq: i64) {
        let mut entries = self.lock();
        if entries
            .get(job_id)
            .is_some_and(|h| h.claim_seq == claim_seq)
        {
            entries.remove(job_id);
        }
    }

    /// Cancels one execution (`claim_seq` names it: a job re-claimed on this node is a
    /// different execution); false when it is not running here.
    pub fn cancel(&self, job_id: &str, claim_seq: i64, cause: CancelCause) -> bool {
        let handle = self
            .lock()
            .get(job_id)
            .filter(|h| h.claim_seq == claim_seq)
            .cloned();
        handle.map(|h| h.cancel(cause)).is_some()
    }

    /// Cancels every local shard of `run_id` (the bare run-id key and every `:sN` key),
    /// removing them; returns how many were cancelled. The run's finalizer is never
    /// touched: it is the clean-up that runs after an abort too.
    pub fn abort_all_shards_for_run(&self, run_id: &str) -> usize {
        let shard_prefix = format!("{run_id}:s");
        let matching: Vec<(String, Handle)> = {
            let mut entries = self.lock();
            let keys: Vec<String> = entries
                .keys()
                .filter(|k| k.as_str() == run_id || k.starts_with(&shard_prefix))
                .cloned()
                .collect();
            keys.into_iter()
                .filter_map(|k| entries.remove(&k).map(|h| (k, h)))
                .collect()
        };
        for (_, handle) in &matching {
            handle.cancel(CancelCause::Abort);
        }
        matching.len()
    }

    /// Cancels every local job.
    pub fn cancel_all(&self, cause: CancelCause) -> usize {
        let handles: Vec<Handle> = self.lock().values().cloned().collect();
        for h in &handles {
            h.cancel(cause);
        }
        handles.len()
    }

    /// `(job id, claim_seq)` of every local job.
    pub fn snapshot(&self) -> Vec<(String, i64)> {
        self.lock()
            .iter()
            .map(|(k, h)| (k.clone(), h.claim_seq))
            .collect()
    }

    /// Local jobs by pipeline. A job is registered when its slot takes it (just after
    /// its claim committed) and removed once its end is durable, or when an abort takes
    /// it: so each count is at most what the store counts as running here, but for the
    /// moment between an end's commit and its removal.
    pub fn by_pipeline(&self) -> HashMap<String, u32> {
        let mut counts = HashMap::new();
        for h in self.lock().values() {
            *counts.entry(h.pipeline.clone()).or_default() += 1;
        }
        counts
    }

    /// Number of local jobs.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing runs here.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Who asks for an abort: recorded with the run when this abort marks it, and shown in
/// the run's view (`abortedBy`), its `run:completed` event and the dashboard.
#[derive(Debug, Clone)]
pub struct AbortedBy {
    /// The token's label, when the request carried one.
    pub actor: Option<String>,
    /// `api`, `cli`, `dashboard`, or `bus` (another process's message).
    pub via: String,
}

impl AbortedBy {
    /// `{"actor", "node", "nodeName", "via"}` (and `origin` for a bus message), as stored.
    pub(super) fn json(&self, node: &crate::store::NodeRow, origin: Option<&str>) -> String {
        let mut v = serde_json::json!({"actor": self.actor, "node": node.id,
            "nodeName": node.name, "via": self.via});
        if let Some(origin) = origin {
            v["origin"] = origin.into();
        }
        v.to_string()
    }
}

impl super::Scheduler {
    /// Aborts a run: durable mark first, then local cancellation, then the bus.
    pub async fn abort(&self, run_id: &str, by: AbortedBy) -> Result<AbortOutcome, StoreError> {
        let by = by.json(&self.inner.node, None);
        let outcome = self
            .inner
            .store
            .run_abort_by(run_id, self.inner.store.clock_ms(), Some(by))
            .await?;
        if let AbortOutcome::Aborted { aborted_jobs, .. } = outcome {
            Metrics::add(&self.inner.metrics.aborts, 1);
            self.inner.registry.abort_all_shards_for_run(run_id);
            // Repeating an abort changes nothing anywhere: only a new one is published.
            if aborted_jobs > 0 {
                self.inner.bus.publish_abort(run_id);
            }
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abort_covers_bare_and_shard_keys_only_of_that_run_never_its_finalizer() {
        let root = CancellationToken::new();
        let reg = AbortRegistry::default();
        let h = |run: &str, i| Handle::new(&root, run, i, "p", 1);
        reg.register("r1", h("r1", 0));
        reg.register("r2:s0", h("r2", 0));
        reg.register("r2:s1", h("r2", 1));
        reg.register("r22:s0", h("r22", 0));
        reg.register("r2:finalize", h("r2", 2));
        let r2s0 = reg.lock().get("r2:s0").cloned().unwrap();
        assert_eq!(reg.abort_all_shards_for_run("r2"), 2);
        assert_eq!(r2s0.cause(), Some(CancelCause::Abort));
        assert!(r2s0.token().is_cancelled());
        assert_eq!(reg.abort_all_shards_for_run("r1"), 1);
        assert_eq!(reg.len(), 2, "r22 and the finalizer untouched");
        assert_eq!(reg.abort_all_shards_for_run("r2"), 0);
    }

    #[test]
    fn cancel_and_remove_name_one_execution() {
        let root = CancellationToken::new();
        let reg = AbortRegistry::default();
        let old = Handle::new(&root, "r", 0, "p", 5);
        let new = Handle::new(&root, "r", 0, "p", 6);
        reg.register("r", old.clone());
        reg.register("r", new.clone()); // the job was re-claimed on this node
        assert!(
            !reg.cancel("r", 5, CancelCause::Abort),
            "a stale execution's cancel misses"
        );
        reg.remove("r", 5);
        assert_eq!(
            reg.len(),
            1,
            "the stale task's removal leaves the new handle"
        );
        assert!(!new.token().is_cancelled());
        assert!(reg.cancel("r", 6, CancelCause::Abort));
        assert!(new.token().is_cancelled());
    }

    #[test]
    fn first_cause_wins_and_parent_cancel_means_shutdown() {
        let root = CancellationToken::new();
        let a = Handle::new(&root, "r", 0, "p", 1);
        a.cancel(CancelCause::Abort);
        a.cancel(CancelCause::Shutdown);
        assert_eq!(a.cause(), Some(CancelCause::Abort));
        let b = Handle::new(&root, "r", 1, "p", 1);
        assert_eq!(b.cause(), None);
        root.cancel();
        assert_eq!(b.cause(), Some(CancelCause::Shutdown));
    }
}
