//! Races that one SQLite writer serialises for free and a shared PostgreSQL can lose:
//! every case runs its contenders on separate handles (separate connections, or separate
//! SQLite writers on one file, as separate processes would).
//!
//! Here: concurrent claimers never take more than the global cap or a pipeline's cap,
//! whether or not every claimer applies the global cap.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use runyard::store::{ClaimedJob, JobClaimParams, Outcome};

use crate::factory::{Factory, node_row};
use crate::fixtures::*;

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
                // Hold it a moment, as if it ran: longer than a claim's round trips on a
                // loaded machine, so the four units' holders overlap. (The global cap's
                // fair shares keep each claimer to one unit while others wait, so no
                // claim takes two at once; with holds of 0–5 ms, CI's loaded runs saw at
                // most 3 of 4 running.)
                tokio::time::sleep(Duration::from_millis(8)).await;
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
