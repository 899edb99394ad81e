//! An execution on PostgreSQL besides its end: its start, output and progress (each
//! write fenced on `(id, claim_seq, status='running')`), and the reads of its log.

use deadpool_postgres::GenericClient;

use super::read::{row, rows};
use super::{PgStore, StoreResult, Tx, in_tx};
use crate::store::payload;
use crate::store::{
    JobLogs, JobProgressParams, JobStartParams, LogLine, OutputAppendParams, Stream,
};

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

async fn tail_lines<C: GenericClient>(
    c: &C,
    job_id: &str,
    stream: i16,
    tail: Option<usize>,
) -> StoreResult<Vec<String>> {
    let mut lines = Vec::new();
    match tail {
        None => {
            for r in rows(
                c,
                "SELECT data FROM output WHERE job_id = $1 AND stream = $2 ORDER BY first_line",
                &[&job_id, &stream],
            )
            .await?
            {
                lines.extend(r.get::<_, &str>(0).split('\n').map(str::to_string));
            }
        }
        Some(0) => {}
        Some(n) => {
            // Only the newest chunks that hold the last `n` lines leave the server: a
            // running sum of line counts (no text) picks the oldest chunk needed.
            for r in rows(
                c,
                "SELECT data FROM output WHERE job_id = $1 AND stream = $2 AND first_line >= COALESCE(
                     (SELECT min(first_line) FROM (
                          SELECT first_line,
                                 sum(line_count) OVER (ORDER BY first_line DESC)::bigint - line_count AS newer
                          FROM output WHERE job_id = $1 AND stream = $2) t
                      WHERE newer < $3), 0)
                 ORDER BY first_line",
                &[&job_id, &stream, &(n.min(i64::MAX as usize) as i64)],
            )
            .await?
            {
                lines.extend(r.get::<_, &str>(0).split('\n').map(str::to_string));
            }
            let skip = lines.len().saturating_sub(n);
            lines.drain(..skip);
        }
    }
    Ok(lines)
}

impl PgStore {
    pub(super) async fn read_logs(
        &self,
        job_id: &str,
        tail: Option<usize>,
    ) -> StoreResult<Option<JobLogs>> {
        read!(self, c => {
            match row(c, "SELECT truncated FROM jobs WHERE id = $1", &[&job_id]).await? {
                None => None,
                Some(r) => Some(JobLogs {
                    stdout: tail_lines(c, job_id, STDOUT, tail).await?,
                    stderr: tail_lines(c, job_id, STDERR, tail).await?,
                    truncated: r.get(0),
                }),
            }
        })
    }

    pub(super) async fn read_output_after(
        &self,
        job_id: &str,
        after: i64,
        limit: usize,
    ) -> StoreResult<Vec<LogLine>> {
        let from = after.max(0);
        read!(self, c => {
            let chunks = rows(
                c,
                "SELECT first_line, stream, data, claim_seq, created_at FROM output
                 WHERE job_id = $1 AND first_line >= (SELECT COALESCE(max(first_line), 0) FROM output
                                                      WHERE job_id = $1 AND first_line <= $2)
                 ORDER BY first_line",
                &[&job_id, &from],
            )
            .await?;
            let mut out = Vec::new();
            for r in &chunks {
                let first: i64 = r.get(0);
                let stream = if r.get::<_, i16>(1) == STDERR { Stream::Stderr } else { Stream::Stdout };
                let (claim_seq, time): (i64, Option<i64>) = (r.get(3), r.get(4));
                for (i, line) in r.get::<_, &str>(2).split('\n').enumerate() {
                    let seq = first + i as i64;
                    if seq > after {
                        out.push(LogLine { seq, stream, line: line.to_string(), claim_seq, time });
                    }
                }
                if out.len() >= limit {
                    break;
                }
            }
            out
        })
    }

    pub(super) async fn read_output_len(&self, job_id: &str) -> StoreResult<i64> {
        read!(self, c => row(c, "SELECT output_lines FROM jobs WHERE id = $1", &[&job_id])
            .await?
            .map(|r| r.get(0))
            .unwrap_or(0))
    }
}
