//! Group commit of plain run creations: the triggers that arrive while a creation's
//! transaction is in flight share the next one.
//!
//! A plain run (no idempotency key, kept shards or needs: nothing is read before its
//! insert, nothing can refuse it) is queued; a caller that finds no writer busy writes
//! the queue in one transaction ([`super::group_commit::GroupCommit`], the ends' queue):
//! each run's insert and its jobs' go out together, pipelined, then every run's events
//! and COMMIT, so a batch of any size costs one round trip and one commit. A lone
//! trigger is written at once, as before, by [`runs::run_create`]: batching adds no
//! latency, it only shares what would otherwise wait.
//!
//! Each run is durable before its caller hears of it (the answer is sent after COMMIT).
//! A batch that fails for another reason than the database being out of reach is
//! written again one run at a time, so one run that cannot be stored fails alone; an
//! answer lost at COMMIT is ambiguous for every run of the batch, and each caller reads
//! its own run back by id (`scheduler/create.rs`), as for a lone run.

use super::group_commit::GroupCommit;
use super::runs::{
    self, INSERT_QUEUED_JOBS, INSERT_RUN, RunRow, insert_queued_jobs, is_plain, shard_events,
};
use super::{PgStore, StoreError, StoreResult, Tx, in_tx};
use crate::store::{RunCreateParams, RunCreated, change};

/// Plain run creations waiting to share a transaction.
pub(super) type CreateQueue = GroupCommit<RunCreateParams, RunCreated>;

/// Transactions creating runs at once, at most. One is enough to keep the database busy
/// (a batch is one round trip); more would only split the batches.
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

/// Inserts every run of `batch` with its jobs, then their events and COMMIT: one round
/// trip, statements in the batch's order (so the first error is the cause).
async fn create_all(tx: &mut Tx, batch: &[RunCreateParams]) -> StoreResult<Vec<RunCreated>> {
    tx.prepare(INSERT_RUN).await?;
    tx.prepare(INSERT_QUEUED_JOBS).await?;
    for p in batch {
        tx.emit_many(shard_events(p), p.now).await?;
    }
    tx.kinds |= change::WORK;
    let events = tx.take_events();
    let rows: Vec<RunRow<'_>> = batch.iter().map(RunRow::new).collect();
    let tx = &*tx;
    let sent = async {
        let each = futures_util::future::join_all(rows.iter().map(|row| async move {
            let values = row.values();
            tokio::try_join!(
                biased;
                tx.query_opt(INSERT_RUN, &values),
                insert_queued_jobs(tx, row.p)
            )
        }))
        .await;
        each.into_iter().collect::<StoreResult<Vec<_>>>()
    };
    let inserted = tx.commit_with(events, sent).await?;
    batch
        .iter()
        .zip(inserted)
        .map(|(p, (row, _))| {
            let row =
                row.ok_or_else(|| StoreError::internal("a plain run's insert returned no row"))?;
            Ok(RunCreated {
                run_id: p.run_id.clone(),
                job_ids: p.job_ids.clone(),
                created_at: p.now,
                existing: false,
                existing_params: None,
                paused: Some(row.get::<_, bool>(1)),
                after_status: None,
            })
        })
        .collect()
}
