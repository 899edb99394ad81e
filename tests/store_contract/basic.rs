//! The store's contract, one step at a time (moved from `store::sqlite::tests`).

use serde_json::Value;

use runyard::model::{JobKind, JobStatus, Reason, RunStatus, finalize_job_id};
use runyard::store::{
    AbortOutcome, ClaimedJob, DeliveryNext, DeliveryRecordParams, JobClaimParams,
    JobProgressParams, JobStartParams, NodeHeartbeatParams, Outcome, OutputAppendParams,
    ParamFilter, PipelineNodeState, PipelineStatsParams, RunCreateParams, RunFilter, Stream,
};

use crate::factory::{Factory, node_row};
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

fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub async fn output_lines_are_numbered_per_job_and_logs_keep_the_tail(f: &Factory) {
    let store = f.store().await;
    create(&*store, 1).await;
    let job = store.job_claim(claim(1)).await.unwrap().jobs.remove(0);
    let append = |stdout: &[&str], stderr: &[&str]| OutputAppendParams {
        job_id: job.id.clone(),
        claim_seq: job.claim_seq,
        stdout: lines(stdout),
        stderr: lines(stderr),
        now: 15,
        first_line: None,
    };
    for (out, err) in [
        (&["a", "b"][..], &["e1"][..]),
        (&["c"][..], &[][..]),
        (&[][..], &["e2", "e3"][..]),
    ] {
        assert!(store.job_output_append(append(out, err)).await.unwrap());
    }
    assert_eq!(store.job_output_len(&job.id).await.unwrap(), 6);
    let all = store.job_output_after(&job.id, -1, 100).await.unwrap();
    let got: Vec<(i64, Stream, &str)> = all
        .iter()
        .map(|l| (l.seq, l.stream, l.line.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, Stream::Stdout, "a"),
            (1, Stream::Stdout, "b"),
            (2, Stream::Stderr, "e1"),
            (3, Stream::Stdout, "c"),
            (4, Stream::Stderr, "e2"),
            (5, Stream::Stderr, "e3"),
        ],
        "one sequence per job over both streams, stdout before stderr within a flush"
    );
    // A cursor may stop inside a flush; following it one line at a time sees every line once.
    let mid: Vec<i64> = store
        .job_output_after(&job.id, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|l| l.seq)
        .collect();
    assert_eq!(mid, vec![1, 2, 3, 4, 5]);
    let mut cursor = -1;
    let mut followed = Vec::new();
    loop {
        let page = store.job_output_after(&job.id, cursor, 1).await.unwrap();
        let Some(last) = page.last() else { break };
        cursor = last.seq;
        followed.extend(page.into_iter().map(|l| l.seq));
    }
    assert_eq!(followed, (0..6).collect::<Vec<_>>());

    let logs = store.job_logs(&job.id, None).await.unwrap().unwrap();
    assert_eq!(
        (logs.stdout, logs.stderr, logs.truncated),
        (lines(&["a", "b", "c"]), lines(&["e1", "e2", "e3"]), false)
    );
    let tail = store.job_logs(&job.id, Some(2)).await.unwrap().unwrap();
    assert_eq!(
        (tail.stdout, tail.stderr),
        (lines(&["b", "c"]), lines(&["e2", "e3"]))
    );
    assert!(store.job_logs("no-such-job", None).await.unwrap().is_none());

    let mut end = finish(&job, Outcome::Completed);
    (end.stdout_bytes, end.stderr_bytes, end.truncated) = (10, 20, true);
    assert!(store.job_finish(end).await.unwrap().applied);
    let view = store.job_get(&job.id).await.unwrap().unwrap();
    assert_eq!(
        (view.stdout_bytes, view.stderr_bytes, view.truncated),
        (10, 20, true)
    );
    assert!(
        store
            .job_logs(&job.id, None)
            .await
            .unwrap()
            .unwrap()
            .truncated
    );
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

pub async fn runs_list_filters_by_pipeline_and_status_newest_first(f: &Factory) {
    let store = f.store().await;
    let mut in_p = Vec::new();
    for _ in 0..3 {
        in_p.push(create(&*store, 2).await.run_id);
    }
    let in_q = create_in(&*store, "q", 1).await.run_id;
    // The oldest run of p completes.
    for job in store.job_claim(claim(2)).await.unwrap().jobs {
        assert_eq!(job.run_id, in_p[0]);
        store
            .job_finish(finish(&job, Outcome::Completed))
            .await
            .unwrap();
    }
    let list = |pipeline: Option<&str>, status: Option<RunStatus>, limit: u32, offset: u32| {
        let store = store.clone();
        let pipeline = pipeline.map(str::to_string);
        async move {
            store
                .runs_list(RunFilter {
                    pipeline,
                    status,
                    limit,
                    offset,
                    ..RunFilter::default()
                })
                .await
                .unwrap()
        }
    };
    let ids = |runs: &[runyard::store::RunRecord]| -> Vec<String> {
        runs.iter().map(|r| r.run_id.clone()).collect()
    };
    let mut newest_first = in_p.clone();
    newest_first.sort();
    newest_first.reverse();
    let p = list(Some("p"), None, 10, 0).await;
    assert_eq!(ids(&p), newest_first);
    assert!(p.iter().all(|r| r.jobs.len() == 2 && r.pipeline_id == "p"));
    assert_eq!(
        ids(&list(Some("p"), Some(RunStatus::Completed), 10, 0).await),
        vec![in_p[0].clone()]
    );
    assert_eq!(
        ids(&list(None, Some(RunStatus::Queued), 10, 0).await).len(),
        3,
        "two of p and the one of q"
    );
    assert_eq!(
        ids(&list(Some("p"), None, 1, 1).await),
        vec![newest_first[1].clone()]
    );
    let all = list(None, None, 10, 0).await;
    assert_eq!(all.len(), 4);
    assert!(all.iter().any(|r| r.run_id == in_q));
    let done = all.iter().find(|r| r.run_id == in_p[0]).unwrap();
    assert_eq!((done.status.as_str(), done.shards_done), ("completed", 2));
    assert!(done.finished_at.is_some());
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

pub async fn a_reused_idempotency_key_returns_the_first_run(f: &Factory) {
    let store = f.store().await;
    let trigger = |pipeline: &str, value: &str| {
        let mut p = run_params(pipeline, 2);
        p.idempotency_key = Some("k".into());
        p.params = [("v".to_string(), value.to_string())].into();
        p
    };
    let first = store.run_create(trigger("p", "1")).await.unwrap();
    assert!(!first.existing);
    assert_eq!(first.existing_params, None);
    let again = store.run_create(trigger("p", "2")).await.unwrap();
    assert!(again.existing);
    assert_eq!(
        (&again.run_id, &again.job_ids, again.created_at),
        (&first.run_id, &first.job_ids, first.created_at)
    );
    assert_eq!(
        again.existing_params,
        Some([("v".to_string(), "1".to_string())].into()),
        "the first run's parameters, to tell a reused key from a retry"
    );
    let elsewhere = store.run_create(trigger("q", "1")).await.unwrap();
    assert!(!elsewhere.existing, "keys are per pipeline");
    assert_ne!(elsewhere.run_id, first.run_id);
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

pub async fn run_ids_by_prefix_range_scans_the_ids_that_start_with_it(f: &Factory) {
    let store = f.store().await;
    let a = create(&*store, 1).await.run_id;
    let b = create(&*store, 1).await.run_id;
    // Created in the same millisecond range: they share their first digits.
    assert_eq!(store.run_ids_by_prefix(&a[..4], 2).await.unwrap().len(), 2);
    assert_eq!(
        store.run_ids_by_prefix(&a, 2).await.unwrap(),
        vec![a.clone()]
    );
    assert_eq!(
        store.run_ids_by_prefix(&b, 2).await.unwrap(),
        vec![b.clone()]
    );
    assert!(
        store
            .run_ids_by_prefix("ffffffff", 2)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.run_ids_by_prefix("", 1).await.unwrap().len(), 1);
}

pub async fn a_runs_events_come_without_progress_and_output_keeps_its_execution_and_time(
    f: &Factory,
) {
    let store = f.store().await;
    let run = create(&*store, 1).await;
    let other = create(&*store, 1).await;
    let job = store.job_claim(claim(1)).await.unwrap().jobs.remove(0);
    assert_eq!(job.run_id, run.run_id);
    let start = JobStartParams {
        job_id: job.id.clone(),
        claim_seq: job.claim_seq,
        pid: 42,
        proc_start: 1,
        now: 11,
    };
    store.job_start(start).await.unwrap();
    for (percent, now) in [(10, 12), (20, 13)] {
        store
            .job_progress(JobProgressParams {
                job_id: job.id.clone(),
                claim_seq: job.claim_seq,
                percent,
                message: String::new(),
                now,
            })
            .await
            .unwrap();
    }
    let appended = store
        .job_output_append(OutputAppendParams {
            job_id: job.id.clone(),
            claim_seq: job.claim_seq,
            stdout: vec!["a".into(), "b".into()],
            stderr: vec!["c".into()],
            now: 15,
            first_line: None,
        })
        .await
        .unwrap();
    assert!(appended);
    let mut failed = finish(&job, fail());
    failed.exit_code = Some(3);
    store.job_finish(failed).await.unwrap();

    // What a reader sees below the horizon: wait until everything above is visible.
    events_settled(&*store).await;
    let events = store.run_events(&run.run_id, 100).await.unwrap();
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["job:created", "job:started", "job:failed"]);
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    let started: Value = serde_json::from_str(&events[1].data).unwrap();
    let failed: Value = serde_json::from_str(&events[2].data).unwrap();
    assert_eq!(
        (started["claimSeq"].as_i64(), started["attempt"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        (
            failed["claimSeq"].as_i64(),
            failed["status"].as_str(),
            failed["nextAttempt"].as_u64()
        ),
        (Some(1), Some("queued"), Some(2))
    );
    assert_eq!(store.run_events(&run.run_id, 2).await.unwrap().len(), 2);
    assert_eq!(store.run_events(&other.run_id, 100).await.unwrap().len(), 1);

    let lines = store.job_output_after(&job.id, -1, 100).await.unwrap();
    let got: Vec<_> = lines
        .iter()
        .map(|l| (l.seq, l.line.as_str(), l.stream, l.claim_seq, l.time))
        .collect();
    assert_eq!(
        got,
        [
            (0, "a", Stream::Stdout, 1, Some(15)),
            (1, "b", Stream::Stdout, 1, Some(15)),
            (2, "c", Stream::Stderr, 1, Some(15)),
        ]
    );
}

pub async fn runs_are_filtered_by_id_prefix_suffix_parameter_and_actor(f: &Factory) {
    let store = f.store().await;
    let mut ids = Vec::new();
    for (word, actor) in [("x", Some("ann")), ("y", Some("bo")), ("y", None)] {
        let mut p = run_params("p", 1);
        p.params = [("word".to_string(), word.to_string())].into();
        p.actor = actor.map(str::to_string);
        ids.push(store.run_create(p).await.unwrap().run_id);
    }
    let list = |f: RunFilter| {
        let store = store.clone();
        async move {
            store
                .runs_list(RunFilter { limit: 50, ..f })
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.run_id)
                .collect::<Vec<_>>()
        }
    };
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(list(RunFilter::default()).await, newest_first);
    let by = |run_id: &str| RunFilter {
        run_id: Some(run_id.to_string()),
        ..Default::default()
    };
    assert_eq!(list(by(&ids[1][..34])).await, [ids[1].as_str()]);
    assert_eq!(list(by(&ids[0])).await, [ids[0].as_str()]);
    assert_eq!(
        list(by(&ids[2][28..])).await,
        [ids[2].as_str()],
        "the last 8 digits"
    );
    assert_eq!(list(by(&ids[2][..1])).await.len(), 3);
    assert_eq!(list(by("ffffffff-")).await.len(), 0);
    let param = |name: &str, value: Option<&str>| RunFilter {
        param: Some(ParamFilter {
            name: name.into(),
            value: value.map(str::to_string),
        }),
        ..Default::default()
    };
    assert_eq!(
        list(param("word", Some("y"))).await,
        [ids[2].as_str(), ids[1].as_str()]
    );
    assert_eq!(list(param("word", None)).await.len(), 3);
    assert_eq!(list(param("other", None)).await.len(), 0);
    let actor = RunFilter {
        actor: Some("bo".into()),
        ..param("word", Some("y"))
    };
    assert_eq!(list(actor).await, [ids[1].as_str()]);
}

pub async fn stats_count_runs_by_the_bucket_they_finished_in(f: &Factory) {
    let store = f.store().await;
    create(&*store, 1).await;
    create(&*store, 1).await;
    let jobs = store.job_claim(claim(2)).await.unwrap().jobs;
    let mut ends = Vec::new();
    for (job, outcome, now) in [
        (&jobs[0], Outcome::Completed, 1_050),
        (&jobs[1], Outcome::Aborted, 2_500),
    ] {
        let mut p = finish(job, outcome);
        p.now = now;
        p.start = Some(JobStartParams {
            job_id: job.id.clone(),
            claim_seq: job.claim_seq,
            pid: 1,
            proc_start: 1,
            now: 1_000,
        });
        ends.push(store.job_finish(p).await.unwrap().run_finalized);
    }
    assert_eq!(ends, [Some(RunStatus::Completed), Some(RunStatus::Aborted)]);
    let rows = store
        .pipeline_stats(PipelineStatsParams {
            since: 0,
            until: 3_000,
            bucket_ms: 1_000,
        })
        .await
        .unwrap();
    let got: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.pipeline.as_str(),
                r.bucket,
                r.status.as_str(),
                r.runs,
                r.duration_sum_ms,
                r.duration_max_ms,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("p", 1, "completed", 1, 50, 50),
            ("p", 2, "aborted", 1, 1_500, 1_500)
        ]
    );
    let later = store
        .pipeline_stats(PipelineStatsParams {
            since: 2_000,
            until: 2_400,
            bucket_ms: 100,
        })
        .await
        .unwrap();
    assert!(later.is_empty(), "{later:?}");
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

/// Issue 19: an append names the line it must start at; a retry of a batch whose commit
/// landed (its answer lost) adds nothing, a batch that does not start where the log ends
/// is refused, and a new claim learns where the log ends.
pub async fn an_append_retried_after_its_commit_adds_nothing(f: &Factory) {
    let store = f.store().await;
    create(&*store, 1).await;
    let job = store.job_claim(claim(1)).await.unwrap().jobs.remove(0);
    assert_eq!(job.output_lines, 0);
    let append = |job: &ClaimedJob, first: i64, out: &[&str]| OutputAppendParams {
        job_id: job.id.clone(),
        claim_seq: job.claim_seq,
        stdout: lines(out),
        stderr: lines(&["err"]),
        now: 15,
        first_line: Some(first),
    };
    assert!(
        store
            .job_output_append(append(&job, 0, &["a", "b"]))
            .await
            .unwrap()
    );
    assert!(
        store
            .job_output_append(append(&job, 0, &["a", "b"]))
            .await
            .unwrap(),
        "a retry of a landed batch counts as written"
    );
    assert_eq!(
        store.job_output_len(&job.id).await.unwrap(),
        3,
        "added once"
    );
    assert!(
        !store
            .job_output_append(append(&job, 2, &["c"]))
            .await
            .unwrap(),
        "a batch that does not start where the log ends is refused"
    );
    assert!(
        store
            .job_output_append(append(&job, 3, &["c"]))
            .await
            .unwrap()
    );
    let stale = ClaimedJob {
        claim_seq: job.claim_seq - 1,
        ..job.clone()
    };
    assert!(
        !store
            .job_output_append(append(&stale, 5, &["x"]))
            .await
            .unwrap()
    );
    let got: Vec<String> = store
        .job_output_after(&job.id, -1, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert_eq!(got, ["a", "b", "err", "c", "err"]);
    // Handed back and claimed again: the next execution's lines follow on.
    let requeue = Outcome::Requeue {
        reason: Reason::Orphaned,
    };
    assert!(
        store
            .job_finish(finish(&job, requeue))
            .await
            .unwrap()
            .applied
    );
    let again = store
        .job_claim(claim_later(1))
        .await
        .unwrap()
        .jobs
        .remove(0);
    assert_eq!(again.id, job.id);
    assert_eq!(again.output_lines, 5);
    assert!(
        store
            .job_output_append(append(&again, 5, &["d"]))
            .await
            .unwrap()
    );
    assert_eq!(store.job_output_len(&job.id).await.unwrap(), 7);
}

/// Issue 19: a start written again (a retry after a commit whose answer was lost) is
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

/// Issue 18: an idempotent retry answers with the run's shard job ids, the same on every
/// backend, whether or not its finalizer is queued (SQLite listed the finalizer too, so
/// the scheduler answered the same request 409 there and 202 on PostgreSQL).
pub async fn an_idempotent_retry_lists_the_shards_even_with_a_finalizer_queued(f: &Factory) {
    let store = f.store().await;
    let params = RunCreateParams {
        has_finalizer: true,
        idempotency_key: Some("k-fin".into()),
        ..run_params("p", 2)
    };
    let first = store.run_create(params.clone()).await.unwrap();
    for job in store.job_claim(claim(2)).await.unwrap().jobs {
        assert!(
            store
                .job_finish(finish(&job, Outcome::Completed))
                .await
                .unwrap()
                .applied
        );
    }
    let run = store.run_get(&first.run_id).await.unwrap().unwrap();
    assert!(run.finalizer.is_some(), "the finalizer is queued");
    let again = store
        .run_create(RunCreateParams {
            run_id: runyard::model::RunId::new().to_string(),
            ..params
        })
        .await
        .unwrap();
    assert!(again.existing);
    assert_eq!(again.run_id, first.run_id);
    assert_eq!(
        again.job_ids, first.job_ids,
        "the shards, not the finalizer"
    );
}
