//! The change feed: counters bumped after each commit, one per kind of change, that
//! wake claimers, SSE tailers, log streams and abort listeners without polling.

use std::sync::Arc;

use tokio::sync::watch;

use crate::store::*;

/// Kinds of change the feed reports (bit flags).
pub mod change {
    /// New or re-queued work, or a slot freed somewhere: claimers should look.
    pub const WORK: u8 = 1;
    /// New events: SSE tailers should read.
    pub const EVENTS: u8 = 2;
    /// New output lines: log streams should read.
    pub const OUTPUT: u8 = 4;
    /// An abort was requested: nodes should cancel their matching jobs.
    pub const ABORT: u8 = 8;
    /// Everything (a change made by another process on the same store).
    pub const ALL: u8 = WORK | EVENTS | OUTPUT | ABORT;
}

/// Counters bumped after each commit, one per change kind; waiters hold receivers.
#[derive(Clone)]
pub struct ChangeFeed {
    senders: Arc<[watch::Sender<u64>; 4]>,
    /// Highest event id known to be readable: committed by this process's writer
    /// (SQLite), or seen below the horizon by the change poll (PostgreSQL).
    last_event: Arc<std::sync::atomic::AtomicI64>,
    /// Kinds this process committed since the bus last took them ([`ChangeFeed::take_local`]).
    local: Arc<LocalCommits>,
    /// Followers of single jobs' output and status ([`job_wakes`]).
    jobs: job_wakes::JobWakes,
    /// How often a follower of a job must look by itself, in ms (0: never needed),
    /// because this feed cannot see other nodes' output.
    output_poll_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// This process's own commits, for the bus to tell other replicas about. Kept apart
/// from [`ChangeFeed::bump`], which also carries wake-ups *from* other processes:
/// republishing those would echo every change around the cluster forever.
#[derive(Default)]
struct LocalCommits {
    kinds: std::sync::atomic::AtomicU8,
    notify: tokio::sync::Notify,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        ChangeFeed {
            senders: Arc::new(std::array::from_fn(|_| watch::channel(0).0)),
            last_event: Arc::default(),
            local: Arc::default(),
            jobs: job_wakes::JobWakes::default(),
            output_poll_ms: Arc::default(),
        }
    }
}

impl ChangeFeed {
    /// Bumps the counters of every kind in `kinds`.
    pub fn bump(&self, kinds: u8) {
        for (bit, tx) in self.senders.iter().enumerate() {
            if kinds & (1 << bit) != 0 {
                tx.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
    }

    /// Bumps `kinds` for a commit made by this process: wakes local waiters as
    /// [`ChangeFeed::bump`] does, and records the kinds for the bus to publish.
    pub fn bump_local(&self, kinds: u8) {
        self.bump(kinds);
        self.note_local(kinds);
    }

    /// Records kinds this process committed, for the bus's bridge only.
    fn note_local(&self, kinds: u8) {
        self.local
            .kinds
            .fetch_or(kinds, std::sync::atomic::Ordering::AcqRel);
        self.local.notify.notify_one();
    }

    /// Waits until this process has committed something since the last call, then
    /// takes the kinds committed meanwhile (one taker: the bus's bridge).
    pub async fn take_local(&self) -> u8 {
        loop {
            let kinds = self
                .local
                .kinds
                .swap(0, std::sync::atomic::Ordering::AcqRel);
            if kinds != 0 {
                return kinds;
            }
            self.local.notify.notified().await;
        }
    }

    /// Records that events up to `id` are committed (called by the writer after COMMIT).
    pub fn publish_last_event(&self, id: i64) {
        self.last_event
            .fetch_max(id, std::sync::atomic::Ordering::AcqRel);
    }

    /// Highest event id known to be readable (0 before the first).
    pub fn last_event(&self) -> i64 {
        self.last_event.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A receiver for one kind (`change::WORK`, …).
    pub fn subscribe(&self, kind: u8) -> watch::Receiver<u64> {
        let bit = kind.trailing_zeros() as usize;
        self.senders[bit.min(3)].subscribe()
    }

    /// New output of `jobs` is committed: wakes their followers only. (A bump of
    /// `change::OUTPUT` without job ids still wakes every follower.)
    pub fn bump_output<'a>(&self, jobs: impl IntoIterator<Item = &'a str>) {
        self.jobs.bump_output(jobs);
        // Other nodes hear it through the bus as a plain OUTPUT wake (kinds carry no
        // job ids), which wakes their followers of any job.
        self.note_local(change::OUTPUT);
    }

    /// The status of `jobs` changed (committed): wakes their followers only.
    pub fn bump_job_state<'a>(&self, jobs: impl IntoIterator<Item = &'a str>) {
        self.jobs.bump_state(jobs);
    }

    /// The status of any job of `run_id` may have changed (an abort): wakes their followers.
    pub fn bump_run_state(&self, run_id: &str) {
        self.jobs.bump_run_state(run_id);
    }

    /// Follows one job's output and status (see [`job_wakes`]).
    pub fn subscribe_output(&self, job_id: &str) -> JobSubscription {
        self.jobs.subscribe(job_id, self.subscribe(change::OUTPUT))
    }

    /// Jobs somebody follows on this process.
    pub fn followed_jobs(&self) -> usize {
        self.jobs.followed()
    }

    /// Says that this feed cannot see output committed by other nodes, so a follower must
    /// look by itself every `every` (PostgreSQL without a bus); `None` undoes it (a bus
    /// that carries output wake-ups).
    pub fn set_output_poll(&self, every: Option<std::time::Duration>) {
        let ms = every.map_or(0, |d| d.as_millis().max(1) as u64);
        self.output_poll_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// How often a follower must look by itself, if at all.
    pub fn output_poll(&self) -> Option<std::time::Duration> {
        match self
            .output_poll_ms
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => None,
            ms => Some(std::time::Duration::from_millis(ms)),
        }
    }
}
