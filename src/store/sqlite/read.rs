//! Reads on SQLite (a pool of reader connections): run and job views, logs, events,
//! statistics.
//! One concern past 400 lines: every read maps its columns into a view by hand.

use super::*;

pub(super) async fn run_ids_by_prefix(
    s: &SqliteStore,
    prefix: &str,
    limit: usize,
) -> StoreResult<Vec<String>> {
    // [prefix, prefix || U+10FFFF): every id with the prefix, on the primary key.
    let low = prefix.to_string();
    let high = format!("{prefix}\u{10FFFF}");
    s.read(move |conn| {
        Ok(conn
            .prepare_cached("SELECT id FROM runs WHERE id >= ?1 AND id < ?2 ORDER BY id LIMIT ?3")?
            .query_map(params![low, high, limit as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    })
    .await
}

pub(super) async fn run_get(s: &SqliteStore, run_id: &str) -> StoreResult<Option<RunRecord>> {
    let run_id = run_id.to_string();
    s.read(move |conn| {
        let run = conn
            .prepare_cached(&format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"))?
            .query_row(params![run_id], run_view)
            .optional()?;
        let Some(run) = run else { return Ok(None) };
        let mut runs = [run];
        attach_jobs(conn, &mut runs)?;
        let [run] = runs;
        Ok(Some(run))
    })
    .await
}

pub(super) async fn runs_list(s: &SqliteStore, f: RunFilter) -> StoreResult<Vec<RunRecord>> {
    s.read(move |conn| {
        // One statement per filter shape, so each can use its index (`runs_pipeline`
        // for a pipeline, the primary key otherwise) with a plan fixed at prepare time.
        // Unused parameters are bound as NULL and tested with `IS NULL`.
        let status = f.status.map(|s| s.as_str());
        let mut filter = vec![match f.pipeline {
            Some(_) => "pipeline = ?1",
            None => "?1 IS NULL",
        }];
        filter.push(match status {
            Some(_) => "status = ?2",
            None => "?2 IS NULL",
        });
        // A run id prefix is a range of the primary key (ids are lowercase hex and
        // hyphens, all below '~'); a short form also matches the id's last digits.
        let suffix = f
            .run_id
            .as_deref()
            .filter(|r| (4..=12).contains(&r.len()) && !r.contains('-'));
        filter.push(match (&f.run_id, suffix) {
            (None, _) => "?5 IS NULL AND ?6 IS NULL",
            (Some(_), None) => "id >= ?5 AND id < ?5 || '~' AND ?6 IS NULL",
            (Some(_), Some(_)) => "((id >= ?5 AND id < ?5 || '~') OR id LIKE '%' || ?6)",
        });
        let (param_name, param_value) = match &f.param {
            Some(p) => (Some(p.name.as_str()), p.value.as_deref()),
            None => (None, None),
        };
        filter.push(match (param_name, param_value) {
            (None, _) => "?7 IS NULL AND ?8 IS NULL",
            (Some(_), None) => {
                "EXISTS (SELECT 1 FROM json_each(runs.params) WHERE key = ?7) AND ?8 IS NULL"
            }
            (Some(_), Some(_)) => {
                "EXISTS (SELECT 1 FROM json_each(runs.params) WHERE key = ?7 AND value = ?8)"
            }
        });
        filter.push(match f.actor {
            Some(_) => "actor = ?9",
            None => "?9 IS NULL",
        });
        let filter = filter.join(" AND ");
        let mut runs: Vec<RunRecord> = conn
            .prepare_cached(&format!(
                "SELECT {RUN_COLS} FROM runs WHERE {filter} ORDER BY id DESC LIMIT ?3 OFFSET ?4"
            ))?
            .query_map(
                params![
                    f.pipeline,
                    status,
                    f.limit,
                    f.offset,
                    f.run_id,
                    suffix,
                    param_name,
                    param_value,
                    f.actor
                ],
                run_view,
            )?
            .collect::<Result<_, _>>()?;
        attach_jobs(conn, &mut runs)?;
        Ok(runs)
    })
    .await
}

pub(super) async fn job_get(s: &SqliteStore, job_id: &str) -> StoreResult<Option<JobRecord>> {
    let job_id = job_id.to_string();
    s.read(move |conn| {
        Ok(conn
            .prepare_cached(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1"))?
            .query_row(params![job_id], job_view)
            .optional()?)
    })
    .await
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

pub(super) async fn events_after(
    s: &SqliteStore,
    after: i64,
    limit: usize,
) -> StoreResult<Vec<StoredEvent>> {
    s.read(move |conn| {
        Ok(conn
            .prepare_cached("SELECT id, name, data FROM events WHERE id > ?1 ORDER BY id LIMIT ?2")?
            .query_map(params![after, limit as i64], |r| {
                Ok(StoredEvent {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    data: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?)
    })
    .await
}

pub(super) async fn events_bounds(s: &SqliteStore) -> StoreResult<(i64, i64)> {
    s.read(|conn| {
        // Ids come from one writer in commit order, without gaps: everything below
        // the oldest retained id was pruned. With none retained, every id ever
        // assigned (AUTOINCREMENT keeps the highest in sqlite_sequence) was pruned.
        Ok(conn.query_row(
            "SELECT MAX(COALESCE(MIN(id) - 1,
                                (SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0), 0),
                    COALESCE(MAX(id), 0)
             FROM events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    })
    .await
}

pub(super) async fn run_events(
    s: &SqliteStore,
    run_id: &str,
    limit: usize,
) -> StoreResult<Vec<StoredEvent>> {
    let run_id = run_id.to_string();
    s.read(move |conn| {
        Ok(conn
            .prepare_cached(
                "SELECT id, name, data FROM events INDEXED BY events_run
                 WHERE run_id = ?1 AND name <> 'job:progress' ORDER BY id LIMIT ?2",
            )?
            .query_map(params![run_id, limit as i64], |r| {
                Ok(StoredEvent {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    data: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?)
    })
    .await
}

pub(super) async fn pipeline_stats(
    s: &SqliteStore,
    p: PipelineStatsParams,
) -> StoreResult<Vec<PipelineStatsRow>> {
    s.read(move |conn| {
        // Through `runs_finished` (a range of finished_at), then grouped in memory by SQLite.
        Ok(conn
            .prepare_cached(
                "SELECT pipeline, (finished_at - ?1) / ?3 AS bucket, status, COUNT(*),
                        SUM(finished_at - COALESCE(started_at, finished_at)),
                        MAX(finished_at - COALESCE(started_at, finished_at))
                 FROM runs INDEXED BY runs_finished
                 WHERE finished_at IS NOT NULL AND finished_at >= ?1 AND finished_at < ?2
                 GROUP BY pipeline, bucket, status ORDER BY pipeline, bucket, status",
            )?
            .query_map(params![p.since, p.until, p.bucket_ms.max(1)], |r| {
                Ok(PipelineStatsRow {
                    pipeline: r.get(0)?,
                    bucket: r.get(1)?,
                    status: r.get(2)?,
                    runs: r.get::<_, i64>(3)? as u64,
                    duration_sum_ms: r.get::<_, i64>(4)?.max(0),
                    duration_max_ms: r.get::<_, i64>(5)?.max(0),
                })
            })?
            .collect::<Result<_, _>>()?)
    })
    .await
}

pub(super) async fn pipeline_counts(
    s: &SqliteStore,
) -> StoreResult<HashMap<String, PipelineCounts>> {
    s.read(|conn| {
        let mut out: HashMap<String, PipelineCounts> = HashMap::new();
        let mut stmt = conn.prepare_cached(
            "SELECT pipeline, status, COUNT(*), MIN(run_after) FROM jobs
             WHERE status IN ('queued', 'running') GROUP BY pipeline, status",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let entry = out.entry(r.get(0)?).or_default();
            let n: i64 = r.get(2)?;
            if r.get_ref(1)?.as_str()? == "queued" {
                entry.queued = n as u64;
                entry.oldest_due_at = r.get(3)?;
            } else {
                entry.running = n as u64;
            }
        }
        Ok(out)
    })
    .await
}

pub(super) async fn run_summary(s: &SqliteStore, run_id: &str) -> StoreResult<Option<Value>> {
    let run_id = run_id.to_string();
    s.read(move |conn| completion::summary(conn, &run_id)).await
}

pub(super) const JOB_COLS: &str =
    "id, run_id, pipeline, shard_index, shard_count, status, reason, attempt, max_attempts,
    orphan_requeues, node_id, pid, exit_code, progress, progress_message, error, abort_requested,
    stdout_bytes, stderr_bytes, truncated, created_at, started_at, finished_at, kind, result, kept_from";

pub(super) fn job_view(r: &Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        id: r.get(0)?,
        run_id: r.get(1)?,
        pipeline_id: r.get(2)?,
        shard_index: r.get(3)?,
        shard_count: r.get(4)?,
        status: r.get(5)?,
        reason: r.get(6)?,
        attempt: r.get(7)?,
        max_attempts: r.get(8)?,
        requeues: r.get(9)?,
        node: r.get(10)?,
        pid: r.get(11)?,
        exit_code: r.get(12)?,
        progress: r.get(13)?,
        progress_message: r.get(14)?,
        error: r.get(15)?,
        abort_requested: r.get(16)?,
        stdout_bytes: r.get::<_, i64>(17)? as u64,
        stderr_bytes: r.get::<_, i64>(18)? as u64,
        truncated: r.get(19)?,
        created_at: r.get(20)?,
        started_at: r.get(21)?,
        finished_at: r.get(22)?,
        kind: JobKind::from_name(r.get_ref(23)?.as_str()?),
        result: r.get(24)?,
        kept_from: r.get(25)?,
    })
}

pub(super) const RUN_COLS: &str = "id, pipeline, status, params, shard_count, shards_done, triggered_by, actor, created_at, started_at, finished_at, shards_status, callback_url, rerun_of, priority, run_at, scheduled_for, aborted_by";

pub(super) fn run_view(r: &Row<'_>) -> rusqlite::Result<RunRecord> {
    let params: String = r.get(3)?;
    Ok(RunRecord {
        run_id: r.get(0)?,
        pipeline_id: r.get(1)?,
        status: r.get(2)?,
        parameters: serde_json::from_str(&params).unwrap_or_default(),
        shard_count: r.get(4)?,
        shards_done: r.get(5)?,
        triggered_by: r.get(6)?,
        actor: r.get(7)?,
        created_at: r.get(8)?,
        started_at: r.get(9)?,
        finished_at: r.get(10)?,
        shards_status: r.get(11)?,
        callback_url: r.get(12)?,
        rerun_of: r.get(13)?,
        priority: r.get(14)?,
        run_at: r.get(15)?,
        scheduled_for: r.get(16)?,
        aborted_by: r.get(17)?,
        jobs: Vec::new(),
        finalizer: None,
    })
}

pub(super) fn attach_jobs(conn: &Connection, runs: &mut [RunRecord]) -> StoreResult<()> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {JOB_COLS} FROM jobs WHERE run_id = ?1 ORDER BY shard_index"
    ))?;
    for run in runs.iter_mut() {
        let jobs: Vec<JobRecord> = stmt
            .query_map(params![run.run_id], job_view)?
            .collect::<Result<_, _>>()?;
        for job in jobs {
            run.attach(job);
        }
    }
    Ok(())
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
