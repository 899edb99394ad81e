//! `release`: how soon a run created `after` another starts once that one has ended.
//! The release itself is in the need's ending transaction, so this measures what a user
//! waits for: the need's `finishedAt` to the dependent's `startedAt` — the wake-up of a
//! claim loop, the claim and the spawn — over sequential pairs of single-shard
//! `/bin/true` runs on one node, SQLite and (with a database URL) PostgreSQL.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Server, percentile, wait_finished};
use crate::kit::get;

const PIPELINES: &str = "[pipelines.need]\ncommand = [\"/bin/true\"]\n\
[pipelines.next]\ncommand = [\"/bin/true\"]\n";

async fn post(http: &reqwest::Client, url: &str, body: Value) -> Value {
    let resp = http.post(url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    resp.json().await.unwrap()
}

/// The run's view once it has ended.
async fn ended(http: &reqwest::Client, base: &str, run_id: &str) -> Value {
    let url = format!("{base}/api/runs/{run_id}");
    wait_finished(http, &url, Duration::from_millis(2)).await;
    get(http, &url).await.1
}

fn ms(v: &Value) -> i64 {
    runyard::clock::parse_rfc3339(v.as_str().unwrap()).unwrap()
}

pub(crate) async fn bench_release(pg: Option<&str>, samples: usize) {
    let store = if pg.is_some() { "PostgreSQL" } else { "SQLite" };
    println!(
        "[release] need ended → dependent started on {store}: {samples} pairs of /bin/true runs, one node, max_workers = 2"
    );
    let server = Server::start_on(pg, "max_workers = 2", PIPELINES).await;
    let http = reqwest::Client::new();
    let base = &server.base;
    let mut gaps = Vec::with_capacity(samples);
    for _ in 0..samples {
        let need = post(
            &http,
            &format!("{base}/api/pipelines/need/trigger"),
            json!({}),
        )
        .await;
        let need_id = need["runId"].as_str().unwrap().to_string();
        let next = post(
            &http,
            &format!("{base}/api/pipelines/next/trigger"),
            json!({"after": [need_id]}),
        )
        .await;
        let next_id = next["runId"].as_str().unwrap().to_string();
        let need = ended(&http, base, &need_id).await;
        let next = ended(&http, base, &next_id).await;
        assert_eq!(next["status"], "completed", "{next}");
        gaps.push((ms(&next["startedAt"]) - ms(&need["finishedAt"])) as f64);
    }
    gaps.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "    need finishedAt → dependent startedAt: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (the release is in the need's own commit)\n",
        percentile(&gaps, 0.5),
        percentile(&gaps, 0.99),
        gaps[gaps.len() - 1]
    );
}
