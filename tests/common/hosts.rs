//! Replicas as hosts: each `runyard serve` runs in its own UTS and PID namespace
//! (`unshare --uts --pid --fork --mount-proc --kill-child`), so it has a host name
//! of its own, it is pid 1 of its namespace, and killing it kills every job it
//! started the way a host crash does. Between each replica and PostgreSQL sits a
//! [`FaultProxy`] to cut that one replica off; `faketime` skews one replica's wall
//! clock. Needs root (CI runs as root); without it, tests print `SKIPPED(privilege)`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pg::Schema;
use super::proxy::FaultProxy;
use super::{eventually, free_port, get, procfs};

// Where the host tests have always taken it from.
#[allow(unused_imports)]
pub use super::now_ns;

/// True when this process may make namespaces; prints the skip line otherwise.
pub fn can_unshare() -> bool {
    let ok = Command::new("unshare")
        .args([
            "--uts",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "true",
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("SKIPPED(privilege): unshare --pid needs root (CAP_SYS_ADMIN)");
    }
    ok
}

/// Debian's libfaketime (package `faketime`).
pub const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// How a host's clock differs (faketime's offset, e.g. `+30s`), if it does.
pub type Skew = Option<&'static str>;

/// One replica on a host of its own.
pub struct Host {
    pub name: String,
    pub base: String,
    /// The `unshare` process, whose only child is the replica (pid 1 inside).
    unshare: Child,
    pub log: PathBuf,
}

impl Host {
    /// Starts `runyard serve -c config` as host `name`, and waits until it answers.
    pub async fn start(name: &str, config: &Path, skew: Skew) -> Host {
        let port = free_port();
        let log = config.with_extension(format!("{name}.log"));
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--uts",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "sh",
            "-c",
        ]);
        let serve = format!(
            "hostname {name} && exec {bin} serve -c {config} --listen 127.0.0.1:{port}",
            bin = super::runyard_bin(),
            config = config.display(),
        );
        cmd.arg(serve).env("RUNYARD_LOG", "info");
        if let Some(offset) = skew {
            // libfaketime itself: the `faketime` wrapper's semaphore is named after its
            // pid, which is 1 in every namespace. Only the wall clock is skewed:
            // monotonic time is a machine's own, whatever its wall clock says.
            cmd.env("LD_PRELOAD", FAKETIME_LIB)
                .env("FAKETIME", offset)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_NO_CACHE", "1");
        }
        for var in super::SERVER_ENV {
            cmd.env_remove(var);
        }
        let unshare = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("spawn unshare");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let url = format!("{base}/healthz");
        let started = Instant::now();
        loop {
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "host {name} did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Host {
            name: name.to_string(),
            base,
            unshare,
            log,
        }
    }

    /// The replica's pid as this (the outer) namespace sees it.
    pub fn server_pid(&self) -> u32 {
        procfs::children(self.unshare.id())
            .first()
            .copied()
            .expect("unshare has its replica as child")
    }

    /// The replica and every process under it (its jobs), outer pids.
    pub fn tree(&self) -> Vec<u32> {
        let mut out = vec![self.server_pid()];
        let mut i = 0;
        while i < out.len() {
            out.extend(procfs::children(out[i]));
            i += 1;
        }
        out
    }

    /// A host crash: SIGKILL to the replica, pid 1 of its namespace, so the kernel
    /// kills everything in it; returns when the namespace is gone.
    pub fn crash(&mut self) {
        signal(self.server_pid(), "KILL");
        let _ = self.unshare.wait();
    }

    /// The whole host stops (every process in it, as a paused VM); returns what was stopped.
    pub fn freeze(&self) -> Vec<u32> {
        let tree = self.tree();
        for p in &tree {
            signal(*p, "STOP");
        }
        tree
    }

    /// Resumes what [`Host::freeze`] stopped.
    pub fn thaw(&self, frozen: &[u32]) {
        for p in frozen {
            signal(*p, "CONT");
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Ok(None) = self.unshare.try_wait() {
            if let Ok(tree) = std::panic::catch_unwind(|| self.tree()) {
                for p in &tree {
                    signal(*p, "CONT");
                }
            }
            let _ = self.unshare.kill();
            let _ = self.unshare.wait();
        }
    }
}

/// `kill -sig pid`, quietly (the process may be gone already).
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Hosts sharing one PostgreSQL schema, each through a proxy of its own.
pub struct Cluster {
    pub hosts: Vec<Host>,
    pub proxies: Vec<FaultProxy>,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    /// `hosts_{pid}_{n}` ([`super::pg::schema_name`]), dropped after the hosts.
    schema: Schema,
    server: String,
    pipelines: String,
    bus: String,
    started: usize,
}

impl Cluster {
    /// `n` hosts with `server` extra `[server]` keys, `pipelines`, an optional bus
    /// (`redis` URL), and per-host clock skews.
    pub async fn start(
        pg: &str,
        redis: Option<&str>,
        n: usize,
        server: &str,
        pipelines: &str,
        skews: &[Skew],
    ) -> Cluster {
        let schema = Schema::new(pg, "hosts");
        let bus = redis.map_or(String::new(), |url| {
            format!(
                "[bus]\nurl = \"{url}\"\nprefix = \"{}\"\n",
                super::redis_server::fresh_prefix()
            )
        });
        let mut c = Cluster {
            hosts: Vec::new(),
            proxies: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            http: reqwest::Client::new(),
            schema,
            server: server.to_string(),
            pipelines: pipelines.to_string(),
            bus,
            started: 0,
        };
        for i in 0..n {
            let skew = skews.get(i).copied().flatten();
            c.add_host(skew).await;
        }
        c
    }

    /// Starts one more host (a new machine, or a crashed one coming back), through a
    /// proxy of its own; returns its index.
    pub async fn add_host(&mut self, skew: Skew) -> usize {
        self.add_host_with(skew, "").await
    }

    /// [`Cluster::add_host`] with `[server]` keys of this host only (its name, labels).
    pub async fn add_host_with(&mut self, skew: Skew, own_server: &str) -> usize {
        let i = self.started;
        self.started += 1;
        let proxy = FaultProxy::start(upstream(&self.schema.url)).await;
        let mut url = url::Url::parse(&self.schema.url).unwrap();
        url.set_host(Some(&proxy.addr.ip().to_string())).unwrap();
        url.set_port(Some(proxy.addr.port())).unwrap();
        let name = format!("host-{i}");
        let config = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            super::config_text(
                &self.dir.path().join(&name),
                &format!(
                    "output_flush_interval_ms = 100\nkill_grace = \"500ms\"\n{}\n{own_server}",
                    self.server
                ),
                &super::pg::store_table(url.as_str(), &self.schema.name, Some(4)),
                &format!("{}\n{}", self.bus, self.pipelines),
            ),
        )
        .unwrap();
        self.hosts.push(Host::start(&name, &config, skew).await);
        self.proxies.push(proxy);
        self.hosts.len() - 1
    }

    pub fn base(&self, i: usize) -> &str {
        &self.hosts[i].base
    }

    /// Every host's own `/metrics` counter `name` (0 for hosts that are down).
    pub async fn counter(&self, i: usize, name: &str) -> u64 {
        super::metrics_text(&self.http, self.base(i))
            .await
            .and_then(|text| super::metric_value(&text, name))
            .unwrap_or(0)
    }

    /// Waits until `n` nodes are registered (as seen by host `via`).
    pub async fn wait_nodes(&self, via: usize, n: usize) {
        eventually(Duration::from_secs(30), "the nodes to register", || async {
            let (_, w) = get(&self.http, &format!("{}/api/workers", self.base(via))).await;
            w["workers"].as_array().is_some_and(|a| a.len() == n)
        })
        .await;
    }
}

impl Drop for Cluster {
    /// The hosts go first; then the schema (its field's own drop).
    fn drop(&mut self) {
        self.hosts.clear();
    }
}

fn upstream(url: &str) -> std::net::SocketAddr {
    let u = url::Url::parse(url).unwrap();
    let host = match u.host_str().unwrap_or("127.0.0.1") {
        "localhost" => "127.0.0.1",
        h => h,
    };
    format!("{host}:{}", u.port().unwrap_or(5432))
        .parse()
        .unwrap()
}

/// One execution's own record: the job script appends `date +%s%N` to
/// `{dir}/{job}.{claim_seq}` while it runs.
#[derive(Debug, Clone)]
pub struct Execution {
    pub job: String,
    pub claim_seq: i64,
    pub first_ns: u128,
    pub last_ns: u128,
}

/// Every execution recorded in `dir`.
pub fn executions(dir: &Path) -> Vec<Execution> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some((job, seq)) = name.rsplit_once('.') else {
            continue;
        };
        let Ok(claim_seq) = seq.parse() else { continue };
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let ticks: Vec<u128> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if let (Some(first), Some(last)) = (ticks.first(), ticks.last()) {
            out.push(Execution {
                job: job.to_string(),
                claim_seq,
                first_ns: *first,
                last_ns: *last,
            });
        }
    }
    out
}

/// Most executions that overlapped in time, from their own first and last ticks.
pub fn max_overlap_ticks(execs: &[Execution]) -> usize {
    let mut points: Vec<(u128, i32)> = Vec::new();
    for e in execs {
        points.push((e.first_ns, 1));
        points.push((e.last_ns, -1));
    }
    points.sort();
    let (mut cur, mut best) = (0i32, 0i32);
    for (_, d) in points {
        cur += d;
        best = best.max(cur);
    }
    best as usize
}

/// A pipeline `name` whose job ticks into `dir` every 20 ms for `secs` seconds.
pub fn ticking_pipeline(name: &str, dir: &Path, secs: f64, extra: &str) -> String {
    let n = (secs / 0.02).ceil() as u64;
    format!(
        "[pipelines.{name}]\ncommand = [\"sh\", \"-c\", \"f={}/$RUNYARD_JOB_ID.$RUNYARD_CLAIM_SEQ; i=0; \
         while [ $i -lt {n} ]; do date +%s%N >> $f; i=$((i+1)); sleep 0.02; done\"]\n{extra}\n",
        dir.display()
    )
}
