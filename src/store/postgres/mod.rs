//! The shared store: PostgreSQL, for many replicas on many hosts.
//!
//! Each [`Store`] method is one READ COMMITTED transaction on a pooled
//! connection (deadpool-postgres, statements prepared once per connection).
//! The rules come from the backend-neutral modules (`transition`,
//! `claim_plan`, `completion`, `payload`, `summary`); this module only has
//! SQL, transactions and what PostgreSQL needs that SQLite's single writer
//! gave for free:
//!
//! - **Caps under races.** `FOR UPDATE SKIP LOCKED` stops two claimers taking
//!   the same job, but not both counting the same free room. A claim that must
//!   respect a cap first takes transaction-scoped advisory locks (the global
//!   cap's key when it applies one, then one key per capped pipeline, sorted,
//!   schema in the key) and counts after they are granted (SCALE-OUT §2.4: 28
//!   running under a cap of 4 without it, 4 with it).
//! - **Fencing.** The fence row is read `FOR UPDATE`, so the decision acts on
//!   the row as it is when written; every execution write is conditional on
//!   `(id, claim_seq, status='running')`.
//! - **Lock order** (no deadlocks between finish, abort, start and rescue):
//!   job rows in id order, then the run row, then anything else. Finish and
//!   start lock their job then update the run; abort locks the run's jobs in id
//!   order before it updates the run. Claims never wait on rows (SKIP LOCKED)
//!   and take the advisory cap lock last.
//! - **Event ids that never skip.** An event's id is `(xid << 16) | n` (its
//!   transaction's top-level id, then its index in the transaction); readers
//!   take only ids below the oldest transaction of this deployment still in
//!   flight in their snapshot (`read::HORIZON`), so an id a reader has passed
//!   can never commit later, and other programs' long transactions on the same
//!   server do not hold the streams back. A replica that dies inside a
//!   transaction holds them back until the server ends its session
//!   (`idle_in_transaction_session_timeout`, 5 s).
//!   Ids have gaps; the SSE code resumes by cursor, never by counting.
//! - **The database's clock.** Times are the database's (`runyard_now_ms()`),
//!   followed locally between samples with the monotonic clock
//!   ([`Store::clock_ms`]), so hosts whose clocks disagree agree on leases.
//! - **Sessions that cannot hold locks forever**: `idle_in_transaction_session_timeout`,
//!   `statement_timeout` and `lock_timeout` are set on every connection, so a
//!   frozen replica's locks (the cap key!) are released.
//! - **Faults.** Serialization failures, deadlocks and lock timeouts are retried
//!   (a few times, with jitter); a lost connection before COMMIT is retried on a
//!   fresh one; an unreachable database is [`StoreError::Unavailable`] (HTTP 503).
//! - **Changes made by other replicas** reach this process's [`ChangeFeed`]
//!   through a timed poll of the event horizon (every 250 ms) until a bus
//!   carries them; log streams poll on their own.

mod claim;
mod finish;
mod group_commit;
mod read;
mod rows;
mod write;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};

use super::*;

/// Schema files, applied in order; the version is the number applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/postgres_0001_init.sql"),
    include_str!("../migrations/postgres_0002_retry_on.sql"),
    include_str!("../migrations/postgres_0003_pipeline_state.sql"),
    include_str!("../migrations/postgres_0004_rerun.sql"),
    include_str!("../migrations/postgres_0005_queue_order.sql"),
    include_str!("../migrations/postgres_0006_schedules.sql"),
    include_str!("../migrations/postgres_0007_aborted_by.sql"),
];
/// The schema version this build migrates to (the number of migrations).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;
/// Retries of a transaction that lost a race or its connection before COMMIT.
pub(crate) const MAX_RETRIES: u32 = 4;
/// How often other replicas' commits are looked for (until a bus signals them).
const CHANGE_POLL: Duration = Duration::from_millis(250);
/// How often a log stream re-reads by itself (see `ChangeFeed::set_output_poll`).
const OUTPUT_POLL: Duration = Duration::from_secs(1);
/// How often the database clock is sampled.
const CLOCK_SAMPLE: Duration = Duration::from_secs(5);
/// Waiting longer than this for a pooled connection is "unavailable".
const POOL_WAIT: Duration = Duration::from_secs(5);
/// Session settings: a frozen replica cannot hold locks for long, no statement runs forever.
const SESSION_OPTIONS: &str =
    "-c idle_in_transaction_session_timeout=5000 -c statement_timeout=30000 -c lock_timeout=5000";

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user@host:port/db?…`
    pub url: String,
    /// Schema to use (created if missing); `None` = the connection's default (`public`).
    pub schema: Option<String>,
    /// Connections in the pool.
    pub pool_size: usize,
}

/// PostgreSQL implementation of [`super::Store`].
pub struct PgStore {
    pool: Pool,
    feed: ChangeFeed,
    /// Statements and commits sent, by operation (`runyard_store_*_total`).
    traffic: Arc<crate::store::Traffic>,
    /// Job ends waiting to share a transaction ([`group_commit`]).
    finishes: group_commit::FinishQueue,
    clock: Arc<Mutex<ClockSample>>,
    stop: Arc<AtomicBool>,
    /// Where, for messages (the URL without a password).
    display: String,
}

/// The database clock at one instant of the local monotonic clock.
#[derive(Debug, Clone, Copy)]
struct ClockSample {
    db_ms: i64,
    at: Instant,
}

impl ClockSample {
    fn now(&self) -> i64 {
        self.db_ms + self.at.elapsed().as_millis() as i64
    }
}

/// What the driver error says, with the server's own words: tokio-postgres shows only
/// "db error" for every error the server reports, leaving its message and SQLSTATE in
/// the source, which `{e}` in a log line never prints.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// Why a connection could not be made, in the server's (or the OS's) own words and with
/// what to do about it — not the pool's wrappers ("error occurred while creating a new
/// object", "db error"): the deepest cause in the chain, and PostgreSQL's message when it
/// answered at all.
pub(crate) fn connect_failure(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e.to_string();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(db) = err
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(|pg| pg.as_db_error())
        {
            cause = db.message().to_string();
            if let Some(hint) = db.hint() {
                cause.push_str(&format!(" (hint: {hint})"));
            }
            break;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            cause = io.to_string();
            break;
        }
        cause = err.to_string();
        next = err.source();
    }
    let lower = cause.to_ascii_lowercase();
    let todo = if lower.contains("refused") {
        "is PostgreSQL running and listening on that host and port?"
    } else if lower.contains("does not exist") && lower.contains("database") {
        "create the database (createdb NAME) or fix the URL's path"
    } else if lower.contains("password") || lower.contains("authentication") {
        "check the user and password in the URL"
    } else if lower.contains("timed out") || lower.contains("timeout") {
        "is the host reachable from here (firewall, address)?"
    } else if lower.contains("lookup")
        || lower.contains("resolve")
        || lower.contains("name or service")
    {
        "check the host name in the URL"
    } else {
        "check the URL and that the server accepts connections from this host"
    };
    format!("{cause} — {todo}")
}

/// Maps a driver error onto what the caller should do about it.
pub(crate) fn pg_err(e: tokio_postgres::Error) -> StoreError {
    enum Kind {
        Transient,
        Unavailable,
        Conflict,
        Database,
    }
    let kind = match e.code() {
        Some(code) => {
            let transient = [
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::LOCK_NOT_AVAILABLE,
                SqlState::QUERY_CANCELED,
            ];
            let unavailable = [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
            ];
            if transient.contains(code) {
                Kind::Transient
            } else if unavailable.contains(code) || code.code().starts_with("08") {
                Kind::Unavailable
            } else if *code == SqlState::UNIQUE_VIOLATION {
                Kind::Conflict
            } else {
                Kind::Database
            }
        }
        // No SQLSTATE: the connection broke (closed, I/O, connect) — or this side failed
        // to convert a value, which is a bug, not an outage.
        None => {
            let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
            if e.is_closed() || io {
                Kind::Unavailable
            } else {
                Kind::Database
            }
        }
    };
    let message = describe(&e);
    let source: Option<ErrorSource> = Some(Arc::new(e));
    match kind {
        Kind::Transient => StoreError::Transient { message, source },
        Kind::Unavailable => StoreError::Unavailable { message, source },
        Kind::Conflict => StoreError::Conflict { message },
        Kind::Database => StoreError::Database { message, source },
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err(e),
        other => StoreError::unavailable(other),
    }
}

/// A schema name safe to splice into SQL (it is quoted as an identifier too).
fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

impl PgStore {
    /// The connection settings of `opts`: its URL, the schema's search path, the session
    /// limits and this deployment's application name.
    fn config_of(opts: &PgOptions) -> StoreResult<tokio_postgres::Config> {
        let open_err = |message: String| StoreError::Open {
            path: crate::config::redact_url(&opts.url),
            message,
        };
        let mut config: tokio_postgres::Config = opts
            .url
            .parse()
            .map_err(|e| open_err(format!("not a PostgreSQL URL: {e}")))?;
        let mut options = config.get_options().unwrap_or("").to_string();
        if let Some(schema) = &opts.schema {
            if !valid_schema(schema) {
                return Err(open_err(format!(
                    "schema {schema:?} must be 1–63 lowercase letters, digits or _, not starting with a digit"
                )));
            }
            options.push_str(&format!(" -c search_path={schema}"));
        }
        options.push(' ');
        options.push_str(SESSION_OPTIONS);
        config.options(options.trim());
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        config.connect_timeout(Duration::from_secs(5));
        // Event readers tell this deployment's transactions from everyone else's by this
        // name (see `read::HORIZON`), so it is always set, whatever the URL says.
        let name = format!("runyard/{}", opts.schema.as_deref().unwrap_or("public"));
        if config.get_application_name().is_some_and(|n| n != name) {
            tracing::info!("application_name in the store URL is replaced by {name:?}");
        }
        config.application_name(&name);
        Ok(config)
    }

    /// What `runyard check` says of the database, without changing it (no schema made,
    /// no migration, no node row): the server's version and the schema's against this
    /// build's.
    pub async fn probe(opts: &PgOptions) -> StoreResult<String> {
        let display = crate::config::redact_url(&opts.url);
        let open_err = |message: String| StoreError::Open {
            path: display.clone(),
            message,
        };
        let mut config = Self::config_of(opts)?;
        config.options(SESSION_OPTIONS);
        let (client, conn) = config
            .connect(NoTls)
            .await
            .map_err(|e| open_err(format!("cannot connect: {}", connect_failure(&e))))?;
        let task = tokio::spawn(conn);
        let schema = opts.schema.as_deref().unwrap_or("public");
        let answer = async {
            let server: String = client.query_one("SHOW server_version", &[]).await?.get(0);
            let meta = format!("\"{schema}\".runyard_meta");
            let exists: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&meta])
                .await?
                .get(0);
            let version: Option<i64> = if exists {
                client
                    .query_opt(
                        &format!("SELECT value FROM {meta} WHERE key = 'schema_version'"),
                        &[],
                    )
                    .await?
                    .map(|r| r.get(0))
            } else {
                None
            };
            Ok::<_, tokio_postgres::Error>((server, version))
        }
        .await;
        drop(client);
        let _ = task.await;
        let (server, version) = answer.map_err(|e| open_err(connect_failure(&e)))?;
        Ok(match version {
            Some(v) => format!(
                "PostgreSQL {server}, schema {schema} at version {v} (this build: {SCHEMA_VERSION})"
            ),
            None => format!(
                "PostgreSQL {server}, schema {schema} not set up yet: the first serve migrates it to version {SCHEMA_VERSION}"
            ),
        })
    }

    /// Connects, creates the schema if asked, applies migrations (once, whichever replica
    /// gets there first) and starts the change poll.
    pub async fn open(opts: &PgOptions) -> StoreResult<PgStore> {
        let display = crate::config::redact_url(&opts.url);
        let open_err = |message: String| StoreError::Open {
            path: display.clone(),
            message,
        };
        let config = Self::config_of(opts)?;

        // Create the schema on a plain connection first: search_path must name an existing
        // schema for the pooled connections' unqualified names to resolve.
        if let Some(schema) = &opts.schema {
            let mut plain = config.clone();
            plain.options(SESSION_OPTIONS);
            let (client, conn) = plain
                .connect(NoTls)
                .await
                .map_err(|e| open_err(format!("cannot connect: {}", connect_failure(&e))))?;
            let task = tokio::spawn(conn);
            let created = client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                .await;
            drop(client);
            let _ = task.await;
            if let Err(e) = created {
                // Two replicas creating it at once: one loses with a unique violation.
                if e.code() != Some(&SqlState::UNIQUE_VIOLATION) {
                    return Err(open_err(format!("cannot create schema {schema}: {e}")));
                }
            }
        }

        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| open_err(e.to_string()))?;
        {
            let mut client = pool
                .get()
                .await
                .map_err(|e| open_err(format!("cannot connect: {}", connect_failure(&e))))?;
            migrate(&mut client)
                .await
                .map_err(|e| open_err(e.to_string()))?;
        }
        let store = PgStore {
            pool,
            feed: ChangeFeed::default(),
            traffic: Arc::default(),
            finishes: Default::default(),
            clock: Arc::new(Mutex::new(ClockSample {
                db_ms: crate::clock::now_ms(),
                at: Instant::now(),
            })),
            stop: Arc::new(AtomicBool::new(false)),
            display,
        };
        store.sample_clock().await?;
        // Other replicas' output moves no event, so the change poll cannot see it: a log
        // stream looks by itself this often (a bus that carries output wake-ups may undo it).
        store.feed.set_output_poll(Some(OUTPUT_POLL));
        store.spawn_change_poll();
        Ok(store)
    }

    /// Where this store lives (the URL without its password).
    pub fn display(&self) -> &str {
        &self.display
    }

    async fn conn(&self) -> StoreResult<deadpool_postgres::Object> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(StoreError::Closed);
        }
        self.pool.get().await.map_err(pool_err)
    }

    /// Reads the database clock, correcting for half the round trip.
    async fn sample_clock(&self) -> StoreResult<()> {
        let client = self.conn().await?;
        sample_clock_on(&client, &self.clock).await
    }

    /// Bumps the feed when another replica committed events (the horizon moved), and
    /// re-samples the clock now and then.
    fn spawn_change_poll(&self) {
        let pool = self.pool.clone();
        let feed = self.feed.clone();
        let clock = self.clock.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let mut last_seen = i64::MIN;
            let mut last_sample = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(CHANGE_POLL).await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = pool.get().await else {
                    continue;
                };
                if last_sample.elapsed() >= CLOCK_SAMPLE {
                    last_sample = Instant::now();
                    if let Err(e) = sample_clock_on(&client, &clock).await {
                        tracing::debug!("clock sample failed: {e}");
                    }
                }
                match read::newest_visible_event(&client).await {
                    Ok(newest) if newest != last_seen => {
                        feed.publish_last_event(newest);
                        // The first reading is where we start, not a change.
                        if last_seen != i64::MIN {
                            feed.bump(change::ALL);
                        }
                        last_seen = newest;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!("change poll failed: {e}"),
                }
            }
        });
    }
}

async fn sample_clock_on(
    client: &deadpool_postgres::Object,
    clock: &Mutex<ClockSample>,
) -> StoreResult<()> {
    let sent = Instant::now();
    let row = client
        .query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            &[],
        )
        .await
        .map_err(pg_err)?;
    let rtt = sent.elapsed();
    let db_ms: i64 = row.get(0);
    *clock.lock().unwrap_or_else(|e| e.into_inner()) = ClockSample {
        db_ms,
        at: sent + rtt / 2,
    };
    Ok(())
}

/// Applies pending migrations in one transaction under an advisory lock, so replicas
/// starting together migrate once; refuses a schema newer than this build.
async fn migrate(client: &mut deadpool_postgres::Object) -> StoreResult<()> {
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || '/runyard/migrate', 0))",
        &[],
    )
    .await
    .map_err(pg_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS runyard_meta (key text PRIMARY KEY, value bigint NOT NULL)",
    )
    .await
    .map_err(pg_err)?;
    let version: i64 = tx
        .query_opt(
            "SELECT value FROM runyard_meta WHERE key = 'schema_version'",
            &[],
        )
        .await
        .map_err(pg_err)?
        .map(|r| r.get(0))
        .unwrap_or(0);
    if version as usize > MIGRATIONS.len() {
        return Err(StoreError::internal(format!(
            "schema version {version} is newer than this build ({}); upgrade runyard",
            MIGRATIONS.len()
        )));
    }
    for sql in MIGRATIONS.iter().skip(version as usize) {
        tx.batch_execute(sql).await.map_err(pg_err)?;
    }
    tx.execute(
        "INSERT INTO runyard_meta (key, value) VALUES ('schema_version', $1)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[&(MIGRATIONS.len() as i64)],
    )
    .await
    .map_err(pg_err)?;
    tx.commit().await.map_err(pg_err)?;
    Ok(())
}

/// Runs `$body` (an expression that may `.await` and `?`, using the transaction `$tx`) in
/// one transaction, committing at the end; re-runs it on a lost race or a connection lost
/// before COMMIT. Evaluates to `StoreResult<T>`.
macro_rules! in_tx {
    ($store:expr, $op:literal, $tx:ident => $body:expr) => {{
        use $crate::store::postgres::{MAX_RETRIES, Tx};
        use $crate::store::{StoreError, StoreResult};
        let mut tries = 0u32;
        loop {
            // `Err((e, true))`: the COMMIT itself failed.
            let attempt: Result<_, (StoreError, bool)> = async {
                let conn = $store.conn().await.map_err(|e| (e, false))?;
                let mut tx = Tx::new(conn);
                let value = {
                    let $tx = &mut tx;
                    let run: StoreResult<_> = async { Ok($body) }.await;
                    run
                };
                let value = match value {
                    Ok(value) => value,
                    Err(e) => {
                        tx.rollback().await;
                        return Err((e, false));
                    }
                };
                let kinds = tx.kinds;
                let statements = tx.statements() + tx.pending_events();
                let committed = tx.commit().await;
                $store
                    .traffic
                    .record($op, statements, u64::from(committed.is_ok()));
                committed?;
                Ok((value, kinds))
            }
            .await;
            match attempt {
                // A lost race always rolled back; a lost connection only before COMMIT
                // (after it, the transaction may have committed: running it again could
                // apply it twice, so the caller hears "ambiguous" instead).
                Err((e, at_commit))
                    if (e.is_transient()
                        || (!at_commit && matches!(e, StoreError::Unavailable { .. })))
                        && tries < MAX_RETRIES =>
                {
                    tries += 1;
                    tracing::debug!("retrying a store transaction ({tries}): {e}");
                    let jitter = (uuid::Uuid::new_v4().as_u128() % 20) as u64;
                    let pause = 5 * u64::from(tries) + jitter;
                    tokio::time::sleep(::std::time::Duration::from_millis(pause)).await;
                }
                Err((e, _)) => break Err(e),
                Ok((value, kinds)) => {
                    if kinds != 0 {
                        $store.feed.bump_local(kinds);
                    }
                    break Ok(value);
                }
            }
        }
    }};
}
pub(crate) use in_tx;

/// An open transaction with what it emits: its events (written together just before
/// COMMIT, in one statement), the change kinds to publish after COMMIT, and the
/// statements it sent.
///
/// BEGIN goes out with the transaction's first statement and COMMIT with its events
/// (one round trip each instead of two). A transaction dropped while open (its task
/// cancelled) takes its connection out of the pool, so no other transaction ever runs
/// on a session still inside this one.
pub(crate) struct Tx {
    conn: Option<deadpool_postgres::Object>,
    /// BEGIN was sent.
    begun: AtomicBool,
    /// COMMIT or ROLLBACK answered: the session is outside any transaction again.
    ended: bool,
    events: Vec<PendingEvent>,
    pub(crate) kinds: u8,
    statements: AtomicU64,
}

/// An event of this transaction, not yet inserted.
pub(crate) struct PendingEvent {
    name: String,
    run_id: String,
    data: String,
    at: i64,
}

impl Drop for Tx {
    fn drop(&mut self) {
        if self.begun.load(Ordering::Relaxed)
            && !self.ended
            && let Some(conn) = self.conn.take()
        {
            // Closing the session rolls the transaction back.
            drop(deadpool_postgres::Object::take(conn));
        }
    }
}

impl Tx {
    pub(crate) fn new(conn: deadpool_postgres::Object) -> Tx {
        Tx {
            conn: Some(conn),
            begun: AtomicBool::new(false),
            ended: false,
            events: Vec::new(),
            kinds: 0,
            statements: AtomicU64::new(0),
        }
    }

    /// The session (present until the transaction is dropped).
    pub(crate) fn client(&self) -> &deadpool_postgres::Object {
        self.conn
            .as_ref()
            .expect("a transaction's connection is held until it is dropped")
    }

    /// Statements sent so far (BEGIN and COMMIT not counted).
    pub(crate) fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// 1 when events wait to be inserted with COMMIT (one statement), else 0.
    pub(crate) fn pending_events(&self) -> u64 {
        u64::from(!self.events.is_empty())
    }

    async fn statement(&self, sql: &str) -> StoreResult<tokio_postgres::Statement> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        self.client().prepare_cached(sql).await.map_err(pg_err)
    }

    /// Sends BEGIN before the first statement, in the same round trip: `run` sends its
    /// statement when first polled, right after BEGIN.
    async fn begun<T>(
        &self,
        run: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> StoreResult<T> {
        if self.begun.swap(true, Ordering::Relaxed) {
            return run.await.map_err(pg_err);
        }
        let (begin, out) = tokio::join!(self.client().batch_execute("BEGIN"), run);
        begin.map_err(pg_err)?;
        out.map_err(pg_err)
    }

    /// Inserts the events and commits, in one round trip. `Err((e, true))`: whether it
    /// committed is unknown.
    pub(crate) async fn commit(&mut self) -> Result<(), (StoreError, bool)> {
        if !self.begun.load(Ordering::Relaxed) && self.events.is_empty() {
            self.ended = true;
            return Ok(());
        }
        let events = self.take_events();
        // Only reached after a statement, so BEGIN was sent (events come with statements).
        let (inserted, committed) = tokio::join!(
            self.insert_events(events),
            self.client().batch_execute("COMMIT")
        );
        match (inserted, committed) {
            (Ok(()), Ok(())) => {
                self.ended = true;
                Ok(())
            }
            // A statement that failed aborted the transaction: COMMIT rolled it back.
            (Err(e), Ok(())) if !e.is_unavailable() => {
                self.ended = true;
                Err((e, false))
            }
            (Err(e), _) => Err((e.at_commit(), true)),
            (Ok(()), Err(e)) => Err((pg_err(e).at_commit(), true)),
        }
    }

    /// Rolls back (a session that cannot is closed when the transaction is dropped).
    pub(crate) async fn rollback(&mut self) {
        if !self.begun.load(Ordering::Relaxed) {
            self.ended = true;
            return;
        }
        if self.client().batch_execute("ROLLBACK").await.is_ok() {
            self.ended = true;
        }
    }

    /// Prepares `sql` on this connection unless it is already (no statement counted):
    /// statements sent together in one round trip must be prepared first, so that each
    /// goes out when its future is first polled, in the order they are awaited.
    pub(crate) async fn prepare(&self, sql: &str) -> StoreResult<()> {
        self.client().prepare_cached(sql).await.map_err(pg_err)?;
        Ok(())
    }

    /// Runs a statement (prepared once per connection); rows changed.
    pub(crate) async fn exec(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<u64> {
        let st = self.statement(sql).await?;
        self.begun(self.client().execute(&st, params)).await
    }

    /// Runs a query; its rows.
    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<Vec<Row>> {
        let st = self.statement(sql).await?;
        self.begun(self.client().query(&st, params)).await
    }

    /// Runs a query; its row, if any.
    pub(crate) async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<Option<Row>> {
        let st = self.statement(sql).await?;
        self.begun(self.client().query_opt(&st, params)).await
    }

    /// Adds an event with the next id of this transaction; it is inserted with the
    /// others just before COMMIT ([`Tx::flush_events`]).
    pub(crate) async fn emit(
        &mut self,
        mut event: super::payload::NewEvent,
        now: i64,
    ) -> StoreResult<()> {
        if self.events.len() >= 1 << 16 {
            return Err(StoreError::internal(
                "more than 65,536 events in one transaction",
            ));
        }
        let data = event.data_text(now);
        self.events.push(PendingEvent {
            name: event.name.as_str().to_string(),
            run_id: event.run_id.clone(),
            data,
            at: now,
        });
        self.kinds |= change::EVENTS;
        Ok(())
    }

    /// The events emitted so far, to insert with [`Tx::insert_events`] (beside other
    /// statements of the same round trip).
    pub(crate) fn take_events(&mut self) -> Vec<PendingEvent> {
        std::mem::take(&mut self.events)
    }

    /// Inserts `events` (taken in emission order) in one statement.
    pub(crate) async fn insert_events(&self, events: Vec<PendingEvent>) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let index: Vec<i64> = (0..events.len() as i64).collect();
        let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
        let runs: Vec<&str> = events.iter().map(|e| e.run_id.as_str()).collect();
        let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
        let at: Vec<i64> = events.iter().map(|e| e.at).collect();
        self.exec(
            "INSERT INTO events (id, name, run_id, data, created_at)
             SELECT (pg_current_xact_id()::text::bigint << 16) | e.n, e.name, e.run_id, e.data, e.at
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[])
                  AS e(n, name, run_id, data, at)",
            &[&index, &names, &runs, &data, &at],
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Store for PgStore {
    fn changes(&self) -> &ChangeFeed {
        &self.feed
    }

    fn traffic(&self) -> Vec<(&'static str, &'static str, u64, u64)> {
        self.traffic
            .snapshot()
            .into_iter()
            .map(|(op, s, c)| ("postgres", op, s, c))
            .collect()
    }

    fn clock_ms(&self) -> i64 {
        self.clock.lock().unwrap_or_else(|e| e.into_inner()).now()
    }

    async fn run_create(&self, p: RunCreateParams) -> StoreResult<RunCreated> {
        write::run_create(self, p).await
    }
    async fn job_claim(&self, p: JobClaimParams) -> StoreResult<ClaimOutcome> {
        claim::job_claim(self, p).await
    }
    async fn job_start(&self, p: JobStartParams) -> StoreResult<Option<bool>> {
        write::job_start(self, p).await
    }
    async fn job_output_append(&self, p: OutputAppendParams) -> StoreResult<bool> {
        let job_id = p.job_id.clone();
        let applied = write::job_output_append(self, p).await?;
        if applied {
            // After COMMIT: wakes this job's log streams only (see `store::job_wakes`).
            self.feed.bump_output([job_id.as_str()]);
        }
        Ok(applied)
    }
    async fn job_progress(&self, p: JobProgressParams) -> StoreResult<bool> {
        write::job_progress(self, p).await
    }
    async fn job_finish(&self, p: JobFinishParams) -> StoreResult<FinishOutcome> {
        let job_id = p.job_id.clone();
        let outcome = group_commit::job_finish(self, p).await?;
        if outcome.applied {
            self.feed.bump_job_state([job_id.as_str()]);
        }
        Ok(outcome)
    }
    async fn job_finish_many(&self, ps: Vec<JobFinishParams>) -> Vec<StoreResult<FinishOutcome>> {
        let mut ids: Vec<&str> = ps.iter().map(|p| p.job_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() < ps.len() {
            // One job twice: its ends must be written in order, one after the other.
            let mut answers = Vec::with_capacity(ps.len());
            for p in ps {
                answers.push(self.job_finish(p).await);
            }
            return answers;
        }
        let jobs: Vec<String> = ps.iter().map(|p| p.job_id.clone()).collect();
        let answers = group_commit::write_batch(self, ps).await;
        self.feed.bump_job_state(
            jobs.iter()
                .zip(&answers)
                .filter(|(_, a)| matches!(a, Ok(out) if out.applied))
                .map(|(id, _)| id.as_str()),
        );
        answers
    }
    async fn run_abort_by(
        &self,
        run_id: &str,
        now: i64,
        by: Option<String>,
    ) -> StoreResult<AbortOutcome> {
        let outcome = write::run_abort(self, run_id, now, by).await?;
        self.feed.bump_run_state(run_id);
        Ok(outcome)
    }
    async fn node_register(&self, node: NodeRow) -> StoreResult<()> {
        write::node_register(self, node).await
    }
    async fn node_heartbeat(&self, p: NodeHeartbeatParams) -> StoreResult<HeartbeatOutcome> {
        write::node_heartbeat(self, p).await
    }
    async fn node_remove(&self, node_id: &str) -> StoreResult<()> {
        write::node_remove(self, node_id).await
    }
    async fn node_remove_stale(&self, node_id: &str, seen_heartbeat_at: i64) -> StoreResult<bool> {
        write::node_remove_stale(self, node_id, seen_heartbeat_at).await
    }
    async fn nodes_list(&self) -> StoreResult<Vec<NodeRow>> {
        self.read_nodes().await
    }
    async fn jobs_running_on(&self, node_id: &str) -> StoreResult<Vec<RunningJob>> {
        self.read_running_on(node_id).await
    }
    async fn jobs_running_unowned(&self) -> StoreResult<Vec<RunningJob>> {
        self.read_running_unowned().await
    }
    async fn jobs_abort_requested(&self, node_id: &str) -> StoreResult<Vec<(String, i64)>> {
        self.read_abort_requested(node_id).await
    }
    async fn run_ids_by_prefix(&self, prefix: &str, limit: usize) -> StoreResult<Vec<String>> {
        self.read_run_ids_by_prefix(prefix, limit).await
    }
    async fn run_get(&self, run_id: &str) -> StoreResult<Option<RunRecord>> {
        self.read_run(run_id).await
    }
    async fn runs_list(&self, f: RunFilter) -> StoreResult<Vec<RunRecord>> {
        self.read_runs(&f).await
    }
    async fn job_get(&self, job_id: &str) -> StoreResult<Option<JobRecord>> {
        self.read_job(job_id).await
    }
    async fn job_logs(&self, job_id: &str, tail: Option<usize>) -> StoreResult<Option<JobLogs>> {
        self.read_logs(job_id, tail).await
    }
    async fn job_output_after(
        &self,
        job_id: &str,
        after: i64,
        limit: usize,
    ) -> StoreResult<Vec<LogLine>> {
        self.read_output_after(job_id, after, limit).await
    }
    async fn job_output_len(&self, job_id: &str) -> StoreResult<i64> {
        self.read_output_len(job_id).await
    }
    async fn events_after(&self, after: i64, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        self.read_events_after(after, limit).await
    }
    async fn events_bounds(&self) -> StoreResult<(i64, i64)> {
        self.read_event_bounds().await
    }
    async fn run_events(&self, run_id: &str, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        self.read_run_events(run_id, limit).await
    }
    async fn pipeline_stats(&self, p: PipelineStatsParams) -> StoreResult<Vec<PipelineStatsRow>> {
        self.read_pipeline_stats(&p).await
    }
    async fn pipeline_counts(&self) -> StoreResult<HashMap<String, PipelineCounts>> {
        self.read_pipeline_counts().await
    }
    async fn runs_prune(&self, before: i64, batch: usize) -> StoreResult<PruneOutcome> {
        write::runs_prune(self, before, batch).await
    }
    async fn run_summary(&self, run_id: &str) -> StoreResult<Option<serde_json::Value>> {
        self.read_summary(run_id).await
    }
    async fn deliveries_claim(
        &self,
        node_id: &str,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<PendingDelivery>> {
        write::deliveries_claim(self, node_id, now, lease_ms, limit).await
    }
    async fn delivery_record(&self, p: DeliveryRecordParams) -> StoreResult<bool> {
        write::delivery_record(self, p).await
    }
    async fn deliveries_of_run(&self, run_id: &str) -> StoreResult<Vec<DeliveryRecord>> {
        self.read_deliveries(run_id).await
    }
    async fn pipeline_node_set(&self, state: PipelineNodeState) -> StoreResult<()> {
        write::pipeline_node_set(self, state).await
    }
    async fn pipeline_nodes_list(&self) -> StoreResult<Vec<PipelineNodeState>> {
        self.read_pipeline_nodes().await
    }
    async fn pipeline_pause(&self, p: PipelinePauseParams) -> StoreResult<bool> {
        write::pipeline_pause(self, p).await
    }
    async fn pipelines_paused(&self) -> StoreResult<Vec<PipelinePause>> {
        self.read_paused().await
    }
    async fn schedules_list(&self) -> StoreResult<Vec<ScheduleState>> {
        self.read_schedules().await
    }
    async fn schedule_init(
        &self,
        pipeline: &str,
        key: &str,
        next_fire_at: i64,
        now: i64,
    ) -> StoreResult<bool> {
        write::schedule_init(self, pipeline, key, next_fire_at, now).await
    }
    async fn schedule_fire(&self, p: ScheduleFireParams) -> StoreResult<Option<RunCreated>> {
        write::schedule_fire(self, p).await
    }
    async fn close(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.pool.close();
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked_and_passwords_hidden() {
        assert!(valid_schema("rt_123_4"));
        assert!(!valid_schema("1abc"));
        assert!(!valid_schema("a;drop"));
        assert!(!valid_schema(""));
        assert_eq!(
            crate::config::redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
    }
}
