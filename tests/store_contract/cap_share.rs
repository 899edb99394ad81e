//! The global cap shared fairly while nodes wait (`src/store/cap_share.rs`): a node the
//! cap kept short says so, and until it stops waiting no other node's claim takes a unit
//! that leaves it more than one unit ahead of the waiting node, so the units a busy
//! node's jobs free reach the waiting node.
//! With nobody waiting, units are first come, first served (none left idle).

use runyard::store::{ClaimedJob, JobClaimParams, Outcome, Store, cap_share};

use crate::factory::{Factory, node_row};
use crate::fixtures::*;

/// A claim by `node` under a global cap of 4, for up to `max` jobs of pipeline `p`, at `now`.
fn capped(node: &str, max: usize, now: i64) -> JobClaimParams {
    JobClaimParams {
        node_id: node.into(),
        global_cap: 4,
        now,
        ..claim_later(max)
    }
}

/// Ends `job` (completed) and claims `next` in the same transaction: what it claimed.
async fn end_and_claim(
    store: &dyn Store,
    job: &ClaimedJob,
    next: JobClaimParams,
) -> Vec<ClaimedJob> {
    let mut end = finish(job, Outcome::Completed);
    end.claim_next = Some(next);
    let out = ok("job_finish", store.job_finish(end)).await;
    assert!(out.applied, "the end of a held claim applies");
    out.next
}

pub async fn a_node_waiting_for_the_global_cap_gets_its_share_of_the_units(f: &Factory) {
    let store = f.store().await;
    ok("node_register", store.node_register(node_row("n2"))).await;
    for _ in 0..12 {
        create(&*store, 1).await;
    }
    let claim = |p: JobClaimParams| {
        let store = store.clone();
        async move { ok("job_claim", store.job_claim(p)).await.jobs }
    };
    // n1 takes every unit first; n2, with ready jobs and free slots, gets none and waits.
    let mut n1 = claim(capped("n1", 4, 100)).await;
    assert_eq!(n1.len(), 4, "nobody waits yet: n1 takes the whole cap");
    assert!(
        claim(capped("n2", 4, 100)).await.is_empty(),
        "the cap is full"
    );

    // n1 holds 3, then 2 after its first two ends, while n2 waits holding 0, then 1: one
    // past n2 is as far as n1 may go, so neither its finish nor its own claim loop takes
    // the unit its end freed...
    let mut n2 = Vec::new();
    for round in 0..2 {
        let next = end_and_claim(&*store, &n1.remove(0), capped("n1", 1, 100)).await;
        assert!(
            next.is_empty(),
            "round {round}: n1 holds {} units and n2, waiting, {round}",
            n1.len()
        );
        assert!(
            claim(capped("n1", 4, 100)).await.is_empty(),
            "round {round}: n1's own claim keeps to its fair room too"
        );
        // ...and n2 gets it.
        let got = claim(capped("n2", 4, 100)).await;
        assert_eq!(
            got.len(),
            1,
            "round {round}: the freed unit goes to the waiting node"
        );
        n2.extend(got);
    }
    // Behind n2 (it holds 2) after its third end, n1's finish takes the unit its end freed.
    let next = end_and_claim(&*store, &n1.remove(0), capped("n1", 1, 100)).await;
    assert_eq!(next.len(), 1, "n1 holds 1, n2 2: n1 takes one");
    n1.extend(next);

    // A wait stops counting once it is older than WAIT_FRESH_MS: n2's last claim said it
    // waits at 100; a claim after that has passed is first come, first served again.
    let later = 100 + cap_share::WAIT_FRESH_MS + 1;
    for job in n2.drain(..) {
        ok(
            "job_finish",
            store.job_finish(finish(&job, Outcome::Completed)),
        )
        .await;
    }
    let got = claim(capped("n1", 4, later)).await;
    assert_eq!(
        got.len(),
        2,
        "n2's wait is stale: n1 takes both free units (it holds 4)"
    );
    n1.extend(got);

    // n2 waits again (the cap is full); then a claim of n2's that finds no ready job left
    // clears its wait at once.
    assert!(claim(capped("n2", 2, later)).await.is_empty());
    let next = end_and_claim(&*store, &n1.remove(0), capped("n1", 1, later)).await;
    assert!(
        next.is_empty(),
        "n2 waits holding none: n1, holding 3, takes none"
    );
    let idle = JobClaimParams {
        pipelines: [("q".to_string(), 0)].into(),
        ..capped("n2", 4, later)
    };
    assert!(
        claim(idle).await.is_empty(),
        "n2 may claim only from q, which is empty"
    );
    let next = end_and_claim(&*store, &n1.remove(0), capped("n1", 2, later)).await;
    assert_eq!(
        next.len(),
        2,
        "nobody waits: n1 takes both free units back (none left idle)"
    );
}
