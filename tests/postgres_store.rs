//! The PostgreSQL store through the binary and the server: replicas sharing one
//! database, a database outage, start-up faults, migrations racing, the event
//! horizon, and the vacuum that clears the queue's dead head. Needs
//! `TEST_DATABASE_URL`; prints `SKIPPED(service)` without it.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::proxy::FaultProxy;
use common::{BinServer, EventWatcher, TestServer, eventually, free_port, get, post};
use runyard::store::postgres::{PgOptions, PgStore};
use runyard::store::{JobPolicy, RunCreateParams, Store};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

fn pg_url() -> Option<String> {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            println!("SKIPPED(service): TEST_DATABASE_URL not set");
            None
        }
    }
}

/// A schema name no other test uses; dropped by [`drop_schema`].
fn fresh_schema() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "pgt_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn raw_client(url: &str, app: &str) -> tokio_postgres::Client {
    let mut config: tokio_postgres::Config = url.parse().unwrap();
    config.application_name(app);
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

async fn drop_schema(url: &str, schema: &str) {
    let c = raw_client(url, "runyard-test-cleanup").await;
    c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .unwrap();
}

/// The URL with its host and port replaced by `addr` (to go through a proxy).
fn via(url: &str, addr: std::net::SocketAddr) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_host(Some(&addr.ip().to_string())).unwrap();
    u.set_port(Some(addr.port())).unwrap();
    u.to_string()
}

fn upstream(url: &str) -> std::net::SocketAddr {
    let u = url::Url::parse(url).unwrap();
    let host = u.host_str().unwrap_or("127.0.0.1");
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{}", u.port().unwrap_or(5432))
        .parse()
        .unwrap()
}

/// Opens a job gate (a file the jobs wait for) when dropped, so a failing test leaves no
/// job process waiting forever behind a server that is gone.
struct Gate(std::path::PathBuf);

impl Gate {
    fn open(&self) {
        std::fs::write(&self.0, "").unwrap();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "");
    }
}

fn store_toml(url: &str, schema: &str) -> String {
    format!("[store]\nurl = \"{url}\"\nschema = \"{schema}\"\npool_size = 4\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_503_loses_nothing_and_work_resumes_within_10s() {
    let Some(url) = pg_url() else { return };
    let schema = fresh_schema();
    let proxy = FaultProxy::start(upstream(&url)).await;
    let work = tempfile::tempdir().unwrap();
    let gate = Gate(work.path().join("go"));
    let dir = work.path().display();
    let s = TestServer::start(
        &format!("max_workers = 2\n{}", store_toml(&via(&url, proxy.addr), &schema)),
        &format!(
            "[pipelines.gated]\ncommand = [\"sh\", \"-c\", \"echo before; while [ ! -e {dir}/go ]; do sleep 0.02; done; \
             echo after; touch {dir}/done.$RUNYARD_JOB_ID\"]\n"
        ),
    )
    .await;
    let mut events = s.events();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (status, t) = s.trigger("gated", json!({})).await;
        assert_eq!(status, 202);
        runs.push(t["runId"].as_str().unwrap().to_string());
    }
    for id in &runs {
        events
            .wait_for("job:started", |d| d["runId"] == id.as_str(), T)
            .await;
    }

    proxy.cut();
    // While the database is away: 503 JSON on reads and triggers, never another 5xx.
    let (status, body) = s.get("/api/runs").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("unavailable"),
        "{body}"
    );
    let (status, body) = s.trigger("gated", json!({})).await;
    assert_eq!(status, 503, "{body}");
    // The jobs end during the outage; their ends cannot be written yet.
    gate.open();
    for id in &runs {
        let marker = work.path().join(format!("done.{id}"));
        eventually(T, "the job to end during the outage", || {
            let marker = marker.clone();
            async move { marker.exists() }
        })
        .await;
    }
    assert_eq!(s.get("/api/runs").await.0, 503, "still down");

    let healed = Instant::now();
    proxy.heal();
    for id in &runs {
        eventually(
            Duration::from_secs(10),
            "the run to complete after the outage",
            || {
                let (s, id) = (&s, id.clone());
                async move { s.get(&format!("/api/runs/{id}")).await.1["status"] == "completed" }
            },
        )
        .await;
    }
    println!(
        "both runs recorded {:?} after the database came back",
        healed.elapsed()
    );
    assert!(healed.elapsed() < Duration::from_secs(10));
    // Nothing was lost: every line the jobs printed, before and during the outage.
    for id in &runs {
        let (_, logs) = s.get(&format!("/api/jobs/{id}/logs")).await;
        assert_eq!(logs["stdout"], json!(["before", "after"]), "{logs}");
    }
    // And the node takes new work again.
    let (status, t) = s.trigger("gated", json!({})).await;
    assert_eq!(status, 202);
    let id = t["runId"].as_str().unwrap().to_string();
    let mut events = s.events();
    let run = s.wait_run(&mut events, &id, T).await;
    assert_eq!(run["status"], "completed");
    s.stop().await;
    drop_schema(&url, &schema).await;
}

/// The smallest outage case: a job prints a line, the database goes away while it
/// sleeps, it prints its last line and ends during the outage. After the heal its log
/// holds both lines, once each, and its byte count is what is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_of_a_job_that_ends_during_an_outage_is_stored_once() {
    let Some(url) = pg_url() else { return };
    let schema = fresh_schema();
    let proxy = FaultProxy::start(upstream(&url)).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().display();
    let s = TestServer::start(
        &format!(
            "max_workers = 2\n{}",
            store_toml(&via(&url, proxy.addr), &schema)
        ),
        &format!(
            "[pipelines.blink]\ncommand = [\"sh\", \"-c\", \"echo line1; while [ ! -e {dir}/go ]; do sleep 0.02; done; \
             echo line2; touch {dir}/ended\"]\n"
        ),
    )
    .await;
    let gate = Gate(work.path().join("go"));
    let (status, t) = s.trigger("blink", json!({})).await;
    assert_eq!(status, 202, "{t}");
    let id = t["runId"].as_str().unwrap().to_string();
    eventually(T, "line1 to be stored", || async {
        s.get(&format!("/api/jobs/{id}/logs")).await.1["stdout"] == json!(["line1"])
    })
    .await;
    proxy.cut();
    gate.open();
    let ended = work.path().join("ended");
    eventually(T, "the job to end during the outage", || {
        let ended = ended.clone();
        async move { ended.exists() }
    })
    .await;
    // Its last flush and its end fail now; the outage outlasts a few of their retries.
    let cut = Instant::now();
    while cut.elapsed() < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(20)).await; // the outage's length, not a sync
    }
    assert_eq!(s.get("/api/runs").await.0, 503, "still down");
    proxy.heal();
    let mut events = s.events();
    let run = s.wait_run(&mut events, &id, T).await;
    assert_eq!(run["status"], "completed", "{run}");
    let (_, logs) = s.get(&format!("/api/jobs/{id}/logs")).await;
    assert_eq!(logs["stdout"], json!(["line1", "line2"]), "{logs}");
    let (_, job) = s.get(&format!("/api/jobs/{id}")).await;
    assert_eq!(job["stdoutBytes"], 12, "{job}");
    s.stop().await;
    drop_schema(&url, &schema).await;
}

/// Commits whose answer is lost: one COMMIT in seven reaches PostgreSQL but its answer is
/// lost. Every trigger is answered 202 (its run was created: it is read back, never a
/// 503), no run is created twice, no job starts twice or late (a claim whose answer was
/// lost is released at once, not found by the forgotten-job check a heartbeat later),
/// and no log line is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_whose_answer_is_lost_create_start_and_log_nothing_twice() {
    let Some(url) = pg_url() else { return };
    let schema = fresh_schema();
    let proxy = FaultProxy::start(upstream(&url)).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().display();
    let s = TestServer::start(
        &format!("max_workers = 2\n{}", store_toml(&via(&url, proxy.addr), &schema)),
        &format!(
            "[pipelines.amb]\ncommand = [\"sh\", \"-c\", \"date +%s%N >> {dir}/$RUNYARD_JOB_ID.runs; \
             echo one; echo two\"]\n"
        ),
    )
    .await;
    proxy.cut_commits_every(7);
    const RUNS: usize = 60;
    let mut triggered = Vec::new();
    let mut refused = Vec::new();
    for i in 0..RUNS {
        let key = format!("amb-{i}");
        loop {
            let at = common::hosts::now_ns();
            let (status, t) = s.trigger("amb", json!({"idempotencyKey": key})).await;
            if status == 202 {
                triggered.push((t["runId"].as_str().unwrap().to_string(), at));
                break;
            }
            refused.push(format!("{key}: {status} {t}"));
            assert!(refused.len() < 20, "{refused:?}");
        }
    }
    eventually(Duration::from_secs(60), "every run to complete", || async {
        let (_, page) = s.get("/api/runs?limit=500").await;
        page["runs"]
            .as_array()
            .is_some_and(|a| a.iter().filter(|r| r["status"] == "completed").count() >= RUNS)
    })
    .await;
    proxy.cut_commits_every(0);
    let (_, page) = s.get("/api/runs?limit=500").await;
    let runs = page["runs"].as_array().unwrap().len();
    let mut twice = Vec::new();
    let mut late_ms: f64 = 0.0;
    let mut duplicated = Vec::new();
    for (id, at) in &triggered {
        let ledger = std::fs::read_to_string(work.path().join(format!("{id}.runs"))).unwrap();
        let starts: Vec<u128> = ledger.lines().filter_map(|l| l.parse().ok()).collect();
        if starts.len() != 1 {
            twice.push(id.clone());
        }
        late_ms = late_ms.max((starts[0] as f64 - *at as f64) / 1e6);
        let (_, logs) = s.get(&format!("/api/jobs/{id}/logs")).await;
        if logs["stdout"] != json!(["one", "two"]) {
            duplicated.push(logs);
        }
    }
    println!(
        "{} commits cut over {RUNS} runs: {} triggers refused, {runs} runs stored, {} jobs started twice, \
         latest start {late_ms:.0} ms after its trigger, {} logs wrong",
        proxy.commits_cut(),
        refused.len(),
        twice.len(),
        duplicated.len()
    );
    assert!(
        proxy.commits_cut() >= 10,
        "the proxy cut too few commits to mean anything"
    );
    assert!(refused.is_empty(), "triggers refused: {refused:?}");
    assert_eq!(runs, RUNS, "a run was created twice");
    assert!(twice.is_empty(), "started twice: {twice:?}");
    assert!(duplicated.is_empty(), "logs: {duplicated:?}");
    assert!(
        late_ms < 5000.0,
        "a job started {late_ms} ms after its trigger"
    );
    s.stop().await;
    drop_schema(&url, &schema).await;
}

/// The journal of ends. A job, and then its run's finalizer, each
/// exit while the database is cut, and their node is SIGKILLed before it could record
/// the end. The node restarted on the same `data_dir` replays the journal before it
/// rescues or claims anything: neither runs again, and each keeps its last lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_and_a_finalizer_that_ended_before_their_node_was_killed_do_not_run_again() {
    let Some(url) = pg_url() else { return };
    let schema = fresh_schema();
    let proxy = FaultProxy::start(upstream(&url)).await;
    let work = tempfile::tempdir().unwrap();
    let d = work.path().display();
    let step = |name: &str, gate: &str| {
        format!(
            "[\"sh\", \"-c\", \"echo x >> {d}/{name}.runs; echo {name}-out; \
             while [ ! -e {d}/{gate} ]; do sleep 0.02; done; echo {name}-last; touch {d}/{name}.ended\"]"
        )
    };
    let config = common::write_config(
        work.path(),
        &format!(
            "max_workers = 2\n{}",
            store_toml(&via(&url, proxy.addr), &schema)
        ),
        &format!(
            "[pipelines.fin]\ncommand = {}\nfinalizer = {}\n",
            step("shard", "go1"),
            step("final", "go2")
        ),
    );
    let gates = [Gate(work.path().join("go1")), Gate(work.path().join("go2"))];
    let mut node = BinServer::start(&config, free_port()).await;
    let http = reqwest::Client::new();
    let (status, t) = post(
        &http,
        &format!("{}/api/pipelines/fin/trigger", node.base),
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "{t}");
    let run = t["runId"].as_str().unwrap().to_string();
    for (i, (job, name)) in [(run.clone(), "shard"), (format!("{run}:finalize"), "final")]
        .into_iter()
        .enumerate()
    {
        let logs = format!("/api/jobs/{job}/logs");
        eventually(T, "its first line to be stored", || async {
            get(&http, &format!("{}{logs}", node.base)).await.1["stdout"]
                == json!([format!("{name}-out")])
        })
        .await;
        proxy.cut();
        gates[i].open();
        let ended = work.path().join(format!("{name}.ended"));
        eventually(T, "it to end during the outage", || {
            let ended = ended.clone();
            async move { ended.exists() }
        })
        .await;
        // Its end is journaled as soon as it exits; give the node a moment to try the
        // store, then kill it before the store could hear.
        let exited = Instant::now();
        while exited.elapsed() < Duration::from_millis(300) {
            tokio::time::sleep(Duration::from_millis(20)).await; // the outage's length, not a sync
        }
        node.child.kill().unwrap();
        node.child.wait().unwrap();
        proxy.heal();
        node = BinServer::start(&config, free_port()).await;
        eventually(T, "the replayed end to be stored", || async {
            let (_, j) = get(&http, &format!("{}/api/jobs/{job}", node.base)).await;
            j["status"] == "completed"
        })
        .await;
        let (_, l) = get(&http, &format!("{}{logs}", node.base)).await;
        assert_eq!(
            l["stdout"],
            json!([format!("{name}-out"), format!("{name}-last")]),
            "{l}"
        );
        let runs = std::fs::read_to_string(work.path().join(format!("{name}.runs"))).unwrap();
        assert_eq!(
            runs.lines().count(),
            1,
            "{name} ran again after its node was killed"
        );
    }
    let (_, r) = get(&http, &format!("{}/api/runs/{run}", node.base)).await;
    assert_eq!(r["status"], "completed", "{r}");
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_work_and_see_each_others_events_logs_and_aborts() {
    let Some(url) = pg_url() else { return };
    let schema = fresh_schema();
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate(dir.path().join("go"));
    let config = common::write_config(
        dir.path(),
        &format!(
            "max_workers = 1\nheartbeat = \"500ms\"\n{}",
            store_toml(&url, &schema)
        ),
        &format!(
            "[pipelines.hold]\ncommand = [\"sh\", \"-c\", \"echo on $RUNYARD_JOB_ID; while [ ! -e {} ]; do sleep 0.02; done\"]\n\
             shards = 2\n",
            gate.0.display()
        ),
    );
    let a = BinServer::start(&config, free_port()).await;
    let b = BinServer::start(&config, free_port()).await;
    let http = reqwest::Client::new();
    let mut events_a = EventWatcher::connect(&a.base, 0);

    // Two shards, one slot per replica: each replica runs one.
    let (status, t) = post(
        &http,
        &format!("{}/api/pipelines/hold/trigger", a.base),
        json!({}),
    )
    .await;
    assert_eq!(status, 202);
    let run_id = t["runId"].as_str().unwrap().to_string();
    for i in 0..2 {
        let job = format!("{run_id}:s{i}");
        events_a
            .wait_for("job:started", |d| d["jobId"] == job.as_str(), T)
            .await;
    }
    let (_, run) = get(&http, &format!("{}/api/runs/{run_id}", a.base)).await;
    let (_, workers) = get(&http, &format!("{}/api/workers", a.base)).await;
    let nodes: std::collections::HashSet<&str> = run["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 2, "each replica runs one shard: {run}");
    // A's view of the shard running on B: its log, live.
    let a_node = workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["self"] == true)
        .unwrap()["id"]
        .clone();
    let on_b = run["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["node"] != a_node)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut log = common::sse_reader(format!("{}/api/jobs/{on_b}/logs/stream", a.base), None);
    let line = tokio::time::timeout(T, log.recv()).await.unwrap().unwrap();
    assert_eq!(line.event, "log");
    assert_eq!(line.data["line"], format!("on {on_b}"));

    // Abort from A: B's shard stops through the durable mark, without a bus.
    let asked = Instant::now();
    let (status, body) = post(
        &http,
        &format!("{}/api/runs/{run_id}/abort", a.base),
        json!({}),
    )
    .await;
    assert_eq!((status, body["abortedJobs"].clone()), (202, json!(2)));
    let done = events_a
        .wait_for("run:completed", |d| d["runId"] == run_id.as_str(), T)
        .await;
    let took = asked.elapsed();
    println!("cross-replica abort landed in {took:?}");
    assert_eq!(done.data["status"], "aborted");
    assert!(took < Duration::from_secs(10), "abort took {took:?}");
    let (_, run) = get(&http, &format!("{}/api/runs/{run_id}", b.base)).await;
    for j in run["jobs"].as_array().unwrap() {
        assert_eq!(j["status"], "aborted", "{run}");
    }
    // A client that read A's stream resumes on B with its Last-Event-ID and gets exactly
    // what A sent after that id.
    let seen_on_a: Vec<i64> = events_a.seen.iter().filter_map(|e| e.id).collect();
    let cut = seen_on_a[seen_on_a.len() / 2];
    let mut on_b = EventWatcher::connect(&b.base, cut);
    on_b.wait_for("run:completed", |d| d["runId"] == run_id.as_str(), T)
        .await;
    let resumed: Vec<i64> = on_b.seen.iter().filter_map(|e| e.id).collect();
    let expected: Vec<i64> = seen_on_a.iter().copied().filter(|i| *i > cut).collect();
    assert_eq!(resumed, expected, "resuming on another replica");
    // The log stream on A ends with the job's status.
    let end = loop {
        let msg = tokio::time::timeout(T, log.recv()).await.unwrap().unwrap();
        if msg.event == "end" {
            break msg;
        }
    };
    assert_eq!(end.data["status"], "aborted");
    drop((a, b));
    drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_jobs_run_again_on_the_survivor() {
    let Some(url) = pg_url() else { return };
    let schema = fresh_schema();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ran.log");
    let config = common::write_config(
        dir.path(),
        &format!(
            "max_workers = 2\nheartbeat = \"300ms\"\n{}",
            store_toml(&url, &schema)
        ),
        &format!(
            "[pipelines.slow]\ncommand = [\"sh\", \"-c\", \"echo $RUNYARD_JOB_ID $RUNYARD_CLAIM_SEQ >> {}; sleep 1\"]\n\
             on_orphan = \"requeue\"\n",
            log.display()
        ),
    );
    let mut victim = BinServer::start(&config, free_port()).await;
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (_, t) = post(
            &http,
            &format!("{}/api/pipelines/slow/trigger", victim.base),
            json!({}),
        )
        .await;
        ids.push(t["runId"].as_str().unwrap().to_string());
    }
    let mut events = EventWatcher::connect(&victim.base, 0);
    for id in &ids {
        events
            .wait_for("job:started", |d| d["runId"] == id.as_str(), T)
            .await;
    }
    victim.signal("KILL");
    victim.wait_exit(T).await;
    let survivor = BinServer::start(&config, free_port()).await;
    for id in &ids {
        eventually(T, "the orphan to run again and complete", || {
            let (http, url) = (http.clone(), format!("{}/api/runs/{id}", survivor.base));
            async move { get(&http, &url).await.1["status"] == "completed" }
        })
        .await;
        let (_, run) = get(&http, &format!("{}/api/runs/{id}", survivor.base)).await;
        assert_eq!(run["jobs"][0]["requeues"], 1, "{run}");
    }
    drop(survivor);
    drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let Some(url) = pg_url() else { return };
    let schema = fresh_schema();
    let opts = PgOptions {
        url: url.clone(),
        schema: Some(schema.clone()),
        pool_size: 2,
    };
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let opts = opts.clone();
            tokio::spawn(async move { PgStore::open(&opts).await })
        })
        .collect();
    for open in opens {
        let store = open.await.unwrap().expect("every replica starts");
        store.close().await;
    }
    let c = raw_client(&url, "runyard-test").await;
    let version: i64 = c
        .query_one(
            &format!("SELECT value FROM \"{schema}\".runyard_meta WHERE key = 'schema_version'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, runyard::store::postgres::SCHEMA_VERSION);
    c.batch_execute(&format!(
        "UPDATE \"{schema}\".runyard_meta SET value = 99 WHERE key = 'schema_version'"
    ))
    .await
    .unwrap();
    let err = PgStore::open(&opts)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("schema version 99 is newer than this build"),
        "{err}"
    );
    drop_schema(&url, &schema).await;
}

#[tokio::test]
async fn a_wrong_or_unreachable_database_fails_at_start_with_one_clear_line() {
    let Some(url) = pg_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let closed = free_port();
    for (store_url, expect) in [
        (
            format!("postgres://postgres@127.0.0.1:{closed}/postgres"),
            "cannot connect",
        ),
        (
            "postgres://postgres@127.0.0.1:5432/postgres?sslmode=nonsense".to_string(),
            "not a valid PostgreSQL URL",
        ),
    ] {
        let config = common::write_config(
            dir.path(),
            &store_toml(&store_url, "never_made"),
            "[pipelines.x]\ncommand = [\"true\"]\n",
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_runyard"))
            .args([
                "serve",
                "-c",
                config.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .env_remove("DATABASE_URL")
            .env_remove("RUNYARD_DATABASE_URL")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{store_url}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let _ = url;
}

/// The horizon waits for runyard's in-flight transactions (so a late commit is never
/// skipped) and ignores other programs' (so they cannot stall the streams).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_readers_wait_for_runyard_transactions_but_not_for_other_programs() {
    let Some(url) = pg_url() else { return };
    let schema = fresh_schema();
    let store = PgStore::open(&PgOptions {
        url: url.clone(),
        schema: Some(schema.clone()),
        pool_size: 3,
    })
    .await
    .unwrap();
    let create = |id: &str| RunCreateParams {
        run_id: id.to_string(),
        job_ids: vec![id.to_string()],
        pipeline: "p".into(),
        params: Default::default(),
        triggered_by: "api".into(),
        actor: None,
        idempotency_key: None,
        policy: JobPolicy {
            max_attempts: 1,
            retry_backoff_ms: 1000,
            on_orphan: "requeue",
            max_orphan_requeues: 1,
            retry_on: Default::default(),
        },
        has_finalizer: false,
        callback_url: None,
        now: store.clock_ms(),
        options: Default::default(),
    };
    let visible = |events: &[runyard::store::StoredEvent], run: &str| {
        events.iter().any(|e| e.data.contains(run))
    };

    // Another program (or a runyard on another schema) holds a transaction with an xid
    // open: this deployment's events still show.
    let other = raw_client(&url, "runyard/some_other_schema").await;
    other
        .batch_execute("BEGIN; SELECT pg_current_xact_id();")
        .await
        .unwrap();
    let first = runyard::model::RunId::new().to_string();
    store.run_create(create(&first)).await.unwrap();
    assert!(visible(&store.events_after(0, 100).await.unwrap(), &first));
    other.batch_execute("COMMIT").await.unwrap();

    // One of this deployment's transactions in flight (same application_name, as every
    // replica on this schema has): nothing past it is read until it ends, so a cursor
    // cannot skip its events.
    let held = raw_client(&url, &format!("runyard/{schema}")).await;
    held.batch_execute(&format!(
        "SET search_path = {schema}; BEGIN; SELECT pg_current_xact_id();"
    ))
    .await
    .unwrap();
    let second = runyard::model::RunId::new().to_string();
    store.run_create(create(&second)).await.unwrap();
    let events = store.events_after(0, 100).await.unwrap();
    assert!(visible(&events, &first));
    assert!(
        !visible(&events, &second),
        "read past an open runyard transaction"
    );
    let (_, newest) = store.events_bounds().await.unwrap();
    held.batch_execute("COMMIT").await.unwrap();
    // Visible once it committed. The horizon is conservative: another test's transaction
    // caught between taking its xid and showing in pg_stat_activity holds it back for a
    // moment (seen once under the parallel PostgreSQL pass), so this waits, with a limit.
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = store.events_after(0, 100).await.unwrap();
        if visible(&events, &second) {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "a committed transaction's events stayed hidden"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        events
            .iter()
            .all(|e| e.id <= newest || e.data.contains(&second))
    );
    store.close().await;
    drop_schema(&url, &schema).await;
}

/// The invariant of `postgres_0014_jobs_vacuum.sql`: a vacuum of `jobs` removes the claim
/// index's dead head however small a part of the table died, and autovacuum starts it by a
/// count of dead rows, not by a share of the table. On a table of 100,000 jobs, the first
/// 1,000 in claim order are finished (their dead rows sit on about 1% of the heap's pages,
/// under the 2% below which PostgreSQL 14+ skips index cleanup by default); after
/// `VACUUM jobs`, the claim's scan of the queue's head reads a handful of pages, not the
/// dozens that stepping over 1,000 dead entries (and their heap rows) costs.
///
/// In a database of its own: VACUUM keeps rows that a transaction open anywhere in the
/// same database might still see, and other tests run in the shared one meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vacuum_of_jobs_clears_the_claim_indexs_dead_head_however_large_the_table() {
    let Some(shared_url) = pg_url() else { return };
    let database = fresh_schema();
    let admin = raw_client(&shared_url, "runyard-test").await;
    admin
        .batch_execute(&format!("CREATE DATABASE \"{database}\""))
        .await
        .unwrap();
    let mut url = url::Url::parse(&shared_url).unwrap();
    url.set_path(&database);
    let url = url.to_string();
    let schema = fresh_schema();
    let store = PgStore::open(&PgOptions {
        url: url.clone(),
        schema: Some(schema.clone()),
        pool_size: 1,
    })
    .await
    .unwrap();
    store.close().await;
    let c = raw_client(&url, "runyard-test").await;
    let options: Vec<String> = c
        .query_one(
            "SELECT reloptions FROM pg_class WHERE oid = format('%I.jobs', $1::text)::regclass",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0);
    for option in [
        "autovacuum_vacuum_scale_factor=0",
        "autovacuum_vacuum_threshold=10000",
        "vacuum_index_cleanup=on",
    ] {
        assert!(
            options.iter().any(|o| o == option),
            "{option} in {options:?}"
        );
    }
    // One statement per call: VACUUM may not run in the implicit transaction of a batch.
    c.batch_execute(&format!("SET search_path = \"{schema}\""))
        .await
        .unwrap();
    for statement in [
        "INSERT INTO runs (id, pipeline, status, params, shard_count, triggered_by, created_at)
             SELECT 'r' || i, 'p', 'queued', '{}', 1000, 'test', 0 FROM generate_series(0, 99) AS i",
        "INSERT INTO jobs (id, run_id, pipeline, shard_index, shard_count, status, max_attempts,
                           retry_backoff_ms, on_orphan, max_orphan_requeues, run_after, created_at)
             SELECT 'r' || (i / 1000) || ':s' || (i % 1000), 'r' || (i / 1000), 'p', i % 1000, 1000,
                    'queued', 1, 1000, 'requeue', 1, 0, 0
             FROM generate_series(0, 99999) AS i ORDER BY i",
        "ALTER TABLE jobs SET (autovacuum_enabled = false)",
        "VACUUM (ANALYZE) jobs",
        "UPDATE jobs SET status = 'completed', finished_at = 0
         WHERE seq IN (SELECT seq FROM jobs WHERE status = 'queued' ORDER BY priority DESC, seq LIMIT 1000)",
        "VACUUM jobs",
    ] {
        c.batch_execute(statement).await.unwrap();
    }
    // The simple protocol: the plan comes back as text (`json` has no `FromSql` here).
    let plan = c
        .simple_query(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
             SELECT seq FROM jobs WHERE status = 'queued' AND pipeline = 'p' AND held = false
             ORDER BY priority DESC, seq LIMIT 1",
        )
        .await
        .unwrap();
    let plan: serde_json::Value = plan
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .map(|text| serde_json::from_str(&text).unwrap())
        .expect("a plan");
    let top = &plan[0]["Plan"];
    let pages =
        top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap();
    assert!(
        pages <= 8,
        "the head scan read {pages} pages after VACUUM: the dead head is still there\n{plan:#}"
    );
    drop(c);
    admin
        .batch_execute(&format!("DROP DATABASE \"{database}\" WITH (FORCE)"))
        .await
        .unwrap();
}
