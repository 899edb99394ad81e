//! This node's part in firing pipeline schedules. Every node runs the loop; the store's
//! conditional write ([`crate::store::Store::schedule_fire`]) lets exactly one of them
//! fire each tick, and which tick fires when is [`crate::schedule::plan`]'s rule (missed
//! ticks fire once). A per-node timer only decides when to *look*: the durable next-fire
//! record decides what fires.
//!
//! Tests: `store_contract::*::a_schedule_tick_fires_once_however_many_nodes_race_for_it`,
//! `scheduling::two_nodes_fire_each_tick_of_a_schedule_exactly_once`,
//! `scheduling::ticks_missed_while_every_node_was_down_fire_once`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Inner;
use super::trigger::{concurrency_key_of, policy_of};
use crate::metrics::Metrics;
use crate::model::{RunId, job_id_for};
use crate::store::{RunCreateParams, RunOptions, ScheduleFireParams, StoreError};

/// The longest this node waits before looking at the records again (another node may
/// have advanced them, or started a changed schedule).
const LOOK_AT_LEAST_EVERY: Duration = Duration::from_secs(1);

/// Runs until the services stop.
pub(super) async fn schedule_loop(inner: Arc<Inner>) {
    loop {
        let wait = match run_once(&inner).await {
            Ok(Some(ms)) => Duration::from_millis(ms.clamp(5, 1000) as u64),
            Ok(None) => LOOK_AT_LEAST_EVERY,
            Err(e) => {
                tracing::warn!("schedule pass failed: {e}");
                LOOK_AT_LEAST_EVERY
            }
        };
        tokio::select! {
            _ = inner.stop_services.cancelled() => break,
            _ = tokio::time::sleep(wait.min(LOOK_AT_LEAST_EVERY)) => {}
        }
    }
}

/// One pass: starts records of new or changed schedules, fires due ticks; returns the
/// milliseconds until the earliest next tick.
pub(super) async fn run_once(inner: &Inner) -> Result<Option<i64>, StoreError> {
    let store = &inner.store;
    let records: HashMap<String, (String, i64)> = store
        .schedules_list()
        .await?
        .into_iter()
        .map(|r| (r.pipeline, (r.key, r.next_fire_at)))
        .collect();
    let mut earliest: Option<i64> = None;
    for pipeline in inner.settings.pipelines.values() {
        let Some(schedule) = &pipeline.schedule else {
            continue;
        };
        let key = schedule.key();
        let now = store.clock_ms();
        let due = match records.get(&pipeline.name) {
            Some((k, at)) if *k == key => *at,
            _ => {
                // First start of this schedule (or a changed one): the next tick from now.
                let Some(next) = schedule.next_after(now) else {
                    continue;
                };
                if store.schedule_init(&pipeline.name, &key, next, now).await? {
                    tracing::info!(pipeline = %pipeline.name, schedule = %key,
                        next = %crate::clock::rfc3339(next), "schedule started");
                }
                earliest = Some(earliest.map_or(next, |e| e.min(next)));
                continue;
            }
        };
        let Some(fire) = crate::schedule::plan(schedule, due, now) else {
            earliest = Some(earliest.map_or(due, |e| e.min(due)));
            continue;
        };
        let run = RunId::new();
        let shards = pipeline.shards;
        let fired = store
            .schedule_fire(ScheduleFireParams {
                pipeline: pipeline.name.clone(),
                key,
                due,
                next: fire.next,
                run: RunCreateParams {
                    run_id: run.to_string(),
                    job_ids: (0..shards).map(|i| job_id_for(run, i, shards)).collect(),
                    pipeline: pipeline.name.clone(),
                    params: pipeline.schedule_params.clone(),
                    triggered_by: "schedule".into(),
                    actor: None,
                    idempotency_key: None,
                    policy: policy_of(pipeline),
                    has_finalizer: pipeline.finalizer.is_some(),
                    // Checked at trigger time for API triggers; a schedule's comes from the
                    // config and is delivered under the same policy by the outbox.
                    callback_url: inner.webhooks.as_ref().and(pipeline.callback_url.clone()),
                    now,
                    options: RunOptions {
                        priority: pipeline.priority,
                        scheduled_for: Some(fire.scheduled_for),
                        concurrency_key: concurrency_key_of(pipeline, &pipeline.schedule_params),
                        ..Default::default()
                    },
                },
            })
            .await?;
        if let Some(created) = fired {
            Metrics::add(&inner.metrics.schedule_fires, 1);
            tracing::info!(pipeline = %pipeline.name, run = %created.run_id,
                scheduled_for = %crate::clock::rfc3339(fire.scheduled_for), "schedule fired");
        }
        earliest = Some(earliest.map_or(fire.next, |e| e.min(fire.next)));
    }
    Ok(earliest.map(|at| at - store.clock_ms()))
}
