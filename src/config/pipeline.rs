//! `[pipelines.NAME]`: a pipeline as it runs — its command resolved and its
//! placeholders checked against the declared parameters, its limits, retry and orphan
//! rules, secrets, setup and finalizer, schedule and placement keys.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::pipeline_parts::{resolve_program, valid_name};
use super::raw::{RawEnvValue, RawPipeline};
use super::*;
use crate::model::template::brace_hint;

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
    /// Run once per node before the pipeline's first job there.
    pub setup: Option<CommandLine>,
    /// Setup failures in a row that open this node's circuit for the pipeline.
    pub circuit_threshold: u32,
    /// How long an open circuit waits before one trial setup (half-open).
    pub circuit_cooldown: Duration,
    /// Run once per run after every shard is terminal.
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

impl Loader<'_> {
    pub(super) fn pipeline(
        &self,
        name: &str,
        rp: &RawPipeline,
        server: &ServerSettings,
        secrets: &Secrets,
    ) -> Result<Pipeline, ConfigError> {
        let t = format!("pipelines.{name}");
        let t = t.as_str();
        if !valid_name(name) {
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

        let params = self.param_specs(t, &rp.params)?;

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
