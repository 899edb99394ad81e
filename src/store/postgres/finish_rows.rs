//! The statements of a batch of ends: the fenced read that locks every job row in id
//! order, and the one `UPDATE … FROM (VALUES …)` that writes the ends of the jobs still
//! running under their caller's `claim_seq`.

use std::collections::HashMap;

use super::rows::Rows;
use super::{StoreResult, Tx};
use crate::model::{JobKind, JobStatus};
use crate::store::transition::{JobFence, RetryOn, Transition, outcome_error};
use crate::store::{JobFinishParams, claim_plan};

pub(super) fn id_rows(ids: &[&str]) -> Rows {
    let mut list = Rows::new(&[("id", "text")]);
    for id in ids {
        list.push(vec![Box::new(id.to_string())]);
    }
    list
}

pub(super) fn fences_sql(ids: &Rows) -> String {
    format!(
        "SELECT id, status, claim_seq, attempt, max_attempts, retry_backoff_ms, abort_requested,
                orphan_requeues, max_orphan_requeues, on_orphan, run_id, pipeline, shard_index, kind,
                retry_on, pid
         FROM jobs WHERE id IN (SELECT id FROM {}) ORDER BY id FOR UPDATE",
        ids.sql("v", 1)
    )
}

/// The fence rows of `ids`, locked in id order, with each job's recorded pid.
pub(super) async fn read_fences(
    tx: &Tx,
    ids: &[&str],
) -> StoreResult<HashMap<String, (JobFence, Option<i64>)>> {
    let list = id_rows(ids);
    let rows = tx.query(&fences_sql(&list), &list.params()).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let kind: String = r.get(13);
            let fence = JobFence {
                status: r.get(1),
                claim_seq: r.get(2),
                attempt: r.get::<_, i64>(3) as u32,
                max_attempts: r.get::<_, i64>(4) as u32,
                retry_backoff_ms: r.get(5),
                abort_requested: r.get(6),
                orphan_requeues: r.get::<_, i64>(7) as u32,
                max_orphan_requeues: r.get::<_, i64>(8) as u32,
                on_orphan: r.get(9),
                run_id: r.get(10),
                pipeline: r.get(11),
                shard_index: r.get::<_, i64>(12) as u32,
                kind: JobKind::from_name(&kind),
                retry_on: RetryOn::from_column(r.get::<_, Option<&str>>(14)),
            };
            (r.get(0), (fence, r.get(15)))
        })
        .collect())
}

/// The columns of one decided end.
pub(super) const ENDS: &[(&str, &str)] = &[
    ("id", "text"),
    ("claim_seq", "bigint"),
    ("status", "text"),
    ("reason", "text"),
    ("attempt", "bigint"),
    ("requeues", "bigint"),
    ("run_after", "bigint"),
    ("exit_code", "bigint"),
    ("error", "text"),
    ("stdout", "bigint"),
    ("stderr", "bigint"),
    ("truncated", "boolean"),
    ("finished_at", "bigint"),
    ("result", "text"),
    ("held", "boolean"),
    ("pid", "bigint"),
    ("proc_start", "bigint"),
    ("started_at", "bigint"),
];

/// The `VALUES` rows of ends: each with its decided status and reason and, when decided
/// from the row, its counts (`None`: keep the row's).
pub(super) fn end_rows<'p>(
    ends: impl Iterator<
        Item = (
            &'p JobFinishParams,
            JobStatus,
            Option<crate::model::Reason>,
            Option<&'p Transition>,
        ),
    >,
) -> Rows {
    let mut rows = Rows::new(ENDS);
    for (p, status, reason, t) in ends {
        let run_after = t.map_or(p.now, |t| t.run_after);
        let start = p.start.as_ref();
        rows.push(vec![
            Box::new(p.job_id.clone()),
            Box::new(p.claim_seq),
            Box::new(status.as_str()),
            Box::new(reason.map(|r| r.as_str())),
            Box::new(t.map(|t| i64::from(t.attempt))),
            Box::new(t.map(|t| i64::from(t.orphan_requeues))),
            Box::new(run_after),
            Box::new(p.exit_code.map(i64::from)),
            Box::new(outcome_error(&p.outcome)),
            Box::new(p.stdout_bytes as i64),
            Box::new(p.stderr_bytes as i64),
            Box::new(p.truncated),
            Box::new(status.is_terminal().then_some(p.now)),
            Box::new(p.result.clone()),
            Box::new(status == JobStatus::Queued && claim_plan::held(run_after, p.now)),
            Box::new(start.map(|s| i64::from(s.pid))),
            Box::new(start.map(|s| s.proc_start as i64)),
            Box::new(start.map(|s| s.now)),
        ]);
    }
    rows
}

pub(super) fn ends_sql(ends: &Rows) -> String {
    format!(
        "UPDATE jobs j SET status = u.status, reason = u.reason,
                attempt = COALESCE(u.attempt, j.attempt),
                orphan_requeues = COALESCE(u.requeues, j.orphan_requeues),
                run_after = u.run_after, exit_code = u.exit_code, error = u.error,
                stdout_bytes = u.stdout, stderr_bytes = u.stderr, truncated = u.truncated,
                finished_at = u.finished_at, result = u.result, held = u.held,
                pid = COALESCE(u.pid, j.pid),
                proc_start = CASE WHEN u.pid IS NOT NULL AND j.pid IS DISTINCT FROM u.pid
                                  THEN u.proc_start ELSE j.proc_start END,
                started_at = CASE WHEN u.pid IS NOT NULL AND j.pid IS DISTINCT FROM u.pid
                                  THEN u.started_at ELSE j.started_at END
         FROM {}
         WHERE j.id = u.id AND j.claim_seq = u.claim_seq AND j.status = 'running'
         RETURNING j.id",
        ends.sql("u", 1)
    )
}

/// Writes the ends (and the start each carries, unless that start is recorded already)
/// in one statement, fenced on `(id, claim_seq, status='running')`; the ids written.
pub(super) async fn write_ends(tx: &Tx, ends: &Rows) -> StoreResult<Vec<String>> {
    let rows = tx.query(&ends_sql(ends), &ends.params()).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
