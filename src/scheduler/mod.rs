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
mod create;
mod heartbeat;
mod job;
mod job_output;
mod journal;
mod lease;
mod outbox;
mod placement;
pub mod registration;
pub mod rescuer;
mod resources;
mod schedules;
mod setup;
mod workdir;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use thiserror::Error;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use abort::{AbortRegistry, AbortedBy, CancelCause};
use create::create_run;

use crate::bus::Bus;
use crate::config::{MAX_SHARDS, Pipeline, Settings};
use crate::executor::redact::Redactor;
use crate::executor::{process, reaper};
use crate::metrics::Metrics;
use crate::model::{RunId, job_id_for};
use crate::store::{
    AbortOutcome, JobPolicy, NodeRow, PipelinePauseParams, RunCreateParams, Store, StoreError,
};
use crate::webhook::Webhooks;

/// What an idempotency key may be, in the body (`idempotencyKey`) and in the
/// `Idempotency-Key` header alike.
pub const IDEMPOTENCY_KEY_RULE: &str = "idempotencyKey must be 1 to 200 visible ASCII characters or spaces (the Idempotency-Key header's rule)";

/// Whether `key` follows [`IDEMPOTENCY_KEY_RULE`]: 1 to 200 characters from space to `~`.
pub fn valid_idempotency_key(key: &str) -> bool {
    (1..=200).contains(&key.len()) && key.bytes().all(|b| (b' '..=b'~').contains(&b))
}

/// Why a trigger was refused.
#[derive(Debug, Error)]
pub enum TriggerError {
    /// No pipeline of that name.
    #[error("Unknown pipeline: {name}. Supported pipelines: {supported}")]
    UnknownPipeline {
        /// Asked for.
        name: String,
        /// Comma-separated known names.
        supported: String,
    },
    /// A parameter value was refused.
    #[error("Invalid parameter {name}: {message}")]
    BadParameter {
        /// Parameter.
        name: String,
        /// Why.
        message: String,
    },
    /// A parameter the pipeline does not declare.
    #[error("Undeclared parameter: {0}")]
    UndeclaredParameter(String),
    /// A required parameter is missing.
    #[error("Missing required parameter: {0}")]
    MissingParameter(String),
    /// Shard count out of range.
    #[error("shards must be between 1 and {MAX_SHARDS}")]
    BadShards,
    /// A field not supported by this build.
    #[error("{0}")]
    Unsupported(String),
    /// The idempotency key names an earlier run made with other parameters or shards.
    #[error("Idempotency key {key:?} was already used for run {run_id} with different parameters")]
    IdempotencyConflict {
        /// The key.
        key: String,
        /// The earlier run.
        run_id: String,
    },
    /// The callback URL was refused (scheme, host, address).
    #[error("Invalid callbackUrl: {0}")]
    BadCallback(String),
    /// The pipeline's setup circuit is open on every live node.
    #[error("{message}")]
    Unavailable {
        /// What is wrong.
        message: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// A `delay`, `runAt` or `priority` out of range or malformed.
    #[error("{0}")]
    BadPlacement(String),
    /// A re-run named no run.
    #[error("Run not found: {0}")]
    RunNotFound(String),
    /// Only finished runs can be re-run.
    #[error("Run {run_id} is {status}: only a finished run can be re-run")]
    NotFinished {
        /// The run.
        run_id: String,
        /// Its status.
        status: String,
    },
    /// A re-run of failed shards found none.
    #[error("Run {0} has no failed or aborted shard to re-run")]
    NothingToRerun(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which shards a re-run repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RerunScope {
    /// Every shard.
    All,
    /// Only shards that failed or were aborted; completed ones are kept.
    Failed,
}

/// A trigger request, as validated input arrives from the API or CLI.
#[derive(Debug, Clone, Default)]
pub struct TriggerRequest {
    /// Pipeline name.
    pub pipeline: String,
    /// Raw parameter values.
    pub parameters: serde_json::Map<String, Value>,
    /// Shard count override.
    pub shards: Option<u32>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Completion webhook target (the pipeline's default when absent).
    pub callback_url: Option<String>,
    /// `api`, `cli`, `dashboard`.
    pub triggered_by: String,
    /// Who triggered (the token's label), when the API knows.
    pub actor: Option<String>,
    /// Start no shard before this long from now (`"10m"`).
    pub delay: Option<String>,
    /// Start no shard before this time (RFC 3339).
    pub run_at: Option<String>,
    /// Claim order (higher first); the pipeline's `priority` when absent.
    pub priority: Option<i64>,
}

/// A queued run.
#[derive(Debug, Clone)]
pub struct Triggered {
    /// Run id.
    pub run_id: String,
    /// Job ids in shard order.
    pub job_ids: Vec<String>,
    /// Pipeline.
    pub pipeline: String,
    /// Creation time (epoch ms).
    pub created_at: i64,
    /// True when an earlier run with the same idempotency key was returned.
    pub existing: bool,
    /// The pipeline is paused: the run waits until it is resumed.
    pub paused: bool,
    /// A delayed run's not-before time (epoch ms).
    pub run_at: Option<i64>,
}

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
            capacity: settings.server.resources.unwrap_or_else(resources::machine),
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
        inner
            .services
            .spawn(heartbeat::abort_sweep_loop(inner.clone()));
        inner
            .services
            .spawn(heartbeat::lease_watchdog(inner.clone()));
        inner.services.spawn(heartbeat::rescue_loop(inner.clone()));
        inner.services.spawn(heartbeat::bus_listener(inner.clone()));
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
        report.orphans += rescuer::resolve_forgotten(&self.inner).await?;
        Ok(report)
    }

    /// Validates a trigger and queues the run durably (DESIGN "Life of a run" 1).
    pub async fn trigger(&self, req: TriggerRequest) -> Result<Triggered, TriggerError> {
        let settings = &self.inner.settings;
        let Some(pipeline) = settings.pipelines.get(&req.pipeline) else {
            return Err(TriggerError::UnknownPipeline {
                name: req.pipeline.chars().take(100).collect(),
                supported: settings
                    .pipelines
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let params = resolve_params(pipeline, &req.parameters)?;
        let shards = req.shards.unwrap_or(pipeline.shards);
        if shards == 0 || shards > MAX_SHARDS {
            return Err(TriggerError::BadShards);
        }
        // One rule for the body field and the `Idempotency-Key` header: what a header can
        // carry (visible ASCII and space; no control characters, which NUL-hating
        // PostgreSQL text could not even store), 1 to 200 of them.
        if let Some(key) = &req.idempotency_key
            && !valid_idempotency_key(key)
        {
            return Err(TriggerError::Unsupported(IDEMPOTENCY_KEY_RULE.into()));
        }
        let idempotency_key = req.idempotency_key;
        let callback_url = req.callback_url.or_else(|| pipeline.callback_url.clone());
        if let Some(url) = &callback_url {
            let Some(webhooks) = &self.inner.webhooks else {
                return Err(TriggerError::BadCallback(
                    "webhook delivery is not available on this node".into(),
                ));
            };
            webhooks
                .validate(url)
                .await
                .map_err(|e| TriggerError::BadCallback(e.to_string()))?;
        }
        if pipeline.setup.is_some() {
            self.refuse_if_every_circuit_is_open(&pipeline.name).await?;
        }
        let run = RunId::new();
        let job_ids: Vec<String> = (0..shards).map(|i| job_id_for(run, i, shards)).collect();
        let wanted_params = params.clone();
        let now = self.inner.store.clock_ms();
        let retention = settings.server.retention.as_millis() as i64;
        let not_before =
            placement::not_before(req.delay.as_deref(), req.run_at.as_deref(), now, retention)
                .map_err(TriggerError::BadPlacement)?;
        let priority = placement::priority(req.priority, pipeline.priority)
            .map_err(TriggerError::BadPlacement)?;
        let options = crate::store::RunOptions {
            not_before,
            priority,
            concurrency_key: concurrency_key_of(pipeline, &params),
            ..Default::default()
        };
        let created = create_run(
            &self.inner.store,
            RunCreateParams {
                run_id: run.to_string(),
                job_ids,
                pipeline: pipeline.name.clone(),
                params,
                triggered_by: req.triggered_by,
                actor: req.actor,
                idempotency_key: idempotency_key.clone(),
                policy: policy_of(pipeline),
                has_finalizer: pipeline.finalizer.is_some(),
                callback_url,
                now,
                options,
            },
        )
        .await?;
        let reused = created.existing
            && (created.existing_params.as_ref() != Some(&wanted_params)
                || created.job_ids.len() != shards as usize);
        if reused {
            return Err(TriggerError::IdempotencyConflict {
                key: idempotency_key.unwrap_or_default(),
                run_id: created.run_id,
            });
        }
        // Read with the run's insert (or after it): a pause that committed before that
        // read is reported; one racing it may not be (the run waits either way).
        let paused = match created.paused {
            Some(paused) => paused,
            None => self.is_paused(&pipeline.name).await?,
        };
        Ok(Triggered {
            run_id: created.run_id,
            job_ids: created.job_ids,
            pipeline: pipeline.name.clone(),
            created_at: created.created_at,
            existing: created.existing,
            paused,
            run_at: not_before,
        })
    }

    /// Re-runs a finished run as a new run (`rerunOf`): same pipeline, parameters, shard
    /// count and callback; the pipeline's current policy. With [`RerunScope::Failed`] the
    /// completed shards are kept (see [`crate::store::rerun`]). The original is never changed.
    pub async fn rerun(
        &self,
        run_id: &str,
        scope: RerunScope,
        triggered_by: String,
        actor: Option<String>,
    ) -> Result<Triggered, TriggerError> {
        let store = &self.inner.store;
        let Some(original) = store.run_get(run_id).await? else {
            return Err(TriggerError::RunNotFound(run_id.to_string()));
        };
        if original.finished_at.is_none() {
            return Err(TriggerError::NotFinished {
                run_id: original.run_id,
                status: original.status,
            });
        }
        let settings = &self.inner.settings;
        let Some(pipeline) = settings.pipelines.get(&original.pipeline_id) else {
            return Err(TriggerError::UnknownPipeline {
                name: original.pipeline_id.clone(),
                supported: settings
                    .pipelines
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let shards = original.shard_count;
        let run = RunId::new();
        let job_ids: Vec<String> = (0..shards).map(|i| job_id_for(run, i, shards)).collect();
        let kept: Vec<crate::store::rerun::KeptShard> = match scope {
            RerunScope::All => Vec::new(),
            RerunScope::Failed => original
                .jobs
                .iter()
                .filter(|j| crate::store::rerun::keeps(&j.status))
                .map(|j| crate::store::rerun::KeptShard {
                    shard_index: j.shard_index,
                    job_id: job_ids[j.shard_index as usize].clone(),
                    from_job: j.id.clone(),
                })
                .collect(),
        };
        if kept.len() == shards as usize {
            return Err(TriggerError::NothingToRerun(original.run_id));
        }
        let created = create_run(
            store,
            RunCreateParams {
                run_id: run.to_string(),
                job_ids,
                pipeline: pipeline.name.clone(),
                params: original.parameters.clone(),
                triggered_by,
                actor,
                idempotency_key: None,
                policy: policy_of(pipeline),
                has_finalizer: pipeline.finalizer.is_some(),
                callback_url: original.callback_url.clone(),
                now: store.clock_ms(),
                options: crate::store::RunOptions {
                    rerun_of: Some(original.run_id.clone()),
                    kept,
                    not_before: None,
                    priority: original.priority,
                    scheduled_for: None,
                    concurrency_key: concurrency_key_of(pipeline, &original.parameters),
                },
            },
        )
        .await?;
        let paused = match created.paused {
            Some(paused) => paused,
            None => self.is_paused(&pipeline.name).await?,
        };
        Ok(Triggered {
            run_id: created.run_id,
            job_ids: created.job_ids,
            pipeline: pipeline.name.clone(),
            created_at: created.created_at,
            existing: false,
            paused,
            run_at: None,
        })
    }

    /// Pauses (`paused`) or resumes a configured pipeline for every node on the store;
    /// `Ok(None)` for an unknown pipeline, else whether the state changed.
    pub async fn pause(
        &self,
        pipeline: &str,
        paused: bool,
        actor: Option<String>,
    ) -> Result<Option<bool>, StoreError> {
        if !self.inner.settings.pipelines.contains_key(pipeline) {
            return Ok(None);
        }
        let changed = self
            .inner
            .store
            .pipeline_pause(PipelinePauseParams {
                pipeline: pipeline.to_string(),
                paused,
                actor,
                now: self.inner.store.clock_ms(),
            })
            .await?;
        if changed {
            tracing::info!(pipeline, paused, "pipeline pause state changed");
        }
        Ok(Some(changed))
    }

    /// Whether a pipeline is paused now (as the store says).
    pub async fn is_paused(&self, pipeline: &str) -> Result<bool, StoreError> {
        Ok(self
            .inner
            .store
            .pipelines_paused()
            .await?
            .iter()
            .any(|p| p.pipeline == pipeline))
    }

    /// 503 when the pipeline's setup circuit is open on every live node (DESIGN decision 19).
    async fn refuse_if_every_circuit_is_open(&self, pipeline: &str) -> Result<(), TriggerError> {
        let now = self.inner.store.clock_ms();
        let lease = 3 * self.inner.settings.server.heartbeat.as_millis() as i64;
        let live: Vec<String> = self
            .inner
            .store
            .nodes_list()
            .await?
            .into_iter()
            .filter(|n| now - n.heartbeat_at <= lease)
            .map(|n| n.id)
            .collect();
        let states = self.inner.store.pipeline_nodes_list().await?;
        match setup::all_open_retry_after(&states, &live, pipeline, now) {
            None => Ok(()),
            Some(retry_after) => Err(TriggerError::Unavailable {
                message: format!(
                    "Pipeline {pipeline} is unavailable: its setup failed repeatedly and its circuit is open on every live node ({}); retry in {}s",
                    live.len(),
                    retry_after.as_secs()
                ),
                retry_after,
            }),
        }
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

    /// Aborts a run: durable mark first, then local cancellation, then the bus (DESIGN "Life of a run" 5).
    pub async fn abort(&self, run_id: &str, by: AbortedBy) -> Result<AbortOutcome, StoreError> {
        let by = by.json(&self.inner.node, None);
        let outcome = self
            .inner
            .store
            .run_abort_by(run_id, self.inner.store.clock_ms(), Some(by))
            .await?;
        if let AbortOutcome::Aborted { aborted_jobs, .. } = outcome {
            Metrics::add(&self.inner.metrics.aborts, 1);
            self.inner.registry.abort_all_shards_for_run(run_id);
            // Repeating an abort changes nothing anywhere: only a new one is published.
            if aborted_jobs > 0 {
                self.inner.bus.publish_abort(run_id);
            }
        }
        Ok(outcome)
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

/// The retry and orphan rules a pipeline's new jobs are queued under.
/// A run's concurrency key: its pipeline's `concurrency_key` rendered with its
/// parameters (every placeholder is a declared parameter, so each has a value).
fn concurrency_key_of(
    pipeline: &Pipeline,
    params: &std::collections::BTreeMap<String, String>,
) -> Option<String> {
    pipeline
        .concurrency_key
        .as_ref()
        .map(|t| t.render(|name| params.get(name).cloned()))
}

fn policy_of(pipeline: &Pipeline) -> JobPolicy {
    JobPolicy {
        max_attempts: pipeline.max_attempts,
        retry_backoff_ms: pipeline.retry_backoff.as_millis() as i64,
        on_orphan: pipeline.on_orphan.as_str(),
        max_orphan_requeues: pipeline.max_orphan_requeues,
        retry_on: pipeline.retry_on.clone(),
    }
}

/// Fills defaults and validates every parameter against the pipeline's declarations.
fn resolve_params(
    pipeline: &Pipeline,
    given: &serde_json::Map<String, Value>,
) -> Result<BTreeMap<String, String>, TriggerError> {
    if given.len() > 64 {
        return Err(TriggerError::Unsupported("at most 64 parameters".into()));
    }
    if let Some(undeclared) = given.keys().find(|k| !pipeline.params.contains_key(*k)) {
        return Err(TriggerError::UndeclaredParameter(
            undeclared.chars().take(100).collect(),
        ));
    }
    let mut out = BTreeMap::new();
    for (name, spec) in &pipeline.params {
        let value = match given.get(name) {
            Some(v) => spec
                .accept(v)
                .map_err(|message| TriggerError::BadParameter {
                    name: name.clone(),
                    message,
                })?,
            None => spec
                .default
                .clone()
                .ok_or_else(|| TriggerError::MissingParameter(name.clone()))?,
        };
        out.insert(name.clone(), value);
    }
    Ok(out)
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

/// A claim of up to `max` jobs for this node, at a time no other claim of this node has
/// (so a claim whose commit answer was lost can be found again by its `claimed_at`).
/// Pipelines whose setup circuit is open on this node are left out.
fn claim_params(
    inner: &Inner,
    max: usize,
    allowed: Option<&[String]>,
) -> crate::store::JobClaimParams {
    use std::sync::atomic::Ordering;
    let clock = inner.store.clock_ms();
    let mut last = inner.last_claim_at.load(Ordering::Acquire);
    let now = loop {
        let now = clock.max(last + 1);
        match inner.last_claim_at.compare_exchange_weak(
            last,
            now,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => break now,
            Err(seen) => last = seen,
        }
    };
    crate::store::JobClaimParams {
        node_id: inner.node.id.clone(),
        max,
        global_cap: inner.settings.server.max_workers_global,
        pipelines: inner
            .claimable
            .iter()
            .filter(|(name, _)| inner.setups.claimable(name, now))
            .filter(|(name, _)| allowed.is_none_or(|a| a.contains(name)))
            .map(|(name, cap)| (name.clone(), *cap))
            .collect(),
        keyed: inner
            .keyed
            .iter()
            .filter(|(name, _)| inner.claimable.contains_key(*name))
            .map(|(name, cap)| (name.clone(), *cap))
            .collect(),
        now,
    }
}

/// Why this node never claims `pipeline`'s jobs (its labels miss a requirement, or one
/// job needs more than the node has), or `None`.
fn placement_refusal(pipeline: &crate::config::Pipeline, node: &NodeRow) -> Option<String> {
    crate::model::unmet(&pipeline.requires, &node.labels).or_else(|| {
        (!pipeline.resources.fits(&node.capacity)).then(|| {
            format!(
                "one job needs {}, more than this node has ({})",
                pipeline.resources.describe(),
                node.capacity.describe()
            )
        })
    })
}

/// Each claimable pipeline with what one of its jobs needs.
fn claimable_needs(inner: &Inner) -> impl Iterator<Item = (&str, &crate::model::Resources)> {
    inner
        .claimable
        .keys()
        .map(|name| (name.as_str(), &inner.settings.pipelines[name].resources))
}

/// What one job of `pipeline` needs (nothing for a pipeline not configured here).
fn need_of<'a>(inner: &'a Inner, pipeline: &str) -> &'a crate::model::Resources {
    static NOTHING: crate::model::Resources = crate::model::Resources {
        cpu_milli: 0,
        memory: 0,
        gpu: 0,
    };
    inner
        .settings
        .pipelines
        .get(pipeline)
        .map_or(&NOTHING, |p| &p.resources)
}
