//! Each execution's writes are fenced by its claim: a stale or repeated finish changes
//! nothing, an abort racing a natural finish ends each job exactly once, a start after
//! an abort learns of it, a start recorded twice is one start, and a heartbeat names
//! the executions its node must stop.

use runyard::model::{Reason, RunStatus};
use runyard::store::{
    AbortOutcome, ClaimedJob, JobClaimParams, JobStartParams, NodeHeartbeatParams, Outcome,
    OutputAppendParams,
};

use crate::factory::{Factory, node_row};
use crate::fixtures::*;

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
            now: 30,
            first_line: None,
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

pub async fn a_start_after_an_abort_learns_of_it_and_does_not_revive_the_run(f: &Factory) {
    let store = f.store().await;
    let run = create(&*store, 1).await;
    let job = store.job_claim(claim(1)).await.unwrap().jobs.remove(0);
    assert_eq!(
        store.run_abort(&run.run_id, 11).await.unwrap(),
        AbortOutcome::Aborted {
            aborted_jobs: 1,
            queued: 0,
            running: 1
        }
    );
    let started = store
        .job_start(JobStartParams {
            job_id: job.id.clone(),
            claim_seq: job.claim_seq,
            pid: 4242,
            proc_start: 7,
            now: 12,
        })
        .await
        .unwrap();
    assert_eq!(
        started,
        Some(true),
        "the start learns the abort was requested"
    );
    let view = store.run_get(&run.run_id).await.unwrap().unwrap();
    assert_eq!(view.status, "aborted");
    assert_eq!(
        (view.jobs[0].pid, view.jobs[0].abort_requested),
        (Some(4242), true)
    );
    let end = store
        .job_finish(finish(&job, Outcome::Aborted))
        .await
        .unwrap();
    assert_eq!(end.run_finalized, Some(RunStatus::Aborted));
    assert_eq!(
        store.run_abort(&run.run_id, 30).await.unwrap(),
        AbortOutcome::Aborted {
            aborted_jobs: 0,
            queued: 0,
            running: 0
        }
    );
    assert_eq!(
        store.run_abort("no-such-run", 30).await.unwrap(),
        AbortOutcome::NotFound
    );
}

/// A start written again (a retry after a commit whose answer was lost) is
/// taken as recorded and emits no second `job:started`.
pub async fn a_start_recorded_twice_emits_one_started_event(f: &Factory) {
    let store = f.store().await;
    create(&*store, 1).await;
    let job = store.job_claim(claim(1)).await.unwrap().jobs.remove(0);
    let start = JobStartParams {
        job_id: job.id.clone(),
        claim_seq: job.claim_seq,
        pid: 4242,
        proc_start: 7,
        now: 12,
    };
    assert_eq!(store.job_start(start.clone()).await.unwrap(), Some(false));
    assert_eq!(store.job_start(start).await.unwrap(), Some(false));
    let started = store
        .events_after(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.name == "job:started")
        .count();
    assert_eq!(started, 1);
}

pub async fn a_heartbeat_names_the_executions_its_node_must_stop(f: &Factory) {
    let store = f.store().await;
    store.node_register(node_row("n2")).await.unwrap();
    let runs: Vec<String> = [
        create(&*store, 1).await,
        create(&*store, 1).await,
        create(&*store, 1).await,
    ]
    .into_iter()
    .map(|r| r.run_id)
    .collect();
    let jobs = store.job_claim(claim(3)).await.unwrap().jobs;
    let by_run = |run: &str| jobs.iter().find(|j| j.run_id == run).unwrap().clone();
    let (live, aborted, lost) = (by_run(&runs[0]), by_run(&runs[1]), by_run(&runs[2]));
    store.run_abort(&aborted.run_id, 15).await.unwrap();
    // `lost` goes back to the queue and is claimed by n2.
    let requeue = Outcome::Requeue {
        reason: Reason::Orphaned,
    };
    assert!(
        store
            .job_finish(finish(&lost, requeue))
            .await
            .unwrap()
            .applied
    );
    let n2 = JobClaimParams {
        node_id: "n2".into(),
        ..claim_later(1)
    };
    let taken = store.job_claim(n2).await.unwrap().jobs.remove(0);
    assert_eq!(taken.id, lost.id);

    let beat = store
        .node_heartbeat(NodeHeartbeatParams {
            node_id: "n1".into(),
            running: vec![
                (live.id.clone(), live.claim_seq),
                (aborted.id.clone(), aborted.claim_seq),
                (lost.id.clone(), lost.claim_seq),
                ("no-such-job".into(), 1),
            ],
            now: 50,
        })
        .await
        .unwrap();
    assert!(beat.registered);
    let mut cancel = beat.cancel;
    cancel.sort();
    let mut expected = vec![
        (aborted.id.clone(), aborted.claim_seq),
        (lost.id.clone(), lost.claim_seq),
        ("no-such-job".to_string(), 1),
    ];
    expected.sort();
    assert_eq!(cancel, expected, "aborted, no longer ours, or unknown");
    assert_eq!(
        store.jobs_abort_requested("n1").await.unwrap(),
        vec![(aborted.id.clone(), aborted.claim_seq)]
    );
    let mut on_n1: Vec<String> = store
        .jobs_running_on("n1")
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    on_n1.sort();
    let mut want = vec![live.id.clone(), aborted.id.clone()];
    want.sort();
    assert_eq!(on_n1, want);
    let on_n2 = store.jobs_running_on("n2").await.unwrap();
    assert_eq!(
        on_n2
            .iter()
            .map(|j| (&j.id, j.claim_seq))
            .collect::<Vec<_>>(),
        vec![(&taken.id, taken.claim_seq)]
    );
    let n1 = store
        .nodes_list()
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.id == "n1")
        .unwrap();
    assert_eq!(n1.heartbeat_at, 50);
    store.node_remove("n2").await.unwrap();
    let gone = store
        .node_heartbeat(NodeHeartbeatParams {
            node_id: "n2".into(),
            running: vec![],
            now: 60,
        })
        .await
        .unwrap();
    assert!(
        !gone.registered,
        "a removed node learns it was declared dead"
    );
    assert_eq!(
        store
            .nodes_list()
            .await
            .unwrap()
            .iter()
            .map(|n| n.id.as_str())
            .collect::<Vec<_>>(),
        vec!["n1"]
    );
}
