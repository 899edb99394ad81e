//! Connections that cannot pin the server: a client that stops reading is dropped.
//!
//! Responses (SSE streams above all) are written by hyper into the socket;
//! when a client stops reading, the socket buffer fills and every write stays
//! pending. Workers never wait on that (streams are fed by bounded broadcast
//! channels that lag and then replay from the store), but the connection and
//! its stream would live forever. [`GuardedStream`] fails a write that has
//! made no progress for `write_stall_timeout`, so hyper closes the connection
//! and the stream's resources (its permit, its subscription) are released.
//! Idle keep-alive connections are untouched: only a pending write is timed.
//!
//! Test: `access::a_client_that_never_reads_is_dropped`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// A TCP listener whose connections time out stalled writes.
pub struct GuardedListener {
    inner: TcpListener,
    stall: Duration,
}

impl GuardedListener {
    /// Wraps `inner`; writes pending for longer than `stall` fail.
    pub fn new(inner: TcpListener, stall: Duration) -> GuardedListener {
        GuardedListener { inner, stall }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (
                        GuardedStream {
                            inner: stream,
                            stall: self.stall,
                            stalled: None,
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
}

impl GuardedStream {
    /// Maps a pending write to an error once the stall limit has passed.
    fn guard<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(r) => {
                self.stalled = None;
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
        Pin::new(&mut self.inner).poll_read(cx, buf)
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
