//! Runs that wait for runs, through the real binary: `after` on a trigger (HTTP and
//! `runyard trigger --after`), a waiting run that starts only once its needs have
//! ended, a skip when a need fails (and `afterWhen: "always"` running anyway), the
//! events that say so, and a 400 for a run that does not exist. Waits are on events
//! with a timeout, never sleeps.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::TestServer;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

/// `gate` runs until the file its parameter names exists, so the test decides when it
/// ends, and leaves a result; `needs` answers with the needs file it was given; `ok` and
/// `bad` end at once.
const PIPELINES: &str = r#"
[pipelines.gate]
command = ["sh", "-c", "while [ ! -e {file} ]; do sleep 0.02; done; echo '{{\"artifact\": \"build.tar\"}}' > $RUNYARD_RESULT_FILE"]
[pipelines.gate.params.file]
pattern = "/[A-Za-z0-9/._-]+"

[pipelines.ok]
command = ["sh", "-c", "echo ran"]
shards = 2

[pipelines.needs]
command = ["sh", "-c", "cp \"$RUNYARD_NEEDS_FILE\" \"$RUNYARD_RESULT_FILE\""]

[pipelines.bad]
command = ["sh", "-c", "exit 3"]
max_attempts = 1
"#;

async fn cli(server: &TestServer, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runyard"));
    cmd.args(args)
        .env("RUNYARD_URL", &server.base)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn run(s: &TestServer, id: &str) -> Value {
    s.get(&format!("/api/runs/{id}")).await.1
}

#[tokio::test]
async fn a_run_after_another_waits_for_it_then_runs_and_a_failed_need_skips_it() {
    let s = TestServer::start("max_workers = 2", PIPELINES).await;
    let mut events = s.events();
    let dir = tempfile::tempdir().unwrap();
    let gate_file = dir.path().join("open");
    let (code, gate) = s
        .trigger(
            "gate",
            json!({"parameters": {"file": gate_file.display().to_string()}}),
        )
        .await;
    assert_eq!(code, 202, "{gate}");
    let gate_id = gate["runId"].as_str().unwrap().to_string();
    events
        .wait_for("job:started", |d| d["runId"] == gate_id, T)
        .await;

    // Through the CLI, by short id: the answer says it waits.
    let short = &gate_id[..8];
    let waiting = cli(&s, &["trigger", "needs", "--after", short, "--json"]).await;
    assert_eq!(waiting.status.code(), Some(0), "{}", text(&waiting.stderr));
    let answer: Value = serde_json::from_slice(&waiting.stdout).unwrap();
    assert_eq!(answer["status"], "waiting", "{answer}");
    let dependent = answer["runId"].as_str().unwrap().to_string();
    let view = run(&s, &dependent).await;
    assert_eq!(view["status"], "waiting");
    assert_eq!(view["after"], json!([gate_id]));
    assert_eq!(view["afterWhen"], "success");
    let shown = cli(&s, &["show", &dependent]).await;
    assert!(
        text(&shown.stdout).contains(&format!("after     {gate_id} (success)")),
        "{}",
        text(&shown.stdout)
    );
    // Its jobs are not claimed while the gate runs, though a slot is free: an
    // unrelated run goes through the free slot first.
    let (_, other) = s.trigger("bad", json!({})).await;
    let other = s
        .wait_run(&mut events, other["runId"].as_str().unwrap(), T)
        .await;
    assert_eq!(other["status"], "failed");
    let still = run(&s, &dependent).await;
    assert_eq!(still["status"], "waiting", "{still}");
    assert!(still["startedAt"].is_null());
    // Nor is it queued work to scale for: no node may take it yet.
    let (_, queue) = s.get("/api/queue").await;
    let needs_queue = queue["pipelines"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["pipeline"] == "needs"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(needs_queue["queued"], 0, "{queue}");

    std::fs::write(&gate_file, b"").unwrap();
    let gate_done = s.wait_run(&mut events, &gate_id, T).await;
    assert_eq!(gate_done["status"], "completed");
    let released = events
        .wait_for("run:released", |d| d["runId"] == dependent, T)
        .await;
    assert_eq!(released.data["after"], json!([gate_id]));
    let done = s.wait_run(&mut events, &dependent, T).await;
    assert_eq!(done["status"], "completed", "{done}");
    // Its job was told what its need left: the need's summary with its shards' results.
    let told = &done["jobs"][0]["result"]["needs"][0];
    assert_eq!(told["runId"], json!(gate_id), "{done}");
    assert_eq!(told["status"], "completed");
    assert_eq!(
        told["shards"][0]["result"]["artifact"], "build.tar",
        "{told}"
    );
    assert!(
        done["startedAt"].as_str().unwrap() >= gate_done["finishedAt"].as_str().unwrap(),
        "it started after its need ended: {done} {gate_done}"
    );

    // A need that fails: the default rule skips, `always` runs anyway; `--wait` on a
    // skipped run exits 1.
    let (_, failed) = s.trigger("bad", json!({})).await;
    let failed_id = failed["runId"].as_str().unwrap().to_string();
    let (_, skip) = s.trigger("ok", json!({"after": [failed_id]})).await;
    let (_, always) = s
        .trigger("ok", json!({"after": [failed_id], "afterWhen": "always"}))
        .await;
    let skip_id = skip["runId"].as_str().unwrap().to_string();
    let always_id = always["runId"].as_str().unwrap().to_string();
    events
        .wait_for("run:skipped", |d| d["runId"] == skip_id, T)
        .await;
    let skipped = s.wait_run(&mut events, &skip_id, T).await;
    assert_eq!(skipped["status"], "skipped", "{skipped}");
    assert_eq!(skipped["jobs"][0]["status"], "aborted");
    assert_eq!(skipped["jobs"][0]["reason"], "skipped");
    assert!(skipped["jobs"][0]["startedAt"].is_null(), "it never ran");
    let ran = s.wait_run(&mut events, &always_id, T).await;
    assert_eq!(ran["status"], "completed");
    let wait = cli(&s, &["wait", &skip_id]).await;
    assert_eq!(wait.status.code(), Some(1), "{}", text(&wait.stderr));
    // A replayed trigger answers with the first run as it is now.
    let body = json!({"after": [failed_id], "idempotencyKey": "k1"});
    let (_, first) = s.trigger("ok", body.clone()).await;
    let (_, replay) = s.trigger("ok", body).await;
    assert_eq!(replay["idempotentReplay"], true, "{replay}");
    assert_eq!(replay["status"], first["status"], "{first} {replay}");
    assert_eq!(replay["status"], "skipped");
    // After a run that has already ended: decided at once.
    let (_, late) = s.trigger("ok", json!({"after": [failed_id]})).await;
    assert_eq!(late["status"], "skipped", "{late}");
    s.stop().await;
}

#[tokio::test]
async fn after_refuses_unknown_runs_and_a_delay_and_queues_nothing() {
    let s = TestServer::start("max_workers = 1", PIPELINES).await;
    let unknown = "0190a8b0-0000-7000-8000-000000000000";
    let (code, answer) = s.trigger("ok", json!({"after": [unknown]})).await;
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains(unknown),
        "the error names the run: {answer}"
    );
    let (_, need) = s.trigger("ok", json!({})).await;
    let need = need["runId"].as_str().unwrap();
    let (code, answer) = s
        .trigger("ok", json!({"after": [need], "delay": "1m"}))
        .await;
    assert_eq!(code, 400, "{answer}");
    let (code, answer) = s
        .trigger("ok", json!({"after": [need], "afterWhen": "sometimes"}))
        .await;
    assert_eq!(code, 400, "{answer}");
    let refused = cli(&s, &["trigger", "ok", "--after", unknown]).await;
    assert_eq!(refused.status.code(), Some(4), "{}", text(&refused.stderr));
    let (_, runs) = s.get("/api/runs?pipeline=ok").await;
    assert_eq!(
        runs["runs"].as_array().map(Vec::len),
        Some(1),
        "only the need was created: {runs}"
    );
    s.stop().await;
}
