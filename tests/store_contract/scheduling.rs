//! The contract of the scheduling features: exit-code retry rules, paused pipelines,
//! re-runs, delayed runs, priorities and schedules. Each rule is decided above the
//! backends; these tests hold both stores to it.

use runyard::model::{JobStatus, Reason};
use runyard::store::rerun::KeptShard;
use runyard::store::transition::RetryOn;
use runyard::store::{
    JobClaimParams, JobPolicy, Outcome, PipelinePause, PipelinePauseParams, RunCreateParams,
    RunOptions, ScheduleFireParams,
};

use crate::factory::{Factory, node_row};
use crate::fixtures::*;

fn failed() -> Outcome {
    Outcome::Failed {
        reason: Reason::ExitCode,
        error: None,
    }
}

/// A run of one shard in `p` with three attempts and the given exit-code rule.
fn with_rule(retry_on: RetryOn) -> RunCreateParams {
    RunCreateParams {
        policy: JobPolicy {
            max_attempts: 3,
            retry_on,
            ..policy()
        },
        ..run_params("p", 1)
    }
}

pub async fn exit_codes_the_pipeline_does_not_retry_fail_at_once(f: &Factory) {
    let store = f.store().await;
    // `no_retry_exit_codes = [1]`: exit 1 fails for good on the first attempt, exit 2 retries.
    for (rule, code, want) in [
        (RetryOn::Except(vec![1]), Some(1), JobStatus::Failed),
        (RetryOn::Except(vec![1]), Some(2), JobStatus::Queued),
        (RetryOn::Only(vec![137]), Some(1), JobStatus::Failed),
        (RetryOn::Only(vec![137]), Some(137), JobStatus::Queued),
        (RetryOn::Any, Some(1), JobStatus::Queued),
    ] {
        let run = ok("run_create", store.run_create(with_rule(rule.clone()))).await;
        let job = ok(
            "job_claim",
            store.job_claim(JobClaimParams {
                now: 1_000_000,
                ..claim(1)
            }),
        )
        .await
        .jobs
        .remove(0);
        assert_eq!(job.run_id, run.run_id);
        let mut end = finish(&job, failed());
        end.exit_code = code;
        let out = ok("job_finish", store.job_finish(end)).await;
        assert_eq!(out.status, Some(want), "{rule:?} with exit {code:?}");
        let view = ok("job_get", store.job_get(&job.id)).await.unwrap();
        assert_eq!(view.attempt, if want == JobStatus::Queued { 2 } else { 1 });
        if want == JobStatus::Failed {
            assert_eq!(view.reason.as_deref(), Some("exit_code"));
            assert_eq!(out.run_finalized, Some(runyard::model::RunStatus::Failed));
        } else {
            // Get the retry out of the way so the next case claims its own run.
            ok("run_abort", store.run_abort(&run.run_id, 30)).await;
        }
    }
    // A timeout has no exit code: it still retries under a rule that names codes.
    ok(
        "run_create",
        store.run_create(with_rule(RetryOn::Except(vec![1]))),
    )
    .await;
    let job = ok(
        "job_claim",
        store.job_claim(JobClaimParams {
            now: 1_000_000,
            ..claim(1)
        }),
    )
    .await
    .jobs
    .remove(0);
    let mut end = finish(
        &job,
        Outcome::Failed {
            reason: Reason::Timeout,
            error: None,
        },
    );
    end.exit_code = None;
    let out = ok("job_finish", store.job_finish(end)).await;
    assert_eq!(out.status, Some(JobStatus::Queued));
}

pub async fn a_paused_pipeline_is_claimed_by_no_node_until_resumed(f: &Factory) {
    let store = f.store().await;
    let other = f.open().await;
    ok("register n2", other.node_register(node_row("n2"))).await;
    let both = |node: &str| JobClaimParams {
        node_id: node.into(),
        pipelines: [("p".to_string(), 0), ("q".to_string(), 0)].into(),
        ..claim(10)
    };
    let running = create_in(&*store, "p", 1).await;
    let job = ok("job_claim", store.job_claim(both("n1")))
        .await
        .jobs
        .remove(0);
    let pause = |paused: bool| PipelinePauseParams {
        pipeline: "p".into(),
        paused,
        actor: Some("ops".into()),
        now: 11,
    };
    assert!(ok("pause", store.pipeline_pause(pause(true))).await);
    assert!(
        !ok("pause again", other.pipeline_pause(pause(true))).await,
        "pausing a paused pipeline changes nothing"
    );
    // Triggers still queue runs; no node claims them; other pipelines go on.
    let held = create_in(&*store, "p", 2).await;
    let free = create_in(&*store, "q", 1).await;
    for (s, node) in [(&store, "n1"), (&other, "n2")] {
        let got = ok("job_claim", s.job_claim(both(node))).await.jobs;
        assert!(
            got.iter().all(|j| j.pipeline == "q"),
            "{node} claimed a paused pipeline's job: {got:?}"
        );
    }
    assert_eq!(
        ok("job_get", store.job_get(&free.job_ids[0]))
            .await
            .unwrap()
            .status,
        "running"
    );
    // The running job finishes normally, and its follow-up claim takes nothing paused.
    let mut end = finish(&job, Outcome::Completed);
    end.claim_next = Some(both("n1"));
    let out = ok("job_finish", store.job_finish(end)).await;
    assert_eq!(
        out.run_finalized,
        Some(runyard::model::RunStatus::Completed)
    );
    assert!(out.next.is_empty(), "{:?}", out.next);
    assert_eq!(
        ok("run_get", store.run_get(&running.run_id))
            .await
            .unwrap()
            .status,
        "completed"
    );
    let paused = ok("pipelines_paused", other.pipelines_paused()).await;
    assert_eq!(
        paused,
        vec![PipelinePause {
            pipeline: "p".into(),
            paused_at: 11,
            paused_by: Some("ops".into())
        }]
    );
    // Resumed: claimable again, by any node; the events say both.
    assert!(ok("resume", other.pipeline_pause(pause(false))).await);
    assert!(
        ok("pipelines_paused", store.pipelines_paused())
            .await
            .is_empty()
    );
    let got = ok("job_claim", store.job_claim(both("n1"))).await.jobs;
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|j| j.run_id == held.run_id));
    let events = events_settled(&*store).await;
    let names: Vec<(&str, serde_json::Value)> = events
        .iter()
        .filter(|e| e.name.starts_with("pipeline:"))
        .map(|e| (e.name.as_str(), serde_json::from_str(&e.data).unwrap()))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(names[0].0, "pipeline:paused");
    assert_eq!(names[1].0, "pipeline:resumed");
    assert_eq!(names[0].1["pipelineId"], "p");
    assert_eq!(names[0].1["actor"], "ops");
    assert!(names[0].1.get("runId").is_none());
}

pub async fn a_rerun_of_failed_shards_keeps_the_others_and_the_finalizer_sees_all(f: &Factory) {
    let store = f.store().await;
    // The original: 3 shards (one attempt each) and a finalizer; shard 0 completes with a
    // result, shards 1 and 2 fail.
    let original = ok(
        "run_create",
        store.run_create(RunCreateParams {
            has_finalizer: true,
            policy: JobPolicy {
                max_attempts: 1,
                ..policy()
            },
            ..run_params("p", 3)
        }),
    )
    .await;
    let jobs = ok("job_claim", store.job_claim(claim(3))).await.jobs;
    assert_eq!(jobs.len(), 3);
    for job in &jobs {
        let mut end = if job.shard_index == 0 {
            finish(job, Outcome::Completed)
        } else {
            finish(job, failed())
        };
        if job.shard_index == 0 {
            end.result = Some(r#"{"shard":0}"#.into());
        } else {
            end.exit_code = Some(1);
        }
        ok("job_finish", store.job_finish(end)).await;
    }
    let fin = ok("job_claim", store.job_claim(claim_later(1))).await.jobs;
    ok(
        "finalizer",
        store.job_finish(finish(&fin[0], Outcome::Completed)),
    )
    .await;
    let before = ok("run_get", store.run_get(&original.run_id))
        .await
        .unwrap();
    assert_eq!(before.status, "failed");

    // The re-run keeps shard 0 and repeats 1 and 2.
    let mut again = RunCreateParams {
        has_finalizer: true,
        ..run_params("p", 3)
    };
    again.now = 200;
    again.options = RunOptions {
        rerun_of: Some(original.run_id.clone()),
        kept: vec![KeptShard {
            shard_index: 0,
            job_id: again.job_ids[0].clone(),
            from_job: before.jobs[0].id.clone(),
        }],
        ..Default::default()
    };
    let new_jobs = again.job_ids.clone();
    let rerun = ok("run_create", store.run_create(again)).await;
    let view = ok("run_get", store.run_get(&rerun.run_id)).await.unwrap();
    assert_eq!(view.rerun_of.as_deref(), Some(original.run_id.as_str()));
    assert_eq!(view.shards_done, 1);
    let kept = &view.jobs[0];
    assert_eq!(
        (
            kept.id.as_str(),
            kept.status.as_str(),
            kept.kept_from.as_deref()
        ),
        (
            new_jobs[0].as_str(),
            "completed",
            Some(before.jobs[0].id.as_str())
        )
    );
    assert_eq!(kept.result.as_deref(), Some(r#"{"shard":0}"#));
    assert_eq!(kept.finished_at, before.jobs[0].finished_at);
    assert!(
        view.jobs[1..]
            .iter()
            .all(|j| j.status == "queued" && j.kept_from.is_none())
    );
    // Only the repeated shards are claimed; when they land the finalizer runs once and
    // sees every shard, the kept one's result too.
    let repeated = ok(
        "job_claim",
        store.job_claim(JobClaimParams {
            now: 300,
            ..claim(3)
        }),
    )
    .await
    .jobs;
    let mut got: Vec<u32> = repeated.iter().map(|j| j.shard_index).collect();
    got.sort();
    assert_eq!(got, vec![1, 2]);
    for job in &repeated {
        let out = ok(
            "job_finish",
            store.job_finish(finish(job, Outcome::Completed)),
        )
        .await;
        assert_eq!(out.run_finalized, None, "the finalizer decides");
    }
    let fin = ok(
        "job_claim",
        store.job_claim(JobClaimParams {
            now: 400,
            ..claim(3)
        }),
    )
    .await
    .jobs;
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0].kind, runyard::model::JobKind::Finalize);
    let summary = ok("run_summary", store.run_summary(&rerun.run_id))
        .await
        .unwrap();
    let shards = summary["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 3, "{summary}");
    assert_eq!(shards[0]["result"]["shard"], 0, "{summary}");
    assert!(
        shards.iter().all(|s| s["status"] == "completed"),
        "{summary}"
    );
    let end = ok(
        "finalizer",
        store.job_finish(finish(&fin[0], Outcome::Completed)),
    )
    .await;
    assert_eq!(
        end.run_finalized,
        Some(runyard::model::RunStatus::Completed)
    );
    assert_eq!(run_completed_events(&*store, &rerun.run_id).await, 1);
    // The original is unchanged.
    let after = ok("run_get", store.run_get(&original.run_id))
        .await
        .unwrap();
    assert_eq!(
        (after.status.as_str(), after.finished_at, after.shards_done),
        (
            before.status.as_str(),
            before.finished_at,
            before.shards_done
        )
    );
    for (a, b) in after.jobs.iter().zip(&before.jobs) {
        assert_eq!((&a.id, &a.status, a.attempt), (&b.id, &b.status, b.attempt));
    }
    // Keeping a job that has not finished is refused, and writes nothing.
    let live = create(&*store, 1).await;
    let mut bad = run_params("p", 1);
    bad.options = RunOptions {
        rerun_of: Some(live.run_id.clone()),
        kept: vec![KeptShard {
            shard_index: 0,
            job_id: bad.job_ids[0].clone(),
            from_job: live.job_ids[0].clone(),
        }],
        ..Default::default()
    };
    let bad_id = bad.run_id.clone();
    assert!(matches!(
        store.run_create(bad).await,
        Err(runyard::store::StoreError::Conflict { .. })
    ));
    assert!(ok("run_get", store.run_get(&bad_id)).await.is_none());
}

/// A run in `pipeline` with these options, created at time 1.
async fn create_opts(
    store: &dyn runyard::store::Store,
    pipeline: &str,
    options: RunOptions,
) -> String {
    let p = RunCreateParams {
        options,
        ..run_params(pipeline, 1)
    };
    ok("run_create", store.run_create(p)).await.run_id
}

pub async fn higher_priorities_are_claimed_first_and_fifo_within_one_over_every_pipeline(
    f: &Factory,
) {
    let store = f.store().await;
    let other = f.open().await;
    ok("register n2", other.node_register(node_row("n2"))).await;
    let mut ids = Vec::new();
    for (pipeline, priority) in [("a", 0), ("b", 5), ("a", 5), ("b", 0), ("a", -1), ("a", 5)] {
        let options = RunOptions {
            priority,
            ..Default::default()
        };
        ids.push(create_opts(&*store, pipeline, options).await);
    }
    // One job per claim, alternating between two nodes: the order is global.
    let mut order = Vec::new();
    for i in 0..6 {
        let (s, node) = if i % 2 == 0 {
            (&store, "n1")
        } else {
            (&other, "n2")
        };
        let got = ok(
            "job_claim",
            s.job_claim(JobClaimParams {
                node_id: node.into(),
                pipelines: [("a".to_string(), 0), ("b".to_string(), 0)].into(),
                ..claim(1)
            }),
        )
        .await
        .jobs;
        assert_eq!(got.len(), 1);
        order.push(got[0].run_id.clone());
    }
    let want: Vec<String> = [1, 2, 5, 0, 3, 4].iter().map(|i| ids[*i].clone()).collect();
    assert_eq!(order, want, "priority 5 (FIFO), then 0 (FIFO), then -1");
    let view = ok("run_get", store.run_get(&ids[1])).await.unwrap();
    assert_eq!(view.priority, 5);
}

pub async fn a_delayed_run_is_held_until_its_time_and_released_by_the_claim(f: &Factory) {
    let store = f.store().await;
    let other = f.open().await;
    ok("register n2", other.node_register(node_row("n2"))).await;
    let delayed = |at: i64| RunOptions {
        not_before: Some(at),
        ..Default::default()
    };
    // A backlog of delayed runs ahead of a due one does not hold the due one up.
    let mut later = Vec::new();
    for _ in 0..5 {
        later.push(create_opts(&*store, "p", delayed(1_000)).await);
    }
    let now_run = create(&*store, 1).await.run_id;
    let view = ok("run_get", store.run_get(&later[0])).await.unwrap();
    assert_eq!(view.run_at, Some(1_000));
    let got = ok("job_claim", store.job_claim(claim(10))).await;
    assert_eq!(
        got.jobs
            .iter()
            .map(|j| j.run_id.clone())
            .collect::<Vec<_>>(),
        vec![now_run],
        "only the due run at time 10"
    );
    assert_eq!(
        got.next_due,
        Some(1_000),
        "the loop wakes when the delay ends"
    );
    let early = ok(
        "job_claim",
        other.job_claim(JobClaimParams {
            node_id: "n2".into(),
            now: 999,
            ..claim(10)
        }),
    )
    .await;
    assert!(early.jobs.is_empty(), "{:?}", early.jobs);
    // Due: released and claimed, by either node, each exactly once.
    let a = ok(
        "job_claim",
        other.job_claim(JobClaimParams {
            node_id: "n2".into(),
            now: 1_000,
            ..claim(2)
        }),
    )
    .await
    .jobs;
    let b = ok(
        "job_claim",
        store.job_claim(JobClaimParams {
            now: 1_001,
            ..claim(10)
        }),
    )
    .await
    .jobs;
    let mut all: Vec<String> = a.iter().chain(&b).map(|j| j.run_id.clone()).collect();
    all.sort();
    later.sort();
    assert_eq!(all, later);
    // A retry waits as a held job too, and is released when its backoff ends.
    let mut end = finish(&a[0], failed());
    end.now = 2_000;
    ok("job_finish", store.job_finish(end)).await;
    let retry = ok(
        "job_claim",
        store.job_claim(JobClaimParams {
            now: 2_001,
            ..claim(10)
        }),
    )
    .await;
    assert!(retry.jobs.is_empty());
    assert_eq!(retry.next_due, Some(2_010));
    let retry = ok(
        "job_claim",
        store.job_claim(JobClaimParams {
            now: 2_010,
            ..claim(10)
        }),
    )
    .await
    .jobs;
    assert_eq!((retry.len(), retry[0].attempt), (1, 2));
}

pub async fn a_schedule_tick_fires_once_however_many_nodes_race_for_it(f: &Factory) {
    let key = "* * * * * * @ UTC";
    let mut handles = vec![f.store().await];
    for _ in 0..3 {
        handles.push(f.open().await);
    }
    // Every node starts the schedule; the first write wins, the rest change nothing.
    let mut started = 0;
    for (i, h) in handles.iter().enumerate() {
        if ok(
            "schedule_init",
            h.schedule_init("cron", key, 1_000 + i as i64, 5),
        )
        .await
        {
            started += 1;
        }
    }
    assert_eq!(started, 1);
    let state = ok("schedules_list", handles[3].schedules_list()).await;
    assert_eq!(
        state,
        vec![runyard::store::ScheduleState {
            pipeline: "cron".into(),
            key: key.into(),
            next_fire_at: 1_000
        }]
    );
    // Ten ticks, each raced by four handles at once: one run per tick.
    let mut due = 1_000;
    for tick in 0..10 {
        let tasks: Vec<_> = handles
            .iter()
            .map(|h| {
                let h = h.clone();
                let mut run = run_params("cron", 1);
                run.triggered_by = "schedule".into();
                run.now = due;
                run.options.scheduled_for = Some(due);
                tokio::spawn(async move {
                    h.schedule_fire(ScheduleFireParams {
                        pipeline: "cron".into(),
                        key: key.into(),
                        due,
                        next: due + 1_000,
                        run,
                    })
                    .await
                })
            })
            .collect();
        let mut fired = Vec::new();
        for t in tasks {
            if let Some(created) = within(CALL_LIMIT, "schedule_fire", t)
                .await
                .unwrap()
                .unwrap()
            {
                fired.push(created.run_id);
            }
        }
        assert_eq!(fired.len(), 1, "tick {tick} fired {} times", fired.len());
        let run = ok("run_get", handles[0].run_get(&fired[0])).await.unwrap();
        assert_eq!(
            (run.triggered_by.as_str(), run.scheduled_for),
            ("schedule", Some(due))
        );
        due += 1_000;
    }
    // A stale read (the tick already advanced) or a changed schedule fires nothing.
    let stale = ScheduleFireParams {
        pipeline: "cron".into(),
        key: key.into(),
        due: 1_000,
        next: 2_000,
        run: run_params("cron", 1),
    };
    assert!(
        ok("stale fire", handles[1].schedule_fire(stale))
            .await
            .is_none()
    );
    assert!(
        ok(
            "changed",
            handles[2].schedule_init("cron", "0 2 * * * @ UTC", 50_000, 6)
        )
        .await
    );
    let old = ScheduleFireParams {
        pipeline: "cron".into(),
        key: key.into(),
        due,
        next: due + 1_000,
        run: run_params("cron", 1),
    };
    assert!(
        ok("old schedule", handles[0].schedule_fire(old))
            .await
            .is_none()
    );
    let runs = ok(
        "runs_list",
        handles[0].runs_list(runyard::store::RunFilter {
            pipeline: Some("cron".into()),
            limit: 100,
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(runs.len(), 10);
}
