//! Building the child process: argv only, own process group, explicit environment.
//!
//! The environment is cleared, then gets PATH, HOME, LANG, TZ and USER from the
//! server, the pipeline's `env` and the `RUNYARD_*` variables: the server's own
//! secrets never reach a job. `process_group(0)` is set
//! without any `pre_exec` hook so the standard library can use the fast
//! `posix_spawn` path.

use std::path::PathBuf;
use std::process::Stdio;

/// What to run.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// Absolute path of the program.
    pub program: PathBuf,
    /// Arguments after the program, already substituted.
    pub args: Vec<String>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Extra environment (pipeline `env`, then `RUNYARD_*`).
    pub env: Vec<(String, String)>,
}

/// Server variables passed through to jobs.
pub const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG", "TZ", "USER"];

/// The `tokio` command for `spec`.
pub fn command(spec: &SpawnSpec) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    for key in INHERITED_ENV {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    cmd
}
