//! End to end through the real binary: what peers have (issue 11) — exit-code retry
//! rules, pause and resume, re-runs, delayed runs, priorities and schedules. Waits are
//! on events or polled conditions with a timeout, never sleeps.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

/// A binary serving `pipelines` on a fresh directory (and its store, per `TEST_STORE`).
async fn bin(server_extra: &str, pipelines: &str) -> (tempfile::TempDir, BinServer) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), server_extra, pipelines);
    let server = BinServer::start(&config, free_port()).await;
    (dir, server)
}

async fn trigger(http: &reqwest::Client, base: &str, pipeline: &str, body: Value) -> Value {
    let (status, answer) = post(
        http,
        &format!("{base}/api/pipelines/{pipeline}/trigger"),
        body,
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    answer
}

async fn wait_run(
    http: &reqwest::Client,
    base: &str,
    events: &mut EventWatcher,
    run_id: &str,
) -> Value {
    events
        .wait_for("run:completed", |d| d["runId"] == run_id, T)
        .await;
    get(http, &format!("{base}/api/runs/{run_id}")).await.1
}

#[tokio::test]
async fn exit_codes_named_as_final_are_not_retried_while_others_are() {
    // A deterministic test failure exits 1 (paid once); an infrastructure crash exits 3
    // (retried until attempts run out).
    let (_dir, s) = bin(
        "",
        r#"
[pipelines.suite]
command = ["sh", "-c", "echo attempt $RUNYARD_ATTEMPT; exit {code}"]
max_attempts = 3
retry_backoff = "50ms"
no_retry_exit_codes = [1]
[pipelines.suite.params.code]
type = "integer"
"#,
    )
    .await;
    let http = reqwest::Client::new();
    let mut events = EventWatcher::connect(&s.base, 0);
    let failing = trigger(&http, &s.base, "suite", json!({"parameters": {"code": 1}})).await;
    let crashing = trigger(&http, &s.base, "suite", json!({"parameters": {"code": 3}})).await;
    let failing = failing["runId"].as_str().unwrap();
    let crashing = crashing["runId"].as_str().unwrap();
    let run = wait_run(&http, &s.base, &mut events, failing).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["jobs"][0]["attempt"], 1, "exit 1 is final: {run}");
    assert_eq!(run["jobs"][0]["exitCode"], 1);
    let run = wait_run(&http, &s.base, &mut events, crashing).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["jobs"][0]["attempt"], 3, "exit 3 is retried: {run}");
    let retries = events
        .of_run(crashing)
        .filter(|e| e.event == "job:failed" && e.data["status"] == "queued")
        .count();
    assert_eq!(retries, 2);
    let (_, pipelines) = get(&http, &format!("{}/api/pipelines", s.base)).await;
    let suite = pipelines["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "suite")
        .cloned()
        .unwrap_or_else(|| panic!("suite in {pipelines}"));
    assert_eq!(suite["noRetryExitCodes"], json!([1]), "{suite}");
}
