//! runyard's benchmark: `cargo bench --bench runyard_bench` (or `cargo bench`).
//!
//! Boots the release binary as a separate process on a fresh SQLite file and
//! measures, printing medians over rounds:
//! (a) end-to-end throughput of N single-shard `/bin/true` runs at
//!     `max_workers = 2`, next to the raw spawn+wait rate of `/bin/true` at 2
//!     parallel measured in the same run;
//! (b) trigger ingest over HTTP with 16 concurrent clients;
//! (c) idle dispatch latency, trigger sent → job process running (the job is a
//!     static C clock probe, so this includes exec and the probe's start-up);
//! (d) server RSS idle and with 100,000 queued runs;
//! (e) store-level claim + finish throughput on PostgreSQL, 1 vs 3 processes,
//!     with and without a global cap ([`store`]);
//! (f) three replicas on PostgreSQL with the Redis bus and without one: abort →
//!     every shard's process dead, and wake-up latency from a trigger on one
//!     replica to the job running on another ([`replicas`]);
//! (g) throughput with 1 and with 3 replicas on PostgreSQL (`/bin/true`, and
//!     slot-bound `sleep 0.02`), and orphan recovery over host kills at default
//!     timings ([`hosts`]; the kills need root for `unshare`).
//! (h) watchers ([`watch`]): end-to-end throughput of `/bin/true` runs with 1,000
//!     idle `/api/events` clients next to none, the server's RSS per SSE
//!     connection and after they close;
//! (i) the server CPU that 100 viewers of 100 busy jobs' log streams cost ([`watch`]),
//!     also on PostgreSQL with a database URL;
//! (j) claim latency with a million queued jobs (mixed priorities, a tenth held) next
//!     to a thousand, on SQLite and PostgreSQL ([`claim_depth`]);
//! (k) runyard's count of the statements it sends against `pg_stat_statements` in a
//!     throwaway PostgreSQL cluster the bench starts ([`pgss`]; needs the server
//!     binaries).
//! (l) what per-key caps and fair shares cost: runs over 100 tenants with the pipeline
//!     keyed by tenant next to the same runs without a key ([`keys`]).
//!
//! With `BENCH_DATABASE_URL` (or `TEST_DATABASE_URL`) set, (a) also runs on PostgreSQL
//! (a fresh schema per round) next to SQLite, and (e) runs; (f) also needs
//! `BENCH_REDIS_URL` (or `TEST_REDIS_URL`). Without them they are skipped with a message.
//!
//! Environment: `BENCH_RUNS` (default 5000), `BENCH_INGEST` (20000),
//! `BENCH_QUEUED` (100000), `BENCH_ROUNDS` (3), `BENCH_LATENCY_SAMPLES` (200),
//! `BENCH_STORE_SECS` (8), `BENCH_ABORTS` (30), `BENCH_WAKE_SAMPLES` (100),
//! `BENCH_SCALE_RUNS` (2000), `BENCH_HOST_KILLS` (5), `BENCH_WATCH_RUNS` (2000),
//! `BENCH_WATCHERS` (1000), `BENCH_VIEWERS` (100), `BENCH_DEEP` (1000000), `BENCH_PGSS_RUNS` (2000),
//! `BENCH_ONLY` (a subset of the letters `abcdefghijkl`), `BENCH_BIN` (the server binary to measure; default: this
//! build's, so a landed binary can be measured with the same bench).

#[path = "runyard_bench/claim_depth.rs"]
mod claim_depth;
#[path = "runyard_bench/hosts.rs"]
mod hosts;
#[path = "runyard_bench/keys.rs"]
mod keys;
#[path = "runyard_bench/pgss.rs"]
mod pgss;
#[path = "runyard_bench/replicas.rs"]
mod replicas;
#[path = "runyard_bench/store.rs"]
mod store;
#[path = "runyard_bench/watch.rs"]
mod watch;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    /// A graceful stop (SIGTERM), so the server stops its jobs' processes; SIGKILL only
    /// if it does not exit in time.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The database for the PostgreSQL figures, if any.
fn database_url() -> Option<String> {
    std::env::var("BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("TEST_DATABASE_URL"))
        .ok()
}

/// A `[store]` table: SQLite in `data_dir` when `pg` is `None`, else PostgreSQL in a
/// fresh schema.
fn store_table(pg: Option<&str>) -> String {
    match pg {
        None => String::new(),
        Some(url) => format!(
            "[store]\nurl = \"{url}\"\nschema = \"bench_e2e_{}\"\n",
            uuid::Uuid::now_v7().simple()
        ),
    }
}

impl Server {
    pub(crate) async fn start(server_extra: &str, pipelines: &str) -> Server {
        Self::start_on(None, server_extra, pipelines).await
    }

    pub(crate) async fn start_on(pg: Option<&str>, server_extra: &str, pipelines: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("runyard.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\ndata_dir = \"{}\"\nshutdown_timeout = \"1s\"\nkill_grace = \"1s\"\n{server_extra}\n\n{}\n{pipelines}\n",
                dir.path().join("data").display(),
                store_table(pg)
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin =
            std::env::var("BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_runyard").into());
        let child = Command::new(bin)
            .args([
                "serve",
                "-c",
                config.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("RUNYARD_LOG", "warn")
            .env_remove("DATABASE_URL")
            .env_remove("MAX_WORKERS")
            .env_remove("RUNYARD_MAX_WORKERS")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the runyard binary");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while http.get(format!("{base}/healthz")).send().await.is_err() {
            assert!(Instant::now() < deadline, "server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Server {
            child,
            base,
            _dir: dir,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

/// Triggers `n` runs of `pipeline` from `clients` concurrent clients; returns (seconds, run ids).
pub(crate) async fn ingest(
    base: &str,
    pipeline: &str,
    n: usize,
    clients: usize,
) -> (f64, Vec<String>) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let url = Arc::new(format!("{base}/api/pipelines/{pipeline}/trigger"));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, url) = (http.clone(), url.clone());
        let count = n / clients + usize::from(c < n % clients);
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(count);
            for _ in 0..count {
                let resp = http
                    .post(url.as_str())
                    .body("{}")
                    .header("content-type", "application/json")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 202);
                let v: Value = resp.json().await.unwrap();
                ids.push(v["runId"].as_str().unwrap().to_string());
            }
            ids
        }));
    }
    let mut ids = Vec::with_capacity(n);
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    (started.elapsed().as_secs_f64(), ids)
}

pub(crate) async fn counts(http: &reqwest::Client, base: &str, pipeline: &str) -> (u64, u64) {
    let v: Value = get_json(http, format!("{base}/api/pipelines")).await;
    let p = v["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == pipeline)
        .unwrap()
        .clone();
    (
        p["queued"].as_u64().unwrap(),
        p["running"].as_u64().unwrap(),
    )
}

/// GET a JSON document.
pub(crate) async fn get_json(http: &reqwest::Client, url: impl reqwest::IntoUrl) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// Polls a run's URL until it is finalised.
pub(crate) async fn wait_finished(http: &reqwest::Client, run_url: &str, every: Duration) {
    loop {
        let run: Value = get_json(http, run_url).await;
        if run["finishedAt"].is_string() {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

/// Raw spawn+wait rate of /bin/true with `parallel` threads.
fn raw_spawn_rate(n: usize, parallel: usize) -> f64 {
    raw_rate(&["/bin/true"], n, parallel)
}

/// Processes of `argv` run and waited for per second, `parallel` at a time (the
/// machine's ceiling for a drain of such jobs).
pub(crate) fn raw_rate(argv: &[&str], n: usize, parallel: usize) -> f64 {
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| {
                for _ in 0..n / parallel {
                    let st = Command::new(argv[0])
                        .args(&argv[1..])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .unwrap();
                    assert!(st.success());
                }
            });
        }
    });
    n as f64 / started.elapsed().as_secs_f64()
}

async fn bench_throughput(pg: Option<&str>, runs: usize, rounds: usize) {
    let store = if pg.is_some() { "PostgreSQL" } else { "SQLite" };
    println!(
        "(a) end-to-end throughput on {store}: {runs} single-shard /bin/true runs, max_workers = 2"
    );
    let mut e2e = Vec::new();
    let mut exec = Vec::new();
    let mut raw = Vec::new();
    for round in 1..=rounds {
        let r = raw_spawn_rate(runs, 2);
        let server = Server::start_on(
            pg,
            "max_workers = 2",
            "[pipelines.noop]\ncommand = [\"/bin/true\"]\n",
        )
        .await;
        let http = reqwest::Client::new();
        let started = Instant::now();
        let (ingest_s, ids) = ingest(&server.base, "noop", runs, 16).await;
        let (q, running) = counts(&http, &server.base, "noop").await;
        let (left_after_ingest, ingest_done) = (q + running, Instant::now());
        // Runs are claimed in order: wait on the newest (a cheap lookup), then confirm.
        let last_url = format!("{}/api/runs/{}", server.base, ids.iter().max().unwrap());
        wait_finished(&http, &last_url, Duration::from_millis(20)).await;
        loop {
            let (q, running) = counts(&http, &server.base, "noop").await;
            if q == 0 && running == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let rate = runs as f64 / secs;
        let exec_rate = left_after_ingest as f64 / ingest_done.elapsed().as_secs_f64();
        println!(
            "    round {round}: {rate:>5.0} runs/s end to end ({secs:.2} s, ingest {ingest_s:.2} s); after ingest {exec_rate:>5.0}/s; raw spawn+wait {r:>5.0}/s; ratio {:.0}% ({:.0}% after ingest)",
            100.0 * rate / r,
            100.0 * exec_rate / r
        );
        {
            let traffic = store_traffic(&http, &server.base).await;
            let (mut trigger, mut drain) = ((0u64, 0u64), (0u64, 0u64));
            for (op, (st, co)) in &traffic {
                let side = if op == "run_create" {
                    &mut trigger
                } else {
                    &mut drain
                };
                side.0 += st;
                side.1 += co;
            }
            let per = |n: u64| n as f64 / runs as f64;
            println!(
                "        store traffic per run: trigger {:.2} statements / {:.2} commits; draining {:.2} statements / {:.2} commits ({})",
                per(trigger.0),
                per(trigger.1),
                per(drain.0),
                per(drain.1),
                traffic
                    .iter()
                    .map(|(op, (st, co))| format!("{op} {:.2}/{:.2}", per(*st), per(*co)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        e2e.push(rate);
        exec.push(exec_rate);
        raw.push(r);
    }
    let (m_e2e, m_exec, m_raw) = (median(e2e), median(exec), median(raw));
    println!(
        "    median: {m_e2e:.0} runs/s end to end vs raw {m_raw:.0}/s = {:.0}% (target ≥ 75%); execution phase alone {m_exec:.0}/s = {:.0}%\n",
        100.0 * m_e2e / m_raw,
        100.0 * m_exec / m_raw
    );
}

/// `op → (statements, commits)` from the node's `runyard_store_*_total` counters.
pub(crate) async fn store_traffic(
    http: &reqwest::Client,
    base: &str,
) -> std::collections::BTreeMap<String, (u64, u64)> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut out: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for line in text.lines() {
        for (name, commits) in [
            ("runyard_store_statements_total{", false),
            ("runyard_store_commits_total{", true),
        ] {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            let op = rest.split("op=\"").nth(1).and_then(|r| r.split('"').next());
            let value = rest.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok());
            if let (Some(op), Some(value)) = (op, value) {
                let entry = out.entry(op.to_string()).or_default();
                if commits {
                    entry.1 += value;
                } else {
                    entry.0 += value;
                }
            }
        }
    }
    out
}

async fn bench_ingest(n: usize, rounds: usize) {
    println!(
        "(b) trigger ingest over HTTP, 16 concurrent clients, {n} runs per round (jobs held back by concurrency = 1)"
    );
    let mut rates = Vec::new();
    for round in 1..=rounds {
        let server = Server::start(
            "max_workers = 2",
            "[pipelines.held]\ncommand = [\"sleep\", \"3600\"]\nconcurrency = 1\n",
        )
        .await;
        let (secs, ids) = ingest(&server.base, "held", n, 16).await;
        assert_eq!(ids.len(), n);
        let rate = n as f64 / secs;
        println!("    round {round}: {rate:>7.0} runs/s ({secs:.2} s)");
        rates.push(rate);
    }
    println!(
        "    median: {:.0} runs/s (target ≥ 15,000)\n",
        median(rates)
    );
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A probe that prints CLOCK_REALTIME in nanoseconds as its first act. A static C
/// program starts in well under a millisecond, so the figure is dominated by runyard,
/// not by the probe; without a C compiler, `date +%s%N` (slower to start) is used.
fn clock_probe(dir: &std::path::Path) -> Vec<String> {
    let src = dir.join("clock.c");
    let bin = dir.join("clock");
    std::fs::write(
        &src,
        "#include <stdio.h>\n#include <time.h>\nint main(void){struct timespec t;clock_gettime(CLOCK_REALTIME,&t);\
         printf(\"%lld%09ld\\n\",(long long)t.tv_sec,t.tv_nsec);return 0;}\n",
    )
    .unwrap();
    let built = Command::new("cc")
        .args(["-O2", "-static", "-o"])
        .arg(&bin)
        .arg(&src)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if built {
        vec![bin.display().to_string()]
    } else {
        vec!["date".into(), "+%s%N".into()]
    }
}

async fn bench_latency(samples: usize) {
    let probe_dir = tempfile::tempdir().unwrap();
    let probe = clock_probe(probe_dir.path());
    println!(
        "(c) idle dispatch latency, trigger sent → job process running ({samples} samples, one at a time; probe {probe:?})"
    );
    let command = probe
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let server = Server::start(
        "max_workers = 2\noutput_flush_interval_ms = 100",
        &format!("[pipelines.clock]\ncommand = [{command}]\n"),
    )
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/pipelines/clock/trigger", server.base);
    // Warm the connection and the server.
    for _ in 0..5 {
        http.post(&url)
            .body("{}")
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
    }
    let mut lat = Vec::new();
    for _ in 0..samples {
        let sent = now_ns();
        let v: Value = http
            .post(&url)
            .body("{}")
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = v["runId"].as_str().unwrap().to_string();
        let logs_url = format!("{}/api/jobs/{id}/logs", server.base);
        let run_url = format!("{}/api/runs/{id}", server.base);
        wait_finished(&http, &run_url, Duration::from_millis(5)).await;
        let logs: Value = get_json(&http, &logs_url).await;
        let exec_ns: u128 = logs["stdout"][0].as_str().unwrap().trim().parse().unwrap();
        lat.push((exec_ns.saturating_sub(sent)) as f64 / 1e6);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "    p50 {:.2} ms, p99 {:.2} ms, min {:.2} ms (targets ≤ 2 ms / ≤ 10 ms)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[0]
    );
    // The floor: the same probe spawned directly, to the same point.
    let mut floor = Vec::new();
    for _ in 0..50 {
        let before = now_ns();
        let out = Command::new(&probe[0]).args(&probe[1..]).output().unwrap();
        let t: u128 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        floor.push(t.saturating_sub(before) as f64 / 1e6);
    }
    floor.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "    floor: spawning the probe directly takes p50 {:.2} ms to the same point\n",
        percentile(&floor, 0.5)
    );
}

async fn bench_rss(queued: usize) {
    println!("(d) server RSS");
    let server = Server::start(
        "max_workers = 2",
        "[pipelines.held]\ncommand = [\"sleep\", \"3600\"]\nconcurrency = 1\n",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = server.rss_kib();
    println!("    idle: {:.1} MiB", idle as f64 / 1024.0);
    let (secs, _) = ingest(&server.base, "held", queued, 16).await;
    let full = server.rss_kib();
    println!(
        "    with {queued} queued runs: {:.1} MiB (queued in {secs:.1} s)\n",
        full as f64 / 1024.0
    );
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments. Skip when run as a test (`cargo test --benches`).
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // The niced SSE clients of (f), started by the bench itself.
    if let Ok(spec) = std::env::var("RUNYARD_BENCH_READERS") {
        rt.block_on(watch::reader_process(&spec));
        return;
    }
    // A worker process of (e), started by the bench itself.
    if let Ok(spec) = std::env::var("RUNYARD_BENCH_WORKER") {
        let parts: Vec<&str> = spec.split('|').collect();
        let (url, schema) = (parts[0], parts[1]);
        let secs: u64 = parts[2].parse().unwrap();
        let cap: usize = parts[3].parse().unwrap();
        rt.block_on(store::worker(url, schema, secs, cap));
        return;
    }
    rt.block_on(async {
        let rounds = env_usize("BENCH_ROUNDS", 3);
        println!(
            "runyard benchmark on {} CPUs\n",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        );
        // BENCH_ONLY=a,c runs a subset.
        let only = std::env::var("BENCH_ONLY").unwrap_or_else(|_| "abcdefghijkl".into());
        let pg = database_url();
        if pg.is_none() && (only.contains('a') || only.contains('e') || only.contains('g')) {
            println!("(PostgreSQL figures skipped: set BENCH_DATABASE_URL or TEST_DATABASE_URL)\n");
        }
        if only.contains('a') {
            bench_throughput(None, env_usize("BENCH_RUNS", 5000), rounds).await;
            if let Some(url) = &pg {
                bench_throughput(Some(url), env_usize("BENCH_RUNS", 5000), rounds).await;
            }
        }
        if only.contains('b') {
            bench_ingest(env_usize("BENCH_INGEST", 20_000), rounds).await;
        }
        if only.contains('c') {
            bench_latency(env_usize("BENCH_LATENCY_SAMPLES", 200)).await;
        }
        if only.contains('d') {
            bench_rss(env_usize("BENCH_QUEUED", 100_000)).await;
        }
        if let (true, Some(url)) = (only.contains('e'), &pg) {
            store::bench_store(url, rounds, env_usize("BENCH_STORE_SECS", 8) as u64).await;
        }
        if only.contains('k') {
            pgss::bench_pgss(env_usize("BENCH_PGSS_RUNS", 2000)).await;
        }
        if only.contains('j') {
            claim_depth::bench_claim_depth(pg.as_deref(), env_usize("BENCH_DEEP", 1_000_000)).await;
        }
        if only.contains('f') {
            let redis = std::env::var("BENCH_REDIS_URL")
                .or_else(|_| std::env::var("TEST_REDIS_URL"))
                .ok();
            match (&pg, redis) {
                (Some(pg), Some(redis)) => {
                    replicas::bench_replicas(
                        pg,
                        &redis,
                        env_usize("BENCH_ABORTS", 30),
                        env_usize("BENCH_WAKE_SAMPLES", 100),
                    )
                    .await
                }
                _ => println!(
                    "(f skipped: set BENCH_DATABASE_URL and BENCH_REDIS_URL, or the TEST_ ones)\n"
                ),
            }
        }
        if let (true, Some(url)) = (only.contains('g'), &pg) {
            hosts::bench_scale(
                url,
                env_usize("BENCH_SCALE_RUNS", 2000),
                rounds,
                env_usize("BENCH_HOST_KILLS", 5),
            )
            .await;
        }
        if only.contains('l') {
            keys::bench_keys(None, env_usize("BENCH_RUNS", 5000), rounds).await;
            if let Some(url) = &pg {
                keys::bench_keys(Some(url), env_usize("BENCH_RUNS", 5000), rounds).await;
            }
        }
        if only.contains('h') {
            watch::bench_watchers(
                env_usize("BENCH_WATCH_RUNS", 2000),
                env_usize("BENCH_WATCHERS", 1000),
                rounds,
            )
            .await;
        }
        if only.contains('i') {
            watch::bench_log_viewers(None, env_usize("BENCH_VIEWERS", 100), rounds).await;
            if let Some(url) = &pg {
                watch::bench_log_viewers(Some(url), env_usize("BENCH_VIEWERS", 100), rounds).await;
            }
        }
    });
}
