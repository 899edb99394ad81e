//! The webhook outbox and the per-node pipeline state, as SQL.
//!
//! Deliveries are leased like jobs: a node takes due rows for a lease period,
//! records each attempt (fenced on holding the lease), and either finishes the
//! row or sets its next attempt. A node that dies mid-delivery loses its lease
//! and another node retries: delivery is at least once, and the stable
//! `webhook-id` lets receivers drop duplicates.

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::{
    DeliveryAttemptRecord, DeliveryNext, DeliveryRecord, DeliveryRecordParams, PendingDelivery,
    PipelineNodeState, StoreResult,
};

/// Leases up to `limit` due deliveries to `node_id`.
pub(super) fn claim(
    conn: &Connection,
    node_id: &str,
    now: i64,
    lease_ms: i64,
    limit: usize,
) -> StoreResult<Vec<PendingDelivery>> {
    let rows = conn
        .prepare_cached(
            "UPDATE deliveries SET lease_node = ?1, lease_until = ?2 + ?3
             WHERE id IN (SELECT id FROM deliveries
                          WHERE status = 'pending' AND next_attempt_at <= ?2
                            AND (lease_until IS NULL OR lease_until < ?2)
                          ORDER BY next_attempt_at LIMIT ?4)
             RETURNING id, run_id, url, payload, attempts",
        )?
        .query_map(params![node_id, now, lease_ms, limit as i64], |r| {
            Ok(PendingDelivery {
                id: r.get(0)?,
                run_id: r.get(1)?,
                url: r.get(2)?,
                payload: r.get(3)?,
                attempts: r.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Records an attempt; false when `p.node_id` no longer holds the lease.
pub(super) fn record(conn: &Connection, p: &DeliveryRecordParams) -> StoreResult<bool> {
    let now = p.started_at + p.duration_ms as i64;
    let (status, next_at, finished) = match p.next {
        DeliveryNext::Delivered => ("delivered", None, Some(now)),
        DeliveryNext::RetryAt(at) => ("pending", Some(at), None),
        DeliveryNext::GiveUp => ("failed", None, Some(now)),
    };
    let attempt: Option<u32> = conn
        .prepare_cached(
            "UPDATE deliveries SET attempts = attempts + 1, status = ?3,
                    next_attempt_at = COALESCE(?4, next_attempt_at), finished_at = ?5,
                    last_status = ?6, last_error = ?7, lease_node = NULL, lease_until = NULL
             WHERE id = ?1 AND lease_node = ?2 AND status = 'pending'
             RETURNING attempts",
        )?
        .query_row(
            params![
                p.id,
                p.node_id,
                status,
                next_at,
                finished,
                p.status_code,
                p.error
            ],
            |r| r.get(0),
        )
        .optional()?;
    let Some(attempt) = attempt else {
        return Ok(false);
    };
    conn.prepare_cached(
        "INSERT INTO delivery_attempts (delivery_id, attempt, node_id, started_at, duration_ms, status_code, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        p.id,
        attempt,
        p.node_id,
        p.started_at,
        p.duration_ms as i64,
        p.status_code,
        p.error
    ])?;
    Ok(true)
}

/// A run's deliveries with their attempts.
pub(super) fn of_run(conn: &Connection, run_id: &str) -> StoreResult<Vec<DeliveryRecord>> {
    let mut out: Vec<DeliveryRecord> = conn
        .prepare_cached(
            "SELECT id, run_id, url, status, attempts, next_attempt_at, created_at, finished_at
             FROM deliveries WHERE run_id = ?1 ORDER BY created_at",
        )?
        .query_map(params![run_id], |r| {
            let status: String = r.get(3)?;
            let next: i64 = r.get(5)?;
            Ok(DeliveryRecord {
                id: r.get(0)?,
                run_id: r.get(1)?,
                url: r.get(2)?,
                next_attempt_at: (status == "pending").then_some(next),
                status,
                attempts: r.get(4)?,
                created_at: r.get(6)?,
                finished_at: r.get(7)?,
                history: Vec::new(),
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut attempts = conn.prepare_cached(
        "SELECT attempt, node_id, started_at, duration_ms, status_code, error
         FROM delivery_attempts WHERE delivery_id = ?1 ORDER BY attempt",
    )?;
    for d in &mut out {
        d.history = attempts
            .query_map(params![d.id], |r| {
                Ok(DeliveryAttemptRecord {
                    attempt: r.get(0)?,
                    node: r.get(1)?,
                    started_at: r.get(2)?,
                    duration_ms: r.get::<_, i64>(3)? as u64,
                    status_code: r.get(4)?,
                    error: r.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()?;
    }
    Ok(out)
}

/// Upserts one node's state for one pipeline.
pub(super) fn pipeline_node_set(conn: &Connection, s: &PipelineNodeState) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO pipeline_nodes (node_id, pipeline, setup, failures, circuit, open_until, last_error, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (node_id, pipeline) DO UPDATE SET setup = ?3, failures = ?4, circuit = ?5,
             open_until = ?6, last_error = ?7, updated_at = ?8",
    )?
    .execute(params![
        s.node_id,
        s.pipeline,
        s.setup,
        s.failures,
        s.circuit,
        s.open_until,
        s.last_error,
        s.updated_at
    ])?;
    Ok(())
}

/// States of registered nodes only (a removed node's rows are deleted with it).
pub(super) fn pipeline_nodes_list(conn: &Connection) -> StoreResult<Vec<PipelineNodeState>> {
    let rows = conn
        .prepare_cached(
            "SELECT p.node_id, p.pipeline, p.setup, p.failures, p.circuit, p.open_until, p.last_error, p.updated_at
             FROM pipeline_nodes p JOIN nodes n ON n.id = p.node_id ORDER BY p.pipeline, p.node_id",
        )?
        .query_map([], |r| {
            Ok(PipelineNodeState {
                node_id: r.get(0)?,
                pipeline: r.get(1)?,
                setup: r.get(2)?,
                failures: r.get(3)?,
                circuit: r.get(4)?,
                open_until: r.get(5)?,
                last_error: r.get(6)?,
                updated_at: r.get(7)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

use super::SqliteStore;

pub(super) async fn deliveries_claim(
    s: &SqliteStore,
    node_id: &str,
    now: i64,
    lease_ms: i64,
    limit: usize,
) -> StoreResult<Vec<PendingDelivery>> {
    let node_id = node_id.to_string();
    s.write("deliveries_claim", move |conn| {
        Ok((claim(conn, &node_id, now, lease_ms, limit)?, 0))
    })
    .await
}

pub(super) async fn delivery_record(s: &SqliteStore, p: DeliveryRecordParams) -> StoreResult<bool> {
    s.write("delivery_record", move |conn| Ok((record(conn, &p)?, 0)))
        .await
}

pub(super) async fn deliveries_of_run(
    s: &SqliteStore,
    run_id: &str,
) -> StoreResult<Vec<DeliveryRecord>> {
    let run_id = run_id.to_string();
    s.read(move |conn| of_run(conn, &run_id)).await
}
