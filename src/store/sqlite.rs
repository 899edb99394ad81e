//! The embedded store: one SQLite file in WAL mode, shareable by several
//! `runyard serve` processes on one host.
//!
//! Writes go through **one writer thread per process** with group commit
//! (DESIGN decision 13): callers send closures over a channel; the thread
//! takes every waiting request, runs them in one `BEGIN IMMEDIATE`
//! transaction, each inside its own savepoint (so one failing request rolls
//! back alone), commits once, and only then answers each caller. Nothing is
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

mod completion;
mod outbox;

use completion::{finalizer_ended, land_terminal};

use super::payload::{self, NewEvent};
use super::transition::{JobFence, RetryOn, decide, outcome_error};
use super::*;
use crate::config::Synchronous;
use crate::model::JobKind;

const MIGRATIONS: &[&str] = &[
    include_str!("migrations/sqlite_0001_init.sql"),
    include_str!("migrations/sqlite_0002_completion.sql"),
    include_str!("migrations/sqlite_0003_dashboard.sql"),
    include_str!("migrations/sqlite_0004_retry_on.sql"),
    include_str!("migrations/sqlite_0005_pipeline_state.sql"),
    include_str!("migrations/sqlite_0006_rerun.sql"),
    include_str!("migrations/sqlite_0007_queue_order.sql"),
    include_str!("migrations/sqlite_0008_schedules.sql"),
    include_str!("migrations/sqlite_0009_aborted_by.sql"),
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

/// A write request queued for the writer thread. It may run more than once: the
/// fast path runs a whole batch in one transaction; if any request in it fails,
/// the batch is rolled back and every request runs again in a transaction of its
/// own, so one bad request never takes the others with it and no savepoints are
/// needed on the fast path.
trait WriteOp: Send {
    /// The store operation it belongs to (`runyard_store_*_total{op}`).
    fn op(&self) -> &'static str;
    /// Runs in the open transaction; returns the change kinds and whether it succeeded.
    fn run(&mut self, conn: &Connection) -> (u8, bool);
    /// Answers the caller with the last run's result, given how the transaction ended.
    fn answer(self: Box<Self>, commit: StoreResult<()>);
}

struct Op<T, F> {
    op: &'static str,
    f: F,
    result: Option<StoreResult<(T, u8)>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> WriteOp for Op<T, F>
where
    T: Send,
    F: FnMut(&Connection) -> StoreResult<(T, u8)> + Send,
{
    fn op(&self) -> &'static str {
        self.op
    }

    fn run(&mut self, conn: &Connection) -> (u8, bool) {
        let result = (self.f)(conn);
        let out = match &result {
            Ok((_, kinds)) => (*kinds, true),
            Err(_) => (0, false),
        };
        self.result = Some(result);
        out
    }

    fn answer(self: Box<Self>, commit: StoreResult<()>) {
        let result = self.result.unwrap_or(Err(StoreError::Closed));
        let _ = self.reply.send(commit.and(result).map(|(t, _)| t));
    }
}

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

fn writer_loop(
    conn: Arc<Mutex<Connection>>,
    mut rx: mpsc::UnboundedReceiver<Box<dyn WriteOp>>,
    feed: ChangeFeed,
    traffic: Arc<Traffic>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
        let _ = conn.busy_timeout(BUSY_TIMEOUT);
        let begin = begin_immediate(&conn);
        run_batch(&conn, &feed, &traffic, batch, begin);
    }
}

thread_local! {
    /// Statements the write connection ran on this thread (see [`count_statement`]).
    static STATEMENTS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The write connection's statement tracer: every statement it starts, except the
/// transaction's own (BEGIN, COMMIT, ROLLBACK), as PostgreSQL's are counted.
fn count_statement(event: rusqlite::trace::TraceEvent<'_>) {
    if let rusqlite::trace::TraceEvent::Stmt(_, sql) = event {
        let head = sql
            .trim_start()
            .get(..8)
            .unwrap_or(sql)
            .to_ascii_uppercase();
        if !["BEGIN", "COMMIT", "ROLLBACK"]
            .iter()
            .any(|k| head.starts_with(k))
        {
            STATEMENTS.with(|n| n.set(n.get() + 1));
        }
    }
}

/// Runs one operation of a batch, recording the statements it ran.
fn counted<T>(traffic: &Traffic, op: &'static str, run: impl FnOnce() -> T) -> T {
    let before = STATEMENTS.with(|n| n.get());
    let out = run();
    traffic.record(op, STATEMENTS.with(|n| n.get()) - before, 0);
    out
}

/// Runs a batch in the transaction `begin` opened (or answers every request with its error).
fn run_batch(
    conn: &Connection,
    feed: &ChangeFeed,
    traffic: &Traffic,
    mut batch: Vec<Box<dyn WriteOp>>,
    begin: StoreResult<()>,
) {
    let mut kinds = 0u8;
    let mut all_ok = true;
    if begin.is_ok() {
        for op in batch.iter_mut() {
            let (k, ok) = counted(traffic, op.op(), || op.run(conn));
            kinds |= k;
            all_ok &= ok;
            if !ok {
                break;
            }
        }
    }
    match begin {
        Err(err) => {
            for op in batch {
                op.answer(Err(err.clone()));
            }
        }
        Ok(()) if all_ok => {
            let commit = exec_cached(conn, "COMMIT");
            if let (Ok(()), Some(first)) = (&commit, batch.first()) {
                // One commit for the batch, counted on its first operation.
                traffic.record(first.op(), 0, 1);
            }
            if commit.is_err() {
                let _ = conn.execute_batch("ROLLBACK");
            } else if kinds != 0 {
                publish(conn, feed, kinds);
            }
            for op in batch {
                op.answer(commit.clone());
            }
        }
        Ok(()) => {
            // Slow path: something failed, so nothing of this batch is kept; each
            // request runs again alone and fails or commits on its own.
            let _ = exec_cached(conn, "ROLLBACK");
            for mut op in batch {
                let commit = begin_immediate(conn).and_then(|()| {
                    let (k, ok) = counted(traffic, op.op(), || op.run(conn));
                    if ok {
                        exec_cached(conn, "COMMIT").inspect(|()| {
                            traffic.record(op.op(), 0, 1);
                            publish(conn, feed, k)
                        })
                    } else {
                        exec_cached(conn, "ROLLBACK")
                    }
                });
                if commit.is_err() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                op.answer(commit);
            }
        }
    }
}

/// After a commit: record the newest event id (for the idle event tailer), then wake
/// the waiters of every changed kind.
fn publish(conn: &Connection, feed: &ChangeFeed, kinds: u8) {
    if kinds & change::EVENTS != 0 {
        let high: Option<i64> = conn
            .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
            .and_then(|mut st| st.query_row([], |r| r.get(0)).optional())
            .ok()
            .flatten();
        if let Some(id) = high {
            feed.publish_last_event(id);
        }
    }
    feed.bump_local(kinds);
}

/// `BEGIN IMMEDIATE` takes the write lock up front, waiting up to `busy_timeout` for
/// another process's writer; it is retried a few times more before failing, so lock
/// contention between processes never reaches callers as an error.
fn begin_immediate(conn: &Connection) -> StoreResult<()> {
    let mut begin = exec_cached(conn, "BEGIN IMMEDIATE");
    let mut tries = 0;
    while matches!(&begin, Err(e) if e.is_transient()) && tries < 6 {
        tries += 1;
        tracing::warn!(
            "sqlite write lock busy for {:?}; retrying",
            BUSY_TIMEOUT * tries
        );
        begin = exec_cached(conn, "BEGIN IMMEDIATE");
    }
    begin
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

fn fence_row(conn: &Connection, job_id: &str) -> StoreResult<Option<JobFence>> {
    Ok(conn
        .prepare_cached(
            "SELECT status, claim_seq, attempt, max_attempts, retry_backoff_ms, abort_requested, orphan_requeues,
                    max_orphan_requeues, on_orphan, run_id, pipeline, shard_index, kind, retry_on FROM jobs WHERE id = ?1",
        )?
        .query_row(params![job_id], |r| {
            Ok(JobFence {
                status: r.get(0)?,
                claim_seq: r.get(1)?,
                attempt: r.get(2)?,
                max_attempts: r.get(3)?,
                retry_backoff_ms: r.get(4)?,
                abort_requested: r.get(5)?,
                orphan_requeues: r.get(6)?,
                max_orphan_requeues: r.get(7)?,
                on_orphan: r.get(8)?,
                run_id: r.get(9)?,
                pipeline: r.get(10)?,
                shard_index: r.get(11)?,
                kind: JobKind::from_name(r.get_ref(12)?.as_str()?),
                retry_on: RetryOn::from_column(r.get_ref(13)?.as_str_or_null()?),
            })
        })
        .optional()?)
}

/// Inserts a re-run's kept shard: a terminal copy of the original's job (see [`rerun`]).
fn copy_kept(
    conn: &Connection,
    run_id: &str,
    job_id: &str,
    from: &str,
    now: i64,
) -> StoreResult<()> {
    let copied = conn
        .prepare_cached(
            "INSERT INTO jobs (id, run_id, pipeline, shard_index, shard_count, status, reason, attempt, max_attempts,
                               retry_backoff_ms, on_orphan, orphan_requeues, max_orphan_requeues, run_after, node_id,
                               exit_code, error, stdout_bytes, stderr_bytes, truncated, created_at, claimed_at,
                               started_at, finished_at, kind, result, retry_on, kept_from)
             SELECT ?1, ?2, pipeline, shard_index, shard_count, status, reason, attempt, max_attempts,
                    retry_backoff_ms, on_orphan, orphan_requeues, max_orphan_requeues, run_after, node_id,
                    exit_code, error, stdout_bytes, stderr_bytes, truncated, ?3, claimed_at,
                    started_at, finished_at, kind, result, retry_on, id
             FROM jobs WHERE id = ?4 AND finished_at IS NOT NULL",
        )?
        .execute(params![job_id, run_id, now, from])?;
    if copied != 1 {
        return Err(StoreError::Conflict {
            message: format!("job {from} is gone or not finished: it cannot be kept"),
        });
    }
    Ok(())
}

/// Claims queued jobs for a node inside the caller's transaction (see [`Store::job_claim`]).
fn claim_in_tx(conn: &Connection, p: &JobClaimParams) -> StoreResult<ClaimOutcome> {
    // A node without a row was declared dead (or has deregistered): it may not claim, so a
    // `running` job always belongs to a registered node or is stranded (see the rescuer).
    let registered = conn
        .prepare_cached("SELECT 1 FROM nodes WHERE id = ?1")?
        .query_row(params![p.node_id], |_| Ok(()))
        .optional()?
        .is_some();
    if !registered {
        return Ok(ClaimOutcome::default());
    }
    // Held jobs that fell due (delayed runs, retries past their backoff) join the claim
    // index: a range of `jobs_held`, nothing when none is due.
    conn.prepare_cached(
        "UPDATE jobs SET held = 0 WHERE seq IN (
             SELECT seq FROM jobs INDEXED BY jobs_held
             WHERE status = 'queued' AND held = 1 AND run_after <= ?1 ORDER BY run_after LIMIT ?2)",
    )?
    .execute(params![p.now, RELEASE_BATCH as i64])?;
    let mut running: HashMap<String, u32> = HashMap::new();
    // Counting running jobs only matters when some cap applies; the single writer
    // serialises the count with the claim.
    if claim_plan::needs_counts(p) {
        let mut stmt = conn.prepare_cached(
            "SELECT pipeline, COUNT(*) FROM jobs WHERE status = 'running' GROUP BY pipeline",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            running.insert(r.get(0)?, r.get(1)?);
        }
    }
    let mut plan = claim_plan::plan(p, &running);
    if !plan.rooms.is_empty() {
        let paused: std::collections::HashSet<String> = conn
            .prepare_cached("SELECT pipeline FROM pipeline_state WHERE paused = 1")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        claim_plan::leave_out_paused(&mut plan, &paused);
    }
    let mut want = plan.want;
    let mut out = ClaimOutcome::default();
    let mut candidates: Vec<(i64, ClaimedJob)> = Vec::new();
    if want > 0 {
        let mut head = conn.prepare_cached(
            "SELECT j.seq, j.id, j.run_id, j.pipeline, j.shard_index, j.shard_count, j.attempt, r.params, j.kind,
                    j.run_after, j.priority
             FROM jobs j INDEXED BY jobs_ready JOIN runs r ON r.id = j.run_id
             WHERE j.status = 'queued' AND j.pipeline = ?1 AND j.held = 0 AND j.run_after <= ?2
             ORDER BY j.priority DESC, j.seq LIMIT ?3",
        )?;
        for (name, room) in &plan.rooms {
            let rows = head.query_map(params![name, p.now, *room as i64], |r| {
                let params: String = r.get(7)?;
                Ok((
                    r.get(0)?,
                    ClaimedJob {
                        id: r.get(1)?,
                        run_id: r.get(2)?,
                        pipeline: r.get(3)?,
                        shard_index: r.get(4)?,
                        shard_count: r.get(5)?,
                        attempt: r.get(6)?,
                        claim_seq: 0,
                        params: serde_json::from_str(&params).unwrap_or_default(),
                        kind: JobKind::from_name(r.get_ref(8)?.as_str()?),
                        due_at: r.get(9)?,
                        priority: r.get(10)?,
                        output_lines: 0,
                    },
                ))
            })?;
            for row in rows {
                candidates.push(row?);
            }
        }
    }
    let mut claim = conn.prepare_cached(
        "UPDATE jobs SET status = 'running', claim_seq = claim_seq + 1, node_id = ?2, claimed_at = ?3,
                pid = NULL, proc_start = NULL, started_at = NULL, exit_code = NULL, abort_requested = 0
         WHERE seq = ?1 AND status = 'queued' RETURNING claim_seq",
    )?;
    for (seq, mut job) in claim_plan::merge(candidates, want) {
        if let Some(claim_seq) = claim
            .query_row(params![seq, p.node_id, p.now], |r| r.get(0))
            .optional()?
        {
            job.claim_seq = claim_seq;
            job.output_lines = output_end(conn, &job.id)?;
            want -= 1;
            out.jobs.push(job);
        }
    }
    if want > 0 {
        out.next_due = conn
            .prepare_cached(
                "SELECT MIN(run_after) FROM jobs INDEXED BY jobs_held WHERE status = 'queued' AND held = 1",
            )?
            .query_row([], |r| r.get(0))?;
    }
    Ok(out)
}

/// What an output append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Append {
    Written,
    /// An earlier try of the same batch committed: nothing added.
    Already,
    /// Not this execution's claim, or the log does not end where the batch starts.
    Refused,
}

/// The next line number of a job's log (its stored line count).
fn output_end(conn: &Connection, job_id: &str) -> StoreResult<i64> {
    Ok(conn
        .prepare_cached("SELECT first_line + line_count FROM output WHERE job_id = ?1 ORDER BY first_line DESC LIMIT 1")?
        .query_row(params![job_id], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Records a spawned process (fenced); `None` when the claim is no longer ours, else
/// whether an abort was requested meanwhile.
fn start_in_tx(conn: &Connection, p: &JobStartParams) -> StoreResult<Option<bool>> {
    let row: Option<(bool, String, String, u32, u32)> = conn
        .prepare_cached(
            "UPDATE jobs SET pid = ?3, proc_start = ?4, started_at = ?5
             WHERE id = ?1 AND claim_seq = ?2 AND status = 'running' AND pid IS NOT ?3
             RETURNING abort_requested, run_id, pipeline, shard_index, attempt",
        )?
        .query_row(
            params![p.job_id, p.claim_seq, p.pid, p.proc_start as i64, p.now],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((abort_requested, run_id, pipeline, shard_index, attempt)) = row else {
        // Recorded already (the same start again): no second event.
        return Ok(conn
            .prepare_cached(
                "SELECT abort_requested FROM jobs WHERE id = ?1 AND claim_seq = ?2 AND status = 'running' AND pid = ?3",
            )?
            .query_row(params![p.job_id, p.claim_seq, p.pid], |r| r.get(0))
            .optional()?);
    };
    conn.prepare_cached(
        "UPDATE runs SET status = 'running', started_at = ?2 WHERE id = ?1 AND status = 'queued'",
    )?
    .execute(params![run_id, p.now])?;
    emit(
        conn,
        payload::job_started(
            &run_id,
            &p.job_id,
            &pipeline,
            shard_index,
            attempt,
            p.pid,
            p.claim_seq,
        ),
        p.now,
    )?;
    Ok(Some(abort_requested))
}

/// Ends an execution and, when asked, claims follow-up work for the freed slot in the same
/// transaction, so one commit both frees and refills the slot.
fn finish_in_tx(conn: &Connection, p: &JobFinishParams) -> StoreResult<(FinishOutcome, u8)> {
    // A job that ended before its start was recorded gets both in this one transaction,
    // `job:started` first.
    if let Some(start) = &p.start {
        start_in_tx(conn, start)?;
    }
    let (mut out, kinds) = finish_fenced(conn, p)?;
    if let Some(claim) = &p.claim_next {
        out.next = claim_in_tx(conn, claim)?.jobs;
    }
    Ok((out, kinds))
}

fn finish_fenced(conn: &Connection, p: &JobFinishParams) -> StoreResult<(FinishOutcome, u8)> {
    let not_applied = FinishOutcome {
        applied: false,
        status: None,
        run_finalized: None,
        next: Vec::new(),
    };
    let Some(row) = fence_row(conn, &p.job_id)? else {
        return Ok((not_applied, 0));
    };
    if !row.is_held_by(p.claim_seq) {
        return Ok((not_applied, 0));
    }
    let t = decide(&row, &p.outcome, p.exit_code, p.now);
    let error = outcome_error(&p.outcome);
    let terminal = t.status.is_terminal();
    let changed = conn
        .prepare_cached(
            "UPDATE jobs SET status = ?3, reason = ?4, attempt = ?5, orphan_requeues = ?6, run_after = ?7,
                    exit_code = ?8, error = ?9, stdout_bytes = ?10, stderr_bytes = ?11, truncated = ?12,
                    finished_at = CASE WHEN ?13 THEN ?14 ELSE NULL END, result = ?15, held = ?16
             WHERE id = ?1 AND claim_seq = ?2 AND status = 'running'",
        )?
        .execute(params![
            p.job_id,
            p.claim_seq,
            t.status.as_str(),
            t.reason.map(|r| r.as_str()),
            t.attempt,
            t.orphan_requeues,
            t.run_after,
            p.exit_code,
            error,
            p.stdout_bytes as i64,
            p.stderr_bytes as i64,
            p.truncated,
            terminal,
            p.now,
            p.result,
            t.status == JobStatus::Queued && claim_plan::held(t.run_after, p.now),
        ])?;
    if changed != 1 {
        return Ok((not_applied, 0));
    }
    emit(
        conn,
        payload::job_ended(&p.job_id, &row, &t, p.exit_code, error.as_deref()),
        p.now,
    )?;
    let run_finalized = if terminal && row.kind == JobKind::Finalize {
        finalizer_ended(conn, &row.run_id, t.status, p.now)?
    } else if terminal {
        land_terminal(conn, &row.run_id, p.now)?
    } else {
        None
    };
    Ok((
        FinishOutcome {
            applied: true,
            status: Some(t.status),
            run_finalized,
            next: Vec::new(),
        },
        change::WORK | change::EVENTS,
    ))
}

// ---------------------------------------------------------------- read helpers

fn running_job(r: &Row<'_>) -> rusqlite::Result<RunningJob> {
    Ok(RunningJob {
        id: r.get(0)?,
        claim_seq: r.get(1)?,
        pid: r.get(2)?,
        proc_start: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
        claimed_at: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
    })
}

const JOB_COLS: &str =
    "id, run_id, pipeline, shard_index, shard_count, status, reason, attempt, max_attempts,
    orphan_requeues, node_id, pid, exit_code, progress, progress_message, error, abort_requested,
    stdout_bytes, stderr_bytes, truncated, created_at, started_at, finished_at, kind, result, kept_from";

fn job_view(r: &Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        id: r.get(0)?,
        run_id: r.get(1)?,
        pipeline_id: r.get(2)?,
        shard_index: r.get(3)?,
        shard_count: r.get(4)?,
        status: r.get(5)?,
        reason: r.get(6)?,
        attempt: r.get(7)?,
        max_attempts: r.get(8)?,
        requeues: r.get(9)?,
        node: r.get(10)?,
        pid: r.get(11)?,
        exit_code: r.get(12)?,
        progress: r.get(13)?,
        progress_message: r.get(14)?,
        error: r.get(15)?,
        abort_requested: r.get(16)?,
        stdout_bytes: r.get::<_, i64>(17)? as u64,
        stderr_bytes: r.get::<_, i64>(18)? as u64,
        truncated: r.get(19)?,
        created_at: r.get(20)?,
        started_at: r.get(21)?,
        finished_at: r.get(22)?,
        kind: JobKind::from_name(r.get_ref(23)?.as_str()?),
        result: r.get(24)?,
        kept_from: r.get(25)?,
    })
}

const RUN_COLS: &str = "id, pipeline, status, params, shard_count, shards_done, triggered_by, actor, created_at, started_at, finished_at, shards_status, callback_url, rerun_of, priority, run_at, scheduled_for, aborted_by";

fn run_view(r: &Row<'_>) -> rusqlite::Result<RunRecord> {
    let params: String = r.get(3)?;
    Ok(RunRecord {
        run_id: r.get(0)?,
        pipeline_id: r.get(1)?,
        status: r.get(2)?,
        parameters: serde_json::from_str(&params).unwrap_or_default(),
        shard_count: r.get(4)?,
        shards_done: r.get(5)?,
        triggered_by: r.get(6)?,
        actor: r.get(7)?,
        created_at: r.get(8)?,
        started_at: r.get(9)?,
        finished_at: r.get(10)?,
        shards_status: r.get(11)?,
        callback_url: r.get(12)?,
        rerun_of: r.get(13)?,
        priority: r.get(14)?,
        run_at: r.get(15)?,
        scheduled_for: r.get(16)?,
        aborted_by: r.get(17)?,
        jobs: Vec::new(),
        finalizer: None,
    })
}

fn attach_jobs(conn: &Connection, runs: &mut [RunRecord]) -> StoreResult<()> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {JOB_COLS} FROM jobs WHERE run_id = ?1 ORDER BY shard_index"
    ))?;
    for run in runs.iter_mut() {
        let jobs: Vec<JobRecord> = stmt
            .query_map(params![run.run_id], job_view)?
            .collect::<Result<_, _>>()?;
        for job in jobs {
            run.attach(job);
        }
    }
    Ok(())
}

const STDOUT: i64 = 1;
const STDERR: i64 = 2;

fn stream_of(code: i64) -> Stream {
    if code == STDERR {
        Stream::Stderr
    } else {
        Stream::Stdout
    }
}

fn tail_lines(
    conn: &Connection,
    job_id: &str,
    stream: i64,
    tail: Option<usize>,
) -> StoreResult<Vec<String>> {
    let mut lines = Vec::new();
    match tail {
        None => {
            let mut stmt = conn.prepare_cached(
                "SELECT data FROM output WHERE job_id = ?1 AND stream = ?2 ORDER BY id",
            )?;
            let mut rows = stmt.query(params![job_id, stream])?;
            while let Some(r) = rows.next()? {
                lines.extend(r.get_ref(0)?.as_str()?.split('\n').map(str::to_string));
            }
        }
        Some(n) => {
            let mut chunks: Vec<String> = Vec::new();
            let mut have = 0usize;
            let mut stmt = conn
                .prepare_cached("SELECT data, line_count FROM output WHERE job_id = ?1 AND stream = ?2 ORDER BY id DESC")?;
            let mut rows = stmt.query(params![job_id, stream])?;
            while have < n {
                let Some(r) = rows.next()? else { break };
                have += r.get::<_, i64>(1)? as usize;
                chunks.push(r.get(0)?);
            }
            for chunk in chunks.iter().rev() {
                lines.extend(chunk.split('\n').map(str::to_string));
            }
            let skip = lines.len().saturating_sub(n);
            lines.drain(..skip);
        }
    }
    Ok(lines)
}

/// Writes a run, its jobs and their events in the open transaction (see
/// [`Store::run_create`]); returns it with the change kinds to publish.
fn create_in_tx(conn: &Connection, p: &RunCreateParams) -> StoreResult<(RunCreated, u8)> {
    if let Some(key) = &p.idempotency_key {
        let existing: Option<(String, i64, String)> = conn
            .prepare_cached("SELECT id, created_at, params FROM runs WHERE pipeline = ?1 AND idempotency_key = ?2")?
            .query_row(params![p.pipeline, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        if let Some((run_id, created_at, params_text)) = existing {
            let job_ids = conn
                .prepare_cached(
                    "SELECT id FROM jobs WHERE run_id = ?1 AND kind = 'shard' ORDER BY shard_index",
                )?
                .query_map(params![run_id], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            let existing_params = Some(serde_json::from_str(&params_text).unwrap_or_default());
            return Ok((
                RunCreated {
                    run_id,
                    job_ids,
                    created_at,
                    existing: true,
                    existing_params,
                    paused: None,
                },
                0,
            ));
        }
    }
    let shard_count = p.job_ids.len() as i64;
    let retry_on = p.policy.retry_on.to_column();
    conn.prepare_cached(
        "INSERT INTO runs (id, pipeline, status, params, shard_count, triggered_by, actor, idempotency_key, created_at,
                           has_finalizer, callback_url, rerun_of, shards_done, priority, run_at, scheduled_for)
         VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        p.run_id,
        p.pipeline,
        serde_json::to_string(&p.params).unwrap_or_else(|_| "{}".into()),
        shard_count,
        p.triggered_by,
        p.actor,
        p.idempotency_key,
        p.now,
        p.has_finalizer,
        p.callback_url,
        p.options.rerun_of,
        p.options.kept.len() as i64,
        p.options.priority,
        p.options.not_before,
        p.options.scheduled_for,
    ])?;
    let run_after = p.options.not_before.map_or(p.now, |t| t.max(p.now));
    let held = claim_plan::held(run_after, p.now);
    let mut insert = conn.prepare_cached(
        "INSERT INTO jobs (id, run_id, pipeline, shard_index, shard_count, status, max_attempts, retry_backoff_ms,
                           on_orphan, max_orphan_requeues, run_after, created_at, retry_on, priority, held)
         VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    for (i, job_id) in p.job_ids.iter().enumerate() {
        if let Some(kept) = p.options.kept.iter().find(|k| k.shard_index as usize == i) {
            copy_kept(conn, &p.run_id, job_id, &kept.from_job, p.now)?;
            continue;
        }
        insert.execute(params![
            job_id,
            p.run_id,
            p.pipeline,
            i as i64,
            shard_count,
            p.policy.max_attempts,
            p.policy.retry_backoff_ms,
            p.policy.on_orphan,
            p.policy.max_orphan_requeues,
            run_after,
            p.now,
            retry_on,
            p.options.priority,
            held,
        ])?;
        emit(
            conn,
            payload::shard_created(
                &p.run_id,
                job_id,
                &p.pipeline,
                i as u32,
                shard_count as u32,
                &p.triggered_by,
                p.actor.as_deref(),
            ),
            p.now,
        )?;
    }
    Ok((
        RunCreated {
            run_id: p.run_id.clone(),
            job_ids: p.job_ids.clone(),
            created_at: p.now,
            existing: false,
            existing_params: None,
            paused: None,
        },
        change::WORK | change::EVENTS,
    ))
}

#[async_trait]
impl Store for SqliteStore {
    fn changes(&self) -> &ChangeFeed {
        &self.feed
    }

    fn traffic(&self) -> Vec<(&'static str, &'static str, u64, u64)> {
        self.traffic
            .snapshot()
            .into_iter()
            .map(|(op, s, c)| ("sqlite", op, s, c))
            .collect()
    }

    async fn run_create(&self, p: RunCreateParams) -> StoreResult<RunCreated> {
        self.write("run_create", move |conn| create_in_tx(conn, &p))
            .await
    }

    async fn job_claim(&self, p: JobClaimParams) -> StoreResult<ClaimOutcome> {
        self.write_now("job_claim", move |conn| Ok((claim_in_tx(conn, &p)?, 0)))
            .await
    }

    async fn job_start(&self, p: JobStartParams) -> StoreResult<Option<bool>> {
        self.write("job_start", move |conn| {
            let started = start_in_tx(conn, &p)?;
            Ok((started, if started.is_some() { change::EVENTS } else { 0 }))
        })
        .await
    }

    async fn job_output_append(&self, p: OutputAppendParams) -> StoreResult<bool> {
        let job_id = p.job_id.clone();
        let total = (p.stdout.len() + p.stderr.len()) as i64;
        let appended = self.write("job_output_append", move |conn| {
            let live: Option<i64> = conn
                .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1 AND claim_seq = ?2 AND status = 'running'")?
                .query_row(params![p.job_id, p.claim_seq], |r| r.get(0))
                .optional()?;
            if live.is_none() {
                return Ok((Append::Refused, 0));
            }
            let mut next = output_end(conn, &p.job_id)?;
            match p.first_line {
                Some(expected) if next == expected + total => return Ok((Append::Already, 0)),
                Some(expected) if next != expected => return Ok((Append::Refused, 0)),
                _ => {}
            }
            let mut insert = conn.prepare_cached(
                "INSERT INTO output (job_id, claim_seq, stream, first_line, line_count, data, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (stream, lines) in [(STDOUT, &p.stdout), (STDERR, &p.stderr)] {
                if lines.is_empty() {
                    continue;
                }
                insert.execute(params![p.job_id, p.claim_seq, stream, next, lines.len() as i64, lines.join("\n"), p.now])?;
                next += lines.len() as i64;
            }
            // No `change::OUTPUT`: after COMMIT only this job's followers wake.
            Ok((Append::Written, 0))
        })
        .await?;
        if appended == Append::Written {
            self.feed.bump_output([job_id.as_str()]);
        }
        Ok(appended != Append::Refused)
    }

    async fn job_progress(&self, p: JobProgressParams) -> StoreResult<bool> {
        self.write("job_progress", move |conn| {
            let row: Option<(String, String, u32)> = conn
                .prepare_cached(
                    "UPDATE jobs SET progress = ?3, progress_message = ?4
                     WHERE id = ?1 AND claim_seq = ?2 AND status = 'running' RETURNING run_id, pipeline, shard_index",
                )?
                .query_row(params![p.job_id, p.claim_seq, p.percent, p.message], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            let Some((run_id, pipeline, shard_index)) = row else { return Ok((false, 0)) };
            emit(
                conn,
                payload::job_progress(&run_id, &p.job_id, &pipeline, shard_index, p.percent, &p.message),
                p.now,
            )?;
            Ok((true, change::EVENTS))
        })
        .await
    }

    async fn job_finish(&self, p: JobFinishParams) -> StoreResult<FinishOutcome> {
        let job_id = p.job_id.clone();
        let outcome = self
            .write_now("job_finish", move |conn| finish_in_tx(conn, &p))
            .await?;
        if outcome.applied {
            self.feed.bump_job_state([job_id.as_str()]);
        }
        Ok(outcome)
    }

    async fn run_abort_by(
        &self,
        run_id: &str,
        now: i64,
        by: Option<String>,
    ) -> StoreResult<AbortOutcome> {
        let run = run_id.to_string();
        let outcome = self.write("run_abort_by", move |conn| {
            let run_id = run.as_str();
            let status: Option<String> = conn
                .prepare_cached("SELECT status FROM runs WHERE id = ?1")?
                .query_row(params![run_id], |r| r.get(0))
                .optional()?;
            let Some(status) = status else { return Ok((AbortOutcome::NotFound, 0)) };
            match status.parse::<RunStatus>() {
                Ok(RunStatus::Aborted) => return Ok((AbortOutcome::Aborted { aborted_jobs: 0, queued: 0, running: 0 }, 0)),
                Ok(s @ (RunStatus::Completed | RunStatus::Failed)) => return Ok((AbortOutcome::Finished(s), 0)),
                _ => {}
            }
            conn.prepare_cached(
                "UPDATE runs SET status = 'aborted', aborted_by = ?2 WHERE id = ?1 AND status IN ('queued', 'running')",
            )?
            .execute(params![run_id, by])?;
            let queued: Vec<(String, String, u32)> = conn
                .prepare_cached(
                    "UPDATE jobs SET status = 'aborted', reason = 'aborted', finished_at = ?2
                     WHERE run_id = ?1 AND status = 'queued' AND kind = 'shard' RETURNING id, pipeline, shard_index",
                )?
                .query_map(params![run_id, now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            let flagged = conn
                .prepare_cached("UPDATE jobs SET abort_requested = 1 WHERE run_id = ?1 AND status = 'running' AND kind = 'shard'")?
                .execute(params![run_id])?;
            for (job_id, pipeline, shard_index) in &queued {
                emit(conn, payload::queued_job_aborted(run_id, job_id, pipeline, *shard_index), now)?;
                land_terminal(conn, run_id, now)?;
            }
            let (queued, running) = (queued.len() as u32, flagged as u32);
            let aborted = AbortOutcome::Aborted { aborted_jobs: queued + running, queued, running };
            Ok((aborted, change::ABORT | change::EVENTS | change::WORK))
        })
        .await?;
        // After COMMIT: the followers of this run's jobs look at their status.
        self.feed.bump_run_state(run_id);
        Ok(outcome)
    }

    async fn node_register(&self, node: NodeRow) -> StoreResult<()> {
        self.write("node_register", move |conn| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO nodes (id, host, pid, proc_start, boot_id, slots, started_at, heartbeat_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                node.id,
                node.host,
                node.pid,
                node.proc_start as i64,
                node.boot_id,
                node.slots,
                node.started_at,
                node.heartbeat_at
            ])?;
            Ok(((), 0))
        })
        .await
    }

    async fn node_heartbeat(&self, p: NodeHeartbeatParams) -> StoreResult<HeartbeatOutcome> {
        self.write("node_heartbeat", move |conn| {
            let registered = conn
                .prepare_cached("UPDATE nodes SET heartbeat_at = ?2 WHERE id = ?1")?
                .execute(params![p.node_id, p.now])?
                == 1;
            let mut cancel = Vec::new();
            let mut stmt = conn.prepare_cached("SELECT status, claim_seq, abort_requested FROM jobs WHERE id = ?1")?;
            for (job_id, claim_seq) in &p.running {
                let row: Option<(String, i64, bool)> =
                    stmt.query_row(params![job_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?;
                let ours = matches!(&row, Some((s, c, abort)) if s == "running" && c == claim_seq && !abort);
                if !ours {
                    cancel.push((job_id.clone(), *claim_seq));
                }
            }
            Ok((HeartbeatOutcome { registered, cancel }, 0))
        })
        .await
    }

    async fn node_remove(&self, node_id: &str) -> StoreResult<()> {
        let node_id = node_id.to_string();
        self.write("node_remove", move |conn| {
            conn.prepare_cached("DELETE FROM nodes WHERE id = ?1")?
                .execute(params![node_id])?;
            conn.prepare_cached("DELETE FROM pipeline_nodes WHERE node_id = ?1")?
                .execute(params![node_id])?;
            Ok(((), 0))
        })
        .await
    }

    async fn node_remove_stale(&self, node_id: &str, seen_heartbeat_at: i64) -> StoreResult<bool> {
        let node_id = node_id.to_string();
        self.write("node_remove_stale", move |conn| {
            let removed = conn
                .prepare_cached("DELETE FROM nodes WHERE id = ?1 AND heartbeat_at = ?2")?
                .execute(params![node_id, seen_heartbeat_at])?
                == 1;
            if removed {
                conn.prepare_cached("DELETE FROM pipeline_nodes WHERE node_id = ?1")?
                    .execute(params![node_id])?;
            }
            Ok((removed, 0))
        })
        .await
    }

    async fn nodes_list(&self) -> StoreResult<Vec<NodeRow>> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT id, host, pid, proc_start, boot_id, slots, started_at, heartbeat_at FROM nodes ORDER BY started_at")?
                .query_map([], |r| {
                    Ok(NodeRow {
                        id: r.get(0)?,
                        host: r.get(1)?,
                        pid: r.get(2)?,
                        proc_start: r.get::<_, i64>(3)? as u64,
                        boot_id: r.get(4)?,
                        slots: r.get(5)?,
                        started_at: r.get(6)?,
                        heartbeat_at: r.get(7)?,
                    })
                })?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn jobs_running_on(&self, node_id: &str) -> StoreResult<Vec<RunningJob>> {
        let node_id = node_id.to_string();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT id, claim_seq, pid, proc_start, claimed_at FROM jobs WHERE node_id = ?1 AND status = 'running'")?
                .query_map(params![node_id], running_job)?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn jobs_running_unowned(&self) -> StoreResult<Vec<RunningJob>> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT id, claim_seq, pid, proc_start, claimed_at FROM jobs
                     WHERE status = 'running' AND node_id NOT IN (SELECT id FROM nodes)",
                )?
                .query_map([], running_job)?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn jobs_abort_requested(&self, node_id: &str) -> StoreResult<Vec<(String, i64)>> {
        let node_id = node_id.to_string();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT id, claim_seq FROM jobs WHERE node_id = ?1 AND status = 'running' AND abort_requested = 1")?
                .query_map(params![node_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn run_ids_by_prefix(&self, prefix: &str, limit: usize) -> StoreResult<Vec<String>> {
        // [prefix, prefix || U+10FFFF): every id with the prefix, on the primary key.
        let low = prefix.to_string();
        let high = format!("{prefix}\u{10FFFF}");
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT id FROM runs WHERE id >= ?1 AND id < ?2 ORDER BY id LIMIT ?3",
                )?
                .query_map(params![low, high, limit as i64], |r| r.get(0))?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn run_get(&self, run_id: &str) -> StoreResult<Option<RunRecord>> {
        let run_id = run_id.to_string();
        self.read(move |conn| {
            let run = conn
                .prepare_cached(&format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"))?
                .query_row(params![run_id], run_view)
                .optional()?;
            let Some(run) = run else { return Ok(None) };
            let mut runs = [run];
            attach_jobs(conn, &mut runs)?;
            let [run] = runs;
            Ok(Some(run))
        })
        .await
    }

    async fn runs_list(&self, f: RunFilter) -> StoreResult<Vec<RunRecord>> {
        self.read(move |conn| {
            // One statement per filter shape, so each can use its index (`runs_pipeline`
            // for a pipeline, the primary key otherwise) with a plan fixed at prepare time.
            // Unused parameters are bound as NULL and tested with `IS NULL`.
            let status = f.status.map(|s| s.as_str());
            let mut filter = vec![match f.pipeline {
                Some(_) => "pipeline = ?1",
                None => "?1 IS NULL",
            }];
            filter.push(match status {
                Some(_) => "status = ?2",
                None => "?2 IS NULL",
            });
            // A run id prefix is a range of the primary key (ids are lowercase hex and
            // hyphens, all below '~'); a short form also matches the id's last digits.
            let suffix = f
                .run_id
                .as_deref()
                .filter(|r| (4..=12).contains(&r.len()) && !r.contains('-'));
            filter.push(match (&f.run_id, suffix) {
                (None, _) => "?5 IS NULL AND ?6 IS NULL",
                (Some(_), None) => "id >= ?5 AND id < ?5 || '~' AND ?6 IS NULL",
                (Some(_), Some(_)) => "((id >= ?5 AND id < ?5 || '~') OR id LIKE '%' || ?6)",
            });
            let (param_name, param_value) = match &f.param {
                Some(p) => (Some(p.name.as_str()), p.value.as_deref()),
                None => (None, None),
            };
            filter.push(match (param_name, param_value) {
                (None, _) => "?7 IS NULL AND ?8 IS NULL",
                (Some(_), None) => {
                    "EXISTS (SELECT 1 FROM json_each(runs.params) WHERE key = ?7) AND ?8 IS NULL"
                }
                (Some(_), Some(_)) => {
                    "EXISTS (SELECT 1 FROM json_each(runs.params) WHERE key = ?7 AND value = ?8)"
                }
            });
            filter.push(match f.actor {
                Some(_) => "actor = ?9",
                None => "?9 IS NULL",
            });
            let filter = filter.join(" AND ");
            let mut runs: Vec<RunRecord> = conn
                .prepare_cached(&format!(
                    "SELECT {RUN_COLS} FROM runs WHERE {filter} ORDER BY id DESC LIMIT ?3 OFFSET ?4"
                ))?
                .query_map(
                    params![
                        f.pipeline,
                        status,
                        f.limit,
                        f.offset,
                        f.run_id,
                        suffix,
                        param_name,
                        param_value,
                        f.actor
                    ],
                    run_view,
                )?
                .collect::<Result<_, _>>()?;
            attach_jobs(conn, &mut runs)?;
            Ok(runs)
        })
        .await
    }

    async fn job_get(&self, job_id: &str) -> StoreResult<Option<JobRecord>> {
        let job_id = job_id.to_string();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1"))?
                .query_row(params![job_id], job_view)
                .optional()?)
        })
        .await
    }

    async fn job_logs(&self, job_id: &str, tail: Option<usize>) -> StoreResult<Option<JobLogs>> {
        let job_id = job_id.to_string();
        self.read(move |conn| {
            let truncated: Option<bool> = conn
                .prepare_cached("SELECT truncated FROM jobs WHERE id = ?1")?
                .query_row(params![job_id], |r| r.get(0))
                .optional()?;
            let Some(truncated) = truncated else {
                return Ok(None);
            };
            Ok(Some(JobLogs {
                stdout: tail_lines(conn, &job_id, STDOUT, tail)?,
                stderr: tail_lines(conn, &job_id, STDERR, tail)?,
                truncated,
            }))
        })
        .await
    }

    async fn job_output_after(
        &self,
        job_id: &str,
        after: i64,
        limit: usize,
    ) -> StoreResult<Vec<LogLine>> {
        let job_id = job_id.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT first_line, stream, data, claim_seq, created_at FROM output
                 WHERE job_id = ?1 AND first_line >= (SELECT COALESCE(MAX(first_line), 0) FROM output WHERE job_id = ?1 AND first_line <= ?2)
                 ORDER BY first_line",
            )?;
            let mut rows = stmt.query(params![job_id, after.max(0)])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let first: i64 = r.get(0)?;
                let stream = stream_of(r.get(1)?);
                let claim_seq: i64 = r.get(3)?;
                let time: Option<i64> = r.get(4)?;
                for (i, line) in r.get_ref(2)?.as_str()?.split('\n').enumerate() {
                    let seq = first + i as i64;
                    if seq > after {
                        out.push(LogLine { seq, stream, line: line.to_string(), claim_seq, time });
                    }
                }
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn job_output_len(&self, job_id: &str) -> StoreResult<i64> {
        let job_id = job_id.to_string();
        self.read(move |conn| output_end(conn, &job_id)).await
    }

    async fn events_after(&self, after: i64, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT id, name, data FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
                )?
                .query_map(params![after, limit as i64], |r| {
                    Ok(StoredEvent {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        data: r.get(2)?,
                    })
                })?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn events_bounds(&self) -> StoreResult<(i64, i64)> {
        self.read(|conn| {
            // Ids come from one writer in commit order, without gaps: everything below
            // the oldest retained id was pruned. With none retained, every id ever
            // assigned (AUTOINCREMENT keeps the highest in sqlite_sequence) was pruned.
            Ok(conn.query_row(
                "SELECT MAX(COALESCE(MIN(id) - 1,
                                    (SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0), 0),
                        COALESCE(MAX(id), 0)
                 FROM events",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
        .await
    }

    async fn run_events(&self, run_id: &str, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        let run_id = run_id.to_string();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT id, name, data FROM events INDEXED BY events_run
                     WHERE run_id = ?1 AND name <> 'job:progress' ORDER BY id LIMIT ?2",
                )?
                .query_map(params![run_id, limit as i64], |r| {
                    Ok(StoredEvent {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        data: r.get(2)?,
                    })
                })?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn pipeline_stats(&self, p: PipelineStatsParams) -> StoreResult<Vec<PipelineStatsRow>> {
        self.read(move |conn| {
            // Through `runs_finished` (a range of finished_at), then grouped in memory by SQLite.
            Ok(conn
                .prepare_cached(
                    "SELECT pipeline, (finished_at - ?1) / ?3 AS bucket, status, COUNT(*),
                            SUM(finished_at - COALESCE(started_at, finished_at)),
                            MAX(finished_at - COALESCE(started_at, finished_at))
                     FROM runs INDEXED BY runs_finished
                     WHERE finished_at IS NOT NULL AND finished_at >= ?1 AND finished_at < ?2
                     GROUP BY pipeline, bucket, status ORDER BY pipeline, bucket, status",
                )?
                .query_map(params![p.since, p.until, p.bucket_ms.max(1)], |r| {
                    Ok(PipelineStatsRow {
                        pipeline: r.get(0)?,
                        bucket: r.get(1)?,
                        status: r.get(2)?,
                        runs: r.get::<_, i64>(3)? as u64,
                        duration_sum_ms: r.get::<_, i64>(4)?.max(0),
                        duration_max_ms: r.get::<_, i64>(5)?.max(0),
                    })
                })?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn pipeline_counts(&self) -> StoreResult<HashMap<String, PipelineCounts>> {
        self.read(|conn| {
            let mut out: HashMap<String, PipelineCounts> = HashMap::new();
            let mut stmt = conn.prepare_cached(
                "SELECT pipeline, status, COUNT(*) FROM jobs WHERE status IN ('queued', 'running') GROUP BY pipeline, status",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let entry = out.entry(r.get(0)?).or_default();
                let n: i64 = r.get(2)?;
                if r.get_ref(1)?.as_str()? == "queued" {
                    entry.queued = n as u64;
                } else {
                    entry.running = n as u64;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn runs_prune(&self, before: i64, batch: usize) -> StoreResult<PruneOutcome> {
        self.write("runs_prune", move |conn| {
            let ids: Vec<String> = conn
                .prepare_cached(
                    "SELECT id FROM runs WHERE finished_at IS NOT NULL AND finished_at < ?1 LIMIT ?2",
                )?
                .query_map(params![before, batch as i64], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for id in &ids {
                conn.prepare_cached(
                    "DELETE FROM output WHERE job_id IN (SELECT id FROM jobs WHERE run_id = ?1)",
                )?
                .execute(params![id])?;
                conn.prepare_cached("DELETE FROM jobs WHERE run_id = ?1")?
                    .execute(params![id])?;
                conn.prepare_cached(
                    "DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE run_id = ?1)",
                )?
                .execute(params![id])?;
                conn.prepare_cached("DELETE FROM deliveries WHERE run_id = ?1 AND status != 'pending'")?
                    .execute(params![id])?;
                conn.prepare_cached("DELETE FROM runs WHERE id = ?1")?
                    .execute(params![id])?;
            }
            // Events go by age, oldest first along the primary key (no per-run index to
            // maintain on the hot path); those of runs still unfinished are kept.
            let events = conn
                .prepare_cached(
                    "DELETE FROM events WHERE id IN (
                         SELECT e.id FROM events e WHERE e.created_at < ?1
                           AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = e.run_id AND r.finished_at IS NULL)
                         ORDER BY e.id LIMIT ?2)",
                )?
                .execute(params![before, (batch * EVENTS_PER_RUN_PRUNED) as i64])?;
            let more = ids.len() == batch || events == batch * EVENTS_PER_RUN_PRUNED;
            Ok((PruneOutcome { runs: ids.len(), events, more }, 0))
        })
        .await
    }

    async fn run_summary(&self, run_id: &str) -> StoreResult<Option<Value>> {
        let run_id = run_id.to_string();
        self.read(move |conn| completion::summary(conn, &run_id))
            .await
    }

    async fn deliveries_claim(
        &self,
        node_id: &str,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<PendingDelivery>> {
        let node_id = node_id.to_string();
        self.write("deliveries_claim", move |conn| {
            Ok((outbox::claim(conn, &node_id, now, lease_ms, limit)?, 0))
        })
        .await
    }

    async fn delivery_record(&self, p: DeliveryRecordParams) -> StoreResult<bool> {
        self.write("delivery_record", move |conn| {
            Ok((outbox::record(conn, &p)?, 0))
        })
        .await
    }

    async fn deliveries_of_run(&self, run_id: &str) -> StoreResult<Vec<DeliveryRecord>> {
        let run_id = run_id.to_string();
        self.read(move |conn| outbox::of_run(conn, &run_id)).await
    }

    async fn pipeline_node_set(&self, state: PipelineNodeState) -> StoreResult<()> {
        self.write("pipeline_node_set", move |conn| {
            Ok((outbox::pipeline_node_set(conn, &state)?, 0))
        })
        .await
    }

    async fn pipeline_nodes_list(&self) -> StoreResult<Vec<PipelineNodeState>> {
        self.read(outbox::pipeline_nodes_list).await
    }

    async fn pipeline_pause(&self, p: PipelinePauseParams) -> StoreResult<bool> {
        self.write("pipeline_pause", move |conn| {
            let was: Option<bool> = conn
                .prepare_cached("SELECT paused FROM pipeline_state WHERE pipeline = ?1")?
                .query_row(params![p.pipeline], |r| r.get(0))
                .optional()?;
            if was.unwrap_or(false) == p.paused {
                return Ok((false, 0));
            }
            conn.prepare_cached(
                "INSERT INTO pipeline_state (pipeline, paused, paused_at, paused_by, updated_at)
                 VALUES (?1, ?2, CASE WHEN ?2 THEN ?4 END, CASE WHEN ?2 THEN ?3 END, ?4)
                 ON CONFLICT (pipeline) DO UPDATE SET paused = excluded.paused, paused_at = excluded.paused_at,
                     paused_by = excluded.paused_by, updated_at = excluded.updated_at",
            )?
            .execute(params![p.pipeline, p.paused, p.actor, p.now])?;
            emit(
                conn,
                payload::pipeline_paused(&p.pipeline, p.paused, p.actor.as_deref()),
                p.now,
            )?;
            // Resuming makes queued work claimable again.
            Ok((true, change::WORK | change::EVENTS))
        })
        .await
    }

    async fn pipelines_paused(&self) -> StoreResult<Vec<PipelinePause>> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT pipeline, paused_at, paused_by FROM pipeline_state WHERE paused = 1 ORDER BY pipeline",
                )?
                .query_map([], |r| {
                    Ok(PipelinePause {
                        pipeline: r.get(0)?,
                        paused_at: r.get::<_, Option<i64>>(1)?.unwrap_or(0),
                        paused_by: r.get(2)?,
                    })
                })?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn schedules_list(&self) -> StoreResult<Vec<ScheduleState>> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT pipeline, schedule_key, next_fire_at FROM pipeline_state
                     WHERE schedule_key IS NOT NULL AND next_fire_at IS NOT NULL ORDER BY pipeline",
                )?
                .query_map([], |r| {
                    Ok(ScheduleState {
                        pipeline: r.get(0)?,
                        key: r.get(1)?,
                        next_fire_at: r.get(2)?,
                    })
                })?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn schedule_init(
        &self,
        pipeline: &str,
        key: &str,
        next_fire_at: i64,
        now: i64,
    ) -> StoreResult<bool> {
        let (pipeline, key) = (pipeline.to_string(), key.to_string());
        self.write("schedule_init", move |conn| {
            let changed = conn
                .prepare_cached(
                    "INSERT INTO pipeline_state (pipeline, schedule_key, next_fire_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (pipeline) DO UPDATE SET schedule_key = excluded.schedule_key,
                         next_fire_at = excluded.next_fire_at, updated_at = excluded.updated_at
                     WHERE pipeline_state.schedule_key IS NOT excluded.schedule_key
                        OR pipeline_state.next_fire_at IS NULL",
                )?
                .execute(params![pipeline, key, next_fire_at, now])?;
            Ok((changed == 1, 0))
        })
        .await
    }

    async fn schedule_fire(&self, p: ScheduleFireParams) -> StoreResult<Option<RunCreated>> {
        self.write("schedule_fire", move |conn| {
            let advanced = conn
                .prepare_cached(
                    "UPDATE pipeline_state SET next_fire_at = ?4, updated_at = ?5
                     WHERE pipeline = ?1 AND schedule_key = ?2 AND next_fire_at = ?3",
                )?
                .execute(params![p.pipeline, p.key, p.due, p.next, p.run.now])?;
            if advanced != 1 {
                return Ok((None, 0));
            }
            let (created, kinds) = create_in_tx(conn, &p.run)?;
            Ok((Some(created), kinds))
        })
        .await
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
mod tests {
    //! The SQLite writer's own machinery: batches and the cross-process write lock. The
    //! store's contract (both backends) is the conformance suite, `tests/store_contract.rs`.

    use std::collections::BTreeMap;

    use super::*;

    async fn open() -> (tempfile::TempDir, Arc<SqliteStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
        let node = NodeRow {
            id: "n1".into(),
            host: "h".into(),
            pid: 1,
            proc_start: 1,
            boot_id: "b".into(),
            slots: 2,
            started_at: 0,
            heartbeat_at: 0,
        };
        store.node_register(node).await.unwrap();
        (dir, Arc::new(store))
    }

    fn policy() -> JobPolicy {
        JobPolicy {
            max_attempts: 2,
            retry_backoff_ms: 10,
            on_orphan: "requeue",
            max_orphan_requeues: 1,
            retry_on: Default::default(),
        }
    }

    async fn create(store: &SqliteStore, shards: u32) -> RunCreated {
        let run = crate::model::RunId::new();
        store
            .run_create(RunCreateParams {
                run_id: run.to_string(),
                job_ids: (0..shards)
                    .map(|i| crate::model::job_id_for(run, i, shards))
                    .collect(),
                pipeline: "p".into(),
                params: BTreeMap::new(),
                triggered_by: "api".into(),
                actor: None,
                idempotency_key: None,
                policy: policy(),
                has_finalizer: false,
                callback_url: None,
                now: 1,
                options: Default::default(),
            })
            .await
            .unwrap()
    }

    fn claim(max: usize) -> JobClaimParams {
        JobClaimParams {
            node_id: "n1".into(),
            max,
            global_cap: 0,
            pipelines: [("p".to_string(), 0)].into(),
            now: 10,
        }
    }

    #[tokio::test]
    async fn a_failing_request_in_a_batch_does_not_take_the_others_with_it() {
        let (_dir, store) = open().await;
        let mut calls = Vec::new();
        for i in 0..40 {
            let store = store.clone();
            calls.push(tokio::spawn(async move {
                if i == 20 {
                    store
                        .write("test", |conn| {
                            conn.execute("INSERT INTO no_such_table VALUES (1)", [])?;
                            Ok(((), 0))
                        })
                        .await
                        .map(|_| None)
                } else {
                    Ok(Some(create(&store, 1).await.run_id))
                }
            }));
        }
        let mut ok = 0;
        for (i, c) in calls.into_iter().enumerate() {
            match c.await.unwrap() {
                Ok(Some(run_id)) => {
                    assert!(store.run_get(&run_id).await.unwrap().is_some());
                    ok += 1;
                }
                Ok(None) => panic!("the failing write succeeded"),
                Err(e) => assert_eq!(i, 20, "{e}"),
            }
        }
        assert_eq!(ok, 39);
    }

    #[tokio::test]
    async fn a_write_waits_for_another_process_holding_the_lock_instead_of_failing() {
        let (dir, store) = open().await;
        create(&store, 1).await;
        // Another "process": a second connection holding the database's write lock.
        let path = dir.path().join("t.db");
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let other = Connection::open(path).unwrap();
            other.execute_batch("BEGIN IMMEDIATE").unwrap();
            locked_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            other.execute_batch("COMMIT").unwrap();
        });
        locked_rx.recv().unwrap();
        let claimer = store.clone();
        let mut task = tokio::spawn(async move { claimer.job_claim(claim(1)).await });
        // The fast path must not turn the held lock into an error: the claim waits.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), &mut task)
                .await
                .is_err(),
            "the claim finished while another process held the write lock"
        );
        release_tx.send(()).unwrap();
        let claimed = task.await.unwrap().unwrap();
        assert_eq!(claimed.jobs.len(), 1);
        holder.join().unwrap();
    }
}
