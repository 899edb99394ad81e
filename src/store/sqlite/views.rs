//! Runs and jobs as the API shows them, on SQLite's reader pool: the column lists,
//! row → view mapping, a run's jobs attached in one query, lookups by id and prefix,
//! filtered lists and the summary a finalizer reads.

use super::*;
use crate::model::AfterWhen;

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

pub(super) const RUN_COLS: &str = "id, pipeline, status, params, shard_count, shards_done, triggered_by, actor, created_at, started_at, finished_at, shards_status, callback_url, rerun_of, priority, run_at, scheduled_for, aborted_by, (SELECT group_concat(need_id) FROM (SELECT need_id FROM run_needs WHERE run_needs.run_id = runs.id ORDER BY need_id)), after_when, workflow_run_id, workflow_step";

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
        after: r
            .get::<_, Option<String>>(18)?
            .map(|ids| ids.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
        after_when: r
            .get::<_, Option<String>>(19)?
            .as_deref()
            .and_then(AfterWhen::from_name),
        workflow_run_id: r.get(20)?,
        workflow_step: r.get(21)?,
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
