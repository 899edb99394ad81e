//! The command line: `serve` runs a node; every other command is an HTTP
//! client of a node (`--server`, env `RUNYARD_URL`).
//!
//! Exit codes: 0 success; 1 a `--wait`ed run failed; 130 it was aborted;
//! 2 usage, connection or server errors.

mod client;
mod output;
mod wait;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::{Map, Value, json};

use crate::config::Settings;
use client::Client;

/// runyard: trigger, watch and abort durable runs of pipelines.
#[derive(Parser, Debug)]
#[command(name = "runyard", version, about)]
pub struct Cli {
    /// Server URL for client commands.
    #[arg(
        long,
        global = true,
        env = "RUNYARD_URL",
        default_value = "http://127.0.0.1:7878"
    )]
    server: String,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
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

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: read the config, open the store, serve the API, run jobs.
    Serve {
        /// Config file.
        #[arg(short, long, default_value = "runyard.toml")]
        config: PathBuf,
        /// Listen address (overrides `server.listen`; env RUNYARD_LISTEN).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Trigger a run of a pipeline.
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
        /// Make retries of this trigger return the same run.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// POST the run's summary here when it ends (a signed completion webhook).
        #[arg(long, value_name = "URL")]
        callback_url: Option<String>,
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
    },
    /// Show one run and its jobs.
    Show {
        /// Run id.
        run: String,
    },
    /// Print a job's output.
    Logs {
        /// Job id (a run id for single-shard runs, `RUN:sN` for shards).
        job: String,
        /// Keep printing new output until the job ends.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines (per stream without -f).
        #[arg(long)]
        tail: Option<usize>,
    },
    /// Abort a run.
    Abort {
        /// Run id.
        run: String,
    },
    /// List pipelines.
    Pipelines,
    /// List nodes.
    Workers,
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
        logs.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let client = Client::new(&cli.server)?;
    let json_out = cli.json;
    match cli.command {
        Command::Serve { config, listen } => serve(config, listen).await,
        Command::Trigger {
            pipeline,
            params,
            shards,
            wait,
            follow,
            idempotency_key,
            callback_url,
        } => {
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
                    &format!("/api/pipelines/{}/trigger", client::segment(&pipeline)),
                    &body,
                )
                .await?;
            let run_id = answer["runId"].as_str().unwrap_or_default().to_string();
            if !(wait || follow) {
                if json_out {
                    output::print_json(&answer);
                } else {
                    println!("{run_id}");
                }
                return Ok(0);
            }
            if !json_out {
                eprintln!("run {run_id} queued");
            }
            wait::wait_for_run(&client, &run_id, follow, json_out).await
        }
        Command::Runs {
            status,
            pipeline,
            limit,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(s) = status {
                query.push(("status", s));
            }
            let path = match &pipeline {
                Some(p) => format!("/api/pipelines/{}/jobs", client::segment(p)),
                None => "/api/runs".to_string(),
            };
            let answer = client.get_query(&path, &query).await?;
            if json_out {
                output::print_json(&answer)
            } else {
                output::runs_table(&answer)
            }
            Ok(0)
        }
        Command::Show { run } => {
            let answer = client
                .get(&format!("/api/runs/{}", client::segment(&run)))
                .await?;
            if json_out {
                output::print_json(&answer)
            } else {
                output::run_details(&answer)
            }
            Ok(0)
        }
        Command::Logs { job, follow, tail } => {
            if follow {
                client.follow_logs(&job, tail, None).await?;
                return Ok(0);
            }
            let mut query = Vec::new();
            if let Some(n) = tail {
                query.push(("tail", n.to_string()));
            }
            let answer = client
                .get_query(&format!("/api/jobs/{}/logs", client::segment(&job)), &query)
                .await?;
            if json_out {
                output::print_json(&answer);
            } else {
                for line in answer["stdout"].as_array().into_iter().flatten() {
                    println!("{}", line.as_str().unwrap_or_default());
                }
                for line in answer["stderr"].as_array().into_iter().flatten() {
                    eprintln!("{}", line.as_str().unwrap_or_default());
                }
            }
            Ok(0)
        }
        Command::Abort { run } => {
            let answer = client
                .post(
                    &format!("/api/runs/{}/abort", client::segment(&run)),
                    &json!({}),
                )
                .await?;
            if json_out {
                output::print_json(&answer);
            } else {
                println!(
                    "run {} aborted ({} job(s) stopped)",
                    answer["runId"].as_str().unwrap_or(&run),
                    answer["abortedJobs"]
                );
            }
            Ok(0)
        }
        Command::Pipelines => {
            let answer = client.get("/api/pipelines").await?;
            if json_out {
                output::print_json(&answer)
            } else {
                output::pipelines_table(&answer)
            }
            Ok(0)
        }
        Command::Workers => {
            let answer = client.get("/api/workers").await?;
            if json_out {
                output::print_json(&answer)
            } else {
                output::workers_table(&answer)
            }
            Ok(0)
        }
    }
}

async fn serve(config: PathBuf, listen: Option<String>) -> anyhow::Result<u8> {
    let mut settings = Settings::load(&config).map_err(|e| match e {
        crate::config::ConfigError::Read { path, source }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            anyhow::anyhow!(
                "config file {} not found (pass -c PATH; examples/runyard.toml is a start)",
                path.display()
            )
        }
        other => anyhow::anyhow!(other),
    })?;
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
    // Descendants that escape a job's process group are re-parented to us, to be swept.
    if let Err(e) = crate::executor::reaper::enable() {
        tracing::warn!(
            "cannot become a child subreaper; setsid escapees of jobs will outlive them: {e}"
        );
    }
    crate::serve::run(settings, listener, shutdown_signal()).await?;
    Ok(0)
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
