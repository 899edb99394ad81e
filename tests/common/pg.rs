//! PostgreSQL schemas of the tests and the bench: one naming rule, the `[store]` table
//! that points a server at one, dropping it (at once, from a `Drop`, or when a
//! [`Schema`] guard goes), and sweeping the ones a killed run left behind. runyard
//! itself makes a schema the first time a store opens on it.
//!
//! Self-contained (no `super::`), so a target that does not take the whole kit can take
//! this file alone, as `tests/store_contract/factory.rs` does.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

/// The one naming rule: `{tag}_{pid}_{n}`. `tag` says who made it (`rt` the store
/// contract, `e2e` the end-to-end suite under `TEST_STORE=postgres`, `hosts` the host
/// clusters, `bench` the bench), `pid` the process that did (so a sweep tells a dead
/// run's schema from a live one's, see [`sweep_stale_schemas`]), `n` a counter of that
/// process.
pub fn schema_name(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    schema_name_keyed(tag, N.fetch_add(1, Ordering::Relaxed))
}

/// [`schema_name`] with `n` chosen by the caller: the same key names the same schema for
/// the whole process (a server restarted on its directory finds its store again). The
/// key must not hold `_` (a sweep reads the name from the right).
pub fn schema_name_keyed(tag: &str, key: impl std::fmt::Display) -> String {
    let key = key.to_string();
    assert!(
        !tag.is_empty()
            && tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "schema tag {tag:?}: lower-case letters, digits and _ only"
    );
    assert!(
        !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric()),
        "schema key {key:?}: letters and digits only"
    );
    let name = format!("{tag}_{}_{}", std::process::id(), key.to_ascii_lowercase());
    assert!(
        name.len() <= 63,
        "schema name {name} is over PostgreSQL's 63 bytes"
    );
    name
}

/// The tag and the pid of a name made by [`schema_name`]; `None` for other names.
pub fn schema_owner(name: &str) -> Option<(&str, u32)> {
    let mut parts = name.rsplitn(3, '_');
    let _n = parts.next()?;
    let pid = parts.next()?.parse().ok()?;
    Some((parts.next()?, pid))
}

/// A config's `[store]` table: `schema` in the database at `url`, with `pool_size`
/// connections when given (else runyard's default).
pub fn store_table(url: &str, schema: &str, pool_size: Option<usize>) -> String {
    let pool = pool_size.map_or(String::new(), |n| format!("pool_size = {n}\n"));
    format!("[store]\nurl = \"{url}\"\nschema = \"{schema}\"\n{pool}")
}

/// Runs `sql` on a connection of its own.
pub async fn execute(url: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(conn);
    let out = client.batch_execute(sql).await;
    drop(client);
    let _ = task.await;
    out
}

/// `DROP SCHEMA … CASCADE`, if it exists.
pub async fn drop_schema(url: &str, schema: &str) -> Result<(), tokio_postgres::Error> {
    execute(url, &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await
}

/// [`drop_schema`] from blocking code (a `Drop`, also one that runs inside a runtime):
/// on a thread of its own with a runtime of its own, within 30 s.
pub fn drop_schema_blocking(url: &str, schema: &str) -> Result<(), String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(30),
                    drop_schema(url, schema),
                )
                .await
                {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("took over 30 s".into()),
                }
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the dropping thread panicked".into()))
    })
}

/// A schema named by the rule in the database at `url`; dropped when this goes (drop the
/// servers on it first).
pub struct Schema {
    pub url: String,
    pub name: String,
}

impl Schema {
    /// A fresh name tagged `tag` ([`schema_name`]); nothing is made until a store opens.
    pub fn new(url: &str, tag: &str) -> Schema {
        Schema {
            url: url.to_string(),
            name: schema_name(tag),
        }
    }

    /// The `[store]` table of a server on this schema ([`store_table`]).
    pub fn store_table(&self, pool_size: Option<usize>) -> String {
        store_table(&self.url, &self.name, pool_size)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Err(e) = drop_schema_blocking(&self.url, &self.name) {
            eprintln!("could not drop schema {}: {e}", self.name);
        }
    }
}

/// The program a `/proc/{pid}/comm` names: the kernel keeps 15 bytes, and a test or
/// bench binary is `{target}-{hash}`.
fn program(comm: &str) -> &str {
    let comm = comm.trim_end();
    let short = &comm[..comm.len().min(15)];
    short.split('-').next().unwrap_or(short)
}

/// True when `pid` is alive and is this program (another run of the same test target
/// or bench, whatever its build).
fn is_this_program(pid: u32) -> bool {
    let Ok(theirs) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
        return false;
    };
    let ours = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_default();
    program(&theirs) == program(&ours)
}

/// Drops the schemas tagged `tag` whose process is gone, or is some other program now:
/// those of runs killed before their cleanup ran. For a tag only one program uses (the
/// schemas of a live run of another program would look stale to it).
pub async fn sweep_stale_schemas(url: &str, tag: &str) {
    let Ok((client, conn)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await else {
        return;
    };
    let task = tokio::spawn(conn);
    let pattern = format!("{}\\_%", tag.replace('_', "\\_"));
    let names: Vec<String> = client
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
            &[&pattern],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    for name in names {
        let Some((owner, pid)) = schema_owner(&name) else {
            continue;
        };
        if owner != tag || pid == std::process::id() || is_this_program(pid) {
            continue;
        }
        if let Err(e) = client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
            .await
        {
            eprintln!("could not drop stale schema {name}: {e}");
        }
    }
    drop(client);
    let _ = task.await;
}
