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

/// A batch that fails as databases fail — a serialization failure inside it, its
/// connection lost before COMMIT, the answer of its COMMIT lost — is run again or split
/// (by the store) or retried (by its callers, as the scheduler does), and no job's end
/// is lost or applied twice: every job ends once, with one event, and every run lands
/// once.
///
/// PostgreSQL only (`postgres_faults::`): SQLite's one writer thread has no connection
/// to lose and no serialization race to fail.
///
/// Caught: pipelined statements awaited by an unbiased `try_join!` answered the 25P02 of
/// a statement after the failed one, a database error nobody retried.
pub async fn a_batch_failing_by_serialization_or_a_lost_connection_loses_and_doubles_no_end(
    f: &Factory,
) {
    const RUNS: usize = 60;
    const LANES: usize = 3;
    const BATCH: usize = 8;
    let (flaky, proxy) = f
        .open_through_proxy()
        .await
        .expect("a PostgreSQL store to fault");
    let store = f.store().await;
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(
            ok("run_create", store.run_create(run_params("p", 2)))
                .await
                .run_id,
        );
    }
    let mut jobs = Vec::new();
    while jobs.len() < 2 * RUNS {
        jobs.extend(ok("job_claim", store.job_claim(claim(100))).await.jobs);
    }
    // One in eight ends' row writes fails with a serialization failure (SQLSTATE 40001),
    // raised by the server inside the batch's transaction; the sequence (not rolled
    // back) counts them.
    f.execute(
        "CREATE SEQUENCE injected_failures;
         CREATE FUNCTION fail_some_ends() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF random() < 0.125 THEN
             PERFORM nextval('injected_failures');
             RAISE EXCEPTION 'injected serialization failure' USING ERRCODE = '40001';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER fail_some_ends BEFORE UPDATE OF status ON jobs FOR EACH ROW
           WHEN (OLD.status = 'running' AND NEW.status <> 'running')
           EXECUTE FUNCTION fail_some_ends();",
    )
    .await;
    // Every fifth COMMIT through the proxy reaches the server, but its answer is lost.
    proxy.cut_commits_every(5);
    let mut ends: Vec<Vec<JobFinishParams>> = vec![Vec::new(); LANES];
    for (i, job) in jobs.iter().enumerate() {
        ends[i % LANES].push(finish(job, Outcome::Completed));
    }
    let lanes: Vec<_> = ends
        .into_iter()
        .map(|ends| {
            let flaky = flaky.clone();
            tokio::spawn(async move {
                // Jobs whose end this lane saw applied, and the errors it retried.
                let (mut applied, mut retried) = (Vec::new(), Vec::new());
                for chunk in ends.chunks(BATCH) {
                    let mut pending = chunk.to_vec();
                    for _ in 0..100 {
                        if pending.is_empty() {
                            break;
                        }
                        let answers = flaky.job_finish_many(pending.clone()).await;
                        let mut again = Vec::new();
                        for (p, answer) in pending.into_iter().zip(answers) {
                            match answer {
                                Ok(out) if out.applied => applied.push(p.job_id),
                                Ok(_) => {}
                                Err(e)
                                    if e.is_ambiguous()
                                        || e.is_unavailable()
                                        || e.is_transient() =>
                                {
                                    retried.push(e.to_string());
                                    again.push(p);
                                }
                                Err(e) => panic!("{}: an end failed for good: {e}", p.job_id),
                            }
                        }
                        pending = again;
                    }
                    assert!(pending.is_empty(), "ends never written: {pending:?}");
                }
                (applied, retried)
            })
        })
        .collect();
    // Meanwhile, once: every connection of the flaky handle is closed and refused for a
    // moment, so transactions in flight lose their connection before COMMIT.
    proxy.cut();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    proxy.heal();
    let mut applied = Vec::new();
    let mut retried = 0;
    for lane in lanes {
        let (a, r) = join("a lane of ends", lane).await;
        applied.extend(a);
        retried += r.len();
    }
    proxy.cut_commits_every(0);
    let injected = f
        .query_i64("SELECT last_value FROM injected_failures")
        .await;
    println!(
        "{injected} serialization failures injected, {} commits' answers lost, \
         {retried} ends retried by their caller",
        proxy.commits_cut()
    );
    assert!(injected > 0, "no serialization failure was injected");
    assert!(proxy.commits_cut() > 0, "no COMMIT's answer was lost");
    let mut seen = std::collections::HashSet::new();
    for id in &applied {
        assert!(seen.insert(id), "{id}: applied twice");
    }
    let events = events_settled(&*store).await;
    let mut ended: std::collections::HashMap<String, usize> = Default::default();
    for e in &events {
        if e.name == EventName::JobCompleted.as_str() {
            let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
            *ended
                .entry(data["jobId"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
    }
    for job in &jobs {
        assert_eq!(
            ended.get(&job.id),
            Some(&1),
            "{}: one job:completed",
            job.id
        );
    }
    for run in &runs {
        let view = ok("run_get", store.run_get(run)).await.unwrap();
        assert_eq!(
            (view.status.as_str(), view.shards_done),
            ("completed", 2),
            "{run}"
        );
        assert!(
            view.jobs
                .iter()
                .all(|j| j.status == JobStatus::Completed.as_str() && j.attempt == 1),
            "{run}: {:?}",
            view.jobs
        );
        assert_eq!(completed_events(&*store, run).await, 1, "{run} lands once");
    }
}
