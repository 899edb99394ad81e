//! A transition that is one statement runs as PostgreSQL's implicit transaction: no
//! BEGIN, no COMMIT, one message out and one answer back.
//!
//! Why: each message PostgreSQL answers ends in a flush, and on a 2-core machine the
//! server spent about a quarter of its time in `send` (a loopback `send` also runs the
//! receiver's half of TCP). A transaction of BEGIN, three statements and COMMIT costs
//! five of them, five executor starts and five wake-ups of this side; one statement of
//! data-modifying CTEs costs one of each and commits when it ends.
//!
//! What an error means: the server refusing the statement rolled it back (a lost race is
//! retried here, anything else is the caller's); a connection lost after the statement
//! went out is ambiguous, since it may have committed.

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{MAX_RETRIES, PgStore, StoreError, StoreResult, pg_err};

/// Runs `sql` with `params` as a transaction of its own; its rows. Counts one statement
/// and one commit for `op` and publishes `kinds` once it committed.
pub(super) async fn one_statement(
    s: &PgStore,
    op: &'static str,
    kinds: u8,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> StoreResult<Vec<Row>> {
    let mut tries = 0u32;
    loop {
        let attempt = async {
            let client = s.conn().await?;
            // Preparing sends nothing of the statement itself: a connection lost here
            // changed nothing.
            let statement = client.prepare_cached(sql).await.map_err(pg_err)?;
            let rows = client
                .query(&statement, params)
                .await
                .map_err(|e| pg_err(e).at_commit());
            s.traffic.record(op, 1, u64::from(rows.is_ok()));
            rows
        }
        .await;
        match attempt {
            Err(e @ (StoreError::Transient { .. } | StoreError::Unavailable { .. }))
                if tries < MAX_RETRIES =>
            {
                tries += 1;
                tracing::debug!("retrying a one-statement transaction ({tries}): {e}");
                let jitter = (uuid::Uuid::new_v4().as_u128() % 20) as u64;
                let pause = 5 * u64::from(tries) + jitter;
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            Err(e) => return Err(e),
            Ok(rows) => {
                if kinds != 0 {
                    s.feed.bump_local(kinds);
                }
                return Ok(rows);
            }
        }
    }
}
