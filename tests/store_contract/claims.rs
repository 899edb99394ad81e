//! What a claim takes: no more than the pipeline's and the global cap, nothing still
//! waiting for its retry delay, the oldest first with a capped pipeline's backlog holding
//! up no other, and nothing for a node without a row. An orphan handed back keeps its
//! attempt (a bounded number of times); a running job whose node is gone is found.

use runyard::model::{JobStatus, Reason};
use runyard::store::{JobClaimParams, Outcome};

use crate::factory::Factory;
use crate::fixtures::*;

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

/// The global cap's unit comes back however a job stops running (PostgreSQL frees its
/// cap token in a trigger on that very transaction; a path that forgot would leave the
/// cap one unit short for good), and a finish that claims the next job in the same
/// transaction may take the unit its own end freed.
pub async fn every_way_a_job_stops_running_frees_its_global_cap_unit(f: &Factory) {
    let store = f.store().await;
    for _ in 0..8 {
        create(&*store, 1).await;
    }
    let capped = JobClaimParams {
        global_cap: 1,
        ..claim_later(4)
    };
    let ways = [
        ("completed", Outcome::Completed),
        ("failed and queued for a retry", fail()),
        (
            "requeued",
            Outcome::Requeue {
                reason: Reason::Orphaned,
            },
        ),
        (
            "released by its node",
            Outcome::Release {
                reason: Reason::SetupFailed,
                error: None,
            },
        ),
        ("aborted", Outcome::Aborted),
    ];
    for (way, outcome) in ways {
        let got = ok("job_claim", store.job_claim(capped.clone())).await.jobs;
        assert_eq!(
            got.len(),
            1,
            "before a job {way}: the cap's one unit is free"
        );
        assert!(
            ok("job_claim", store.job_claim(capped.clone()))
                .await
                .jobs
                .is_empty(),
            "the cap of 1 holds while a job runs"
        );
        let out = ok("job_finish", store.job_finish(finish(&got[0], outcome))).await;
        assert!(out.applied, "the end of a job {way} applies");
    }
    let got = ok("job_claim", store.job_claim(capped.clone())).await.jobs;
    assert_eq!(got.len(), 1, "after a job aborted: the unit is free");
    let mut end = finish(&got[0], Outcome::Completed);
    end.claim_next = Some(capped.clone());
    let out = ok("job_finish", store.job_finish(end)).await;
    assert_eq!(out.next.len(), 1, "the finish takes the unit its end freed");
    assert!(
        ok("job_claim", store.job_claim(capped))
            .await
            .jobs
            .is_empty(),
        "and the cap of 1 holds again"
    );
}
