//! Placement across hosts: named nodes and labelled pipelines, through the real binary
//! on PostgreSQL.
//!
//! - A pipeline that `requires` a label runs only on the host that has it; with that
//!   host killed its jobs (a requeued orphan and a new run) wait, each job view saying
//!   `unplaceable` and `/api/queue` and `/metrics` counting them, while other work runs;
//!   a matching host that joins takes them at once.
//! - A per-key cap (`concurrency_key = "{tenant}"`, `concurrency_per_key = 2`) holds
//!   over three hosts while one holding jobs is killed, by the jobs' own clocks.
//! - Resources bound what runs at once on a node, and GPU indices are never shared.
//! - A node name is refused while the node holding it lives (naming its host and pid),
//!   and a node restarted after a crash takes its name back at once, killing what its
//!   previous life left running and re-running its job.
//!
//! Needs `TEST_DATABASE_URL` (`SKIPPED(service)` otherwise); the hosts scenario also
//! needs root for its namespaces (`SKIPPED(privilege)` otherwise).

mod common;

use std::time::Duration;

use common::hosts::{Cluster, can_unshare, executions, max_overlap_ticks, ticking_pipeline};
use common::{BinServer, eventually, free_port, get, post};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

/// One hosts scenario at a time: each runs several hosts with sub-second leases on two
/// cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn pg_url() -> Option<String> {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            println!("SKIPPED(service): TEST_DATABASE_URL not set");
            None
        }
    }
}

/// Runs on PostgreSQL whatever the pass; the second (`TEST_STORE=postgres`) pass would
/// only repeat it.
fn first_pass() -> bool {
    if std::env::var("TEST_STORE").as_deref() == Ok("postgres") {
        println!("placement tests ran in the first pass (they are PostgreSQL-only)");
        return false;
    }
    true
}

async fn run_of(http: &reqwest::Client, base: &str, run: &str) -> Value {
    let (status, v) = get(http, &format!("{base}/api/runs/{run}")).await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn trigger(http: &reqwest::Client, base: &str, pipeline: &str, body: Value) -> String {
    let (status, v) = post(
        http,
        &format!("{base}/api/pipelines/{pipeline}/trigger"),
        body,
    )
    .await;
    assert_eq!(status, 202, "{v}");
    v["runId"].as_str().unwrap().to_string()
}

async fn wait_status(http: &reqwest::Client, base: &str, run: &str, want: &str) -> Value {
    let last = std::sync::Arc::new(std::sync::Mutex::new(Value::Null));
    eventually(T, &format!("run {run} {want}"), || {
        let (http, base, run, last) = (
            http.clone(),
            base.to_string(),
            run.to_string(),
            last.clone(),
        );
        async move {
            let now = run_of(&http, &base, &run).await;
            let done = now["status"] == want;
            *last.lock().unwrap() = now;
            done
        }
    })
    .await;
    last.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labelled_pipeline_runs_only_on_matching_hosts_and_waits_unplaceable() {
    let Some(pg) = pg_url() else { return };
    if !first_pass() || !can_unshare() {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().await;
    let marks = tempfile::tempdir().unwrap();
    let m = marks.path().display();
    // `train` records the host it ran on; its shard 0 of a `slow` run blocks until
    // released, so the GPU host can be killed under it.
    let pipelines = format!(
        r#"
[pipelines.train]
command = ["/bin/sh", "-c", "hostname >> {m}/hosts.$0; if [ \"$1\" = slow ] && [ ! -e {m}/release ]; then exec sleep 60; fi", "{{run_id}}", "{{mode}}"]
requires = {{ gpu = "*", zone = ["eu-1", "eu-2"] }}
[pipelines.train.params.mode]
default = "fast"

[pipelines.any]
command = ["/bin/true"]
"#
    );
    let mut c = Cluster::start(&pg, None, 0, "heartbeat = \"300ms\"", &pipelines, &[]).await;
    let gpu = "node_name = \"gpu-node\"\nlabels = { gpu = \"a100\", zone = \"eu-1\" }";
    c.add_host_with(None, gpu).await;
    c.add_host_with(
        None,
        "node_name = \"cpu-node\"\nlabels = { zone = \"eu-1\" }",
    )
    .await;
    c.wait_nodes(1, 2).await;
    let http = c.http.clone();
    let cpu = c.base(1).to_string();

    // Named nodes, their labels, and one config between them.
    let (_, w) = get(&http, &format!("{cpu}/api/workers")).await;
    let mut names: Vec<&str> = w["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["cpu-node", "gpu-node"]);
    assert!(
        w["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["configDiffers"] == false && n["labels"]["zone"] == "eu-1"),
        "{w}"
    );
    let (_, p) = get(&http, &format!("{cpu}/api/pipelines")).await;
    let train = p["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "train")
        .unwrap();
    assert_eq!(
        train["requires"],
        json!({"gpu": "*", "zone": ["eu-1", "eu-2"]})
    );

    // Triggered on the CPU host, every shard runs on the GPU host.
    let run = trigger(&http, &cpu, "train", json!({"shards": 4})).await;
    let done = wait_status(&http, &cpu, &run, "completed").await;
    let ran = std::fs::read_to_string(marks.path().join(format!("hosts.{run}"))).unwrap();
    assert_eq!(ran.lines().collect::<Vec<_>>(), ["host-0"; 4]);
    for job in done["jobs"].as_array().unwrap() {
        assert_eq!(job["nodeName"], "gpu-node", "{job}");
        assert!(job["unplaceable"].is_null());
    }

    // The GPU host dies under a running job: the job is requeued and waits, unplaceable.
    let slow = trigger(
        &http,
        &cpu,
        "train",
        json!({"parameters": {"mode": "slow"}}),
    )
    .await;
    wait_status(&http, &cpu, &slow, "running").await;
    c.hosts[0].crash();
    c.wait_nodes(1, 1).await;
    let queued = trigger(&http, &cpu, "train", json!({})).await;
    for r in [&slow, &queued] {
        eventually(T, "the job to say it is unplaceable", || {
            let (http, cpu) = (http.clone(), cpu.clone());
            async move {
                let run = run_of(&http, &cpu, r).await;
                let job = &run["jobs"][0];
                job["status"] == "queued"
                    && job["unplaceable"]
                        .as_str()
                        .is_some_and(|why| why.contains("gpu=*"))
            }
        })
        .await;
    }
    let (_, q) = get(&http, &format!("{cpu}/api/queue")).await;
    let tq = q["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pipeline"] == "train")
        .unwrap()
        .clone();
    assert_eq!(
        (tq["queued"].as_u64(), tq["unplaceable"].as_u64()),
        (Some(2), Some(2)),
        "{q}"
    );
    assert!(
        tq["unplaceableReason"]
            .as_str()
            .unwrap()
            .contains("1 live node"),
        "{q}"
    );
    let metrics = common::get_text(&http, &format!("{cpu}/metrics")).await.1;
    assert!(
        metrics.contains("runyard_jobs_unplaceable{pipeline=\"train\"} 2\n"),
        "{metrics}"
    );
    // Work the CPU host may take still runs.
    let other = trigger(&http, &cpu, "any", json!({})).await;
    wait_status(&http, &cpu, &other, "completed").await;

    // A GPU host comes back under the same name: both wait no longer.
    std::fs::write(marks.path().join("release"), "").unwrap();
    c.add_host_with(None, gpu).await;
    for r in [&slow, &queued] {
        let done = wait_status(&http, &cpu, r, "completed").await;
        assert_eq!(done["jobs"][0]["nodeName"], "gpu-node");
    }
    let ran = std::fs::read_to_string(marks.path().join(format!("hosts.{slow}"))).unwrap();
    assert_eq!(ran.lines().collect::<Vec<_>>(), ["host-0", "host-2"]);
    let (_, q) = get(&http, &format!("{cpu}/api/queue")).await;
    assert!(
        q["pipelines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["unplaceable"] == 0),
        "{q}"
    );
}

/// A node started under the name a live node holds is refused; a node restarted after
/// a crash takes its name back at once (the lease here is 30 s) and resolves its
/// previous life's job: the leftover process killed, the job run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_refused_while_its_node_lives_and_taken_back_after_a_crash() {
    let Some(pg) = pg_url() else { return };
    if !first_pass() {
        return;
    }
    let schema = format!("placement_{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran-once");
    let config = common::write_config(
        dir.path(),
        &format!(
            "node_name = \"alpha\"\n[store]\nurl = \"{pg}\"\nschema = \"{schema}\"\npool_size = 4\n"
        ),
        &format!(
            "[pipelines.once]\ncommand = [\"/bin/sh\", \"-c\", \"[ -e {m} ] && exit 0; touch {m}; exec sleep 300\"]\n",
            m = marker.display()
        ),
    );
    let _drop = DropSchema(pg.clone(), schema);
    let mut first = BinServer::start(&config, free_port()).await;
    let http = reqwest::Client::new();
    let run = trigger(&http, &first.base, "once", json!({})).await;
    let running = wait_status(&http, &first.base, &run, "running").await;
    let leftover = running["jobs"][0]["pid"].as_u64().unwrap() as u32;
    assert_eq!(running["jobs"][0]["nodeName"], "alpha");

    // A second node under the same name is refused, naming the holder.
    let second = tokio::process::Command::new(env!("CARGO_BIN_EXE_runyard"))
        .args(["serve", "-c", config.to_str().unwrap(), "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .env_remove("RUNYARD_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .output();
    let out = tokio::time::timeout(T, second)
        .await
        .expect("a refused node exits")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("\"alpha\" is held by a live node")
            && stderr.contains(&format!("pid {}", first.pid())),
        "{stderr}"
    );

    // Crash the holder; its job's process group outlives it.
    first.signal("KILL");
    first.wait_exit(T).await;
    assert!(std::path::Path::new(&format!("/proc/{leftover}")).exists());
    let started = std::time::Instant::now();
    let back = BinServer::start(&config, free_port()).await;
    let done = wait_status(&http, &back.base, &run, "completed").await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the name came back after {:?}, not at once",
        started.elapsed()
    );
    assert_eq!(done["jobs"][0]["requeues"], 1, "{done}");
    assert_eq!(done["jobs"][0]["nodeName"], "alpha");
    eventually(T, "the leftover process to be killed", || async {
        !std::path::Path::new(&format!("/proc/{leftover}")).exists()
            || std::fs::read_to_string(format!("/proc/{leftover}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    })
    .await;
    let (_, w) = get(&http, &format!("{}/api/workers", back.base)).await;
    let workers = w["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{w}");
    assert_eq!(workers[0]["name"], "alpha");
    assert_eq!(workers[0]["pid"], back.pid());
}

struct DropSchema(String, String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args([
                &self.0,
                "-qc",
                &format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.1),
            ])
            .output();
    }
}

/// One node with 4 cores and 2 GPUs of its own, 8 slots: GPU jobs (1 core, 1 GPU each)
/// and heavy jobs (3 cores) never hold more than it has at once, by their own clocks,
/// and two GPU jobs that overlap never share an index. On either store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_bound_what_runs_at_once_and_gpus_are_never_shared() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("spans");
    let script = format!(
        "s=$(date +%s%N); sleep 0.3; echo \"$s $(date +%s%N) $0 gpus=$RUNYARD_GPU_IDS\" >> {}",
        log.display()
    );
    let config = common::write_config(
        dir.path(),
        "max_workers = 8\nresources = { cpu = 4, memory = \"8GiB\", gpu = 2 }",
        &format!(
            "[pipelines.gpu]\ncommand = [\"/bin/sh\", \"-c\", {script:?}, \"gpu\"]\n\
             resources = {{ cpu = 1, gpu = 1 }}\n\
             [pipelines.heavy]\ncommand = [\"/bin/sh\", \"-c\", {script:?}, \"heavy\"]\n\
             resources = {{ cpu = 3, memory = \"1GiB\" }}\n\
             [pipelines.huge]\ncommand = [\"/bin/true\"]\nresources = {{ gpu = 4 }}\n"
        ),
    );
    let server = BinServer::start(&config, free_port()).await;
    let http = reqwest::Client::new();
    let gpu = trigger(&http, &server.base, "gpu", json!({"shards": 6})).await;
    let heavy = trigger(&http, &server.base, "heavy", json!({"shards": 2})).await;
    let huge = trigger(&http, &server.base, "huge", json!({})).await;
    for run in [&gpu, &heavy] {
        wait_status(&http, &server.base, run, "completed").await;
    }
    // A job larger than any node stays queued, and says why.
    let waiting = run_of(&http, &server.base, &huge).await;
    assert_eq!(waiting["jobs"][0]["status"], "queued");
    let why = waiting["jobs"][0]["unplaceable"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.contains("no live node has room for one job (gpu=4)"),
        "{waiting}"
    );

    // (start, end, kind, gpus) as each job saw them.
    let spans: Vec<(u128, u128, String, String)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].to_string(),
                f[3].trim_start_matches("gpus=").to_string(),
            )
        })
        .collect();
    assert_eq!(spans.len(), 8);
    let (mut most_gpu, mut most_cpu) = (0, 0);
    for (start, _, _, _) in &spans {
        let live: Vec<_> = spans
            .iter()
            .filter(|(s, e, _, _)| s <= start && start < e)
            .collect();
        let gpus: Vec<&str> = live
            .iter()
            .filter(|(_, _, k, _)| k == "gpu")
            .map(|(_, _, _, g)| g.as_str())
            .collect();
        let cpu: usize = live
            .iter()
            .map(|(_, _, k, _)| if k == "gpu" { 1 } else { 3 })
            .sum();
        let distinct: std::collections::HashSet<&&str> = gpus.iter().collect();
        assert_eq!(distinct.len(), gpus.len(), "a GPU shared at once: {gpus:?}");
        assert!(gpus.iter().all(|g| ["0", "1"].contains(g)), "{gpus:?}");
        most_gpu = most_gpu.max(gpus.len());
        most_cpu = most_cpu.max(cpu);
    }
    assert!(
        most_gpu <= 2 && most_cpu <= 4,
        "gpu {most_gpu}, cpu {most_cpu}"
    );
    assert_eq!(most_gpu, 2, "two GPU jobs should have run side by side");
    let (_, w) = get(&http, &format!("{}/api/workers", server.base)).await;
    assert_eq!(w["workers"][0]["capacity"]["gpu"], 2, "{w}");
    assert_eq!(w["workers"][0]["inUse"]["gpu"], 0, "{w}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_key_cap_holds_over_three_hosts_while_one_is_killed() {
    let Some(pg) = pg_url() else { return };
    if !first_pass() || !can_unshare() {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().await;
    let ticks = tempfile::tempdir().unwrap();
    let pipelines = ticking_pipeline(
        "work",
        ticks.path(),
        0.4,
        "concurrency_key = \"{tenant}\"\nconcurrency_per_key = 2\n\
         [pipelines.work.params.tenant]\npattern = \"t[0-9]\"",
    );
    let mut c = Cluster::start(
        &pg,
        None,
        3,
        "heartbeat = \"500ms\"\nmax_workers = 4",
        &pipelines,
        &[],
    )
    .await;
    c.wait_nodes(0, 3).await;
    let http = c.http.clone();
    let mut tenant_of = std::collections::HashMap::new();
    for k in 0..30 {
        let tenant = format!("t{}", k % 3);
        let run = trigger(
            &http,
            c.base(k % 3),
            "work",
            json!({"parameters": {"tenant": tenant}}),
        )
        .await;
        tenant_of.insert(run, tenant);
    }
    // Kill a host while it runs jobs.
    let victim = loop {
        let (_, w) = get(&http, &format!("{}/api/workers", c.base(0))).await;
        let busy = w["workers"].as_array().unwrap().iter().find(|n| {
            n["self"] == false && n["runningJobs"].as_array().is_some_and(|j| !j.is_empty())
        });
        if let Some(n) = busy {
            let name = n["name"].as_str().unwrap().to_string();
            break (1..3)
                .find(|i| name.starts_with(&format!("host-{i}:")))
                .expect("a host by its default name");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    c.hosts[victim].crash();
    for run in tenant_of.keys() {
        wait_status(&http, c.base(0), run, "completed").await;
    }
    let execs = executions(ticks.path());
    let mut most = 0;
    for tenant in ["t0", "t1", "t2"] {
        let mine: Vec<_> = execs
            .iter()
            .filter(|e| tenant_of.get(&e.job).is_some_and(|t| t == tenant))
            .cloned()
            .collect();
        most = most.max(max_overlap_ticks(&mine));
    }
    let all = max_overlap_ticks(&execs);
    println!(
        "per-key cap 2 over 3 hosts, one killed: at most {most} of one tenant at once, {all} in all"
    );
    assert!(most <= 2, "per-key cap exceeded: {most}");
    assert_eq!(most, 2, "the cap never filled");
    assert!(all <= 6, "three tenants × 2: {all}");
}
