//! Fair shares of the global cap (`max_workers_global`) between nodes, decided above
//! the backend.
//!
//! The cap alone is first come, first served, and a node's own ends come first: a
//! finish claims its slot's next job in the transaction that frees its unit, and the
//! node's claim loop hears of its own ends before any other node does. So a node that
//! took every unit early kept them while other nodes' queues waited (`host_faults`: one
//! host of three held all four units for a minute).
//!
//! So a node whose claim the cap kept short while it had ready jobs within its rooms
//! says so (`nodes.cap_wait_at`: the time of that claim; its next claim that the cap
//! did not keep short clears it, and a mark older than [`WAIT_FRESH_MS`] no longer
//! counts, so a node that stopped claiming stops counting). While another node waits, a
//! claim under the cap takes no more than [`fair_room`]: the claimer's fair share less
//! the units it holds. A node over its share lets the units its jobs free go to the
//! nodes that wait. With nobody waiting, the cap stays first come, first served (no
//! unit is left idle for fairness' sake).
//!
//! **Invariant:** while another node waits, a claim never leaves its node holding more
//! than `ceil(cap / nodes sharing)` units, where the nodes sharing are the claimer and
//! every other node that holds a unit or waits for one. Caught by
//! `store_contract::*::a_node_waiting_for_the_global_cap_gets_its_share_of_the_units`
//! (both backends) and, through the binary on three hosts,
//! `host_faults::a_global_cap_holds_over_three_hosts_when_a_slot_holder_dies` (it
//! needs a unit on host 1 or 2 while host 0's triggers keep coming).
//!
//! Not covered: jobs of keyed pipelines (`concurrency_key`) do not make a node wait
//! (their heads may be held back by their key's cap rather than the global one, and a
//! node waiting for a key that cannot run would hold every other node to its share).
//! A keyed claim still keeps to its share while others wait.

/// How long a node's wait counts after the claim that said so: three of the claim
/// loop's backstop polls (a waiting node claims at least that often, and on every
/// commit that frees a unit anywhere).
pub const WAIT_FRESH_MS: i64 = 3_000;

/// How many more units a node holding `mine` may take while another node waits, with
/// `others` other nodes sharing the cap (holding a unit or waiting for one).
pub fn fair_room(cap: usize, mine: usize, others: usize) -> usize {
    cap.div_ceil(others + 1).saturating_sub(mine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_the_cap_over_the_nodes_sharing_rounded_up_less_what_is_held() {
        assert_eq!(fair_room(4, 4, 1), 0, "over its share: takes nothing");
        assert_eq!(fair_room(4, 2, 1), 0, "at its share");
        assert_eq!(fair_room(4, 1, 1), 1);
        assert_eq!(fair_room(4, 0, 2), 2, "4 over 3 nodes rounds up to 2");
        assert_eq!(fair_room(1, 0, 3), 1, "a cap below the nodes: a unit each in turn");
    }
}
