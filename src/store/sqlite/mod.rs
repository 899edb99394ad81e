//! The embedded store: one SQLite file in WAL mode, shareable by several
//! `runyard serve` processes on one host.
//!
//! (One concern past 400 lines: the `Store` impl as a table of one-line calls, plus
//! opening, the writer thread and migrations; each transition's SQL has its own file.)
//!
//! Writes go through **one writer thread per process** with group commit
//!: callers send closures over a channel; the thread
//! takes every waiting request, runs them in one `BEGIN IMMEDIATE`
//! transaction and commits once (if one request fails, the batch is rolled back
//! and each request runs again in a transaction of its own, so one failing request
//! takes no other with it), and only then answers each caller. Nothing is
//! acknowledged before it is committed. `BEGIN IMMEDIATE` takes the write lock
//! up front, so `busy_timeout` applies and no deferred transaction is ever
//! upgraded into an instant `SQLITE_BUSY`.
//!
//! Reads use a small pool of separate connections on the blocking pool.
//! Other processes' commits are noticed through `PRAGMA data_version`, polled
//! every 50 ms by a watcher thread that bumps the [`ChangeFeed`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

mod claim;
mod completion;
mod executions;
mod finish;
mod nodes;
mod outbox;
mod pipeline_state;
mod read;
mod runs;
mod writer;

use claim::*;
use executions::*;
use read::*;
use runs::*;
use writer::*;

use completion::{finalizer_ended, land_terminal};

use super::payload::{self, NewEvent};
use super::transition::{JobFence, RetryOn, decide, outcome_error};
use super::*;
use crate::config::Synchronous;
use crate::model::JobKind;

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite_0001_init.sql"),
    include_str!("../migrations/sqlite_0002_completion.sql"),
    include_str!("../migrations/sqlite_0003_dashboard.sql"),
    include_str!("../migrations/sqlite_0004_retry_on.sql"),
    include_str!("../migrations/sqlite_0005_pipeline_state.sql"),
    include_str!("../migrations/sqlite_0006_rerun.sql"),
    include_str!("../migrations/sqlite_0007_queue_order.sql"),
    include_str!("../migrations/sqlite_0008_schedules.sql"),
    include_str!("../migrations/sqlite_0009_aborted_by.sql"),
    include_str!("../migrations/sqlite_0010_placement.sql"),
];
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Held jobs one claim releases at most (the rest on the next claims: a due backlog is
/// released in slices, never in one long transaction).
const RELEASE_BATCH: usize = 1000;
const MAX_BATCH: usize = 512;
/// Reads running at once (each holds a connection and a blocking thread).
const MAX_READERS: usize = 8;
/// Events deleted per pruned-run batch slot.
const EVENTS_PER_RUN_PRUNED: usize = 20;
const DATA_VERSION_POLL: Duration = Duration::from_millis(50);
/// Checkpoint the WAL every 5 polls (250 ms).
const CHECKPOINT_EVERY_TICKS: u32 = 5;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                StoreError::transient(e)
            }
            Some(
                rusqlite::ErrorCode::CannotOpen
                | rusqlite::ErrorCode::DiskFull
                | rusqlite::ErrorCode::SystemIoFailure,
            ) => StoreError::unavailable(e),
            // A unique key held by another row, as PostgreSQL's 23505.
            Some(rusqlite::ErrorCode::ConstraintViolation)
                if matches!(
                    &e,
                    rusqlite::Error::SqliteFailure(f, _)
                        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                ) =>
            {
                StoreError::Conflict {
                    message: e.to_string(),
                }
            }
            _ => StoreError::database(e),
        }
    }
}

impl From<rusqlite::types::FromSqlError> for StoreError {
    fn from(e: rusqlite::types::FromSqlError) -> Self {
        StoreError::database(e)
    }
}

/// Runs a parameterless statement through the statement cache (no re-parsing).
fn exec_cached(conn: &Connection, sql: &str) -> StoreResult<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// SQLite implementation of [`Store`].
pub struct SqliteStore {
    writer: Mutex<Option<mpsc::UnboundedSender<Box<dyn WriteOp>>>>,
    /// The write connection, shared by the writer thread and the inline fast path.
    conn: Arc<Mutex<Connection>>,
    /// Whether uncontended writes may run on the caller's thread (not with
    /// `synchronous = FULL`, whose commits fsync).
    inline: bool,
    readers: Arc<ReaderPool>,
    read_slots: tokio::sync::Semaphore,
    feed: ChangeFeed,
    /// Statements and commits of its writes, by operation (`runyard_store_*_total`).
    traffic: Arc<Traffic>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn get(&self) -> StoreResult<Connection> {
        if let Some(c) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(c);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        configure_connection(&conn)?;
        Ok(conn)
    }

    fn put(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_READERS {
            idle.push(conn);
        }
    }
}

/// Statements each connection keeps prepared. The store has about 85 distinct
/// `prepare_cached` statements and one run's life (trigger, claim, start, finish)
/// uses more than rusqlite's default 16, so with the default the least recently
/// used were evicted and parsed again on nearly every run (the parser was in
/// bench (a)'s profile).
const STATEMENT_CACHE: usize = 256;

/// Settings every connection gets: statements stay prepared ([`STATEMENT_CACHE`]),
/// and the query-planner stability guarantee is on. The bundled SQLite is built with
/// STAT4, which otherwise re-prepares a cached statement whenever a bound value that
/// meets an indexed column changes — i.e. on nearly every call (measured: ~4% of CPU).
fn configure_connection(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

fn open_writer(path: &Path, sync: Synchronous) -> StoreResult<Connection> {
    let open_err = |e: rusqlite::Error| StoreError::Open {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let conn = Connection::open(path).map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    configure_connection(&conn).map_err(open_err)?;
    conn.trace_v2(
        rusqlite::trace::TraceEventCodes::SQLITE_TRACE_STMT,
        Some(count_statement),
    );
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(open_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Open {
            path: path.display().to_string(),
            message: format!("could not enable WAL (got {mode})"),
        });
    }
    let sync = match sync {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    // Checkpoints run on the maintenance thread, never inline on the writer.
    conn.execute_batch(&format!(
        "PRAGMA synchronous={sync}; PRAGMA foreign_keys=OFF; PRAGMA wal_autocheckpoint=0;
         PRAGMA journal_size_limit=67108864;"
    ))
    .map_err(open_err)?;
    Ok(conn)
}

fn migrate(conn: &Connection, path: &Path) -> StoreResult<()> {
    let err = |e: rusqlite::Error| StoreError::Open {
        path: path.display().to_string(),
        message: format!("migration failed: {e}"),
    };
    conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
    let result = (|| {
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            conn.execute_batch(sql)?;
            conn.execute_batch(&format!("PRAGMA user_version={}", i + 1))?;
        }
        Ok::<_, rusqlite::Error>(version)
    })();
    match result {
        Ok(version) if version as usize > MIGRATIONS.len() => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(StoreError::Open {
                path: path.display().to_string(),
                message: format!(
                    "schema version {version} is newer than this build ({})",
                    MIGRATIONS.len()
                ),
            })
        }
        Ok(_) => conn.execute_batch("COMMIT").map_err(err),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(err(e))
        }
    }
}

impl SqliteStore {
    /// What `runyard check` says of the file at `path`, read-only: its schema version
    /// against this build's, or that the first `serve` will create it.
    pub fn probe(path: &Path) -> StoreResult<String> {
        if !path.exists() {
            return Ok(format!(
                "{} does not exist yet: the first serve creates it (schema version {})",
                path.display(),
                MIGRATIONS.len()
            ));
        }
        let open_err = |e: rusqlite::Error| StoreError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(open_err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        Ok(format!(
            "SQLite {}, schema version {version} (this build: {})",
            rusqlite::version(),
            MIGRATIONS.len()
        ))
    }

    /// Opens (creating if needed) the store at `path` and applies migrations.
    pub fn open(path: &Path, sync: Synchronous) -> StoreResult<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        }
        let conn = open_writer(path, sync)?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        migrate(&conn, path)?;

        let feed = ChangeFeed::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::unbounded_channel();
        let writer_feed = feed.clone();
        let traffic = Arc::new(Traffic::default());
        let writer_traffic = traffic.clone();
        let conn = Arc::new(Mutex::new(conn));
        let writer_conn = conn.clone();
        let writer = std::thread::Builder::new()
            .name("runyard-sqlite-writer".into())
            .spawn(move || writer_loop(writer_conn, rx, writer_feed, writer_traffic))
            .map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;

        let maintenance_conn = Connection::open(path)?;
        maintenance_conn.busy_timeout(BUSY_TIMEOUT)?;
        configure_connection(&maintenance_conn)?;
        let (watch_feed, watch_stop, watch_writer) = (feed.clone(), stop.clone(), conn.clone());
        let watcher = std::thread::Builder::new()
            .name("runyard-sqlite-maint".into())
            .spawn(move || maintenance_loop(maintenance_conn, watch_writer, watch_feed, watch_stop))
            .map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;

        Ok(SqliteStore {
            writer: Mutex::new(Some(tx)),
            conn,
            inline: sync == Synchronous::Normal,
            read_slots: tokio::sync::Semaphore::new(MAX_READERS),
            readers: Arc::new(ReaderPool {
                path: path.to_path_buf(),
                idle: Mutex::new(Vec::new()),
            }),
            feed,
            traffic,
            stop,
            threads: Mutex::new(vec![writer, watcher]),
        })
    }

    /// A write through the writer thread, batched with whatever else is waiting (group
    /// commit): the right path for many concurrent small writes such as triggers.
    async fn write<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<(T, u8)> + Send + 'static,
    {
        self.submit(op, f, false).await
    }

    /// A write on a latency-critical path (a slot waits for it): run on the caller's
    /// thread when the connection is free, else like [`Self::write`].
    async fn write_now<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<(T, u8)> + Send + 'static,
    {
        self.submit(op, f, true).await
    }

    async fn submit<T, F>(&self, op: &'static str, f: F, inline: bool) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<(T, u8)> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel::<StoreResult<T>>();
        let job: Box<dyn WriteOp> = Box::new(Op {
            op,
            f,
            result: None,
            reply,
        });
        let job = match inline {
            true => match self.try_inline(job) {
                Ok(()) => return rx.await.map_err(|_| StoreError::Closed)?,
                Err(job) => job,
            },
            false => job,
        };
        let sender = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Closed)?;
        sender.send(job).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The fast path of a write: when the write connection is free, run the request
    /// right here as a batch of one — no hand-off to the writer thread and back, which
    /// is most of a lone write's latency. It never waits: if the connection is busy in
    /// this process (the writer thread or another caller) or another process holds the
    /// database's write lock, the request goes to the writer thread instead.
    fn try_inline(&self, job: Box<dyn WriteOp>) -> Result<(), Box<dyn WriteOp>> {
        if !self.inline || self.stop.load(Ordering::Relaxed) {
            return Err(job);
        }
        let Ok(conn) = self.conn.try_lock() else {
            return Err(job);
        };
        let _ = conn.busy_timeout(Duration::ZERO);
        let begin = exec_cached(&conn, "BEGIN IMMEDIATE");
        if begin.is_err() {
            return Err(job);
        }
        run_batch(&conn, &self.feed, &self.traffic, vec![job], begin);
        Ok(())
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        if self.stop.load(Ordering::Relaxed) {
            return Err(StoreError::Closed);
        }
        // Bounded: a burst of reads queues here instead of opening a connection and a
        // blocking thread per request.
        let _permit = self
            .read_slots
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.get()?;
            let r = f(&conn);
            pool.put(conn);
            r
        })
        .await
        .map_err(|e| StoreError::internal(format!("read task failed: {e}")))?
    }
}

/// Watches `PRAGMA data_version` (commits by other processes on the file) and runs WAL
/// checkpoints, off the writer thread: a checkpoint fsyncs, and on the writer it would
/// stall every write behind it.
///
/// The version is read on the *writer's* connection, where it moves only for commits
/// of other connections — other processes, since this process writes only there. Read
/// on a connection of its own it moved for this process's commits too, and every one
/// of them woke every waiter of every kind a second time (every log stream, twice a
/// read) within 50 ms.
fn maintenance_loop(
    conn: Connection,
    writer: Arc<Mutex<Connection>>,
    feed: ChangeFeed,
    stop: Arc<AtomicBool>,
) {
    let read = || {
        let c = writer.lock().unwrap_or_else(|e| e.into_inner());
        c.prepare_cached("PRAGMA data_version")
            .and_then(|mut st| st.query_row([], |r| r.get::<_, i64>(0)))
            .ok()
    };
    let mut last = read();
    let mut ticks = 0u32;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(DATA_VERSION_POLL);
        let now = read();
        if now != last {
            last = now;
            feed.bump(change::ALL);
        }
        ticks += 1;
        if ticks.is_multiple_of(CHECKPOINT_EVERY_TICKS) {
            // PASSIVE never blocks writers or readers; it copies what it can.
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::warn!("wal checkpoint failed: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------- write helpers

/// Inserts an event built by [`payload`] in the open transaction.
fn emit(conn: &Connection, mut event: NewEvent, now: i64) -> StoreResult<()> {
    let data = event.data_text(now);
    conn.prepare_cached(
        "INSERT INTO events (name, run_id, data, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![event.name.as_str(), event.run_id, data, now])?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    fn changes(&self) -> &ChangeFeed {
        &self.feed
    }

    fn traffic(&self) -> Vec<(&'static str, &'static str, u64, u64)> {
        self.traffic.by_backend("sqlite")
    }

    async fn run_create(&self, p: RunCreateParams) -> StoreResult<RunCreated> {
        runs::run_create(self, p).await
    }

    async fn jobs_adopt_key(&self, pipeline: &str) -> StoreResult<u64> {
        claim::jobs_adopt_key(self, pipeline).await
    }
    async fn job_claim(&self, p: JobClaimParams) -> StoreResult<ClaimOutcome> {
        claim::job_claim(self, p).await
    }

    async fn job_start(&self, p: JobStartParams) -> StoreResult<Option<bool>> {
        executions::job_start(self, p).await
    }

    async fn job_output_append(&self, p: OutputAppendParams) -> StoreResult<bool> {
        executions::job_output_append(self, p).await
    }

    async fn job_progress(&self, p: JobProgressParams) -> StoreResult<bool> {
        executions::job_progress(self, p).await
    }

    async fn job_finish(&self, p: JobFinishParams) -> StoreResult<FinishOutcome> {
        finish::job_finish(self, p).await
    }

    async fn run_abort_by(
        &self,
        run_id: &str,
        now: i64,
        by: Option<String>,
    ) -> StoreResult<AbortOutcome> {
        runs::run_abort_by(self, run_id, now, by).await
    }

    async fn node_register(&self, node: NodeRow) -> StoreResult<()> {
        nodes::node_register(self, node).await
    }

    async fn node_heartbeat(&self, p: NodeHeartbeatParams) -> StoreResult<HeartbeatOutcome> {
        nodes::node_heartbeat(self, p).await
    }

    async fn node_remove(&self, node_id: &str) -> StoreResult<()> {
        nodes::node_remove(self, node_id).await
    }

    async fn node_remove_stale(&self, node_id: &str, seen_heartbeat_at: i64) -> StoreResult<bool> {
        nodes::node_remove_stale(self, node_id, seen_heartbeat_at).await
    }

    async fn nodes_list(&self) -> StoreResult<Vec<NodeRow>> {
        nodes::nodes_list(self).await
    }
    async fn node_names(&self) -> StoreResult<HashMap<String, String>> {
        nodes::node_names(self).await
    }

    async fn jobs_running_on(&self, node_id: &str) -> StoreResult<Vec<RunningJob>> {
        nodes::jobs_running_on(self, node_id).await
    }

    async fn jobs_running_unowned(&self) -> StoreResult<Vec<RunningJob>> {
        nodes::jobs_running_unowned(self).await
    }

    async fn jobs_abort_requested(&self, node_id: &str) -> StoreResult<Vec<(String, i64)>> {
        nodes::jobs_abort_requested(self, node_id).await
    }

    async fn run_ids_by_prefix(&self, prefix: &str, limit: usize) -> StoreResult<Vec<String>> {
        read::run_ids_by_prefix(self, prefix, limit).await
    }

    async fn run_get(&self, run_id: &str) -> StoreResult<Option<RunRecord>> {
        read::run_get(self, run_id).await
    }

    async fn runs_list(&self, f: RunFilter) -> StoreResult<Vec<RunRecord>> {
        read::runs_list(self, f).await
    }

    async fn job_get(&self, job_id: &str) -> StoreResult<Option<JobRecord>> {
        read::job_get(self, job_id).await
    }

    async fn job_logs(&self, job_id: &str, tail: Option<usize>) -> StoreResult<Option<JobLogs>> {
        read::job_logs(self, job_id, tail).await
    }

    async fn job_output_after(
        &self,
        job_id: &str,
        after: i64,
        limit: usize,
    ) -> StoreResult<Vec<LogLine>> {
        read::job_output_after(self, job_id, after, limit).await
    }

    async fn job_output_len(&self, job_id: &str) -> StoreResult<i64> {
        read::job_output_len(self, job_id).await
    }

    async fn events_after(&self, after: i64, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        read::events_after(self, after, limit).await
    }

    async fn events_bounds(&self) -> StoreResult<(i64, i64)> {
        read::events_bounds(self).await
    }

    async fn run_events(&self, run_id: &str, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        read::run_events(self, run_id, limit).await
    }

    async fn pipeline_stats(&self, p: PipelineStatsParams) -> StoreResult<Vec<PipelineStatsRow>> {
        read::pipeline_stats(self, p).await
    }

    async fn pipeline_counts(&self) -> StoreResult<HashMap<String, PipelineCounts>> {
        read::pipeline_counts(self).await
    }

    async fn runs_prune(&self, before: i64, batch: usize) -> StoreResult<PruneOutcome> {
        runs::runs_prune(self, before, batch).await
    }

    async fn run_summary(&self, run_id: &str) -> StoreResult<Option<Value>> {
        read::run_summary(self, run_id).await
    }

    async fn deliveries_claim(
        &self,
        node_id: &str,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<PendingDelivery>> {
        outbox::deliveries_claim(self, node_id, now, lease_ms, limit).await
    }

    async fn delivery_record(&self, p: DeliveryRecordParams) -> StoreResult<bool> {
        outbox::delivery_record(self, p).await
    }

    async fn deliveries_of_run(&self, run_id: &str) -> StoreResult<Vec<DeliveryRecord>> {
        outbox::deliveries_of_run(self, run_id).await
    }

    async fn pipeline_node_set(&self, state: PipelineNodeState) -> StoreResult<()> {
        pipeline_state::pipeline_node_set(self, state).await
    }

    async fn pipeline_nodes_list(&self) -> StoreResult<Vec<PipelineNodeState>> {
        pipeline_state::pipeline_nodes_list(self).await
    }

    async fn pipeline_pause(&self, p: PipelinePauseParams) -> StoreResult<bool> {
        pipeline_state::pipeline_pause(self, p).await
    }

    async fn pipelines_paused(&self) -> StoreResult<Vec<PipelinePause>> {
        pipeline_state::pipelines_paused(self).await
    }

    async fn schedules_list(&self) -> StoreResult<Vec<ScheduleState>> {
        pipeline_state::schedules_list(self).await
    }

    async fn schedule_init(
        &self,
        pipeline: &str,
        key: &str,
        next_fire_at: i64,
        now: i64,
    ) -> StoreResult<bool> {
        pipeline_state::schedule_init(self, pipeline, key, next_fire_at, now).await
    }

    async fn schedule_fire(&self, p: ScheduleFireParams) -> StoreResult<Option<RunCreated>> {
        pipeline_state::schedule_fire(self, p).await
    }

    async fn close(&self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the sender ends the writer loop once queued writes are committed.
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        let threads: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        self.readers
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests;
