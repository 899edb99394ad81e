//! `runyard check`: a dry run of `serve` for operators.
//!
//! It loads and validates the config with the environment applied, connects to the
//! store and the bus **without joining** — no schema made, no migration, no node row,
//! no claim, no subscription — and prints the effective settings with where each came
//! from (secrets redacted). Exit 0 when `serve` would start with them, 2 otherwise,
//! with every problem found (not just the first).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::bus::RedisBus;
use crate::config::{StoreUrl, redact_url};
use crate::store::postgres::{PgOptions, PgStore};
use crate::store::sqlite::SqliteStore;

use super::{exit, term};

/// How long the bus probe waits for Redis.
const BUS_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) async fn check(config: &Path) -> anyhow::Result<u8> {
    let settings = super::serve::load_settings(config)?;
    let origin = |key: &str| {
        settings
            .origins
            .get(key)
            .cloned()
            .unwrap_or_else(|| "default".into())
    };
    let s = &settings.server;
    let mut out = String::new();
    let mut problems = Vec::new();
    let mut line = |key: &str, value: String, from: String| {
        let _ = writeln!(out, "{key:<28} {value:<40} ({from})");
    };
    line("config", config.display().to_string(), "-c".into());
    for (key, value) in [
        ("server.listen", s.listen.to_string()),
        ("server.data_dir", s.data_dir.display().to_string()),
        ("server.max_workers", s.max_workers.to_string()),
        (
            "server.max_workers_global",
            s.max_workers_global.to_string(),
        ),
        (
            "server.output_flush_interval_ms",
            s.output_flush_interval.as_millis().to_string(),
        ),
    ] {
        line(key, value, origin(key));
    }
    line(
        "server.node_name",
        s.node_name.clone().unwrap_or_else(|| {
            crate::config::default_node_name(&crate::executor::process::hostname(), s.listen.port())
        }),
        origin("server.node_name"),
    );
    line(
        "server.labels",
        if s.labels.is_empty() {
            "none".into()
        } else {
            s.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        },
        origin("server.labels"),
    );
    line(
        "config digest",
        settings.config_digest(),
        "pipelines and caps".into(),
    );
    line(
        "server.heartbeat",
        format!("{:?} (lease {:?})", s.heartbeat, 3 * s.heartbeat),
        origin("server.heartbeat"),
    );
    line(
        "auth",
        if settings.auth.required() {
            "tokens required (values not shown)".to_string()
        } else {
            "no tokens (loopback only)".to_string()
        },
        "[auth] tokens, RUNYARD_TOKEN".into(),
    );
    let store = match &settings.store.url {
        StoreUrl::Sqlite(path) => (
            format!("sqlite://{}", path.display()),
            SqliteStore::probe(path).map_err(|e| e.to_string()),
        ),
        StoreUrl::Postgres(url) => {
            let opts = PgOptions {
                url: url.clone(),
                schema: settings.store.schema.clone(),
                pool_size: settings.store.pool_size.unwrap_or(2),
            };
            (
                redact_url(url),
                PgStore::probe(&opts).await.map_err(|e| e.to_string()),
            )
        }
    };
    line("store.url", store.0, origin("store.url"));
    match store.1 {
        Ok(what) => line("  store", format!("ok: {what}"), "connected".into()),
        Err(e) => problems.push(format!("store: {e}")),
    }
    match &settings.bus {
        None => line("bus.url", "none (in-process bus)".into(), "default".into()),
        Some(bus) => {
            line("bus.url", redact_url(&bus.url), origin("bus.url"));
            line("bus.prefix", bus.prefix.clone(), origin("bus.prefix"));
            match RedisBus::probe(&bus.url, BUS_TIMEOUT).await {
                Ok(what) => line("  bus", format!("ok: {what}"), "connected".into()),
                Err(e) => problems.push(format!("bus: {} — {e}", redact_url(&bus.url))),
            }
        }
    }
    let names: Vec<&str> = settings.pipelines.keys().map(String::as_str).collect();
    line(
        "pipelines",
        format!("{} ({})", names.len(), names.join(", ")),
        "file".into(),
    );
    if !settings.workflows.is_empty() {
        let names: Vec<&str> = settings.workflows.keys().map(String::as_str).collect();
        line(
            "workflows",
            format!("{} ({})", names.len(), names.join(", ")),
            "file".into(),
        );
    }
    for warning in &settings.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    term::out(out.trim_end())?;
    if problems.is_empty() {
        return Ok(exit::OK);
    }
    for p in &problems {
        term::err(format_args!("error: {p}"));
    }
    Ok(exit::USAGE)
}
