//! Ending executions on PostgreSQL, several in one transaction.
//!
//! The rules are the backend-neutral ones ([`decide`], [`decided_without_row`], the
//! landing's [`crate::store::completion`], [`payload`]); this file only turns their
//! answers into as few statements and round trips as the batch allows. A batch of any
//! size costs, in the common case (completions, shards, no finalizer, no webhook): the
//! fenced read of all its jobs, the write of their ends (`UPDATE … FROM (VALUES …)`)
//! and the landing of their runs, sent together; then the runs' terminal update with
//! the events' insert (one statement) and the claim, sent together; then COMMIT. Rare
//! paths (a retry or requeue decided from the row, a finalizer queued or ended, a
//! webhook's outbox row, a multi-shard run's shard statuses) add statements only when
//! they occur.
//!
//! Fencing inside a batch: the read locks every job row (`FOR UPDATE`, in id order —
//! the lock order of the module docs), and only a job whose row is still `running` under
//! the caller's `claim_seq` is written; a stale execution's end changes nothing and does
//! not fail the others. The callers make sure a batch never holds one job twice.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use super::claim::{CapWait, claim_in_tx};
use super::finish_rows::{end_rows, ends_sql, fences_sql, id_rows, read_fences, write_ends};
use super::landing::{
    EndFact, Finalizer, Landing, TERMINAL, land_query, land_sql, landed, terminal_row,
    terminal_sql, touch_rows, touches, turn_terminal,
};
use super::rows::Rows;
use super::tx::{EventColumns, PendingEvent};
use super::{StoreError, StoreResult, Tx};
use crate::model::{JobKind, JobPart, RunStatus, parse_job_id};
use crate::store::transition::{JobFence, Transition, decide, decided_without_row, outcome_error};
use crate::store::{ClaimedJob, FinishOutcome, JobClaimParams, JobFinishParams, change};
use crate::store::{payload, refill};
/// A job of the batch whose end is written.
struct Ending<'p> {
    /// Index in the batch (the caller's answer slot).
    at: usize,
    p: &'p JobFinishParams,
    fence: JobFence,
    t: Transition,
    /// The execution's start is written by this end (it was not recorded before).
    new_start: bool,
}

/// Ends the executions `batch` names (each fenced on its own claim), lands their runs
/// and, with `claim`, claims the jobs that refill their slots; one answer per entry, in
/// order, and the jobs claimed.
///
/// Statements that do not wait on each other's answers go out together (tokio-postgres
/// pipelines the queries of one connection that are awaited at once): the fenced read
/// with the write (and the landing) when every end is decided without its row, and the
/// runs' terminal update (which inserts the events too) with the claim. A batch of
/// completions costs two round trips and COMMIT (BEGIN rides with the first).
pub(super) async fn finish_batch(
    tx: &mut Tx,
    batch: &[JobFinishParams],
    claim: Option<&JobClaimParams>,
    careful: &AtomicBool,
) -> StoreResult<(Vec<FinishOutcome>, Vec<ClaimedJob>)> {
    let mut answers: Vec<FinishOutcome> = batch.iter().map(|_| not_applied()).collect();
    let ids: Vec<&str> = batch.iter().map(|p| p.job_id.as_str()).collect();
    let blind: Option<Vec<_>> = batch
        .iter()
        .map(|p| decided_without_row(&p.outcome))
        .collect();
    // Without waiting for the rows when no end needs them: the write is fenced by its
    // own condition, and the read (sent first, locking in id order) sees the rows as
    // they were before it. The landing goes too, computed as if every end is still its
    // execution's (a job id names its run and kind); when one is not (a stale end), the
    // transaction is rolled back and run again landing only what the read found held.
    let parsed: Option<Vec<_>> = batch.iter().map(|p| parse_job_id(&p.job_id).ok()).collect();
    let run_ids: Vec<String> = parsed
        .iter()
        .flatten()
        .map(|(run, _)| run.to_string())
        .collect();
    let mut optimistic: Option<Vec<tokio_postgres::Row>> = None;
    let mut predicted = BTreeMap::new();
    let (fences, blind_written) = if let Some(decided) = blind {
        let ends = end_rows(
            batch
                .iter()
                .zip(&decided)
                .map(|(p, (status, reason))| (p, *status, Some(*reason), None)),
        );
        match parsed.filter(|_| !careful.load(Ordering::Relaxed)) {
            Some(parsed) => {
                predicted = touches(batch.iter().zip(&decided).zip(&parsed).zip(&run_ids).map(
                    |(((p, (status, _)), (_, part)), run_id)| EndFact {
                        run_id,
                        kind: if *part == JobPart::Finalize {
                            JobKind::Finalize
                        } else {
                            JobKind::Shard
                        },
                        status: *status,
                        started_at: p.start.as_ref().map(|s| s.now),
                        exit_code: p.exit_code,
                        now: p.now,
                    },
                ));
                let touched = touch_rows(&predicted);
                tx.prepare(&fences_sql(&id_rows(&ids))).await?;
                tx.prepare(&ends_sql(&ends)).await?;
                tx.prepare(&land_sql(&touched)).await?;
                let (fences, written, landed) = tokio::try_join!(
                    biased;
                    read_fences(tx, &ids),
                    write_ends(tx, &ends),
                    land_query(tx, &touched)
                )?;
                optimistic = Some(landed);
                (fences, Some(written))
            }
            None => {
                tx.prepare(&fences_sql(&id_rows(&ids))).await?;
                tx.prepare(&ends_sql(&ends)).await?;
                let (fences, written) =
                    tokio::try_join!(biased; read_fences(tx, &ids), write_ends(tx, &ends))?;
                (fences, Some(written))
            }
        }
    } else {
        (read_fences(tx, &ids).await?, None)
    };
    let mut endings = Vec::new();
    for (at, p) in batch.iter().enumerate() {
        let Some((fence, pid)) = fences.get(p.job_id.as_str()) else {
            continue;
        };
        if !fence.is_held_by(p.claim_seq) {
            continue;
        }
        let new_start = p
            .start
            .as_ref()
            .is_some_and(|s| *pid != Some(i64::from(s.pid)));
        let t = decide(fence, &p.outcome, p.exit_code, p.now);
        endings.push(Ending {
            at,
            p,
            fence: fence.clone(),
            t,
            new_start,
        });
    }
    let written = match blind_written {
        Some(written) => written,
        None if endings.is_empty() => Vec::new(),
        None => {
            let ends = end_rows(
                endings
                    .iter()
                    .map(|e| (e.p, e.t.status, e.t.reason, Some(&e.t))),
            );
            write_ends(tx, &ends).await?
        }
    };
    if optimistic.is_some() && endings.len() != batch.len() {
        careful.store(true, Ordering::Relaxed);
        return Err(StoreError::Transient {
            message: "a stale end in a batch written before its rows were read".into(),
            source: None,
        });
    }
    if written.len() != endings.len() {
        // The read held every row it found; the write changes exactly those still held.
        return Err(StoreError::internal(format!(
            "a batch wrote {} job ends where its read found {} still running",
            written.len(),
            endings.len()
        )));
    }
    for e in &endings {
        if let (true, Some(s)) = (e.new_start, &e.p.start) {
            let event = payload::job_started(
                &e.fence.run_id,
                &e.p.job_id,
                &e.fence.pipeline,
                e.fence.shard_index,
                e.fence.attempt,
                s.pid,
                s.claim_seq,
            );
            tx.emit(event, s.now).await?;
        }
        let error = outcome_error(&e.p.outcome);
        let event =
            payload::job_ended(&e.p.job_id, &e.fence, &e.t, e.p.exit_code, error.as_deref());
        tx.emit(event, e.p.now).await?;
        answers[e.at] = FinishOutcome {
            applied: true,
            status: Some(e.t.status),
            run_finalized: None,
            next: Vec::new(),
        };
    }
    let landing = match optimistic {
        Some(rows) => landed(tx, &predicted, rows).await?,
        None => land_runs(tx, &endings).await?,
    };
    let now = batch.iter().map(|p| p.now).max().unwrap_or_default();
    let (ended, claimed) = end_runs(tx, landing, claim, now).await?;
    let stopped = endings
        .iter()
        .map(|e| (e.fence.pipeline.as_str(), e.t.status));
    if refill::wakes_claimers(stopped, claim, &claimed) {
        tx.kinds |= change::WORK;
    }
    for (run_id, status) in ended {
        // The answer of the last job of that run in the batch says how the run ended.
        if let Some(e) = endings.iter().rev().find(|e| e.fence.run_id == run_id) {
            answers[e.at].run_finalized = Some(status);
        }
    }
    Ok((answers, claimed))
}

/// Ends the runs that landed, writes the transaction's events and claims, in one round
/// trip unless a run's webhook needs its summary read first.
async fn end_runs(
    tx: &mut Tx,
    landing: Landing,
    claim: Option<&JobClaimParams>,
    now: i64,
) -> StoreResult<(Vec<(String, RunStatus)>, Vec<ClaimedJob>)> {
    // A webhook's outbox row needs the run's summary read first, and a run others wait
    // for releases them, a workflow step's run counts off its workflow run: these take
    // the step by step path.
    let step_by_step = landing.ends.iter().any(|(id, _, _)| {
        landing
            .runs
            .get(id)
            .is_some_and(|r| r.callback_url || r.has_dependents || r.in_workflow)
    });
    if step_by_step {
        let ended = turn_terminal(tx, landing.ends, now).await?;
        let events = tx.take_events();
        let tx = &*tx;
        let claimed = async {
            match claim {
                Some(c) => Ok(claim_in_tx(tx, c, CapWait::Try).await?.jobs),
                None => Ok(Vec::new()),
            }
        };
        let ((), claimed) = tokio::try_join!(biased; tx.insert_events(events), claimed)?;
        return Ok((ended, claimed));
    }
    // No webhook: the runs are locked by the landing, so which of them turn terminal
    // is known before the update (those not finished yet), and their events with it.
    let mut ended = Vec::new();
    let mut ends = Rows::new(TERMINAL);
    for (run_id, status, finalizer) in &landing.ends {
        let Some(run) = landing.runs.get(run_id).filter(|r| !r.finished) else {
            continue;
        };
        let finalizer_said = match finalizer {
            Finalizer::None => None,
            Finalizer::Ended(status, exit_code) => Some((status.as_str(), *exit_code)),
        };
        let event = payload::run_completed(
            run_id,
            &run.pipeline,
            *status,
            run.shard_count,
            finalizer_said,
            run.aborted_by.as_deref(),
        );
        tx.emit(event, now).await?;
        ends.push(terminal_row(run_id, *status, finalizer));
        ended.push((run_id.clone(), *status));
    }
    let events = tx.take_events();
    let tx = &*tx;
    // The runs' terminal update carries the events' insert (one statement, not two).
    let written = async {
        if ended.is_empty() {
            tx.insert_events(events).await.map(|()| 0)
        } else {
            write_terminal_with_events(tx, &ends, now, &events).await
        }
    };
    let claimed = async {
        match claim {
            Some(c) => Ok(claim_in_tx(tx, c, CapWait::Try).await?.jobs),
            None => Ok(Vec::new()),
        }
    };
    let (turned, claimed) = tokio::try_join!(biased; written, claimed)?;
    if turned != ended.len() {
        return Err(StoreError::internal(format!(
            "{turned} runs turned terminal where {} were expected",
            ended.len()
        )));
    }
    Ok((ended, claimed))
}

/// The runs' terminal update ([`terminal_sql`]) and the insert of the transaction's
/// `events`, as one statement (one execution instead of
/// two); how many runs turned terminal.
async fn write_terminal_with_events(
    tx: &Tx,
    ends: &Rows,
    now: i64,
    events: &[PendingEvent],
) -> StoreResult<usize> {
    let columns = EventColumns::of(events);
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = columns.params().to_vec();
    params.extend(ends.params());
    params.push(&now);
    let rows = tx
        .query(
            &format!(
                "WITH new_events AS ({}), turned AS ({} RETURNING r.id)
                 SELECT count(*) FROM turned",
                EventColumns::CTE,
                terminal_sql(ends, 6, params.len())
            ),
            &params,
        )
        .await?;
    Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0)) as usize)
}

fn not_applied() -> FinishOutcome {
    FinishOutcome {
        applied: false,
        status: None,
        run_finalized: None,
        next: Vec::new(),
    }
}

/// Lands the batch's runs: counts their terminal shards, marks started runs `running`,
/// and for each run whose last shard landed here queues its finalizer or ends it; a run
/// whose finalizer ended here ends as the finalizer decides.
async fn land_runs(tx: &mut Tx, endings: &[Ending<'_>]) -> StoreResult<Landing> {
    let runs = touches(endings.iter().map(|e| EndFact {
        run_id: &e.fence.run_id,
        kind: e.fence.kind,
        status: e.t.status,
        started_at: e.p.start.as_ref().map(|s| s.now),
        exit_code: e.p.exit_code,
        now: e.p.now,
    }));
    let rows = land_query(tx, &touch_rows(&runs)).await?;
    landed(tx, &runs, rows).await
}
