//! The global cap on PostgreSQL as token rows (`cap_tokens`, migration 0011).
//!
//! **Invariant:** at most `cap` jobs run under the cap at once. Each holds a token: a
//! claim under the cap locks free tokens with `FOR UPDATE SKIP LOCKED` (a token taken and
//! committed after the claim's snapshot fails the `job_seq IS NULL` recheck; one still
//! being taken is skipped), claims at most as many jobs as it locked, and gives each one
//! a token in the same statement; the `jobs_cap_release` trigger frees a job's token in
//! the very transaction that stops it running — an end, a retry, a requeue, an abort —
//! so no path can forget it. Caught by
//! `store_contract::*::concurrent_claimers_never_exceed_the_global_or_a_pipeline_cap`
//! (16 claimers, cap 4) and `…::every_way_a_job_stops_running_frees_its_global_cap_unit`.
//!
//! Why tokens: the cap used to be a count of running jobs under one advisory key, held
//! through the claim's COMMIT (its WAL flush), so every capped claim of every replica
//! queued behind the last one and three replicas claimed a third of what one did.
//! Claimers lock different tokens and queue on nothing.
//!
//! A node applying cap N uses tokens 0..N. Replicas configured with different caps
//! therefore hold the larger one between them, and lowering a cap lets jobs already
//! holding higher tokens finish before it binds fully.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{PgStore, StoreResult, Tx, pg_err};
use crate::store::JobClaimParams;
use crate::store::cap_share::{TURN_MS, WAIT_FRESH_MS, WAIT_REFRESH_MS};

/// The tokens of a cap: created once per store handle and cap (they are never removed;
/// a lower cap leaves the higher ones unused).
#[derive(Default)]
pub(super) struct Tokens {
    /// The largest cap whose tokens this handle has made sure exist.
    ready: AtomicUsize,
}

impl Tokens {
    /// Makes sure tokens `0..cap` exist (once per handle and larger cap), in a statement
    /// of its own that commits before the handle counts them as there. Until they exist,
    /// a claim finds fewer tokens and claims less, never more.
    pub(super) async fn ensure(&self, store: &PgStore, cap: usize) -> StoreResult<()> {
        if cap > self.ready.load(Ordering::Relaxed) {
            read!(store, c => c
                .execute(
                    "INSERT INTO cap_tokens (slot) SELECT generate_series(0, $1::bigint - 1)
                     ON CONFLICT (slot) DO NOTHING",
                    &[&(cap as i64)],
                )
                .await
                .map_err(pg_err)?)?;
            self.ready.fetch_max(cap, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Running jobs holding no token: claimed by a node that does not apply the cap (a
/// rolling config change), or before the cap was set. They count against the cap too
/// (it is over all nodes), so a capped claim leaves that many free tokens unused.
const UNTOKENED: &str =
    "SELECT count(*) AS n FROM jobs WHERE status = 'running' AND cap_slot IS NULL";

/// CTEs of the fused claim under the cap (`$cap`): `untokened` counts the running jobs
/// without a token, [`share`] says how many jobs this claim may take, and `tok` locks
/// that many free tokens beyond the untokened jobs (no more: a token locked and left
/// unused is skipped by every concurrent claim until this one commits). The claim's
/// `LIMIT` is [`CLAIMABLE`], and the picked jobs are paired with `tok` rows by `n`.
/// `released`: the claim follows an end of the node's own.
pub(super) fn locked_tokens(cap_param: usize, released: bool) -> String {
    format!(
        "untokened AS ({UNTOKENED}),
                  {share},
                  tok AS (SELECT slot, row_number() OVER (ORDER BY slot) AS n FROM (
                     SELECT slot FROM cap_tokens WHERE job_seq IS NULL AND slot < ${cap_param}
                     ORDER BY slot LIMIT (SELECT n FROM share) + (SELECT n FROM untokened) FOR UPDATE SKIP LOCKED) t)",
        share = share(1, 2, 4, released)
    )
}

/// CTEs `waiters` and `share` (the rule: `store::cap_share`): the other nodes waiting
/// for a unit (the units each holds, where its place in line began), and the most this
/// claim may take: `$want` while none waits, else up to level with the fewest any
/// waiting node holds, one more unless one of those has its turn (`cap_share::has_turn`:
/// waited `TURN_MS`, and longer than this node, whose place is now when `released` —
/// the claim follows an end of its own — else its own mark's), less the units this node
/// holds. The holdings are read only while a node waits. Parameters by number: the
/// node, now and the claim's want.
pub(super) fn share(node: usize, now: usize, want: usize, released: bool) -> String {
    let place = if released {
        format!("${now}::bigint")
    } else {
        format!(
            "coalesce((SELECT cap_wait_since FROM nodes WHERE id = ${node}
                                 AND cap_wait_at >= ${now}::bigint - {WAIT_FRESH_MS}), ${now}::bigint)"
        )
    };
    format!(
        "waiters AS (SELECT n.cap_wait_since AS since,
                             (SELECT count(*) FROM jobs j WHERE j.status = 'running' AND j.cap_slot IS NOT NULL
                                                           AND j.node_id = n.id) AS held
                      FROM nodes n WHERE n.id <> ${node} AND n.cap_wait_at >= ${now}::bigint - {WAIT_FRESH_MS}),
                  share AS (SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM waiters) THEN ${want}::bigint ELSE GREATEST(0,
                      (SELECT min(held) FROM waiters)
                      + CASE WHEN EXISTS (SELECT 1 FROM waiters w WHERE w.held = (SELECT min(held) FROM waiters)
                                            AND w.since <= ${now}::bigint - {TURN_MS} AND w.since < {place})
                             THEN 0 ELSE 1 END
                      - (SELECT count(*) FROM jobs WHERE status = 'running' AND cap_slot IS NOT NULL
                                                         AND node_id = ${node})) END AS n)"
    )
}

/// A condition of the fused claim's `rooms`: no queue is read when the cap has no unit
/// free for this claim (a claim at the cap costs the token read, not the queue's).
pub(super) const ANY_CLAIMABLE: &str =
    "\n                              AND (SELECT count(*) FROM tok) > (SELECT n FROM untokened)
                              AND (SELECT n FROM share) > 0";

/// How many jobs the fused claim may pick: the tokens it locked, less the running jobs
/// that hold none, at most `$4` and at most its `share`.
pub(super) const CLAIMABLE: &str = "GREATEST(0, LEAST($4, (SELECT count(*) FROM tok) - (SELECT n FROM untokened), (SELECT n FROM share)))";

/// CTEs `waits` and `mark` of the fused claim under the cap: record whether this
/// claim's node waits for the cap (`cap_wait_at`) and its place in line
/// (`cap_wait_since`; the rule: `store::cap_share`). `remain`: a ready job of an
/// `offered` pipeline was not picked (among each one's first heads, one past its room).
/// The node waits when the cap let it take fewer jobs than its rooms held and `$4`
/// allowed, and a job is left: the mark is set, or refreshed once older than
/// [`WAIT_REFRESH_MS`]; its place is kept, or begins now when the claim took a unit
/// (`took`) or follows an end of its own (`released`). With no job left it stops
/// waiting: both are cleared. Otherwise (it got what it asked and more is queued) the
/// mark stays as it is, to lapse unless a short claim refreshes it, and a unit taken
/// moves a marked node's place to now. So a node's row is written when its wait begins
/// or ends, each second while it lasts, and when units change hands under a wait, not
/// on every claim. The row is never waited for: when another claim of the same node
/// holds it, that claim is marking the node. (Rewriting the mark on every claim, under
/// a lock held through COMMIT, made a node's claimers queue on their own row: `store`
/// bench, 3 processes under a cap of 8, 0.70× one process.) `waits` is `MATERIALIZED`:
/// inlined, each of `mark`'s three references to `w.remain` became a scan of its own
/// of the queue's head, four with the pick's (`auto_explain` in the `store` bench).
pub(super) fn mark(released: bool) -> String {
    format!(
        ",
                  waits AS MATERIALIZED (SELECT {CLAIMABLE} < LEAST($4, (SELECT sum(room) FROM offered)) AS short,
                                   EXISTS (SELECT 1 FROM offered q CROSS JOIN LATERAL (
                                       SELECT j.seq FROM jobs j
                                       WHERE j.status = 'queued' AND j.pipeline = q.name AND j.held = false AND j.run_after <= $2
                                       ORDER BY j.priority DESC, j.seq LIMIT q.room + 1) h
                                   WHERE h.seq NOT IN (SELECT seq FROM pick)) AS remain,
                                   EXISTS (SELECT 1 FROM pick) AS took),
                  mark AS (UPDATE nodes SET cap_wait_at = CASE WHEN NOT w.remain THEN NULL
                                                                WHEN w.short THEN $2 ELSE nodes.cap_wait_at END,
                                            cap_wait_since = CASE WHEN NOT w.remain THEN NULL
                                                                  WHEN w.took OR {released} OR nodes.cap_wait_since IS NULL THEN $2
                                                                  ELSE nodes.cap_wait_since END
                           FROM waits w
                           WHERE nodes.id = (SELECT id FROM nodes WHERE id = $1 FOR NO KEY UPDATE SKIP LOCKED)
                             AND CASE WHEN NOT w.remain THEN nodes.cap_wait_at IS NOT NULL
                                      WHEN w.short THEN w.took OR {released} OR nodes.cap_wait_since IS NULL
                                                        OR coalesce(nodes.cap_wait_at < $2 - {WAIT_REFRESH_MS}, true)
                                      ELSE w.took AND nodes.cap_wait_at IS NOT NULL END)"
    )
}

/// The keyed claim's [`mark`], a statement of its own: `waits` (the cap left a job the
/// claim would otherwise have taken) sets or refreshes the node's mark, its place in
/// line kept or begun now when `moved` (the claim took a unit, or follows an end of the
/// node's own); otherwise the mark is cleared. A job held back by its key's own cap is
/// no wait: the pick leaves it out before the cap is applied.
pub(super) async fn mark_alone(
    tx: &Tx,
    p: &JobClaimParams,
    waits: bool,
    moved: bool,
) -> StoreResult<()> {
    tx.exec(
        &format!(
            "UPDATE nodes SET cap_wait_at = CASE WHEN $3::bool THEN $2::bigint END,
                              cap_wait_since = CASE WHEN NOT $3::bool THEN NULL
                                                    WHEN $4::bool OR cap_wait_since IS NULL THEN $2::bigint
                                                    ELSE cap_wait_since END
             WHERE id = (SELECT id FROM nodes WHERE id = $1 FOR NO KEY UPDATE SKIP LOCKED)
               AND CASE WHEN $3::bool THEN $4::bool OR cap_wait_since IS NULL
                                           OR coalesce(cap_wait_at < $2::bigint - {WAIT_REFRESH_MS}, true)
                        ELSE cap_wait_at IS NOT NULL END"
        ),
        &[&p.node_id, &p.now, &waits, &moved],
    )
    .await?;
    Ok(())
}

/// Locks free tokens below `cap` for up to `want` jobs (for the keyed claim, which claims
/// in statements of its own), no more than the node's fair share while another node
/// waits (`released`: the claim follows an end of the node's own): their slots, of
/// which the first [`Locked::usable`] may be given.
pub(super) async fn lock(
    tx: &Tx,
    p: &JobClaimParams,
    want: usize,
    released: bool,
) -> StoreResult<Locked> {
    let rows = tx
        .query(
            &format!(
                "WITH untokened AS ({UNTOKENED}), {share}
                 SELECT slot, (SELECT n FROM untokened) FROM cap_tokens
                 WHERE job_seq IS NULL AND slot < $1
                 ORDER BY slot LIMIT (SELECT n FROM share) + (SELECT n FROM untokened) FOR UPDATE SKIP LOCKED",
                share = share(3, 4, 2, released),
            ),
            &[
                &(p.global_cap as i64),
                &(want as i64),
                &p.node_id,
                &p.now,
            ],
        )
        .await?;
    let untokened = rows.first().map(|r| r.get::<_, i64>(1)).unwrap_or(0) as usize;
    Ok(Locked {
        slots: rows.iter().map(|r| r.get(0)).collect(),
        untokened,
    })
}

/// Tokens locked by [`lock`].
pub(super) struct Locked {
    /// Their slots.
    pub(super) slots: Vec<i64>,
    /// Running jobs holding no token when they were locked.
    untokened: usize,
}

impl Locked {
    /// Jobs these tokens let the claim take.
    pub(super) fn usable(&self) -> usize {
        self.slots.len().saturating_sub(self.untokened)
    }
}

/// Gives the claimed jobs `ids` the locked tokens `slots`, one each, in order.
pub(super) async fn assign(tx: &Tx, slots: &[i64], ids: &[String]) -> StoreResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let slots = &slots[..ids.len()];
    tx.exec(
        "WITH pair AS (SELECT unnest($1::bigint[]) AS slot, unnest($2::text[]) AS id),
              held AS (UPDATE jobs j SET cap_slot = pair.slot FROM pair WHERE j.id = pair.id
                       RETURNING j.seq, j.cap_slot)
         UPDATE cap_tokens t SET job_seq = held.seq FROM held WHERE t.slot = held.cap_slot",
        &[&slots, &ids],
    )
    .await?;
    Ok(())
}
