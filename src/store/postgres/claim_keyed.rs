//! Claiming on PostgreSQL when a pipeline has a `concurrency_key`: the same steps as the
//! one-statement claim, one statement each, so the heads of each key can be read
//! round-robin and the claim picked by the shared rule (`claim_plan::pick`: fair over
//! keys, no key past its cap). The caller holds the cap keys of every keyed pipeline,
//! so the per-key counts cannot go stale before this claim commits.

use std::collections::HashMap;

use super::{PgStore, StoreResult, Tx, in_tx};
use crate::model::JobKind;
use crate::store::claim_plan::{self, Candidate, ClaimPlan};
use crate::store::{ClaimOutcome, ClaimedJob, JobClaimParams};

/// Held jobs one claim releases at most (as in the one-statement claim).
const RELEASE_BATCH: i64 = 1000;

const HEAD_COLUMNS: &str =
    "j.seq, j.id, j.run_id, j.pipeline, j.shard_index, j.shard_count, j.attempt,
                            r.params, j.kind, j.run_after, j.priority, r.after_when IS NOT NULL";

fn candidate(r: &tokio_postgres::Row) -> Candidate {
    let params: String = r.get(7);
    let kind: String = r.get(8);
    Candidate {
        seq: r.get(0),
        job: ClaimedJob {
            id: r.get(1),
            run_id: r.get(2),
            pipeline: r.get(3),
            shard_index: r.get::<_, i64>(4) as u32,
            shard_count: r.get::<_, i64>(5) as u32,
            attempt: r.get::<_, i64>(6) as u32,
            claim_seq: 0,
            params: serde_json::from_str(&params).unwrap_or_default(),
            kind: JobKind::from_name(&kind),
            due_at: r.get(9),
            priority: r.get::<_, i64>(10) as i32,
            output_lines: 0,
            has_needs: r.get(11),
        },
        key: None,
    }
}

/// Claims for `p` under `plan` (counts taken under the cap keys), at most `take` jobs
/// when the global cap limits it; also says whether the cap left a job this claim would
/// otherwise have taken (the node waits for the cap, not for a key's own cap).
pub(super) async fn claim(
    tx: &Tx,
    p: &JobClaimParams,
    mut plan: ClaimPlan,
    take: Option<usize>,
) -> StoreResult<(ClaimOutcome, bool)> {
    // A node without a row may not claim (as in the one-statement claim).
    if tx
        .query_opt(
            "SELECT 1 FROM nodes WHERE id = $1 FOR KEY SHARE",
            &[&p.node_id],
        )
        .await?
        .is_none()
    {
        return Ok((ClaimOutcome::default(), false));
    }
    tx.exec(
        "UPDATE jobs SET held = false WHERE seq IN (
             SELECT seq FROM jobs WHERE status = 'queued' AND held AND run_after <= $1
             ORDER BY run_after LIMIT $2 FOR UPDATE SKIP LOCKED)",
        &[&p.now, &RELEASE_BATCH],
    )
    .await?;
    let paused: std::collections::HashSet<String> = tx
        .query("SELECT pipeline FROM pipeline_state WHERE paused", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    claim_plan::leave_out_paused(&mut plan, &paused);
    let mut running_by_key: HashMap<(String, String), u32> = HashMap::new();
    for r in tx
        .query(
            "SELECT pipeline, ckey, count(*) FROM jobs
             WHERE status = 'running' AND ckey IS NOT NULL GROUP BY pipeline, ckey",
            &[],
        )
        .await?
    {
        running_by_key.insert((r.get(0), r.get(1)), r.get::<_, i64>(2) as u32);
    }
    let mut candidates = Vec::new();
    let mut keys_of: HashMap<i64, String> = HashMap::new();
    let mut scans = Vec::new();
    if plan.want > 0 {
        for (name, room) in &plan.rooms {
            match p.keyed.get(name) {
                Some(cap) => {
                    let mut keyed = Vec::new();
                    let order =
                        keyed_heads(tx, p, name, *room, *cap, &running_by_key, &mut keyed).await?;
                    for c in &keyed {
                        keys_of.insert(c.seq, c.key.clone().unwrap_or_default());
                    }
                    candidates.extend(keyed);
                    scans.push((name.clone(), order));
                }
                None => {
                    let rows = tx
                        .query(
                            &format!(
                                "SELECT {HEAD_COLUMNS} FROM jobs j JOIN runs r ON r.id = j.run_id
                                 WHERE j.status = 'queued' AND j.pipeline = $1 AND NOT j.held
                                       AND j.run_after <= $2
                                 ORDER BY j.priority DESC, j.seq LIMIT $3 FOR UPDATE OF j SKIP LOCKED"
                            ),
                            &[name, &p.now, &(*room as i64)],
                        )
                        .await?;
                    candidates.extend(rows.iter().map(candidate));
                }
            }
        }
    }
    let mut picked = claim_plan::pick(candidates, p, &plan, &running_by_key);
    let want = take.map_or(plan.want, |n| plan.want.min(n));
    // The pick is in order of preference: the cap takes its head.
    let left_for_cap = picked.len() > want;
    picked.truncate(want);
    for (pipeline, order) in &scans {
        claim_plan::scanned(pipeline, order, &picked, &keys_of);
    }
    let mut out = ClaimOutcome::default();
    if !picked.is_empty() {
        let seqs: Vec<i64> = picked.iter().map(|(seq, _)| *seq).collect();
        let claimed: HashMap<i64, (i64, i64)> = tx
            .query(
                "UPDATE jobs SET status = 'running', claim_seq = claim_seq + 1, node_id = $1,
                        claimed_at = $2, pid = NULL, proc_start = NULL, started_at = NULL,
                        exit_code = NULL, abort_requested = false, held = false, cap_slot = NULL
                 WHERE seq = ANY($3) AND status = 'queued'
                 RETURNING seq, claim_seq, output_lines",
                &[&p.node_id, &p.now, &seqs],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
        for (seq, mut job) in picked {
            if let Some((claim_seq, lines)) = claimed.get(&seq) {
                job.claim_seq = *claim_seq;
                job.output_lines = *lines;
                out.jobs.push(job);
            }
        }
    }
    if out.jobs.len() < want || want == 0 {
        out.next_due = super::claim::next_due(tx).await?;
    }
    Ok((out, left_for_cap))
}

/// The heads of a keyed pipeline, key by key round-robin from where the last claim
/// stopped, each key's up to its room under the per-key cap; returns the keys in the
/// order they were looked at. (As on SQLite: `store/sqlite/claim.rs`.)
async fn keyed_heads(
    tx: &Tx,
    p: &JobClaimParams,
    pipeline: &str,
    room: usize,
    cap: u32,
    running_by_key: &HashMap<(String, String), u32>,
    out: &mut Vec<Candidate>,
) -> StoreResult<Vec<String>> {
    let mut scan = claim_plan::KeyScan::new(pipeline);
    let mut order: Vec<String> = Vec::new();
    let mut contributing = 0;
    loop {
        let found: Option<String> = match scan.after() {
            None => tx
                .query_opt(
                    "SELECT ckey FROM jobs WHERE status = 'queued' AND NOT held AND ckey IS NOT NULL
                     AND pipeline = $1 ORDER BY ckey LIMIT 1",
                    &[&pipeline],
                )
                .await?
                .map(|r| r.get(0)),
            Some(k) => tx
                .query_opt(
                    "SELECT ckey FROM jobs WHERE status = 'queued' AND NOT held AND ckey IS NOT NULL
                     AND pipeline = $1 AND ckey > $2 ORDER BY ckey LIMIT 1",
                    &[&pipeline, &k],
                )
                .await?
                .map(|r| r.get(0)),
        };
        let key = match scan.next(found) {
            claim_plan::ScanStep::Key(k) => k,
            claim_plan::ScanStep::Again => continue,
            claim_plan::ScanStep::Done => break,
        };
        let running = running_by_key
            .get(&(pipeline.to_string(), key.clone()))
            .copied()
            .unwrap_or(0);
        let n = claim_plan::key_room(cap, running, room);
        if n > 0 {
            let rows = tx
                .query(
                    &format!(
                        "SELECT {HEAD_COLUMNS} FROM jobs j JOIN runs r ON r.id = j.run_id
                         WHERE j.status = 'queued' AND NOT j.held AND j.ckey IS NOT NULL
                               AND j.pipeline = $1 AND j.ckey = $2 AND j.run_after <= $3
                         ORDER BY j.priority DESC, j.seq LIMIT $4 FOR UPDATE OF j SKIP LOCKED"
                    ),
                    &[&pipeline, &key, &p.now, &(n as i64)],
                )
                .await?;
            contributing += usize::from(!rows.is_empty());
            out.extend(rows.iter().map(|r| Candidate {
                key: Some(key.clone()),
                ..candidate(r)
            }));
        }
        order.push(key);
        if claim_plan::scan_done(order.len(), contributing, room) {
            break;
        }
    }
    Ok(order)
}

/// See [`crate::store::Store::jobs_adopt_key`].
pub(super) async fn jobs_adopt_key(s: &PgStore, pipeline: &str) -> StoreResult<u64> {
    in_tx!(s, "jobs_adopt_key", tx => {
        tx.exec(
            "UPDATE jobs SET ckey = '' WHERE pipeline = $1 AND status = 'queued' AND ckey IS NULL",
            &[&pipeline],
        )
        .await?
    })
}
