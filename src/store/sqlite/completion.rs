//! How a run ends, inside the store's transactions (DESIGN decisions 6 and 7).
//!
//! The transaction that lands `shards_done` on `shard_count` records the
//! shards' status and then either turns the run terminal or queues its
//! finalize job `{runId}:finalize`, which any node may claim and which is
//! leased, logged and recovered like any job. When that job ends the run turns
//! terminal: a finalizer that did not complete fails a run that had not been
//! aborted (the quality gate of decision 20). Turning terminal emits
//! `run:completed` exactly once and writes the webhook outbox row in the same
//! transaction, so a crash can lose neither.
//!
//! Invariants, and the store tests that would catch their violation:
//! - one `run:completed` per run, whatever races (`last_two_shards_finishing_together…`,
//!   `a_finalizer_runs_once_after_every_shard_and_gates_the_run`);
//! - the finalize job is queued once, only after every shard is terminal;
//! - the outbox row exists iff the run is terminal and has a callback URL
//!   (`a_terminal_run_with_a_callback_has_exactly_one_outbox_row`).

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use super::emit;
use crate::clock::rfc3339;
use crate::model::{EventName, JobKind, JobStatus, RunStatus, finalize_job_id};
use crate::store::StoreResult;

/// Bumps the run's counter for one terminal shard; when it lands, finalises the run or
/// queues its finalizer. Returns the run's terminal status when this call made it terminal.
pub(super) fn land_terminal(
    conn: &Connection,
    run_id: &str,
    now: i64,
) -> StoreResult<Option<RunStatus>> {
    let landed: Option<(i64, i64, String, bool)> = conn
        .prepare_cached(
            "UPDATE runs SET shards_done = shards_done + 1 WHERE id = ?1 AND shards_done < shard_count
             RETURNING shards_done, shard_count, status, has_finalizer",
        )?
        .query_row(params![run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    let Some((done, count, status, has_finalizer)) = landed else {
        return Ok(None);
    };
    if done < count {
        return Ok(None);
    }
    let current: RunStatus = status.parse().unwrap_or(RunStatus::Running);
    let shards: Vec<JobStatus> = conn
        .prepare_cached("SELECT status FROM jobs WHERE run_id = ?1 AND kind = 'shard'")?
        .query_map(params![run_id], |r| r.get::<_, String>(0))?
        .filter_map(|s| s.ok().and_then(|s| s.parse().ok()))
        .collect();
    let shards_status = RunStatus::from_final_jobs(current, shards);
    conn.prepare_cached("UPDATE runs SET shards_status = ?2 WHERE id = ?1")?
        .execute(params![run_id, shards_status.as_str()])?;
    if has_finalizer {
        queue_finalizer(conn, run_id, now)?;
        return Ok(None);
    }
    turn_terminal(conn, run_id, shards_status, now)
}

/// Inserts the run's finalize job (once) with the retry rules of a finalizer: no retry on
/// failure (it runs once to completion), re-queued at least once when orphaned.
fn queue_finalizer(conn: &Connection, run_id: &str, now: i64) -> StoreResult<()> {
    let job_id = finalize_job_id(run_id);
    let inserted: Option<(String, u32)> = conn
        .prepare_cached(
            "INSERT INTO jobs (id, run_id, pipeline, shard_index, shard_count, status, max_attempts, retry_backoff_ms,
                               on_orphan, max_orphan_requeues, run_after, created_at, kind)
             SELECT ?1, run_id, pipeline, shard_count, shard_count, 'queued', 1, retry_backoff_ms,
                    'requeue', MAX(max_orphan_requeues, 1), ?3, ?3, 'finalize'
             FROM jobs WHERE run_id = ?2 AND kind = 'shard' LIMIT 1
             ON CONFLICT (id) DO NOTHING
             RETURNING pipeline, shard_index",
        )?
        .query_row(params![job_id, run_id, now], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if let Some((pipeline, shard_index)) = inserted {
        emit(
            conn,
            EventName::JobCreated,
            run_id,
            json!({"jobId": job_id, "pipelineId": pipeline, "status": "queued", "kind": JobKind::Finalize.as_str(),
                   "shardIndex": shard_index}),
            now,
        )?;
    }
    Ok(())
}

/// The finalize job ended for good with `status`: the run turns terminal.
pub(super) fn finalizer_ended(
    conn: &Connection,
    run_id: &str,
    status: JobStatus,
    now: i64,
) -> StoreResult<Option<RunStatus>> {
    let row: Option<(String, Option<String>)> = conn
        .prepare_cached("SELECT status, shards_status FROM runs WHERE id = ?1")?
        .query_row(params![run_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((current, shards_status)) = row else {
        return Ok(None);
    };
    let final_status = if current == RunStatus::Aborted.as_str() {
        RunStatus::Aborted
    } else if status != JobStatus::Completed {
        RunStatus::Failed
    } else {
        shards_status
            .and_then(|s| s.parse().ok())
            .unwrap_or(RunStatus::Completed)
    };
    turn_terminal(conn, run_id, final_status, now)
}

/// Marks the run terminal (once), emits `run:completed` and writes the webhook outbox row.
fn turn_terminal(
    conn: &Connection,
    run_id: &str,
    status: RunStatus,
    now: i64,
) -> StoreResult<Option<RunStatus>> {
    let changed: Option<(String, i64, Option<String>)> = conn
        .prepare_cached(
            "UPDATE runs SET status = ?2, finished_at = ?3 WHERE id = ?1 AND finished_at IS NULL
             RETURNING pipeline, shard_count, callback_url",
        )?
        .query_row(params![run_id, status.as_str(), now], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((pipeline, count, callback_url)) = changed else {
        return Ok(None);
    };
    let mut data = json!({"pipelineId": pipeline, "status": status.as_str(), "shardCount": count});
    let finalizer: Option<(String, Option<i32>)> = conn
        .prepare_cached("SELECT status, exit_code FROM jobs WHERE id = ?1")?
        .query_row(params![finalize_job_id(run_id)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    if let Some((fin_status, exit_code)) = finalizer {
        data["finalizer"] = json!({"status": fin_status, "exitCode": exit_code});
    }
    emit(conn, EventName::RunCompleted, run_id, data, now)?;
    if let Some(url) = callback_url {
        let summary = summary(conn, run_id)?.unwrap_or(Value::Null);
        let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
        let payload = json!({"type": "run.completed", "timestamp": rfc3339(now), "data": summary});
        conn.prepare_cached(
            "INSERT INTO deliveries (id, run_id, url, payload, status, next_attempt_at, created_at)
             VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5)",
        )?
        .execute(params![id, run_id, url, payload.to_string(), now])?;
    }
    Ok(Some(status))
}

/// One job's entry in a run summary.
fn job_summary(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, Value)> {
    let kind: String = r.get(0)?;
    let started: Option<i64> = r.get(7)?;
    let finished: Option<i64> = r.get(8)?;
    let result: Option<String> = r.get(9)?;
    Ok((
        kind,
        json!({
            "jobId": r.get::<_, String>(1)?,
            "shardIndex": r.get::<_, u32>(2)?,
            "status": r.get::<_, String>(3)?,
            "reason": r.get::<_, Option<String>>(4)?,
            "exitCode": r.get::<_, Option<i32>>(5)?,
            "attempts": r.get::<_, u32>(6)?,
            "durationMs": started.zip(finished).map(|(s, f)| (f - s).max(0)),
            "result": result.and_then(|t| serde_json::from_str::<Value>(&t).ok()),
        }),
    ))
}

/// The run's summary: the finalizer's input file and the webhook's `data`.
pub(super) fn summary(conn: &Connection, run_id: &str) -> StoreResult<Option<Value>> {
    type RunRow = (
        String,
        String,
        String,
        Option<String>,
        String,
        Option<String>,
        i64,
        Option<i64>,
        Option<i64>,
    );
    let run: Option<RunRow> = conn
        .prepare_cached(
            "SELECT pipeline, status, params, shards_status, triggered_by, actor, created_at, started_at, finished_at
             FROM runs WHERE id = ?1",
        )?
        .query_row(params![run_id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            ))
        })
        .optional()?;
    let Some((
        pipeline,
        status,
        params_text,
        shards_status,
        triggered_by,
        actor,
        created,
        started,
        finished,
    )) = run
    else {
        return Ok(None);
    };
    let mut shards = Vec::new();
    let mut finalizer = Value::Null;
    let mut stmt = conn.prepare_cached(
        "SELECT kind, id, shard_index, status, reason, exit_code, attempt, started_at, finished_at, result
         FROM jobs WHERE run_id = ?1 ORDER BY shard_index",
    )?;
    for row in stmt.query_map(params![run_id], job_summary)? {
        let (kind, job) = row?;
        if JobKind::from_name(&kind) == JobKind::Finalize {
            finalizer = job;
        } else {
            shards.push(job);
        }
    }
    Ok(Some(json!({
        "runId": run_id,
        "pipelineId": pipeline,
        "status": status,
        "shardsStatus": shards_status,
        "parameters": serde_json::from_str::<Value>(&params_text).unwrap_or(Value::Null),
        "shardCount": shards.len(),
        "triggeredBy": triggered_by,
        "actor": actor,
        "createdAt": rfc3339(created),
        "startedAt": started.map(rfc3339),
        "finishedAt": finished.map(rfc3339),
        "shards": shards,
        "finalizer": finalizer,
    })))
}
