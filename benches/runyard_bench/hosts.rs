//! `scale`: many replicas: end-to-end throughput with 1 and with 3 replicas on one
//! PostgreSQL schema, and orphan recovery across hosts at default timings.
//!
//! - Throughput: `BENCH_SCALE_RUNS` single-shard runs queued, then drained by 1 or
//!   3 replicas; for `/bin/true` (CPU-bound on a 2-core machine: the replicas', the
//!   database's and the jobs' processes share the cores, so the CPU share of the
//!   replicas is printed) and for `sleep 0.02` (slot-bound: 8 slots per replica).
//! - Under a global cap: `/bin/true` on 3 replicas of 2 slots under `max_workers_global
//!   = 3`, sharing the Redis bus (`BENCH_REDIS_URL`, …), with the claims each run cost
//!   that were sent on their own (not fused with an end: a woken claim loop's).
//! - Orphan recovery: `BENCH_HOST_KILLS` times, a replica on a host of its own
//!   (`unshare` UTS + PID namespaces, as in `tests/hosts.rs`; needs root) running
//!   a long job is SIGKILLed with its namespace; the figure is the time until the
//!   job runs again on a survivor, at the default heartbeat (10 s, lease 30 s).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::kit::hosts::{Host, can_unshare};
use crate::kit::pg::Schema;
use crate::kit::{BinServer, config_text, get, metric_by_label, metrics_text, procfs};
use crate::{BENCH_TAG, SERVER_KEYS, ingest, median, start_binary};

/// Writes `{name}.toml` in `dir`: a replica on `schema` (8 connections) with `server` keys.
fn write_config(
    dir: &std::path::Path,
    name: &str,
    schema: &Schema,
    server: &str,
    pipelines: &str,
) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        config_text(
            &dir.join(name),
            &format!("{SERVER_KEYS}\n{server}"),
            &schema.store_table(Some(8)),
            pipelines,
        ),
    )
    .unwrap();
    path
}

/// How the replicas of one drain are set up.
struct Replicas<'a> {
    n: usize,
    slots: usize,
    /// `max_workers_global` (0: none).
    cap: usize,
    /// The Redis they share a bus on (a fresh prefix per drain), if any.
    bus: Option<&'a str>,
}

/// One drain's figures.
struct Drained {
    rate: f64,
    /// The replicas' CPU share of the machine's busy time.
    share: f64,
    /// The machine's busy share of all cores.
    busy: f64,
    /// Claims sent on their own (not fused with an end), per run.
    claims: f64,
}

/// Queues `runs` runs, then drains them with `r`'s replicas.
async fn drain(pg: &str, r: &Replicas<'_>, runs: usize, command: &str) -> Drained {
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::new(pg, BENCH_TAG);
    let bus = r.bus.map_or(String::new(), |url| {
        let prefix = crate::kit::redis_server::fresh_prefix();
        format!("[bus]\nurl = \"{url}\"\nprefix = \"{prefix}\"\n")
    });
    let pipelines = format!("{bus}\n[pipelines.work]\ncommand = {command}\n");
    // Queue first with a replica that runs nothing (admission held), so every figure
    // starts from the same full queue.
    let held = write_config(
        dir.path(),
        "feeder",
        &schema,
        "max_workers = 1\nadmit_min_free_memory = \"1000000GiB\"",
        &pipelines,
    );
    let feeder = start_binary(&held).await;
    let (_, ids) = ingest(&feeder.base, "work", runs, 16).await;
    drop(feeder);
    // A data directory per replica: its journal of ends is its own (a replica starting
    // on another's would replay that one's live executions).
    let configs: Vec<_> = (0..r.n)
        .map(|i| {
            write_config(
                dir.path(),
                &format!("node{i}"),
                &schema,
                &format!("max_workers = {}\nmax_workers_global = {}", r.slots, r.cap),
                &pipelines,
            )
        })
        .collect();
    let http = reqwest::Client::new();
    let (cpu0, started) = (procfs::machine_cpu_secs(), Instant::now());
    let mut nodes = Vec::new();
    for config in &configs {
        nodes.push(start_binary(config).await);
    }
    let last = ids.iter().max().unwrap().clone();
    loop {
        let (_, run) = get(&http, &format!("{}/api/runs/{last}", nodes[0].base)).await;
        if run["finishedAt"].is_string() {
            let (_, p) = get(&http, &format!("{}/api/pipelines", nodes[0].base)).await;
            let w = &p["pipelines"][0];
            if w["queued"] == 0 && w["running"] == 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let busy = procfs::machine_cpu_secs() - cpu0;
    let replicas: f64 = nodes.iter().map(BinServer::cpu_secs).sum();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let mut claims = 0;
    for node in &nodes {
        let text = metrics_text(&http, &node.base).await.unwrap_or_default();
        let commits = metric_by_label(&text, "runyard_store_commits_total", "op");
        claims += commits.get("job_claim").copied().unwrap_or(0);
    }
    drop(nodes);
    drop(schema);
    Drained {
        rate: runs as f64 / secs,
        share: replicas / busy.max(1e-9),
        busy: busy / (secs * cores),
        claims: claims as f64 / runs as f64,
    }
}

/// `/bin/true` drained by 3 replicas of 2 slots under a global cap of 3, on the bus: a
/// replica waiting for the cap claims when woken, so its claims show how often ends woke
/// it for nothing.
async fn capped(pg: &str, redis: &str, runs: usize, rounds: usize) {
    let replicas = Replicas {
        n: 3,
        slots: 2,
        cap: 3,
        bus: Some(redis),
    };
    let (mut rates, mut claims) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let d = drain(pg, &replicas, runs, "[\"/bin/true\"]").await;
        rates.push(d.rate);
        claims.push(d.claims);
    }
    println!(
        "    /bin/true, 3 replicas of 2 slots under max_workers_global = 3, on the bus: {:.0} runs/s, claims on their own {:.2} per run",
        median(rates),
        median(claims)
    );
}

async fn orphan_recovery(pg: &str, kills: usize) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::new(pg, BENCH_TAG);
    let pipelines = "[pipelines.long]\ncommand = [\"sleep\", \"600\"]\n";
    // A data directory (and journal) per host, as on separate machines.
    let config = |name: &str| write_config(dir.path(), name, &schema, "max_workers = 1", pipelines);
    let http = reqwest::Client::new();
    let survivor = Host::start("survivor", &config("survivor"), None).await;
    let mut out = Vec::new();
    for k in 0..kills {
        let name = format!("victim-{k}");
        let mut victim = Host::start(&name, &config(&name), None).await;
        // The survivor's one slot stays free for the orphan: the victim takes the job.
        let victim_node = loop {
            let (_, w) = get(&http, &format!("{}/api/workers", victim.base)).await;
            if let Some(me) = w["workers"]
                .as_array()
                .and_then(|a| a.iter().find(|w| w["self"] == true))
            {
                break me["id"].as_str().unwrap().to_string();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let t: Value = http
            .post(format!("{}/api/pipelines/long/trigger", victim.base))
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let run = t["runId"].as_str().unwrap().to_string();
        let url = format!("{}/api/runs/{run}", survivor.base);
        loop {
            let (_, r) = get(&http, &url).await;
            if r["jobs"][0]["status"] == "running" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (_, r) = get(&http, &url).await;
        if r["jobs"][0]["node"] != victim_node.as_str() {
            // The survivor took it: abort, and try again with this victim.
            http.post(format!("{url}/abort"))
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            continue;
        }
        victim.crash();
        let killed = Instant::now();
        loop {
            let (_, r) = get(&http, &url).await;
            if r["jobs"][0]["status"] == "running" && r["jobs"][0]["node"] != victim_node.as_str() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        out.push(killed.elapsed().as_secs_f64());
        http.post(format!("{url}/abort"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
    }
    drop(survivor);
    drop(schema);
    out
}

/// The two job shapes of the throughput figure: label, command, slots per replica.
const SHAPES: [(&str, &str, &[&str], usize); 2] = [
    (
        "/bin/true, 2 slots per replica",
        "[\"/bin/true\"]",
        &["/bin/true"],
        2,
    ),
    (
        "sleep 0.02, 8 slots per replica",
        "[\"sleep\", \"0.02\"]",
        &["sleep", "0.02"],
        8,
    ),
];

/// Runs `scale`; `runs = 0` leaves the throughput figure out.
pub async fn bench_scale(pg: &str, redis: Option<&str>, runs: usize, rounds: usize, kills: usize) {
    println!(
        "[scale] replicas on one PostgreSQL schema: {runs} queued single-shard runs drained by 1 and by 3 replicas"
    );
    let shapes = if runs == 0 { &[][..] } else { &SHAPES[..] };
    for &(label, command, argv, slots) in shapes {
        let raw = crate::raw_rate(argv, runs.min(1000), slots);
        println!(
            "    {label}: the same processes run and waited for directly, {slots} at a time: {raw:.0}/s"
        );
        let mut by_n = Vec::new();
        for n in [1, 3] {
            let mut rates = Vec::new();
            let mut shares = Vec::new();
            let mut busy = Vec::new();
            for _ in 0..rounds {
                let replicas = Replicas {
                    n,
                    slots,
                    cap: 0,
                    bus: None,
                };
                let d = drain(pg, &replicas, runs, command).await;
                rates.push(d.rate);
                shares.push(d.share);
                busy.push(d.busy);
            }
            let (rate, share, b) = (median(rates), median(shares), median(busy));
            println!(
                "    {label}, {n} replica(s): {rate:.0} runs/s = {:.2}× direct (machine {:.0}% busy; replicas {:.0}% of that)",
                rate / raw,
                100.0 * b,
                100.0 * share
            );
            by_n.push(rate);
        }
        println!("    {label}: 3 replicas / 1 = {:.2}×", by_n[1] / by_n[0]);
    }
    match redis {
        Some(redis) if runs > 0 => capped(pg, redis, runs, rounds).await,
        _ => {
            println!("    (3 replicas under a global cap skipped: needs Redis, as `replicas` does)")
        }
    }
    if kills == 0 || !can_unshare() {
        println!(
            "    (orphan recovery skipped: needs root for unshare, and BENCH_HOST_KILLS > 0)\n"
        );
        return;
    }
    let mut rec = orphan_recovery(pg, kills).await;
    rec.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "    orphan recovery at default timings (heartbeat 10 s, lease 30 s), {} host kills: median {:.1} s, max {:.1} s (bound 45 s)\n",
        rec.len(),
        rec[rec.len() / 2],
        rec[rec.len() - 1]
    );
}
