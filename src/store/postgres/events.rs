//! Events below the horizon: the id under which every transaction of this deployment
//! has ended, and the reads that never pass it (a stream resumes without a gap).

use deadpool_postgres::GenericClient;

use super::read::{row, rows};
use super::{PgStore, StoreResult};
use crate::store::StoredEvent;

/// Event ids below this are final for the statement's snapshot: every transaction of this
/// deployment that could still insert a smaller one has ended. It is the snapshot's `xmax`
/// (transactions that start later get larger ids), lowered to the oldest transaction still
/// in flight in that snapshot, except those known to belong to someone else:
/// `pg_stat_activity` shows them under another `application_name` (every connection of
/// this deployment is named `runyard/{schema}`), so a long transaction of another program,
/// or of runyard on another schema, cannot stall this deployment's event streams. A
/// transaction that ended between the snapshot and the `pg_stat_activity` read is not known
/// to be foreign, so it still counts: the horizon errs only towards waiting.
const HORIZON: &str = "(SELECT LEAST(pg_snapshot_xmax(s)::text::bigint,
        (SELECT min(x::text::bigint) FROM pg_snapshot_xip(s) AS x
         WHERE (x::text::bigint & 4294967295) NOT IN (
             SELECT backend_xid::text::bigint FROM pg_stat_activity
             WHERE backend_xid IS NOT NULL
               AND application_name <> current_setting('application_name')))) << 16
     FROM pg_current_snapshot() AS s)";

/// The newest event id a reader can see (0 when none): what the change poll watches.
pub(super) async fn newest_visible_event<C: GenericClient>(c: &C) -> StoreResult<i64> {
    Ok(row(
        c,
        &format!("SELECT COALESCE(max(id), 0) FROM events WHERE id < {HORIZON}"),
        &[],
    )
    .await?
    .map(|r| r.get(0))
    .unwrap_or(0))
}

impl PgStore {
    pub(super) async fn read_events_after(
        &self,
        after: i64,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        let limit = limit as i64;
        read!(self, c => rows(
            c,
            &format!("SELECT id, name, data FROM events WHERE id > $1 AND id < {HORIZON} ORDER BY id LIMIT $2"),
            &[&after, &limit],
        )
        .await?
        .iter()
        .map(|r| StoredEvent { id: r.get(0), name: r.get(1), data: r.get(2) })
        .collect())
    }

    pub(super) async fn read_event_bounds(&self) -> StoreResult<(i64, i64)> {
        read!(self, c => {
            let pruned = row(c, "SELECT value FROM runyard_meta WHERE key = 'events_pruned_through'", &[])
                .await?
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(0);
            (pruned, newest_visible_event(c).await?)
        })
    }

    /// A run's events as committed when read, without the horizon: nothing resumes from
    /// this list (it is a run's history, not a stream's cursor), so an event another
    /// transaction may still precede is shown, as the run's own row already shows its
    /// end. (Behind the horizon, a run read just after it completed could lack its
    /// `run:completed` while any transaction of the deployment was in flight.)
    pub(super) async fn read_run_events(
        &self,
        run_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        let limit = limit as i64;
        read!(self, c => rows(
            c,
            "SELECT id, name, data FROM events
             WHERE run_id = $1 AND name <> 'job:progress' ORDER BY id LIMIT $2",
            &[&run_id, &limit],
        )
        .await?
        .iter()
        .map(|r| StoredEvent { id: r.get(0), name: r.get(1), data: r.get(2) })
        .collect())
    }
}
