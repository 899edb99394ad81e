//! Runs and jobs as the API shows them: the column lists, row → view mapping, a run's
//! jobs attached in one query, lookups by id and prefix, filtered lists and the summary
//! a finalizer reads.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::read::{opt_u32, row, rows, u32_of};
use super::{PgStore, StoreResult};
use crate::model::{AfterWhen, JobKind};
use crate::store::summary::{self, JobRow, RunRow};
use crate::store::{JobRecord, RunFilter, RunRecord, RunningJob};

pub(super) fn running_job(r: &Row) -> RunningJob {
    RunningJob {
        id: r.get(0),
        claim_seq: r.get(1),
        pid: opt_u32(r, 2),
        proc_start: r.get::<_, Option<i64>>(3).map(|v| v as u64),
        claimed_at: r.get::<_, Option<i64>>(4).unwrap_or(0),
    }
}

pub(super) fn job_view(r: &Row) -> JobRecord {
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

pub(super) fn run_view(r: &Row) -> RunRecord {
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
        after: r.get::<_, Option<Vec<String>>>(18).unwrap_or_default(),
        after_when: r.get::<_, Option<&str>>(19).and_then(AfterWhen::from_name),
        workflow_run_id: r.get(20),
        workflow_step: r.get(21),
        jobs: Vec::new(),
        finalizer: None,
    }
}

pub(super) async fn attach_jobs<C: GenericClient>(
    c: &C,
    runs: &mut [RunRecord],
) -> StoreResult<()> {
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

impl PgStore {
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

    pub(super) async fn read_summary(
        &self,
        run_id: &str,
    ) -> StoreResult<Option<serde_json::Value>> {
        read!(self, c => summary_in(c, run_id).await?)
    }
}

pub(super) const JOB_COLS: &str =
    "id, run_id, pipeline, shard_index, shard_count, status, reason, attempt, max_attempts,
    orphan_requeues, node_id, pid, exit_code, progress, progress_message, error, abort_requested,
    stdout_bytes, stderr_bytes, truncated, created_at, started_at, finished_at, kind, result, kept_from";

pub(super) const RUN_COLS: &str =
    "id, pipeline, status, params, shard_count, shards_done, triggered_by, actor, created_at,
    started_at, finished_at, shards_status, callback_url, rerun_of, priority, run_at, scheduled_for, aborted_by,
    (SELECT array_agg(need_id ORDER BY need_id) FROM run_needs WHERE run_needs.run_id = runs.id), after_when,
    workflow_run_id, workflow_step";
