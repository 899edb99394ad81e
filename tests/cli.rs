//! The `runyard` binary as users run it: client commands against a live node,
//! `--wait` exit codes, and config errors at start.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::TestServer;
use serde_json::{Value, json};

const PIPELINES: &str = r#"
[pipelines.ok]
command = ["sh", "-c", "echo ::progress 50 half; echo out; echo err >&2"]
shards = 2

[pipelines.bad]
command = ["sh", "-c", "exit 3"]

[pipelines.slow]
command = ["sleep", "60"]

[pipelines.greet]
command = ["echo", "hello {name}"]
[pipelines.greet.params.name]
pattern = "[a-z]+"
"#;

async fn cli(server: &TestServer, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runyard"));
    cmd.args(args)
        .env("RUNYARD_URL", &server.base)
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn trigger_wait_exits_by_run_status() {
    let s = TestServer::start("max_workers = 2", PIPELINES).await;
    let ok = cli(&s, &["trigger", "ok", "--wait"]).await;
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let progress = String::from_utf8_lossy(&ok.stderr);
    assert!(
        progress.contains("s0 [") && progress.contains("s1 ["),
        "a bar per shard: {progress}"
    );
    assert!(progress.contains("completed"));

    let bad = cli(&s, &["trigger", "bad", "--wait", "--json"]).await;
    assert_eq!(bad.status.code(), Some(1));
    let run: Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(
        (run["status"].clone(), run["jobs"][0]["exitCode"].clone()),
        (json!("failed"), json!(3))
    );

    // Abort a waited run from elsewhere: the waiting CLI exits 130.
    let mut events = s.events();
    let base = s.base.clone();
    let waiter = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_runyard"))
            .args(["trigger", "slow", "--wait"])
            .env("RUNYARD_URL", base)
            .output()
            .unwrap()
    });
    let started = events
        .wait_for(
            "job:started",
            |d| d["pipelineId"] == "slow",
            Duration::from_secs(20),
        )
        .await;
    let run_id = started.data["runId"].as_str().unwrap().to_string();
    let abort = cli(&s, &["abort", &run_id]).await;
    assert_eq!(abort.status.code(), Some(0));
    assert!(stdout(&abort).contains("aborted"));
    let waited = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(waited.status.code(), Some(130));
    s.stop().await;
}

#[tokio::test]
async fn client_commands_show_runs_logs_and_errors() {
    let s = TestServer::start("", PIPELINES).await;
    let t = cli(&s, &["trigger", "greet", "-p", "name=ada"]).await;
    assert_eq!(t.status.code(), Some(0));
    let run_id = stdout(&t).trim().to_string();
    let mut events = s.events();
    s.wait_run(&mut events, &run_id, Duration::from_secs(20))
        .await;

    let logs = cli(&s, &["logs", &run_id]).await;
    assert_eq!(stdout(&logs), "hello ada\n");
    let follow = cli(&s, &["logs", &run_id, "-f"]).await;
    assert_eq!(
        stdout(&follow),
        "hello ada\n",
        "a finished job's stream replays and ends"
    );

    let runs = cli(&s, &["runs", "--json"]).await;
    let v: Value = serde_json::from_slice(&runs.stdout).unwrap();
    assert_eq!(v["runs"][0]["runId"], run_id.as_str());
    let table = cli(&s, &["runs"]).await;
    assert!(stdout(&table).starts_with("RUN") && stdout(&table).contains("greet"));
    let show = cli(&s, &["show", &run_id]).await;
    assert!(stdout(&show).contains("completed"));
    let pipelines = cli(&s, &["pipelines"]).await;
    assert!(stdout(&pipelines).contains("slow"));
    let workers = cli(&s, &["workers", "--json"]).await;
    let w: Value = serde_json::from_slice(&workers.stdout).unwrap();
    assert_eq!(w["workers"].as_array().unwrap().len(), 1);

    // Server-side refusals come back as a message and exit code 4.
    let bad = cli(&s, &["trigger", "greet", "-p", "name=NOPE"]).await;
    assert_eq!(bad.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("does not match"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let unknown = cli(&s, &["trigger", "nope"]).await;
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("Unknown pipeline: nope"));
    s.stop().await;
}

#[test]
fn a_corrupt_config_fails_at_start_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runyard.toml");
    std::fs::write(&config, "[server]\nmax_workers = 2\n\n[pipelines.x]\ncommand = [\"echo\"]\ntimeout = \"5 parsecs\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_runyard"))
        .args(["serve", "-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("runyard.toml:6: pipelines.x.timeout"), "{err}");

    std::fs::write(&config, "[server\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_runyard"))
        .args(["serve", "-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The README's way: `serve -c <relative path>`. A job and a finalizer with their own
/// `cwd` still reach `$RUNYARD_RESULT_FILE` and `$RUNYARD_SUMMARY_FILE` (absolute paths).
#[tokio::test]
async fn jobs_with_their_own_cwd_get_absolute_result_and_summary_paths() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("conf/jobs")).unwrap();
    std::fs::write(
        dir.path().join("conf/runyard.toml"),
        r#"
[server]
data_dir = "data"
output_flush_interval_ms = 100

[pipelines.results]
command = ["sh", "-c", "case $RUNYARD_RESULT_FILE in /*) ;; *) exit 7;; esac; echo \"{{\\\"shard\\\": $RUNYARD_SHARD_INDEX, \\\"cwd\\\": \\\"$(pwd)\\\"}}\" > \"$RUNYARD_RESULT_FILE\""]
cwd = "jobs"
shards = 2
finalizer = ["sh", "-c", "case $RUNYARD_SUMMARY_FILE in /*) ;; *) exit 7;; esac; grep -q '\"shard\": 1' \"$RUNYARD_SUMMARY_FILE\""]
"#,
    )
    .unwrap();
    let port = common::free_port();
    let _server = common::BinServer::start_from(
        Some(dir.path()),
        "conf/runyard.toml",
        &dir.path().join("server.log"),
        port,
        &[],
    )
    .await;
    let base = format!("http://127.0.0.1:{port}");
    let mut events = common::EventWatcher::connect(&base, 0);
    let http = reqwest::Client::new();
    let (status, body) = common::post(
        &http,
        &format!("{base}/api/pipelines/results/trigger"),
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let run_id = body["runId"].as_str().unwrap().to_string();
    events
        .wait_for(
            "run:completed",
            |d| d["runId"] == run_id.as_str(),
            Duration::from_secs(30),
        )
        .await;
    let (_, run) = common::get(&http, &format!("{base}/api/runs/{run_id}")).await;
    assert_eq!(run["status"], "completed", "{run:#}");
    let jobs_dir = dir.path().join("conf/jobs").canonicalize().unwrap();
    for (i, job) in run["jobs"].as_array().unwrap().iter().enumerate() {
        assert_eq!(job["result"]["shard"], i, "{job:#}");
        assert_eq!(
            job["result"]["cwd"],
            jobs_dir.to_str().unwrap(),
            "ran in its cwd"
        );
    }
    assert_eq!(run["finalizer"]["status"], "completed", "{run:#}");
}
