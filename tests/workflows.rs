//! Workflows through the real binary (on SQLite, and on PostgreSQL in CI's second pass):
//! a trigger creates every step's run at once, a step starts only after its needs
//! ended and reads what they left, a failed step skips what needed it while an
//! `always` step runs, the workflow run settles once (`workflow:*` events), a re-run of
//! the failed part keeps the completed steps, an abort stops every step, and the CLI
//! triggers, waits for and shows a workflow. Waits are on events with a timeout.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::TestServer;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

/// `build` leaves an artifact; `test` has 4 shards, one fails while the file named by
/// `fail` exists, and a finalizer that gates the step; `report` copies its needs file
/// to its result; `deploy` runs only if the tests passed; `gate` waits for a file.
const CONFIG: &str = r#"
[pipelines.build]
command = ["sh", "-c", "echo '{{\"artifact\": \"build-{sha}.tar\"}}' > $RUNYARD_RESULT_FILE"]
[pipelines.build.params.sha]
pattern = "[0-9a-f]{7,40}"

[pipelines.test]
command = ["sh", "-c", "if [ $RUNYARD_SHARD_INDEX = 2 ] && [ -e {fail} ]; then exit 4; fi; echo '{{\"passed\": 10}}' > $RUNYARD_RESULT_FILE"]
shards = 4
max_attempts = 1
finalizer = ["sh", "-c", "cat {summary_file} > /dev/null"]
[pipelines.test.params.fail]
pattern = "/[A-Za-z0-9/._-]+"

[pipelines.report]
command = ["sh", "-c", "cp \"$RUNYARD_NEEDS_FILE\" \"$RUNYARD_RESULT_FILE\""]

[pipelines.deploy]
command = ["sh", "-c", "echo deployed"]

[pipelines.gate]
command = ["sh", "-c", "while [ ! -e {file} ]; do sleep 0.02; done"]
[pipelines.gate.params.file]
pattern = "/[A-Za-z0-9/._-]+"

[workflows.release.params.sha]
pattern = "[0-9a-f]{7,40}"
[workflows.release.params.fail]
pattern = "/[A-Za-z0-9/._-]+"
[workflows.release.steps.build]
pipeline = "build"
params = { sha = "{sha}" }
[workflows.release.steps.test]
pipeline = "test"
params = { fail = "{fail}" }
needs = ["build"]
[workflows.release.steps.report]
pipeline = "report"
needs = ["build", "test"]
when = "always"
[workflows.release.steps.deploy]
pipeline = "deploy"
needs = ["test"]

[workflows.held.params.file]
pattern = "/[A-Za-z0-9/._-]+"
[workflows.held.steps.wait]
pipeline = "gate"
params = { file = "{file}" }
[workflows.held.steps.after]
pipeline = "deploy"
needs = ["wait"]
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

async fn trigger(s: &TestServer, workflow: &str, body: Value) -> (u16, Value) {
    s.post(&format!("/api/workflows/{workflow}/trigger"), body)
        .await
}

fn step<'a>(w: &'a Value, name: &str) -> &'a Value {
    w["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {w}"))
}

#[tokio::test]
async fn a_workflow_runs_its_steps_in_order_settles_once_and_reruns_only_the_failed_part() {
    let s = TestServer::start("max_workers = 4", CONFIG).await;
    let mut events = s.events();
    let dir = tempfile::tempdir().unwrap();
    let fail = dir.path().join("fail");
    std::fs::write(&fail, b"").unwrap();
    let params = json!({"sha": "abc1234", "fail": fail.display().to_string()});

    let (code, answer) = trigger(
        &s,
        "release",
        json!({"parameters": params, "idempotencyKey": "r1"}),
    )
    .await;
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["status"], "queued");
    assert_eq!(answer["workflowId"], "release");
    let id = answer["workflowRunId"].as_str().unwrap().to_string();
    let runs = answer["runs"].as_object().unwrap().clone();
    assert_eq!(runs.len(), 4, "every step's run exists at once: {answer}");
    // A replay with the same key names the same workflow run and creates nothing.
    let (code, replay) = trigger(
        &s,
        "release",
        json!({"parameters": params, "idempotencyKey": "r1"}),
    )
    .await;
    assert_eq!(code, 202);
    assert_eq!(replay["workflowRunId"], json!(id));
    assert_eq!(replay["idempotentReplay"], true);

    let failed = events
        .wait_for("workflow:failed", |d| d["workflowRunId"] == json!(id), T)
        .await;
    assert_eq!(failed.data["workflowId"], "release");
    let (_, w) = s.get(&format!("/api/workflow-runs/{id}")).await;
    assert_eq!(w["status"], "failed", "{w}");
    assert_eq!(step(&w, "build")["status"], "completed");
    assert_eq!(step(&w, "test")["status"], "failed");
    assert_eq!(step(&w, "test")["shardCount"], 4);
    assert_eq!(step(&w, "deploy")["status"], "skipped", "tests failed");
    assert_eq!(step(&w, "report")["status"], "completed", "always runs");
    // The report's job read what build and test left (the needs file).
    let report_run = step(&w, "report")["runId"].as_str().unwrap().to_string();
    let (_, report) = s.get(&format!("/api/runs/{report_run}")).await;
    assert_eq!(report["workflowRunId"], json!(id));
    assert_eq!(report["workflowStep"], "report");
    let needs = report["jobs"][0]["result"]["needs"]
        .as_array()
        .unwrap()
        .clone();
    let build_need = needs.iter().find(|n| n["pipelineId"] == "build").unwrap();
    assert_eq!(
        build_need["shards"][0]["result"]["artifact"], "build-abc1234.tar",
        "{needs:?}"
    );
    let test_need = needs.iter().find(|n| n["pipelineId"] == "test").unwrap();
    assert_eq!(test_need["status"], "failed");
    assert_eq!(test_need["shards"][0]["result"]["passed"], 10);
    // Each step started after its needs ended.
    let test_run = step(&w, "test");
    assert!(
        test_run["startedAt"].as_str().unwrap()
            >= step(&w, "build")["finishedAt"].as_str().unwrap()
    );

    // The failed part again, once the cause is gone: build is kept, not run again.
    std::fs::remove_file(&fail).unwrap();
    let (code, again) = s
        .post(
            &format!("/api/workflow-runs/{id}/rerun"),
            json!({"only": "failed"}),
        )
        .await;
    assert_eq!(code, 202, "{again}");
    assert_eq!(again["rerunOf"], json!(id));
    let second = again["workflowRunId"].as_str().unwrap().to_string();
    assert_eq!(again["runs"]["build"], runs["build"], "build is kept");
    assert_ne!(again["runs"]["test"], runs["test"]);
    assert_ne!(
        again["runs"]["report"], runs["report"],
        "report completed, but it comes after test, which runs again"
    );
    events
        .wait_for(
            "workflow:completed",
            |d| d["workflowRunId"] == json!(second),
            T,
        )
        .await;
    let (_, w2) = s.get(&format!("/api/workflow-runs/{second}")).await;
    assert_eq!(w2["status"], "completed", "{w2}");
    assert_eq!(step(&w2, "build")["kept"], true);
    assert_eq!(step(&w2, "deploy")["status"], "completed");
    let (_, list) = s.get("/api/workflow-runs?workflow=release").await;
    assert_eq!(list["workflowRuns"].as_array().unwrap().len(), 2);
    let (code, _) = s
        .post(
            &format!("/api/workflow-runs/{second}/rerun"),
            json!({"only": "failed"}),
        )
        .await;
    assert_eq!(code, 409, "nothing failed");
    // Each workflow run settled exactly once.
    let settled = events
        .seen
        .iter()
        .filter(|e| e.event.starts_with("workflow:") && e.event != "workflow:created")
        .filter(|e| e.data["workflowRunId"] == json!(id))
        .count();
    assert_eq!(settled, 1);
}

#[tokio::test]
async fn aborting_a_workflow_run_stops_its_running_step_and_ends_its_waiting_ones() {
    // Its webhook goes to a closed local port: the delivery is recorded and retried.
    let config = format!("[webhooks]\nallow_http = true\nallow_hosts = [\"127.0.0.1\"]\n{CONFIG}");
    let s = TestServer::start("max_workers = 2", &config).await;
    let mut events = s.events();
    let dir = tempfile::tempdir().unwrap();
    let never = dir.path().join("never");
    let (_, answer) = trigger(
        &s,
        "held",
        json!({"parameters": {"file": never.display().to_string()},
               "callbackUrl": "http://127.0.0.1:9/hook"}),
    )
    .await;
    let id = answer["workflowRunId"].as_str().unwrap().to_string();
    let gate = answer["runs"]["wait"].as_str().unwrap().to_string();
    events
        .wait_for("job:started", |d| d["runId"] == json!(gate), T)
        .await;
    let (_, w) = s.get(&format!("/api/workflow-runs/{id}")).await;
    assert_eq!(w["status"], "running");
    assert_eq!(step(&w, "after")["status"], "waiting");

    let (code, aborted) = s
        .post(&format!("/api/workflow-runs/{id}/abort"), json!({}))
        .await;
    assert_eq!(code, 202, "{aborted}");
    assert_eq!(aborted["abortedRuns"].as_array().unwrap().len(), 2);
    let ended = events
        .wait_for("workflow:aborted", |d| d["workflowRunId"] == json!(id), T)
        .await;
    assert_eq!(ended.data["status"], "aborted");
    let (_, w) = s.get(&format!("/api/workflow-runs/{id}")).await;
    assert_eq!(step(&w, "wait")["status"], "aborted");
    assert_eq!(step(&w, "after")["status"], "aborted");
    assert!(w["abortedBy"].is_object(), "{w}");
    // Its `workflow.completed` webhook is in its view, as a run's is.
    let deliveries = w["deliveries"].as_array().unwrap_or_else(|| panic!("{w}"));
    assert_eq!(deliveries.len(), 1, "{w}");
    assert_eq!(deliveries[0]["url"], "http://127.0.0.1:9/hook");
    let (code, _) = s
        .post(&format!("/api/workflow-runs/{id}/abort"), json!({}))
        .await;
    assert_eq!(code, 202, "aborting again is harmless");
}

#[tokio::test]
async fn the_cli_triggers_waits_for_and_shows_a_workflow_and_bad_input_is_a_400() {
    let s = TestServer::start("max_workers = 4", CONFIG).await;
    let dir = tempfile::tempdir().unwrap();
    let fail = format!("fail={}", dir.path().join("absent").display());
    let out = cli(
        &s,
        &[
            "trigger",
            "release",
            "-p",
            "sha=0123abc",
            "-p",
            &fail,
            "--wait",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("workflow      release"), "{shown}");
    assert!(
        shown.contains("deploy") && shown.contains("← test"),
        "{shown}"
    );
    // `workflow run  ID (short id XXXXXXXX)`: the short form works like a run's.
    let short = shown
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(5))
        .map(|s| s.trim_end_matches(')').to_string())
        .unwrap();
    let again = cli(&s, &["show", &short]).await;
    assert!(
        text(&again.stdout).contains("report") && text(&again.stdout).contains("(always)"),
        "{}",
        text(&again.stdout)
    );
    let json_out = cli(
        &s,
        &[
            "trigger",
            "release",
            "-p",
            "sha=0123abc",
            "-p",
            &fail,
            "--json",
        ],
    )
    .await;
    let answer: Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(answer["workflowId"], "release");
    let waited = cli(&s, &["wait", answer["workflowRunId"].as_str().unwrap()]).await;
    assert_eq!(waited.status.code(), Some(0), "{}", text(&waited.stderr));

    let (code, e) = trigger(&s, "nope", json!({})).await;
    assert_eq!(code, 400, "{e}");
    let (code, e) = trigger(&s, "release", json!({"parameters": {"sha": "XYZ"}})).await;
    assert_eq!(code, 400, "{e}");
    let (code, e) = trigger(&s, "release", json!({"shards": 2})).await;
    assert_eq!(code, 400, "unknown field: {e}");
    let (code, _) = s
        .get("/api/workflow-runs/00000000-0000-7000-8000-000000000000")
        .await;
    assert_eq!(code, 404);
    let (code, _) = s.get("/api/workflow-runs/zz").await;
    assert_eq!(code, 400);
    let (_, listed) = s.get("/api/workflows").await;
    assert_eq!(
        listed["workflows"][1]["steps"][1]["needs"],
        json!(["build"])
    );
}

#[tokio::test]
async fn a_cycle_or_an_unknown_pipeline_in_a_workflow_is_refused_at_start_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runyard.toml");
    std::fs::write(
        &path,
        "[pipelines.a]\ncommand = [\"true\"]\n\n[workflows.w.steps.x]\npipeline = \"a\"\nneeds = [\"y\"]\n[workflows.w.steps.y]\npipeline = \"a\"\nneeds = [\"x\"]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_runyard"))
        .args(["check", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("cycle") && err.contains("workflows.w"),
        "{err}"
    );
    assert!(
        err.contains("runyard.toml:"),
        "names the file and line: {err}"
    );
}
