//! The HTTP/1 server loop: accept, cap, serve, drain.
//!
//! It replaces `axum::serve` for three things that one cannot configure:
//!
//! - **Accepting never waits.** Below `max_connections` a connection is served
//!   normally. At the cap it is not left in the kernel's backlog (where a
//!   client hangs until it gives up): up to [`SPARE_CONNECTIONS`] more are
//!   served one request each, with a short header deadline — `/healthz` is
//!   answered as usual, anything else is a 503 JSON `too many connections` —
//!   and past those a connection is closed at once. So at the cap new clients
//!   are refused within a round trip, `/healthz` stays answerable, and jobs,
//!   which never wait on connections, are unaffected.
//! - **A request head must arrive whole within `client_idle_timeout`**
//!   (hyper's `header_read_timeout`, which needs a timer `axum::serve` does not
//!   give it): a client that drips a byte now and then cannot hold a slot.
//!   Bodies have their own deadline (`api::body`).
//! - **Every connection is tracked**, so the drain after shutdown waits for
//!   them (SSE streams end when the server's shutdown token is cancelled).
//!
//! While it serves, [`super::memory`] watches the number of open connections
//! and gives a closed burst's memory back.
//!
//! Tests: `streams_and_connections::at_the_connection_cap_new_clients_are_refused_quickly_healthz_answers_and_jobs_run_on`,
//! `streams_and_connections::thousands_of_half_sent_requests_and_idle_keep_alives_all_close_within_the_idle_timeout`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use super::conn::GuardedStream;

/// Connections served past the cap, one request each, so `/healthz` stays answerable
/// and refused clients hear why.
pub const SPARE_CONNECTIONS: usize = 64;

/// Longest a spare connection may take to send its request head.
const SPARE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// The limits connections are served under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once (`max_connections`).
    pub max_connections: usize,
    /// A write pending this long fails (`client_write_timeout`).
    pub write_stall: Duration,
    /// No traffic for this long, or a request head not whole after it, closes the
    /// connection (`client_idle_timeout`).
    pub idle: Duration,
}

/// Which kind of connection a socket got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Under the cap: every route, keep-alive.
    Normal,
    /// Past the cap: `/healthz` or a 503, then close.
    Spare,
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, asks
/// every connection to finish its current request and close, and returns when all have.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Stops with this function, however it ends.
    let _trimmer = {
        let slots = slots.clone();
        let cap = limits.max_connections;
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(super::memory::trim_after_bursts(
            move || cap - slots.available_permits(),
        )))
    };
    let spares = Arc::new(Semaphore::new(SPARE_CONNECTIONS));
    let tracker = TaskTracker::new();
    let (closing_tx, closing) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => r,
        };
        let tcp = match accepted {
            Ok((tcp, _addr)) => tcp,
            // Per-connection errors (reset before accept) are the client's; resource
            // exhaustion (EMFILE) gets a pause instead of a busy loop.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                tracing::error!("accept failed: {e}");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        let (slot, admission) = match slots.clone().try_acquire_owned() {
            Ok(slot) => (slot, Admission::Normal),
            Err(_) => match spares.clone().try_acquire_owned() {
                Ok(slot) => (slot, Admission::Spare),
                // Closed at once: the client sees the connection end instead of hanging.
                Err(_) => continue,
            },
        };
        let io = TokioIo::new(GuardedStream::new(
            tcp,
            limits.write_stall,
            limits.idle,
            slot,
        ));
        let router = router.clone();
        let closing = closing.clone();
        tracker.spawn(async move {
            match admission {
                Admission::Normal => {
                    let svc = router.map_request(|req: Request<Incoming>| req.map(Body::new));
                    drive(io, svc, limits.idle, true, closing).await;
                }
                Admission::Spare => {
                    let svc = tower::service_fn(move |req: Request<Incoming>| {
                        let router = router.clone();
                        async move {
                            if req.uri().path() == "/healthz" {
                                router.oneshot(req.map(Body::new)).await
                            } else {
                                Ok::<_, Infallible>(too_many_connections())
                            }
                        }
                    });
                    let header_timeout = SPARE_HEADER_TIMEOUT.min(limits.idle);
                    drive(io, svc, header_timeout, false, closing).await;
                }
            }
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Serves one connection until it ends, or finishes it gracefully once `closing` is set.
async fn drive<S>(
    io: TokioIo<GuardedStream>,
    svc: S,
    header_timeout: Duration,
    keep_alive: bool,
    mut closing: watch::Receiver<bool>,
) where
    S: tower::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(keep_alive);
    let conn = builder.serve_connection(io, TowerToHyperService::new(svc));
    let mut conn = std::pin::pin!(conn);
    let mut asked = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::trace!("connection ended: {e}");
                }
                return;
            }
            changed = closing.changed(), if !asked => {
                asked = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// The answer on a spare connection for anything but `/healthz`.
fn too_many_connections() -> Response<Body> {
    Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::RETRY_AFTER, "1")
        .header(header::CONNECTION, "close")
        .body(Body::from(
            r#"{"error":"too many connections; try again later"}"#,
        ))
        .expect("a static response is valid")
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
