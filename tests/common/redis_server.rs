//! Redis for tests: the shared server's URL (`TEST_REDIS_URL`), a per-test channel
//! prefix so parallel tests never hear each other (pub/sub ignores database numbers),
//! and a private `redis-server` on a free port for tests that stop Redis — the
//! machine's shared server is never stopped.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The shared server's URL, or `None` with the visible skip line.
pub fn shared_url() -> Option<String> {
    match std::env::var("TEST_REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            println!("SKIPPED(service): TEST_REDIS_URL not set");
            None
        }
    }
}

/// A channel prefix no other test uses.
pub fn fresh_prefix() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "rt{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A raw client connection (what another service would use).
pub async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

/// `PUBLISH channel payload`; returns how many subscribers received it.
pub async fn publish(url: &str, channel: &str, payload: &str) -> i64 {
    let mut c = connect(url).await;
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async(&mut c)
        .await
        .unwrap()
}

/// True when `redis-server` and `redis-cli` are on PATH (a [`PrivateRedis`] can start).
pub fn available() -> bool {
    ["redis-server", "redis-cli"].iter().all(|bin| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A `redis-server` of this test's own, on its own port; killed when dropped.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// A port reserved for a server not started yet ([`PrivateRedis::start`]).
    pub fn on_free_port() -> PrivateRedis {
        PrivateRedis {
            port: super::free_port(),
            child: None,
        }
    }

    /// Starts one now, and waits until it answers.
    pub fn started() -> PrivateRedis {
        let mut r = Self::on_free_port();
        r.start();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port, and waits until it answers PING.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (Debian package redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = Command::new("redis-cli")
                .args(["-p", &self.port.to_string(), "ping"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG");
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "private redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: every connection drops at once) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `CLIENT KILL TYPE pubsub`: every subscriber of this server loses its connection.
    pub async fn kill_subscribers(&self) -> i64 {
        let mut c = connect(&self.url()).await;
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut c)
            .await
            .unwrap()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
