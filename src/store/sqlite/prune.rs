//! Pruning on SQLite: finished runs older than the retention with their jobs, output
//! and finished deliveries, old workflow runs with theirs, and a bounded number of old
//! events (never those of unfinished runs).

use super::*;

pub(super) async fn runs_prune(
    s: &SqliteStore,
    before: i64,
    batch: usize,
) -> StoreResult<PruneOutcome> {
    s.write("runs_prune", move |conn| {
        let ids: Vec<String> = conn
            .prepare_cached(
                "SELECT id FROM runs WHERE finished_at IS NOT NULL AND finished_at < ?1 LIMIT ?2",
            )?
            .query_map(params![before, batch as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for id in &ids {
            conn.prepare_cached(
                "DELETE FROM output WHERE job_id IN (SELECT id FROM jobs WHERE run_id = ?1)",
            )?
            .execute(params![id])?;
            conn.prepare_cached("DELETE FROM jobs WHERE run_id = ?1")?
                .execute(params![id])?;
            conn.prepare_cached(
                "DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE run_id = ?1)",
            )?
            .execute(params![id])?;
            conn.prepare_cached("DELETE FROM deliveries WHERE run_id = ?1 AND status != 'pending'")?
                .execute(params![id])?;
            conn.prepare_cached("DELETE FROM run_needs WHERE run_id = ?1")?
                .execute(params![id])?;
            conn.prepare_cached("DELETE FROM runs WHERE id = ?1")?
                .execute(params![id])?;
        }
        // Old workflow runs go too, with their webhooks' delivered or failed rows.
        let workflow_runs: Vec<String> = conn
            .prepare_cached(
                "DELETE FROM workflow_runs WHERE id IN (SELECT id FROM workflow_runs
                     WHERE finished_at IS NOT NULL AND finished_at < ?1 ORDER BY finished_at LIMIT ?2)
                 RETURNING id",
            )?
            .query_map(params![before, batch as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for id in &workflow_runs {
            conn.prepare_cached(
                "DELETE FROM delivery_attempts WHERE delivery_id IN
                     (SELECT id FROM deliveries WHERE run_id = ?1 AND status != 'pending')",
            )?
            .execute(params![id])?;
            conn.prepare_cached("DELETE FROM deliveries WHERE run_id = ?1 AND status != 'pending'")?
                .execute(params![id])?;
        }
        // Events go by age, oldest first along the primary key (no per-run index to
        // maintain on the hot path); those of runs still unfinished are kept.
        let events = conn
            .prepare_cached(
                "DELETE FROM events WHERE id IN (
                     SELECT e.id FROM events e WHERE e.created_at < ?1
                       AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = e.run_id AND r.finished_at IS NULL)
                     ORDER BY e.id LIMIT ?2)",
            )?
            .execute(params![before, (batch * EVENTS_PER_RUN_PRUNED) as i64])?;
        let more = ids.len() == batch || events == batch * EVENTS_PER_RUN_PRUNED;
        Ok((PruneOutcome { runs: ids.len(), events, more }, 0))
    })
    .await
}
