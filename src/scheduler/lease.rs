//! This node's own lease, as the node itself can judge it.
//!
//! Other nodes judge a node dead when its stored heartbeat is older than the
//! lease by the **database clock** (the rescuer). This module keeps the two
//! promises a node makes about itself, on its **local monotonic clock**, which
//! a frozen process (SIGSTOP, a VM pause) cannot fool: the clock runs on while
//! it is stopped, so the first thing it sees when it wakes is that time passed.
//!
//! - **Self-fencing.** A node trusts its lease until the start of its last
//!   successful heartbeat + lease − [`margin`]. Past that, peers may already
//!   have re-queued its jobs, so it stops them all (cause `Lost`: nothing they
//!   write can land over a new claim, the store's fence refuses it) and claims
//!   nothing until a heartbeat confirms its registration again. The margin
//!   keeps the self-fence ahead of any peer's rescue, whose clock reads at
//!   least as late, and leaves time to kill what runs (a lost execution gets
//!   at most half the margin between SIGTERM and SIGKILL, [`kill_grace`]).
//! - **No claim on a lease that may be about to lapse.** A node claims only
//!   while its last heartbeat *attempt* succeeded. After an outage the
//!   heartbeat is retried every [`retry_every`] (not at the next beat), and
//!   claims resume only once one is accepted, which renews the lease: a job
//!   claimed after a heal is never stopped by a fence that was already due.
//! - **The observer guard.** A node judges others dead *by age* only after it has
//!   itself beaten successfully for one whole lease. After a database outage
//!   every stored heartbeat is old; without the guard the first node back would
//!   re-queue every healthy replica's jobs. Pid liveness on the same host is
//!   not age and needs no guard.
//!
//! Tests that catch a violation: `tests/host_faults.rs` (a frozen host thawed after
//! twice the lease kills its copies at once and none of its writes land; a
//! database cut from every replica for longer than the lease re-queues nothing
//! by age) and the unit tests below.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far before the lease's end a node stops trusting it: 5 s at the default
/// 30 s lease, a sixth of shorter leases.
pub(crate) fn margin(lease: Duration) -> Duration {
    (lease / 6).min(Duration::from_secs(5))
}

/// SIGTERM-to-SIGKILL grace for an execution stopped because its claim was lost
/// (a self-fence): the pipeline's `kill_grace`, but at most half the margin, so the
/// process is gone before any peer may judge the lease expired and run the job again.
pub(crate) fn kill_grace(lease: Duration, pipeline_grace: Duration) -> Duration {
    pipeline_grace.min(margin(lease) / 2)
}

/// How soon a failed heartbeat is tried again: a tenth of a beat, between 50 and
/// 250 ms, so a healed store renews the lease long before the margin runs out.
pub(crate) fn retry_every(heartbeat: Duration) -> Duration {
    (heartbeat / 10).clamp(Duration::from_millis(50), Duration::from_millis(250))
}

#[derive(Debug)]
struct State {
    /// Start of the last heartbeat the store accepted for this node.
    last_ok_start: Instant,
    /// Since when every heartbeat succeeded (`None` after a failure, until one is
    /// accepted again).
    healthy_since: Option<Instant>,
    /// Jobs stopped for a lease no longer trusted, until a heartbeat confirms it.
    fenced: bool,
}

/// This node's lease.
#[derive(Debug)]
pub(crate) struct Lease {
    lease: Duration,
    state: Mutex<State>,
}

impl Lease {
    /// A lease just confirmed by registration at `registered` (its start).
    pub(crate) fn new(lease: Duration, registered: Instant) -> Lease {
        Lease {
            lease,
            state: Mutex::new(State {
                last_ok_start: registered,
                healthy_since: Some(registered),
                fenced: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lease's length.
    pub(crate) fn length(&self) -> Duration {
        self.lease
    }

    /// A heartbeat that started at `started` was accepted; returns true when this
    /// lifts a self-fence.
    pub(crate) fn confirmed(&self, started: Instant) -> bool {
        let mut s = self.lock();
        s.last_ok_start = s.last_ok_start.max(started);
        s.healthy_since.get_or_insert(started);
        std::mem::replace(&mut s.fenced, false)
    }

    /// A heartbeat failed: the node is not a trustworthy observer until it has been
    /// healthy for a lease again.
    pub(crate) fn failed(&self) {
        self.lock().healthy_since = None;
    }

    /// True while the lease is trusted, no self-fence holds and the last heartbeat
    /// attempt succeeded: jobs may be claimed.
    pub(crate) fn trusted(&self) -> bool {
        self.trusted_at(Instant::now())
    }

    fn expires(&self, s: &State) -> Instant {
        s.last_ok_start + self.lease - margin(self.lease)
    }

    fn trusted_at(&self, now: Instant) -> bool {
        let s = self.lock();
        !s.fenced && s.healthy_since.is_some() && now < self.expires(&s)
    }

    /// Sets the self-fence if the lease is no longer trusted; true when it was set now
    /// (the caller stops every local job).
    pub(crate) fn fence_if_expired(&self) -> bool {
        self.fence_if_expired_at(Instant::now())
    }

    fn fence_if_expired_at(&self, now: Instant) -> bool {
        let mut s = self.lock();
        if s.fenced || now < self.expires(&s) {
            return false;
        }
        s.fenced = true;
        true
    }

    /// How long since the last accepted heartbeat started.
    pub(crate) fn since_confirmed(&self) -> Duration {
        self.lock().last_ok_start.elapsed()
    }

    /// True when this node may declare others dead by heartbeat age.
    pub(crate) fn may_judge_by_age(&self) -> bool {
        self.lock()
            .healthy_since
            .is_some_and(|t| t.elapsed() >= self.lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_trusted_until_its_end_minus_the_margin_and_fences_once() {
        let t0 = Instant::now();
        let lease = Lease::new(Duration::from_secs(30), t0);
        assert!(lease.trusted_at(t0 + Duration::from_secs(24)));
        assert!(!lease.trusted_at(t0 + Duration::from_secs(25)));
        assert_eq!(
            margin(Duration::from_millis(1500)),
            Duration::from_millis(250)
        );
        assert!(!lease.fence_if_expired_at(t0 + Duration::from_secs(24)));
        assert!(lease.fence_if_expired_at(t0 + Duration::from_secs(26)));
        assert!(
            !lease.fence_if_expired_at(t0 + Duration::from_secs(27)),
            "fenced once"
        );
        assert!(
            !lease.trusted_at(t0 + Duration::from_secs(1)),
            "fenced until confirmed"
        );
        let beat = t0 + Duration::from_secs(26);
        assert!(lease.confirmed(beat), "a confirmed beat lifts the fence");
        assert!(lease.trusted_at(beat + Duration::from_secs(1)));
    }

    #[test]
    fn a_failed_heartbeat_stops_claims_until_one_is_accepted_without_fencing() {
        let t0 = Instant::now();
        let lease = Lease::new(Duration::from_secs(30), t0);
        lease.failed();
        assert!(!lease.trusted_at(t0 + Duration::from_secs(1)), "no claims");
        assert!(
            !lease.fence_if_expired_at(t0 + Duration::from_secs(20)),
            "but no fence while the lease holds"
        );
        let healed = t0 + Duration::from_secs(20);
        assert!(!lease.confirmed(healed), "no fence to lift");
        assert!(lease.trusted_at(healed + Duration::from_secs(1)));
        assert!(
            !lease.fence_if_expired_at(t0 + Duration::from_secs(26)),
            "the accepted beat renewed the lease past the old fence time"
        );
    }

    #[test]
    fn a_lost_execution_is_killed_within_the_margin_and_retries_come_fast() {
        let lease = Duration::from_secs(30);
        assert_eq!(
            kill_grace(lease, Duration::from_secs(10)),
            Duration::from_millis(2500)
        );
        assert_eq!(
            kill_grace(lease, Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        assert_eq!(
            retry_every(Duration::from_secs(10)),
            Duration::from_millis(250)
        );
        assert_eq!(
            retry_every(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn only_a_node_healthy_for_a_whole_lease_judges_others_by_age() {
        let lease = Lease::new(Duration::from_secs(30), Instant::now());
        assert!(!lease.may_judge_by_age(), "just registered");
        let old = Lease::new(
            Duration::from_millis(1),
            Instant::now() - Duration::from_secs(1),
        );
        assert!(old.may_judge_by_age());
        old.failed();
        assert!(!old.may_judge_by_age(), "a failed beat resets it");
        old.confirmed(Instant::now() - Duration::from_secs(1));
        assert!(old.may_judge_by_age());
    }
}
