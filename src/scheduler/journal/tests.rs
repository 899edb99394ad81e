//! The journal's segments, on disk: what the next life reads, and when a segment goes.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::segments::{SEGMENT_BYTES, unanswered};
use super::{Entry, Journal, Lines};
use crate::store::Outcome;

fn entry(job_id: &str, output: &str) -> Entry {
    Entry {
        job_id: job_id.to_string(),
        claim_seq: 1,
        output: vec![Lines {
            first_line: 0,
            stdout: vec![output.to_string()],
            stderr: Vec::new(),
        }],
        outcome: Outcome::Completed,
        exit_code: Some(0),
        stdout_bytes: output.len() as u64,
        stderr_bytes: 0,
        truncated: false,
        result: None,
        start: None,
    }
}

/// A real store to replay into (SQLite, in the test's own directory).
fn store_in(dir: &Path) -> crate::store::sqlite::SqliteStore {
    crate::store::sqlite::SqliteStore::open(
        &dir.join("store.db"),
        crate::config::Synchronous::Normal,
    )
    .unwrap()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .flatten()
        .map(|f| f.path())
        .collect();
    paths.sort();
    paths
}

/// Waits until no segment is locked any more: the life dropped before is gone. Its
/// `flock` can outlive the drop by a moment, because a child process that another test
/// of this binary spawns holds a copy of every descriptor from its `clone` to its
/// `exec` (which closes them, all being close-on-exec), and the lock goes with the last
/// copy. A server replays only at its start, so this is a test's race, not a replica's.
async fn wait_unlocked(dir: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while segments(dir)
        .iter()
        .any(|path| std::fs::File::open(path).is_ok_and(|file| file.try_lock().is_err()))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "a dropped life's segment stayed locked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

fn ids(ends: &[Entry]) -> Vec<&str> {
    ends.iter().map(|e| e.job_id.as_str()).collect()
}

#[test]
fn the_next_life_reads_the_unanswered_ends_in_order_and_skips_a_line_cut_short() {
    let data = tempfile::tempdir().unwrap();
    let journal = Journal::new(data.path(), true);
    for job in ["a", "b", "c"] {
        journal.record(&entry(job, "out"));
    }
    journal.answer("b", 1);
    journal.answer("b", 1); // answered twice (a retry): nothing more happens
    journal.answer("z", 1); // never journaled
    let [segment] = &segments(data.path())[..] else {
        panic!("one segment: {:?}", segments(data.path()));
    };
    // The crash cut the last line short.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(segment)
        .unwrap();
    file.write_all(br#"{"End":{"job_id":"d","claim_"#).unwrap();

    let read = unanswered(&std::fs::read(segment).unwrap());
    assert_eq!(ids(&read.ends), ["a", "c"]);
    assert_eq!(read.ends[0].output[0].stdout, ["out"]);
    assert!(read.cut_last);
    assert_eq!(read.unreadable, 0);
}

#[test]
fn a_full_segment_goes_once_its_ends_are_answered_and_the_current_one_stays() {
    let data = tempfile::tempdir().unwrap();
    let journal = Journal::new(data.path(), true);
    // Four ends of over a quarter of a segment each fill one; the fifth opens the next.
    let big = "x".repeat(SEGMENT_BYTES as usize / 4 + 1);
    for job in ["a", "b", "c", "d", "e"] {
        journal.record(&entry(job, &big));
    }
    let both = segments(data.path());
    assert_eq!(both.len(), 2, "{both:?}");
    assert_eq!(
        ids(&unanswered(&std::fs::read(&both[0]).unwrap()).ends),
        ["a", "b", "c", "d"]
    );

    for job in ["a", "b", "c"] {
        journal.answer(job, 1);
    }
    assert_eq!(
        segments(data.path()),
        both,
        "d is still unanswered in the first"
    );
    journal.answer("d", 1);
    assert_eq!(
        segments(data.path()),
        both[1..],
        "the full one went with its last end"
    );

    journal.answer("e", 1);
    let [current] = &segments(data.path())[..] else {
        panic!("the current segment stays: {:?}", segments(data.path()));
    };
    assert!(unanswered(&std::fs::read(current).unwrap()).ends.is_empty());
}

#[test]
fn a_store_that_needs_no_journal_writes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let journal = Journal::new(data.path(), false);
    journal.record(&entry("a", "out"));
    journal.answer("a", 1);
    assert!(!data.path().join("journal").exists());
}

#[tokio::test]
async fn the_next_life_replays_only_unanswered_ends_and_removes_what_it_replayed() {
    let data = tempfile::tempdir().unwrap();
    let store = store_in(data.path());
    let life = Journal::new(data.path(), true);
    for job in ["a", "b", "c"] {
        life.record(&entry(job, "out"));
    }
    life.answer("b", 1);
    drop(life);
    wait_unlocked(data.path()).await;
    // An end of the older format (a file per end) is replayed too.
    let old = data.path().join("journal/d.1.json");
    std::fs::write(&old, serde_json::to_vec(&entry("d", "out")).unwrap()).unwrap();

    let next = Journal::new(data.path(), true);
    // The store answers each (its fence refuses ends of jobs it does not hold running).
    assert_eq!(next.replay(&store).await, 3, "a, c and d; b was answered");
    assert_eq!(segments(data.path()), Vec::<PathBuf>::new());
    assert_eq!(next.replay(&store).await, 0, "nothing is replayed twice");
}

#[tokio::test]
async fn a_segment_the_store_could_not_take_is_kept_whole_for_the_next_start() {
    use crate::store::Store;
    let data = tempfile::tempdir().unwrap();
    let open = || store_in(data.path());
    let life = Journal::new(data.path(), true);
    for job in ["a", "b"] {
        life.record(&entry(job, "out"));
    }
    drop(life);
    wait_unlocked(data.path()).await;
    let [segment] = &segments(data.path())[..] else {
        panic!("one segment");
    };
    // The crash cut a third line short.
    std::fs::OpenOptions::new()
        .append(true)
        .open(segment)
        .unwrap()
        .write_all(br#"{"End":{"job_id":"c"#)
        .unwrap();

    let closed = open();
    closed.close().await;
    assert_eq!(Journal::new(data.path(), true).replay(&closed).await, 0);
    let kept = std::fs::read(segment).unwrap();
    assert!(kept.ends_with(b"\n"), "the cut line is ended");
    assert_eq!(ids(&unanswered(&kept).ends), ["a", "b"]);

    assert_eq!(Journal::new(data.path(), true).replay(&open()).await, 2);
    assert_eq!(segments(data.path()), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn a_segment_with_unreadable_lines_inside_is_replayed_and_set_aside() {
    let data = tempfile::tempdir().unwrap();
    let store = store_in(data.path());
    let dir = data.path().join("journal");
    std::fs::create_dir_all(&dir).unwrap();
    let line = |job: &str| {
        let mut l = br#"{"End":"#.to_vec();
        l.extend(serde_json::to_vec(&entry(job, "out")).unwrap());
        l.extend(b"}\n");
        l
    };
    let mut text = line("a");
    text.extend(b"{\"Done\":{\"job_id\":\"a\",\"cl\n");
    text.extend(line("b"));
    std::fs::write(dir.join("000000000000001.00000000.log"), text).unwrap();

    assert_eq!(Journal::new(data.path(), true).replay(&store).await, 2);
    assert!(
        segments(data.path())
            .iter()
            .all(|p| p.extension().unwrap() == "bad")
    );
    assert_eq!(segments(data.path()).len(), 1, "set aside, not removed");
}

#[tokio::test]
async fn a_live_replicas_segment_is_left_to_it_and_replayed_once_it_is_gone() {
    let data = tempfile::tempdir().unwrap();
    let store = store_in(data.path());
    // Two replicas share one `data_dir`; one restarts while the other runs.
    let live = Journal::new(data.path(), true);
    live.record(&entry("a", "out"));
    let restarted = Journal::new(data.path(), true);
    assert_eq!(
        restarted.replay(&store).await,
        0,
        "the live one answers its own"
    );
    live.record(&entry("b", "out"));
    let [segment] = &segments(data.path())[..] else {
        panic!("the live segment stays: {:?}", segments(data.path()));
    };
    assert_eq!(
        ids(&unanswered(&std::fs::read(segment).unwrap()).ends),
        ["a", "b"],
        "its appends still land in the file replay reads"
    );

    drop(live); // it dies: its lock goes with it
    wait_unlocked(data.path()).await;
    assert_eq!(Journal::new(data.path(), true).replay(&store).await, 2);
    assert_eq!(segments(data.path()), Vec::<PathBuf>::new());
}
