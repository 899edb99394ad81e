//! Idempotency keys: a reused key answers with the first run (keys are per pipeline),
//! and an idempotent retry lists the run's shards even when its finalizer is queued.

use std::sync::Arc;

use runyard::store::{
    Outcome, PipelinePauseParams, RunCreateParams, RunCreated, Store, StoreResult,
};

use crate::factory::Factory;
use crate::fixtures::*;

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

/// An idempotent retry answers with the run's shard job ids, the same on every
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

/// Triggers arriving together (PostgreSQL writes plain ones in shared transactions):
/// each is answered with its own run, every run is stored with its jobs and one
/// `job:created` per job, a paused pipeline's runs say so; and one that cannot be
/// stored (its run id is taken) fails alone, storing nothing, while the others land.
pub async fn triggers_arriving_together_are_each_stored_once_and_one_bad_fails_alone(f: &Factory) {
    const RUNS: usize = 40;
    let store = f.store().await;
    ok(
        "pipeline_pause",
        store.pipeline_pause(PipelinePauseParams {
            pipeline: "paused".into(),
            paused: true,
            actor: None,
            now: 1,
        }),
    )
    .await;
    let taken = create(&*store, 1).await;
    let commits = |store: &dyn Store| {
        store
            .traffic()
            .iter()
            .find(|(_, op, _, _)| *op == "run_create")
            .map_or(0, |t| t.3)
    };
    let wave = |bad: Option<usize>| {
        // Every column varied, so a batched insert that misplaces one shows.
        let mut params: Vec<RunCreateParams> = (0..RUNS)
            .map(|i| {
                let mut p = run_params(if i % 4 == 0 { "paused" } else { "p" }, 1 + (i % 3) as u32);
                p.params = [("i".to_string(), i.to_string())].into();
                p.actor = (i % 2 == 0).then(|| format!("actor-{i}"));
                p.triggered_by = if i % 5 == 0 { "schedule" } else { "api" }.into();
                p.callback_url = (i % 3 == 0).then(|| format!("http://example.test/{i}"));
                p.policy.max_attempts = 1 + (i % 4) as u32;
                p.options.priority = (i % 7) as i32 - 3;
                p.options.not_before = (i % 6 == 0).then_some(1_000_000 + i as i64);
                p
            })
            .collect();
        if let Some(bad) = bad {
            // A new run under an id already stored.
            params[bad].run_id = taken.run_id.clone();
        }
        params
    };
    let mut stored = Vec::new();
    for bad in [None, Some(RUNS / 2)] {
        let params = wave(bad);
        let before = commits(&*store);
        let answers = all_at_once(&store, &params).await;
        if bad.is_none() && f.is_postgres() {
            let used = commits(&*store) - before;
            assert!(
                used < RUNS as u64,
                "{RUNS} triggers at once took {used} commits: none shared"
            );
        }
        for (i, (p, answer)) in params.iter().zip(&answers).enumerate() {
            if Some(i) == bad {
                assert!(answer.is_err(), "a taken run id is refused: {answer:?}");
                continue;
            }
            let created = answer.as_ref().unwrap_or_else(|e| panic!("run {i}: {e}"));
            assert_eq!((&created.run_id, &created.job_ids), (&p.run_id, &p.job_ids));
            assert!(!created.existing);
            if let Some(paused) = created.paused {
                assert_eq!(paused, p.pipeline == "paused", "run {i}");
            }
            let view = ok("run_get", store.run_get(&p.run_id)).await.unwrap();
            assert_eq!(
                (view.status.as_str(), view.jobs.len()),
                ("queued", p.job_ids.len()),
                "run {i}"
            );
            assert_eq!(
                (
                    &view.pipeline_id,
                    &view.parameters,
                    &view.actor,
                    &view.triggered_by,
                    &view.callback_url,
                    view.priority,
                    view.run_at,
                    view.shard_count as usize,
                ),
                (
                    &p.pipeline,
                    &p.params,
                    &p.actor,
                    &p.triggered_by,
                    &p.callback_url,
                    p.options.priority,
                    p.options.not_before,
                    p.job_ids.len(),
                ),
                "run {i} stored as triggered"
            );
            for (k, job) in view.jobs.iter().enumerate() {
                assert_eq!(
                    (
                        &job.id,
                        job.shard_index as usize,
                        job.shard_count as usize,
                        job.max_attempts
                    ),
                    (&p.job_ids[k], k, p.job_ids.len(), p.policy.max_attempts),
                    "run {i}, shard {k}"
                );
            }
            stored.push(p.clone());
        }
    }
    let taken_view = ok("run_get", store.run_get(&taken.run_id)).await.unwrap();
    assert_eq!(taken_view.jobs.len(), 1, "the refused trigger added no job");
    let events = events_settled(&*store).await;
    let mut created = std::collections::HashMap::new();
    for e in events.iter().filter(|e| e.name == "job:created") {
        let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        *created
            .entry(data["jobId"].as_str().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    for p in &stored {
        for job in &p.job_ids {
            assert_eq!(created.get(job), Some(&1), "one job:created for {job}");
        }
    }
}

/// `run_create` of every one of `params` at the same moment; the answers in order.
async fn all_at_once(
    store: &Arc<dyn Store>,
    params: &[RunCreateParams],
) -> Vec<StoreResult<RunCreated>> {
    let start = Arc::new(tokio::sync::Barrier::new(params.len()));
    let tasks: Vec<_> = params
        .iter()
        .cloned()
        .map(|p| {
            let (store, start) = (store.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                store.run_create(p).await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(join("a trigger", t).await);
    }
    answers
}

/// Plain triggers on PostgreSQL share one statement that is its own transaction, so a
/// connection lost under it leaves the caller unsure. What the caller hears must say
/// what happened: a run answered created is stored, with its jobs and their
/// `job:created` events; one answered "unavailable" (nothing was sent) is not; only
/// "ambiguous" may be either, and the scheduler reads those back by id. Connections are
/// cut while waves of triggers are in flight, until enough answers were lost.
pub async fn plain_triggers_whose_connection_is_lost_are_stored_exactly_when_answered_so(
    f: &Factory,
) {
    const WAVE: usize = 24;
    let (flaky, proxy) = f
        .open_through_proxy()
        .await
        .expect("a PostgreSQL store to fault");
    let store = f.store().await;
    let deadline = std::time::Instant::now() + CALL_LIMIT;
    let (mut created, mut unsent, mut unknown) = (Vec::new(), Vec::new(), 0usize);
    while unsent.len() + unknown < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "cutting connections lost only {} answers in {CALL_LIMIT:?}",
            unsent.len() + unknown
        );
        let wave: Vec<RunCreateParams> = (0..WAVE)
            .map(|i| run_params("p", 1 + (i % 3) as u32))
            .collect();
        let tasks: Vec<_> = wave
            .iter()
            .cloned()
            .map(|p| {
                let flaky = flaky.clone();
                tokio::spawn(async move { flaky.run_create(p).await })
            })
            .collect();
        tokio::task::yield_now().await;
        proxy.cut();
        proxy.heal();
        for (p, task) in wave.into_iter().zip(tasks) {
            match join("a trigger", task).await {
                Ok(answer) => {
                    assert_eq!(answer.run_id, p.run_id);
                    created.push(p);
                }
                Err(e) if e.is_ambiguous() => unknown += 1,
                Err(e) if e.is_unavailable() => unsent.push(p),
                Err(e) => panic!("{}: a trigger failed for good: {e}", p.run_id),
            }
        }
    }
    for p in &created {
        let run = ok("run_get", store.run_get(&p.run_id)).await;
        assert!(
            run.is_some(),
            "run {} was answered created but is not stored",
            p.run_id
        );
        let announced = ok("run_events", store.run_events(&p.run_id, 100))
            .await
            .iter()
            .filter(|e| e.name == "job:created")
            .count();
        assert_eq!(
            announced,
            p.job_ids.len(),
            "run {}: one job:created per job",
            p.run_id
        );
    }
    for p in &unsent {
        let run = ok("run_get", store.run_get(&p.run_id)).await;
        assert!(
            run.is_none(),
            "run {} was answered unavailable (not sent) but is stored",
            p.run_id
        );
    }
    let counts = ok("pipeline_counts", store.pipeline_counts()).await;
    let stored_jobs = counts.get("p").map_or(0, |c| c.queued);
    let answered_jobs: u64 = created.iter().map(|p| p.job_ids.len() as u64).sum();
    assert!(
        stored_jobs >= answered_jobs,
        "{stored_jobs} jobs queued where the runs answered created have {answered_jobs}"
    );
}
