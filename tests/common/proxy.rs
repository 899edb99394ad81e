//! A TCP fault proxy: sits between a server and PostgreSQL (or Redis) so a test can
//! fail one replica's database the ways networks fail, without touching the shared
//! database server other tests use:
//!
//! - [`FaultProxy::cut`]: every connection closed, new ones refused (a crashed or
//!   restarted server, a firewall that rejects);
//! - [`FaultProxy::hold`]: connections stay open and new ones are accepted, but no
//!   byte moves either way until the heal (a partition that drops packets; TCP
//!   delivers what was held once it ends);
//! - [`FaultProxy::cut_commits_every`]: every n-th PostgreSQL `COMMIT` reaches the
//!   server, but its answer does not: the connection closes right after (a commit
//!   whose outcome the client cannot know).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mode {
    /// Bumped on every cut: live connections close when it changes.
    generation: u64,
    /// New connections are refused.
    refusing: bool,
    /// Bytes wait in the proxy.
    holding: bool,
}

/// A running proxy to `upstream`.
pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    commits: Arc<Commits>,
}

/// The commit cutter: COMMITs seen, and every how many one is cut (0: none).
#[derive(Default)]
struct Commits {
    seen: AtomicU64,
    every: AtomicU64,
    cut: AtomicU64,
}

impl Commits {
    /// True when this COMMIT is to lose its answer.
    fn cut_this(&self) -> bool {
        let every = self.every.load(Ordering::SeqCst);
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        let cut = every > 0 && n.is_multiple_of(every);
        if cut {
            self.cut.fetch_add(1, Ordering::SeqCst);
        }
        cut
    }
}

/// A simple-protocol `COMMIT` query message, as tokio-postgres sends it.
const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";

impl FaultProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(Mode {
            generation: 0,
            refusing: false,
            holding: false,
        });
        let modes = mode.clone();
        let commits = Arc::new(Commits::default());
        let commits2 = commits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    break;
                };
                let watch = modes.subscribe();
                if watch.borrow().refusing {
                    drop(client); // refused: closed at once
                    continue;
                }
                tokio::spawn(forward(client, upstream, watch, commits2.clone()));
            }
        });
        FaultProxy {
            addr,
            mode,
            commits,
        }
    }

    /// From now on every `n`-th COMMIT (over all connections) is delivered but its
    /// answer is not: the connection closes. 0 stops it.
    pub fn cut_commits_every(&self, n: u64) {
        self.commits.every.store(n, Ordering::SeqCst);
    }

    /// COMMITs cut so far.
    pub fn commits_cut(&self) -> u64 {
        self.commits.cut.load(Ordering::SeqCst)
    }

    /// Closes every connection and refuses new ones until [`FaultProxy::heal`].
    pub fn cut(&self) {
        self.mode.send_modify(|m| {
            m.generation += 1;
            m.refusing = true;
            m.holding = false;
        });
    }

    /// Moves no byte on any connection, old or new, until [`FaultProxy::heal`].
    pub fn hold(&self) {
        self.mode.send_modify(|m| m.holding = true);
    }

    /// Accepts connections and moves bytes again.
    pub fn heal(&self) {
        self.mode.send_modify(|m| {
            m.refusing = false;
            m.holding = false;
        });
    }
}

async fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    commits: Arc<Commits>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let born = mode.borrow().generation;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Set when a COMMIT this connection carried is to lose its answer.
    let doomed = Arc::new(AtomicBool::new(false));
    tokio::select! {
        _ = pump(client_read, server_write, mode.clone(), born, Some(&commits), &doomed) => {}
        _ = pump(server_read, client_write, mode.clone(), born, None, &doomed) => {}
    }
}

/// Copies one direction, waiting while held; returns on EOF, an error or a cut. The
/// client-to-server side (`commits`) dooms the connection at a COMMIT that is to lose
/// its answer: the COMMIT is still sent, nothing moves after it, and the connection
/// closes once the server has had a moment to commit.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    born: u64,
    commits: Option<&Commits>,
    doomed: &AtomicBool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = mode.wait_for(|m| m.generation != born) => return,
        };
        // Held bytes wait here; a cut while holding closes the connection.
        let held = mode.wait_for(|m| !m.holding || m.generation != born).await;
        let Ok(m) = held.map(|m| *m) else {
            return;
        };
        if m.generation != born || doomed.load(Ordering::SeqCst) {
            return;
        }
        let cut = commits
            .is_some_and(|c| buf[..n].windows(COMMIT.len()).any(|w| w == COMMIT) && c.cut_this());
        if cut {
            doomed.store(true, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        if cut {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            return;
        }
    }
}
