//! Claiming queued jobs on SQLite (the single writer serialises claims, so counting
//! what runs is exact without locks).

use super::*;

pub(super) async fn job_claim(s: &SqliteStore, p: JobClaimParams) -> StoreResult<ClaimOutcome> {
    s.write_now("job_claim", move |conn| Ok((claim_in_tx(conn, &p)?, 0)))
        .await
}

/// Claims queued jobs for a node inside the caller's transaction (see [`Store::job_claim`]).
pub(super) fn claim_in_tx(conn: &Connection, p: &JobClaimParams) -> StoreResult<ClaimOutcome> {
    // A node without a row was declared dead (or has deregistered): it may not claim, so a
    // `running` job always belongs to a registered node or is stranded (see the rescuer).
    let registered = conn
        .prepare_cached("SELECT 1 FROM nodes WHERE id = ?1")?
        .query_row(params![p.node_id], |_| Ok(()))
        .optional()?
        .is_some();
    if !registered {
        return Ok(ClaimOutcome::default());
    }
    // Held jobs that fell due (delayed runs, retries past their backoff) join the claim
    // index: a range of `jobs_held`, nothing when none is due.
    conn.prepare_cached(
        "UPDATE jobs SET held = 0 WHERE seq IN (
             SELECT seq FROM jobs INDEXED BY jobs_held
             WHERE status = 'queued' AND held = 1 AND run_after <= ?1 ORDER BY run_after LIMIT ?2)",
    )?
    .execute(params![p.now, RELEASE_BATCH as i64])?;
    let mut running: HashMap<String, u32> = HashMap::new();
    // Counting running jobs only matters when some cap applies; the single writer
    // serialises the count with the claim.
    if claim_plan::needs_counts(p) {
        let mut stmt = conn.prepare_cached(
            "SELECT pipeline, COUNT(*) FROM jobs WHERE status = 'running' GROUP BY pipeline",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            running.insert(r.get(0)?, r.get(1)?);
        }
    }
    let mut plan = claim_plan::plan(p, &running);
    if !plan.rooms.is_empty() {
        let paused: std::collections::HashSet<String> = conn
            .prepare_cached("SELECT pipeline FROM pipeline_state WHERE paused = 1")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        claim_plan::leave_out_paused(&mut plan, &paused);
    }
    let mut want = plan.want;
    let mut out = ClaimOutcome::default();
    let mut candidates: Vec<(i64, ClaimedJob)> = Vec::new();
    if want > 0 {
        let mut head = conn.prepare_cached(
            "SELECT j.seq, j.id, j.run_id, j.pipeline, j.shard_index, j.shard_count, j.attempt, r.params, j.kind,
                    j.run_after, j.priority
             FROM jobs j INDEXED BY jobs_ready JOIN runs r ON r.id = j.run_id
             WHERE j.status = 'queued' AND j.pipeline = ?1 AND j.held = 0 AND j.run_after <= ?2
             ORDER BY j.priority DESC, j.seq LIMIT ?3",
        )?;
        for (name, room) in &plan.rooms {
            let rows = head.query_map(params![name, p.now, *room as i64], |r| {
                let params: String = r.get(7)?;
                Ok((
                    r.get(0)?,
                    ClaimedJob {
                        id: r.get(1)?,
                        run_id: r.get(2)?,
                        pipeline: r.get(3)?,
                        shard_index: r.get(4)?,
                        shard_count: r.get(5)?,
                        attempt: r.get(6)?,
                        claim_seq: 0,
                        params: serde_json::from_str(&params).unwrap_or_default(),
                        kind: JobKind::from_name(r.get_ref(8)?.as_str()?),
                        due_at: r.get(9)?,
                        priority: r.get(10)?,
                        output_lines: 0,
                    },
                ))
            })?;
            for row in rows {
                candidates.push(row?);
            }
        }
    }
    let mut claim = conn.prepare_cached(
        "UPDATE jobs SET status = 'running', claim_seq = claim_seq + 1, node_id = ?2, claimed_at = ?3,
                pid = NULL, proc_start = NULL, started_at = NULL, exit_code = NULL, abort_requested = 0
         WHERE seq = ?1 AND status = 'queued' RETURNING claim_seq",
    )?;
    for (seq, mut job) in claim_plan::merge(candidates, want) {
        if let Some(claim_seq) = claim
            .query_row(params![seq, p.node_id, p.now], |r| r.get(0))
            .optional()?
        {
            job.claim_seq = claim_seq;
            job.output_lines = output_end(conn, &job.id)?;
            want -= 1;
            out.jobs.push(job);
        }
    }
    if want > 0 {
        out.next_due = conn
            .prepare_cached(
                "SELECT MIN(run_after) FROM jobs INDEXED BY jobs_held WHERE status = 'queued' AND held = 1",
            )?
            .query_row([], |r| r.get(0))?;
    }
    Ok(out)
}
