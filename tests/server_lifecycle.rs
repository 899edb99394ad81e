//! Whole-process behaviour through the real binary: crash recovery after
//! SIGKILL, two servers sharing one SQLite file, graceful SIGTERM, and flat
//! memory under a gigabyte of output.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{
    BinServer, eventually, free_port, get, group_members, max_overlap, post, write_config,
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

async fn run(http: &reqwest::Client, base: &str, run_id: &str) -> Value {
    get(http, &format!("{base}/api/runs/{run_id}")).await.1
}

async fn trigger(http: &reqwest::Client, base: &str, pipeline: &str) -> String {
    let (status, body) = post(
        http,
        &format!("{base}/api/pipelines/{pipeline}/trigger"),
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    body["runId"].as_str().unwrap().to_string()
}

async fn wait_finished(http: &reqwest::Client, base: &str, run_id: &str) -> Value {
    wait_finished_within(http, base, run_id, T).await
}

async fn wait_finished_within(
    http: &reqwest::Client,
    base: &str,
    run_id: &str,
    timeout: Duration,
) -> Value {
    let url = format!("{base}/api/runs/{run_id}");
    eventually(timeout, "run finished", || {
        let (http, url) = (http.clone(), url.clone());
        async move { get(&http, &url).await.1["finishedAt"].is_string() }
    })
    .await;
    get(http, &url).await.1
}

#[tokio::test]
async fn a_node_killed_with_sigkill_and_restarted_resolves_its_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("runs.log");
    let config = write_config(
        dir.path(),
        "max_workers = 2",
        &format!(
            r#"
[pipelines.requeue]
command = ["sh", "-c", "echo $RUNYARD_JOB_ID >> {m}; sleep 600 & sleep 600; wait"]
on_orphan = "requeue"

[pipelines.failfast]
command = ["sh", "-c", "sleep 600 & sleep 600; wait"]
on_orphan = "fail"
"#,
            m = marker.display()
        ),
    );
    let http = reqwest::Client::new();
    let port = free_port();
    let mut server = BinServer::start(&config, port).await;
    let a = trigger(&http, &server.base, "requeue").await;
    let b = trigger(&http, &server.base, "failfast").await;
    let mut pids = HashMap::new();
    for id in [&a, &b] {
        eventually(T, "job started with a pid", || {
            let (http, base, id) = (http.clone(), server.base.clone(), id.clone());
            async move { run(&http, &base, &id).await["jobs"][0]["pid"].is_u64() }
        })
        .await;
        let pid = run(&http, &server.base, id).await["jobs"][0]["pid"]
            .as_u64()
            .unwrap() as u32;
        eventually(T, "job tree spawned", || async move {
            group_members(pid).len() >= 3
        })
        .await;
        pids.insert(id.clone(), pid);
    }

    server.signal("KILL");
    server.wait_exit(T).await;
    // The jobs survive their server (their own process groups)...
    for pid in pids.values() {
        assert!(
            group_members(*pid).len() >= 3,
            "job tree should outlive a SIGKILLed server"
        );
    }
    // ...until a new node on the same file proves the old one dead and kills them.
    let server = BinServer::start(&config, port).await;
    for pid in pids.values() {
        let pid = *pid;
        eventually(
            Duration::from_secs(5),
            "orphaned process group killed",
            || async move { group_members(pid).is_empty() },
        )
        .await;
    }
    let failed = run(&http, &server.base, &b).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        (
            failed["jobs"][0]["status"].clone(),
            failed["jobs"][0]["reason"].clone()
        ),
        (json!("failed"), json!("orphaned"))
    );

    // The requeue pipeline runs again under the new node, without spending an attempt.
    eventually(T, "orphan re-run", || {
        let (http, base, a) = (http.clone(), server.base.clone(), a.clone());
        async move {
            let job = run(&http, &base, &a).await["jobs"][0].clone();
            job["status"] == "running" && job["requeues"] == 1 && job["pid"].is_u64()
        }
    })
    .await;
    let job = run(&http, &server.base, &a).await["jobs"][0].clone();
    assert_eq!(job["attempt"], 1);
    let new_pid = job["pid"].as_u64().unwrap() as u32;
    assert_ne!(Some(&new_pid), pids.get(&a));
    let (_, workers) = get(&http, &format!("{}/api/workers", server.base)).await;
    assert_eq!(
        workers["workers"].as_array().unwrap().len(),
        1,
        "the dead node was removed"
    );
    // Abort to clean up; the tree goes away.
    post(
        &http,
        &format!("{}/api/runs/{a}/abort", server.base),
        json!({}),
    )
    .await;
    eventually(T, "aborted tree gone", || async move {
        group_members(new_pid).is_empty()
    })
    .await;
    let lines = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(
        lines.lines().count(),
        2,
        "ran twice in sequence, never at once"
    );
}

#[tokio::test]
async fn two_servers_on_one_sqlite_file_respect_the_global_cap_and_never_run_a_job_twice() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran.log");
    let config = write_config(
        dir.path(),
        "max_workers = 2\nmax_workers_global = 3",
        &format!(
            "[pipelines.work]\ncommand = [\"sh\", \"-c\", \"echo $RUNYARD_JOB_ID >> {}; sleep 0.1\"]\n",
            marker.display()
        ),
    );
    let http = reqwest::Client::new();
    let one = BinServer::start(&config, free_port()).await;
    let two = BinServer::start(&config, free_port()).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let base = if i % 2 == 0 { &one.base } else { &two.base };
        ids.push(trigger(&http, base, "work").await);
    }
    let mut jobs = Vec::new();
    let mut nodes = std::collections::HashSet::new();
    for id in &ids {
        let run = wait_finished(&http, &one.base, id).await;
        assert_eq!(run["status"], "completed");
        let job = run["jobs"][0].clone();
        nodes.insert(job["node"].as_str().unwrap().to_string());
        jobs.push(job);
    }
    let overlap = max_overlap(&jobs);
    assert!(
        overlap <= 3,
        "{overlap} jobs ran at once over a global cap of 3"
    );
    assert_eq!(nodes.len(), 2, "both servers claimed work");
    let ran = std::fs::read_to_string(&marker).unwrap();
    let mut seen = std::collections::HashSet::new();
    for line in ran.lines() {
        assert!(seen.insert(line.to_string()), "job {line} ran twice");
    }
    assert_eq!(seen.len(), 30);
}

#[tokio::test]
async fn a_cross_process_abort_reaches_the_node_running_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "max_workers = 1",
        "[pipelines.long]\ncommand = [\"sleep\", \"600\"]\n",
    );
    let http = reqwest::Client::new();
    let runner = BinServer::start(&config, free_port()).await;
    let id = trigger(&http, &runner.base, "long").await;
    eventually(T, "job started", || {
        let (http, base, id) = (http.clone(), runner.base.clone(), id.clone());
        async move { run(&http, &base, &id).await["jobs"][0]["pid"].is_u64() }
    })
    .await;
    let pid = run(&http, &runner.base, &id).await["jobs"][0]["pid"]
        .as_u64()
        .unwrap() as u32;
    // A second process on the same file (no slots free for this job) takes the abort.
    let other = BinServer::start(&config, free_port()).await;
    let (status, _) = post(
        &http,
        &format!("{}/api/runs/{id}/abort", other.base),
        json!({}),
    )
    .await;
    assert_eq!(status, 202);
    let run = wait_finished(&http, &runner.base, &id).await;
    assert_eq!(run["status"], "aborted");
    assert_eq!(run["jobs"][0]["reason"], "aborted");
    assert!(group_members(pid).is_empty());
}

#[tokio::test]
async fn sigterm_drains_finishing_jobs_and_requeues_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "max_workers = 2\nshutdown_timeout = \"1s\"",
        "[pipelines.quick]\ncommand = [\"sleep\", \"0.3\"]\n\n[pipelines.long]\ncommand = [\"sleep\", \"600\"]\n",
    );
    let http = reqwest::Client::new();
    let port = free_port();
    let mut server = BinServer::start(&config, port).await;
    let long = trigger(&http, &server.base, "long").await;
    let quick = trigger(&http, &server.base, "quick").await;
    eventually(T, "both running", || {
        let (http, base, long, quick) = (
            http.clone(),
            server.base.clone(),
            long.clone(),
            quick.clone(),
        );
        async move {
            run(&http, &base, &long).await["jobs"][0]["pid"].is_u64()
                && run(&http, &base, &quick).await["jobs"][0]["pid"].is_u64()
        }
    })
    .await;
    let long_pid = run(&http, &server.base, &long).await["jobs"][0]["pid"]
        .as_u64()
        .unwrap() as u32;
    let started = std::time::Instant::now();
    server.signal("TERM");
    let code = server.wait_exit(T).await;
    assert_eq!(code, Some(0), "graceful exit");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drained in {:?}",
        started.elapsed()
    );
    assert!(
        group_members(long_pid).is_empty(),
        "the unfinished job was stopped"
    );

    // Restart and inspect: the quick job completed during the drain; the long one was re-queued
    // without spending an attempt, and is running again.
    let server = BinServer::start(&config, port).await;
    let q = run(&http, &server.base, &quick).await;
    assert_eq!(q["status"], "completed");
    let l = run(&http, &server.base, &long).await["jobs"][0].clone();
    assert_eq!(l["attempt"], 1);
    assert_eq!(l["requeues"], 1);
    assert_eq!(l["reason"], "shutdown");
    assert!(l["status"] == "queued" || l["status"] == "running", "{l}");
    let (_, workers) = get(&http, &format!("{}/api/workers", server.base)).await;
    assert_eq!(
        workers["workers"].as_array().unwrap().len(),
        1,
        "the stopped node deregistered"
    );
    // Clean up: abort the re-run and see its process go before the server is dropped.
    post(
        &http,
        &format!("{}/api/runs/{long}/abort", server.base),
        json!({}),
    )
    .await;
    let run = wait_finished(&http, &server.base, &long).await;
    if let Some(pid) = run["jobs"][0]["pid"].as_u64() {
        let pid = pid as u32;
        eventually(T, "re-run stopped", || async move {
            group_members(pid).is_empty()
        })
        .await;
    }
}

#[tokio::test]
async fn a_gigabyte_of_output_keeps_server_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "max_output_bytes = \"1MiB\"",
        "[pipelines.firehose]\ncommand = [\"sh\", \"-c\", \"yes $(printf '%0999d' 0) | head -c 1073741824\"]\n\n[pipelines.warm]\ncommand = [\"sh\", \"-c\", \"yes | head -c 2000000\"]\n",
    );
    let http = reqwest::Client::new();
    let server = BinServer::start(&config, free_port()).await;
    // Warm up allocator and store with a small job first, then take the baseline.
    let warm = trigger(&http, &server.base, "warm").await;
    wait_finished(&http, &server.base, &warm).await;
    let baseline = server.peak_rss_kib();

    let id = trigger(&http, &server.base, "firehose").await;
    // A gigabyte through a pipe takes ~15 s here, and much longer on a loaded machine.
    let run = wait_finished_within(&http, &server.base, &id, Duration::from_secs(180)).await;
    assert_eq!(run["status"], "completed");
    let job = &run["jobs"][0];
    assert_eq!(job["stdoutBytes"], 1u64 << 30);
    assert_eq!(job["truncated"], true);
    let peak = server.peak_rss_kib();
    assert!(
        peak < baseline + 64 * 1024,
        "peak RSS {peak} KiB vs baseline {baseline} KiB"
    );
    let (_, logs) = get(&http, &format!("{}/api/jobs/{id}/logs", server.base)).await;
    let kept: usize = logs["stdout"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().len())
        .sum();
    assert!(kept <= (1 << 20) + 200, "stored {kept} bytes");
}

#[tokio::test]
async fn a_setsid_escapee_is_killed_when_its_job_ends() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("escapee.pid");
    // The child writes its pid only after `setsid` made it a session leader, and the job
    // exits only once it is there: the escape is complete before the group kill.
    let config = write_config(
        dir.path(),
        "",
        &format!(
            r#"
[pipelines.escape]
command = ["sh", "-c", 'setsid sh -c "echo \$\$ > $F; exec sleep 300" & while [ ! -s "$F" ]; do sleep 0.01; done; echo "escapee $(cat "$F")"']
env = {{ F = "{}" }}
"#,
            pidfile.display()
        ),
    );
    let server = BinServer::start(&config, free_port()).await;
    let http = reqwest::Client::new();
    let run_id = trigger(&http, &server.base, "escape").await;
    let done = wait_finished(&http, &server.base, &run_id).await;
    assert_eq!(done["status"], "completed");
    let (_, logs) = get(&http, &format!("{}/api/jobs/{run_id}/logs", server.base)).await;
    let pid: u32 = logs["stdout"][0]
        .as_str()
        .unwrap()
        .strip_prefix("escapee ")
        .unwrap()
        .parse()
        .unwrap();
    // It left the job's process group (its own session), so the group kill missed it; the
    // server, as the subreaper it was re-parented to, kills and reaps it.
    eventually(
        T,
        "the escaped process to be killed and reaped",
        || async move { !std::path::Path::new(&format!("/proc/{pid}")).exists() },
    )
    .await;
}

#[tokio::test]
async fn two_servers_on_one_host_run_one_setup_at_a_time_each_once() {
    let dir = tempfile::tempdir().unwrap();
    // The setup fails if another copy of it is running in the same directory right now.
    // Each shard lasts a second, so the second node (woken by a store poll on PostgreSQL)
    // claims the other shard before the first node's slot frees.
    let config = write_config(
        dir.path(),
        "max_workers = 1",
        &format!(
            r#"
[pipelines.built]
command = ["sleep", "1"]
shards = 2
env = {{ D = "{}" }}
setup = ["sh", "-c", 'mkdir "$D/in-setup" || {{{{ echo clash >> "$D/clashes"; exit 9; }}}}; echo x >> "$D/setups"; sleep 0.5; rmdir "$D/in-setup"']
"#,
            dir.path().display()
        ),
    );
    let one = BinServer::start(&config, free_port()).await;
    let two = BinServer::start(&config, free_port()).await;
    let http = reqwest::Client::new();
    let run_id = trigger(&http, &one.base, "built").await;
    let run = wait_finished(&http, &two.base, &run_id).await;
    assert_eq!(run["status"], "completed");
    let nodes: std::collections::HashSet<&str> = run["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 2, "each node ran one shard");
    let setups = std::fs::read_to_string(dir.path().join("setups")).unwrap();
    assert_eq!(setups.lines().count(), 2, "once per node");
    assert!(
        !dir.path().join("clashes").exists(),
        "two setups ran at once in one directory"
    );
    let (_, p) = get(&http, &format!("{}/api/pipelines", one.base)).await;
    let states = p["pipelines"][0]["setup"]["nodes"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(states.len(), 2);
    assert!(
        states
            .iter()
            .all(|n| n["setup"] == "ready" && n["failures"] == 0),
        "{states:?}"
    );
}
