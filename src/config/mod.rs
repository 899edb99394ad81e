//! `runyard.toml` plus environment overrides → validated, typed [`Settings`].
//!
//! Everything that can be wrong with a configuration is found here, at start,
//! with the key and line that caused it: nothing is left to fail mid-run. Raw
//! TOML is read into `Raw*` structs (`deny_unknown_fields`, so a typo is an
//! error, not a silently ignored key), then checked and resolved: durations
//! and sizes parsed, `command[0]` resolved to an absolute path, placeholders checked against the known and declared names.
//!
//! One file per concern: `loader` (the loader, its error blame and environment
//! overrides), `raw` (the TOML as given), `server`, `store` (store and bus),
//! `access` (auth, webhooks, secrets), `pipeline` and `pipeline_parts` (commands,
//! schedules, retry rules, declared parameters), `workflow` (workflows: steps that run
//! pipelines, their `needs` graph and parameter templates), `placement` (node names,
//! labels, resources, keys), `digest` (the config digest) and `units` (durations and
//! sizes). Parameters and argv templates are domain types in `model::template`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use regex::Regex;
use thiserror::Error;

mod access;
mod digest;
mod loader;
mod pipeline;
mod pipeline_parts;
mod placement;
mod raw;
mod server;
mod store;
#[cfg(test)]
mod tests;
mod units;
mod workflow;

pub use crate::model::template::{MAX_PARAM_BYTES, ParamSpec, ParamType, Piece, Template};
pub use access::{
    AuthSettings, MIN_SECRET_BYTES, SecretValue, Secrets, TokenHash, WebhookSettings, token_sha256,
};
pub use loader::nearest;
pub use pipeline::{CommandLine, FINALIZER_PLACEHOLDERS, MAX_SHARDS, OnOrphan, Pipeline};
pub use placement::{check_node_name, default_node_name};
pub use server::ServerSettings;
pub use store::{BusSettings, StoreSettings, StoreUrl, Synchronous};
pub use units::{parse_duration, parse_size};
pub use workflow::{Workflow, WorkflowStep};

use loader::{Loader, unknown_name_hint};
use raw::RawFile;

/// Placeholders every pipeline may use in its command.
pub const BUILTIN_PLACEHOLDERS: &[&str] = &[
    "run_id",
    "job_id",
    "shard_index",
    "shard_number",
    "shard_count",
    "attempt",
];

/// A configuration problem, with where it is.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The config path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax or type error (the message carries line, column and a snippet, over
    /// several lines).
    #[error("{path}: {message}")]
    Parse {
        /// The config path.
        path: PathBuf,
        /// toml's message, with line and column.
        message: String,
    },
    /// A value is well-formed TOML but not acceptable.
    #[error("{path}:{line}: {key}: {message}")]
    Invalid {
        /// The config path.
        path: PathBuf,
        /// 1-based line of the table or key (0 when the table is not written in the file).
        line: usize,
        /// Dotted key, e.g. `pipelines.e2e.timeout`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An environment override is not acceptable: named by its variable, since no line
    /// of the file is to blame.
    #[error("environment variable {var}={value:?}: {message} (it overrides {key})")]
    Env {
        /// The variable, e.g. `RUNYARD_MAX_WORKERS`.
        var: String,
        /// Its value.
        value: String,
        /// The setting it overrides, e.g. `server.max_workers`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Validated settings of one node.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[server]`.
    pub server: ServerSettings,
    /// `[store]`.
    pub store: StoreSettings,
    /// Pipelines by name.
    pub pipelines: BTreeMap<String, Arc<Pipeline>>,
    /// Workflows by name (`[workflows]`): graphs of steps, each a run of a pipeline.
    pub workflows: BTreeMap<String, Arc<Workflow>>,
    /// `[webhooks]`: completion callbacks.
    pub webhooks: WebhookSettings,
    /// `[secrets]`: values masked wherever job output is stored or sent.
    pub secrets: Secrets,
    /// `[auth]`: API tokens.
    pub auth: AuthSettings,
    /// `[bus]`: the Redis bus between replicas; `None` is the in-process bus.
    pub bus: Option<BusSettings>,
    /// What loading passed over, for the server to log at start (e.g. an unusable
    /// `REDIS_URL` set for other programs).
    pub warnings: Vec<String>,
    /// Where each overridable setting came from (`server.max_workers` → `MAX_WORKERS`,
    /// `FILE:LINE` or `default`), for `runyard check`.
    pub origins: BTreeMap<String, String>,
}

/// A connection URL as it may be shown in logs and errors: without its password.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => url.to_string(),
        // Not even a URL: still hide what looks like `user:password@`.
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = &url[scheme + 3..at];
                match userinfo.find(':') {
                    Some(colon) => format!(
                        "{}{}:***{}",
                        &url[..scheme + 3],
                        &userinfo[..colon],
                        &url[at..]
                    ),
                    None => url.to_string(),
                }
            }
            _ => url.to_string(),
        },
    }
}

/// The environment overrides read at load (a function so tests need not touch the process env).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Settings {
    /// Reads and validates the file at `path`, applying the process environment.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Settings::from_toml(&text, path, &|k| std::env::var(k).ok())
    }

    /// Validates `text` (read from `path`, whose directory anchors relative paths).
    pub fn from_toml(text: &str, path: &Path, env: EnvLookup<'_>) -> Result<Settings, ConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            // toml's message is a multi-line snippet (line, caret, what was expected):
            // kept as it is, with a hint for the nearest known key or value.
            let mut message = e.to_string().trim_end().to_string();
            if let Some(hint) = unknown_name_hint(&message) {
                message.push('\n');
                message.push_str(&hint);
            }
            ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            }
        })?;
        // Resolved once, against the working directory at start: every path derived from
        // the config (data_dir, cwd, programs, result and summary files) is absolute, so
        // a job with its own `cwd` can still reach the files runyard hands it.
        let base = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        Loader {
            text,
            path,
            base,
            env,
            origins: Default::default(),
        }
        .build(raw)
    }
}
