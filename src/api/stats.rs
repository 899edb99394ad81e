//! `GET /api/stats`: per-pipeline totals and a time series of finished runs (throughput,
//! failures, duration) for the dashboard's charts.
//!
//! Buckets are aligned to multiples of their width since the epoch (UTC), so two requests
//! a few seconds apart agree on every full bucket; the last bucket is the one running now.
//! The figures count runs by when they finished; `queued` and `running` are the jobs
//! waiting and running now, as in `GET /api/pipelines`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, AppState, ErrorBody};
use crate::clock::{now_ms, rfc3339};
use crate::store::PipelineStatsParams;

/// `?window=`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct StatsQuery {
    /// How far back: `1h` (12 buckets of 5 min), `6h` (24 of 15 min), `24h` (24 of 1 h,
    /// the default) or `7d` (28 of 6 h).
    #[param(pattern = "^(1h|6h|24h|7d)$")]
    window: Option<String>,
}

/// `GET /api/stats` answer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct StatsView {
    /// The window asked for (`1h`, `6h`, `24h`, `7d`).
    window: String,
    /// RFC 3339: start of the first bucket.
    since: String,
    /// RFC 3339: end of the last bucket (a little after now).
    until: String,
    /// Width of a bucket in milliseconds.
    bucket_ms: i64,
    /// Every configured pipeline (and any other that finished runs in the window), by name.
    pipelines: Vec<PipelineStatsView>,
}

/// One pipeline's figures over the window.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct PipelineStatsView {
    /// Pipeline.
    pipeline_id: String,
    /// Jobs queued now.
    queued: u64,
    /// Jobs running now.
    running: u64,
    /// Runs that completed in the window.
    completed: u64,
    /// Runs that failed in the window.
    failed: u64,
    /// Runs aborted in the window.
    aborted: u64,
    /// Mean duration (started → finished) of the runs that finished in the window, ms.
    avg_duration_ms: Option<i64>,
    /// Longest of them, ms.
    max_duration_ms: Option<i64>,
    /// The window bucket by bucket, oldest first.
    buckets: Vec<StatsBucketView>,
}

/// Runs that finished in one bucket.
#[derive(Serialize, ToSchema, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub(super) struct StatsBucketView {
    /// RFC 3339: the bucket's start.
    start: String,
    /// Completed runs.
    completed: u64,
    /// Failed runs.
    failed: u64,
    /// Aborted runs.
    aborted: u64,
    /// Mean duration of those runs, ms.
    avg_duration_ms: Option<i64>,
    /// Longest, ms.
    max_duration_ms: Option<i64>,
    #[serde(skip)]
    sum_ms: i64,
}

/// `(window, bucket width ms, buckets)` for a `window` value.
fn window(w: Option<&str>) -> Result<(&'static str, i64, u32), ApiError> {
    const MIN: i64 = 60_000;
    Ok(match w.unwrap_or("24h") {
        "1h" => ("1h", 5 * MIN, 12),
        "6h" => ("6h", 15 * MIN, 24),
        "24h" => ("24h", 60 * MIN, 24),
        "7d" => ("7d", 360 * MIN, 28),
        other => {
            return Err(ApiError::BadRequest(format!(
                "unknown window {:?}; expected one of 1h, 6h, 24h, 7d",
                other.chars().take(20).collect::<String>()
            )));
        }
    })
}

/// `GET /api/stats`: per-pipeline totals and buckets of finished runs over a window.
#[utoipa::path(
    get,
    path = "/api/stats",
    tag = "pipelines",
    operation_id = "pipelineStats",
    params(StatsQuery),
    responses(
        (status = 200, description = "Totals and time buckets per pipeline", body = StatsView),
        (status = 400, description = "Unknown window", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn stats(
    State(state): State<AppState>,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<StatsView>, ApiError> {
    let Query(q) = query?;
    let (name, bucket_ms, n) = window(q.window.as_deref())?;
    let until = (now_ms().div_euclid(bucket_ms) + 1) * bucket_ms;
    let since = until - bucket_ms * i64::from(n);
    let rows = state
        .store
        .pipeline_stats(PipelineStatsParams {
            since,
            until,
            bucket_ms,
        })
        .await?;
    let counts = state.store.pipeline_counts().await?;
    let empty: Vec<StatsBucketView> = (0..n)
        .map(|i| StatsBucketView {
            start: rfc3339(since + bucket_ms * i64::from(i)),
            ..Default::default()
        })
        .collect();
    let mut by_pipeline: BTreeMap<String, Vec<StatsBucketView>> = state
        .scheduler
        .settings()
        .pipelines
        .keys()
        .map(|p| (p.clone(), empty.clone()))
        .collect();
    let mut max: BTreeMap<String, i64> = BTreeMap::new();
    for row in rows {
        let buckets = by_pipeline
            .entry(row.pipeline.clone())
            .or_insert_with(|| empty.clone());
        let Some(b) = buckets.get_mut(row.bucket as usize) else {
            continue;
        };
        match row.status.as_str() {
            "completed" => b.completed += row.runs,
            "failed" => b.failed += row.runs,
            "aborted" => b.aborted += row.runs,
            _ => continue,
        }
        b.sum_ms += row.duration_sum_ms;
        b.max_duration_ms = Some(b.max_duration_ms.unwrap_or(0).max(row.duration_max_ms));
        let m = max.entry(row.pipeline).or_insert(0);
        *m = (*m).max(row.duration_max_ms);
    }
    let pipelines = by_pipeline
        .into_iter()
        .map(|(pipeline, mut buckets)| {
            let (mut completed, mut failed, mut aborted, mut sum) = (0, 0, 0, 0);
            for b in &mut buckets {
                let runs = b.completed + b.failed + b.aborted;
                b.avg_duration_ms = (runs > 0).then(|| b.sum_ms / runs as i64);
                completed += b.completed;
                failed += b.failed;
                aborted += b.aborted;
                sum += b.sum_ms;
            }
            let runs = completed + failed + aborted;
            let c = counts.get(&pipeline).copied().unwrap_or_default();
            PipelineStatsView {
                avg_duration_ms: (runs > 0).then(|| sum / runs as i64),
                max_duration_ms: max.get(&pipeline).copied(),
                pipeline_id: pipeline,
                queued: c.queued,
                running: c.running,
                completed,
                failed,
                aborted,
                buckets,
            }
        })
        .collect();
    Ok(Json(StatsView {
        window: name.to_string(),
        since: rfc3339(since),
        until: rfc3339(until),
        bucket_ms,
        pipelines,
    }))
}
