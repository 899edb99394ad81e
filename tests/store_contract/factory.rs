//! Fresh stores for the conformance suite: a temp SQLite file, or a fresh PostgreSQL
//! schema, per test, with as many independent handles on it as a test asks for.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runyard::config::Synchronous;
use runyard::store::postgres::{PgOptions, PgStore};
use runyard::store::sqlite::SqliteStore;
use runyard::store::{NodeRow, Store};

/// Connections per PostgreSQL handle (the server's 100 are shared by every test).
const PG_POOL: usize = 4;
/// Test schemas are `rt_{pid}_{counter}`.
const SCHEMA_PREFIX: &str = "rt_";

static SCHEMAS: AtomicU64 = AtomicU64::new(0);
static SWEPT: AtomicBool = AtomicBool::new(false);

enum Backend {
    Sqlite { dir: tempfile::TempDir },
    Postgres { url: String, schema: String },
}

/// One store under test (a file or a schema) and every handle opened on it.
pub struct Factory {
    backend: Backend,
    handles: Mutex<Vec<Arc<dyn Store>>>,
}

/// A fresh SQLite file.
pub async fn sqlite_factory() -> Option<Factory> {
    Some(Factory {
        backend: Backend::Sqlite {
            dir: tempfile::tempdir().expect("temp dir"),
        },
        handles: Mutex::new(Vec::new()),
    })
}

/// A fresh schema in `TEST_DATABASE_URL`; `None` (after saying so) when it is unset.
pub async fn pg_factory() -> Option<Factory> {
    let Ok(url) = std::env::var("TEST_DATABASE_URL") else {
        // Straight to the file descriptor: the test harness captures `eprintln!`, and
        // CI greps the log for this marker.
        use std::io::Write;
        let _ = std::io::stderr().write_all(b"SKIPPED(service): TEST_DATABASE_URL not set\n");
        return None;
    };
    if !SWEPT.swap(true, Ordering::SeqCst) {
        sweep_stale_schemas(&url).await;
    }
    let n = SCHEMAS.fetch_add(1, Ordering::SeqCst);
    let schema = format!("{SCHEMA_PREFIX}{}_{n}", std::process::id());
    Some(Factory {
        backend: Backend::Postgres { url, schema },
        handles: Mutex::new(Vec::new()),
    })
}

impl Factory {
    /// `"sqlite"` or `"postgres"`.
    pub fn name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres { .. } => "postgres",
        }
    }

    /// True on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres { .. })
    }

    /// `sqlite` on SQLite, `postgres` on PostgreSQL (work sized to what each does in time).
    pub fn pick<T>(&self, sqlite: T, postgres: T) -> T {
        if self.is_postgres() { postgres } else { sqlite }
    }

    /// The test's main handle, with node `n1` (2 slots) registered.
    pub async fn store(&self) -> Arc<dyn Store> {
        let store = self.open().await;
        store
            .node_register(node_row("n1"))
            .await
            .expect("register n1");
        store
    }

    /// Another independent handle on the same store: another `SqliteStore` on the file
    /// (another process, as far as SQLite can tell), or another `PgStore` with its own pool.
    pub async fn open(&self) -> Arc<dyn Store> {
        self.open_with_pool(PG_POOL).await
    }

    /// Like [`Factory::open`], with at most `pool` connections on PostgreSQL (≥ 2 there).
    pub async fn open_with_pool(&self, pool: usize) -> Arc<dyn Store> {
        let store: Arc<dyn Store> = match &self.backend {
            Backend::Sqlite { dir } => Arc::new(
                SqliteStore::open(&dir.path().join("store.db"), Synchronous::Normal)
                    .expect("open sqlite store"),
            ),
            Backend::Postgres { url, schema } => Arc::new(
                PgStore::open(&PgOptions {
                    url: url.clone(),
                    schema: Some(schema.clone()),
                    pool_size: pool,
                })
                .await
                .expect("open postgres store"),
            ),
        };
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(store.clone());
        store
    }

    /// Closes every handle and drops the schema (PostgreSQL) or the file (SQLite).
    pub async fn cleanup(&self) {
        let handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            if tokio::time::timeout(Duration::from_secs(10), h.close())
                .await
                .is_err()
            {
                eprintln!("closing a {} handle took over 10 s", self.name());
            }
        }
        if let Backend::Postgres { url, schema } = &self.backend {
            let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
            match tokio::time::timeout(Duration::from_secs(15), execute(url, &drop)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("could not drop test schema {schema}: {e}"),
                Err(_) => eprintln!("dropping test schema {schema} took over 15 s"),
            }
        }
    }
}

/// Runs one statement on a connection of its own.
async fn execute(url: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(conn);
    let out = client.batch_execute(sql).await;
    drop(client);
    let _ = task.await;
    out
}

/// Drops `rt_{pid}_{n}` schemas left by runs of this suite that are gone (killed before
/// their cleanup ran): their pid no longer exists, or is some other program now.
async fn sweep_stale_schemas(url: &str) {
    let Ok((client, conn)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await else {
        return;
    };
    let task = tokio::spawn(conn);
    let names: Vec<String> = client
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'rt\\_%'",
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    for name in names {
        let Some(pid) = name
            .strip_prefix(SCHEMA_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || suite_is_running_as(pid) {
            continue;
        }
        if let Err(e) = client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
            .await
        {
            eprintln!("could not drop stale test schema {name}: {e}");
        }
    }
    drop(client);
    let _ = task.await;
}

/// True when `pid` is alive and is this suite's binary (`store_contract-…`).
fn suite_is_running_as(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|comm| comm.starts_with("store_contrac"))
        .unwrap_or(false)
}

/// A node row as the tests register it.
pub fn node_row(id: &str) -> NodeRow {
    NodeRow {
        id: id.into(),
        host: "h".into(),
        pid: 1,
        proc_start: 1,
        boot_id: "b".into(),
        slots: 2,
        started_at: 0,
        heartbeat_at: 0,
        ..Default::default()
    }
}
