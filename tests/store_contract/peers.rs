//! The contract of the features peers have (issue 11): exit-code retry rules, paused
//! pipelines, re-runs, delayed runs, priorities and schedules. Each rule is decided above
//! the backends; these tests hold both stores to it.

use runyard::model::{JobStatus, Reason};
use runyard::store::transition::RetryOn;
use runyard::store::{
    JobClaimParams, JobPolicy, Outcome, PipelinePause, PipelinePauseParams, RunCreateParams,
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
