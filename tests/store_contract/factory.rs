//! Fresh stores for the conformance suite: a temp SQLite file, or a fresh PostgreSQL
//! schema, per test, with as many independent handles on it as a test asks for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runyard::config::Synchronous;
use runyard::store::postgres::{PgOptions, PgStore};
use runyard::store::sqlite::SqliteStore;
use runyard::store::{NodeRow, Store};

/// The test kit's PostgreSQL schemas (naming, dropping, sweeping), without the rest of it.
#[path = "../common/pg.rs"]
mod pg;

/// The test kit's TCP fault proxy (cuts, holds, commits whose answer is lost).
#[allow(dead_code)]
#[path = "../common/proxy.rs"]
pub mod proxy;

/// Connections per PostgreSQL handle (the server's 100 are shared by every test).
const PG_POOL: usize = 4;
/// Test schemas are `rt_{pid}_{counter}` (the kit's naming rule, [`pg::schema_name`]).
const SCHEMA_TAG: &str = "rt";

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
        // Schemas of runs of this suite killed before their cleanup ran.
        pg::sweep_stale_schemas(&url, SCHEMA_TAG).await;
    }
    let schema = pg::schema_name(SCHEMA_TAG);
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

    /// PostgreSQL only: another handle whose connections go through a fault proxy the
    /// test controls, and the proxy. `None` on SQLite, which has no connection to lose.
    pub async fn open_through_proxy(&self) -> Option<(Arc<dyn Store>, proxy::FaultProxy)> {
        let Backend::Postgres { url, schema } = &self.backend else {
            return None;
        };
        let mut u = url::Url::parse(url).expect("TEST_DATABASE_URL is a URL");
        let host = match u.host_str().unwrap_or("127.0.0.1") {
            "localhost" => "127.0.0.1".to_string(),
            h => h.to_string(),
        };
        let upstream = format!("{host}:{}", u.port().unwrap_or(5432))
            .parse()
            .expect("the database's address");
        let fault = proxy::FaultProxy::start(upstream).await;
        u.set_host(Some(&fault.addr.ip().to_string())).unwrap();
        u.set_port(Some(fault.addr.port())).unwrap();
        let store: Arc<dyn Store> = Arc::new(
            PgStore::open(&PgOptions {
                url: u.to_string(),
                schema: Some(schema.clone()),
                pool_size: PG_POOL,
            })
            .await
            .expect("open postgres store through the proxy"),
        );
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(store.clone());
        Some((store, fault))
    }

    /// PostgreSQL only: runs `sql` in the test's schema, past any proxy.
    pub async fn execute(&self, sql: &str) {
        if let Backend::Postgres { url, schema } = &self.backend {
            pg::execute(url, &format!("SET search_path TO {schema}; {sql}"))
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    /// PostgreSQL only: the first column of the first row `sql` returns, as an `i64`.
    pub async fn query_i64(&self, sql: &str) -> i64 {
        let Backend::Postgres { url, schema } = &self.backend else {
            panic!("query_i64 is for PostgreSQL");
        };
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("SET search_path TO {schema}"))
            .await
            .expect("search_path");
        let value: i64 = client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0);
        drop(client);
        let _ = task.await;
        value
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
            match tokio::time::timeout(Duration::from_secs(15), pg::drop_schema(url, schema)).await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("could not drop test schema {schema}: {e}"),
                Err(_) => eprintln!("dropping test schema {schema} took over 15 s"),
            }
        }
    }
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
