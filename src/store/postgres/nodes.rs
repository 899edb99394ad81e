//! Nodes on PostgreSQL: registration, heartbeats (which also name the executions a
//! node must stop), removal, and the reads of nodes and of the jobs running on them.

use std::collections::HashMap;

use super::read::{rows, u32_of};
use super::views::running_job;
use super::{PgStore, StoreResult, in_tx};
use crate::store::{HeartbeatOutcome, NodeHeartbeatParams, NodeRow, RunningJob};

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

impl PgStore {
    pub(super) async fn read_nodes(&self) -> StoreResult<Vec<NodeRow>> {
        read!(self, c => rows(c, "SELECT id, host, pid, proc_start, boot_id, slots, started_at, heartbeat_at,
                                         COALESCE(name, ''), info
                                  FROM nodes ORDER BY started_at", &[])
            .await?
            .iter()
            .map(|r| NodeRow {
                id: r.get(0),
                host: r.get(1),
                pid: u32_of(r, 2),
                proc_start: r.get::<_, i64>(3) as u64,
                boot_id: r.get(4),
                slots: u32_of(r, 5),
                started_at: r.get(6),
                heartbeat_at: r.get(7),
                name: r.get(8),
                url: None,
                labels: Default::default(),
                config_digest: String::new(),
                capacity: Default::default(),
            }
            .with_info(r.get::<_, Option<String>>(9).as_deref()))
            .collect())
    }

    pub(super) async fn read_node_names(&self) -> StoreResult<HashMap<String, String>> {
        read!(self, c => rows(c, "SELECT id, name FROM node_names", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    pub(super) async fn read_running_on(&self, node_id: &str) -> StoreResult<Vec<RunningJob>> {
        read!(self, c => rows(c, "SELECT id, claim_seq, pid, proc_start, claimed_at FROM jobs
                                  WHERE node_id = $1 AND status = 'running'", &[&node_id])
            .await?
            .iter()
            .map(running_job)
            .collect())
    }

    pub(super) async fn read_running_unowned(&self) -> StoreResult<Vec<RunningJob>> {
        read!(self, c => rows(c, "SELECT id, claim_seq, pid, proc_start, claimed_at FROM jobs j
                                  WHERE status = 'running'
                                    AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.id = j.node_id)", &[])
            .await?
            .iter()
            .map(running_job)
            .collect())
    }

    pub(super) async fn read_abort_requested(
        &self,
        node_id: &str,
    ) -> StoreResult<Vec<(String, i64)>> {
        read!(self, c => rows(c, "SELECT id, claim_seq FROM jobs
                                  WHERE node_id = $1 AND status = 'running' AND abort_requested", &[&node_id])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }
}
