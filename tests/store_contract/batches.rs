//! Ends written together (`Store::job_finish_many`; PostgreSQL's group commit writes the
//! ends that arrive together the same way): each end is fenced on its own claim and
//! answered on its own, and a run lands once however its shards' ends are grouped.

use runyard::model::{EventName, JobStatus, Reason, RunStatus};
use runyard::store::{ClaimedJob, JobFinishParams, Outcome, StoreResult};

use crate::factory::Factory;
use crate::fixtures::*;

fn failed(error: &str) -> Outcome {
    Outcome::Failed {
        reason: Reason::ExitCode,
        error: Some(error.into()),
    }
}

fn stale(job: &ClaimedJob) -> ClaimedJob {
    ClaimedJob {
        claim_seq: job.claim_seq - 1,
        ..job.clone()
    }
}

async fn completed_events(store: &dyn runyard::store::Store, run_id: &str) -> usize {
    store
        .run_events(run_id, 1000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.name == EventName::RunCompleted.as_str())
        .count()
}

pub async fn a_batch_fences_each_end_on_its_own_and_lands_each_run_once(f: &Factory) {
    let store = f.store().await;
    let single = create(&*store, 1).await;
    let sharded = create(&*store, 2).await;
    let other = create(&*store, 1).await;
    let retried = create(&*store, 1).await;
    let jobs = store.job_claim(claim(10)).await.unwrap().jobs;
    assert_eq!(jobs.len(), 5);
    let of = |run: &str| -> Vec<&ClaimedJob> { jobs.iter().filter(|j| j.run_id == run).collect() };
    let shards = of(&sharded.run_id);
    // Every end decided without its row, one of them stale: the others apply.
    let answers = store
        .job_finish_many(vec![
            finish(of(&single.run_id)[0], Outcome::Completed),
            finish(shards[0], Outcome::Completed),
            finish(&stale(of(&other.run_id)[0]), Outcome::Completed),
            finish(shards[1], Outcome::Completed),
        ])
        .await;
    let answers: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        answers.iter().map(|a| a.applied).collect::<Vec<_>>(),
        vec![true, true, false, true]
    );
    assert_eq!(answers[0].run_finalized, Some(RunStatus::Completed));
    let landed: Vec<_> = answers[1..]
        .iter()
        .filter_map(|a| a.run_finalized)
        .collect();
    assert_eq!(
        landed,
        vec![RunStatus::Completed],
        "the sharded run lands once"
    );
    for run in [&single.run_id, &sharded.run_id] {
        let view = store.run_get(run).await.unwrap().unwrap();
        assert_eq!(
            (view.status.as_str(), view.shards_done),
            ("completed", view.shard_count)
        );
        assert_eq!(completed_events(&*store, run).await, 1);
    }
    let untouched = store.run_get(&other.run_id).await.unwrap().unwrap();
    assert_eq!(
        (untouched.jobs[0].status.as_str(), untouched.shards_done),
        ("running", 0),
        "a stale end changes nothing"
    );
    // A retry (decided from the row) beside the stale end's owner, and an end written twice.
    let answers: Vec<_> = store
        .job_finish_many(vec![
            finish(of(&retried.run_id)[0], failed("first attempt")),
            finish(of(&other.run_id)[0], Outcome::Completed),
            finish(of(&single.run_id)[0], Outcome::Completed),
        ])
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        answers
            .iter()
            .map(|a| (a.applied, a.status))
            .collect::<Vec<_>>(),
        vec![
            (true, Some(JobStatus::Queued)),
            (true, Some(JobStatus::Completed)),
            (false, None)
        ]
    );
    assert_eq!(answers[1].run_finalized, Some(RunStatus::Completed));
    assert_eq!(completed_events(&*store, &single.run_id).await, 1);
    let retry = store.run_get(&retried.run_id).await.unwrap().unwrap();
    assert_eq!(
        (
            retry.jobs[0].status.as_str(),
            retry.jobs[0].attempt,
            retry.shards_done
        ),
        ("queued", 2, 0)
    );
}

pub async fn an_end_that_cannot_be_stored_does_not_fail_its_batch(f: &Factory) {
    let store = f.store().await;
    let a = create(&*store, 1).await;
    let b = create(&*store, 1).await;
    let jobs = store.job_claim(claim(2)).await.unwrap().jobs;
    let job_of = |run: &str| jobs.iter().find(|j| j.run_id == run).unwrap();
    let mut bad: JobFinishParams = finish(job_of(&a.run_id), failed("a NUL \0 byte"));
    bad.exit_code = Some(1);
    let answers: Vec<StoreResult<_>> = store
        .job_finish_many(vec![bad, finish(job_of(&b.run_id), Outcome::Completed)])
        .await;
    // PostgreSQL text cannot hold NUL: that end fails alone (SQLite stores it).
    assert!(
        matches!(&answers[1], Ok(o) if o.applied && o.run_finalized == Some(RunStatus::Completed))
    );
    let b_view = store.run_get(&b.run_id).await.unwrap().unwrap();
    assert_eq!(b_view.status.as_str(), "completed");
    assert_eq!(answers[0].is_err(), f.is_postgres());
    if answers[0].is_err() {
        let a_view = store.run_get(&a.run_id).await.unwrap().unwrap();
        assert_eq!(
            a_view.jobs[0].status.as_str(),
            "running",
            "a failed end writes nothing"
        );
    }
}

pub async fn ends_batched_on_two_handles_land_every_run_exactly_once(f: &Factory) {
    const RUNS: usize = 200;
    const BATCH: usize = 10;
    let a = f.store().await;
    let b = f.open().await;
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(
            ok("run_create", a.run_create(run_params("p", 2)))
                .await
                .run_id,
        );
    }
    let mut jobs = Vec::new();
    while jobs.len() < 2 * RUNS {
        jobs.extend(ok("job_claim", a.job_claim(claim(100))).await.jobs);
    }
    let mut rng = Rng::new();
    // Each run's two shards end on different handles, in batches of ten on each.
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    for run in &runs {
        let mut pair: Vec<&ClaimedJob> = jobs.iter().filter(|j| &j.run_id == run).collect();
        if rng.one_in(2) {
            pair.reverse();
        }
        on_a.push(finish(pair[0], Outcome::Completed));
        on_b.push(finish(pair[1], Outcome::Completed));
    }
    let lane = |store: std::sync::Arc<dyn runyard::store::Store>, ends: Vec<JobFinishParams>| {
        tokio::spawn(async move {
            let mut finalised = 0;
            for chunk in ends.chunks(BATCH) {
                for answer in store.job_finish_many(chunk.to_vec()).await {
                    let answer = answer.expect("a batched end");
                    assert!(answer.applied);
                    finalised += usize::from(answer.run_finalized.is_some());
                }
            }
            finalised
        })
    };
    let (ta, tb) = (lane(a.clone(), on_a), lane(b.clone(), on_b));
    let finalised = join("lane a", ta).await + join("lane b", tb).await;
    assert_eq!(finalised, RUNS, "each run is finalised by exactly one end");
    for run in &runs {
        let view = ok("run_get", a.run_get(run)).await.unwrap();
        assert_eq!((view.status.as_str(), view.shards_done), ("completed", 2));
        assert_eq!(completed_events(&*a, run).await, 1);
    }
}

pub async fn writes_are_counted_by_operation(f: &Factory) {
    let store = f.store().await;
    create(&*store, 1).await;
    let job = store.job_claim(claim(1)).await.unwrap().jobs.remove(0);
    store
        .job_finish(finish(&job, Outcome::Completed))
        .await
        .unwrap();
    let traffic = store.traffic();
    let of = |op: &str| {
        traffic
            .iter()
            .find(|(_, o, _, _)| *o == op)
            .map(|(backend, _, statements, commits)| (*backend, *statements, *commits))
            .unwrap_or_else(|| panic!("{op} not counted: {traffic:?}"))
    };
    // One commit each; on PostgreSQL, where each statement is sent to a server, at
    // most a few statements (bounds, not exact figures).
    for (op, most) in [("run_create", 3), ("job_claim", 2), ("job_finish", 6)] {
        let (backend, statements, commits) = of(op);
        assert_eq!(backend, f.name());
        let most = if f.is_postgres() { most } else { u64::MAX };
        assert!(
            (1..=most).contains(&statements) && commits == 1,
            "{op}: {statements} statements, {commits} commits"
        );
    }
}
