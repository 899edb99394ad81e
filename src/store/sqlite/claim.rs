//! Claiming queued jobs on SQLite (the single writer serialises claims, so counting
//! what runs is exact without locks).

use super::*;

pub(super) async fn job_claim(s: &SqliteStore, p: JobClaimParams) -> StoreResult<ClaimOutcome> {
    s.write_now("job_claim", move |conn| {
        Ok((claim_in_tx(conn, &p, false)?, 0))
    })
    .await
}

/// See [`Store::jobs_adopt_key`].
pub(super) async fn jobs_adopt_key(s: &SqliteStore, pipeline: &str) -> StoreResult<u64> {
    let pipeline = pipeline.to_string();
    s.write("jobs_adopt_key", move |conn| {
        let n = conn
            .prepare_cached(
                "UPDATE jobs SET ckey = '' WHERE pipeline = ?1 AND status = 'queued' AND ckey IS NULL",
            )?
            .execute(params![pipeline])?;
        Ok((n as u64, 0))
    })
    .await
}

/// Claims queued jobs for a node inside the caller's transaction (see [`Store::job_claim`]);
/// `released`: the claim follows an end of the node's own (its place in line for the
/// global cap is then now, `store::cap_share`).
pub(super) fn claim_in_tx(
    conn: &Connection,
    p: &JobClaimParams,
    released: bool,
) -> StoreResult<ClaimOutcome> {
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
    let mut running_by_key: HashMap<(String, String), u32> = HashMap::new();
    if !p.keyed.is_empty() {
        let mut stmt = conn.prepare_cached(
            "SELECT pipeline, ckey, COUNT(*) FROM jobs
             WHERE status = 'running' AND ckey IS NOT NULL GROUP BY pipeline, ckey",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            running_by_key.insert((r.get(0)?, r.get(1)?), r.get(2)?);
        }
    }
    // The global cap is applied apart: its room may be a fair share (`cap_waits`), and
    // whether it kept the claim short is recorded.
    let mut plan = claim_plan::plan(p, &running);
    if !plan.rooms.is_empty() {
        let paused: std::collections::HashSet<String> = conn
            .prepare_cached("SELECT pipeline FROM pipeline_state WHERE paused = 1")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        claim_plan::leave_out_paused(&mut plan, &paused);
    }
    let offered = plan.rooms.clone();
    let wanted = plan.want.min(offered.iter().map(|(_, room)| room).sum());
    let cap_room = if p.global_cap > 0 {
        Some(cap_waits::room(conn, p, &running, released)?)
    } else {
        None
    };
    // A keyed pipeline under the cap is read as if the cap had room, and the cap takes
    // the head of the pick: whether the cap, and not a key's own cap, left a job behind
    // is known only once the keys are picked (`cap_waits::mark`).
    let keyed_capped =
        cap_room.is_some() && offered.iter().any(|(name, _)| p.keyed.contains_key(name));
    if let Some(room) = cap_room
        && !keyed_capped
    {
        plan.limit(room);
    }
    let cap_take = cap_room.map_or(plan.want, |room| plan.want.min(room));
    let mut want = cap_take;
    let mut out = ClaimOutcome::default();
    let mut candidates: Vec<claim_plan::Candidate> = Vec::new();
    let mut keys_of: HashMap<i64, String> = HashMap::new();
    let mut scans: Vec<(String, Vec<String>)> = Vec::new();
    if plan.want > 0 {
        let mut head = conn.prepare_cached(
            "SELECT j.seq, j.id, j.run_id, j.pipeline, j.shard_index, j.shard_count, j.attempt, r.params, j.kind,
                    j.run_after, j.priority, r.after_when IS NOT NULL
             FROM jobs j INDEXED BY jobs_ready JOIN runs r ON r.id = j.run_id
             WHERE j.status = 'queued' AND j.pipeline = ?1 AND j.held = 0 AND j.run_after <= ?2
             ORDER BY j.priority DESC, j.seq LIMIT ?3",
        )?;
        for (name, room) in &plan.rooms {
            if let Some(cap) = p.keyed.get(name) {
                let mut keyed = Vec::new();
                let order = keyed_heads(conn, p, name, *room, *cap, &running_by_key, &mut keyed)?;
                for c in &keyed {
                    keys_of.insert(c.seq, c.key.clone().unwrap_or_default());
                }
                candidates.extend(keyed);
                scans.push((name.clone(), order));
                continue;
            }
            let rows = head.query_map(params![name, p.now, *room as i64], candidate)?;
            for row in rows {
                candidates.push(claim_plan::Candidate { key: None, ..row? });
            }
        }
    }
    // `OR FAIL`: no statement journal (the module docs of `sqlite`).
    let mut claim = conn.prepare_cached(
        "UPDATE OR FAIL jobs SET status = 'running', claim_seq = claim_seq + 1, node_id = ?2, claimed_at = ?3,
                pid = NULL, proc_start = NULL, started_at = NULL, exit_code = NULL, abort_requested = 0
         WHERE seq = ?1 AND status = 'queued' RETURNING claim_seq",
    )?;
    let mut picked = claim_plan::pick(candidates, p, &plan, &running_by_key);
    let left_by_cap = picked.len() > cap_take;
    picked.truncate(cap_take);
    for (pipeline, order) in &scans {
        claim_plan::scanned(pipeline, order, &picked, &keys_of);
    }
    for (seq, mut job) in picked {
        if let Some(claim_seq) = claim
            .query_row(params![seq, p.node_id, p.now], |r| r.get(0))
            .optional()?
        {
            job.claim_seq = claim_seq;
            // Output is appended only under a claim: a job's first claim finds none.
            job.output_lines = if claim_seq > 1 {
                output_end(conn, &job.id)?
            } else {
                0
            };
            want -= 1;
            out.jobs.push(job);
        }
    }
    if let Some(room) = cap_room {
        let took = !out.jobs.is_empty();
        let waits = cap_waits::Waits {
            kept_short: room < wanted,
            left_by_cap,
            took,
            released,
        };
        cap_waits::mark(conn, p, &offered, waits)?;
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

/// One row of a head query (`seq, id, run_id, pipeline, shard_index, shard_count,
/// attempt, params, kind, run_after, priority, has needs`) as a candidate without a key.
fn candidate(r: &rusqlite::Row<'_>) -> rusqlite::Result<claim_plan::Candidate> {
    let params: String = r.get(7)?;
    Ok(claim_plan::Candidate {
        seq: r.get(0)?,
        job: ClaimedJob {
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
            has_needs: r.get(11)?,
        },
        key: None,
    })
}

/// The heads of a keyed pipeline, key by key round-robin from where the last claim
/// stopped (`key_scan::scan_start`), each key's up to its room under the per-key cap;
/// returns the keys in the order they were looked at.
fn keyed_heads(
    conn: &Connection,
    p: &JobClaimParams,
    pipeline: &str,
    room: usize,
    cap: u32,
    running_by_key: &HashMap<(String, String), u32>,
    out: &mut Vec<claim_plan::Candidate>,
) -> StoreResult<Vec<String>> {
    let mut first = conn.prepare_cached(
        "SELECT ckey FROM jobs INDEXED BY jobs_keyed
         WHERE status = 'queued' AND held = 0 AND ckey IS NOT NULL AND pipeline = ?1
         ORDER BY ckey LIMIT 1",
    )?;
    let mut after = conn.prepare_cached(
        "SELECT ckey FROM jobs INDEXED BY jobs_keyed
         WHERE status = 'queued' AND held = 0 AND ckey IS NOT NULL AND pipeline = ?1 AND ckey > ?2
         ORDER BY ckey LIMIT 1",
    )?;
    let mut heads = conn.prepare_cached(
        "SELECT j.seq, j.id, j.run_id, j.pipeline, j.shard_index, j.shard_count, j.attempt, r.params, j.kind,
                j.run_after, j.priority, r.after_when IS NOT NULL
         FROM jobs j INDEXED BY jobs_keyed JOIN runs r ON r.id = j.run_id
         WHERE j.status = 'queued' AND j.held = 0 AND j.ckey IS NOT NULL AND j.pipeline = ?1
               AND j.ckey = ?2 AND j.run_after <= ?3
         ORDER BY j.priority DESC, j.seq LIMIT ?4",
    )?;
    let mut scan = claim_plan::KeyScan::new(pipeline);
    let mut order: Vec<String> = Vec::new();
    let mut contributing = 0;
    loop {
        let found: Option<String> = match scan.after() {
            None => first
                .query_row(params![pipeline], |r| r.get(0))
                .optional()?,
            Some(k) => after
                .query_row(params![pipeline, k], |r| r.get(0))
                .optional()?,
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
            let mut found = false;
            for row in heads.query_map(params![pipeline, key, p.now, n as i64], candidate)? {
                out.push(claim_plan::Candidate {
                    key: Some(key.clone()),
                    ..row?
                });
                found = true;
            }
            contributing += usize::from(found);
        }
        order.push(key);
        if claim_plan::scan_done(order.len(), contributing, room) {
            break;
        }
    }
    Ok(order)
}
