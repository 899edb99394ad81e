//! `statements`: the store's own count of what it sends, checked against the server's: a
//! throwaway PostgreSQL cluster (`initdb` in a temporary directory, a free port,
//! `pg_stat_statements` preloaded with `track = all`) drains `throughput`'s workload, and the
//! client statements the server saw per run are printed next to runyard's
//! `runyard_store_*_total`, with what the writes cost the server per run: WAL, each
//! table's row work (how many updates were HOT) and the `postgres` processes' CPU.
//! Needs PostgreSQL's server binaries (`pg_config --bindir`);
//! as root the cluster runs as the `postgres` user (`initdb` refuses root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Server, counts, ingest, kit, store_traffic, wait_finished};

fn bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    dir.join("initdb").exists().then_some(dir)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs a server binary of PostgreSQL, as `postgres` when we are root.
fn pg(bin: &Path, args: &[&str]) -> bool {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn psql(url: &str, sql: &str) -> Option<String> {
    let out = Command::new("psql")
        .args([url, "-Atc", sql])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// What one drain sent and cost, by runyard's count and the server's.
struct Measured {
    ours: u64,
    our_commits: u64,
    seen: u64,
    commits: u64,
    flushes: u64,
    wal_bytes: u64,
    full_pages: u64,
    tables: String,
    busy: String,
    pg_cpu: f64,
    top: String,
}

pub async fn bench_pgss(runs: usize) {
    println!(
        "[statements] statements per run, runyard's count against pg_stat_statements in a throwaway cluster"
    );
    let Some(bin) = bindir() else {
        println!("    (skipped: no PostgreSQL server binaries; pg_config --bindir)\n");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    if is_root() {
        let _ = Command::new("chown")
            .args(["postgres", dir.path().to_str().unwrap()])
            .status();
    }
    let port = kit::free_port();
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c shared_preload_libraries=pg_stat_statements \
         -c pg_stat_statements.track=all -c pg_stat_statements.track_planning=on -c max_connections=100",
        dir.path().display()
    );
    let log = dir.path().join("log");
    let started = pg(
        &bin.join("initdb"),
        &[
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ],
    ) && pg(
        &bin.join("pg_ctl"),
        &[
            "-D",
            data.to_str().unwrap(),
            "-o",
            &options,
            "-l",
            log.to_str().unwrap(),
            "-w",
            "start",
        ],
    );
    if !started {
        println!("    (skipped: the throwaway cluster did not start)\n");
        return;
    }
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let measured = async {
        psql(&url, "CREATE EXTENSION pg_stat_statements")?;
        let server = Server::start_on(
            Some(&url),
            "max_workers = 2",
            "[pipelines.noop]\ncommand = [\"/bin/true\"]\n",
        )
        .await;
        let http = reqwest::Client::new();
        // Only the drain and its triggers: reset after start-up (migrations, registration).
        psql(
            &url,
            "SELECT pg_stat_statements_reset(), pg_stat_reset_shared('wal'), pg_stat_reset()",
        )?;
        let cpu0 = kit::procfs::comm_cpu_secs("postgres");
        let (_, ids) = ingest(&server.base, "noop", runs, 16).await;
        let last = format!("{}/api/runs/{}", server.base, ids.iter().max().unwrap());
        wait_finished(&http, &last, Duration::from_millis(20)).await;
        while counts(&http, &server.base, "noop").await != (0, 0) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Every `postgres` process on the machine: run it where no other cluster is busy.
        let pg_cpu = kit::procfs::comm_cpu_secs("postgres") - cpu0;
        let traffic = store_traffic(&http, &server.base).await;
        let ours: u64 = traffic.values().map(|(statements, _)| statements).sum();
        let our_commits: u64 = traffic.values().map(|(_, commits)| commits).sum();
        // What the server executed for runyard's writes and reads: every statement
        // except the transaction's own BEGIN/COMMIT/ROLLBACK and this check's.
        let seen = psql(
            &url,
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements
             WHERE query !~* '^(BEGIN|START TRANSACTION|COMMIT|ROLLBACK)' AND query !~* 'pg_stat_statements'",
        )?;
        let transactions = psql(
            &url,
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query ~* '^COMMIT'",
        )?;
        // Where the server's time went: the statements that took most of it.
        let top = psql(
            &url,
            "SELECT round(total_exec_time::numeric, 1) || ' ms | ' || calls || ' calls | '
                    || round((total_exec_time * 1000 / greatest(calls, 1))::numeric) || ' µs | plan '
                    || round((total_plan_time * 1000 / greatest(calls, 1))::numeric) || ' µs | '
                    || regexp_replace(left(query, 90), '\\s+', ' ', 'g')
             FROM pg_stat_statements WHERE query !~* 'pg_stat_statements'
             ORDER BY total_exec_time DESC LIMIT 8",
        )
        .unwrap_or_default();
        // All statements' execution and planning, per run: the rest of the backends' CPU
        // is the protocol, commits and the server's own processes.
        let busy = psql(
            &url,
            &format!(
                "SELECT round((sum(total_exec_time) * 1000 / {runs})::numeric) || ' µs executing, '
                        || round((sum(total_plan_time) * 1000 / {runs})::numeric) || ' µs planning'
                 FROM pg_stat_statements WHERE query !~* 'pg_stat_statements'"
            ),
        )
        .unwrap_or_default();
        // Every commit that wrote, a one-statement transaction's included (no COMMIT
        // statement to see), flushes the WAL unless another flush covered it.
        let flushes = psql(&url, "SELECT wal_sync FROM pg_stat_wal")?;
        // What the writes cost the server: WAL volume (full-page images included) and each
        // table's row work, where an update that is not HOT inserts into every index.
        let wal = psql(&url, "SELECT wal_bytes || ' ' || wal_fpi FROM pg_stat_wal")?;
        let (wal_bytes, full_pages) = wal.split_once(' ')?;
        let tables = psql(
            &url,
            &format!(
                "SELECT relname || ' | ' || round(n_tup_ins::numeric / {runs}, 2) || ' | '
                        || round(n_tup_upd::numeric / {runs}, 2) || ' | '
                        || round(n_tup_hot_upd::numeric / {runs}, 2) || ' | '
                        || round(n_tup_del::numeric / {runs}, 2) || ' | '
                        || (SELECT count(*) FROM pg_index i WHERE i.indrelid = relid)
                 FROM pg_stat_user_tables
                 WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 ORDER BY relname"
            ),
        )
        .unwrap_or_default();
        Some(Measured {
            ours,
            our_commits,
            seen: seen.parse().ok()?,
            commits: transactions.parse().ok()?,
            flushes: flushes.parse().ok()?,
            wal_bytes: wal_bytes.parse().ok()?,
            full_pages: full_pages.parse().ok()?,
            tables,
            busy,
            pg_cpu,
            top,
        })
    }
    .await;
    pg(
        &bin.join("pg_ctl"),
        &["-D", data.to_str().unwrap(), "-m", "fast", "stop"],
    );
    match measured {
        Some(m) => {
            let per = |n: u64| n as f64 / runs as f64;
            println!(
                "    {runs} runs: runyard counted {:.2} write statements and {:.2} commits per run; the server \
                 executed {:.2} statements per run (writes and reads, without BEGIN/COMMIT), {:.2} COMMIT \
                 statements, and flushed its WAL {:.2} times per run (pg_stat_wal)\n",
                per(m.ours),
                per(m.our_commits),
                per(m.seen),
                per(m.commits),
                per(m.flushes)
            );
            println!(
                "    WAL per run: {:.0} bytes, {:.2} full-page images",
                per(m.wal_bytes),
                per(m.full_pages)
            );
            println!(
                "    rows per run by table (table | inserted | updated | of which HOT | deleted | indexes):"
            );
            for line in m.tables.lines() {
                println!("      {line}");
            }
            println!(
                "    statements per run: {}; the postgres processes' CPU: {:.0} µs per run",
                m.busy,
                m.pg_cpu * 1e6 / runs as f64
            );
            println!(
                "    the server's time by statement (total | calls | mean | mean planning | statement):"
            );
            for line in m.top.lines() {
                println!("      {line}");
            }
            println!();
        }
        None => println!("    (skipped: psql could not query the throwaway cluster)\n"),
    }
}
