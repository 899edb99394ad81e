//! The global cap's fair shares on SQLite (the rule: `store::cap_share`). Every running
//! job counts against the cap here, so a node's units are its running jobs.

use super::*;
use crate::store::cap_share::{WAIT_FRESH_MS, WAIT_REFRESH_MS, fair_room};

/// Units of the global cap a claim by `p.node_id` may take: the free ones, and while
/// another node waits for one, no more than its fair room.
pub(super) fn room(
    conn: &Connection,
    p: &JobClaimParams,
    running: &HashMap<String, u32>,
) -> StoreResult<usize> {
    let free = claim_plan::global_free(p.global_cap, running);
    let fresh = p.now - WAIT_FRESH_MS;
    let waiting: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM nodes WHERE id <> ?1 AND cap_wait_at >= ?2)")?
        .query_row(params![p.node_id, fresh], |r| r.get(0))?;
    if !waiting {
        return Ok(free);
    }
    let (mine, fewest): (i64, i64) = conn
        .prepare_cached(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE status = 'running' AND node_id = ?1),
                    (SELECT MIN((SELECT COUNT(*) FROM jobs j WHERE j.status = 'running' AND j.node_id = n.id))
                     FROM nodes n WHERE n.id <> ?1 AND n.cap_wait_at >= ?2)",
        )?
        .query_row(params![p.node_id, fresh], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(free.min(fair_room(mine as usize, fewest as usize)))
}

/// Records whether the claim just made waits for the global cap (the rule and why
/// marks are written sparingly: `store::cap_share` and `postgres/cap_tokens.rs`'s
/// `mark`): a ready job remains in one of `offered`'s unkeyed pipelines and the cap
/// `kept_short` the claim → the mark is set (or refreshed once older than
/// `WAIT_REFRESH_MS`); none remains → it is cleared; otherwise it stays as it is.
pub(super) fn mark(
    conn: &Connection,
    p: &JobClaimParams,
    offered: &[(String, usize)],
    kept_short: bool,
) -> StoreResult<()> {
    let mut ready = conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_ready
                        WHERE status = 'queued' AND pipeline = ?1 AND held = 0 AND run_after <= ?2)",
    )?;
    let mut remain = false;
    for (name, _) in offered
        .iter()
        .filter(|(name, _)| !p.keyed.contains_key(name))
    {
        if ready.query_row(params![name, p.now], |r| r.get::<_, bool>(0))? {
            remain = true;
            break;
        }
    }
    if kept_short && remain {
        conn.prepare_cached(
            "UPDATE nodes SET cap_wait_at = ?2
             WHERE id = ?1 AND (cap_wait_at IS NULL OR cap_wait_at < ?2 - ?3)",
        )?
        .execute(params![p.node_id, p.now, WAIT_REFRESH_MS])?;
    } else if !remain {
        conn.prepare_cached(
            "UPDATE nodes SET cap_wait_at = NULL WHERE id = ?1 AND cap_wait_at IS NOT NULL",
        )?
        .execute(params![p.node_id])?;
    }
    Ok(())
}
