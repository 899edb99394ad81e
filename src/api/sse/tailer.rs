//! The one reader of new events per process: it reads what the store committed when
//! its EVENTS feed changes, turns each read into one shared [`Batch`], and broadcasts it.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use tokio::sync::broadcast::{self};
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoredEvent, change};

use super::*;

/// How long the tailer waits for a change before it reads anyway (only while someone listens).
const BACKSTOP: std::time::Duration = std::time::Duration::from_secs(1);

/// Fans stored events out to this process's SSE clients.
#[derive(Clone)]
pub struct EventTailer {
    pub(super) tx: broadcast::Sender<Arc<Batch>>,
    /// Highest event id broadcast (or passed while nobody listened).
    pub(super) last: Arc<AtomicI64>,
    /// Open streams that are gzip: while there are any, the tailer deflates each batch
    /// before it is broadcast (on a blocking thread), so no client waits for another's.
    pub(super) gzip_clients: Arc<AtomicUsize>,
}

impl EventTailer {
    /// Starts tailing from the newest stored event.
    pub async fn start(store: Arc<dyn Store>, stop: CancellationToken) -> EventTailer {
        let (tx, _) = broadcast::channel(CHANNEL_BATCHES);
        let start = store.events_bounds().await.map(|(_, max)| max).unwrap_or(0);
        let tailer = EventTailer {
            tx,
            last: Arc::new(AtomicI64::new(start)),
            gzip_clients: Arc::new(AtomicUsize::new(0)),
        };
        let t = tailer.clone();
        tokio::spawn(async move {
            let mut feed = store.changes().subscribe(change::EVENTS);
            loop {
                // A change wakes it; so does the backstop, so an event whose wake-up was
                // missed (a read whose horizon a transaction ending at that moment held
                // lower than the change poll's, a read that failed) waits a second at most.
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = feed.changed() => if r.is_err() { break },
                    _ = tokio::time::sleep(BACKSTOP) => {}
                }
                // Nobody listens: read nothing, just move the cursor to the newest event
                // this process has committed. That id is loaded *before* the listener
                // check, so a client that subscribes after the check reads bounds at
                // least as new, and nothing it expects is skipped.
                let committed = store.changes().last_event();
                let clients = t.tx.receiver_count();
                if clients == 0 {
                    t.last.fetch_max(committed, Ordering::AcqRel);
                    continue;
                }
                loop {
                    let after = t.last.load(Ordering::Acquire);
                    let events = match store.events_after(after, TAILER_PAGE).await {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!("event tailer read failed: {e}");
                            break;
                        }
                    };
                    let full = events.len() == TAILER_PAGE;
                    if let Some(batch) = batch_of(after, &events) {
                        let batch = Arc::new(batch);
                        if t.gzip_clients.load(Ordering::Acquire) > 0 {
                            let b = batch.clone();
                            let _ = tokio::task::spawn_blocking(move || {
                                b.gzip();
                            })
                            .await;
                        }
                        t.last.fetch_max(batch.last(), Ordering::AcqRel);
                        let _ = t.tx.send(batch);
                    }
                    if !full {
                        break;
                    }
                }
                // Commits meanwhile mark the feed changed: the next round takes them all.
                let pace = (PACE_PER_CLIENT * clients as u32).clamp(MIN_PACE, MAX_PACE);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(pace) => {}
                }
            }
        });
        tailer
    }
}

/// The batch of the events after `after` (ids at or below it are dropped).
pub(super) fn batch_of(after: i64, events: &[StoredEvent]) -> Option<Batch> {
    let fresh: Vec<&StoredEvent> = events.iter().filter(|e| e.id > after).collect();
    if fresh.is_empty() {
        return None;
    }
    let mut wire = Vec::with_capacity(fresh.iter().map(|e| e.data.len() + 48).sum());
    let mut ids = Vec::with_capacity(fresh.len());
    let mut starts = Vec::with_capacity(fresh.len());
    for ev in fresh {
        starts.push(wire.len());
        ids.push(ev.id);
        write_stored(&mut wire, ev);
    }
    Some(Batch {
        prev: after,
        ids,
        starts,
        wire: Bytes::from(wire),
        gzip: OnceLock::new(),
    })
}
