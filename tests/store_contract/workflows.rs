//! Workflow runs: every step's run is created at once, in one transaction, a step with
//! needs waiting for their runs; the workflow run settles (completed, failed, aborted)
//! exactly once, in the transaction that ends the last run it created, whichever
//! handle ends it; a replayed idempotency key creates nothing.

use std::collections::HashMap;
use std::sync::Arc;

use runyard::model::{AfterWhen, RunId, WorkflowStatus, WorkflowStep};
use runyard::store::{
    ClaimedJob, JobPolicy, Outcome, RunCreateParams, RunOptions, Store, WorkflowAbortMark,
    WorkflowCreateParams, WorkflowRunFilter,
};

use crate::factory::Factory;
use crate::fixtures::*;

/// A step: `(name, pipeline, shards, needs, when)`.
type Step<'a> = (&'a str, &'a str, u32, &'a [&'a str], AfterWhen);

/// `workflow_create` input for `steps` (needs first), each step's run in the pipeline
/// named by the step.
fn workflow(steps: &[Step<'_>], key: Option<&str>) -> WorkflowCreateParams {
    let id = RunId::new().to_string();
    let mut records: Vec<WorkflowStep> = Vec::new();
    let mut runs: Vec<RunCreateParams> = Vec::new();
    for (name, pipeline, shards, needs, when) in steps {
        let base = run_params(pipeline, *shards);
        let after = needs
            .iter()
            .map(|n| {
                records
                    .iter()
                    .find(|r| r.name == *n)
                    .unwrap()
                    .run_id
                    .clone()
            })
            .collect();
        records.push(WorkflowStep {
            name: name.to_string(),
            pipeline: pipeline.to_string(),
            needs: needs.iter().map(|n| n.to_string()).collect(),
            when: *when,
            run_id: base.run_id.clone(),
            kept: false,
        });
        runs.push(RunCreateParams {
            // One attempt: a failure is for good.
            policy: JobPolicy {
                max_attempts: 1,
                ..policy()
            },
            options: RunOptions {
                after,
                after_when: *when,
                workflow: Some((id.clone(), name.to_string())),
                ..Default::default()
            },
            ..base
        });
    }
    WorkflowCreateParams {
        workflow_run_id: id,
        workflow: "release".into(),
        params: [("sha".to_string(), "abc1234".to_string())].into(),
        steps: records,
        runs,
        idempotency_key: key.map(str::to_string),
        triggered_by: "api".into(),
        actor: None,
        callback_url: None,
        rerun_of: None,
        now: 1,
    }
}

async fn end(store: &dyn Store, job: &ClaimedJob, outcome: Outcome) {
    let done = ok("job_finish", store.job_finish(finish(job, outcome))).await;
    assert!(done.applied, "{} ends", job.id);
}

async fn claim_all(store: &dyn Store, pipeline: &str) -> Vec<ClaimedJob> {
    let mut c = claim_from(pipeline, 10);
    c.now = 100;
    ok("job_claim", store.job_claim(c)).await.jobs
}

/// How many events named `name` each workflow run has, once all committed are visible.
async fn workflow_events(store: &dyn Store, name: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for e in events_settled(store)
        .await
        .iter()
        .filter(|e| e.name == name)
    {
        let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        let id = data["workflowRunId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        *out.entry(id).or_insert(0) += 1;
    }
    out
}

async fn step_status(store: &dyn Store, id: &str, step: &str) -> String {
    let w = ok("workflow_run_get", store.workflow_run_get(id))
        .await
        .unwrap();
    let s = w.steps.iter().find(|s| s.name == step).unwrap();
    w.run_of(s).unwrap().status.as_str().to_string()
}

pub async fn a_workflow_run_creates_every_step_at_once_and_settles_once_when_its_last_step_ends(
    f: &Factory,
) {
    let store = f.store().await;
    let p = workflow(
        &[
            ("build", "build", 1, &[], AfterWhen::Success),
            ("test", "test", 2, &["build"], AfterWhen::Success),
            ("report", "report", 1, &["test"], AfterWhen::Always),
            ("deploy", "deploy", 1, &["test"], AfterWhen::Success),
        ],
        Some("k1"),
    );
    let p = WorkflowCreateParams {
        callback_url: Some("https://hooks.example.com/w".into()),
        ..p
    };
    let id = p.workflow_run_id.clone();
    let created = ok("workflow_create", store.workflow_create(p.clone())).await;
    assert!(!created.existing);
    let w = ok("workflow_run_get", store.workflow_run_get(&id))
        .await
        .unwrap();
    assert_eq!(w.workflow, "release");
    assert_eq!(w.params["sha"], "abc1234");
    assert_eq!(w.runs.len(), 4, "every step's run exists from the start");
    assert_eq!(w.shown_status(), WorkflowStatus::Queued);
    assert_eq!(step_status(&*store, &id, "build").await, "queued");
    assert_eq!(step_status(&*store, &id, "test").await, "waiting");
    let run = ok("run_get", store.run_get(&w.steps[1].run_id))
        .await
        .unwrap();
    assert_eq!(run.workflow_run_id.as_deref(), Some(id.as_str()));
    assert_eq!(run.workflow_step.as_deref(), Some("test"));

    // A replay with the same key creates nothing and names the first.
    let again = ok(
        "workflow_create",
        store.workflow_create(workflow(
            &[("build", "build", 1, &[], AfterWhen::Success)],
            Some("k1"),
        )),
    )
    .await;
    assert!(again.existing);
    assert_eq!(again.workflow_run_id, id);
    assert_eq!(again.steps.len(), 4);

    let build = claim_all(&*store, "build").await;
    assert_eq!(build.len(), 1);
    end(&*store, &build[0], Outcome::Completed).await;
    assert_eq!(
        step_status(&*store, &id, "test").await,
        "queued",
        "released by build's end"
    );
    let w = ok("workflow_run_get", store.workflow_run_get(&id))
        .await
        .unwrap();
    assert_eq!(w.shown_status(), WorkflowStatus::Running);
    let test = claim_all(&*store, "test").await;
    assert_eq!(test.len(), 2);
    end(&*store, &test[0], Outcome::Completed).await;
    end(&*store, &test[1], fail()).await;
    assert_eq!(step_status(&*store, &id, "test").await, "failed");
    assert_eq!(step_status(&*store, &id, "deploy").await, "skipped");
    assert_eq!(
        step_status(&*store, &id, "report").await,
        "queued",
        "always runs"
    );
    let w = ok("workflow_run_get", store.workflow_run_get(&id))
        .await
        .unwrap();
    assert!(w.finished_at.is_none(), "report has not ended");
    let report = claim_all(&*store, "report").await;
    end(&*store, &report[0], Outcome::Completed).await;
    let w = ok("workflow_run_get", store.workflow_run_get(&id))
        .await
        .unwrap();
    assert_eq!(
        w.status,
        WorkflowStatus::Failed,
        "a failed step fails the workflow run"
    );
    assert!(w.finished_at.is_some());
    assert_eq!(
        workflow_events(&*store, "workflow:failed").await.get(&id),
        Some(&1)
    );
    assert_eq!(
        workflow_events(&*store, "workflow:created").await.get(&id),
        Some(&1)
    );
    // Its webhook: one outbox row, a `workflow.completed` body naming every step's run.
    let rows = ok("deliveries_of_run", store.deliveries_of_run(&id)).await;
    assert_eq!(rows.len(), 1, "one outbox row for the workflow run");
    let due = ok(
        "deliveries_claim",
        store.deliveries_claim("n1", 10_000, 1_000, 10),
    )
    .await;
    let body: serde_json::Value = serde_json::from_str(&due[0].payload).unwrap();
    assert_eq!(body["type"], "workflow.completed");
    assert_eq!(body["data"]["status"], "failed");
    assert_eq!(body["data"]["steps"].as_array().unwrap().len(), 4);
    assert_eq!(body["data"]["steps"][1]["status"], "failed", "{body}");
    let listed = ok(
        "workflow_runs_list",
        store.workflow_runs_list(WorkflowRunFilter {
            workflow: Some("release".into()),
            limit: 10,
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(listed.len(), 1);
    let by_prefix = ok(
        "workflow_run_ids_by_prefix",
        store.workflow_run_ids_matching(&id[..8], None, 2),
    )
    .await;
    assert_eq!(by_prefix, vec![id.clone()]);
    let by_suffix = ok(
        "workflow_run_ids_matching",
        store.workflow_run_ids_matching("ffffffff", Some(&id[id.len() - 8..]), 2),
    )
    .await;
    assert_eq!(
        by_suffix,
        vec![id.clone()],
        "the short form: its last 8 digits"
    );
}

pub async fn an_aborted_workflow_run_ends_aborted_once_its_step_runs_ended(f: &Factory) {
    let store = f.store().await;
    let p = workflow(
        &[
            ("build", "build", 1, &[], AfterWhen::Success),
            ("test", "test", 1, &["build"], AfterWhen::Always),
        ],
        None,
    );
    let id = p.workflow_run_id.clone();
    ok("workflow_create", store.workflow_create(p.clone())).await;
    let running = claim_all(&*store, "build").await;
    let WorkflowAbortMark::Marked { runs } =
        ok("workflow_abort_mark", store.workflow_abort_mark(&id, None)).await
    else {
        panic!("a live workflow run is marked");
    };
    assert_eq!(
        runs,
        vec![p.steps[1].run_id.clone(), p.steps[0].run_id.clone()],
        "dependents first"
    );
    for run in &runs {
        ok("run_abort", store.run_abort(run, 50)).await;
    }
    assert_eq!(
        step_status(&*store, &id, "test").await,
        "aborted",
        "a waiting step ends aborted"
    );
    let w = ok("workflow_run_get", store.workflow_run_get(&id))
        .await
        .unwrap();
    assert!(
        w.finished_at.is_none(),
        "build is still running until its process ends"
    );
    let mut stopped = finish(&running[0], Outcome::Aborted);
    stopped.now = 60;
    ok("job_finish", store.job_finish(stopped)).await;
    let w = ok("workflow_run_get", store.workflow_run_get(&id))
        .await
        .unwrap();
    assert_eq!(w.status, WorkflowStatus::Aborted);
    assert_eq!(
        workflow_events(&*store, "workflow:aborted").await.get(&id),
        Some(&1)
    );
    let again = ok("workflow_abort_mark", store.workflow_abort_mark(&id, None)).await;
    assert_eq!(again, WorkflowAbortMark::Finished(WorkflowStatus::Aborted));
    let none = ok(
        "workflow_abort_mark",
        store.workflow_abort_mark("nope", None),
    )
    .await;
    assert_eq!(none, WorkflowAbortMark::NotFound);
    // Pruned with its runs once old enough.
    ok("runs_prune", store.runs_prune(1_000, 100)).await;
    assert!(
        ok("workflow_run_get", store.workflow_run_get(&id))
            .await
            .is_none()
    );
}

/// Two step runs end at the same moment through two handles (two writer threads on
/// SQLite, two pools on PostgreSQL), round after round: the step that needs both is
/// released exactly once — never twice, never lost — and when it ends the workflow run
/// settles exactly once.
pub async fn two_step_runs_ending_at_once_on_two_handles_release_their_join_and_settle_once(
    f: &Factory,
) {
    const ROUNDS: usize = 1000;
    let one = f.store().await;
    let two = f.open().await;
    let mut ids = Vec::new();
    let mut joins = Vec::new();
    for round in 0..ROUNDS {
        let p = workflow(
            &[
                ("left", "a", 1, &[], AfterWhen::Success),
                ("right", "a", 1, &[], AfterWhen::Success),
                ("join", "b", 1, &["left", "right"], AfterWhen::Success),
            ],
            None,
        );
        ok("workflow_create", one.workflow_create(p.clone())).await;
        let jobs = claim_all(&*one, "a").await;
        assert_eq!(jobs.len(), 2, "round {round}");
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let tasks: Vec<_> = jobs
            .into_iter()
            .zip([one.clone(), two.clone()])
            .map(|(job, store)| {
                let start = start.clone();
                tokio::spawn(async move {
                    start.wait().await;
                    end(&*store, &job, Outcome::Completed).await;
                })
            })
            .collect();
        for t in tasks {
            join("an end", t).await;
        }
        let released = claim_all(&*one, "b").await;
        assert_eq!(released.len(), 1, "round {round}: the join released once");
        end(&*one, &released[0], Outcome::Completed).await;
        let w = ok("workflow_run_get", one.workflow_run_get(&p.workflow_run_id))
            .await
            .unwrap();
        assert_eq!(
            w.status,
            WorkflowStatus::Completed,
            "round {round}: settled"
        );
        joins.push(p.runs[2].run_id.clone());
        ids.push(p.workflow_run_id);
    }
    let released = events_per_run(&*one, "run:released").await;
    for j in &joins {
        assert_eq!(released.get(j), Some(&1), "join {j} released exactly once");
    }
    let completed = workflow_events(&*one, "workflow:completed").await;
    for id in &ids {
        assert_eq!(completed.get(id), Some(&1), "{id} settled exactly once");
    }
}
