//! Runs on SQLite: creating one (idempotent by key; a re-run's kept shards copied) and
//! aborting one. Pruning old ones is `prune.rs`.

use super::*;

pub(super) async fn run_create(s: &SqliteStore, p: RunCreateParams) -> StoreResult<RunCreated> {
    s.write("run_create", move |conn| create_in_tx(conn, &p))
        .await
}

pub(super) async fn run_abort_by(
    s: &SqliteStore,
    run_id: &str,
    now: i64,
    by: Option<String>,
) -> StoreResult<AbortOutcome> {
    let run = run_id.to_string();
    let outcome = s.write("run_abort_by", move |conn| {
        let run_id = run.as_str();
        let status: Option<String> = conn
            .prepare_cached("SELECT status FROM runs WHERE id = ?1")?
            .query_row(params![run_id], |r| r.get(0))
            .optional()?;
        let Some(status) = status else { return Ok((AbortOutcome::NotFound, 0)) };
        match status.parse::<RunStatus>() {
            Ok(RunStatus::Aborted) => return Ok((AbortOutcome::Aborted { aborted_jobs: 0, queued: 0, running: 0 }, 0)),
            Ok(s @ (RunStatus::Completed | RunStatus::Failed | RunStatus::Skipped)) => return Ok((AbortOutcome::Finished(s), 0)),
            _ => {}
        }
        conn.prepare_cached(
            "UPDATE runs SET status = 'aborted', aborted_by = ?2 WHERE id = ?1 AND status IN ('waiting', 'queued', 'running')",
        )?
        .execute(params![run_id, by])?;
        let queued: Vec<(String, String, u32)> = conn
            .prepare_cached(
                "UPDATE jobs SET status = 'aborted', reason = 'aborted', finished_at = ?2
                 WHERE run_id = ?1 AND status = 'queued' AND kind = 'shard' RETURNING id, pipeline, shard_index",
            )?
            .query_map(params![run_id, now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        let flagged = conn
            .prepare_cached("UPDATE jobs SET abort_requested = 1 WHERE run_id = ?1 AND status = 'running' AND kind = 'shard'")?
            .execute(params![run_id])?;
        for (job_id, pipeline, shard_index) in &queued {
            emit(conn, payload::queued_job_aborted(run_id, job_id, pipeline, *shard_index), now)?;
            land_terminal(conn, run_id, JobStatus::Aborted, now)?;
        }
        let (queued, running) = (queued.len() as u32, flagged as u32);
        let aborted = AbortOutcome::Aborted { aborted_jobs: queued + running, queued, running };
        Ok((aborted, change::ABORT | change::EVENTS | change::WORK))
    })
    .await?;
    // After COMMIT: the followers of this run's jobs look at their status.
    s.feed.bump_run_state(run_id);
    Ok(outcome)
}

/// Writes a run, its jobs and their events in the open transaction (see
/// [`Store::run_create`]); returns it with the change kinds to publish.
pub(super) fn create_in_tx(
    conn: &Connection,
    p: &RunCreateParams,
) -> StoreResult<(RunCreated, u8)> {
    if let Some(key) = &p.idempotency_key {
        let existing: Option<(String, i64, String)> = conn
            .prepare_cached("SELECT id, created_at, params FROM runs WHERE pipeline = ?1 AND idempotency_key = ?2")?
            .query_row(params![p.pipeline, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        if let Some((run_id, created_at, params_text)) = existing {
            let job_ids = conn
                .prepare_cached(
                    "SELECT id FROM jobs WHERE run_id = ?1 AND kind = 'shard' ORDER BY shard_index",
                )?
                .query_map(params![run_id], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            let existing_params = Some(serde_json::from_str(&params_text).unwrap_or_default());
            return Ok((
                RunCreated {
                    run_id,
                    job_ids,
                    created_at,
                    existing: true,
                    existing_params,
                    paused: None,
                    after_status: None,
                },
                0,
            ));
        }
    }
    if !p.options.after.is_empty() {
        after::mark_needs(conn, &p.options.after)?;
    }
    let shard_count = p.job_ids.len() as i64;
    let retry_on = p.policy.retry_on.to_column();
    conn.prepare_cached(
        "INSERT INTO runs (id, pipeline, status, params, shard_count, triggered_by, actor, idempotency_key, created_at,
                           has_finalizer, callback_url, rerun_of, shards_done, priority, run_at, scheduled_for,
                           workflow_run_id, workflow_step)
         VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    )?
    .execute(params![
        p.run_id,
        p.pipeline,
        serde_json::to_string(&p.params).unwrap_or_else(|_| "{}".into()),
        shard_count,
        p.triggered_by,
        p.actor,
        p.idempotency_key,
        p.now,
        p.has_finalizer,
        p.callback_url,
        p.options.rerun_of,
        p.options.kept.len() as i64,
        p.options.priority,
        p.options.not_before,
        p.options.scheduled_for,
        p.options.workflow.as_ref().map(|(w, _)| w),
        p.options.workflow.as_ref().map(|(_, step)| step),
    ])?;
    let (run_after, held) = super::super::after::job_due(&p.options, p.now);
    let mut insert = conn.prepare_cached(
        "INSERT INTO jobs (id, run_id, pipeline, shard_index, shard_count, status, max_attempts, retry_backoff_ms,
                           on_orphan, max_orphan_requeues, run_after, created_at, retry_on, priority, held, ckey)
         VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?;
    for (i, job_id) in p.job_ids.iter().enumerate() {
        if let Some(kept) = p.options.kept.iter().find(|k| k.shard_index as usize == i) {
            copy_kept(conn, &p.run_id, job_id, &kept.from_job, p.now)?;
            continue;
        }
        insert.execute(params![
            job_id,
            p.run_id,
            p.pipeline,
            i as i64,
            shard_count,
            p.policy.max_attempts,
            p.policy.retry_backoff_ms,
            p.policy.on_orphan,
            p.policy.max_orphan_requeues,
            run_after,
            p.now,
            retry_on,
            p.options.priority,
            held,
            p.options.concurrency_key,
        ])?;
        emit(
            conn,
            payload::shard_created(
                &p.run_id,
                job_id,
                &p.pipeline,
                i as u32,
                shard_count as u32,
                &p.triggered_by,
                p.actor.as_deref(),
            ),
            p.now,
        )?;
    }
    let after_status = if p.options.after.is_empty() {
        None
    } else {
        let when = p.options.after_when;
        Some(after::wait_for(
            conn,
            &p.run_id,
            &p.options.after,
            when,
            p.now,
        )?)
    };
    // Read with the insert, as PostgreSQL's does: the trigger need not ask again.
    let paused: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM pipeline_state WHERE pipeline = ?1 AND paused)",
        )?
        .query_row(params![p.pipeline], |r| r.get(0))?;
    Ok((
        RunCreated {
            run_id: p.run_id.clone(),
            job_ids: p.job_ids.clone(),
            created_at: p.now,
            existing: false,
            existing_params: None,
            paused: Some(paused),
            after_status,
        },
        change::WORK | change::EVENTS,
    ))
}

/// Inserts a re-run's kept shard: a terminal copy of the original's job (see [`rerun`]).
pub(super) fn copy_kept(
    conn: &Connection,
    run_id: &str,
    job_id: &str,
    from: &str,
    now: i64,
) -> StoreResult<()> {
    let copied = conn
        .prepare_cached(
            "INSERT INTO jobs (id, run_id, pipeline, shard_index, shard_count, status, reason, attempt, max_attempts,
                               retry_backoff_ms, on_orphan, orphan_requeues, max_orphan_requeues, run_after, node_id,
                               exit_code, error, stdout_bytes, stderr_bytes, truncated, created_at, claimed_at,
                               started_at, finished_at, kind, result, retry_on, kept_from)
             SELECT ?1, ?2, pipeline, shard_index, shard_count, status, reason, attempt, max_attempts,
                    retry_backoff_ms, on_orphan, orphan_requeues, max_orphan_requeues, run_after, node_id,
                    exit_code, error, stdout_bytes, stderr_bytes, truncated, ?3, claimed_at,
                    started_at, finished_at, kind, result, retry_on, id
             FROM jobs WHERE id = ?4 AND finished_at IS NOT NULL",
        )?
        .execute(params![job_id, run_id, now, from])?;
    if copied != 1 {
        return Err(StoreError::Conflict {
            message: format!("job {from} is gone or not finished: it cannot be kept"),
        });
    }
    Ok(())
}
