//! `runyard.toml` plus environment overrides → validated, typed [`Settings`].
//!
//! Everything that can be wrong with a configuration is found here, at start,
//! with the key and line that caused it: nothing is left to fail mid-run. Raw
//! TOML is read into `Raw*` structs (`deny_unknown_fields`, so a typo is an
//! error, not a silently ignored key), then checked and resolved: durations
//! and sizes parsed, `command[0]` resolved to an absolute path (DESIGN
//! decision 10), placeholders checked against the known and declared names.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};
use thiserror::Error;

mod placement;

pub use placement::{check_node_name, default_node_name};

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

/// `[bus]` settings: signals between replicas over Redis pub/sub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusSettings {
    /// `redis://[user:password@]host[:port][/db]`.
    pub url: String,
    /// Where the URL came from (`RUNYARD_REDIS_URL`, `REDIS_URL` or `[bus] url`).
    pub url_source: &'static str,
    /// Prefix of every channel (`{prefix}:run-abort`, `{prefix}:changes`).
    pub prefix: String,
}

/// One accepted API token, as the SHA-256 of its value.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash {
    /// Who uses it (`actor` of runs it triggers).
    pub label: String,
    /// SHA-256 of the token.
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({})", self.label)
    }
}

/// `[auth]` settings: with no tokens the API is open (and only loopback may listen).
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Accepted tokens. Only from the config (DESIGN decision 18: `RUNYARD_TOKEN` is the
    /// CLI's credential, never a server setting).
    pub tokens: Vec<TokenHash>,
    /// Lifetime of a dashboard session cookie.
    pub session_ttl: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            tokens: Vec::new(),
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

impl AuthSettings {
    /// True when every route but `/healthz` needs a token.
    pub fn required(&self) -> bool {
        !self.tokens.is_empty()
    }
}

/// SHA-256 of a token's value.
pub fn token_sha256(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// `[webhooks]` settings (completion callbacks, DESIGN decision 7).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The config has a `[webhooks]` table (webhooks are meant to be used).
    pub configured: bool,
    /// HMAC key read from the environment variable named by `secret_env`.
    pub secret: Option<SecretValue>,
    /// Allow `http://` callback URLs (https only otherwise).
    pub allow_http: bool,
    /// Hosts, addresses or CIDRs that may be reached although not global.
    pub allow_hosts: Vec<String>,
    /// DNS servers to resolve callback hosts with; empty = the system's.
    pub nameservers: Vec<SocketAddr>,
    /// Bound on one delivery attempt (connect, send, response).
    pub timeout: Duration,
    /// Delivery attempts before a webhook is given up.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles per attempt, capped at 1 h.
    pub retry_backoff: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            configured: false,
            secret: None,
            allow_http: false,
            allow_hosts: Vec::new(),
            nameservers: Vec::new(),
            timeout: Duration::from_secs(10),
            max_attempts: 8,
            retry_backoff: Duration::from_secs(2),
        }
    }
}

/// Shortest accepted secret: shorter values would mask ordinary text.
pub const MIN_SECRET_BYTES: usize = 4;

/// A secret value: never printed by `Debug`, so it cannot reach logs by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Arc<str>);

impl SecretValue {
    /// The value itself (for the job's environment and the redactor only).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[secret]")
    }
}

/// Declared secrets by name (values read from the environment or files at start).
#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, SecretValue>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.values.keys()).finish()
    }
}

impl Secrets {
    /// The value of a declared secret.
    pub fn get(&self, name: &str) -> Option<&SecretValue> {
        self.values.get(name)
    }

    /// Every secret value (to build the redactor).
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.values.values().map(SecretValue::expose)
    }

    /// True when no secret is declared.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// `[server]` settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Address of the HTTP API (beyond loopback only with `[auth]` tokens).
    pub listen: SocketAddr,
    /// Directory for the embedded SQLite file.
    pub data_dir: PathBuf,
    /// Slots of this node.
    pub max_workers: usize,
    /// Cap over all nodes sharing the store; 0 = none.
    pub max_workers_global: usize,
    /// How often captured output is appended to the store (100 ms – 30 s).
    pub output_flush_interval: Duration,
    /// How long SIGTERM waits for running jobs before stopping them.
    pub shutdown_timeout: Duration,
    /// Finished runs older than this are pruned.
    pub retention: Duration,
    /// Per job and stream cap of stored output.
    pub max_output_bytes: u64,
    /// Node heartbeat interval; a node silent for 3 beats is dead.
    pub heartbeat: Duration,
    /// Default SIGTERM → SIGKILL grace for a job's process group.
    pub kill_grace: Duration,
    /// A client whose connection accepts no bytes for this long is dropped (SSE readers
    /// that stopped reading).
    pub client_write_timeout: Duration,
    /// A connection with no traffic either way for this long is closed (half-sent
    /// requests, idle keep-alives). Keep it above 15 s: quiet streams send a keep-alive
    /// that often.
    pub client_idle_timeout: Duration,
    /// Most client connections open at once; past it new clients get `/healthz` and a
    /// quick 503 on a few spare connections, or are closed at once (`api::listen`).
    pub max_connections: usize,
    /// Resource admission: no job starts while the 1-minute load average is above this.
    pub admit_max_load: Option<f64>,
    /// Resource admission: no job starts while available memory is below this (bytes).
    pub admit_min_free_memory: Option<u64>,
    /// This node's name, unique among live nodes (`node_name`); `None`: the default,
    /// `{host}:{port}` ([`default_node_name`]), taken once the listener is bound.
    pub node_name: Option<String>,
    /// How peers and people reach this node's API (`advertise_url`), if given.
    pub advertise_url: Option<String>,
    /// This node's labels, matched against pipelines' `requires`.
    pub labels: crate::model::Labels,
    /// What this node has for its jobs (`resources`); `None`: the machine's cores and
    /// memory, no GPU (read at start).
    pub resources: Option<crate::model::Resources>,
}

/// Which store to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// An embedded SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection string.
    Postgres(String),
}

/// SQLite durability level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Survives a process crash; the last moments may be lost on power loss.
    #[default]
    Normal,
    /// Survives power loss, at the cost of an fsync per commit.
    Full,
}

/// `[store]` settings.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Where the store lives.
    pub url: StoreUrl,
    /// Where the URL came from (`RUNYARD_DATABASE_URL`, `DATABASE_URL`, `[store] url` or
    /// the default), for the start-up log line.
    pub url_source: &'static str,
    /// The same, as a user finds it: the variable, or `FILE:LINE` of `[store] url`.
    pub url_origin: String,
    /// SQLite only.
    pub synchronous: Synchronous,
    /// PostgreSQL only: the schema to use (created if missing).
    pub schema: Option<String>,
    /// PostgreSQL only: connections in the pool (default: `max_workers + 10`, at most 32).
    pub pool_size: Option<usize>,
}

/// What the rescuer does with a job whose node died.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnOrphan {
    /// Put it back in the queue (up to `max_orphan_requeues` times).
    Requeue,
    /// Fail it with reason `orphaned`.
    Fail,
}

impl OnOrphan {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            OnOrphan::Requeue => "requeue",
            OnOrphan::Fail => "fail",
        }
    }
}

/// A parameter's value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    /// Any string (subject to `pattern`).
    #[default]
    String,
    /// A signed 64-bit integer.
    Integer,
    /// `true` or `false`.
    Boolean,
}

/// A declared pipeline parameter.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    /// Value type.
    pub kind: ParamType,
    /// Used when the trigger omits it; without a default the parameter is required.
    pub default: Option<String>,
    /// Must match the whole value.
    pub pattern: Option<Regex>,
    /// Whether a value may start with `-` (refused by default: argument injection).
    pub allow_leading_dash: bool,
}

/// One piece of an argv template element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text.
    Lit(String),
    /// `{name}`.
    Var(String),
}

/// An argv element with `{placeholder}`s; `{{` and `}}` are literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(pub Vec<Piece>);

impl std::fmt::Display for Template {
    /// As written in the config: placeholders in braces, literal braces doubled.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for piece in &self.0 {
            match piece {
                Piece::Lit(text) => f.write_str(&text.replace('{', "{{").replace('}', "}}"))?,
                Piece::Var(name) => write!(f, "{{{name}}}")?,
            }
        }
        Ok(())
    }
}

impl Template {
    /// Parses `s`; the error says what is malformed.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) if c.is_ascii_alphanumeric() || c == '_' => name.push(c),
                            Some(c) => {
                                return Err(format!(
                                    "invalid character {c:?} in placeholder of {s:?}{}",
                                    brace_hint(s)
                                ));
                            }
                            None => {
                                return Err(format!("unclosed '{{' in {s:?}{}", brace_hint(s)));
                            }
                        }
                    }
                    if name.is_empty() {
                        return Err(format!("empty placeholder in {s:?}{}", brace_hint(s)));
                    }
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Var(name));
                }
                '}' => {
                    return Err(format!(
                        "unmatched '}}' in {s:?} (write '}}}}' for a literal brace)"
                    ));
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() || pieces.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Template(pieces))
    }

    /// Placeholder names used.
    pub fn vars(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Piece::Var(v) => Some(v.as_str()),
            Piece::Lit(_) => None,
        })
    }

    /// Renders with `lookup`; a missing name renders empty (validated at load).
    pub fn render(&self, lookup: impl Fn(&str) -> Option<String>) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Var(v) => out.push_str(&lookup(v).unwrap_or_default()),
            }
        }
        out
    }
}

/// For an argv element whose braces look like shell `${VAR}`, JSON or other literal text:
/// how to write them (`{{` and `}}`), with the element escaped.
fn brace_hint(arg: &str) -> String {
    let literal = arg.contains("${")
        || arg.contains("{}")
        || arg.contains("{\"")
        || arg.contains("\":")
        || arg.contains("{ ");
    if !literal {
        return String::new();
    }
    format!(
        "; braces that are not placeholders are written doubled: {:?}",
        arg.replace('{', "{{").replace('}', "}}")
    )
}

/// A validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Its name (the table key).
    pub name: String,
    /// The command as written in the config.
    pub command: Vec<String>,
    /// `command[0]`, resolved to an absolute path.
    pub program: PathBuf,
    /// `command[1..]`.
    pub args: Vec<Template>,
    /// Working directory (absolute); the server's own when unset.
    pub cwd: Option<PathBuf>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Wall-clock limit of one attempt.
    pub timeout: Option<Duration>,
    /// Attempts including the first.
    pub max_attempts: u32,
    /// Base of the exponential retry backoff.
    pub retry_backoff: Duration,
    /// Which failed exit codes are retried (`retry_exit_codes` / `no_retry_exit_codes`).
    pub retry_on: crate::model::RetryOn,
    /// Jobs of this pipeline running at once over all nodes; 0 = no cap.
    pub concurrency: u32,
    /// Labels a node must have to claim its jobs (`requires`); empty: any node.
    pub requires: crate::model::Requirements,
    /// What one of its jobs needs of a node (`resources`); zero: only a slot.
    pub resources: crate::model::Resources,
    /// The key its runs are capped and shared fairly by (`concurrency_key`, a template
    /// over the run's parameters), if any.
    pub concurrency_key: Option<Template>,
    /// Running jobs per key value over all nodes (`concurrency_per_key`); 0 = no cap.
    pub concurrency_per_key: u32,
    /// Claim order of its runs (higher first), unless a trigger gives its own.
    pub priority: i32,
    /// Default shard count.
    pub shards: u32,
    /// Rescuer policy.
    pub on_orphan: OnOrphan,
    /// Requeues (orphan or shutdown) allowed before the job fails.
    pub max_orphan_requeues: u32,
    /// SIGTERM → SIGKILL grace.
    pub kill_grace: Duration,
    /// Declared parameters.
    pub params: BTreeMap<String, ParamSpec>,
    /// Environment variables whose values are secrets: variable → value.
    pub secret_env: BTreeMap<String, SecretValue>,
    /// Run once per node before the pipeline's first job there (DESIGN decision 19).
    pub setup: Option<CommandLine>,
    /// Setup failures in a row that open this node's circuit for the pipeline.
    pub circuit_threshold: u32,
    /// How long an open circuit waits before one trial setup (half-open).
    pub circuit_cooldown: Duration,
    /// Run once per run after every shard is terminal (DESIGN decision 7).
    pub finalizer: Option<CommandLine>,
    /// Default completion webhook of the pipeline's runs.
    pub callback_url: Option<String>,
    /// When runs start on their own (`schedule`, `schedule_tz`), if ever.
    pub schedule: Option<crate::schedule::Schedule>,
    /// Parameters of scheduled runs (`schedule_params`), validated like a trigger's, with
    /// the declared defaults filled in.
    pub schedule_params: BTreeMap<String, String>,
}

/// A command other than the pipeline's main one (setup, finalizer): argv with placeholders.
#[derive(Debug, Clone)]
pub struct CommandLine {
    /// As written in the config.
    pub command: Vec<String>,
    /// `command[0]` resolved to an absolute path.
    pub program: PathBuf,
    /// The arguments as templates.
    pub args: Vec<Template>,
}

/// Placeholders a finalizer may use besides the pipeline's parameters.
pub const FINALIZER_PLACEHOLDERS: &[&str] = &["run_id", "job_id", "shard_count", "summary_file"];

/// Most shards a run may have.
pub const MAX_SHARDS: u32 = 1000;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    server: RawServer,
    store: Option<RawStore>,
    bus: Option<RawBus>,
    auth: Option<RawAuth>,
    webhooks: Option<RawWebhooks>,
    #[serde(default)]
    secrets: BTreeMap<String, RawSecret>,
    #[serde(default)]
    pipelines: BTreeMap<String, RawPipeline>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhooks {
    secret_env: Option<String>,
    allow_http: Option<bool>,
    #[serde(default)]
    allow_hosts: Vec<String>,
    #[serde(default)]
    nameservers: Vec<String>,
    timeout: Option<String>,
    max_attempts: Option<u32>,
    retry_backoff: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    tokens: Vec<RawToken>,
    session_ttl: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawToken {
    Hash(String),
    Labeled { label: String, sha256: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    env: Option<String>,
    file: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawEnvValue {
    Plain(String),
    Secret { secret: String },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    data_dir: Option<String>,
    max_workers: Option<usize>,
    max_workers_global: Option<usize>,
    output_flush_interval_ms: Option<u64>,
    shutdown_timeout: Option<String>,
    retention: Option<String>,
    max_output_bytes: Option<toml::Value>,
    heartbeat: Option<String>,
    kill_grace: Option<String>,
    admit_max_load: Option<f64>,
    admit_min_free_memory: Option<toml::Value>,
    client_write_timeout: Option<String>,
    client_idle_timeout: Option<String>,
    max_connections: Option<i64>,
    node_name: Option<String>,
    advertise_url: Option<String>,
    labels: Option<BTreeMap<String, toml::Value>>,
    resources: Option<BTreeMap<String, toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBus {
    url: Option<String>,
    prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
    synchronous: Option<String>,
    schema: Option<String>,
    pool_size: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    command: Vec<String>,
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, RawEnvValue>,
    timeout: Option<String>,
    max_attempts: Option<u32>,
    retry_backoff: Option<String>,
    retry_exit_codes: Option<Vec<i64>>,
    no_retry_exit_codes: Option<Vec<i64>>,
    concurrency: Option<u32>,
    priority: Option<i64>,
    shards: Option<u32>,
    on_orphan: Option<OnOrphan>,
    max_orphan_requeues: Option<u32>,
    kill_grace: Option<String>,
    setup: Option<Vec<String>>,
    circuit_threshold: Option<u32>,
    circuit_cooldown: Option<String>,
    finalizer: Option<Vec<String>>,
    callback_url: Option<String>,
    schedule: Option<String>,
    schedule_tz: Option<String>,
    schedule_params: Option<BTreeMap<String, toml::Value>>,
    requires: Option<BTreeMap<String, toml::Value>>,
    resources: Option<BTreeMap<String, toml::Value>>,
    concurrency_key: Option<String>,
    concurrency_per_key: Option<u32>,
    #[serde(default)]
    params: BTreeMap<String, RawParam>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    #[serde(rename = "type", default)]
    kind: ParamType,
    default: Option<toml::Value>,
    pattern: Option<String>,
    #[serde(default)]
    allow_leading_dash: bool,
}

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"7d"`, compounds such as `"1h30m"` or
/// `"1m 30s"` (largest unit first), or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let example = "(e.g. \"30s\", \"5m\", \"1h30m\")";
    if s.is_empty() {
        return Err(format!("empty duration {example}"));
    }
    let mut secs = 0.0f64;
    let mut rest = s;
    let mut last_unit = f64::INFINITY;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?} {example}"))?;
        let tail = tail.trim_start();
        let unit_len = tail
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "" if num.len() == s.len() => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "" => return Err(format!("missing unit after {num} in {s:?} {example}")),
            u => {
                return Err(format!(
                    "invalid duration unit {u:?} in {s:?} (use ms, s, m, h or d, e.g. \"1h30m\")"
                ));
            }
        };
        if scale >= last_unit {
            return Err(format!(
                "invalid duration {s:?}: write the largest unit first, each once {example}"
            ));
        }
        last_unit = scale;
        secs += n * scale;
        rest = tail.trim_start();
    }
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `"16MiB"`, `"512KiB"`, `"1GiB"`, `"100kB"` or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (e.g. \"16MiB\")"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => {
            return Err(format!(
                "invalid size unit {u:?} in {s:?} (use B, KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} out of range"))
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

/// An environment variable that supplied a setting.
struct EnvValue {
    var: String,
    value: String,
}

struct Loader<'a> {
    text: &'a str,
    path: &'a Path,
    base: PathBuf,
    env: EnvLookup<'a>,
    origins: std::cell::RefCell<BTreeMap<String, String>>,
}

impl Loader<'_> {
    /// Records where `table.key` came from: `var` when an environment variable set it,
    /// else the file's line when it is written there, else the default.
    fn note(&self, table: &str, key: &str, var: Option<&str>, in_file: bool) {
        let origin = match var {
            Some(var) => var.to_string(),
            None if in_file => {
                format!("{}:{}", self.path.display(), self.line_of(table, Some(key)))
            }
            None => "default".to_string(),
        };
        self.origins
            .borrow_mut()
            .insert(format!("{table}.{key}"), origin);
    }

    /// The 1-based line where `key` (or its table header) is written, best effort.
    fn line_of(&self, table: &str, key: Option<&str>) -> usize {
        let header = format!("[{table}]");
        let mut in_table = false;
        let mut header_line = 0;
        for (i, line) in self.text.lines().enumerate() {
            let t = line.trim();
            if t.starts_with('[') {
                in_table = t.replace(' ', "") == header;
                if in_table {
                    header_line = i + 1;
                    if key.is_none() {
                        return header_line;
                    }
                }
                continue;
            }
            if in_table
                && let Some(k) = key
                && t.split(['=', ' ']).next() == Some(k)
            {
                return i + 1;
            }
        }
        header_line
    }

    fn invalid(&self, table: &str, key: Option<&str>, message: impl Into<String>) -> ConfigError {
        let line = self.line_of(table, key);
        let dotted = match key {
            Some(k) => format!("{table}.{k}"),
            None => table.to_string(),
        };
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            key: dotted,
            message: message.into(),
        }
    }

    /// A store or bus URL that cannot be used, blamed on where it came from: its
    /// environment variable (password redacted), or its line in the file.
    fn bad_url(
        &self,
        table: &str,
        source: &str,
        url: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        if source.contains(' ') {
            return self.invalid(table, Some("url"), message);
        }
        ConfigError::Env {
            var: source.to_string(),
            value: redact_url(url),
            key: format!("{table}.url"),
            message: message.into(),
        }
    }

    /// An override from the environment: `RUNYARD_<name>` wins over the seeds' unprefixed
    /// `<name>` (kept working when `legacy`). Returns the variable that supplied it.
    fn env_override(&self, name: &str, legacy: bool) -> Option<EnvValue> {
        let prefixed = format!("RUNYARD_{name}");
        let found = (self.env)(&prefixed).map(|v| (prefixed, v)).or_else(|| {
            legacy
                .then(|| (self.env)(name).map(|v| (name.to_string(), v)))
                .flatten()
        });
        found.map(|(var, value)| EnvValue { var, value })
    }

    /// A setting `table.key` that the environment variable `RUNYARD_<KEY>` (and, when
    /// `legacy`, the seeds' `<KEY>`) may override: the variable wins and is what an error
    /// names; otherwise the file's value, else `default`.
    fn overridable<T: std::str::FromStr>(
        &self,
        table: &str,
        key: &str,
        legacy: bool,
        file: Option<T>,
        default: T,
        check: &dyn Fn(&T) -> Result<(), String>,
    ) -> Result<T, ConfigError> {
        let ev = self.env_override(&key.to_ascii_uppercase(), legacy);
        self.note(
            table,
            key,
            ev.as_ref().map(|e| e.var.as_str()),
            file.is_some(),
        );
        match ev {
            Some(ev) => {
                let value = ev.value.trim().parse::<T>().map_err(|_| {
                    self.env_invalid(&ev, &format!("{table}.{key}"), "not a whole number")
                })?;
                check(&value).map_err(|m| self.env_invalid(&ev, &format!("{table}.{key}"), m))?;
                Ok(value)
            }
            None => {
                let value = file.unwrap_or(default);
                check(&value).map_err(|m| self.invalid(table, Some(key), m))?;
                Ok(value)
            }
        }
    }

    fn env_invalid(&self, ev: &EnvValue, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Env {
            var: ev.var.clone(),
            value: ev.value.chars().take(80).collect(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn duration(
        &self,
        table: &str,
        key: &str,
        v: &Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        if table == "server" {
            self.note(table, key, None, v.is_some());
        }
        match v {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|m| self.invalid(table, Some(key), m)),
        }
    }

    fn resolve_dir(&self, s: &str) -> PathBuf {
        let p = Path::new(s);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn build(&self, raw: RawFile) -> Result<Settings, ConfigError> {
        let server = self.server(&raw.server)?;
        let auth = self.auth(raw.auth.as_ref())?;
        if !server.listen.ip().is_loopback() && !auth.required() {
            return Err(self.invalid(
                "server",
                Some("listen"),
                format!(
                    "{} is not a loopback address: set [auth] tokens before listening beyond this host",
                    server.listen
                ),
            ));
        }
        let store = self.store(raw.store.as_ref(), &server)?;
        let mut warnings = Vec::new();
        let bus = match self.bus(raw.bus.as_ref()) {
            // A bare REDIS_URL is often another program's (a TLS add-on, the jobs' own
            // cache): one this build cannot use leaves the node on the in-process bus.
            Err(e) if raw.bus.is_none() && (self.env)("RUNYARD_REDIS_URL").is_none() => {
                warnings.push(format!("REDIS_URL ignored, using the in-process bus: {e}"));
                None
            }
            other => other?,
        };
        let webhooks = self.webhooks(raw.webhooks.as_ref())?;
        let secrets = self.secrets(&raw.secrets)?;
        let mut pipelines = BTreeMap::new();
        for (name, rp) in &raw.pipelines {
            let p = self.pipeline(name, rp, &server, &secrets)?;
            pipelines.insert(name.clone(), Arc::new(p));
        }
        Ok(Settings {
            server,
            store,
            pipelines,
            webhooks,
            secrets,
            auth,
            bus,
            warnings,
            origins: self.origins.take(),
        })
    }

    fn auth(&self, raw: Option<&RawAuth>) -> Result<AuthSettings, ConfigError> {
        let mut auth = AuthSettings::default();
        if let Some(raw) = raw {
            for token in &raw.tokens {
                let (label, text) = match token {
                    RawToken::Hash(h) => (None, h.strip_prefix("sha256:").unwrap_or("")),
                    RawToken::Labeled { label, sha256 } => (
                        Some(label.clone()),
                        sha256.strip_prefix("sha256:").unwrap_or(sha256),
                    ),
                };
                let sha256 = parse_hex32(text).ok_or_else(|| {
                    self.invalid(
                        "auth",
                        Some("tokens"),
                        "expected \"sha256:<64 hex digits>\" or { label = \"…\", sha256 = \"<64 hex digits>\" } (the SHA-256 of the token, never the token)",
                    )
                })?;
                let label = label.unwrap_or_else(|| format!("token-{}", &text[..8]));
                auth.tokens.push(TokenHash { label, sha256 });
            }
            auth.session_ttl =
                self.duration("auth", "session_ttl", &raw.session_ttl, auth.session_ttl)?;
        }
        Ok(auth)
    }

    fn webhooks(&self, raw: Option<&RawWebhooks>) -> Result<WebhookSettings, ConfigError> {
        let t = "webhooks";
        let mut w = WebhookSettings::default();
        let Some(raw) = raw else { return Ok(w) };
        w.configured = true;
        if let Some(var) = &raw.secret_env {
            w.secret = (self.env)(var)
                .filter(|v| !v.is_empty())
                .map(|v| SecretValue(Arc::from(v)));
            if w.secret.is_none() {
                return Err(self.invalid(
                    t,
                    Some("secret_env"),
                    format!("the environment variable {var} is not set"),
                ));
            }
        }
        w.allow_http = raw.allow_http.unwrap_or(false);
        w.allow_hosts = raw.allow_hosts.clone();
        for ns in &raw.nameservers {
            let addr = ns
                .parse::<SocketAddr>()
                .or_else(|_| {
                    ns.parse::<std::net::IpAddr>()
                        .map(|ip| SocketAddr::new(ip, 53))
                })
                .map_err(|_| {
                    self.invalid(
                        t,
                        Some("nameservers"),
                        format!("{ns:?} is not an address such as \"10.0.0.2\" or \"10.0.0.2:53\""),
                    )
                })?;
            w.nameservers.push(addr);
        }
        w.timeout = self.duration(t, "timeout", &raw.timeout, w.timeout)?;
        if w.timeout.is_zero() {
            return Err(self.invalid(t, Some("timeout"), "must be positive"));
        }
        w.max_attempts = raw.max_attempts.unwrap_or(w.max_attempts);
        if !(1..=100).contains(&w.max_attempts) {
            return Err(self.invalid(t, Some("max_attempts"), "must be between 1 and 100"));
        }
        w.retry_backoff = self.duration(t, "retry_backoff", &raw.retry_backoff, w.retry_backoff)?;
        Ok(w)
    }

    fn secrets(&self, raw: &BTreeMap<String, RawSecret>) -> Result<Secrets, ConfigError> {
        let mut values = BTreeMap::new();
        for (name, rs) in raw {
            let t = format!("secrets.{name}");
            let value = match (&rs.env, &rs.file) {
                (Some(var), None) => (self.env)(var).ok_or_else(|| {
                    self.invalid(
                        &t,
                        Some("env"),
                        format!("the environment variable {var} is not set"),
                    )
                })?,
                (None, Some(file)) => {
                    let path = self.resolve_dir(file);
                    let text = std::fs::read_to_string(&path).map_err(|e| {
                        self.invalid(
                            &t,
                            Some("file"),
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                    text.strip_suffix('\n')
                        .map(|v| v.strip_suffix('\r').unwrap_or(v))
                        .unwrap_or(&text)
                        .to_string()
                }
                _ => {
                    return Err(self.invalid(
                        &t,
                        None,
                        "a secret names exactly one source: env = \"VAR\" or file = \"PATH\" (never an inline value)",
                    ));
                }
            };
            if value.len() < MIN_SECRET_BYTES {
                return Err(self.invalid(
                    &t,
                    None,
                    format!("the value is shorter than {MIN_SECRET_BYTES} bytes; masking it would mangle ordinary output"),
                ));
            }
            values.insert(name.clone(), SecretValue(Arc::from(value)));
        }
        Ok(Secrets { values })
    }

    /// Parses a setup or finalizer argv, allowing the `available` placeholders (an unknown
    /// one is refused with the nearest and the whole list).
    fn command_line(
        &self,
        table: &str,
        key: &str,
        argv: &[String],
        cwd: &Path,
        available: &[&str],
    ) -> Result<CommandLine, ConfigError> {
        let Some((program, args)) = argv.split_first() else {
            return Err(self.invalid(table, Some(key), "must name a program"));
        };
        if program.contains('{') {
            return Err(self.invalid(table, Some(key), "the program may not contain placeholders"));
        }
        let resolved =
            resolve_program(program, cwd).map_err(|m| self.invalid(table, Some(key), m))?;
        let mut templates = Vec::new();
        for arg in args {
            let tpl = Template::parse(arg).map_err(|m| self.invalid(table, Some(key), m))?;
            if let Some(var) = tpl.vars().find(|v| !available.contains(v)) {
                let hint = match nearest(var, available.iter().copied()) {
                    Some(n) => format!("did you mean {{{n}}}? "),
                    None => String::new(),
                };
                let list = if available.is_empty() {
                    "none are".to_string()
                } else {
                    format!("available: {}", available.join(", "))
                };
                return Err(self.invalid(
                    table,
                    Some(key),
                    format!("placeholder {{{var}}} is not available here: {hint}{list}"),
                ));
            }
            templates.push(tpl);
        }
        Ok(CommandLine {
            command: argv.to_vec(),
            program: resolved,
            args: templates,
        })
    }

    fn server(&self, rs: &RawServer) -> Result<ServerSettings, ConfigError> {
        let t = "server";
        let bad_listen = |text: &str| format!("invalid address {text:?} (e.g. \"127.0.0.1:7878\")");
        let listen_env = self.env_override("LISTEN", false);
        self.note(
            t,
            "listen",
            listen_env.as_ref().map(|e| e.var.as_str()),
            rs.listen.is_some(),
        );
        let listen: SocketAddr = match listen_env {
            Some(ev) => ev
                .value
                .trim()
                .parse()
                .map_err(|_| self.env_invalid(&ev, "server.listen", bad_listen(&ev.value)))?,
            None => {
                let text = rs.listen.as_deref().unwrap_or("127.0.0.1:7878");
                text.parse()
                    .map_err(|_| self.invalid(t, Some("listen"), bad_listen(text)))?
            }
        };
        let max_workers =
            self.overridable(t, "max_workers", true, rs.max_workers, 2, &|n| match n {
                1..=1024 => Ok(()),
                _ => Err("must be between 1 and 1024".into()),
            })?;
        let flush_ms = self.overridable(
            t,
            "output_flush_interval_ms",
            true,
            rs.output_flush_interval_ms,
            1000,
            &|ms| match ms {
                100..=30_000 => Ok(()),
                _ => Err(format!("{ms} is outside 100..=30000")),
            },
        )?;
        let max_workers_global = self.overridable(
            t,
            "max_workers_global",
            false,
            rs.max_workers_global,
            0,
            &|_| Ok(()),
        )?;
        // Relative to the working directory when from the environment (like any path given
        // on a command line), to the config file's directory when written in it.
        let data_dir_env = self.env_override("DATA_DIR", false);
        self.note(
            t,
            "data_dir",
            data_dir_env.as_ref().map(|e| e.var.as_str()),
            rs.data_dir.is_some(),
        );
        let data_dir = match data_dir_env {
            Some(ev) if ev.value.trim().is_empty() => {
                return Err(self.env_invalid(&ev, "server.data_dir", "must not be empty"));
            }
            Some(ev) => std::path::absolute(ev.value.trim())
                .map_err(|e| self.env_invalid(&ev, "server.data_dir", e.to_string()))?,
            None => self.resolve_dir(rs.data_dir.as_deref().unwrap_or(".runyard")),
        };
        let max_output_bytes = match &rs.max_output_bytes {
            None => 16 << 20,
            Some(toml::Value::Integer(n)) if *n > 0 => *n as u64,
            Some(toml::Value::String(s)) => {
                parse_size(s).map_err(|m| self.invalid(t, Some("max_output_bytes"), m))?
            }
            Some(_) => {
                return Err(self.invalid(
                    t,
                    Some("max_output_bytes"),
                    "expected a size such as \"16MiB\"",
                ));
            }
        };
        if max_output_bytes < 1024 {
            return Err(self.invalid(t, Some("max_output_bytes"), "must be at least 1KiB"));
        }
        let heartbeat = self.duration(t, "heartbeat", &rs.heartbeat, Duration::from_secs(10))?;
        let node_name = self.node_name(rs.node_name.as_deref())?;
        let advertise_url = self.advertise_url(rs.advertise_url.as_deref())?;
        let labels = self.labels(rs.labels.as_ref())?;
        let resources = self.resources(t, rs.resources.as_ref())?;
        if heartbeat < Duration::from_millis(100) {
            return Err(self.invalid(t, Some("heartbeat"), "must be at least 100ms"));
        }
        Ok(ServerSettings {
            node_name,
            advertise_url,
            labels,
            resources,
            listen,
            data_dir,
            max_workers,
            max_workers_global,
            output_flush_interval: Duration::from_millis(flush_ms),
            shutdown_timeout: self.duration(
                t,
                "shutdown_timeout",
                &rs.shutdown_timeout,
                Duration::from_secs(30),
            )?,
            retention: self.duration(
                t,
                "retention",
                &rs.retention,
                Duration::from_secs(7 * 86_400),
            )?,
            max_output_bytes,
            heartbeat,
            kill_grace: self.duration(t, "kill_grace", &rs.kill_grace, Duration::from_secs(10))?,
            client_write_timeout: match self.duration(
                t,
                "client_write_timeout",
                &rs.client_write_timeout,
                Duration::from_secs(30),
            )? {
                d if d < Duration::from_millis(100) => {
                    return Err(self.invalid(
                        t,
                        Some("client_write_timeout"),
                        "must be at least 100ms",
                    ));
                }
                d => d,
            },
            client_idle_timeout: match self.duration(
                t,
                "client_idle_timeout",
                &rs.client_idle_timeout,
                Duration::from_secs(120),
            )? {
                d if d < Duration::from_millis(100) => {
                    return Err(self.invalid(
                        t,
                        Some("client_idle_timeout"),
                        "must be at least 100ms (and above 15s to keep quiet streams open)",
                    ));
                }
                d => d,
            },
            max_connections: match rs.max_connections {
                None => 4096,
                Some(n) if (16..=1_000_000).contains(&n) => n as usize,
                Some(_) => {
                    return Err(self.invalid(
                        t,
                        Some("max_connections"),
                        "must be between 16 and 1000000",
                    ));
                }
            },
            admit_max_load: match rs.admit_max_load {
                Some(l) if !(l > 0.0 && l.is_finite()) => {
                    return Err(self.invalid(
                        t,
                        Some("admit_max_load"),
                        "must be a positive number",
                    ));
                }
                l => l,
            },
            admit_min_free_memory: match &rs.admit_min_free_memory {
                None => None,
                Some(toml::Value::Integer(n)) if *n > 0 => Some(*n as u64),
                Some(toml::Value::String(s)) => Some(
                    parse_size(s).map_err(|m| self.invalid(t, Some("admit_min_free_memory"), m))?,
                ),
                Some(_) => {
                    return Err(self.invalid(
                        t,
                        Some("admit_min_free_memory"),
                        "expected a size such as \"1GiB\"",
                    ));
                }
            },
        })
    }

    fn store(
        &self,
        rs: Option<&RawStore>,
        server: &ServerSettings,
    ) -> Result<StoreSettings, ConfigError> {
        // RUNYARD_DATABASE_URL wins; a bare DATABASE_URL (as other tools set it) only when
        // there is no RUNYARD_ one; then the config.
        let (url_text, url_source) = if let Some(u) = (self.env)("RUNYARD_DATABASE_URL") {
            (Some(u), "RUNYARD_DATABASE_URL")
        } else if let Some(u) = (self.env)("DATABASE_URL") {
            (Some(u), "DATABASE_URL")
        } else if let Some(u) = rs.and_then(|s| s.url.clone()) {
            (Some(u), "[store] url")
        } else {
            (None, "default")
        };
        let url = match url_text {
            None => StoreUrl::Sqlite(server.data_dir.join("runyard.db")),
            Some(u) => {
                if let Some(path) = u.strip_prefix("sqlite://") {
                    if path.is_empty() {
                        return Err(self.invalid(
                            "store",
                            Some("url"),
                            "sqlite:// needs a file path",
                        ));
                    }
                    StoreUrl::Sqlite(self.resolve_dir(path))
                } else if u.starts_with("postgres://") || u.starts_with("postgresql://") {
                    if let Err(e) = u.parse::<tokio_postgres::Config>() {
                        return Err(self.bad_url(
                            "store",
                            url_source,
                            &u,
                            format!("not a valid PostgreSQL URL: {e}"),
                        ));
                    }
                    StoreUrl::Postgres(u)
                } else {
                    return Err(self.bad_url(
                        "store",
                        url_source,
                        &u,
                        "expected sqlite://PATH or postgres://…",
                    ));
                }
            }
        };
        let synchronous = match rs.and_then(|s| s.synchronous.as_deref()) {
            None | Some("normal") => Synchronous::Normal,
            Some("full") => Synchronous::Full,
            Some(other) => {
                return Err(self.invalid(
                    "store",
                    Some("synchronous"),
                    format!("{other:?}: expected \"normal\" or \"full\""),
                ));
            }
        };
        let schema = rs.and_then(|s| s.schema.clone());
        if let Some(name) = &schema {
            let ok = !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                return Err(self.invalid(
                    "store",
                    Some("schema"),
                    format!(
                        "{name:?}: 1–63 lowercase letters, digits or _, not starting with a digit"
                    ),
                ));
            }
        }
        let pool_size = match rs.and_then(|s| s.pool_size) {
            None => None,
            Some(n @ 2..=256) => Some(n as usize),
            Some(n) => {
                return Err(self.invalid(
                    "store",
                    Some("pool_size"),
                    format!("{n}: expected 2 to 256 connections"),
                ));
            }
        };
        if !matches!(url, StoreUrl::Postgres(_)) && (schema.is_some() || pool_size.is_some()) {
            return Err(self.invalid(
                "store",
                Some(if schema.is_some() {
                    "schema"
                } else {
                    "pool_size"
                }),
                "only applies to a postgres:// store",
            ));
        }
        self.note(
            "store",
            "url",
            url_source
                .starts_with(char::is_uppercase)
                .then_some(url_source),
            url_source == "[store] url",
        );
        let url_origin = self.origins.borrow()["store.url"].clone();
        Ok(StoreSettings {
            url,
            url_source,
            url_origin,
            synchronous,
            schema,
            pool_size,
        })
    }

    /// `[bus]`: `RUNYARD_REDIS_URL` wins, then a bare `REDIS_URL`, then `[bus] url`; no
    /// URL at all is the in-process bus (a `[bus]` table with only a prefix is refused:
    /// it would silently leave replicas without a bus).
    fn bus(&self, rb: Option<&RawBus>) -> Result<Option<BusSettings>, ConfigError> {
        let (url, url_source) = if let Some(u) = (self.env)("RUNYARD_REDIS_URL") {
            (u, "RUNYARD_REDIS_URL")
        } else if let Some(u) = (self.env)("REDIS_URL") {
            (u, "REDIS_URL")
        } else if let Some(u) = rb.and_then(|b| b.url.clone()) {
            (u, "[bus] url")
        } else if rb.is_some() {
            return Err(self.invalid(
                "bus",
                Some("url"),
                "missing: set url = \"redis://HOST:PORT\" (or RUNYARD_REDIS_URL), or remove [bus]",
            ));
        } else {
            return Ok(None);
        };
        if !url.starts_with("redis://") {
            let why = if url.starts_with("rediss://") {
                "rediss:// (TLS) is not supported by this build: use redis:// on a trusted network"
                    .to_string()
            } else {
                "expected redis://HOST:PORT".to_string()
            };
            return Err(self.bad_url("bus", url_source, &url, why));
        }
        if let Err(e) = redis::Client::open(url.as_str()) {
            return Err(self.bad_url(
                "bus",
                url_source,
                &url,
                format!("not a valid Redis URL: {e}"),
            ));
        }
        let prefix = rb
            .and_then(|b| b.prefix.clone())
            .unwrap_or_else(|| "runyard".into());
        self.note(
            "bus",
            "prefix",
            None,
            rb.is_some_and(|b| b.prefix.is_some()),
        );
        let ok = !prefix.is_empty()
            && prefix.len() <= 64
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c));
        if !ok {
            return Err(self.invalid(
                "bus",
                Some("prefix"),
                format!("{prefix:?}: 1–64 letters, digits, _ - . or :"),
            ));
        }
        self.note(
            "bus",
            "url",
            url_source
                .starts_with(char::is_uppercase)
                .then_some(url_source),
            url_source == "[bus] url",
        );
        Ok(Some(BusSettings {
            url,
            url_source,
            prefix,
        }))
    }

    /// `schedule` (cron, 5 or 6 fields), `schedule_tz` (IANA, default UTC) and
    /// `schedule_params` (checked like a trigger's parameters: declared, typed, matching,
    /// required ones given). The zone and parameters need a schedule.
    fn schedule(
        &self,
        t: &str,
        rp: &RawPipeline,
        params: &BTreeMap<String, ParamSpec>,
    ) -> Result<(Option<crate::schedule::Schedule>, BTreeMap<String, String>), ConfigError> {
        use crate::schedule::{Schedule, ScheduleError};
        let Some(expr) = &rp.schedule else {
            if rp.schedule_tz.is_some() {
                return Err(self.invalid(t, Some("schedule_tz"), "needs a schedule"));
            }
            if rp.schedule_params.is_some() {
                return Err(self.invalid(t, Some("schedule_params"), "needs a schedule"));
            }
            return Ok((None, BTreeMap::new()));
        };
        let tz = rp.schedule_tz.as_deref().unwrap_or("UTC");
        let schedule = Schedule::parse(expr, tz).map_err(|e| match e {
            ScheduleError::Zone(_) => self.invalid(t, Some("schedule_tz"), e.to_string()),
            ScheduleError::Cron { .. } => self.invalid(t, Some("schedule"), e.to_string()),
        })?;
        let given = rp.schedule_params.clone().unwrap_or_default();
        if let Some(name) = given.keys().find(|k| !params.contains_key(*k)) {
            return Err(self.invalid(
                t,
                Some("schedule_params"),
                format!("{name} is not a declared parameter; declare [{t}.params.{name}]"),
            ));
        }
        let mut values = BTreeMap::new();
        for (name, spec) in params {
            let value = match given.get(name) {
                Some(v) => {
                    let json = serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
                    spec.accept(&json).map_err(|m| {
                        self.invalid(t, Some("schedule_params"), format!("{name}: {m}"))
                    })?
                }
                None => spec.default.clone().ok_or_else(|| {
                    self.invalid(
                        t,
                        Some("schedule_params"),
                        format!("{name} is required (it has no default)"),
                    )
                })?,
            };
            values.insert(name.clone(), value);
        }
        Ok((Some(schedule), values))
    }

    /// `retry_exit_codes` (only these codes are retried) or `no_retry_exit_codes` (these
    /// are not): one of them at most, each a non-empty list of codes 1–255.
    fn retry_on(&self, t: &str, rp: &RawPipeline) -> Result<crate::model::RetryOn, ConfigError> {
        use crate::model::RetryOn;
        let codes = |key: &str, list: &[i64]| -> Result<Vec<i32>, ConfigError> {
            if list.is_empty() {
                return Err(self.invalid(t, Some(key), "must list at least one exit code"));
            }
            let mut out = Vec::new();
            for code in list {
                if !(1..=255).contains(code) {
                    return Err(self.invalid(
                        t,
                        Some(key),
                        format!("{code} is not a failing exit code (1 to 255)"),
                    ));
                }
                out.push(*code as i32);
            }
            out.sort_unstable();
            out.dedup();
            Ok(out)
        };
        match (&rp.retry_exit_codes, &rp.no_retry_exit_codes) {
            (Some(_), Some(_)) => Err(self.invalid(
                t,
                Some("no_retry_exit_codes"),
                "set either retry_exit_codes (only these are retried) or no_retry_exit_codes (these are not), not both",
            )),
            (Some(list), None) => Ok(RetryOn::Only(codes("retry_exit_codes", list)?)),
            (None, Some(list)) => Ok(RetryOn::Except(codes("no_retry_exit_codes", list)?)),
            (None, None) => Ok(RetryOn::Any),
        }
    }

    fn pipeline(
        &self,
        name: &str,
        rp: &RawPipeline,
        server: &ServerSettings,
        secrets: &Secrets,
    ) -> Result<Pipeline, ConfigError> {
        let t = format!("pipelines.{name}");
        let t = t.as_str();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(self.invalid(
                t,
                None,
                "pipeline names use letters, digits, '-' and '_' (at most 64)",
            ));
        }
        let cwd = rp.cwd.as_deref().map(|c| self.resolve_dir(c));
        if let Some(dir) = &cwd
            && !dir.is_dir()
        {
            return Err(self.invalid(
                t,
                Some("cwd"),
                format!("{} is not a directory", dir.display()),
            ));
        }
        let Some((program, args)) = rp.command.split_first() else {
            return Err(self.invalid(t, Some("command"), "must name a program"));
        };
        if program.contains('{') {
            return Err(self.invalid(
                t,
                Some("command"),
                "the program (command[0]) may not contain placeholders",
            ));
        }
        let program = resolve_program(program, cwd.as_deref().unwrap_or(&self.base))
            .map_err(|m| self.invalid(t, Some("command"), m))?;

        let mut params = BTreeMap::new();
        for (pname, raw) in &rp.params {
            if pname.is_empty()
                || !pname
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(self.invalid(
                    &format!("{t}.params.{pname}"),
                    None,
                    "parameter names use letters, digits and '_'",
                ));
            }
            if BUILTIN_PLACEHOLDERS.contains(&pname.as_str()) {
                return Err(self.invalid(
                    &format!("{t}.params.{pname}"),
                    None,
                    "this name is a built-in placeholder",
                ));
            }
            let pt = format!("{t}.params.{pname}");
            let pattern = match &raw.pattern {
                None => None,
                Some(p) => Some(Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                    self.invalid(&pt, Some("pattern"), format!("invalid regex: {e}"))
                })?),
            };
            let spec = ParamSpec {
                kind: raw.kind,
                default: None,
                pattern,
                allow_leading_dash: raw.allow_leading_dash,
            };
            let default = match &raw.default {
                None => None,
                Some(v) => {
                    let json = serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
                    Some(
                        spec.accept(&json)
                            .map_err(|m| self.invalid(&pt, Some("default"), m))?,
                    )
                }
            };
            params.insert(pname.clone(), ParamSpec { default, ..spec });
        }

        let mut templates = Vec::new();
        for arg in args {
            let tpl = Template::parse(arg).map_err(|m| self.invalid(t, Some("command"), m))?;
            for var in tpl.vars() {
                if !BUILTIN_PLACEHOLDERS.contains(&var) && !params.contains_key(var) {
                    let known = BUILTIN_PLACEHOLDERS
                        .iter()
                        .copied()
                        .chain(params.keys().map(String::as_str));
                    let hint = match nearest(var, known) {
                        Some(n) => format!("did you mean {{{n}}}? "),
                        None => String::new(),
                    };
                    return Err(self.invalid(
                        t,
                        Some("command"),
                        format!(
                            "unknown placeholder {{{var}}}: {hint}declare [{t}.params.{var}] or use one of {}{}",
                            BUILTIN_PLACEHOLDERS.join(", "),
                            brace_hint(arg)
                        ),
                    ));
                }
            }
            templates.push(tpl);
        }
        let (concurrency_key, concurrency_per_key) = self.concurrency_key(
            t,
            rp.concurrency_key.as_deref(),
            rp.concurrency_per_key,
            &params,
        )?;
        let mut env = BTreeMap::new();
        let mut secret_env = BTreeMap::new();
        for (key, value) in &rp.env {
            match value {
                RawEnvValue::Plain(v) => {
                    env.insert(key.clone(), v.clone());
                }
                RawEnvValue::Secret { secret } => {
                    let value = secrets.get(secret).ok_or_else(|| {
                        self.invalid(t, Some("env"), format!("{key}: unknown secret {secret:?}; declare it under [secrets.{secret}]"))
                    })?;
                    secret_env.insert(key.clone(), value.clone());
                }
            }
            if key.is_empty()
                || key.contains('=')
                || key.contains('\0')
                || key.starts_with("RUNYARD_")
            {
                return Err(self.invalid(
                    t,
                    Some("env"),
                    format!("invalid variable name {key:?} (RUNYARD_* is reserved)"),
                ));
            }
        }
        let here = cwd.as_deref().unwrap_or(&self.base);
        let setup = match &rp.setup {
            None => None,
            Some(argv) => Some(self.command_line(t, "setup", argv, here, &[])?),
        };
        let finalizer = match &rp.finalizer {
            None => None,
            Some(argv) => {
                let available: Vec<&str> = FINALIZER_PLACEHOLDERS
                    .iter()
                    .copied()
                    .chain(params.keys().map(String::as_str))
                    .collect();
                Some(self.command_line(t, "finalizer", argv, here, &available)?)
            }
        };
        let circuit_threshold = rp.circuit_threshold.unwrap_or(3);
        if circuit_threshold == 0 {
            return Err(self.invalid(t, Some("circuit_threshold"), "must be at least 1"));
        }
        let shards = rp.shards.unwrap_or(1);
        if shards == 0 || shards > MAX_SHARDS {
            return Err(self.invalid(
                t,
                Some("shards"),
                format!("must be between 1 and {MAX_SHARDS}"),
            ));
        }
        let max_attempts = rp.max_attempts.unwrap_or(1);
        if max_attempts == 0 || max_attempts > 100 {
            return Err(self.invalid(t, Some("max_attempts"), "must be between 1 and 100"));
        }
        let retry_on = self.retry_on(t, rp)?;
        let (schedule, schedule_params) = self.schedule(t, rp, &params)?;
        let range = crate::model::PRIORITY_RANGE;
        let priority = match rp.priority {
            None => 0,
            Some(p) => i32::try_from(p)
                .ok()
                .filter(|p| range.contains(p))
                .ok_or_else(|| {
                    self.invalid(
                        t,
                        Some("priority"),
                        format!("must be from {} to {}", range.start(), range.end()),
                    )
                })?,
        };
        let timeout = match &rp.timeout {
            None => None,
            Some(s) => Some(parse_duration(s).map_err(|m| self.invalid(t, Some("timeout"), m))?),
        };
        if timeout == Some(Duration::ZERO) {
            return Err(self.invalid(
                t,
                Some("timeout"),
                "must be positive (omit it for no timeout)",
            ));
        }
        Ok(Pipeline {
            name: name.to_string(),
            command: rp.command.clone(),
            program,
            args: templates,
            cwd,
            env,
            timeout,
            max_attempts,
            retry_backoff: self.duration(
                t,
                "retry_backoff",
                &rp.retry_backoff,
                Duration::from_secs(1),
            )?,
            retry_on,
            priority,
            concurrency: rp.concurrency.unwrap_or(0),
            concurrency_key,
            concurrency_per_key,
            requires: self.requires(t, rp.requires.as_ref())?,
            resources: self
                .resources(t, rp.resources.as_ref())?
                .unwrap_or_default(),
            shards,
            on_orphan: rp.on_orphan.unwrap_or(OnOrphan::Requeue),
            max_orphan_requeues: rp.max_orphan_requeues.unwrap_or(1),
            kill_grace: self.duration(t, "kill_grace", &rp.kill_grace, server.kill_grace)?,
            secret_env,
            setup,
            circuit_threshold,
            circuit_cooldown: self.duration(
                t,
                "circuit_cooldown",
                &rp.circuit_cooldown,
                Duration::from_secs(60),
            )?,
            finalizer,
            callback_url: rp.callback_url.clone(),
            schedule,
            schedule_params,
            params,
        })
    }
}

/// `did you mean `max_workers`?` for serde's "unknown field `max_wrkers`, expected one
/// of `listen`, …" (and unknown variants), when one expected name is close enough.
fn unknown_name_hint(message: &str) -> Option<String> {
    let rest = message
        .split_once("unknown field `")
        .or_else(|| message.split_once("unknown variant `"))?
        .1;
    let (got, rest) = rest.split_once('`')?;
    let expected = rest.split_once("expected")?.1;
    let candidates = expected.split('`').skip(1).step_by(2);
    nearest(got, candidates).map(|n| format!("did you mean `{n}`?"))
}

/// The candidate closest to `got` by edit distance, if it is close enough to be a typo.
pub fn nearest<'a>(got: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (got.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(got, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diag + usize::from(ca != *cb));
            diag = above;
        }
    }
    row[b.len()]
}

/// 32 bytes from 64 hex digits.
fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Resolves `command[0]`: absolute as is, with a `/` relative to `dir`, else searched on PATH.
fn resolve_program(program: &str, dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    let candidate = Path::new(program);
    if program.contains('/') {
        let p = if candidate.is_absolute() {
            candidate.to_path_buf()
        } else {
            dir.join(candidate)
        };
        return if is_exec(&p) {
            Ok(p)
        } else {
            Err(format!("{} is not an executable file", p.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_exec(p))
        .ok_or_else(|| format!("program {program:?} not found on PATH"))
}

/// Largest accepted parameter value, in bytes (DESIGN decision 12).
pub const MAX_PARAM_BYTES: usize = 8 * 1024;

impl ParamSpec {
    /// Checks a trigger's JSON value and returns it as the string substituted into argv/env.
    pub fn accept(&self, value: &serde_json::Value) -> Result<String, String> {
        use serde_json::Value;
        let text = match (self.kind, value) {
            (ParamType::String, Value::String(s)) => s.clone(),
            (ParamType::String, Value::Number(n)) => n.to_string(),
            (ParamType::String, Value::Bool(b)) => b.to_string(),
            (ParamType::Integer, Value::Number(n)) if n.is_i64() => n.to_string(),
            (ParamType::Integer, Value::String(s)) if s.trim().parse::<i64>().is_ok() => {
                s.trim().to_string()
            }
            (ParamType::Boolean, Value::Bool(b)) => b.to_string(),
            (ParamType::Boolean, Value::String(s)) if s == "true" || s == "false" => s.clone(),
            (kind, v) => return Err(format!("expected {kind:?} value, got {v}").to_lowercase()),
        };
        if text.len() > MAX_PARAM_BYTES {
            return Err(format!(
                "value is {} bytes; the limit is {MAX_PARAM_BYTES}",
                text.len()
            ));
        }
        if text.contains('\0') {
            return Err("value contains a NUL byte".into());
        }
        // A value starting with '-' could be taken for an option by the program; for an
        // integer that is every negative number. Both need the parameter's consent.
        if text.starts_with('-') && !self.allow_leading_dash {
            return Err(match self.kind {
                ParamType::Integer => {
                    "negative values are refused (set allow_leading_dash = true to permit them)"
                }
                _ => "value may not start with '-' (set allow_leading_dash = true to permit it)",
            }
            .into());
        }
        if let Some(re) = &self.pattern
            && !re.is_match(&text)
        {
            return Err(format!("value does not match pattern {}", re.as_str()));
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml(text, Path::new("/tmp/runyard.toml"), &|_| None)
    }

    fn load_env(text: &str, env: EnvLookup<'_>) -> Result<Settings, ConfigError> {
        Settings::from_toml(text, Path::new("/tmp/runyard.toml"), env)
    }

    #[test]
    fn example_style_config_loads() {
        let s = load(
            r#"
[server]
max_workers = 3
[pipelines.hello]
command = ["echo", "hi {name}", "{shard_number}/{shard_count}"]
timeout = "5m"
shards = 2
[pipelines.hello.params.name]
default = "world"
pattern = "[a-z]+"
"#,
        )
        .unwrap();
        assert_eq!(s.server.max_workers, 3);
        let p = &s.pipelines["hello"];
        assert!(p.program.is_absolute());
        assert_eq!(p.timeout, Some(Duration::from_secs(300)));
        assert_eq!(p.params["name"].default.as_deref(), Some("world"));
    }

    #[test]
    fn errors_name_key_and_line() {
        let err =
            load("[server]\nmax_workers = 2\n\n[pipelines.x]\ncommand = [\"echo\", \"{nope}\"]\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains(":5: pipelines.x.command") && err.contains("{nope}"),
            "{err}"
        );
        let err = load("[pipelines.x]\ncommand = [\"echo\"]\ntimeout = \"5 parsecs\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains(":3: pipelines.x.timeout"), "{err}");
        let err = load("[server]\nmax_wrkers = 2\n").unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("max_wrkers"),
            "{err}"
        );
        let err = load("[pipelines.x]\ncommand = [\"definitely-not-a-program-xyz\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not found on PATH"), "{err}");
    }

    #[test]
    fn exit_code_retry_rules_are_one_list_of_failing_codes_or_a_start_error() {
        use crate::model::RetryOn;
        let base = "[pipelines.x]\ncommand = [\"true\"]\nmax_attempts = 3\n";
        let s = load(&format!("{base}no_retry_exit_codes = [1, 1, 2]\n")).unwrap();
        assert_eq!(s.pipelines["x"].retry_on, RetryOn::Except(vec![1, 2]));
        let s = load(&format!("{base}retry_exit_codes = [137]\n")).unwrap();
        assert_eq!(s.pipelines["x"].retry_on, RetryOn::Only(vec![137]));
        assert_eq!(load(base).unwrap().pipelines["x"].retry_on, RetryOn::Any);
        let err = load(&format!(
            "{base}retry_exit_codes = [137]\nno_retry_exit_codes = [1]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(":5: pipelines.x.no_retry_exit_codes") && err.contains("not both"),
            "{err}"
        );
        let err = load(&format!("{base}no_retry_exit_codes = [0]\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":4: pipelines.x.no_retry_exit_codes") && err.contains("1 to 255"),
            "{err}"
        );
        let err = load(&format!("{base}retry_exit_codes = []\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("retry_exit_codes"), "{err}");
    }

    #[test]
    fn schedules_are_checked_at_start_naming_the_key() {
        let base = "[pipelines.x]\ncommand = [\"echo\", \"{suite}\"]\n";
        let params = "[pipelines.x.params.suite]\npattern = \"[a-z]+\"\n";
        let s = load(&format!(
            "{base}schedule = \"0 2 * * *\"\nschedule_tz = \"Europe/Berlin\"\nschedule_params = {{ suite = \"nightly\" }}\n{params}"
        ))
        .unwrap();
        let p = &s.pipelines["x"];
        assert_eq!(
            p.schedule.as_ref().unwrap().key(),
            "0 2 * * * @ Europe/Berlin"
        );
        assert_eq!(p.schedule_params["suite"], "nightly");
        for (extra, key, says) in [
            (
                "schedule = \"61 * * * *\"\n",
                ":3: pipelines.x.schedule",
                "invalid cron",
            ),
            (
                "schedule = \"* * * *\"\n",
                ":3: pipelines.x.schedule",
                "4 fields",
            ),
            (
                "schedule = \"0 2 * * *\"\nschedule_tz = \"Mars/Base\"\n",
                ":4: pipelines.x.schedule_tz",
                "unknown time zone",
            ),
            (
                "schedule_tz = \"UTC\"\n",
                ":3: pipelines.x.schedule_tz",
                "needs a schedule",
            ),
            (
                "schedule = \"0 2 * * *\"\nschedule_params = { suite = \"NIGHTLY\" }\n",
                ":4: pipelines.x.schedule_params",
                "suite",
            ),
            (
                "schedule = \"0 2 * * *\"\nschedule_params = { other = \"a\" }\n",
                ":4: pipelines.x.schedule_params",
                "not a declared parameter",
            ),
            // Not written at all: the table's line.
            (
                "schedule = \"0 2 * * *\"\n",
                ":1: pipelines.x.schedule_params",
                "required",
            ),
        ] {
            let err = load(&format!("{base}{extra}{params}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(says), "{extra}: {err}");
        }
    }

    #[test]
    fn the_bus_comes_from_runyard_redis_url_then_redis_url_then_the_file() {
        assert_eq!(load("").unwrap().bus, None, "no [bus]: the in-process bus");
        let file = "[bus]\nurl = \"redis://file:6379\"\nprefix = \"prod-eu.1\"\n";
        let s = load(file).unwrap().bus.unwrap();
        assert_eq!(
            (s.url.as_str(), s.url_source, s.prefix.as_str()),
            ("redis://file:6379", "[bus] url", "prod-eu.1")
        );
        let both = |k: &str| match k {
            "RUNYARD_REDIS_URL" => Some("redis://ours:1".to_string()),
            "REDIS_URL" => Some("redis://theirs:2".to_string()),
            _ => None,
        };
        let s = load_env(file, &both).unwrap().bus.unwrap();
        assert_eq!(
            (s.url.as_str(), s.url_source),
            ("redis://ours:1", "RUNYARD_REDIS_URL")
        );
        let bare = |k: &str| (k == "REDIS_URL").then(|| "redis://theirs:2".to_string());
        let s = load_env("", &bare).unwrap().bus.unwrap();
        assert_eq!((s.url_source, s.prefix.as_str()), ("REDIS_URL", "runyard"));
        // Another program's REDIS_URL that this build cannot use is passed over, loudly;
        // with a [bus] table it is an error like any other.
        let tls = |k: &str| (k == "REDIS_URL").then(|| "rediss://addon:6380".to_string());
        let s = load_env("", &tls).unwrap();
        assert_eq!(s.bus, None);
        assert!(
            s.warnings[0].contains("REDIS_URL ignored") && s.warnings[0].contains("TLS"),
            "{:?}",
            s.warnings
        );
        assert!(load_env("[bus]\nprefix = \"p\"\n", &tls).is_err());
    }

    #[test]
    fn a_bad_bus_fails_at_start_naming_the_key() {
        for (text, key, says) in [
            ("[bus]\nprefix = \"x\"\n", "bus.url", "missing"),
            ("[bus]\nurl = \"rediss://h:6379\"\n", "bus.url", "TLS"),
            (
                "[bus]\nurl = \"http://h\"\n",
                "bus.url",
                "expected redis://",
            ),
            (
                "[bus]\nurl = \"redis://h\"\nprefix = \"a b\"\n",
                "bus.prefix",
                "letters",
            ),
            (
                "[bus]\nurl = \"redis://h\"\nprefix = \"\"\n",
                "bus.prefix",
                "1–64",
            ),
            (
                "[bus]\nurl = \"redis://h\"\nport = 1\n",
                "port",
                "unknown field",
            ),
        ] {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(says), "{text:?}: {err}");
        }
    }

    #[test]
    fn env_overrides_win() {
        let env = |k: &str| match k {
            "MAX_WORKERS" => Some("7".to_string()),
            "OUTPUT_FLUSH_INTERVAL_MS" => Some("250".to_string()),
            "DATABASE_URL" => Some("sqlite:///tmp/x.db".to_string()),
            _ => None,
        };
        let s = Settings::from_toml("", Path::new("/tmp/runyard.toml"), &env).unwrap();
        assert_eq!(s.server.max_workers, 7);
        assert_eq!(s.server.output_flush_interval, Duration::from_millis(250));
        assert_eq!(s.store.url, StoreUrl::Sqlite(PathBuf::from("/tmp/x.db")));
        let bad = |k: &str| (k == "MAX_WORKERS").then(|| "lots".to_string());
        let err = Settings::from_toml("", Path::new("/tmp/r.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "environment variable MAX_WORKERS=\"lots\": not a whole number (it overrides server.max_workers)"
        );
    }

    #[test]
    fn prefixed_env_overrides_win_over_the_seeds_names_and_are_blamed_by_name() {
        let env = |k: &str| match k {
            "MAX_WORKERS" => Some("7".to_string()),
            "RUNYARD_MAX_WORKERS" => Some("9".to_string()),
            "OUTPUT_FLUSH_INTERVAL_MS" => Some("250".to_string()),
            "RUNYARD_MAX_WORKERS_GLOBAL" => Some("4".to_string()),
            "RUNYARD_DATA_DIR" => Some("/srv/runyard".to_string()),
            "RUNYARD_LISTEN" => Some("127.0.0.1:9999".to_string()),
            _ => None,
        };
        let s = load_env("[server]\nmax_workers = 3\n", &env).unwrap();
        assert_eq!(s.server.max_workers, 9);
        assert_eq!(s.server.max_workers_global, 4);
        assert_eq!(s.server.output_flush_interval, Duration::from_millis(250));
        assert_eq!(s.server.data_dir, PathBuf::from("/srv/runyard"));
        assert_eq!(s.server.listen.port(), 9999);
        // An out-of-range value from the environment names the variable, not a line.
        let zero = |k: &str| (k == "RUNYARD_MAX_WORKERS").then(|| "0".to_string());
        let err = load_env("[server]\nmax_workers = 3\n", &zero)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "environment variable RUNYARD_MAX_WORKERS=\"0\": must be between 1 and 1024"
            ),
            "{err}"
        );
        let slow = |k: &str| (k == "RUNYARD_OUTPUT_FLUSH_INTERVAL_MS").then(|| "5".to_string());
        let err = load_env("", &slow).unwrap_err().to_string();
        assert!(
            err.contains("RUNYARD_OUTPUT_FLUSH_INTERVAL_MS") && !err.contains(":0:"),
            "{err}"
        );
        // The same value in the file is blamed on its line.
        let err = load("[server]\nmax_workers = 0\n").unwrap_err().to_string();
        assert!(err.contains(":2: server.max_workers"), "{err}");
    }

    #[test]
    fn relative_config_paths_resolve_to_absolute_ones() {
        let s = Settings::from_toml(
            "[server]\ndata_dir = \"data\"\n",
            Path::new("some/dir/runyard.toml"),
            &|_| None,
        )
        .unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(s.server.data_dir, cwd.join("some/dir/data"));
        let s = Settings::from_toml("", Path::new("runyard.toml"), &|_| None).unwrap();
        assert_eq!(s.server.data_dir, cwd.join(".runyard"));
    }

    #[test]
    fn parse_errors_keep_their_lines_and_suggest_the_nearest_key() {
        let err = load("[server]\nmax_wrkers = 2\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains('\n'), "{err}");
        assert!(
            err.contains("2 | max_wrkers = 2"),
            "the snippet survives: {err}"
        );
        assert!(err.ends_with("did you mean `max_workers`?"), "{err}");
        let err = load("[pipelines.x]\ncommand = [\"true\"]\ntimout = \"5m\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("did you mean `timeout`?"), "{err}");
        let err = load("[pipelines.x]\ncommand = [\"true\"]\non_orphan = \"requeu\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("did you mean `requeue`?"), "{err}");
        let err = load("[sever]\n").unwrap_err().to_string();
        assert!(err.ends_with("did you mean `server`?"), "{err}");
        // Nothing close: no guess.
        let err = load("[server]\nzzzzzzzz = 1\n").unwrap_err().to_string();
        assert!(!err.contains("did you mean"), "{err}");
        let err = load("[pipelines.x]\ncommand = [\"echo\", \"{shard_numbr}\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean {shard_number}?"), "{err}");
        // A finalizer's placeholders, with the nearest one and the list.
        let err =
            load("[pipelines.x]\ncommand = [\"true\"]\nfinalizer = [\"cat\", \"{sumary_file}\"]\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("did you mean {summary_file}?"), "{err}");
        assert!(err.contains("available: run_id, job_id"), "{err}");
    }

    #[test]
    fn literal_braces_are_suggested_doubled() {
        let err = load("[pipelines.x]\ncommand = [\"sh\", \"-c\", \"echo ${HOME}\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(r#"written doubled: "echo ${{HOME}}""#),
            "{err}"
        );
        let err = load("[pipelines.x]\ncommand = [\"curl\", \"-d\", '{\"a\": 1}']\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains(r#"written doubled: "{{\"a\": 1}}""#), "{err}");
        let s =
            load("[pipelines.x]\ncommand = [\"sh\", \"-c\", \"echo ${{HOME}} {{}}\"]\n").unwrap();
        assert_eq!(s.pipelines["x"].args[1].render(|_| None), "echo ${HOME} {}");
    }

    #[test]
    fn templates_parse_and_render() {
        let t = Template::parse("--shard={shard_number}/{shard_count} {{x}}").unwrap();
        let out = t.render(|v| {
            Some(if v == "shard_number" {
                "2".into()
            } else {
                "4".into()
            })
        });
        assert_eq!(out, "--shard=2/4 {x}");
        assert_eq!(t.to_string(), "--shard={shard_number}/{shard_count} {{x}}");
        assert!(Template::parse("{open").is_err());
        assert!(Template::parse("a}b").is_err());
    }

    #[test]
    fn params_are_checked() {
        let spec = ParamSpec {
            kind: ParamType::String,
            default: None,
            pattern: Some(Regex::new("^(?:[a-z]+)$").unwrap()),
            allow_leading_dash: false,
        };
        assert_eq!(spec.accept(&serde_json::json!("abc")).unwrap(), "abc");
        assert!(spec.accept(&serde_json::json!("abc; rm")).is_err());
        let free = ParamSpec {
            pattern: None,
            ..spec.clone()
        };
        assert!(free.accept(&serde_json::json!("--output=/etc/x")).is_err());
        assert!(free.accept(&serde_json::json!("a\0b")).is_err());
        assert!(
            free.accept(&serde_json::json!("x".repeat(MAX_PARAM_BYTES + 1)))
                .is_err()
        );
        let int = ParamSpec {
            kind: ParamType::Integer,
            ..free
        };
        assert_eq!(int.accept(&serde_json::json!(3)).unwrap(), "3");
        assert!(int.accept(&serde_json::json!("x")).is_err());
        for negative in [serde_json::json!(-3), serde_json::json!(" -3")] {
            let err = int.accept(&negative).unwrap_err();
            assert!(err.contains("negative values are refused"), "{err}");
        }
        let signed = ParamSpec {
            allow_leading_dash: true,
            ..int
        };
        assert_eq!(signed.accept(&serde_json::json!("-3")).unwrap(), "-3");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_duration("7 weeks").is_err());
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("2d12h").unwrap(),
            Duration::from_secs(216_000)
        );
        assert_eq!(
            parse_duration("1s500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        for bad in ["", "30m1h", "1h1h", "1h30", "5 parsecs", "h", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            parse_duration("5 parsecs")
                .unwrap_err()
                .contains("invalid duration unit \"parsecs\"")
        );
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert!(parse_size("16 furlongs").is_err());
    }
}
