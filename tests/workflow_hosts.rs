//! Workflows across real hosts (`tests/common/hosts.rs`: each replica alone in its UTS
//! and PID namespaces, PostgreSQL shared through a proxy per host), with a host killed
//! (`kill -9` of its namespace) while it runs shards of a workflow's middle step.
//!
//! Six runs of `ci` — `build` (1 shard) → `test` (4 shards and a finalizer that gates
//! the step) → `report` (needs both; copies `$RUNYARD_NEEDS_FILE` to its result) — are
//! triggered over three hosts, and the host running a `test` shard is killed mid-graph.
//! It proves that, through the survivors:
//!
//! - every workflow run completes, and settles exactly once (one `workflow:*` end
//!   event each), every step's run ends exactly once (one `run:completed` each);
//! - every step ran, and `report` read both its needs, completed;
//! - nothing ran twice but what ran on the killed host (each job's earlier executions
//!   name that host, as the job itself recorded it, and are stored as orphans
//!   re-queued, never as ends), no two executions of a job overlap, and the killed
//!   `test` shard ran again;
//! - each step started after its needs ended, by the runs' stored times and by the
//!   jobs' own clocks (every execution of a step after the last tick of its needs).
//!
//! Prints how many executions re-ran and the time from the kill to every workflow run
//! completed. PostgreSQL-only: needs root (`SKIPPED(privilege)` otherwise) and
//! `TEST_DATABASE_URL` (`SKIPPED(service)` otherwise).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::hosts::{Cluster, Execution, can_unshare, executions, now_ns};
use common::{EventWatcher, get, post, ts_ms};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
/// Fast timings: a beat every 500 ms, so the lease is 1.5 s.
const FAST: &str = "heartbeat = \"500ms\"";
/// Workflow runs triggered.
const RUNS: usize = 6;

/// One scenario at a time: three hosts with sub-second leases on two cores, and two
/// clusters at once would starve each other's heartbeats.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn pg_url() -> Option<String> {
    // These run on PostgreSQL whatever the pass; CI's second (`TEST_STORE=postgres`)
    // pass would only repeat them.
    if std::env::var("TEST_STORE").as_deref() == Ok("postgres") {
        println!("workflow_hosts tests ran in the first pass (they are PostgreSQL-only)");
        return None;
    }
    if !can_unshare() {
        return None;
    }
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            println!("SKIPPED(service): TEST_DATABASE_URL not set");
            None
        }
    }
}

/// A command (TOML array) that writes its host name, then ticks into
/// `{dir}/{job}.{claim_seq}` every 20 ms for `secs` seconds (as `ticking_pipeline`
/// does: [`executions`] reads the ticks), then runs `then`.
fn ticking(dir: &Path, secs: f64, then: &str) -> String {
    let n = (secs / 0.02).ceil() as u64;
    format!(
        "[\"sh\", \"-c\", \"f={}/$RUNYARD_JOB_ID.$RUNYARD_CLAIM_SEQ; uname -n > $f; i=0; \
         while [ $i -lt {n} ]; do date +%s%N >> $f; i=$((i+1)); sleep 0.02; done; {then}\"]",
        dir.display()
    )
}

fn config(dir: &Path) -> String {
    format!(
        r#"
[pipelines.build]
command = {build}
[pipelines.test]
command = {test}
shards = 4
max_attempts = 1
finalizer = {fin}
[pipelines.report]
command = {report}

[workflows.ci.steps.build]
pipeline = "build"
[workflows.ci.steps.test]
pipeline = "test"
needs = ["build"]
[workflows.ci.steps.report]
pipeline = "report"
needs = ["build", "test"]
"#,
        build = ticking(
            dir,
            0.3,
            r#"echo '{{\"artifact\": \"build.tar\"}}' > $RUNYARD_RESULT_FILE"#
        ),
        test = ticking(
            dir,
            2.0,
            r#"echo '{{\"passed\": 10}}' > $RUNYARD_RESULT_FILE"#
        ),
        fin = ticking(dir, 0.3, "test -s {summary_file}"),
        report = ticking(
            dir,
            0.1,
            r#"cp \"$RUNYARD_NEEDS_FILE\" \"$RUNYARD_RESULT_FILE\""#
        ),
    )
}

async fn node_id(c: &Cluster, i: usize) -> String {
    let (_, w) = get(&c.http, &format!("{}/api/workers", c.base(i))).await;
    w["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["self"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Jobs running on each live node, as host `via` sees them.
async fn running_by_node(c: &Cluster, via: usize) -> HashMap<String, Vec<String>> {
    let (_, w) = get(&c.http, &format!("{}/api/workers", c.base(via))).await;
    w["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            let jobs = w["runningJobs"].as_array().into_iter().flatten();
            (
                w["id"].as_str().unwrap().to_string(),
                jobs.filter_map(|j| j.as_str().map(str::to_string))
                    .collect(),
            )
        })
        .collect()
}

fn step<'a>(w: &'a Value, name: &str) -> &'a Value {
    w["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {w}"))
}

/// The host an execution ran on: the first line of its record.
fn host_of(dir: &Path, e: &Execution) -> String {
    let text = std::fs::read_to_string(dir.join(format!("{}.{}", e.job, e.claim_seq)));
    text.unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_workflow_loses_no_step_runs_none_twice_and_settles_each_run_once() {
    let Some(pg) = pg_url() else { return };
    let _alone = ONE_AT_A_TIME.lock().await;
    let ticks = tempfile::tempdir().unwrap();
    let server = format!("{FAST}\nmax_workers = 2");
    let mut c = Cluster::start(&pg, None, 3, &server, &config(ticks.path()), &[]).await;
    c.wait_nodes(0, 3).await;
    let mut events = EventWatcher::connect(c.base(0), 0);
    // Workflow run id → step → its run id.
    let mut wfs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for k in 0..RUNS {
        let url = format!("{}/api/workflows/ci/trigger", c.base(k % 3));
        let (status, t) = post(&c.http, &url, json!({})).await;
        assert_eq!(status, 202, "{t}");
        let steps = t["runs"].as_object().unwrap().iter();
        let steps = steps.map(|(s, r)| (s.clone(), r.as_str().unwrap().to_string()));
        wfs.insert(t["workflowRunId"].as_str().unwrap().into(), steps.collect());
    }
    let test_runs: HashSet<&str> = wfs.values().map(|s| s["test"].as_str()).collect();
    let is_test_shard = |job: &str| {
        job.split_once(":s")
            .is_some_and(|(run, _)| test_runs.contains(run))
    };
    let mut ids = Vec::new(); // hosts 1 and 2 (host 0 keeps the watcher)
    for i in 1..3 {
        ids.push((i, node_id(&c, i).await));
    }

    // Kill a host (not the watcher's) while a `test` shard it runs is in its first second.
    let started = Instant::now();
    let (victim, shard, on_victim) = 'found: loop {
        assert!(started.elapsed() < T, "no test shard ran on hosts 1 or 2");
        let by_node = running_by_node(&c, 0).await;
        let execs = executions(ticks.path());
        for (i, id) in &ids {
            let jobs = by_node.get(id).cloned().unwrap_or_default();
            let fresh = jobs.iter().find(|j| {
                is_test_shard(j)
                    && execs.iter().any(|e| {
                        e.job == **j && now_ns().saturating_sub(e.first_ns) < 1_000_000_000
                    })
            });
            if let Some(j) = fresh {
                break 'found (*i, j.clone(), jobs);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    c.hosts[victim].crash();
    let crashed = Instant::now();
    let victim_host = c.hosts[victim].name.clone();
    let survivor = 3 - victim; // the survivor other than host 0
    println!("killed {victim_host} running {on_victim:?}");

    for id in wfs.keys() {
        let mine = |d: &Value| d["workflowRunId"] == id.as_str();
        let done = events.wait_for("workflow:completed", mine, 2 * T).await;
        assert_eq!(done.data["status"], "completed", "{:?}", done.data);
    }
    let all_completed = crashed.elapsed();
    // A run triggered after them all ended: once it is seen, so is anything written
    // about them before it (a second settle, a second end of a step run).
    let url = format!("{}/api/pipelines/build/trigger", c.base(survivor));
    let (_, sentinel) = post(&c.http, &url, json!({})).await;
    let sentinel = sentinel["runId"].as_str().unwrap().to_string();
    events
        .wait_for("run:completed", |d| d["runId"] == sentinel.as_str(), T)
        .await;

    // Each workflow run settled once; each step's run ended once, completed.
    let ends = |key: &str, id: &str, names: &[&str]| -> Vec<&Value> {
        let all = events.seen.iter();
        let of = all.filter(|e| names.contains(&e.event.as_str()) && e.data[key] == id);
        of.map(|e| &e.data).collect()
    };
    for (id, steps) in &wfs {
        let settles = ["workflow:completed", "workflow:failed", "workflow:aborted"];
        let settled = ends("workflowRunId", id, &settles);
        assert_eq!(settled.len(), 1, "{id} settled: {settled:?}");
        for (name, run) in steps {
            let ended = ends("runId", run, &["run:completed"]);
            assert!(
                ended.len() == 1 && ended[0]["status"] == "completed",
                "{id} step {name} ({run}) ended: {ended:?}"
            );
        }
    }

    // Both survivors show every step completed, each after its needs ended.
    for via in [0, survivor] {
        for (id, steps) in &wfs {
            let (_, w) = get(&c.http, &format!("{}/api/workflow-runs/{id}", c.base(via))).await;
            assert_eq!(w["status"], "completed", "{w}");
            for s in w["steps"].as_array().unwrap() {
                assert_eq!(s["status"], "completed", "{w}");
                assert_eq!(s["shardsDone"], s["shardCount"], "{w}");
                for need in s["needs"].as_array().unwrap() {
                    let need = step(&w, need.as_str().unwrap());
                    assert!(
                        ts_ms(&s["startedAt"]) >= ts_ms(&need["finishedAt"]),
                        "{} started before {} ended: {w}",
                        s["name"],
                        need["name"]
                    );
                }
            }
            assert_eq!(step(&w, "test")["shardCount"], 4);
            // The report read both its needs: build's artifact, test's four shards.
            let url = format!("{}/api/runs/{}", c.base(via), steps["report"]);
            let (_, report) = get(&c.http, &url).await;
            let needs = report["jobs"][0]["result"]["needs"].as_array().unwrap();
            let need = |p: &str| needs.iter().find(|n| n["pipelineId"] == p).unwrap();
            assert_eq!(needs.len(), 2, "{needs:?}");
            assert_eq!(need("build")["runId"], steps["build"].as_str());
            assert_eq!(need("build")["status"], "completed");
            assert_eq!(
                need("build")["shards"][0]["result"]["artifact"],
                "build.tar"
            );
            assert_eq!(need("test")["runId"], steps["test"].as_str());
            assert_eq!(need("test")["status"], "completed");
            let shards = need("test")["shards"].as_array().unwrap();
            assert_eq!(shards.len(), 4, "{needs:?}");
            assert!(
                shards.iter().all(|s| s["result"]["passed"] == 10),
                "{needs:?}"
            );
        }
    }

    // As stored: each job ended once, completed; an earlier execution only re-queued
    // as an orphan (the killed host's), never ended otherwise.
    let mut orphaned = 0;
    for run in wfs.values().flat_map(|s| s.values()) {
        let (_, r) = get(&c.http, &format!("{}/api/runs/{run}", c.base(0))).await;
        for (job, attempts) in r["attempts"].as_object().unwrap() {
            let (done, earlier) = attempts.as_array().unwrap().split_last().unwrap();
            assert_eq!(done["outcome"], "completed", "{job}: {attempts}");
            for a in earlier {
                assert!(
                    a["outcome"] == "requeued" && a["reason"] == "orphaned",
                    "{job}: {attempts}"
                );
                orphaned += 1;
            }
        }
    }
    // The ledger, from the jobs' own records: every job ran, and only what ran on the
    // killed host ran again, never overlapping its earlier execution.
    let mut by_job: BTreeMap<String, Vec<Execution>> = BTreeMap::new();
    for e in executions(ticks.path()) {
        if e.job != sentinel {
            by_job.entry(e.job.clone()).or_default().push(e);
        }
    }
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for steps in wfs.values() {
        expected.insert(steps["build"].clone());
        expected.insert(steps["report"].clone());
        expected.insert(format!("{}:finalize", steps["test"]));
        expected.extend((0..4).map(|i| format!("{}:s{i}", steps["test"])));
    }
    let ran: BTreeSet<String> = by_job.keys().cloned().collect();
    assert_eq!(
        ran, expected,
        "every job of every step ran, and nothing else"
    );
    let mut reexecuted = Vec::new();
    for (job, execs) in by_job.iter_mut() {
        execs.sort_by_key(|e| e.claim_seq);
        for e in &execs[..execs.len() - 1] {
            assert_eq!(
                host_of(ticks.path(), e),
                victim_host,
                "{job} ran again though execution {} was not on the killed host: {execs:?}",
                e.claim_seq
            );
            reexecuted.push(job.clone());
        }
        let mut in_time = execs.clone();
        in_time.sort_by_key(|e| e.first_ns);
        for w in in_time.windows(2) {
            assert!(
                w[1].first_ns > w[0].last_ns,
                "{job} overlapped: {in_time:?}"
            );
        }
    }
    assert!(
        by_job[&shard].len() >= 2,
        "the killed shard {shard} did not run again: {:?}",
        by_job[&shard]
    );
    assert!(
        orphaned >= reexecuted.len(),
        "{orphaned} re-queued < {reexecuted:?}"
    );
    // Each step's every execution began after the last tick of each of its needs.
    let span = |jobs: &[String]| {
        let all: Vec<&Execution> = jobs.iter().flat_map(|j| &by_job[j]).collect();
        let first = all.iter().map(|e| e.first_ns).min().unwrap();
        (first, all.iter().map(|e| e.last_ns).max().unwrap())
    };
    for (id, steps) in &wfs {
        let build = span(&[steps["build"].clone()]);
        let shards = span(
            &(0..4)
                .map(|i| format!("{}:s{i}", steps["test"]))
                .collect::<Vec<_>>(),
        );
        let fin = span(&[format!("{}:finalize", steps["test"])]);
        let report = span(&[steps["report"].clone()]);
        let order = [
            (build, shards, "test"),
            (shards, fin, "the finalizer"),
            (fin, report, "report"),
            (build, report, "report"),
        ];
        for (need, then, what) in order {
            assert!(
                need.1 < then.0,
                "{id}: {what} started before its need ended"
            );
        }
    }
    println!(
        "{RUNS} workflow runs ({} jobs) over 3 hosts, {victim_host} killed running {} jobs ({} of them test shards): \
         {} executions re-ran ({reexecuted:?}), all only on the killed host ({orphaned} executions re-queued as orphans); 0 overlaps; \
         every workflow run completed {all_completed:?} after the kill, each settled once",
        expected.len(),
        on_victim.len(),
        on_victim.iter().filter(|j| is_test_shard(j)).count(),
        reexecuted.len(),
    );
}
