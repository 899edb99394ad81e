//! Connections that cannot pin the server: a client that stops reading, or that
//! stops sending, is dropped.
//!
//! Responses (SSE streams above all) are written by hyper into the socket;
//! when a client stops reading, the socket buffer fills and every write stays
//! pending. Workers never wait on that (streams are fed by bounded broadcast
//! channels that lag and then replay from the store), but the connection and
//! its stream would live forever. [`GuardedStream`] fails a write that has
//! made no progress for `write_stall_timeout`, so hyper closes the connection
//! and the stream's resources (its permit, its subscription) are released.
//!
//! A read that stays pending fails once no byte moved either way for `idle`
//! (`client_idle_timeout`): a half-sent request, an idle keep-alive. SSE
//! streams write keep-alives every 15 s, so they never go idle.
//!
//! **Invariant: only bytes count as activity.** A read that returned data (or
//! end of file) and a write that accepted at least one byte move the idle clock;
//! nothing else does. hyper calls `poll_flush` on every turn of its loop, and a
//! flush of nothing is ready at once; when that counted, the wake-up of the
//! idle timer itself (which runs the loop) pushed the deadline forward, so a
//! connection whose timer had to be re-armed once (bytes after the first read
//! was pending: the first one or two bytes of a request line, before the
//! protocol is known) was never closed. Test:
//! `streams_and_connections::thousands_of_half_sent_requests_and_idle_keep_alives_all_close_within_the_idle_timeout`.
//!
//! How many connections may be open, and what happens past that, is
//! [`super::listen`]'s.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

/// A TCP stream whose stalled writes and idle reads fail.
pub struct GuardedStream {
    inner: TcpStream,
    stall: Duration,
    /// Armed while a write is pending; cleared when one makes progress.
    stalled: Option<Pin<Box<Sleep>>>,
    idle: Duration,
    /// Last time a read or a write moved bytes.
    last_activity: Instant,
    /// Armed while a read is pending: fires at the latest `last_activity + idle` (re-armed
    /// lazily when it fires early).
    idle_timer: Option<Pin<Box<Sleep>>>,
    /// This connection's place under the connection cap; returned when it closes.
    _slot: OwnedSemaphorePermit,
}

impl GuardedStream {
    /// Wraps an accepted socket: writes pending for longer than `stall` fail, reads fail
    /// after `idle` without traffic; `slot` is held until the stream is dropped.
    pub fn new(
        inner: TcpStream,
        stall: Duration,
        idle: Duration,
        slot: OwnedSemaphorePermit,
    ) -> GuardedStream {
        GuardedStream {
            inner,
            stall,
            stalled: None,
            idle,
            last_activity: Instant::now(),
            idle_timer: None,
            _slot: slot,
        }
    }

    /// Maps a pending write to an error once the stall limit has passed; a write that
    /// moved `moved` bytes (0 for a flush) counts as activity only if it moved some.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
        moved: impl Fn(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(r) => {
                self.stalled = None;
                if r.as_ref().is_ok_and(&moved) {
                    self.last_activity = Instant::now();
                }
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
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                // Data or end of file (a ready read of zero bytes into a buffer with room).
                if r.is_ok() && (buf.filled().len() > before || buf.remaining() > 0) {
                    self.last_activity = Instant::now();
                }
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
        self.guard(cx, poll, |n| *n > 0)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.guard(cx, poll, |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        // A flush moves no bytes of its own (TCP has no user-space buffer to empty).
        self.guard(cx, poll, |_| false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
