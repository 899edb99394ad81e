//! Executing jobs as real child processes: logs, shards, caps, timeouts,
//! retries, aborts of whole process trees, bounded memory, SSE resume.

mod common;

use std::time::Duration;

use common::{EventWatcher, TestServer, group_members, max_overlap};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

async fn jobs_of(s: &TestServer, run_id: &str) -> Vec<Value> {
    s.get(&format!("/api/runs/{run_id}")).await.1["jobs"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn logs_are_captured_per_stream_with_tail() {
    let s = TestServer::start(
        "",
        r#"
[pipelines.talk]
command = ["sh", "-c", '''for i in 1 2 3 4 5; do echo out-$i; echo err-$i >&2; done; printf 'bad \377\376 bytes\000nul\n'; printf 'no newline'; exit 0''']
"#,
    )
    .await;
    let mut events = s.events();
    let (_, t) = s.trigger("talk", json!({})).await;
    let run_id = t["runId"].as_str().unwrap();
    let run = s.wait_run(&mut events, run_id, T).await;
    assert_eq!(run["status"], "completed");

    let (status, logs) = s.get(&format!("/api/jobs/{run_id}/logs")).await;
    assert_eq!(status, 200);
    assert_eq!(logs["jobId"], run_id);
    assert_eq!(
        logs["stdout"],
        json!([
            "out-1",
            "out-2",
            "out-3",
            "out-4",
            "out-5",
            "bad \u{FFFD}\u{FFFD} bytes\u{FFFD}nul",
            "no newline"
        ])
    );
    assert_eq!(
        logs["stderr"],
        json!(["err-1", "err-2", "err-3", "err-4", "err-5"])
    );
    assert_eq!(logs["truncated"], false);

    let (_, tail) = s.get(&format!("/api/jobs/{run_id}/logs?tail=2")).await;
    assert_eq!(
        tail["stdout"],
        json!(["bad \u{FFFD}\u{FFFD} bytes\u{FFFD}nul", "no newline"])
    );
    assert_eq!(tail["stderr"], json!(["err-4", "err-5"]));
    let expected: usize = [
        "bad \u{FFFD}\u{FFFD} bytes\u{FFFD}nul",
        "no newline",
        "err-4",
        "err-5",
    ]
    .iter()
    .map(|l| l.len() + 1)
    .sum();
    assert_eq!(
        tail["totalSize"], expected,
        "totalSize counts what is returned"
    );

    // The log stream replays stored lines with sequence ids, then ends with the job.
    let mut rx = common::sse_reader(format!("{}/api/jobs/{run_id}/logs/stream", s.base), None);
    let mut lines = Vec::new();
    loop {
        let msg = tokio::time::timeout(T, rx.recv())
            .await
            .expect("log stream")
            .expect("stream open");
        if msg.event == "end" {
            assert_eq!(msg.data["status"], "completed");
            break;
        }
        lines.push((
            msg.id.unwrap(),
            msg.data["stream"].as_str().unwrap().to_string(),
            msg.data["line"].as_str().unwrap().to_string(),
        ));
    }
    assert_eq!(lines.len(), 12);
    assert!(
        lines.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "consecutive sequence ids"
    );
    s.stop().await;
}

#[tokio::test]
async fn shards_get_their_env_and_the_run_completes_exactly_once() {
    let s = TestServer::start(
        "max_workers = 2",
        r#"
[pipelines.shard]
# Placeholders are whole argv elements: "a b;c" stays one argument, never shell text.
command = ["sh", "-c", "echo $RUNYARD_RUN_ID $RUNYARD_JOB_ID $RUNYARD_SHARD_INDEX $RUNYARD_SHARD_COUNT $RUNYARD_ATTEMPT \"$RUNYARD_PARAM_LABEL\" \"$1\" \"$2\" $#", "sh", "{shard_number}/{shard_count}", "{label}"]
shards = 4
[pipelines.shard.params.label]
default = "x"
"#,
    )
    .await;
    let mut events = s.events();
    let (_, t) = s
        .trigger("shard", json!({"parameters": {"label": "a b;c"}}))
        .await;
    let run_id = t["runId"].as_str().unwrap();
    let run = s.wait_run(&mut events, run_id, T).await;
    assert_eq!(run["status"], "completed");
    assert_eq!(run["shardsDone"], 4);
    for i in 0..4 {
        let job_id = format!("{run_id}:s{i}");
        let (_, logs) = s.get(&format!("/api/jobs/{job_id}/logs")).await;
        let n = i + 1;
        assert_eq!(
            logs["stdout"],
            json!([format!("{run_id} {job_id} {i} 4 1 a b;c {n}/4 a b;c 2")])
        );
    }
    // Every event of this run so far, replayed: exactly one run:completed.
    let mut replay = EventWatcher::connect(&s.base, 0);
    replay
        .wait_for("run:completed", |d| d["runId"] == run_id, T)
        .await;
    let n = replay
        .of_run(run_id)
        .filter(|e| e.event == "run:completed")
        .count();
    assert_eq!(n, 1);
    let completed = replay
        .of_run(run_id)
        .filter(|e| e.event == "job:completed")
        .count();
    assert_eq!(completed, 4);
    // Short jobs record their start in the finishing transaction: still started, then completed.
    for i in 0..4 {
        let job_id = format!("{run_id}:s{i}");
        let id_of = |name: &str| {
            replay
                .of_run(run_id)
                .find(|e| e.event == name && e.data["jobId"] == job_id.as_str())
                .and_then(|e| e.id)
        };
        let started = id_of("job:started").expect("job:started");
        let done = id_of("job:completed").expect("job:completed");
        assert!(
            started < done,
            "{job_id}: started {started} after completed {done}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn max_workers_is_never_exceeded() {
    let s = TestServer::start(
        "max_workers = 2",
        "[pipelines.nap]\ncommand = [\"sleep\", \"0.2\"]\n",
    )
    .await;
    let mut events = s.events();
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(
            s.trigger("nap", json!({})).await.1["runId"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let mut jobs = Vec::new();
    for id in &ids {
        s.wait_run(&mut events, id, T).await;
        jobs.extend(jobs_of(&s, id).await);
    }
    assert_eq!(jobs.len(), 8);
    assert!(jobs.iter().all(|j| j["status"] == "completed"));
    let overlap = max_overlap(&jobs);
    assert!(overlap <= 2, "{overlap} jobs ran at once");
    assert_eq!(overlap, 2, "both slots were used");
    s.stop().await;
}

#[tokio::test]
async fn pipeline_concurrency_caps_jobs_of_that_pipeline() {
    let s = TestServer::start(
        "max_workers = 4",
        "[pipelines.nap]\ncommand = [\"sleep\", \"0.2\"]\nconcurrency = 1\nshards = 4\n",
    )
    .await;
    let mut events = s.events();
    let run_id = s.trigger("nap", json!({})).await.1["runId"]
        .as_str()
        .unwrap()
        .to_string();
    s.wait_run(&mut events, &run_id, T).await;
    assert_eq!(max_overlap(&jobs_of(&s, &run_id).await), 1);
    s.stop().await;
}

#[tokio::test]
async fn timeout_fails_and_a_job_ignoring_sigterm_is_sigkilled() {
    let s = TestServer::start(
        "",
        r#"
[pipelines.stubborn]
command = ["sh", "-c", "trap '' TERM; echo started; while true; do sleep 0.05; done"]
timeout = "300ms"
kill_grace = "300ms"
"#,
    )
    .await;
    let mut events = s.events();
    let started = std::time::Instant::now();
    let run_id = s.trigger("stubborn", json!({})).await.1["runId"]
        .as_str()
        .unwrap()
        .to_string();
    let run = s.wait_run(&mut events, &run_id, T).await;
    let elapsed = started.elapsed();
    assert_eq!(run["status"], "failed");
    let job = &run["jobs"][0];
    assert_eq!(job["reason"], "timeout");
    assert!(job["error"].as_str().unwrap().contains("timed out"));
    assert!(
        job["exitCode"].is_null(),
        "killed by a signal, not exited: {job}"
    );
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    let pid = job["pid"].as_u64().unwrap() as u32;
    assert!(group_members(pid).is_empty(), "the whole group is gone");
    let (_, logs) = s.get(&format!("/api/jobs/{run_id}/logs")).await;
    assert_eq!(logs["stdout"], json!(["started"]));
    s.stop().await;
}

#[tokio::test]
async fn failures_are_retried_with_backoff_until_attempts_run_out() {
    let s = TestServer::start(
        "",
        r#"
[pipelines.third_time]
command = ["sh", "-c", "echo attempt {attempt}; test $RUNYARD_ATTEMPT -ge 3"]
max_attempts = 3
retry_backoff = "50ms"

[pipelines.hopeless]
command = ["sh", "-c", "exit 7"]
max_attempts = 2
retry_backoff = "50ms"
"#,
    )
    .await;
    let mut events = s.events();
    let ok = s.trigger("third_time", json!({})).await.1["runId"]
        .as_str()
        .unwrap()
        .to_string();
    let bad = s.trigger("hopeless", json!({})).await.1["runId"]
        .as_str()
        .unwrap()
        .to_string();
    let run = s.wait_run(&mut events, &ok, T).await;
    assert_eq!(run["status"], "completed");
    assert_eq!(run["jobs"][0]["attempt"], 3);
    let (_, logs) = s.get(&format!("/api/jobs/{ok}/logs")).await;
    assert_eq!(
        logs["stdout"],
        json!(["attempt 1", "attempt 2", "attempt 3"])
    );
    let retries: Vec<_> = events
        .of_run(&ok)
        .filter(|e| e.event == "job:failed")
        .collect();
    assert_eq!(retries.len(), 2);
    assert!(retries.iter().all(|e| e.data["status"] == "queued"));
    assert_eq!(retries[0].data["nextAttempt"], 2);

    let run = s.wait_run(&mut events, &bad, T).await;
    assert_eq!(run["status"], "failed");
    let job = &run["jobs"][0];
    assert_eq!(
        (
            job["attempt"].clone(),
            job["exitCode"].clone(),
            job["reason"].clone()
        ),
        (json!(2), json!(7), json!("exit_code"))
    );
    s.stop().await;
}

#[tokio::test]
async fn abort_kills_every_shards_process_tree() {
    let s = TestServer::start(
        "max_workers = 3",
        r#"
[pipelines.tree]
command = ["sh", "-c", "sleep 60 & sleep 60 & echo spawned; wait"]
shards = 3
kill_grace = "2s"
"#,
    )
    .await;
    let mut events = s.events();
    let run_id = s.trigger("tree", json!({})).await.1["runId"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..3 {
        let job_id = format!("{run_id}:s{i}");
        events
            .wait_for("job:started", |d| d["jobId"] == job_id, T)
            .await;
    }
    let pids: Vec<u32> = jobs_of(&s, &run_id)
        .await
        .iter()
        .map(|j| j["pid"].as_u64().unwrap() as u32)
        .collect();
    // Each shard's group holds its shell and two grandchildren.
    common::eventually(T, "grandchildren spawned", || {
        let pids = pids.clone();
        async move { pids.iter().all(|p| group_members(*p).len() >= 3) }
    })
    .await;

    let (status, body) = s
        .post(&format!("/api/runs/{run_id}/abort"), json!({}))
        .await;
    assert_eq!((status, body["abortedJobs"].clone()), (202, json!(3)));
    let run = s.wait_run(&mut events, &run_id, T).await;
    assert_eq!(run["status"], "aborted");
    for j in run["jobs"].as_array().unwrap() {
        assert_eq!(
            (j["status"].clone(), j["reason"].clone()),
            (json!("aborted"), json!("aborted"))
        );
    }
    for pid in pids {
        assert!(
            group_members(pid).is_empty(),
            "group {pid} still has {:?}",
            group_members(pid)
        );
    }
    assert_eq!(
        events
            .of_run(&run_id)
            .filter(|e| e.event == "run:completed")
            .count(),
        1
    );
    s.stop().await;
}

#[tokio::test]
async fn aborting_queued_shards_finalises_without_running_them() {
    let s = TestServer::start(
        "max_workers = 1",
        "[pipelines.wait]\ncommand = [\"sleep\", \"30\"]\nshards = 3\n",
    )
    .await;
    let mut events = s.events();
    let run_id = s.trigger("wait", json!({})).await.1["runId"]
        .as_str()
        .unwrap()
        .to_string();
    events
        .wait_for("job:started", |d| d["runId"] == run_id.as_str(), T)
        .await;
    let (_, body) = s
        .post(&format!("/api/runs/{run_id}/abort"), json!({}))
        .await;
    assert_eq!(body["abortedJobs"], 3);
    let run = s.wait_run(&mut events, &run_id, T).await;
    assert_eq!(run["status"], "aborted");
    let started = events
        .of_run(&run_id)
        .filter(|e| e.event == "job:started")
        .count();
    assert_eq!(started, 1, "queued shards never started");
    s.stop().await;
}

#[tokio::test]
async fn output_cap_truncates_with_a_marker_and_counts_every_byte() {
    let s = TestServer::start(
        "max_output_bytes = \"64KiB\"",
        "[pipelines.flood]\ncommand = [\"sh\", \"-c\", \"yes 0123456789abcdef | head -c 10000000\"]\n",
    )
    .await;
    let mut events = s.events();
    let run_id = s.trigger("flood", json!({})).await.1["runId"]
        .as_str()
        .unwrap()
        .to_string();
    let run = s.wait_run(&mut events, &run_id, T).await;
    assert_eq!(run["status"], "completed");
    let job = &run["jobs"][0];
    assert_eq!(job["stdoutBytes"], 10_000_000);
    assert_eq!(job["truncated"], true);
    let (_, logs) = s.get(&format!("/api/jobs/{run_id}/logs")).await;
    let lines = logs["stdout"].as_array().unwrap();
    let marker = lines.last().unwrap().as_str().unwrap();
    assert!(
        marker.contains("truncated") && marker.contains("of 10000000 bytes"),
        "{marker}"
    );
    let kept: usize = lines[..lines.len() - 1]
        .iter()
        .map(|l| l.as_str().unwrap().len())
        .sum();
    assert!(kept <= 64 * 1024 && kept > 60 * 1024, "kept {kept}");
    assert_eq!(logs["truncated"], true);
    s.stop().await;
}

#[tokio::test]
async fn sse_resume_with_last_event_id_misses_nothing() {
    let s = TestServer::start(
        "max_workers = 2",
        "[pipelines.quick]\ncommand = [\"true\"]\nshards = 2\n\n[pipelines.brief]\ncommand = [\"sleep\", \"0.05\"]\n",
    )
    .await;
    // A watcher that never disconnects: what a resumed client must see, id for id.
    let mut all = s.events();
    let mut first = s.events();
    let a = s.trigger("quick", json!({})).await.1["runId"]
        .as_str()
        .unwrap()
        .to_string();
    first
        .wait_for("run:completed", |d| d["runId"] == a.as_str(), T)
        .await;
    let cut = first.seen.last().unwrap().id.unwrap();
    drop(first); // the client disconnects

    let mut later = Vec::new();
    for _ in 0..3 {
        later.push(
            s.trigger("quick", json!({})).await.1["runId"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let mut resumed = EventWatcher::connect(&s.base, cut);
    for id in &later {
        resumed
            .wait_for("run:completed", |d| d["runId"] == id.as_str(), T)
            .await;
    }
    let ids: Vec<i64> = resumed.seen.iter().map(|e| e.id.unwrap()).collect();
    for id in &later {
        all.wait_for("run:completed", |d| d["runId"] == id.as_str(), T)
            .await;
    }
    // Ids increase but may have gaps (PostgreSQL): compare with the continuous stream.
    let last = *ids.last().unwrap();
    let expected: Vec<i64> = all
        .seen
        .iter()
        .filter_map(|e| e.id)
        .filter(|i| *i > cut && *i <= last)
        .collect();
    assert_eq!(
        ids, expected,
        "resumes right after the given id, missing and repeating nothing"
    );
    // 3 runs × (2 created + 2 started + 2 completed + 1 run:completed).
    assert!(ids.len() >= 21, "{} events", ids.len());

    // Listeners that come and go while runs execute (the tailer idles between them)
    // still see every event: replay, then live, with no gap at the seam.
    for _ in 0..30 {
        let id = s.trigger("brief", json!({})).await.1["runId"]
            .as_str()
            .unwrap()
            .to_string();
        let mut w = EventWatcher::connect(&s.base, cut);
        w.wait_for("run:completed", |d| d["runId"] == id.as_str(), T)
            .await;
    }

    // An absurd Last-Event-ID is not an error: nothing newer exists, so the stream is live.
    let mut far = EventWatcher::connect(&s.base, i64::MAX);
    let next = s.trigger("quick", json!({})).await.1["runId"]
        .as_str()
        .unwrap()
        .to_string();
    let mut fresh = s.events();
    fresh
        .wait_for("run:completed", |d| d["runId"] == next.as_str(), T)
        .await;
    assert_eq!(s.get("/healthz").await.0, 200);
    assert!(far.is_open(), "the stream survived an absurd Last-Event-ID");
    s.stop().await;
}
