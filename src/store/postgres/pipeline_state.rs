//! Per-pipeline state on PostgreSQL: a node's setup circuit, pause, and schedules
//! (a tick fires once however many nodes race for it), and the per-pipeline counts and
//! stats the dashboard reads.

use std::collections::HashMap;

use super::read::{rows, u32_of};
use super::{PgStore, StoreResult, in_tx};
use crate::store::payload;
use crate::store::{
    PipelineCounts, PipelineNodeState, PipelinePause, PipelinePauseParams, PipelineStatsParams,
    PipelineStatsRow, RunCreated, ScheduleFireParams, ScheduleState, change,
};

pub(super) async fn pipeline_node_set(s: &PgStore, st: PipelineNodeState) -> StoreResult<()> {
    in_tx!(s, "pipeline_node_set", tx => {
        tx.exec(
            "INSERT INTO pipeline_nodes (node_id, pipeline, setup, failures, circuit, open_until, last_error, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (node_id, pipeline) DO UPDATE SET setup = EXCLUDED.setup, failures = EXCLUDED.failures,
                 circuit = EXCLUDED.circuit, open_until = EXCLUDED.open_until, last_error = EXCLUDED.last_error,
                 updated_at = EXCLUDED.updated_at",
            &[&st.node_id, &st.pipeline, &st.setup, &(st.failures as i64), &st.circuit, &st.open_until,
              &st.last_error, &st.updated_at],
        )
        .await?;
    })
}

/// Pauses or resumes a pipeline (see [`crate::store::Store::pipeline_pause`]). The row is
/// locked (or inserted) first, so two concurrent pauses emit one event.
pub(super) async fn pipeline_pause(s: &PgStore, p: PipelinePauseParams) -> StoreResult<bool> {
    in_tx!(s, "pipeline_pause", tx => {
        tx.exec(
            "INSERT INTO pipeline_state (pipeline, paused, updated_at) VALUES ($1, false, $2)
             ON CONFLICT (pipeline) DO NOTHING",
            &[&p.pipeline, &p.now],
        )
        .await?;
        let was: bool = tx
            .query_opt(
                "SELECT paused FROM pipeline_state WHERE pipeline = $1 FOR UPDATE",
                &[&p.pipeline],
            )
            .await?
            .map(|r| r.get(0))
            .unwrap_or(false);
        if was == p.paused {
            false
        } else {
            let at = p.paused.then_some(p.now);
            let by = if p.paused { p.actor.clone() } else { None };
            tx.exec(
                "UPDATE pipeline_state SET paused = $2, paused_at = $3, paused_by = $4, updated_at = $5
                 WHERE pipeline = $1",
                &[&p.pipeline, &p.paused, &at, &by, &p.now],
            )
            .await?;
            tx.emit(payload::pipeline_paused(&p.pipeline, p.paused, p.actor.as_deref()), p.now)
                .await?;
            tx.kinds |= change::WORK;
            true
        }
    })
}

/// Stores a schedule's next fire time unless the record holds that schedule already.
pub(super) async fn schedule_init(
    s: &PgStore,
    pipeline: &str,
    key: &str,
    next_fire_at: i64,
    now: i64,
) -> StoreResult<bool> {
    in_tx!(s, "schedule_init", tx => {
        tx.exec(
            "INSERT INTO pipeline_state (pipeline, schedule_key, next_fire_at, updated_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (pipeline) DO UPDATE SET schedule_key = EXCLUDED.schedule_key,
                 next_fire_at = EXCLUDED.next_fire_at, updated_at = EXCLUDED.updated_at
             WHERE pipeline_state.schedule_key IS DISTINCT FROM EXCLUDED.schedule_key
                OR pipeline_state.next_fire_at IS NULL",
            &[&pipeline, &key, &next_fire_at, &now],
        )
        .await? == 1
    })
}

/// Fires one tick (see [`crate::store::Store::schedule_fire`]): the conditional advance
/// locks the record, so a racing node's advance waits, re-checks and changes nothing.
pub(super) async fn schedule_fire(
    s: &PgStore,
    p: ScheduleFireParams,
) -> StoreResult<Option<RunCreated>> {
    in_tx!(s, "schedule_fire", tx => {
        let advanced = tx
            .exec(
                "UPDATE pipeline_state SET next_fire_at = $4, updated_at = $5
                 WHERE pipeline = $1 AND schedule_key = $2 AND next_fire_at = $3",
                &[&p.pipeline, &p.key, &p.due, &p.next, &p.run.now],
            )
            .await?;
        if advanced == 1 {
            Some(super::runs::create_in_tx(tx, &p.run, super::runs::Then::Continue).await?)
        } else {
            None
        }
    })
}

impl PgStore {
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
                // A waiting run's held jobs are not queued work: no node may take them yet.
                "SELECT pipeline, status, count(*), min(run_after) FROM jobs
                 WHERE status IN ('queued', 'running') AND run_after < $1 GROUP BY pipeline, status",
                &[&crate::store::after::WAITING_RUN_AFTER],
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
