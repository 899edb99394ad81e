//! Workflows in the CLI: `runyard trigger NAME` when NAME is a workflow (pipelines and
//! workflows share one namespace), watching a workflow run to its end (`--wait`: each
//! step's status as it changes; `--follow`: each step's output, step by step, replayed
//! from the store so nothing is missed while an earlier step is shown), and the graph
//! as text for `runyard show`. The exit code is the workflow run's: 0 completed,
//! 1 failed, 130 aborted.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::client::{Client, ClientError, segment};
use super::commands::TriggerArgs;
use super::exit;
use super::output::print_json;
use super::term;
use super::wait::{self, Watch};
use crate::cli::output::short_id;

const POLL: Duration = Duration::from_millis(200);

/// Whether the server has a workflow called `name` (an older server without workflows
/// has none).
pub(super) async fn is_workflow(client: &Client, name: &str) -> Result<bool, ClientError> {
    match client.get("/api/workflows").await {
        Ok(list) => Ok(list["workflows"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|w| w["id"] == name)),
        Err(ClientError::Refused { status: 404, .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `runyard trigger WORKFLOW`: creates a workflow run; prints its id (the answer with
/// `--json`), or watches it to its end.
pub(super) async fn trigger(
    client: &Client,
    a: &TriggerArgs,
    parameters: serde_json::Map<String, Value>,
    json_out: bool,
) -> anyhow::Result<u8> {
    if a.shards.is_some() || !a.after.is_empty() || a.after_when.is_some() {
        anyhow::bail!(
            "{} is a workflow: --shards, --after and --after-when are for pipeline runs (each step's pipeline sets its shards)",
            a.pipeline
        );
    }
    if a.abort_on_interrupt {
        anyhow::bail!(
            "--abort-on-interrupt is for pipeline runs; abort a workflow run with `runyard abort ID`"
        );
    }
    let mut body = json!({ "parameters": parameters });
    if let Some(k) = &a.idempotency_key {
        body["idempotencyKey"] = json!(k);
    }
    if let Some(url) = &a.callback_url {
        body["callbackUrl"] = json!(url);
    }
    let answer = client
        .post(
            &format!("/api/workflows/{}/trigger", segment(&a.pipeline)),
            &body,
        )
        .await?;
    let id = answer["workflowRunId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !(a.wait || a.follow) {
        if json_out {
            print_json(&answer)?;
        } else {
            term::out(&id)?;
        }
        return Ok(exit::OK);
    }
    if !json_out {
        term::err(format_args!(
            "workflow run {id} {}",
            answer["status"].as_str().unwrap_or("queued")
        ));
    }
    watch(client, &id, a.follow, json_out).await
}

/// Watches a workflow run to its end; its exit code by status.
pub(super) async fn watch(
    client: &Client,
    id: &str,
    follow: bool,
    json_out: bool,
) -> anyhow::Result<u8> {
    let path = format!("/api/workflow-runs/{}", segment(id));
    if follow {
        // Step by step, needs first: each step's output from its first line (stored
        // lines, then live ones) until its run ends.
        let first = client.get(&path).await?;
        for step in first["steps"].as_array().into_iter().flatten() {
            let name = step["name"].as_str().unwrap_or_default();
            let run = step["runId"].as_str().unwrap_or_default();
            term::err(format_args!("── step {name} (run {run})"));
            let how = Watch {
                follow: true,
                json: false,
                abort_on_interrupt: false,
                quiet: true,
            };
            wait::watch(client, run, how).await?;
        }
    }
    let mut said: BTreeMap<String, String> = BTreeMap::new();
    let last = loop {
        let w = client.get(&path).await?;
        if !json_out && !follow {
            for step in w["steps"].as_array().into_iter().flatten() {
                let name = step["name"].as_str().unwrap_or_default().to_string();
                let status = step["status"].as_str().unwrap_or("pruned").to_string();
                if said.get(&name) != Some(&status) {
                    term::err(format_args!("step {name} {status}"));
                    said.insert(name, status);
                }
            }
        }
        if w["finishedAt"].is_string() {
            break w;
        }
        tokio::time::sleep(POLL).await;
    };
    if json_out {
        print_json(&last)?;
    } else {
        details(&last)?;
    }
    Ok(match last["status"].as_str() {
        Some("completed") => exit::OK,
        Some("aborted") => exit::ABORTED,
        _ => exit::FAILED,
    })
}

/// What `runyard workflow-runs` lists.
pub(super) struct Filter<'a> {
    pub(super) status: Option<&'a str>,
    pub(super) workflow: Option<&'a str>,
    pub(super) limit: u32,
}

/// `runyard workflow-runs`: one page of workflow runs, newest first.
pub(super) async fn list(client: &Client, f: Filter<'_>, json_out: bool) -> anyhow::Result<u8> {
    let mut query = vec![("limit", f.limit.to_string())];
    if let Some(s) = f.status {
        query.push(("status", s.to_string()));
    }
    if let Some(w) = f.workflow {
        query.push(("workflow", w.to_string()));
    }
    let answer = client.get_query("/api/workflow-runs", &query).await?;
    if json_out {
        print_json(&answer)?;
        return Ok(exit::OK);
    }
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let rows = answer["workflowRuns"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            let steps = w["steps"].as_array().map_or(&[][..], Vec::as_slice);
            let done = steps
                .iter()
                .filter(|st| st["finishedAt"].is_string())
                .count();
            vec![
                short_id(&s(&w["workflowRunId"])),
                s(&w["workflowRunId"]),
                s(&w["workflowId"]),
                s(&w["status"]),
                format!("{done}/{}", steps.len()),
                s(&w["triggeredBy"]),
                s(&w["createdAt"]),
            ]
        })
        .collect();
    super::output::table(
        &[
            "ID",
            "WORKFLOW RUN",
            "WORKFLOW",
            "STATUS",
            "STEPS",
            "BY",
            "CREATED",
        ],
        rows,
    )?;
    Ok(exit::OK)
}

/// A workflow run as text: its header, then each step (needs first) with its run's
/// status and shards, and the steps it waits for.
pub(super) fn details(w: &Value) -> Result<(), super::term::Closed> {
    let colour = term::colour_on_stdout();
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let id = s(&w["workflowRunId"]);
    term::out(format_args!(
        "workflow run  {id} (short id {})",
        short_id(&id)
    ))?;
    term::out(format_args!("workflow      {}", s(&w["workflowId"])))?;
    term::out(format_args!(
        "status        {}",
        term::status(&s(&w["status"]), 0, colour)
    ))?;
    term::out(format_args!("params        {}", w["parameters"]))?;
    if let Some(of) = w["rerunOf"].as_str() {
        term::out(format_args!("rerun of      {of}"))?;
    }
    term::out(format_args!("created       {}", s(&w["createdAt"])))?;
    term::out(format_args!("finished      {}", s(&w["finishedAt"])))?;
    term::out("")?;
    let steps: Vec<&Value> = w["steps"].as_array().into_iter().flatten().collect();
    let width = steps
        .iter()
        .map(|st| st["name"].as_str().unwrap_or_default().len())
        .max()
        .unwrap_or(4);
    for st in &steps {
        let name = s(&st["name"]);
        let status = st["status"].as_str().unwrap_or("pruned");
        let needs: Vec<String> = st["needs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(&s)
            .collect();
        let waits = if needs.is_empty() {
            String::new()
        } else {
            let when = st["when"].as_str().unwrap_or("success");
            let rule = if when == "success" {
                String::new()
            } else {
                format!(" ({when})")
            };
            format!("  ← {}{rule}", needs.join(", "))
        };
        let kept = if st["kept"] == true { " kept" } else { "" };
        term::out(format_args!(
            "  {name:<width$}  {}  {}/{}  run {}{kept}{waits}",
            term::status(status, 9, colour),
            st["shardsDone"],
            st["shardCount"],
            short_id(&s(&st["runId"])),
        ))?;
    }
    Ok(())
}

/// The workflow run `id` names, when it names one (a run id that is not a run's).
pub(super) async fn workflow_run(client: &Client, id: &str) -> Result<Option<Value>, ClientError> {
    match client
        .get(&format!("/api/workflow-runs/{}", segment(id)))
        .await
    {
        Ok(w) => Ok(Some(w)),
        Err(ClientError::Refused {
            status: 400 | 404, ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}
