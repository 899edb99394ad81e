//! Three real `runyard serve` replicas on one PostgreSQL database with the Redis
//! bus: an abort through one replica stops every shard on all three (with Redis,
//! with Redis stopped, and after it returns); a job's live log on one replica is
//! streamed by another; an SSE client that moves between replicas with
//! `Last-Event-ID` misses nothing and sees nothing twice; clients that join a
//! freshly started replica while another commits miss none of its events; under a
//! global cap of one, a replica that alone can run a pipeline gets its turn while
//! another's backlog is still queued.
//!
//! Needs `TEST_DATABASE_URL` and `TEST_REDIS_URL` (prints `SKIPPED(service)`
//! without them). Each test has its own schema and bus prefix; the test that
//! stops Redis runs a private `redis-server`.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::redis_server::{PrivateRedis, fresh_prefix, shared_url};
use common::{BinServer, EventWatcher, eventually, free_port, get, post};
use serde_json::{Value, json};

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

fn fresh_schema() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "rep_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Drops the test's schema when the test ends, passed or not.
struct Schema {
    url: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args([
                &self.url,
                "-qc",
                &format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name),
            ])
            .output();
    }
}

/// Three replicas on one config: one schema, one bus prefix.
struct Cluster {
    nodes: Vec<BinServer>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    _schema: Schema,
}

impl Cluster {
    async fn start(pg: &str, redis: &str, server_extra: &str, pipelines: &str) -> Cluster {
        let schema = Schema {
            url: pg.to_string(),
            name: fresh_schema(),
        };
        let dir = tempfile::tempdir().unwrap();
        let config = common::write_config(
            dir.path(),
            &format!(
                "{server_extra}\n[store]\nurl = \"{pg}\"\nschema = \"{}\"\npool_size = 4\n\
                 [bus]\nurl = \"{redis}\"\nprefix = \"{}\"\n",
                schema.name,
                fresh_prefix()
            ),
            pipelines,
        );
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(BinServer::start(&config, free_port()).await);
        }
        let c = Cluster {
            nodes,
            http: reqwest::Client::new(),
            _dir: dir,
            _schema: schema,
        };
        c.wait_bus(true).await;
        c
    }

    fn base(&self, i: usize) -> &str {
        &self.nodes[i].base
    }

    /// Replica `i`'s own row of `GET /api/workers`.
    async fn me(&self, i: usize) -> Value {
        let (_, w) = get(&self.http, &format!("{}/api/workers", self.base(i))).await;
        w["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["self"] == true)
            .unwrap()
            .clone()
    }

    async fn bus(&self, i: usize) -> Value {
        self.me(i).await["bus"].clone()
    }

    async fn node_id(&self, i: usize) -> String {
        self.me(i).await["id"].as_str().unwrap().to_string()
    }

    /// Waits until every replica's bus is connected (or, with `false`, down).
    async fn wait_bus(&self, connected: bool) {
        for i in 0..self.nodes.len() {
            eventually(T, "every replica's bus state", || async {
                self.bus(i).await["connected"] == connected
            })
            .await;
        }
    }

    async fn trigger(&self, i: usize, pipeline: &str) -> String {
        let (status, t) = post(
            &self.http,
            &format!("{}/api/pipelines/{pipeline}/trigger", self.base(i)),
            json!({}),
        )
        .await;
        assert_eq!(status, 202, "{t}");
        t["runId"].as_str().unwrap().to_string()
    }

    async fn run(&self, i: usize, run: &str) -> Value {
        get(&self.http, &format!("{}/api/runs/{run}", self.base(i)))
            .await
            .1
    }
}

/// Every shard's process group leader, once all `n` run (each on its replica).
async fn running_groups(c: &Cluster, run: &str, n: usize) -> Vec<(String, u32)> {
    let deadline = Instant::now() + T;
    loop {
        let r = c.run(0, run).await;
        let groups: Vec<(String, u32)> = r["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["status"] == "running" && j["pid"].is_u64())
            .map(|j| {
                (
                    j["node"].as_str().unwrap().to_string(),
                    j["pid"].as_u64().unwrap() as u32,
                )
            })
            .collect();
        if groups.len() == n {
            return groups;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} shards run: {r}",
            groups.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Aborts `run` through replica `via`; returns how long until every shard's process
/// group (the job and its children) was gone.
async fn abort_and_time_the_kill(c: &Cluster, via: usize, run: &str, shards: usize) -> Duration {
    let groups = running_groups(c, run, shards).await;
    let nodes: HashSet<&str> = groups.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        nodes.len(),
        3,
        "the shards run on all three replicas: {groups:?}"
    );
    for (_, pgid) in &groups {
        assert!(
            common::group_members(*pgid).len() >= 2,
            "a job and its child"
        );
    }
    let asked = Instant::now();
    let (status, body) = post(
        &c.http,
        &format!("{}/api/runs/{run}/abort", c.base(via)),
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let deadline = asked + T;
    while groups
        .iter()
        .any(|(_, pgid)| !common::group_members(*pgid).is_empty())
    {
        assert!(Instant::now() < deadline, "shards still alive after {T:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    asked.elapsed()
}

const HOLD6: &str = r#"
[pipelines.hold]
command = ["sh", "-c", "sleep 600 & wait"]
shards = 6
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_through_one_replica_stops_every_shard_on_all_three_with_and_without_redis() {
    let (Some(pg), Some(_)) = (pg_url(), shared_url()) else {
        return;
    };
    let mut redis = PrivateRedis::started();
    let c = Cluster::start(&pg, &redis.url(), "max_workers = 2\n", HOLD6).await;
    let mut events = EventWatcher::connect(c.base(0), 0);

    let run = c.trigger(0, "hold").await;
    let with_redis = abort_and_time_the_kill(&c, 1, &run, 6).await;
    println!("with Redis: every shard dead {with_redis:?} after the abort");
    assert!(with_redis <= Duration::from_secs(1), "{with_redis:?}");

    redis.stop();
    c.wait_bus(false).await;
    let run2 = c.trigger(2, "hold").await;
    let without = abort_and_time_the_kill(&c, 2, &run2, 6).await;
    println!("Redis stopped: every shard dead {without:?} after the abort");
    assert!(without <= Duration::from_secs(10), "{without:?}");

    redis.start();
    let back = Instant::now();
    c.wait_bus(true).await;
    let resubscribed = back.elapsed();
    println!("every replica resubscribed {resubscribed:?} after Redis returned");
    assert!(resubscribed <= Duration::from_secs(5), "{resubscribed:?}");
    let run3 = c.trigger(1, "hold").await;
    let again = abort_and_time_the_kill(&c, 0, &run3, 6).await;
    println!("Redis back: every shard dead {again:?} after the abort");
    assert!(again <= Duration::from_secs(1), "{again:?}");

    for r in [&run, &run2, &run3] {
        let done = events
            .wait_for("run:completed", |d| d["runId"] == r.as_str(), T)
            .await;
        assert_eq!(done.data["status"], "aborted");
        assert_eq!(
            events
                .of_run(r)
                .filter(|e| e.event == "run:completed")
                .count(),
            1
        );
    }
    // Each replica dispatched exactly the aborts published by the others while Redis
    // was up (its own echo dropped, none twice): the first through 1 and the third
    // through 0 (the second, through 2, was published while Redis was down).
    for (i, heard) in [(0, 1), (1, 1), (2, 2)] {
        let bus = c.bus(i).await;
        assert_eq!(bus["abortsDispatched"], heard, "replica {i}: {bus}");
        assert_eq!(bus["droppedByReason"]["malformed"], 0, "{bus}");
        assert_eq!(bus["reconnects"], 1, "{bus}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_events_follow_a_client_to_any_replica() {
    let (Some(pg), Some(redis)) = (pg_url(), shared_url()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("go");
    let pipelines = format!(
        "[pipelines.talk]\ncommand = [\"sh\", \"-c\", \"echo first $RUNYARD_JOB_ID; while [ ! -e {} ]; do sleep 0.02; done; echo second\"]\n\
         shards = 3\n\n[pipelines.quick]\ncommand = [\"true\"]\nshards = 3\n",
        gate.display()
    );
    let c = Cluster::start(&pg, &redis, "max_workers = 1\n", &pipelines).await;
    let mut reference = EventWatcher::connect(c.base(0), 0);

    // One shard per replica; each replica streams a job that runs on another.
    let run = c.trigger(0, "talk").await;
    let groups = running_groups(&c, &run, 3).await;
    let r = c.run(0, &run).await;
    let mut streams = Vec::new();
    for i in 0..3 {
        let me = c.node_id(i).await;
        let elsewhere = r["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["node"] != me.as_str())
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let rx = common::sse_reader(
            format!("{}/api/jobs/{elsewhere}/logs/stream", c.base(i)),
            None,
        );
        streams.push((elsewhere, rx));
    }
    assert_eq!(groups.len(), 3);
    for (job, rx) in &mut streams {
        let line = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
        assert_eq!(line.data["line"], format!("first {job}"));
    }
    std::fs::write(&gate, "").unwrap();
    let opened = Instant::now();
    for (_, rx) in &mut streams {
        let line = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
        assert_eq!(
            (line.event.as_str(), line.data["line"].clone()),
            ("log", json!("second")),
            "{:?}",
            line.data
        );
        let end = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
        assert_eq!(
            (end.event.as_str(), end.data["status"].clone()),
            ("end", json!("completed"))
        );
    }
    println!(
        "live lines from other replicas arrived within {:?} of being written",
        opened.elapsed()
    );

    // An SSE client hopping to the next replica every 7 events, resuming with the last
    // id it saw, while runs are triggered on all three.
    let mut runs = vec![run];
    let mut moving: Vec<i64> = Vec::new();
    let mut last = 0i64;
    let mut hop = 0usize;
    for k in 0..12 {
        runs.push(c.trigger(k % 3, "quick").await);
        let mut rx = common::sse_reader(format!("{}/api/events", c.base(hop % 3)), Some(last));
        hop += 1;
        let mut got = 0;
        while got < 7 {
            let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await
            else {
                break; // nothing more for now: hop on
            };
            if let Some(id) = msg.id {
                moving.push(id);
                last = id;
                got += 1;
            }
        }
    }
    for r in &runs {
        reference
            .wait_for("run:completed", |d| d["runId"] == r.as_str(), T)
            .await;
    }
    let expected: Vec<i64> = reference.seen.iter().filter_map(|e| e.id).collect();
    // Catch up on whichever replica is next, to the reference's last id.
    let end = *expected.last().unwrap();
    while last < end {
        let mut rx = common::sse_reader(format!("{}/api/events", c.base(hop % 3)), Some(last));
        hop += 1;
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
            if let Some(id) = msg.id {
                moving.push(id);
                last = id;
                if last >= end {
                    break;
                }
            }
        }
    }
    assert!(hop >= 12, "the client moved {hop} times");
    assert_eq!(
        moving, expected,
        "moving between replicas: nothing missed, nothing twice"
    );
}

/// Triggers `quick` on `base` as fast as one client can until `stop` is set (a 503
/// under load is the load's, not the test's: the next trigger goes on).
async fn keep_triggering(base: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let http = reqwest::Client::new();
    while !stop.load(Ordering::Relaxed) {
        let (status, t) = post(
            &http,
            &format!("{base}/api/pipelines/quick/trigger"),
            json!({}),
        )
        .await;
        assert!(status == 202 || status == 503, "{status}: {t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_joining_a_freshly_started_replica_miss_none_of_another_replicas_events() {
    let (Some(pg), Some(redis)) = (pg_url(), shared_url()) else {
        return;
    };
    for bus in [true, false] {
        let schema = Schema {
            url: pg.clone(),
            name: fresh_schema(),
        };
        let dir = tempfile::tempdir().unwrap();
        let bus_section = if bus {
            format!(
                "[bus]\nurl = \"{redis}\"\nprefix = \"{}\"\n",
                fresh_prefix()
            )
        } else {
            String::new()
        };
        let config = common::write_config(
            dir.path(),
            &format!(
                "max_workers = 2\n[store]\nurl = \"{pg}\"\nschema = \"{}\"\npool_size = 4\n{bus_section}",
                schema.name
            ),
            "[pipelines.quick]\ncommand = [\"true\"]\n",
        );
        let b = BinServer::start(&config, free_port()).await;
        let mut reference = EventWatcher::connect(&b.base, 0);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = tokio::spawn(keep_triggering(b.base.clone(), stop.clone()));
        // A starts while B commits; clients join it at once and a little later.
        let a = BinServer::start(&config, free_port()).await;
        let mut joined = Vec::new();
        for pause_ms in [0, 0, 20, 100, 300, 1000] {
            tokio::time::sleep(Duration::from_millis(pause_ms)).await; // when each client joins
            joined.push(common::sse_reader(format!("{}/api/events", a.base), None));
        }
        tokio::time::sleep(Duration::from_secs(2)).await; // how long B keeps committing
        stop.store(true, Ordering::Relaxed);
        load.await.unwrap();
        // Every run B was asked for has completed, as B's reference client saw.
        let (_, runs) = get(
            &reqwest::Client::new(),
            &format!("{}/api/runs?limit=1", b.base),
        )
        .await;
        let newest = runs["runs"][0]["runId"].as_str().unwrap().to_string();
        reference
            .wait_for("run:completed", |d| d["runId"] == newest.as_str(), T)
            .await;
        let expected: Vec<i64> = reference.seen.iter().filter_map(|e| e.id).collect();
        let end = *expected.last().unwrap();
        for (k, rx) in joined.iter_mut().enumerate() {
            let mut got: Vec<i64> = Vec::new();
            while got.last().is_none_or(|id| *id < end) {
                let msg = tokio::time::timeout(T, rx.recv())
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "bus {bus}, client {k} on A: stuck at {:?} of {end}",
                            got.last()
                        )
                    })
                    .expect("the stream stays open");
                got.extend(msg.id);
            }
            let from = expected
                .iter()
                .position(|id| *id == got[0])
                .unwrap_or_else(|| panic!("bus {bus}, client {k}: {} is not B's", got[0]));
            assert_eq!(
                got,
                expected[from..],
                "bus {bus}, client {k} on A: every event from its first on, once, in order"
            );
        }
        drop(schema);
    }
}

/// Two replicas under `max_workers_global = 1`, each the only one that can run its
/// pipeline (`labels` / `requires`): a backlog of `work` on the first, then one `train`
/// run for the second. The first replica's finishes claim its next job with the unit
/// each end frees, so without turns (`store::cap_share`) `train` waited for the whole
/// backlog; with them it runs a turn (250 ms) after it began waiting, while most of the
/// backlog is still queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_alone_runs_a_pipeline_gets_its_turn_at_a_global_cap_of_one() {
    let (Some(pg), Some(redis)) = (pg_url(), shared_url()) else {
        return;
    };
    let schema = Schema {
        url: pg.clone(),
        name: fresh_schema(),
    };
    let prefix = fresh_prefix();
    let pipelines = r#"
[pipelines.work]
command = ["sleep", "0.05"]
requires = { kind = "cpu" }
[pipelines.train]
command = ["true"]
requires = { kind = "gpu" }
"#;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut nodes = Vec::new();
    for (dir, kind) in dirs.iter().zip(["cpu", "gpu"]) {
        let config = common::write_config(
            dir.path(),
            &format!(
                "max_workers = 2\nmax_workers_global = 1\nlabels = {{ kind = \"{kind}\" }}\n\
                 [store]\nurl = \"{pg}\"\nschema = \"{}\"\npool_size = 4\n\
                 [bus]\nurl = \"{redis}\"\nprefix = \"{prefix}\"\n",
                schema.name
            ),
            pipelines,
        );
        nodes.push(BinServer::start(&config, free_port()).await);
    }
    let http = reqwest::Client::new();
    let trigger = |pipeline: &'static str| {
        let (http, base) = (http.clone(), nodes[0].base.clone());
        async move {
            let (status, t) = post(
                &http,
                &format!("{base}/api/pipelines/{pipeline}/trigger"),
                json!({}),
            )
            .await;
            assert_eq!(status, 202, "{t}");
            t["runId"].as_str().unwrap().to_string()
        }
    };
    let mut events = EventWatcher::connect(&nodes[0].base, 0);
    let backlog = 40;
    for _ in 0..backlog {
        trigger("work").await;
    }
    events.wait_for("job:started", |_| true, T).await;
    let train = trigger("train").await;
    events
        .wait_for("run:completed", |d| d["runId"] == train.as_str(), T)
        .await;
    let done = events
        .seen
        .iter()
        .filter(|e| e.event == "run:completed" && e.data["pipelineId"] == "work")
        .count();
    println!("train completed after {done} of {backlog} work runs");
    assert!(
        done < backlog / 2,
        "train waited for {done} of {backlog} work runs: the cap was never handed over"
    );
}
