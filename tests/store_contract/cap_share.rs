//! The global cap shared fairly while nodes wait (`src/store/cap_share.rs`): a node the
//! cap kept short says so, and until it stops waiting no other node's claim takes a unit
//! that leaves it more than one unit ahead of the waiting node, so the units a busy
//! node's jobs free reach the waiting node.
//! With nobody waiting, units are first come, first served (none left idle). Among
//! nodes level with each other, one that has waited a turn goes next.

use runyard::model::JobStatus;
use runyard::store::{
    ClaimedJob, JobClaimParams, Outcome, RunCreateParams, RunOptions, Store, cap_share,
};

use crate::factory::{Factory, node_row};
use crate::fixtures::*;

/// A claim by `node` under a global cap of 4, for up to `max` jobs of pipeline `p`, at `now`.
fn capped(node: &str, max: usize, now: i64) -> JobClaimParams {
    capped_to(4, node, max, now)
}

/// A claim by `node` under a global cap of `cap`, for up to `max` jobs of pipeline `p`, at `now`.
fn capped_to(cap: usize, node: &str, max: usize, now: i64) -> JobClaimParams {
    JobClaimParams {
        node_id: node.into(),
        global_cap: cap,
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

/// One unit, two nodes wanting it: the node holding it may keep reusing it (its finish
/// claims the next job with the unit its end frees) only until the other has waited a
/// turn (`cap_share::TURN_MS`); then the unit goes to the waiting node, and back again a
/// turn later. Without turns, n1 reused it as long as its queue lasted.
pub async fn level_nodes_take_turns_when_the_cap_is_smaller_than_the_nodes_waiting(f: &Factory) {
    let store = f.store().await;
    ok("node_register", store.node_register(node_row("n2"))).await;
    for _ in 0..8 {
        create(&*store, 1).await;
    }
    let claim = |p: JobClaimParams| {
        let store = store.clone();
        async move { ok("job_claim", store.job_claim(p)).await.jobs }
    };
    let turn = cap_share::TURN_MS;
    let one = |node: &str, now: i64| capped_to(1, node, 2, now);
    let next = |node: &str, now: i64| capped_to(1, node, 1, now);
    let mut n1 = claim(one("n1", 100)).await;
    assert_eq!(n1.len(), 1, "n1 takes the one unit");
    assert!(
        claim(one("n2", 110)).await.is_empty(),
        "the cap is full: n2 waits"
    );

    // Within a turn, n1's finish keeps the unit (no hand-over on every end)...
    let got = end_and_claim(&*store, &n1.remove(0), next("n1", 110 + turn - 1)).await;
    assert_eq!(
        got.len(),
        1,
        "n2 has not waited a turn yet: n1 reuses its unit"
    );
    n1.extend(got);
    // ...and after it, it lets the unit go, its own claim loop too...
    let at = 110 + turn;
    let got = end_and_claim(&*store, &n1.remove(0), next("n1", at)).await;
    assert!(got.is_empty(), "n2 has waited a turn: the unit is n2's");
    assert!(
        claim(one("n1", at)).await.is_empty(),
        "n1's claim loop is behind n2 too (its end moved it to the back)"
    );
    // ...and n2 takes it.
    let mut n2 = claim(one("n2", at)).await;
    assert_eq!(n2.len(), 1, "the waiting node's turn");

    // Now n1 waits (since `at`): n2 reuses the unit within the turn, then hands it back.
    let got = end_and_claim(&*store, &n2.remove(0), next("n2", at + turn - 1)).await;
    assert_eq!(got.len(), 1, "n1 has not waited a turn yet");
    n2.extend(got);
    let got = end_and_claim(&*store, &n2.remove(0), next("n2", at + turn)).await;
    assert!(got.is_empty(), "n1 has waited a turn: the unit is n1's");
    assert_eq!(
        claim(one("n1", at + turn)).await.len(),
        1,
        "n1 takes its turn"
    );
}

/// A single-shard run of pipeline `k` under concurrency key `key`.
async fn keyed_run(store: &dyn Store, key: &str) {
    let p = RunCreateParams {
        options: RunOptions {
            concurrency_key: Some(key.to_string()),
            ..Default::default()
        },
        ..run_params("k", 1)
    };
    ok("run_create", store.run_create(p)).await;
}

/// A claim by `node` of up to `max` jobs of the keyed pipeline `k` (one running job per
/// key) under a global cap of `cap`, at `now`.
fn keyed(cap: usize, node: &str, max: usize, now: i64) -> JobClaimParams {
    JobClaimParams {
        pipelines: [("k".to_string(), 0)].into(),
        keyed: [("k".to_string(), 1)].into(),
        ..capped_to(cap, node, max, now)
    }
}

/// Turns hold for a node whose waiting work is keyed (its claim reads keys one by one,
/// apart from the one-statement claim): it says it waits, so the node holding the unit
/// hands it over after a turn. A keyed job held back by its key's own cap is no wait on
/// the global cap: the node must not take units from others for it. Without the first,
/// n1 reused its unit as long as its queue lasted.
pub async fn a_node_waiting_with_keyed_work_gets_its_turn_and_a_key_at_its_cap_is_no_wait(
    f: &Factory,
) {
    let store = f.store().await;
    ok("node_register", store.node_register(node_row("n2"))).await;
    for _ in 0..6 {
        create(&*store, 1).await;
    }
    keyed_run(&*store, "t1").await;
    let claim = |p: JobClaimParams| {
        let store = store.clone();
        async move { ok("job_claim", store.job_claim(p)).await.jobs }
    };
    let turn = cap_share::TURN_MS;
    let mut n1 = claim(capped_to(1, "n1", 2, 100)).await;
    assert_eq!(n1.len(), 1, "n1 takes the one unit");
    assert!(
        claim(keyed(1, "n2", 2, 110)).await.is_empty(),
        "the cap is full: n2's keyed job waits"
    );
    let got = end_and_claim(
        &*store,
        &n1.remove(0),
        capped_to(1, "n1", 1, 110 + turn - 1),
    )
    .await;
    assert_eq!(got.len(), 1, "n2 has not waited a turn yet");
    n1.extend(got);
    let at = 110 + turn;
    let got = end_and_claim(&*store, &n1.remove(0), capped_to(1, "n1", 1, at)).await;
    assert!(
        got.is_empty(),
        "n2 has waited a turn for its keyed job: the unit is n2's"
    );
    let n2 = claim(keyed(1, "n2", 2, at)).await;
    assert_eq!(n2.len(), 1, "n2 takes its turn");

    // Under a cap of 3, n2 runs key t1's one allowed job; a second t1 job waits for its
    // key, not for the cap. Two turns later n1 takes a unit, then (level with n2, its
    // place in line now the newer) the last one: had n2 counted as waiting, that unit
    // would be n2's turn, left idle.
    keyed_run(&*store, "t1").await;
    assert!(
        claim(keyed(3, "n2", 2, at + 1)).await.is_empty(),
        "t1 is at its key's cap: n2 claims nothing"
    );
    let later = at + 1 + 2 * turn;
    n1.extend(claim(capped_to(3, "n1", 1, later)).await);
    assert_eq!(n1.len(), 1, "n1 takes a unit beside n2's");
    assert_eq!(
        claim(capped_to(3, "n1", 1, later)).await.len(),
        1,
        "n2 does not wait for the cap: the last free unit is n1's"
    );
}

/// Whether the feed woke claimers since it was last read: `None` when the wake may be
/// the PostgreSQL change poll's (it bumps every kind at once, OUTPUT too, which no end
/// bumps), so the step says nothing either way.
fn woke(
    work: &mut tokio::sync::watch::Receiver<u64>,
    output: &mut tokio::sync::watch::Receiver<u64>,
) -> Option<bool> {
    let polled = output.has_changed().unwrap();
    output.borrow_and_update();
    let woke = work.has_changed().unwrap();
    work.borrow_and_update();
    (!polled).then_some(woke)
}

/// The WORK feed wakes the claim loop of every node (other replicas through the bus).
/// An end whose own transaction takes its units back (its fused claim took a job of the
/// same pipeline) leaves no room for anyone and wakes nobody; an end that leaves a unit
/// free, or puts its job back in the queue, wakes them (`src/store/refill.rs`).
pub async fn an_end_wakes_other_claimers_only_when_it_leaves_a_unit_free(f: &Factory) {
    let store = f.store().await;
    for _ in 0..7 {
        create(&*store, 1).await;
    }
    let cap = capped_to(2, "n1", 1, 10);
    let mut work = store.changes().subscribe(runyard::store::change::WORK);
    let mut output = store.changes().subscribe(runyard::store::change::OUTPUT);
    let mut held = ok("job_claim", store.job_claim(cap.clone())).await.jobs;
    let other = ok("job_claim", store.job_claim(cap.clone())).await.jobs;
    assert_eq!((held.len(), other.len()), (1, 1), "two units, both taken");
    // Refills: each end's fused claim takes the next queued job into the unit it freed.
    let mut quiet = 0;
    for _ in 0..4 {
        woke(&mut work, &mut output);
        held = end_and_claim(&*store, &held[0], cap.clone()).await;
        assert_eq!(held.len(), 1, "the freed unit is taken back");
        if let Some(woke) = woke(&mut work, &mut output) {
            assert!(
                !woke,
                "an end whose unit its own claim took back woke the claimers"
            );
            quiet += 1;
        }
    }
    assert!(quiet > 0, "every step overlapped the change poll");
    // A failed attempt goes back to the queue (its retry): that wakes, refill or not.
    woke(&mut work, &mut output);
    let mut failed = finish(&held[0], fail());
    failed.claim_next = Some(cap.clone());
    let out = ok("job_finish", store.job_finish(failed)).await;
    assert_eq!((out.status, out.next.len()), (Some(JobStatus::Queued), 1));
    assert_ne!(
        woke(&mut work, &mut output),
        Some(false),
        "a retry queued wakes"
    );
    // The last queued job is running: the other end's claim finds nothing (the retry is
    // not due), so its unit stays free and the claimers hear of it.
    let out = end_and_claim(&*store, &other[0], cap.clone()).await;
    assert!(out.is_empty(), "nothing due to claim");
    assert_ne!(
        woke(&mut work, &mut output),
        Some(false),
        "a unit left free wakes"
    );
}
