//! The API as a well-behaved citizen: bearer tokens and dashboard sessions
//! (cookie flags, CSRF Origin check, SSE with the cookie), refusal to listen
//! beyond loopback without tokens, tokens kept out of logs, `/metrics`,
//! dropping clients that stop reading, and JSON logs.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{BinServer, TestServer, eventually, free_port, write_config};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

/// The token whose SHA-256 the configs below hold.
const TOKEN: &str = "ci-token-0123456789abcdef";
const AUTH: &str = r#"
[auth]
tokens = [{ label = "ci", sha256 = "e202c13a9341f2216ea6ae595534d8706be411253bbbae86b7d5205aeb7504b3" }]
"#;

fn pipelines() -> String {
    format!("{AUTH}\n[pipelines.quick]\ncommand = [\"echo\", \"hi\"]\n")
}

/// Waits until the run is `completed`, asking with the bearer token.
async fn wait_completed(http: &reqwest::Client, base: &str, run_id: &str) {
    let url = format!("{base}/api/runs/{run_id}");
    eventually(T, "the run to complete", || {
        let req = http.get(&url).bearer_auth(TOKEN);
        async move { status_of(req).await.2["status"] == "completed" }
    })
    .await;
}

async fn status_of(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_route_but_healthz_needs_a_valid_token_and_runs_record_the_actor() {
    let s = TestServer::start("", &pipelines()).await;
    let http = &s.http;
    for path in [
        "/api/runs",
        "/api/pipelines",
        "/api/workers",
        "/metrics",
        "/api/events",
    ] {
        let (status, headers, body) = status_of(http.get(format!("{}{path}", s.base))).await;
        assert_eq!(status, 401, "{path}");
        assert!(headers.contains_key("www-authenticate"), "{path}");
        assert!(body["error"].is_string(), "{path}: errors are JSON");
    }
    let (status, _, _) = status_of(
        http.post(format!("{}/api/pipelines/quick/trigger", s.base))
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, 401, "nothing is queued without a token");
    let (status, _, _) = status_of(
        http.get(format!("{}/api/runs", s.base))
            .bearer_auth("ci-token-0123456789abcdeX"),
    )
    .await;
    assert_eq!(status, 401, "a wrong token");
    let (status, _, _) = status_of(http.get(format!("{}/healthz", s.base))).await;
    assert_eq!(status, 200);
    // The dashboard's page loads without a token (it shows the login form; no data in it).
    let page = http.get(format!("{}/", s.base)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<html"));

    let (status, _, t) = status_of(
        http.post(format!("{}/api/pipelines/quick/trigger", s.base))
            .bearer_auth(TOKEN)
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, 202, "{t}");
    let run_id = t["runId"].as_str().unwrap().to_string();
    wait_completed(http, &s.base, &run_id).await;
    let (_, _, run) = status_of(
        http.get(format!("{}/api/runs/{run_id}", s.base))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(run["actor"], "ci", "the token's label is the run's actor");
    s.stop().await;
}

#[tokio::test]
async fn the_dashboard_session_is_an_httponly_strict_cookie_with_an_origin_check() {
    let s = TestServer::start("", &pipelines()).await;
    let http = reqwest::Client::new();
    let host = s.base.trim_start_matches("http://").to_string();
    let (status, _, _) = status_of(
        http.post(format!("{}/api/session", s.base))
            .json(&json!({"token": "not-the-token-000000"})),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, session) = status_of(http.get(format!("{}/api/session", s.base))).await;
    assert_eq!(status, 200, "the login state is public");
    assert_eq!(
        session,
        json!({"authRequired": true, "authenticated": false, "actor": null})
    );

    let resp = http
        .post(format!("{}/api/session", s.base))
        .json(&json!({"token": TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set_cookie.starts_with("runyard_session="));
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    assert!(!set_cookie.contains(TOKEN), "the cookie is not the token");
    let cookie = set_cookie.split(';').next().unwrap().to_string();

    let (status, _, runs) = status_of(
        http.get(format!("{}/api/runs", s.base))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(status, 200, "{runs}");
    let (_, _, session) = status_of(
        http.get(format!("{}/api/session", s.base))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(session["authenticated"], true);
    assert_eq!(session["actor"], "ci");

    // State changes with the cookie need this server's own Origin.
    let trigger = |origin: Option<&str>| {
        let mut req = http
            .post(format!("{}/api/pipelines/quick/trigger", s.base))
            .header("cookie", &cookie)
            .json(&json!({}));
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req
    };
    let (status, _, body) = status_of(trigger(None)).await;
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = status_of(trigger(Some("http://evil.example"))).await;
    assert_eq!(status, 403);
    let (status, _, body) = status_of(trigger(Some(&format!("http://{host}")))).await;
    assert_eq!(status, 202, "{body}");

    // SSE works with the cookie.
    let resp = http
        .get(format!("{}/api/events", s.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    drop(resp);

    // The key is not derivable from the config: a cookie minted from the token hash alone
    // (with any label) is refused, and the secret file is private.
    let forged = {
        use base64::Engine;
        use hmac::Mac;
        use sha2::Digest;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let hash = sha2::Sha256::digest(TOKEN.as_bytes());
        let mut k = sha2::Sha256::new();
        k.update(b"runyard-session-v1");
        k.update(hash);
        let key = k.finalize();
        let payload = format!("v1.{}.9999999999", b64.encode("ci"));
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(payload.as_bytes());
        format!(
            "runyard_session={payload}.{}",
            b64.encode(mac.finalize().into_bytes())
        )
    };
    let (status, _, _) = status_of(
        http.get(format!("{}/api/runs", s.base))
            .header("cookie", forged),
    )
    .await;
    assert_eq!(status, 401, "a cookie forged from the config is refused");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.dir.path().join("data/session.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let resp = http
        .delete(format!("{}/api/session", s.base))
        .header("cookie", &cookie)
        .header("origin", format!("http://{host}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(
        resp.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    s.stop().await;
}

#[tokio::test]
async fn listening_beyond_loopback_needs_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runyard.toml");
    let open = "[server]\nlisten = \"0.0.0.0:7878\"\n";
    let err = runyard::config::Settings::from_toml(open, &path, &|_| None).unwrap_err();
    assert!(err.to_string().contains("[auth] tokens"), "{err}");
    let guarded = format!("[server]\nlisten = \"0.0.0.0:7878\"\n{AUTH}");
    runyard::config::Settings::from_toml(&guarded, &path, &|_| None).unwrap();
    let clear = "[auth]\ntokens = [\"ci-token-0123456789abcdef\"]\n";
    let err = runyard::config::Settings::from_toml(clear, &path, &|_| None).unwrap_err();
    assert!(err.to_string().contains("never the token"), "{err}");
}

#[tokio::test]
async fn tokens_never_reach_logs_and_logs_can_be_json() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", &pipelines());
    let port = free_port();
    let server = BinServer::start_env(
        &config,
        port,
        &[("RUNYARD_LOG", "debug"), ("RUNYARD_LOG_FORMAT", "json")],
    )
    .await;
    let http = reqwest::Client::new();
    let (status, _, t) = status_of(
        http.post(format!("{}/api/pipelines/quick/trigger", server.base))
            .bearer_auth(TOKEN)
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, 202);
    let _ = status_of(
        http.get(format!("{}/api/runs", server.base))
            .bearer_auth("wrong-token-0000000000"),
    )
    .await;
    let login = http
        .post(format!("{}/api/session", server.base))
        .json(&json!({"token": TOKEN}))
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let run_id = t["runId"].as_str().unwrap().to_string();
    wait_completed(&http, &server.base, &run_id).await;
    let log = std::fs::read_to_string(config.with_extension(format!("{port}.log"))).unwrap();
    assert!(!log.is_empty());
    assert!(!log.contains(TOKEN), "a token reached the log");
    assert!(
        !log.contains(cookie.trim_start_matches("runyard_session=")),
        "a session reached the log"
    );
    for line in log.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    let events = http
        .get(format!("{}/api/runs/{run_id}", server.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!events.contains(TOKEN));
}

#[tokio::test]
async fn metrics_expose_jobs_queue_latency_and_sse_clients() {
    let s = TestServer::start(
        "",
        "[pipelines.quick]\ncommand = [\"echo\", \"hi\"]\n[pipelines.slow]\ncommand = [\"sleep\", \"30\"]\n",
    )
    .await;
    let mut events = s.events();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let (_, t) = s.trigger("quick", json!({})).await;
        runs.push(t["runId"].as_str().unwrap().to_string());
    }
    for r in &runs {
        s.wait_run(&mut events, r, T).await;
    }
    let (_, slow) = s.trigger("slow", json!({})).await;
    let slow = slow["runId"].as_str().unwrap().to_string();
    events
        .wait_for("job:started", |d| d["runId"] == slow.as_str(), T)
        .await;
    let (status, _) = s.post(&format!("/api/runs/{slow}/abort"), json!({})).await;
    assert_eq!(status, 202);
    s.wait_run(&mut events, &slow, T).await;

    let text = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap();
    assert!(
        text.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = text.text().await.unwrap();
    let sample = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        sample("runyard_jobs{pipeline=\"quick\",state=\"queued\"}"),
        0.0
    );
    assert_eq!(sample("runyard_queue_depth{pipeline=\"slow\"}"), 0.0);
    assert!(sample("runyard_claim_latency_seconds_count") >= 4.0);
    assert_eq!(
        sample("runyard_job_duration_seconds_count{pipeline=\"quick\"}"),
        3.0
    );
    assert_eq!(
        sample("runyard_job_duration_seconds_count{pipeline=\"slow\"}"),
        1.0
    );
    assert!(sample("runyard_output_flush_lag_seconds_count") >= 3.0);
    assert_eq!(
        sample("runyard_job_ends_total{pipeline=\"quick\",outcome=\"completed\"}"),
        3.0
    );
    assert_eq!(
        sample("runyard_job_ends_total{pipeline=\"slow\",outcome=\"aborted\"}"),
        1.0
    );
    assert_eq!(
        sample("runyard_job_ends_total{pipeline=\"slow\",outcome=\"completed\"}"),
        0.0
    );
    assert_eq!(
        sample(&format!(
            "runyard_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert_eq!(sample("runyard_aborts_total"), 1.0);
    assert!(
        sample("runyard_sse_clients") >= 1.0,
        "the test's own event stream"
    );
    assert_eq!(sample("runyard_orphans_recovered_total"), 0.0);
    s.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped_and_jobs_never_wait_on_it() {
    let s = TestServer::start(
        "client_write_timeout = \"500ms\"",
        "[pipelines.chatty]\ncommand = [\"sh\", \"-c\", \"yes 'a line of log output that keeps coming' | head -c 20000000\"]\n",
    )
    .await;
    let mut events = s.events();
    let (_, t) = s.trigger("chatty", json!({})).await;
    let run_id = t["runId"].as_str().unwrap().to_string();
    let run = s.wait_run(&mut events, &run_id, T).await;
    assert_eq!(
        run["status"], "completed",
        "the job never waited on the reader"
    );

    // A raw client asks for the whole 16 MiB stored log and never reads it.
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        sock,
        "GET /api/jobs/{run_id}/logs/stream HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let clients = || async { common::metric(&s.http, &s.base, "runyard_sse_clients").await };
    // The test's own event stream is one client; the stalled reader makes two, then is dropped.
    eventually(T, "the stalled stream to open", || async {
        clients().await == 2
    })
    .await;
    eventually(T, "the stalled stream to be dropped", || async {
        clients().await == 1
    })
    .await;
    // What the client can still read ends early: no `end` event, less than the whole log.
    sock.set_read_timeout(Some(T)).unwrap();
    let mut got = Vec::new();
    let _ = sock.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(
        !text.contains("event: end"),
        "the stream was cut, not finished"
    );
    assert!(got.len() < 16 << 20, "read {} bytes", got.len());
    s.stop().await;
}

#[tokio::test]
async fn without_tokens_foreign_origins_and_rebinding_hosts_are_refused() {
    let s = TestServer::start("", "[pipelines.quick]\ncommand = [\"echo\", \"hi\"]\n").await;
    let http = &s.http;
    let host = s.base.trim_start_matches("http://").to_string();
    let trigger = |origin: Option<String>| {
        let mut req = http
            .post(format!("{}/api/pipelines/quick/trigger", s.base))
            .header("content-type", "text/plain")
            .body("{}");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req
    };
    let (status, _, body) = status_of(trigger(Some("https://evil.example".into()))).await;
    assert_eq!(status, 403, "a web page cannot trigger runs: {body}");
    let (status, _, _) = status_of(trigger(Some(format!("http://{host}")))).await;
    assert_eq!(status, 202, "the dashboard (same origin) can");
    let (status, _, _) = status_of(trigger(None)).await;
    assert_eq!(status, 202, "the CLI and curl (no Origin) can");
    let (status, _, body) = status_of(
        http.get(format!("{}/api/runs", s.base))
            .header("host", "rebind.evil.example:7878"),
    )
    .await;
    assert_eq!(
        status, 403,
        "a DNS-rebinding page cannot read the API: {body}"
    );
    let (_, runs) = s.get("/api/runs").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2);
    s.stop().await;
}

#[tokio::test]
async fn a_half_sent_request_is_closed_when_idle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start("client_idle_timeout = \"300ms\"", "").await;
    let addr = s.base.trim_start_matches("http://").to_string();
    // An async socket: this test's runtime also runs the server.
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    sock.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(T, sock.read(&mut buf))
        .await
        .expect("the server closed the idle connection before the client gave up");
    let closed = match read {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
    };
    assert!(
        closed,
        "the server closed the idle connection without answering"
    );
    s.stop().await;
}
