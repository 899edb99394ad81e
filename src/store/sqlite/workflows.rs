//! Workflow runs on SQLite (the rule and its invariant: [`crate::model::settle`]). The
//! one writer serialises every count-off, so the step run whose end brings
//! `steps_left` to 0 is exactly one; creation writes the workflow run and every step's
//! run in one transaction, as on PostgreSQL.

use super::*;
use crate::model::{WorkflowStatus, WorkflowStep, settle, step_is_bad};

pub(super) async fn workflow_create(
    s: &SqliteStore,
    p: WorkflowCreateParams,
) -> StoreResult<WorkflowCreated> {
    s.write("workflow_create", move |conn| {
        if let Some(key) = &p.idempotency_key {
            let existing: Option<(String, String, String, i64)> = conn
                .prepare_cached(
                    "SELECT id, steps, params, created_at FROM workflow_runs WHERE workflow = ?1 AND idempotency_key = ?2",
                )?
                .query_row(params![p.workflow, key], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()?;
            if let Some((id, steps, params_text, created_at)) = existing {
                let created = WorkflowCreated {
                    workflow_run_id: id,
                    steps: serde_json::from_str(&steps).unwrap_or_default(),
                    created_at,
                    existing: true,
                    existing_params: Some(serde_json::from_str(&params_text).unwrap_or_default()),
                };
                return Ok((created, 0));
            }
        }
        conn.prepare_cached(
            "INSERT INTO workflow_runs (id, workflow, status, params, steps, idempotency_key, triggered_by,
                                        actor, callback_url, rerun_of, steps_left, created_at)
             VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?
        .execute(params![
            p.workflow_run_id,
            p.workflow,
            serde_json::to_string(&p.params).unwrap_or_else(|_| "{}".into()),
            serde_json::to_string(&p.steps).unwrap_or_else(|_| "[]".into()),
            p.idempotency_key,
            p.triggered_by,
            p.actor,
            p.callback_url,
            p.rerun_of,
            p.runs.len() as i64,
            p.now,
        ])?;
        let created =
            payload::workflow_created(&p.workflow_run_id, &p.workflow, &p.steps, p.rerun_of.as_deref());
        emit(conn, created, p.now)?;
        let mut kinds = change::EVENTS;
        for run in &p.runs {
            kinds |= create_in_tx(conn, run)?.1;
        }
        let created = WorkflowCreated {
            workflow_run_id: p.workflow_run_id.clone(),
            steps: p.steps.clone(),
            created_at: p.now,
            existing: false,
            existing_params: None,
        };
        Ok((created, kinds))
    })
    .await
}

/// Counts off a step run that just ended, in the transaction that ended it; the one
/// that brings its workflow run's `steps_left` to 0 settles it (event, webhook row).
pub(super) fn step_ended(
    conn: &Connection,
    workflow_run_id: &str,
    status: RunStatus,
    now: i64,
) -> StoreResult<()> {
    type Counted = (
        i64,
        i64,
        bool,
        String,
        Option<String>,
        Option<String>,
        String,
        String,
    );
    let counted: Option<Counted> = conn
        .prepare_cached(
            "UPDATE workflow_runs SET steps_left = steps_left - 1, steps_bad = steps_bad + ?2
             WHERE id = ?1 AND finished_at IS NULL
             RETURNING steps_left, steps_bad, abort_requested, workflow, callback_url, aborted_by, params, steps",
        )?
        .query_row(params![workflow_run_id, i64::from(step_is_bad(status))], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
        })
        .optional()?;
    let Some((left, bad, abort_requested, workflow, callback_url, aborted_by, params_text, steps)) =
        counted
    else {
        return Ok(());
    };
    if left > 0 {
        return Ok(());
    }
    let ended = settle(abort_requested, bad);
    conn.prepare_cached("UPDATE workflow_runs SET status = ?2, finished_at = ?3 WHERE id = ?1")?
        .execute(params![workflow_run_id, ended.as_str(), now])?;
    let event = payload::workflow_ended(workflow_run_id, &workflow, ended, aborted_by.as_deref());
    emit(conn, event, now)?;
    if let Some(url) = callback_url {
        let steps: Vec<WorkflowStep> = serde_json::from_str(&steps).unwrap_or_default();
        let mut status_of = conn.prepare_cached("SELECT status FROM runs WHERE id = ?1")?;
        let data = summary::workflow_summary(
            workflow_run_id,
            &workflow,
            ended,
            &params_text,
            &steps,
            |id| {
                status_of
                    .query_row(params![id], |r| r.get(0))
                    .optional()
                    .ok()
                    .flatten()
            },
        );
        let envelope = summary::workflow_webhook_envelope(data, now);
        conn.prepare_cached(
            "INSERT INTO deliveries (id, run_id, url, payload, status, next_attempt_at, created_at)
             VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5)",
        )?
        .execute(params![
            envelope.id,
            workflow_run_id,
            url,
            envelope.payload,
            now
        ])?;
    }
    Ok(())
}

pub(super) async fn workflow_abort_mark(
    s: &SqliteStore,
    id: &str,
    by: Option<String>,
) -> StoreResult<WorkflowAbortMark> {
    let id = id.to_string();
    s.write("workflow_abort", move |conn| {
        let marked: Option<String> = conn
            .prepare_cached(
                "UPDATE workflow_runs SET abort_requested = 1, aborted_by = COALESCE(aborted_by, ?2)
                 WHERE id = ?1 AND finished_at IS NULL RETURNING steps",
            )?
            .query_row(params![id, by], |r| r.get(0))
            .optional()?;
        if let Some(steps) = marked {
            let runs = crate::store::own_runs_dependents_first(&steps);
            return Ok((WorkflowAbortMark::Marked { runs }, 0));
        }
        let status: Option<String> = conn
            .prepare_cached("SELECT status FROM workflow_runs WHERE id = ?1")?
            .query_row(params![id], |r| r.get(0))
            .optional()?;
        let outcome = match status {
            None => WorkflowAbortMark::NotFound,
            Some(s) => WorkflowAbortMark::Finished(s.parse().unwrap_or(WorkflowStatus::Failed)),
        };
        Ok((outcome, 0))
    })
    .await
}

const WORKFLOW_COLS: &str =
    "id, workflow, status, params, steps, triggered_by, actor, callback_url, rerun_of,
    abort_requested, aborted_by, created_at, finished_at";

fn workflow_view(r: &Row<'_>) -> rusqlite::Result<WorkflowRunRecord> {
    let params_text: String = r.get(3)?;
    let steps: String = r.get(4)?;
    Ok(WorkflowRunRecord {
        id: r.get(0)?,
        workflow: r.get(1)?,
        status: r
            .get::<_, String>(2)?
            .parse()
            .unwrap_or(WorkflowStatus::Failed),
        params: serde_json::from_str(&params_text).unwrap_or_default(),
        steps: serde_json::from_str(&steps).unwrap_or_default(),
        runs: Vec::new(),
        triggered_by: r.get(5)?,
        actor: r.get(6)?,
        callback_url: r.get(7)?,
        rerun_of: r.get(8)?,
        abort_requested: r.get(9)?,
        aborted_by: r.get(10)?,
        created_at: r.get(11)?,
        finished_at: r.get(12)?,
    })
}

pub(super) async fn workflow_runs_read(
    s: &SqliteStore,
    f: WorkflowRunFilter,
    id: Option<&str>,
) -> StoreResult<Vec<WorkflowRunRecord>> {
    let id = id.map(str::to_string);
    s.read(move |conn| {
        let mut found: Vec<WorkflowRunRecord> = conn
            .prepare_cached(&format!(
                "SELECT {WORKFLOW_COLS} FROM workflow_runs
                 WHERE (?1 IS NULL OR id = ?1) AND (?2 IS NULL OR workflow = ?2) AND (?3 IS NULL OR status = ?3)
                 ORDER BY created_at DESC, id DESC LIMIT ?4 OFFSET ?5"
            ))?
            .query_map(
                params![id, f.workflow, f.status.map(|s| s.as_str()), f.limit, f.offset],
                workflow_view,
            )?
            .collect::<Result<_, _>>()?;
        let mut state = conn.prepare_cached(
            "SELECT id, status, shards_done, shard_count, started_at, finished_at FROM runs WHERE id = ?1",
        )?;
        for w in &mut found {
            for step in &w.steps {
                let run = state
                    .query_row(params![step.run_id], |r| {
                        Ok(StepRunState {
                            run_id: r.get(0)?,
                            status: r
                                .get::<_, String>(1)?
                                .parse()
                                .unwrap_or(RunStatus::Failed),
                            shards_done: r.get(2)?,
                            shard_count: r.get(3)?,
                            started_at: r.get(4)?,
                            finished_at: r.get(5)?,
                        })
                    })
                    .optional()?;
                w.runs.extend(run);
            }
        }
        Ok(found)
    })
    .await
}

pub(super) async fn workflow_run_ids_matching(
    s: &SqliteStore,
    prefix: &str,
    suffix: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<String>> {
    let suffix = suffix.map(str::to_string);
    let low = prefix.to_string();
    let high = format!("{prefix}\u{10FFFF}");
    s.read(move |conn| {
        Ok(conn
            .prepare_cached(
                "SELECT id FROM workflow_runs
                 WHERE (id >= ?1 AND id < ?2) OR (?4 IS NOT NULL AND id LIKE '%' || ?4)
                 ORDER BY id LIMIT ?3",
            )?
            .query_map(params![low, high, limit as i64, suffix], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    })
    .await
}
