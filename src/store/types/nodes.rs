//! What the store takes and gives about nodes: registration rows, heartbeats, the
//! running jobs recovery looks at, and per-node pipeline setup state.

use serde::Serialize;

/// A node's registration row.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRow {
    /// Random per boot of the process.
    pub id: String,
    /// Host name.
    pub host: String,
    /// OS pid.
    pub pid: u32,
    /// The process's start time (clock ticks since boot).
    #[serde(skip)]
    pub proc_start: u64,
    /// The kernel boot id.
    #[serde(skip)]
    pub boot_id: String,
    /// Slots (`max_workers`).
    pub slots: u32,
    /// Registration time (epoch ms).
    pub started_at: i64,
    /// Last heartbeat (epoch ms).
    pub heartbeat_at: i64,
    /// Its name, unique among registered nodes (empty for a node from before names).
    pub name: String,
    /// Where its API is reached (`advertise_url`), if it said.
    pub url: Option<String>,
    /// Its labels, matched against pipelines' `requires`.
    pub labels: crate::model::Labels,
    /// Digest of the config it runs ([`crate::config::Settings::config_digest`]).
    pub config_digest: String,
    /// What it has for its jobs (`[server] resources`).
    pub capacity: crate::model::Resources,
}

impl NodeRow {
    /// `{"url", "labels", "configDigest", "capacity"}`: the `info` column both stores keep.
    pub fn info_json(&self) -> String {
        serde_json::json!({"url": self.url, "labels": self.labels,
            "configDigest": self.config_digest, "capacity": self.capacity})
        .to_string()
    }

    /// Fills `url`, `labels` and `config_digest` from an `info` column (absent or
    /// unreadable: left empty, as for a node from before names).
    pub fn with_info(mut self, info: Option<&str>) -> NodeRow {
        #[derive(serde::Deserialize, Default)]
        #[serde(rename_all = "camelCase", default)]
        struct Info {
            url: Option<String>,
            labels: crate::model::Labels,
            config_digest: String,
            capacity: crate::model::Resources,
        }
        let info: Info = info
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default();
        self.url = info.url;
        self.labels = info.labels;
        self.config_digest = info.config_digest;
        self.capacity = info.capacity;
        self
    }
}

/// How long a node id's name is kept after the node is gone (`node_names`).
pub const NODE_NAME_KEEP_MS: i64 = 90 * 86_400_000;

/// `node_heartbeat` input.
#[derive(Debug, Clone)]
pub struct NodeHeartbeatParams {
    /// This node.
    pub node_id: String,
    /// The jobs it runs, with their fences.
    pub running: Vec<(String, i64)>,
    /// Now.
    pub now: i64,
}

/// `node_heartbeat` result.
#[derive(Debug, Clone, Default)]
pub struct HeartbeatOutcome {
    /// False when the node row is gone (another node proved it dead).
    pub registered: bool,
    /// Of the listed executions `(job id, claim_seq)`, those this node must stop:
    /// aborted, or no longer its claim.
    pub cancel: Vec<(String, i64)>,
}

/// One node's setup and circuit state for one pipeline.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineNodeState {
    /// Node.
    pub node_id: String,
    /// Pipeline.
    pub pipeline: String,
    /// `pending`, `running`, `ready` or `failed`.
    pub setup: String,
    /// Setup failures in a row.
    pub failures: u32,
    /// `closed`, `open` or `half_open`.
    pub circuit: String,
    /// While open: when the trial setup becomes possible (epoch ms).
    #[serde(skip)]
    pub open_until: Option<i64>,
    /// Output tail or reason of the last failure.
    pub last_error: Option<String>,
    /// When written (epoch ms).
    #[serde(skip)]
    pub updated_at: i64,
}
