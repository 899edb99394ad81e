//! The webhook outbox on PostgreSQL: deliveries leased to one node at a time, and
//! their attempts recorded and read back per run.

use super::read::{rows, u32_of};
use super::{PgStore, StoreResult, in_tx};
use crate::store::{
    DeliveryAttemptRecord, DeliveryNext, DeliveryRecord, DeliveryRecordParams, PendingDelivery,
};

pub(super) async fn deliveries_claim(
    s: &PgStore,
    node_id: &str,
    now: i64,
    lease_ms: i64,
    limit: usize,
) -> StoreResult<Vec<PendingDelivery>> {
    in_tx!(s, "deliveries_claim", tx => {
        tx.query(
            "UPDATE deliveries SET lease_node = $1, lease_until = $2 + $3
             WHERE id IN (SELECT id FROM deliveries
                          WHERE status = 'pending' AND next_attempt_at <= $2
                            AND (lease_until IS NULL OR lease_until < $2)
                          ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED)
             RETURNING id, run_id, url, payload, attempts",
            &[&node_id, &now, &lease_ms, &(limit as i64)],
        )
        .await?
        .iter()
        .map(|r| PendingDelivery {
            id: r.get(0),
            run_id: r.get(1),
            url: r.get(2),
            payload: r.get(3),
            attempts: r.get::<_, i64>(4) as u32,
        })
        .collect()
    })
}

pub(super) async fn delivery_record(s: &PgStore, p: DeliveryRecordParams) -> StoreResult<bool> {
    let now = p.started_at + p.duration_ms as i64;
    let (status, next_at, finished) = match p.next {
        DeliveryNext::Delivered => ("delivered", None, Some(now)),
        DeliveryNext::RetryAt(at) => ("pending", Some(at), None),
        DeliveryNext::GiveUp => ("failed", None, Some(now)),
    };
    let code = p.status_code.map(i64::from);
    in_tx!(s, "delivery_record", tx => {
        let attempt = tx
            .query_opt(
                "UPDATE deliveries SET attempts = attempts + 1, status = $3,
                        next_attempt_at = COALESCE($4, next_attempt_at), finished_at = $5,
                        last_status = $6, last_error = $7, lease_node = NULL, lease_until = NULL
                 WHERE id = $1 AND lease_node = $2 AND status = 'pending'
                 RETURNING attempts",
                &[&p.id, &p.node_id, &status, &next_at, &finished, &code, &p.error],
            )
            .await?;
        match attempt {
            None => false,
            Some(r) => {
                let attempt: i64 = r.get(0);
                tx.exec(
                    "INSERT INTO delivery_attempts (delivery_id, attempt, node_id, started_at, duration_ms, status_code, error)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[&p.id, &attempt, &p.node_id, &p.started_at, &(p.duration_ms as i64), &code, &p.error],
                )
                .await?;
                true
            }
        }
    })
}

impl PgStore {
    pub(super) async fn read_deliveries(&self, run_id: &str) -> StoreResult<Vec<DeliveryRecord>> {
        read!(self, c => {
            let mut out: Vec<DeliveryRecord> = rows(
                c,
                "SELECT id, run_id, url, status, attempts, next_attempt_at, created_at, finished_at
                 FROM deliveries WHERE run_id = $1 ORDER BY created_at",
                &[&run_id],
            )
            .await?
            .iter()
            .map(|r| {
                let status: String = r.get(3);
                let next: i64 = r.get(5);
                DeliveryRecord {
                    id: r.get(0),
                    run_id: r.get(1),
                    url: r.get(2),
                    next_attempt_at: (status == "pending").then_some(next),
                    status,
                    attempts: u32_of(r, 4),
                    created_at: r.get(6),
                    finished_at: r.get(7),
                    history: Vec::new(),
                }
            })
            .collect();
            for d in out.iter_mut() {
                d.history = rows(
                    c,
                    "SELECT attempt, node_id, started_at, duration_ms, status_code, error
                     FROM delivery_attempts WHERE delivery_id = $1 ORDER BY attempt",
                    &[&d.id],
                )
                .await?
                .iter()
                .map(|r| DeliveryAttemptRecord {
                    attempt: u32_of(r, 0),
                    node: r.get(1),
                    started_at: r.get(2),
                    duration_ms: r.get::<_, i64>(3) as u64,
                    status_code: r.get::<_, Option<i64>>(4).map(|v| v as u16),
                    error: r.get(5),
                })
                .collect();
            }
            out
        })
    }
}
