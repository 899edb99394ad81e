//! How a run ends, as SQLite statements: the flow and rules are in
//! [`crate::store::completion`]; this file only records them.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::emit;
use crate::model::{JobKind, JobStatus, RunStatus, finalize_job_id};
use crate::store::completion::{
    FINALIZER_MAX_ATTEMPTS, FINALIZER_MIN_REQUEUES, shards_status, status_after_finalizer,
};
use crate::store::summary::{self, JobRow, RunRow};
use crate::store::{StoreResult, payload};

/// What landing one terminal shard did to its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Landed {
    /// The run still waits for other shards (or had landed before).
    Open,
    /// Its finalizer is queued.
    FinalizerQueued,
    /// It turned terminal with this status; `released`: runs waited for it, and were
    /// released (or skipped).
    Terminal { status: RunStatus, released: bool },
}

impl Landed {
    /// The run's terminal status when this landing made it terminal.
    pub(super) fn status(self) -> Option<RunStatus> {
        match self {
            Landed::Terminal { status, .. } => Some(status),
            _ => None,
        }
    }

    /// It queued work for claimers: a finalizer, or runs released by the run's end.
    pub(super) fn queued_work(self) -> bool {
        matches!(
            self,
            Landed::FinalizerQueued | Landed::Terminal { released: true, .. }
        )
    }
}

/// Bumps the run's counter for one terminal shard, which ended `ended`; when it lands,
/// finalises the run or queues its finalizer.
pub(super) fn land_terminal(
    conn: &Connection,
    run_id: &str,
    ended: JobStatus,
    now: i64,
) -> StoreResult<Landed> {
    // `OR FAIL`: no statement journal (the module docs of `sqlite`).
    let landed: Option<(i64, i64, String, bool)> = conn
        .prepare_cached(
            "UPDATE OR FAIL runs SET shards_done = shards_done + 1 WHERE id = ?1 AND shards_done < shard_count
             RETURNING shards_done, shard_count, status, has_finalizer",
        )?
        .query_row(params![run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    let Some((done, count, status, has_finalizer)) = landed else {
        return Ok(Landed::Open);
    };
    if done < count {
        return Ok(Landed::Open);
    }
    // A run of one shard lands on that shard's end: its status is known without a read.
    let shards: Vec<JobStatus> = if count == 1 {
        vec![ended]
    } else {
        conn.prepare_cached("SELECT status FROM jobs WHERE run_id = ?1 AND kind = 'shard'")?
            .query_map(params![run_id], |r| r.get::<_, String>(0))?
            .filter_map(|s| s.ok().and_then(|s| s.parse().ok()))
            .collect()
    };
    let shards_status = shards_status(&status, shards);
    conn.prepare_cached("UPDATE runs SET shards_status = ?2 WHERE id = ?1")?
        .execute(params![run_id, shards_status.as_str()])?;
    if has_finalizer {
        queue_finalizer(conn, run_id, now)?;
        return Ok(Landed::FinalizerQueued);
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
                               on_orphan, max_orphan_requeues, run_after, created_at, kind, priority, ckey)
             SELECT ?1, run_id, pipeline, shard_count, shard_count, 'queued', ?4, retry_backoff_ms,
                    'requeue', MAX(max_orphan_requeues, ?5), ?3, ?3, 'finalize', priority, ckey
             FROM jobs WHERE run_id = ?2 AND kind = 'shard' LIMIT 1
             ON CONFLICT (id) DO NOTHING
             RETURNING pipeline, shard_index",
        )?
        .query_row(
            params![job_id, run_id, now, FINALIZER_MAX_ATTEMPTS, FINALIZER_MIN_REQUEUES],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((pipeline, shard_index)) = inserted {
        emit(
            conn,
            payload::finalizer_created(run_id, &job_id, &pipeline, shard_index),
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
) -> StoreResult<Landed> {
    let row: Option<(String, Option<String>)> = conn
        .prepare_cached("SELECT status, shards_status FROM runs WHERE id = ?1")?
        .query_row(params![run_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((current, shards_status)) = row else {
        return Ok(Landed::Open);
    };
    let final_status = status_after_finalizer(&current, status, shards_status.as_deref());
    turn_terminal(conn, run_id, final_status, now)
}

/// Marks the run terminal (once), emits `run:completed`, writes the webhook outbox row
/// and releases the runs waiting for it.
fn turn_terminal(
    conn: &Connection,
    run_id: &str,
    status: RunStatus,
    now: i64,
) -> StoreResult<Landed> {
    let Some(waited_for) = turn_terminal_once(conn, run_id, status, now)? else {
        return Ok(Landed::Open);
    };
    if waited_for {
        super::after::release_dependents(conn, vec![run_id.to_string()], now)?;
    }
    Ok(Landed::Terminal {
        status,
        released: waited_for,
    })
}

/// [`turn_terminal`] without the release: `None` when the run had ended before, else
/// whether other runs wait for it.
pub(super) fn turn_terminal_once(
    conn: &Connection,
    run_id: &str,
    status: RunStatus,
    now: i64,
) -> StoreResult<Option<bool>> {
    type Ended = (
        String,
        u32,
        Option<String>,
        Option<String>,
        bool,
        Option<String>,
        bool,
    );
    // `OR FAIL`: no statement journal (the module docs of `sqlite`).
    let changed: Option<Ended> = conn
        .prepare_cached(
            "UPDATE OR FAIL runs SET status = ?2, finished_at = ?3 WHERE id = ?1 AND finished_at IS NULL
             RETURNING pipeline, shard_count, callback_url, aborted_by, has_dependents, workflow_run_id,
                       has_finalizer",
        )?
        .query_row(params![run_id, status.as_str(), now], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
        })
        .optional()?;
    let Some((
        pipeline,
        count,
        callback_url,
        aborted_by,
        has_dependents,
        workflow_run_id,
        has_finalizer,
    )) = changed
    else {
        return Ok(None);
    };
    // Only a run with a finalizer ever has a finalize job.
    let finalizer: Option<(String, Option<i32>)> = if has_finalizer {
        conn.prepare_cached("SELECT status, exit_code FROM jobs WHERE id = ?1")?
            .query_row(params![finalize_job_id(run_id)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?
    } else {
        None
    };
    let event = payload::run_completed(
        run_id,
        &pipeline,
        status,
        count,
        finalizer.as_ref().map(|(s, code)| (s.as_str(), *code)),
        aborted_by.as_deref(),
    );
    emit(conn, event, now)?;
    if let Some(url) = callback_url {
        let summary = summary(conn, run_id)?.unwrap_or(Value::Null);
        let envelope = summary::webhook_envelope(summary, now);
        conn.prepare_cached(
            "INSERT INTO deliveries (id, run_id, url, payload, status, next_attempt_at, created_at)
             VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5)",
        )?
        .execute(params![envelope.id, run_id, url, envelope.payload, now])?;
    }
    if let Some(workflow_run_id) = workflow_run_id {
        super::workflows::step_ended(conn, &workflow_run_id, status, now)?;
    }
    Ok(Some(has_dependents))
}

/// The run's summary: the finalizer's input file and the webhook's `data`.
pub(super) fn summary(conn: &Connection, run_id: &str) -> StoreResult<Option<Value>> {
    let run = conn
        .prepare_cached(
            "SELECT pipeline, status, params, shards_status, triggered_by, actor, created_at, started_at, finished_at
             FROM runs WHERE id = ?1",
        )?
        .query_row(params![run_id], |r| {
            Ok(RunRow {
                pipeline: r.get(0)?,
                status: r.get(1)?,
                params: r.get(2)?,
                shards_status: r.get(3)?,
                triggered_by: r.get(4)?,
                actor: r.get(5)?,
                created_at: r.get(6)?,
                started_at: r.get(7)?,
                finished_at: r.get(8)?,
            })
        })
        .optional()?;
    let Some(run) = run else {
        return Ok(None);
    };
    let jobs: Vec<JobRow> = conn
        .prepare_cached(
            "SELECT kind, id, shard_index, status, reason, exit_code, attempt, started_at, finished_at, result
             FROM jobs WHERE run_id = ?1 ORDER BY shard_index",
        )?
        .query_map(params![run_id], |r| {
            Ok(JobRow {
                kind: JobKind::from_name(r.get_ref(0)?.as_str()?),
                id: r.get(1)?,
                shard_index: r.get(2)?,
                status: r.get(3)?,
                reason: r.get(4)?,
                exit_code: r.get(5)?,
                attempt: r.get(6)?,
                started_at: r.get(7)?,
                finished_at: r.get(8)?,
                result: r.get(9)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(summary::run_summary(run_id, &run, &jobs)))
}
