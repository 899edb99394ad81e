//! Runs that wait for runs, on PostgreSQL (the rule and its invariant: [`crate::store::after`]).
//!
//! Locks: a dependent's creation updates each need's row (`has_dependents`), so it and
//! the need's end serialise on that row; a release locks the waiting run's job rows,
//! then its run row (the lock order of every writer), then reads its needs in a new
//! statement — every end that committed before the lock was granted is seen, and two
//! ends racing for one dependent take turns on its row.

use super::landing::{Finalizer, turn_terminal_once};
use super::{StoreError, StoreResult, Tx};
use crate::model::{AfterWhen, Reason, Release, RunStatus, release};
use crate::store::{change, payload};

/// Marks each need as waited for, locking it; fails with a conflict naming a run that
/// does not exist.
pub(super) async fn mark_needs(tx: &Tx, after: &[String]) -> StoreResult<()> {
    let found: Vec<String> = tx
        .query(
            "UPDATE runs SET has_dependents = true WHERE id = ANY($1) RETURNING id",
            &[&after],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(missing) = after.iter().find(|id| !found.contains(id)) {
        return Err(StoreError::Conflict {
            message: format!("unknown run in after: {missing}"),
        });
    }
    Ok(())
}

/// Makes a freshly inserted run wait for `after` (its jobs were inserted held), then
/// decides at once in case they have all ended. Its status after that.
pub(super) async fn wait_for(
    tx: &mut Tx,
    run_id: &str,
    after: &[String],
    when: AfterWhen,
    now: i64,
) -> StoreResult<RunStatus> {
    tx.exec(
        "UPDATE runs SET status = 'waiting', after_when = $2 WHERE id = $1",
        &[&run_id, &when.as_str()],
    )
    .await?;
    tx.exec(
        "INSERT INTO run_needs (run_id, need_id) SELECT $1, unnest($2::text[])",
        &[&run_id, &after],
    )
    .await?;
    let status = release_one(tx, run_id, now).await?;
    if status == Some(RunStatus::Skipped) {
        release_dependents(tx, vec![run_id.to_string()], now).await?;
    }
    Ok(status.unwrap_or(RunStatus::Waiting))
}

/// Releases the waiting dependents of runs that just ended, and the dependents of those
/// it skips, in the open transaction.
pub(super) async fn release_dependents(
    tx: &mut Tx,
    mut ended: Vec<String>,
    now: i64,
) -> StoreResult<()> {
    while !ended.is_empty() {
        let waiting: Vec<String> = tx
            .query(
                "SELECT DISTINCT n.run_id FROM run_needs n JOIN runs r ON r.id = n.run_id
                 WHERE n.need_id = ANY($1) AND r.status = 'waiting' ORDER BY 1",
                &[&ended],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        ended = Vec::new();
        for run_id in waiting {
            if release_one(tx, &run_id, now).await? == Some(RunStatus::Skipped) {
                ended.push(run_id);
            }
        }
    }
    Ok(())
}

/// Decides one waiting run under its locks: `None` when it is no longer waiting (an
/// earlier release or an abort), else what it is now.
async fn release_one(tx: &mut Tx, run_id: &str, now: i64) -> StoreResult<Option<RunStatus>> {
    tx.query(
        "SELECT 1 FROM jobs WHERE run_id = $1 ORDER BY id FOR UPDATE",
        &[&run_id],
    )
    .await?;
    let Some(run) = tx
        .query_opt(
            "SELECT pipeline, after_when FROM runs WHERE id = $1 AND status = 'waiting' FOR UPDATE",
            &[&run_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let pipeline: String = run.get(0);
    let when = run
        .get::<_, Option<&str>>(1)
        .and_then(AfterWhen::from_name)
        .unwrap_or_default();
    let needs = tx
        .query(
            "SELECT n.need_id, r.status, r.finished_at IS NOT NULL
             FROM run_needs n LEFT JOIN runs r ON r.id = n.need_id
             WHERE n.run_id = $1 ORDER BY n.need_id",
            &[&run_id],
        )
        .await?;
    let after: Vec<String> = needs.iter().map(|r| r.get(0)).collect();
    // A need pruned away has ended long ago, in a status no longer known: not a success.
    let facts = needs.iter().map(|r| {
        let status = r.get::<_, Option<&str>>(1).and_then(|s| s.parse().ok());
        let ended = r.get::<_, Option<bool>>(2).unwrap_or(true);
        (status.unwrap_or(RunStatus::Failed), ended)
    });
    match release(when, facts) {
        Release::Wait => Ok(Some(RunStatus::Waiting)),
        Release::Queue => {
            tx.exec(
                "UPDATE runs SET status = 'queued' WHERE id = $1",
                &[&run_id],
            )
            .await?;
            tx.exec(
                "UPDATE jobs SET run_after = $2 WHERE run_id = $1 AND status = 'queued' AND held",
                &[&run_id, &now],
            )
            .await?;
            tx.emit(payload::run_released(run_id, &pipeline, &after), now)
                .await?;
            tx.kinds |= change::WORK;
            Ok(Some(RunStatus::Queued))
        }
        Release::Skip => {
            let skipped = tx
                .query(
                    "UPDATE jobs SET status = 'aborted', reason = 'skipped', finished_at = $2
                     WHERE run_id = $1 AND status = 'queued'
                     RETURNING id, shard_index",
                    &[&run_id, &now],
                )
                .await?;
            for j in &skipped {
                let event = payload::queued_job_ended(
                    run_id,
                    j.get(0),
                    &pipeline,
                    j.get::<_, i64>(1) as u32,
                    Reason::Skipped,
                );
                tx.emit(event, now).await?;
            }
            tx.exec(
                "UPDATE runs SET shards_done = shard_count WHERE id = $1",
                &[&run_id],
            )
            .await?;
            tx.emit(payload::run_skipped(run_id, &pipeline, &after), now)
                .await?;
            turn_terminal_once(
                tx,
                vec![(run_id.to_string(), RunStatus::Skipped, Finalizer::None)],
                now,
            )
            .await?;
            Ok(Some(RunStatus::Skipped))
        }
    }
}
