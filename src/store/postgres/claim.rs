//! Claiming queued jobs on PostgreSQL: one statement when no cap applies.
//!
//! The statement checks the node is still registered (`FOR KEY SHARE`, so a rescuer
//! cannot delete it until the claim commits, and its requeue then sees these jobs),
//! moves held jobs that fell due into the claim index, picks the best queued jobs of
//! each pipeline with room (`FOR UPDATE SKIP LOCKED`: two claimers never take one job),
//! merges them by priority and queue order, and marks them `running` under a new claim.
//! A claim under a pipeline cap first takes the pipeline's advisory key and counts what
//! runs, so two claimers cannot both count the same free room; the claim statement
//! follows. The global cap takes no key: the claim statement locks free cap tokens and
//! gives each job it claims one (`cap_tokens.rs`), no more than its fair room while
//! another node waits for one, and records whether it waits itself (`store::cap_share`).

use std::collections::HashMap;

use tokio_postgres::types::ToSql;

use super::cap_tokens;
use super::rows::Rows;
use super::{PgStore, StoreResult, Tx, in_tx};
use crate::model::JobKind;
use crate::store::{ClaimOutcome, ClaimedJob, JobClaimParams, claim_plan};

/// Held jobs one claim releases at most (as on SQLite).
const RELEASE_BATCH: i64 = 1000;
/// An advisory lock key of this schema (advisory locks are per database, not per schema).
const LOCK_KEY: &str = "SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || $1, 0))";
/// The same key, only if it is free now: true when granted.
const TRY_LOCK_KEY: &str =
    "SELECT pg_try_advisory_xact_lock(hashtextextended(current_schema() || $1, 0))";

/// Whether a claim may wait for the cap keys.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum CapWait {
    /// A plain claim: it holds no row locks, so it queues for the keys.
    Wait,
    /// The follow-up claim of a finish: it holds its job and run rows, and its job still
    /// counts as running until it commits, so it never queues behind other claims (a
    /// convoy: finished jobs filling the cap while they wait). Keys taken → it claims;
    /// keys busy → it claims nothing, and the node's claim loop refills the slot.
    Try,
}

impl Tx {
    /// Takes one cap key; false when `CapWait::Try` found it held.
    async fn cap_key(&self, key: &str, wait: CapWait) -> StoreResult<bool> {
        if wait == CapWait::Wait {
            self.exec(LOCK_KEY, &[&key]).await?;
            return Ok(true);
        }
        Ok(self
            .query_opt(TRY_LOCK_KEY, &[&key])
            .await?
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false))
    }
}

/// Claims queued jobs inside the open transaction (see [`crate::store::Store::job_claim`]).
pub(super) async fn claim_in_tx(
    tx: &Tx,
    p: &JobClaimParams,
    wait: CapWait,
) -> StoreResult<ClaimOutcome> {
    let mut running: HashMap<String, u32> = HashMap::new();
    let mut capped: Vec<&String> = p
        .pipelines
        .iter()
        .filter(|(name, cap)| **cap > 0 || p.keyed.contains_key(*name))
        .map(|(name, _)| name)
        .collect();
    if !capped.is_empty() {
        // Serialise the count with every other claim that counts the same pipeline, one
        // key per capped pipeline in a fixed (sorted) order, so claims never deadlock.
        capped.sort();
        for name in capped {
            if !tx.cap_key(&format!("/runyard/cap/{name}"), wait).await? {
                return Ok(ClaimOutcome::default());
            }
        }
        // A new statement after the keys: it sees every earlier holder's commit.
        for r in tx
            .query(
                "SELECT pipeline, count(*) FROM jobs WHERE status = 'running' GROUP BY pipeline",
                &[],
            )
            .await?
        {
            running.insert(r.get(0), r.get::<_, i64>(1) as u32);
        }
    }
    // The global cap is met by tokens, not by this count. The follow-up claim of a
    // finish (`Try`) comes after an end of the node's own: its place in line is now.
    let released = wait == CapWait::Try;
    let plan = claim_plan::plan(p, &running);
    if plan
        .rooms
        .iter()
        .any(|(name, _)| p.keyed.contains_key(name))
    {
        return claim_keyed_capped(tx, p, plan, released).await;
    }
    let mut rooms = Rows::new(&[("name", "text"), ("room", "bigint")]);
    for (name, room) in &plan.rooms {
        rooms.push(vec![Box::new(name.clone()), Box::new(*room as i64)]);
    }
    let rooms_sql = if rooms.len() == 0 {
        "(SELECT NULL::text, NULL::bigint WHERE false) AS q(name, room)".to_string()
    } else {
        rooms.sql("q", 5)
    };
    let want = plan.want as i64;
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&p.node_id, &p.now, &RELEASE_BATCH, &want];
    params.extend(rooms.params());
    // Held jobs that fell due are candidates as they are (from their own index, by due
    // time), and the rest of them are released into the claim index (`due`: disjoint
    // from the picked rows, as one statement may not update a row twice); rows another
    // claim is releasing are skipped, not waited for. `claimed` updates the picked rows by
    // `seq` alone: they are locked `FOR UPDATE` with their `status = 'queued'` rechecked,
    // so they are still queued; a status condition there let the planner drive the update
    // from the queue's partial index (`jobs_ready`), every queued job against every
    // picked one, whenever stale statistics said the queue was nearly empty
    // (`auto_explain` in `throughput`: 4 ms for 7 jobs among 400 queued).
    let global_cap = p.global_cap as i64;
    if p.global_cap > 0 {
        params.push(&global_cap);
    }
    // Under the global cap: lock free tokens (`tok`), pick no more jobs than tokens, pair
    // them in claim order, and mark each token held by its job.
    let (tokens, guard, limit, pair, slot, hold) = if p.global_cap > 0 {
        (
            format!("{},\n", cap_tokens::locked_tokens(params.len(), released)),
            cap_tokens::ANY_CLAIMABLE,
            cap_tokens::CLAIMABLE,
            "pair AS (SELECT p.seq, tok.slot FROM (SELECT seq, row_number() OVER (ORDER BY priority DESC, seq) AS n
                                                 FROM pick) p JOIN tok ON tok.n = p.n),",
            "pair.slot",
            format!(
                ",\n                  hold AS (UPDATE cap_tokens t SET job_seq = c.seq FROM claimed c WHERE t.slot = c.cap_slot){}",
                cap_tokens::mark(released)
            ),
        )
    } else {
        (
            String::new(),
            "",
            "$4",
            "pair AS (SELECT seq, NULL::bigint AS slot FROM pick),",
            "NULL",
            String::new(),
        )
    };
    let rows = tx
        .query(
            &format!("WITH {tokens}me AS (SELECT 1 FROM nodes WHERE id = $1 FOR KEY SHARE),
                  offered AS (SELECT q.name, q.room FROM {rooms_sql}
                              WHERE EXISTS (SELECT 1 FROM me)
                                AND NOT EXISTS (SELECT 1 FROM pipeline_state ps
                                                WHERE ps.pipeline = q.name AND ps.paused)),
                  rooms AS (SELECT name, room FROM offered WHERE true{guard}),
                  ready AS (SELECT c.seq, c.priority FROM rooms q CROSS JOIN LATERAL (
                                SELECT j.seq, j.priority FROM jobs j
                                WHERE j.status = 'queued' AND j.pipeline = q.name AND j.held = false
                                      AND j.run_after <= $2
                                ORDER BY j.priority DESC, j.seq LIMIT q.room
                                FOR UPDATE SKIP LOCKED) c),
                  ripe AS (SELECT c.seq, c.priority FROM rooms q CROSS JOIN LATERAL (
                               SELECT j.seq, j.priority FROM jobs j
                               WHERE j.status = 'queued' AND j.held AND j.run_after <= $2 AND j.pipeline = q.name
                               ORDER BY j.run_after LIMIT q.room
                               FOR UPDATE SKIP LOCKED) c),
                  cand AS (SELECT seq, priority FROM ready UNION ALL SELECT seq, priority FROM ripe),
                  pick AS (SELECT seq, priority FROM cand ORDER BY priority DESC, seq LIMIT {limit}),
                  {pair}
                  due AS (UPDATE jobs SET held = false WHERE EXISTS (SELECT 1 FROM me) AND seq IN (
                              SELECT seq FROM jobs WHERE status = 'queued' AND held AND run_after <= $2
                              ORDER BY run_after LIMIT $3 FOR UPDATE SKIP LOCKED)
                            AND seq NOT IN (SELECT seq FROM pick)),
                  claimed AS (
                      UPDATE jobs j SET status = 'running', claim_seq = j.claim_seq + 1, node_id = $1,
                             claimed_at = $2, pid = NULL, proc_start = NULL, started_at = NULL,
                             exit_code = NULL, abort_requested = false, held = false, cap_slot = {slot}
                      FROM pair WHERE j.seq = pair.seq
                      RETURNING j.seq, j.id, j.run_id, j.pipeline, j.shard_index, j.shard_count, j.attempt,
                                j.kind, j.run_after, j.priority, j.claim_seq, j.output_lines, j.cap_slot){hold}
             SELECT c.id, c.run_id, c.pipeline, c.shard_index, c.shard_count, c.attempt, r.params, c.kind,
                    c.run_after, c.priority, c.claim_seq, c.output_lines, r.after_when IS NOT NULL
             FROM claimed c JOIN runs r ON r.id = c.run_id
             ORDER BY c.priority DESC, c.seq"),
            &params,
        )
        .await?;
    let mut out = ClaimOutcome {
        jobs: rows
            .iter()
            .map(|r| {
                let params: String = r.get(6);
                let kind: String = r.get(7);
                ClaimedJob {
                    id: r.get(0),
                    run_id: r.get(1),
                    pipeline: r.get(2),
                    shard_index: r.get::<_, i64>(3) as u32,
                    shard_count: r.get::<_, i64>(4) as u32,
                    attempt: r.get::<_, i64>(5) as u32,
                    claim_seq: r.get(10),
                    params: serde_json::from_str(&params).unwrap_or_default(),
                    kind: JobKind::from_name(&kind),
                    due_at: r.get(8),
                    priority: r.get::<_, i64>(9) as i32,
                    output_lines: r.get(11),
                    has_needs: r.get(12),
                }
            })
            .collect(),
        next_due: None,
    };
    if out.jobs.len() < plan.want || plan.want == 0 {
        out.next_due = next_due(tx).await?;
    }
    Ok(out)
}

/// When the earliest held job falls due (a claim that took less than it asked says so,
/// so its loop wakes then).
pub(super) async fn next_due(tx: &Tx) -> StoreResult<Option<i64>> {
    Ok(tx
        .query_opt(
            "SELECT min(run_after) FROM jobs WHERE status = 'queued' AND held",
            &[],
        )
        .await?
        .and_then(|r| r.get::<_, Option<i64>>(0)))
}

/// The keyed claim (statements of its own) under the global cap: locks free tokens
/// first, claims at most that many, gives them to what it claimed, and records whether
/// the node waits for the cap (its pick without the cap would have taken more).
async fn claim_keyed_capped(
    tx: &Tx,
    p: &JobClaimParams,
    plan: claim_plan::ClaimPlan,
    released: bool,
) -> StoreResult<ClaimOutcome> {
    if p.global_cap == 0 {
        return Ok(super::claim_keyed::claim(tx, p, plan, None).await?.0);
    }
    let tokens = cap_tokens::lock(tx, p, plan.want, released).await?;
    let (out, waits) = super::claim_keyed::claim(tx, p, plan, Some(tokens.usable())).await?;
    let ids: Vec<String> = out.jobs.iter().map(|j| j.id.clone()).collect();
    cap_tokens::assign(tx, &tokens.slots, &ids).await?;
    cap_tokens::mark_alone(tx, p, waits, !out.jobs.is_empty() || released).await?;
    Ok(out)
}

pub(super) async fn job_claim(s: &PgStore, p: JobClaimParams) -> StoreResult<ClaimOutcome> {
    s.cap_tokens.ensure(s, p.global_cap).await?;
    in_tx!(s, "job_claim", tx => claim_in_tx(tx, &p, CapWait::Wait).await?)
}
