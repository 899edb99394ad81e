//! The fleet as the API shows it: `GET /api/workers` (every live node with its name,
//! URL, labels, capacity and whether its config differs from its peers'), `GET
//! /api/queue` (per pipeline: the backlog, its age, and whether any live node can take
//! it — what an autoscaler reads), and [`Fleet`], which names the node of a job view and
//! says why a queued job waits for a node that does not exist.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::views::{JobView, RunView};
use super::{ApiError, AppState, ErrorBody};
use crate::config::Pipeline;
use crate::model::{Labels, Requirements, Resources};
use crate::store::{NodeRow, PipelineNodeState};

/// `GET /api/workers` answer.
#[derive(Serialize, ToSchema)]
pub(super) struct WorkerList {
    /// Every live node sharing the store.
    workers: Vec<WorkerView>,
}

/// One node.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct WorkerView {
    /// Node id (random per boot).
    id: String,
    /// Its name (`[server] node_name`; default `{host}:{port}`), unique among live nodes.
    name: String,
    /// Where its API is reached (`[server] advertise_url`), if it said.
    url: Option<String>,
    /// Its labels (`[server] labels`), matched against pipelines' `requires`.
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    labels: Labels,
    /// Digest of the pipelines and caps it runs.
    config_digest: String,
    /// True when its config digest is not the one its live peers run.
    config_differs: bool,
    /// Host name.
    host: String,
    /// OS pid.
    pid: u32,
    /// Slots (`max_workers`).
    slots: u32,
    /// What it has for its jobs (`[server] resources`; default: the machine's cores and
    /// memory, no GPU). CPU in thousandths of a core, memory in bytes.
    capacity: crate::model::Resources,
    /// For the answering node: what its running jobs hold of that; null for other nodes.
    in_use: Option<crate::model::Resources>,
    /// Registration time (RFC 3339).
    started: String,
    /// Last heartbeat (RFC 3339).
    heartbeat: String,
    /// Jobs it runs now.
    running_jobs: Vec<String>,
    /// True for the node that answers.
    #[serde(rename = "self")]
    is_self: bool,
    /// For the answering node: `admitting`, or `held: <why>` while resource admission
    /// holds claims; null for other nodes.
    admission: Option<String>,
    /// Milliseconds since its last heartbeat, by the answering node's clock.
    heartbeat_age_ms: i64,
    /// The answering node's heartbeat interval: a node silent for 3 of them is dead.
    heartbeat_every_ms: u64,
    /// For the answering node: its bus and whether it is connected; null for other nodes.
    bus: Option<crate::bus::BusStatus>,
    /// Its setup and circuit state per pipeline (pipelines with a setup it has tried).
    pipelines: Vec<PipelineNodeState>,
}

/// `GET /api/workers`: the live nodes sharing this store.
#[utoipa::path(
    get,
    path = "/api/workers",
    tag = "node",
    operation_id = "listWorkers",
    responses(
        (status = 200, description = "Every live node", body = WorkerList),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn workers(State(state): State<AppState>) -> Result<Json<WorkerList>, ApiError> {
    let nodes = state.store.nodes_list().await?;
    let setups = state.store.pipeline_nodes_list().await?;
    let outliers = crate::scheduler::config_drift::config_outliers(&nodes);
    let now = crate::clock::now_ms();
    let every = state.scheduler.settings().server.heartbeat.as_millis() as u64;
    let mut out = Vec::with_capacity(nodes.len());
    for node in nodes {
        let running: Vec<String> = state
            .store
            .jobs_running_on(&node.id)
            .await?
            .into_iter()
            .map(|j| j.id)
            .collect();
        let is_self = node.id == state.scheduler.node_id();
        out.push(WorkerView {
            started: crate::clock::rfc3339(node.started_at),
            heartbeat: crate::clock::rfc3339(node.heartbeat_at),
            running_jobs: running,
            admission: is_self.then(|| {
                state
                    .scheduler
                    .admission_held()
                    .map_or("admitting".to_string(), |why| format!("held: {why}"))
            }),
            heartbeat_age_ms: (now - node.heartbeat_at).max(0),
            heartbeat_every_ms: every,
            bus: is_self.then(|| state.scheduler.bus_status()),
            pipelines: setups
                .iter()
                .filter(|p| p.node_id == node.id)
                .cloned()
                .collect(),
            is_self,
            config_differs: outliers.contains(&node.id),
            id: node.id,
            name: node.name,
            url: node.url,
            labels: node.labels,
            config_digest: node.config_digest,
            host: node.host,
            pid: node.pid,
            slots: node.slots,
            capacity: node.capacity,
            in_use: is_self.then(|| state.scheduler.resources_in_use()),
        });
    }
    Ok(Json(WorkerList { workers: out }))
}

/// `GET /api/queue` answer.
#[derive(Serialize, ToSchema)]
pub(super) struct QueueView {
    /// Every pipeline of the answering node's config, by name.
    pipelines: Vec<PipelineQueue>,
}

/// One pipeline's backlog.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct PipelineQueue {
    /// Pipeline name.
    pub(super) pipeline: String,
    /// Jobs waiting to be claimed (delayed ones included).
    pub(super) queued: u64,
    /// Jobs running on some node.
    pub(super) running: u64,
    /// Seconds the longest-waiting due job has waited (0 when none waits).
    pub(super) oldest_queued_seconds: f64,
    /// Queued jobs no live node can take (its labels miss the pipeline's `requires`).
    pub(super) unplaceable: u64,
    /// Why they cannot be placed; null when some live node can take them.
    unplaceable_reason: Option<String>,
    /// The labels its jobs need (`requires`): what a new node must have to take them.
    #[schema(value_type = Object)]
    requires: Requirements,
}

/// `GET /api/queue`: per pipeline, the backlog, its age and whether it can be placed —
/// the signals an autoscaler scales on.
#[utoipa::path(
    get,
    path = "/api/queue",
    tag = "node",
    operation_id = "getQueue",
    responses(
        (status = 200, description = "Every pipeline's backlog", body = QueueView),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn queue(State(state): State<AppState>) -> Result<Json<QueueView>, ApiError> {
    Ok(Json(QueueView {
        pipelines: queue_of(&state).await?,
    }))
}

/// Every pipeline's backlog (also read by `/metrics`).
pub(super) async fn queue_of(state: &AppState) -> Result<Vec<PipelineQueue>, ApiError> {
    let counts = state.store.pipeline_counts().await?;
    let fleet = Fleet::live(state).await?;
    let now = state.store.clock_ms();
    Ok(state
        .scheduler
        .settings()
        .pipelines
        .values()
        .map(|p| {
            let c = counts.get(&p.name).cloned().unwrap_or_default();
            let reason = fleet.unplaceable(p);
            PipelineQueue {
                pipeline: p.name.clone(),
                queued: c.queued,
                running: c.running,
                oldest_queued_seconds: c
                    .oldest_due_at
                    .map_or(0.0, |at| (now - at).max(0) as f64 / 1000.0),
                unplaceable: if reason.is_some() { c.queued } else { 0 },
                unplaceable_reason: reason,
                requires: p.requires.clone(),
            }
        })
        .collect())
}

/// The live nodes, read once per request: names every node id (live or gone) and
/// judges whether a pipeline's requirements can be met.
pub(super) struct Fleet {
    names: HashMap<String, String>,
    /// Each live node's labels and capacity.
    nodes: Vec<(Labels, Resources)>,
}

impl Fleet {
    /// The live nodes and the names of every node id (two reads).
    pub(super) async fn load(state: &AppState) -> Result<Fleet, ApiError> {
        let mut fleet = Fleet::live(state).await?;
        let mut names = state.store.node_names().await?;
        names.extend(fleet.names.drain());
        fleet.names = names;
        Ok(fleet)
    }

    /// The live nodes only (one read): names of live nodes, and their labels.
    async fn live(state: &AppState) -> Result<Fleet, ApiError> {
        let nodes: Vec<NodeRow> = state.store.nodes_list().await?;
        Ok(Fleet {
            names: nodes
                .iter()
                .map(|n| (n.id.clone(), n.name.clone()))
                .collect(),
            nodes: nodes.into_iter().map(|n| (n.labels, n.capacity)).collect(),
        })
    }

    /// Why no live node can take a job of `pipeline` (labels, or a one-job need larger
    /// than any node has); `None` when one can.
    pub(super) fn unplaceable(&self, pipeline: &Pipeline) -> Option<String> {
        let big_enough = self
            .nodes
            .iter()
            .filter(|(_, cap)| pipeline.resources.fits(cap))
            .map(|(labels, _)| labels);
        match crate::model::unplaceable(&pipeline.requires, big_enough) {
            Some(why) => Some(why),
            None if !pipeline.resources.is_zero()
                && !self.nodes.iter().any(|(l, cap)| {
                    pipeline.resources.fits(cap) && crate::model::satisfies(&pipeline.requires, l)
                }) =>
            {
                Some(format!(
                    "no live node has room for one job ({}) ({} live node{} checked)",
                    pipeline.resources.describe(),
                    self.nodes.len(),
                    if self.nodes.len() == 1 { "" } else { "s" }
                ))
            }
            None => None,
        }
    }

    /// Fills a job view's `nodeName` and, for a queued job, `unplaceable`.
    pub(super) fn annotate(&self, state: &AppState, job: &mut JobView) {
        job.node_name = job.node.as_ref().and_then(|id| self.names.get(id).cloned());
        if job.status == "queued"
            && let Some(p) = state.scheduler.settings().pipelines.get(&job.pipeline_id)
        {
            job.unplaceable = self.unplaceable(p);
        }
        for shard in job.shards.iter_mut().flatten() {
            self.annotate(state, shard);
        }
    }

    /// [`Fleet::annotate`] for every job of a run.
    pub(super) fn annotate_run(&self, state: &AppState, run: &mut RunView) {
        for job in run.jobs.iter_mut().chain(run.finalizer.as_mut()) {
            self.annotate(state, job);
        }
    }
}
