//! Which pipelines a claim may take from, and how many from each, decided
//! above the backend.
//!
//! A backend counts running jobs per pipeline (inside whatever serialises the
//! caps: SQLite's single writer, PostgreSQL's advisory lock), asks [`plan`]
//! for the room of each pipeline, reads at most that many queue heads of each
//! (index-backed, so a capped backlog is never walked), and claims the merged
//! heads by priority, then `seq` ([`merge`]): global order and every cap in one pass.
//!
//! Tests that catch a violation (conformance suite, both backends):
//! `claims_respect_pipeline_and_global_caps_and_retry_delays`,
//! `a_capped_backlog_does_not_hold_up_other_pipelines_and_order_is_fifo`,
//! `concurrent_claimers_never_exceed_the_global_or_a_pipeline_cap`,
//! `a_paused_pipeline_is_claimed_by_no_node_until_resumed`,
//! `higher_priorities_are_claimed_first_and_fifo_within_one_over_every_pipeline`,
//! `a_delayed_run_is_held_until_its_time_and_released_by_the_claim`.

use std::collections::HashMap;

use super::{ClaimedJob, JobClaimParams};

/// True when some cap applies, so running jobs must be counted (and, on a shared
/// database, the count serialised).
pub fn needs_counts(p: &JobClaimParams) -> bool {
    p.global_cap > 0 || p.pipelines.values().any(|cap| *cap > 0)
}

/// How much one claim may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPlan {
    /// Jobs to claim at most, over every pipeline.
    pub want: usize,
    /// Pipelines with room, and how many heads of each to read.
    pub rooms: Vec<(String, usize)>,
}

/// The plan for `p` given the running jobs per pipeline (over every node).
pub fn plan(p: &JobClaimParams, running: &HashMap<String, u32>) -> ClaimPlan {
    let total: usize = running.values().map(|n| *n as usize).sum();
    let mut want = p.max;
    if p.global_cap > 0 {
        want = want.min(p.global_cap.saturating_sub(total));
    }
    let mut rooms = Vec::new();
    if want > 0 {
        for (name, cap) in &p.pipelines {
            let room = match *cap {
                0 => want,
                cap => (cap as usize)
                    .saturating_sub(running.get(name).copied().unwrap_or(0) as usize)
                    .min(want),
            };
            if room > 0 {
                rooms.push((name.clone(), room));
            }
        }
    }
    rooms.sort();
    ClaimPlan { want, rooms }
}

/// Leaves paused pipelines out of a plan: their queued jobs stay queued for every node
/// (read inside the claim's transaction, so a claim that starts after a pause commits
/// never takes one; PostgreSQL filters them in its claim statement instead).
pub fn leave_out_paused(plan: &mut ClaimPlan, paused: &std::collections::HashSet<String>) {
    if !paused.is_empty() {
        plan.rooms.retain(|(name, _)| !paused.contains(name));
    }
}

pub use crate::model::PRIORITY_RANGE;

/// Whether a job due at `run_after` waits, held out of the claim index, at `now`: a
/// delayed run's shards and a retry in its backoff. Held jobs are released by the claim
/// (in its transaction) once due, so the claim reads only jobs it may take.
pub fn held(run_after: i64, now: i64) -> bool {
    run_after > now
}

/// The candidates to claim, highest priority first and FIFO (`seq`) within a priority,
/// at most `want` (each pipeline's heads come in that order from its index; this merges
/// them, so the order holds over every pipeline).
pub fn merge(mut candidates: Vec<(i64, ClaimedJob)>, want: usize) -> Vec<(i64, ClaimedJob)> {
    candidates.sort_by_key(|(seq, job)| (std::cmp::Reverse(job.priority), *seq));
    candidates.truncate(want);
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(max: usize, global_cap: usize, caps: &[(&str, u32)]) -> JobClaimParams {
        JobClaimParams {
            node_id: "n".into(),
            max,
            global_cap,
            pipelines: caps.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            now: 0,
        }
    }

    #[test]
    fn rooms_respect_the_global_and_pipeline_caps() {
        let running: HashMap<String, u32> = [("a".to_string(), 2), ("b".to_string(), 1)].into();
        let p = plan(&params(8, 4, &[("a", 2), ("b", 0), ("c", 3)]), &running);
        assert_eq!(p.want, 1);
        assert_eq!(p.rooms, vec![("b".into(), 1), ("c".into(), 1)]);
        let p = plan(&params(8, 3, &[("a", 0)]), &running);
        assert_eq!((p.want, p.rooms.len()), (0, 0));
        let p = plan(&params(2, 0, &[("a", 5)]), &running);
        assert_eq!(p.rooms, vec![("a".into(), 2)]);
        assert!(!needs_counts(&params(2, 0, &[("a", 0)])));
    }
}
