//! Runs on PostgreSQL: creating one (idempotent by key; a re-run's kept shards copied)
//! and aborting one (its live shards locked in id order, then the run). Pruning old
//! ones is `prune.rs`.

use super::{PgStore, StoreError, StoreResult, Tx, in_tx};
use crate::model::RunStatus;

use crate::store::payload::{self, NewEvent};
use crate::store::{AbortOutcome, RunCreateParams, RunCreated, after, change};

pub(super) async fn run_create(s: &PgStore, p: RunCreateParams) -> StoreResult<RunCreated> {
    in_tx!(s, "run_create", tx => create_in_tx(tx, &p, Then::Commit).await?)
}

/// What follows a run's creation in its transaction.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Then {
    /// Nothing: a run without an idempotency key or kept shards goes out with its
    /// jobs, its events and COMMIT in one round trip.
    Commit,
    /// More statements (a schedule's advance).
    Continue,
}

/// The `job:created` events of the run's queued shards (a re-run's kept ones are not new).
pub(super) fn shard_events(p: &RunCreateParams) -> Vec<NewEvent> {
    let kept: Vec<&str> = p.options.kept.iter().map(|k| k.job_id.as_str()).collect();
    p.job_ids
        .iter()
        .enumerate()
        .filter(|(_, id)| !kept.contains(&id.as_str()))
        .map(|(i, job_id)| {
            payload::shard_created(
                &p.run_id,
                job_id,
                &p.pipeline,
                i as u32,
                p.job_ids.len() as u32,
                &p.triggered_by,
                p.actor.as_deref(),
            )
        })
        .collect()
}

/// Writes a run, its jobs and their events in the open transaction (see [`run_create`]).
const INSERT_RUN: &str = "INSERT INTO runs (id, pipeline, status, params, shard_count, triggered_by, actor,
                                       idempotency_key, created_at, has_finalizer, callback_url, rerun_of,
                                       shards_done, priority, run_at, scheduled_for, workflow_run_id, workflow_step)
     VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
     ON CONFLICT (pipeline, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
     RETURNING id, EXISTS (SELECT 1 FROM pipeline_state WHERE pipeline = $2 AND paused)";

const INSERT_QUEUED_JOBS: &str = "INSERT INTO jobs (id, run_id, pipeline, shard_index, shard_count, status,
                                   max_attempts, retry_backoff_ms, on_orphan, max_orphan_requeues, run_after,
                                   created_at, retry_on, priority, held, ckey)
     SELECT t.id, $2, $3, t.idx, $4, 'queued', $5, $6, $7, $8, $12, $9, $10, $13, $14, $15
     FROM unnest($1::text[], $11::bigint[]) AS t(id, idx)";

/// Inserts the run's queued jobs (all but a re-run's kept shards).
async fn insert_queued_jobs(tx: &Tx, p: &RunCreateParams) -> StoreResult<u64> {
    let kept: Vec<&str> = p.options.kept.iter().map(|k| k.job_id.as_str()).collect();
    let (queued, queued_index): (Vec<&str>, Vec<i64>) = p
        .job_ids
        .iter()
        .enumerate()
        .filter(|(_, id)| !kept.contains(&id.as_str()))
        .map(|(i, id)| (id.as_str(), i as i64))
        .unzip();
    let (run_after, held) = after::job_due(&p.options, p.now);
    tx.exec(
        INSERT_QUEUED_JOBS,
        &[
            &queued,
            &p.run_id,
            &p.pipeline,
            &(p.job_ids.len() as i64),
            &(p.policy.max_attempts as i64),
            &p.policy.retry_backoff_ms,
            &p.policy.on_orphan,
            &(p.policy.max_orphan_requeues as i64),
            &p.now,
            &p.policy.retry_on.to_column(),
            &queued_index,
            &run_after,
            &i64::from(p.options.priority),
            &held,
            &p.options.concurrency_key,
        ],
    )
    .await
}

/// Without an idempotency key, kept shards or needs nothing can stop a run's insert (and
/// nothing is read first): its statements can go out with others'.
pub(super) fn is_plain(p: &RunCreateParams) -> bool {
    p.idempotency_key.is_none() && p.options.kept.is_empty() && p.options.after.is_empty()
}

/// A run's row as [`INSERT_RUN`] binds it: the columns computed from its parameters.
struct RunRow<'p> {
    p: &'p RunCreateParams,
    params_text: String,
    shard_count: i64,
    kept: i64,
    priority: i64,
    workflow_run_id: Option<&'p String>,
    workflow_step: Option<&'p String>,
}

impl<'p> RunRow<'p> {
    fn new(p: &'p RunCreateParams) -> RunRow<'p> {
        RunRow {
            p,
            params_text: serde_json::to_string(&p.params).unwrap_or_else(|_| "{}".into()),
            shard_count: p.job_ids.len() as i64,
            kept: p.options.kept.len() as i64,
            priority: i64::from(p.options.priority),
            workflow_run_id: p.options.workflow.as_ref().map(|(w, _)| w),
            workflow_step: p.options.workflow.as_ref().map(|(_, step)| step),
        }
    }

    /// [`INSERT_RUN`]'s parameters, in order.
    fn values(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 17] {
        let p = self.p;
        [
            &p.run_id,
            &p.pipeline,
            &self.params_text,
            &self.shard_count,
            &p.triggered_by,
            &p.actor,
            &p.idempotency_key,
            &p.now,
            &p.has_finalizer,
            &p.callback_url,
            &p.options.rerun_of,
            &self.kept,
            &self.priority,
            &p.options.not_before,
            &p.options.scheduled_for,
            &self.workflow_run_id,
            &self.workflow_step,
        ]
    }
}

pub(super) async fn create_in_tx(
    tx: &mut Tx,
    p: &RunCreateParams,
    then: Then,
) -> StoreResult<RunCreated> {
    let row = RunRow::new(p);
    let run_values = row.values();
    // Without an idempotency key or kept shards nothing can stop the insert: the run and
    // its jobs go out in one round trip.
    let plain = is_plain(p);
    if !p.options.after.is_empty() {
        super::after::mark_needs(tx, &p.options.after).await?;
    }
    let (inserted, jobs_inserted) = if plain {
        tx.prepare(INSERT_RUN).await?;
        tx.prepare(INSERT_QUEUED_JOBS).await?;
        // The events are known before the inserts (a failed insert rolls them back).
        tx.emit_many(shard_events(p), p.now).await?;
        tx.kinds |= change::WORK;
        let (row, _) = match then {
            Then::Commit => {
                let events = tx.take_events();
                let tx = &*tx;
                let sent = async {
                    tokio::try_join!(
                    biased;
                        tx.query_opt(INSERT_RUN, &run_values),
                        insert_queued_jobs(tx, p)
                    )
                };
                tx.commit_with(events, sent).await?
            }
            Then::Continue => tokio::try_join!(
                    biased;
                tx.query_opt(INSERT_RUN, &run_values),
                insert_queued_jobs(tx, p)
            )?,
        };
        (row, true)
    } else {
        (tx.query_opt(INSERT_RUN, &run_values).await?, false)
    };
    let paused = inserted.as_ref().map(|r| r.get::<_, bool>(1));
    Ok({
        if inserted.is_none() {
            // The key belongs to an earlier run, committed (ON CONFLICT waited for it).
            let row = tx
                .query_opt(
                    "SELECT id, created_at, params FROM runs WHERE pipeline = $1 AND idempotency_key = $2",
                    &[&p.pipeline, &p.idempotency_key],
                )
                .await?
                .ok_or_else(|| StoreError::internal("idempotency key held by a vanished run"))?;
            let run_id: String = row.get(0);
            let job_ids: Vec<String> = tx
                .query(
                    "SELECT id FROM jobs WHERE run_id = $1 AND kind = 'shard' ORDER BY shard_index",
                    &[&run_id],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let params_text: String = row.get(2);
            RunCreated {
                run_id,
                job_ids,
                created_at: row.get(1),
                existing: true,
                existing_params: Some(serde_json::from_str(&params_text).unwrap_or_default()),
                paused: None,
                after_status: None,
            }
        } else {
            // A re-run's kept shards are terminal copies of the original's jobs; the rest
            // are queued.
            let kept: Vec<&str> = p.options.kept.iter().map(|k| k.job_id.as_str()).collect();
            if !kept.is_empty() {
                let from: Vec<&str> = p.options.kept.iter().map(|k| k.from_job.as_str()).collect();
                let copied = tx
                    .exec(
                        "INSERT INTO jobs (id, run_id, pipeline, shard_index, shard_count, status, reason, attempt,
                                           max_attempts, retry_backoff_ms, on_orphan, orphan_requeues,
                                           max_orphan_requeues, run_after, node_id, exit_code, error, stdout_bytes,
                                           stderr_bytes, truncated, created_at, claimed_at, started_at, finished_at,
                                           kind, result, retry_on, kept_from)
                         SELECT k.id, $3, j.pipeline, j.shard_index, j.shard_count, j.status, j.reason, j.attempt,
                                j.max_attempts, j.retry_backoff_ms, j.on_orphan, j.orphan_requeues,
                                j.max_orphan_requeues, j.run_after, j.node_id, j.exit_code, j.error, j.stdout_bytes,
                                j.stderr_bytes, j.truncated, $4, j.claimed_at, j.started_at, j.finished_at,
                                j.kind, j.result, j.retry_on, j.id
                         FROM unnest($1::text[], $2::text[]) AS k(id, from_id)
                         JOIN jobs j ON j.id = k.from_id AND j.finished_at IS NOT NULL",
                        &[&kept, &from, &p.run_id, &p.now],
                    )
                    .await?;
                if copied != kept.len() as u64 {
                    return Err(StoreError::Conflict {
                        message: "a kept shard's original job is gone or not finished".into(),
                    });
                }
            }
            if !jobs_inserted {
                insert_queued_jobs(tx, p).await?;
                tx.emit_many(shard_events(p), p.now).await?;
                tx.kinds |= change::WORK;
            }
            let after_status = if p.options.after.is_empty() {
                None
            } else {
                let when = p.options.after_when;
                Some(super::after::wait_for(tx, &p.run_id, &p.options.after, when, p.now).await?)
            };
            RunCreated {
                run_id: p.run_id.clone(),
                job_ids: p.job_ids.clone(),
                created_at: p.now,
                existing: false,
                existing_params: None,
                paused,
                after_status,
            }
        }
    })
}

pub(super) async fn run_abort(
    s: &PgStore,
    run_id: &str,
    now: i64,
    by: Option<String>,
) -> StoreResult<AbortOutcome> {
    fn settled(status: &str) -> Option<AbortOutcome> {
        match status.parse::<RunStatus>() {
            Ok(RunStatus::Aborted) => Some(AbortOutcome::Aborted {
                aborted_jobs: 0,
                queued: 0,
                running: 0,
            }),
            Ok(s @ (RunStatus::Completed | RunStatus::Failed | RunStatus::Skipped)) => {
                Some(AbortOutcome::Finished(s))
            }
            _ => None,
        }
    }
    in_tx!(s, "run_abort", tx => {
        let status = tx
            .query_opt("SELECT status FROM runs WHERE id = $1", &[&run_id])
            .await?
            .map(|r| r.get::<_, String>(0));
        match status {
            None => AbortOutcome::NotFound,
            Some(status) if settled(&status).is_some() => settled(&status).unwrap_or(AbortOutcome::NotFound),
            Some(_) => {
                // Lock order: the run's jobs in id order, then the run.
                tx.query(
                    "SELECT id FROM jobs WHERE run_id = $1 AND kind = 'shard' AND status IN ('queued', 'running')
                     ORDER BY id FOR UPDATE",
                    &[&run_id],
                )
                .await?;
                let marked = tx
                    .exec(
                        "UPDATE runs SET status = 'aborted', aborted_by = $2 WHERE id = $1 AND status IN ('waiting', 'queued', 'running')",
                        &[&run_id, &by],
                    )
                    .await?;
                if marked == 0 {
                    // It ended (or was aborted) while we waited for its jobs.
                    let now_status = tx
                        .query_opt("SELECT status FROM runs WHERE id = $1", &[&run_id])
                        .await?
                        .map(|r| r.get::<_, String>(0));
                    now_status.as_deref().and_then(settled).unwrap_or(AbortOutcome::NotFound)
                } else {
                    let queued = tx
                        .query(
                            "UPDATE jobs SET status = 'aborted', reason = 'aborted', finished_at = $2
                             WHERE run_id = $1 AND status = 'queued' AND kind = 'shard'
                             RETURNING id, pipeline, shard_index",
                            &[&run_id, &now],
                        )
                        .await?;
                    let flagged = tx
                        .exec(
                            "UPDATE jobs SET abort_requested = true
                             WHERE run_id = $1 AND status = 'running' AND kind = 'shard'",
                            &[&run_id],
                        )
                        .await?;
                    let events = queued
                        .iter()
                        .map(|r| {
                            payload::queued_job_aborted(run_id, r.get(0), r.get(1), r.get::<_, i64>(2) as u32)
                        })
                        .collect();
                    tx.emit_many(events, now).await?;
                    super::landing::land_aborted(tx, run_id, queued.len(), now).await?;
                    tx.kinds |= change::ABORT | change::WORK;
                    let (queued, running) = (queued.len() as u32, flagged as u32);
                    AbortOutcome::Aborted { aborted_jobs: queued + running, queued, running }
                }
            }
        }
    })
}
