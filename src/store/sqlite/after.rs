//! Runs that wait for runs, on SQLite (the rule and its invariant: [`crate::store::after`]).
//! One writer per file serialises every release; the reads of a waiting run's needs see
//! every end committed before, in this transaction or an earlier one.

use super::*;
use crate::model::{AfterWhen, Reason, Release, release};

/// Marks each need as waited for; fails with a conflict naming a run that does not exist.
pub(super) fn mark_needs(conn: &Connection, after: &[String]) -> StoreResult<()> {
    let mut mark = conn.prepare_cached("UPDATE runs SET has_dependents = 1 WHERE id = ?1")?;
    for id in after {
        if mark.execute(params![id])? == 0 {
            return Err(StoreError::Conflict {
                message: format!("unknown run in after: {id}"),
            });
        }
    }
    Ok(())
}

/// Makes a freshly inserted run wait for `after` (its jobs were inserted held), then
/// decides at once in case they have all ended. Its status after that.
pub(super) fn wait_for(
    conn: &Connection,
    run_id: &str,
    after: &[String],
    when: AfterWhen,
    now: i64,
) -> StoreResult<RunStatus> {
    conn.prepare_cached("UPDATE runs SET status = 'waiting', after_when = ?2 WHERE id = ?1")?
        .execute(params![run_id, when.as_str()])?;
    let mut need =
        conn.prepare_cached("INSERT INTO run_needs (run_id, need_id) VALUES (?1, ?2)")?;
    for id in after {
        need.execute(params![run_id, id])?;
    }
    let status = release_one(conn, run_id, now)?;
    if status == Some(RunStatus::Skipped) {
        release_dependents(conn, vec![run_id.to_string()], now)?;
    }
    Ok(status.unwrap_or(RunStatus::Waiting))
}

/// Releases the waiting dependents of runs that just ended, and the dependents of those
/// it skips.
pub(super) fn release_dependents(
    conn: &Connection,
    mut ended: Vec<String>,
    now: i64,
) -> StoreResult<()> {
    while !ended.is_empty() {
        let mut waiting = std::collections::BTreeSet::new();
        let mut find = conn.prepare_cached(
            "SELECT n.run_id FROM run_needs n JOIN runs r ON r.id = n.run_id
             WHERE n.need_id = ?1 AND r.status = 'waiting'",
        )?;
        for id in &ended {
            for run in find.query_map(params![id], |r| r.get::<_, String>(0))? {
                waiting.insert(run?);
            }
        }
        ended = Vec::new();
        for run_id in waiting {
            if release_one(conn, &run_id, now)? == Some(RunStatus::Skipped) {
                ended.push(run_id);
            }
        }
    }
    Ok(())
}

/// Decides one waiting run: `None` when it is no longer waiting, else what it is now.
fn release_one(conn: &Connection, run_id: &str, now: i64) -> StoreResult<Option<RunStatus>> {
    let run: Option<(String, Option<String>)> = conn
        .prepare_cached(
            "SELECT pipeline, after_when FROM runs WHERE id = ?1 AND status = 'waiting'",
        )?
        .query_row(params![run_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((pipeline, when)) = run else {
        return Ok(None);
    };
    let when = when
        .as_deref()
        .and_then(AfterWhen::from_name)
        .unwrap_or_default();
    let needs: Vec<(String, Option<String>, Option<bool>)> = conn
        .prepare_cached(
            "SELECT n.need_id, r.status, r.finished_at IS NOT NULL
             FROM run_needs n LEFT JOIN runs r ON r.id = n.need_id
             WHERE n.run_id = ?1 ORDER BY n.need_id",
        )?
        .query_map(params![run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let after: Vec<String> = needs.iter().map(|n| n.0.clone()).collect();
    // A need pruned away has ended long ago, in a status no longer known: not a success.
    let facts = needs.iter().map(|(_, status, ended)| {
        let status = status.as_deref().and_then(|s| s.parse().ok());
        (status.unwrap_or(RunStatus::Failed), ended.unwrap_or(true))
    });
    match release(when, facts) {
        Release::Wait => Ok(Some(RunStatus::Waiting)),
        Release::Queue => {
            conn.prepare_cached("UPDATE runs SET status = 'queued' WHERE id = ?1")?
                .execute(params![run_id])?;
            conn.prepare_cached(
                "UPDATE jobs SET run_after = ?2 WHERE run_id = ?1 AND status = 'queued' AND held",
            )?
            .execute(params![run_id, now])?;
            emit(conn, payload::run_released(run_id, &pipeline, &after), now)?;
            Ok(Some(RunStatus::Queued))
        }
        Release::Skip => {
            let skipped: Vec<(String, u32)> = conn
                .prepare_cached(
                    "UPDATE jobs SET status = 'aborted', reason = 'skipped', finished_at = ?2
                     WHERE run_id = ?1 AND status = 'queued' RETURNING id, shard_index",
                )?
                .query_map(params![run_id, now], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            for (job_id, shard_index) in &skipped {
                let event = payload::queued_job_ended(
                    run_id,
                    job_id,
                    &pipeline,
                    *shard_index,
                    Reason::Skipped,
                );
                emit(conn, event, now)?;
            }
            conn.prepare_cached("UPDATE runs SET shards_done = shard_count WHERE id = ?1")?
                .execute(params![run_id])?;
            emit(conn, payload::run_skipped(run_id, &pipeline, &after), now)?;
            completion::turn_terminal_once(conn, run_id, RunStatus::Skipped, now)?;
            Ok(Some(RunStatus::Skipped))
        }
    }
}
