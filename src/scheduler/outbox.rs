//! The webhook outbox worker: delivers completion webhooks written by the
//! store in the transaction that made a run terminal.
//!
//! Every node runs one. It leases due rows (so two nodes never send the same
//! attempt), makes one attempt per row through [`Webhooks::deliver`] (which
//! re-resolves and re-checks the address and pins the connection to it),
//! records the attempt, and schedules the next with exponential backoff
//! (`[webhooks] retry_backoff` doubling, capped at 1 h) until
//! `max_attempts`. A node that dies mid-attempt loses its lease and another
//! node retries: delivery is at least once; the stable `webhook-id` lets
//! receivers deduplicate. Wakes on new events (a run turning terminal writes
//! one), at most every 200 ms, and polls as a backstop.
//!
//! Tests: `run_completion::webhook_is_signed_delivered_and_retried_with_visible_attempts`.

use std::sync::Arc;
use std::time::Duration;

use super::Inner;
use crate::metrics::Metrics;
use crate::store::{DeliveryNext, DeliveryRecordParams, PendingDelivery, change};
use crate::webhook::Webhooks;

/// Deliveries taken per lease.
const BATCH: usize = 16;
/// Longest wait between looks.
const POLL: Duration = Duration::from_secs(1);
/// Shortest wait between looks: events arrive at thousands a second under load, and a
/// look is a write transaction, so wake-ups are coalesced (a delivery waits ≤ this long).
const MIN_GAP: Duration = Duration::from_millis(200);

pub(super) async fn outbox_loop(inner: Arc<Inner>, webhooks: Arc<Webhooks>) {
    let mut events = inner.store.changes().subscribe(change::EVENTS);
    let settings = &inner.settings.webhooks;
    // An attempt is bounded by the webhook timeout; the lease outlives it comfortably.
    let lease_ms = (settings.timeout.as_millis() as i64) * 3 + 5_000;
    loop {
        events.borrow_and_update();
        let due = inner
            .store
            .deliveries_claim(&inner.node.id, inner.store.clock_ms(), lease_ms, BATCH)
            .await;
        match due {
            Ok(batch) if !batch.is_empty() => {
                let attempts = batch.into_iter().map(|d| attempt(&inner, &webhooks, d));
                futures_util::future::join_all(attempts).await;
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot read the webhook outbox: {e}"),
        }
        tokio::select! {
            _ = inner.stop_services.cancelled() => break,
            _ = events.changed() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
        tokio::select! {
            _ = inner.stop_services.cancelled() => break,
            _ = tokio::time::sleep(MIN_GAP) => {}
        }
    }
}

async fn attempt(inner: &Inner, webhooks: &Webhooks, d: PendingDelivery) {
    let started_at = inner.store.clock_ms();
    let outcome = webhooks.deliver(&d.id, &d.url, d.payload.as_bytes()).await;
    let settings = &inner.settings.webhooks;
    let attempts = d.attempts + 1;
    let next = if outcome.is_success() {
        DeliveryNext::Delivered
    } else if !outcome.retryable || attempts >= settings.max_attempts {
        DeliveryNext::GiveUp
    } else {
        let base = settings.retry_backoff.as_millis() as i64;
        // The same doubling as job retries: the wait before attempt `attempts + 1`.
        let delay = crate::store::transition::backoff_ms(base, attempts + 1);
        DeliveryNext::RetryAt(inner.store.clock_ms() + delay)
    };
    if next == DeliveryNext::Delivered {
        Metrics::add(&inner.metrics.webhooks_delivered, 1);
        tracing::info!(run = %d.run_id, delivery = %d.id, attempts, "webhook delivered");
    } else {
        Metrics::add(&inner.metrics.webhook_failures, 1);
        tracing::warn!(run = %d.run_id, delivery = %d.id, attempts, next = ?next,
            "webhook attempt failed: {}", outcome.error.as_deref().unwrap_or(""));
    }
    let record = DeliveryRecordParams {
        id: d.id.clone(),
        node_id: inner.node.id.clone(),
        started_at,
        duration_ms: outcome.duration_ms,
        status_code: outcome.status,
        error: outcome.error.clone(),
        next,
    };
    match inner.store.delivery_record(record).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(delivery = %d.id, "lease lost: another node owns this delivery now")
        }
        Err(e) => tracing::warn!(delivery = %d.id, "cannot record the webhook attempt: {e}"),
    }
}
