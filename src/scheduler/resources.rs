//! This node's resources: its capacity (`[server] resources`), what its running jobs
//! hold, and which GPU indices each holds.
//!
//! Invariant: the needs of the jobs running here never add up past the capacity, and no
//! GPU index is held by two running jobs. A claim first *reserves*: of the pipelines it
//! may take, those whose one-job need fits what is free, and at most as many jobs as fit
//! when each needs the largest of those needs in every dimension — so any mix of jobs
//! the store hands back fits. Each claimed job then takes its own need (and GPU indices)
//! out of the reservation, and the rest goes back. A job gives its share back when its
//! process has ended (before its finish, which may claim the next job with it). With no
//! pipeline needing anything, none of this costs a lock.
//! Tests: `placement::resources_bound_what_runs_at_once_and_gpus_are_never_shared`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use crate::model::Resources;

/// The node's ledger.
pub(crate) struct Ledger {
    capacity: Resources,
    /// Whether any claimable pipeline needs anything (else every call is a no-op).
    active: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Held by running jobs and open reservations.
    used: Resources,
    /// GPU indices nobody holds.
    free_gpus: BTreeSet<u32>,
    /// Job id → what it holds.
    held: HashMap<String, (Resources, Vec<u32>)>,
}

/// Room set aside for one claim.
pub(crate) struct Reservation<'a> {
    ledger: &'a Ledger,
    /// Pipelines the claim may take from.
    pub allowed: Option<Vec<String>>,
    /// Jobs the claim may take at most.
    pub max: usize,
    reserved: Resources,
}

impl Ledger {
    /// A ledger of `capacity`, for pipelines needing `needs`.
    pub(crate) fn new<'a>(
        capacity: Resources,
        needs: impl IntoIterator<Item = &'a Resources>,
    ) -> Ledger {
        let active = needs.into_iter().any(|n| !n.is_zero());
        Ledger {
            capacity,
            active,
            state: Mutex::new(State {
                free_gpus: (0..capacity.gpu).collect(),
                ..State::default()
            }),
        }
    }

    /// True when some pipeline declares what its jobs need, so claims are sized to what is free.
    pub(crate) fn active(&self) -> bool {
        self.active
    }

    /// What its running jobs (and open reservations) hold.
    pub(crate) fn in_use(&self) -> Resources {
        self.lock().used
    }

    /// Sets aside room for a claim of at most `max` jobs over `pipelines` (name, need).
    pub(crate) fn reserve<'p>(
        &self,
        pipelines: impl Iterator<Item = (&'p str, &'p Resources)>,
        max: usize,
    ) -> Reservation<'_> {
        if !self.active {
            return Reservation {
                ledger: self,
                allowed: None,
                max,
                reserved: Resources::default(),
            };
        }
        let mut state = self.lock();
        let free = self.capacity.minus(&state.used);
        let mut allowed = Vec::new();
        let mut largest = Resources::default();
        for (name, need) in pipelines {
            if need.fits(&free) {
                allowed.push(name.to_string());
                largest = largest.max(need);
            }
        }
        let fit = free.how_many(&largest).min(max as u64) as usize;
        let max = if allowed.is_empty() { 0 } else { fit };
        let reserved = largest.times(max as u64);
        state.used = state.used.plus(&reserved);
        Reservation {
            ledger: self,
            allowed: Some(allowed),
            max,
            reserved,
        }
    }

    /// Gives back what `job_id` holds (idempotent).
    pub(crate) fn release(&self, job_id: &str) {
        if !self.active {
            return;
        }
        let mut state = self.lock();
        if let Some((need, gpus)) = state.held.remove(job_id) {
            state.used = state.used.minus(&need);
            state.free_gpus.extend(gpus);
        }
    }

    /// The GPU indices `job_id` holds (empty when it holds none).
    pub(crate) fn gpus_of(&self, job_id: &str) -> Vec<u32> {
        if !self.active {
            return Vec::new();
        }
        self.lock()
            .held
            .get(job_id)
            .map(|(_, g)| g.clone())
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Reservation<'_> {
    /// Moves `need` out of the reservation to `job_id`, with GPU indices of its own.
    pub(crate) fn take(&mut self, job_id: &str, need: &Resources) {
        if !self.ledger.active || need.is_zero() {
            return;
        }
        let mut state = self.ledger.lock();
        // Never more than reserved: the reservation bounded the claim to fit.
        let need = Resources {
            cpu_milli: need.cpu_milli.min(self.reserved.cpu_milli),
            memory: need.memory.min(self.reserved.memory),
            gpu: need.gpu.min(self.reserved.gpu),
        };
        self.reserved = self.reserved.minus(&need);
        let gpus: Vec<u32> = (0..need.gpu)
            .filter_map(|_| state.free_gpus.pop_first())
            .collect();
        state.held.insert(job_id.to_string(), (need, gpus));
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.ledger.active && !self.reserved.is_zero() {
            let mut state = self.ledger.lock();
            state.used = state.used.minus(&self.reserved);
        }
    }
}

/// A node's capacity: `[server] resources` with the machine's cores and memory for
/// what it leaves out (a node that names only its GPUs still has its CPU and memory).
pub(crate) fn capacity(configured: Option<Resources>) -> Resources {
    let machine = machine();
    match configured {
        None => machine,
        Some(r) => Resources {
            cpu_milli: if r.cpu_milli == 0 {
                machine.cpu_milli
            } else {
                r.cpu_milli
            },
            memory: if r.memory == 0 {
                machine.memory
            } else {
                r.memory
            },
            gpu: r.gpu,
        },
    }
}

/// The machine's cores and memory, no GPU: a node's capacity when it names none.
pub(crate) fn machine() -> Resources {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024);
    Resources {
        cpu_milli: cores * 1000,
        memory,
        gpu: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(cpu: u64, gpu: u32) -> Resources {
        Resources {
            cpu_milli: cpu,
            memory: 0,
            gpu,
        }
    }

    #[test]
    fn reservations_bound_a_claim_and_gpus_are_handed_out_once() {
        let big = r(2000, 1);
        let small = r(1000, 0);
        let ledger = Ledger::new(r(4000, 2), [&big, &small]);
        let mut res = ledger.reserve([("big", &big), ("small", &small)].into_iter(), 8);
        // Each may need the largest (2 cores, 1 GPU): two fit.
        assert_eq!(res.max, 2);
        res.take("a", &big);
        res.take("b", &big);
        drop(res);
        let (a, b) = (ledger.gpus_of("a"), ledger.gpus_of("b"));
        assert_eq!((a.len(), b.len()), (1, 1));
        assert_ne!(a, b);
        // Full: nothing more fits, not even the small one.
        let res = ledger.reserve([("big", &big), ("small", &small)].into_iter(), 8);
        assert_eq!((res.max, res.allowed.as_deref()), (0, Some(&[][..])));
        drop(res);
        ledger.release("a");
        ledger.release("a");
        let res = ledger.reserve([("big", &big), ("small", &small)].into_iter(), 8);
        assert_eq!(res.max, 1);
        assert_eq!(ledger.in_use(), r(4000, 2));
        drop(res);
        assert_eq!(ledger.in_use(), r(2000, 1));
    }

    #[test]
    fn a_capacity_that_names_only_gpus_keeps_the_machines_cpu_and_memory() {
        let only_gpus = capacity(Some(r(0, 2)));
        assert_eq!(only_gpus.gpu, 2);
        assert_eq!(only_gpus.cpu_milli, machine().cpu_milli);
        assert_eq!(capacity(Some(r(500, 0))).cpu_milli, 500);
    }

    #[test]
    fn without_needs_nothing_is_counted() {
        let none = Resources::default();
        let ledger = Ledger::new(r(1000, 0), [&none]);
        let res = ledger.reserve([("p", &none)].into_iter(), 5);
        assert_eq!((res.max, res.allowed.is_none()), (5, true));
    }
}
