//! The parts of a pipeline checked on their own: its name and declared parameters
//! (shared with workflows), a command line other than the main one (setup, finalizer),
//! the program it runs found on `PATH`, the schedule, and which exit codes are retried.

use std::path::{Path, PathBuf};

use super::raw::{RawParam, RawPipeline};
use super::*;

/// Whether `name` may name a pipeline or a workflow (one namespace) or a workflow's
/// step: letters, digits, `-` and `_`, at most 64 bytes.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Resolves `command[0]`: absolute as is, with a `/` relative to `dir`, else searched on PATH.
pub(super) fn resolve_program(program: &str, dir: &Path) -> Result<PathBuf, String> {
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

impl Loader<'_> {
    /// The parameters declared under `[{t}.params]` (a pipeline's or a workflow's): names
    /// of letters, digits and `_` that are not built-in placeholders, patterns that
    /// compile, defaults that pass their own rules.
    pub(super) fn param_specs(
        &self,
        t: &str,
        raw: &BTreeMap<String, RawParam>,
    ) -> Result<BTreeMap<String, ParamSpec>, ConfigError> {
        let mut params = BTreeMap::new();
        for (pname, raw) in raw {
            let pt = format!("{t}.params.{pname}");
            if pname.is_empty()
                || !pname
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(self.invalid(&pt, None, "parameter names use letters, digits and '_'"));
            }
            if BUILTIN_PLACEHOLDERS.contains(&pname.as_str()) {
                return Err(self.invalid(&pt, None, "this name is a built-in placeholder"));
            }
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
        Ok(params)
    }

    /// Parses a setup or finalizer argv, allowing the `available` placeholders (an unknown
    /// one is refused with the nearest and the whole list).
    pub(super) fn command_line(
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

    /// `schedule` (cron, 5 or 6 fields), `schedule_tz` (IANA, default UTC) and
    /// `schedule_params` (checked like a trigger's parameters: declared, typed, matching,
    /// required ones given). The zone and parameters need a schedule.
    pub(super) fn schedule(
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
    pub(super) fn retry_on(
        &self,
        t: &str,
        rp: &RawPipeline,
    ) -> Result<crate::model::RetryOn, ConfigError> {
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
}
