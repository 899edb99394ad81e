//! How a run ends: a shard that is retried holds its run open until it ends for good, a
//! finalizer runs once after every shard and gates the run (an aborted run still gets
//! it, and stays aborted), and a terminal run with a callback has one webhook in the
//! outbox, leased to one node at a time.

use serde_json::Value;

use runyard::model::{JobKind, JobStatus, RunStatus, finalize_job_id};
use runyard::store::{AbortOutcome, DeliveryNext, DeliveryRecordParams, JobClaimParams, Outcome};

use crate::factory::Factory;
use crate::fixtures::*;

pub async fn a_retried_shard_holds_the_run_open_until_it_ends_for_good(f: &Factory) {
    let store = f.store().await;
    let run = create(&*store, 2).await;
    let jobs = store.job_claim(claim(2)).await.unwrap().jobs;
    assert!(
        store
            .job_finish(finish(&jobs[0], Outcome::Completed))
            .await
            .unwrap()
            .run_finalized
            .is_none()
    );
    let retried = store.job_finish(finish(&jobs[1], fail())).await.unwrap();
    assert_eq!(
        (retried.status, retried.run_finalized),
        (Some(JobStatus::Queued), None)
    );
    assert_eq!(
        store
            .run_get(&run.run_id)
            .await
            .unwrap()
            .unwrap()
            .shards_done,
        1
    );
    let again = store
        .job_claim(JobClaimParams {
            now: 1_000_000,
            ..claim(1)
        })
        .await
        .unwrap()
        .jobs;
    assert_eq!(again[0].attempt, 2);
    let last = store.job_finish(finish(&again[0], fail())).await.unwrap();
    assert_eq!(
        (last.status, last.run_finalized),
        (Some(JobStatus::Failed), Some(RunStatus::Failed))
    );
    assert_eq!(run_completed_events(&*store, &run.run_id).await, 1);
}

pub async fn a_finalizer_runs_once_after_every_shard_and_gates_the_run(f: &Factory) {
    let store = f.store().await;
    let run = create_with(&*store, "p", 2, true, None).await;
    let shards = store.job_claim(claim(2)).await.unwrap().jobs;
    assert_eq!(shards.len(), 2);
    assert!(shards.iter().all(|j| j.kind == JobKind::Shard));
    let mut with_result = finish(&shards[0], Outcome::Completed);
    with_result.result = Some(r#"{"passed":3}"#.into());
    assert_eq!(
        store.job_finish(with_result).await.unwrap().run_finalized,
        None
    );
    // No finalize job before the last shard lands.
    assert!(
        store
            .job_claim(claim_later(2))
            .await
            .unwrap()
            .jobs
            .is_empty()
    );
    let last = store
        .job_finish(finish(&shards[1], Outcome::Completed))
        .await
        .unwrap();
    assert_eq!(
        last.run_finalized, None,
        "the finalizer decides, not the last shard"
    );
    let view = store.run_get(&run.run_id).await.unwrap().unwrap();
    assert!(
        view.finished_at.is_none(),
        "not terminal before the finalizer"
    );
    assert_eq!(view.shards_status.as_deref(), Some("completed"));
    assert_eq!(view.jobs.len(), 2, "the finalizer is not one of the shards");
    let fin = store.job_claim(claim_later(2)).await.unwrap().jobs;
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0].kind, JobKind::Finalize);
    assert_eq!(fin[0].id, finalize_job_id(&run.run_id));
    let summary = store.run_summary(&run.run_id).await.unwrap().unwrap();
    assert_eq!(summary["shards"][0]["result"]["passed"], 3);
    assert_eq!(summary["shards"].as_array().unwrap().len(), 2);
    // The finalizer fails: the run fails (quality gate), exactly once.
    let gate = store.job_finish(finish(&fin[0], fail())).await.unwrap();
    assert_eq!(
        gate.status,
        Some(JobStatus::Failed),
        "a finalizer is not retried"
    );
    assert_eq!(gate.run_finalized, Some(RunStatus::Failed));
    assert_eq!(run_completed_events(&*store, &run.run_id).await, 1);
    let view = store.run_get(&run.run_id).await.unwrap().unwrap();
    assert_eq!(view.finalizer.unwrap().status, "failed");
}

pub async fn an_aborted_run_still_gets_its_finalizer_and_stays_aborted(f: &Factory) {
    let store = f.store().await;
    let run = create_with(&*store, "p", 1, true, None).await;
    let job = store.job_claim(claim(1)).await.unwrap().jobs.remove(0);
    store.run_abort(&run.run_id, 15).await.unwrap();
    store
        .job_finish(finish(&job, Outcome::Aborted))
        .await
        .unwrap();
    let fin = store
        .job_claim(claim_later(1))
        .await
        .unwrap()
        .jobs
        .remove(0);
    assert_eq!(fin.kind, JobKind::Finalize);
    // A second abort while it runs changes nothing for the finalizer.
    assert_eq!(
        store.run_abort(&run.run_id, 16).await.unwrap(),
        AbortOutcome::Aborted {
            aborted_jobs: 0,
            queued: 0,
            running: 0
        }
    );
    let done = store
        .job_finish(finish(&fin, Outcome::Completed))
        .await
        .unwrap();
    assert_eq!(done.run_finalized, Some(RunStatus::Aborted));
    assert_eq!(run_completed_events(&*store, &run.run_id).await, 1);
}

pub async fn a_terminal_run_with_a_callback_has_exactly_one_outbox_row(f: &Factory) {
    let store = f.store().await;
    let run = create_with(&*store, "p", 1, false, Some("https://hooks.example.com/x")).await;
    assert!(
        store
            .deliveries_claim("n1", 100, 1000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let job = store.job_claim(claim(1)).await.unwrap().jobs.remove(0);
    store
        .job_finish(finish(&job, Outcome::Completed))
        .await
        .unwrap();
    let due = store.deliveries_claim("n1", 100, 1000, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    let payload: Value = serde_json::from_str(&due[0].payload).unwrap();
    assert_eq!(payload["type"], "run.completed");
    assert_eq!(payload["data"]["status"], "completed");
    // Leased: another node gets nothing until the lease expires.
    assert!(
        store
            .deliveries_claim("n2", 200, 1000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let attempt = |node: &str, next| DeliveryRecordParams {
        id: due[0].id.clone(),
        node_id: node.into(),
        started_at: 300,
        duration_ms: 5,
        status_code: Some(500),
        error: Some("HTTP 500".into()),
        next,
    };
    assert!(
        !store
            .delivery_record(attempt("n2", DeliveryNext::GiveUp))
            .await
            .unwrap()
    );
    assert!(
        store
            .delivery_record(attempt("n1", DeliveryNext::RetryAt(400)))
            .await
            .unwrap()
    );
    assert!(
        store
            .deliveries_claim("n1", 350, 1000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let again = store.deliveries_claim("n2", 400, 1000, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    assert_eq!(
        again[0].id, due[0].id,
        "the webhook id is stable over retries"
    );
    let mut ok = attempt("n2", DeliveryNext::Delivered);
    ok.status_code = Some(204);
    ok.error = None;
    assert!(store.delivery_record(ok).await.unwrap());
    let views = store.deliveries_of_run(&run.run_id).await.unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].status, "delivered");
    assert_eq!(views[0].history.len(), 2);
    assert_eq!(views[0].history[1].node, "n2");
}
