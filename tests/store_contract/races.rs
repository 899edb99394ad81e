//! Races that one SQLite writer serialises for free and a shared PostgreSQL can lose:
//! every case runs its contenders on separate handles (separate connections, or separate
//! SQLite writers on one file, as separate processes would).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use runyard::model::{Reason, RunStatus};
use runyard::store::{
    AbortOutcome, ClaimedJob, JobClaimParams, JobProgressParams, JobStartParams, Outcome,
    OutputAppendParams, RunCreated, RunFilter, StoredEvent,
};
use tokio::task::JoinHandle;

use crate::factory::{Factory, node_row};
use crate::fixtures::*;

/// Awaits a spawned task, failing the test when it panicked or hangs.
pub(crate) async fn join<T>(what: &str, task: JoinHandle<T>) -> T {
    match within(Duration::from_secs(90), what, task).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// A count that also remembers the highest value it reached.
#[derive(Default)]
struct Gauge {
    now: AtomicI64,
    max: AtomicI64,
}

impl Gauge {
    fn up(&self) {
        let v = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(v, Ordering::SeqCst);
    }
    fn down(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
    fn max(&self) -> i64 {
        self.max.load(Ordering::SeqCst)
    }
}

const CLAIMERS: usize = 16;
const GLOBAL_CAP: usize = 4;
const CAPPED_CAP: u32 = 2;

/// What the claimers observed.
struct ClaimRaceReport {
    claims: usize,
    max_capped: i64,
    max_total: i64,
    sampled_capped: u64,
    sampled_total: u64,
    samples: usize,
}

/// 16 claimers, each on its own handle, claim from `capped` (cap 2) and `free` (no cap),
/// hold each job a random moment and finish it (half the time claiming the next job in
/// the same transaction). Claimer `i` applies the global cap when `global(i)`.
///
/// Two independent views of "running": the test's own count of jobs claimed and not yet
/// being finished (raised after the claim committed, lowered before the finish starts, so
/// it never exceeds what the store holds as running), and `pipeline_counts()` sampled by
/// another handle all along.
async fn claim_race(
    f: &Factory,
    global: fn(usize) -> bool,
    target: usize,
    budget: Duration,
) -> ClaimRaceReport {
    let store = f.store().await;
    let per_pipeline = target + 50;
    for pipeline in ["capped", "free"] {
        for _ in 0..per_pipeline.div_ceil(50) {
            create_in(&*store, pipeline, 50).await;
        }
    }
    for i in 0..CLAIMERS {
        ok(
            "node_register",
            store.node_register(node_row(&format!("c{i}"))),
        )
        .await;
    }
    let capped = Arc::new(Gauge::default());
    let total = Arc::new(Gauge::default());
    let claims = Arc::new(AtomicUsize::new(0));
    let claimed_ids = Arc::new(std::sync::Mutex::new(HashSet::<String>::new()));
    let deadline = Instant::now() + budget;
    let done = Arc::new(AtomicBool::new(false));

    // The store's own view, sampled from another handle while the claimers run.
    let sampler = {
        let store = f.open_with_pool(2).await;
        let done = done.clone();
        tokio::spawn(async move {
            let (mut capped, mut total, mut samples) = (0u64, 0u64, 0usize);
            while !done.load(Ordering::SeqCst) {
                let counts = ok("pipeline_counts", store.pipeline_counts()).await;
                let c = counts.get("capped").map(|c| c.running).unwrap_or(0);
                let t: u64 = counts.values().map(|c| c.running).sum();
                capped = capped.max(c);
                total = total.max(t);
                samples += 1;
                // Paced: a tight loop would take a core of a 2-core machine from the race.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            store.close().await;
            (capped, total, samples)
        })
    };

    // Stands in for the WORK feed (a bus between replicas): a finish wakes every claimer
    // waiting for room, so they all race for the slot it freed.
    let freed = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for i in 0..CLAIMERS {
        let handle = f.open_with_pool(1).await;
        let (capped, total, claims, claimed_ids, freed) = (
            capped.clone(),
            total.clone(),
            claims.clone(),
            claimed_ids.clone(),
            freed.clone(),
        );
        let global_cap = if global(i) { GLOBAL_CAP } else { 0 };
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new();
            let params = JobClaimParams {
                node_id: format!("c{i}"),
                max: 1 + (i % 2),
                global_cap,
                pipelines: [("capped".to_string(), CAPPED_CAP), ("free".to_string(), 0)].into(),
                now: 10,
                keyed: Default::default(),
            };
            let took = |jobs: &[ClaimedJob]| {
                for job in jobs {
                    if job.pipeline == "capped" {
                        capped.up();
                    }
                    total.up();
                    assert!(
                        claimed_ids.lock().unwrap().insert(job.id.clone()),
                        "{} was claimed twice",
                        job.id
                    );
                }
                claims.fetch_add(jobs.len(), Ordering::SeqCst);
            };
            let mut held: Vec<ClaimedJob> = Vec::new();
            loop {
                if held.is_empty() {
                    if claims.load(Ordering::SeqCst) >= target || Instant::now() > deadline {
                        break;
                    }
                    let wake = freed.notified();
                    tokio::pin!(wake);
                    wake.as_mut().enable();
                    let out = ok("job_claim", handle.job_claim(params.clone())).await;
                    if out.jobs.is_empty() {
                        // Every slot the caps allow is taken: wait for a finish (or a
                        // moment, as the scheduler's backstop poll would).
                        let _ = tokio::time::timeout(Duration::from_millis(20), wake).await;
                        continue;
                    }
                    took(&out.jobs);
                    held = out.jobs;
                }
                // Hold it a moment, as if it ran.
                rng.jitter(5_000).await;
                let job = held.pop().expect("a held job");
                if job.pipeline == "capped" {
                    capped.down();
                }
                total.down();
                let mut end = finish(&job, Outcome::Completed);
                if rng.one_in(2)
                    && claims.load(Ordering::SeqCst) < target
                    && Instant::now() < deadline
                {
                    end.claim_next = Some(JobClaimParams {
                        max: 1,
                        ..params.clone()
                    });
                }
                let out = ok("job_finish", handle.job_finish(end)).await;
                freed.notify_waiters();
                assert!(out.applied, "the finish of a held claim must apply");
                took(&out.next);
                held.extend(out.next);
            }
            handle.close().await;
        }));
    }
    for t in tasks {
        join("a claimer", t).await;
    }
    done.store(true, Ordering::SeqCst);
    let (sampled_capped, sampled_total, samples) = join("the sampler", sampler).await;

    let claims = claims.load(Ordering::SeqCst);
    let counts = ok("pipeline_counts", store.pipeline_counts()).await;
    let queued: u64 = counts.values().map(|c| c.queued).sum();
    let running: u64 = counts.values().map(|c| c.running).sum();
    assert_eq!(running, 0, "every claimed job was finished");
    assert_eq!(
        queued as usize,
        2 * per_pipeline.div_ceil(50) * 50 - claims,
        "each claim took one queued job, once"
    );
    ClaimRaceReport {
        claims,
        max_capped: capped.max(),
        max_total: total.max(),
        sampled_capped,
        sampled_total,
        samples,
    }
}

pub async fn concurrent_claimers_never_exceed_the_global_or_a_pipeline_cap(f: &Factory) {
    let started = Instant::now();
    let r = claim_race(f, |_| true, f.pick(1_500, 4_000), Duration::from_secs(12)).await;
    eprintln!(
        "{}: {} claims by {CLAIMERS} claimers in {:?}; max running {} (capped {}), sampled {} ({}) over {} samples",
        f.name(),
        r.claims,
        started.elapsed(),
        r.max_total,
        r.max_capped,
        r.sampled_total,
        r.sampled_capped,
        r.samples
    );
    assert!(
        r.claims >= 300,
        "too few claims to mean anything: {}",
        r.claims
    );
    assert!(
        r.max_capped <= i64::from(CAPPED_CAP),
        "pipeline cap {CAPPED_CAP} exceeded: {} running",
        r.max_capped
    );
    assert!(
        r.max_total <= GLOBAL_CAP as i64,
        "global cap {GLOBAL_CAP} exceeded: {} running",
        r.max_total
    );
    assert!(r.sampled_capped <= u64::from(CAPPED_CAP));
    assert!(r.sampled_total <= GLOBAL_CAP as u64);
    // Not vacuous: the claimers did fill the cap (seen by the test's count, or by the
    // store's while finishes were still committing).
    assert_eq!(
        r.max_total.max(r.sampled_total as i64),
        GLOBAL_CAP as i64,
        "the race never filled the cap"
    );
}

pub async fn claimers_with_and_without_a_global_cap_never_exceed_a_pipeline_cap(f: &Factory) {
    // Replicas may disagree on the global cap (a rolling config change): half the
    // claimers apply it, half do not. The pipeline cap binds them all the same.
    let r = claim_race(
        f,
        |i| i % 2 == 0,
        f.pick(800, 2_000),
        Duration::from_secs(6),
    )
    .await;
    eprintln!(
        "{}: {} claims; max running in the capped pipeline {} (sampled {})",
        f.name(),
        r.claims,
        r.max_capped,
        r.sampled_capped
    );
    assert!(
        r.claims >= 200,
        "too few claims to mean anything: {}",
        r.claims
    );
    assert!(
        r.max_capped <= i64::from(CAPPED_CAP) && r.sampled_capped <= u64::from(CAPPED_CAP),
        "pipeline cap {CAPPED_CAP} exceeded: {} running ({} sampled)",
        r.max_capped,
        r.sampled_capped
    );
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

pub async fn a_reader_following_events_sees_each_exactly_once_in_id_order(f: &Factory) {
    const WRITERS: usize = 8;
    let ops = f.pick(250, 250);
    let store = f.store().await;
    let writer_handles = [f.open().await, f.open().await];
    let reader_handle = f.open_with_pool(2).await;
    // Eight running jobs, one per writer, to report progress on.
    for _ in 0..WRITERS {
        create_in(&*store, "w", 1).await;
    }
    let jobs = ok("job_claim", store.job_claim(claim_from("w", WRITERS)))
        .await
        .jobs;
    assert_eq!(jobs.len(), WRITERS);

    let (target_tx, mut target_rx) = tokio::sync::watch::channel(None::<i64>);
    let reader = tokio::spawn(async move {
        let mut cursor = 0i64;
        let mut seen: Vec<StoredEvent> = Vec::new();
        loop {
            let batch = ok("events_after", reader_handle.events_after(cursor, 50)).await;
            for e in &batch {
                assert!(e.id > cursor, "ids must increase: {} after {cursor}", e.id);
                cursor = e.id;
            }
            if batch.is_empty() {
                let target = *target_rx.borrow_and_update();
                match target {
                    Some(t) if cursor >= t => break,
                    Some(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                    None => {
                        let _ = tokio::time::timeout(Duration::from_millis(1), target_rx.changed())
                            .await;
                    }
                }
            }
            seen.extend(batch);
        }
        seen
    });

    let mut writers = Vec::new();
    for (w, job) in jobs.into_iter().enumerate() {
        let store = writer_handles[w % writer_handles.len()].clone();
        writers.push(tokio::spawn(async move {
            let mut rng = Rng::new();
            let (mut progress, mut created) = (0usize, 0usize);
            for k in 0..ops {
                if rng.one_in(3) {
                    let shards = 1 + rng.below(6) as u32;
                    ok("run_create", store.run_create(run_params("w2", shards))).await;
                    created += shards as usize;
                } else {
                    let applied = ok(
                        "job_progress",
                        store.job_progress(JobProgressParams {
                            job_id: job.id.clone(),
                            claim_seq: job.claim_seq,
                            percent: (k % 100) as u8,
                            message: format!("w{w}-{k}"),
                            now: 30,
                        }),
                    )
                    .await;
                    assert!(applied);
                    progress += 1;
                }
                rng.jitter(2_000).await;
            }
            (progress, created)
        }));
    }
    let (mut progress, mut created) = (0, WRITERS);
    for w in writers {
        let (p, c) = join("a writer", w).await;
        progress += p;
        created += c;
    }
    let all = events_settled(&*store).await;
    let target = all.last().expect("events").id;
    target_tx.send(Some(target)).unwrap();
    let seen = join("the reader", reader).await;

    let seen_ids: Vec<i64> = seen
        .iter()
        .map(|e| e.id)
        .filter(|id| *id <= target)
        .collect();
    let all_ids: Vec<i64> = all.iter().map(|e| e.id).collect();
    assert!(
        seen_ids.windows(2).all(|w| w[0] < w[1]),
        "the reader saw ids out of order or twice"
    );
    let seen_set: HashSet<i64> = seen_ids.iter().copied().collect();
    let missed: Vec<&i64> = all_ids.iter().filter(|id| !seen_set.contains(id)).collect();
    assert!(
        missed.is_empty(),
        "the reader missed {} of {} events (the first: {:?})",
        missed.len(),
        all_ids.len(),
        &missed[..missed.len().min(20)]
    );
    assert_eq!(
        seen_ids, all_ids,
        "the reader saw exactly the stored events"
    );
    let named = |name: &str| all.iter().filter(|e| e.name == name).count();
    assert_eq!(named("job:progress"), progress);
    assert_eq!(named("job:created"), created);
    eprintln!("{}: {} events followed", f.name(), all_ids.len());
}

pub async fn a_stale_executions_output_and_finish_change_nothing(f: &Factory) {
    const ROUNDS: usize = 20;
    const FRESH_FLUSHES: usize = 20;
    let old_node = f.store().await;
    let new_node = f.open().await;
    ok("node_register", new_node.node_register(node_row("n2"))).await;
    let start = |job: &ClaimedJob, pid: u32| JobStartParams {
        job_id: job.id.clone(),
        claim_seq: job.claim_seq,
        pid,
        proc_start: u64::from(pid),
        now: 12,
    };
    let append = |job: &ClaimedJob, stdout: Vec<String>, stderr: Vec<String>| OutputAppendParams {
        job_id: job.id.clone(),
        claim_seq: job.claim_seq,
        stdout,
        stderr,
        now: 14,
        first_line: None,
    };
    let progress = |job: &ClaimedJob, percent: u8, message: &str| JobProgressParams {
        job_id: job.id.clone(),
        claim_seq: job.claim_seq,
        percent,
        message: message.into(),
        now: 13,
    };
    let mut runs = Vec::new();
    for _ in 0..ROUNDS {
        let mut p = run_params("p", 1);
        p.policy.max_orphan_requeues = 3;
        let run = ok("run_create", old_node.run_create(p)).await;
        let old = ok("job_claim", old_node.job_claim(claim(1)))
            .await
            .jobs
            .remove(0);
        assert_eq!(
            ok("job_start", old_node.job_start(start(&old, 111))).await,
            Some(false)
        );
        let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(
            ok(
                "job_output_append",
                old_node.job_output_append(append(
                    &old,
                    lines(&["old-0", "old-1"]),
                    lines(&["old-2"])
                ))
            )
            .await
        );
        // The old node is declared lost: its execution goes back to the queue (fenced).
        let requeued = ok(
            "job_finish",
            old_node.job_finish(finish(
                &old,
                Outcome::Requeue {
                    reason: Reason::Orphaned,
                },
            )),
        )
        .await;
        assert!(requeued.applied);
        let new = ok(
            "job_claim",
            new_node.job_claim(JobClaimParams {
                node_id: "n2".into(),
                ..claim_later(1)
            }),
        )
        .await
        .jobs
        .remove(0);
        assert_eq!(new.id, old.id);
        assert!(
            new.claim_seq > old.claim_seq,
            "a new claim gets a new fence"
        );
        let base = ok("job_output_len", new_node.job_output_len(&new.id)).await;
        assert_eq!(base, 3);

        // The old execution keeps writing while the new one runs.
        let stale = {
            let (store, old) = (old_node.clone(), old.clone());
            tokio::spawn(async move {
                let mut rng = Rng::new();
                for k in 0..10 {
                    rng.jitter(1_000).await;
                    let line = vec![format!("stale-{k}")];
                    assert!(
                        !ok(
                            "stale append",
                            store.job_output_append(append(&old, line.clone(), line))
                        )
                        .await
                    );
                    assert!(
                        !ok(
                            "stale progress",
                            store.job_progress(progress(&old, 99, "stale"))
                        )
                        .await
                    );
                    assert_eq!(
                        ok("stale start", store.job_start(start(&old, 111))).await,
                        None
                    );
                    let outcome = if k % 2 == 0 {
                        Outcome::Completed
                    } else {
                        Outcome::Failed {
                            reason: Reason::ExitCode,
                            error: None,
                        }
                    };
                    assert!(
                        !ok("stale finish", store.job_finish(finish(&old, outcome)))
                            .await
                            .applied
                    );
                }
            })
        };
        let fresh = {
            let (store, new) = (new_node.clone(), new.clone());
            tokio::spawn(async move {
                let mut rng = Rng::new();
                assert_eq!(
                    ok("job_start", store.job_start(start(&new, 222))).await,
                    Some(false)
                );
                for k in 0..FRESH_FLUSHES {
                    rng.jitter(500).await;
                    let out = vec![format!("f{k}a"), format!("f{k}b")];
                    let err = vec![format!("f{k}c")];
                    assert!(
                        ok(
                            "job_output_append",
                            store.job_output_append(append(&new, out, err))
                        )
                        .await
                    );
                    let message = format!("fresh-{k}");
                    assert!(
                        ok(
                            "job_progress",
                            store.job_progress(progress(&new, k as u8, &message))
                        )
                        .await
                    );
                }
            })
        };
        join("the stale writer", stale).await;
        join("the fresh writer", fresh).await;

        let job = ok("job_get", new_node.job_get(&new.id)).await.unwrap();
        assert_eq!(
            (
                job.status.as_str(),
                job.node.as_deref(),
                job.pid,
                job.progress,
                job.progress_message.as_deref(),
                job.attempt
            ),
            (
                "running",
                Some("n2"),
                Some(222),
                Some((FRESH_FLUSHES - 1) as u8),
                Some(format!("fresh-{}", FRESH_FLUSHES - 1).as_str()),
                1
            ),
            "the stale execution changed the job row"
        );
        let stored = ok(
            "job_output_after",
            new_node.job_output_after(&new.id, -1, 10_000),
        )
        .await;
        let seqs: Vec<i64> = stored.iter().map(|l| l.seq).collect();
        let total = 3 + 3 * FRESH_FLUSHES as i64;
        assert_eq!(
            seqs,
            (0..total).collect::<Vec<_>>(),
            "line numbers are unique and gapless"
        );
        let mut expected = vec!["old-0".to_string(), "old-1".into(), "old-2".into()];
        for k in 0..FRESH_FLUSHES {
            expected.extend([format!("f{k}a"), format!("f{k}b"), format!("f{k}c")]);
        }
        let texts: Vec<String> = stored.iter().map(|l| l.line.clone()).collect();
        assert_eq!(texts, expected, "only the live executions' lines, in order");
        assert!(
            stored.iter().all(|l| l.claim_seq
                == if l.seq < base {
                    old.claim_seq
                } else {
                    new.claim_seq
                }),
            "each line names the execution that wrote it"
        );
        assert_eq!(
            ok("job_output_len", new_node.job_output_len(&new.id)).await,
            total
        );
        let after = ok(
            "job_output_after",
            new_node.job_output_after(&new.id, base - 1, 10_000),
        )
        .await;
        assert_eq!(
            after.first().map(|l| l.seq),
            Some(base),
            "a cursor resumes at the next line"
        );

        let done = ok(
            "job_finish",
            new_node.job_finish(finish(&new, Outcome::Completed)),
        )
        .await;
        assert!(done.applied);
        assert_eq!(done.run_finalized, Some(RunStatus::Completed));
        assert!(
            !ok(
                "stale finish",
                old_node.job_finish(finish(&old, Outcome::Completed))
            )
            .await
            .applied
        );
        let view = ok("run_get", old_node.run_get(&run.run_id)).await.unwrap();
        assert_eq!((view.status.as_str(), view.shards_done), ("completed", 1));
        runs.push(run.run_id);
    }
    let events = events_settled(&*old_node).await;
    for run_id in &runs {
        let of_run: Vec<&StoredEvent> = events.iter().filter(|e| &run_of(e) == run_id).collect();
        let named = |name: &str| of_run.iter().filter(|e| e.name == name).count();
        assert_eq!(named("job:started"), 2, "one start per live execution");
        assert_eq!(named("job:progress"), FRESH_FLUSHES);
        assert_eq!(named("run:completed"), 1);
        assert!(of_run.iter().all(|e| !e.data.contains("stale")));
    }
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
