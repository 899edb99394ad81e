//! Watching a run to its end: `trigger --wait` / `--follow`, `runyard wait RUN`, and
//! `runyard logs -f` of a sharded run.
//!
//! The run is polled (a client may be far from the server; one small GET every 200 ms
//! is cheaper than holding an event stream per watcher). Each shard gets a progress
//! bar on stderr (redrawn in place on a terminal, one line per change otherwise);
//! retries are announced as they happen; with `follow` every started job's output is
//! printed as it arrives, prefixed by its shard, with `::progress` lines rendered. At
//! the end comes a summary per shard and, for a failed one, the command that shows
//! its log. The exit code is the run's status: 0 completed, 1 failed, 130 aborted.
//!
//! A server that stops answering after the run was seen (a restart, a crash and its
//! recovery) is asked again for up to a minute: the run outlives the node's process.
//!
//! Ctrl-C (or SIGTERM) stops the *watching*, not the run: the run goes on on the
//! server, and the message says how to abort it. With `--abort-on-interrupt` (for CI,
//! where a cancelled job should not leave work running) the run is aborted and
//! watched until it has stopped; a second interrupt stops at once.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinSet;

use super::client::{Client, ClientError, segment};
use super::exit;
use super::term;
use super::wait_view::{bar, label, render_progress, retry_line, summary};

const POLL: Duration = Duration::from_millis(200);
/// How long a wait keeps asking a server that went away after it saw the run.
const RECONNECT_FOR: Duration = Duration::from_secs(60);
const RECONNECT_POLL: Duration = Duration::from_secs(1);

/// How to watch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Watch {
    /// Print the jobs' output as it arrives (no bars).
    pub follow: bool,
    /// Print the final run as JSON on stdout instead of bars and a summary.
    pub json: bool,
    /// Abort the run when interrupted, instead of leaving it running.
    pub abort_on_interrupt: bool,
    /// Only the jobs' output: no bars, no summary (`logs -f RUN`).
    pub quiet: bool,
}

/// Prints one job's output stream until the job ends; returns its final status.
pub async fn follow_job(
    client: &Client,
    job: &str,
    tail: Option<usize>,
    prefix: Option<&str>,
) -> Result<String, ClientError> {
    stream_job(client, job, tail, prefix, false).await
}

/// A job's log from its stream (stored lines, then live ones until it ends), each later
/// execution set apart on stderr; `verbatim` prints `::progress` lines as stored.
pub async fn stream_job(
    client: &Client,
    job: &str,
    tail: Option<usize>,
    prefix: Option<&str>,
    verbatim: bool,
) -> Result<String, ClientError> {
    let mut path = format!("/api/jobs/{}/logs/stream", segment(job));
    if let Some(n) = tail {
        path.push_str(&format!("?tail={n}"));
    }
    let p = prefix.map(|p| format!("[{p}] ")).unwrap_or_default();
    let mut status = String::from("failed");
    let mut execution: Option<i64> = None;
    client
        .sse(&path, |msg| match msg.event.as_str() {
            "log" => {
                let v: Value = serde_json::from_str(&msg.data).unwrap_or(Value::Null);
                let line = v["line"].as_str().unwrap_or_default();
                // Lines of a later execution (a retry, or a requeue after its node died)
                // are set apart, on stderr so stdout stays the job's own output.
                if let Some(seq) = v["claimSeq"].as_i64() {
                    if execution.is_some_and(|e| e != seq) {
                        term::err(format_args!("{p}--- next execution (claim {seq}) ---"));
                    }
                    execution = Some(seq);
                }
                if v["stream"] == "stderr" {
                    term::err(format_args!("{p}{line}"));
                } else {
                    match render_progress(line).filter(|_| !verbatim) {
                        Some(shown) => term::out(format_args!("{p}{shown}"))?,
                        None => term::out(format_args!("{p}{line}"))?,
                    }
                }
                Ok(true)
            }
            "end" => {
                let v: Value = serde_json::from_str(&msg.data).unwrap_or(Value::Null);
                status = v["status"].as_str().unwrap_or("failed").to_string();
                Ok(false)
            }
            _ => Ok(true),
        })
        .await?;
    Ok(status)
}

/// SIGINT and SIGTERM, caught from the moment this is built (not from the first
/// await): an interrupt right after the first bar is drawn is ours, never a kill.
struct Interrupts(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Interrupts {
    fn install() -> Interrupts {
        use tokio::signal::unix::{SignalKind, signal};
        Interrupts(
            signal(SignalKind::interrupt())
                .ok()
                .zip(signal(SignalKind::terminate()).ok()),
        )
    }

    /// The next interrupt (never, if the handlers could not be installed).
    async fn recv(&mut self) {
        match &mut self.0 {
            Some((int, term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            None => std::future::pending().await,
        }
    }
}

/// Watches `run_id` (a full id or a unique prefix) to its end; returns the exit code.
pub async fn watch(client: &Client, run_id: &str, how: Watch) -> anyhow::Result<u8> {
    // Installed before the first request, so an early Ctrl-C is ours, not a kill.
    let mut interrupts = Interrupts::install();
    let colour = term::colour_on_stderr();
    let tty = colour || std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bars = !how.follow && !how.json && !how.quiet;
    let redraw = bars && tty;
    let mut followers: JoinSet<Result<String, ClientError>> = JoinSet::new();
    let mut followed = std::collections::HashSet::new();
    let mut attempts: HashMap<String, u64> = HashMap::new();
    let mut drawn_lines = 0usize;
    let mut last_lines: Vec<String> = Vec::new();
    let mut aborting = false;
    let mut run_id = run_id.to_string();
    let mut lost_since: Option<std::time::Instant> = None;
    let run = loop {
        let run = match client.get(&format!("/api/runs/{}", segment(&run_id))).await {
            Ok(run) => {
                if lost_since.take().is_some() {
                    term::err("reached the server again");
                }
                run
            }
            // The node restarting (a deploy, a crash and recovery) must not end a wait
            // that already saw the run: the run survives it, so keep asking for a while.
            Err(e @ ClientError::Unreachable { .. }) if !attempts.is_empty() => {
                let since = *lost_since.get_or_insert_with(|| {
                    term::err(format_args!(
                        "{e}\nretrying for up to {}s",
                        RECONNECT_FOR.as_secs()
                    ));
                    std::time::Instant::now()
                });
                if since.elapsed() > RECONNECT_FOR {
                    return Err(e.into());
                }
                tokio::select! {
                    _ = tokio::time::sleep(RECONNECT_POLL) => continue,
                    _ = interrupts.recv() => return Ok(exit::ABORTED),
                }
            }
            Err(e) => return Err(e.into()),
        };
        // A prefix resolves to the full id on the first answer.
        if let Some(full) = run["runId"].as_str() {
            run_id = full.to_string();
        }
        let jobs: Vec<Value> = run["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(run["finalizer"].as_object().map(|_| &run["finalizer"]))
            .cloned()
            .collect();
        let mut news = Vec::new();
        for job in &jobs {
            let id = job["id"].as_str().unwrap_or_default().to_string();
            let attempt = job["attempt"].as_u64().unwrap_or(1);
            let seen = attempts.entry(id.clone()).or_insert(1);
            if let Some(line) = retry_line(job, *seen) {
                news.push(line);
            }
            *seen = (*seen).max(attempt);
            let started = job["status"] != "queued" || attempt > 1;
            if how.follow && started && followed.insert(id.clone()) {
                let c = client.clone();
                let prefix = (jobs.len() > 1 || job["kind"] == "finalize").then(|| label(job));
                followers.spawn(async move { follow_job(&c, &id, None, prefix.as_deref()).await });
            }
        }
        while let Some(done) = followers.try_join_next() {
            if let Ok(Err(ClientError::Closed(closed))) = done {
                return Err(closed.into());
            }
        }
        if !how.json && !how.quiet {
            let lines: Vec<String> = if bars {
                let width = jobs.iter().map(|j| label(j).len()).max().unwrap_or(2);
                jobs.iter().map(|j| bar(j, width, colour)).collect()
            } else {
                Vec::new()
            };
            if redraw {
                let mut frame = String::new();
                if drawn_lines > 0 {
                    frame.push_str(&format!("\x1b[{drawn_lines}A"));
                }
                for l in news.iter().chain(&lines) {
                    frame.push_str(&format!("\x1b[2K{l}\n"));
                }
                term::err_raw(&frame);
                drawn_lines = lines.len();
            } else {
                for l in &news {
                    term::err(l);
                }
                for (i, l) in lines.iter().enumerate() {
                    if last_lines.get(i) != Some(l) {
                        term::err(l);
                    }
                }
            }
            last_lines = lines;
        }
        if run["finishedAt"].is_string() {
            break run;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = interrupts.recv() => {
                if aborting || !how.abort_on_interrupt {
                    if !aborting {
                        term::err(format_args!(
                            "\nstopped waiting; run {run_id} goes on on the server.\n\
                             abort it with: runyard abort {run_id}"
                        ));
                    }
                    return Ok(exit::ABORTED);
                }
                term::err(format_args!("\ninterrupted: aborting run {run_id} (interrupt again to stop waiting)"));
                aborting = true;
                match client.post(&format!("/api/runs/{}/abort", segment(&run_id)), &serde_json::json!({})).await {
                    Ok(_) => {}
                    // Finished meanwhile: the next poll shows how.
                    Err(ClientError::Refused { status: 409, .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    };
    while let Some(done) = followers.join_next().await {
        if let Ok(Err(ClientError::Closed(closed))) = done {
            return Err(closed.into());
        }
    }
    let status = run["status"].as_str().unwrap_or("failed").to_string();
    if how.json {
        term::out(serde_json::to_string_pretty(&run).unwrap_or_default())?;
    } else if !how.quiet {
        summary(&run, colour);
    }
    Ok(exit::of_status(&status))
}
