//! The client commands, one function each: what each sends to a node and how it
//! prints the answer (`--json`: the answer as it came).

use anyhow::Context;
use clap::{Args, CommandFactory};
use serde_json::{Map, Value, json};

use super::client::{ClientError, segment};
use super::wait::{self, Watch};
use super::{Cli, ClientArgs, client_for, complete, exit, output, term};

/// `runyard trigger`.
#[derive(Args, Debug)]
pub(super) struct TriggerArgs {
    /// Pipeline name.
    pub(super) pipeline: String,
    /// A parameter, `key=value` (repeatable).
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE")]
    pub(super) params: Vec<String>,
    /// Shard count (default: the pipeline's).
    #[arg(long)]
    pub(super) shards: Option<u32>,
    /// Wait for the run to end, drawing a progress bar per shard; exit 0/1/130 by its status.
    #[arg(long)]
    pub(super) wait: bool,
    /// Print the run's output as it happens (implies --wait).
    #[arg(long)]
    pub(super) follow: bool,
    /// On Ctrl-C or SIGTERM while waiting, abort the run instead of leaving it running.
    #[arg(long)]
    pub(super) abort_on_interrupt: bool,
    /// Make retries of this trigger return the same run.
    #[arg(long)]
    pub(super) idempotency_key: Option<String>,
    /// POST the run's summary here when it ends (a signed completion webhook).
    #[arg(long, value_name = "URL")]
    pub(super) callback_url: Option<String>,
    /// Wait for this run to end first (repeatable; a run id or a unique prefix): the new
    /// run is `waiting` until every one has ended, then queued or skipped.
    #[arg(long, value_name = "RUN")]
    pub(super) after: Vec<String>,
    /// With --after: go only if they all completed (`success`, the default), only if one
    /// did not (`failure`), or whatever they ended as (`always`).
    #[arg(long, value_name = "WHEN", value_parser = ["success", "failure", "always"])]
    pub(super) after_when: Option<String>,
    #[command(flatten)]
    pub(super) client: ClientArgs,
}

/// `runyard rerun`.
#[derive(Args, Debug)]
pub(super) struct RerunArgs {
    /// Run id, or a unique prefix of one (at least 8 characters).
    pub(super) run: String,
    /// Only the shards that failed or were aborted; completed ones keep their outcome.
    #[arg(long)]
    pub(super) failed: bool,
    /// Wait for the new run to end, drawing a progress bar per shard; exit 0/1/130 by its status.
    #[arg(long)]
    pub(super) wait: bool,
    /// Print the new run's output as it happens (implies --wait).
    #[arg(long)]
    pub(super) follow: bool,
    /// On Ctrl-C or SIGTERM while waiting, abort the run instead of leaving it running.
    #[arg(long)]
    pub(super) abort_on_interrupt: bool,
    #[command(flatten)]
    pub(super) client: ClientArgs,
}

/// `runyard trigger PIPELINE`: queues a run; prints its id, or watches it to its end.
pub(super) async fn trigger(cli: &Cli, a: &TriggerArgs) -> anyhow::Result<u8> {
    let (client, json_out) = client_for(cli, &a.client)?;
    let mut parameters = Map::new();
    for p in &a.params {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("parameter {p:?} is not KEY=VALUE"))?;
        parameters.insert(k.to_string(), Value::String(v.to_string()));
    }
    if super::workflow::is_workflow(&client, &a.pipeline).await? {
        return super::workflow::trigger(&client, a, parameters, json_out).await;
    }
    let mut body = json!({ "parameters": parameters });
    if let Some(n) = a.shards {
        body["shards"] = json!(n);
    }
    if let Some(k) = &a.idempotency_key {
        body["idempotencyKey"] = json!(k);
    }
    if let Some(url) = &a.callback_url {
        body["callbackUrl"] = json!(url);
    }
    if !a.after.is_empty() {
        body["after"] = json!(a.after);
    }
    if let Some(when) = &a.after_when {
        body["afterWhen"] = json!(when);
    }
    let answer = client
        .post(
            &format!("/api/pipelines/{}/trigger", segment(&a.pipeline)),
            &body,
        )
        .await?;
    let watch = Watch {
        follow: a.follow,
        json: json_out,
        abort_on_interrupt: a.abort_on_interrupt,
        quiet: false,
    };
    queued(&client, &answer, a.wait || a.follow, watch, String::new()).await
}

/// What `trigger` and `rerun` do with their 202: print the run id (the answer with
/// `--json`), or say it is queued (`also`: what else to say) and watch it to its end.
async fn queued(
    client: &super::client::Client,
    answer: &Value,
    wait: bool,
    watch: Watch,
    also: String,
) -> anyhow::Result<u8> {
    let run_id = answer["runId"].as_str().unwrap_or_default().to_string();
    if !wait {
        if watch.json {
            output::print_json(answer)?;
        } else {
            term::out(&run_id)?;
        }
        return Ok(exit::OK);
    }
    if !watch.json {
        let status = answer["status"].as_str().unwrap_or("queued");
        term::err(format_args!("run {run_id} {status}{also}"));
    }
    wait::watch(client, &run_id, watch).await
}

/// `runyard wait RUN`: watches a run started elsewhere to its end.
pub(super) async fn wait(
    cli: &Cli,
    run: &str,
    follow: bool,
    abort_on_interrupt: bool,
    args: &ClientArgs,
) -> anyhow::Result<u8> {
    let (client, json_out) = client_for(cli, args)?;
    if let Err(ClientError::Refused { status: 404, .. }) =
        client.get(&format!("/api/runs/{}", segment(run))).await
        && super::workflow::workflow_run(&client, run).await?.is_some()
    {
        return super::workflow::watch(&client, run, follow, json_out).await;
    }
    let how = Watch {
        follow,
        json: json_out,
        abort_on_interrupt,
        quiet: false,
    };
    wait::watch(&client, run, how).await
}

/// `runyard runs`: one page of runs, newest first.
pub(super) async fn runs(
    cli: &Cli,
    status: Option<&str>,
    pipeline: Option<&str>,
    limit: u32,
    args: &ClientArgs,
) -> anyhow::Result<u8> {
    let (client, json_out) = client_for(cli, args)?;
    let mut query = vec![("limit", limit.to_string())];
    if let Some(s) = status {
        query.push(("status", s.to_string()));
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

/// `runyard show RUN`: one run, its jobs and deliveries.
pub(super) async fn show(cli: &Cli, run: &str, args: &ClientArgs) -> anyhow::Result<u8> {
    let (client, json_out) = client_for(cli, args)?;
    let answer = match client.get(&format!("/api/runs/{}", segment(run))).await {
        Err(ClientError::Refused { status: 404, .. })
            if let Some(w) = super::workflow::workflow_run(&client, run).await? =>
        {
            if json_out {
                output::print_json(&w)?
            } else {
                super::workflow::details(&w)?
            }
            return Ok(exit::OK);
        }
        other => other?,
    };
    if json_out {
        output::print_json(&answer)?
    } else {
        output::run_details(&answer)?
    }
    Ok(exit::OK)
}

/// `runyard rerun RUN`: a new run of a finished one (all shards, or `--failed` ones).
pub(super) async fn rerun(cli: &Cli, a: &RerunArgs) -> anyhow::Result<u8> {
    let (client, json_out) = client_for(cli, &a.client)?;
    let body = if a.failed {
        json!({ "only": "failed" })
    } else {
        json!({})
    };
    let answer = match client
        .post(&format!("/api/runs/{}/rerun", segment(&a.run)), &body)
        .await
    {
        Err(ClientError::Refused { status: 404, .. })
            if super::workflow::workflow_run(&client, &a.run)
                .await?
                .is_some() =>
        {
            let answer = client
                .post(
                    &format!("/api/workflow-runs/{}/rerun", segment(&a.run)),
                    &body,
                )
                .await?;
            let id = answer["workflowRunId"].as_str().unwrap_or_default();
            if !(a.wait || a.follow) {
                if json_out {
                    output::print_json(&answer)?;
                } else {
                    term::out(id)?;
                }
                return Ok(exit::OK);
            }
            return super::workflow::watch(&client, id, a.follow, json_out).await;
        }
        other => other?,
    };
    let also = format!(
        " (re-run of {})",
        answer["rerunOf"].as_str().unwrap_or(&a.run)
    );
    let watch = Watch {
        follow: a.follow,
        json: json_out,
        abort_on_interrupt: a.abort_on_interrupt,
        quiet: false,
    };
    queued(&client, &answer, a.wait || a.follow, watch, also).await
}

/// `runyard abort RUN`.
pub(super) async fn abort(cli: &Cli, run: &str, args: &ClientArgs) -> anyhow::Result<u8> {
    let (client, json_out) = client_for(cli, args)?;
    let answer = match client
        .post(&format!("/api/runs/{}/abort", segment(run)), &json!({}))
        .await
    {
        Err(ClientError::Refused { status: 404, .. })
            if super::workflow::workflow_run(&client, run).await?.is_some() =>
        {
            let answer = client
                .post(
                    &format!("/api/workflow-runs/{}/abort", segment(run)),
                    &json!({}),
                )
                .await?;
            if json_out {
                output::print_json(&answer)?;
            } else {
                let n = answer["abortedRuns"].as_array().map_or(0, Vec::len);
                term::out(format_args!(
                    "workflow run {} aborted: {n} step run(s) aborted now",
                    answer["workflowRunId"].as_str().unwrap_or(run)
                ))?;
            }
            return Ok(exit::OK);
        }
        other => other?,
    };
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

/// `runyard pause PIPELINE` (`verb` `pause`) and `runyard resume PIPELINE` (`resume`).
pub(super) async fn pause_or_resume(
    cli: &Cli,
    verb: &str,
    pipeline: &str,
    args: &ClientArgs,
) -> anyhow::Result<u8> {
    let (client, json_out) = client_for(cli, args)?;
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

/// `runyard pipelines` and `runyard workers`: a list from `path`, as a table.
pub(super) async fn list(
    cli: &Cli,
    path: &str,
    table: fn(&Value) -> Result<(), term::Closed>,
    args: &ClientArgs,
) -> anyhow::Result<u8> {
    let (client, json_out) = client_for(cli, args)?;
    let answer = client.get(path).await?;
    if json_out {
        output::print_json(&answer)?
    } else {
        table(&answer)?
    }
    Ok(exit::OK)
}

/// `runyard completions SHELL`: the static script and the dynamic part.
pub(super) fn completions(shell: clap_complete::Shell) -> anyhow::Result<u8> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "runyard", &mut buf);
    term::out(String::from_utf8_lossy(&buf).trim_end())?;
    if let Some(dynamic) = complete::dynamic(shell) {
        term::out(dynamic.trim_end())?;
    }
    Ok(exit::OK)
}

/// `runyard __complete WHAT`: words from the server for the completion scripts.
pub(super) async fn complete_words(cli: &Cli, what: &str, args: &ClientArgs) -> anyhow::Result<u8> {
    let (client, _) = client_for(cli, args)?;
    complete::words(&client, what).await
}

/// `runyard man`: runyard.1 to stdout, or every page into `dir`.
pub(super) fn man(dir: Option<&std::path::Path>) -> anyhow::Result<u8> {
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
