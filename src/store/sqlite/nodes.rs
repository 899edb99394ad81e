//! Nodes on SQLite: registration, heartbeats (which name the executions a node must
//! stop), removal, and the jobs recovery looks at.

use super::*;

pub(super) async fn node_register(s: &SqliteStore, node: NodeRow) -> StoreResult<()> {
    s.write("node_register", move |conn| {
        // A name held by another registered node fails the insert (unique index):
        // `StoreError::Conflict`, which the caller reports with that node's host and pid.
        conn.prepare_cached(
            "INSERT INTO nodes (id, host, pid, proc_start, boot_id, slots, started_at, heartbeat_at, name, info)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULLIF(?9, ''), ?10)
             ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,
                 proc_start = excluded.proc_start, boot_id = excluded.boot_id, slots = excluded.slots,
                 started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
                 name = excluded.name, info = excluded.info",
        )?
        .execute(params![
            node.id,
            node.host,
            node.pid,
            node.proc_start as i64,
            node.boot_id,
            node.slots,
            node.started_at,
            node.heartbeat_at,
            node.name,
            node.info_json()
        ])?;
        if !node.name.is_empty() {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO node_names (id, name, started_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![node.id, node.name, node.started_at])?;
            conn.prepare_cached(
                "DELETE FROM node_names WHERE started_at < ?1 AND id NOT IN (SELECT id FROM nodes)",
            )?
            .execute(params![node.started_at - NODE_NAME_KEEP_MS])?;
        }
        Ok(((), 0))
    })
    .await
}

pub(super) async fn node_names(s: &SqliteStore) -> StoreResult<HashMap<String, String>> {
    s.read(|conn| {
        Ok(conn
            .prepare_cached("SELECT id, name FROM node_names")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?)
    })
    .await
}

pub(super) async fn node_heartbeat(
    s: &SqliteStore,
    p: NodeHeartbeatParams,
) -> StoreResult<HeartbeatOutcome> {
    s.write("node_heartbeat", move |conn| {
        let registered = conn
            .prepare_cached("UPDATE nodes SET heartbeat_at = ?2 WHERE id = ?1")?
            .execute(params![p.node_id, p.now])?
            == 1;
        let mut cancel = Vec::new();
        let mut stmt = conn
            .prepare_cached("SELECT status, claim_seq, abort_requested FROM jobs WHERE id = ?1")?;
        for (job_id, claim_seq) in &p.running {
            let row: Option<(String, i64, bool)> = stmt
                .query_row(params![job_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            let ours =
                matches!(&row, Some((s, c, abort)) if s == "running" && c == claim_seq && !abort);
            if !ours {
                cancel.push((job_id.clone(), *claim_seq));
            }
        }
        Ok((HeartbeatOutcome { registered, cancel }, 0))
    })
    .await
}

pub(super) async fn node_remove(s: &SqliteStore, node_id: &str) -> StoreResult<()> {
    let node_id = node_id.to_string();
    s.write("node_remove", move |conn| {
        conn.prepare_cached("DELETE FROM nodes WHERE id = ?1")?
            .execute(params![node_id])?;
        conn.prepare_cached("DELETE FROM pipeline_nodes WHERE node_id = ?1")?
            .execute(params![node_id])?;
        Ok(((), 0))
    })
    .await
}

pub(super) async fn node_remove_stale(
    s: &SqliteStore,
    node_id: &str,
    seen_heartbeat_at: i64,
) -> StoreResult<bool> {
    let node_id = node_id.to_string();
    s.write("node_remove_stale", move |conn| {
        let removed = conn
            .prepare_cached("DELETE FROM nodes WHERE id = ?1 AND heartbeat_at = ?2")?
            .execute(params![node_id, seen_heartbeat_at])?
            == 1;
        if removed {
            conn.prepare_cached("DELETE FROM pipeline_nodes WHERE node_id = ?1")?
                .execute(params![node_id])?;
        }
        Ok((removed, 0))
    })
    .await
}

pub(super) async fn nodes_list(s: &SqliteStore) -> StoreResult<Vec<NodeRow>> {
    s.read(|conn| {
        Ok(conn
            .prepare_cached(
                "SELECT id, host, pid, proc_start, boot_id, slots, started_at, heartbeat_at,
                                    COALESCE(name, ''), info FROM nodes ORDER BY started_at",
            )?
            .query_map([], |r| {
                let info: Option<String> = r.get(9)?;
                Ok(NodeRow {
                    id: r.get(0)?,
                    host: r.get(1)?,
                    pid: r.get(2)?,
                    proc_start: r.get::<_, i64>(3)? as u64,
                    boot_id: r.get(4)?,
                    slots: r.get(5)?,
                    started_at: r.get(6)?,
                    heartbeat_at: r.get(7)?,
                    name: r.get(8)?,
                    url: None,
                    labels: Default::default(),
                    config_digest: String::new(),
                    capacity: Default::default(),
                }
                .with_info(info.as_deref()))
            })?
            .collect::<Result<_, _>>()?)
    })
    .await
}

pub(super) async fn jobs_running_on(
    s: &SqliteStore,
    node_id: &str,
) -> StoreResult<Vec<RunningJob>> {
    let node_id = node_id.to_string();
    s.read(move |conn| {
        Ok(conn
            .prepare_cached("SELECT id, claim_seq, pid, proc_start, claimed_at FROM jobs WHERE node_id = ?1 AND status = 'running'")?
            .query_map(params![node_id], running_job)?
            .collect::<Result<_, _>>()?)
    })
    .await
}

pub(super) async fn jobs_running_unowned(s: &SqliteStore) -> StoreResult<Vec<RunningJob>> {
    s.read(|conn| {
        Ok(conn
            .prepare_cached(
                "SELECT id, claim_seq, pid, proc_start, claimed_at FROM jobs
                 WHERE status = 'running' AND node_id NOT IN (SELECT id FROM nodes)",
            )?
            .query_map([], running_job)?
            .collect::<Result<_, _>>()?)
    })
    .await
}

pub(super) async fn jobs_abort_requested(
    s: &SqliteStore,
    node_id: &str,
) -> StoreResult<Vec<(String, i64)>> {
    let node_id = node_id.to_string();
    s.read(move |conn| {
        Ok(conn
            .prepare_cached("SELECT id, claim_seq FROM jobs WHERE node_id = ?1 AND status = 'running' AND abort_requested = 1")?
            .query_map(params![node_id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?)
    })
    .await
}

pub(super) fn running_job(r: &Row<'_>) -> rusqlite::Result<RunningJob> {
    Ok(RunningJob {
        id: r.get(0)?,
        claim_seq: r.get(1)?,
        pid: r.get(2)?,
        proc_start: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
        claimed_at: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
    })
}
