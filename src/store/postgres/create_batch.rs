//! Group commit of plain run creations: the triggers that arrive while a creation's
//! transaction is in flight share the next one.
//!
//! A plain run (no idempotency key, kept shards or needs: nothing is read before its
//! insert, nothing can refuse it) is queued; a caller that finds no writer busy writes
//! the queue in one transaction ([`super::group_commit::GroupCommit`], the ends' queue):
//! one insert of every run and one of every job (`INSERT … SELECT FROM unnest(…)`), then
//! every run's events and COMMIT, all sent together: a batch of any size costs one round
//! trip, one commit and three plans. A lone
//! trigger is written at once, as before, by [`runs::run_create`]: batching adds no
//! latency, it only shares what would otherwise wait.
//!
//! Each run is durable before its caller hears of it (the answer is sent after COMMIT).
//! A batch that fails for another reason than the database being out of reach is
//! written again one run at a time, so one run that cannot be stored fails alone; an
//! answer lost at COMMIT is ambiguous for every run of the batch, and each caller reads
//! its own run back by id (`scheduler/create.rs`), as for a lone run. So is a batch
//! whose writer is cancelled mid-way (its HTTP client went away): the others hear
//! "ambiguous", read back, and create their runs again if that transaction never
//! committed.

use super::group_commit::GroupCommit;
use std::collections::HashMap;

use super::runs::{self, is_plain, shard_events};
use super::{PgStore, StoreError, StoreResult, Tx, in_tx};
use crate::store::{RunCreateParams, RunCreated, after, change};

/// Plain run creations waiting to share a transaction.
pub(super) type CreateQueue = GroupCommit<RunCreateParams, RunCreated>;

/// Transactions creating runs at once, at most. Measured with the `ingest` bench (16
/// clients, 2 cores): one writer takes 4,000 triggers/s at 330 µs of machine CPU each,
/// two split the batches and take 3,750/s at 400 µs.
const WRITERS: usize = 1;

pub(super) fn create_queue() -> CreateQueue {
    GroupCommit::new(WRITERS)
}

/// Creates the run `p` describes: a plain run with whatever other plain runs are queued,
/// any other alone.
pub(super) async fn run_create(s: &PgStore, p: RunCreateParams) -> StoreResult<RunCreated> {
    if !is_plain(&p) {
        return runs::run_create(s, p).await;
    }
    // Run ids are unique: no two requests clash.
    s.creates
        .submit(p, |_, _| false, |batch| write_batch(s, batch))
        .await
}

/// Writes `batch` in one transaction; one answer per run, in order.
async fn write_batch(s: &PgStore, batch: Vec<RunCreateParams>) -> Vec<StoreResult<RunCreated>> {
    if batch.len() == 1 {
        let p = batch.into_iter().next().expect("one run");
        return vec![runs::run_create(s, p).await];
    }
    let written = in_tx!(s, "run_create", tx => create_all(tx, &batch).await?);
    match written {
        Ok(created) => created.into_iter().map(Ok).collect(),
        Err(e) if !e.is_unavailable() && !e.is_ambiguous() => {
            tracing::debug!(
                "a batch of {} run creations failed, writing them one by one: {e}",
                batch.len()
            );
            let mut answers = Vec::with_capacity(batch.len());
            for p in batch {
                answers.push(runs::run_create(s, p).await);
            }
            answers
        }
        Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
    }
}

/// Every run of a batch, from one array per column (plain runs: no idempotency key, no
/// kept shards); answers each run's id and whether its pipeline is paused.
const INSERT_RUNS: &str = "INSERT INTO runs (id, pipeline, status, params, shard_count, triggered_by, actor,
                                   created_at, has_finalizer, callback_url, rerun_of, shards_done, priority,
                                   run_at, scheduled_for, workflow_run_id, workflow_step)
     SELECT r.id, r.pipeline, 'queued', r.params, r.shard_count, r.triggered_by, r.actor, r.created_at,
            r.has_finalizer, r.callback_url, r.rerun_of, 0, r.priority, r.run_at, r.scheduled_for, r.wf, r.step
     FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::bigint[],
                 $8::bool[], $9::text[], $10::text[], $11::bigint[], $12::bigint[], $13::bigint[],
                 $14::text[], $15::text[])
          AS r(id, pipeline, params, shard_count, triggered_by, actor, created_at, has_finalizer,
               callback_url, rerun_of, priority, run_at, scheduled_for, wf, step)
     RETURNING id, EXISTS (SELECT 1 FROM pipeline_state s WHERE s.pipeline = runs.pipeline AND s.paused)";

/// Every job of a batch's runs, from one array per column.
const INSERT_JOBS: &str = "INSERT INTO jobs (id, run_id, pipeline, shard_index, shard_count, status,
                                   max_attempts, retry_backoff_ms, on_orphan, max_orphan_requeues, run_after,
                                   created_at, retry_on, priority, held, ckey)
     SELECT j.id, j.run_id, j.pipeline, j.idx, j.shard_count, 'queued', j.max_attempts, j.backoff,
            j.on_orphan, j.max_requeues, j.run_after, j.created_at, j.retry_on, j.priority, j.held, j.ckey
     FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[],
                 $8::text[], $9::bigint[], $10::bigint[], $11::bigint[], $12::text[], $13::bigint[],
                 $14::bool[], $15::text[])
          AS j(id, run_id, pipeline, idx, shard_count, max_attempts, backoff, on_orphan, max_requeues,
               run_after, created_at, retry_on, priority, held, ckey)";

/// The batch's runs, one array per column of [`INSERT_RUNS`].
#[derive(Default)]
struct RunColumns<'p> {
    id: Vec<&'p str>,
    pipeline: Vec<&'p str>,
    params: Vec<String>,
    shard_count: Vec<i64>,
    triggered_by: Vec<&'p str>,
    actor: Vec<Option<&'p str>>,
    created_at: Vec<i64>,
    has_finalizer: Vec<bool>,
    callback_url: Vec<Option<&'p str>>,
    rerun_of: Vec<Option<&'p str>>,
    priority: Vec<i64>,
    run_at: Vec<Option<i64>>,
    scheduled_for: Vec<Option<i64>>,
    workflow_run_id: Vec<Option<&'p str>>,
    workflow_step: Vec<Option<&'p str>>,
}

/// The batch's jobs, one array per column of [`INSERT_JOBS`].
#[derive(Default)]
struct JobColumns<'p> {
    id: Vec<&'p str>,
    run_id: Vec<&'p str>,
    pipeline: Vec<&'p str>,
    shard_index: Vec<i64>,
    shard_count: Vec<i64>,
    max_attempts: Vec<i64>,
    retry_backoff_ms: Vec<i64>,
    on_orphan: Vec<&'p str>,
    max_orphan_requeues: Vec<i64>,
    run_after: Vec<i64>,
    created_at: Vec<i64>,
    retry_on: Vec<Option<String>>,
    priority: Vec<i64>,
    held: Vec<bool>,
    ckey: Vec<Option<&'p str>>,
}

fn columns(batch: &[RunCreateParams]) -> (RunColumns<'_>, JobColumns<'_>) {
    let (mut r, mut j) = (RunColumns::default(), JobColumns::default());
    for p in batch {
        let shard_count = p.job_ids.len() as i64;
        let priority = i64::from(p.options.priority);
        r.id.push(&p.run_id);
        r.pipeline.push(&p.pipeline);
        r.params
            .push(serde_json::to_string(&p.params).unwrap_or_else(|_| "{}".into()));
        r.shard_count.push(shard_count);
        r.triggered_by.push(&p.triggered_by);
        r.actor.push(p.actor.as_deref());
        r.created_at.push(p.now);
        r.has_finalizer.push(p.has_finalizer);
        r.callback_url.push(p.callback_url.as_deref());
        r.rerun_of.push(p.options.rerun_of.as_deref());
        r.priority.push(priority);
        r.run_at.push(p.options.not_before);
        r.scheduled_for.push(p.options.scheduled_for);
        r.workflow_run_id
            .push(p.options.workflow.as_ref().map(|(w, _)| w.as_str()));
        r.workflow_step
            .push(p.options.workflow.as_ref().map(|(_, s)| s.as_str()));
        let (run_after, held) = after::job_due(&p.options, p.now);
        let retry_on = p.policy.retry_on.to_column();
        for (index, id) in p.job_ids.iter().enumerate() {
            j.id.push(id);
            j.run_id.push(&p.run_id);
            j.pipeline.push(&p.pipeline);
            j.shard_index.push(index as i64);
            j.shard_count.push(shard_count);
            j.max_attempts.push(i64::from(p.policy.max_attempts));
            j.retry_backoff_ms.push(p.policy.retry_backoff_ms);
            j.on_orphan.push(p.policy.on_orphan);
            j.max_orphan_requeues
                .push(i64::from(p.policy.max_orphan_requeues));
            j.run_after.push(run_after);
            j.created_at.push(p.now);
            j.retry_on.push(retry_on.clone());
            j.priority.push(priority);
            j.held.push(held);
            j.ckey.push(p.options.concurrency_key.as_deref());
        }
    }
    (r, j)
}

/// Inserts every run of `batch` (one statement), their jobs (one statement), then their
/// events and COMMIT: one round trip and two plans, whatever the batch's size.
async fn create_all(tx: &mut Tx, batch: &[RunCreateParams]) -> StoreResult<Vec<RunCreated>> {
    tx.prepare(INSERT_RUNS).await?;
    tx.prepare(INSERT_JOBS).await?;
    for p in batch {
        tx.emit_many(shard_events(p), p.now).await?;
    }
    tx.kinds |= change::WORK;
    let events = tx.take_events();
    let (r, j) = columns(batch);
    type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);
    let run_values: [Param<'_>; 15] = [
        &r.id,
        &r.pipeline,
        &r.params,
        &r.shard_count,
        &r.triggered_by,
        &r.actor,
        &r.created_at,
        &r.has_finalizer,
        &r.callback_url,
        &r.rerun_of,
        &r.priority,
        &r.run_at,
        &r.scheduled_for,
        &r.workflow_run_id,
        &r.workflow_step,
    ];
    let job_values: [Param<'_>; 15] = [
        &j.id,
        &j.run_id,
        &j.pipeline,
        &j.shard_index,
        &j.shard_count,
        &j.max_attempts,
        &j.retry_backoff_ms,
        &j.on_orphan,
        &j.max_orphan_requeues,
        &j.run_after,
        &j.created_at,
        &j.retry_on,
        &j.priority,
        &j.held,
        &j.ckey,
    ];
    let tx = &*tx;
    let sent = async {
        tokio::try_join!(
            biased;
            tx.query(INSERT_RUNS, &run_values),
            tx.exec(INSERT_JOBS, &job_values)
        )
    };
    let (rows, _) = tx.commit_with(events, sent).await?;
    let paused: HashMap<String, bool> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    batch
        .iter()
        .map(|p| {
            let paused = *paused
                .get(&p.run_id)
                .ok_or_else(|| StoreError::internal("a plain run's insert returned no row"))?;
            Ok(RunCreated {
                run_id: p.run_id.clone(),
                job_ids: p.job_ids.clone(),
                created_at: p.now,
                existing: false,
                existing_params: None,
                paused: Some(paused),
                after_status: None,
            })
        })
        .collect()
}
