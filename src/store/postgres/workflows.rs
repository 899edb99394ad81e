//! Workflow runs on PostgreSQL (the rule and its invariant: [`crate::model::settle`]).
//!
//! Creation inserts the workflow run's row first (idempotent by key), then every step's
//! run needs first, in the same transaction, so a step whose needs are known to be
//! settled (kept runs of a re-run) is released before COMMIT. A step run's end counts
//! it off in the transaction that ends it: `UPDATE workflow_runs … RETURNING` takes the
//! workflow run's row lock after the run rows (the lock order of every writer), so two
//! step runs ending at once on two replicas take turns and only the one that brings
//! `steps_left` to 0 settles the status. The abort marks the row only; the step runs
//! are aborted one by one afterwards (each its own transaction, dependents first).

use super::read::rows;
use super::{PgStore, StoreResult, Tx, in_tx};
use crate::model::{RunStatus, WorkflowStatus, WorkflowStep, settle, step_is_bad};
use crate::store::{
    StepRunState, WorkflowAbortMark, WorkflowCreateParams, WorkflowCreated, WorkflowRunFilter,
    WorkflowRunRecord, own_runs_dependents_first, payload, summary,
};

pub(super) async fn workflow_create(
    s: &PgStore,
    p: WorkflowCreateParams,
) -> StoreResult<WorkflowCreated> {
    let params_text = serde_json::to_string(&p.params).unwrap_or_else(|_| "{}".into());
    let steps_text = serde_json::to_string(&p.steps).unwrap_or_else(|_| "[]".into());
    in_tx!(s, "workflow_create", tx => {
        let inserted = tx
            .query_opt(
                "INSERT INTO workflow_runs (id, workflow, status, params, steps, idempotency_key, triggered_by,
                                            actor, callback_url, rerun_of, steps_left, created_at)
                 VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (workflow, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
                 RETURNING id",
                &[&p.workflow_run_id, &p.workflow, &params_text, &steps_text, &p.idempotency_key,
                  &p.triggered_by, &p.actor, &p.callback_url, &p.rerun_of, &(p.runs.len() as i64), &p.now],
            )
            .await?;
        if inserted.is_none() {
            // The key belongs to an earlier workflow run (ON CONFLICT waited for its commit).
            let row = tx
                .query_opt(
                    "SELECT id, steps, params, created_at FROM workflow_runs WHERE workflow = $1 AND idempotency_key = $2",
                    &[&p.workflow, &p.idempotency_key],
                )
                .await?
                .ok_or_else(|| StoreError::internal("idempotency key held by a vanished workflow run"))?;
            WorkflowCreated {
                workflow_run_id: row.get(0),
                steps: serde_json::from_str(row.get(1)).unwrap_or_default(),
                existing_params: Some(serde_json::from_str(row.get(2)).unwrap_or_default()),
                created_at: row.get(3),
                existing: true,
            }
        } else {
            let created = payload::workflow_created(
                &p.workflow_run_id, &p.workflow, &p.steps, p.rerun_of.as_deref());
            tx.emit(created, p.now).await?;
            for run in &p.runs {
                super::runs::create_in_tx(tx, run, super::runs::Then::Continue).await?;
            }
            WorkflowCreated {
                workflow_run_id: p.workflow_run_id.clone(),
                steps: p.steps.clone(),
                created_at: p.now,
                existing: false,
                existing_params: None,
            }
        }
    })
}

/// Counts off a step run that just ended, in the transaction that ended it; the one
/// that brings its workflow run's `steps_left` to 0 settles it (event, webhook row).
pub(super) async fn step_ended(
    tx: &mut Tx,
    workflow_run_id: &str,
    status: RunStatus,
    now: i64,
) -> StoreResult<()> {
    let Some(row) = tx
        .query_opt(
            "UPDATE workflow_runs SET steps_left = steps_left - 1, steps_bad = steps_bad + $2
             WHERE id = $1 AND finished_at IS NULL
             RETURNING steps_left, steps_bad, abort_requested, workflow, callback_url, aborted_by, params, steps",
            &[&workflow_run_id, &i64::from(step_is_bad(status))],
        )
        .await?
    else {
        return Ok(());
    };
    if row.get::<_, i64>(0) > 0 {
        return Ok(());
    }
    let ended = settle(row.get(2), row.get(1));
    let workflow: String = row.get(3);
    tx.exec(
        "UPDATE workflow_runs SET status = $2, finished_at = $3 WHERE id = $1",
        &[&workflow_run_id, &ended.as_str(), &now],
    )
    .await?;
    let aborted_by: Option<String> = row.get(5);
    let event = payload::workflow_ended(workflow_run_id, &workflow, ended, aborted_by.as_deref());
    tx.emit(event, now).await?;
    if let Some(url) = row.get::<_, Option<String>>(4) {
        let steps: Vec<WorkflowStep> = serde_json::from_str(row.get(7)).unwrap_or_default();
        let ids: Vec<&str> = steps.iter().map(|s| s.run_id.as_str()).collect();
        let statuses: Vec<(String, String)> = tx
            .query("SELECT id, status FROM runs WHERE id = ANY($1)", &[&ids])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let data = summary::workflow_summary(
            workflow_run_id,
            &workflow,
            ended,
            row.get(6),
            &steps,
            |id| {
                statuses
                    .iter()
                    .find(|(r, _)| r == id)
                    .map(|(_, s)| s.clone())
            },
        );
        let envelope = summary::workflow_webhook_envelope(data, now);
        tx.exec(
            "INSERT INTO deliveries (id, run_id, url, payload, status, next_attempt_at, created_at)
             VALUES ($1, $2, $3, $4, 'pending', $5, $5)",
            &[
                &envelope.id,
                &workflow_run_id,
                &url,
                &envelope.payload,
                &now,
            ],
        )
        .await?;
    }
    Ok(())
}

pub(super) async fn workflow_abort_mark(
    s: &PgStore,
    id: &str,
    by: Option<String>,
) -> StoreResult<WorkflowAbortMark> {
    in_tx!(s, "workflow_abort", tx => {
        let marked = tx
            .query_opt(
                "UPDATE workflow_runs SET abort_requested = true, aborted_by = COALESCE(aborted_by, $2)
                 WHERE id = $1 AND finished_at IS NULL RETURNING steps",
                &[&id, &by],
            )
            .await?;
        match marked {
            Some(row) => WorkflowAbortMark::Marked { runs: own_runs_dependents_first(row.get(0)) },
            None => match tx.query_opt("SELECT status FROM workflow_runs WHERE id = $1", &[&id]).await? {
                None => WorkflowAbortMark::NotFound,
                Some(r) => WorkflowAbortMark::Finished(
                    r.get::<_, &str>(0).parse().unwrap_or(WorkflowStatus::Failed),
                ),
            },
        }
    })
}

const WORKFLOW_COLS: &str =
    "id, workflow, status, params, steps, triggered_by, actor, callback_url, rerun_of,
    abort_requested, aborted_by, created_at, finished_at";

fn workflow_view(r: &tokio_postgres::Row) -> WorkflowRunRecord {
    WorkflowRunRecord {
        id: r.get(0),
        workflow: r.get(1),
        status: r
            .get::<_, &str>(2)
            .parse()
            .unwrap_or(WorkflowStatus::Failed),
        params: serde_json::from_str(r.get(3)).unwrap_or_default(),
        steps: serde_json::from_str(r.get(4)).unwrap_or_default(),
        runs: Vec::new(),
        triggered_by: r.get(5),
        actor: r.get(6),
        callback_url: r.get(7),
        rerun_of: r.get(8),
        abort_requested: r.get(9),
        aborted_by: r.get(10),
        created_at: r.get(11),
        finished_at: r.get(12),
    }
}

impl PgStore {
    pub(super) async fn read_workflow_runs(
        &self,
        f: &WorkflowRunFilter,
        id: Option<&str>,
    ) -> StoreResult<Vec<WorkflowRunRecord>> {
        let status = f.status.map(|s| s.as_str());
        read!(self, c => {
            let mut found: Vec<WorkflowRunRecord> = rows(
                c,
                &format!(
                    "SELECT {WORKFLOW_COLS} FROM workflow_runs
                     WHERE ($1::text IS NULL OR id = $1) AND ($2::text IS NULL OR workflow = $2)
                       AND ($3::text IS NULL OR status = $3)
                     ORDER BY created_at DESC, id DESC LIMIT $4 OFFSET $5"
                ),
                &[&id, &f.workflow, &status, &f.limit, &f.offset],
            )
            .await?
            .iter()
            .map(workflow_view)
            .collect();
            let ids: Vec<&str> = found
                .iter()
                .flat_map(|w| w.steps.iter().map(|s| s.run_id.as_str()))
                .collect();
            let states = rows(
                c,
                "SELECT id, status, shards_done, shard_count, started_at, finished_at FROM runs WHERE id = ANY($1)",
                &[&ids],
            )
            .await?;
            for w in &mut found {
                for r in &states {
                    let run_id: String = r.get(0);
                    if w.steps.iter().any(|s| s.run_id == run_id) {
                        w.runs.push(StepRunState {
                            run_id,
                            status: r.get::<_, &str>(1).parse().unwrap_or(RunStatus::Failed),
                            shards_done: r.get::<_, i64>(2) as u32,
                            shard_count: r.get::<_, i64>(3) as u32,
                            started_at: r.get(4),
                            finished_at: r.get(5),
                        });
                    }
                }
            }
            found
        })
    }

    pub(super) async fn read_workflow_run_ids_matching(
        &self,
        prefix: &str,
        suffix: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let high = format!("{prefix}\u{10FFFF}");
        let limit = limit as i64;
        read!(self, c => rows(c, "SELECT id FROM workflow_runs
                                  WHERE (id >= $1 AND id < $2) OR ($4::text IS NOT NULL AND id LIKE '%' || $4)
                                  ORDER BY id LIMIT $3",
                              &[&prefix, &high, &limit, &suffix])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }
}
