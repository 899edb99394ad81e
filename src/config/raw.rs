//! The config file as TOML gives it, before any check: `deny_unknown_fields`
//! everywhere, so a misspelt key is an error at start, not a silently ignored one.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{OnOrphan, ParamType};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub(super) server: RawServer,
    pub(super) store: Option<RawStore>,
    pub(super) bus: Option<RawBus>,
    pub(super) auth: Option<RawAuth>,
    pub(super) webhooks: Option<RawWebhooks>,
    #[serde(default)]
    pub(super) secrets: BTreeMap<String, RawSecret>,
    #[serde(default)]
    pub(super) pipelines: BTreeMap<String, RawPipeline>,
    #[serde(default)]
    pub(super) workflows: BTreeMap<String, RawWorkflow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhooks {
    pub(super) secret_env: Option<String>,
    pub(super) allow_http: Option<bool>,
    #[serde(default)]
    pub(super) allow_hosts: Vec<String>,
    #[serde(default)]
    pub(super) nameservers: Vec<String>,
    pub(super) timeout: Option<String>,
    pub(super) max_attempts: Option<u32>,
    pub(super) retry_backoff: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    #[serde(default)]
    pub(super) tokens: Vec<RawToken>,
    pub(super) session_ttl: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawToken {
    Hash(String),
    Labeled { label: String, sha256: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecret {
    pub(super) env: Option<String>,
    pub(super) file: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawEnvValue {
    Plain(String),
    Secret { secret: String },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) data_dir: Option<String>,
    pub(super) max_workers: Option<usize>,
    pub(super) max_workers_global: Option<usize>,
    pub(super) output_flush_interval_ms: Option<u64>,
    pub(super) shutdown_timeout: Option<String>,
    pub(super) retention: Option<String>,
    pub(super) max_output_bytes: Option<toml::Value>,
    pub(super) heartbeat: Option<String>,
    pub(super) kill_grace: Option<String>,
    pub(super) admit_max_load: Option<f64>,
    pub(super) admit_min_free_memory: Option<toml::Value>,
    pub(super) client_write_timeout: Option<String>,
    pub(super) client_idle_timeout: Option<String>,
    pub(super) max_connections: Option<i64>,
    pub(super) node_name: Option<String>,
    pub(super) advertise_url: Option<String>,
    pub(super) labels: Option<BTreeMap<String, toml::Value>>,
    pub(super) resources: Option<BTreeMap<String, toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBus {
    pub(super) url: Option<String>,
    pub(super) prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) url: Option<String>,
    pub(super) synchronous: Option<String>,
    pub(super) schema: Option<String>,
    pub(super) pool_size: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPipeline {
    pub(super) command: Vec<String>,
    pub(super) cwd: Option<String>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, RawEnvValue>,
    pub(super) timeout: Option<String>,
    pub(super) max_attempts: Option<u32>,
    pub(super) retry_backoff: Option<String>,
    pub(super) retry_exit_codes: Option<Vec<i64>>,
    pub(super) no_retry_exit_codes: Option<Vec<i64>>,
    pub(super) concurrency: Option<u32>,
    pub(super) priority: Option<i64>,
    pub(super) shards: Option<u32>,
    pub(super) on_orphan: Option<OnOrphan>,
    pub(super) max_orphan_requeues: Option<u32>,
    pub(super) kill_grace: Option<String>,
    pub(super) setup: Option<Vec<String>>,
    pub(super) circuit_threshold: Option<u32>,
    pub(super) circuit_cooldown: Option<String>,
    pub(super) finalizer: Option<Vec<String>>,
    pub(super) callback_url: Option<String>,
    pub(super) schedule: Option<String>,
    pub(super) schedule_tz: Option<String>,
    pub(super) schedule_params: Option<BTreeMap<String, toml::Value>>,
    pub(super) requires: Option<BTreeMap<String, toml::Value>>,
    pub(super) resources: Option<BTreeMap<String, toml::Value>>,
    pub(super) concurrency_key: Option<String>,
    pub(super) concurrency_per_key: Option<u32>,
    #[serde(default)]
    pub(super) params: BTreeMap<String, RawParam>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawParam {
    #[serde(rename = "type", default)]
    pub(super) kind: ParamType,
    pub(super) default: Option<toml::Value>,
    pub(super) pattern: Option<String>,
    #[serde(default)]
    pub(super) allow_leading_dash: bool,
}

/// `[workflows.NAME]`: parameters of its own and steps, each a run of a pipeline.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorkflow {
    #[serde(default)]
    pub(super) params: BTreeMap<String, RawParam>,
    #[serde(default)]
    pub(super) steps: BTreeMap<String, RawWorkflowStep>,
}

/// `[workflows.NAME.steps.STEP]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorkflowStep {
    pub(super) pipeline: String,
    #[serde(default)]
    pub(super) params: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) needs: Vec<String>,
    pub(super) when: Option<String>,
}
