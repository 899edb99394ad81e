//! Races that one SQLite writer serialises for free and a shared PostgreSQL can lose:
//! every case runs its contenders on separate handles (separate connections, or separate
//! SQLite writers on one file, as separate processes would).
//!
//! Here: many contenders on one run. Identical idempotent triggers make one run, the
//! last two shards finishing together finalise it once, abort × finish × start on one
//! run never deadlock, and a confirmed abort wins over the finalizer's end.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runyard::model::{Reason, RunStatus};
use runyard::store::{
    AbortOutcome, JobClaimParams, JobStartParams, Outcome, RunCreated, RunFilter,
};
use tokio::task::JoinHandle;

use crate::factory::Factory;
use crate::fixtures::*;

pub async fn a_hundred_concurrent_identical_triggers_make_one_run(f: &Factory) {
    const TRIGGERS: usize = 100;
    const ROUNDS: usize = 3;
    let mut handles = vec![f.store().await];
    for _ in 0..3 {
        handles.push(f.open().await);
    }
    let mut winners: Vec<RunCreated> = Vec::new();
    for round in 0..ROUNDS {
        let key = format!("key-{round}");
        let params: BTreeMap<String, String> = [("round".to_string(), round.to_string())].into();
        let start = Arc::new(tokio::sync::Barrier::new(TRIGGERS));
        let mut tasks = Vec::new();
        for i in 0..TRIGGERS {
            let store = handles[i % handles.len()].clone();
            let (key, params, start) = (key.clone(), params.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                let mut p = run_params("p", 2);
                p.idempotency_key = Some(key);
                p.params = params;
                start.wait().await;
                ok("run_create", store.run_create(p)).await
            }));
        }
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(join("a trigger", t).await);
        }
        let fresh: Vec<&RunCreated> = answers.iter().filter(|a| !a.existing).collect();
        assert_eq!(fresh.len(), 1, "exactly one trigger creates the run");
        let winner = fresh[0].clone();
        for a in &answers {
            assert_eq!(a.run_id, winner.run_id, "every answer names the same run");
            assert_eq!(a.job_ids, winner.job_ids);
            if a.existing {
                assert_eq!(a.existing_params.as_ref(), Some(&params));
            }
        }
        winners.push(winner);
    }
    let runs = ok(
        "runs_list",
        handles[0].runs_list(RunFilter {
            pipeline: Some("p".into()),
            limit: 1_000,
            ..RunFilter::default()
        }),
    )
    .await;
    let mut listed: Vec<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
    let mut expected: Vec<&str> = winners.iter().map(|w| w.run_id.as_str()).collect();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected, "one run per key, no more");
    let counts = ok("pipeline_counts", handles[0].pipeline_counts()).await;
    assert_eq!(counts["p"].queued, 2 * ROUNDS as u64);
    let created = events_settled(&*handles[0])
        .await
        .into_iter()
        .filter(|e| e.name == "job:created")
        .count();
    assert_eq!(created, 2 * ROUNDS, "only the winners' jobs were announced");
}

pub async fn last_two_shards_finishing_together_finalise_the_run_exactly_once(f: &Factory) {
    const RUNS: usize = 1_000;
    const LANES: usize = 4;
    let started = Instant::now();
    let a = f.store().await;
    let b = f.open().await;
    let mut lanes = Vec::new();
    for lane in 0..LANES {
        let (a, b) = (a.clone(), b.clone());
        lanes.push(tokio::spawn(async move {
            let pipeline = format!("l{lane}");
            let mut rng = Rng::new();
            let mut runs = Vec::new();
            for _ in 0..RUNS / LANES {
                let mut p = run_params(&pipeline, 2);
                p.policy.max_attempts = 1;
                let run = ok("run_create", a.run_create(p)).await;
                let jobs = ok("job_claim", a.job_claim(claim_from(&pipeline, 2)))
                    .await
                    .jobs;
                assert_eq!(jobs.len(), 2);
                let outcomes: Vec<Outcome> = (0..2)
                    .map(|_| {
                        if rng.one_in(4) {
                            Outcome::Failed {
                                reason: Reason::ExitCode,
                                error: None,
                            }
                        } else {
                            Outcome::Completed
                        }
                    })
                    .collect();
                let expect = if outcomes.iter().all(|o| *o == Outcome::Completed) {
                    RunStatus::Completed
                } else {
                    RunStatus::Failed
                };
                // Either handle may end either shard.
                let (h0, h1) = if rng.one_in(2) {
                    (a.clone(), b.clone())
                } else {
                    (b.clone(), a.clone())
                };
                let f0 = finish(&jobs[0], outcomes[0].clone());
                let f1 = finish(&jobs[1], outcomes[1].clone());
                let t0 = tokio::spawn(async move { ok("job_finish", h0.job_finish(f0)).await });
                let t1 = tokio::spawn(async move { ok("job_finish", h1.job_finish(f1)).await });
                let (o0, o1) = (join("a finish", t0).await, join("a finish", t1).await);
                assert!(o0.applied && o1.applied);
                let finalised: Vec<RunStatus> =
                    [o0, o1].iter().filter_map(|o| o.run_finalized).collect();
                assert_eq!(
                    finalised,
                    vec![expect],
                    "exactly one finish finalises the run"
                );
                runs.push((run.run_id, expect));
            }
            let views = ok(
                "runs_list",
                a.runs_list(RunFilter {
                    pipeline: Some(pipeline),
                    limit: RUNS as u32,
                    ..RunFilter::default()
                }),
            )
            .await;
            let stored: HashMap<&str, (&str, u32)> = views
                .iter()
                .map(|v| (v.run_id.as_str(), (v.status.as_str(), v.shards_done)))
                .collect();
            assert_eq!(stored.len(), runs.len());
            for (run_id, expect) in &runs {
                assert_eq!(
                    stored.get(run_id.as_str()),
                    Some(&(expect.as_str(), 2)),
                    "run {run_id} ends {expect:?} with both shards done"
                );
            }
            runs
        }));
    }
    let mut runs = Vec::new();
    for lane in lanes {
        runs.extend(join("a lane", lane).await);
    }
    let events = events_settled(&*a).await;
    let mut completed: HashMap<String, Vec<String>> = HashMap::new();
    for e in events.iter().filter(|e| e.name == "run:completed") {
        let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        completed
            .entry(run_of(e))
            .or_default()
            .push(data["status"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(completed.len(), RUNS);
    for (run_id, expect) in &runs {
        assert_eq!(
            completed.get(run_id),
            Some(&vec![expect.as_str().to_string()]),
            "run {run_id}: exactly one run:completed, with its status"
        );
    }
    eprintln!("{}: {RUNS} runs in {:?}", f.name(), started.elapsed());
}

pub async fn abort_finish_and_start_racing_on_one_run_never_deadlock(f: &Factory) {
    const RUNS: usize = 200;
    const SHARDS: u32 = 4;
    const LANES: usize = 4;
    let started = Instant::now();
    let (deadlocks_before, retries_before) = (deadlocks_seen(), retries_seen());
    let a = f.store().await;
    let b = f.open().await;
    let c = f.open().await;
    let mut lanes = Vec::new();
    for lane in 0..LANES {
        let (a, b, c) = (a.clone(), b.clone(), c.clone());
        lanes.push(tokio::spawn(async move {
            let pipeline = format!("d{lane}");
            let mut rng = Rng::new();
            let mut runs = Vec::new();
            for _ in 0..RUNS / LANES {
                let run = ok("run_create", a.run_create(run_params(&pipeline, SHARDS))).await;
                let jobs = ok(
                    "job_claim",
                    a.job_claim(claim_from(&pipeline, SHARDS as usize)),
                )
                .await
                .jobs;
                assert_eq!(jobs.len(), SHARDS as usize);
                let mut racers: Vec<JoinHandle<Option<AbortOutcome>>> = Vec::new();
                let delay = rng.below(1_500);
                let (store, run_id) = (b.clone(), run.run_id.clone());
                racers.push(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros(delay)).await;
                    Some(ok("run_abort", store.run_abort(&run_id, 15)).await)
                }));
                for (i, job) in jobs.into_iter().enumerate() {
                    let outcome = match rng.below(3) {
                        0 => Outcome::Completed,
                        1 => Outcome::Failed {
                            reason: Reason::ExitCode,
                            error: None,
                        },
                        _ => Outcome::Requeue {
                            reason: Reason::Orphaned,
                        },
                    };
                    let delays = (rng.below(1_500), rng.below(1_500));
                    let start = JobStartParams {
                        job_id: job.id.clone(),
                        claim_seq: job.claim_seq,
                        pid: 1_000 + i as u32,
                        proc_start: 1,
                        now: 12,
                    };
                    // Half the shards record their start on their own, then finish; the
                    // others end before their start was recorded (both in one write).
                    let store = if i < 2 { c.clone() } else { a.clone() };
                    racers.push(tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_micros(delays.0)).await;
                        let mut end = finish(&job, outcome);
                        if i < 2 {
                            ok("job_start", store.job_start(start)).await;
                            tokio::time::sleep(Duration::from_micros(delays.1)).await;
                        } else {
                            end.start = Some(start);
                        }
                        ok("job_finish", store.job_finish(end)).await;
                        None
                    }));
                }
                let mut abort = None;
                for r in racers {
                    if let Some(outcome) = join("a racer", r).await {
                        abort = Some(outcome);
                    }
                }
                let expect = match abort.expect("the abort's answer") {
                    AbortOutcome::Aborted { .. } => "aborted",
                    AbortOutcome::Finished(status) => status.as_str(),
                    AbortOutcome::NotFound => panic!("the run vanished"),
                };
                let view = ok("run_get", a.run_get(&run.run_id)).await.unwrap();
                assert!(
                    view.jobs
                        .iter()
                        .all(|j| j.status != "running" && j.status != "queued"),
                    "every shard ended: {:?}",
                    view.jobs.iter().map(|j| &j.status).collect::<Vec<_>>()
                );
                assert_eq!((view.status.as_str(), view.shards_done), (expect, SHARDS));
                assert!(view.finished_at.is_some());
                // A deadlock is retried and then succeeds: only the store's retry log
                // shows it. Fail at the first one instead of after 200 runs.
                assert_eq!(
                    deadlocks_seen(),
                    deadlocks_before,
                    "PostgreSQL detected a deadlock: the lock order is broken"
                );
                runs.push(run.run_id);
            }
            runs
        }));
    }
    let mut runs = Vec::new();
    for lane in lanes {
        runs.extend(join("a lane", lane).await);
    }
    let done = completions(&events_settled(&*a).await);
    for run_id in &runs {
        assert_eq!(
            done.get(run_id),
            Some(&1),
            "run {run_id}: exactly one run:completed"
        );
    }
    let deadlocks = deadlocks_seen() - deadlocks_before;
    eprintln!(
        "{}: {RUNS} runs × {SHARDS} shards in {:?}; {deadlocks} deadlocks retried, {} retries in all",
        f.name(),
        started.elapsed(),
        retries_seen() - retries_before
    );
    assert_eq!(deadlocks, 0, "the lock order must leave nothing to detect");
}

/// An abort that the store confirmed wins over the finalizer ending at the same moment:
/// the run ends `aborted`, once. (On PostgreSQL the finalizer's end reads the run row
/// locked; unlocked, it wrote the status it computed before the abort committed.)
pub async fn an_abort_racing_the_finalizers_end_wins(f: &Factory) {
    const RUNS: usize = 150;
    let a = f.store().await;
    let b = f.open().await;
    let mut rng = Rng::new();
    let mut aborted = 0;
    for _ in 0..RUNS {
        let mut params = run_params("fin", 1);
        params.has_finalizer = true;
        let run = ok("run_create", a.run_create(params)).await;
        let shard = ok("job_claim", a.job_claim(claim_from("fin", 1)))
            .await
            .jobs;
        assert_eq!(shard.len(), 1);
        ok(
            "job_finish",
            a.job_finish(finish(&shard[0], Outcome::Completed)),
        )
        .await;
        let later = JobClaimParams {
            now: 100,
            ..claim_from("fin", 1)
        };
        let fin = ok("job_claim", a.job_claim(later)).await.jobs;
        assert_eq!(
            fin.len(),
            1,
            "the finalizer is queued once the shard landed"
        );
        let (delay_abort, delay_end) = (rng.below(1_000), rng.below(1_000));
        let (store, run_id) = (b.clone(), run.run_id.clone());
        let abort = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(delay_abort)).await;
            ok("run_abort", store.run_abort(&run_id, 20)).await
        });
        let (store, job) = (a.clone(), fin[0].clone());
        let end = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(delay_end)).await;
            ok(
                "job_finish",
                store.job_finish(finish(&job, Outcome::Completed)),
            )
            .await
        });
        let abort = join("the abort", abort).await;
        let end = join("the finalizer's end", end).await;
        assert!(end.applied);
        let view = ok("run_get", a.run_get(&run.run_id)).await.unwrap();
        match abort {
            AbortOutcome::Aborted { .. } => {
                aborted += 1;
                assert_eq!(view.status, "aborted", "a confirmed abort was overwritten");
            }
            AbortOutcome::Finished(status) => assert_eq!(view.status, status.as_str()),
            AbortOutcome::NotFound => panic!("the run vanished"),
        }
        assert_eq!(run_completed_events(&*a, &run.run_id).await, 1);
    }
    eprintln!("{}: {aborted} of {RUNS} aborts landed first", f.name());
}
