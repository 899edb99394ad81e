//! `trigger --wait` / `--follow`: watch a run to its end.
//!
//! Draws one progress bar per shard (redrawn in place on a terminal, one line
//! per change otherwise) and returns the exit code for the run's status:
//! 0 completed, 1 failed, 130 aborted.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::Value;

use super::client::Client;

const POLL: Duration = Duration::from_millis(200);

fn bar(job: &Value) -> String {
    let pct = job["progress"].as_u64().unwrap_or(0).min(100) as usize;
    let status = job["status"].as_str().unwrap_or("?");
    let pct = if status == "completed" { 100 } else { pct };
    let filled = pct * 24 / 100;
    let shard = format!("s{}", job["shardIndex"]);
    let msg = job["progressMessage"].as_str().unwrap_or("");
    let msg: String = msg.chars().take(40).collect();
    format!(
        "{shard:>4} [{}{}] {pct:>3}% {status:<9} {msg}",
        "#".repeat(filled),
        "-".repeat(24 - filled)
    )
}

/// Waits for `run_id` to end; with `follow`, prints its jobs' output meanwhile.
pub async fn wait_for_run(
    client: &Client,
    run_id: &str,
    follow: bool,
    json_out: bool,
) -> anyhow::Result<u8> {
    let tty = std::io::stderr().is_terminal() && !json_out && !follow;
    let mut followers = Vec::new();
    let mut followed = std::collections::HashSet::new();
    let mut drawn_lines = 0usize;
    let mut last_lines: Vec<String> = Vec::new();
    let run = loop {
        let run = client
            .get(&format!("/api/runs/{}", super::client::segment(run_id)))
            .await?;
        let jobs: Vec<Value> = run["jobs"].as_array().cloned().unwrap_or_default();
        if follow {
            for job in &jobs {
                let id = job["id"].as_str().unwrap_or_default().to_string();
                let started = job["status"] != "queued" || job["attempt"].as_u64().unwrap_or(1) > 1;
                if started && followed.insert(id.clone()) {
                    let c = client.clone();
                    let prefix = (jobs.len() > 1).then(|| format!("s{}", job["shardIndex"]));
                    followers.push(tokio::spawn(async move {
                        c.follow_logs(&id, None, prefix.as_deref()).await
                    }));
                }
            }
        }
        if !json_out && !follow {
            let lines: Vec<String> = jobs.iter().map(bar).collect();
            if tty {
                let mut err = std::io::stderr().lock();
                if drawn_lines > 0 {
                    let _ = write!(err, "\x1b[{drawn_lines}A");
                }
                for l in &lines {
                    let _ = writeln!(err, "\x1b[2K{l}");
                }
                drawn_lines = lines.len();
            } else {
                for (i, l) in lines.iter().enumerate() {
                    if last_lines.get(i) != Some(l) {
                        eprintln!("{l}");
                    }
                }
            }
            last_lines = lines;
        }
        if run["finishedAt"].is_string() {
            break run;
        }
        tokio::time::sleep(POLL).await;
    };
    for f in followers {
        let _ = f.await;
    }
    let status = run["status"].as_str().unwrap_or("failed").to_string();
    if json_out {
        super::output::print_json(&run);
    } else {
        eprintln!("run {run_id} {status}");
    }
    Ok(match status.as_str() {
        "completed" => 0,
        "aborted" => 130,
        _ => 1,
    })
}
