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
//! `basic` holds the contract step by step; `races` the races that one SQLite writer
//! passes trivially and PostgreSQL can lose (caps under concurrent claims, the last two
//! shards together, identical idempotent triggers, a reader following the event cursor,
//! stale executions, abort × finish × start).
//!
//! Run one backend with `cargo test --test store_contract postgres::`.

#[path = "store_contract/basic.rs"]
mod basic;
#[path = "store_contract/batches.rs"]
mod batches;
#[path = "store_contract/factory.rs"]
mod factory;
#[path = "store_contract/fixtures.rs"]
mod fixtures;
#[path = "store_contract/keyed.rs"]
mod keyed;
#[path = "store_contract/peers.rs"]
mod peers;
#[path = "store_contract/races.rs"]
mod races;

use basic::*;
use batches::*;
use keyed::*;
use peers::*;
use races::*;

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
        a_retried_shard_holds_the_run_open_until_it_ends_for_good,
        an_append_retried_after_its_commit_adds_nothing,
        a_start_recorded_twice_emits_one_started_event,
        an_idempotent_retry_lists_the_shards_even_with_a_finalizer_queued,
        a_finalizer_runs_once_after_every_shard_and_gates_the_run,
        an_aborted_run_still_gets_its_finalizer_and_stays_aborted,
        a_terminal_run_with_a_callback_has_exactly_one_outbox_row,
        stale_and_repeated_finishes_change_nothing,
        abort_racing_a_natural_finish_ends_each_job_exactly_once,
        orphan_requeue_keeps_the_attempt_and_is_capped,
        claims_respect_pipeline_and_global_caps_and_retry_delays,
        a_capped_backlog_does_not_hold_up_other_pipelines_and_order_is_fifo,
        only_registered_nodes_claim_and_stranded_jobs_are_found,
        a_dead_nodes_row_is_removed_only_on_the_heartbeat_it_was_judged_by,
        prune_removes_old_finished_runs_and_keeps_live_ones,
        pruning_every_event_still_reports_what_was_pruned,
        output_lines_are_numbered_per_job_and_logs_keep_the_tail,
        a_heartbeat_names_the_executions_its_node_must_stop,
        runs_list_filters_by_pipeline_and_status_newest_first,
        node_setup_state_is_kept_per_node_and_pipeline,
        a_reused_idempotency_key_returns_the_first_run,
        a_start_after_an_abort_learns_of_it_and_does_not_revive_the_run,
        run_ids_by_prefix_range_scans_the_ids_that_start_with_it,
        a_runs_events_come_without_progress_and_output_keeps_its_execution_and_time,
        runs_are_filtered_by_id_prefix_suffix_parameter_and_actor,
        stats_count_runs_by_the_bucket_they_finished_in,
        concurrent_claimers_never_exceed_the_global_or_a_pipeline_cap,
        claimers_with_and_without_a_global_cap_never_exceed_a_pipeline_cap,
        last_two_shards_finishing_together_finalise_the_run_exactly_once,
        a_hundred_concurrent_identical_triggers_make_one_run,
        a_reader_following_events_sees_each_exactly_once_in_id_order,
        a_stale_executions_output_and_finish_change_nothing,
        abort_finish_and_start_racing_on_one_run_never_deadlock,
        an_abort_racing_the_finalizers_end_wins,
        exit_codes_the_pipeline_does_not_retry_fail_at_once,
        a_paused_pipeline_is_claimed_by_no_node_until_resumed,
        a_rerun_of_failed_shards_keeps_the_others_and_the_finalizer_sees_all,
        higher_priorities_are_claimed_first_and_fifo_within_one_over_every_pipeline,
        a_delayed_run_is_held_until_its_time_and_released_by_the_claim,
        a_schedule_tick_fires_once_however_many_nodes_race_for_it,
        a_batch_fences_each_end_on_its_own_and_lands_each_run_once,
        an_end_that_cannot_be_stored_does_not_fail_its_batch,
        ends_batched_on_two_handles_land_every_run_exactly_once,
        writes_are_counted_by_operation,
        concurrent_claimers_never_exceed_a_per_key_cap,
        a_small_tenant_is_not_kept_behind_a_large_ones_backlog,
    ]
);
