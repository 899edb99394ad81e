//! `[store]` and `[bus]`: which database the node keeps its state in and which Redis
//! carries signals between replicas, each URL from the environment first.

use std::path::PathBuf;

use super::raw::{RawBus, RawStore};
use super::*;

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

impl Loader<'_> {
    pub(super) fn store(
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
    pub(super) fn bus(&self, rb: Option<&RawBus>) -> Result<Option<BusSettings>, ConfigError> {
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
}
