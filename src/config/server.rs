//! `[server]`: this node's listener, data directory, slots, timings, limits and
//! admission thresholds (the placement keys are in `placement.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::RawServer;
use super::*;

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
    /// What this node has for its jobs (`resources`); `None`, or a dimension left out:
    /// the machine's cores and memory, no GPU (read at start).
    pub resources: Option<crate::model::Resources>,
}

impl Loader<'_> {
    pub(super) fn server(&self, rs: &RawServer) -> Result<ServerSettings, ConfigError> {
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
}
