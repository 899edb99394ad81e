//! Fair shares of the global cap (`max_workers_global`) between nodes, decided above
//! the backend.
//!
//! The cap alone is first come, first served, and a node's own ends come first: a
//! finish claims its slot's next job in the transaction that frees its unit, and the
//! node's claim loop hears of its own ends before any other node does. So a node that
//! took every unit early kept them while other nodes' queues waited (`host_faults`: one
//! host of three held all four units for a minute).
//!
//! So a node whose claim the cap kept short while ready jobs remained within its rooms
//! says so (`nodes.cap_wait_at`: the time of that claim). Its next claim that finds no
//! ready job left clears the mark; a claim that got all it asked leaves it as it is,
//! and a mark older than [`WAIT_FRESH_MS`] no longer counts, so a node that stopped
//! being kept short stops counting within that time (under a busy cap a node's claims
//! alternate between short and served, and its row need not be written on each). While other nodes wait, a
//! claim under the cap takes no more than [`fair_room`]: it may bring its node to one
//! unit above the fewest any waiting node holds, no further. A node ahead lets the
//! units its jobs free go to the nodes behind it, and the units settle within one of
//! each other (max-min fair; a share of `ceil(cap / nodes)` alone let two nodes hold
//! two units each of four while a third held none). With nobody waiting, the cap
//! stays first come, first served: no unit is left idle for fairness' sake.
//!
//! **Invariant:** while another node waits, a claim never leaves its node holding more
//! than one unit above the fewest units a waiting node holds. Caught by
//! `store_contract::*::a_node_waiting_for_the_global_cap_gets_its_share_of_the_units`
//! (both backends) and, through the binary on three hosts,
//! `host_faults::a_global_cap_holds_over_three_hosts_when_a_slot_holder_dies` (every
//! run triggered on host 0, and hosts 1 and 2 must each get a unit).
//!
//! Not covered: turns between nodes that are level. With fewer units than nodes
//! wanting them, a node holding one unit takes the next when the poorest waiting node
//! holds none (one ahead is allowed), so its finishes keep reusing its unit while those
//! nodes wait; the rule bounds how far ahead a node gets, not who goes next. Nor does
//! it follow queue order across nodes: a node that alone can run an older job (its
//! pipelines, labels) gets a unit by this rule only as far as balance gives it one.
//! And jobs of keyed pipelines (`concurrency_key`) do not make a node wait
//! (their heads may be held back by their key's cap rather than the global one, and a
//! node waiting for a key that cannot run would hold every other node back). A keyed
//! claim still keeps to its fair room while others wait.

/// How long a node's wait counts after the claim that said so: three of the claim
/// loop's backstop polls (a waiting node claims at least that often, and on every
/// commit that frees a unit anywhere).
pub const WAIT_FRESH_MS: i64 = 3_000;

/// How old a node's wait may get before a claim that waits writes it again (a waiting
/// node claims often: each commit anywhere that frees a unit wakes it).
pub const WAIT_REFRESH_MS: i64 = 1_000;

/// How many more units a node holding `mine` may take while other nodes wait, the
/// fewest of them holding `fewest_waiting`.
pub fn fair_room(mine: usize, fewest_waiting: usize) -> usize {
    (fewest_waiting + 1).saturating_sub(mine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_may_get_one_unit_ahead_of_the_poorest_waiting_node_no_further() {
        assert_eq!(fair_room(4, 0), 0, "far ahead: takes nothing");
        assert_eq!(fair_room(1, 0), 0, "one ahead already");
        assert_eq!(fair_room(0, 0), 1, "level: one unit");
        assert_eq!(
            fair_room(1, 3),
            3,
            "behind: up to one past the poorest waiter"
        );
    }
}
