//! `keys`: what per-key caps and fair shares cost: end-to-end throughput of single-shard
//! `/bin/true` runs over 100 tenants, with the pipeline keyed by tenant
//! (`concurrency_key = "{tenant}"`, `concurrency_per_key = 2`) and without a key, in
//! interleaved rounds on SQLite (and PostgreSQL with a database URL). Target: keyed no
//! more than 10 % slower.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Server, counts, median};

const TENANTS: usize = 100;

const PIPELINES: &str = "[pipelines.plain]\ncommand = [\"/bin/true\"]\n\
[pipelines.plain.params.tenant]\npattern = \"t[0-9]+\"\n\
[pipelines.keyed]\ncommand = [\"/bin/true\"]\nconcurrency_key = \"{tenant}\"\nconcurrency_per_key = 2\n\
[pipelines.keyed.params.tenant]\npattern = \"t[0-9]+\"\n";

/// Triggers `n` runs of `pipeline`, tenant `t{i % 100}`, from 16 clients; waits until
/// every one ended; returns runs per second.
async fn drain(server: &Server, pipeline: &str, n: usize) -> f64 {
    let http = reqwest::Client::new();
    let url = Arc::new(format!("{}/api/pipelines/{pipeline}/trigger", server.base));
    let started = Instant::now();
    let clients = 16;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while i < n {
                let body = format!("{{\"parameters\": {{\"tenant\": \"t{}\"}}}}", i % TENANTS);
                let resp = http
                    .post(url.as_str())
                    .body(body)
                    .header("content-type", "application/json")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 202, "{:?}", resp.json::<Value>().await);
                i += clients;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    loop {
        let (q, running) = counts(&http, &server.base, pipeline).await;
        if q == 0 && running == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

pub(crate) async fn bench_keys(pg: Option<&str>, runs: usize, rounds: usize) {
    let store = if pg.is_some() { "PostgreSQL" } else { "SQLite" };
    println!(
        "[keys] per-key caps and fair shares on {store}: {runs} single-shard /bin/true runs over {TENANTS} tenants, max_workers = 2"
    );
    let (mut plain, mut keyed) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let server = Server::start_on(pg, "max_workers = 2", PIPELINES).await;
        let p = drain(&server, "plain", runs).await;
        let k = drain(&server, "keyed", runs).await;
        println!(
            "    round {round}: no key {p:>5.0} runs/s; keyed by tenant {k:>5.0} runs/s ({:.0}%)",
            100.0 * k / p
        );
        plain.push(p);
        keyed.push(k);
    }
    let (p, k) = (median(plain), median(keyed));
    println!(
        "    median: no key {p:.0} runs/s, keyed {k:.0} runs/s = {:.0}% (target ≥ 90%)\n",
        100.0 * k / p
    );
}
