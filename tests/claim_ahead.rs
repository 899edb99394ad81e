//! A slot's claim-ahead against the real server (SQLite, and PostgreSQL in CI's second
//! pass): a slot holds one job beyond the one it runs, so it starts its next process
//! while the last one's end is written; a job held behind one that runs long goes back
//! to the queue unstarted, spending nothing (`src/scheduler/slot.rs`).

mod common;

use std::time::Duration;

use common::{TestServer, eventually};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_slot_holding_a_job_behind_a_long_one_hands_it_back_unstarted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // `first` and `long` run until the test creates their file; `warm` and `quick` are
    // done at once.
    let s = TestServer::start(
        "max_workers = 1",
        &format!(
            r#"
[pipelines.first]
command = ["sh", "-c", "while [ ! -f {d}/go ]; do sleep 0.01; done"]
[pipelines.warm]
command = ["true"]
[pipelines.long]
command = ["sh", "-c", "while [ ! -f {d}/stop ]; do sleep 0.01; done"]
[pipelines.quick]
command = ["true"]
"#
        ),
    )
    .await;
    let mut events = s.events();
    let mut ids = Vec::new();
    for pipeline in ["first", "warm", "long", "quick"] {
        let (status, body) = s.trigger(pipeline, json!({})).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["runId"].as_str().unwrap().to_string());
    }
    let (first, long, quick) = (&ids[0], &ids[2], &ids[3]);
    events
        .wait_for("job:started", |e| e["runId"] == first.as_str(), T)
        .await;
    // `first` ran long, so its end claims only `warm`; `warm` ends at once, so its end
    // claims `long` to run next and `quick` to hold behind it.
    std::fs::write(dir.path().join("go"), "").unwrap();
    events
        .wait_for("job:started", |e| e["runId"] == long.as_str(), T)
        .await;
    // `long` outlives the hold: `quick` is back in the queue, unstarted, with nothing spent.
    let job_of = |run: &Value| run["jobs"][0].clone();
    eventually(T, "the held job handed back to the queue", || async {
        let job = job_of(&s.get(&format!("/api/runs/{quick}")).await.1);
        job["status"] == "queued"
            && job["error"]
                .as_str()
                .is_some_and(|e| e.contains("handed back unstarted"))
    })
    .await;
    let held = job_of(&s.get(&format!("/api/runs/{quick}")).await.1);
    assert_eq!(held["attempt"], 1, "{held}");
    assert!(held["pid"].is_null(), "never started: {held}");
    assert!(
        !events
            .seen
            .iter()
            .any(|e| e.event == "job:started" && e.data["runId"] == quick.as_str()),
        "the held job never started"
    );
    // `long` ends; `quick` runs on that slot and completes on its first attempt.
    std::fs::write(dir.path().join("stop"), "").unwrap();
    let run = s.wait_run(&mut events, quick, T).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(job_of(&run)["attempt"], 1, "{run}");
    let long_run = s.wait_run(&mut events, long, T).await;
    assert_eq!(long_run["status"], "completed", "{long_run}");
    // `quick` started only after `long` ended: one slot, one process at a time.
    let started = events
        .seen
        .iter()
        .position(|e| e.event == "job:started" && e.data["runId"] == quick.as_str())
        .expect("quick started");
    let long_ended = events
        .seen
        .iter()
        .position(|e| e.event == "job:completed" && e.data["runId"] == long.as_str())
        .expect("long ended");
    assert!(long_ended < started, "one process at a time on one slot");
}

/// Claim statements this node has sent so far (`runyard_store_statements_total`).
async fn claim_statements(s: &TestServer) -> u64 {
    let text = common::metrics_text(&s.http, &s.base)
        .await
        .expect("/metrics");
    common::metric_by_label(&text, "runyard_store_statements_total", "op")
        .get("job_claim")
        .copied()
        .unwrap_or(0)
}

/// A node whose own jobs fill a pipeline's cap asks the store for nothing more: triggers
/// arriving meanwhile wake its claim loop, which sends no claim (every one would find no
/// room); and once the running job ends, the queue drains without a stall
/// (`src/scheduler/claim.rs`, `full_here`).
#[tokio::test]
async fn a_node_whose_own_jobs_fill_the_cap_sends_no_claim_until_one_ends() {
    const QUEUED: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let s = TestServer::start(
        "max_workers = 2",
        &format!(
            r#"
[pipelines.one]
command = ["sh", "-c", "while [ ! -f {d}/go ]; do sleep 0.01; done"]
concurrency = 1
"#
        ),
    )
    .await;
    let mut events = s.events();
    let (status, body) = s.trigger("one", json!({})).await;
    assert_eq!(status, 202, "{body}");
    let first = body["runId"].as_str().unwrap().to_string();
    events
        .wait_for("job:started", |e| e["runId"] == first.as_str(), T)
        .await;
    let before = claim_statements(&s).await;
    let mut runs = vec![first];
    for _ in 0..QUEUED {
        let (status, body) = s.trigger("one", json!({})).await;
        assert_eq!(status, 202, "{body}");
        runs.push(body["runId"].as_str().unwrap().to_string());
    }
    // Each trigger moved the WORK feed, and the claim loop woke for them meanwhile
    // (without the check, these 20 triggers sent 80 claim statements on SQLite, 44 on
    // PostgreSQL).
    let (_, view) = s.get(&format!("/api/runs/{}", runs[QUEUED])).await;
    assert_eq!(view["status"], "queued", "{view}");
    let sent = claim_statements(&s).await - before;
    assert_eq!(
        sent, 0,
        "{QUEUED} triggers behind a full cap sent {sent} claim statements"
    );
    std::fs::write(dir.path().join("go"), "").unwrap();
    for run in &runs {
        let done = s.wait_run(&mut events, run, T).await;
        assert_eq!(done["status"], "completed", "{done}");
    }
}
