//! The PostgreSQL store's write transactions. Lock order (see the module docs):
//! job rows in id order → the run row → everything else; claims never wait on rows.

use std::collections::HashMap;

use super::{PgStore, StoreError, StoreResult, Tx, in_tx};
use crate::model::RunStatus;
use crate::store::payload::{self, NewEvent};
use crate::store::{
    AbortOutcome, DeliveryNext, DeliveryRecordParams, HeartbeatOutcome, JobProgressParams,
    JobStartParams, NodeHeartbeatParams, NodeRow, OutputAppendParams, PendingDelivery,
    PipelineNodeState, PipelinePauseParams, PruneOutcome, RunCreateParams, RunCreated,
    ScheduleFireParams, change, claim_plan,
};

const STDOUT: i16 = 1;
const STDERR: i16 = 2;
/// Events deleted per pruned-run batch slot (as on SQLite).
const EVENTS_PER_RUN_PRUNED: usize = 20;

impl Tx {
    /// Adds several events (inserted with the transaction's others before COMMIT).
    async fn emit_many(&mut self, events: Vec<NewEvent>, now: i64) -> StoreResult<()> {
        for event in events {
            self.emit(event, now).await?;
        }
        Ok(())
    }
}

pub(super) async fn run_create(s: &PgStore, p: RunCreateParams) -> StoreResult<RunCreated> {
    in_tx!(s, "run_create", tx => create_in_tx(tx, &p).await?)
}

/// Writes a run, its jobs and their events in the open transaction (see [`run_create`]).
const INSERT_RUN: &str = "INSERT INTO runs (id, pipeline, status, params, shard_count, triggered_by, actor,
                                       idempotency_key, created_at, has_finalizer, callback_url, rerun_of,
                                       shards_done, priority, run_at, scheduled_for)
     VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
     ON CONFLICT (pipeline, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
     RETURNING id, EXISTS (SELECT 1 FROM pipeline_state WHERE pipeline = $2 AND paused)";

const INSERT_QUEUED_JOBS: &str = "INSERT INTO jobs (id, run_id, pipeline, shard_index, shard_count, status,
                                   max_attempts, retry_backoff_ms, on_orphan, max_orphan_requeues, run_after,
                                   created_at, retry_on, priority, held)
     SELECT t.id, $2, $3, t.idx, $4, 'queued', $5, $6, $7, $8, $12, $9, $10, $13, $14
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
    let run_after = p.options.not_before.map_or(p.now, |t| t.max(p.now));
    let held = claim_plan::held(run_after, p.now);
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
        ],
    )
    .await
}

async fn create_in_tx(tx: &mut Tx, p: &RunCreateParams) -> StoreResult<RunCreated> {
    let params_text = serde_json::to_string(&p.params).unwrap_or_else(|_| "{}".into());
    let shard_count = p.job_ids.len() as i64;
    let run_values: [&(dyn tokio_postgres::types::ToSql + Sync); 15] = [
        &p.run_id,
        &p.pipeline,
        &params_text,
        &shard_count,
        &p.triggered_by,
        &p.actor,
        &p.idempotency_key,
        &p.now,
        &p.has_finalizer,
        &p.callback_url,
        &p.options.rerun_of,
        &(p.options.kept.len() as i64),
        &i64::from(p.options.priority),
        &p.options.not_before,
        &p.options.scheduled_for,
    ];
    // Without an idempotency key or kept shards nothing can stop the insert: the run and
    // its jobs go out in one round trip.
    let plain = p.idempotency_key.is_none() && p.options.kept.is_empty();
    let (inserted, jobs_inserted) = if plain {
        tx.prepare(INSERT_RUN).await?;
        tx.prepare(INSERT_QUEUED_JOBS).await?;
        let (row, _) = tokio::try_join!(
            tx.query_opt(INSERT_RUN, &run_values),
            insert_queued_jobs(tx, p)
        )?;
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
            }
            let events = p
                .job_ids
                .iter()
                .enumerate()
                .filter(|(_, id)| !kept.contains(&id.as_str()))
                .map(|(i, job_id)| {
                    payload::shard_created(
                        &p.run_id,
                        job_id,
                        &p.pipeline,
                        i as u32,
                        shard_count as u32,
                        &p.triggered_by,
                        p.actor.as_deref(),
                    )
                })
                .collect();
            tx.emit_many(events, p.now).await?;
            tx.kinds |= change::WORK;
            RunCreated {
                run_id: p.run_id.clone(),
                job_ids: p.job_ids.clone(),
                created_at: p.now,
                existing: false,
                existing_params: None,
                paused,
            }
        }
    })
}

/// Records a spawned process (fenced); `None` when the claim is no longer ours.
async fn start_in_tx(tx: &mut Tx, p: &JobStartParams) -> StoreResult<Option<bool>> {
    let Some(row) = tx
        .query_opt(
            "UPDATE jobs SET pid = $3, proc_start = $4, started_at = $5
             WHERE id = $1 AND claim_seq = $2 AND status = 'running' AND pid IS DISTINCT FROM $3
             RETURNING abort_requested, run_id, pipeline, shard_index, attempt",
            &[
                &p.job_id,
                &p.claim_seq,
                &(p.pid as i64),
                &(p.proc_start as i64),
                &p.now,
            ],
        )
        .await?
    else {
        // Recorded already (a retry after a commit whose answer was lost): no second event.
        return Ok(tx
            .query_opt(
                "SELECT abort_requested FROM jobs WHERE id = $1 AND claim_seq = $2 AND status = 'running' AND pid = $3",
                &[&p.job_id, &p.claim_seq, &(p.pid as i64)],
            )
            .await?
            .map(|r| r.get(0)));
    };
    let run_id: String = row.get(1);
    let pipeline: String = row.get(2);
    tx.exec(
        "UPDATE runs SET status = 'running', started_at = $2 WHERE id = $1 AND status = 'queued'",
        &[&run_id, &p.now],
    )
    .await?;
    let event = payload::job_started(
        &run_id,
        &p.job_id,
        &pipeline,
        row.get::<_, i64>(3) as u32,
        row.get::<_, i64>(4) as u32,
        p.pid,
        p.claim_seq,
    );
    tx.emit(event, p.now).await?;
    Ok(Some(row.get(0)))
}

pub(super) async fn job_start(s: &PgStore, p: JobStartParams) -> StoreResult<Option<bool>> {
    in_tx!(s, "job_start", tx => start_in_tx(tx, &p).await?)
}

/// PostgreSQL text cannot hold NUL; the executor already maps it, and this guard keeps one
/// bad line from failing a whole flush.
fn chunk(lines: &[String]) -> String {
    let text = lines.join("\n");
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

pub(super) async fn job_output_append(s: &PgStore, p: OutputAppendParams) -> StoreResult<bool> {
    let total = (p.stdout.len() + p.stderr.len()) as i64;
    in_tx!(s, "job_output_append", tx => {
        // Fence, the expected first line and line-number allocation in one statement.
        let first = tx
            .query_opt(
                "UPDATE jobs SET output_lines = output_lines + $3
                 WHERE id = $1 AND claim_seq = $2 AND status = 'running'
                   AND ($4::bigint IS NULL OR output_lines = $4)
                 RETURNING output_lines - $3",
                &[&p.job_id, &p.claim_seq, &total, &p.first_line],
            )
            .await?;
        match first {
            // Not ours, or the log does not end where the batch starts: ours and already
            // ending after this batch means an earlier try of it committed.
            None => match p.first_line {
                None => false,
                Some(expected) => tx
                    .query_opt(
                        "SELECT output_lines FROM jobs WHERE id = $1 AND claim_seq = $2 AND status = 'running'",
                        &[&p.job_id, &p.claim_seq],
                    )
                    .await?
                    .is_some_and(|r| r.get::<_, i64>(0) == expected + total),
            },
            Some(row) => {
                let mut next: i64 = row.get(0);
                for (stream, lines) in [(STDOUT, &p.stdout), (STDERR, &p.stderr)] {
                    if lines.is_empty() {
                        continue;
                    }
                    tx.exec(
                        "INSERT INTO output (job_id, claim_seq, stream, first_line, line_count, data, created_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        &[&p.job_id, &p.claim_seq, &stream, &next, &(lines.len() as i64), &chunk(lines), &p.now],
                    )
                    .await?;
                    next += lines.len() as i64;
                }
                // No `change::OUTPUT`: the caller wakes this job's followers only.
                true
            }
        }
    })
}

pub(super) async fn job_progress(s: &PgStore, p: JobProgressParams) -> StoreResult<bool> {
    in_tx!(s, "job_progress", tx => {
        let row = tx
            .query_opt(
                "UPDATE jobs SET progress = $3, progress_message = $4
                 WHERE id = $1 AND claim_seq = $2 AND status = 'running' RETURNING run_id, pipeline, shard_index",
                &[&p.job_id, &p.claim_seq, &(p.percent as i64), &p.message],
            )
            .await?;
        match row {
            None => false,
            Some(r) => {
                let run_id: String = r.get(0);
                let pipeline: String = r.get(1);
                let event = payload::job_progress(&run_id, &p.job_id, &pipeline, r.get::<_, i64>(2) as u32,
                                                  p.percent, &p.message);
                tx.emit(event, p.now).await?;
                true
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
            Ok(s @ (RunStatus::Completed | RunStatus::Failed)) => Some(AbortOutcome::Finished(s)),
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
                        "UPDATE runs SET status = 'aborted', aborted_by = $2 WHERE id = $1 AND status IN ('queued', 'running')",
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
                    super::finish::land_aborted(tx, run_id, queued.len(), now).await?;
                    tx.kinds |= change::ABORT | change::WORK;
                    let (queued, running) = (queued.len() as u32, flagged as u32);
                    AbortOutcome::Aborted { aborted_jobs: queued + running, queued, running }
                }
            }
        }
    })
}

pub(super) async fn node_register(s: &PgStore, node: NodeRow) -> StoreResult<()> {
    in_tx!(s, "node_register", tx => {
        tx.exec(
            "INSERT INTO nodes (id, host, pid, proc_start, boot_id, slots, started_at, heartbeat_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,
                 proc_start = EXCLUDED.proc_start, boot_id = EXCLUDED.boot_id, slots = EXCLUDED.slots,
                 started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at",
            &[&node.id, &node.host, &(node.pid as i64), &(node.proc_start as i64), &node.boot_id,
              &(node.slots as i64), &node.started_at, &node.heartbeat_at],
        )
        .await?;
    })
}

pub(super) async fn node_heartbeat(
    s: &PgStore,
    p: NodeHeartbeatParams,
) -> StoreResult<HeartbeatOutcome> {
    let ids: Vec<&str> = p.running.iter().map(|(id, _)| id.as_str()).collect();
    in_tx!(s, "node_heartbeat", tx => {
        let registered = tx
            .exec("UPDATE nodes SET heartbeat_at = $2 WHERE id = $1", &[&p.node_id, &p.now])
            .await?
            == 1;
        let current: HashMap<String, (String, i64, bool)> = tx
            .query(
                "SELECT id, status, claim_seq, abort_requested FROM jobs WHERE id = ANY($1)",
                &[&ids],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
            .collect();
        let cancel = p
            .running
            .iter()
            .filter(|(id, claim_seq)| {
                !matches!(current.get(id), Some((status, c, abort))
                    if status == "running" && c == claim_seq && !abort)
            })
            .cloned()
            .collect();
        HeartbeatOutcome { registered, cancel }
    })
}

pub(super) async fn node_remove(s: &PgStore, node_id: &str) -> StoreResult<()> {
    in_tx!(s, "node_remove", tx => {
        tx.exec("DELETE FROM nodes WHERE id = $1", &[&node_id]).await?;
        tx.exec("DELETE FROM pipeline_nodes WHERE node_id = $1", &[&node_id]).await?;
    })
}

pub(super) async fn node_remove_stale(
    s: &PgStore,
    node_id: &str,
    seen_heartbeat_at: i64,
) -> StoreResult<bool> {
    in_tx!(s, "node_remove_stale", tx => {
        let removed = tx
            .exec("DELETE FROM nodes WHERE id = $1 AND heartbeat_at = $2", &[&node_id, &seen_heartbeat_at])
            .await?
            == 1;
        if removed {
            tx.exec("DELETE FROM pipeline_nodes WHERE node_id = $1", &[&node_id]).await?;
        }
        removed
    })
}

pub(super) async fn runs_prune(
    s: &PgStore,
    before: i64,
    batch: usize,
) -> StoreResult<PruneOutcome> {
    in_tx!(s, "runs_prune", tx => {
        // One node prunes at a time; the others skip this round instead of fighting.
        let ours: bool = tx
            .query_opt(
                "SELECT pg_try_advisory_xact_lock(hashtextextended(current_schema() || '/runyard/prune', 0))",
                &[],
            )
            .await?
            .map(|r| r.get(0))
            .unwrap_or(false);
        if !ours {
            PruneOutcome::default()
        } else {
            let ids: Vec<String> = tx
                .query(
                    "SELECT id FROM runs WHERE finished_at IS NOT NULL AND finished_at < $1
                     ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                    &[&before, &(batch as i64)],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if !ids.is_empty() {
                tx.exec("DELETE FROM output WHERE job_id IN (SELECT id FROM jobs WHERE run_id = ANY($1))", &[&ids])
                    .await?;
                tx.exec("DELETE FROM jobs WHERE run_id = ANY($1)", &[&ids]).await?;
                tx.exec(
                    "DELETE FROM delivery_attempts WHERE delivery_id IN
                         (SELECT id FROM deliveries WHERE run_id = ANY($1) AND status != 'pending')",
                    &[&ids],
                )
                .await?;
                tx.exec("DELETE FROM deliveries WHERE run_id = ANY($1) AND status != 'pending'", &[&ids])
                    .await?;
                tx.exec("DELETE FROM runs WHERE id = ANY($1)", &[&ids]).await?;
            }
            let limit = (batch * EVENTS_PER_RUN_PRUNED) as i64;
            let deleted = tx
                .query_opt(
                    "WITH gone AS (
                         DELETE FROM events WHERE id IN (
                             SELECT e.id FROM events e WHERE e.created_at < $1
                               AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = e.run_id AND r.finished_at IS NULL)
                             ORDER BY e.id LIMIT $2)
                         RETURNING id)
                     SELECT count(*), max(id) FROM gone",
                    &[&before, &limit],
                )
                .await?;
            let (events, highest) = deleted
                .map(|r| (r.get::<_, i64>(0) as usize, r.get::<_, Option<i64>>(1)))
                .unwrap_or((0, None));
            if let Some(highest) = highest {
                // Readers resuming at or below this id have missed events: they get `resync`.
                tx.exec(
                    "INSERT INTO runyard_meta (key, value) VALUES ('events_pruned_through', $1)
                     ON CONFLICT (key) DO UPDATE SET value = GREATEST(runyard_meta.value, EXCLUDED.value)",
                    &[&highest],
                )
                .await?;
            }
            let more = ids.len() == batch || events as i64 == limit;
            PruneOutcome { runs: ids.len(), events, more }
        }
    })
}

pub(super) async fn deliveries_claim(
    s: &PgStore,
    node_id: &str,
    now: i64,
    lease_ms: i64,
    limit: usize,
) -> StoreResult<Vec<PendingDelivery>> {
    in_tx!(s, "deliveries_claim", tx => {
        tx.query(
            "UPDATE deliveries SET lease_node = $1, lease_until = $2 + $3
             WHERE id IN (SELECT id FROM deliveries
                          WHERE status = 'pending' AND next_attempt_at <= $2
                            AND (lease_until IS NULL OR lease_until < $2)
                          ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED)
             RETURNING id, run_id, url, payload, attempts",
            &[&node_id, &now, &lease_ms, &(limit as i64)],
        )
        .await?
        .iter()
        .map(|r| PendingDelivery {
            id: r.get(0),
            run_id: r.get(1),
            url: r.get(2),
            payload: r.get(3),
            attempts: r.get::<_, i64>(4) as u32,
        })
        .collect()
    })
}

pub(super) async fn delivery_record(s: &PgStore, p: DeliveryRecordParams) -> StoreResult<bool> {
    let now = p.started_at + p.duration_ms as i64;
    let (status, next_at, finished) = match p.next {
        DeliveryNext::Delivered => ("delivered", None, Some(now)),
        DeliveryNext::RetryAt(at) => ("pending", Some(at), None),
        DeliveryNext::GiveUp => ("failed", None, Some(now)),
    };
    let code = p.status_code.map(i64::from);
    in_tx!(s, "delivery_record", tx => {
        let attempt = tx
            .query_opt(
                "UPDATE deliveries SET attempts = attempts + 1, status = $3,
                        next_attempt_at = COALESCE($4, next_attempt_at), finished_at = $5,
                        last_status = $6, last_error = $7, lease_node = NULL, lease_until = NULL
                 WHERE id = $1 AND lease_node = $2 AND status = 'pending'
                 RETURNING attempts",
                &[&p.id, &p.node_id, &status, &next_at, &finished, &code, &p.error],
            )
            .await?;
        match attempt {
            None => false,
            Some(r) => {
                let attempt: i64 = r.get(0);
                tx.exec(
                    "INSERT INTO delivery_attempts (delivery_id, attempt, node_id, started_at, duration_ms, status_code, error)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[&p.id, &attempt, &p.node_id, &p.started_at, &(p.duration_ms as i64), &code, &p.error],
                )
                .await?;
                true
            }
        }
    })
}

pub(super) async fn pipeline_node_set(s: &PgStore, st: PipelineNodeState) -> StoreResult<()> {
    in_tx!(s, "pipeline_node_set", tx => {
        tx.exec(
            "INSERT INTO pipeline_nodes (node_id, pipeline, setup, failures, circuit, open_until, last_error, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (node_id, pipeline) DO UPDATE SET setup = EXCLUDED.setup, failures = EXCLUDED.failures,
                 circuit = EXCLUDED.circuit, open_until = EXCLUDED.open_until, last_error = EXCLUDED.last_error,
                 updated_at = EXCLUDED.updated_at",
            &[&st.node_id, &st.pipeline, &st.setup, &(st.failures as i64), &st.circuit, &st.open_until,
              &st.last_error, &st.updated_at],
        )
        .await?;
    })
}

/// Pauses or resumes a pipeline (see [`crate::store::Store::pipeline_pause`]). The row is
/// locked (or inserted) first, so two concurrent pauses emit one event.
pub(super) async fn pipeline_pause(s: &PgStore, p: PipelinePauseParams) -> StoreResult<bool> {
    in_tx!(s, "pipeline_pause", tx => {
        tx.exec(
            "INSERT INTO pipeline_state (pipeline, paused, updated_at) VALUES ($1, false, $2)
             ON CONFLICT (pipeline) DO NOTHING",
            &[&p.pipeline, &p.now],
        )
        .await?;
        let was: bool = tx
            .query_opt(
                "SELECT paused FROM pipeline_state WHERE pipeline = $1 FOR UPDATE",
                &[&p.pipeline],
            )
            .await?
            .map(|r| r.get(0))
            .unwrap_or(false);
        if was == p.paused {
            false
        } else {
            let at = p.paused.then_some(p.now);
            let by = if p.paused { p.actor.clone() } else { None };
            tx.exec(
                "UPDATE pipeline_state SET paused = $2, paused_at = $3, paused_by = $4, updated_at = $5
                 WHERE pipeline = $1",
                &[&p.pipeline, &p.paused, &at, &by, &p.now],
            )
            .await?;
            tx.emit(payload::pipeline_paused(&p.pipeline, p.paused, p.actor.as_deref()), p.now)
                .await?;
            tx.kinds |= change::WORK;
            true
        }
    })
}

/// Stores a schedule's next fire time unless the record holds that schedule already.
pub(super) async fn schedule_init(
    s: &PgStore,
    pipeline: &str,
    key: &str,
    next_fire_at: i64,
    now: i64,
) -> StoreResult<bool> {
    in_tx!(s, "schedule_init", tx => {
        tx.exec(
            "INSERT INTO pipeline_state (pipeline, schedule_key, next_fire_at, updated_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (pipeline) DO UPDATE SET schedule_key = EXCLUDED.schedule_key,
                 next_fire_at = EXCLUDED.next_fire_at, updated_at = EXCLUDED.updated_at
             WHERE pipeline_state.schedule_key IS DISTINCT FROM EXCLUDED.schedule_key
                OR pipeline_state.next_fire_at IS NULL",
            &[&pipeline, &key, &next_fire_at, &now],
        )
        .await? == 1
    })
}

/// Fires one tick (see [`crate::store::Store::schedule_fire`]): the conditional advance
/// locks the record, so a racing node's advance waits, re-checks and changes nothing.
pub(super) async fn schedule_fire(
    s: &PgStore,
    p: ScheduleFireParams,
) -> StoreResult<Option<RunCreated>> {
    in_tx!(s, "schedule_fire", tx => {
        let advanced = tx
            .exec(
                "UPDATE pipeline_state SET next_fire_at = $4, updated_at = $5
                 WHERE pipeline = $1 AND schedule_key = $2 AND next_fire_at = $3",
                &[&p.pipeline, &p.key, &p.due, &p.next, &p.run.now],
            )
            .await?;
        if advanced == 1 {
            Some(create_in_tx(tx, &p.run).await?)
        } else {
            None
        }
    })
}
