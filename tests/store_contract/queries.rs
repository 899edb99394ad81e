//! Reading runs back: lists by pipeline and status (newest first, paged), filters by id
//! prefix or suffix, parameter and actor, run ids by prefix, and stats by the bucket a
//! run finished in.

use runyard::model::RunStatus;
use runyard::store::{JobStartParams, Outcome, ParamFilter, PipelineStatsParams, RunFilter};

use crate::factory::Factory;
use crate::fixtures::*;

pub async fn runs_list_filters_by_pipeline_and_status_newest_first(f: &Factory) {
    let store = f.store().await;
    let mut in_p = Vec::new();
    for _ in 0..3 {
        in_p.push(create(&*store, 2).await.run_id);
    }
    let in_q = create_in(&*store, "q", 1).await.run_id;
    // The oldest run of p completes.
    for job in store.job_claim(claim(2)).await.unwrap().jobs {
        assert_eq!(job.run_id, in_p[0]);
        store
            .job_finish(finish(&job, Outcome::Completed))
            .await
            .unwrap();
    }
    let list = |pipeline: Option<&str>, status: Option<RunStatus>, limit: u32, offset: u32| {
        let store = store.clone();
        let pipeline = pipeline.map(str::to_string);
        async move {
            store
                .runs_list(RunFilter {
                    pipeline,
                    status,
                    limit,
                    offset,
                    ..RunFilter::default()
                })
                .await
                .unwrap()
        }
    };
    let ids = |runs: &[runyard::store::RunRecord]| -> Vec<String> {
        runs.iter().map(|r| r.run_id.clone()).collect()
    };
    let mut newest_first = in_p.clone();
    newest_first.sort();
    newest_first.reverse();
    let p = list(Some("p"), None, 10, 0).await;
    assert_eq!(ids(&p), newest_first);
    assert!(p.iter().all(|r| r.jobs.len() == 2 && r.pipeline_id == "p"));
    assert_eq!(
        ids(&list(Some("p"), Some(RunStatus::Completed), 10, 0).await),
        vec![in_p[0].clone()]
    );
    assert_eq!(
        ids(&list(None, Some(RunStatus::Queued), 10, 0).await).len(),
        3,
        "two of p and the one of q"
    );
    assert_eq!(
        ids(&list(Some("p"), None, 1, 1).await),
        vec![newest_first[1].clone()]
    );
    let all = list(None, None, 10, 0).await;
    assert_eq!(all.len(), 4);
    assert!(all.iter().any(|r| r.run_id == in_q));
    let done = all.iter().find(|r| r.run_id == in_p[0]).unwrap();
    assert_eq!((done.status.as_str(), done.shards_done), ("completed", 2));
    assert!(done.finished_at.is_some());
}

pub async fn runs_are_filtered_by_id_prefix_suffix_parameter_and_actor(f: &Factory) {
    let store = f.store().await;
    let mut ids = Vec::new();
    for (word, actor) in [("x", Some("ann")), ("y", Some("bo")), ("y", None)] {
        let mut p = run_params("p", 1);
        p.params = [("word".to_string(), word.to_string())].into();
        p.actor = actor.map(str::to_string);
        ids.push(store.run_create(p).await.unwrap().run_id);
    }
    let list = |f: RunFilter| {
        let store = store.clone();
        async move {
            store
                .runs_list(RunFilter { limit: 50, ..f })
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.run_id)
                .collect::<Vec<_>>()
        }
    };
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(list(RunFilter::default()).await, newest_first);
    let by = |run_id: &str| RunFilter {
        run_id: Some(run_id.to_string()),
        ..Default::default()
    };
    assert_eq!(list(by(&ids[1][..34])).await, [ids[1].as_str()]);
    assert_eq!(list(by(&ids[0])).await, [ids[0].as_str()]);
    assert_eq!(
        list(by(&ids[2][28..])).await,
        [ids[2].as_str()],
        "the last 8 digits"
    );
    assert_eq!(list(by(&ids[2][..1])).await.len(), 3);
    assert_eq!(list(by("ffffffff-")).await.len(), 0);
    let param = |name: &str, value: Option<&str>| RunFilter {
        param: Some(ParamFilter {
            name: name.into(),
            value: value.map(str::to_string),
        }),
        ..Default::default()
    };
    assert_eq!(
        list(param("word", Some("y"))).await,
        [ids[2].as_str(), ids[1].as_str()]
    );
    assert_eq!(list(param("word", None)).await.len(), 3);
    assert_eq!(list(param("other", None)).await.len(), 0);
    let actor = RunFilter {
        actor: Some("bo".into()),
        ..param("word", Some("y"))
    };
    assert_eq!(list(actor).await, [ids[1].as_str()]);
}

pub async fn run_ids_by_prefix_range_scans_the_ids_that_start_with_it(f: &Factory) {
    let store = f.store().await;
    let a = create(&*store, 1).await.run_id;
    let b = create(&*store, 1).await.run_id;
    // Created in the same millisecond range: they share their first digits.
    assert_eq!(store.run_ids_by_prefix(&a[..4], 2).await.unwrap().len(), 2);
    assert_eq!(
        store.run_ids_by_prefix(&a, 2).await.unwrap(),
        vec![a.clone()]
    );
    assert_eq!(
        store.run_ids_by_prefix(&b, 2).await.unwrap(),
        vec![b.clone()]
    );
    assert!(
        store
            .run_ids_by_prefix("ffffffff", 2)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.run_ids_by_prefix("", 1).await.unwrap().len(), 1);
}

pub async fn stats_count_runs_by_the_bucket_they_finished_in(f: &Factory) {
    let store = f.store().await;
    create(&*store, 1).await;
    create(&*store, 1).await;
    let jobs = store.job_claim(claim(2)).await.unwrap().jobs;
    let mut ends = Vec::new();
    for (job, outcome, now) in [
        (&jobs[0], Outcome::Completed, 1_050),
        (&jobs[1], Outcome::Aborted, 2_500),
    ] {
        let mut p = finish(job, outcome);
        p.now = now;
        p.start = Some(JobStartParams {
            job_id: job.id.clone(),
            claim_seq: job.claim_seq,
            pid: 1,
            proc_start: 1,
            now: 1_000,
        });
        ends.push(store.job_finish(p).await.unwrap().run_finalized);
    }
    assert_eq!(ends, [Some(RunStatus::Completed), Some(RunStatus::Aborted)]);
    let rows = store
        .pipeline_stats(PipelineStatsParams {
            since: 0,
            until: 3_000,
            bucket_ms: 1_000,
        })
        .await
        .unwrap();
    let got: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.pipeline.as_str(),
                r.bucket,
                r.status.as_str(),
                r.runs,
                r.duration_sum_ms,
                r.duration_max_ms,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("p", 1, "completed", 1, 50, 50),
            ("p", 2, "aborted", 1, 1_500, 1_500)
        ]
    );
    let later = store
        .pipeline_stats(PipelineStatsParams {
            since: 2_000,
            until: 2_400,
            bucket_ms: 100,
        })
        .await
        .unwrap();
    assert!(later.is_empty(), "{later:?}");
}
