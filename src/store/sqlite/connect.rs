//! Opening the SQLite file: the connection settings, `runyard check`'s probe, the
//! writer connection and migrations, the reader pool, and the maintenance thread that
//! notices other processes' commits (`PRAGMA data_version`) and checkpoints the WAL.

use super::*;

pub(super) const MIGRATIONS: &[&str] = &[
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
    include_str!("../migrations/sqlite_0011_after.sql"),
    include_str!("../migrations/sqlite_0012_workflows.sql"),
    include_str!("../migrations/sqlite_0013_cap_waits.sql"),
    include_str!("../migrations/sqlite_0014_cap_turns.sql"),
];

pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads running at once (each holds a connection and a blocking thread).
pub(super) const MAX_READERS: usize = 8;

pub(super) const DATA_VERSION_POLL: Duration = Duration::from_millis(50);

/// Checkpoint the WAL every 5 polls (250 ms).
pub(super) const CHECKPOINT_EVERY_TICKS: u32 = 5;

/// Statements each connection keeps prepared. The store has about 85 distinct
/// `prepare_cached` statements and one run's life (trigger, claim, start, finish)
/// uses more than rusqlite's default 16, so with the default the least recently
/// used were evicted and parsed again on nearly every run (the parser was in
/// bench (a)'s profile).
pub(super) const STATEMENT_CACHE: usize = 256;

pub(super) struct ReaderPool {
    pub(super) path: PathBuf,
    pub(super) idle: Mutex<Vec<Connection>>,
}

/// Settings every connection gets: statements stay prepared ([`STATEMENT_CACHE`]),
/// and the query-planner stability guarantee is on. The bundled SQLite is built with
/// STAT4, which otherwise re-prepares a cached statement whenever a bound value that
/// meets an indexed column changes — i.e. on nearly every call (measured: ~4% of CPU).
pub(super) fn configure_connection(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

pub(super) fn open_writer(path: &Path, sync: Synchronous) -> StoreResult<Connection> {
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

pub(super) fn migrate(conn: &Connection, path: &Path) -> StoreResult<()> {
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

/// Watches `PRAGMA data_version` (commits by other processes on the file) and runs WAL
/// checkpoints, off the writer thread: a checkpoint fsyncs, and on the writer it would
/// stall every write behind it.
///
/// The version is read on the *writer's* connection, where it moves only for commits
/// of other connections — other processes, since this process writes only there. Read
/// on a connection of its own it moved for this process's commits too, and every one
/// of them woke every waiter of every kind a second time (every log stream, twice a
/// read) within 50 ms.
pub(super) fn maintenance_loop(
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

    pub(super) async fn read<T, F>(&self, f: F) -> StoreResult<T>
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

impl ReaderPool {
    pub(super) fn get(&self) -> StoreResult<Connection> {
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

    pub(super) fn put(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_READERS {
            idle.push(conn);
        }
    }
}
