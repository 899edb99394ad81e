//! The test kit, of the tests (`mod common;`) and the bench (`benches/runyard_bench.rs`
//! takes it as `mod kit;`): real servers (in-process on port 0, or the real binary as a
//! child process, [`BinServer`]) on fresh SQLite files or PostgreSQL schemas ([`pg`]), an
//! SSE event watcher to wait on, `/metrics` readers, `/proc` readers ([`procfs`]), a
//! private Redis ([`redis_server`]), replicas as hosts ([`hosts`]) and the fault proxy
//! ([`proxy`]). No sleeps as synchronisation: waits are on events or on a polled
//! condition, always with a timeout.
//!
//! Every target takes all of it and uses a part: `dead_code` is allowed here for that.
#![allow(dead_code)]
pub mod dns;
pub mod hosts;
pub mod pg;
pub mod procfs;
pub mod proxy;
pub mod redis_server;

// Re-exported where it always was; a target that does not use it would call it unused.
#[allow(unused_imports)]
pub use procfs::group_members;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;

/// The `[store]` table of a test config: none (SQLite in `data_dir`) unless the suite runs
/// with `TEST_STORE=postgres`, which puts every test on `TEST_DATABASE_URL` in a schema of
/// its own, `e2e_{pid}_{hash of its directory}` ([`pg::schema_name_keyed`]: a restart on
/// the same directory finds its store), kept afterwards.
pub fn store_section(dir: &Path) -> String {
    match std::env::var("TEST_STORE").as_deref() {
        Ok("postgres") => {
            let url = std::env::var("TEST_DATABASE_URL")
                .expect("TEST_STORE=postgres needs TEST_DATABASE_URL");
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            dir.hash(&mut h);
            let schema = pg::schema_name_keyed("e2e", format!("{:016x}", h.finish()));
            pg::store_table(&url, &schema, Some(6))
        }
        Ok("sqlite") | Err(_) => String::new(),
        Ok(other) => panic!("TEST_STORE={other}: expected sqlite or postgres"),
    }
}

/// A config's text: `[server]` with `data_dir` and the `server` keys, then `store` (a
/// `[store]` table, or nothing for SQLite in `data_dir`) and the rest (`[bus]`, pipelines).
pub fn config_text(data_dir: &Path, server: &str, store: &str, rest: &str) -> String {
    format!(
        "[server]\ndata_dir = \"{}\"\n{server}\n\n{store}\n{rest}\n",
        data_dir.display()
    )
}

/// Writes a config with the given `[server]` extras and pipelines into `dir`.
pub fn write_config(dir: &Path, server_extra: &str, pipelines: &str) -> PathBuf {
    let path = dir.join("runyard.toml");
    let text = config_text(
        &dir.join("data"),
        &format!("output_flush_interval_ms = 100\nkill_grace = \"500ms\"\n{server_extra}"),
        // A test that names its own store keeps it.
        &if server_extra.contains("[store]") {
            String::new()
        } else {
            store_section(dir)
        },
        pipelines,
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A server running in this test's runtime.
pub struct TestServer {
    pub base: String,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(server_extra: &str, pipelines: &str) -> TestServer {
        Self::start_in(tempfile::tempdir().unwrap(), server_extra, pipelines, &[]).await
    }

    /// A server whose config sees `env` as its environment.
    pub async fn start_env(
        server_extra: &str,
        pipelines: &str,
        env: &[(&str, &str)],
    ) -> TestServer {
        Self::start_in(tempfile::tempdir().unwrap(), server_extra, pipelines, env).await
    }

    /// A server on `dir` (e.g. a stopped server's, to restart on its store).
    pub async fn start_in(
        dir: tempfile::TempDir,
        server_extra: &str,
        pipelines: &str,
        env: &[(&str, &str)],
    ) -> TestServer {
        let path = write_config(dir.path(), server_extra, pipelines);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let settings = runyard::config::Settings::from_toml(
            &std::fs::read_to_string(&path).unwrap(),
            &path,
            &move |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
        )
        .expect("test config is valid");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(runyard::serve::run(settings, listener, async move {
            let _ = rx.await;
        }));
        TestServer {
            base: format!("http://{addr}"),
            dir,
            http: reqwest::Client::new(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Graceful stop; returns the server's directory (config and store) for a restart.
    pub async fn stop_keep(mut self) -> tempfile::TempDir {
        self.stop_inner().await;
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// Graceful stop; returns when the server has drained.
    pub async fn stop(mut self) {
        self.stop_inner().await;
    }

    async fn stop_inner(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("server stops")
                .unwrap()
                .unwrap();
        }
    }

    pub async fn trigger(&self, pipeline: &str, body: Value) -> (u16, Value) {
        post(
            &self.http,
            &format!("{}/api/pipelines/{pipeline}/trigger", self.base),
            body,
        )
        .await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        get(&self.http, &format!("{}{path}", self.base)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        post(&self.http, &format!("{}{path}", self.base), body).await
    }

    pub fn events(&self) -> EventWatcher {
        EventWatcher::connect(&self.base, 0)
    }

    /// Waits for the run to be finalised, via `run:completed`; returns the run.
    pub async fn wait_run(
        &self,
        events: &mut EventWatcher,
        run_id: &str,
        timeout: Duration,
    ) -> Value {
        events
            .wait_for("run:completed", |d| d["runId"] == run_id, timeout)
            .await;
        self.get(&format!("/api/runs/{run_id}")).await.1
    }
}

/// The text of `{base}/metrics`; `None` when the server does not answer.
pub async fn metrics_text(http: &reqwest::Client, base: &str) -> Option<String> {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// The value of the unlabelled metric `name` in a `/metrics` text.
pub fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The series of the labelled metric `name` in a `/metrics` text, summed by the value of
/// their label `label` (`runyard_store_statements_total` by `op`, …).
pub fn metric_by_label(
    text: &str,
    name: &str,
    label: &str,
) -> std::collections::BTreeMap<String, u64> {
    let (open, key) = (format!("{name}{{"), format!("{label}=\""));
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&open) else {
            continue;
        };
        let value = rest.split(&key).nth(1).and_then(|r| r.split('"').next());
        let n = rest.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok());
        if let (Some(value), Some(n)) = (value, n) {
            *out.entry(value.to_string()).or_default() += n;
        }
    }
    out
}

/// The value of an unlabelled metric in `{base}/metrics` (panics when it is missing).
pub async fn metric(http: &reqwest::Client, base: &str, name: &str) -> u64 {
    let text = metrics_text(http, base)
        .await
        .unwrap_or_else(|| panic!("no /metrics at {base}"));
    metric_value(&text, name).unwrap_or_else(|| panic!("no metric {name} at {base}"))
}

pub async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let resp = http.get(url).send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

pub async fn get_text(http: &reqwest::Client, url: &str) -> (u16, String) {
    let r = http.get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

pub async fn post(http: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let resp = http.post(url).json(&body).send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// One SSE message.
#[derive(Debug, Clone)]
pub struct Sse {
    pub id: Option<i64>,
    pub event: String,
    pub data: Value,
}

/// Reads an SSE stream into a channel.
pub fn sse_reader(url: String, last_event_id: Option<i64>) -> mpsc::UnboundedReceiver<Sse> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut req = http.get(&url);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let Ok(mut resp) = req.send().await else {
            return;
        };
        let mut buf = String::new();
        let (mut id, mut event, mut data) = (None, String::new(), String::new());
        while let Ok(Some(chunk)) = resp.chunk().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(nl) = buf.find('\n') {
                let line: String = buf.drain(..=nl).collect();
                let line = line.trim_end_matches('\n');
                if line.is_empty() {
                    if !event.is_empty() {
                        let msg = Sse {
                            id: id.take(),
                            event: std::mem::take(&mut event),
                            data: serde_json::from_str(&data).unwrap_or(Value::Null),
                        };
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                    data.clear();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                }
            }
        }
    });
    rx
}

/// Watches `/api/events` from an event id, keeping everything seen.
pub struct EventWatcher {
    rx: mpsc::UnboundedReceiver<Sse>,
    pub seen: Vec<Sse>,
}

impl EventWatcher {
    pub fn connect(base: &str, from: i64) -> EventWatcher {
        EventWatcher {
            rx: sse_reader(format!("{base}/api/events"), Some(from)),
            seen: Vec::new(),
        }
    }

    /// Waits for an event named `name` whose data satisfies `pred` (looking at already-seen ones first).
    pub async fn wait_for(
        &mut self,
        name: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Sse {
        if let Some(e) = self.seen.iter().find(|e| e.event == name && pred(&e.data)) {
            return e.clone();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "timed out after {timeout:?} waiting for {name}; seen {} events: {}",
                        self.seen.len(),
                        self.seen
                            .iter()
                            .map(|e| format!("{} {}", e.event, e.data))
                            .collect::<Vec<_>>()
                            .join("\n")
                    )
                })
                .expect("event stream ended");
            self.seen.push(msg.clone());
            if msg.event == name && pred(&msg.data) {
                return msg;
            }
        }
    }

    /// Waits until `n` events named `name` matching `pred` have been seen.
    pub async fn wait_count(
        &mut self,
        name: &str,
        pred: impl Fn(&Value) -> bool,
        n: usize,
        timeout: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self
            .seen
            .iter()
            .filter(|e| e.event == name && pred(&e.data))
            .count()
            < n
        {
            let msg = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out after {timeout:?} waiting for {n} {name}"))
                .expect("event stream ended");
            self.seen.push(msg);
        }
    }

    /// True while the stream is connected (nothing unexpected arrived, nothing ended it).
    pub fn is_open(&mut self) -> bool {
        match self.rx.try_recv() {
            Ok(msg) => {
                self.seen.push(msg);
                true
            }
            Err(mpsc::error::TryRecvError::Empty) => true,
            Err(mpsc::error::TryRecvError::Disconnected) => false,
        }
    }

    /// Events seen so far for a run.
    pub fn of_run<'a>(&'a self, run_id: &'a str) -> impl Iterator<Item = &'a Sse> + 'a {
        self.seen.iter().filter(move |e| e.data["runId"] == run_id)
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Now as nanoseconds since the epoch (what a job's `date +%s%N` prints).
pub fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Parses RFC 3339 `...T..:..:..mmmZ` timestamps into comparable milliseconds of the day (tests run within a day).
pub fn ts_ms(v: &Value) -> i64 {
    let s = v.as_str().expect("timestamp");
    let t = &s[11..23];
    let h: i64 = t[0..2].parse().unwrap();
    let m: i64 = t[3..5].parse().unwrap();
    let sec: i64 = t[6..8].parse().unwrap();
    let ms: i64 = t[9..12].parse().unwrap();
    let day: i64 = s[8..10].parse().unwrap();
    (((day * 24 + h) * 60 + m) * 60 + sec) * 1000 + ms
}

/// The most jobs whose [startedAt, finishedAt] intervals overlap at one instant.
pub fn max_overlap(jobs: &[Value]) -> usize {
    let mut points: Vec<(i64, i32)> = Vec::new();
    for j in jobs {
        if j["startedAt"].is_string() && j["finishedAt"].is_string() {
            points.push((ts_ms(&j["startedAt"]), 1));
            points.push((ts_ms(&j["finishedAt"]), -1));
        }
    }
    // Ends sort before starts at the same millisecond.
    points.sort();
    let (mut cur, mut best) = (0i32, 0i32);
    for (_, d) in points {
        cur += d;
        best = best.max(cur);
    }
    best as usize
}

/// The runyard binary to run: `RUNYARD_TEST_BIN` (the suite against another build, e.g. a
/// landed binary, to see a new test fail there) or `BENCH_BIN` (the bench measuring
/// another build) when set, else this build's.
pub fn runyard_bin() -> String {
    std::env::var("RUNYARD_TEST_BIN")
        .or_else(|_| std::env::var("BENCH_BIN"))
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_runyard").to_string())
}

/// Variables of the caller's environment a server would read, removed so that the
/// config file decides (hermetic servers).
pub const SERVER_ENV: [&str; 12] = [
    "DATABASE_URL",
    "MAX_WORKERS",
    "OUTPUT_FLUSH_INTERVAL_MS",
    "RUNYARD_DATABASE_URL",
    "REDIS_URL",
    "RUNYARD_REDIS_URL",
    "RUNYARD_MAX_WORKERS",
    "RUNYARD_MAX_WORKERS_GLOBAL",
    "RUNYARD_OUTPUT_FLUSH_INTERVAL_MS",
    "RUNYARD_DATA_DIR",
    "RUNYARD_LISTEN",
    "RUNYARD_CONFIG",
];

/// How [`BinServer::launch`] starts the binary.
#[derive(Clone, Copy)]
pub struct Launch<'a> {
    /// Its working directory (default: this process's).
    pub cwd: Option<&'a Path>,
    /// Extra environment variables.
    pub env: &'a [(&'a str, &'a str)],
    /// Its stderr: this file, or (`None`) this process's own stderr.
    pub log: Option<&'a Path>,
    /// `RUNYARD_LOG`.
    pub log_level: &'a str,
    /// When dropped: SIGTERM and a wait for the server to stop its jobs (SIGKILL after
    /// 15 s), not SIGKILL at once (whose jobs would outlive it).
    pub graceful_drop: bool,
    /// The binary (default: [`runyard_bin`]).
    pub bin: Option<&'a str>,
}

impl Default for Launch<'_> {
    fn default() -> Self {
        Launch {
            cwd: None,
            env: &[],
            log: None,
            log_level: "info",
            graceful_drop: false,
            bin: None,
        }
    }
}

/// The real binary ([`runyard_bin`]), serving `config` on a free port.
pub struct BinServer {
    pub child: Child,
    pub base: String,
    pub addr: SocketAddr,
    graceful_drop: bool,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl BinServer {
    pub async fn start(config: &Path, port: u16) -> BinServer {
        Self::start_env(config, port, &[]).await
    }

    /// Like [`BinServer::start`], with extra environment variables for the server.
    pub async fn start_env(config: &Path, port: u16, env: &[(&str, &str)]) -> BinServer {
        let log = config.with_extension(format!("{port}.log"));
        Self::start_from(None, config.to_str().unwrap(), &log, port, env).await
    }

    /// Started in `cwd` with `-c config` as given (e.g. a relative path, as the README does).
    pub async fn start_from(
        cwd: Option<&Path>,
        config: &str,
        log: &Path,
        port: u16,
        env: &[(&str, &str)],
    ) -> BinServer {
        let how = Launch {
            cwd,
            env,
            log: Some(log),
            ..Launch::default()
        };
        Self::launch(config, port, how).await
    }

    /// `runyard serve -c config --listen 127.0.0.1:port` as `how` says; returns once it
    /// answers `/healthz` (panics, with its log, if it exits or does not answer in 30 s).
    pub async fn launch(config: &str, port: u16, how: Launch<'_>) -> BinServer {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = Command::new(how.bin.map_or_else(runyard_bin, str::to_string));
        if let Some(dir) = how.cwd {
            cmd.current_dir(dir);
        }
        cmd.args(["serve", "-c", config, "--listen", &addr.to_string()])
            .env("RUNYARD_LOG", how.log_level);
        for var in SERVER_ENV {
            cmd.env_remove(var);
        }
        let stderr = match how.log {
            Some(log) => Stdio::from(std::fs::File::create(log).unwrap()),
            None => Stdio::inherit(),
        };
        let child = cmd
            .envs(how.env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn runyard");
        let mut server = BinServer {
            child,
            base: format!("http://{addr}"),
            addr,
            graceful_drop: how.graceful_drop,
        };
        let http = reqwest::Client::new();
        let url = format!("{}/healthz", server.base);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return server;
            }
            let log = || {
                how.log
                    .and_then(|l| std::fs::read_to_string(l).ok())
                    .unwrap_or_default()
            };
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("runyard exited before it answered ({status}):\n{}", log());
            }
            assert!(
                Instant::now() < deadline,
                "runyard did not answer within 30 s:\n{}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the process to exit, from blocking code; `None` when it still runs
    /// after `timeout`.
    pub fn wait_exit_blocking(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn peak_rss_kib(&self) -> u64 {
        procfs::peak_rss_kib(self.pid())
    }

    /// The server's resident memory now.
    pub fn rss_kib(&self) -> u64 {
        procfs::rss_kib(self.pid())
    }

    /// CPU seconds the server has used (its jobs' not counted).
    pub fn cpu_secs(&self) -> f64 {
        procfs::cpu_secs(self.pid()).unwrap_or(0.0)
    }
}

impl Drop for BinServer {
    fn drop(&mut self) {
        if self.graceful_drop && matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
            if self.wait_exit_blocking(Duration::from_secs(15)).is_some() {
                return;
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
