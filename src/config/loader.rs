//! The loader: one config file's text and the environment, turned into checked
//! settings. It remembers where each overridable setting came from (for `runyard
//! check`) and blames every error on its file, line and key, or on its environment
//! variable; the other files of `config` add one table each to it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::RawFile;
use super::*;

/// An environment variable that supplied a setting.
pub(super) struct EnvValue {
    pub(super) var: String,
    pub(super) value: String,
}

pub(super) struct Loader<'a> {
    pub(super) text: &'a str,
    pub(super) path: &'a Path,
    pub(super) base: PathBuf,
    pub(super) env: EnvLookup<'a>,
    pub(super) origins: std::cell::RefCell<BTreeMap<String, String>>,
}

/// `did you mean `max_workers`?` for serde's "unknown field `max_wrkers`, expected one
/// of `listen`, …" (and unknown variants), when one expected name is close enough.
pub(super) fn unknown_name_hint(message: &str) -> Option<String> {
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
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
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

impl Loader<'_> {
    /// Records where `table.key` came from: `var` when an environment variable set it,
    /// else the file's line when it is written there, else the default.
    pub(super) fn note(&self, table: &str, key: &str, var: Option<&str>, in_file: bool) {
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
    pub(super) fn line_of(&self, table: &str, key: Option<&str>) -> usize {
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

    pub(super) fn invalid(
        &self,
        table: &str,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> ConfigError {
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
    pub(super) fn bad_url(
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

    /// An override from the environment: `RUNYARD_<name>` wins over the unprefixed
    /// `<name>` of the documented contract (kept working when `legacy`). Returns the variable that supplied it.
    pub(super) fn env_override(&self, name: &str, legacy: bool) -> Option<EnvValue> {
        let prefixed = format!("RUNYARD_{name}");
        let found = (self.env)(&prefixed).map(|v| (prefixed, v)).or_else(|| {
            legacy
                .then(|| (self.env)(name).map(|v| (name.to_string(), v)))
                .flatten()
        });
        found.map(|(var, value)| EnvValue { var, value })
    }

    /// A setting `table.key` that the environment variable `RUNYARD_<KEY>` (and, when
    /// `legacy`, the unprefixed `<KEY>`) may override: the variable wins and is what an error
    /// names; otherwise the file's value, else `default`.
    pub(super) fn overridable<T: std::str::FromStr>(
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

    pub(super) fn env_invalid(
        &self,
        ev: &EnvValue,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Env {
            var: ev.var.clone(),
            value: ev.value.chars().take(80).collect(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    pub(super) fn duration(
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

    pub(super) fn resolve_dir(&self, s: &str) -> PathBuf {
        let p = Path::new(s);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    pub(super) fn build(&self, raw: RawFile) -> Result<Settings, ConfigError> {
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
        let mut workflows = BTreeMap::new();
        for (name, rw) in &raw.workflows {
            let w = self.workflow(name, rw, &pipelines, &raw.workflows)?;
            workflows.insert(name.clone(), Arc::new(w));
        }
        Ok(Settings {
            server,
            store,
            pipelines,
            workflows,
            webhooks,
            secrets,
            auth,
            bus,
            warnings,
            origins: self.origins.take(),
        })
    }
}
