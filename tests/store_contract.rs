//! The store conformance suite: every test of the [`Store`](runyard::store::Store)
//! contract, written once against the trait and run on each backend.
//!
//! - `sqlite::*`: a fresh temp file per test; several handles on one file are several
//!   `SqliteStore`s, each with its own writer thread (the multi-process mode).
//! - `postgres::*`: a fresh schema `rt_{pid}_{n}` per test in `TEST_DATABASE_URL`, dropped
//!   at the end of the test (schemas of runs that died are swept at first use); several
//!   handles are several `PgStore`s with pools of their own. Without `TEST_DATABASE_URL`
//!   each test prints `SKIPPED(service)` and returns (CI fails on that marker).
//!
//! The contract step by step, by area (in `store_contract/`):
//!
//! - `finalization.rs`: how a run ends: retried shards, the finalizer, the webhook outbox.
//! - `claims.rs`: caps, retry delays, queue order, registered nodes, orphans, stranded jobs.
//! - `fencing.rs`: stale and repeated finishes and starts, an abort racing a finish or
//!   preceding a start, the executions a heartbeat tells its node to stop.
//! - `output.rs`: output lines, logs and their tail, appends and their retries, a run's events.
//! - `queries.rs`: runs lists and filters, run ids by prefix, stats.
//! - `maintenance.rs`: pruning, each node's setup state, a dead node's row.
//! - `triggers.rs`: idempotency keys and idempotent retries.
//! - `scheduling.rs`: exit-code retry rules, pauses, re-runs, delayed runs, priorities,
//!   schedules.
//! - `batches.rs`: ends written in batches; `keyed.rs`: per-key caps.
//!
//! The races that one SQLite writer passes trivially and PostgreSQL can lose, each on
//! separate handles: `races_caps.rs` (concurrent claimers against the caps),
//! `races_runs.rs` (identical idempotent triggers, the last two shards together,
//! abort × finish × start, an abort against the finalizer's end) and `races_writers.rs`
//! (a reader following the event cursor, a stale execution writing beside the new one).
//! `factory.rs` makes the stores; `fixtures.rs` holds the shared builders and helpers.
//!
//! `postgres_faults::` holds what only PostgreSQL can suffer (a lost connection, a
//! serialization failure inside a batch). Run one backend with `cargo test --test
//! store_contract postgres::`.

#[path = "store_contract/after.rs"]
mod after;
#[path = "store_contract/batches.rs"]
mod batches;
#[path = "store_contract/cap_share.rs"]
mod cap_share;
#[path = "store_contract/claims.rs"]
mod claims;
#[path = "store_contract/factory.rs"]
mod factory;
#[path = "store_contract/fencing.rs"]
mod fencing;
#[path = "store_contract/finalization.rs"]
mod finalization;
#[path = "store_contract/fixtures.rs"]
mod fixtures;
#[path = "store_contract/keyed.rs"]
mod keyed;
#[path = "store_contract/maintenance.rs"]
mod maintenance;
#[path = "store_contract/output.rs"]
mod output;
#[path = "store_contract/queries.rs"]
mod queries;
#[path = "store_contract/races_caps.rs"]
mod races_caps;
#[path = "store_contract/races_runs.rs"]
mod races_runs;
#[path = "store_contract/races_writers.rs"]
mod races_writers;
#[path = "store_contract/scheduling.rs"]
mod scheduling;
#[path = "store_contract/triggers.rs"]
mod triggers;
#[path = "store_contract/workflows.rs"]
mod workflows;

use after::*;
use batches::*;
use cap_share::*;
use claims::*;
use fencing::*;
use finalization::*;
use keyed::*;
use maintenance::*;
use output::*;
use queries::*;
use races_caps::*;
use races_runs::*;
use races_writers::*;
use scheduling::*;
use triggers::*;
use workflows::*;

/// One test, however slow the machine, finishes within this or fails.
const TEST_LIMIT: std::time::Duration = std::time::Duration::from_secs(180);

/// `contract_tests!(backend => factory, …; [test, …])` makes `mod backend { #[tokio::test]
/// fn test() }` for every backend and test: the test body `test(&Factory)` runs on a fresh
/// store from `factory()`, whose cleanup runs after it even when it panics or times out.
macro_rules! contract_tests {
    ($($backend:ident => $factory:path),+ ; $tests:tt) => {
        $( contract_tests!(@backend $backend, $factory, $tests); )+
    };
    (@backend $backend:ident, $factory:path, [$($test:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    crate::fixtures::count_retries();
                    let Some(f) = $factory().await else { return };
                    let outcome = futures_util::FutureExt::catch_unwind(
                        std::panic::AssertUnwindSafe(tokio::time::timeout(
                            crate::TEST_LIMIT,
                            super::$test(&f),
                        )),
                    )
                    .await;
                    f.cleanup().await;
                    match outcome {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => panic!(
                            "{} did not finish within {:?} on {}",
                            stringify!($test),
                            crate::TEST_LIMIT,
                            f.name()
                        ),
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                }
            )*
        }
    };
}

contract_tests!(
    sqlite => crate::factory::sqlite_factory,
    postgres => crate::factory::pg_factory;
    [
        // after.rs
        a_run_after_others_waits_unclaimable_and_is_released_once_they_complete,
        a_need_that_fails_skips_the_dependent_the_skip_cascades_and_rules_pick_the_others,
        an_aborted_waiting_run_ends_aborted_and_skips_its_own_dependents,
        a_run_after_ended_runs_is_decided_at_creation_and_unknown_needs_are_refused,
        two_needs_ending_at_once_on_two_handles_release_their_dependent_once,
        // workflows.rs
        a_workflow_run_creates_every_step_at_once_and_settles_once_when_its_last_step_ends,
        an_aborted_workflow_run_ends_aborted_once_its_step_runs_ended,
        two_step_runs_ending_at_once_on_two_handles_release_their_join_and_settle_once,
        // finalization.rs
        a_retried_shard_holds_the_run_open_until_it_ends_for_good,
        a_finalizer_runs_once_after_every_shard_and_gates_the_run,
        an_aborted_run_still_gets_its_finalizer_and_stays_aborted,
        a_terminal_run_with_a_callback_has_exactly_one_outbox_row,
        // claims.rs
        claims_respect_pipeline_and_global_caps_and_retry_delays,
        a_capped_backlog_does_not_hold_up_other_pipelines_and_order_is_fifo,
        only_registered_nodes_claim_and_stranded_jobs_are_found,
        orphan_requeue_keeps_the_attempt_and_is_capped,
        every_way_a_job_stops_running_frees_its_global_cap_unit,
        // cap_share.rs
        a_node_waiting_for_the_global_cap_gets_its_share_of_the_units,
        level_nodes_take_turns_when_the_cap_is_smaller_than_the_nodes_waiting,
        a_node_waiting_with_keyed_work_gets_its_turn_and_a_key_at_its_cap_is_no_wait,
        an_end_wakes_other_claimers_only_when_it_leaves_a_unit_free,
        // fencing.rs
        stale_and_repeated_finishes_change_nothing,
        abort_racing_a_natural_finish_ends_each_job_exactly_once,
        a_start_after_an_abort_learns_of_it_and_does_not_revive_the_run,
        a_start_recorded_twice_emits_one_started_event,
        a_heartbeat_names_the_executions_its_node_must_stop,
        // output.rs
        output_lines_are_numbered_per_job_and_logs_keep_the_tail,
        an_append_retried_after_its_commit_adds_nothing,
        a_runs_events_come_without_progress_and_output_keeps_its_execution_and_time,
        // queries.rs
        runs_list_filters_by_pipeline_and_status_newest_first,
        runs_are_filtered_by_id_prefix_suffix_parameter_and_actor,
        run_ids_by_prefix_range_scans_the_ids_that_start_with_it,
        stats_count_runs_by_the_bucket_they_finished_in,
        // maintenance.rs
        prune_removes_old_finished_runs_and_keeps_live_ones,
        pruning_every_event_still_reports_what_was_pruned,
        node_setup_state_is_kept_per_node_and_pipeline,
        a_dead_nodes_row_is_removed_only_on_the_heartbeat_it_was_judged_by,
        // triggers.rs
        a_reused_idempotency_key_returns_the_first_run,
        an_idempotent_retry_lists_the_shards_even_with_a_finalizer_queued,
        triggers_arriving_together_are_each_stored_once_and_one_bad_fails_alone,
        // scheduling.rs
        exit_codes_the_pipeline_does_not_retry_fail_at_once,
        a_paused_pipeline_is_claimed_by_no_node_until_resumed,
        a_rerun_of_failed_shards_keeps_the_others_and_the_finalizer_sees_all,
        higher_priorities_are_claimed_first_and_fifo_within_one_over_every_pipeline,
        a_delayed_run_is_held_until_its_time_and_released_by_the_claim,
        a_schedule_tick_fires_once_however_many_nodes_race_for_it,
        // batches.rs
        a_batch_fences_each_end_on_its_own_and_lands_each_run_once,
        an_end_that_cannot_be_stored_does_not_fail_its_batch,
        ends_batched_on_two_handles_land_every_run_exactly_once,
        writes_are_counted_by_operation,
        // keyed.rs
        concurrent_claimers_never_exceed_a_per_key_cap,
        concurrent_keyed_claimers_never_exceed_the_global_cap,
        a_small_tenant_is_not_kept_behind_a_large_ones_backlog,
        a_keyed_claim_under_the_global_cap_takes_and_gives_back_its_units,
        // races_caps.rs
        concurrent_claimers_never_exceed_the_global_or_a_pipeline_cap,
        claimers_with_and_without_a_global_cap_never_exceed_a_pipeline_cap,
        // races_runs.rs
        a_hundred_concurrent_identical_triggers_make_one_run,
        last_two_shards_finishing_together_finalise_the_run_exactly_once,
        abort_finish_and_start_racing_on_one_run_never_deadlock,
        an_abort_racing_the_finalizers_end_wins,
        // races_writers.rs
        a_reader_following_events_sees_each_exactly_once_in_id_order,
        a_stale_executions_output_and_finish_change_nothing,
    ]
);

// Faults only PostgreSQL has: a connection to lose, a serialization race to fail (SQLite's
// one writer thread has neither).
contract_tests!(
    postgres_faults => crate::factory::pg_factory;
    [
        // batches.rs
        a_batch_failing_by_serialization_or_a_lost_connection_loses_and_doubles_no_end,
        // triggers.rs
        plain_triggers_whose_connection_is_lost_are_stored_exactly_when_answered_so,
    ]
);
