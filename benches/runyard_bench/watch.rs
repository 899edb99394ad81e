//! `watchers` and `log-viewers`: what watching costs the work it watches.
//!
//! - End-to-end throughput of `/bin/true` runs (as `throughput`, `max_workers = 2`) with no
//!   SSE client and with `BENCH_WATCHERS` idle `/api/events` clients (real sockets
//!   that read and discard), identity-encoded (as `curl -N`) and asking for gzip
//!   (as a browser's `EventSource` does), rounds alternating; the server's RSS
//!   before the clients, with them, after the runs and after they all closed; the
//!   server's CPU time during the runs.
//! - 100 busy jobs (a line every 20 ms, flushed every 100 ms, the fastest flush a
//!   config allows) with no viewer and then with one log-stream viewer per job: the
//!   server's CPU over the same window, as a share of one core.
//!
//! Server CPU is `utime + stime` of the server process from `/proc` (its jobs'
//! CPU is not in it). The clients run on the same cores as the server; a third
//! configuration runs them in a child process at `nice 19`, a stand-in for
//! clients on other machines (the dashboards of a real deployment), so what is
//! left is the server's own cost of watching.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::kit::{self, procfs};
use crate::{Server, counts, ingest, median, wait_drained};

/// CPU seconds (user + system) process `pid` has used.
fn cpu_secs(pid: u32) -> f64 {
    procfs::cpu_secs(pid).expect("the process is alive")
}

/// Waits until the server's `runyard_sse_clients` gauge says `n`.
async fn wait_clients(http: &reqwest::Client, base: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while kit::metric(http, base, "runyard_sse_clients").await != n {
        assert!(Instant::now() < deadline, "{n} SSE clients never showed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens an SSE client on each of `paths` that reads everything and discards it;
/// `headers` are extra request header lines (each ending in CRLF).
async fn open_readers(
    base: &str,
    paths: &[String],
    headers: &str,
    read: &Arc<AtomicU64>,
) -> JoinSet<()> {
    let addr = base.trim_start_matches("http://").to_string();
    let mut set = JoinSet::new();
    for path in paths {
        let mut sock = TcpStream::connect(&addr).await.unwrap();
        sock.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{headers}\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let read = read.clone();
        set.spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => read.fetch_add(n as u64, Ordering::Relaxed),
                };
            }
        });
    }
    set
}

/// The body of the niced reader process: `base|count` or `base|count|gzip`; opens
/// `count` `/api/events` readers, prints `ready`, and reads until killed (also a way
/// to hold clients on a server by hand, to profile it).
pub async fn reader_process(spec: &str) {
    let mut fields = spec.split('|');
    let (base, count) = (fields.next().unwrap(), fields.next().unwrap());
    let headers = match fields.next() {
        Some("gzip") => "Accept-Encoding: gzip\r\n",
        _ => "",
    };
    let paths = vec!["/api/events".to_string(); count.parse().unwrap()];
    let read = Arc::new(AtomicU64::new(0));
    let mut set = open_readers(base, &paths, headers, &read).await;
    println!("ready");
    while set.join_next().await.is_some() {}
}

/// What the clients of a round are.
#[derive(Clone, Copy, PartialEq)]
enum Audience {
    None,
    /// Identity-encoded streams (as `curl -N`), read in this process.
    Plain,
    /// `Accept-Encoding: gzip` (as every browser's `EventSource`), read in this process
    /// and not decompressed: like the plain ones, which do not parse SSE, they stand
    /// for a viewer whose own work is done on its own machine.
    Gzip,
    /// Identity-encoded, read by a child process at `nice 19`.
    Niced,
}

/// Clients of one round: in this process, or in a niced child process.
enum Readers {
    Here(JoinSet<()>, Arc<AtomicU64>),
    Niced(std::process::Child),
}

impl Readers {
    async fn open(base: &str, n: usize, audience: Audience) -> Readers {
        if audience == Audience::Niced {
            let child = std::process::Command::new("nice")
                .args(["-n", "19"])
                .arg(std::env::current_exe().unwrap())
                .env("RUNYARD_BENCH_READERS", format!("{base}|{n}"))
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            Readers::Niced(child)
        } else {
            let read = Arc::new(AtomicU64::new(0));
            let paths = vec!["/api/events".to_string(); n];
            let headers = match audience {
                Audience::Gzip => "Accept-Encoding: gzip, deflate, br, zstd\r\n",
                _ => "",
            };
            let set = open_readers(base, &paths, headers, &read).await;
            Readers::Here(set, read)
        }
    }

    /// Bytes read so far (only known for clients in this process).
    fn bytes(&self) -> Option<u64> {
        match self {
            Readers::Here(_, read) => Some(read.load(Ordering::Relaxed)),
            Readers::Niced(_) => None,
        }
    }

    async fn close(self) {
        match self {
            Readers::Here(mut set, _) => {
                set.abort_all();
                while set.join_next().await.is_some() {}
            }
            Readers::Niced(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub async fn bench_watchers(runs: usize, watchers: usize, rounds: usize) {
    println!(
        "[watchers] watchers: {runs} /bin/true runs (max_workers = 2) with 0 and with {watchers} idle /api/events clients"
    );
    let audiences = [
        Audience::None,
        Audience::Plain,
        Audience::Gzip,
        Audience::Niced,
    ];
    let mut rate = vec![Vec::new(); audiences.len()];
    let mut cpu = vec![Vec::new(); audiences.len()];
    let mut per_conn = Vec::new();
    let mut after_runs = Vec::new();
    let mut after_close = Vec::new();
    for round in 1..=rounds {
        for (k, audience) in audiences.into_iter().enumerate() {
            let clients = if audience == Audience::None {
                0
            } else {
                watchers
            };
            let server = Server::start(
                "max_workers = 2",
                "[pipelines.noop]\ncommand = [\"/bin/true\"]\n",
            )
            .await;
            let http = reqwest::Client::new();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let rss0 = server.rss_kib();
            let readers = Readers::open(&server.base, clients, audience).await;
            wait_clients(&http, &server.base, clients as u64).await;
            let rss1 = server.rss_kib();
            let cpu0 = cpu_secs(server.pid());
            let own0 = cpu_secs(std::process::id());
            let started = Instant::now();
            let (_, ids) = ingest(&server.base, "noop", runs, 16).await;
            wait_drained(&http, &server.base, "noop", &ids).await;
            let secs = started.elapsed().as_secs_f64();
            let used = cpu_secs(server.pid()) - cpu0;
            let own = cpu_secs(std::process::id()) - own0;
            let rss2 = server.rss_kib();
            let streamed = readers.bytes();
            readers.close().await;
            wait_clients(&http, &server.base, 0).await;
            // The lowest RSS within a while of the close (an allocator returns memory
            // in its own time).
            let mut rss3 = server.rss_kib();
            let settle = Instant::now();
            while settle.elapsed() < Duration::from_secs(RSS_SETTLE_SECS) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                rss3 = rss3.min(server.rss_kib());
            }
            let r = runs as f64 / secs;
            if clients > 0 {
                let pc = (rss1 as f64 - rss0 as f64) / clients as f64;
                let who = match audience {
                    Audience::Gzip => "gzip clients",
                    Audience::Niced => "niced clients",
                    _ => "clients",
                };
                let clients_cpu = match streamed {
                    Some(b) => format!(
                        "the bench's clients {own:.2} s, {:.1} MiB streamed",
                        b as f64 / (1 << 20) as f64
                    ),
                    None => "clients in a niced process".into(),
                };
                per_conn.push(pc);
                after_runs.push((rss2 as f64 - rss0 as f64) / 1024.0);
                after_close.push((rss3 as f64 - rss0 as f64) / 1024.0);
                println!(
                    "    round {round}, {clients} {who}: {r:>5.0} runs/s ({secs:.2} s), server CPU {used:.2} s ({clients_cpu}); RSS {:.1} MiB → {:.1} with clients ({pc:.1} KiB each) → {:.1} after the runs → {:.1} after they closed",
                    rss0 as f64 / 1024.0,
                    rss1 as f64 / 1024.0,
                    rss2 as f64 / 1024.0,
                    rss3 as f64 / 1024.0,
                );
            } else {
                println!(
                    "    round {round}, no clients: {r:>5.0} runs/s ({secs:.2} s), server CPU {used:.2} s (the bench {own:.2} s); RSS {:.1} MiB → {:.1} after the runs",
                    rss0 as f64 / 1024.0,
                    rss2 as f64 / 1024.0,
                );
            }
            rate[k].push(r);
            cpu[k].push(used);
        }
    }
    let rates: Vec<f64> = rate.iter().map(|r| median(r.clone())).collect();
    let cpus: Vec<f64> = cpu.iter().map(|c| median(c.clone())).collect();
    let share = |k: usize| 100.0 * rates[k] / rates[0];
    println!(
        "    median: {:.0} runs/s without clients; with {watchers} clients on the same cores: plain {:.0} = {:.0}%, gzip {:.0} = {:.0}%, plain niced {:.0} = {:.0}% (target ≥ 90%); server CPU {:.2} s / {:.2} s / {:.2} s / {:.2} s",
        rates[0],
        rates[1],
        share(1),
        rates[2],
        share(2),
        rates[3],
        share(3),
        cpus[0],
        cpus[1],
        cpus[2],
        cpus[3],
    );
    println!(
        "    RSS: {:.1} KiB per SSE connection; growth {:.1} MiB after the runs with {watchers} clients (target ≤ 50 MiB), {:.1} MiB once they closed (lowest within {RSS_SETTLE_SECS} s)\n",
        median(per_conn),
        median(after_runs),
        median(after_close),
    );
}

/// How long after the clients close the bench watches RSS fall.
const RSS_SETTLE_SECS: u64 = 5;

pub async fn bench_log_viewers(pg: Option<&str>, viewers: usize, rounds: usize) {
    let store = if pg.is_some() { "PostgreSQL" } else { "SQLite" };
    println!(
        "[log-viewers] log viewers on {store}: {viewers} busy jobs (a line every 20 ms, flushed every 100 ms), server CPU without and with one log-stream viewer per job"
    );
    let mut costs = Vec::new();
    for round in 1..=rounds {
        let server = Server::start_on(
            pg,
            &format!("max_workers = {viewers}\noutput_flush_interval_ms = 100"),
            "[pipelines.busy]\ncommand = [\"perl\", \"-e\", \"$|=1; print(qq(line $_ of busy output\\n)), select(undef, undef, undef, 0.02) for 1..1000000\"]\n",
        )
        .await;
        let http = reqwest::Client::new();
        let (_, ids) = ingest(&server.base, "busy", viewers, 4).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, running) = counts(&http, &server.base, "busy").await;
            if running as usize == viewers {
                break;
            }
            assert!(Instant::now() < deadline, "the busy jobs never all ran");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let window = Duration::from_secs(5);
        let measure = || async {
            let c0 = cpu_secs(server.pid());
            tokio::time::sleep(window).await;
            (cpu_secs(server.pid()) - c0) / window.as_secs_f64()
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let alone = measure().await;
        let paths: Vec<String> = ids
            .iter()
            .map(|id| format!("/api/jobs/{id}/logs/stream?tail=0"))
            .collect();
        let read = Arc::new(AtomicU64::new(0));
        let mut readers = open_readers(&server.base, &paths, "", &read).await;
        wait_clients(&http, &server.base, viewers as u64).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let watched = measure().await;
        readers.abort_all();
        while readers.join_next().await.is_some() {}
        let bytes = read.load(Ordering::Relaxed);
        let (_, job) = kit::get(&http, &format!("{}/api/jobs/{}", server.base, ids[0])).await;
        assert_eq!(job["status"], "running", "the busy jobs ran throughout");
        let cost = 100.0 * (watched - alone);
        println!(
            "    round {round}: server CPU {:.1}% of a core without viewers, {:.1}% with {viewers} ({:.1} MiB streamed): the viewers cost {cost:.1}% of a core",
            100.0 * alone,
            100.0 * watched,
            bytes as f64 / (1 << 20) as f64,
        );
        costs.push(cost);
    }
    println!(
        "    median: the viewers cost {:.1}% of a core (target < 10%)\n",
        median(costs)
    );
}
