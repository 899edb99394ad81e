//! What every PostgreSQL read shares: prepared queries for one row or many, the
//! `read!` retry on a fresh connection when a pooled one went stale, and column helpers.
//! The reads themselves live with their concern (`views.rs`, `events.rs`, `executions.rs`,
//! `nodes.rs`, `pipeline_state.rs`, `outbox.rs`).

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{StoreResult, pg_err};

pub(super) async fn rows<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> StoreResult<Vec<Row>> {
    let st = c.prepare_cached(sql).await.map_err(pg_err)?;
    c.query(&st, params).await.map_err(pg_err)
}

pub(super) async fn row<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> StoreResult<Option<Row>> {
    let st = c.prepare_cached(sql).await.map_err(pg_err)?;
    c.query_opt(&st, params).await.map_err(pg_err)
}

/// Runs a read on a pooled connection, once more on a fresh one if the first was stale
/// (a pooled connection dies silently when the server restarts).
macro_rules! read {
    ($store:expr, $c:ident => $body:expr) => {{
        let mut tries = 0;
        loop {
            let attempt: StoreResult<_> = async {
                let client = $store.conn().await?;
                let $c = &client;
                Ok($body)
            }
            .await;
            match attempt {
                Err(e) if e.is_unavailable() && tries < 2 => tries += 1,
                other => break other,
            }
        }
    }};
}

pub(super) fn u32_of(r: &Row, i: usize) -> u32 {
    r.get::<_, i64>(i) as u32
}

pub(super) fn opt_u32(r: &Row, i: usize) -> Option<u32> {
    r.get::<_, Option<i64>>(i).map(|v| v as u32)
}
