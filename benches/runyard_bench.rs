//! runyard's benchmark: `cargo bench --bench runyard_bench` (or `cargo bench`).
//!
//! Boots the release binary as a separate process on a fresh SQLite file (or a fresh
//! PostgreSQL schema) with the test kit (`tests/common`, here `kit`) and measures, printing
//! medians over rounds, each section headed by its bench's name:
//! - `throughput`: end-to-end throughput of N single-shard `/bin/true` runs at
//!   `max_workers = 2`, next to the raw spawn+wait rate of `/bin/true` at 2 parallel
//!   measured in the same run;
//! - `ingest`: trigger ingest over HTTP with 16 concurrent clients (`BENCH_INGEST_CLIENTS`);
//! - `dispatch-latency`: idle dispatch latency, trigger sent → job process running (the
//!   job is a static C clock probe, so this includes exec and the probe's start-up);
//! - `memory`: server RSS idle and with 100,000 queued runs;
//! - `store`: store-level claim + finish throughput on PostgreSQL, 1 vs 3 processes, with
//!   and without a global cap ([`store`]);
//! - `statements`: runyard's count of the statements it sends against
//!   `pg_stat_statements` in a throwaway PostgreSQL cluster the bench starts ([`pgss`];
//!   needs the server binaries);
//! - `claim-depth`: claim latency with a million queued jobs (mixed priorities, a tenth
//!   held) next to a thousand, on SQLite and PostgreSQL ([`claim_depth`]);
//! - `replicas`: three replicas on PostgreSQL with the Redis bus and without one: abort →
//!   every shard's process dead, and wake-up latency from a trigger on one replica to the
//!   job running on another ([`replicas`]);
//! - `scale`: throughput with 1 and with 3 replicas on PostgreSQL (`/bin/true`, and
//!   slot-bound `sleep 0.02`), and orphan recovery over host kills at default timings
//!   ([`hosts`]; the kills need root for `unshare`);
//! - `keys`: what per-key caps and fair shares cost: runs over 100 tenants with the
//!   pipeline keyed by tenant next to the same runs without a key ([`keys`]);
//! - `release`: a run created `after` another: the need's end to the dependent's start,
//!   p50/p99 ([`release`]);
//! - `watchers`: end-to-end throughput of `/bin/true` runs with 1,000 idle `/api/events`
//!   clients next to none, the server's RSS per SSE connection and after they close
//!   ([`watch`]);
//! - `log-viewers`: the server CPU that 100 viewers of 100 busy jobs' log streams cost
//!   ([`watch`]), also on PostgreSQL with a database URL.
//!
//! `BENCH_ONLY` runs a subset: a comma-separated list of names (`BENCH_ONLY=throughput,memory`).
//! The letters that named the benches before are still accepted, alone or run together
//! (`BENCH_ONLY=a`, `BENCH_ONLY=hi`), since past notes quote them: a `throughput`,
//! b `ingest`, c `dispatch-latency`, d `memory`, e `store`, f `replicas`, g `scale`,
//! h `watchers`, i `log-viewers`, j `claim-depth`, k `statements`, l `keys`.
//!
//! With `BENCH_DATABASE_URL` (or `TEST_DATABASE_URL`) set, `throughput`, `keys`,
//! `log-viewers` and `claim-depth` also run on PostgreSQL (a fresh schema each, named by
//! the kit's rule `bench_{pid}_{n}` and dropped after; those of a killed bench are swept at
//! the next start), and `store`, `replicas` and `scale` run. `replicas` takes its Redis
//! from `BENCH_REDIS_URL` (or `TEST_REDIS_URL`), else starts a private `redis-server`
//! when one is installed. Without them they are skipped with a message.
//!
//! Environment: `BENCH_RUNS` (default 5000), `BENCH_INGEST` (20000), `BENCH_INGEST_CLIENTS` (16),
//! `BENCH_QUEUED` (100000), `BENCH_ROUNDS` (3), `BENCH_LATENCY_SAMPLES` (200),
//! `BENCH_STORE_SECS` (8), `BENCH_ABORTS` (30), `BENCH_WAKE_SAMPLES` (100),
//! `BENCH_SCALE_RUNS` (2000), `BENCH_HOST_KILLS` (5), `BENCH_WATCH_RUNS` (2000),
//! `BENCH_WATCHERS` (1000), `BENCH_VIEWERS` (100), `BENCH_DEEP` (1000000), `BENCH_DEAD_HEAD` (100000), `BENCH_PGSS_RUNS` (2000), `BENCH_RELEASE_SAMPLES` (200),
//! `BENCH_ONLY` (above), `BENCH_BIN` (the server binary to measure, [`kit::runyard_bin`];
//! default: this build's, so a landed binary can be measured with the same bench),
//! `BENCH_AB` (`throughput` measures `BENCH_BIN`'s build and this other binary in turns,
//! with the median of the pairs' ratios: see `runyard_bench/throughput.rs`),
//! `BENCH_SQLITE_SYNC` (`full`: SQLite servers fsync every commit, as PostgreSQL does by
//! default; ratios at equal durability).

#[path = "runyard_bench/claim_depth.rs"]
mod claim_depth;
#[path = "runyard_bench/hosts.rs"]
mod hosts;
#[path = "runyard_bench/keys.rs"]
mod keys;
#[path = "../tests/common/mod.rs"]
mod kit;
#[path = "runyard_bench/pgss.rs"]
mod pgss;
#[path = "runyard_bench/release.rs"]
mod release;
#[path = "runyard_bench/replicas.rs"]
mod replicas;
#[path = "runyard_bench/store.rs"]
mod store;
#[path = "runyard_bench/throughput.rs"]
mod throughput;
#[path = "runyard_bench/watch.rs"]
mod watch;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use kit::pg::Schema;
use kit::{BinServer, Launch, get, now_ns};

/// The benches, in the order they run: the name `BENCH_ONLY` takes, and the letter that
/// named it before (still accepted).
const BENCHES: [(&str, char); 13] = [
    ("throughput", 'a'),
    ("ingest", 'b'),
    ("dispatch-latency", 'c'),
    ("memory", 'd'),
    ("store", 'e'),
    ("statements", 'k'),
    ("claim-depth", 'j'),
    ("replicas", 'f'),
    ("scale", 'g'),
    ("keys", 'l'),
    ("release", 'm'),
    ("watchers", 'h'),
    ("log-viewers", 'i'),
];

/// The benches `BENCH_ONLY` selects (all when it is unset or empty): names separated by
/// commas; an old letter, or a run of them (`hi`), stands for its benches.
fn selected(spec: Option<&str>) -> Vec<&'static str> {
    let Some(spec) = spec.filter(|s| !s.trim().is_empty()) else {
        return BENCHES.iter().map(|(name, _)| *name).collect();
    };
    let by_letter = |c: char| BENCHES.iter().find(|(_, l)| *l == c).map(|(n, _)| *n);
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some((name, _)) = BENCHES.iter().find(|(n, _)| *n == item) {
            out.push(*name);
        } else if item.chars().all(|c| by_letter(c).is_some()) {
            out.extend(item.chars().filter_map(by_letter));
        } else {
            let names: Vec<&str> = BENCHES.iter().map(|(n, _)| *n).collect();
            panic!(
                "BENCH_ONLY: no bench {item:?}; the benches are {} (or their old letters a–l; `release` has none before m)",
                names.join(", ")
            );
        }
    }
    out
}

/// The tag of the bench's PostgreSQL schemas (`bench_{pid}_{n}`, the kit's rule).
pub(crate) const BENCH_TAG: &str = "bench";

pub(crate) fn env_usize(key: &str, default: usize) -> usize {
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

/// Starts the binary on `config` as the bench does: warnings on the bench's stderr, and
/// stopped gracefully when dropped (so its jobs stop with it).
pub(crate) async fn start_binary(config: &std::path::Path) -> BinServer {
    start_binary_of(None, config).await
}

/// [`start_binary`] of `bin` (default: [`kit::runyard_bin`]).
pub(crate) async fn start_binary_of(bin: Option<&str>, config: &std::path::Path) -> BinServer {
    let how = Launch {
        log_level: "warn",
        graceful_drop: true,
        bin,
        ..Launch::default()
    };
    BinServer::launch(config.to_str().unwrap(), kit::free_port(), how).await
}

/// The `[server]` keys every bench server has besides its own.
pub(crate) const SERVER_KEYS: &str = "shutdown_timeout = \"1s\"\nkill_grace = \"1s\"";

/// A bench server on a fresh directory: SQLite in it, or a fresh PostgreSQL schema that is
/// dropped once the server has stopped.
pub(crate) struct Server {
    // Dropped in this order: the server, its schema, its directory.
    bin: BinServer,
    _schema: Option<Schema>,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Server {
    type Target = BinServer;
    fn deref(&self) -> &BinServer {
        &self.bin
    }
}

/// The `[store]` table of a SQLite bench server: `BENCH_SQLITE_SYNC=full` makes its
/// commits fsync, as PostgreSQL's do by default (`synchronous_commit = on`), for figures
/// at equal durability.
fn sqlite_store_table() -> String {
    std::env::var("BENCH_SQLITE_SYNC").map_or(String::new(), |sync| {
        format!("[store]\nsynchronous = \"{sync}\"")
    })
}

/// The database for the PostgreSQL figures, if any.
fn database_url() -> Option<String> {
    std::env::var("BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("TEST_DATABASE_URL"))
        .ok()
}

impl Server {
    pub(crate) async fn start(server_extra: &str, pipelines: &str) -> Server {
        Self::start_on(None, server_extra, pipelines).await
    }

    /// On SQLite (`pg` = `None`) or in a fresh schema of the database at `pg`.
    pub(crate) async fn start_on(pg: Option<&str>, server_extra: &str, pipelines: &str) -> Server {
        Self::start_of(None, pg, server_extra, pipelines).await
    }

    /// [`Server::start_on`] of the binary `bin` (default: [`kit::runyard_bin`]).
    pub(crate) async fn start_of(
        bin: Option<&str>,
        pg: Option<&str>,
        server_extra: &str,
        pipelines: &str,
    ) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let schema = pg.map(|url| Schema::new(url, BENCH_TAG));
        let config = dir.path().join("runyard.toml");
        std::fs::write(
            &config,
            kit::config_text(
                &dir.path().join("data"),
                &format!("{SERVER_KEYS}\n{server_extra}"),
                &schema
                    .as_ref()
                    .map_or_else(sqlite_store_table, |s| s.store_table(None)),
                pipelines,
            ),
        )
        .unwrap();
        Server {
            bin: start_binary_of(bin, &config).await,
            _schema: schema,
            _dir: dir,
        }
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
    let (_, v) = get(http, &format!("{base}/api/pipelines")).await;
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

/// Waits until the runs `ids` of `pipeline` have all ended: runs are claimed in order, so
/// first on the newest (a cheap lookup), then until nothing is queued or running.
pub(crate) async fn wait_drained(
    http: &reqwest::Client,
    base: &str,
    pipeline: &str,
    ids: &[String],
) {
    let last_url = format!("{base}/api/runs/{}", ids.iter().max().unwrap());
    wait_finished(http, &last_url, Duration::from_millis(20)).await;
    loop {
        let (q, running) = counts(http, base, pipeline).await;
        if q == 0 && running == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls a run's URL until it is finalised.
pub(crate) async fn wait_finished(http: &reqwest::Client, run_url: &str, every: Duration) {
    loop {
        let (_, run) = get(http, run_url).await;
        if run["finishedAt"].is_string() {
            return;
        }
        tokio::time::sleep(every).await;
    }
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

/// `op → (statements, commits)` from the node's `runyard_store_*_total` counters.
pub(crate) async fn store_traffic(
    http: &reqwest::Client,
    base: &str,
) -> std::collections::BTreeMap<String, (u64, u64)> {
    let text = kit::metrics_text(http, base).await.expect("/metrics");
    let mut out: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for (op, n) in kit::metric_by_label(&text, "runyard_store_statements_total", "op") {
        out.entry(op).or_default().0 += n;
    }
    for (op, n) in kit::metric_by_label(&text, "runyard_store_commits_total", "op") {
        out.entry(op).or_default().1 += n;
    }
    out
}

async fn bench_ingest(pg: Option<&str>, n: usize, rounds: usize) {
    let clients = env_usize("BENCH_INGEST_CLIENTS", 16);
    println!(
        "[ingest] trigger ingest over HTTP, {clients} concurrent clients, {n} runs per round (jobs held back by concurrency = 1); \
         SQLite, then PostgreSQL with a database URL (rounds interleaved)"
    );
    let stores: Vec<Option<&str>> = std::iter::once(None).chain(pg.map(Some)).collect();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); stores.len()];
    for round in 1..=rounds {
        for (k, store) in stores.iter().enumerate() {
            let server = Server::start_on(
                *store,
                "max_workers = 2",
                "[pipelines.held]\ncommand = [\"sleep\", \"3600\"]\nconcurrency = 1\n",
            )
            .await;
            let (cpu0, machine0) = (server.cpu_secs(), kit::procfs::machine_cpu_secs());
            let (secs, ids) = ingest(&server.base, "held", n, clients).await;
            let (cpu, machine) = (
                server.cpu_secs() - cpu0,
                kit::procfs::machine_cpu_secs() - machine0,
            );
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            assert_eq!(ids.len(), n);
            let rate = n as f64 / secs;
            let name = if store.is_some() {
                "PostgreSQL"
            } else {
                "SQLite"
            };
            println!(
                "    round {round} {name:<10}: {rate:>7.0} runs/s ({secs:.2} s); CPU per run: server {:.0} µs, \
                 machine {:.0} µs (cores {:.0}% busy)",
                cpu / n as f64 * 1e6,
                machine / n as f64 * 1e6,
                machine / secs / cores * 100.0
            );
            let traffic = store_traffic(&reqwest::Client::new(), &server.base).await;
            let per_run: Vec<String> = traffic
                .iter()
                .filter(|(_, (statements, _))| *statements > 0)
                .map(|(op, (statements, commits))| {
                    format!(
                        "{op} {:.2}/{:.2}",
                        *statements as f64 / n as f64,
                        *commits as f64 / n as f64
                    )
                })
                .collect();
            println!(
                "        store traffic per trigger (statements/commits): {}",
                per_run.join(", ")
            );
            rates[k].push(rate);
        }
    }
    let sqlite = median(rates[0].clone());
    println!("    median SQLite: {sqlite:.0} runs/s (target ≥ 15,000)");
    if let Some(pg_rates) = rates.get(1) {
        let pg = median(pg_rates.clone());
        println!(
            "    median PostgreSQL: {pg:.0} runs/s = {:.2}× SQLite (target ≥ 0.8×)",
            pg / sqlite
        );
    }
    println!();
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
        "[dispatch-latency] idle dispatch latency, trigger sent → job process running ({samples} samples, one at a time; probe {probe:?})"
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
        let (_, logs) = get(&http, &logs_url).await;
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
    println!("[memory] server RSS");
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
    // The niced SSE clients of `watchers`, started by the bench itself.
    if let Ok(spec) = std::env::var("RUNYARD_BENCH_READERS") {
        rt.block_on(watch::reader_process(&spec));
        return;
    }
    // A worker process of `store`, started by the bench itself.
    if let Ok(spec) = std::env::var("RUNYARD_BENCH_WORKER") {
        let parts: Vec<&str> = spec.split('|').collect();
        let (url, schema) = (parts[0], parts[1]);
        let secs: u64 = parts[2].parse().unwrap();
        let cap: usize = parts[3].parse().unwrap();
        let redis = parts.get(4).filter(|url| !url.is_empty()).copied();
        rt.block_on(store::worker(url, schema, secs, cap, redis));
        return;
    }
    let only = selected(std::env::var("BENCH_ONLY").ok().as_deref());
    let on = |name: &str| only.contains(&name);
    rt.block_on(async {
        let rounds = env_usize("BENCH_ROUNDS", 3);
        println!(
            "runyard benchmark on {} CPUs: {}\n",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            BENCHES
                .iter()
                .map(|(name, _)| *name)
                .filter(|name| on(name))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let pg = database_url();
        match &pg {
            // Schemas of a bench killed before it dropped them.
            Some(url) => kit::pg::sweep_stale_schemas(url, BENCH_TAG).await,
            None => {
                let with_pg = [
                    "throughput",
                    "store",
                    "claim-depth",
                    "replicas",
                    "scale",
                    "keys",
                    "release",
                    "log-viewers",
                ];
                if with_pg.iter().any(|name| on(name)) {
                    println!(
                        "(PostgreSQL figures skipped: set BENCH_DATABASE_URL or TEST_DATABASE_URL)\n"
                    );
                }
            }
        }
        for (name, _) in BENCHES.iter().filter(|(name, _)| on(name)) {
            run(name, pg.as_deref(), rounds).await;
        }
    });
}

/// The Redis that benches of replicas share a bus on.
struct BenchRedis {
    url: String,
    /// The private server, when the bench started one (stopped on drop).
    _private: Option<kit::redis_server::PrivateRedis>,
}

/// `BENCH_REDIS_URL` (or `TEST_REDIS_URL`), else a private `redis-server` when one is
/// installed, else none.
fn bench_redis() -> Option<BenchRedis> {
    let shared = std::env::var("BENCH_REDIS_URL")
        .or_else(|_| std::env::var("TEST_REDIS_URL"))
        .ok();
    match shared {
        Some(url) => Some(BenchRedis {
            url,
            _private: None,
        }),
        None if kit::redis_server::available() => {
            let private = kit::redis_server::PrivateRedis::started();
            println!(
                "(replicas share a private redis-server at {})",
                private.url()
            );
            Some(BenchRedis {
                url: private.url(),
                _private: Some(private),
            })
        }
        None => None,
    }
}

/// Runs the bench `name`.
async fn run(name: &str, pg: Option<&str>, rounds: usize) {
    let needs_pg = || println!("[{name}] skipped: needs BENCH_DATABASE_URL or TEST_DATABASE_URL\n");
    match (name, pg) {
        ("throughput", _) => {
            throughput::bench_throughput(None, env_usize("BENCH_RUNS", 5000), rounds).await;
            if let Some(url) = pg {
                throughput::bench_throughput(Some(url), env_usize("BENCH_RUNS", 5000), rounds)
                    .await;
            }
        }
        ("ingest", _) => bench_ingest(pg, env_usize("BENCH_INGEST", 20_000), rounds).await,
        ("dispatch-latency", _) => bench_latency(env_usize("BENCH_LATENCY_SAMPLES", 200)).await,
        ("memory", _) => bench_rss(env_usize("BENCH_QUEUED", 100_000)).await,
        ("store", Some(url)) => {
            let secs = env_usize("BENCH_STORE_SECS", 8) as u64;
            let redis = bench_redis();
            store::bench_store(url, rounds, secs, redis.as_ref().map(|r| r.url.as_str())).await
        }
        ("statements", _) => pgss::bench_pgss(env_usize("BENCH_PGSS_RUNS", 2000)).await,
        ("claim-depth", _) => {
            claim_depth::bench_claim_depth(
                pg,
                env_usize("BENCH_DEEP", 1_000_000),
                env_usize("BENCH_DEAD_HEAD", 100_000),
            )
            .await
        }
        ("replicas", Some(url)) => {
            let (aborts, wakes) = (
                env_usize("BENCH_ABORTS", 30),
                env_usize("BENCH_WAKE_SAMPLES", 100),
            );
            match bench_redis() {
                Some(redis) => replicas::bench_replicas(url, &redis.url, aborts, wakes).await,
                None => println!(
                    "[replicas] skipped: set BENCH_REDIS_URL (or TEST_REDIS_URL), or install redis-server\n"
                ),
            }
        }
        ("scale", Some(url)) => {
            let redis = bench_redis();
            hosts::bench_scale(
                url,
                redis.as_ref().map(|r| r.url.as_str()),
                env_usize("BENCH_SCALE_RUNS", 2000),
                rounds,
                env_usize("BENCH_HOST_KILLS", 5),
            )
            .await
        }
        ("keys", _) => {
            keys::bench_keys(None, env_usize("BENCH_RUNS", 5000), rounds).await;
            if let Some(url) = pg {
                keys::bench_keys(Some(url), env_usize("BENCH_RUNS", 5000), rounds).await;
            }
        }
        ("release", _) => {
            let samples = env_usize("BENCH_RELEASE_SAMPLES", 200);
            release::bench_release(None, samples).await;
            if let Some(url) = pg {
                release::bench_release(Some(url), samples).await;
            }
        }
        ("watchers", _) => {
            watch::bench_watchers(
                env_usize("BENCH_WATCH_RUNS", 2000),
                env_usize("BENCH_WATCHERS", 1000),
                rounds,
            )
            .await
        }
        ("log-viewers", _) => {
            watch::bench_log_viewers(None, env_usize("BENCH_VIEWERS", 100), rounds).await;
            if let Some(url) = pg {
                watch::bench_log_viewers(Some(url), env_usize("BENCH_VIEWERS", 100), rounds).await;
            }
        }
        ("store" | "replicas" | "scale", None) => needs_pg(),
        _ => unreachable!("bench {name} is in BENCHES"),
    }
}
