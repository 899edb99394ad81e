//! Group commit of plain run creations: the triggers that arrive while a creation is in
//! flight share the next one.
//!
//! A plain run (no idempotency key, kept shards or needs: nothing is read before its
//! insert, nothing can refuse it) is queued; a caller that finds no writer busy writes
//! the queue ([`super::group_commit::GroupCommit`], the ends' queue) as one statement
//! that is its own transaction ([`super::autocommit`]): data-modifying CTEs insert every
//! run, every job and every event from one array per column (`INSERT … SELECT FROM
//! unnest(…)`). A batch of any size, a lone trigger included, costs one message, one
//! plan and one commit; batching adds no latency, it only shares what would otherwise
//! wait.
//!
//! Each run is durable before its caller hears of it (the answer is sent after the
//! statement committed). A batch that fails for another reason than the database being
//! out of reach is written again one run at a time, so one run that cannot be stored
//! fails alone; an answer lost on the way is ambiguous for every run of the batch, and
//! each caller reads its own run back by id (`scheduler/create.rs`). So is a batch whose
//! writer is cancelled mid-way (its HTTP client went away): the others hear
//! "ambiguous", read back, and create their runs again if that statement never
//! committed.

use super::group_commit::GroupCommit;
use std::collections::HashMap;

use super::autocommit::one_statement;
use super::runs::{self, is_plain, shard_events};
use super::{PgStore, StoreError, StoreResult};
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

/// Writes `batch` in one statement; one answer per run, in order.
async fn write_batch(s: &PgStore, batch: Vec<RunCreateParams>) -> Vec<StoreResult<RunCreated>> {
    match create_all(s, &batch).await {
        Ok(created) => created.into_iter().map(Ok).collect(),
        Err(e) if batch.len() > 1 && !e.is_unavailable() && !e.is_ambiguous() => {
            tracing::debug!(
                "a batch of {} run creations failed, writing them one by one: {e}",
                batch.len()
            );
            let mut answers = Vec::with_capacity(batch.len());
            for p in batch {
                answers.push(
                    create_all(s, std::slice::from_ref(&p))
                        .await
                        .map(|mut c| c.remove(0)),
                );
            }
            answers
        }
        Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
    }
}

/// Every run of a batch (plain runs: no idempotency key, no kept shards), their jobs and
/// their events, from one array per column, in one statement (PostgreSQL runs every
/// data-modifying CTE to its end, referenced or not); answers each run's id and whether
/// its pipeline is paused. Event ids are the transaction's id, then the index, as
/// [`super::tx`] numbers them.
const INSERT_ALL: &str = "WITH new_runs AS (
         INSERT INTO runs (id, pipeline, status, params, shard_count, triggered_by, actor,
                           created_at, has_finalizer, callback_url, rerun_of, shards_done, priority,
                           run_at, scheduled_for, workflow_run_id, workflow_step)
         SELECT r.id, r.pipeline, 'queued', r.params, r.shard_count, r.triggered_by, r.actor, r.created_at,
                r.has_finalizer, r.callback_url, r.rerun_of, 0, r.priority, r.run_at, r.scheduled_for, r.wf, r.step
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::bigint[],
                     $8::bool[], $9::text[], $10::text[], $11::bigint[], $12::bigint[], $13::bigint[],
                     $14::text[], $15::text[])
              AS r(id, pipeline, params, shard_count, triggered_by, actor, created_at, has_finalizer,
                   callback_url, rerun_of, priority, run_at, scheduled_for, wf, step)
         RETURNING id, pipeline),
     new_jobs AS (
         INSERT INTO jobs (id, run_id, pipeline, shard_index, shard_count, status, max_attempts,
                           retry_backoff_ms, on_orphan, max_orphan_requeues, run_after, created_at,
                           retry_on, priority, held, ckey)
         SELECT j.id, j.run_id, j.pipeline, j.idx, j.shard_count, 'queued', j.max_attempts, j.backoff,
                j.on_orphan, j.max_requeues, j.run_after, j.created_at, j.retry_on, j.priority, j.held, j.ckey
         FROM unnest($16::text[], $17::text[], $18::text[], $19::bigint[], $20::bigint[], $21::bigint[],
                     $22::bigint[], $23::text[], $24::bigint[], $25::bigint[], $26::bigint[], $27::text[],
                     $28::bigint[], $29::bool[], $30::text[])
              AS j(id, run_id, pipeline, idx, shard_count, max_attempts, backoff, on_orphan, max_requeues,
                   run_after, created_at, retry_on, priority, held, ckey)),
     new_events AS (
         INSERT INTO events (id, name, run_id, data, created_at)
         SELECT (pg_current_xact_id()::text::bigint << 16) | e.n, e.name, e.run_id, e.data, e.at
         FROM unnest($31::bigint[], $32::text[], $33::text[], $34::text[], $35::bigint[])
              AS e(n, name, run_id, data, at))
     SELECT n.id, EXISTS (SELECT 1 FROM pipeline_state s WHERE s.pipeline = n.pipeline AND s.paused)
     FROM new_runs n";

/// The batch's runs, one array per column of [`INSERT_ALL`]'s run insert.
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

/// The batch's jobs, one array per column of [`INSERT_ALL`]'s job insert.
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

/// The batch's events (each run's `job:created`), one array per column of
/// [`INSERT_ALL`]'s event insert.
#[derive(Default)]
struct EventColumns {
    index: Vec<i64>,
    name: Vec<&'static str>,
    run_id: Vec<String>,
    data: Vec<String>,
    at: Vec<i64>,
}

fn event_columns(batch: &[RunCreateParams]) -> StoreResult<EventColumns> {
    let mut e = EventColumns::default();
    for p in batch {
        for mut event in shard_events(p) {
            e.index.push(e.index.len() as i64);
            e.name.push(event.name.as_str());
            e.data.push(event.data_text(p.now));
            e.run_id.push(std::mem::take(&mut event.run_id));
            e.at.push(p.now);
        }
    }
    if e.index.len() > 1 << 16 {
        return Err(StoreError::internal(
            "more than 65,536 events in one transaction",
        ));
    }
    Ok(e)
}

/// Inserts every run of `batch`, their jobs and their events in one statement: one
/// message, one plan and one commit, whatever the batch's size.
async fn create_all(s: &PgStore, batch: &[RunCreateParams]) -> StoreResult<Vec<RunCreated>> {
    let (r, j) = columns(batch);
    let e = event_columns(batch)?;
    type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);
    let values: [Param<'_>; 35] = [
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
        &e.index,
        &e.name,
        &e.run_id,
        &e.data,
        &e.at,
    ];
    let kinds = change::WORK | change::EVENTS;
    let rows = one_statement(s, "run_create", kinds, INSERT_ALL, &values).await?;
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
