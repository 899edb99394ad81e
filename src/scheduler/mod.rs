//! The scheduler owns this node's part of the work: it turns triggers into
//! queued runs, claims jobs within slots and caps, runs them, aborts them, and
//! keeps the node's liveness and its dead peers' orphans in order.
//!
//! Lifecycle (soft stop, then hard stop): [`Scheduler::start`] registers the
//! node, resolves orphans of dead nodes *before the first claim*, then starts
//! the claim loop, the heartbeat/abort sweeps and the bus listener.
//! [`Scheduler::shutdown`] stops claiming, lets running jobs finish for up to
//! `shutdown_timeout`, then cancels the rest (they are re-queued without
//! spending an attempt), stops the services and deregisters the node.
//!
//! Slots are `OwnedSemaphorePermit`s moved into each job task, so a slot is
//! returned whenever the task ends, however it ends.

mod abort;
mod admission;
mod claim;
mod claim_params;
pub mod config_drift;
mod create;
mod heartbeat;
mod job;
mod job_end;
mod job_output;
mod job_prepare;
mod journal;
mod lease;
mod outbox;
mod placement;
pub mod registration;
mod request;
pub mod rescuer;
mod resources;
mod schedules;
mod setup;
mod slot;
mod trigger;
mod workdir;
mod workflow;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use abort::{AbortRegistry, AbortedBy, CancelCause};
use claim_params::{claim_params, claimable_needs, need_of, placement_refusal};
pub use request::{
    IDEMPOTENCY_KEY_RULE, MAX_AFTER, RerunScope, TriggerError, TriggerRequest, Triggered,
    valid_idempotency_key,
};
pub use workflow::{WorkflowAbort, WorkflowTriggerRequest, WorkflowTriggered};

use crate::bus::Bus;
use crate::config::Settings;
use crate::executor::redact::Redactor;
use crate::executor::{process, reaper};
use crate::metrics::Metrics;
use crate::store::{NodeRow, Store, StoreError};
use crate::webhook::Webhooks;

/// This node's identity and shared state.
pub(crate) struct Inner {
    settings: Arc<Settings>,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    node: NodeRow,
    slots: Arc<Semaphore>,
    registry: AbortRegistry,
    /// Soft stop: no more claims.
    stop_claiming: CancellationToken,
    /// Parent of every job's token; cancelled for the hard stop.
    stop_jobs: CancellationToken,
    /// Stops the background services.
    stop_services: CancellationToken,
    jobs: TaskTracker,
    services: TaskTracker,
    /// Poked when a local slot frees.
    slot_freed: Notify,
    /// The claim loop, awaited at shutdown before jobs are drained, so no claim lands late.
    claimer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Pipeline name → concurrency cap, for claims.
    claimable: HashMap<String, u32>,
    /// Keyed pipeline name → per-key cap (0 = fair shares only), for claims.
    keyed: HashMap<String, u32>,
    /// The time of this node's last claim: every claim gets a time of its own, so a claim
    /// whose commit answer was lost is found again by it (`claimed_at`).
    last_claim_at: std::sync::atomic::AtomicI64,
    /// Pipeline setups and circuits on this node.
    setups: setup::Setups,
    /// This node's own lease: self-fencing and the observer guard.
    lease: lease::Lease,
    /// Resource admission verdict.
    admission: admission::Admission,
    /// Ends kept on disk until the store has them (PostgreSQL only).
    journal: journal::Journal,
    /// Masks declared secrets in captured output and results.
    redactor: Option<Arc<Redactor>>,
    /// Checks callback URLs at trigger time.
    webhooks: Option<Arc<Webhooks>>,
    /// This node's instruments.
    metrics: Arc<Metrics>,
    /// Whether this node's config digest differs from its live peers' (last seen).
    config_differs: std::sync::atomic::AtomicBool,
    /// This node's resources and what its running jobs hold.
    resources: resources::Ledger,
}

/// Handle to this node's scheduler.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl Scheduler {
    /// Registers the node, resolves orphans, and starts claiming.
    pub async fn start(
        settings: Arc<Settings>,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        webhooks: Option<Arc<Webhooks>>,
        metrics: Arc<Metrics>,
    ) -> Result<Scheduler, StoreError> {
        let pid = std::process::id();
        let now = store.clock_ms();
        let node = NodeRow {
            id: uuid::Uuid::now_v7().to_string(),
            host: process::hostname(),
            pid,
            proc_start: process::start_time(pid).unwrap_or(0),
            boot_id: process::pid_scope(),
            slots: settings.server.max_workers as u32,
            started_at: now,
            heartbeat_at: now,
            name: settings.server.node_name.clone().unwrap_or_else(|| {
                crate::config::default_node_name(
                    &process::hostname(),
                    settings.server.listen.port(),
                )
            }),
            url: settings.server.advertise_url.clone(),
            labels: settings.server.labels.clone(),
            config_digest: settings.config_digest(),
            capacity: resources::capacity(settings.server.resources),
        };
        let registering = std::time::Instant::now();
        let redactor =
            Some(Arc::new(Redactor::new(settings.secrets.values()))).filter(|r| !r.is_empty());
        // Placement inside the claim: a node claims only from the pipelines whose
        // `requires` its labels meet and whose one-job needs its capacity can hold
        // (both per pipeline, so this is exact).
        let capacity = node.capacity;
        let claimable: HashMap<String, u32> = settings
            .pipelines
            .iter()
            .filter(|(name, p)| match placement_refusal(p, &node) {
                None => true,
                Some(why) => {
                    tracing::info!(pipeline = %name, "this node claims none of its jobs: {why}");
                    false
                }
            })
            .map(|(name, p)| (name.clone(), p.concurrency))
            .collect();
        let keyed = settings
            .pipelines
            .values()
            .filter(|p| p.concurrency_key.is_some())
            .map(|p| (p.name.clone(), p.concurrency_per_key))
            .collect();
        let resources = resources::Ledger::new(
            capacity,
            claimable
                .keys()
                .map(|name| &settings.pipelines[name].resources),
        );
        let lease = lease::Lease::new(3 * settings.server.heartbeat, registering);
        // A previous life's ends land before anything is rescued or claimed.
        let journal = journal::Journal::new(
            &settings.server.data_dir,
            matches!(settings.store.url, crate::config::StoreUrl::Postgres(_)),
        );
        let replayed = journal.replay(&*store).await;
        if replayed > 0 {
            tracing::info!(replayed, "replayed journaled ends before the first claim");
        }
        let inner = Arc::new(Inner {
            slots: Arc::new(Semaphore::new(settings.server.max_workers)),
            last_claim_at: std::sync::atomic::AtomicI64::new(0),
            settings,
            store,
            bus,
            node,
            registry: AbortRegistry::default(),
            stop_claiming: CancellationToken::new(),
            stop_jobs: CancellationToken::new(),
            stop_services: CancellationToken::new(),
            jobs: TaskTracker::new(),
            services: TaskTracker::new(),
            slot_freed: Notify::new(),
            claimer: std::sync::Mutex::new(None),
            keyed,
            claimable,
            setups: setup::Setups::default(),
            lease,
            admission: admission::Admission::default(),
            journal,
            redactor,
            webhooks,
            metrics,
            config_differs: std::sync::atomic::AtomicBool::new(false),
            resources,
        });
        let taken_back = registration::register(&inner).await?;
        heartbeat::adopt_keys(&inner).await;
        if taken_back.dead_nodes > 0 {
            tracing::info!(report = ?taken_back, "resolved what this node's previous life left");
        }
        match rescuer::run_once(&inner).await {
            Ok(report) if report.orphans > 0 || report.dead_nodes > 0 => {
                tracing::info!(
                    ?report,
                    "resolved orphans of dead nodes before the first claim"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("start-up orphan rescue failed: {e}"),
        }
        *inner.claimer.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(tokio::spawn(claim::claim_loop(inner.clone())));
        inner
            .services
            .spawn(heartbeat::heartbeat_loop(inner.clone()));
        inner
            .services
            .spawn(heartbeat::housekeeping_loop(inner.clone()));
        inner.services.spawn(abort::abort_sweep_loop(inner.clone()));
        inner
            .services
            .spawn(heartbeat::lease_watchdog(inner.clone()));
        inner.services.spawn(heartbeat::rescue_loop(inner.clone()));
        inner.services.spawn(abort::bus_listener(inner.clone()));
        if let Some(webhooks) = inner.webhooks.clone() {
            inner
                .services
                .spawn(outbox::outbox_loop(inner.clone(), webhooks));
        }
        if inner
            .settings
            .pipelines
            .values()
            .any(|p| p.schedule.is_some())
        {
            inner
                .services
                .spawn(schedules::schedule_loop(inner.clone()));
        }
        if reaper::enabled() {
            inner.services.spawn(reaper_loop(inner.clone()));
        }
        tracing::info!(
            node = %inner.node.id,
            name = %inner.node.name,
            slots = inner.node.slots,
            capacity = %inner.node.capacity.describe(),
            "node started"
        );
        Ok(Scheduler { inner })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node.id
    }

    /// This node's name, unique among live nodes.
    pub fn node_name(&self) -> &str {
        &self.inner.node.name
    }

    /// The settings the node runs with.
    pub fn settings(&self) -> &Arc<Settings> {
        &self.inner.settings
    }

    /// Runs one orphan-rescue pass now (it also runs at start and on every heartbeat).
    /// Also hands back jobs recorded as running here that this node no longer runs.
    pub async fn rescue_once(&self) -> Result<rescuer::RescueReport, StoreError> {
        let mut report = rescuer::run_once(&self.inner).await?;
        report.orphans += rescuer::resolve_forgotten(&self.inner, None).await?;
        Ok(report)
    }

    /// This node's instruments.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// This node's bus and whether it is connected.
    pub fn bus_status(&self) -> crate::bus::BusStatus {
        self.inner.bus.status()
    }

    /// This node's slots and how many are busy.
    pub fn slots(&self) -> (usize, usize) {
        let total = self.inner.settings.server.max_workers;
        (
            total,
            total - self.inner.slots.available_permits().min(total),
        )
    }

    /// Why this node is not starting jobs (resource admission), if it is not.
    pub fn admission_held(&self) -> Option<String> {
        self.inner.admission.held()
    }

    /// What this node's running jobs hold of its resources.
    pub fn resources_in_use(&self) -> crate::model::Resources {
        self.inner.resources.in_use()
    }

    /// Graceful stop: no more claims; running jobs get `shutdown_timeout` to finish, then are
    /// stopped and re-queued; services stop; the node deregisters.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.stop_claiming.cancel();
        // A claim in flight must land (and its jobs be tracked) before the drain starts.
        let claimer = inner
            .claimer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(claimer) = claimer {
            let _ = claimer.await;
        }
        inner.jobs.close();
        let timeout = inner.settings.server.shutdown_timeout;
        if tokio::time::timeout(timeout, inner.jobs.wait())
            .await
            .is_err()
        {
            let n = inner.registry.len();
            tracing::info!("shutdown timeout reached; stopping {n} running job(s) for re-queueing");
            inner.stop_jobs.cancel();
            inner.jobs.wait().await;
        }
        inner.stop_services.cancel();
        inner.services.close();
        inner.services.wait().await;
        if let Err(e) = inner.store.node_remove(&inner.node.id).await {
            tracing::warn!("could not deregister node: {e}");
        }
        tracing::info!(node = %inner.node.id, "node stopped");
    }
}

/// Kills escaped descendants of finished jobs and reaps zombies, while the node runs.
async fn reaper_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(REAPER_INTERVAL);
    loop {
        tokio::select! {
            _ = inner.stop_services.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Ok(sweep) = tokio::task::spawn_blocking(reaper::sweep).await
            && sweep.killed > 0
        {
            tracing::info!(
                killed = sweep.killed,
                "killed processes that escaped their finished job's group"
            );
        }
    }
}

/// How often the subreaper sweeps.
const REAPER_INTERVAL: Duration = Duration::from_millis(500);

/// The delay before the claim loop looks again without a wake-up (the poll backstop).
pub(crate) const POLL_BACKSTOP: Duration = Duration::from_secs(1);
