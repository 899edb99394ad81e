//! Landing runs on PostgreSQL: what a batch of ends does to their runs.
//!
//! The ends' runs are locked in id order and counted in one statement (`before` says
//! whether this batch landed a run); a run whose last shard landed queues its finalizer
//! or ends, and a run whose finalizer ended ends as the finalizer decides — the rules
//! of [`crate::store::completion`]. A run turns terminal once (`finished_at IS NULL`),
//! with its `run:completed` and, with a webhook, its outbox row.

use std::collections::{BTreeMap, HashMap};

use super::rows::{Rows, Value};
use super::{StoreResult, Tx};
use crate::model::{JobKind, JobStatus, RunStatus, finalize_job_id};
use crate::store::completion::{
    FINALIZER_MAX_ATTEMPTS, FINALIZER_MIN_REQUEUES, shards_status, status_after_finalizer,
};
use crate::store::payload;
use crate::store::{change, summary};

/// What the batch does to one run.
#[derive(Default)]
pub(super) struct RunTouch {
    /// Its shards that turned terminal here, with their statuses.
    pub(super) landed: Vec<JobStatus>,
    /// A start recorded here: a `queued` run turns `running` (at this time).
    pub(super) started_at: Option<i64>,
    /// Its finalizer ended here: (status, exit code).
    pub(super) finalizer: Option<(JobStatus, Option<i32>)>,
    pub(super) now: i64,
}

/// One job's end as the landing needs it.
pub(super) struct EndFact<'a> {
    pub(super) run_id: &'a str,
    pub(super) kind: JobKind,
    pub(super) status: JobStatus,
    /// When its start (written with this end) happened.
    pub(super) started_at: Option<i64>,
    pub(super) exit_code: Option<i32>,
    pub(super) now: i64,
}

/// What the ends do to their runs, by run id (the order their rows are locked in).
pub(super) fn touches<'a>(facts: impl Iterator<Item = EndFact<'a>>) -> BTreeMap<&'a str, RunTouch> {
    let mut runs: BTreeMap<&str, RunTouch> = BTreeMap::new();
    for f in facts {
        let touch = runs.entry(f.run_id).or_default();
        touch.now = touch.now.max(f.now);
        if f.started_at.is_some() {
            touch.started_at = f.started_at;
        }
        if f.status.is_terminal() {
            match f.kind {
                JobKind::Finalize => touch.finalizer = Some((f.status, f.exit_code)),
                JobKind::Shard => touch.landed.push(f.status),
            }
        }
    }
    runs.retain(|_, t| t.started_at.is_some() || !t.landed.is_empty() || t.finalizer.is_some());
    runs
}

pub(super) fn touch_rows(runs: &BTreeMap<&str, RunTouch>) -> Rows {
    let mut touched = Rows::new(&[
        ("id", "text"),
        ("landed", "bigint"),
        ("started_at", "bigint"),
    ]);
    for (id, t) in runs {
        touched.push(vec![
            Box::new(id.to_string()),
            Box::new(t.landed.len() as i64),
            Box::new(t.started_at),
        ]);
    }
    touched
}

/// Counts the runs' terminal shards and marks started runs `running`. The runs are
/// locked in id order first (the `locked` CTE), then updated: `before` is the count as
/// this transaction found it, so "this batch landed the run" is exact.
pub(super) fn land_sql(touched: &Rows) -> String {
    let list = touched.sql("u", 1);
    format!(
        "WITH locked AS (SELECT id, shards_done AS before FROM runs
                         WHERE id IN (SELECT id FROM {list}) ORDER BY id FOR UPDATE)
         UPDATE runs r SET
                shards_done = LEAST(r.shards_done + u.landed, r.shard_count),
                status = CASE WHEN u.started_at IS NOT NULL AND r.status = 'queued' THEN 'running'
                              ELSE r.status END,
                started_at = CASE WHEN u.started_at IS NOT NULL AND r.status = 'queued' THEN u.started_at
                                  ELSE r.started_at END
         FROM {list}, locked l
         WHERE r.id = u.id AND l.id = u.id
         RETURNING r.id, l.before, r.shards_done, r.shard_count, r.status, r.has_finalizer, r.shards_status,
                   r.pipeline, r.aborted_by, r.callback_url IS NOT NULL, r.finished_at IS NOT NULL,
                   r.has_dependents, r.workflow_run_id IS NOT NULL"
    )
}

pub(super) async fn land_query(tx: &Tx, touched: &Rows) -> StoreResult<Vec<tokio_postgres::Row>> {
    if touched.len() == 0 {
        return Ok(Vec::new());
    }
    tx.query(&land_sql(touched), &touched.params()).await
}

/// What the landing statement's rows mean: which runs end, which queue their finalizer.
pub(super) async fn landed(
    tx: &mut Tx,
    runs: &BTreeMap<&str, RunTouch>,
    rows: Vec<tokio_postgres::Row>,
) -> StoreResult<Landing> {
    let mut ends: Vec<(String, RunStatus, Finalizer)> = Vec::new();
    let mut multi: Vec<(String, String)> = Vec::new();
    let mut landed_runs = HashMap::new();
    for r in &rows {
        let id: String = r.get(0);
        landed_runs.insert(
            id.clone(),
            LandedRun {
                pipeline: r.get(7),
                shard_count: r.get::<_, i64>(3) as u32,
                aborted_by: r.get(8),
                callback_url: r.get(9),
                finished: r.get(10),
                has_dependents: r.get(11),
                in_workflow: r.get(12),
            },
        );
        let Some(touch) = runs.get(id.as_str()) else {
            continue;
        };
        let (before, done, count): (i64, i64, i64) = (r.get(1), r.get(2), r.get(3));
        let status: String = r.get(4);
        if let Some((fin, exit_code)) = touch.finalizer {
            let shards: Option<String> = r.get(6);
            let end = status_after_finalizer(&status, fin, shards.as_deref());
            ends.push((id, end, Finalizer::Ended(fin, exit_code)));
            continue;
        }
        if touch.landed.is_empty() || before >= count || done < count {
            continue;
        }
        let has_finalizer: bool = r.get(5);
        if count == 1 && !has_finalizer {
            let end = shards_status(&status, touch.landed.iter().copied());
            ends.push((id, end, Finalizer::None));
        } else {
            multi.push((id, status));
        }
    }
    let now = runs.values().map(|t| t.now).max().unwrap_or_default();
    for (run_id, status) in multi {
        let has_finalizer = rows
            .iter()
            .any(|r| r.get::<_, &str>(0) == run_id && r.get::<_, bool>(5));
        if let Some(end) = land_by_shards(tx, &run_id, &status, has_finalizer, now).await? {
            ends.push(end);
        }
    }
    Ok(Landing {
        ends,
        runs: landed_runs,
    })
}

/// What the landing found: the runs to end, and what their `run:completed` says.
#[derive(Default)]
pub(super) struct Landing {
    /// Runs that end now: status, and what their finalizer did.
    pub(super) ends: Vec<(String, RunStatus, Finalizer)>,
    /// Every run the batch touched, locked.
    pub(super) runs: HashMap<String, LandedRun>,
}

/// A run as the landing left it (locked until COMMIT).
pub(super) struct LandedRun {
    pub(super) pipeline: String,
    pub(super) shard_count: u32,
    pub(super) aborted_by: Option<String>,
    /// It has a webhook (its outbox row needs the run's summary).
    pub(super) callback_url: bool,
    /// It had ended before (nothing turns it terminal again).
    pub(super) finished: bool,
    /// Other runs wait for it: its end releases them.
    pub(super) has_dependents: bool,
    /// It is a workflow step's run: its end counts off its workflow run.
    pub(super) in_workflow: bool,
}

/// The columns of one run turning terminal.
pub(super) const TERMINAL: &[(&str, &str)] =
    &[("id", "text"), ("status", "text"), ("shards", "text")];

pub(super) fn terminal_row(run_id: &str, status: RunStatus, finalizer: &Finalizer) -> Vec<Value> {
    vec![
        Box::new(run_id.to_string()),
        Box::new(status.as_str()),
        Box::new(matches!(finalizer, Finalizer::None).then_some(status.as_str())),
    ]
}

/// Marks the runs terminal (once); the shards' status is written with it for a run
/// without a finalizer (the same thing then). Rows: id, pipeline, shard count, callback
/// URL, aborted by, has dependents, workflow run.
pub(super) async fn write_terminal(
    tx: &Tx,
    ends: &Rows,
    now: i64,
) -> StoreResult<Vec<tokio_postgres::Row>> {
    let mut params = ends.params();
    params.push(&now);
    tx.query(
        &format!(
            "{} RETURNING r.id, r.pipeline, r.shard_count, r.callback_url, r.aborted_by,
                          r.has_dependents, r.workflow_run_id",
            terminal_sql(ends, 1, params.len())
        ),
        &params,
    )
    .await
}

/// The runs' terminal update of `ends` (rows' parameters from `$first`, time `$now`).
pub(super) fn terminal_sql(ends: &Rows, first: usize, now: usize) -> String {
    format!(
        "UPDATE runs r SET status = u.status, finished_at = ${now},
                           shards_status = COALESCE(u.shards, r.shards_status)
         FROM {} WHERE r.id = u.id AND r.finished_at IS NULL",
        ends.sql("u", first)
    )
}

/// Queues the run's finalizer (once) after its last shard landed.
pub(super) async fn queue_finalizer(tx: &mut Tx, run_id: &str, now: i64) -> StoreResult<()> {
    let job_id = finalize_job_id(run_id);
    let inserted = tx
        .query_opt(
            "INSERT INTO jobs (id, run_id, pipeline, shard_index, shard_count, status, max_attempts, retry_backoff_ms,
                               on_orphan, max_orphan_requeues, run_after, created_at, kind, priority, ckey)
             SELECT $1, run_id, pipeline, shard_count, shard_count, 'queued', $4, retry_backoff_ms,
                    'requeue', GREATEST(max_orphan_requeues, $5), $3, $3, 'finalize', priority, ckey
             FROM jobs WHERE run_id = $2 AND kind = 'shard' LIMIT 1
             ON CONFLICT (id) DO NOTHING
             RETURNING pipeline, shard_index",
            &[&job_id, &run_id, &now, &(FINALIZER_MAX_ATTEMPTS as i64), &(FINALIZER_MIN_REQUEUES as i64)],
        )
        .await?;
    if let Some(r) = inserted {
        let pipeline: String = r.get(0);
        let event =
            payload::finalizer_created(run_id, &job_id, &pipeline, r.get::<_, i64>(1) as u32);
        tx.emit(event, now).await?;
        tx.kinds |= change::WORK;
    }
    Ok(())
}

/// What `run:completed` says of the run's finalizer.
pub(super) enum Finalizer {
    /// The run has none.
    None,
    /// It just ended so.
    Ended(JobStatus, Option<i32>),
}

/// Marks each run terminal (once) with its status and, when it had no finalizer, its
/// shards' status (the same thing then); emits `run:completed` and writes the webhook
/// outbox rows, and releases the runs waiting for them. The runs this call ended.
pub(super) async fn turn_terminal(
    tx: &mut Tx,
    ends: Vec<(String, RunStatus, Finalizer)>,
    now: i64,
) -> StoreResult<Vec<(String, RunStatus)>> {
    let (ended, waited_for) = turn_terminal_once(tx, ends, now).await?;
    if !waited_for.is_empty() {
        super::after::release_dependents(tx, waited_for, now).await?;
    }
    Ok(ended)
}

/// [`turn_terminal`] without the release: the runs it ended, and those of them that
/// other runs wait for.
pub(super) async fn turn_terminal_once(
    tx: &mut Tx,
    ends: Vec<(String, RunStatus, Finalizer)>,
    now: i64,
) -> StoreResult<(Vec<(String, RunStatus)>, Vec<String>)> {
    if ends.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut list = Rows::new(TERMINAL);
    for (id, status, finalizer) in &ends {
        list.push(terminal_row(id, *status, finalizer));
    }
    let rows = write_terminal(tx, &list, now).await?;
    let mut ended = Vec::new();
    let mut waited_for = Vec::new();
    for r in &rows {
        let run_id: String = r.get(0);
        if r.get::<_, bool>(5) {
            waited_for.push(run_id.clone());
        }
        let Some((_, status, finalizer)) = ends.iter().find(|(id, _, _)| *id == run_id) else {
            continue;
        };
        let pipeline: String = r.get(1);
        let finalizer = match finalizer {
            Finalizer::None => None,
            Finalizer::Ended(status, exit_code) => Some((status.as_str(), *exit_code)),
        };
        let event = payload::run_completed(
            &run_id,
            &pipeline,
            *status,
            r.get::<_, i64>(2) as u32,
            finalizer,
            r.get::<_, Option<&str>>(4),
        );
        tx.emit(event, now).await?;
        if let Some(url) = r.get::<_, Option<String>>(3) {
            let run_summary = super::views::summary_in(tx.client(), &run_id)
                .await?
                .unwrap_or(serde_json::Value::Null);
            let envelope = summary::webhook_envelope(run_summary, now);
            tx.exec(
                "INSERT INTO deliveries (id, run_id, url, payload, status, next_attempt_at, created_at)
                 VALUES ($1, $2, $3, $4, 'pending', $5, $5)",
                &[&envelope.id, &run_id, &url, &envelope.payload, &now],
            )
            .await?;
        }
        if let Some(workflow_run_id) = r.get::<_, Option<&str>>(6) {
            super::workflows::step_ended(tx, workflow_run_id, *status, now).await?;
        }
        ended.push((run_id, *status));
    }
    Ok((ended, waited_for))
}

/// Lands `n` shards of one run that an abort ended while queued (the abort holds the
/// run's job rows and will update the run next: the lock order holds).
pub(super) async fn land_aborted(tx: &mut Tx, run_id: &str, n: usize, now: i64) -> StoreResult<()> {
    if n == 0 {
        return Ok(());
    }
    let Some(row) = tx
        .query_opt(
            "UPDATE runs SET shards_done = LEAST(shards_done + $2, shard_count)
             WHERE id = $1 AND shards_done < shard_count
             RETURNING shards_done, shard_count, status, has_finalizer",
            &[&run_id, &(n as i64)],
        )
        .await?
    else {
        return Ok(());
    };
    let (done, count): (i64, i64) = (row.get(0), row.get(1));
    if done < count {
        return Ok(());
    }
    let status: String = row.get(2);
    if let Some(end) = land_by_shards(tx, run_id, &status, row.get(3), now).await? {
        turn_terminal(tx, vec![end], now).await?;
    }
    Ok(())
}

/// A run whose last shard just landed, decided from all its shards' statuses (read in
/// a new statement: every earlier lander committed, as they all held the run row): its
/// finalizer is queued (`None`), or the end to write.
async fn land_by_shards(
    tx: &mut Tx,
    run_id: &str,
    status: &str,
    has_finalizer: bool,
    now: i64,
) -> StoreResult<Option<(String, RunStatus, Finalizer)>> {
    let shards: Vec<JobStatus> = tx
        .query(
            "SELECT status FROM jobs WHERE run_id = $1 AND kind = 'shard'",
            &[&run_id],
        )
        .await?
        .iter()
        .filter_map(|r| r.get::<_, String>(0).parse().ok())
        .collect();
    let end = shards_status(status, shards);
    if has_finalizer {
        tx.exec(
            "UPDATE runs SET shards_status = $2 WHERE id = $1",
            &[&run_id, &end.as_str()],
        )
        .await?;
        queue_finalizer(tx, run_id, now).await?;
        return Ok(None);
    }
    Ok(Some((run_id.to_string(), end, Finalizer::None)))
}
