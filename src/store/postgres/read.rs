//! The PostgreSQL store's reads: views, logs, events below the horizon, counts.
//! One concern past 400 lines: every read maps its columns into a view by hand.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{PgStore, StoreResult, pg_err};
use crate::model::JobKind;
use crate::store::summary::{self, JobRow, RunRow};
use crate::store::{
    DeliveryAttemptRecord, DeliveryRecord, JobLogs, JobRecord, LogLine, NodeRow, PipelineCounts,
    PipelineNodeState, RunFilter, RunRecord, RunningJob, StoredEvent, Stream,
};
use crate::store::{PipelinePause, PipelineStatsParams, PipelineStatsRow, ScheduleState};

/// Event ids below this are final for the statement's snapshot: every transaction of this
/// deployment that could still insert a smaller one has ended. It is the snapshot's `xmax`
/// (transactions that start later get larger ids), lowered to the oldest transaction still
/// in flight in that snapshot, except those known to belong to someone else:
/// `pg_stat_activity` shows them under another `application_name` (every connection of
/// this deployment is named `runyard/{schema}`), so a long transaction of another program,
/// or of runyard on another schema, cannot stall this deployment's event streams. A
/// transaction that ended between the snapshot and the `pg_stat_activity` read is not known
/// to be foreign, so it still counts: the horizon errs only towards waiting.
const HORIZON: &str = "(SELECT LEAST(pg_snapshot_xmax(s)::text::bigint,
        (SELECT min(x::text::bigint) FROM pg_snapshot_xip(s) AS x
         WHERE (x::text::bigint & 4294967295) NOT IN (
             SELECT backend_xid::text::bigint FROM pg_stat_activity
             WHERE backend_xid IS NOT NULL
               AND application_name <> current_setting('application_name')))) << 16
     FROM pg_current_snapshot() AS s)";

async fn rows<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> StoreResult<Vec<Row>> {
    let st = c.prepare_cached(sql).await.map_err(pg_err)?;
    c.query(&st, params).await.map_err(pg_err)
}

async fn row<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> StoreResult<Option<Row>> {
    let st = c.prepare_cached(sql).await.map_err(pg_err)?;
    c.query_opt(&st, params).await.map_err(pg_err)
}

/// Runs a read on a pooled connection, once more on a fresh one if the first was stale
/// (a pooled connection dies silently when the server restarts).
macro_rules! read {
    ($store:expr, $c:ident => $body:expr) => {{
        let mut tries = 0;
        loop {
            let attempt: StoreResult<_> = async {
                let client = $store.conn().await?;
                let $c = &client;
                Ok($body)
            }
            .await;
            match attempt {
                Err(e) if e.is_unavailable() && tries < 2 => tries += 1,
                other => break other,
            }
        }
    }};
}

fn u32_of(r: &Row, i: usize) -> u32 {
    r.get::<_, i64>(i) as u32
}

fn opt_u32(r: &Row, i: usize) -> Option<u32> {
    r.get::<_, Option<i64>>(i).map(|v| v as u32)
}

fn running_job(r: &Row) -> RunningJob {
    RunningJob {
        id: r.get(0),
        claim_seq: r.get(1),
        pid: opt_u32(r, 2),
        proc_start: r.get::<_, Option<i64>>(3).map(|v| v as u64),
        claimed_at: r.get::<_, Option<i64>>(4).unwrap_or(0),
    }
}

const JOB_COLS: &str =
    "id, run_id, pipeline, shard_index, shard_count, status, reason, attempt, max_attempts,
    orphan_requeues, node_id, pid, exit_code, progress, progress_message, error, abort_requested,
    stdout_bytes, stderr_bytes, truncated, created_at, started_at, finished_at, kind, result, kept_from";

fn job_view(r: &Row) -> JobRecord {
    let kind: String = r.get(23);
    JobRecord {
        id: r.get(0),
        run_id: r.get(1),
        pipeline_id: r.get(2),
        shard_index: u32_of(r, 3),
        shard_count: u32_of(r, 4),
        status: r.get(5),
        reason: r.get(6),
        attempt: u32_of(r, 7),
        max_attempts: u32_of(r, 8),
        requeues: u32_of(r, 9),
        node: r.get(10),
        pid: opt_u32(r, 11),
        exit_code: r.get::<_, Option<i64>>(12).map(|v| v as i32),
        progress: r.get::<_, Option<i64>>(13).map(|v| v as u8),
        progress_message: r.get(14),
        error: r.get(15),
        abort_requested: r.get(16),
        stdout_bytes: r.get::<_, i64>(17) as u64,
        stderr_bytes: r.get::<_, i64>(18) as u64,
        truncated: r.get(19),
        created_at: r.get(20),
        started_at: r.get(21),
        finished_at: r.get(22),
        kind: JobKind::from_name(&kind),
        result: r.get(24),
        kept_from: r.get(25),
    }
}

const RUN_COLS: &str =
    "id, pipeline, status, params, shard_count, shards_done, triggered_by, actor, created_at,
    started_at, finished_at, shards_status, callback_url, rerun_of, priority, run_at, scheduled_for, aborted_by";

fn run_view(r: &Row) -> RunRecord {
    let params: String = r.get(3);
    RunRecord {
        run_id: r.get(0),
        pipeline_id: r.get(1),
        status: r.get(2),
        parameters: serde_json::from_str(&params).unwrap_or_default(),
        shard_count: u32_of(r, 4),
        shards_done: u32_of(r, 5),
        triggered_by: r.get(6),
        actor: r.get(7),
        created_at: r.get(8),
        started_at: r.get(9),
        finished_at: r.get(10),
        shards_status: r.get(11),
        callback_url: r.get(12),
        rerun_of: r.get(13),
        priority: r.get::<_, i64>(14) as i32,
        run_at: r.get(15),
        scheduled_for: r.get(16),
        aborted_by: r.get(17),
        jobs: Vec::new(),
        finalizer: None,
    }
}

async fn attach_jobs<C: GenericClient>(c: &C, runs: &mut [RunRecord]) -> StoreResult<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
    let mut by_run: HashMap<String, Vec<JobRecord>> = HashMap::new();
    for r in rows(
        c,
        &format!("SELECT {JOB_COLS} FROM jobs WHERE run_id = ANY($1) ORDER BY run_id, shard_index"),
        &[&ids],
    )
    .await?
    {
        let job = job_view(&r);
        by_run.entry(job.run_id.clone()).or_default().push(job);
    }
    for run in runs.iter_mut() {
        for job in by_run.remove(&run.run_id).unwrap_or_default() {
            run.attach(job);
        }
    }
    Ok(())
}

/// The newest event id a reader can see (0 when none): what the change poll watches.
pub(super) async fn newest_visible_event<C: GenericClient>(c: &C) -> StoreResult<i64> {
    Ok(row(
        c,
        &format!("SELECT COALESCE(max(id), 0) FROM events WHERE id < {HORIZON}"),
        &[],
    )
    .await?
    .map(|r| r.get(0))
    .unwrap_or(0))
}

/// The run's summary, inside a transaction or on a connection.
pub(super) async fn summary_in<C: GenericClient>(
    c: &C,
    run_id: &str,
) -> StoreResult<Option<serde_json::Value>> {
    let Some(r) = row(
        c,
        "SELECT pipeline, status, params, shards_status, triggered_by, actor, created_at, started_at, finished_at
         FROM runs WHERE id = $1",
        &[&run_id],
    )
    .await?
    else {
        return Ok(None);
    };
    let run = RunRow {
        pipeline: r.get(0),
        status: r.get(1),
        params: r.get(2),
        shards_status: r.get(3),
        triggered_by: r.get(4),
        actor: r.get(5),
        created_at: r.get(6),
        started_at: r.get(7),
        finished_at: r.get(8),
    };
    let jobs: Vec<JobRow> = rows(
        c,
        "SELECT kind, id, shard_index, status, reason, exit_code, attempt, started_at, finished_at, result
         FROM jobs WHERE run_id = $1 ORDER BY shard_index",
        &[&run_id],
    )
    .await?
    .iter()
    .map(|r| JobRow {
        kind: JobKind::from_name(&r.get::<_, String>(0)),
        id: r.get(1),
        shard_index: u32_of(r, 2),
        status: r.get(3),
        reason: r.get(4),
        exit_code: r.get::<_, Option<i64>>(5).map(|v| v as i32),
        attempt: u32_of(r, 6),
        started_at: r.get(7),
        finished_at: r.get(8),
        result: r.get(9),
    })
    .collect();
    Ok(Some(summary::run_summary(run_id, &run, &jobs)))
}

const STDOUT: i16 = 1;
const STDERR: i16 = 2;

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
    pub(super) async fn read_nodes(&self) -> StoreResult<Vec<NodeRow>> {
        read!(self, c => rows(c, "SELECT id, host, pid, proc_start, boot_id, slots, started_at, heartbeat_at,
                                         COALESCE(name, ''), info
                                  FROM nodes ORDER BY started_at", &[])
            .await?
            .iter()
            .map(|r| NodeRow {
                id: r.get(0),
                host: r.get(1),
                pid: u32_of(r, 2),
                proc_start: r.get::<_, i64>(3) as u64,
                boot_id: r.get(4),
                slots: u32_of(r, 5),
                started_at: r.get(6),
                heartbeat_at: r.get(7),
                name: r.get(8),
                url: None,
                labels: Default::default(),
                config_digest: String::new(),
                capacity: Default::default(),
            }
            .with_info(r.get::<_, Option<String>>(9).as_deref()))
            .collect())
    }

    pub(super) async fn read_node_names(&self) -> StoreResult<HashMap<String, String>> {
        read!(self, c => rows(c, "SELECT id, name FROM node_names", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    pub(super) async fn read_running_on(&self, node_id: &str) -> StoreResult<Vec<RunningJob>> {
        read!(self, c => rows(c, "SELECT id, claim_seq, pid, proc_start, claimed_at FROM jobs
                                  WHERE node_id = $1 AND status = 'running'", &[&node_id])
            .await?
            .iter()
            .map(running_job)
            .collect())
    }

    pub(super) async fn read_running_unowned(&self) -> StoreResult<Vec<RunningJob>> {
        read!(self, c => rows(c, "SELECT id, claim_seq, pid, proc_start, claimed_at FROM jobs j
                                  WHERE status = 'running'
                                    AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.id = j.node_id)", &[])
            .await?
            .iter()
            .map(running_job)
            .collect())
    }

    pub(super) async fn read_abort_requested(
        &self,
        node_id: &str,
    ) -> StoreResult<Vec<(String, i64)>> {
        read!(self, c => rows(c, "SELECT id, claim_seq FROM jobs
                                  WHERE node_id = $1 AND status = 'running' AND abort_requested", &[&node_id])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    pub(super) async fn read_run_ids_by_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        // [prefix, prefix || U+10FFFF) on the primary key (ids compare bytewise).
        let high = format!("{prefix}\u{10FFFF}");
        let limit = limit as i64;
        read!(self, c => rows(c, "SELECT id FROM runs WHERE id >= $1 AND id < $2 ORDER BY id LIMIT $3",
                              &[&prefix, &high, &limit])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    pub(super) async fn read_run(&self, run_id: &str) -> StoreResult<Option<RunRecord>> {
        read!(self, c => {
            match row(c, &format!("SELECT {RUN_COLS} FROM runs WHERE id = $1"), &[&run_id]).await? {
                None => None,
                Some(r) => {
                    let mut runs = [run_view(&r)];
                    attach_jobs(c, &mut runs).await?;
                    let [run] = runs;
                    Some(run)
                }
            }
        })
    }

    pub(super) async fn read_runs(&self, f: &RunFilter) -> StoreResult<Vec<RunRecord>> {
        let status = f.status.map(|s| s.as_str());
        let (limit, offset) = (f.limit as i64, f.offset as i64);
        // A short form (4–12 hex digits, no hyphen) also matches the id's last digits.
        let suffix = f
            .run_id
            .as_deref()
            .filter(|r| (4..=12).contains(&r.len()) && !r.contains('-'));
        let (param_name, param_value) = match &f.param {
            Some(p) => (Some(p.name.as_str()), p.value.as_deref()),
            None => (None, None),
        };
        read!(self, c => {
            let mut runs: Vec<RunRecord> = rows(
                c,
                &format!(
                    "SELECT {RUN_COLS} FROM runs
                     WHERE ($1::text IS NULL OR pipeline = $1) AND ($2::text IS NULL OR status = $2)
                       AND ($5::text IS NULL OR (id >= $5 AND id < $5 || '~') OR id LIKE '%' || $6::text)
                       AND ($7::text IS NULL OR (params::jsonb) ? $7)
                       AND ($8::text IS NULL OR (params::jsonb) ->> $7 = $8)
                       AND ($9::text IS NULL OR actor = $9)
                     ORDER BY id DESC LIMIT $3 OFFSET $4"
                ),
                &[&f.pipeline, &status, &limit, &offset, &f.run_id, &suffix, &param_name, &param_value,
                  &f.actor],
            )
            .await?
            .iter()
            .map(run_view)
            .collect();
            attach_jobs(c, &mut runs).await?;
            runs
        })
    }

    pub(super) async fn read_job(&self, job_id: &str) -> StoreResult<Option<JobRecord>> {
        read!(self, c => row(c, &format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1"), &[&job_id])
            .await?
            .map(|r| job_view(&r)))
    }

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

    pub(super) async fn read_events_after(
        &self,
        after: i64,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        let limit = limit as i64;
        read!(self, c => rows(
            c,
            &format!("SELECT id, name, data FROM events WHERE id > $1 AND id < {HORIZON} ORDER BY id LIMIT $2"),
            &[&after, &limit],
        )
        .await?
        .iter()
        .map(|r| StoredEvent { id: r.get(0), name: r.get(1), data: r.get(2) })
        .collect())
    }

    pub(super) async fn read_event_bounds(&self) -> StoreResult<(i64, i64)> {
        read!(self, c => {
            let pruned = row(c, "SELECT value FROM runyard_meta WHERE key = 'events_pruned_through'", &[])
                .await?
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(0);
            (pruned, newest_visible_event(c).await?)
        })
    }

    pub(super) async fn read_run_events(
        &self,
        run_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        let limit = limit as i64;
        read!(self, c => rows(
            c,
            &format!("SELECT id, name, data FROM events
                      WHERE run_id = $1 AND name <> 'job:progress' AND id < {HORIZON} ORDER BY id LIMIT $2"),
            &[&run_id, &limit],
        )
        .await?
        .iter()
        .map(|r| StoredEvent { id: r.get(0), name: r.get(1), data: r.get(2) })
        .collect())
    }

    pub(super) async fn read_pipeline_stats(
        &self,
        p: &PipelineStatsParams,
    ) -> StoreResult<Vec<PipelineStatsRow>> {
        let bucket_ms = p.bucket_ms.max(1);
        read!(self, c => rows(
            c,
            "SELECT pipeline, (finished_at - $1) / $3 AS bucket, status, count(*),
                    COALESCE(sum(finished_at - COALESCE(started_at, finished_at)), 0)::bigint,
                    COALESCE(max(finished_at - COALESCE(started_at, finished_at)), 0)
             FROM runs WHERE finished_at IS NOT NULL AND finished_at >= $1 AND finished_at < $2
             GROUP BY pipeline, bucket, status ORDER BY pipeline, bucket, status",
            &[&p.since, &p.until, &bucket_ms],
        )
        .await?
        .iter()
        .map(|r| PipelineStatsRow {
            pipeline: r.get(0),
            bucket: r.get::<_, i64>(1) as u32,
            status: r.get(2),
            runs: r.get::<_, i64>(3) as u64,
            duration_sum_ms: r.get::<_, i64>(4).max(0),
            duration_max_ms: r.get::<_, i64>(5).max(0),
        })
        .collect())
    }

    pub(super) async fn read_pipeline_counts(
        &self,
    ) -> StoreResult<HashMap<String, PipelineCounts>> {
        read!(self, c => {
            let mut out: HashMap<String, PipelineCounts> = HashMap::new();
            for r in rows(
                c,
                "SELECT pipeline, status, count(*), min(run_after) FROM jobs
                 WHERE status IN ('queued', 'running') GROUP BY pipeline, status",
                &[],
            )
            .await?
            {
                let entry = out.entry(r.get(0)).or_default();
                let n = r.get::<_, i64>(2) as u64;
                if r.get::<_, &str>(1) == "queued" {
                    entry.queued = n;
                    entry.oldest_due_at = r.get(3);
                } else {
                    entry.running = n;
                }
            }
            out
        })
    }

    pub(super) async fn read_summary(
        &self,
        run_id: &str,
    ) -> StoreResult<Option<serde_json::Value>> {
        read!(self, c => summary_in(c, run_id).await?)
    }

    pub(super) async fn read_deliveries(&self, run_id: &str) -> StoreResult<Vec<DeliveryRecord>> {
        read!(self, c => {
            let mut out: Vec<DeliveryRecord> = rows(
                c,
                "SELECT id, run_id, url, status, attempts, next_attempt_at, created_at, finished_at
                 FROM deliveries WHERE run_id = $1 ORDER BY created_at",
                &[&run_id],
            )
            .await?
            .iter()
            .map(|r| {
                let status: String = r.get(3);
                let next: i64 = r.get(5);
                DeliveryRecord {
                    id: r.get(0),
                    run_id: r.get(1),
                    url: r.get(2),
                    next_attempt_at: (status == "pending").then_some(next),
                    status,
                    attempts: u32_of(r, 4),
                    created_at: r.get(6),
                    finished_at: r.get(7),
                    history: Vec::new(),
                }
            })
            .collect();
            for d in out.iter_mut() {
                d.history = rows(
                    c,
                    "SELECT attempt, node_id, started_at, duration_ms, status_code, error
                     FROM delivery_attempts WHERE delivery_id = $1 ORDER BY attempt",
                    &[&d.id],
                )
                .await?
                .iter()
                .map(|r| DeliveryAttemptRecord {
                    attempt: u32_of(r, 0),
                    node: r.get(1),
                    started_at: r.get(2),
                    duration_ms: r.get::<_, i64>(3) as u64,
                    status_code: r.get::<_, Option<i64>>(4).map(|v| v as u16),
                    error: r.get(5),
                })
                .collect();
            }
            out
        })
    }

    pub(super) async fn read_pipeline_nodes(&self) -> StoreResult<Vec<PipelineNodeState>> {
        read!(self, c => rows(
            c,
            "SELECT p.node_id, p.pipeline, p.setup, p.failures, p.circuit, p.open_until, p.last_error, p.updated_at
             FROM pipeline_nodes p JOIN nodes n ON n.id = p.node_id ORDER BY p.pipeline, p.node_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| PipelineNodeState {
            node_id: r.get(0),
            pipeline: r.get(1),
            setup: r.get(2),
            failures: u32_of(r, 3),
            circuit: r.get(4),
            open_until: r.get(5),
            last_error: r.get(6),
            updated_at: r.get(7),
        })
        .collect())
    }

    pub(super) async fn read_paused(&self) -> StoreResult<Vec<PipelinePause>> {
        read!(self, c => rows(
            c,
            "SELECT pipeline, paused_at, paused_by FROM pipeline_state WHERE paused ORDER BY pipeline",
            &[],
        )
        .await?
        .iter()
        .map(|r| PipelinePause {
            pipeline: r.get(0),
            paused_at: r.get::<_, Option<i64>>(1).unwrap_or(0),
            paused_by: r.get(2),
        })
        .collect())
    }

    pub(super) async fn read_schedules(&self) -> StoreResult<Vec<ScheduleState>> {
        read!(self, c => rows(
            c,
            "SELECT pipeline, schedule_key, next_fire_at FROM pipeline_state
             WHERE schedule_key IS NOT NULL AND next_fire_at IS NOT NULL ORDER BY pipeline",
            &[],
        )
        .await?
        .iter()
        .map(|r| ScheduleState {
            pipeline: r.get(0),
            key: r.get(1),
            next_fire_at: r.get(2),
        })
        .collect())
    }
}
