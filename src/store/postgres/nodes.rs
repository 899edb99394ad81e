//! Nodes on PostgreSQL: registration, heartbeats (which also name the executions a
//! node must stop) and removal.

use std::collections::HashMap;

use super::{PgStore, StoreResult, in_tx};
use crate::store::{HeartbeatOutcome, NodeHeartbeatParams, NodeRow};

pub(super) async fn node_register(s: &PgStore, node: NodeRow) -> StoreResult<()> {
    // A name held by another registered node fails the insert (unique index):
    // `StoreError::Conflict`, which the caller reports with that node's host and pid.
    in_tx!(s, "node_register", tx => {
        tx.exec(
            "INSERT INTO nodes (id, host, pid, proc_start, boot_id, slots, started_at, heartbeat_at, name, info)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULLIF($9, ''), $10)
             ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,
                 proc_start = EXCLUDED.proc_start, boot_id = EXCLUDED.boot_id, slots = EXCLUDED.slots,
                 started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at,
                 name = EXCLUDED.name, info = EXCLUDED.info",
            &[&node.id, &node.host, &(node.pid as i64), &(node.proc_start as i64), &node.boot_id,
              &(node.slots as i64), &node.started_at, &node.heartbeat_at, &node.name, &node.info_json()],
        )
        .await?;
        if !node.name.is_empty() {
            tx.exec(
                "INSERT INTO node_names (id, name, started_at) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name",
                &[&node.id, &node.name, &node.started_at],
            )
            .await?;
            tx.exec(
                "DELETE FROM node_names n WHERE n.started_at < $1
                   AND NOT EXISTS (SELECT 1 FROM nodes WHERE nodes.id = n.id)",
                &[&(node.started_at - crate::store::NODE_NAME_KEEP_MS)],
            )
            .await?;
        }
    })
}

pub(super) async fn node_heartbeat(
    s: &PgStore,
    p: NodeHeartbeatParams,
) -> StoreResult<HeartbeatOutcome> {
    let ids: Vec<&str> = p.running.iter().map(|(id, _)| id.as_str()).collect();
    in_tx!(s, "node_heartbeat", tx => {
        let registered = tx
            .exec("UPDATE nodes SET heartbeat_at = $2 WHERE id = $1", &[&p.node_id, &p.now])
            .await?
            == 1;
        let current: HashMap<String, (String, i64, bool)> = tx
            .query(
                "SELECT id, status, claim_seq, abort_requested FROM jobs WHERE id = ANY($1)",
                &[&ids],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
            .collect();
        let cancel = p
            .running
            .iter()
            .filter(|(id, claim_seq)| {
                !matches!(current.get(id), Some((status, c, abort))
                    if status == "running" && c == claim_seq && !abort)
            })
            .cloned()
            .collect();
        HeartbeatOutcome { registered, cancel }
    })
}

pub(super) async fn node_remove(s: &PgStore, node_id: &str) -> StoreResult<()> {
    in_tx!(s, "node_remove", tx => {
        tx.exec("DELETE FROM nodes WHERE id = $1", &[&node_id]).await?;
        tx.exec("DELETE FROM pipeline_nodes WHERE node_id = $1", &[&node_id]).await?;
    })
}

pub(super) async fn node_remove_stale(
    s: &PgStore,
    node_id: &str,
    seen_heartbeat_at: i64,
) -> StoreResult<bool> {
    in_tx!(s, "node_remove_stale", tx => {
        let removed = tx
            .exec("DELETE FROM nodes WHERE id = $1 AND heartbeat_at = $2", &[&node_id, &seen_heartbeat_at])
            .await?
            == 1;
        if removed {
            tx.exec("DELETE FROM pipeline_nodes WHERE node_id = $1", &[&node_id]).await?;
        }
        removed
    })
}
