//! The SQLite writer's own machinery: batches and the cross-process write lock. The
//! store's contract (both backends) is the conformance suite, `tests/store_contract.rs`.

use std::collections::BTreeMap;

use super::*;

async fn open() -> (tempfile::TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
    let node = NodeRow {
        id: "n1".into(),
        host: "h".into(),
        pid: 1,
        proc_start: 1,
        boot_id: "b".into(),
        slots: 2,
        started_at: 0,
        heartbeat_at: 0,
        ..Default::default()
    };
    store.node_register(node).await.unwrap();
    (dir, Arc::new(store))
}

fn policy() -> JobPolicy {
    JobPolicy {
        max_attempts: 2,
        retry_backoff_ms: 10,
        on_orphan: "requeue",
        max_orphan_requeues: 1,
        retry_on: Default::default(),
    }
}

async fn create(store: &SqliteStore, shards: u32) -> RunCreated {
    let run = crate::model::RunId::new();
    store
        .run_create(RunCreateParams {
            run_id: run.to_string(),
            job_ids: (0..shards)
                .map(|i| crate::model::job_id_for(run, i, shards))
                .collect(),
            pipeline: "p".into(),
            params: BTreeMap::new(),
            triggered_by: "api".into(),
            actor: None,
            idempotency_key: None,
            policy: policy(),
            has_finalizer: false,
            callback_url: None,
            now: 1,
            options: Default::default(),
        })
        .await
        .unwrap()
}

fn claim(max: usize) -> JobClaimParams {
    JobClaimParams {
        node_id: "n1".into(),
        max,
        global_cap: 0,
        pipelines: [("p".to_string(), 0)].into(),
        now: 10,
        keyed: Default::default(),
    }
}

#[tokio::test]
async fn a_failing_request_in_a_batch_does_not_take_the_others_with_it() {
    let (_dir, store) = open().await;
    let mut calls = Vec::new();
    for i in 0..40 {
        let store = store.clone();
        calls.push(tokio::spawn(async move {
            if i == 20 {
                store
                    .write("test", |conn| {
                        conn.execute("INSERT INTO no_such_table VALUES (1)", [])?;
                        Ok(((), 0))
                    })
                    .await
                    .map(|_| None)
            } else {
                Ok(Some(create(&store, 1).await.run_id))
            }
        }));
    }
    let mut ok = 0;
    for (i, c) in calls.into_iter().enumerate() {
        match c.await.unwrap() {
            Ok(Some(run_id)) => {
                assert!(store.run_get(&run_id).await.unwrap().is_some());
                ok += 1;
            }
            Ok(None) => panic!("the failing write succeeded"),
            Err(e) => assert_eq!(i, 20, "{e}"),
        }
    }
    assert_eq!(ok, 39);
}

#[tokio::test]
async fn a_write_waits_for_another_process_holding_the_lock_instead_of_failing() {
    let (dir, store) = open().await;
    create(&store, 1).await;
    // Another "process": a second connection holding the database's write lock.
    let path = dir.path().join("t.db");
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let other = Connection::open(path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        locked_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        other.execute_batch("COMMIT").unwrap();
    });
    locked_rx.recv().unwrap();
    let claimer = store.clone();
    let mut task = tokio::spawn(async move { claimer.job_claim(claim(1)).await });
    // The fast path must not turn the held lock into an error: the claim waits.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), &mut task)
            .await
            .is_err(),
        "the claim finished while another process held the write lock"
    );
    release_tx.send(()).unwrap();
    let claimed = task.await.unwrap().unwrap();
    assert_eq!(claimed.jobs.len(), 1);
    holder.join().unwrap();
}

/// Ends that may wait ([`JobFinishParams::lingers`]) and are queued together share one
/// commit, and each is applied and answered only once that commit is made. The writer is
/// held busy by a write of the test's own while the ends queue, so the batch does not
/// depend on timing.
#[tokio::test]
async fn ends_that_may_wait_share_one_commit_and_each_lands() {
    let (_dir, store) = open().await;
    let mut runs = Vec::new();
    for _ in 0..4 {
        runs.push(create(&store, 1).await.run_id);
    }
    let jobs = store.job_claim(claim(4)).await.unwrap().jobs;
    assert_eq!(jobs.len(), 4);
    let commits = |store: &SqliteStore| -> u64 {
        store
            .traffic()
            .iter()
            .filter(|(_, op, _, _)| *op == "job_finish")
            .map(|(_, _, _, commits)| commits)
            .sum()
    };

    let (release, held) = std::sync::mpsc::channel::<()>();
    let (busy_tx, busy) = oneshot::channel::<()>();
    let blocker = {
        let store = store.clone();
        let mut busy_tx = Some(busy_tx);
        tokio::spawn(async move {
            store
                .write("test", move |_| {
                    if let Some(tx) = busy_tx.take() {
                        let _ = tx.send(());
                    }
                    held.recv().ok();
                    Ok(((), 0))
                })
                .await
        })
    };
    busy.await.unwrap();
    let ends = jobs.iter().map(|job| {
        let p = JobFinishParams {
            job_id: job.id.clone(),
            claim_seq: job.claim_seq,
            outcome: Outcome::Completed,
            exit_code: Some(0),
            stdout_bytes: 0,
            stderr_bytes: 0,
            truncated: false,
            now: 20,
            claim_next: None,
            start: None,
            result: None,
            lingers: true,
        };
        store.job_finish(p)
    });
    let mut ends = std::pin::pin!(futures_util::future::join_all(ends));
    // One poll queues every end behind the busy writer (each waits for its answer then).
    std::future::poll_fn(|cx| {
        assert!(
            ends.as_mut().poll(cx).is_pending(),
            "answered before the commit"
        );
        std::task::Poll::Ready(())
    })
    .await;
    release.send(()).unwrap();
    blocker.await.unwrap().unwrap();
    for out in ends.await {
        let out = out.unwrap();
        assert!(out.applied);
        assert_eq!(out.run_finalized, Some(RunStatus::Completed));
    }
    assert_eq!(commits(&store), 1, "the four ends shared one commit");
    for run in &runs {
        let view = store.run_get(run).await.unwrap().unwrap();
        assert_eq!(view.status, "completed");
    }
}
