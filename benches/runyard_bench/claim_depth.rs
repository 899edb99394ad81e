//! `claim-depth`: claim latency against queue depth: a claim of one job with a million queued jobs
//! next to the same claim with a thousand, on SQLite and (with a database URL)
//! PostgreSQL. The queue has mixed priorities (-10..=10) and a tenth of it held (delayed
//! runs not due), so the measured claim walks the priority index and releases nothing:
//! the issue asks that the deep claim stay within 2× of a shallow one.
//!
//! The queues are bulk-inserted with SQL (set-up, not measured); each measured claim is
//! `Store::job_claim` of one job, and the job is then finished outside the timing (so the
//! queue keeps its depth, less the claimed few).
//!
//! The deep queue is then measured a second time behind a **dead head**: the first
//! `BENCH_DEAD_HEAD` (100,000) jobs in claim order are finished in one statement, as a long
//! drain finishes them. SQLite deletes their entries from the claim index as it goes; on
//! PostgreSQL the entries stay in `jobs_ready` until vacuum, and every claim steps over
//! them (autovacuum is off for the table here, standing for the time before it runs).
//! Then `VACUUM jobs` runs, is timed, and the claims are measured a third time. The
//! figures are why `jobs` vacuums by a fixed count of dead rows, not by a fifth of the
//! table (`postgres_0014_jobs_vacuum.sql`).

use std::sync::Arc;
use std::time::Instant;

use runyard::config::Synchronous;
use runyard::store::postgres::{PgOptions, PgStore};
use runyard::store::sqlite::SqliteStore;
use runyard::store::{JobClaimParams, JobFinishParams, NodeRow, Outcome, Store};

use crate::BENCH_TAG;
use crate::kit::pg::Schema;

const PIPELINE: &str = "deep";
/// Claims measured per queue.
const SAMPLES: usize = 400;
/// Claims made first and not measured.
const WARM_UP: usize = 50;

fn node() -> NodeRow {
    NodeRow {
        id: "bench-node".into(),
        host: "bench".into(),
        pid: std::process::id(),
        proc_start: 0,
        boot_id: "bench".into(),
        slots: 1,
        started_at: 0,
        heartbeat_at: 0,
        ..Default::default()
    }
}

/// The bulk insert: `jobs` queued jobs in runs of 1,000 shards, priorities -10..=10,
/// one in ten held until far in the future.
fn sqlite_fill(path: &std::path::Path, jobs: usize, now: i64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .unwrap();
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {runs} - 1)
         INSERT INTO runs (id, pipeline, status, params, shard_count, triggered_by, created_at)
             SELECT printf('bench-%08d', i), '{PIPELINE}', 'queued', '{{}}', 1000, 'bench', {now} FROM n;
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {jobs} - 1)
         INSERT INTO jobs (id, run_id, pipeline, shard_index, shard_count, status, max_attempts,
                           retry_backoff_ms, on_orphan, max_orphan_requeues, run_after, created_at,
                           priority, held)
             SELECT printf('bench-%08d:s%d', i / 1000, i % 1000), printf('bench-%08d', i / 1000), '{PIPELINE}',
                    i % 1000, 1000, 'queued', 1, 1000, 'requeue', 1,
                    CASE WHEN i % 10 = 0 THEN {far} ELSE {now} END, {now},
                    (i * 7919) % 21 - 10, i % 10 = 0
             FROM n;
         COMMIT; ANALYZE;",
        runs = jobs.div_ceil(1000),
        far = now + 365 * 86_400_000i64,
    ))
    .unwrap();
}

async fn pg_fill(url: &str, schema: &str, jobs: usize, now: i64) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "SET search_path = {schema};
             INSERT INTO runs (id, pipeline, status, params, shard_count, triggered_by, created_at)
                 SELECT 'bench-' || lpad(i::text, 8, '0'), '{PIPELINE}', 'queued', '{{}}', 1000, 'bench', {now}
                 FROM generate_series(0::bigint, {runs} - 1) AS i;
             INSERT INTO jobs (id, run_id, pipeline, shard_index, shard_count, status, max_attempts,
                               retry_backoff_ms, on_orphan, max_orphan_requeues, run_after, created_at,
                               priority, held)
                 SELECT 'bench-' || lpad((i / 1000)::text, 8, '0') || ':s' || (i % 1000),
                        'bench-' || lpad((i / 1000)::text, 8, '0'), '{PIPELINE}', i % 1000, 1000, 'queued',
                        1, 1000, 'requeue', 1, CASE WHEN i % 10 = 0 THEN {far} ELSE {now} END, {now},
                        (i * 7919) % 21 - 10, i % 10 = 0
                 FROM generate_series(0::bigint, {jobs} - 1) AS i ORDER BY i;
",
            runs = jobs.div_ceil(1000),
            far = now + 365 * 86_400_000i64,
        ))
        .await
        .expect("bulk insert of the bench's queue");
    // Vacuumed and analysed now, so autovacuum does not start on the fresh rows while
    // the claims are measured (VACUUM runs outside a transaction: a statement of its own).
    for table in ["runs", "jobs"] {
        client
            .batch_execute(&format!("VACUUM (ANALYZE) {schema}.{table}"))
            .await
            .expect("vacuum");
    }
    drop(client);
    let _ = task.await;
}

/// Finishes the first `n` claimable jobs in claim order, in one statement: the dead head
/// a drain leaves (the same SQL on both backends).
fn drain_head_sql(n: usize) -> String {
    format!(
        "UPDATE jobs SET status = 'completed', finished_at = created_at
         WHERE seq IN (SELECT seq FROM jobs WHERE status = 'queued' AND NOT held AND pipeline = '{PIPELINE}'
                       ORDER BY priority DESC, seq LIMIT {n})"
    )
}

/// Median and p99 of `SAMPLES` one-job claims, in microseconds (after `WARM_UP` claims
/// that prepare statements and warm caches).
async fn measure(store: &Arc<dyn Store>) -> (f64, f64) {
    let mut us = Vec::with_capacity(SAMPLES);
    for i in 0..WARM_UP + SAMPLES {
        let now = store.clock_ms();
        let t = Instant::now();
        let out = store
            .job_claim(JobClaimParams {
                node_id: "bench-node".into(),
                max: 1,
                global_cap: 0,
                pipelines: [(PIPELINE.to_string(), 0)].into(),
                now,
                keyed: Default::default(),
            })
            .await
            .unwrap();
        if i >= WARM_UP {
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let job = out.jobs.into_iter().next().expect("a claimable job");
        store
            .job_finish(JobFinishParams {
                job_id: job.id,
                claim_seq: job.claim_seq,
                outcome: Outcome::Completed,
                exit_code: Some(0),
                stdout_bytes: 0,
                stderr_bytes: 0,
                truncated: false,
                now,
                claim_next: None,
                start: None,
                result: None,
                lingers: false,
            })
            .await
            .unwrap();
    }
    us.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (us[us.len() / 2], super::percentile(&us, 0.99))
}

/// Claim figures of one queue: as filled, and (when asked) behind a dead head before and
/// after vacuum.
struct Depth {
    fresh: (f64, f64),
    dead_head: Option<DeadHead>,
}

struct DeadHead {
    before_vacuum: (f64, f64),
    vacuum_ms: f64,
    after_vacuum: (f64, f64),
}

/// Measures the claims behind the dead head `make` leaves, then times `vacuum` and
/// measures them again.
async fn behind_dead_head(
    store: &Arc<dyn Store>,
    make: impl Future<Output = ()>,
    vacuum: impl Future<Output = ()>,
) -> DeadHead {
    make.await;
    let before_vacuum = measure(store).await;
    let t = Instant::now();
    vacuum.await;
    let vacuum_ms = t.elapsed().as_secs_f64() * 1e3;
    let after_vacuum = measure(store).await;
    DeadHead {
        before_vacuum,
        vacuum_ms,
        after_vacuum,
    }
}

async fn sqlite_case(jobs: usize, dead_head: usize) -> Depth {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path, Synchronous::Normal).unwrap());
    store.node_register(node()).await.unwrap();
    sqlite_fill(&path, jobs, store.clock_ms());
    let fresh = measure(&store).await;
    let dead_head = if dead_head > 0 {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .unwrap();
        Some(
            behind_dead_head(
                &store,
                async { conn.execute_batch(&drain_head_sql(dead_head)).unwrap() },
                async { conn.execute_batch("VACUUM").unwrap() },
            )
            .await,
        )
    } else {
        None
    };
    store.close().await;
    Depth { fresh, dead_head }
}

async fn pg_case(url: &str, jobs: usize, dead_head: usize) -> Depth {
    let schema = Schema::new(url, BENCH_TAG);
    let store: Arc<dyn Store> = Arc::new(
        PgStore::open(&PgOptions {
            url: url.to_string(),
            schema: Some(schema.name.clone()),
            pool_size: 4,
        })
        .await
        .expect("PostgreSQL for the bench"),
    );
    store.node_register(node()).await.unwrap();
    pg_fill(url, &schema.name, jobs, store.clock_ms()).await;
    let fresh = measure(&store).await;
    let dead_head = if dead_head > 0 {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        let dead = behind_dead_head(
            &store,
            async {
                client
                    .batch_execute(&format!(
                        "SET search_path = {schema};
                         ALTER TABLE jobs SET (autovacuum_enabled = false);
                         {drain};",
                        schema = schema.name,
                        drain = drain_head_sql(dead_head)
                    ))
                    .await
                    .expect("the dead head's update")
            },
            async {
                client
                    .batch_execute(&format!("VACUUM {}.jobs", schema.name))
                    .await
                    .expect("vacuum")
            },
        )
        .await;
        drop(client);
        let _ = task.await;
        Some(dead)
    } else {
        None
    };
    store.close().await;
    drop(schema);
    Depth { fresh, dead_head }
}

pub async fn bench_claim_depth(pg: Option<&str>, deep: usize, dead_head: usize) {
    println!(
        "[claim-depth] claim latency vs queue depth: one-job claims ({SAMPLES} samples), priorities -10..=10, 10% held"
    );
    let shallow = 1_000;
    // The shallow queue must outlast the warm-up and the samples.
    let shallow = shallow.max(WARM_UP + SAMPLES + 100);
    let mut stores: Vec<(&str, Option<&str>)> = vec![("SQLite", None)];
    if let Some(url) = pg {
        stores.push(("PostgreSQL", Some(url)));
    }
    for (name, url) in stores {
        // The dead head is measured behind the deep queue, which must outlast it.
        let dead_head = dead_head.min(deep.saturating_sub(2 * (WARM_UP + SAMPLES) * 3));
        let (shallow_depth, deep_depth) = match url {
            None => (
                sqlite_case(shallow, 0).await,
                sqlite_case(deep, dead_head).await,
            ),
            Some(url) => (
                pg_case(url, shallow, 0).await,
                pg_case(url, deep, dead_head).await,
            ),
        };
        let ((s_med, s_p99), (d_med, d_p99)) = (shallow_depth.fresh, deep_depth.fresh);
        println!(
            "    {name:<10} {shallow:>9} queued: median {s_med:>7.0} µs, p99 {s_p99:>7.0} µs\n    {name:<10} {deep:>9} queued: median {d_med:>7.0} µs, p99 {d_p99:>7.0} µs   (deep / shallow median: {:.2}×)",
            d_med / s_med
        );
        if let Some(dead) = deep_depth.dead_head {
            let ((b_med, b_p99), (a_med, a_p99)) = (dead.before_vacuum, dead.after_vacuum);
            println!(
                "    {name:<10} behind {dead_head} finished, not vacuumed: median {b_med:>7.0} µs, p99 {b_p99:>7.0} µs   ({:.2}× the deep queue)\n    {name:<10} VACUUM took {:.0} ms; after it: median {a_med:>7.0} µs, p99 {a_p99:>7.0} µs",
                b_med / d_med,
                dead.vacuum_ms,
            );
        }
    }
    println!();
}
