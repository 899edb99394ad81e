//! (g) Many replicas: end-to-end throughput with 1 and with 3 replicas on one
//! PostgreSQL schema, and orphan recovery across hosts at default timings.
//!
//! - Throughput: `BENCH_SCALE_RUNS` single-shard runs queued, then drained by 1 or
//!   3 replicas; for `/bin/true` (CPU-bound on a 2-core machine: the replicas', the
//!   database's and the jobs' processes share the cores, so the CPU share of the
//!   replicas is printed) and for `sleep 0.02` (slot-bound: 8 slots per replica).
//! - Orphan recovery: `BENCH_HOST_KILLS` times, a replica on a host of its own
//!   (`unshare` UTS + PID namespaces, as in `tests/hosts.rs`; needs root) running
//!   a long job is SIGKILLed with its namespace; the figure is the time until the
//!   job runs again on a survivor, at the default heartbeat (10 s, lease 30 s).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{get_json, ingest, median};

/// A replica process: plain, or pid 1 of its own namespaces (`host`).
pub(crate) struct Replica {
    child: Child,
    pub(crate) base: String,
    host: bool,
}

impl Replica {
    pub(crate) async fn start(config: &std::path::Path, host: Option<&str>) -> Replica {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin = env!("CARGO_BIN_EXE_runyard");
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = match host {
            None => {
                let mut c = Command::new(bin);
                c.args(["serve", "-c", config.to_str().unwrap(), "--listen", &listen]);
                c
            }
            Some(name) => {
                let mut c = Command::new("unshare");
                c.args([
                    "--uts",
                    "--pid",
                    "--fork",
                    "--mount-proc",
                    "--kill-child",
                    "sh",
                    "-c",
                ])
                .arg(format!(
                    "hostname {name} && exec {bin} serve -c {} --listen {listen}",
                    config.display()
                ));
                c
            }
        };
        let child = cmd
            .env("RUNYARD_LOG", "warn")
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("MAX_WORKERS")
            .env_remove("RUNYARD_MAX_WORKERS")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a replica");
        let base = format!("http://{listen}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while http.get(format!("{base}/healthz")).send().await.is_err() {
            assert!(Instant::now() < deadline, "replica did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Replica {
            child,
            base,
            host: host.is_some(),
        }
    }

    /// The server's pid (for a host: the namespace's pid 1, seen from outside).
    fn server_pid(&self) -> Option<u32> {
        if !self.host {
            return Some(self.child.id());
        }
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
    }

    /// CPU seconds the server has used (user + system).
    fn cpu_secs(&self) -> f64 {
        let Some(pid) = self.server_pid() else {
            return 0.0;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        ticks / 100.0
    }

    fn crash(&mut self) {
        if let Some(pid) = self.server_pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Some(pid) = self.server_pid() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
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

fn write_config(
    dir: &std::path::Path,
    name: &str,
    pg: &str,
    schema: &str,
    server: &str,
    pipelines: &str,
) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[server]\ndata_dir = \"{}\"\nshutdown_timeout = \"1s\"\nkill_grace = \"1s\"\n{server}\n\n\
             [store]\nurl = \"{pg}\"\nschema = \"{schema}\"\npool_size = 8\n\n{pipelines}\n",
            dir.join(name).display()
        ),
    )
    .unwrap();
    path
}

fn drop_schema(pg: &str, schema: &str) {
    let _ = Command::new("psql")
        .args([
            pg,
            "-qc",
            &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
        ])
        .output();
}

/// Total CPU seconds of every process on the machine (from `/proc/stat`), for the share.
fn machine_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system (idle iowait excluded) irq softirq steal
    (v.first().unwrap_or(&0.0)
        + v.get(1).unwrap_or(&0.0)
        + v.get(2).unwrap_or(&0.0)
        + v.get(5).unwrap_or(&0.0)
        + v.get(6).unwrap_or(&0.0)
        + v.get(7).unwrap_or(&0.0))
        / 100.0
}

/// Queues `runs` runs, then drains them with `n` replicas; returns (runs/s, replicas'
/// CPU share of the machine's busy time, machine busy share of all cores).
async fn drain(pg: &str, n: usize, runs: usize, slots: usize, command: &str) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let schema = format!("bench_scale_{}", uuid::Uuid::now_v7().simple());
    let pipelines = format!("[pipelines.work]\ncommand = {command}\n");
    // Queue first with a replica that runs nothing (admission held), so every figure
    // starts from the same full queue.
    let held = write_config(
        dir.path(),
        "feeder",
        pg,
        &schema,
        "max_workers = 1\nadmit_min_free_memory = \"1000000GiB\"",
        &pipelines,
    );
    let feeder = Replica::start(&held, None).await;
    let (_, ids) = ingest(&feeder.base, "work", runs, 16).await;
    drop(feeder);
    let config = write_config(
        dir.path(),
        "node",
        pg,
        &schema,
        &format!("max_workers = {slots}"),
        &pipelines,
    );
    let http = reqwest::Client::new();
    let (cpu0, started) = (machine_cpu_secs(), Instant::now());
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(Replica::start(&config, None).await);
    }
    let last = ids.iter().max().unwrap().clone();
    loop {
        let run: Value = get_json(&http, format!("{}/api/runs/{last}", nodes[0].base)).await;
        if run["finishedAt"].is_string() {
            let p: Value = get_json(&http, format!("{}/api/pipelines", nodes[0].base)).await;
            let w = &p["pipelines"][0];
            if w["queued"] == 0 && w["running"] == 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let busy = machine_cpu_secs() - cpu0;
    let replicas: f64 = nodes.iter().map(Replica::cpu_secs).sum();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    drop(nodes);
    drop_schema(pg, &schema);
    (
        runs as f64 / secs,
        replicas / busy.max(1e-9),
        busy / (secs * cores),
    )
}

async fn orphan_recovery(pg: &str, kills: usize) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let schema = format!("bench_orphan_{}", uuid::Uuid::now_v7().simple());
    let pipelines = "[pipelines.long]\ncommand = [\"sleep\", \"600\"]\n";
    let config = write_config(
        dir.path(),
        "node",
        pg,
        &schema,
        "max_workers = 1",
        pipelines,
    );
    let http = reqwest::Client::new();
    let survivor = Replica::start(&config, Some("survivor")).await;
    let mut out = Vec::new();
    for k in 0..kills {
        let mut victim = Replica::start(&config, Some(&format!("victim-{k}"))).await;
        // The survivor's one slot stays free for the orphan: the victim takes the job.
        let victim_node = loop {
            let w: Value = get_json(&http, format!("{}/api/workers", victim.base)).await;
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
            let r: Value = get_json(&http, &url).await;
            if r["jobs"][0]["status"] == "running" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let r: Value = get_json(&http, &url).await;
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
            let r: Value = get_json(&http, &url).await;
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
    drop_schema(pg, &schema);
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

/// Runs (g); `runs = 0` leaves the throughput figure out.
pub async fn bench_scale(pg: &str, runs: usize, rounds: usize, kills: usize) {
    println!(
        "(g) replicas on one PostgreSQL schema: {runs} queued single-shard runs drained by 1 and by 3 replicas"
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
                let (rate, share, b) = drain(pg, n, runs, slots, command).await;
                rates.push(rate);
                shares.push(share);
                busy.push(b);
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
    let can_unshare = Command::new("unshare")
        .args(["--uts", "--pid", "--fork", "--mount-proc", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if kills == 0 || !can_unshare {
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
