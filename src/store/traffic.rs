//! Statements and commits each store sent, by backend and operation
//! (`runyard_store_statements_total`, `runyard_store_commits_total`).

use std::collections::BTreeMap;

/// Statements and commits a store sent, by operation: what `/metrics` shows as
/// `runyard_store_statements_total` and `runyard_store_commits_total`: the statements
/// and commits of a store's write transactions, by operation (BEGIN, COMMIT and
/// ROLLBACK are not statements here). On SQLite a commit covers a batch of writes and is
/// counted on the batch's first operation.
#[derive(Debug, Default)]
pub struct Traffic(std::sync::Mutex<BTreeMap<&'static str, (u64, u64)>>);

impl Traffic {
    /// One transaction of `op` that sent `statements` and `commits` COMMITs.
    pub fn record(&self, op: &'static str, statements: u64, commits: u64) {
        let mut by_op = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = by_op.entry(op).or_default();
        entry.0 += statements;
        entry.1 += commits;
    }

    /// `(backend, op, statements, commits)` so far, as [`Store::traffic`] answers.
    pub fn by_backend(&self, backend: &'static str) -> Vec<(&'static str, &'static str, u64, u64)> {
        self.snapshot()
            .into_iter()
            .map(|(op, s, c)| (backend, op, s, c))
            .collect()
    }

    /// `(op, statements, commits)` so far.
    pub fn snapshot(&self) -> Vec<(&'static str, u64, u64)> {
        let by_op = self.0.lock().unwrap_or_else(|e| e.into_inner());
        by_op.iter().map(|(op, (s, c))| (*op, *s, *c)).collect()
    }
}
