//! Per-pipeline state on SQLite: a node's setup circuit, pause, and schedules.

use super::*;

pub(super) async fn pipeline_node_set(
    s: &SqliteStore,
    state: PipelineNodeState,
) -> StoreResult<()> {
    s.write("pipeline_node_set", move |conn| {
        Ok((outbox::pipeline_node_set(conn, &state)?, 0))
    })
    .await
}

pub(super) async fn pipeline_nodes_list(s: &SqliteStore) -> StoreResult<Vec<PipelineNodeState>> {
    s.read(outbox::pipeline_nodes_list).await
}

pub(super) async fn pipeline_pause(s: &SqliteStore, p: PipelinePauseParams) -> StoreResult<bool> {
    s.write("pipeline_pause", move |conn| {
        let was: Option<bool> = conn
            .prepare_cached("SELECT paused FROM pipeline_state WHERE pipeline = ?1")?
            .query_row(params![p.pipeline], |r| r.get(0))
            .optional()?;
        if was.unwrap_or(false) == p.paused {
            return Ok((false, 0));
        }
        conn.prepare_cached(
            "INSERT INTO pipeline_state (pipeline, paused, paused_at, paused_by, updated_at)
             VALUES (?1, ?2, CASE WHEN ?2 THEN ?4 END, CASE WHEN ?2 THEN ?3 END, ?4)
             ON CONFLICT (pipeline) DO UPDATE SET paused = excluded.paused, paused_at = excluded.paused_at,
                 paused_by = excluded.paused_by, updated_at = excluded.updated_at",
        )?
        .execute(params![p.pipeline, p.paused, p.actor, p.now])?;
        emit(
            conn,
            payload::pipeline_paused(&p.pipeline, p.paused, p.actor.as_deref()),
            p.now,
        )?;
        // Resuming makes queued work claimable again.
        Ok((true, change::WORK | change::EVENTS))
    })
    .await
}

pub(super) async fn pipelines_paused(s: &SqliteStore) -> StoreResult<Vec<PipelinePause>> {
    s.read(|conn| {
        Ok(conn
            .prepare_cached(
                "SELECT pipeline, paused_at, paused_by FROM pipeline_state WHERE paused = 1 ORDER BY pipeline",
            )?
            .query_map([], |r| {
                Ok(PipelinePause {
                    pipeline: r.get(0)?,
                    paused_at: r.get::<_, Option<i64>>(1)?.unwrap_or(0),
                    paused_by: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?)
    })
    .await
}

pub(super) async fn schedules_list(s: &SqliteStore) -> StoreResult<Vec<ScheduleState>> {
    s.read(|conn| {
        Ok(conn
            .prepare_cached(
                "SELECT pipeline, schedule_key, next_fire_at FROM pipeline_state
                 WHERE schedule_key IS NOT NULL AND next_fire_at IS NOT NULL ORDER BY pipeline",
            )?
            .query_map([], |r| {
                Ok(ScheduleState {
                    pipeline: r.get(0)?,
                    key: r.get(1)?,
                    next_fire_at: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?)
    })
    .await
}

pub(super) async fn schedule_init(
    s: &SqliteStore,
    pipeline: &str,
    key: &str,
    next_fire_at: i64,
    now: i64,
) -> StoreResult<bool> {
    let (pipeline, key) = (pipeline.to_string(), key.to_string());
    s.write("schedule_init", move |conn| {
        let changed = conn
            .prepare_cached(
                "INSERT INTO pipeline_state (pipeline, schedule_key, next_fire_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (pipeline) DO UPDATE SET schedule_key = excluded.schedule_key,
                     next_fire_at = excluded.next_fire_at, updated_at = excluded.updated_at
                 WHERE pipeline_state.schedule_key IS NOT excluded.schedule_key
                    OR pipeline_state.next_fire_at IS NULL",
            )?
            .execute(params![pipeline, key, next_fire_at, now])?;
        Ok((changed == 1, 0))
    })
    .await
}

pub(super) async fn schedule_fire(
    s: &SqliteStore,
    p: ScheduleFireParams,
) -> StoreResult<Option<RunCreated>> {
    s.write("schedule_fire", move |conn| {
        let advanced = conn
            .prepare_cached(
                "UPDATE pipeline_state SET next_fire_at = ?4, updated_at = ?5
                 WHERE pipeline = ?1 AND schedule_key = ?2 AND next_fire_at = ?3",
            )?
            .execute(params![p.pipeline, p.key, p.due, p.next, p.run.now])?;
        if advanced != 1 {
            return Ok((None, 0));
        }
        let (created, kinds) = create_in_tx(conn, &p.run)?;
        Ok((Some(created), kinds))
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
             WHERE status IN ('queued', 'running') AND run_after < ?1 GROUP BY pipeline, status",
        )?;
        // A waiting run's held jobs are not queued work: no node may take them yet.
        let mut rows = stmt.query(params![crate::store::after::WAITING_RUN_AFTER])?;
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
