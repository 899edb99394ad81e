//! Giving a burst's memory back once its connections have closed.
//!
//! Each connection costs buffers (an SSE client about 12 KiB, see docs/security.md);
//! when a burst of them closes, glibc's malloc keeps the freed memory for
//! reuse, and the server stays larger for good (+11.6 MiB after 1,000 SSE
//! clients, measured by bench (h)). jemalloc's background purge returns it but
//! cost the job throughput of bench (a) about 13 %, so instead a watcher asks
//! glibc to give its free pages back (`malloc_trim`, which releases every
//! arena's free pages, not just the top of the heap) when the number of open
//! connections has fallen by at least [`BURST`] since its peak, on a blocking
//! thread, never on a request's path, and at most once per [`MIN_INTERVAL`]:
//! a trim walks every arena under its lock, and a server whose clients come
//! and go in waves should not pay for it every second.
//!
//! **Invariant: after a burst of connections closes, the server's RSS returns
//! to near what it was before the burst.** Test:
//! `streams_and_connections::memory_returns_near_its_baseline_after_a_burst_of_sse_clients_closes`.
//! On other C libraries the watcher does nothing.

use std::time::Duration;

/// Connections that must have closed since the peak before memory is trimmed.
pub const BURST: usize = 64;

/// How often the watcher looks at the number of open connections.
const CHECK: Duration = Duration::from_secs(1);

/// Least time between two trims.
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);

/// Watches `open()` (connections open now) until dropped, trimming after each burst.
pub async fn trim_after_bursts(open: impl Fn() -> usize) {
    let mut peak = open();
    let mut last_trim: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = open();
        peak = peak.max(now);
        let rested = last_trim.is_none_or(|t| t.elapsed() >= MIN_INTERVAL);
        if peak - now >= BURST && rested {
            peak = now;
            last_trim = Some(tokio::time::Instant::now());
            let started = std::time::Instant::now();
            if let Ok(released) = tokio::task::spawn_blocking(trim).await {
                tracing::debug!(
                    released,
                    took_us = started.elapsed().as_micros() as u64,
                    "trimmed the heap after {BURST}+ connections closed"
                );
            }
        }
    }
}

/// Returns free heap pages to the kernel; whether any were released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointers; glibc serialises it with every other
    // allocator call (it locks each arena in turn while it releases free pages).
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}
