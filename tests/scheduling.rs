//! End to end through the real binary: the scheduling features — exit-code retry rules,
//! pause and resume, re-runs, delayed runs, priorities and schedules. Waits are on
//! events or polled conditions with a timeout, never sleeps.

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

/// An answer's RFC 3339 time as epoch ms.
fn epoch_ms(v: &Value) -> i64 {
    runyard::clock::parse_rfc3339(v.as_str().expect("a time"))
        .expect("RFC 3339 as the server writes it")
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

/// Runs the CLI against `base`; returns (exit code, stdout).
fn cli(base: &str, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runyard"))
        .args(args)
        .args(["--server", base])
        .env_remove("RUNYARD_URL")
        .output()
        .expect("run the CLI");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn pipeline_info(http: &reqwest::Client, base: &str, id: &str) -> Value {
    let (_, list) = get(http, &format!("{base}/api/pipelines")).await;
    list["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} in {list}"))
}

async fn run_status(http: &reqwest::Client, base: &str, run_id: &str) -> String {
    get(http, &format!("{base}/api/runs/{run_id}")).await.1["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Triggers a run of `other` and waits for it to end: every run queued before it in an
/// unpaused pipeline would have been claimed first (claims are FIFO over pipelines), so
/// afterwards a paused pipeline's runs still queued prove no node took them.
async fn barrier(http: &reqwest::Client, base: &str) {
    for _ in 0..2 {
        let id = trigger(http, base, "other", json!({})).await["runId"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(wait_finished(http, base, &id).await["status"], "completed");
    }
}

/// Polls a run until it is finished (a condition with a timeout, not a stream).
async fn wait_finished(http: &reqwest::Client, base: &str, run_id: &str) -> Value {
    let url = format!("{base}/api/runs/{run_id}");
    eventually(T, "the run to finish", || {
        let (http, url) = (http.clone(), url.clone());
        async move { get(&http, &url).await.1["finishedAt"].is_string() }
    })
    .await;
    get(http, &url).await.1
}

#[tokio::test]
async fn a_paused_pipeline_holds_its_queue_on_every_node_across_restarts_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("go");
    let config = write_config(
        dir.path(),
        "max_workers = 2",
        &format!(
            r#"
[pipelines.work]
command = ["sh", "-c", "while [ ! -f {gate} ]; do sleep 0.02; done; echo done"]
[pipelines.other]
command = ["true"]
"#,
            gate = gate.display()
        ),
    );
    let http = reqwest::Client::new();
    let (pa, pb) = (free_port(), free_port());
    let mut a = BinServer::start(&config, pa).await;
    let mut b = BinServer::start(&config, pb).await;
    let mut events = EventWatcher::connect(&a.base, 0);
    // A job already running when the pipeline is paused finishes.
    let running = trigger(&http, &a.base, "work", json!({})).await["runId"]
        .as_str()
        .unwrap()
        .to_string();
    events
        .wait_for("job:started", |d| d["runId"] == running.as_str(), T)
        .await;
    let (code, out) = cli(&a.base, &["pause", "work"]);
    assert_eq!((code, out.trim()), (0, "pipeline work paused"));
    let (code, out) = cli(&b.base, &["pause", "work"]);
    assert_eq!((code, out.trim()), (0, "pipeline work paused (already)"));
    let paused = events
        .wait_for("pipeline:paused", |d| d["pipelineId"] == "work", T)
        .await;
    assert!(paused.data.get("runId").is_none(), "{:?}", paused.data);
    // Triggers are accepted on either node, and say the pipeline is paused.
    let mut held = Vec::new();
    for base in [&a.base, &b.base, &a.base] {
        let answer = trigger(&http, base, "work", json!({})).await;
        assert_eq!(answer["paused"], true, "{answer}");
        held.push(answer["runId"].as_str().unwrap().to_string());
    }
    std::fs::write(&gate, "").unwrap();
    let run = wait_run(&http, &a.base, &mut events, &running).await;
    assert_eq!(run["status"], "completed", "the running job finished");
    barrier(&http, &b.base).await;
    for id in &held {
        assert_eq!(run_status(&http, &a.base, id).await, "queued", "{id}");
    }
    let info = pipeline_info(&http, &b.base, "work").await;
    assert_eq!(
        (info["paused"].clone(), info["queued"].clone()),
        (json!(true), json!(3))
    );
    assert!(info["pausedAt"].is_string(), "{info}");
    let (_, metrics) = get_text(&http, &format!("{}/metrics", b.base)).await;
    assert!(
        metrics.contains("runyard_pipeline_paused{pipeline=\"work\"} 1\n")
            && metrics.contains("runyard_pipeline_paused{pipeline=\"other\"} 0\n"),
        "{metrics}"
    );
    let (code, table) = cli(&a.base, &["pipelines"]);
    assert_eq!(code, 0);
    let line = table.lines().find(|l| l.starts_with("work")).unwrap();
    assert!(line.contains("paused"), "{table}");

    // Durable: both nodes restart and still hold the queue.
    for server in [&mut a, &mut b] {
        server.signal("TERM");
        assert_eq!(server.wait_exit(T).await, Some(0));
    }
    let a = BinServer::start(&config, pa).await;
    let b = BinServer::start(&config, pb).await;
    // From here on the test polls the runs instead of following a stream: on PostgreSQL
    // a stream opened on a node in its first moments can miss another node's commits (a
    // known issue of the event tailer, outside this feature).
    let last = events.seen.iter().filter_map(|e| e.id).max().unwrap_or(0);
    let mut events = EventWatcher::connect(&b.base, last);
    assert_eq!(pipeline_info(&http, &a.base, "work").await["paused"], true);
    barrier(&http, &a.base).await;
    for id in &held {
        assert_eq!(run_status(&http, &b.base, id).await, "queued", "{id}");
    }

    // Resumed on one node: every held run completes, on either node.
    let (code, out) = cli(&b.base, &["resume", "work"]);
    assert_eq!((code, out.trim()), (0, "pipeline work resumed"));
    events
        .wait_for("pipeline:resumed", |d| d["pipelineId"] == "work", T)
        .await;
    for id in &held {
        let run = wait_finished(&http, &a.base, id).await;
        assert_eq!(run["status"], "completed", "{run}");
    }
    assert_eq!(pipeline_info(&http, &a.base, "work").await["paused"], false);
    let (status, body) = post(
        &http,
        &format!("{}/api/pipelines/nope/pause", a.base),
        json!({}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn a_rerun_of_failed_shards_keeps_the_others_and_only_finished_runs_can_be_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    // Shard 0 passes; the others fail until the file `fixed` exists. Each writes a result.
    std::fs::write(
        dir.path().join("suite.sh"),
        format!(
            "echo \"{{\\\"shard\\\": $RUNYARD_SHARD_INDEX}}\" > \"$RUNYARD_RESULT_FILE\"\n\
             echo $RUNYARD_SHARD_INDEX >> {d}/ran-$RUNYARD_RUN_ID\n\
             [ $RUNYARD_SHARD_INDEX = 0 ] || [ -f {d}/fixed ]\n"
        ),
    )
    .unwrap();
    let config = write_config(
        dir.path(),
        "max_workers = 3",
        &format!(
            r#"
[pipelines.suite]
command = ["sh", "{d}/suite.sh"]
shards = 3
finalizer = ["sh", "-c", "cp \"$RUNYARD_SUMMARY_FILE\" {d}/summary-$RUNYARD_RUN_ID.json"]
[pipelines.suite.params.label]
default = "x"
[pipelines.slow]
command = ["sh", "-c", "sleep 30"]
"#
        ),
    );
    let s = BinServer::start(&config, free_port()).await;
    let http = reqwest::Client::new();
    let mut events = EventWatcher::connect(&s.base, 0);
    let original = trigger(
        &http,
        &s.base,
        "suite",
        json!({"parameters": {"label": "nightly"}}),
    )
    .await;
    let original = original["runId"].as_str().unwrap().to_string();
    let before = wait_run(&http, &s.base, &mut events, &original).await;
    assert_eq!(before["status"], "failed", "{before}");

    // Unfinished, unknown and malformed re-runs are refused.
    let slow = trigger(&http, &s.base, "slow", json!({})).await["runId"]
        .as_str()
        .unwrap()
        .to_string();
    let rerun_url = |id: &str| format!("{}/api/runs/{id}/rerun", s.base);
    let (status, body) = post(&http, &rerun_url(&slow), json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("only a finished run"),
        "{body}"
    );
    post(
        &http,
        &format!("{}/api/runs/{slow}/abort", s.base),
        json!({}),
    )
    .await;
    let (status, body) = post(&http, &rerun_url(&original), json!({"only": "all"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(&http, &rerun_url(&original), json!({"shards": 2})).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = post(
        &http,
        &rerun_url("0190a000-0000-7000-8000-000000000000"),
        json!({}),
    )
    .await;
    assert_eq!(status, 404);

    // `runyard rerun --failed --wait`: shards 1 and 2 run again, shard 0 is kept, and the
    // finalizer sees all three.
    std::fs::write(dir.path().join("fixed"), "").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runyard"))
        .args([
            "rerun",
            &original[..13],
            "--failed",
            "--wait",
            "--server",
            &s.base,
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, list) = get(&http, &format!("{}/api/runs?limit=5", s.base)).await;
    let rerun = list["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rerunOf"] == original.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("a run with rerunOf in {list}"));
    let rerun_id = rerun["runId"].as_str().unwrap();
    let run = get(&http, &format!("{}/api/runs/{rerun_id}", s.base))
        .await
        .1;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["parameters"], json!({"label": "nightly"}));
    assert_eq!(run["shardCount"], 3);
    assert_eq!(run["jobs"][0]["keptFrom"], before["jobs"][0]["id"], "{run}");
    assert_eq!(run["jobs"][0]["result"], json!({"shard": 0}));
    assert!(run["jobs"][1]["keptFrom"].is_null());
    let mut ran: Vec<String> = std::fs::read_to_string(dir.path().join(format!("ran-{rerun_id}")))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    ran.sort();
    assert_eq!(ran, vec!["1", "2"], "only the failed shards ran again");
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(format!("summary-{rerun_id}.json"))).unwrap(),
    )
    .unwrap();
    let shards = summary["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 3, "{summary}");
    assert_eq!(shards[0]["result"], json!({"shard": 0}), "{summary}");
    // Nothing left to repeat: 409. A full re-run runs every shard.
    let (status, body) = post(&http, &rerun_url(rerun_id), json!({"only": "failed"})).await;
    assert_eq!(status, 409, "{body}");
    let (status, full) = post(&http, &rerun_url(&original), json!({})).await;
    assert_eq!(status, 202, "{full}");
    assert_eq!(full["rerunOf"], original.as_str());
    let full_id = full["runId"].as_str().unwrap();
    let run = wait_run(&http, &s.base, &mut events, full_id).await;
    assert_eq!(run["status"], "completed");
    assert!(
        run["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["keptFrom"].is_null())
    );
    // The original never changed.
    let after = get(&http, &format!("{}/api/runs/{original}", s.base))
        .await
        .1;
    assert_eq!(after["status"], "failed");
    assert_eq!(after["finishedAt"], before["finishedAt"]);
    assert_eq!(after["jobs"], before["jobs"]);
}

#[tokio::test]
async fn delayed_runs_wait_for_their_time_and_bad_delays_are_400() {
    let (_dir, s) = bin(
        "retention = \"1d\"",
        r#"
[pipelines.later]
command = ["true"]
"#,
    )
    .await;
    let http = reqwest::Client::new();
    let mut events = EventWatcher::connect(&s.base, 0);
    let url = format!("{}/api/pipelines/later/trigger", s.base);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (status, by_delay) = post(&http, &url, json!({"delay": "1500ms"})).await;
    assert_eq!(status, 202, "{by_delay}");
    let run_at = epoch_ms(&by_delay["runAt"]);
    assert!(run_at >= now + 1_400, "{by_delay}");
    let at = {
        // Whole seconds: at least a second ahead once truncated, so the time is still
        // ahead when the request arrives (a second from `now`, truncated, could be 1 ms).
        let t = now + 2_000;
        let secs = t.div_euclid(1000);
        // RFC 3339 with an offset (+02:00), as a client in another zone writes it.
        let z = jiff::Timestamp::from_second(secs).unwrap();
        z.to_zoned(jiff::tz::TimeZone::fixed(jiff::tz::offset(2)))
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
    };
    let (status, by_time) = post(&http, &url, json!({"runAt": at})).await;
    assert_eq!(status, 202, "{by_time}");
    for answer in [&by_delay, &by_time] {
        let id = answer["runId"].as_str().unwrap();
        let queued = get(&http, &format!("{}/api/runs/{id}", s.base)).await.1;
        assert_eq!(queued["runAt"], answer["runAt"], "shown in the run view");
        let run = wait_run(&http, &s.base, &mut events, id).await;
        assert_eq!(run["status"], "completed");
        let started = epoch_ms(&run["jobs"][0]["startedAt"]);
        assert!(
            started >= epoch_ms(&answer["runAt"]),
            "started {} before its time {}",
            run["jobs"][0]["startedAt"],
            answer["runAt"]
        );
    }
    for (body, says) in [
        (json!({"delay": "soon"}), "delay"),
        (json!({"delay": "2d"}), "retention"),
        (json!({"runAt": "2001-01-01T00:00:00Z"}), "past"),
        (json!({"runAt": "2999-01-01T00:00:00Z"}), "retention"),
        (json!({"runAt": "tomorrow"}), "RFC 3339"),
        (json!({"delay": "1m", "runAt": at}), "not both"),
        (json!({"priority": 101}), "priority"),
        (json!({"priority": "high"}), "expected i64"),
    ] {
        let (status, answer) = post(&http, &url, body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert!(
            answer["error"].as_str().unwrap_or_default().contains(says),
            "{body} → {answer}"
        );
    }
}

#[tokio::test]
async fn two_nodes_claim_higher_priorities_first_and_fifo_within_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("order.log");
    let config = write_config(
        dir.path(),
        "max_workers = 1\nmax_workers_global = 1",
        &format!(
            r#"
[pipelines.work]
command = ["sh", "-c", "echo {{label}} >> {log}"]
[pipelines.work.params.label]
pattern = "[a-z0-9]+"
[pipelines.urgent]
command = ["sh", "-c", "echo urgent >> {log}"]
priority = 50
[pipelines.blocker]
command = ["sh", "-c", "while [ ! -f {gate} ]; do sleep 0.02; done"]
"#,
            log = log.display(),
            gate = dir.path().join("go").display()
        ),
    );
    let http = reqwest::Client::new();
    let a = BinServer::start(&config, free_port()).await;
    let b = BinServer::start(&config, free_port()).await;
    let mut events = EventWatcher::connect(&a.base, 0);
    // The only slot over both nodes is held while the queue fills, so the order in which
    // the rest start is the claims' choice.
    let blocker = trigger(&http, &a.base, "blocker", json!({})).await["runId"]
        .as_str()
        .unwrap()
        .to_string();
    events
        .wait_for("job:started", |d| d["runId"] == blocker.as_str(), T)
        .await;
    let mut ids = Vec::new();
    for (i, (label, priority)) in [
        ("low1", Some(0)),
        ("high1", Some(10)),
        ("low2", None),
        ("high2", Some(10)),
        ("bottom", Some(-5)),
    ]
    .into_iter()
    .enumerate()
    {
        let mut body = json!({"parameters": {"label": label}});
        if let Some(p) = priority {
            body["priority"] = json!(p);
        }
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        ids.push(
            trigger(&http, base, "work", body).await["runId"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    ids.push(
        trigger(&http, &b.base, "urgent", json!({})).await["runId"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    let run = get(&http, &format!("{}/api/runs/{}", a.base, ids[5]))
        .await
        .1;
    assert_eq!(run["priority"], 50, "the pipeline's priority");
    std::fs::write(dir.path().join("go"), "").unwrap();
    for id in &ids {
        assert_eq!(
            wait_run(&http, &a.base, &mut events, id).await["status"],
            "completed"
        );
    }
    let order: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        order,
        ["urgent", "high1", "high2", "low1", "low2", "bottom"]
    );
}

/// The runs of `pipeline`, newest first.
async fn runs_of(http: &reqwest::Client, base: &str, pipeline: &str) -> Vec<Value> {
    let (_, page) = get(
        http,
        &format!("{base}/api/pipelines/{pipeline}/jobs?limit=200"),
    )
    .await;
    page["runs"].as_array().cloned().unwrap_or_default()
}

fn fires_total(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("runyard_schedule_fires_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("runyard_schedule_fires_total in {metrics}"))
}

#[tokio::test]
async fn two_nodes_fire_each_tick_of_a_schedule_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "max_workers = 2",
        r#"
[pipelines.tick]
command = ["sh", "-c", "echo {suite}"]
schedule = "* * * * * *"
schedule_tz = "Europe/Berlin"
schedule_params = { suite = "nightly" }
[pipelines.tick.params.suite]
pattern = "[a-z]+"
"#,
    );
    let http = reqwest::Client::new();
    let a = BinServer::start(&config, free_port()).await;
    let b = BinServer::start(&config, free_port()).await;
    let mut events = EventWatcher::connect(&a.base, 0);
    // Wait for five scheduled runs to complete (every second; either node fires).
    events
        .wait_count("run:completed", |d| d["status"] == "completed", 5, T)
        .await;
    let info = pipeline_info(&http, &b.base, "tick").await;
    assert_eq!(info["schedule"]["cron"], "* * * * * *");
    assert_eq!(info["schedule"]["timeZone"], "Europe/Berlin");
    assert!(info["schedule"]["nextFireAt"].is_string(), "{info}");
    let (code, table) = cli(&a.base, &["pipelines"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("NEXT FIRE") && table.contains("* * * * * *"),
        "{table}"
    );
    // One run per tick, whichever node fired it.
    let (_, ma) = get_text(&http, &format!("{}/metrics", a.base)).await;
    let (_, mb) = get_text(&http, &format!("{}/metrics", b.base)).await;
    let runs = runs_of(&http, &a.base, "tick").await;
    let mut ticks: Vec<i64> = runs
        .iter()
        .map(|r| {
            assert_eq!(r["triggeredBy"], "schedule", "{r}");
            assert_eq!(r["parameters"], json!({"suite": "nightly"}));
            epoch_ms(&r["scheduledFor"])
        })
        .collect();
    let n = ticks.len();
    assert!(n >= 5, "{n} runs");
    ticks.sort();
    ticks.dedup();
    assert_eq!(ticks.len(), n, "a tick fired twice: {runs:?}");
    for t in &ticks {
        assert_eq!(t % 1000, 0, "ticks fall on whole seconds");
    }
    // Every node counts what it fired; between the two scrapes and the list at most a
    // tick or two more may have fired.
    let fired = fires_total(&ma) + fires_total(&mb);
    assert!(
        fired as usize <= n && n <= fired as usize + 3,
        "fired {fired}, runs {n}"
    );
}

#[tokio::test]
async fn ticks_missed_while_every_node_was_down_fire_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "",
        r#"
[pipelines.yearly]
command = ["true"]
schedule = "0 0 1 1 *"
"#,
    );
    let http = reqwest::Client::new();
    let port = free_port();
    // A first start makes the store (and stops before anything is due).
    let mut s = BinServer::start(&config, port).await;
    s.signal("TERM");
    assert_eq!(s.wait_exit(T).await, Some(0));
    let schedule = runyard::schedule::Schedule::parse("0 0 1 1 *", "UTC").unwrap();
    let first = schedule.next_after(runyard::clock::now_ms()).unwrap();
    // While every node is down, three years of ticks go by (the record is moved back).
    let back = first - 3 * 366 * 86_400_000;
    set_next_fire(dir.path(), "yearly", &schedule.key(), back).await;
    let s = BinServer::start(&config, port).await;
    let mut events = EventWatcher::connect(&s.base, 0);
    events
        .wait_for("run:completed", |d| d["status"] == "completed", T)
        .await;
    let info = pipeline_info(&http, &s.base, "yearly").await;
    assert!(
        epoch_ms(&info["schedule"]["nextFireAt"]) > back + 365 * 86_400_000,
        "{info}"
    );
    let runs = runs_of(&http, &s.base, "yearly").await;
    assert_eq!(
        runs.len(),
        1,
        "missed ticks fire once, not as a flood: {runs:?}"
    );
    // For the latest missed tick: the last 1 January before now.
    let for_tick = epoch_ms(&runs[0]["scheduledFor"]);
    assert!(for_tick > back && for_tick < first, "{}", runs[0]);
}

/// Moves a pipeline's stored next fire time (the test's stand-in for time passing while
/// no node runs), on whichever store the test runs on.
async fn set_next_fire(dir: &std::path::Path, pipeline: &str, key: &str, at: i64) {
    let section = store_section(dir);
    if section.is_empty() {
        let conn = rusqlite::Connection::open(dir.join("data").join("runyard.db")).unwrap();
        let n = conn
            .execute(
                "INSERT INTO pipeline_state (pipeline, schedule_key, next_fire_at, updated_at)
                 VALUES (?1, ?2, ?3, 0) ON CONFLICT (pipeline) DO UPDATE
                 SET schedule_key = excluded.schedule_key, next_fire_at = excluded.next_fire_at",
                rusqlite::params![pipeline, key, at],
            )
            .unwrap();
        assert_eq!(n, 1);
        return;
    }
    let field = |name: &str| {
        section
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = \"")))
            .map(|v| v.trim_end_matches('"').to_string())
            .unwrap()
    };
    let (client, conn) = tokio_postgres::connect(&field("url"), tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let n = client
        .execute(
            &format!(
                "INSERT INTO \"{}\".pipeline_state (pipeline, schedule_key, next_fire_at, updated_at)
                 VALUES ($1, $2, $3, 0) ON CONFLICT (pipeline) DO UPDATE
                 SET schedule_key = EXCLUDED.schedule_key, next_fire_at = EXCLUDED.next_fire_at",
                field("schema")
            ),
            &[&pipeline, &key, &at],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    drop(client);
    let _ = task.await;
}
