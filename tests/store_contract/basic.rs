//! The store's contract, one step at a time (moved from `store::sqlite::tests`).

use serde_json::Value;

use runyard::model::{JobKind, JobStatus, Reason, RunStatus, finalize_job_id};
use runyard::store::{
    AbortOutcome, ClaimedJob, DeliveryNext, DeliveryRecordParams, JobClaimParams, JobStartParams,
    Outcome, OutputAppendParams,
};

use crate::factory::Factory;
use crate::fixtures::*;

fn fail() -> Outcome {
    Outcome::Failed {
        reason: Reason::ExitCode,
        error: None,
    }
}

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
        AbortOutcome::Aborted { aborted_jobs: 0 }
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

pub async fn stale_and_repeated_finishes_change_nothing(f: &Factory) {
    let store = f.store().await;
    let run = create(&*store, 1).await;
    let job = store.job_claim(claim(1)).await.unwrap().jobs.remove(0);
    let stale = ClaimedJob {
        claim_seq: job.claim_seq - 1,
        ..job.clone()
    };
    assert!(
        !store
            .job_finish(finish(&stale, Outcome::Completed))
            .await
            .unwrap()
            .applied
    );
    assert!(
        store
            .job_start(JobStartParams {
                job_id: stale.id.clone(),
                claim_seq: stale.claim_seq,
                pid: 1,
                proc_start: 1,
                now: 1
            })
            .await
            .unwrap()
            .is_none()
    );
    let first = store
        .job_finish(finish(&job, Outcome::Completed))
        .await
        .unwrap();
    assert!(first.applied && first.run_finalized == Some(RunStatus::Completed));
    let again = store.job_finish(finish(&job, fail())).await.unwrap();
    assert!(!again.applied, "a terminal job is never overwritten");
    let view = store.run_get(&run.run_id).await.unwrap().unwrap();
    assert_eq!(
        (
            view.status.as_str(),
            view.shards_done,
            view.jobs[0].status.as_str()
        ),
        ("completed", 1, "completed")
    );
    let appended = store
        .job_output_append(OutputAppendParams {
            job_id: job.id.clone(),
            claim_seq: job.claim_seq,
            stdout: vec!["late".into()],
            stderr: vec![],
        })
        .await
        .unwrap();
    assert!(!appended, "output of a finished execution is refused");
}

pub async fn abort_racing_a_natural_finish_ends_each_job_exactly_once(f: &Factory) {
    let store = f.store().await;
    // The abort comes from another handle: another process (SQLite) or replica (PostgreSQL).
    let other = f.open().await;
    for i in 0..200 {
        let run = create(&*store, 2).await;
        let jobs = store.job_claim(claim(2)).await.unwrap().jobs;
        let outcome = if i % 2 == 0 {
            Outcome::Completed
        } else {
            fail()
        };
        let (abort, fin) = tokio::join!(
            other.run_abort(&run.run_id, 15),
            store.job_finish(finish(&jobs[0], outcome))
        );
        assert!(matches!(abort.unwrap(), AbortOutcome::Aborted { .. }));
        fin.unwrap();
        // The other shard ends because of the abort.
        store
            .job_finish(finish(&jobs[1], Outcome::Aborted))
            .await
            .unwrap();
        let view = store.run_get(&run.run_id).await.unwrap().unwrap();
        assert_eq!((view.status.as_str(), view.shards_done), ("aborted", 2));
        assert!(
            view.jobs
                .iter()
                .all(|j| j.status != "running" && j.status != "queued"),
            "{:?}",
            view.jobs
        );
    }
    let events = events_settled(&*store).await;
    let done = completions(&events);
    assert_eq!(done.len(), 200);
    assert!(done.values().all(|n| *n == 1), "{done:?}");
}

pub async fn orphan_requeue_keeps_the_attempt_and_is_capped(f: &Factory) {
    let store = f.store().await;
    let run = create(&*store, 1).await;
    let job = store.job_claim(claim(1)).await.unwrap().jobs.remove(0);
    let requeue = || Outcome::Requeue {
        reason: Reason::Orphaned,
    };
    let out = store.job_finish(finish(&job, requeue())).await.unwrap();
    assert_eq!(out.status, Some(JobStatus::Queued));
    let again = store
        .job_claim(JobClaimParams {
            now: 100,
            ..claim(1)
        })
        .await
        .unwrap()
        .jobs
        .remove(0);
    assert_eq!((again.attempt, again.claim_seq), (1, job.claim_seq + 1));
    let out = store.job_finish(finish(&again, requeue())).await.unwrap();
    assert_eq!(
        out.status,
        Some(JobStatus::Failed),
        "max_orphan_requeues = 1"
    );
    let view = store.run_get(&run.run_id).await.unwrap().unwrap();
    assert_eq!(
        (view.status.as_str(), view.jobs[0].reason.as_deref()),
        ("failed", Some("orphaned"))
    );
}

pub async fn claims_respect_pipeline_and_global_caps_and_retry_delays(f: &Factory) {
    let store = f.store().await;
    for _ in 0..5 {
        create(&*store, 1).await;
    }
    let capped = JobClaimParams {
        pipelines: [("p".to_string(), 2)].into(),
        ..claim(10)
    };
    assert_eq!(store.job_claim(capped.clone()).await.unwrap().jobs.len(), 2);
    assert_eq!(store.job_claim(capped).await.unwrap().jobs.len(), 0);
    let global = JobClaimParams {
        global_cap: 3,
        ..claim(10)
    };
    let got = store.job_claim(global.clone()).await.unwrap().jobs;
    assert_eq!(got.len(), 1, "3 running over all nodes");
    // A failed attempt waits for its backoff before it can be claimed again.
    store.job_finish(finish(&got[0], fail())).await.unwrap();
    let early = store
        .job_claim(JobClaimParams {
            now: 20,
            ..claim(10)
        })
        .await
        .unwrap();
    assert_eq!(early.jobs.len(), 2, "only the two never-run jobs");
    assert_eq!(early.next_due, Some(20 + 10));
    let due = store
        .job_claim(JobClaimParams {
            now: 31,
            ..claim(10)
        })
        .await
        .unwrap()
        .jobs;
    assert_eq!((due.len(), due[0].attempt), (1, 2));
}

pub async fn a_capped_backlog_does_not_hold_up_other_pipelines_and_order_is_fifo(f: &Factory) {
    let store = f.store().await;
    let mut ids = Vec::new();
    for pipeline in ["a", "a", "a", "b", "b"] {
        ids.push(create_in(&*store, pipeline, 1).await.run_id);
    }
    let p = JobClaimParams {
        pipelines: [("a".to_string(), 1), ("b".to_string(), 0)].into(),
        ..claim(10)
    };
    let got: Vec<String> = store
        .job_claim(p.clone())
        .await
        .unwrap()
        .jobs
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(
        got,
        vec![ids[0].clone(), ids[3].clone(), ids[4].clone()],
        "one of a (its cap), then b, in queue order"
    );
    assert!(store.job_claim(p).await.unwrap().jobs.is_empty());
}

pub async fn only_registered_nodes_claim_and_stranded_jobs_are_found(f: &Factory) {
    let store = f.store().await;
    create(&*store, 1).await;
    let ghost = JobClaimParams {
        node_id: "ghost".into(),
        ..claim(1)
    };
    assert!(
        store.job_claim(ghost).await.unwrap().jobs.is_empty(),
        "no row, no claim"
    );
    let job = store.job_claim(claim(1)).await.unwrap().jobs.remove(0);
    assert!(store.jobs_running_unowned().await.unwrap().is_empty());
    store.node_remove("n1").await.unwrap();
    let stranded = store.jobs_running_unowned().await.unwrap();
    assert_eq!(
        stranded
            .iter()
            .map(|j| (j.id.clone(), j.claim_seq))
            .collect::<Vec<_>>(),
        vec![(job.id, job.claim_seq)]
    );
}

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
    let (pruned_through, newest) = store.events_bounds().await.unwrap();
    assert!(
        pruned_through > 0,
        "the oldest ids are gone, so a resume from 0 gets a resync"
    );
    assert!(newest >= events.last().unwrap().id);
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
