//! Streams and connections at scale, against the real binary over real sockets:
//! half-sent requests and idle keep-alives all close within `client_idle_timeout`;
//! late bodies are 408, never 503; at the connection cap new clients are refused at
//! once while `/healthz` answers and jobs run on; hundreds of SSE clients each get
//! every event once, in order; a gzip client decodes the same events as an
//! identity one; a log stream wakes only for its own job.
//!
//! Every wait is on a condition or a socket with a timeout; the only pauses are a
//! client's own behaviour (bytes sent late, on purpose).

mod common;

use std::time::{Duration, Instant};

use common::{BinServer, eventually, free_port, write_config};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(60);

async fn start(server_extra: &str, pipelines: &str) -> (BinServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), server_extra, pipelines);
    let server = BinServer::start(&config, free_port()).await;
    (server, dir)
}

/// Triggers a run of `pipeline` with no parameters; its id.
async fn trigger(http: &reqwest::Client, base: &str, pipeline: &str) -> String {
    let t: Value = http
        .post(format!("{base}/api/pipelines/{pipeline}/trigger"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    t["runId"]
        .as_str()
        .unwrap_or_else(|| panic!("no run id: {t}"))
        .to_string()
}

/// Reads until the server closes the socket (EOF or reset); returns what it read.
async fn read_to_close(sock: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Err(_) => panic!(
                "the server kept the connection open past {within:?} (read {:?})",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn status_of(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"))
}

fn body_of(response: &[u8]) -> Value {
    let text = String::from_utf8_lossy(response);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not a JSON body: {text:?}"))
}

#[tokio::test]
async fn thousands_of_half_sent_requests_and_idle_keep_alives_all_close_within_the_idle_timeout() {
    let idle = Duration::from_secs(1);
    let (s, _dir) = start("client_idle_timeout = \"1s\"", "").await;
    let addr = s.addr;
    // What a client may send before it stops: one or two bytes of a request line (before
    // the protocol is known), a cut request line, a head without its blank line, the
    // start of HTTP/2's preface, nothing at all.
    let cuts: [&[u8]; 6] = [
        b"G",
        b"GE",
        b"GET /hea",
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        b"PR",
        b"",
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..2400usize {
        let cut = cuts[i % cuts.len()];
        // Half of them send their bytes only after the server's first read is pending
        // (the case the idle clock used to lose: its timer had to be re-armed once).
        let late = i % 2 == 1;
        let mut sock = TcpStream::connect(addr).await.unwrap();
        tasks.spawn(async move {
            if late {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let sent = Instant::now();
            if !cut.is_empty() {
                let _ = sock.write_all(cut).await;
            }
            read_to_close(&mut sock, 10 * idle).await;
            sent.elapsed()
        });
    }
    // Idle keep-alives: one answered request each, then nothing.
    for _ in 0..200 {
        let mut sock = TcpStream::connect(addr).await.unwrap();
        tasks.spawn(async move {
            sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 1024];
            let n = sock.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "answered first");
            let answered = Instant::now();
            read_to_close(&mut sock, 10 * idle).await;
            answered.elapsed()
        });
    }
    // A client that drips its head, a byte at a time: bytes keep coming, the head never
    // ends; it is closed too (the head has a deadline of its own).
    let mut drip = TcpStream::connect(addr).await.unwrap();
    let dripping = tokio::spawn(async move {
        let started = Instant::now();
        for b in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if drip.write_all(&[*b]).await.is_err() {
                return started.elapsed();
            }
            let mut probe = [0u8; 256];
            match tokio::time::timeout(Duration::from_millis(250), drip.read(&mut probe)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                _ => {}
            }
        }
        panic!("a dripping head was never cut off");
    });
    let mut slowest = Duration::ZERO;
    let mut closed = 0;
    while let Some(r) = tasks.join_next().await {
        slowest = slowest.max(r.unwrap());
        closed += 1;
    }
    assert_eq!(closed, 2600);
    let drip_took = dripping.await.unwrap();
    // Closed by the idle deadline (plus timer and scheduling slack), not minutes later.
    assert!(slowest < 4 * idle, "slowest close after {slowest:?}");
    assert!(
        drip_took < 4 * idle,
        "the dripping head lived {drip_took:?}"
    );
    // Every slot came back: a new client is served.
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/healthz", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_body_that_never_arrives_is_408_well_before_the_handler_deadline() {
    // Bodies get ¾ of the idle timeout: 1.5 s here, the handler deadline is 30 s.
    let (s, _dir) = start(
        "client_idle_timeout = \"2s\"",
        "[pipelines.echo]\ncommand = [\"true\"]\n",
    )
    .await;
    let head = |extra: &str| {
        format!(
            "POST /api/pipelines/echo/trigger HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}\r\n"
        )
    };
    let cases: Vec<(&str, String, Vec<u8>, bool)> = vec![
        (
            "shorter than its Content-Length",
            head("Content-Length: 100\r\n"),
            b"{\"parameters\"".to_vec(),
            false,
        ),
        (
            "chunked without its last chunk",
            head("Transfer-Encoding: chunked\r\n"),
            b"2\r\n{}\r\n".to_vec(),
            false,
        ),
        (
            "dripping a chunk every 300 ms",
            head("Transfer-Encoding: chunked\r\n"),
            b"1\r\n \r\n".to_vec(),
            true,
        ),
    ];
    for (what, head, body, drip) in cases {
        let mut sock = TcpStream::connect(s.addr).await.unwrap();
        sock.write_all(head.as_bytes()).await.unwrap();
        sock.write_all(&body).await.unwrap();
        let started = Instant::now();
        let response = if drip {
            // Bytes keep coming (the connection is never idle), the body never ends.
            let (mut rd, mut wr) = sock.into_split();
            let writer = tokio::spawn(async move {
                while wr.write_all(b"1\r\n \r\n").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            });
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match tokio::time::timeout(T, rd.read(&mut buf)).await {
                    Err(_) => panic!("{what}: no answer"),
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                }
            }
            writer.abort();
            got
        } else {
            read_to_close(&mut sock, T).await
        };
        let took = started.elapsed();
        assert_eq!(status_of(&response), 408, "{what}: {response:?}");
        let body = body_of(&response);
        assert!(
            body["error"].as_str().unwrap().contains("request body"),
            "{what}: {body}"
        );
        assert!(
            took < Duration::from_secs(10),
            "{what}: answered after {took:?}, not well before the 30 s handler deadline"
        );
    }
    // Nothing was queued by the broken requests; a whole body still works.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/pipelines/echo/trigger", s.base))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let runs: Value = http
        .get(format!("{}/api/runs", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs}");
}

#[tokio::test]
async fn at_the_connection_cap_new_clients_are_refused_quickly_healthz_answers_and_jobs_run_on() {
    let cap = 16;
    let spares = 64; // `api::listen::SPARE_CONNECTIONS`
    let (s, dir) = start(
        &format!("max_connections = {cap}\nclient_idle_timeout = \"60s\""),
        "[pipelines.work]\ncommand = [\"sh\", \"-c\", \"read line < \\\"$0\\\"; echo done\", \"{fifo}\"]\n[pipelines.work.params.fifo]\n",
    )
    .await;
    let http = reqwest::Client::new();
    // A job that runs until the test lets it finish (it waits on a fifo).
    let fifo = dir.path().join("go");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let t: Value = http
        .post(format!("{}/api/pipelines/work/trigger", s.base))
        .json(&json!({"parameters": {"fifo": fifo.display().to_string()}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run_id = t["runId"].as_str().unwrap().to_string();
    let run_url = format!("{}/api/runs/{run_id}", s.base);
    eventually(T, "the job to run", || async {
        let run: Value = http
            .get(&run_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        run["status"] == "running"
    })
    .await;
    drop(http); // its pooled connection would hold a slot

    // Fill every slot with an idle keep-alive that was served once.
    let mut held = Vec::new();
    for _ in 0..cap {
        let mut sock = TcpStream::connect(s.addr).await.unwrap();
        sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(T, sock.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(sock);
    }
    // At the cap: anything but /healthz is a quick 503 JSON, and the connection closes.
    let ask = |path: &'static str| async move {
        let mut sock = TcpStream::connect(s.addr).await.unwrap();
        sock.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        read_to_close(&mut sock, Duration::from_secs(10)).await
    };
    let refused = ask("/api/runs").await;
    assert_eq!(
        status_of(&refused),
        503,
        "{}",
        String::from_utf8_lossy(&refused)
    );
    assert!(
        body_of(&refused)["error"]
            .as_str()
            .unwrap()
            .contains("too many connections")
    );
    let health = ask("/healthz").await;
    assert_eq!(status_of(&health), 200);
    assert_eq!(body_of(&health)["status"], "ok");
    // Past the spares too: closed at once instead of left hanging in the backlog.
    let mut spare_held = Vec::new();
    for _ in 0..spares {
        spare_held.push(TcpStream::connect(s.addr).await.unwrap());
    }
    // The server accepts in order; once every spare is taken, a newcomer is closed.
    eventually(
        T,
        "a newcomer past the spares to be closed at once",
        || async {
            let mut sock = TcpStream::connect(s.addr).await.unwrap();
            let _ = sock
                .write_all(b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .await;
            let got = read_to_close(&mut sock, Duration::from_secs(10)).await;
            got.is_empty()
        },
    )
    .await;
    drop(spare_held);

    // The job never noticed: let it finish and find it completed.
    std::fs::write(&fifo, "go\n").unwrap();
    drop(held);
    let http = reqwest::Client::new();
    eventually(T, "the run to complete once slots are free", || async {
        match http.get(&run_url).send().await {
            Ok(r) if r.status() == 200 => {
                let run: Value = r.json().await.unwrap();
                run["status"] == "completed"
            }
            _ => false,
        }
    })
    .await;
}

#[tokio::test]
async fn hundreds_of_sse_clients_each_get_every_event_once_in_order() {
    let (s, _dir) = start(
        "max_workers = 4",
        "[pipelines.echo]\ncommand = [\"true\"]\n",
    )
    .await;
    let clients = 300;
    let runs = 40;
    let mut readers = Vec::new();
    // `Last-Event-ID: 0` on the fresh store: a client is counted in `runyard_sse_clients`
    // a moment before it reads where "live" starts, so without it an event committed in
    // that moment is (rightly) before its start and the comparison below would differ.
    for _ in 0..clients {
        readers.push(common::sse_reader(
            format!("{}/api/events", s.base),
            Some(0),
        ));
    }
    let http = reqwest::Client::new();
    let sse_clients =
        || async { common::metric(&http, &s.base, "runyard_sse_clients").await as usize };
    eventually(T, "every client to subscribe", || async {
        sse_clients().await == clients
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..runs {
        let t: Value = http
            .post(format!("{}/api/pipelines/echo/trigger", s.base))
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(t["runId"].as_str().unwrap().to_string());
    }
    let mut first: Option<Vec<i64>> = None;
    for (c, rx) in readers.iter_mut().enumerate() {
        let mut seen = Vec::new();
        let mut completed = 0;
        let deadline = tokio::time::Instant::now() + T;
        while completed < runs {
            let ev = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .unwrap_or_else(|_| panic!("client {c}: {completed} of {runs} runs completed"))
                .expect("the stream stays open");
            if ev.event == "run:completed" {
                completed += 1;
            }
            seen.push(ev.id.expect("every event has an id"));
        }
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "client {c}: ids in order, each once"
        );
        match &first {
            None => first = Some(seen),
            Some(f) => assert_eq!(&seen, f, "client {c} saw what client 0 saw"),
        }
    }
    // Each run's four events: created, started, completed, run:completed.
    assert_eq!(first.unwrap().len(), runs * 4);
}

#[tokio::test]
async fn a_log_stream_wakes_only_for_its_own_job() {
    let (s, dir) = start(
        "max_workers = 4",
        "[pipelines.quiet]\ncommand = [\"sleep\", \"60\"]\n\
         [pipelines.chatty]\ncommand = [\"sh\", \"-c\", \"i=0; while [ $i -lt 40 ]; do echo line $i; i=$((i+1)); sleep 0.05; done\"]\n",
    )
    .await;
    let _ = dir;
    let http = reqwest::Client::new();
    let trigger = |pipeline: &'static str| {
        let http = http.clone();
        let base = s.base.clone();
        async move { trigger(&http, &base, pipeline).await }
    };
    let wakeups = || async {
        let text = http
            .get(format!("{}/metrics", s.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with("runyard_log_stream_wakeups_total "))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap()
    };
    let quiet = trigger("quiet").await;
    let mut quiet_log =
        common::sse_reader(format!("{}/api/jobs/{quiet}/logs/stream", s.base), None);
    let mut events = common::EventWatcher::connect(&s.base, 0);
    events
        .wait_for("job:started", |e| e["jobId"] == quiet.as_str(), T)
        .await;
    let before = wakeups().await;
    // Another job writes 40 lines over 2 s: about 20 flushes, none of them the quiet job's.
    let chatty = trigger("chatty").await;
    let done = events
        .wait_for("run:completed", |e| e["runId"] == chatty.as_str(), T)
        .await;
    assert_eq!(done.data["status"], "completed");
    let during = wakeups().await - before;
    if std::env::var("TEST_STORE").as_deref() != Ok("postgres") {
        // On PostgreSQL the store's output poll (1 s) and its change poll wake every
        // stream by design (other replicas' output is invisible to the feed); on SQLite
        // nothing but the quiet job itself may.
        assert!(
            during <= 1,
            "the quiet job's stream woke {during} times for another job's output"
        );
    }
    // Its own job's end still reaches it at once (an abort is a state change).
    let r = http
        .post(format!("{}/api/runs/{quiet}/abort", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let end = tokio::time::timeout(T, async {
        loop {
            let ev = quiet_log.recv().await.expect("stream open until its end");
            if ev.event == "end" {
                return ev;
            }
        }
    })
    .await
    .expect("the quiet stream ends");
    assert_eq!(end.data["status"], "aborted");
    // And a stream of a job that writes gets every line, then its end.
    let chatty2 = trigger("chatty").await;
    let mut log = common::sse_reader(format!("{}/api/jobs/{chatty2}/logs/stream", s.base), None);
    let mut lines = Vec::new();
    let end = tokio::time::timeout(T, async {
        loop {
            let ev = log.recv().await.expect("stream open until its end");
            match ev.event.as_str() {
                "log" => lines.push(ev.data["line"].as_str().unwrap().to_string()),
                "end" => return ev,
                other => panic!("unexpected {other}"),
            }
        }
    })
    .await
    .expect("the chatty stream ends");
    assert_eq!(end.data["status"], "completed");
    let want: Vec<String> = (0..40).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, want);
}

/// Splits a whole HTTP/1.1 response into its head and its de-chunked body.
fn head_and_body(response: &[u8]) -> (String, Vec<u8>) {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]).to_lowercase();
    assert!(
        head.contains("transfer-encoding: chunked"),
        "an SSE body is chunked: {head}"
    );
    let mut rest = &response[split + 4..];
    let mut body = Vec::new();
    loop {
        let line = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line]).unwrap().trim(), 16)
            .expect("a hex chunk size");
        rest = &rest[line + 2..];
        if size == 0 {
            return (head, body);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Opens `/api/events` on a raw socket (from `Last-Event-ID: from`, with extra header
/// lines `headers`); the task returns everything read until the server closes it.
async fn open_events(
    addr: std::net::SocketAddr,
    headers: &str,
    from: i64,
) -> tokio::task::JoinHandle<Vec<u8>> {
    open_stream(
        addr,
        "/api/events",
        &format!("Last-Event-ID: {from}\r\n{headers}"),
    )
    .await
}

/// GETs `path` on a raw socket (with extra header lines `headers`); the task returns
/// everything read until the server closes it.
async fn open_stream(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &str,
) -> tokio::task::JoinHandle<Vec<u8>> {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n").as_bytes())
        .await
        .unwrap();
    tokio::spawn(async move { read_to_close(&mut sock, T).await })
}

/// An SSE text without its keep-alive comments (`:` lines between events).
fn without_keep_alives(text: &[u8]) -> String {
    let text = String::from_utf8(text.to_vec()).expect("SSE is UTF-8");
    let mut out = String::new();
    for block in text.split_inclusive("\n\n") {
        if block != ":\n\n" {
            out.push_str(block);
        }
    }
    out
}

/// (id, event, data) of every event in an SSE text, keep-alive comments left out.
fn events_of(text: &[u8]) -> Vec<(Option<i64>, String, String)> {
    let text = String::from_utf8(text.to_vec()).expect("SSE is UTF-8");
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty() && !e.starts_with(':'))
        .map(|e| {
            let field = |name: &str| {
                e.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
            };
            (
                field("id:").map(|v| v.parse().unwrap()),
                field("event:").expect("an event name"),
                field("data:").expect("a data line"),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_gzip_client_decodes_the_same_events_as_an_identity_client_and_a_valid_trailer_at_shutdown()
 {
    use std::io::Read;

    let (mut s, _dir) = start(
        "max_workers = 4",
        "[pipelines.echo]\ncommand = [\"true\"]\n",
    )
    .await;
    let plain = open_events(s.addr, "", 0).await;
    let gzip = open_events(s.addr, "Accept-Encoding: br, gzip;q=0.8\r\n", 0).await;
    let mut watcher = common::EventWatcher::connect(&s.base, 0);
    let http = reqwest::Client::new();
    let runs = 60;
    for i in 0..runs {
        trigger(&http, &s.base, "echo").await;
        if i == runs / 2 {
            // One that joins in the middle: a replay of its own, then the shared batches.
            watcher
                .wait_count("run:completed", |_| true, runs / 4, T)
                .await;
        }
    }
    let late_from = watcher.seen[watcher.seen.len() / 2].id.unwrap();
    let late = open_events(s.addr, "Accept-Encoding: gzip\r\n", late_from).await;
    watcher.wait_count("run:completed", |_| true, runs, T).await;
    // The server ends every stream at shutdown: the gzip bodies must end whole.
    s.signal("TERM");
    assert_eq!(s.wait_exit(T).await, Some(0));

    let (head, want) = head_and_body(&plain.await.unwrap());
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(head.contains("vary: accept-encoding"), "{head}");
    let want_events = events_of(&want);
    assert_eq!(
        want_events
            .iter()
            .filter(|e| e.1 == "run:completed")
            .count(),
        runs
    );
    for (name, response, from) in [("gzip", gzip, 0), ("late gzip", late, late_from)] {
        let (head, body) = head_and_body(&response.await.unwrap());
        assert!(head.contains("content-encoding: gzip"), "{name}: {head}");
        assert!(head.contains("vary: accept-encoding"), "{name}: {head}");
        let mut decoded = Vec::new();
        // Fails on a bad CRC, a wrong length or a missing trailer.
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut decoded)
            .unwrap_or_else(|e| panic!("{name}: not a whole gzip stream: {e}"));
        let expected: Vec<_> = want_events
            .iter()
            .filter(|e| e.0.is_some_and(|id| id > from))
            .cloned()
            .collect();
        assert_eq!(
            events_of(&decoded),
            expected,
            "{name}: the identity stream's events"
        );
        if from == 0 {
            // Byte for byte, keep-alive comments aside (they depend on each stream's timing).
            assert_eq!(
                without_keep_alives(&decoded),
                without_keep_alives(&want),
                "{name}: the identity stream's bytes"
            );
        }
        if from == 0 {
            assert!(
                body.len() * 2 < want.len(),
                "{name}: {} gzip bytes for {} plain ones",
                body.len(),
                want.len()
            );
        }
    }
}

/// The drain at shutdown finishes running jobs; the events and output they store then
/// must still reach every open stream before it ends (not only what the streams had read
/// when the stop came): event streams identity and gzip alike, and a job's log stream.
#[tokio::test]
async fn streams_end_at_shutdown_with_what_the_drain_stored() {
    use std::io::Read;

    let (mut s, _dir) = start(
        "max_workers = 4",
        "[pipelines.nap]\ncommand = [\"sh\", \"-c\", \"sleep 0.5; echo woke\"]\n",
    )
    .await;
    let plain = open_events(s.addr, "", 0).await;
    let gzip = open_events(s.addr, "Accept-Encoding: gzip\r\n", 0).await;
    let mut watcher = common::EventWatcher::connect(&s.base, 0);
    let http = reqwest::Client::new();
    let runs = 4;
    let mut run_ids = Vec::new();
    for _ in 0..runs {
        run_ids.push(trigger(&http, &s.base, "nap").await);
    }
    watcher.wait_count("job:started", |_| true, runs, T).await;
    let log = open_stream(s.addr, &format!("/api/jobs/{}/logs/stream", run_ids[0]), "").await;
    s.signal("TERM");
    assert_eq!(s.wait_exit(T).await, Some(0));

    let (_, body) = head_and_body(&plain.await.unwrap());
    let (_, zipped) = head_and_body(&gzip.await.unwrap());
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&zipped[..])
        .read_to_end(&mut unzipped)
        .expect("a whole gzip stream");
    for (name, text) in [("identity", body), ("gzip", unzipped)] {
        let completed = events_of(&text)
            .iter()
            .filter(|e| e.1 == "run:completed")
            .count();
        assert_eq!(
            completed, runs,
            "{name}: run:completed events before the end"
        );
    }
    let (_, log) = head_and_body(&log.await.unwrap());
    let log = events_of(&log);
    assert!(
        log.iter()
            .any(|e| e.1 == "log" && e.2.contains("\"line\":\"woke\"")),
        "the job's last line: {log:?}"
    );
    assert_eq!(log.last().map(|e| e.1.as_str()), Some("end"), "{log:?}");
}

#[tokio::test]
async fn memory_returns_near_its_baseline_after_a_burst_of_sse_clients_closes() {
    let (s, _dir) = start(
        "max_workers = 2",
        "[pipelines.echo]\ncommand = [\"true\"]\n",
    )
    .await;
    let http = reqwest::Client::new();
    let sse_clients =
        || async { common::metric(&http, &s.base, "runyard_sse_clients").await as usize };
    let runs = |n: usize| {
        let http = http.clone();
        let base = s.base.clone();
        async move {
            let mut last = String::new();
            for _ in 0..n {
                last = trigger(&http, &base, "echo").await;
            }
            eventually(T, "the runs to finish", || {
                let (http, url) = (http.clone(), format!("{base}/api/runs/{last}"));
                async move {
                    let run: Value = http.get(url).send().await.unwrap().json().await.unwrap();
                    run["status"] == "completed"
                }
            })
            .await;
        }
    };
    let open = |n: usize| async move {
        let mut socks = Vec::new();
        for _ in 0..n {
            let mut sock = TcpStream::connect(s.addr).await.unwrap();
            sock.write_all(
                format!("GET /api/events HTTP/1.1\r\nHost: {}\r\n\r\n", s.addr).as_bytes(),
            )
            .await
            .unwrap();
            socks.push(sock);
        }
        socks
    };
    // Warm up what stays (caches, per-thread state), so the baseline is the server's own.
    let warm = open(20).await;
    runs(50).await;
    drop(warm);
    eventually(T, "the warm-up clients to go", || async {
        sse_clients().await == 0
    })
    .await;
    let baseline = s.rss_kib();

    // The burst: 1,000 SSE clients that read what the runs send them.
    let socks = open(1000).await;
    let mut readers = tokio::task::JoinSet::new();
    for mut sock in socks {
        readers.spawn(async move {
            let mut buf = vec![0u8; 16 << 10];
            while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
        });
    }
    eventually(T, "1,000 clients to subscribe", || async {
        sse_clients().await == 1000
    })
    .await;
    runs(100).await;
    let peak = s.rss_kib();
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth > 8 << 10,
        "the burst must cost memory for the test to mean anything: {baseline} → {peak} KiB"
    );
    readers.abort_all();
    while readers.join_next().await.is_some() {}
    eventually(T, "the clients to go", || async {
        sse_clients().await == 0
    })
    .await;
    let allowed = baseline + growth / 3;
    eventually(
        Duration::from_secs(20),
        "RSS back near its baseline",
        || async { s.rss_kib() <= allowed },
    )
    .await;
    eprintln!(
        "RSS {baseline} KiB → {peak} KiB with 1,000 clients → {} KiB after they closed",
        s.rss_kib()
    );
    // Not by losing anything: the server still serves and runs.
    runs(5).await;
}
