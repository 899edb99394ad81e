//! Pruning on PostgreSQL: finished runs older than the retention with their jobs,
//! output and finished deliveries, old workflow runs with theirs, and a bounded number
//! of old events (never those of unfinished runs). One node prunes at a time (an
//! advisory lock); the others skip the round.

use super::{PgStore, StoreResult, in_tx};
use crate::store::PruneOutcome;

/// Events deleted per pruned-run batch slot (as on SQLite).
const EVENTS_PER_RUN_PRUNED: usize = 20;

pub(super) async fn runs_prune(
    s: &PgStore,
    before: i64,
    batch: usize,
) -> StoreResult<PruneOutcome> {
    in_tx!(s, "runs_prune", tx => {
        // One node prunes at a time; the others skip this round instead of fighting.
        let ours: bool = tx
            .query_opt(
                "SELECT pg_try_advisory_xact_lock(hashtextextended(current_schema() || '/runyard/prune', 0))",
                &[],
            )
            .await?
            .map(|r| r.get(0))
            .unwrap_or(false);
        if !ours {
            PruneOutcome::default()
        } else {
            let ids: Vec<String> = tx
                .query(
                    "SELECT id FROM runs WHERE finished_at IS NOT NULL AND finished_at < $1
                     ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                    &[&before, &(batch as i64)],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if !ids.is_empty() {
                tx.exec("DELETE FROM output WHERE job_id IN (SELECT id FROM jobs WHERE run_id = ANY($1))", &[&ids])
                    .await?;
                tx.exec("DELETE FROM jobs WHERE run_id = ANY($1)", &[&ids]).await?;
                tx.exec(
                    "DELETE FROM delivery_attempts WHERE delivery_id IN
                         (SELECT id FROM deliveries WHERE run_id = ANY($1) AND status != 'pending')",
                    &[&ids],
                )
                .await?;
                tx.exec("DELETE FROM deliveries WHERE run_id = ANY($1) AND status != 'pending'", &[&ids])
                    .await?;
                tx.exec("DELETE FROM run_needs WHERE run_id = ANY($1)", &[&ids]).await?;
                tx.exec("DELETE FROM runs WHERE id = ANY($1)", &[&ids]).await?;
            }
            // Old workflow runs go too, with their webhooks' delivered or failed rows.
            tx.exec(
                "WITH gone AS (
                     DELETE FROM workflow_runs WHERE id IN (SELECT id FROM workflow_runs
                         WHERE finished_at IS NOT NULL AND finished_at < $1 ORDER BY finished_at LIMIT $2)
                     RETURNING id),
                 attempts AS (
                     DELETE FROM delivery_attempts WHERE delivery_id IN
                         (SELECT id FROM deliveries WHERE run_id IN (SELECT id FROM gone) AND status != 'pending'))
                 DELETE FROM deliveries WHERE run_id IN (SELECT id FROM gone) AND status != 'pending'",
                &[&before, &(batch as i64)],
            )
            .await?;
            let limit = (batch * EVENTS_PER_RUN_PRUNED) as i64;
            let deleted = tx
                .query_opt(
                    "WITH gone AS (
                         DELETE FROM events WHERE id IN (
                             SELECT e.id FROM events e WHERE e.created_at < $1
                               AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = e.run_id AND r.finished_at IS NULL)
                             ORDER BY e.id LIMIT $2)
                         RETURNING id)
                     SELECT count(*), max(id) FROM gone",
                    &[&before, &limit],
                )
                .await?;
            let (events, highest) = deleted
                .map(|r| (r.get::<_, i64>(0) as usize, r.get::<_, Option<i64>>(1)))
                .unwrap_or((0, None));
            if let Some(highest) = highest {
                // Readers resuming at or below this id have missed events: they get `resync`.
                tx.exec(
                    "INSERT INTO runyard_meta (key, value) VALUES ('events_pruned_through', $1)
                     ON CONFLICT (key) DO UPDATE SET value = GREATEST(runyard_meta.value, EXCLUDED.value)",
                    &[&highest],
                )
                .await?;
            }
            let more = ids.len() == batch || events as i64 == limit;
            PruneOutcome { runs: ids.len(), events, more }
        }
    })
}
