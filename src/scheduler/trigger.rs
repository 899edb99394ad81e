//! The trigger path: a request checked against its pipeline (parameters, shards,
//! callback URL, delay, priority, the setup circuit), its run and jobs queued durably
//! in one transaction (`create.rs` reads a lost commit answer back), and the re-run and
//! pause of what exists. Nothing is acknowledged before it is committed.

use std::collections::BTreeMap;

use serde_json::Value;

use super::create::create_run;
use super::request::MAX_AFTER;
use super::{
    IDEMPOTENCY_KEY_RULE, RerunScope, Scheduler, TriggerError, TriggerRequest, Triggered,
    placement, setup, valid_idempotency_key,
};
use crate::config::{MAX_SHARDS, Pipeline};
use crate::model::{RunId, RunStatus, job_id_for};
use crate::store::{JobPolicy, PipelinePauseParams, RunCreateParams, StoreError};

impl Scheduler {
    /// Validates a trigger and queues the run durably.
    pub async fn trigger(&self, req: TriggerRequest) -> Result<Triggered, TriggerError> {
        let settings = &self.inner.settings;
        let Some(pipeline) = settings.pipelines.get(&req.pipeline) else {
            return Err(TriggerError::UnknownPipeline {
                name: req.pipeline.chars().take(100).collect(),
                supported: settings
                    .pipelines
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let params = resolve_params(&pipeline.params, &req.parameters)?;
        let shards = req.shards.unwrap_or(pipeline.shards);
        if shards == 0 || shards > MAX_SHARDS {
            return Err(TriggerError::BadShards);
        }
        // One rule for the body field and the `Idempotency-Key` header: what a header can
        // carry (visible ASCII and space; no control characters, which NUL-hating
        // PostgreSQL text could not even store), 1 to 200 of them.
        if let Some(key) = &req.idempotency_key
            && !valid_idempotency_key(key)
        {
            return Err(TriggerError::Unsupported(IDEMPOTENCY_KEY_RULE.into()));
        }
        let idempotency_key = req.idempotency_key;
        let callback_url = req.callback_url.or_else(|| pipeline.callback_url.clone());
        if let Some(url) = &callback_url {
            self.check_callback(url).await?;
        }
        if pipeline.setup.is_some() {
            self.refuse_if_every_circuit_is_open(&pipeline.name).await?;
        }
        let run = RunId::new();
        let job_ids: Vec<String> = (0..shards).map(|i| job_id_for(run, i, shards)).collect();
        let wanted_params = params.clone();
        let now = self.inner.store.clock_ms();
        let retention = settings.server.retention.as_millis() as i64;
        let not_before =
            placement::not_before(req.delay.as_deref(), req.run_at.as_deref(), now, retention)
                .map_err(TriggerError::BadPlacement)?;
        let priority = placement::priority(req.priority, pipeline.priority)
            .map_err(TriggerError::BadPlacement)?;
        let after = checked_after(req.after, not_before)?;
        let waits = !after.is_empty();
        let options = crate::store::RunOptions {
            not_before,
            priority,
            concurrency_key: concurrency_key_of(pipeline, &params),
            after,
            after_when: req.after_when,
            ..Default::default()
        };
        let created = create_run(
            &self.inner.store,
            RunCreateParams {
                run_id: run.to_string(),
                job_ids,
                pipeline: pipeline.name.clone(),
                params,
                triggered_by: req.triggered_by,
                actor: req.actor,
                idempotency_key: idempotency_key.clone(),
                policy: policy_of(pipeline),
                has_finalizer: pipeline.finalizer.is_some(),
                callback_url,
                now,
                options,
            },
        )
        .await
        .map_err(|e| match e {
            // The store found a run in `after` gone (pruned since the API resolved it).
            StoreError::Conflict { message } if waits => TriggerError::BadAfter(message),
            e => TriggerError::Store(e),
        })?;
        let reused = created.existing
            && (created.existing_params.as_ref() != Some(&wanted_params)
                || created.job_ids.len() != shards as usize);
        if reused {
            return Err(TriggerError::IdempotencyConflict {
                key: idempotency_key.unwrap_or_default(),
                run_id: created.run_id,
            });
        }
        // Read with the run's insert (or after it): a pause that committed before that
        // read is reported; one racing it may not be (the run waits either way).
        let paused = match created.paused {
            Some(paused) => paused,
            None => self.is_paused(&pipeline.name).await?,
        };
        let status = match created.after_status {
            Some(status) => status,
            // A replay answers with the first run as it is now (it may be waiting).
            None if created.existing => self
                .inner
                .store
                .run_get(&created.run_id)
                .await?
                .and_then(|r| r.status.parse().ok())
                .unwrap_or(RunStatus::Queued),
            None => RunStatus::Queued,
        };
        Ok(Triggered {
            run_id: created.run_id,
            job_ids: created.job_ids,
            pipeline: pipeline.name.clone(),
            created_at: created.created_at,
            existing: created.existing,
            paused,
            run_at: not_before,
            status,
        })
    }

    /// Re-runs a finished run as a new run (`rerunOf`): same pipeline, parameters, shard
    /// count and callback; the pipeline's current policy. With [`RerunScope::Failed`] the
    /// completed shards are kept (see [`crate::store::rerun`]). The original is never changed.
    pub async fn rerun(
        &self,
        run_id: &str,
        scope: RerunScope,
        triggered_by: String,
        actor: Option<String>,
    ) -> Result<Triggered, TriggerError> {
        let store = &self.inner.store;
        let Some(original) = store.run_get(run_id).await? else {
            return Err(TriggerError::RunNotFound(run_id.to_string()));
        };
        if original.finished_at.is_none() {
            return Err(TriggerError::NotFinished {
                run_id: original.run_id,
                status: original.status,
            });
        }
        let settings = &self.inner.settings;
        let Some(pipeline) = settings.pipelines.get(&original.pipeline_id) else {
            return Err(TriggerError::UnknownPipeline {
                name: original.pipeline_id.clone(),
                supported: settings
                    .pipelines
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let shards = original.shard_count;
        let run = RunId::new();
        let job_ids: Vec<String> = (0..shards).map(|i| job_id_for(run, i, shards)).collect();
        let kept: Vec<crate::store::rerun::KeptShard> = match scope {
            RerunScope::All => Vec::new(),
            RerunScope::Failed => original
                .jobs
                .iter()
                .filter(|j| crate::store::rerun::keeps(&j.status))
                .map(|j| crate::store::rerun::KeptShard {
                    shard_index: j.shard_index,
                    job_id: job_ids[j.shard_index as usize].clone(),
                    from_job: j.id.clone(),
                })
                .collect(),
        };
        if kept.len() == shards as usize {
            return Err(TriggerError::NothingToRerun(original.run_id));
        }
        let created = create_run(
            store,
            RunCreateParams {
                run_id: run.to_string(),
                job_ids,
                pipeline: pipeline.name.clone(),
                params: original.parameters.clone(),
                triggered_by,
                actor,
                idempotency_key: None,
                policy: policy_of(pipeline),
                has_finalizer: pipeline.finalizer.is_some(),
                callback_url: original.callback_url.clone(),
                now: store.clock_ms(),
                options: crate::store::RunOptions {
                    rerun_of: Some(original.run_id.clone()),
                    kept,
                    not_before: None,
                    priority: original.priority,
                    scheduled_for: None,
                    concurrency_key: concurrency_key_of(pipeline, &original.parameters),
                    ..Default::default()
                },
            },
        )
        .await?;
        let paused = match created.paused {
            Some(paused) => paused,
            None => self.is_paused(&pipeline.name).await?,
        };
        Ok(Triggered {
            run_id: created.run_id,
            job_ids: created.job_ids,
            pipeline: pipeline.name.clone(),
            created_at: created.created_at,
            existing: false,
            paused,
            run_at: None,
            status: RunStatus::Queued,
        })
    }

    /// A completion webhook target checked against the URL policy (scheme, host,
    /// addresses), as a trigger must before it queues anything.
    pub(super) async fn check_callback(&self, url: &str) -> Result<(), TriggerError> {
        let Some(webhooks) = &self.inner.webhooks else {
            return Err(TriggerError::BadCallback(
                "webhook delivery is not available on this node".into(),
            ));
        };
        webhooks
            .validate(url)
            .await
            .map_err(|e| TriggerError::BadCallback(e.to_string()))
    }

    /// Pauses (`paused`) or resumes a configured pipeline for every node on the store;
    /// `Ok(None)` for an unknown pipeline, else whether the state changed.
    pub async fn pause(
        &self,
        pipeline: &str,
        paused: bool,
        actor: Option<String>,
    ) -> Result<Option<bool>, StoreError> {
        if !self.inner.settings.pipelines.contains_key(pipeline) {
            return Ok(None);
        }
        let changed = self
            .inner
            .store
            .pipeline_pause(PipelinePauseParams {
                pipeline: pipeline.to_string(),
                paused,
                actor,
                now: self.inner.store.clock_ms(),
            })
            .await?;
        if changed {
            tracing::info!(pipeline, paused, "pipeline pause state changed");
        }
        Ok(Some(changed))
    }

    /// Whether a pipeline is paused now (as the store says).
    pub async fn is_paused(&self, pipeline: &str) -> Result<bool, StoreError> {
        Ok(self
            .inner
            .store
            .pipelines_paused()
            .await?
            .iter()
            .any(|p| p.pipeline == pipeline))
    }

    /// 503 when the pipeline's setup circuit is open on every live node.
    async fn refuse_if_every_circuit_is_open(&self, pipeline: &str) -> Result<(), TriggerError> {
        let now = self.inner.store.clock_ms();
        let lease = 3 * self.inner.settings.server.heartbeat.as_millis() as i64;
        let live: Vec<String> = self
            .inner
            .store
            .nodes_list()
            .await?
            .into_iter()
            .filter(|n| now - n.heartbeat_at <= lease)
            .map(|n| n.id)
            .collect();
        let states = self.inner.store.pipeline_nodes_list().await?;
        match setup::all_open_retry_after(&states, &live, pipeline, now) {
            None => Ok(()),
            Some(retry_after) => Err(TriggerError::Unavailable {
                message: format!(
                    "Pipeline {pipeline} is unavailable: its setup failed repeatedly and its circuit is open on every live node ({}); retry in {}s",
                    live.len(),
                    retry_after.as_secs()
                ),
                retry_after,
            }),
        }
    }
}

/// A run's concurrency key: its pipeline's `concurrency_key` rendered with its
/// parameters (every placeholder is a declared parameter, so each has a value).
pub(super) fn concurrency_key_of(
    pipeline: &Pipeline,
    params: &std::collections::BTreeMap<String, String>,
) -> Option<String> {
    pipeline
        .concurrency_key
        .as_ref()
        .map(|t| t.render(|name| params.get(name).cloned()))
}

/// The retry and orphan rules a pipeline's new jobs are queued under.
pub(super) fn policy_of(pipeline: &Pipeline) -> JobPolicy {
    JobPolicy {
        max_attempts: pipeline.max_attempts,
        retry_backoff_ms: pipeline.retry_backoff.as_millis() as i64,
        on_orphan: pipeline.on_orphan.as_str(),
        max_orphan_requeues: pipeline.max_orphan_requeues,
        retry_on: pipeline.retry_on.clone(),
    }
}

/// Fills defaults and validates every parameter against its declaration (a pipeline's
/// or a workflow's).
pub(super) fn resolve_params(
    declared: &BTreeMap<String, crate::config::ParamSpec>,
    given: &serde_json::Map<String, Value>,
) -> Result<BTreeMap<String, String>, TriggerError> {
    if given.len() > 64 {
        return Err(TriggerError::Unsupported("at most 64 parameters".into()));
    }
    if let Some(undeclared) = given.keys().find(|k| !declared.contains_key(*k)) {
        return Err(TriggerError::UndeclaredParameter(
            undeclared.chars().take(100).collect(),
        ));
    }
    let mut out = BTreeMap::new();
    for (name, spec) in declared {
        let value = match given.get(name) {
            Some(v) => spec
                .accept(v)
                .map_err(|message| TriggerError::BadParameter {
                    name: name.clone(),
                    message,
                })?,
            None => spec
                .default
                .clone()
                .ok_or_else(|| TriggerError::MissingParameter(name.clone()))?,
        };
        out.insert(name.clone(), value);
    }
    Ok(out)
}

/// The runs a trigger waits for, deduplicated in id order: at most [`MAX_AFTER`], and
/// not with a delay (a waiting run goes when its needs have ended).
fn checked_after(
    mut after: Vec<String>,
    not_before: Option<i64>,
) -> Result<Vec<String>, TriggerError> {
    after.sort();
    after.dedup();
    if after.len() > MAX_AFTER {
        return Err(TriggerError::BadAfter(format!(
            "after names {} runs; at most {MAX_AFTER}",
            after.len()
        )));
    }
    if !after.is_empty() && not_before.is_some() {
        return Err(TriggerError::BadAfter(
            "after cannot be combined with delay or runAt".into(),
        ));
    }
    Ok(after)
}
