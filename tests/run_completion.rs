//! Run completion and safety against the real server: finalizers, completion
//! webhooks (signed, retried, SSRF-checked at trigger and at delivery), pipeline
//! setup with its circuit breaker, idempotent triggers, secret masking and
//! resource admission.

mod common;

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::dns::DnsStub;
use common::{TestServer, eventually};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------- finalizer

#[tokio::test]
async fn a_finalizer_runs_once_after_every_shard_with_their_results() {
    let marks = tempfile::tempdir().unwrap();
    let marker = marks.path().join("finalized");
    let s = TestServer::start(
        "max_workers = 3",
        &format!(
            r#"
[pipelines.suite]
command = ["sh", "-c", 'echo "{{{{\"shard\": $RUNYARD_SHARD_INDEX}}}}" > "$RUNYARD_RESULT_FILE"; echo shard-$RUNYARD_SHARD_INDEX']
shards = 3
env = {{ MARKER = "{}" }}
finalizer = ["sh", "-c", 'echo "status=$RUNYARD_RUN_STATUS"; cat "$RUNYARD_SUMMARY_FILE"; echo "{{{{\"merged\": true}}}}" > "$RUNYARD_RESULT_FILE"; echo ran >> "$MARKER"']
"#,
            marker.display()
        ),
    )
    .await;
    let mut events = s.events();
    let (status, t) = s.trigger("suite", json!({})).await;
    assert_eq!(status, 202, "{t}");
    let run_id = t["runId"].as_str().unwrap().to_string();
    let run = s.wait_run(&mut events, &run_id, T).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["jobs"].as_array().unwrap().len(), 3, "shards only");
    let fin = &run["finalizer"];
    assert_eq!(fin["id"], format!("{run_id}:finalize"));
    assert_eq!(fin["status"], "completed");
    assert_eq!(fin["result"], json!({"merged": true}));
    for (i, job) in run["jobs"].as_array().unwrap().iter().enumerate() {
        assert_eq!(
            job["result"],
            json!({"shard": i}),
            "shard results are stored"
        );
    }
    assert_eq!(
        lines(&marker),
        vec!["ran"],
        "the finalizer ran exactly once"
    );

    // Its output is captured like a job's: the status it was told and the summary file.
    let (_, logs) = s.get(&format!("/api/jobs/{run_id}:finalize/logs")).await;
    let out = logs["stdout"].as_array().unwrap();
    assert_eq!(out[0], "status=completed");
    let summary: Value = serde_json::from_str(
        &out[1..]
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    assert_eq!(summary["runId"], run_id);
    assert_eq!(summary["shards"].as_array().unwrap().len(), 3);
    for (i, shard) in summary["shards"].as_array().unwrap().iter().enumerate() {
        assert_eq!(shard["status"], "completed");
        assert_eq!(shard["exitCode"], 0);
        assert_eq!(shard["attempts"], 1);
        assert_eq!(shard["result"], json!({"shard": i}));
        assert!(shard["durationMs"].is_i64());
    }

    // The run turns terminal after the finalizer, exactly once.
    let names: Vec<(String, String)> = events
        .of_run(&run_id)
        .map(|e| {
            (
                e.event.clone(),
                e.data["jobId"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let fin_done = names
        .iter()
        .position(|(n, j)| n == "job:completed" && j.ends_with(":finalize"))
        .expect("finalizer completed event");
    let run_done: Vec<usize> = names
        .iter()
        .enumerate()
        .filter(|(_, (n, _))| n == "run:completed")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(run_done.len(), 1, "{names:?}");
    assert!(fin_done < run_done[0]);
    s.stop().await;
}

#[tokio::test]
async fn the_finalizer_is_the_quality_gate_and_runs_after_failed_shards() {
    let s = TestServer::start(
        "max_workers = 2",
        r#"
[pipelines.partly]
command = ["sh", "-c", 'exit $RUNYARD_SHARD_INDEX']
shards = 2
finalizer = ["sh", "-c", 'echo "status=$RUNYARD_RUN_STATUS"']

[pipelines.gated]
command = ["true"]
finalizer = ["sh", "-c", 'echo "coverage too low" >&2; exit 3']
"#,
    )
    .await;
    let mut events = s.events();
    let (_, a) = s.trigger("partly", json!({})).await;
    let (_, b) = s.trigger("gated", json!({})).await;
    let a = a["runId"].as_str().unwrap().to_string();
    let b = b["runId"].as_str().unwrap().to_string();

    let run = s.wait_run(&mut events, &a, T).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(
        run["finalizer"]["status"], "completed",
        "it runs after failed shards"
    );
    let (_, logs) = s.get(&format!("/api/jobs/{a}:finalize/logs")).await;
    assert_eq!(logs["stdout"], json!(["status=failed"]));

    let run = s.wait_run(&mut events, &b, T).await;
    assert_eq!(run["jobs"][0]["status"], "completed");
    assert_eq!(run["status"], "failed", "a failing finalizer fails the run");
    assert_eq!(run["finalizer"]["exitCode"], 3);
    assert_eq!(run["finalizer"]["attempt"], 1, "a finalizer is not retried");
    let done = events
        .of_run(&b)
        .find(|e| e.event == "run:completed")
        .unwrap();
    assert_eq!(done.data["finalizer"]["exitCode"], 3);
    s.stop().await;
}

#[tokio::test]
async fn a_finalizer_interrupted_by_a_crash_runs_again_and_completes_once() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("fin");
    let config = common::write_config(
        dir.path(),
        "heartbeat = \"200ms\"",
        &format!(
            r#"
[pipelines.merge]
command = ["true"]
env = {{ M = "{}" }}
finalizer = ["sh", "-c", 'echo start >> "$M"; if [ -e "$M.once" ]; then echo done >> "$M"; exit 0; fi; touch "$M.once"; exec sleep 300']
"#,
            marker.display()
        ),
    );
    let port = common::free_port();
    let mut first = common::BinServer::start(&config, port).await;
    let http = reqwest::Client::new();
    let (status, t) = common::post(
        &http,
        &format!("{}/api/pipelines/merge/trigger", first.base),
        json!({}),
    )
    .await;
    assert_eq!(status, 202);
    let run_id = t["runId"].as_str().unwrap().to_string();
    let once = dir.path().join("fin.once");
    eventually(T, "the finalizer to start", || {
        let once = once.clone();
        async move { once.exists() }
    })
    .await;
    first.signal("KILL");
    first.wait_exit(T).await;

    let second = common::BinServer::start(&config, port).await;
    let url = format!("{}/api/runs/{run_id}", second.base);
    eventually(T, "the run to complete after recovery", || {
        let (http, url) = (http.clone(), url.clone());
        async move { common::get(&http, &url).await.1["status"] == "completed" }
    })
    .await;
    let run = common::get(&http, &url).await.1;
    assert_eq!(run["finalizer"]["status"], "completed");
    assert_eq!(run["finalizer"]["requeues"], 1, "recovered like an orphan");
    assert_eq!(lines(&marker), vec!["start", "start", "done"]);
}

// ---------------------------------------------------------------- webhooks

/// A local HTTP receiver answering with the queued statuses (then 204), recording requests.
struct Receiver {
    url: String,
    port: u16,
    seen: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    answers: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    async fn start(answers: &[u16]) -> Receiver {
        let seen: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
        let queue = Arc::new(Mutex::new(answers.iter().copied().collect::<VecDeque<_>>()));
        let (s, q) = (seen.clone(), queue.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (s, q) = (s.clone(), q.clone());
                async move {
                    s.lock().unwrap().push((headers, body));
                    let code = q.lock().unwrap().pop_front().unwrap_or(204);
                    StatusCode::from_u16(code).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            port,
            seen,
            answers: queue,
        }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

const HOOK_SECRET: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZg==";

#[tokio::test]
async fn webhook_is_signed_delivered_and_retried_with_visible_attempts() {
    let rx = Receiver::start(&[500]).await;
    let s = TestServer::start_env(
        "",
        r#"
[webhooks]
secret_env = "HOOK_SECRET"
allow_http = true
allow_hosts = ["127.0.0.1"]
retry_backoff = "100ms"

[pipelines.quick]
command = ["sh", "-c", 'echo "{{\"ok\": 1}}" > "$RUNYARD_RESULT_FILE"']
"#,
        &[("HOOK_SECRET", HOOK_SECRET)],
    )
    .await;
    let mut events = s.events();
    let (status, t) = s.trigger("quick", json!({"callbackUrl": rx.url})).await;
    assert_eq!(status, 202, "{t}");
    let run_id = t["runId"].as_str().unwrap().to_string();
    s.wait_run(&mut events, &run_id, T).await;
    eventually(T, "the webhook to be delivered", || {
        let s = &s;
        let run_id = run_id.clone();
        async move {
            s.get(&format!("/api/runs/{run_id}/deliveries")).await.1["deliveries"][0]["status"]
                == "delivered"
        }
    })
    .await;
    let (_, d) = s.get(&format!("/api/runs/{run_id}/deliveries")).await;
    let delivery = &d["deliveries"][0];
    assert_eq!(delivery["attempts"], 2);
    let history = delivery["history"].as_array().unwrap();
    assert_eq!(history[0]["statusCode"], 500);
    assert!(history[0]["error"].is_string());
    assert_eq!(history[1]["statusCode"], 204);
    assert_eq!(rx.count(), 2);

    let key = runyard::webhook::secret_key(HOOK_SECRET).unwrap();
    let seen = rx.seen.lock().unwrap().clone();
    let ids: Vec<&str> = seen
        .iter()
        .map(|(h, _)| h["webhook-id"].to_str().unwrap())
        .collect();
    assert_eq!(ids[0], ids[1], "retries keep the webhook id");
    assert_eq!(ids[0], delivery["id"]);
    for (headers, body) in &seen {
        let ts: i64 = headers["webhook-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let expected = runyard::webhook::sign(&key, ids[0], ts, body);
        assert_eq!(headers["webhook-signature"].to_str().unwrap(), expected);
        let payload: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(payload["type"], "run.completed");
        assert_eq!(payload["data"]["runId"], run_id);
        assert_eq!(payload["data"]["status"], "completed");
        assert_eq!(payload["data"]["shards"][0]["result"], json!({"ok": 1}));
    }
    // The run view shows its deliveries too.
    let (_, run) = s.get(&format!("/api/runs/{run_id}")).await;
    assert_eq!(run["callbackUrl"], rx.url);
    assert_eq!(run["deliveries"][0]["status"], "delivered");
    assert!(rx.answers.lock().unwrap().is_empty());
    s.stop().await;
}

#[tokio::test]
async fn unsafe_callback_urls_are_refused_at_trigger() {
    let s = TestServer::start("", "[pipelines.quick]\ncommand = [\"true\"]\n").await;
    for url in [
        "http://example.com/hook",
        "https://127.0.0.1/hook",
        "https://localhost./hook",
        "https://10.1.2.3/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/hook",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://2130706433/hook",
        "https://0x7f.1/hook",
        "https://user:pw@example.com/hook",
        "ftp://example.com/hook",
        "not a url",
    ] {
        let (status, body) = s.trigger("quick", json!({"callbackUrl": url})).await;
        assert_eq!(status, 400, "{url} accepted: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("callbackUrl"),
            "{url}: {body}"
        );
    }
    let (_, runs) = s.get("/api/runs").await;
    assert_eq!(
        runs["runs"].as_array().unwrap().len(),
        0,
        "nothing was queued"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_dns_answer_that_changes_after_the_trigger_check_is_refused_at_delivery() {
    let dns = DnsStub::start().await;
    dns.set("hook.test", Ipv4Addr::new(1, 1, 1, 1));
    let rx = Receiver::start(&[]).await;
    let gate = tempfile::tempdir().unwrap();
    let go = gate.path().join("go");
    let s = TestServer::start(
        "",
        &format!(
            r#"
[webhooks]
allow_http = true
nameservers = ["{}"]
max_attempts = 1

[pipelines.waits]
command = ["sh", "-c", 'while [ ! -e "$GO" ]; do sleep 0.02; done']
env = {{ GO = "{}" }}
"#,
            dns.addr,
            go.display()
        ),
    )
    .await;
    let mut events = s.events();
    let url = format!("http://hook.test:{}/hook", rx.port);
    let (status, t) = s.trigger("waits", json!({"callbackUrl": url})).await;
    assert_eq!(status, 202, "a global answer passes the trigger check: {t}");
    let run_id = t["runId"].as_str().unwrap().to_string();
    // Rebinding: the name now points at the server's own loopback.
    dns.set("hook.test", Ipv4Addr::LOCALHOST);
    std::fs::write(&go, "").unwrap();
    s.wait_run(&mut events, &run_id, T).await;
    eventually(T, "the delivery to be given up", || {
        let s = &s;
        let run_id = run_id.clone();
        async move {
            s.get(&format!("/api/runs/{run_id}/deliveries")).await.1["deliveries"][0]["status"]
                == "failed"
        }
    })
    .await;
    let (_, d) = s.get(&format!("/api/runs/{run_id}/deliveries")).await;
    let error = d["deliveries"][0]["history"][0]["error"].as_str().unwrap();
    assert!(error.contains("127.0.0.1"), "{error}");
    assert!(d["deliveries"][0]["history"][0]["statusCode"].is_null());
    assert_eq!(rx.count(), 0, "no request reached the loopback receiver");
    assert!(
        dns.lookups("hook.test") >= 2,
        "checked at trigger and again at delivery"
    );
    s.stop().await;
}

// ---------------------------------------------------------------- setup and circuit

#[tokio::test]
async fn setup_runs_once_per_node_for_concurrent_first_jobs() {
    let work = tempfile::tempdir().unwrap();
    let s = TestServer::start(
        "max_workers = 4",
        &format!(
            r#"
[pipelines.built]
command = ["sh", "-c", 'test -e "$DIR/setup-done" && echo built-ok']
shards = 4
env = {{ DIR = "{}" }}
setup = ["sh", "-c", 'echo x >> "$DIR/setup-count"; sleep 0.3; touch "$DIR/setup-done"']
"#,
            work.path().display()
        ),
    )
    .await;
    let mut events = s.events();
    let (_, t) = s.trigger("built", json!({})).await;
    let run_id = t["runId"].as_str().unwrap().to_string();
    let run = s.wait_run(&mut events, &run_id, T).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(lines(&work.path().join("setup-count")).len(), 1);
    // A second run reuses the cached setup.
    let (_, t) = s.trigger("built", json!({})).await;
    let run = s
        .wait_run(&mut events, t["runId"].as_str().unwrap(), T)
        .await;
    assert_eq!(run["status"], "completed");
    assert_eq!(lines(&work.path().join("setup-count")).len(), 1);

    let (_, p) = s.get("/api/pipelines").await;
    let built = &p["pipelines"][0];
    assert_eq!(built["circuit"], "closed");
    assert_eq!(built["setup"]["nodes"][0]["setup"], "ready");
    assert_eq!(built["setup"]["nodes"][0]["failures"], 0);
    s.stop().await;
}

#[tokio::test]
async fn failing_setup_opens_the_circuit_jobs_wait_and_a_half_open_trial_recovers() {
    let work = tempfile::tempdir().unwrap();
    let s = TestServer::start(
        "",
        &format!(
            r#"
[pipelines.flaky]
command = ["echo", "ran"]
env = {{ DIR = "{}" }}
setup = ["sh", "-c", 'echo attempt >> "$DIR/count"; test -e "$DIR/fixed" || {{{{ echo "npm ERR! registry down" >&2; exit 7; }}}}']
circuit_threshold = 3
circuit_cooldown = "3s"
"#,
            work.path().display()
        ),
    )
    .await;
    let mut events = s.events();
    let (_, t) = s.trigger("flaky", json!({})).await;
    let first = t["runId"].as_str().unwrap().to_string();
    eventually(T, "the circuit to open", || {
        let s = &s;
        async move { s.get("/api/pipelines").await.1["pipelines"][0]["circuit"] == "open" }
    })
    .await;
    let (_, p) = s.get("/api/pipelines").await;
    let node = &p["pipelines"][0]["setup"]["nodes"][0];
    assert_eq!(node["failures"], 3);
    assert_eq!(node["setup"], "failed");
    assert!(
        node["lastError"]
            .as_str()
            .unwrap()
            .contains("npm ERR! registry down")
    );
    // The job waits: released three times, never failed for good. (The release commits
    // after the circuit's state, in its own transaction on a shared database.)
    eventually(T, "the job released to the queue", || {
        let (s, first) = (&s, &first);
        async move { s.get(&format!("/api/jobs/{first}")).await.1["status"] == "queued" }
    })
    .await;
    let (_, job) = s.get(&format!("/api/jobs/{first}")).await;
    assert_eq!(job["attempt"], 1, "setup failures spend no attempt");
    events
        .wait_count("job:failed", |d| d["runId"] == first.as_str(), 3, T)
        .await;
    let releases: Vec<_> = events
        .of_run(&first)
        .filter(|e| e.event == "job:failed")
        .collect();
    assert!(
        releases
            .iter()
            .all(|e| e.data["status"] == "queued" && e.data["reason"] == "setup_failed")
    );

    // Open on every live node: triggers are refused with Retry-After.
    let resp = s
        .http
        .post(format!("{}/api/pipelines/flaky/trigger", s.base))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry), "{retry}");
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("circuit is open"));

    // Fix the cause; after the cool-down one trial setup closes the circuit.
    std::fs::write(work.path().join("fixed"), "").unwrap();
    let run = s.wait_run(&mut events, &first, T).await;
    assert_eq!(run["status"], "completed");
    // Three failures opened it and the trial after the fix closed it: four setups. A
    // trial the cool-down let in before the fix was written (a loaded machine: the steps
    // above took over 3 s) failed and reopened it, one more each time.
    let setups = lines(&work.path().join("count")).len();
    assert!(setups >= 4, "{setups} setups");
    let (_, p) = s.get("/api/pipelines").await;
    assert_eq!(p["pipelines"][0]["circuit"], "closed");
    assert_eq!(p["pipelines"][0]["setup"]["nodes"][0]["setup"], "ready");
    s.stop().await;
}

// ---------------------------------------------------------------- idempotency

#[tokio::test]
async fn a_hundred_concurrent_identical_triggers_create_one_run() {
    let s = TestServer::start("", "[pipelines.once]\ncommand = [\"true\"]\n").await;
    let url = format!("{}/api/pipelines/once/trigger", s.base);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (http, url) = (s.http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            // Half use the body field, half the Idempotency-Key header.
            let req = if i % 2 == 0 {
                http.post(&url)
                    .json(&json!({"idempotencyKey": "deploy-42"}))
            } else {
                http.post(&url)
                    .header("Idempotency-Key", "deploy-42")
                    .json(&json!({}))
            };
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut fresh = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 202, "{body}");
        ids.insert(body["runId"].as_str().unwrap().to_string());
        if body.get("idempotentReplay").is_none() {
            fresh += 1;
        }
    }
    assert_eq!(ids.len(), 1, "one run id for every answer");
    assert_eq!(fresh, 1, "exactly one trigger created the run");
    let (_, runs) = s.get("/api/runs").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1);
    // The same key with other parameters is a conflict, not a silent replay.
    let resp = s
        .http
        .post(&url)
        .json(&json!({"idempotencyKey": "deploy-42", "shards": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("different parameters")
    );
    // Header and body disagreeing is a client error.
    let resp = s
        .http
        .post(&url)
        .header("Idempotency-Key", "a")
        .json(&json!({"idempotencyKey": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    s.stop().await;
}

// ---------------------------------------------------------------- secrets

const SECRET: &str = "sup3r-s3cret-value";

#[tokio::test]
async fn secrets_are_masked_in_stored_output_sse_results_and_webhooks() {
    let rx = Receiver::start(&[]).await;
    let s = TestServer::start_env(
        "",
        r#"
[secrets.tok]
env = "TOK_VAL"

[webhooks]
allow_http = true
allow_hosts = ["127.0.0.1"]

[pipelines.leaky]
command = ["sh", "-c", '''
test "$TOKEN" = "sup3r-s3cret-value" && echo match
echo "token=$TOKEN"
printf 'half:%s' "$(echo "$TOKEN" | cut -c1-6)"; sleep 0.3; printf '%s\n' "$(echo "$TOKEN" | cut -c7-)"
echo "::progress 50 using $TOKEN"
echo "err $TOKEN" >&2
echo "{{\"t\": \"$TOKEN\"}}" > "$RUNYARD_RESULT_FILE"
''']
env = { TOKEN = { secret = "tok" } }
"#,
        &[("TOK_VAL", SECRET)],
    )
    .await;
    let mut events = s.events();
    let (_, t) = s.trigger("leaky", json!({"callbackUrl": rx.url})).await;
    let run_id = t["runId"].as_str().unwrap().to_string();
    let log_stream = common::sse_reader(format!("{}/api/jobs/{run_id}/logs/stream", s.base), None);
    let run = s.wait_run(&mut events, &run_id, T).await;
    assert_eq!(run["status"], "completed");

    let (_, logs) = s.get(&format!("/api/jobs/{run_id}/logs")).await;
    assert_eq!(
        logs["stdout"],
        json!([
            "match",
            "token=[redacted]",
            "half:[redacted]",
            "::progress 50 using [redacted]"
        ]),
        "split across a flush, still masked"
    );
    assert_eq!(logs["stderr"], json!(["err [redacted]"]));
    assert_eq!(run["jobs"][0]["result"], json!({"t": "[redacted]"}));
    let progress = events
        .of_run(&run_id)
        .find(|e| e.event == "job:progress")
        .unwrap();
    assert_eq!(progress.data["message"], "using [redacted]");
    let mut stream = log_stream;
    let mut streamed = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(T, stream.recv()).await {
        if msg.event == "end" {
            break;
        }
        streamed.push(msg.data.to_string());
    }
    assert!(!streamed.is_empty());
    eventually(T, "the webhook", || {
        let rx = &rx;
        async move { rx.count() == 1 }
    })
    .await;
    let body = rx.seen.lock().unwrap()[0].1.clone();
    let everything = format!(
        "{logs}{run}{streamed:?}{}{}",
        String::from_utf8_lossy(&body),
        events
            .of_run(&run_id)
            .map(|e| e.data.to_string())
            .collect::<String>()
    );
    assert!(!everything.contains(SECRET), "a secret leaked");
    assert!(!everything.contains("sup3r-"), "a piece of a secret leaked");
    s.stop().await;
}

#[tokio::test]
async fn secrets_come_from_env_or_files_never_inline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runyard.toml");
    let bad = "[secrets.x]\nvalue = \"inline\"\n";
    let err = runyard::config::Settings::from_toml(bad, &path, &|_| None).unwrap_err();
    assert!(err.to_string().contains("unknown field `value`"), "{err}");
    let missing = "[secrets.x]\nenv = \"NOPE\"\n";
    let err = runyard::config::Settings::from_toml(missing, &path, &|_| None).unwrap_err();
    assert!(err.to_string().contains("NOPE"), "{err}");
    std::fs::write(dir.path().join("key"), "file-secret-1\n").unwrap();
    let ok = "[secrets.x]\nfile = \"key\"\n[pipelines.p]\ncommand = [\"true\"]\nenv = { K = { secret = \"x\" } }\n";
    let settings = runyard::config::Settings::from_toml(ok, &path, &|_| None).unwrap();
    assert_eq!(
        settings.secrets.values().collect::<Vec<_>>(),
        vec!["file-secret-1"]
    );
    assert!(
        !format!("{settings:?}").contains("file-secret-1"),
        "secret values never reach Debug output (logs)"
    );
}

// ---------------------------------------------------------------- admission

#[tokio::test]
async fn admission_holds_jobs_queued_until_resources_allow() {
    let s = TestServer::start(
        "admit_min_free_memory = \"1000000GiB\"",
        "[pipelines.heavy]\ncommand = [\"echo\", \"ran\"]\n",
    )
    .await;
    let (_, t) = s.trigger("heavy", json!({})).await;
    let run_id = t["runId"].as_str().unwrap().to_string();
    eventually(T, "the node to hold jobs", || {
        let s = &s;
        async move {
            s.get("/api/workers").await.1["workers"][0]["admission"]
                .as_str()
                .is_some_and(|a| a.starts_with("held: available memory"))
        }
    })
    .await;
    let (_, job) = s.get(&format!("/api/jobs/{run_id}")).await;
    assert_eq!(job["status"], "queued", "held jobs wait, they do not fail");
    let dir = s.stop_keep().await;

    // The same store under a node without the threshold: the job runs.
    let s = TestServer::start_in(
        dir,
        "",
        "[pipelines.heavy]\ncommand = [\"echo\", \"ran\"]\n",
        &[],
    )
    .await;
    let mut events = s.events();
    let run = s.wait_run(&mut events, &run_id, T).await;
    assert_eq!(run["status"], "completed");
    s.stop().await;
}

#[tokio::test]
async fn result_files_can_neither_hang_the_node_nor_hide_a_secret_in_escapes() {
    let s = TestServer::start_env(
        "max_workers = 3",
        r#"
[secrets.dsn]
env = "DSN"

[pipelines.fifo]
command = ["sh", "-c", 'mkfifo "$RUNYARD_RESULT_FILE"']

[pipelines.zero]
command = ["sh", "-c", 'ln -s /dev/zero "$RUNYARD_RESULT_FILE"']

[pipelines.escaped]
command = ["sh", "-c", 'printf "%s" "{{\"dsn\": \"p\\u0026ss\\u003cword\\u003e42\"}}" > "$RUNYARD_RESULT_FILE"']
"#,
        &[("DSN", "p&ss<word>42")],
    )
    .await;
    let mut events = s.events();
    let mut runs = Vec::new();
    for p in ["fifo", "zero", "escaped"] {
        let (status, t) = s.trigger(p, json!({})).await;
        assert_eq!(status, 202, "{t}");
        runs.push(t["runId"].as_str().unwrap().to_string());
    }
    for r in &runs {
        let run = s.wait_run(&mut events, r, T).await;
        assert_eq!(run["status"], "completed", "{run}");
    }
    let (_, fifo) = s.get(&format!("/api/runs/{}", runs[0])).await;
    assert!(fifo["jobs"][0]["result"].is_null(), "a FIFO is not read");
    let (_, zero) = s.get(&format!("/api/runs/{}", runs[1])).await;
    assert!(
        zero["jobs"][0]["result"].is_null(),
        "a symlink is not followed"
    );
    let (_, esc) = s.get(&format!("/api/runs/{}", runs[2])).await;
    assert_eq!(esc["jobs"][0]["result"], json!({"dsn": "[redacted]"}));
    let (status, _) = s.get("/healthz").await;
    assert_eq!(status, 200, "the node still answers");
    s.stop().await;
}

#[tokio::test]
async fn aborting_a_run_never_stops_its_running_finalizer() {
    let gate = tempfile::tempdir().unwrap();
    let go = gate.path().join("go");
    let s = TestServer::start(
        "",
        &format!(
            r#"
[pipelines.cleanup]
command = ["true"]
env = {{ GO = "{}" }}
finalizer = ["sh", "-c", 'echo start; while [ ! -e "$GO" ]; do sleep 0.02; done; echo end']
"#,
            go.display()
        ),
    )
    .await;
    let mut events = s.events();
    let (_, t) = s.trigger("cleanup", json!({})).await;
    let run_id = t["runId"].as_str().unwrap().to_string();
    let fin = format!("{run_id}:finalize");
    events
        .wait_for("job:started", |d| d["jobId"] == fin.as_str(), T)
        .await;
    for _ in 0..2 {
        let (status, body) = s
            .post(&format!("/api/runs/{run_id}/abort"), json!({}))
            .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(
            body["abortedJobs"], 0,
            "the finalizer is not counted or touched"
        );
    }
    std::fs::write(&go, "").unwrap();
    let run = s.wait_run(&mut events, &run_id, T).await;
    assert_eq!(run["status"], "aborted");
    assert_eq!(run["finalizer"]["status"], "completed");
    let (_, logs) = s.get(&format!("/api/jobs/{fin}/logs")).await;
    assert_eq!(logs["stdout"], json!(["start", "end"]));
    s.stop().await;
}
