//! `store`: store-level claim + finish throughput on PostgreSQL, driven by 1 and by 3
//! processes (no spawning: this measures the shared store, not `/bin/true`).
//!
//! The bench re-executes itself as worker processes (`RUNYARD_BENCH_WORKER=…`). Each
//! worker opens its own `PgStore` on one shared schema, registers a node and runs
//! `TASKS` loops of "claim one job, then finish it with the fused claim of the next"
//! (the scheduler's hot path, DESIGN decision 14) for a fixed time, then prints how many
//! jobs it finished. Runs with and without a global cap; with the cap, the parent samples
//! the running count every 5 ms (from the running-jobs index alone) and fails if it ever
//! exceeds the cap.
//!
//! A loop that finds nothing to claim (the cap is full) waits as the scheduler's claim
//! loop does: for the store's WORK feed, which other processes' commits reach through the
//! Redis bus (`BENCH_REDIS_URL`, else `TEST_REDIS_URL`, else a private `redis-server`),
//! or the claim loop's backstop poll. Without any Redis it polls every millisecond, which
//! says so: those empty claims cost the shared cores more than the work.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use runyard::bus::RedisBus;
use runyard::config::BusSettings;
use runyard::store::postgres::{PgOptions, PgStore};
use runyard::store::{JobClaimParams, JobFinishParams, NodeRow, Outcome, Store, change};

use crate::kit::pg::Schema;
use crate::kit::procfs;
use crate::{BENCH_TAG, median};

/// Concurrent claim loops per worker process.
const TASKS: usize = 4;
const PIPELINE: &str = "bench";

fn claim_params(node: &str, cap: usize) -> JobClaimParams {
    JobClaimParams {
        node_id: node.to_string(),
        max: 1,
        global_cap: cap,
        pipelines: HashMap::from([(PIPELINE.to_string(), 0)]),
        now: runyard::clock::now_ms(),
        keyed: Default::default(),
    }
}

/// How long a loop waiting for the cap waits at most without a wake: the scheduler's
/// claim loop's backstop (`POLL_BACKSTOP`).
const BACKSTOP: Duration = Duration::from_secs(1);

/// The worker's body: prints `finished=N`. `redis`: the bus to hear the other workers'
/// commits on (the schema's name is its prefix); none: poll every millisecond.
pub async fn worker(url: &str, schema: &str, secs: u64, cap: usize, redis: Option<&str>) {
    let store: Arc<dyn Store> = Arc::new(
        PgStore::open(&PgOptions {
            url: url.to_string(),
            schema: Some(schema.to_string()),
            pool_size: TASKS + 2,
        })
        .await
        .expect("open the bench schema"),
    );
    let bus = redis.map(|url| {
        let settings = BusSettings {
            url: url.to_string(),
            url_source: "bench",
            prefix: schema.to_string(),
        };
        RedisBus::start(&settings, store.changes().clone()).expect("the bench's Redis URL")
    });
    if let Some(bus) = &bus {
        assert!(
            bus.connected_within(Duration::from_secs(10)).await,
            "the bench's Redis bus did not connect"
        );
    }
    let polls = bus.is_none();
    let node = uuid::Uuid::now_v7().to_string();
    let now = store.clock_ms();
    store
        .node_register(NodeRow {
            id: node.clone(),
            host: "bench".into(),
            pid: std::process::id(),
            proc_start: 0,
            boot_id: "bench".into(),
            slots: TASKS as u32,
            started_at: now,
            heartbeat_at: now,
            ..Default::default()
        })
        .await
        .unwrap();
    let finished = Arc::new(AtomicU64::new(0));
    // The newest WORK change at which a claim of this process found nothing: the other
    // loops woken by that change do not claim again (a node has one claim loop, which
    // sends one claim per wake for all its free slots).
    let looked = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (store, node, finished) = (store.clone(), node.clone(), finished.clone());
        let looked = looked.clone();
        tasks.push(tokio::spawn(async move {
            let mut work = store.changes().subscribe(change::WORK);
            let mut held = store
                .job_claim(claim_params(&node, cap))
                .await
                .unwrap()
                .jobs;
            while Instant::now() < deadline {
                let Some(job) = held.pop() else {
                    // Nothing claimable (cap reached or queue empty): wait for a commit
                    // that may have freed a unit, as the claim loop does.
                    let left = deadline.saturating_duration_since(Instant::now());
                    let woken = if polls {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        false
                    } else {
                        tokio::time::timeout(left.min(BACKSTOP), work.changed())
                            .await
                            .is_ok()
                    };
                    let change = *work.borrow_and_update();
                    if woken && looked.load(Ordering::Relaxed) >= change {
                        continue;
                    }
                    held = store
                        .job_claim(claim_params(&node, cap))
                        .await
                        .unwrap()
                        .jobs;
                    if held.is_empty() {
                        looked.fetch_max(change, Ordering::Relaxed);
                    }
                    continue;
                };
                let out = store
                    .job_finish(JobFinishParams {
                        job_id: job.id.clone(),
                        claim_seq: job.claim_seq,
                        outcome: Outcome::Completed,
                        exit_code: Some(0),
                        stdout_bytes: 0,
                        stderr_bytes: 0,
                        truncated: false,
                        now: runyard::clock::now_ms(),
                        claim_next: Some(claim_params(&node, cap)),
                        start: None,
                        result: None,
                        lingers: false,
                    })
                    .await
                    .unwrap();
                assert!(out.applied, "a fenced finish of our own claim applies");
                finished.fetch_add(1, Ordering::Relaxed);
                held = out.next;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!("finished={}", finished.load(Ordering::Relaxed));
    let own = procfs::cpu_secs(std::process::id()).unwrap_or_default();
    println!("cpu={own}");
    // Claims sent on their own (not fused with an end): a waiting loop's, mostly.
    let claims: u64 = store
        .traffic()
        .iter()
        .filter(|(_, op, _, _)| *op == "job_claim")
        .map(|(_, _, _, commits)| commits)
        .sum();
    println!("claims={claims}");
    drop(bus);
    store.close().await;
}

/// Creates a fresh schema holding `jobs` queued single-shard runs of one pipeline. They
/// are inserted in bulk with SQL (this is set-up, not what is measured); one shard per
/// run, as most runs have, so finishes do not all queue on one run row.
async fn prepare(url: &str, schema: &str, jobs: usize) -> Arc<dyn Store> {
    let store: Arc<dyn Store> = Arc::new(
        PgStore::open(&PgOptions {
            url: url.to_string(),
            schema: Some(schema.to_string()),
            pool_size: 4,
        })
        .await
        .expect("PostgreSQL for the bench"),
    );
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let now = runyard::clock::now_ms();
    client
        .batch_execute(&format!(
            "SET search_path = {schema};
             CREATE TEMP TABLE ids AS
                 SELECT gen_random_uuid()::text AS id, n FROM generate_series(1, {jobs}) AS n;
             INSERT INTO runs (id, pipeline, status, params, shard_count, triggered_by, created_at)
                 SELECT id, '{PIPELINE}', 'queued', '{{}}', 1, 'bench', {now} FROM ids ORDER BY n;
             INSERT INTO jobs (id, run_id, pipeline, shard_index, shard_count, status, max_attempts,
                               retry_backoff_ms, on_orphan, max_orphan_requeues, run_after, created_at)
                 SELECT id, id, '{PIPELINE}', 0, 1, 'queued', 1, 1000, 'requeue', 1, {now}, {now}
                 FROM ids ORDER BY n;
             ANALYZE runs; ANALYZE jobs;"
        ))
        .await
        .expect("bulk insert of the bench's queue");
    drop(client);
    let _ = task.await;
    store
}

/// Where one measurement's CPU went, per job finished, in µs.
struct CpuPerJob {
    /// Every core of the machine (the workers, PostgreSQL, the cap sampler, the rest).
    machine: f64,
    /// PostgreSQL's processes.
    postgres: f64,
    /// The worker processes (their whole life, start-up included).
    workers: f64,
    /// Share of the machine's cores busy while the workers ran.
    busy: f64,
    /// Share of one core each worker process used, on average.
    per_worker: f64,
    /// Claims sent on their own, not fused with an end, per job.
    claims: f64,
}

/// One measurement: `procs` worker processes for `secs` on a fresh schema; jobs/s, the
/// most jobs seen running at once (sampled every 5 ms), and where the CPU went.
async fn measure(
    url: &str,
    procs: usize,
    cap: usize,
    secs: u64,
    redis: Option<&str>,
) -> (f64, usize, CpuPerJob) {
    let schema = Schema::new(url, BENCH_TAG);
    // Enough work that no worker runs dry: generous for ~5k jobs/s.
    let store = prepare(url, &schema.name, 6_000 * secs as usize).await;
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..procs)
        .map(|_| {
            Command::new(&exe)
                .env(
                    "RUNYARD_BENCH_WORKER",
                    format!(
                        "{url}|{}|{secs}|{cap}|{}",
                        schema.name,
                        redis.unwrap_or_default()
                    ),
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn a bench worker")
        })
        .collect();
    let started = Instant::now();
    // The machine's and PostgreSQL's CPU over a window inside the workers' run (their
    // backends' time leaves with them when they exit), scaled by the run's rate.
    let window = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (t0, m0, pg0) = (
            Instant::now(),
            procfs::machine_cpu_secs(),
            procfs::comm_cpu_secs("postgres"),
        );
        let end = started + Duration::from_secs(secs) - Duration::from_millis(300);
        tokio::time::sleep(end.saturating_duration_since(Instant::now())).await;
        (
            t0.elapsed().as_secs_f64(),
            procfs::machine_cpu_secs() - m0,
            procfs::comm_cpu_secs("postgres") - pg0,
        )
    });
    // The cap check samples the running count every 5 ms, from the `jobs_running` index
    // alone (a count by pipeline over the whole queue, as `pipeline_counts` does, cost
    // more than half a core at that rate and skewed every figure); without a cap it
    // does not sample.
    let mut max_running = 0usize;
    if cap > 0 {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        let count = format!(
            "SELECT count(*) FROM {}.jobs WHERE status = 'running'",
            schema.name
        );
        let sample_until = started + Duration::from_secs(secs + 2);
        while Instant::now() < sample_until {
            if let Ok(row) = client.query_one(&count, &[]).await {
                max_running = max_running.max(row.get::<_, i64>(0) as usize);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(client);
        let _ = task.await;
    }
    let (mut total, mut workers_cpu, mut claims) = (0u64, 0.0, 0u64);
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "bench worker failed");
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).map(str::to_string))
        };
        total += field("finished=")
            .and_then(|v| v.parse::<u64>().ok())
            .expect("worker prints finished=N");
        workers_cpu += field("cpu=")
            .and_then(|v| v.parse::<f64>().ok())
            .expect("worker prints cpu=S");
        claims += field("claims=")
            .and_then(|v| v.parse::<u64>().ok())
            .expect("worker prints claims=N");
    }
    let (span, machine, postgres) = window.await.unwrap();
    let rate = total as f64 / secs as f64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cpu = CpuPerJob {
        machine: machine / (rate * span) * 1e6,
        postgres: postgres / (rate * span) * 1e6,
        workers: workers_cpu / total.max(1) as f64 * 1e6,
        busy: machine / span / cores,
        per_worker: workers_cpu / procs as f64 / secs as f64,
        claims: claims as f64 / total.max(1) as f64,
    };
    store.close().await;
    drop(schema);
    (rate, max_running, cpu)
}

pub async fn bench_store(url: &str, rounds: usize, secs: u64, redis: Option<&str>) {
    println!(
        "[store] PostgreSQL store: claim + fused finish/claim-next, {TASKS} loops per process, {secs} s per round"
    );
    match redis {
        Some(redis) => {
            println!("    waiting loops wake on the WORK feed, over the Redis bus at {redis}")
        }
        None => println!(
            "    no Redis (set BENCH_REDIS_URL or install redis-server): waiting loops poll every 1 ms"
        ),
    }
    for (label, cap) in [("no cap", 0usize), ("global cap 8", 8)] {
        let mut by_procs = Vec::new();
        for procs in [1usize, 3] {
            let mut rates = Vec::new();
            let mut worst = 0;
            for round in 1..=rounds {
                let (rate, max_running, cpu) = measure(url, procs, cap, secs, redis).await;
                let seen = if cap > 0 {
                    format!(", at most {max_running} running")
                } else {
                    String::new()
                };
                println!(
                    "    {label}, {procs} process(es), round {round}: {rate:>6.0} jobs/s{seen}"
                );
                println!(
                    "        CPU per job: machine {:.0} µs (cores {:.0}% busy), of it PostgreSQL {:.0} µs, the workers {:.0} µs (each worker {:.0}% of a core); claims on their own {:.2} per job",
                    cpu.machine,
                    cpu.busy * 100.0,
                    cpu.postgres,
                    cpu.workers,
                    cpu.per_worker * 100.0,
                    cpu.claims
                );
                if cap > 0 {
                    assert!(
                        max_running <= cap,
                        "{max_running} running over a global cap of {cap}"
                    );
                }
                worst = worst.max(max_running);
                rates.push(rate);
            }
            let m = median(rates);
            let seen = if cap > 0 {
                format!(" (most running at once: {worst})")
            } else {
                String::new()
            };
            println!("    {label}, {procs} process(es): median {m:.0} jobs/s{seen}");
            by_procs.push(m);
        }
        println!(
            "    {label}: 1 → 3 processes = {:.2}× (target ≥ 1.6×)\n",
            by_procs[1] / by_procs[0]
        );
    }
}
