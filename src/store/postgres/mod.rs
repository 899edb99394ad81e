//! The shared store: PostgreSQL, for many replicas on many hosts.
//!
//! (One concern past 400 lines: the `Store` impl as a table of one-line calls, plus
//! opening, migrating and the database clock; each transition's SQL has its own file.)
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

#[macro_use]
mod read;

mod claim;
mod claim_keyed;
mod events;
mod executions;
mod finish;
mod group_commit;
mod landing;
mod nodes;
mod outbox;
mod pipeline_state;
mod rows;
mod runs;
mod tx;
mod views;

pub(crate) use tx::{Tx, in_tx};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

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
    include_str!("../migrations/postgres_0008_placement.sql"),
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
                match events::newest_visible_event(&client).await {
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

#[async_trait]
impl Store for PgStore {
    fn changes(&self) -> &ChangeFeed {
        &self.feed
    }

    fn traffic(&self) -> Vec<(&'static str, &'static str, u64, u64)> {
        self.traffic.by_backend("postgres")
    }

    fn clock_ms(&self) -> i64 {
        self.clock.lock().unwrap_or_else(|e| e.into_inner()).now()
    }

    async fn run_create(&self, p: RunCreateParams) -> StoreResult<RunCreated> {
        runs::run_create(self, p).await
    }
    async fn jobs_adopt_key(&self, pipeline: &str) -> StoreResult<u64> {
        claim_keyed::jobs_adopt_key(self, pipeline).await
    }
    async fn job_claim(&self, p: JobClaimParams) -> StoreResult<ClaimOutcome> {
        claim::job_claim(self, p).await
    }
    async fn job_start(&self, p: JobStartParams) -> StoreResult<Option<bool>> {
        executions::job_start(self, p).await
    }
    async fn job_output_append(&self, p: OutputAppendParams) -> StoreResult<bool> {
        let job_id = p.job_id.clone();
        let applied = executions::job_output_append(self, p).await?;
        if applied {
            // After COMMIT: wakes this job's log streams only (see `store::job_wakes`).
            self.feed.bump_output([job_id.as_str()]);
        }
        Ok(applied)
    }
    async fn job_progress(&self, p: JobProgressParams) -> StoreResult<bool> {
        executions::job_progress(self, p).await
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
        let outcome = runs::run_abort(self, run_id, now, by).await?;
        self.feed.bump_run_state(run_id);
        Ok(outcome)
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
        self.read_nodes().await
    }
    async fn node_names(&self) -> StoreResult<HashMap<String, String>> {
        self.read_node_names().await
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
        runs::runs_prune(self, before, batch).await
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
        outbox::deliveries_claim(self, node_id, now, lease_ms, limit).await
    }
    async fn delivery_record(&self, p: DeliveryRecordParams) -> StoreResult<bool> {
        outbox::delivery_record(self, p).await
    }
    async fn deliveries_of_run(&self, run_id: &str) -> StoreResult<Vec<DeliveryRecord>> {
        self.read_deliveries(run_id).await
    }
    async fn pipeline_node_set(&self, state: PipelineNodeState) -> StoreResult<()> {
        pipeline_state::pipeline_node_set(self, state).await
    }
    async fn pipeline_nodes_list(&self) -> StoreResult<Vec<PipelineNodeState>> {
        self.read_pipeline_nodes().await
    }
    async fn pipeline_pause(&self, p: PipelinePauseParams) -> StoreResult<bool> {
        pipeline_state::pipeline_pause(self, p).await
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
        pipeline_state::schedule_init(self, pipeline, key, next_fire_at, now).await
    }
    async fn schedule_fire(&self, p: ScheduleFireParams) -> StoreResult<Option<RunCreated>> {
        pipeline_state::schedule_fire(self, p).await
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
