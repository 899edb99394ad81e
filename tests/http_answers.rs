//! The HTTP contract: trigger answers, validation errors, ids, abort answers.

mod common;

use std::time::Duration;

use common::TestServer;
use serde_json::{Value, json};

const PIPELINES: &str = r#"
[pipelines.echo]
command = ["echo", "{word}"]
[pipelines.echo.params.word]
default = "hi"
pattern = "[a-z]{1,10}"

[pipelines.count]
command = ["echo", "{n}"]
[pipelines.count.params.n]
type = "integer"

[pipelines.sharded]
command = ["true"]
shards = 3
"#;

#[tokio::test]
async fn trigger_answers_202_with_the_contract_shape() {
    let s = TestServer::start("", PIPELINES).await;
    let (status, body) = s
        .trigger("echo", json!({"parameters": {"word": "abc"}}))
        .await;
    assert_eq!(status, 202, "{body}");
    let run_id = body["runId"].as_str().unwrap();
    assert_eq!(body["jobId"], run_id, "single-shard jobId is the run id");
    assert_eq!(body["jobIds"], json!([run_id]));
    assert_eq!(body["pipelineId"], "echo");
    assert_eq!(body["status"], "queued");
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    // Committed before the answer: readable at once.
    let (status, run) = s.get(&format!("/api/runs/{run_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(run["parameters"]["word"], "abc");

    let (status, body) = s.trigger("sharded", json!({})).await;
    assert_eq!(status, 202);
    let run_id = body["runId"].as_str().unwrap();
    assert_eq!(
        body["jobIds"],
        json!([
            format!("{run_id}:s0"),
            format!("{run_id}:s1"),
            format!("{run_id}:s2")
        ])
    );
    let (_, body) = s.trigger("sharded", json!({"shards": 5})).await;
    assert_eq!(body["jobIds"].as_array().unwrap().len(), 5);
    s.stop().await;
}

#[tokio::test]
async fn bad_triggers_are_400_json_and_queue_nothing() {
    let s = TestServer::start("", PIPELINES).await;
    let (status, body) = s.trigger("nope", json!({})).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"],
        "Unknown pipeline: nope. Supported pipelines: count, echo, sharded"
    );

    let cases = [
        (
            "echo",
            json!({"parameters": {"word": "NOT LOWER"}}),
            "does not match",
        ),
        (
            "echo",
            json!({"parameters": {"word": "-rf"}}),
            "may not start with '-'",
        ),
        (
            "echo",
            json!({"parameters": {"other": "x"}}),
            "Undeclared parameter: other",
        ),
        (
            "echo",
            json!({"parameters": {"word": 12}}),
            "does not match",
        ),
        ("count", json!({}), "Missing required parameter: n"),
        (
            "count",
            json!({"parameters": {"n": "twelve"}}),
            "expected integer",
        ),
        ("echo", json!({"shards": 0}), "shards must be between"),
        ("echo", json!({"shards": -1}), "invalid JSON body"),
        ("echo", json!({"parameters": []}), "invalid JSON body"),
        (
            "echo",
            json!({"callbackUrl": "http://127.0.0.1/x"}),
            "callbackUrl",
        ),
        ("echo", json!({"unknownField": 1}), "unknown field"),
    ];
    for (pipeline, body, expected) in cases {
        let (status, answer) = s.trigger(pipeline, body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        let msg = answer["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains(expected),
            "{body}: {msg:?} does not contain {expected:?}"
        );
    }
    // Not JSON at all, and an oversized body.
    let resp = s
        .http
        .post(format!("{}/api/pipelines/echo/trigger", s.base))
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.json::<serde_json::Value>().await.unwrap()["error"].is_string());
    let big = format!(
        "{{\"parameters\": {{\"word\": \"{}\"}}}}",
        "a".repeat(2 << 20)
    );
    let resp = s
        .http
        .post(format!("{}/api/pipelines/echo/trigger", s.base))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    let (_, runs) = s.get("/api/runs").await;
    assert_eq!(
        runs["runs"].as_array().unwrap().len(),
        0,
        "nothing was queued"
    );
    s.stop().await;
}

#[tokio::test]
async fn ids_are_validated_and_unknown_things_are_404() {
    let s = TestServer::start("", PIPELINES).await;
    for path in [
        "/api/runs/not-a-uuid",
        "/api/jobs/..%2F..%2Fetc",
        "/api/jobs/01a20604-ed00-71a9-9811-7ad720d0be11:sx",
    ] {
        let (status, body) = s.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    // Any UUID spelling names the same run.
    let (_, t) = s.trigger("echo", json!({})).await;
    let upper = t["runId"].as_str().unwrap().to_uppercase();
    let (status, run) = s.get(&format!("/api/runs/{upper}")).await;
    assert_eq!((status, run["runId"].clone()), (200, t["runId"].clone()));
    assert_eq!(s.get(&format!("/api/jobs/{upper}")).await.0, 200);
    assert_eq!(s.get("/api/runs?offset=99999999").await.0, 400);
    let missing = "01a20604-ed00-71a9-9811-7ad720d0be11";
    assert_eq!(s.get(&format!("/api/runs/{missing}")).await.0, 404);
    assert_eq!(s.get(&format!("/api/jobs/{missing}")).await.0, 404);
    assert_eq!(s.get(&format!("/api/jobs/{missing}/logs")).await.0, 404);
    assert_eq!(
        s.post(&format!("/api/runs/{missing}/abort"), json!({}))
            .await
            .0,
        404
    );
    assert_eq!(s.get("/api/pipelines/nope/jobs").await.0, 404);
    assert_eq!(s.get("/api/nothing-here").await.0, 404);
    assert_eq!(s.get("/api/runs?status=bogus").await.0, 400);
    assert_eq!(s.get("/api/runs?limit=abc").await.0, 400);
    assert_eq!(
        s.get(&format!("/api/jobs/{missing}/logs?tail=-3")).await.0,
        400
    );
    s.stop().await;
}

#[tokio::test]
async fn idempotency_key_returns_the_same_run() {
    let s = TestServer::start("", PIPELINES).await;
    let body = json!({"idempotencyKey": "deploy-42"});
    let (_, a) = s.trigger("echo", body.clone()).await;
    let (_, b) = s.trigger("echo", body).await;
    assert_eq!(a["runId"], b["runId"]);
    assert!(a["idempotentReplay"].is_null());
    assert_eq!(b["idempotentReplay"], true);
    let (_, runs) = s.get("/api/runs").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn abort_answers_202_then_idempotent_and_409_when_finished() {
    let s = TestServer::start(
        "max_workers = 1",
        &format!("{PIPELINES}\n[pipelines.slow]\ncommand = [\"sleep\", \"30\"]\n"),
    )
    .await;
    let mut events = s.events();
    let (_, done) = s.trigger("echo", json!({})).await;
    let done_id = done["runId"].as_str().unwrap();
    let run = s
        .wait_run(&mut events, done_id, Duration::from_secs(10))
        .await;
    assert_eq!(run["status"], "completed");
    let (status, body) = s
        .post(&format!("/api/runs/{done_id}/abort"), json!({}))
        .await;
    assert_eq!(status, 409, "{body}");

    let (_, slow) = s.trigger("slow", json!({})).await;
    let slow_id = slow["runId"].as_str().unwrap();
    let (status, body) = s
        .post(&format!("/api/runs/{slow_id}/abort"), json!({}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        (&body["runId"], &body["status"], &body["abortedJobs"]),
        (&json!(slow_id), &json!("aborted"), &json!(1))
    );
    // What was stopped, counted apart: the one job was queued or running.
    let (queued, running) = (
        body["queuedAborted"].as_u64().unwrap(),
        body["runningStopping"].as_u64().unwrap(),
    );
    assert_eq!(queued + running, 1, "{body}");
    let (status, body) = s
        .post(&format!("/api/runs/{slow_id}/abort"), json!({}))
        .await;
    assert_eq!(status, 202, "aborting an aborted run is idempotent");
    assert_eq!(
        (
            &body["abortedJobs"],
            &body["queuedAborted"],
            &body["runningStopping"]
        ),
        (&json!(0), &json!(0), &json!(0))
    );
    let run = s
        .wait_run(&mut events, slow_id, Duration::from_secs(10))
        .await;
    assert_eq!(run["status"], "aborted");
    // Who aborted: in the run's view and its run:completed event.
    let (_, workers) = s.get("/api/workers").await;
    let node = workers["workers"][0]["id"].clone();
    let name = workers["workers"][0]["name"].clone();
    let (_, view) = s.get(&format!("/api/runs/{slow_id}")).await;
    assert_eq!(
        view["abortedBy"],
        json!({"actor": null, "node": node, "nodeName": name, "via": "api"}),
        "{view}"
    );
    let ended = events
        .seen
        .iter()
        .find(|e| e.event == "run:completed" && e.data["runId"] == slow_id)
        .unwrap();
    assert_eq!(ended.data["abortedBy"]["via"], "api", "{:?}", ended.data);
    s.stop().await;
}

#[tokio::test]
async fn pipelines_and_workers_are_listed() {
    let s = TestServer::start("max_workers = 3", PIPELINES).await;
    let (status, body) = s.get("/api/pipelines").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["count", "echo", "sharded"]);
    let (_, workers) = s.get("/api/workers").await;
    let w = &workers["workers"][0];
    assert_eq!(w["slots"], 3);
    assert_eq!(w["pid"], std::process::id());
    assert_eq!(w["self"], true);
    s.stop().await;
}

#[tokio::test]
async fn idempotency_keys_follow_one_rule_in_the_body_and_the_header() {
    let s = TestServer::start("", PIPELINES).await;
    let rule = "idempotencyKey must be 1 to 200 visible ASCII characters or spaces (the Idempotency-Key header's rule)";
    // 200 visible ASCII characters, spaces included: within the rule, in both places.
    let key = format!("deploy 42 ~{}", "x".repeat(189));
    assert_eq!(key.len(), 200);
    let (status, body) = s.trigger("echo", json!({ "idempotencyKey": key })).await;
    assert_eq!(status, 202, "{body}");
    let resp = s
        .http
        .post(format!("{}/api/pipelines/echo/trigger", s.base))
        .header("Idempotency-Key", &key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let replay: Value = resp.json().await.unwrap();
    assert_eq!(
        replay["runId"], body["runId"],
        "the header names the same key"
    );
    // Too long, empty, a control character (NUL cannot even be stored as PostgreSQL
    // text), or anything a header cannot carry: 400 with the one rule, never 503.
    let too_long = "x".repeat(201);
    for key in [
        "",
        too_long.as_str(),
        "a\u{0}b",
        "tab\there",
        "é",
        "caf\u{e9}",
    ] {
        let (status, body) = s.trigger("echo", json!({ "idempotencyKey": key })).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some(rule)),
            "{key:?}"
        );
    }
    // The header refuses the same: bytes outside visible ASCII are the same 400.
    let resp = s
        .http
        .post(format!("{}/api/pipelines/echo/trigger", s.base))
        .header(
            "Idempotency-Key",
            reqwest::header::HeaderValue::from_bytes("caf\u{e9}".as_bytes()).unwrap(),
        )
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], rule);
    s.stop().await;
}

#[tokio::test]
async fn short_run_ids_work_on_every_route_and_an_ambiguous_one_is_a_clear_400() {
    let s = TestServer::start("", PIPELINES).await;
    let (_, a) = s.trigger("sharded", json!({})).await;
    let (_, b) = s.trigger("sharded", json!({})).await;
    let (a, b) = (a["runId"].as_str().unwrap(), b["runId"].as_str().unwrap());
    // Runs created together share their leading (timestamp) digits: the shortest
    // unique prefix of `a` is where they part, and at least 8 characters.
    let differ = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    let short = &a[..(differ + 1).max(8)];
    let (status, run) = s.get(&format!("/api/runs/{short}")).await;
    assert_eq!((status, run["runId"].as_str()), (200, Some(a)), "{run}");
    let bare: String = short.chars().filter(|c| *c != '-').collect();
    assert_eq!(
        s.get(&format!("/api/runs/{}", bare.to_uppercase())).await.0,
        200
    );
    assert_eq!(s.get(&format!("/api/runs/{short}/deliveries")).await.0, 200);
    // The dashboard's short form: the id's last 8 digits (its random end).
    let tail = &a[a.len() - 8..];
    let (status, run) = s.get(&format!("/api/runs/{tail}")).await;
    assert_eq!((status, run["runId"].as_str()), (200, Some(a)), "{run}");
    let (status, job) = s.get(&format!("/api/jobs/{tail}:s1")).await;
    assert_eq!((status, job["id"].clone()), (200, json!(format!("{a}:s1"))));
    let (status, job) = s.get(&format!("/api/jobs/{short}:s1")).await;
    assert_eq!((status, job["id"].clone()), (200, json!(format!("{a}:s1"))));
    let (status, logs) = s.get(&format!("/api/jobs/{short}:s0/logs")).await;
    assert_eq!(
        (status, logs["jobId"].clone()),
        (200, json!(format!("{a}:s0")))
    );
    let stream = s
        .http
        .get(format!("{}/api/jobs/{short}:s2/logs/stream", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    drop(stream);

    let common = &a[..differ.max(8)];
    if common.len() == differ {
        // Both match: 400 naming both, never a guess.
        let (status, body) = s.get(&format!("/api/runs/{common}")).await;
        assert_eq!(status, 400, "{body}");
        let msg = body["error"].as_str().unwrap();
        assert!(
            msg.contains("ambiguous") && msg.contains(a) && msg.contains(b),
            "{msg}"
        );
        assert_eq!(
            s.post(&format!("/api/runs/{common}/abort"), json!({}))
                .await
                .0,
            400
        );
    }
    for (path, want) in [
        ("/api/runs/ffffffff".to_string(), 404),
        ("/api/jobs/ffffffff-ff:s0/logs".to_string(), 404),
        (format!("/api/runs/{}", &a[..7]), 400),
        ("/api/runs/0190-abcdef".to_string(), 400),
        (format!("/api/jobs/{short}:sx"), 400),
    ] {
        let (status, body) = s.get(&path).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    // Abort resolves it too (the run may have completed already: then 409 names it).
    let (status, body) = s.post(&format!("/api/runs/{short}/abort"), json!({})).await;
    assert!(
        (status == 202 && body["runId"] == a)
            || (status == 409 && body["error"].as_str().unwrap().contains(a)),
        "{status} {body}"
    );
    s.stop().await;
}

/// Every id the API hands out resolves where it is documented to be used. A
/// sharded run's trigger answer names the run as `jobId`; the jobs routes answer for it
/// with the run as one job and its shards, and with every shard's lines.
#[tokio::test]
async fn a_sharded_runs_job_id_resolves_on_the_jobs_routes() {
    let s = TestServer::start(
        "",
        "[pipelines.parts]\ncommand = [\"sh\", \"-c\", \"echo out $RUNYARD_SHARD_INDEX; echo err >&2\"]\nshards = 2\n",
    )
    .await;
    let (status, t) = s.trigger("parts", json!({})).await;
    assert_eq!(status, 202, "{t}");
    let job_id = t["jobId"].as_str().unwrap().to_string();
    let mut events = s.events();
    s.wait_run(&mut events, &job_id, Duration::from_secs(20))
        .await;
    let (status, job) = s.get(&format!("/api/jobs/{job_id}")).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["kind"], "run");
    assert_eq!(job["status"], "completed");
    assert_eq!(job["shardCount"], 2);
    let shards: Vec<&str> = job["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(shards, [format!("{job_id}:s0"), format!("{job_id}:s1")]);
    let (status, logs) = s.get(&format!("/api/jobs/{job_id}/logs")).await;
    assert_eq!(status, 200, "{logs}");
    assert_eq!(logs["stdout"], json!(["[s0] out 0", "[s1] out 1"]));
    assert_eq!(logs["stderr"], json!(["[s0] err", "[s1] err"]));
    // A shard's own id and an unknown one behave as before.
    let (status, shard) = s.get(&format!("/api/jobs/{job_id}:s1")).await;
    assert_eq!((status, shard["kind"].as_str()), (200, Some("shard")));
    assert!(shard.get("shards").is_none());
    let (status, _) = s.get(&format!("/api/jobs/{job_id}:s7")).await;
    assert_eq!(status, 404);
    // The one-job routes (a live stream, a download) name the run's jobs instead.
    let (status, err) = s.get(&format!("/api/jobs/{job_id}/logs/stream")).await;
    assert_eq!(status, 404);
    let msg = err["error"].as_str().unwrap();
    assert!(
        msg.contains("is a run of 2 shards") && msg.contains(&format!("{job_id}:s1")),
        "{msg}"
    );
    s.stop().await;
}
