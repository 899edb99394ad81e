//! The global cap's fair shares on SQLite (the rule: `store::cap_share`). Every running
//! job counts against the cap here, so a node's units are its running jobs.

use super::*;
use crate::store::cap_share::{WAIT_FRESH_MS, WAIT_REFRESH_MS, fair_room, has_turn};

/// Units of the global cap a claim by `p.node_id` may take: the free ones, and while
/// another node waits for one, no more than its fair room. `released`: the claim follows
/// an end of this node's own in the same transaction (its place in line is now).
pub(super) fn room(
    conn: &Connection,
    p: &JobClaimParams,
    running: &HashMap<String, u32>,
    released: bool,
) -> StoreResult<usize> {
    let free = claim_plan::global_free(p.global_cap, running);
    let fresh = p.now - WAIT_FRESH_MS;
    // Each other waiting node: the units it holds and where its place in line began.
    let waiters: Vec<(i64, Option<i64>)> = conn
        .prepare_cached(
            "SELECT (SELECT COUNT(*) FROM jobs j WHERE j.status = 'running' AND j.node_id = n.id),
                    n.cap_wait_since
             FROM nodes n WHERE n.id <> ?1 AND n.cap_wait_at >= ?2",
        )?
        .query_map(params![p.node_id, fresh], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let Some(fewest) = waiters.iter().map(|(held, _)| *held).min() else {
        return Ok(free);
    };
    let (mine, since): (i64, Option<i64>) = conn
        .prepare_cached(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE status = 'running' AND node_id = ?1),
                    (SELECT cap_wait_since FROM nodes WHERE id = ?1 AND cap_wait_at >= ?2)",
        )?
        .query_row(params![p.node_id, fresh], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let place = if released {
        p.now
    } else {
        since.unwrap_or(p.now)
    };
    let their_turn = waiters
        .iter()
        .any(|(held, since)| *held == fewest && has_turn(*since, place, p.now));
    Ok(free.min(fair_room(mine as usize, fewest as usize, their_turn)))
}

/// What a claim under the global cap found, for [`mark`].
pub(super) struct Waits {
    /// The cap's room was less than the claim wanted and its rooms held.
    pub(super) kept_short: bool,
    /// The pick, made as if the cap had room (a keyed pipeline is offered), took more
    /// than the cap let it keep (a job held back by its key's own cap is never picked).
    pub(super) left_by_cap: bool,
    /// The claim took a unit.
    pub(super) took: bool,
    /// The claim follows an end of this node's own in the same transaction.
    pub(super) released: bool,
}

/// Records whether the claim just made waits for the global cap, and the node's place
/// in line (the rule and why marks are written sparingly: `store::cap_share` and
/// `postgres/cap_tokens.rs`'s `mark`): a ready job remains in one of `offered`'s unkeyed
/// pipelines, or the cap left a keyed one, and the cap kept the claim short → the mark
/// is set (or refreshed once older than `WAIT_REFRESH_MS`), its place in line kept, or
/// begun now when the claim took a unit or released one (an end of its own); none
/// remains → both are cleared; otherwise a claim that took a unit moves the place of a
/// marked node to now.
pub(super) fn mark(
    conn: &Connection,
    p: &JobClaimParams,
    offered: &[(String, usize)],
    waits: Waits,
) -> StoreResult<()> {
    let Waits {
        kept_short,
        left_by_cap,
        took,
        released,
    } = waits;
    let mut ready = conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_ready
                        WHERE status = 'queued' AND pipeline = ?1 AND held = 0 AND run_after <= ?2)",
    )?;
    let mut remain = left_by_cap;
    if !remain {
        for (name, _) in offered
            .iter()
            .filter(|(name, _)| !p.keyed.contains_key(name))
        {
            if ready.query_row(params![name, p.now], |r| r.get::<_, bool>(0))? {
                remain = true;
                break;
            }
        }
    }
    let moved = took || released;
    if kept_short && remain {
        conn.prepare_cached(
            "UPDATE nodes SET cap_wait_at = ?2,
                              cap_wait_since = CASE WHEN ?4 OR cap_wait_since IS NULL THEN ?2 ELSE cap_wait_since END
             WHERE id = ?1 AND (?4 OR cap_wait_since IS NULL OR cap_wait_at IS NULL OR cap_wait_at < ?2 - ?3)",
        )?
        .execute(params![p.node_id, p.now, WAIT_REFRESH_MS, moved])?;
    } else if !remain {
        conn.prepare_cached(
            "UPDATE nodes SET cap_wait_at = NULL, cap_wait_since = NULL
             WHERE id = ?1 AND cap_wait_at IS NOT NULL",
        )?
        .execute(params![p.node_id])?;
    } else if took {
        conn.prepare_cached(
            "UPDATE nodes SET cap_wait_since = ?2 WHERE id = ?1 AND cap_wait_at IS NOT NULL",
        )?
        .execute(params![p.node_id, p.now])?;
    }
    Ok(())
}
