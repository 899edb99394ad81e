//! Whether a batch of ends wakes the claimers of every node (the WORK feed), decided
//! above the backend.
//!
//! An end frees its node's slot and the cap units its job held (the global cap's, its
//! pipeline's). A finish that claims its slot's next job in the same transaction (the
//! fused claim, DESIGN decision 14) usually takes them straight back. Waking every claim
//! loop of every replica on such an end sent each of them a claim that could find no
//! room: three replicas under a global cap of 3 sent 1.46 such claims per run and drained
//! 437 runs/s; with this rule, 0.03 and 600 (`scale` bench, `docs/benchmarks.md`).
//!
//! So an end wakes the others only when it may have left room for them: a job put back
//! in the queue (a retry, a requeue), no fused claim, a job of a keyed pipeline (its key's
//! unit is not matched here), or an ended job whose pipeline no job claimed in the same
//! transaction took up. Work queued by the landing (a finalizer, a released dependent)
//! wakes claimers on its own path.
//!
//! **Invariant:** a unit an end frees and its transaction does not take back wakes every
//! claimer. Caught by
//! `store_contract::*::an_end_wakes_other_claimers_only_when_it_leaves_a_unit_free`
//! (both backends), and through the binary by the cap-share scenarios, whose waiting
//! hosts get their units only on such wakes.

use super::{ClaimedJob, JobClaimParams};
use crate::model::JobStatus;

/// True when ends of jobs of these pipelines, in these new statuses, may have left room
/// for another claimer, given the fused claim `claim` and the jobs it took.
pub fn wakes_claimers<'a>(
    ended: impl IntoIterator<Item = (&'a str, JobStatus)>,
    claim: Option<&JobClaimParams>,
    claimed: &[ClaimedJob],
) -> bool {
    let mut taken: Vec<&str> = claimed.iter().map(|j| j.pipeline.as_str()).collect();
    for (pipeline, status) in ended {
        let Some(claim) = claim else {
            return true;
        };
        if status == JobStatus::Queued || claim.keyed.contains_key(pipeline) {
            return true;
        }
        match taken.iter().position(|p| *p == pipeline) {
            Some(at) => {
                taken.swap_remove(at);
            }
            None => return true,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(pipeline: &str) -> ClaimedJob {
        ClaimedJob {
            id: format!("{pipeline}-run:s0"),
            run_id: format!("{pipeline}-run"),
            pipeline: pipeline.into(),
            shard_index: 0,
            shard_count: 1,
            attempt: 1,
            claim_seq: 1,
            priority: 0,
            params: Default::default(),
            kind: crate::model::JobKind::Shard,
            due_at: 0,
            output_lines: 0,
            has_needs: false,
        }
    }

    fn claim() -> JobClaimParams {
        JobClaimParams {
            node_id: "n1".into(),
            max: 2,
            global_cap: 4,
            pipelines: [("a".to_string(), 0), ("b".to_string(), 0)].into(),
            keyed: Default::default(),
            now: 0,
        }
    }

    #[test]
    fn an_end_whose_units_the_fused_claim_took_back_wakes_nobody() {
        let ended = [("a", JobStatus::Completed), ("b", JobStatus::Failed)];
        let jobs = [claimed("b"), claimed("a"), claimed("a")];
        assert!(!wakes_claimers(ended, Some(&claim()), &jobs));
    }

    #[test]
    fn a_unit_left_free_a_requeue_a_key_or_no_claim_wakes_everyone() {
        let done = [("a", JobStatus::Completed), ("a", JobStatus::Completed)];
        assert!(wakes_claimers(done, Some(&claim()), &[claimed("a")]));
        assert!(wakes_claimers(
            done,
            Some(&claim()),
            &[claimed("b"), claimed("b")]
        ));
        assert!(wakes_claimers(done, None, &[]));
        assert!(!wakes_claimers([], None, &[]), "no end, nothing freed");
        let retried = [("a", JobStatus::Queued)];
        assert!(wakes_claimers(retried, Some(&claim()), &[claimed("a")]));
        let keyed = JobClaimParams {
            keyed: [("a".to_string(), 1)].into(),
            ..claim()
        };
        assert!(wakes_claimers(
            [("a", JobStatus::Completed)],
            Some(&keyed),
            &[claimed("a")]
        ));
    }
}
