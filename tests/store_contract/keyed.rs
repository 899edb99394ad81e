//! Per-key caps and fair shares (pipeline `concurrency_key` / `concurrency_per_key`):
//! 16 claimers on their own handles (wanting more than 6 keys × cap 2 allow) never run
//! more than the cap of one key at once, nor, in a second race, the global cap;
//! a claim takes keys round-robin, so a small tenant queued behind a large one is not
//! kept waiting; jobs queued before their pipeline had a key are claimed once adopted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use runyard::store::{ClaimedJob, JobClaimParams, Outcome, RunCreateParams, RunOptions, Store};

use crate::factory::{Factory, node_row};
use crate::fixtures::*;

const CLAIMERS: usize = 16;
const KEYS: usize = 6;
const PER_KEY: u32 = 2;
/// The global cap of the second race (no per-key cap there), well below what the
/// claimers want.
const GLOBAL: usize = 3;

/// What a keyed race saw: claims, the most running of one key, the most running in all.
struct KeyedRace {
    claims: usize,
    most_of_a_key: usize,
    most: usize,
}

pub async fn concurrent_claimers_never_exceed_a_per_key_cap(f: &Factory) {
    let r = keyed_race(f, PER_KEY, 0).await;
    assert!(
        r.claims >= 200,
        "too few claims to mean anything: {}",
        r.claims
    );
    assert!(
        r.most_of_a_key <= PER_KEY as usize,
        "per-key cap {PER_KEY} exceeded: {} running",
        r.most_of_a_key
    );
    assert_eq!(
        r.most_of_a_key, PER_KEY as usize,
        "the race never filled a key's cap"
    );
}

/// The keyed claim under the global cap: on PostgreSQL it locks cap tokens and gives them
/// out in statements of its own (not the one-statement claim), and with claimers of an
/// unkeyed pipeline beside it (which meet it on the tokens alone, not on the keyed
/// pipeline's key) no more than the cap may run together.
pub async fn concurrent_keyed_claimers_never_exceed_the_global_cap(f: &Factory) {
    let r = keyed_race(f, 0, GLOBAL).await;
    assert!(
        r.claims >= 100,
        "too few claims to mean anything: {}",
        r.claims
    );
    assert!(
        r.most <= GLOBAL,
        "global cap {GLOBAL} exceeded: {} running",
        r.most
    );
    assert_eq!(r.most, GLOBAL, "the race never filled the global cap");
}

/// A single-shard run of `pipeline` under concurrency key `key`.
async fn keyed_run(store: &dyn Store, pipeline: &str, key: Option<&str>) -> String {
    let p = RunCreateParams {
        options: RunOptions {
            concurrency_key: key.map(str::to_string),
            ..Default::default()
        },
        ..run_params(pipeline, 1)
    };
    ok("run_create", store.run_create(p)).await.run_id
}

fn keyed_claim(node: &str, pipeline: &str, max: usize, per_key: u32) -> JobClaimParams {
    JobClaimParams {
        node_id: node.into(),
        max,
        global_cap: 0,
        pipelines: [(pipeline.to_string(), 0)].into(),
        keyed: [(pipeline.to_string(), per_key)].into(),
        now: 10,
    }
}

/// 16 claimers on their own handles claim keyed jobs (per-key cap `per_key`, global cap
/// `global`; 0: none), hold each a moment and finish it (half the time claiming the
/// next in the same transaction), counting what runs by the test's own view.
async fn keyed_race(f: &Factory, per_key: u32, global: usize) -> KeyedRace {
    let store = f.store().await;
    let pipeline = format!("keyed-{}", f.name());
    let mut key_of: HashMap<String, String> = HashMap::new();
    let runs = f.pick(600, 1_500);
    for i in 0..runs {
        let key = format!("tenant-{}", i % KEYS);
        let run = keyed_run(&*store, &pipeline, Some(&key)).await;
        key_of.insert(run, key);
    }
    // Under a global cap, half the claimers take from an unkeyed pipeline (the
    // one-statement claim), so the two kinds of claim meet on the cap alone.
    let plain = format!("plain-{}", f.name());
    if global > 0 {
        for _ in 0..runs {
            let run = keyed_run(&*store, &plain, None).await;
            key_of.insert(run, "plain".into());
        }
    }
    for i in 0..CLAIMERS {
        ok(
            "node_register",
            store.node_register(node_row(&format!("k{i}"))),
        )
        .await;
    }
    let key_of = Arc::new(key_of);
    let running: Arc<std::sync::Mutex<HashMap<String, u32>>> = Default::default();
    let most = Arc::new(AtomicUsize::new(0));
    let most_total = Arc::new(AtomicUsize::new(0));
    let claims = Arc::new(AtomicUsize::new(0));
    let seen: Arc<std::sync::Mutex<HashSet<String>>> = Default::default();
    let done = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(10);
    let target = runs * 3 / 4;
    let mut tasks = Vec::new();
    for i in 0..CLAIMERS {
        let handle = f.open_with_pool(1).await;
        let (key_of, running, most, most_total, claims, seen, done) = (
            key_of.clone(),
            running.clone(),
            most.clone(),
            most_total.clone(),
            claims.clone(),
            seen.clone(),
            done.clone(),
        );
        let mut params = JobClaimParams {
            global_cap: global,
            ..keyed_claim(&format!("k{i}"), &pipeline, 1 + i % 3, per_key)
        };
        if global > 0 && i % 2 == 1 {
            params.pipelines = [(plain.clone(), 0)].into();
            params.keyed = Default::default();
        }
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new();
            let took = |jobs: &[ClaimedJob]| {
                let mut r = running.lock().unwrap();
                for job in jobs {
                    assert!(
                        seen.lock().unwrap().insert(job.id.clone()),
                        "{} claimed twice",
                        job.id
                    );
                    let n = r.entry(key_of[&job.run_id].clone()).or_default();
                    *n += 1;
                    most.fetch_max(*n as usize, Ordering::SeqCst);
                    let total: u32 = r.values().sum();
                    most_total.fetch_max(total as usize, Ordering::SeqCst);
                }
                claims.fetch_add(jobs.len(), Ordering::SeqCst);
            };
            let mut held: Vec<ClaimedJob> = Vec::new();
            while !done.load(Ordering::SeqCst) {
                if held.is_empty() {
                    if claims.load(Ordering::SeqCst) >= target || Instant::now() > deadline {
                        break;
                    }
                    let out = ok("job_claim", handle.job_claim(params.clone())).await;
                    if out.jobs.is_empty() {
                        rng.jitter(2_000).await;
                        continue;
                    }
                    took(&out.jobs);
                    held = out.jobs;
                }
                if global > 0 {
                    // Held long enough that the cap's holders overlap on a loaded machine:
                    // while others wait, fair shares give each claimer one unit at most, so
                    // filling the cap takes three claimers holding at once (0-3 ms holds
                    // left one run in the full suite at 2 of 3).
                    tokio::time::sleep(Duration::from_millis(8)).await;
                }
                rng.jitter(3_000).await;
                let job = held.pop().expect("a held job");
                // Lowered before the finish starts: never above what the store counts.
                *running
                    .lock()
                    .unwrap()
                    .get_mut(&key_of[&job.run_id])
                    .unwrap() -= 1;
                let mut end = finish(&job, Outcome::Completed);
                if rng.one_in(2) && claims.load(Ordering::SeqCst) < target {
                    end.claim_next = Some(JobClaimParams {
                        max: 1,
                        ..params.clone()
                    });
                }
                let out = ok("job_finish", handle.job_finish(end)).await;
                assert!(out.applied);
                took(&out.next);
                held.extend(out.next);
            }
            for job in held {
                *running
                    .lock()
                    .unwrap()
                    .get_mut(&key_of[&job.run_id])
                    .unwrap() -= 1;
                ok(
                    "job_finish",
                    handle.job_finish(finish(&job, Outcome::Completed)),
                )
                .await;
            }
            handle.close().await;
        }));
    }
    for t in tasks {
        join("a keyed claimer", t).await;
    }
    done.store(true, Ordering::SeqCst);
    let claims = claims.load(Ordering::SeqCst);
    let most_of_a_key = most.load(Ordering::SeqCst);
    let most = most_total.load(Ordering::SeqCst);
    eprintln!(
        "{}: {claims} keyed claims by {CLAIMERS} claimers over {KEYS} keys; most running of one key {most_of_a_key}, in all {most}",
        f.name()
    );
    KeyedRace {
        claims,
        most_of_a_key,
        most,
    }
}

pub async fn a_small_tenant_is_not_kept_behind_a_large_ones_backlog(f: &Factory) {
    let store = f.store().await;
    let pipeline = format!("fair-{}", f.name());
    ok("node_register", store.node_register(node_row("n1"))).await;
    // A job queued before the pipeline had a key: keyed claims see it once adopted.
    let legacy = keyed_run(&*store, &pipeline, None).await;
    let big = f.pick(300, 1_000);
    for _ in 0..big {
        keyed_run(&*store, &pipeline, Some("big")).await;
    }
    let mut small: HashSet<String> = HashSet::new();
    for _ in 0..10 {
        small.insert(keyed_run(&*store, &pipeline, Some("small")).await);
    }
    assert_eq!(
        ok("jobs_adopt_key", store.jobs_adopt_key(&pipeline)).await,
        1
    );
    let mut order: Vec<String> = Vec::new();
    for _ in 0..30 {
        let out = ok(
            "job_claim",
            store.job_claim(keyed_claim("n1", &pipeline, 1, 0)),
        )
        .await;
        assert_eq!(out.jobs.len(), 1);
        let job = &out.jobs[0];
        order.push(job.run_id.clone());
        ok(
            "job_finish",
            store.job_finish(finish(job, Outcome::Completed)),
        )
        .await;
    }
    let small_first30 = order.iter().filter(|r| small.contains(*r)).count();
    assert_eq!(
        small_first30, 10,
        "every run of the small tenant starts within the first 30 claims, not after the {big} of the large one"
    );
    assert!(
        order.contains(&legacy),
        "the adopted keyless job was claimed too"
    );
}

/// A keyed pipeline under the global cap too: the keyed claim (statements of its own on
/// PostgreSQL, which lock cap tokens first and give them to what it claimed) takes no
/// more than the cap, and the units its jobs hold come back when they end.
pub async fn a_keyed_claim_under_the_global_cap_takes_and_gives_back_its_units(f: &Factory) {
    let store = f.store().await;
    let pipeline = format!("keyed-{}", f.name());
    for i in 0..6 {
        keyed_run(&*store, &pipeline, Some(&format!("tenant-{}", i % 3))).await;
    }
    ok("node_register", store.node_register(node_row("k0"))).await;
    let capped = JobClaimParams {
        global_cap: 2,
        ..keyed_claim("k0", &pipeline, 4, 0)
    };
    let got = ok("job_claim", store.job_claim(capped.clone())).await.jobs;
    assert_eq!(got.len(), 2, "a claim wanting 4 takes the cap's 2");
    assert!(
        ok("job_claim", store.job_claim(capped.clone()))
            .await
            .jobs
            .is_empty(),
        "the cap of 2 holds while two run"
    );
    let out = ok(
        "job_finish",
        store.job_finish(finish(&got[0], Outcome::Completed)),
    )
    .await;
    assert!(out.applied);
    let more = ok("job_claim", store.job_claim(capped.clone())).await.jobs;
    assert_eq!(more.len(), 1, "the ended job's unit is claimable again");
    assert!(
        ok("job_claim", store.job_claim(capped))
            .await
            .jobs
            .is_empty(),
        "and the cap of 2 holds again"
    );
}
