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
//! **Turns.** With fewer units than nodes wanting them, "one ahead" alone let a node
//! holding one unit take the next whenever the poorest waiting node held none, so its
//! finishes reused its unit while that node waited — for ever, if only that node could
//! run its jobs (its pipelines, its labels). So each waiting node has a place in line
//! (`nodes.cap_wait_since`): when its wait began, moved to the back by a claim that
//! gives it a unit and by an end of its own that frees one. The one unit ahead is
//! allowed only while no waiting node holding the fewest has waited [`TURN_MS`] longer
//! than it: after that, a node level with it lets the unit its end frees go, and the
//! waiting node takes its turn. A short wait costs no turn, so under a busy cap units
//! change hands only as often as a turn falls due, not on every end.
//!
//! **Invariant (turns):** a node waiting for the cap, holding the fewest units of the
//! waiting nodes and waiting longest, is not passed by a level node's claim once it has
//! waited [`TURN_MS`]. Caught by
//! `store_contract::*::level_nodes_take_turns_when_the_cap_is_smaller_than_the_nodes_waiting`.
//!
//! Not covered: queue order across nodes. A node that alone can run an older job gets
//! a unit by this rule as balance and turns give it one, not by the job's age.
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

/// How long the longest-waiting node among those holding the fewest units waits before
/// a node level with it may no longer take a unit one past it: its turn.
pub const TURN_MS: i64 = 250;

/// How many more units a node holding `mine` may take while other nodes wait, the
/// fewest of them holding `fewest_waiting`; `their_turn`: one of those has waited
/// [`TURN_MS`] and longer than this node.
pub fn fair_room(mine: usize, fewest_waiting: usize, their_turn: bool) -> usize {
    (fewest_waiting + usize::from(!their_turn)).saturating_sub(mine)
}

/// Whether a waiting node whose place in line began at `since` has its turn before a
/// node whose place began at `mine`, at `now`.
pub fn has_turn(since: Option<i64>, mine: i64, now: i64) -> bool {
    since.is_some_and(|since| since <= now - TURN_MS && since < mine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_may_get_one_unit_ahead_of_the_poorest_waiting_node_no_further() {
        assert_eq!(fair_room(4, 0, false), 0, "far ahead: takes nothing");
        assert_eq!(fair_room(1, 0, false), 0, "one ahead already");
        assert_eq!(fair_room(0, 0, false), 1, "level: one unit");
        assert_eq!(
            fair_room(1, 3, false),
            3,
            "behind: up to one past the poorest waiter"
        );
    }

    #[test]
    fn a_node_level_with_one_whose_turn_it_is_takes_only_what_keeps_it_level() {
        assert_eq!(fair_room(0, 0, true), 0, "level: the unit is theirs");
        assert_eq!(fair_room(0, 2, true), 2, "behind: up to level");
        assert!(has_turn(Some(0), 1_000, TURN_MS), "waited a turn, longer");
        assert!(!has_turn(Some(1), 1_000, TURN_MS), "not a whole turn yet");
        assert!(!has_turn(Some(0), 0, 1_000), "not longer than this node");
        assert!(!has_turn(None, 1_000, 1_000), "no place in line");
    }
}
