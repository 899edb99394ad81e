//! What a trigger asks (`TriggerRequest`, `RerunScope`) and what it is told
//! (`Triggered`, or a `TriggerError` the API maps to a 4xx/503), and the rule an
//! idempotency key follows.

use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

use crate::config::MAX_SHARDS;
use crate::model::{AfterWhen, RunStatus};
use crate::store::StoreError;

/// What an idempotency key may be, in the body (`idempotencyKey`) and in the
/// `Idempotency-Key` header alike.
pub const IDEMPOTENCY_KEY_RULE: &str = "idempotencyKey must be 1 to 200 visible ASCII characters or spaces (the Idempotency-Key header's rule)";

/// Whether `key` follows [`IDEMPOTENCY_KEY_RULE`]: 1 to 200 characters from space to `~`.
pub fn valid_idempotency_key(key: &str) -> bool {
    (1..=200).contains(&key.len()) && key.bytes().all(|b| (b' '..=b'~').contains(&b))
}

/// Most runs one run may wait for.
pub const MAX_AFTER: usize = 100;

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
    /// `after` is malformed or names a run that does not exist.
    #[error("{0}")]
    BadAfter(String),
    /// No workflow of that name.
    #[error("Unknown workflow: {0}")]
    UnknownWorkflow(String),
    /// A workflow step's rendered parameters were refused by its pipeline.
    #[error("Step {step}: {message}")]
    BadStep {
        /// The step.
        step: String,
        /// Why.
        message: String,
    },
    /// No such workflow run.
    #[error("Workflow run not found: {0}")]
    WorkflowRunNotFound(String),
    /// Only a workflow run that ended can be re-run.
    #[error("Workflow run {id} is {status}: only a finished workflow run can be re-run")]
    WorkflowNotFinished {
        /// The workflow run.
        id: String,
        /// Its status.
        status: String,
    },
    /// A re-run of the failed part found every step completed.
    #[error("Workflow run {0} has no step that did not complete")]
    NoStepToRerun(String),
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
    /// Runs this one waits for (stored run ids); empty: it is queued at once.
    pub after: Vec<String>,
    /// When it goes once they have ended.
    pub after_when: AfterWhen,
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
    /// Its status once created: `queued`, or for a run created `after` others
    /// `waiting` (or `queued`/`skipped` when they had all ended already).
    pub status: RunStatus,
}
