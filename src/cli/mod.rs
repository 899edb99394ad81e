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
mod commands;
mod complete;
mod exit;
mod logs;
mod output;
mod serve;
mod term;
mod wait;
mod wait_view;
mod workflow;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use client::{Client, ClientError};

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
    /// Trigger a run of a pipeline, or of a workflow; prints its id (or waits for it).
    #[command(after_help = exit::HELP)]
    Trigger(commands::TriggerArgs),
    /// Wait for a run (or workflow run) started elsewhere; exit 0/1/130 by its status.
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
    /// List workflow runs, newest first.
    WorkflowRuns {
        /// Only workflow runs with this status.
        #[arg(long)]
        status: Option<String>,
        /// Only runs of this workflow.
        #[arg(long)]
        workflow: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one run and its jobs, or a workflow run and its steps.
    Show {
        /// Run or workflow run id, or a unique prefix of one (at least 8 characters).
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
    Rerun(commands::RerunArgs),
    /// Abort a run (stop every shard's process tree), or every step run of a workflow run.
    Abort {
        /// Run or workflow run id, or a unique prefix of one (at least 8 characters).
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
            serve::serve(config.clone(), listen.clone()).await
        }
        Command::Check { config } => check::check(config).await,
        Command::Completions { shell } => commands::completions(*shell),
        Command::Complete { what, client } => commands::complete_words(&cli, what, client).await,
        Command::Man { dir } => commands::man(dir.as_deref()),
        Command::Trigger(a) => commands::trigger(&cli, a).await,
        Command::Wait {
            run,
            follow,
            abort_on_interrupt,
            client,
        } => commands::wait(&cli, run, *follow, *abort_on_interrupt, client).await,
        Command::Runs {
            status,
            pipeline,
            limit,
            client,
        } => commands::runs(&cli, status.as_deref(), pipeline.as_deref(), *limit, client).await,
        Command::WorkflowRuns {
            status,
            workflow,
            limit,
            client,
        } => {
            let (client, json_out) = client_for(&cli, client)?;
            let filter = workflow::Filter {
                status: status.as_deref(),
                workflow: workflow.as_deref(),
                limit: *limit,
            };
            workflow::list(&client, filter, json_out).await
        }
        Command::Show { run, client } => commands::show(&cli, run, client).await,
        Command::Logs {
            job,
            follow,
            tail,
            client,
        } => {
            let (client, json_out) = client_for(&cli, client)?;
            logs::logs(&client, job, *follow, *tail, json_out).await
        }
        Command::Rerun(a) => commands::rerun(&cli, a).await,
        Command::Abort { run, client } => commands::abort(&cli, run, client).await,
        Command::Pause { pipeline, client } => {
            commands::pause_or_resume(&cli, "pause", pipeline, client).await
        }
        Command::Resume { pipeline, client } => {
            commands::pause_or_resume(&cli, "resume", pipeline, client).await
        }
        Command::Pipelines { client } => {
            commands::list(&cli, "/api/pipelines", output::pipelines_table, client).await
        }
        Command::Workers { client } => {
            commands::list(&cli, "/api/workers", output::workers_table, client).await
        }
    }
}
