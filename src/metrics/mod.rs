//! This node's instruments and their Prometheus text rendering (`GET /metrics`).
//!
//! Counters and histograms are lock-free atomics updated on the hot path
//! (a few relaxed adds per job); gauges that describe the store (jobs by state,
//! queue depth per pipeline) are read from it at scrape time by the API, so
//! they are the same on every node. No dependency: the text format is small.
//!
//! Job outcomes and durations are labelled by `pipeline`: a node keeps one set
//! of instruments per pipeline it has run, made on first use (a read lock and an
//! atomic add per job end afterwards); pipelines of the config that have not run
//! here yet render as zeros, so every series exists from the first scrape.
//!
//! Test: `access_control::metrics_expose_jobs_queue_latency_and_sse_clients`.

mod render;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// This build's version, as `runyard_build_info{version}` shows it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A cumulative histogram with fixed bucket bounds (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// Bounds for latencies from sub-millisecond to minutes.
const LATENCY_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// Bounds for job durations, from a fast `true` to hours.
const DURATION_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0,
];

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_series(out, name, "");
    }

    /// The samples of one series; `labels` is empty or `key="value",` (with the comma).
    fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let labels = labels.trim_end_matches(',');
        let (open, close) = if labels.is_empty() {
            ("", "")
        } else {
            ("{", "}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{open}{labels}{close} {sum}\n{name}_count{open}{labels}{close} {count}"
        );
    }
}

/// Ends of executions counted by [`Metrics::job_ended`].
#[derive(Debug, Clone, Copy)]
pub enum JobEnd {
    /// Exited 0.
    Completed,
    /// Failed for good.
    Failed,
    /// Failed, will be retried.
    Retried,
    /// Put back in the queue (orphan, shutdown, setup failure).
    Requeued,
    /// Aborted.
    Aborted,
}

/// The per-pipeline instruments: execution ends by outcome and durations.
struct PipelineInstruments {
    ends: [AtomicU64; 5],
    duration: Histogram,
}

impl Default for PipelineInstruments {
    fn default() -> Self {
        PipelineInstruments {
            ends: Default::default(),
            duration: Histogram::new(DURATION_BOUNDS),
        }
    }
}

/// The instruments of one node.
pub struct Metrics {
    /// Queued (due) → claimed.
    pub claim_latency: Histogram,
    /// Age of the oldest line of each output flush when it was committed.
    pub flush_lag: Histogram,
    /// Ends and durations per pipeline, created on first use.
    pipelines: RwLock<BTreeMap<String, Arc<PipelineInstruments>>>,
    /// Run aborts accepted by this node's API.
    pub aborts: AtomicU64,
    /// Workflow runs created through this node (triggers and re-runs; not replays).
    pub workflow_runs_created: AtomicU64,
    /// Workflow run aborts accepted by this node's API.
    pub workflow_aborts: AtomicU64,
    /// Schedule ticks this node fired (each tick is fired by one node of the store).
    pub schedule_fires: AtomicU64,
    /// Orphaned executions resolved by this node's rescuer.
    pub orphans_recovered: AtomicU64,
    /// Times this node stopped its jobs because its own lease ran out.
    pub self_fences: AtomicU64,
    /// Other nodes this node declared dead and removed (it won their rescue).
    pub nodes_declared_dead: AtomicU64,
    /// Foreign `run-abort` messages this node finished handling.
    pub bus_aborts_handled: AtomicU64,
    /// Webhook attempts by outcome: delivered, failed attempt.
    pub webhooks_delivered: AtomicU64,
    /// Failed webhook attempts.
    pub webhook_failures: AtomicU64,
    /// Times a log stream woke to read the store (its own job changed, or a poll).
    pub log_stream_wakeups: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            claim_latency: Histogram::new(LATENCY_BOUNDS),
            flush_lag: Histogram::new(LATENCY_BOUNDS),
            pipelines: RwLock::default(),
            aborts: AtomicU64::new(0),
            workflow_runs_created: AtomicU64::new(0),
            workflow_aborts: AtomicU64::new(0),
            schedule_fires: AtomicU64::new(0),
            orphans_recovered: AtomicU64::new(0),
            self_fences: AtomicU64::new(0),
            nodes_declared_dead: AtomicU64::new(0),
            bus_aborts_handled: AtomicU64::new(0),
            webhooks_delivered: AtomicU64::new(0),
            webhook_failures: AtomicU64::new(0),
            log_stream_wakeups: AtomicU64::new(0),
        }
    }
}

/// Gauges read from the store and the API at scrape time.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// `(pipeline, queued, running)`.
    pub pipelines: Vec<(String, u64, u64)>,
    /// `(pipeline, oldest queued seconds, unplaceable jobs)`.
    pub backlog: Vec<(String, f64, u64)>,
    /// This node's `(id, name)`.
    pub node: (String, String),
    /// Open SSE streams on this node.
    pub sse_clients: usize,
    /// Slots of this node and how many are busy.
    pub slots: (usize, usize),
    /// This node's bus.
    pub bus: Option<crate::bus::BusStatus>,
    /// Pipelines paused on the store (every node shows the same).
    pub paused: std::collections::BTreeSet<String>,
    /// `(backend, op, statements, commits)` this node's store sent.
    pub store_traffic: Vec<(&'static str, &'static str, u64, u64)>,
}

/// The outcome label of each [`JobEnd`], in rendering order.
const OUTCOMES: [(&str, JobEnd); 5] = [
    ("completed", JobEnd::Completed),
    ("failed", JobEnd::Failed),
    ("retried", JobEnd::Retried),
    ("requeued", JobEnd::Requeued),
    ("aborted", JobEnd::Aborted),
];

impl Metrics {
    /// The instruments of `pipeline`, made on first use.
    fn pipeline(&self, pipeline: &str) -> Arc<PipelineInstruments> {
        if let Some(p) = self
            .pipelines
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(pipeline)
        {
            return p.clone();
        }
        self.pipelines
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(pipeline.to_string())
            .or_default()
            .clone()
    }

    /// Counts one execution's end of a job of `pipeline`.
    pub fn job_ended(&self, pipeline: &str, ending: JobEnd) {
        self.pipeline(pipeline).ends[ending as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Records one execution's run time (spawn → exit) of a job of `pipeline`.
    pub fn job_duration(&self, pipeline: &str, d: Duration) {
        self.pipeline(pipeline).duration.observe(d);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
