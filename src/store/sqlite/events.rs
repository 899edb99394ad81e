//! Events on SQLite: read after an id (in commit order, the writer's), the bounds a
//! resuming stream checks, and a run's own events.

use super::*;

pub(super) async fn events_after(
    s: &SqliteStore,
    after: i64,
    limit: usize,
) -> StoreResult<Vec<StoredEvent>> {
    s.read(move |conn| {
        Ok(conn
            .prepare_cached("SELECT id, name, data FROM events WHERE id > ?1 ORDER BY id LIMIT ?2")?
            .query_map(params![after, limit as i64], |r| {
                Ok(StoredEvent {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    data: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?)
    })
    .await
}

pub(super) async fn events_bounds(s: &SqliteStore) -> StoreResult<(i64, i64)> {
    s.read(|conn| {
        // Ids come from one writer in commit order, without gaps: everything below
        // the oldest retained id was pruned. With none retained, every id ever
        // assigned (AUTOINCREMENT keeps the highest in sqlite_sequence) was pruned.
        Ok(conn.query_row(
            "SELECT MAX(COALESCE(MIN(id) - 1,
                                (SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0), 0),
                    COALESCE(MAX(id), 0)
             FROM events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    })
    .await
}

pub(super) async fn run_events(
    s: &SqliteStore,
    run_id: &str,
    limit: usize,
) -> StoreResult<Vec<StoredEvent>> {
    let run_id = run_id.to_string();
    s.read(move |conn| {
        Ok(conn
            .prepare_cached(
                "SELECT id, name, data FROM events INDEXED BY events_run
                 WHERE run_id = ?1 AND name <> 'job:progress' ORDER BY id LIMIT ?2",
            )?
            .query_map(params![run_id, limit as i64], |r| {
                Ok(StoredEvent {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    data: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?)
    })
    .await
}
