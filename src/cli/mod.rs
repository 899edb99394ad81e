//! The command line: `serve` runs a node; every other command is an HTTP
//! client of a node (`--server`, env `RUNYARD_URL`); `completions` and `man` print
//! shell completions and the manual page, generated from these definitions so they
//! cannot drift from the parser.
//!
//! Exit codes are in [`exit`] (and `runyard --help`): 0 completed, 1 failed, 130
//! aborted, 2 usage, 3 server unreachable, 4 request refused.
//!
//! `--server` and `--json` belong to the client commands (so `serve --help` shows only
//! what `serve` uses); they are also accepted before the command name, as they always
//! were (`runyard --server URL runs`).

mod check;
mod client;
mod complete;
mod exit;
mod output;
mod term;
mod wait;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use serde_json::{Map, Value, json};

use crate::config::Settings;
use client::{Client, ClientError, segment};
use wait::Watch;

/// Where client commands go when neither `--server` nor `RUNYARD_URL` says.
const DEFAULT_SERVER: &str = "http://127.0.0.1:7878";

/// runyard: trigger, watch and abort durable runs of pipelines.
#[derive(Parser, Debug)]
#[command(name = "runyard", version, about, after_help = exit::HELP)]
pub struct Cli {
    /// Server URL for client commands (also accepted after the command name; env RUNYARD_URL).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// Machine-readable JSON output for client commands.
    #[arg(long)]
    json: bool,
    /// Log format on stderr: `human` or `json` (one object per line); level from RUNYARD_LOG.
    #[arg(
        long,
        global = true,
        env = "RUNYARD_LOG_FORMAT",
        default_value = "human",
        value_parser = ["human", "json"]
    )]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

/// What every client command takes.
#[derive(Args, Debug, Default, Clone)]
struct ClientArgs {
    /// Server URL; `host:port` means http://host:port [env: RUNYARD_URL] [default: http://127.0.0.1:7878].
    // Not clap's `env`: a flag given before the command must beat the environment too.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: read the config, open the store, serve the API and dashboard, run jobs.
    Serve {
        /// Config file.
        #[arg(short, long, env = "RUNYARD_CONFIG", default_value = "runyard.toml")]
        config: PathBuf,
        /// Listen address (overrides `server.listen`; env RUNYARD_LISTEN).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Check a config without joining: validate it with the environment applied, connect
    /// to the store and the bus (no node row, no claims), print the effective settings and
    /// where each came from. Exit 0, or 2 with the problems.
    Check {
        /// Config file.
        #[arg(short, long, env = "RUNYARD_CONFIG", default_value = "runyard.toml")]
        config: PathBuf,
    },
    /// Trigger a run of a pipeline; prints its run id (or waits for it).
    #[command(after_help = exit::HELP)]
    Trigger {
        /// Pipeline name.
        pipeline: String,
        /// A parameter, `key=value` (repeatable).
        #[arg(short = 'p', long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Shard count (default: the pipeline's).
        #[arg(long)]
        shards: Option<u32>,
        /// Wait for the run to end, drawing a progress bar per shard; exit 0/1/130 by its status.
        #[arg(long)]
        wait: bool,
        /// Print the run's output as it happens (implies --wait).
        #[arg(long)]
        follow: bool,
        /// On Ctrl-C or SIGTERM while waiting, abort the run instead of leaving it running.
        #[arg(long)]
        abort_on_interrupt: bool,
        /// Make retries of this trigger return the same run.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// POST the run's summary here when it ends (a signed completion webhook).
        #[arg(long, value_name = "URL")]
        callback_url: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Wait for a run started elsewhere; exit 0/1/130 by its status.
    #[command(after_help = exit::HELP)]
    Wait {
        /// Run id, or a unique prefix of one (at least 8 characters).
        run: String,
        /// Print the run's output as it happens.
        #[arg(long)]
        follow: bool,
        /// On Ctrl-C or SIGTERM, abort the run instead of leaving it running.
        #[arg(long)]
        abort_on_interrupt: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List runs, newest first.
    Runs {
        /// Only runs with this status.
        #[arg(long)]
        status: Option<String>,
        /// Only runs of this pipeline.
        #[arg(long)]
        pipeline: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one run and its jobs.
    Show {
        /// Run id, or a unique prefix of one (at least 8 characters).
        run: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the output of a job, or of every job of a run.
    #[command(after_help = exit::HELP)]
    Logs {
        /// A job id (`RUN:sN` for shard N, `RUN:finalize`) or a run id: a sharded run's
        /// lines are prefixed with their shard. Run ids may be unique prefixes.
        job: String,
        /// Keep printing new output until the job (or run) ends; exit 0/1/130 by its status.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines (per stream without -f).
        #[arg(long)]
        tail: Option<usize>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Re-run a finished run as a new run (same parameters and shard count); prints its id.
    #[command(after_help = exit::HELP)]
    Rerun {
        /// Run id, or a unique prefix of one (at least 8 characters).
        run: String,
        /// Only the shards that failed or were aborted; completed ones keep their outcome.
        #[arg(long)]
        failed: bool,
        /// Wait for the new run to end, drawing a progress bar per shard; exit 0/1/130 by its status.
        #[arg(long)]
        wait: bool,
        /// Print the new run's output as it happens (implies --wait).
        #[arg(long)]
        follow: bool,
        /// On Ctrl-C or SIGTERM while waiting, abort the run instead of leaving it running.
        #[arg(long)]
        abort_on_interrupt: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Abort a run: stop every shard's process tree.
    Abort {
        /// Run id, or a unique prefix of one (at least 8 characters).
        run: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Pause a pipeline: no node starts its queued jobs (triggers are still queued, running jobs finish).
    Pause {
        /// Pipeline name.
        pipeline: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Resume a paused pipeline: its queued jobs are started again.
    Resume {
        /// Pipeline name.
        pipeline: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List pipelines.
    Pipelines {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List nodes.
    Workers {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a shell completion script (e.g. `runyard completions bash > /etc/bash_completion.d/runyard`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Words for shell completion from the server (used by the completion scripts).
    #[command(name = "__complete", hide = true)]
    Complete {
        /// `pipelines` or `runs`.
        what: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the manual page (roff), or write one page per command into a directory.
    Man {
        /// Write runyard.1 and runyard-<command>.1 here instead of printing runyard.1.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve { .. });
    let default_level = if serving { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUNYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json().with_current_span(false).init();
    } else {
        // Escape codes only on a terminal (never in a log file or journal), and never
        // with NO_COLOR.
        logs.with_ansi(term::colour_on_stderr()).init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            term::err(format_args!("error: cannot start the runtime: {e}"));
            return ExitCode::from(exit::USAGE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let (code, print) = exit::of_error(&e);
            if print {
                term::err(format_args!("error: {e:#}"));
            }
            ExitCode::from(code)
        }
    }
}

/// The client for a command: its own `--server`, else one given before the command,
/// else `RUNYARD_URL`, else the default.
fn client_for(top: &Cli, args: &ClientArgs) -> Result<(Client, bool), ClientError> {
    let env = std::env::var("RUNYARD_URL").ok().filter(|u| !u.is_empty());
    let server = args
        .server
        .clone()
        .or_else(|| top.server.clone())
        .or(env)
        .unwrap_or_else(|| DEFAULT_SERVER.to_string());
    Ok((Client::new(&server)?, args.json || top.json))
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    match &cli.command {
        Command::Serve { config, listen } => {
            // Given before `serve` they would be silently ignored: say so instead.
            anyhow::ensure!(
                !cli.json,
                "--json is for client commands; serve logs JSON with --log-format json"
            );
            serve(config.clone(), listen.clone()).await
        }
        Command::Check { config } => check::check(config).await,
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "runyard", &mut buf);
            term::out(String::from_utf8_lossy(&buf).trim_end())?;
            if let Some(dynamic) = complete::dynamic(*shell) {
                term::out(dynamic.trim_end())?;
            }
            Ok(exit::OK)
        }
        Command::Complete { what, client } => {
            let (client, _) = client_for(&cli, client)?;
            complete::words(&client, what).await
        }
        Command::Man { dir } => man(dir.as_deref()),
        Command::Trigger {
            pipeline,
            params,
            shards,
            wait,
            follow,
            abort_on_interrupt,
            idempotency_key,
            callback_url,
            client,
        } => {
            let (client, json_out) = client_for(&cli, client)?;
            let mut parameters = Map::new();
            for p in params {
                let (k, v) = p
                    .split_once('=')
                    .with_context(|| format!("parameter {p:?} is not KEY=VALUE"))?;
                parameters.insert(k.to_string(), Value::String(v.to_string()));
            }
            let mut body = json!({ "parameters": parameters });
            if let Some(n) = shards {
                body["shards"] = json!(n);
            }
            if let Some(k) = idempotency_key {
                body["idempotencyKey"] = json!(k);
            }
            if let Some(url) = callback_url {
                body["callbackUrl"] = json!(url);
            }
            let answer = client
                .post(
                    &format!("/api/pipelines/{}/trigger", segment(pipeline)),
                    &body,
                )
                .await?;
            let run_id = answer["runId"].as_str().unwrap_or_default().to_string();
            if !(*wait || *follow) {
                if json_out {
                    output::print_json(&answer)?;
                } else {
                    term::out(&run_id)?;
                }
                return Ok(exit::OK);
            }
            if !json_out {
                term::err(format_args!("run {run_id} queued"));
            }
            let how = Watch {
                follow: *follow,
                json: json_out,
                abort_on_interrupt: *abort_on_interrupt,
                quiet: false,
            };
            wait::watch(&client, &run_id, how).await
        }
        Command::Wait {
            run,
            follow,
            abort_on_interrupt,
            client,
        } => {
            let (client, json_out) = client_for(&cli, client)?;
            let how = Watch {
                follow: *follow,
                json: json_out,
                abort_on_interrupt: *abort_on_interrupt,
                quiet: false,
            };
            wait::watch(&client, run, how).await
        }
        Command::Runs {
            status,
            pipeline,
            limit,
            client,
        } => {
            let (client, json_out) = client_for(&cli, client)?;
            let mut query = vec![("limit", limit.to_string())];
            if let Some(s) = status {
                query.push(("status", s.clone()));
            }
            let path = match pipeline {
                Some(p) => format!("/api/pipelines/{}/jobs", segment(p)),
                None => "/api/runs".to_string(),
            };
            let answer = client.get_query(&path, &query).await?;
            if json_out {
                output::print_json(&answer)?
            } else {
                output::runs_table(&answer)?
            }
            Ok(exit::OK)
        }
        Command::Show { run, client } => {
            let (client, json_out) = client_for(&cli, client)?;
            let answer = client.get(&format!("/api/runs/{}", segment(run))).await?;
            if json_out {
                output::print_json(&answer)?
            } else {
                output::run_details(&answer)?
            }
            Ok(exit::OK)
        }
        Command::Logs {
            job,
            follow,
            tail,
            client,
        } => {
            let (client, json_out) = client_for(&cli, client)?;
            logs(&client, job, *follow, *tail, json_out).await
        }
        Command::Rerun {
            run,
            failed,
            wait,
            follow,
            abort_on_interrupt,
            client,
        } => {
            let (client, json_out) = client_for(&cli, client)?;
            let body = if *failed {
                json!({ "only": "failed" })
            } else {
                json!({})
            };
            let answer = client
                .post(&format!("/api/runs/{}/rerun", segment(run)), &body)
                .await?;
            let run_id = answer["runId"].as_str().unwrap_or_default().to_string();
            if !(*wait || *follow) {
                if json_out {
                    output::print_json(&answer)?;
                } else {
                    term::out(&run_id)?;
                }
                return Ok(exit::OK);
            }
            if !json_out {
                term::err(format_args!(
                    "run {run_id} queued (re-run of {})",
                    answer["rerunOf"].as_str().unwrap_or(run)
                ));
            }
            let how = Watch {
                follow: *follow,
                json: json_out,
                abort_on_interrupt: *abort_on_interrupt,
                quiet: false,
            };
            wait::watch(&client, &run_id, how).await
        }
        Command::Abort { run, client } => {
            let (client, json_out) = client_for(&cli, client)?;
            let answer = client
                .post(&format!("/api/runs/{}/abort", segment(run)), &json!({}))
                .await?;
            if json_out {
                output::print_json(&answer)?;
            } else {
                let id = answer["runId"].as_str().unwrap_or(run);
                let (queued, running) = (
                    answer["queuedAborted"].as_u64().unwrap_or(0),
                    answer["runningStopping"].as_u64().unwrap_or(0),
                );
                if queued + running == 0 {
                    term::out(format_args!("run {id} was already aborted"))?;
                } else {
                    term::out(format_args!(
                        "run {id} aborted: {queued} queued job(s) aborted, {running} running \
                         job(s) told to stop (one that finishes first keeps its result)"
                    ))?;
                }
            }
            Ok(exit::OK)
        }
        Command::Pause { pipeline, client } | Command::Resume { pipeline, client } => {
            let (client, json_out) = client_for(&cli, client)?;
            let verb = if matches!(cli.command, Command::Pause { .. }) {
                "pause"
            } else {
                "resume"
            };
            let answer = client
                .post(
                    &format!("/api/pipelines/{}/{verb}", segment(pipeline)),
                    &json!({}),
                )
                .await?;
            if json_out {
                output::print_json(&answer)?;
            } else {
                let state = if answer["paused"] == true {
                    "paused"
                } else {
                    "resumed"
                };
                let already = if answer["changed"] == false {
                    " (already)"
                } else {
                    ""
                };
                term::out(format_args!("pipeline {pipeline} {state}{already}"))?;
            }
            Ok(exit::OK)
        }
        Command::Pipelines { client } => {
            let (client, json_out) = client_for(&cli, client)?;
            let answer = client.get("/api/pipelines").await?;
            if json_out {
                output::print_json(&answer)?
            } else {
                output::pipelines_table(&answer)?
            }
            Ok(exit::OK)
        }
        Command::Workers { client } => {
            let (client, json_out) = client_for(&cli, client)?;
            let answer = client.get("/api/workers").await?;
            if json_out {
                output::print_json(&answer)?
            } else {
                output::workers_table(&answer)?
            }
            Ok(exit::OK)
        }
    }
}

/// `runyard logs ID`: a job's output; for a run id, every job of the run (a sharded
/// run's lines prefixed `[sN]`, the finalizer's `[finalize]`, as `--follow` does).
async fn logs(
    client: &Client,
    id: &str,
    follow: bool,
    tail: Option<usize>,
    json_out: bool,
) -> anyhow::Result<u8> {
    // A job id names its part; a bare id is a run id (or a single-shard run's job id,
    // which is the same): the run says which jobs it has.
    let jobs: Vec<(String, Option<String>)> = if id.contains(':') {
        vec![(id.to_string(), None)]
    } else {
        let run = client.get(&format!("/api/runs/{}", segment(id))).await?;
        let run_id = run["runId"].as_str().unwrap_or(id).to_string();
        let mut jobs: Vec<(String, Option<String>)> = Vec::new();
        let shards = run["jobs"].as_array().cloned().unwrap_or_default();
        let prefixed = shards.len() > 1 || run["finalizer"].is_object();
        if follow && prefixed {
            let how = Watch {
                follow: true,
                json: false,
                abort_on_interrupt: false,
                quiet: true,
            };
            return wait::watch(client, &run_id, how).await;
        }
        for job in shards
            .iter()
            .chain(run["finalizer"].as_object().map(|_| &run["finalizer"]))
        {
            let jid = job["id"].as_str().unwrap_or_default().to_string();
            let label = if job["kind"] == "finalize" {
                "finalize".to_string()
            } else {
                format!("s{}", job["shardIndex"])
            };
            jobs.push((jid, prefixed.then_some(label)));
        }
        jobs
    };
    if follow {
        let (job, _) = &jobs[0];
        let status = wait::follow_job(client, job, tail, None).await?;
        return Ok(exit::of_status(&status));
    }
    let mut query = Vec::new();
    if let Some(n) = tail {
        query.push(("tail", n.to_string()));
    }
    // A finished job that ran more than once (a retry, a requeue after its node died)
    // is replayed from its stream, whose lines name their execution, so each later
    // execution is set apart.
    let run_id = jobs[0].0.split(':').next().unwrap_or_default();
    let executions = if json_out {
        Value::Null
    } else {
        client
            .get(&format!("/api/runs/{}", segment(run_id)))
            .await
            .map(|run| run["attempts"].clone())
            .unwrap_or(Value::Null)
    };
    let mut answers = Vec::new();
    for (job, prefix) in &jobs {
        let runs = executions[job.as_str()].as_array();
        let finished = runs
            .and_then(|r| r.last())
            .is_some_and(|e| e["outcome"] != "running");
        if runs.is_some_and(|r| r.len() > 1) && finished {
            wait::stream_job(client, job, tail, prefix.as_deref(), true).await?;
            continue;
        }
        let answer = client
            .get_query(&format!("/api/jobs/{}/logs", segment(job)), &query)
            .await?;
        if json_out {
            answers.push(answer);
            continue;
        }
        let p = prefix
            .as_ref()
            .map(|p| format!("[{p}] "))
            .unwrap_or_default();
        for line in answer["stdout"].as_array().into_iter().flatten() {
            term::out(format_args!("{p}{}", line.as_str().unwrap_or_default()))?;
        }
        for line in answer["stderr"].as_array().into_iter().flatten() {
            term::err(format_args!("{p}{}", line.as_str().unwrap_or_default()));
        }
    }
    if json_out {
        // One job: its answer as before; several: `{"jobs": [...]}`.
        match answers.len() {
            1 => output::print_json(&answers[0])?,
            _ => output::print_json(&json!({ "jobs": answers }))?,
        }
    }
    Ok(exit::OK)
}

/// `runyard man`: runyard.1 to stdout, or every page into `dir`.
fn man(dir: Option<&std::path::Path>) -> anyhow::Result<u8> {
    let cmd = Cli::command();
    match dir {
        None => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut buf)?;
            term::out(String::from_utf8_lossy(&buf).trim_end())?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("writing manual pages into {}", dir.display()))?;
        }
    }
    Ok(exit::OK)
}

/// The config at `path` with the environment applied, as `serve` and `check` read it.
fn load_settings(path: &std::path::Path) -> anyhow::Result<Settings> {
    Settings::load(path).map_err(|e| match e {
        crate::config::ConfigError::Read { path, source }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            anyhow::anyhow!(
                "config file {} not found (pass -c PATH; examples/runyard.toml is a start)",
                path.display()
            )
        }
        other => anyhow::anyhow!(other),
    })
}

async fn serve(config: PathBuf, listen: Option<String>) -> anyhow::Result<u8> {
    let mut settings = load_settings(&config)?;
    if let Some(addr) = listen {
        let addr: std::net::SocketAddr = addr
            .parse()
            .with_context(|| format!("invalid --listen address {addr:?}"))?;
        anyhow::ensure!(
            addr.ip().is_loopback() || settings.auth.required(),
            "--listen {addr} is not a loopback address: set [auth] tokens before listening beyond this host"
        );
        settings.server.listen = addr;
    }
    let listener = tokio::net::TcpListener::bind(settings.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.server.listen))?;
    if settings.server.node_name.is_none() {
        let port = listener.local_addr()?.port();
        settings.server.node_name = Some(crate::config::default_node_name(
            &crate::executor::process::hostname(),
            port,
        ));
    }
    // Descendants that escape a job's process group are re-parented to us, to be swept.
    if let Err(e) = crate::executor::reaper::enable() {
        tracing::warn!(
            "cannot become a child subreaper; setsid escapees of jobs will outlive them: {e}"
        );
    }
    crate::serve::run(settings, listener, shutdown_signal()).await?;
    Ok(exit::OK)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
