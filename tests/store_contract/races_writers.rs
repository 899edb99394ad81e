//! Races that one SQLite writer serialises for free and a shared PostgreSQL can lose:
//! every case runs its contenders on separate handles (separate connections, or separate
//! SQLite writers on one file, as separate processes would).
//!
//! Here: writers against readers and fences. A reader following the event cursor while
//! writers write sees each event once, in id order; a stale execution writing while the
//! new one runs changes nothing.

use std::collections::HashSet;
use std::time::Duration;

use runyard::model::{Reason, RunStatus};
use runyard::store::{
    ClaimedJob, JobClaimParams, JobProgressParams, JobStartParams, Outcome, OutputAppendParams,
    StoredEvent,
};

use crate::factory::{Factory, node_row};
use crate::fixtures::*;

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
