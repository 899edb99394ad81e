//! `runyard logs ID`: one job's output, or every job of a run, once or followed.

use serde_json::{Value, json};

use super::client::{Client, segment};
use super::wait::{self, Watch};
use super::{exit, output, term};

/// `runyard logs ID`: a job's output; for a run id, every job of the run (a sharded
/// run's lines prefixed `[sN]`, the finalizer's `[finalize]`, as `--follow` does).
pub(super) async fn logs(
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
