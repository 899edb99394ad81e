//! Builders, reads and small tools shared by the contract tests. Everything goes
//! through the [`Store`] trait.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use runyard::model::{Reason, RunId, job_id_for};
use runyard::store::{
    ClaimedJob, JobClaimParams, JobFinishParams, JobPolicy, Outcome, RunCreateParams, RunCreated,
    Store, StoreResult, StoredEvent,
};
use tokio::task::JoinHandle;

/// A single store call that takes longer than this is a hang (or a deadlock).
pub const CALL_LIMIT: Duration = Duration::from_secs(30);
/// The pipeline of the marker runs written by [`events_settled`].
const MARKER_PIPELINE: &str = "zz-marker";

/// Awaits `fut`, failing the test when it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {limit:?} (a hang or a deadlock)"),
    }
}

/// Awaits a spawned task, failing the test when it panicked or hangs.
pub async fn join<T>(what: &str, task: JoinHandle<T>) -> T {
    match within(Duration::from_secs(90), what, task).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Awaits one store call: within [`CALL_LIMIT`], and it must succeed.
pub async fn ok<T>(what: &str, fut: impl Future<Output = StoreResult<T>>) -> T {
    match within(CALL_LIMIT, what, fut).await {
        Ok(v) => v,
        Err(e) => panic!("{what} failed: {e} ({e:?})"),
    }
}

/// The default policy: two attempts, 10 ms backoff, one requeue.
pub fn policy() -> JobPolicy {
    JobPolicy {
        max_attempts: 2,
        retry_backoff_ms: 10,
        on_orphan: "requeue",
        max_orphan_requeues: 1,
        retry_on: Default::default(),
    }
}

/// `run_create` input for a fresh run (its id, its job ids), at time 1.
pub fn run_params(pipeline: &str, shards: u32) -> RunCreateParams {
    let run = RunId::new();
    RunCreateParams {
        run_id: run.to_string(),
        job_ids: (0..shards).map(|i| job_id_for(run, i, shards)).collect(),
        pipeline: pipeline.into(),
        params: BTreeMap::new(),
        triggered_by: "api".into(),
        actor: None,
        idempotency_key: None,
        policy: policy(),
        has_finalizer: false,
        callback_url: None,
        now: 1,
        options: Default::default(),
    }
}

/// A run of `shards` shards in pipeline `p`.
pub async fn create(store: &dyn Store, shards: u32) -> RunCreated {
    create_in(store, "p", shards).await
}

/// A run of `shards` shards in `pipeline`.
pub async fn create_in(store: &dyn Store, pipeline: &str, shards: u32) -> RunCreated {
    create_with(store, pipeline, shards, false, None).await
}

/// A run with a finalizer and/or a completion webhook.
pub async fn create_with(
    store: &dyn Store,
    pipeline: &str,
    shards: u32,
    has_finalizer: bool,
    callback_url: Option<&str>,
) -> RunCreated {
    let p = RunCreateParams {
        has_finalizer,
        callback_url: callback_url.map(str::to_string),
        ..run_params(pipeline, shards)
    };
    ok("run_create", store.run_create(p)).await
}

/// A claim by `n1` from pipeline `p` (uncapped) at time 10.
pub fn claim(max: usize) -> JobClaimParams {
    JobClaimParams {
        node_id: "n1".into(),
        max,
        global_cap: 0,
        pipelines: [("p".to_string(), 0)].into(),
        now: 10,
        keyed: Default::default(),
    }
}

/// A claim by `n1` from `pipeline` at time 10.
pub fn claim_from(pipeline: &str, max: usize) -> JobClaimParams {
    JobClaimParams {
        pipelines: [(pipeline.to_string(), 0)].into(),
        ..claim(max)
    }
}

/// A claim after the finishes of [`finish`] (jobs queued by them are due).
pub fn claim_later(max: usize) -> JobClaimParams {
    JobClaimParams {
        now: 100,
        ..claim(max)
    }
}

/// The end of `job`'s current execution, at time 20.
pub fn finish(job: &ClaimedJob, outcome: Outcome) -> JobFinishParams {
    JobFinishParams {
        job_id: job.id.clone(),
        claim_seq: job.claim_seq,
        outcome,
        exit_code: Some(0),
        stdout_bytes: 0,
        stderr_bytes: 0,
        truncated: false,
        now: 20,
        claim_next: None,
        start: None,
        result: None,
        lingers: false,
    }
}

/// The end of an attempt whose command exited non-zero.
pub fn fail() -> Outcome {
    Outcome::Failed {
        reason: Reason::ExitCode,
        error: None,
    }
}

/// The run an event belongs to (its `runId`).
pub fn run_of(event: &StoredEvent) -> String {
    serde_json::from_str::<serde_json::Value>(&event.data)
        .ok()
        .and_then(|v| v["runId"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// How many events named `name` each run has, once everything committed is visible.
pub async fn events_per_run(store: &dyn Store, name: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for e in events_settled(store)
        .await
        .iter()
        .filter(|e| e.name == name)
    {
        *out.entry(run_of(e)).or_insert(0) += 1;
    }
    out
}

/// Every stored event, once every write that committed before this call is visible.
///
/// A reader is not promised its own writes at once: PostgreSQL shows only ids below the
/// oldest transaction still in flight anywhere on the server. So this writes a marker run
/// and reads until the marker's event shows up; no event committed earlier can appear
/// below it later (the contract of `events_after`). The marker's events are left out.
pub async fn events_settled(store: &dyn Store) -> Vec<StoredEvent> {
    let marker = create_in(store, MARKER_PIPELINE, 1).await.run_id;
    let deadline = tokio::time::Instant::now() + CALL_LIMIT;
    let mut all: Vec<StoredEvent> = Vec::new();
    let mut cursor = 0;
    loop {
        let batch = ok("events_after", store.events_after(cursor, 10_000)).await;
        if let Some(last) = batch.last() {
            cursor = last.id;
            let seen = batch.iter().any(|e| run_of(e) == marker);
            all.extend(batch);
            if seen {
                break;
            }
        } else {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the marker event did not become visible within {CALL_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    all.retain(|e| run_of(e) != marker);
    all
}

/// Number of `run:completed` events of each run.
pub fn completions(events: &[StoredEvent]) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for e in events.iter().filter(|e| e.name == "run:completed") {
        *out.entry(run_of(e)).or_insert(0) += 1;
    }
    out
}

/// `run:completed` events of one run, once everything committed so far is visible.
pub async fn run_completed_events(store: &dyn Store, run_id: &str) -> usize {
    completions(&events_settled(store).await)
        .get(run_id)
        .copied()
        .unwrap_or(0)
}

/// A small random generator (xorshift64*), seeded differently for every instance.
pub struct Rng(u64);

impl Rng {
    /// A fresh generator.
    pub fn new() -> Rng {
        static SALT: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let salt = SALT.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        Rng((nanos ^ salt) | 1)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }

    /// True with probability 1/n.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    /// Sleeps up to `max_us` microseconds: a random delay to shuffle the interleavings.
    pub async fn jitter(&mut self, max_us: u64) {
        let us = self.below(max_us + 1);
        if us > 0 {
            tokio::time::sleep(Duration::from_micros(us)).await;
        }
    }
}

static RETRIES: AtomicU64 = AtomicU64::new(0);
static DEADLOCKS: AtomicU64 = AtomicU64::new(0);

/// Counts the store's "retrying a store transaction" debug lines, and those among them
/// that retried a detected deadlock: a retried deadlock succeeds, so only this shows it.
struct RetryCounter;

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RetryCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if !event.metadata().target().starts_with("runyard::store") {
            return;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        if message.0.contains("retrying a store transaction") {
            RETRIES.fetch_add(1, Ordering::SeqCst);
            if message.0.contains("deadlock") {
                DEADLOCKS.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// Installs the [`RetryCounter`] (once per test process).
pub fn count_retries() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use tracing_subscriber::layer::SubscriberExt;
        let _ = tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(RetryCounter),
        );
    });
}

/// Deadlocks the store detected and retried so far in this process (any test).
pub fn deadlocks_seen() -> u64 {
    DEADLOCKS.load(Ordering::SeqCst)
}

/// Transactions the store retried so far in this process (any test, any cause).
pub fn retries_seen() -> u64 {
    RETRIES.load(Ordering::SeqCst)
}
