//! Orphan rescue: resolving the running jobs of nodes proven dead.
//!
//! A node is dead when its heartbeat is older than the lease by the store's
//! clock (any host, including this one: a frozen process keeps its pid), or,
//! faster, when it shares this node's host, boot and pid namespace and its
//! process `(pid, start time)` no longer exists. Age is judged only by a node
//! that has itself been healthy for a whole lease (the observer guard in
//! `lease.rs`), so the first node back from a database outage does not
//! declare the whole fleet dead. A node never touches work of a node it has
//! not proven dead.
//!
//! The rescue of a dead node starts with a compare-and-delete of its row on the
//! heartbeat that was judged: exactly one rescuer wins it, and a node that beat
//! in between keeps its row and its jobs. Only the winner then resolves the
//! node's running jobs, each with one fenced write (re-queued or failed by the
//! pipeline's `on_orphan`); a leftover process group on this host is killed
//! first — only after checking that the leader pid is gone or still the very
//! process that was recorded, so an unrelated process that reused the pid is
//! never signalled. A winner that dies between the two steps leaves jobs
//! without a node row, which any node resolves as stranded. A node whose row
//! was removed learns it on its next heartbeat and stops every local job
//! before registering again. A job or run that is already terminal is never
//! touched.

use std::sync::Arc;

use super::Inner;
use crate::executor::process::{self, Sig};
use crate::model::Reason;
use crate::store::{JobFinishParams, NodeRow, Outcome, RunningJob, StoreError};

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RescueReport {
    /// Nodes found dead and removed.
    pub dead_nodes: usize,
    /// Orphaned jobs resolved (re-queued or failed).
    pub orphans: usize,
    /// Leftover process groups signalled.
    pub groups_killed: usize,
}

/// Whether `node` is proven dead from the point of view of `me`. Pids are compared only
/// between nodes with the same host, boot and pid namespace (`boot_id` holds
/// [`process::pid_scope`]); a host name shared by two machines or containers therefore
/// never makes a live node look dead. Any node, wherever it runs, is dead when its
/// heartbeat is older than the lease — when `by_age` (the observer guard) allows
/// judging by age at all.
pub fn is_dead(me: &NodeRow, node: &NodeRow, lease_ms: i64, now: i64, by_age: bool) -> bool {
    if node.id == me.id {
        return false;
    }
    let same_scope = node.host == me.host && node.boot_id == me.boot_id;
    if same_scope && !process::same_process_alive(node.pid, node.proc_start) {
        return true;
    }
    by_age && now - node.heartbeat_at > lease_ms
}

/// One rescue pass.
pub(crate) async fn run_once(inner: &Arc<Inner>) -> Result<RescueReport, StoreError> {
    let mut report = RescueReport::default();
    let lease_ms = inner.lease.length().as_millis() as i64;
    let by_age = inner.lease.may_judge_by_age();
    let nodes = inner.store.nodes_list().await?;
    super::config_drift::note_config_drift(inner, &nodes);
    for node in nodes
        .iter()
        .filter(|n| is_dead(&inner.node, n, lease_ms, inner.store.clock_ms(), by_age))
    {
        rescue(inner, node, &mut report).await?;
    }
    // Jobs left `running` by a node that is gone without a trace (its end could not be
    // recorded before it stopped, or its rescuer died after removing its row).
    for job in inner.store.jobs_running_unowned().await? {
        if resolve(inner, &job).await? {
            report.orphans += 1;
            tracing::info!(job = %job.id, "resolved stranded job");
        }
    }
    crate::metrics::Metrics::add(&inner.metrics.orphans_recovered, report.orphans as u64);
    Ok(report)
}

/// Rescues one node judged dead: a compare-and-delete of its row on the heartbeat that
/// was judged (lost to another rescuer, or the node beat meanwhile: nothing is done,
/// `false`), then each of its running jobs resolved with one fenced write, leftover
/// process groups on this host killed first.
pub(crate) async fn rescue(
    inner: &Inner,
    node: &NodeRow,
    report: &mut RescueReport,
) -> Result<bool, StoreError> {
    if !inner
        .store
        .node_remove_stale(&node.id, node.heartbeat_at)
        .await?
    {
        return Ok(false);
    }
    report.dead_nodes += 1;
    crate::metrics::Metrics::add(&inner.metrics.nodes_declared_dead, 1);
    tracing::warn!(
        dead_node = %node.id,
        dead_node_name = %node.name,
        host = %node.host,
        silent_ms = inner.store.clock_ms() - node.heartbeat_at,
        "declared a node dead; resolving its jobs"
    );
    let same_scope = node.host == inner.node.host && node.boot_id == inner.node.boot_id;
    for job in inner.store.jobs_running_on(&node.id).await? {
        if same_scope {
            report.groups_killed += kill_leftovers(&job);
        }
        if resolve(inner, &job).await? {
            report.orphans += 1;
            tracing::info!(job = %job.id, dead_node = %node.id, "resolved orphaned job");
        }
    }
    Ok(true)
}

/// Jobs the store says run here but this node no longer runs (their end could not be
/// recorded, e.g. the store was unavailable when they finished): handed back like
/// orphans. Claims younger than one heartbeat are left alone, because a fresh claim is
/// in the store a moment before its task registers it.
///
/// With `suspects` (the housekeeping loop's), a job is handed back only when the
/// previous check suspected it too: a claim held up by the network commits with its
/// `claimed_at` from before the hold, so right after a long enough hold it looks old
/// while its task is still starting; one check later it has registered. (Without this
/// second look, a blink longer than a heartbeat ran such a job twice.) Returns how many
/// were resolved.
pub(crate) async fn resolve_forgotten(
    inner: &Arc<Inner>,
    suspects: Option<&mut std::collections::HashSet<(String, i64)>>,
) -> Result<usize, StoreError> {
    let grace_ms = inner.settings.server.heartbeat.as_millis() as i64;
    // Store first, registry second: a job registered in between is in the snapshot.
    let recorded = inner.store.jobs_running_on(&inner.node.id).await?;
    let live: std::collections::HashSet<(String, i64)> =
        inner.registry.snapshot().into_iter().collect();
    let now = inner.store.clock_ms();
    let mut resolved = 0;
    let mut suspected_now = std::collections::HashSet::new();
    for job in recorded {
        let key = (job.id.clone(), job.claim_seq);
        if live.contains(&key) || now - job.claimed_at < grace_ms {
            continue;
        }
        if let Some(before) = suspects.as_deref()
            && !before.contains(&key)
        {
            suspected_now.insert(key);
            continue;
        }
        if resolve(inner, &job).await? {
            resolved += 1;
        }
    }
    if let Some(suspects) = suspects {
        *suspects = suspected_now;
    }
    Ok(resolved)
}

/// Releases, at once, the jobs a claim of this node whose commit answer was lost may have
/// taken (claimed at one of `claimed_at`, not running here, never started): back to the
/// queue without spending an attempt or a requeue, instead of waiting for the
/// forgotten-job check a heartbeat later. Every claim of a node has a time of its own
/// (`claim_params` in `scheduler/mod.rs`), so no job of another claim is touched. If the store cannot
/// be read now, that check still resolves them later.
pub(crate) async fn release_lost_claims(inner: &Inner, claimed_at: &[i64]) {
    let mut delay = std::time::Duration::from_millis(50);
    let mut tries = 0;
    let recorded = loop {
        match inner.store.jobs_running_on(&inner.node.id).await {
            Ok(jobs) => break jobs,
            Err(e) if e.is_unavailable() && tries < 6 => {
                tries += 1;
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                tracing::warn!(
                    "cannot look for jobs a lost claim took (the forgotten-job check will): {e}"
                );
                return;
            }
        }
    };
    let live: std::collections::HashSet<(String, i64)> =
        inner.registry.snapshot().into_iter().collect();
    for job in recorded {
        if !claimed_at.contains(&job.claimed_at)
            || job.pid.is_some()
            || live.contains(&(job.id.clone(), job.claim_seq))
        {
            continue;
        }
        let release = Outcome::Release {
            reason: Reason::Orphaned,
            error: Some("claimed by a commit whose answer was lost; released unstarted".into()),
        };
        match settle(inner, &job, release).await {
            Ok(true) => tracing::info!(job = %job.id, "released a job a lost claim took"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(job = %job.id, "cannot release a job a lost claim took (the forgotten-job check will): {e}")
            }
        }
    }
}

/// Kills what is left of an orphaned execution on this host; returns the groups signalled.
fn kill_leftovers(job: &RunningJob) -> usize {
    match job.pid {
        // Kill the group if its leader is gone (only our leftovers can hold the group
        // id) or is still the recorded process; skip a reused pid.
        Some(pid) => {
            let ours = !process::pid_alive(pid)
                || job
                    .proc_start
                    .is_some_and(|s| process::same_process_alive(pid, s));
            if ours {
                process::signal_group(pid, Sig::Kill);
            }
            usize::from(ours)
        }
        // The node died between spawn and recording the pid: find the execution by the
        // environment it was given.
        None => {
            let seq = job.claim_seq.to_string();
            let groups = process::groups_with_env(&[
                ("RUNYARD_JOB_ID", &job.id),
                ("RUNYARD_CLAIM_SEQ", &seq),
            ]);
            for pgid in &groups {
                process::signal_group(*pgid, Sig::Kill);
            }
            groups.len()
        }
    }
}

/// Re-queues or fails an orphaned execution by its pipeline's policy (one fenced write).
async fn resolve(inner: &Inner, job: &RunningJob) -> Result<bool, StoreError> {
    let requeue = Outcome::Requeue {
        reason: Reason::Orphaned,
    };
    settle(inner, job, requeue).await
}

/// Ends an execution this node does not run with `outcome` (one fenced write).
async fn settle(inner: &Inner, job: &RunningJob, outcome: Outcome) -> Result<bool, StoreError> {
    let out = inner
        .store
        .job_finish(JobFinishParams {
            job_id: job.id.clone(),
            claim_seq: job.claim_seq,
            outcome,
            exit_code: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            truncated: false,
            now: inner.store.clock_ms(),
            claim_next: None,
            start: None,
            result: None,
            lingers: false,
        })
        .await?;
    Ok(out.applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, host: &str, pid: u32, start: u64, boot: &str, beat: i64) -> NodeRow {
        NodeRow {
            id: id.into(),
            host: host.into(),
            pid,
            proc_start: start,
            boot_id: boot.into(),
            slots: 2,
            started_at: 0,
            heartbeat_at: beat,
            ..Default::default()
        }
    }

    #[test]
    fn liveness_rules() {
        let me_pid = std::process::id();
        let me_start = process::start_time(me_pid).unwrap();
        let boot = process::pid_scope();
        let me = node("me", "h", me_pid, me_start, &boot, 0);
        let dead = |n: &NodeRow, by_age: bool| is_dead(&me, n, 30_000, 1_000_000, by_age);
        // Same host, same boot: a process that is gone is dead at once, whatever its beat.
        assert!(dead(
            &node("reused", "h", me_pid, me_start + 1, &boot, 1_000_000),
            false
        ));
        // … and a live process that stopped beating (frozen) is dead by age.
        assert!(!dead(
            &node("peer", "h", me_pid, me_start, &boot, 990_000),
            true
        ));
        assert!(dead(
            &node("frozen", "h", me_pid, me_start, &boot, 960_000),
            true
        ));
        // Same host name, other boot or pid namespace: heartbeat age, never pids.
        assert!(!dead(
            &node("container", "h", 0x3fff_ffff, 1, "other", 990_000),
            true
        ));
        assert!(dead(
            &node("old-boot", "h", me_pid, me_start, "other", 960_000),
            true
        ));
        // Other host: heartbeat age.
        assert!(!dead(&node("far", "h2", 1, 1, "b", 990_000), true));
        assert!(dead(&node("far", "h2", 1, 1, "b", 960_000), true));
        // The observer guard: no judgement by age until this node has been healthy a lease.
        assert!(!dead(&node("far", "h2", 1, 1, "b", 960_000), false));
        assert!(!dead(
            &node("frozen", "h", me_pid, me_start, &boot, 0),
            false
        ));
        assert!(!dead(&me, true));
    }
}
