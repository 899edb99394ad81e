//! In-process bus: a node alone. Nothing crosses the process, so the only
//! messages it could carry are the node's own, which every node drops: a
//! publish is counted and goes nowhere (a single node behaves exactly as without a
//! bus; replicas without Redis learn of aborts from the store's durable
//! mark, and of new work from the store's change polls).

use tokio::sync::broadcast;

use super::{Bus, BusCounters, BusStatus, Signal, new_origin};

/// Single-node bus.
pub struct LocalBus {
    origin: String,
    tx: broadcast::Sender<Signal>,
    counters: BusCounters,
}

impl Default for LocalBus {
    fn default() -> Self {
        LocalBus {
            origin: new_origin(),
            tx: broadcast::channel(16).0,
            counters: BusCounters::default(),
        }
    }
}

impl Bus for LocalBus {
    fn origin(&self) -> &str {
        &self.origin
    }

    fn publish_abort(&self, _run_id: &str) {
        // Delivered to this process only, which drops its own origin: done.
        BusCounters::inc(&self.counters.published);
    }

    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.tx.subscribe()
    }

    fn status(&self) -> BusStatus {
        BusStatus::from_counters("local", true, &self.origin, &self.counters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bus_has_its_own_random_origin() {
        let (a, b) = (LocalBus::default(), LocalBus::default());
        assert_eq!(a.origin().len(), 32);
        assert!(a.origin().chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.origin(), b.origin());
        a.publish_abort("r");
        let s = a.status();
        assert_eq!((s.kind, s.connected, s.published), ("local", true, 1));
    }
}
