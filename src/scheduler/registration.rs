//! A node's registration under its name.
//!
//! Invariant: names are unique among registered nodes (a unique index in both stores),
//! and a live node's name is never taken. Starting a node under a name a live node
//! holds is refused, naming that node's host and pid. A node restarted after a crash
//! takes its name back at once when its previous life is proven dead — on the same
//! host, boot and pid namespace with its process gone, or silent for longer than the
//! lease — and resolves what that life left running (the rescuer's compare-and-delete
//! and fenced writes, leftover process groups on this host killed) before it claims.
//! Tests: `placement::a_name_is_refused_while_its_node_lives_and_taken_back_after_a_crash`.

use super::Inner;
use super::rescuer::{self, RescueReport};
use crate::store::{NodeRow, StoreError};

/// Registers `inner.node`, taking its name back from a dead previous holder first.
pub(super) async fn register(inner: &Inner) -> Result<RescueReport, StoreError> {
    let mut report = RescueReport::default();
    let lease_ms = inner.lease.length().as_millis() as i64;
    if let Some(holder) = holder_of(inner).await? {
        if rescuer::is_dead(&inner.node, &holder, lease_ms, inner.store.clock_ms(), true) {
            tracing::info!(
                name = %holder.name,
                previous = %holder.id,
                "taking the node name back from a dead previous holder"
            );
            rescuer::rescue(inner, &holder, &mut report).await?;
        } else {
            return Err(taken(&holder, inner.store.clock_ms()));
        }
    }
    match inner.store.node_register(inner.node.clone()).await {
        // Another node took the name between our read and our insert.
        Err(StoreError::Conflict { .. }) => match holder_of(inner).await? {
            Some(holder) => Err(taken(&holder, inner.store.clock_ms())),
            None => inner
                .store
                .node_register(inner.node.clone())
                .await
                .map(|_| report),
        },
        other => other.map(|_| report),
    }
}

/// The registered node, other than this one, that holds this node's name.
async fn holder_of(inner: &Inner) -> Result<Option<NodeRow>, StoreError> {
    Ok(inner
        .store
        .nodes_list()
        .await?
        .into_iter()
        .find(|n| n.name == inner.node.name && n.id != inner.node.id))
}

fn taken(holder: &NodeRow, now: i64) -> StoreError {
    StoreError::Conflict {
        message: format!(
            "node name {:?} is held by a live node on host {} (pid {}, last heartbeat {} ms ago); \
             set [server] node_name (or RUNYARD_NODE_NAME) to another name",
            holder.name,
            holder.host,
            holder.pid,
            (now - holder.heartbeat_at).max(0)
        ),
    }
}
