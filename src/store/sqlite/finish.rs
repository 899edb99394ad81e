//! Ending an execution on SQLite: the fenced read, the rules' decision, the write, and
//! the run's landing ([`super::completion`]).

use super::*;

pub(super) async fn job_finish(s: &SqliteStore, p: JobFinishParams) -> StoreResult<FinishOutcome> {
    let job_id = p.job_id.clone();
    let outcome = if p.lingers {
        s.write_lingering("job_finish", move |conn| finish_in_tx(conn, &p))
            .await?
    } else {
        s.write_now("job_finish", move |conn| finish_in_tx(conn, &p))
            .await?
    };
    if outcome.applied {
        s.feed.bump_job_state([job_id.as_str()]);
    }
    Ok(outcome)
}

pub(super) fn fence_row(conn: &Connection, job_id: &str) -> StoreResult<Option<JobFence>> {
    Ok(conn
        .prepare_cached(
            "SELECT status, claim_seq, attempt, max_attempts, retry_backoff_ms, abort_requested, orphan_requeues,
                    max_orphan_requeues, on_orphan, run_id, pipeline, shard_index, kind, retry_on FROM jobs WHERE id = ?1",
        )?
        .query_row(params![job_id], |r| {
            Ok(JobFence {
                status: r.get(0)?,
                claim_seq: r.get(1)?,
                attempt: r.get(2)?,
                max_attempts: r.get(3)?,
                retry_backoff_ms: r.get(4)?,
                abort_requested: r.get(5)?,
                orphan_requeues: r.get(6)?,
                max_orphan_requeues: r.get(7)?,
                on_orphan: r.get(8)?,
                run_id: r.get(9)?,
                pipeline: r.get(10)?,
                shard_index: r.get(11)?,
                kind: JobKind::from_name(r.get_ref(12)?.as_str()?),
                retry_on: RetryOn::from_column(r.get_ref(13)?.as_str_or_null()?),
            })
        })
        .optional()?)
}

/// Ends an execution and, when asked, claims follow-up work for the freed slot in the same
/// transaction, so one commit both frees and refills the slot.
pub(super) fn finish_in_tx(
    conn: &Connection,
    p: &JobFinishParams,
) -> StoreResult<(FinishOutcome, u8)> {
    // A job that ended before its start was recorded gets both in this one transaction,
    // `job:started` first.
    if let Some(start) = &p.start {
        start_in_tx(conn, start)?;
    }
    let (mut out, mut kinds, pipeline) = finish_fenced(conn, p)?;
    if let Some(claim) = &p.claim_next {
        out.next = claim_in_tx(conn, claim, true)?.jobs;
    }
    let stopped = pipeline.as_deref().zip(out.status);
    if refill::wakes_claimers(stopped, p.claim_next.as_ref(), &out.next) {
        kinds |= change::WORK;
    }
    Ok((out, kinds))
}

/// The fenced end: its answer, the change kinds of the work it queued, and the pipeline
/// of the job it stopped (none when the end was stale).
fn finish_fenced(
    conn: &Connection,
    p: &JobFinishParams,
) -> StoreResult<(FinishOutcome, u8, Option<String>)> {
    let not_applied = FinishOutcome {
        applied: false,
        status: None,
        run_finalized: None,
        next: Vec::new(),
    };
    let Some(row) = fence_row(conn, &p.job_id)? else {
        return Ok((not_applied, 0, None));
    };
    if !row.is_held_by(p.claim_seq) {
        return Ok((not_applied, 0, None));
    }
    let t = decide(&row, &p.outcome, p.exit_code, p.now);
    let error = outcome_error(&p.outcome);
    let terminal = t.status.is_terminal();
    let changed = conn
        .prepare_cached(
            "UPDATE jobs SET status = ?3, reason = ?4, attempt = ?5, orphan_requeues = ?6, run_after = ?7,
                    exit_code = ?8, error = ?9, stdout_bytes = ?10, stderr_bytes = ?11, truncated = ?12,
                    finished_at = CASE WHEN ?13 THEN ?14 ELSE NULL END, result = ?15, held = ?16
             WHERE id = ?1 AND claim_seq = ?2 AND status = 'running'",
        )?
        .execute(params![
            p.job_id,
            p.claim_seq,
            t.status.as_str(),
            t.reason.map(|r| r.as_str()),
            t.attempt,
            t.orphan_requeues,
            t.run_after,
            p.exit_code,
            error,
            p.stdout_bytes as i64,
            p.stderr_bytes as i64,
            p.truncated,
            terminal,
            p.now,
            p.result,
            t.status == JobStatus::Queued && claim_plan::held(t.run_after, p.now),
        ])?;
    if changed != 1 {
        return Ok((not_applied, 0, None));
    }
    emit(
        conn,
        payload::job_ended(&p.job_id, &row, &t, p.exit_code, error.as_deref()),
        p.now,
    )?;
    let landed = if terminal && row.kind == JobKind::Finalize {
        finalizer_ended(conn, &row.run_id, t.status, p.now)?
    } else if terminal {
        land_terminal(conn, &row.run_id, t.status, p.now)?
    } else {
        Landed::Open
    };
    // Work this end queued (a finalizer, runs released by the run's end) wakes claimers
    // whatever the fused claim takes; the units it freed, per [`refill`].
    let queued_work = landed.queued_work();
    let outcome = FinishOutcome {
        applied: true,
        status: Some(t.status),
        run_finalized: landed.status(),
        next: Vec::new(),
    };
    Ok((
        outcome,
        change::EVENTS | if queued_work { change::WORK } else { 0 },
        Some(row.pipeline),
    ))
}
