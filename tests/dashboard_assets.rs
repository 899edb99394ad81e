//! The embedded dashboard: `/` and `/assets/{file}` with types, CSP and revalidation.
//! (The real-browser test is `tests/browser/run.sh`.)

mod common;

use common::TestServer;

#[tokio::test]
async fn dashboard_is_served_from_the_binary_with_strict_headers() {
    let s = TestServer::start("", "[pipelines.echo]\ncommand = [\"echo\"]\n").await;
    let res = s.http.get(format!("{}/", s.base)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cache-control"], "no-cache");
    let body = res.text().await.unwrap();
    assert!(body.contains("/assets/app.js"), "{body}");
    assert!(
        !body.contains("<style") && !body.contains("onclick="),
        "no inline styles or handlers"
    );

    for (file, ty) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("logview.js", "text/javascript; charset=utf-8"),
        ("chart.js", "text/javascript; charset=utf-8"),
        ("nodes.js", "text/javascript; charset=utf-8"),
        ("workflows.js", "text/javascript; charset=utf-8"),
        ("wfgraph.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let res = s
            .http
            .get(format!("{}/assets/{file}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{file}");
        assert_eq!(res.headers()["content-type"], ty, "{file}");
        assert!(res.headers().contains_key("content-security-policy"));
        let etag = res.headers()["etag"].clone();
        let again = s
            .http
            .get(format!("{}/assets/{file}", s.base))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{file} revalidates");
    }

    let (status, body) = s.get("/assets/..%2Fsrc%2Fmain.rs").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].is_string());
    let (status, _) = s.get("/assets/nope.js").await;
    assert_eq!(status, 404);
    // The API is unchanged next to it.
    let (status, _) = s.get("/api/pipelines").await;
    assert_eq!(status, 200);
    s.stop().await;
}

const T: std::time::Duration = std::time::Duration::from_secs(30);

/// Epoch ms of an RFC 3339 UTC stamp as the API writes it (`YYYY-MM-DDTHH:MM:SS.mmmZ`).
fn epoch_ms(v: &serde_json::Value) -> i64 {
    let s = v.as_str().expect("timestamp");
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let (y, mo, d) = (n(0..4), n(5..7), n(8..10));
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    ((days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)) * 1000) + n(20..23)
}

/// Reads a job's log stream until its `end` event.
async fn log_stream(s: &TestServer, job: &str) -> Vec<serde_json::Value> {
    let mut rx = common::sse_reader(format!("{}/api/jobs/{job}/logs/stream", s.base), None);
    let mut lines = Vec::new();
    loop {
        let msg = tokio::time::timeout(T, rx.recv())
            .await
            .expect("log stream answers")
            .expect("log stream ends with `end`");
        if msg.event == "end" {
            return lines;
        }
        lines.push(msg.data);
    }
}

#[tokio::test]
async fn attempts_come_from_events_and_log_lines_carry_their_execution_and_time() {
    let s = TestServer::start(
        "",
        r#"
[pipelines.flaky]
command = ["sh", "-c", "echo \"attempt $RUNYARD_ATTEMPT out\"; echo \"attempt $RUNYARD_ATTEMPT err\" >&2; test $RUNYARD_ATTEMPT -ge 3 || exit 7; echo '{{\"ok\": true}}' > \"$RUNYARD_RESULT_FILE\""]
max_attempts = 3
retry_backoff = "50ms"
"#,
    )
    .await;
    let mut events = s.events();
    let (_, t) = s.trigger("flaky", serde_json::json!({})).await;
    let run_id = t["runId"].as_str().unwrap().to_string();
    let run = s.wait_run(&mut events, &run_id, T).await;
    assert_eq!(run["status"], "completed", "{run:#}");
    assert_eq!(run["jobs"][0]["result"], serde_json::json!({"ok": true}));

    // The history: two retried executions (exit 7), then the completed one.
    let attempts = run["attempts"][&run_id].as_array().unwrap().clone();
    let got: Vec<_> = attempts
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap(),
                a["claimSeq"].as_i64().unwrap(),
                a["outcome"].as_str().unwrap().to_string(),
                a["exitCode"].as_i64(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (1, 1, "retried".to_string(), Some(7)),
            (2, 2, "retried".to_string(), Some(7)),
            (3, 3, "completed".to_string(), Some(0)),
        ],
        "{attempts:#?}"
    );
    // The same executions as one flat list, each naming its job (for jq).
    let executions = run["executions"].as_array().unwrap();
    assert_eq!(executions.len(), 3, "{run:#}");
    assert!(executions.iter().all(|e| e["jobId"] == run_id.as_str()));
    assert_eq!(executions[2]["outcome"], "completed");
    for a in &attempts {
        assert!(
            a["startedAt"].is_string() && a["finishedAt"].is_string(),
            "{a}"
        );
        assert!(a["durationMs"].as_i64().unwrap() >= 0);
        assert!(a["pid"].as_u64().unwrap() > 0);
    }
    assert!(attempts[0]["retryAt"].is_string());
    assert_eq!(attempts[2]["retryAt"], serde_json::Value::Null);

    // Every line names the execution that wrote it and when its chunk was committed.
    let lines = log_stream(&s, &run_id).await;
    let text: Vec<(i64, &str)> = lines
        .iter()
        .map(|l| (l["claimSeq"].as_i64().unwrap(), l["line"].as_str().unwrap()))
        .collect();
    assert_eq!(
        text,
        [
            (1, "attempt 1 out"),
            (1, "attempt 1 err"),
            (2, "attempt 2 out"),
            (2, "attempt 2 err"),
            (3, "attempt 3 out"),
            (3, "attempt 3 err"),
        ]
    );
    let created = epoch_ms(&run["createdAt"]);
    let finished = epoch_ms(&run["finishedAt"]);
    for l in &lines {
        let t = l["timeMs"].as_i64().expect("a capture time per line");
        assert!(created <= t && t <= finished, "{t} within the run");
    }

    // The plain-text download: every line in capture order, as an attachment.
    let resp = s
        .http
        .get(format!("{}/api/jobs/{run_id}/logs/text", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        resp.headers()["content-disposition"],
        format!("attachment; filename=\"{run_id}.log\"").as_str()
    );
    let body = resp.text().await.unwrap();
    let want: Vec<&str> = text.iter().map(|(_, l)| *l).collect();
    assert_eq!(body, format!("{}\n", want.join("\n")));
    let stamped = s
        .http
        .get(format!(
            "{}/api/jobs/{run_id}/logs/text?timestamps=true",
            s.base
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (line, want) in stamped.lines().zip(&want) {
        let (ts, rest) = line.split_once(' ').unwrap();
        assert_eq!(rest, *want);
        let t = epoch_ms(&serde_json::json!(ts));
        assert!(created <= t && t <= finished, "{line}");
    }
    let (status, body) = s.get(&format!("/api/jobs/{run_id}:s3/logs/text")).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = s
        .get(&format!("/api/jobs/{run_id}/logs/text?timestamps=maybe"))
        .await;
    assert_eq!(status, 400, "{body}");
    s.stop().await;
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn runs_are_found_by_id_prefix_short_id_parameter_and_actor() {
    let (alice, bob) = ("alice-token-0123456789", "bob-token-0123456789ab");
    let pipelines = format!(
        r#"
[auth]
tokens = [{{ label = "alice", sha256 = "{}" }}, {{ label = "bob", sha256 = "{}" }}]

[pipelines.echo]
command = ["echo", "{{word}}"]
[pipelines.echo.params.word]
default = "hi"
pattern = "[a-z]{{1,10}}"
[pipelines.other]
command = ["true"]
"#,
        sha256_hex(alice),
        sha256_hex(bob)
    );
    let s = TestServer::start("", &pipelines).await;
    let trigger = |token: &'static str, pipeline: &'static str, word: Option<&'static str>| {
        let s = &s;
        async move {
            let body = match word {
                Some(w) => serde_json::json!({"parameters": {"word": w}}),
                None => serde_json::json!({}),
            };
            let resp = s
                .http
                .post(format!("{}/api/pipelines/{pipeline}/trigger", s.base))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 202);
            let v: serde_json::Value = resp.json().await.unwrap();
            v["runId"].as_str().unwrap().to_string()
        }
    };
    let a1 = trigger(alice, "echo", Some("alpha")).await;
    let a2 = trigger(alice, "echo", Some("beta")).await;
    let b1 = trigger(bob, "echo", Some("beta")).await;
    let b2 = trigger(bob, "other", None).await;
    let find = |query: String| {
        let s = &s;
        async move {
            let resp = s
                .http
                .get(format!("{}{query}", s.base))
                .bearer_auth(alice)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let v: serde_json::Value = resp.json().await.unwrap();
            if status != 200 {
                return (status, vec![v["error"].as_str().unwrap_or("").to_string()]);
            }
            let ids = v["runs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["runId"].as_str().unwrap().to_string())
                .collect();
            (status, ids)
        }
    };
    // Newest first, always.
    assert_eq!(
        find("/api/runs".into()).await.1,
        [b2.as_str(), b1.as_str(), a2.as_str(), a1.as_str()]
    );
    // A run id's start (any case) and the dashboard's short form (its last 8 digits).
    let prefix = a2[..30].to_ascii_uppercase();
    assert_eq!(
        find(format!("/api/runs?run={prefix}")).await.1,
        [a2.as_str()]
    );
    let short: String = a1.replace('-', "")[24..].to_string();
    assert_eq!(
        find(format!("/api/runs?run={short}")).await.1,
        [a1.as_str()]
    );
    assert_eq!(
        find(format!("/api/runs?run={}", &b1)).await.1,
        [b1.as_str()]
    );
    // Every run of this test shares the first hex digit (the UUIDv7 timestamp).
    assert_eq!(find(format!("/api/runs?run={}", &a1[..1])).await.1.len(), 4);
    // A parameter by name and value, or by name alone.
    assert_eq!(
        find("/api/runs?param=word%3Dbeta".into()).await.1,
        [b1.as_str(), a2.as_str()]
    );
    assert_eq!(
        find("/api/runs?param=word".into()).await.1,
        [b1.as_str(), a2.as_str(), a1.as_str()]
    );
    assert_eq!(find("/api/runs?param=word%3Dgamma".into()).await.1.len(), 0);
    // The actor (the token's label), alone and with the other filters.
    assert_eq!(
        find("/api/runs?actor=bob".into()).await.1,
        [b2.as_str(), b1.as_str()]
    );
    assert_eq!(
        find("/api/runs?actor=alice&param=word%3Dbeta".into())
            .await
            .1,
        [a2.as_str()]
    );
    assert_eq!(
        find("/api/pipelines/echo/jobs?actor=bob".into()).await.1,
        [b1.as_str()]
    );
    // Client errors are 400 JSON.
    for bad in [
        "/api/runs?run=xyz",
        "/api/runs?run=",
        "/api/runs?param=%3Dvalue",
        "/api/runs?actor=",
    ] {
        let (status, err) = find(bad.into()).await;
        assert_eq!(status, 400, "{bad}: {err:?}");
    }
    s.stop().await;
}

#[tokio::test]
async fn stats_count_finished_runs_per_pipeline_in_time_buckets() {
    let s = TestServer::start(
        "",
        "[pipelines.ok]\ncommand = [\"true\"]\n[pipelines.bad]\ncommand = [\"false\"]\n[pipelines.idle]\ncommand = [\"true\"]\n",
    )
    .await;
    let mut events = s.events();
    let mut runs = Vec::new();
    for p in ["ok", "ok", "ok", "bad", "bad"] {
        let (_, t) = s.trigger(p, serde_json::json!({})).await;
        runs.push(t["runId"].as_str().unwrap().to_string());
    }
    for r in &runs {
        s.wait_run(&mut events, r, T).await;
    }
    let (status, stats) = s.get("/api/stats?window=1h").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["window"], "1h");
    assert_eq!(stats["bucketMs"], 300_000);
    let since = epoch_ms(&stats["since"]);
    let until = epoch_ms(&stats["until"]);
    assert_eq!(until - since, 3_600_000);
    let now = runyard::clock::now_ms();
    assert!(since < now && now <= until);
    let by_name = |name: &str| {
        stats["pipelines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pipelineId"] == name)
            .unwrap_or_else(|| panic!("{name} in {stats:#}"))
            .clone()
    };
    for (name, completed, failed) in [("ok", 3, 0), ("bad", 0, 2), ("idle", 0, 0)] {
        let p = by_name(name);
        assert_eq!(
            (p["completed"].as_u64(), p["failed"].as_u64()),
            (Some(completed), Some(failed)),
            "{p:#}"
        );
        assert_eq!(p["aborted"], 0);
        let buckets = p["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), 12);
        let sum = |k: &str| buckets.iter().map(|b| b[k].as_u64().unwrap()).sum::<u64>();
        assert_eq!((sum("completed"), sum("failed")), (completed, failed));
        assert_eq!(epoch_ms(&buckets[0]["start"]), since);
        if completed + failed > 0 {
            assert!(p["avgDurationMs"].as_i64().unwrap() >= 0);
            assert!(p["maxDurationMs"].as_i64().unwrap() >= p["avgDurationMs"].as_i64().unwrap());
            // The runs just finished: in the last bucket, or the one before at a boundary.
            assert_eq!(
                buckets[10..]
                    .iter()
                    .map(|b| b["completed"].as_u64().unwrap() + b["failed"].as_u64().unwrap())
                    .sum::<u64>(),
                completed + failed
            );
        } else {
            assert_eq!(p["avgDurationMs"], serde_json::Value::Null);
        }
    }
    let (status, default) = s.get("/api/stats").await;
    assert_eq!((status, default["window"].as_str()), (200, Some("24h")));
    assert_eq!(
        default["pipelines"][0]["buckets"].as_array().unwrap().len(),
        24
    );
    let (status, body) = s.get("/api/stats?window=5y").await;
    assert_eq!(status, 400, "{body}");
    s.stop().await;
}

#[tokio::test]
async fn workers_show_the_bus_heartbeat_and_each_pipelines_circuit() {
    let s = TestServer::start(
        "heartbeat = \"200ms\"",
        "[pipelines.broken]\ncommand = [\"true\"]\nsetup = [\"false\"]\ncircuit_threshold = 1\ncircuit_cooldown = \"1h\"\n",
    )
    .await;
    let (_, t) = s.trigger("broken", serde_json::json!({})).await;
    let run_id = t["runId"].as_str().unwrap().to_string();
    common::eventually(T, "the broken setup to open the circuit", || async {
        let (_, w) = s.get("/api/workers").await;
        w["workers"][0]["pipelines"][0]["circuit"] == "open"
    })
    .await;
    let (status, w) = s.get("/api/workers").await;
    assert_eq!(status, 200);
    let me = &w["workers"][0];
    assert_eq!(me["self"], true);
    assert_eq!(
        (me["bus"]["kind"].clone(), me["bus"]["connected"].clone()),
        (serde_json::json!("local"), serde_json::json!(true))
    );
    assert_eq!(me["bus"]["origin"].as_str().unwrap().len(), 32, "{me}");
    assert_eq!(me["bus"]["prefix"], serde_json::Value::Null);
    assert_eq!(me["heartbeatEveryMs"], 200);
    let age = me["heartbeatAgeMs"].as_i64().unwrap();
    assert!((0..5_000).contains(&age), "{age}");
    let p = &me["pipelines"][0];
    assert_eq!(
        (p["pipeline"].as_str(), p["setup"].as_str()),
        (Some("broken"), Some("failed"))
    );
    assert!(p["failures"].as_u64().unwrap() >= 1);
    let (status, _) = s
        .post(&format!("/api/runs/{run_id}/abort"), serde_json::json!({}))
        .await;
    assert_eq!(status, 202);
    s.stop().await;
}
