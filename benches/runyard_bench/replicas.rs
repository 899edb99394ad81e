//! `replicas`: replicas and the bus: three `runyard serve` processes on one PostgreSQL
//! schema, with the Redis bus and without one (store polls only).
//!
//! - Abort → every shard's process dead: a 6-shard run spread over the three
//!   replicas (2 slots each), aborted through one of them in turn; the time from
//!   sending the abort to the last of the six process groups being gone (read from
//!   `/proc` every 2 ms). p50 / p99 over `BENCH_ABORTS` aborts.
//! - Wake-up: trigger on replica A → the job's process running on replica B. A
//!   holds its claims (`admit_min_free_memory` far above the machine), so only B
//!   can run the job; the job is the clock probe of `dispatch-latency`. p50 / p99 over
//!   `BENCH_WAKE_SAMPLES` triggers.
//! - Release: a run created `after` another, the need running on replica A and the
//!   dependent on replica B (by labels): the need's `finishedAt` (A's commit, which
//!   releases the dependent) → the dependent's `startedAt` on B. p50 / p99 over
//!   `BENCH_RELEASE_SAMPLES` pairs.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::kit::pg::Schema;
use crate::kit::{BinServer, config_text, get, group_members, now_ns, redis_server};
use crate::{BENCH_TAG, SERVER_KEYS, clock_probe, percentile, start_binary, wait_finished};

/// Writes a config and starts one replica on it (a plain process: the same host).
async fn replica(dir: &std::path::Path, name: &str, text: &str) -> BinServer {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, text).unwrap();
    start_binary(&config).await
}

/// A replica's config on `schema` (6 connections), with the bus `(url, prefix)` if any.
fn config(
    dir: &std::path::Path,
    schema: &Schema,
    bus: Option<(&str, &str)>,
    extra: &str,
    pipelines: &str,
) -> String {
    let bus = bus.map_or(String::new(), |(url, prefix)| {
        format!("[bus]\nurl = \"{url}\"\nprefix = \"{prefix}\"\n")
    });
    config_text(
        &dir.join("data"),
        &format!("{SERVER_KEYS}\nmax_workers = 2\n{extra}"),
        &schema.store_table(Some(6)),
        &format!("{bus}\n{pipelines}"),
    )
}

/// Waits until every replica reports its bus connected.
async fn wait_bus(http: &reqwest::Client, nodes: &[&BinServer]) {
    for r in nodes {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, w) = get(http, &format!("{}/api/workers", r.base)).await;
            let up = w["workers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|w| w["self"] == true && w["bus"]["connected"] == true);
            if up {
                break;
            }
            assert!(Instant::now() < deadline, "bus did not connect");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn abort_latencies(http: &reqwest::Client, nodes: &[BinServer], n: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for k in 0..n {
        let t = http
            .post(format!("{}/api/pipelines/hold/trigger", nodes[k % 3].base))
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        let run = t["runId"].as_str().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        let groups: Vec<u32> = loop {
            let (_, r) = get(http, &format!("{}/api/runs/{run}", nodes[0].base)).await;
            let g: Vec<u32> = r["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|j| j["status"] == "running")
                .filter_map(|j| j["pid"].as_u64())
                .map(|p| p as u32)
                .collect();
            if g.len() == 6 {
                break g;
            }
            assert!(Instant::now() < deadline, "shards did not all start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let sent = Instant::now();
        http.post(format!("{}/api/runs/{run}/abort", nodes[(k + 1) % 3].base))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        while groups.iter().any(|g| !group_members(*g).is_empty()) {
            assert!(
                sent.elapsed() < Duration::from_secs(30),
                "shards outlived the abort"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        out.push(sent.elapsed().as_secs_f64() * 1e3);
        wait_finished(
            http,
            &format!("{}/api/runs/{run}", nodes[0].base),
            Duration::from_millis(20),
        )
        .await;
    }
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

async fn wake_latencies(
    http: &reqwest::Client,
    a: &BinServer,
    b: &BinServer,
    n: usize,
) -> Vec<f64> {
    let url = format!("{}/api/pipelines/clock/trigger", a.base);
    let mut out = Vec::new();
    for _ in 0..n {
        let sent = now_ns();
        let t: Value = http
            .post(&url)
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = t["runId"].as_str().unwrap().to_string();
        wait_finished(
            http,
            &format!("{}/api/runs/{id}", b.base),
            Duration::from_millis(5),
        )
        .await;
        let (_, logs) = get(http, &format!("{}/api/jobs/{id}/logs", b.base)).await;
        let started: u128 = logs["stdout"][0].as_str().unwrap().trim().parse().unwrap();
        out.push(started.saturating_sub(sent) as f64 / 1e6);
    }
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

/// Runs `replicas` with the bus on `redis` (a fresh prefix) and without a bus.
pub async fn bench_replicas(pg: &str, redis: &str, aborts: usize, wakes: usize) {
    println!(
        "[replicas] three replicas on one PostgreSQL schema: abort → every shard's process dead; trigger on A → job running on B"
    );
    let http = reqwest::Client::new();
    let probe_dir = tempfile::tempdir().unwrap();
    let probe = clock_probe(probe_dir.path());
    let command = probe
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    for with_bus in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let schema = Schema::new(pg, BENCH_TAG);
        let prefix = redis_server::fresh_prefix();
        let bus = with_bus.then_some((redis, prefix.as_str()));
        let pipelines = format!(
            "[pipelines.hold]\ncommand = [\"sh\", \"-c\", \"sleep 600 & wait\"]\nshards = 6\n\n\
             [pipelines.clock]\ncommand = [{command}]\n"
        );
        let text = config(dir.path(), &schema, bus, "", &pipelines);
        let mut nodes = Vec::new();
        for i in 0..3 {
            nodes.push(replica(dir.path(), &format!("r{i}"), &text).await);
        }
        if with_bus {
            wait_bus(&http, &nodes.iter().collect::<Vec<_>>()).await;
        }
        let label = if with_bus {
            "with Redis"
        } else {
            "without a bus (store polls)"
        };
        let lat = abort_latencies(&http, &nodes, aborts).await;
        println!(
            "    abort, {label}: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {aborts} aborts (targets p99 ≤ {})",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat[lat.len() - 1],
            if with_bus { "1 s" } else { "10 s" }
        );
        drop(nodes);
        // Wake-up: A accepts triggers but holds its claims; B runs the job.
        let held = config(
            dir.path(),
            &schema,
            bus,
            "admit_min_free_memory = \"1000000GiB\"",
            &pipelines,
        );
        let a = replica(dir.path(), "a", &held).await;
        let b = replica(dir.path(), "b", &text).await;
        if with_bus {
            wait_bus(&http, &[&a, &b]).await;
        }
        let lat = wake_latencies(&http, &a, &b, wakes).await;
        println!(
            "    wake-up, {label}: trigger on A → job running on B p50 {:.1} ms, p99 {:.1} ms over {wakes} triggers",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
        drop((a, b));
        let lat = release_latencies(&http, dir.path(), &schema, bus).await;
        println!(
            "    release, {label}: need ended on A → dependent started on B p50 {:.0} ms, p99 {:.0} ms over {} pairs",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.len()
        );
        drop(schema);
    }
    println!();
}

/// A run `after` another across two replicas: the need runs on A (label `role=a`), the
/// dependent on B; the need's end → the dependent's start, in ms, sorted.
async fn release_latencies(
    http: &reqwest::Client,
    dir: &std::path::Path,
    schema: &Schema,
    bus: Option<(&str, &str)>,
) -> Vec<f64> {
    let samples = crate::env_usize("BENCH_RELEASE_SAMPLES", 200);
    let pipelines = "[pipelines.need]\ncommand = [\"/bin/true\"]\nrequires = { role = \"a\" }\n\n\
                     [pipelines.next]\ncommand = [\"/bin/true\"]\nrequires = { role = \"b\" }\n";
    let on = |role: &str| {
        config(
            dir,
            schema,
            bus,
            &format!("labels = {{ role = \"{role}\" }}"),
            pipelines,
        )
    };
    let a = replica(dir, "ra", &on("a")).await;
    let b = replica(dir, "rb", &on("b")).await;
    if bus.is_some() {
        wait_bus(http, &[&a, &b]).await;
    }
    let ms = |v: &Value| runyard::clock::parse_rfc3339(v.as_str().unwrap()).unwrap() as f64;
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let trigger = |pipeline: &str, body: Value| {
            let url = format!("{}/api/pipelines/{pipeline}/trigger", a.base);
            let http = http.clone();
            async move {
                let t: Value = http
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                t["runId"].as_str().unwrap().to_string()
            }
        };
        let need = trigger("need", json!({})).await;
        let next = trigger("next", json!({"after": [need]})).await;
        let run = |id: &str| format!("{}/api/runs/{id}", a.base);
        wait_finished(http, &run(&next), Duration::from_millis(2)).await;
        let (_, need) = get(http, &run(&need)).await;
        let (_, next) = get(http, &run(&next)).await;
        assert_eq!(next["status"], "completed", "{next}");
        out.push(ms(&next["startedAt"]) - ms(&need["finishedAt"]));
    }
    out.sort_by(|x, y| x.partial_cmp(y).unwrap());
    out
}
