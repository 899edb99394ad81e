//! A TCP fault proxy: sits between a server and PostgreSQL (or Redis) so a test can
//! fail one replica's database the ways networks fail, without touching the shared
//! database server other tests use:
//!
//! - [`FaultProxy::cut`]: every connection closed, new ones refused (a crashed or
//!   restarted server, a firewall that rejects);
//! - [`FaultProxy::hold`]: connections stay open and new ones are accepted, but no
//!   byte moves either way until the heal (a partition that drops packets; TCP
//!   delivers what was held once it ends).

use std::net::SocketAddr;

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
}

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
                tokio::spawn(forward(client, upstream, watch));
            }
        });
        FaultProxy { addr, mode }
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

async fn forward(client: TcpStream, upstream: SocketAddr, mode: watch::Receiver<Mode>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let born = mode.borrow().generation;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        _ = pump(client_read, server_write, mode.clone(), born) => {}
        _ = pump(server_read, client_write, mode.clone(), born) => {}
    }
}

/// Copies one direction, waiting while held; returns on EOF, an error or a cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    born: u64,
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
        if m.generation != born || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
