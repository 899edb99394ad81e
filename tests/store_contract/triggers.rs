//! Idempotency keys: a reused key answers with the first run (keys are per pipeline),
//! and an idempotent retry lists the run's shards even when its finalizer is queued.

use runyard::store::{Outcome, RunCreateParams};

use crate::factory::Factory;
use crate::fixtures::*;

pub async fn a_reused_idempotency_key_returns_the_first_run(f: &Factory) {
    let store = f.store().await;
    let trigger = |pipeline: &str, value: &str| {
        let mut p = run_params(pipeline, 2);
        p.idempotency_key = Some("k".into());
        p.params = [("v".to_string(), value.to_string())].into();
        p
    };
    let first = store.run_create(trigger("p", "1")).await.unwrap();
    assert!(!first.existing);
    assert_eq!(first.existing_params, None);
    let again = store.run_create(trigger("p", "2")).await.unwrap();
    assert!(again.existing);
    assert_eq!(
        (&again.run_id, &again.job_ids, again.created_at),
        (&first.run_id, &first.job_ids, first.created_at)
    );
    assert_eq!(
        again.existing_params,
        Some([("v".to_string(), "1".to_string())].into()),
        "the first run's parameters, to tell a reused key from a retry"
    );
    let elsewhere = store.run_create(trigger("q", "1")).await.unwrap();
    assert!(!elsewhere.existing, "keys are per pipeline");
    assert_ne!(elsewhere.run_id, first.run_id);
}

/// An idempotent retry answers with the run's shard job ids, the same on every
/// backend, whether or not its finalizer is queued (SQLite listed the finalizer too, so
/// the scheduler answered the same request 409 there and 202 on PostgreSQL).
pub async fn an_idempotent_retry_lists_the_shards_even_with_a_finalizer_queued(f: &Factory) {
    let store = f.store().await;
    let params = RunCreateParams {
        has_finalizer: true,
        idempotency_key: Some("k-fin".into()),
        ..run_params("p", 2)
    };
    let first = store.run_create(params.clone()).await.unwrap();
    for job in store.job_claim(claim(2)).await.unwrap().jobs {
        assert!(
            store
                .job_finish(finish(&job, Outcome::Completed))
                .await
                .unwrap()
                .applied
        );
    }
    let run = store.run_get(&first.run_id).await.unwrap().unwrap();
    assert!(run.finalizer.is_some(), "the finalizer is queued");
    let again = store
        .run_create(RunCreateParams {
            run_id: runyard::model::RunId::new().to_string(),
            ..params
        })
        .await
        .unwrap();
    assert!(again.existing);
    assert_eq!(again.run_id, first.run_id);
    assert_eq!(
        again.job_ids, first.job_ids,
        "the shards, not the finalizer"
    );
}
