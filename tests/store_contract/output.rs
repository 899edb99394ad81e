//! A job's output and a run's events: lines numbered per job over both streams, logs
//! with their tail, appends that name the line they start at (a retry of a landed batch
//! adds nothing), and a run's events, without progress, with each line's execution and
//! time.

use serde_json::Value;

use runyard::model::Reason;
use runyard::store::{
    ClaimedJob, JobProgressParams, JobStartParams, Outcome, OutputAppendParams, Stream,
};

use crate::factory::Factory;
use crate::fixtures::*;

fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub async fn output_lines_are_numbered_per_job_and_logs_keep_the_tail(f: &Factory) {
    let store = f.store().await;
    create(&*store, 1).await;
    let job = store.job_claim(claim(1)).await.unwrap().jobs.remove(0);
    let append = |stdout: &[&str], stderr: &[&str]| OutputAppendParams {
        job_id: job.id.clone(),
        claim_seq: job.claim_seq,
        stdout: lines(stdout),
        stderr: lines(stderr),
        now: 15,
        first_line: None,
    };
    for (out, err) in [
        (&["a", "b"][..], &["e1"][..]),
        (&["c"][..], &[][..]),
        (&[][..], &["e2", "e3"][..]),
    ] {
        assert!(store.job_output_append(append(out, err)).await.unwrap());
    }
    assert_eq!(store.job_output_len(&job.id).await.unwrap(), 6);
    let all = store.job_output_after(&job.id, -1, 100).await.unwrap();
    let got: Vec<(i64, Stream, &str)> = all
        .iter()
        .map(|l| (l.seq, l.stream, l.line.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, Stream::Stdout, "a"),
            (1, Stream::Stdout, "b"),
            (2, Stream::Stderr, "e1"),
            (3, Stream::Stdout, "c"),
            (4, Stream::Stderr, "e2"),
            (5, Stream::Stderr, "e3"),
        ],
        "one sequence per job over both streams, stdout before stderr within a flush"
    );
    // A cursor may stop inside a flush; following it one line at a time sees every line once.
    let mid: Vec<i64> = store
        .job_output_after(&job.id, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|l| l.seq)
        .collect();
    assert_eq!(mid, vec![1, 2, 3, 4, 5]);
    let mut cursor = -1;
    let mut followed = Vec::new();
    loop {
        let page = store.job_output_after(&job.id, cursor, 1).await.unwrap();
        let Some(last) = page.last() else { break };
        cursor = last.seq;
        followed.extend(page.into_iter().map(|l| l.seq));
    }
    assert_eq!(followed, (0..6).collect::<Vec<_>>());

    let logs = store.job_logs(&job.id, None).await.unwrap().unwrap();
    assert_eq!(
        (logs.stdout, logs.stderr, logs.truncated),
        (lines(&["a", "b", "c"]), lines(&["e1", "e2", "e3"]), false)
    );
    let tail = store.job_logs(&job.id, Some(2)).await.unwrap().unwrap();
    assert_eq!(
        (tail.stdout, tail.stderr),
        (lines(&["b", "c"]), lines(&["e2", "e3"]))
    );
    assert!(store.job_logs("no-such-job", None).await.unwrap().is_none());

    let mut end = finish(&job, Outcome::Completed);
    (end.stdout_bytes, end.stderr_bytes, end.truncated) = (10, 20, true);
    assert!(store.job_finish(end).await.unwrap().applied);
    let view = store.job_get(&job.id).await.unwrap().unwrap();
    assert_eq!(
        (view.stdout_bytes, view.stderr_bytes, view.truncated),
        (10, 20, true)
    );
    assert!(
        store
            .job_logs(&job.id, None)
            .await
            .unwrap()
            .unwrap()
            .truncated
    );
}

/// An append names the line it must start at; a retry of a batch whose commit
/// landed (its answer lost) adds nothing, a batch that does not start where the log ends
/// is refused, and a new claim learns where the log ends.
pub async fn an_append_retried_after_its_commit_adds_nothing(f: &Factory) {
    let store = f.store().await;
    create(&*store, 1).await;
    let job = store.job_claim(claim(1)).await.unwrap().jobs.remove(0);
    assert_eq!(job.output_lines, 0);
    let append = |job: &ClaimedJob, first: i64, out: &[&str]| OutputAppendParams {
        job_id: job.id.clone(),
        claim_seq: job.claim_seq,
        stdout: lines(out),
        stderr: lines(&["err"]),
        now: 15,
        first_line: Some(first),
    };
    assert!(
        store
            .job_output_append(append(&job, 0, &["a", "b"]))
            .await
            .unwrap()
    );
    assert!(
        store
            .job_output_append(append(&job, 0, &["a", "b"]))
            .await
            .unwrap(),
        "a retry of a landed batch counts as written"
    );
    assert_eq!(
        store.job_output_len(&job.id).await.unwrap(),
        3,
        "added once"
    );
    assert!(
        !store
            .job_output_append(append(&job, 2, &["c"]))
            .await
            .unwrap(),
        "a batch that does not start where the log ends is refused"
    );
    assert!(
        store
            .job_output_append(append(&job, 3, &["c"]))
            .await
            .unwrap()
    );
    let stale = ClaimedJob {
        claim_seq: job.claim_seq - 1,
        ..job.clone()
    };
    assert!(
        !store
            .job_output_append(append(&stale, 5, &["x"]))
            .await
            .unwrap()
    );
    let got: Vec<String> = store
        .job_output_after(&job.id, -1, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert_eq!(got, ["a", "b", "err", "c", "err"]);
    // Handed back and claimed again: the next execution's lines follow on.
    let requeue = Outcome::Requeue {
        reason: Reason::Orphaned,
    };
    assert!(
        store
            .job_finish(finish(&job, requeue))
            .await
            .unwrap()
            .applied
    );
    let again = store
        .job_claim(claim_later(1))
        .await
        .unwrap()
        .jobs
        .remove(0);
    assert_eq!(again.id, job.id);
    assert_eq!(again.output_lines, 5);
    assert!(
        store
            .job_output_append(append(&again, 5, &["d"]))
            .await
            .unwrap()
    );
    assert_eq!(store.job_output_len(&job.id).await.unwrap(), 7);
}

pub async fn a_runs_events_come_without_progress_and_output_keeps_its_execution_and_time(
    f: &Factory,
) {
    let store = f.store().await;
    let run = create(&*store, 1).await;
    let other = create(&*store, 1).await;
    let job = store.job_claim(claim(1)).await.unwrap().jobs.remove(0);
    assert_eq!(job.run_id, run.run_id);
    let start = JobStartParams {
        job_id: job.id.clone(),
        claim_seq: job.claim_seq,
        pid: 42,
        proc_start: 1,
        now: 11,
    };
    store.job_start(start).await.unwrap();
    for (percent, now) in [(10, 12), (20, 13)] {
        store
            .job_progress(JobProgressParams {
                job_id: job.id.clone(),
                claim_seq: job.claim_seq,
                percent,
                message: String::new(),
                now,
            })
            .await
            .unwrap();
    }
    let appended = store
        .job_output_append(OutputAppendParams {
            job_id: job.id.clone(),
            claim_seq: job.claim_seq,
            stdout: vec!["a".into(), "b".into()],
            stderr: vec!["c".into()],
            now: 15,
            first_line: None,
        })
        .await
        .unwrap();
    assert!(appended);
    let mut failed = finish(&job, fail());
    failed.exit_code = Some(3);
    store.job_finish(failed).await.unwrap();

    // What a reader sees below the horizon: wait until everything above is visible.
    events_settled(&*store).await;
    let events = store.run_events(&run.run_id, 100).await.unwrap();
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["job:created", "job:started", "job:failed"]);
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    let started: Value = serde_json::from_str(&events[1].data).unwrap();
    let failed: Value = serde_json::from_str(&events[2].data).unwrap();
    assert_eq!(
        (started["claimSeq"].as_i64(), started["attempt"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        (
            failed["claimSeq"].as_i64(),
            failed["status"].as_str(),
            failed["nextAttempt"].as_u64()
        ),
        (Some(1), Some("queued"), Some(2))
    );
    assert_eq!(store.run_events(&run.run_id, 2).await.unwrap().len(), 2);
    assert_eq!(store.run_events(&other.run_id, 100).await.unwrap().len(), 1);

    let lines = store.job_output_after(&job.id, -1, 100).await.unwrap();
    let got: Vec<_> = lines
        .iter()
        .map(|l| (l.seq, l.line.as_str(), l.stream, l.claim_seq, l.time))
        .collect();
    assert_eq!(
        got,
        [
            (0, "a", Stream::Stdout, 1, Some(15)),
            (1, "b", Stream::Stdout, 1, Some(15)),
            (2, "c", Stream::Stderr, 1, Some(15)),
        ]
    );
}
