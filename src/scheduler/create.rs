//! Creating a run durably, whatever the store answers.
//!
//! A trigger (and a re-run) writes its run in one transaction. When PostgreSQL loses
//! the answer to that COMMIT, the run may exist or not; a client must never hear 503
//! for a run that was created. The run's id is made here, so reading it back settles
//! the question (test: `postgres_store::commits_whose_answer_is_lost_create_start_and_log_nothing_twice`).

use std::sync::Arc;

use crate::store::{RunCreateParams, Store, StoreError};

/// Creates a run, resolving a commit whose answer was lost: the run is read
/// back by its id (made here, so only this request could have written it) and reported
/// created when it exists — a created run is never answered 503 — or created again when
/// it does not (the lost commit did not happen; an idempotency key still dedupes).
pub(super) async fn create_run(
    store: &Arc<dyn Store>,
    params: RunCreateParams,
) -> Result<crate::store::RunCreated, StoreError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match store.run_create(params.clone()).await {
            Err(e) if e.is_ambiguous() && tries < 3 => {
                tracing::warn!(run = %params.run_id, "the run's commit answer was lost; reading it back: {e}");
                if read_back_run(store, &params.run_id).await? {
                    return Ok(crate::store::RunCreated {
                        run_id: params.run_id,
                        job_ids: params.job_ids,
                        created_at: params.now,
                        existing: false,
                        existing_params: None,
                        paused: None,
                        // Read back, the run existed; whether its needs released it
                        // since is not known here (`waiting` is what it was created as).
                        after_status: (!params.options.after.is_empty())
                            .then_some(crate::model::RunStatus::Waiting),
                    });
                }
            }
            other => return other,
        }
    }
}

/// Whether run `run_id` exists, asked until the store answers (at most ~2 s).
async fn read_back_run(store: &Arc<dyn Store>, run_id: &str) -> Result<bool, StoreError> {
    read_back(|| async { Ok(store.run_get(run_id).await?.is_some()) }).await
}

/// Whether what a lost commit may have written exists (`exists` reads it by the id made
/// before the write), asked until the store answers (at most ~2 s): a run's, and a
/// workflow run's.
pub(super) async fn read_back<F, Fut>(mut exists: F) -> Result<bool, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, StoreError>>,
{
    let mut delay = std::time::Duration::from_millis(50);
    let mut tries = 0;
    loop {
        match exists().await {
            Ok(found) => return Ok(found),
            Err(e) if e.is_unavailable() && tries < 6 => {
                tries += 1;
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(e),
        }
    }
}
