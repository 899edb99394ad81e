//! Which pipelines a claim may take from, and how many from each, decided
//! above the backend.
//!
//! A backend counts running jobs per pipeline (inside whatever serialises the
//! caps: SQLite's single writer, PostgreSQL's advisory locks per pipeline; PostgreSQL
//! meets the global cap with token rows instead and plans without it), asks [`plan`]
//! for the room of each pipeline, reads at most that many queue heads of each
//! (index-backed, so a capped backlog is never walked), and claims the merged
//! heads by priority, then `seq` ([`pick`]): global order and every cap in one pass.
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
    p.global_cap > 0 || p.pipelines.values().any(|cap| *cap > 0) || !p.keyed.is_empty()
}

/// A queue head a backend read, with its concurrency key when its pipeline is keyed.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Queue order.
    pub seq: i64,
    /// The job as it would be claimed.
    pub job: ClaimedJob,
    /// Its concurrency key (keyed pipelines only).
    pub key: Option<String>,
}

/// How many heads of one key to read: its room under the per-key cap (`cap` 0: none),
/// at most the pipeline's room.
pub fn key_room(cap: u32, running: u32, pipeline_room: usize) -> usize {
    match cap {
        0 => pipeline_room,
        cap => (cap.saturating_sub(running) as usize).min(pipeline_room),
    }
}

/// The jobs to claim, fair over keys: a keyed job's rank is how many jobs of its key
/// run plus how many of its key's heads come before it, so a claim takes every key's
/// first job before any key's second, and a key with jobs running waits behind keys
/// without. Backends read keys round-robin ([`scan_start`]): each claim looks at the
/// keys after the last one taken, so over claims every key with queued work gets its
/// turn. Unkeyed jobs rank 0. Order: priority (higher first), then rank, then queue
/// order; no pipeline past its room, no key past its cap, at most `want`.
pub fn pick(
    mut candidates: Vec<Candidate>,
    p: &JobClaimParams,
    plan: &ClaimPlan,
    running_by_key: &HashMap<(String, String), u32>,
) -> Vec<(i64, ClaimedJob)> {
    candidates.sort_by(|a, b| {
        (
            &a.job.pipeline,
            &a.key,
            std::cmp::Reverse(a.job.priority),
            a.seq,
        )
            .cmp(&(
                &b.job.pipeline,
                &b.key,
                std::cmp::Reverse(b.job.priority),
                b.seq,
            ))
    });
    let mut ranked: Vec<(u32, Candidate)> = Vec::with_capacity(candidates.len());
    let mut position: HashMap<(String, String), u32> = HashMap::new();
    for c in candidates {
        let rank = match &c.key {
            None => 0,
            Some(key) => {
                let id = (c.job.pipeline.clone(), key.clone());
                let before = position.entry(id.clone()).or_insert(0);
                let rank = running_by_key.get(&id).copied().unwrap_or(0) + *before;
                *before += 1;
                let cap = p.keyed.get(&c.job.pipeline).copied().unwrap_or(0);
                if cap > 0 && rank >= cap {
                    continue;
                }
                rank
            }
        };
        ranked.push((rank, c));
    }
    ranked.sort_by_key(|(rank, c)| (std::cmp::Reverse(c.job.priority), *rank, c.seq));
    let mut room: HashMap<&str, usize> = plan
        .rooms
        .iter()
        .map(|(name, room)| (name.as_str(), *room))
        .collect();
    let mut out = Vec::new();
    for (_, c) in ranked {
        if out.len() == plan.want {
            break;
        }
        if let Some(left) = room.get_mut(c.job.pipeline.as_str())
            && *left > 0
        {
            *left -= 1;
            out.push((c.seq, c.job));
        }
    }
    out
}

/// How much one claim may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPlan {
    /// Jobs to claim at most, over every pipeline.
    pub want: usize,
    /// Pipelines with room, and how many heads of each to read.
    pub rooms: Vec<(String, usize)>,
}

impl ClaimPlan {
    /// Takes at most `n` jobs in all (a pipeline's room is then at most `n` too).
    pub fn limit(&mut self, n: usize) {
        self.want = self.want.min(n);
        for (_, room) in &mut self.rooms {
            *room = (*room).min(self.want);
        }
        self.rooms.retain(|(_, room)| *room > 0);
    }
}

/// The plan for `p` given the running jobs per pipeline (over every node), before the
/// global cap: each backend applies that apart ([`ClaimPlan::limit`]), since its room
/// may be a fair share (`cap_share`) and PostgreSQL meets it with token rows.
pub fn plan(p: &JobClaimParams, running: &HashMap<String, u32>) -> ClaimPlan {
    let want = p.max;
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

/// Units of a global cap of `cap` the running jobs (over every node) leave free.
pub fn global_free(cap: usize, running: &HashMap<String, u32>) -> usize {
    cap.saturating_sub(running.values().map(|n| *n as usize).sum())
}

/// Leaves paused pipelines out of a plan: their queued jobs stay queued for every node
/// (read inside the claim's transaction, so a claim that starts after a pause commits
/// never takes one; PostgreSQL filters them in its claim statement instead).
pub fn leave_out_paused(plan: &mut ClaimPlan, paused: &std::collections::HashSet<String>) {
    if !paused.is_empty() {
        plan.rooms.retain(|(name, _)| !paused.contains(name));
    }
}

pub use super::key_scan::{
    KEY_CURSOR, KEY_SCAN, KeyScan, ScanStep, scan_done, scan_start, scanned,
};
pub use crate::model::PRIORITY_RANGE;

/// Whether a job due at `run_after` waits, held out of the claim index, at `now`: a
/// delayed run's shards and a retry in its backoff. Held jobs are released by the claim
/// (in its transaction) once due, so the claim reads only jobs it may take.
pub fn held(run_after: i64, now: i64) -> bool {
    run_after > now
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
            keyed: Default::default(),
        }
    }

    fn job(pipeline: &str, priority: i32) -> ClaimedJob {
        ClaimedJob {
            id: String::new(),
            run_id: String::new(),
            pipeline: pipeline.into(),
            shard_index: 0,
            shard_count: 1,
            attempt: 1,
            claim_seq: 0,
            priority,
            params: Default::default(),
            kind: crate::model::JobKind::Shard,
            due_at: 0,
            output_lines: 0,
            has_needs: false,
        }
    }

    #[test]
    fn keyed_claims_take_every_keys_head_first_and_respect_the_per_key_cap() {
        let mut p = params(8, 0, &[("t", 0), ("u", 0)]);
        p.keyed = [("t".to_string(), 2)].into();
        let plan = plan(&p, &HashMap::new());
        let cand = |seq, key: &str| Candidate {
            seq,
            job: job("t", 0),
            key: Some(key.into()),
        };
        // Tenant "big" queued first and has one running; "small" has none.
        let candidates = vec![
            cand(1, "big"),
            cand(2, "big"),
            cand(3, "big"),
            cand(9, "small"),
        ];
        let running = [(("t".to_string(), "big".to_string()), 1)].into();
        let picked: Vec<i64> = pick(candidates, &p, &plan, &running)
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        // small's head (rank 0) first, then big's head (rank 1); big's second would be its
        // third running job, over the cap of 2.
        assert_eq!(picked, vec![9, 1]);
        // Priority still comes first, and unkeyed jobs rank 0.
        let mut hi = cand(5, "big");
        hi.job.priority = 5;
        let plain = Candidate {
            seq: 4,
            job: job("u", 0),
            key: None,
        };
        let picked: Vec<i64> = pick(vec![cand(2, "big"), plain, hi], &p, &plan, &HashMap::new())
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        // big's second (rank 1) comes after the unkeyed head at rank 0.
        assert_eq!(picked, vec![5, 4, 2]);
    }

    #[test]
    fn rooms_respect_the_global_and_pipeline_caps() {
        let running: HashMap<String, u32> = [("a".to_string(), 2), ("b".to_string(), 1)].into();
        // As a backend plans: the pipelines' rooms, then the global cap's.
        let planned = |p: JobClaimParams| {
            let mut plan = plan(&p, &running);
            if p.global_cap > 0 {
                plan.limit(global_free(p.global_cap, &running));
            }
            plan
        };
        let p = planned(params(8, 4, &[("a", 2), ("b", 0), ("c", 3)]));
        assert_eq!(p.want, 1);
        assert_eq!(p.rooms, vec![("b".into(), 1), ("c".into(), 1)]);
        let p = planned(params(8, 3, &[("a", 0)]));
        assert_eq!((p.want, p.rooms.len()), (0, 0));
        let p = planned(params(2, 0, &[("a", 5)]));
        assert_eq!(p.rooms, vec![("a".into(), 2)]);
        assert!(!needs_counts(&params(2, 0, &[("a", 0)])));
    }
}
