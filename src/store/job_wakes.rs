//! Per-job wake-ups: a log stream wakes for the job it follows, not for every job.
//!
//! The change feed's `OUTPUT` kind says "some job has new output"; with it
//! alone every log stream woke on every flush of every job and read the store
//! twice. [`JobWakes`] is a registry of the jobs somebody follows: a store that
//! commits output for job J calls `ChangeFeed::bump_output(&[J])`, one that
//! changes J's status (its end, a requeue, an abort) calls
//! `ChangeFeed::bump_job_state(&[J])` (or `bump_run_state` for all of a run's
//! jobs), and only J's followers wake, knowing which of the two happened, so a
//! flush costs each of them one read and only a state change costs a status
//! read too.
//!
//! **Invariant: nothing is missed across processes.** A bump of the feed's
//! `OUTPUT` kind without job ids (another process on the same SQLite file via
//! `PRAGMA data_version`, the PostgreSQL change poll, a remote wake-up) still
//! wakes every follower, as both kinds at once ([`JobWake::Unknown`]); and a
//! store whose feed cannot see other nodes' output at all sets a poll interval
//! ([`ChangeFeed::set_output_poll`](super::ChangeFeed::set_output_poll)).
//!
//! Cost when nobody follows anything: one uncontended lock and a lookup in an
//! empty map per commit. An entry lives while its job has a follower.
//! Test: `streams_and_connections::a_log_stream_wakes_only_for_its_own_job`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// What has happened to one followed job, as counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct JobChange {
    output: u64,
    state: u64,
}

/// Why a follower woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobWake {
    /// New output of this job only: read the lines.
    Output,
    /// The job's status changed (maybe with output): read the lines and the status.
    State,
    /// Something changed somewhere (another process, a remote node): look at both.
    Unknown,
}

/// The registry of followed jobs (shared by every clone of the feed).
#[derive(Clone, Default)]
pub struct JobWakes {
    map: Arc<Mutex<HashMap<String, watch::Sender<JobChange>>>>,
}

impl JobWakes {
    fn bump<'a>(&self, jobs: impl IntoIterator<Item = &'a str>, f: impl Fn(&mut JobChange)) {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.is_empty() {
            return;
        }
        for job in jobs {
            if let Some(tx) = map.get(job) {
                tx.send_modify(&f);
            }
        }
    }

    /// New output of `jobs` is committed.
    pub fn bump_output<'a>(&self, jobs: impl IntoIterator<Item = &'a str>) {
        self.bump(jobs, |c| c.output = c.output.wrapping_add(1));
    }

    /// The status of `jobs` changed (committed).
    pub fn bump_state<'a>(&self, jobs: impl IntoIterator<Item = &'a str>) {
        self.bump(jobs, |c| c.state = c.state.wrapping_add(1));
    }

    /// The status of every followed job of `run_id` (`{run}`, `{run}:s{i}`,
    /// `{run}:finalize`) may have changed.
    pub fn bump_run_state(&self, run_id: &str) {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for (job, tx) in map.iter() {
            let of_run = job
                .strip_prefix(run_id)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'));
            if of_run {
                tx.send_modify(|c| c.state = c.state.wrapping_add(1));
            }
        }
    }

    /// Follows `job`; `any_output` is the feed's job-less `OUTPUT` receiver.
    pub fn subscribe(&self, job: &str, any_output: watch::Receiver<u64>) -> JobSubscription {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let rx = match map.get(job) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(JobChange::default());
                map.insert(job.to_string(), tx);
                rx
            }
        };
        let seen = *rx.borrow();
        JobSubscription {
            job: job.to_string(),
            seen,
            rx: Some(rx),
            any_output,
            wakes: self.clone(),
        }
    }

    /// Jobs with at least one follower (for tests and metrics).
    pub fn followed(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One follower of one job; unregisters on drop when it was the last.
pub struct JobSubscription {
    job: String,
    seen: JobChange,
    /// `Some` until dropped.
    rx: Option<watch::Receiver<JobChange>>,
    any_output: watch::Receiver<u64>,
    wakes: JobWakes,
}

impl JobSubscription {
    /// Waits for the next change of this job (or a job-less output bump) after the last
    /// one returned; changes that happened meanwhile return at once. `None` when the
    /// feed is gone.
    pub async fn changed(&mut self) -> Option<JobWake> {
        let rx = self.rx.as_mut()?;
        tokio::select! {
            r = rx.changed() => {
                r.ok()?;
                let now = *rx.borrow_and_update();
                let wake = if now.state != self.seen.state { JobWake::State } else { JobWake::Output };
                self.seen = now;
                Some(wake)
            }
            r = self.any_output.changed() => {
                r.ok()?;
                self.any_output.borrow_and_update();
                Some(JobWake::Unknown)
            }
        }
    }
}

impl Drop for JobSubscription {
    fn drop(&mut self) {
        let mut map = self.wakes.map.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.rx.take());
        if map
            .get(&self.job)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            map.remove(&self.job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_wake_for_their_own_job_and_for_job_less_bumps() {
        let wakes = JobWakes::default();
        let (any_tx, any_rx) = watch::channel(0u64);
        let mut a = wakes.subscribe("r1", any_rx.clone());
        let mut b = wakes.subscribe("r2:s0", any_rx.clone());
        wakes.bump_output(["r2:s0", "nobody"]);
        assert_eq!(b.changed().await, Some(JobWake::Output));
        // `a` did not wake: a bump of its own job comes first.
        wakes.bump_state(["r1"]);
        assert_eq!(a.changed().await, Some(JobWake::State));
        wakes.bump_run_state("r2");
        assert_eq!(b.changed().await, Some(JobWake::State));
        any_tx.send_modify(|v| *v += 1);
        assert_eq!(a.changed().await, Some(JobWake::Unknown));
        assert_eq!(b.changed().await, Some(JobWake::Unknown));
        assert_eq!(wakes.followed(), 2);
        drop(a);
        assert_eq!(wakes.followed(), 1);
        let b2 = wakes.subscribe("r2:s0", any_rx);
        drop(b);
        assert_eq!(wakes.followed(), 1, "a second follower keeps the entry");
        drop(b2);
        assert_eq!(wakes.followed(), 0);
    }
}
