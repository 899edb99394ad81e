//! The rescuer against a real store and real processes: pid reuse never gets an
//! unrelated process signalled, and dead nodes' jobs are re-queued exactly once.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::Arc;

use runyard::bus::LocalBus;
use runyard::config::{Settings, Synchronous};
use runyard::executor::process;
use runyard::scheduler::Scheduler;
use runyard::store::sqlite::SqliteStore;
use runyard::store::{
    ClaimedJob, JobClaimParams, JobPolicy, JobStartParams, NodeRow, RunCreateParams, Store,
};

/// Queues a one-shard run of pipeline "elsewhere" and claims it for `node_id` at `claimed_at`.
async fn queue_claimed(store: &Arc<dyn Store>, node_id: &str, claimed_at: i64) -> ClaimedJob {
    let run = runyard::model::RunId::new().to_string();
    store
        .run_create(RunCreateParams {
            run_id: run.clone(),
            job_ids: vec![run.clone()],
            pipeline: "elsewhere".into(),
            params: BTreeMap::new(),
            triggered_by: "api".into(),
            actor: None,
            idempotency_key: None,
            policy: JobPolicy {
                max_attempts: 1,
                retry_backoff_ms: 10,
                on_orphan: "requeue",
                max_orphan_requeues: 1,
                retry_on: Default::default(),
            },
            has_finalizer: false,
            callback_url: None,
            now: 1,
            options: Default::default(),
        })
        .await
        .unwrap();
    let claim = JobClaimParams {
        node_id: node_id.to_string(),
        max: 1,
        global_cap: 0,
        pipelines: [("elsewhere".to_string(), 0)].into(),
        now: claimed_at,
        keyed: Default::default(),
    };
    store.job_claim(claim).await.unwrap().jobs.remove(0)
}

/// A node on `store` whose config does not run "elsewhere", so it never re-runs those jobs.
async fn node_without_that_pipeline(dir: &Path, store: Arc<dyn Store>) -> Scheduler {
    let config = dir.join("runyard.toml");
    std::fs::write(&config, "[pipelines.other]\ncommand = [\"true\"]\n").unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let settings = Settings::from_toml(&text, &config, &|_| None).unwrap();
    Scheduler::start(
        Arc::new(settings),
        store,
        Arc::new(LocalBus::default()),
        None,
        Arc::default(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_reused_pid_is_never_signalled_and_the_orphan_is_requeued() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("r.db"), Synchronous::Normal).unwrap());
    // An unrelated live process that happens to have the pid a dead node once used.
    let mut bystander = std::process::Command::new("sleep")
        .arg("30")
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = bystander.id();
    let real_start = process::start_time(pid).unwrap();

    let dead = NodeRow {
        id: "dead-node".into(),
        host: process::hostname(),
        pid,
        proc_start: real_start + 1, // the node that registered was another process
        boot_id: process::pid_scope(),
        slots: 1,
        started_at: 0,
        heartbeat_at: runyard::clock::now_ms(), // a fresh heartbeat must not save it
        ..Default::default()
    };
    store.node_register(dead.clone()).await.unwrap();
    let job = queue_claimed(&store, &dead.id, 2).await;
    // Its job's recorded leader is the bystander's pid too, with another start time.
    let started = JobStartParams {
        job_id: job.id.clone(),
        claim_seq: job.claim_seq,
        pid,
        proc_start: real_start + 7,
        now: 3,
    };
    assert_eq!(store.job_start(started).await.unwrap(), Some(false));

    // A new node (whose config does not run "elsewhere", so it will not re-run the job)
    // resolves orphans before its first claim.
    let scheduler = node_without_that_pipeline(dir.path(), store.clone()).await;

    let view = store.job_get(&job.id).await.unwrap().unwrap();
    assert_eq!(
        (view.status.as_str(), view.requeues, view.attempt),
        ("queued", 1, 1)
    );
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the unrelated process was signalled"
    );
    assert!(
        store
            .nodes_list()
            .await
            .unwrap()
            .iter()
            .all(|n| n.id != dead.id),
        "the dead node was removed"
    );
    // A second pass finds nothing more to do: the requeue happened exactly once.
    let again = scheduler.rescue_once().await.unwrap();
    assert_eq!(
        (again.dead_nodes, again.orphans, again.groups_killed),
        (0, 0, 0)
    );

    scheduler.shutdown().await;
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[tokio::test]
async fn a_job_recorded_as_running_here_but_not_running_is_handed_back() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("r.db"), Synchronous::Normal).unwrap());
    let scheduler = node_without_that_pipeline(dir.path(), store.clone()).await;

    // Two jobs claimed under this node's id without its knowledge: one long ago (its end
    // was never recorded), one just now (a claim whose task is about to register it).
    let mut jobs = Vec::new();
    for claimed_at in [1, runyard::clock::now_ms()] {
        jobs.push(queue_claimed(&store, scheduler.node_id(), claimed_at).await);
    }
    // (The node's own heartbeat may get there first; either way it happens exactly once.)
    scheduler.rescue_once().await.unwrap();
    let old = store.job_get(&jobs[0].id).await.unwrap().unwrap();
    assert_eq!((old.status.as_str(), old.requeues), ("queued", 1));
    let fresh = store.job_get(&jobs[1].id).await.unwrap().unwrap();
    assert_eq!(fresh.status, "running", "a fresh claim is left to its task");
    scheduler.shutdown().await;
}
