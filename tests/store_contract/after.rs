//! Runs that wait for runs (`after`): a waiting run's jobs are never claimed; it is
//! released — queued or skipped as its `afterWhen` says — exactly once, in the
//! transaction that ends the last run it waits for, or at its creation when they had
//! all ended; a skip ends it like any run and releases its own dependents in turn.

use std::sync::Arc;

use runyard::model::{AfterWhen, RunStatus};
use runyard::store::{
    AbortOutcome, ClaimedJob, JobClaimParams, JobPolicy, Outcome, RunCreateParams, RunOptions,
    Store, StoreError,
};

use crate::factory::Factory;
use crate::fixtures::*;

/// `run_create` input for a run of `pipeline` after `after`.
fn after_params(pipeline: &str, shards: u32, after: &[&str], when: AfterWhen) -> RunCreateParams {
    RunCreateParams {
        options: RunOptions {
            after: after.iter().map(|s| s.to_string()).collect(),
            after_when: when,
            ..Default::default()
        },
        ..run_params(pipeline, shards)
    }
}

/// A run whose one attempt fails for good.
fn one_attempt(pipeline: &str) -> RunCreateParams {
    RunCreateParams {
        policy: JobPolicy {
            max_attempts: 1,
            ..policy()
        },
        ..run_params(pipeline, 1)
    }
}

async fn status(store: &dyn Store, run_id: &str) -> String {
    ok("run_get", store.run_get(run_id)).await.unwrap().status
}

async fn end(store: &dyn Store, job: &ClaimedJob, outcome: Outcome) {
    let done = ok("job_finish", store.job_finish(finish(job, outcome))).await;
    assert!(done.applied, "{} ends", job.id);
}

pub async fn a_run_after_others_waits_unclaimable_and_is_released_once_they_complete(f: &Factory) {
    let store = f.store().await;
    let a = create_in(&*store, "a", 1).await.run_id;
    let b = create_in(&*store, "a", 2).await.run_id;
    let d = ok(
        "run_create",
        store.run_create(after_params("d", 2, &[&b, &a], AfterWhen::Success)),
    )
    .await;
    assert_eq!(d.after_status, Some(RunStatus::Waiting));
    let view = ok("run_get", store.run_get(&d.run_id)).await.unwrap();
    assert_eq!(view.status, "waiting");
    let mut needs = vec![a.clone(), b.clone()];
    needs.sort();
    assert_eq!(view.after, needs, "its needs, in id order");
    assert_eq!(view.after_when, Some(AfterWhen::Success));
    assert_eq!(view.jobs.len(), 2, "its shards exist, queued and held");
    assert!(view.jobs.iter().all(|j| j.status == "queued"));

    let needs_jobs = ok("job_claim", store.job_claim(claim_from("a", 10)))
        .await
        .jobs;
    assert_eq!(needs_jobs.len(), 3);
    for later in [claim_from("d", 10), claim_from("d", 10)] {
        let claimed = ok("job_claim", store.job_claim(later)).await.jobs;
        assert!(claimed.is_empty(), "a waiting run's jobs are never claimed");
    }
    let (of_a, of_b): (Vec<&ClaimedJob>, Vec<&ClaimedJob>) =
        needs_jobs.iter().partition(|j| j.run_id == a);
    end(&*store, of_a[0], Outcome::Completed).await;
    assert_eq!(
        status(&*store, &d.run_id).await,
        "waiting",
        "B has not ended"
    );
    end(&*store, of_b[0], Outcome::Completed).await;
    assert_eq!(status(&*store, &d.run_id).await, "waiting");
    end(&*store, of_b[1], Outcome::Completed).await;
    assert_eq!(status(&*store, &d.run_id).await, "queued", "released");
    let released = ok("job_claim", store.job_claim(claim_later_from("d"))).await;
    assert_eq!(
        released.jobs.len(),
        2,
        "its jobs are claimable once released"
    );
    assert_eq!(
        events_per_run(&*store, "run:released").await.get(&d.run_id),
        Some(&1)
    );
}

/// A claim of up to 10 jobs of `pipeline` after the releases (the ends' time is 20).
fn claim_later_from(pipeline: &str) -> JobClaimParams {
    JobClaimParams {
        now: 100,
        ..claim_from(pipeline, 10)
    }
}

pub async fn a_need_that_fails_skips_the_dependent_the_skip_cascades_and_rules_pick_the_others(
    f: &Factory,
) {
    let store = f.store().await;
    let a = ok("run_create", store.run_create(one_attempt("a")))
        .await
        .run_id;
    let create = |after: String, when: AfterWhen| {
        let store = store.clone();
        async move {
            let p = after_params("d", 1, &[&after], when);
            ok("run_create", store.run_create(p)).await.run_id
        }
    };
    let on_success = create(a.clone(), AfterWhen::Success).await;
    let on_failure = create(a.clone(), AfterWhen::Failure).await;
    let always = create(a.clone(), AfterWhen::Always).await;
    let chained = create(on_success.clone(), AfterWhen::Success).await;
    let job = ok("job_claim", store.job_claim(claim_from("a", 1)))
        .await
        .jobs;
    end(&*store, &job[0], fail()).await;
    assert_eq!(status(&*store, &a).await, "failed");
    for (run, want) in [
        (&on_success, "skipped"),
        (&chained, "skipped"),
        (&on_failure, "queued"),
        (&always, "queued"),
    ] {
        assert_eq!(status(&*store, run).await, want, "run {run}");
    }
    let skipped = ok("run_get", store.run_get(&on_success)).await.unwrap();
    assert!(skipped.finished_at.is_some(), "a skip is an end");
    assert_eq!(skipped.jobs[0].status, "aborted");
    assert_eq!(skipped.jobs[0].reason.as_deref(), Some("skipped"));
    let skips = events_per_run(&*store, "run:skipped").await;
    assert_eq!(
        (skips.get(&on_success), skips.get(&chained), skips.len()),
        (Some(&1), Some(&1), 2)
    );
    let events = events_settled(&*store).await;
    let ended = completions(&events);
    assert_eq!(
        ended.get(&on_success),
        Some(&1),
        "one run:completed per skip"
    );
    assert!(
        events.iter().any(|e| e.name == "run:completed"
            && run_of(e) == chained
            && e.data.contains("\"status\":\"skipped\"")),
        "run:completed says skipped"
    );
}

pub async fn an_aborted_waiting_run_ends_aborted_and_skips_its_own_dependents(f: &Factory) {
    let store = f.store().await;
    let need = create_in(&*store, "a", 1).await.run_id;
    let waiting = ok(
        "run_create",
        store.run_create(after_params("d", 2, &[&need], AfterWhen::Success)),
    )
    .await
    .run_id;
    let next = ok(
        "run_create",
        store.run_create(after_params("d", 1, &[&waiting], AfterWhen::Success)),
    )
    .await
    .run_id;
    let outcome = ok("run_abort_by", store.run_abort_by(&waiting, 5, None)).await;
    assert!(
        matches!(outcome, AbortOutcome::Aborted { queued: 2, .. }),
        "{outcome:?}"
    );
    let aborted = ok("run_get", store.run_get(&waiting)).await.unwrap();
    assert_eq!(aborted.status, "aborted");
    assert!(
        aborted.finished_at.is_some(),
        "it never ran: its end is now"
    );
    assert_eq!(status(&*store, &next).await, "skipped");
    let job = ok("job_claim", store.job_claim(claim_from("a", 1)))
        .await
        .jobs;
    end(&*store, &job[0], Outcome::Completed).await;
    assert_eq!(
        status(&*store, &waiting).await,
        "aborted",
        "an end changes nothing"
    );
    assert_eq!(events_per_run(&*store, "run:released").await.len(), 0);
}

pub async fn a_run_after_ended_runs_is_decided_at_creation_and_unknown_needs_are_refused(
    f: &Factory,
) {
    let store = f.store().await;
    let done = create_in(&*store, "a", 1).await.run_id;
    let job = ok("job_claim", store.job_claim(claim_from("a", 1)))
        .await
        .jobs;
    end(&*store, &job[0], Outcome::Completed).await;
    let go = ok(
        "run_create",
        store.run_create(after_params("d", 1, &[&done], AfterWhen::Success)),
    )
    .await;
    assert_eq!(go.after_status, Some(RunStatus::Queued));
    assert_eq!(status(&*store, &go.run_id).await, "queued");
    let claimed = ok("job_claim", store.job_claim(claim_later_from("d"))).await;
    assert_eq!(claimed.jobs.len(), 1, "queued at once");
    let skip = ok(
        "run_create",
        store.run_create(after_params("d", 1, &[&done], AfterWhen::Failure)),
    )
    .await;
    assert_eq!(skip.after_status, Some(RunStatus::Skipped));
    assert_eq!(status(&*store, &skip.run_id).await, "skipped");

    let unknown = after_params(
        "d",
        1,
        &[&done, "0190a8b0-0000-7000-8000-000000000000"],
        AfterWhen::Always,
    );
    let refused = unknown.run_id.clone();
    match store.run_create(unknown).await {
        Err(StoreError::Conflict { message }) => {
            assert!(
                message.contains("0190a8b0-0000-7000-8000-000000000000"),
                "{message}"
            )
        }
        other => panic!("an unknown need is refused, got {other:?}"),
    }
    assert!(
        ok("run_get", store.run_get(&refused)).await.is_none(),
        "nothing of a refused run is stored"
    );
}

/// Two needs of one dependent end at the same moment through two handles (two writer
/// threads on SQLite, two pools on PostgreSQL), round after round: each dependent is
/// released exactly once — never twice, never lost.
pub async fn two_needs_ending_at_once_on_two_handles_release_their_dependent_once(f: &Factory) {
    const ROUNDS: usize = 1000;
    let one = f.store().await;
    let two = f.open().await;
    let mut dependents = Vec::new();
    for round in 0..ROUNDS {
        let a = create_in(&*one, "a", 1).await.run_id;
        let b = create_in(&*one, "a", 1).await.run_id;
        let d = ok(
            "run_create",
            one.run_create(after_params("d", 1, &[&a, &b], AfterWhen::Success)),
        )
        .await
        .run_id;
        let jobs = ok("job_claim", one.job_claim(claim_from("a", 2)))
            .await
            .jobs;
        assert_eq!(jobs.len(), 2, "round {round}");
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let tasks: Vec<_> = jobs
            .into_iter()
            .zip([one.clone(), two.clone()])
            .map(|(job, store)| {
                let start = start.clone();
                tokio::spawn(async move {
                    start.wait().await;
                    end(&*store, &job, Outcome::Completed).await;
                })
            })
            .collect();
        for t in tasks {
            join("an end", t).await;
        }
        assert_eq!(status(&*one, &d).await, "queued", "round {round}: released");
        dependents.push(d);
    }
    let released = events_per_run(&*one, "run:released").await;
    for d in &dependents {
        assert_eq!(released.get(d), Some(&1), "{d} released exactly once");
    }
    let queued = ok("job_claim", one.job_claim(claim_later_from("d"))).await;
    assert_eq!(
        queued.jobs.len(),
        10,
        "their jobs are claimable (10 at a time)"
    );
}
