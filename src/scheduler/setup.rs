//! Pipeline setup and its circuit breaker, per node.
//!
//! A pipeline's `setup` command runs lazily, once per node, before the first
//! job of that pipeline starts here. Concurrent first jobs wait for the one
//! setup (one async mutex per pipeline); a host-wide file lock in
//! `data_dir/locks` keeps two processes from running the same setup in the
//! same `cwd` at once. Success is cached for the node's life; a failure never
//! is: the next job tries again. After `circuit_threshold` failures in a row
//! the circuit opens: the node stops claiming the pipeline's jobs (they wait
//! in the queue, they do not fail) until `circuit_cooldown` has passed; then
//! the next claimed job runs one trial setup (half-open) that closes the
//! circuit or opens it again. Every transition is written to the store so any
//! node can show it (`GET /api/pipelines`) and refuse triggers when the
//! circuit is open on every live node.
//!
//! A job whose setup failed (or found the circuit open) is released back to
//! the queue without spending an attempt (`Outcome::Release`).
//!
//! Tests that would catch a violation: `run_completion::setup_runs_once_per_node_for_concurrent_first_jobs`,
//! `run_completion::failing_setup_opens_the_circuit_jobs_wait_and_a_half_open_trial_recovers`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Pipeline;
use crate::executor::redact::Redactor;
use crate::executor::{Collector, Running, SpawnSpec};
use crate::store::{PipelineNodeState, Store};

/// Setup output kept as the failure's explanation.
const ERROR_TAIL_LINES: usize = 20;

/// The circuit of one pipeline on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Setups may run.
    Closed,
    /// Too many failures: no claims until the epoch-ms time.
    Open(i64),
    /// The cool-down passed: the next setup is the trial.
    HalfOpen,
}

#[derive(Debug)]
struct Cell {
    ready: bool,
    failures: u32,
    circuit: Circuit,
}

/// Why a job may not start here.
#[derive(Debug, Clone)]
pub enum SetupBlocked {
    /// The setup ran and failed.
    Failed(String),
    /// The circuit is open (another job's setup failed meanwhile).
    CircuitOpen,
}

/// Setup state of every pipeline on this node.
#[derive(Default)]
pub(crate) struct Setups {
    cells: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Cell>>>>,
    /// Pipelines whose circuit is open here, with the reopening time (read by claims).
    open: Mutex<HashMap<String, i64>>,
}

impl Setups {
    fn cell(&self, pipeline: &str) -> Arc<tokio::sync::Mutex<Cell>> {
        self.cells
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(pipeline.to_string())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Cell {
                    ready: false,
                    failures: 0,
                    circuit: Circuit::Closed,
                }))
            })
            .clone()
    }

    /// Whether this node may claim `pipeline`'s jobs now (its circuit is not open).
    pub(crate) fn claimable(&self, pipeline: &str, now: i64) -> bool {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(pipeline)
            .is_none_or(|until| *until <= now)
    }

    /// Makes sure `pipeline`'s setup has succeeded on this node, running it if needed.
    pub(crate) async fn ensure(
        &self,
        ctx: &SetupContext<'_>,
        pipeline: &Pipeline,
    ) -> Result<(), SetupBlocked> {
        let Some(setup) = &pipeline.setup else {
            return Ok(());
        };
        let cell = self.cell(&pipeline.name);
        let mut cell = cell.lock().await;
        if cell.ready {
            return Ok(());
        }
        let now = ctx.store.clock_ms();
        if let Circuit::Open(until) = cell.circuit {
            if now < until {
                return Err(SetupBlocked::CircuitOpen);
            }
            cell.circuit = Circuit::HalfOpen;
        }
        ctx.record(pipeline, &cell, "running", None).await;
        let spec = SpawnSpec {
            program: setup.program.clone(),
            args: setup.args.iter().map(|t| t.render(|_| None)).collect(),
            cwd: pipeline.cwd.clone(),
            env: pipeline
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .chain(
                    pipeline
                        .secret_env
                        .iter()
                        .map(|(k, v)| (k.clone(), v.expose().to_string())),
                )
                .chain([("RUNYARD_PIPELINE".to_string(), pipeline.name.clone())])
                .collect(),
        };
        let result = run_setup(ctx, pipeline, &spec).await;
        match result {
            Ok(()) => {
                cell.ready = true;
                cell.failures = 0;
                cell.circuit = Circuit::Closed;
                self.set_open(&pipeline.name, None);
                tracing::info!(pipeline = %pipeline.name, "setup succeeded");
                ctx.record(pipeline, &cell, "ready", None).await;
                Ok(())
            }
            Err(message) => {
                cell.failures += 1;
                let trial_failed = cell.circuit == Circuit::HalfOpen;
                if trial_failed || cell.failures >= pipeline.circuit_threshold {
                    let until = ctx.store.clock_ms() + pipeline.circuit_cooldown.as_millis() as i64;
                    cell.circuit = Circuit::Open(until);
                    self.set_open(&pipeline.name, Some(until));
                    tracing::warn!(pipeline = %pipeline.name, failures = cell.failures,
                        "setup failed; circuit open for {:?}: {message}", pipeline.circuit_cooldown);
                } else {
                    tracing::warn!(pipeline = %pipeline.name, failures = cell.failures, "setup failed: {message}");
                }
                ctx.record(pipeline, &cell, "failed", Some(message.clone()))
                    .await;
                Err(SetupBlocked::Failed(message))
            }
        }
    }

    fn set_open(&self, pipeline: &str, until: Option<i64>) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        match until {
            Some(t) => open.insert(pipeline.to_string(), t),
            None => open.remove(pipeline),
        };
    }
}

/// What a setup run needs from the node.
pub(crate) struct SetupContext<'a> {
    /// Where states are written.
    pub store: &'a Arc<dyn Store>,
    /// This node.
    pub node_id: &'a str,
    /// Host-wide locks live here.
    pub data_dir: &'a std::path::Path,
    /// Cancelled at the hard stop.
    pub stop: &'a CancellationToken,
    /// Secret masking, as for jobs.
    pub redactor: Option<Arc<Redactor>>,
}

impl SetupContext<'_> {
    async fn record(&self, pipeline: &Pipeline, cell: &Cell, setup: &str, error: Option<String>) {
        let (circuit, open_until) = match cell.circuit {
            Circuit::Closed => ("closed", None),
            Circuit::Open(t) => ("open", Some(t)),
            Circuit::HalfOpen => ("half_open", None),
        };
        let state = PipelineNodeState {
            node_id: self.node_id.to_string(),
            pipeline: pipeline.name.clone(),
            setup: setup.to_string(),
            failures: cell.failures,
            circuit: circuit.to_string(),
            open_until,
            last_error: error,
            updated_at: self.store.clock_ms(),
        };
        if let Err(e) = self.store.pipeline_node_set(state).await {
            tracing::warn!(pipeline = %pipeline.name, "cannot record setup state: {e}");
        }
    }
}

/// Runs the setup command under the host-wide lock; `Err` carries the reason and output tail.
async fn run_setup(
    ctx: &SetupContext<'_>,
    pipeline: &Pipeline,
    spec: &SpawnSpec,
) -> Result<(), String> {
    let _lock = host_lock(ctx.data_dir, pipeline, ctx.stop)
        .await
        .map_err(|e| format!("cannot take the setup lock: {e}"))?;
    let collector = Collector::with_redactor(1 << 20, ctx.redactor.clone());
    let running = Running::spawn(spec, collector.clone())
        .map_err(|e| format!("cannot start {}: {e}", spec.program.display()))?;
    let timeout = pipeline.timeout.unwrap_or(DEFAULT_SETUP_TIMEOUT);
    let wait = running.wait(
        Some(timeout),
        || pipeline.kill_grace,
        ctx.stop.child_token(),
    );
    tokio::pin!(wait);
    // Keep only the last lines, draining as the setup writes so it never blocks on us.
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut keep = |batch: crate::executor::output::Batch| {
        for line in batch.stdout.into_iter().chain(batch.stderr) {
            if tail.len() == ERROR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    };
    let exit = loop {
        tokio::select! {
            exit = &mut wait => break exit,
            _ = collector.flush_wanted() => keep(collector.take()),
        }
    };
    collector.finish();
    keep(collector.take());
    if exit.success() {
        return Ok(());
    }
    let tail: Vec<String> = tail.into_iter().collect();
    let why = match (exit.ending, exit.code, exit.signal) {
        (crate::executor::Ending::TimedOut, _, _) => "setup timed out".to_string(),
        (crate::executor::Ending::Cancelled, _, _) => {
            "setup stopped (node shutting down)".to_string()
        }
        (_, Some(code), _) => format!("setup exited with code {code}"),
        (_, _, Some(sig)) => format!("setup killed by signal {sig}"),
        _ => "setup failed".to_string(),
    };
    Err(if tail.is_empty() {
        why
    } else {
        format!("{why}: {}", tail.join("\n"))
    })
}

/// An exclusive lock on `data_dir/locks/setup-<pipeline>-<hash of cwd>.lock`, held until dropped.
/// Waits for another process's setup by polling, so a node that is stopping is never stuck
/// behind someone else's hung setup.
async fn host_lock(
    data_dir: &std::path::Path,
    pipeline: &Pipeline,
    stop: &CancellationToken,
) -> std::io::Result<std::fs::File> {
    use std::hash::{Hash, Hasher};
    let dir = data_dir.join("locks");
    std::fs::create_dir_all(&dir)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    pipeline.cwd.hash(&mut h);
    let path = dir.join(format!("setup-{}-{:016x}.lock", pipeline.name, h.finish()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        tokio::select! {
            _ = stop.cancelled() => {
                return Err(std::io::Error::other("the node is stopping"));
            }
            _ = tokio::time::sleep(LOCK_POLL) => {}
        }
    }
}

/// A setup without the pipeline's `timeout` is stopped after this long.
const DEFAULT_SETUP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How often a setup waiting for another process's setup lock looks again.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// How long a trigger should wait before retrying, when every live node's circuit is open.
pub(crate) fn all_open_retry_after(
    states: &[PipelineNodeState],
    live_nodes: &[String],
    pipeline: &str,
    now: i64,
) -> Option<Duration> {
    if live_nodes.is_empty() {
        return None;
    }
    let mut soonest: Option<i64> = None;
    for node in live_nodes {
        let state = states
            .iter()
            .find(|s| &s.node_id == node && s.pipeline == pipeline)?;
        let until = state
            .open_until
            .filter(|u| state.circuit == "open" && *u > now)?;
        soonest = Some(soonest.map_or(until, |s| s.min(until)));
    }
    soonest.map(|t| Duration::from_millis((t - now).max(1000) as u64))
}
