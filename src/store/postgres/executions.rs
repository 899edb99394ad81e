//! An execution's writes on PostgreSQL besides its end: its start, its output and its
//! progress, each fenced on `(id, claim_seq, status='running')`.

use super::{PgStore, StoreResult, Tx, in_tx};
use crate::store::payload::{self};
use crate::store::{JobProgressParams, JobStartParams, OutputAppendParams};

const STDOUT: i16 = 1;
const STDERR: i16 = 2;

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
