//! Connections that cannot pin the server: a client that stops reading is dropped.
//!
//! Responses (SSE streams above all) are written by hyper into the socket;
//! when a client stops reading, the socket buffer fills and every write stays
//! pending. Workers never wait on that (streams are fed by bounded broadcast
//! channels that lag and then replay from the store), but the connection and
//! its stream would live forever. [`GuardedStream`] fails a write that has
//! made no progress for `write_stall_timeout`, so hyper closes the connection
//! and the stream's resources (its permit, its subscription) are released.
//! A connection on which nothing was read or written for `idle` is closed too
//! (a half-sent request, an idle keep-alive; SSE streams write keep-alives every
//! 15 s, so they never go idle), and at most [`MAX_CONNECTIONS`] are open at
//! once: past it, accepting waits, so descriptors stay for jobs' pipes.
//!
//! Tests: `access::a_client_that_never_reads_is_dropped_and_jobs_never_wait_on_it`,
//! `access::a_half_sent_request_is_closed_when_idle`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Most connections open at once.
pub const MAX_CONNECTIONS: usize = 4096;

/// A TCP listener whose connections time out stalled writes.
pub struct GuardedListener {
    inner: TcpListener,
    stall: Duration,
    idle: Duration,
    slots: Arc<Semaphore>,
}

impl GuardedListener {
    /// Wraps `inner`: writes pending for longer than `stall` fail, connections without
    /// traffic for `idle` close, at most [`MAX_CONNECTIONS`] at once.
    pub fn new(inner: TcpListener, stall: Duration, idle: Duration) -> GuardedListener {
        GuardedListener {
            inner,
            stall,
            idle,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the connection semaphore is never closed");
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (
                        GuardedStream {
                            inner: stream,
                            stall: self.stall,
                            stalled: None,
                            idle: self.idle,
                            last_activity: Instant::now(),
                            idle_timer: None,
                            _slot: permit,
                        },
                        addr,
                    );
                }
                // Per-connection errors (reset before accept) are the client's; resource
                // exhaustion (EMFILE) gets a pause instead of a busy loop.
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    tracing::error!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A TCP stream whose writes fail after making no progress for the stall limit.
pub struct GuardedStream {
    inner: TcpStream,
    stall: Duration,
    /// Armed while a write is pending; cleared when one makes progress.
    stalled: Option<Pin<Box<Sleep>>>,
    idle: Duration,
    /// Last time a read or a write made progress.
    last_activity: Instant,
    /// Armed while a read is pending: fires at the latest `last_activity + idle` (re-armed
    /// lazily when it fires early).
    idle_timer: Option<Pin<Box<Sleep>>>,
    /// This connection's place under [`MAX_CONNECTIONS`].
    _slot: OwnedSemaphorePermit,
}

impl GuardedStream {
    /// Maps a pending write to an error once the stall limit has passed.
    fn guard<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(r) => {
                self.stalled = None;
                self.last_activity = Instant::now();
                Poll::Ready(r)
            }
            Poll::Pending => {
                let stall = self.stall;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client stopped reading",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                self.last_activity = Instant::now();
                Poll::Ready(r)
            }
            Poll::Pending => {
                // The timer is re-armed lazily: only when it fires is it checked against
                // the latest activity, so busy connections cost no timer-wheel updates.
                let idle = self.idle;
                let last = self.last_activity;
                let timer = self
                    .idle_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(last + idle)));
                loop {
                    match timer.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(()) if Instant::now() >= last + idle => {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "connection idle",
                            )));
                        }
                        Poll::Ready(()) => timer.as_mut().reset(last + idle),
                    }
                }
            }
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.guard(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.guard(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.guard(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
