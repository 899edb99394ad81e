//! Reaching PostgreSQL: the connection settings, `runyard check`'s probe, opening the
//! pool (schema created, migrations run once under an advisory lock), the database clock
//! sample, and the poll that carries other replicas' changes into this process's feed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use super::*;

/// A schema name safe to splice into SQL (it is quoted as an identifier too).
fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
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
            creates: super::create_batch::create_queue(),
            cap_tokens: Default::default(),
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

    pub(super) async fn conn(&self) -> StoreResult<deadpool_postgres::Object> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(StoreError::Closed);
        }
        self.pool.get().await.map_err(pool_err)
    }

    /// Reads the database clock, correcting for half the round trip.
    pub(super) async fn sample_clock(&self) -> StoreResult<()> {
        let client = self.conn().await?;
        sample_clock_on(&client, &self.clock).await
    }

    /// Bumps the feed when another replica committed events (the horizon moved), and
    /// re-samples the clock now and then.
    pub(super) fn spawn_change_poll(&self) {
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

/// Schema files, applied in order; the version is the number applied.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/postgres_0001_init.sql"),
    include_str!("../migrations/postgres_0002_retry_on.sql"),
    include_str!("../migrations/postgres_0003_pipeline_state.sql"),
    include_str!("../migrations/postgres_0004_rerun.sql"),
    include_str!("../migrations/postgres_0005_queue_order.sql"),
    include_str!("../migrations/postgres_0006_schedules.sql"),
    include_str!("../migrations/postgres_0007_aborted_by.sql"),
    include_str!("../migrations/postgres_0008_placement.sql"),
    include_str!("../migrations/postgres_0009_after.sql"),
    include_str!("../migrations/postgres_0010_workflows.sql"),
    include_str!("../migrations/postgres_0011_cap_tokens.sql"),
    include_str!("../migrations/postgres_0012_cap_waits.sql"),
    include_str!("../migrations/postgres_0013_cap_turns.sql"),
    include_str!("../migrations/postgres_0014_jobs_vacuum.sql"),
];

/// How often other replicas' commits are looked for (until a bus signals them).
pub(super) const CHANGE_POLL: Duration = Duration::from_millis(250);

/// How often a log stream re-reads by itself (see `ChangeFeed::set_output_poll`).
pub(super) const OUTPUT_POLL: Duration = Duration::from_secs(1);

/// How often the database clock is sampled.
pub(super) const CLOCK_SAMPLE: Duration = Duration::from_secs(5);

/// Waiting longer than this for a pooled connection is "unavailable".
pub(super) const POOL_WAIT: Duration = Duration::from_secs(5);

/// Session settings: a frozen replica cannot hold locks for long, no statement runs forever.
pub(super) const SESSION_OPTIONS: &str =
    "-c idle_in_transaction_session_timeout=5000 -c statement_timeout=30000 -c lock_timeout=5000";

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
