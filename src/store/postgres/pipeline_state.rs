//! Per-pipeline state on PostgreSQL: a node's setup circuit, pause, and schedules
//! (a tick fires once however many nodes race for it).

use super::{PgStore, StoreResult, in_tx};
use crate::store::payload::{self};
use crate::store::{
    PipelineNodeState, PipelinePauseParams, RunCreated, ScheduleFireParams, change,
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
