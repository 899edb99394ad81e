//! The Redis bus against a real Redis: the seeds' own test (two subscribers
//! receive, the publisher drops its echo), one dispatch per message after forced
//! resubscribes, malformed messages, a plain `PUBLISH` from another service
//! aborting a run, and a Redis that is down at start, goes away and comes back.
//!
//! Needs `TEST_REDIS_URL` (prints `SKIPPED(service)` without it). Every test uses a
//! prefix of its own on the shared server; tests that stop Redis run a private
//! `redis-server` on a free port.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::{PrivateRedis, fresh_prefix, publish, shared_url};
use common::{TestServer, eventually};
use runyard::bus::{Bus, RedisBus, Signal};
use runyard::config::BusSettings;
use runyard::store::{ChangeFeed, change};
use serde_json::json;
use tokio::sync::broadcast::error::TryRecvError;

const T: Duration = Duration::from_secs(10);

fn settings(url: &str, prefix: &str) -> BusSettings {
    BusSettings {
        url: url.to_string(),
        url_source: "test",
        prefix: prefix.to_string(),
    }
}

async fn connected_bus(url: &str, prefix: &str) -> (RedisBus, ChangeFeed) {
    let feed = ChangeFeed::default();
    let bus = RedisBus::start(&settings(url, prefix), feed.clone()).unwrap();
    assert!(bus.connected_within(T).await, "bus connects to {url}");
    (bus, feed)
}

fn run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

async fn recv(rx: &mut tokio::sync::broadcast::Receiver<Signal>) -> Signal {
    tokio::time::timeout(T, rx.recv())
        .await
        .expect("a signal within 10 s")
        .unwrap()
}

fn dropped(bus: &RedisBus, reason: &str) -> u64 {
    bus.status()
        .dropped_by_reason
        .iter()
        .find(|(r, _)| *r == reason)
        .unwrap()
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscribers_receive_an_abort_and_the_publisher_drops_its_own_echo() {
    let Some(url) = shared_url() else { return };
    let prefix = fresh_prefix();
    let (a, _) = connected_bus(&url, &prefix).await;
    let (b, _) = connected_bus(&url, &prefix).await;
    let (c, _) = connected_bus(&url, &prefix).await;
    let (mut ra, mut rb, mut rc) = (a.subscribe(), b.subscribe(), c.subscribe());
    let run = run_id();
    a.publish_abort(&run);
    let expected = Signal::RunAbort {
        run_id: run.clone(),
        origin: Some(a.origin().to_string()),
    };
    assert_eq!(recv(&mut rb).await, expected);
    assert_eq!(recv(&mut rc).await, expected);
    // A heard its own message and dropped it before any handler: Redis delivers in
    // order, so a message published after B heard A's reaches A after A's echo, and
    // it is the first signal A's handlers get.
    let sentinel = run_id();
    publish(
        &url,
        &format!("{prefix}:run-abort"),
        &json!({"runId": sentinel}).to_string(),
    )
    .await;
    assert_eq!(
        recv(&mut ra).await,
        Signal::RunAbort {
            run_id: sentinel,
            origin: None
        }
    );
    assert!(dropped(&a, "own_origin") >= 1);
    // B and C: A's abort and the sentinel, each once.
    eventually(T, "b and c to dispatch both", || async {
        (b.status().aborts_dispatched, c.status().aborts_dispatched) == (2, 2)
    })
    .await;
    assert_ne!(a.origin(), b.origin());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dispatch_per_message_after_five_forced_resubscribes() {
    if shared_url().is_none() {
        return;
    }
    let redis = PrivateRedis::started();
    let prefix = fresh_prefix();
    let (bus, feed) = connected_bus(&redis.url(), &prefix).await;
    let mut rx = bus.subscribe();
    for i in 1..=5 {
        assert_eq!(redis.kill_subscribers().await, 1, "one subscriber to cut");
        eventually(T, "the bus to resubscribe", || async {
            bus.status().reconnects == i && bus.status().connected
        })
        .await;
    }
    let (first, second, sentinel) = (run_id(), run_id(), run_id());
    let abort = |run: &str| json!({"runId": run, "origin": "another-service"}).to_string();
    assert_eq!(
        publish(&redis.url(), &format!("{prefix}:run-abort"), &abort(&first)).await,
        1,
        "exactly one subscription after five resubscribes"
    );
    for run in [&second, &sentinel] {
        publish(&redis.url(), &format!("{prefix}:run-abort"), &abort(run)).await;
    }
    // One connection delivers in order and one dispatcher hands on in order: a
    // duplicate of the first two would arrive before the sentinel.
    for run in [&first, &second, &sentinel] {
        assert_eq!(
            recv(&mut rx).await,
            Signal::RunAbort {
                run_id: run.to_string(),
                origin: Some("another-service".into())
            }
        );
    }
    assert_eq!(
        rx.try_recv(),
        Err(TryRecvError::Empty),
        "dispatched once each"
    );
    assert_eq!(bus.status().aborts_dispatched, 3);
    // The changes channel wakes the feed's waiters.
    let mut work = feed.subscribe(change::WORK);
    work.borrow_and_update();
    publish(&redis.url(), &format!("{prefix}:changes"), r#"{"kinds":1}"#).await;
    tokio::time::timeout(T, work.changed())
        .await
        .expect("a changes message wakes claimers")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dropped_and_counted_and_the_next_one_still_lands() {
    let Some(url) = shared_url() else { return };
    let prefix = fresh_prefix();
    let (bus, _) = connected_bus(&url, &prefix).await;
    let mut rx = bus.subscribe();
    let channel = format!("{prefix}:run-abort");
    let huge = format!(r#"{{"runId":"{}","pad":"{}"}}"#, run_id(), "x".repeat(5000));
    for bad in [
        "not json",
        r#"{"runId": 5}"#,
        r#"{"runId":"../../etc"}"#,
        &huge,
    ] {
        publish(&url, &channel, bad).await;
    }
    let good = run_id();
    publish(
        &url,
        &channel,
        &json!({"runId": good, "extra": {"ignored": true}}).to_string(),
    )
    .await;
    assert_eq!(
        recv(&mut rx).await,
        Signal::RunAbort {
            run_id: good,
            origin: None
        }
    );
    assert_eq!(dropped(&bus, "malformed"), 4);
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
}

/// A pipeline whose job waits for a gate file that never appears (the abort stops it).
const HOLD: &str = r#"
[pipelines.hold]
command = ["sh", "-c", "echo started; exec sleep 60"]
"#;

fn bus_toml(url: &str, prefix: &str) -> String {
    format!("\n[bus]\nurl = \"{url}\"\nprefix = \"{prefix}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_service_aborts_a_run_with_a_plain_publish() {
    let Some(url) = shared_url() else { return };
    let prefix = fresh_prefix();
    let server = TestServer::start(&bus_toml(&url, &prefix), HOLD).await;
    eventually(T, "the node's bus to connect", || async {
        server.get("/api/workers").await.1["workers"][0]["bus"]["connected"] == true
    })
    .await;
    let mut events = server.events();
    let (status, t) = server.trigger("hold", json!({})).await;
    assert_eq!(status, 202);
    let run = t["runId"].as_str().unwrap().to_string();
    let job = events
        .wait_for("job:started", |d| d["runId"] == run.as_str(), T)
        .await;
    let pid = server
        .get(&format!(
            "/api/jobs/{}",
            job.data["jobId"].as_str().unwrap()
        ))
        .await
        .1["pid"]
        .as_u64()
        .unwrap() as u32;
    let asked = Instant::now();
    // No origin: foreign to every node. The run is marked aborted in the store and its
    // shard's process group is stopped.
    let heard = publish(
        &url,
        &format!("{prefix}:run-abort"),
        &json!({"runId": run}).to_string(),
    )
    .await;
    assert_eq!(heard, 1);
    let done = server.wait_run(&mut events, &run, T).await;
    assert_eq!(done["status"], "aborted", "{done}");
    assert_eq!(done["jobs"][0]["status"], "aborted", "{done}");
    eventually(T, "the job's process group to be gone", || async {
        common::group_members(pid).is_empty()
    })
    .await;
    println!(
        "plain PUBLISH → run aborted and its process dead in {:?}",
        asked.elapsed()
    );
    let (_, workers) = server.get("/api/workers").await;
    let bus = &workers["workers"][0]["bus"];
    assert_eq!(
        (bus["kind"].clone(), bus["abortsDispatched"].clone()),
        (json!("redis"), json!(1))
    );
    assert_eq!(bus["droppedByReason"]["malformed"], 0, "{bus}");
    assert_eq!(bus["prefix"], prefix.as_str());
    // The same message again is a no-op: the run stays aborted, nothing else changes.
    publish(
        &url,
        &format!("{prefix}:run-abort"),
        &json!({"runId": run}).to_string(),
    )
    .await;
    eventually(T, "the repeat to be handled", || async {
        common::get_text(&server.http, &format!("{}/metrics", server.base))
            .await
            .1
            .contains("runyard_bus_aborts_handled_total 2\n")
    })
    .await;
    let (_, again) = server.get(&format!("/api/runs/{run}")).await;
    assert_eq!(again["status"], "aborted");
    assert_eq!(
        events
            .of_run(&run)
            .filter(|e| e.event == "run:completed")
            .count(),
        1
    );
    server.stop().await;
}

async fn bus_state(server: &TestServer) -> serde_json::Value {
    server.get("/api/workers").await.1["workers"][0]["bus"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_down_at_start_is_degraded_mode_and_the_bus_reconnects_within_5s() {
    if shared_url().is_none() {
        return;
    }
    let mut redis = PrivateRedis::on_free_port();
    let prefix = fresh_prefix();
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("go");
    let server = TestServer::start(
        &bus_toml(&redis.url(), &prefix),
        &format!(
            "[pipelines.ok]\ncommand = [\"true\"]\n\n[pipelines.gated]\n\
             command = [\"sh\", \"-c\", \"while [ ! -e {} ]; do sleep 0.02; done\"]\n",
            gate.display()
        ),
    )
    .await;
    // Started without Redis: degraded, and working.
    let state = bus_state(&server).await;
    assert_eq!(
        (state["kind"].clone(), state["connected"].clone()),
        (json!("redis"), json!(false))
    );
    let mut events = server.events();
    let (status, t) = server.trigger("ok", json!({})).await;
    assert_eq!(status, 202);
    let run = server
        .wait_run(&mut events, t["runId"].as_str().unwrap(), T)
        .await;
    assert_eq!(run["status"], "completed");

    redis.start();
    let up = Instant::now();
    eventually(T, "the bus to connect", || async {
        bus_state(&server).await["connected"] == true
    })
    .await;
    println!("connected {:?} after Redis came up", up.elapsed());
    assert!(up.elapsed() < Duration::from_secs(5), "{:?}", up.elapsed());

    // A job that runs through the loss and the return of Redis, undisturbed.
    let (_, t) = server.trigger("gated", json!({})).await;
    let through = t["runId"].as_str().unwrap().to_string();
    events
        .wait_for("job:started", |d| d["runId"] == through.as_str(), T)
        .await;

    redis.stop();
    eventually(T, "the bus to notice the loss", || async {
        bus_state(&server).await["connected"] == false
    })
    .await;
    // Still working while Redis is gone: a trigger and its run.
    let (status, t) = server.trigger("ok", json!({})).await;
    assert_eq!(status, 202);
    server
        .wait_run(&mut events, t["runId"].as_str().unwrap(), T)
        .await;

    redis.start();
    let back = Instant::now();
    eventually(T, "the bus to reconnect", || async {
        bus_state(&server).await["connected"] == true
    })
    .await;
    let took = back.elapsed();
    println!("reconnected {took:?} after Redis returned");
    assert!(took < Duration::from_secs(5), "reconnect took {took:?}");
    let state = bus_state(&server).await;
    assert_eq!(state["reconnects"], 1, "{state}");
    std::fs::write(&gate, "").unwrap();
    let run = server.wait_run(&mut events, &through, T).await;
    assert_eq!(
        (
            run["status"].clone(),
            run["jobs"][0]["attempt"].clone(),
            run["jobs"][0]["requeues"].clone()
        ),
        (json!("completed"), json!(1), json!(0)),
        "{run}"
    );
    let (_, metrics) = common::get_text(&server.http, &format!("{}/metrics", server.base)).await;
    assert!(
        metrics.contains("runyard_bus_connected{kind=\"redis\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("runyard_bus_reconnects_total 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("runyard_bus_messages_dropped_total{reason=\"unsent\"}"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_sqlite_file_share_aborts_over_the_bus() {
    let Some(url) = shared_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(
        dir.path(),
        &format!(
            "max_workers = 1\n[store]\nurl = \"sqlite://{}\"\n{}",
            dir.path().join("shared.db").display(),
            bus_toml(&url, &fresh_prefix())
        ),
        "[pipelines.hold]\ncommand = [\"sh\", \"-c\", \"sleep 600 & wait\"]\nshards = 2\n",
    );
    let a = common::BinServer::start(&config, common::free_port()).await;
    let b = common::BinServer::start(&config, common::free_port()).await;
    let http = reqwest::Client::new();
    for s in [&a, &b] {
        eventually(T, "both buses to connect", || async {
            common::get(&http, &format!("{}/api/workers", s.base))
                .await
                .1["workers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["self"] == true && w["bus"]["connected"] == true)
        })
        .await;
    }
    let (status, t) = common::post(
        &http,
        &format!("{}/api/pipelines/hold/trigger", a.base),
        json!({}),
    )
    .await;
    assert_eq!(status, 202);
    let run = t["runId"].as_str().unwrap().to_string();
    let mut groups = Vec::new();
    eventually(T, "both shards to run, one per process", || async {
        let (_, r) = common::get(&http, &format!("{}/api/runs/{run}", a.base)).await;
        let pids: Vec<(String, u64)> = r["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["status"] == "running" && j["pid"].is_u64())
            .map(|j| {
                (
                    j["node"].as_str().unwrap().to_string(),
                    j["pid"].as_u64().unwrap(),
                )
            })
            .collect();
        pids.len() == 2 && pids[0].0 != pids[1].0
    })
    .await;
    let (_, r) = common::get(&http, &format!("{}/api/runs/{run}", a.base)).await;
    for j in r["jobs"].as_array().unwrap() {
        groups.push(j["pid"].as_u64().unwrap() as u32);
    }
    let asked = Instant::now();
    let (status, _) = common::post(
        &http,
        &format!("{}/api/runs/{run}/abort", b.base),
        json!({}),
    )
    .await;
    assert_eq!(status, 202);
    eventually(T, "both shards' processes to be gone", || async {
        groups.iter().all(|g| common::group_members(*g).is_empty())
    })
    .await;
    let took = asked.elapsed();
    println!("two processes on one SQLite file: both shards dead {took:?} after the abort");
    assert!(took < Duration::from_secs(1), "{took:?}");
    // A heard it on the bus (not only through the file's data_version).
    let (_, w) = common::get(&http, &format!("{}/api/workers", a.base)).await;
    let me = w["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["self"] == true)
        .unwrap()
        .clone();
    assert_eq!(me["bus"]["abortsDispatched"], 1, "{me}");
}
