//! An execution's writes on SQLite besides its end: its start, its output and its
//! progress, each fenced on `(id, claim_seq, status='running')`.

use super::*;

pub(super) async fn job_start(s: &SqliteStore, p: JobStartParams) -> StoreResult<Option<bool>> {
    s.write("job_start", move |conn| {
        let started = start_in_tx(conn, &p)?;
        Ok((started, if started.is_some() { change::EVENTS } else { 0 }))
    })
    .await
}

pub(super) async fn job_output_append(s: &SqliteStore, p: OutputAppendParams) -> StoreResult<bool> {
    let job_id = p.job_id.clone();
    let total = (p.stdout.len() + p.stderr.len()) as i64;
    let appended = s.write("job_output_append", move |conn| {
        let live: Option<i64> = conn
            .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1 AND claim_seq = ?2 AND status = 'running'")?
            .query_row(params![p.job_id, p.claim_seq], |r| r.get(0))
            .optional()?;
        if live.is_none() {
            return Ok((Append::Refused, 0));
        }
        let mut next = output_end(conn, &p.job_id)?;
        match p.first_line {
            Some(expected) if next == expected + total => return Ok((Append::Already, 0)),
            Some(expected) if next != expected => return Ok((Append::Refused, 0)),
            _ => {}
        }
        let mut insert = conn.prepare_cached(
            "INSERT INTO output (job_id, claim_seq, stream, first_line, line_count, data, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for (stream, lines) in [(STDOUT, &p.stdout), (STDERR, &p.stderr)] {
            if lines.is_empty() {
                continue;
            }
            insert.execute(params![p.job_id, p.claim_seq, stream, next, lines.len() as i64, lines.join("\n"), p.now])?;
            next += lines.len() as i64;
        }
        // No `change::OUTPUT`: after COMMIT only this job's followers wake.
        Ok((Append::Written, 0))
    })
    .await?;
    if appended == Append::Written {
        s.feed.bump_output([job_id.as_str()]);
    }
    Ok(appended != Append::Refused)
}

pub(super) async fn job_progress(s: &SqliteStore, p: JobProgressParams) -> StoreResult<bool> {
    s.write("job_progress", move |conn| {
        let row: Option<(String, String, u32)> = conn
            .prepare_cached(
                "UPDATE jobs SET progress = ?3, progress_message = ?4
                 WHERE id = ?1 AND claim_seq = ?2 AND status = 'running' RETURNING run_id, pipeline, shard_index",
            )?
            .query_row(params![p.job_id, p.claim_seq, p.percent, p.message], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let Some((run_id, pipeline, shard_index)) = row else { return Ok((false, 0)) };
        emit(
            conn,
            payload::job_progress(&run_id, &p.job_id, &pipeline, shard_index, p.percent, &p.message),
            p.now,
        )?;
        Ok((true, change::EVENTS))
    })
    .await
}

/// What an output append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Append {
    Written,
    /// An earlier try of the same batch committed: nothing added.
    Already,
    /// Not this execution's claim, or the log does not end where the batch starts.
    Refused,
}

/// The next line number of a job's log (its stored line count).
pub(super) fn output_end(conn: &Connection, job_id: &str) -> StoreResult<i64> {
    Ok(conn
        .prepare_cached("SELECT first_line + line_count FROM output WHERE job_id = ?1 ORDER BY first_line DESC LIMIT 1")?
        .query_row(params![job_id], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Records a spawned process (fenced); `None` when the claim is no longer ours, else
/// whether an abort was requested meanwhile.
pub(super) fn start_in_tx(conn: &Connection, p: &JobStartParams) -> StoreResult<Option<bool>> {
    let row: Option<(bool, String, String, u32, u32)> = conn
        .prepare_cached(
            "UPDATE jobs SET pid = ?3, proc_start = ?4, started_at = ?5
             WHERE id = ?1 AND claim_seq = ?2 AND status = 'running' AND pid IS NOT ?3
             RETURNING abort_requested, run_id, pipeline, shard_index, attempt",
        )?
        .query_row(
            params![p.job_id, p.claim_seq, p.pid, p.proc_start as i64, p.now],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((abort_requested, run_id, pipeline, shard_index, attempt)) = row else {
        // Recorded already (the same start again): no second event.
        return Ok(conn
            .prepare_cached(
                "SELECT abort_requested FROM jobs WHERE id = ?1 AND claim_seq = ?2 AND status = 'running' AND pid = ?3",
            )?
            .query_row(params![p.job_id, p.claim_seq, p.pid], |r| r.get(0))
            .optional()?);
    };
    conn.prepare_cached(
        "UPDATE runs SET status = 'running', started_at = ?2 WHERE id = ?1 AND status = 'queued'",
    )?
    .execute(params![run_id, p.now])?;
    emit(
        conn,
        payload::job_started(
            &run_id,
            &p.job_id,
            &pipeline,
            shard_index,
            attempt,
            p.pid,
            p.claim_seq,
        ),
        p.now,
    )?;
    Ok(Some(abort_requested))
}

pub(super) async fn job_logs(
    s: &SqliteStore,
    job_id: &str,
    tail: Option<usize>,
) -> StoreResult<Option<JobLogs>> {
    let job_id = job_id.to_string();
    s.read(move |conn| {
        let truncated: Option<bool> = conn
            .prepare_cached("SELECT truncated FROM jobs WHERE id = ?1")?
            .query_row(params![job_id], |r| r.get(0))
            .optional()?;
        let Some(truncated) = truncated else {
            return Ok(None);
        };
        Ok(Some(JobLogs {
            stdout: tail_lines(conn, &job_id, STDOUT, tail)?,
            stderr: tail_lines(conn, &job_id, STDERR, tail)?,
            truncated,
        }))
    })
    .await
}

pub(super) async fn job_output_after(
    s: &SqliteStore,
    job_id: &str,
    after: i64,
    limit: usize,
) -> StoreResult<Vec<LogLine>> {
    let job_id = job_id.to_string();
    s.read(move |conn| {
        let mut stmt = conn.prepare_cached(
            "SELECT first_line, stream, data, claim_seq, created_at FROM output
             WHERE job_id = ?1 AND first_line >= (SELECT COALESCE(MAX(first_line), 0) FROM output WHERE job_id = ?1 AND first_line <= ?2)
             ORDER BY first_line",
        )?;
        let mut rows = stmt.query(params![job_id, after.max(0)])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let first: i64 = r.get(0)?;
            let stream = stream_of(r.get(1)?);
            let claim_seq: i64 = r.get(3)?;
            let time: Option<i64> = r.get(4)?;
            for (i, line) in r.get_ref(2)?.as_str()?.split('\n').enumerate() {
                let seq = first + i as i64;
                if seq > after {
                    out.push(LogLine { seq, stream, line: line.to_string(), claim_seq, time });
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    })
    .await
}

pub(super) async fn job_output_len(s: &SqliteStore, job_id: &str) -> StoreResult<i64> {
    let job_id = job_id.to_string();
    s.read(move |conn| output_end(conn, &job_id)).await
}

pub(super) const STDOUT: i64 = 1;

pub(super) const STDERR: i64 = 2;

pub(super) fn stream_of(code: i64) -> Stream {
    if code == STDERR {
        Stream::Stderr
    } else {
        Stream::Stdout
    }
}

pub(super) fn tail_lines(
    conn: &Connection,
    job_id: &str,
    stream: i64,
    tail: Option<usize>,
) -> StoreResult<Vec<String>> {
    let mut lines = Vec::new();
    match tail {
        None => {
            let mut stmt = conn.prepare_cached(
                "SELECT data FROM output WHERE job_id = ?1 AND stream = ?2 ORDER BY id",
            )?;
            let mut rows = stmt.query(params![job_id, stream])?;
            while let Some(r) = rows.next()? {
                lines.extend(r.get_ref(0)?.as_str()?.split('\n').map(str::to_string));
            }
        }
        Some(n) => {
            let mut chunks: Vec<String> = Vec::new();
            let mut have = 0usize;
            let mut stmt = conn
                .prepare_cached("SELECT data, line_count FROM output WHERE job_id = ?1 AND stream = ?2 ORDER BY id DESC")?;
            let mut rows = stmt.query(params![job_id, stream])?;
            while have < n {
                let Some(r) = rows.next()? else { break };
                have += r.get::<_, i64>(1)? as usize;
                chunks.push(r.get(0)?);
            }
            for chunk in chunks.iter().rev() {
                lines.extend(chunk.split('\n').map(str::to_string));
            }
            let skip = lines.len().saturating_sub(n);
            lines.drain(..skip);
        }
    }
    Ok(lines)
}
