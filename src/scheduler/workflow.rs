//! Workflow runs: a trigger of a configured workflow checked (its parameters, each step's
//! rendered parameters against its pipeline, the callback URL) and written as one
//! workflow run plus every step's run in one transaction; a re-run that keeps the
//! completed steps; an abort of every step run, dependents first.
//!
//! The graph's rules live in the store and the model: a step is a run `after` its needs'
//! runs (released exactly once where the last need ends, [`crate::store::after`]), and
//! the workflow run settles exactly once where its last step run ends
//! ([`crate::model::settle`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::trigger::{concurrency_key_of, policy_of, resolve_params};
use super::{AbortedBy, Scheduler, TriggerError, valid_idempotency_key};
use crate::config::{Workflow, WorkflowStep as ConfigStep};
use crate::metrics::Metrics;
use crate::model::{RunId, RunStatus, WorkflowStep, job_id_for};
use crate::store::{
    RunCreateParams, RunOptions, StoreError, WorkflowAbortMark, WorkflowCreateParams,
    WorkflowCreated, WorkflowRunRecord,
};

/// A workflow trigger, as the API or CLI hands it over.
#[derive(Debug, Clone, Default)]
pub struct WorkflowTriggerRequest {
    /// Workflow name.
    pub workflow: String,
    /// Raw values of the workflow's parameters.
    pub parameters: serde_json::Map<String, Value>,
    /// Idempotency key (per workflow).
    pub idempotency_key: Option<String>,
    /// `workflow.completed` webhook target.
    pub callback_url: Option<String>,
    /// `api`, `cli`, `dashboard`.
    pub triggered_by: String,
    /// Who triggered (the token's label), when the API knows.
    pub actor: Option<String>,
}

/// A created (or replayed) workflow run.
#[derive(Debug, Clone)]
pub struct WorkflowTriggered {
    /// Its id.
    pub workflow_run_id: String,
    /// The workflow.
    pub workflow: String,
    /// Each step with its run id.
    pub steps: Vec<WorkflowStep>,
    /// Creation time (epoch ms).
    pub created_at: i64,
    /// An earlier trigger with the same key made it.
    pub existing: bool,
}

/// What aborting a workflow run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkflowAbort {
    /// No such workflow run.
    NotFound,
    /// It had ended already, so.
    Finished(crate::model::WorkflowStatus),
    /// Marked; these step runs were aborted now (others had ended).
    Aborted {
        /// Step runs this call aborted.
        runs: Vec<String>,
    },
}

impl Scheduler {
    /// Validates a workflow trigger and creates its run and every step's run durably.
    pub async fn trigger_workflow(
        &self,
        req: WorkflowTriggerRequest,
    ) -> Result<WorkflowTriggered, TriggerError> {
        let settings = &self.inner.settings;
        let Some(workflow) = settings.workflows.get(&req.workflow).cloned() else {
            return Err(TriggerError::UnknownWorkflow(
                req.workflow.chars().take(100).collect(),
            ));
        };
        let params = resolve_params(&workflow.params, &req.parameters)?;
        if let Some(key) = &req.idempotency_key
            && !valid_idempotency_key(key)
        {
            return Err(TriggerError::Unsupported(
                super::IDEMPOTENCY_KEY_RULE.into(),
            ));
        }
        if let Some(url) = &req.callback_url {
            self.check_callback(url).await?;
        }
        let plan = Plan {
            workflow: &workflow,
            step_params: &|step| Ok(workflow.step_params(step, &params)),
            kept: &BTreeMap::new(),
        };
        let p = self.plan(
            plan,
            params.clone(),
            req.idempotency_key.clone(),
            req.triggered_by,
            req.actor,
            req.callback_url,
            None,
        )?;
        let created = self.create_workflow(p).await?;
        if created.existing && created.existing_params.as_ref() != Some(&params) {
            return Err(TriggerError::IdempotencyConflict {
                key: req.idempotency_key.unwrap_or_default(),
                run_id: created.workflow_run_id,
            });
        }
        Ok(WorkflowTriggered {
            workflow_run_id: created.workflow_run_id,
            workflow: workflow.name.clone(),
            steps: created.steps,
            created_at: created.created_at,
            existing: created.existing,
        })
    }

    /// Re-runs a finished workflow run as a new one (`rerunOf`). With `only_failed`, the
    /// steps whose run completed — and whose needs are all kept — are kept (their runs
    /// are the new workflow run's too, and their results flow on); the rest run again,
    /// with the parameters they had.
    pub async fn rerun_workflow(
        &self,
        id: &str,
        only_failed: bool,
        triggered_by: String,
        actor: Option<String>,
    ) -> Result<WorkflowTriggered, TriggerError> {
        let store = &self.inner.store;
        let Some(original) = store.workflow_run_get(id).await? else {
            return Err(TriggerError::WorkflowRunNotFound(id.to_string()));
        };
        if original.finished_at.is_none() {
            return Err(TriggerError::WorkflowNotFinished {
                id: original.id.clone(),
                status: original.shown_status().as_str().to_string(),
            });
        }
        let Some(workflow) = self
            .inner
            .settings
            .workflows
            .get(&original.workflow)
            .cloned()
        else {
            return Err(TriggerError::UnknownWorkflow(original.workflow.clone()));
        };
        // A step is kept when its run completed and every step it needs is kept too (the
        // steps are stored needs first): a step after one that runs again runs again,
        // since what it read may change.
        let mut kept: BTreeMap<String, String> = BTreeMap::new();
        if only_failed {
            for s in &original.steps {
                let completed = original
                    .run_of(s)
                    .is_some_and(|r| r.status == RunStatus::Completed);
                if completed && s.needs.iter().all(|n| kept.contains_key(n)) {
                    kept.insert(s.name.clone(), s.run_id.clone());
                }
            }
        }
        if workflow.steps.iter().all(|s| kept.contains_key(&s.name)) {
            return Err(TriggerError::NoStepToRerun(original.id.clone()));
        }
        // A step runs again with the parameters its run had (as a run's re-run does);
        // one whose run is gone gets them rendered from the workflow run's parameters.
        let mut had: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for step in &original.steps {
            if let Some(run) = store.run_get(&step.run_id).await? {
                had.insert(step.name.clone(), run.parameters);
            }
        }
        let params = original.params.clone();
        let step_params = |step: &ConfigStep| -> Result<BTreeMap<String, String>, TriggerError> {
            Ok(had
                .get(&step.name)
                .cloned()
                .unwrap_or_else(|| workflow.step_params(step, &params)))
        };
        let plan = Plan {
            workflow: &workflow,
            step_params: &step_params,
            kept: &kept,
        };
        let p = self.plan(
            plan,
            original.params.clone(),
            None,
            triggered_by,
            actor,
            original.callback_url.clone(),
            Some(original.id.clone()),
        )?;
        let created = self.create_workflow(p).await?;
        Ok(WorkflowTriggered {
            workflow_run_id: created.workflow_run_id,
            workflow: workflow.name.clone(),
            steps: created.steps,
            created_at: created.created_at,
            existing: false,
        })
    }

    /// Aborts a workflow run: marks it (its end will say `aborted`), then aborts each of
    /// its step runs not ended yet, dependents first, each as `POST /api/runs/{id}/abort`
    /// would (running shards are stopped on whichever node runs them).
    pub async fn abort_workflow(
        &self,
        id: &str,
        by: AbortedBy,
    ) -> Result<WorkflowAbort, StoreError> {
        let by_json = by.json(&self.inner.node, None);
        let mark = self
            .inner
            .store
            .workflow_abort_mark(id, Some(by_json))
            .await?;
        let runs = match mark {
            WorkflowAbortMark::NotFound => return Ok(WorkflowAbort::NotFound),
            WorkflowAbortMark::Finished(s) => return Ok(WorkflowAbort::Finished(s)),
            WorkflowAbortMark::Marked { runs } => runs,
        };
        Metrics::add(&self.inner.metrics.workflow_aborts, 1);
        let mut aborted = Vec::new();
        for run in runs {
            if let crate::store::AbortOutcome::Aborted { .. } = self.abort(&run, by.clone()).await?
            {
                aborted.push(run);
            }
        }
        Ok(WorkflowAbort::Aborted { runs: aborted })
    }

    /// One workflow run, by id.
    pub async fn workflow_run(&self, id: &str) -> Result<Option<WorkflowRunRecord>, StoreError> {
        self.inner.store.workflow_run_get(id).await
    }

    /// The workflow run's store input: every step's run, needs first; kept steps name
    /// their earlier run.
    #[allow(clippy::too_many_arguments)]
    fn plan(
        &self,
        plan: Plan<'_>,
        params: BTreeMap<String, String>,
        idempotency_key: Option<String>,
        triggered_by: String,
        actor: Option<String>,
        callback_url: Option<String>,
        rerun_of: Option<String>,
    ) -> Result<WorkflowCreateParams, TriggerError> {
        let settings = &self.inner.settings;
        let id = RunId::new().to_string();
        let now = self.inner.store.clock_ms();
        let mut steps: Vec<WorkflowStep> = Vec::new();
        let mut runs: Vec<RunCreateParams> = Vec::new();
        for step in &plan.workflow.steps {
            let needs_runs: Vec<String> = step
                .needs
                .iter()
                .filter_map(|n| steps.iter().find(|s| &s.name == n))
                .map(|s| s.run_id.clone())
                .collect();
            if let Some(run_id) = plan.kept.get(&step.name) {
                steps.push(record(step, run_id.clone(), true));
                continue;
            }
            let pipeline = settings.pipelines.get(&step.pipeline).ok_or_else(|| {
                TriggerError::UnknownWorkflow(format!(
                    "{}: step {} runs pipeline {}, which is no longer configured",
                    plan.workflow.name, step.name, step.pipeline
                ))
            })?;
            let given: serde_json::Map<String, Value> = (plan.step_params)(step)?
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            let step_params =
                resolve_params(&pipeline.params, &given).map_err(|e| TriggerError::BadStep {
                    step: step.name.clone(),
                    message: e.to_string(),
                })?;
            let run = RunId::new();
            let shards = pipeline.shards;
            runs.push(RunCreateParams {
                run_id: run.to_string(),
                job_ids: (0..shards).map(|i| job_id_for(run, i, shards)).collect(),
                pipeline: pipeline.name.clone(),
                triggered_by: triggered_by.clone(),
                actor: actor.clone(),
                idempotency_key: None,
                policy: policy_of(pipeline),
                has_finalizer: pipeline.finalizer.is_some(),
                callback_url: pipeline.callback_url.clone(),
                now,
                options: RunOptions {
                    priority: pipeline.priority,
                    concurrency_key: concurrency_key_of(pipeline, &step_params),
                    after: needs_runs,
                    after_when: step.when,
                    workflow: Some((id.clone(), step.name.clone())),
                    ..Default::default()
                },
                params: step_params,
            });
            steps.push(record(step, run.to_string(), false));
        }
        Ok(WorkflowCreateParams {
            workflow_run_id: id,
            workflow: plan.workflow.name.clone(),
            params,
            steps,
            runs,
            idempotency_key,
            triggered_by,
            actor,
            callback_url,
            rerun_of,
            now,
        })
    }

    /// Writes the workflow run; a commit whose answer was lost is read back by the
    /// workflow run's id (made here, so only this request could have written it), as
    /// `create.rs` does for a run.
    async fn create_workflow(
        &self,
        p: WorkflowCreateParams,
    ) -> Result<WorkflowCreated, TriggerError> {
        let store = &self.inner.store;
        let mut tries = 0;
        let created = loop {
            tries += 1;
            match store.workflow_create(p.clone()).await {
                Err(e) if e.is_ambiguous() && tries < 3 => {
                    tracing::warn!(workflow_run = %p.workflow_run_id, "the workflow run's commit answer was lost; reading it back: {e}");
                    let id = p.workflow_run_id.as_str();
                    let exists = || async { Ok(store.workflow_run_get(id).await?.is_some()) };
                    if super::create::read_back(exists).await? {
                        break WorkflowCreated {
                            workflow_run_id: p.workflow_run_id.clone(),
                            steps: p.steps.clone(),
                            created_at: p.now,
                            existing: false,
                            existing_params: None,
                        };
                    }
                }
                Err(StoreError::Conflict { message }) => {
                    return Err(TriggerError::BadAfter(message));
                }
                other => break other?,
            }
        };
        if !created.existing {
            Metrics::add(&self.inner.metrics.workflow_runs_created, 1);
        }
        Ok(created)
    }
}

/// A step's parameters as its run gets them.
type StepParams<'a> = &'a dyn Fn(&ConfigStep) -> Result<BTreeMap<String, String>, TriggerError>;

/// What a workflow run is made of: the workflow, each step's parameters, the kept steps.
struct Plan<'a> {
    workflow: &'a Arc<Workflow>,
    step_params: StepParams<'a>,
    /// Step name → the earlier run kept for it.
    kept: &'a BTreeMap<String, String>,
}

fn record(step: &ConfigStep, run_id: String, kept: bool) -> WorkflowStep {
    WorkflowStep {
        name: step.name.clone(),
        pipeline: step.pipeline.clone(),
        needs: step.needs.clone(),
        when: step.when,
        run_id,
        kept,
    }
}
