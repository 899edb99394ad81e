//! Housekeeping: pruning finished runs and their events (and the watermark that tells a
//! reader it missed some), each node's setup state per pipeline, and a dead node's row,
//! removed only on the heartbeat it was judged by.

use runyard::store::{NodeHeartbeatParams, Outcome, PipelineNodeState};

use crate::factory::{Factory, node_row};
use crate::fixtures::*;

pub async fn prune_removes_old_finished_runs_and_keeps_live_ones(f: &Factory) {
    let store = f.store().await;
    let done = create(&*store, 1).await;
    let live = create(&*store, 1).await;
    let job = store.job_claim(claim(1)).await.unwrap().jobs.remove(0);
    assert_eq!(job.run_id, done.run_id);
    store
        .job_finish(finish(&job, Outcome::Completed))
        .await
        .unwrap();
    let out = store.runs_prune(1_000, 100).await.unwrap();
    assert_eq!(out.runs, 1);
    assert!(store.run_get(&done.run_id).await.unwrap().is_none());
    assert!(store.job_get(&job.id).await.unwrap().is_none());
    assert!(store.run_get(&live.run_id).await.unwrap().is_some());
    let events = events_settled(&*store).await;
    assert!(events.iter().all(|e| run_of(e) != done.run_id));
    assert!(
        events.iter().any(|e| run_of(e) == live.run_id),
        "events of unfinished runs stay"
    );
    let (pruned_through, _) = store.events_bounds().await.unwrap();
    assert!(
        pruned_through > 0,
        "the oldest ids are gone, so a resume from 0 gets a resync"
    );
    // The newest visible id reaches every event already read. (On PostgreSQL the
    // visibility horizon is conservative: another program's transaction caught between
    // taking its id and showing in pg_stat_activity holds it back for a moment, which
    // parallel tests on one server do; so this waits, with a limit.)
    let last = events.last().unwrap().id;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, newest) = store.events_bounds().await.unwrap();
        if newest >= last {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "newest visible event {newest} stayed below {last}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

pub async fn pruning_every_event_still_reports_what_was_pruned(f: &Factory) {
    let store = f.store().await;
    let run = create(&*store, 1).await;
    let job = store.job_claim(claim(1)).await.unwrap().jobs.remove(0);
    store
        .job_finish(finish(&job, Outcome::Completed))
        .await
        .unwrap();
    // Every event is of the finished run, so pruning leaves none.
    let seen = store.events_bounds().await.unwrap().1;
    assert!(seen > 0, "a reader has seen events up to {seen}");
    let out = store.runs_prune(1_000, 100).await.unwrap();
    assert_eq!(out.runs, 1);
    assert!(store.run_get(&run.run_id).await.unwrap().is_none());
    let (pruned_through, _) = store.events_bounds().await.unwrap();
    assert!(
        pruned_through >= seen,
        "a reader at {} missed events, so the watermark ({pruned_through}) must cover them",
        seen - 1
    );
}

pub async fn node_setup_state_is_kept_per_node_and_pipeline(f: &Factory) {
    let store = f.store().await;
    store.node_register(node_row("n2")).await.unwrap();
    let state = |node: &str, pipeline: &str, setup: &str| PipelineNodeState {
        node_id: node.into(),
        pipeline: pipeline.into(),
        setup: setup.into(),
        failures: 0,
        circuit: "closed".into(),
        open_until: None,
        last_error: None,
        updated_at: 5,
    };
    store
        .pipeline_node_set(state("n1", "p", "running"))
        .await
        .unwrap();
    let failed = PipelineNodeState {
        failures: 2,
        circuit: "open".into(),
        open_until: Some(500),
        last_error: Some("exit 1".into()),
        ..state("n2", "p", "failed")
    };
    store.pipeline_node_set(failed.clone()).await.unwrap();
    store
        .pipeline_node_set(state("n1", "a", "ready"))
        .await
        .unwrap();
    // A write replaces the node's state for that pipeline.
    store
        .pipeline_node_set(state("n1", "p", "ready"))
        .await
        .unwrap();
    // A node without a row (declared dead) is not listed.
    store
        .pipeline_node_set(state("ghost", "p", "ready"))
        .await
        .unwrap();
    assert_eq!(
        store.pipeline_nodes_list().await.unwrap(),
        vec![state("n1", "a", "ready"), state("n1", "p", "ready"), failed],
        "by pipeline, then node"
    );
    store.node_remove("n2").await.unwrap();
    assert_eq!(store.pipeline_nodes_list().await.unwrap().len(), 2);
}

pub async fn a_dead_nodes_row_is_removed_only_on_the_heartbeat_it_was_judged_by(f: &Factory) {
    let store = f.store().await;
    let row = runyard::store::NodeRow {
        heartbeat_at: 100,
        ..node_row("n9")
    };
    store.node_register(row).await.unwrap();
    let beat = |now| NodeHeartbeatParams {
        node_id: "n9".into(),
        running: vec![],
        now,
    };
    let listed = |nodes: Vec<runyard::store::NodeRow>| nodes.iter().any(|n| n.id == "n9");
    // It beat after a rescuer judged it by its beat at 100: the compare-and-delete keeps it.
    assert!(store.node_heartbeat(beat(200)).await.unwrap().registered);
    assert!(!store.node_remove_stale("n9", 100).await.unwrap());
    assert!(listed(store.nodes_list().await.unwrap()));
    // Two rescuers (two handles: two processes) on the beat they both saw: one wins.
    let other = f.open().await;
    let (a, b) = tokio::join!(
        store.node_remove_stale("n9", 200),
        other.node_remove_stale("n9", 200)
    );
    assert_eq!(
        [a.unwrap(), b.unwrap()].iter().filter(|won| **won).count(),
        1,
        "exactly one rescuer owns the rescue"
    );
    assert!(!listed(store.nodes_list().await.unwrap()));
    // The node learns it on its next beat.
    assert!(!store.node_heartbeat(beat(300)).await.unwrap().registered);
}
