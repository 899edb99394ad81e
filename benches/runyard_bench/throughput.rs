//! `throughput` (was a): end-to-end throughput of single-shard `/bin/true` runs on 2
//! slots, triggered over HTTP while they run, against the machine's raw spawn+wait rate,
//! with the server's CPU and the store traffic per run.
//!
//! `BENCH_AB=/path/to/other/runyard` measures two builds in turns instead: each round
//! runs the default binary ([`kit::runyard_bin`], `BENCH_BIN`) and the other, in the
//! order A B, then B A, and so on, and the summary gives the medians of each and of the
//! pairs' ratios. On a shared or virtual machine whose speed drifts between minutes (this
//! one's did by up to a third), only builds measured in turns compare.

use std::time::Instant;

use crate::{Server, counts, ingest, kit, median, store_traffic, wait_drained};

/// Raw spawn+wait rate of /bin/true with `parallel` threads.
fn raw_spawn_rate(n: usize, parallel: usize) -> f64 {
    crate::raw_rate(&["/bin/true"], n, parallel)
}

/// What one round measured.
struct Round {
    /// Runs per second, first trigger to last end.
    rate: f64,
    /// Runs per second after the ingest ended.
    exec_rate: f64,
    /// The machine's raw spawn+wait rate, measured just before.
    raw: f64,
    /// The server process's CPU per run (not its children's, nor PostgreSQL's), µs.
    server_us: f64,
}

pub(crate) async fn bench_throughput(pg: Option<&str>, runs: usize, rounds: usize) {
    let store = if pg.is_some() { "PostgreSQL" } else { "SQLite" };
    let other = std::env::var("BENCH_AB").ok().filter(|s| !s.is_empty());
    println!(
        "[throughput] end-to-end throughput on {store}: {runs} single-shard /bin/true runs, max_workers = 2{}",
        other.as_deref().map_or(String::new(), |b| format!(
            "; A = {}, B = {b}, in turns",
            kit::runyard_bin()
        ))
    );
    let Some(other) = other else {
        let mut measured: Vec<Round> = Vec::new();
        for round in 1..=rounds {
            measured.push(one_round(pg, runs, round, None).await);
        }
        let m_e2e = median(measured.iter().map(|r| r.rate).collect());
        let m_exec = median(measured.iter().map(|r| r.exec_rate).collect());
        let m_raw = median(measured.iter().map(|r| r.raw).collect());
        println!(
            "    median: {m_e2e:.0} runs/s end to end vs raw {m_raw:.0}/s = {:.0}% (target ≥ 75%); execution phase alone {m_exec:.0}/s = {:.0}%\n",
            100.0 * m_e2e / m_raw,
            100.0 * m_exec / m_raw
        );
        return;
    };
    let mut pairs: Vec<(Round, Round)> = Vec::new();
    for round in 1..=rounds {
        // A B, then B A: a drift within a pair falls on each build in turn.
        let (a, b) = if round % 2 == 1 {
            println!("    round {round}, A:");
            let a = one_round(pg, runs, round, None).await;
            println!("    round {round}, B:");
            (a, one_round(pg, runs, round, Some(&other)).await)
        } else {
            println!("    round {round}, B:");
            let b = one_round(pg, runs, round, Some(&other)).await;
            println!("    round {round}, A:");
            (one_round(pg, runs, round, None).await, b)
        };
        println!(
            "    round {round}: B / A = {:.2}× runs/s, {:.2}× server CPU per run",
            b.rate / a.rate,
            b.server_us / a.server_us
        );
        pairs.push((a, b));
    }
    let of = |pick: fn(&Round) -> f64, b: bool| {
        median(
            pairs
                .iter()
                .map(|(x, y)| pick(if b { y } else { x }))
                .collect(),
        )
    };
    let ratio =
        |pick: fn(&Round) -> f64| median(pairs.iter().map(|(a, b)| pick(b) / pick(a)).collect());
    let cheaper = pairs
        .iter()
        .filter(|(a, b)| b.server_us < a.server_us)
        .count();
    println!(
        "    median of {} pairs: A {:.0} runs/s, {:.0} µs server CPU per run, {:.2}× raw spawn; \
         B {:.0} runs/s, {:.0} µs, {:.2}× raw; B / A (median of the pairs' ratios) {:.2}× runs/s, {:.2}× server CPU; \
         B used less server CPU in {cheaper} of {} pairs\n",
        pairs.len(),
        of(|r| r.rate, false),
        of(|r| r.server_us, false),
        of(|r| r.rate / r.raw, false),
        of(|r| r.rate, true),
        of(|r| r.server_us, true),
        of(|r| r.rate / r.raw, true),
        ratio(|r| r.rate),
        ratio(|r| r.server_us),
        pairs.len()
    );
}

/// One round on `bin` (default: [`kit::runyard_bin`]), printed as it ends.
async fn one_round(pg: Option<&str>, runs: usize, round: usize, bin: Option<&str>) -> Round {
    let r = raw_spawn_rate(runs, 2);
    let server = Server::start_of(
        bin,
        pg,
        "max_workers = 2",
        "[pipelines.noop]\ncommand = [\"/bin/true\"]\n",
    )
    .await;
    let http = reqwest::Client::new();
    let (started, cpu0) = (Instant::now(), server.cpu_secs());
    let (machine0, pg0) = (
        kit::procfs::machine_cpu_secs(),
        kit::procfs::comm_cpu_secs("postgres"),
    );
    let (ingest_s, ids) = ingest(&server.base, "noop", runs, 16).await;
    let (q, running) = counts(&http, &server.base, "noop").await;
    let (left_after_ingest, ingest_done) = (q + running, Instant::now());
    wait_drained(&http, &server.base, "noop", &ids).await;
    let secs = started.elapsed().as_secs_f64();
    let cpu_per_run = (server.cpu_secs() - cpu0) / runs as f64;
    let machine_per_run = (kit::procfs::machine_cpu_secs() - machine0) / runs as f64;
    let pg_per_run = (kit::procfs::comm_cpu_secs("postgres") - pg0) / runs as f64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let rate = runs as f64 / secs;
    let exec_rate = left_after_ingest as f64 / ingest_done.elapsed().as_secs_f64();
    println!(
        "    round {round}: {rate:>5.0} runs/s end to end ({secs:.2} s, ingest {ingest_s:.2} s); after ingest {exec_rate:>5.0}/s; raw spawn+wait {r:>5.0}/s; ratio {:.0}% ({:.0}% after ingest); \
         server CPU {:.0} µs per run (its own process: not its children, nor PostgreSQL's)",
        100.0 * rate / r,
        100.0 * exec_rate / r,
        cpu_per_run * 1e6
    );
    println!(
        "        CPU per run: machine {:.0} µs (cores {:.0}% busy), of it PostgreSQL's processes {:.0} µs",
        machine_per_run * 1e6,
        machine_per_run * runs as f64 / secs / cores * 100.0,
        pg_per_run * 1e6
    );
    let traffic = store_traffic(&http, &server.base).await;
    let (mut trigger, mut drain) = ((0u64, 0u64), (0u64, 0u64));
    for (op, (st, co)) in &traffic {
        let side = if op == "run_create" {
            &mut trigger
        } else {
            &mut drain
        };
        side.0 += st;
        side.1 += co;
    }
    let per = |n: u64| n as f64 / runs as f64;
    println!(
        "        store traffic per run: trigger {:.2} statements / {:.2} commits; draining {:.2} statements / {:.2} commits ({})",
        per(trigger.0),
        per(trigger.1),
        per(drain.0),
        per(drain.1),
        traffic
            .iter()
            .map(|(op, (st, co))| format!("{op} {:.2}/{:.2}", per(*st), per(*co)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Round {
        rate,
        exec_rate,
        raw: r,
        server_us: cpu_per_run * 1e6,
    }
}
