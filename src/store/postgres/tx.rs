//! A PostgreSQL transaction as the store sends it: [`in_tx!`] runs a body in one READ
//! COMMITTED transaction with retries, and [`Tx`] carries what the body emits.
//!
//! Round trips are the cost on a loaded host (each one ~0.5 ms measured on the 2-core
//! CI machine, most of it waking processes), so BEGIN goes out with the first statement
//! and COMMIT with the transaction's events.
//!
//! Statements sent together (pipelined) are awaited with `tokio::try_join!(biased; …)`,
//! in the order they go out. Once one fails, every later one of the transaction fails
//! with "current transaction is aborted" (25P02), which says nothing of why; polled in
//! order, the error the body sees is the cause (a serialization failure is retried, a
//! lost connection is "unavailable"). Unbiased, `try_join!` rotates which future it
//! polls first and could answer 25P02, a plain database error nobody retries.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio_postgres::Row;

/// A transaction's events, in emission order (ids: the transaction id, then the index).
const INSERT_EVENTS: &str = "INSERT INTO events (id, name, run_id, data, created_at)
     SELECT (pg_current_xact_id()::text::bigint << 16) | e.n, e.name, e.run_id, e.data, e.at
     FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[])
          AS e(n, name, run_id, data, at)";

use super::{StoreError, StoreResult, change, pg_err};

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
    ended: AtomicBool,
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
            && !self.ended.load(Ordering::Relaxed)
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
            ended: AtomicBool::new(false),
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
            self.ended.store(true, Ordering::Relaxed);
            return Ok(());
        }
        if self.ended.load(Ordering::Relaxed) {
            return Ok(());
        }
        let events = self.take_events();
        // Prepared first, so the insert goes out before COMMIT. Only reached after a
        // statement, so BEGIN was sent (events come with statements).
        if !events.is_empty() {
            self.prepare(INSERT_EVENTS).await.map_err(|e| (e, false))?;
        }
        let (inserted, committed) = tokio::join!(
            self.insert_events(events),
            self.client().batch_execute("COMMIT")
        );
        match (inserted, committed) {
            (Ok(()), Ok(())) => {
                self.ended.store(true, Ordering::Relaxed);
                Ok(())
            }
            // A statement that failed aborted the transaction: COMMIT rolled it back.
            (Err(e), Ok(())) if !e.is_unavailable() => {
                self.ended.store(true, Ordering::Relaxed);
                Err((e, false))
            }
            (Err(e), _) => Err((e.at_commit(), true)),
            (Ok(()), Err(e)) => Err((pg_err(e).at_commit(), true)),
        }
    }

    /// Sends `last` (statements prepared already, so each goes out when first polled),
    /// `events` and COMMIT in one round trip, and ends the transaction (the commit that
    /// [`in_tx!`] would send is then skipped). An answer lost on the way is ambiguous:
    /// COMMIT was sent.
    pub(crate) async fn commit_with<T>(
        &self,
        events: Vec<PendingEvent>,
        last: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        if !events.is_empty() {
            self.prepare(INSERT_EVENTS).await?;
        }
        let (out, inserted, committed) = tokio::join!(
            last,
            self.insert_events(events),
            self.client().batch_execute("COMMIT")
        );
        let committed = committed.map_err(|e| pg_err(e).at_commit());
        match (out, inserted, committed) {
            (Ok(out), Ok(()), Ok(())) => {
                self.ended.store(true, Ordering::Relaxed);
                Ok(out)
            }
            // A failed statement aborted the transaction: COMMIT rolled it back.
            (Err(e), _, Ok(())) | (Ok(_), Err(e), Ok(())) if !e.is_unavailable() => {
                self.ended.store(true, Ordering::Relaxed);
                Err(e)
            }
            (Err(e), _, _) | (Ok(_), Err(e), _) => Err(e.at_commit()),
            (Ok(_), Ok(()), Err(e)) => Err(e),
        }
    }

    /// Rolls back (a session that cannot is closed when the transaction is dropped).
    pub(crate) async fn rollback(&mut self) {
        if !self.begun.load(Ordering::Relaxed) || self.ended.load(Ordering::Relaxed) {
            self.ended.store(true, Ordering::Relaxed);
            return;
        }
        if self.client().batch_execute("ROLLBACK").await.is_ok() {
            self.ended.store(true, Ordering::Relaxed);
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
    /// others with COMMIT ([`Tx::commit`]).
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

    /// Adds several events (inserted with the transaction's others before COMMIT).
    pub(crate) async fn emit_many(
        &mut self,
        events: Vec<super::payload::NewEvent>,
        now: i64,
    ) -> StoreResult<()> {
        for event in events {
            self.emit(event, now).await?;
        }
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
        let columns = EventColumns::of(&events);
        self.exec(INSERT_EVENTS, &columns.params()).await?;
        Ok(())
    }
}

/// A transaction's events as the five arrays [`INSERT_EVENTS`] takes (`$1`–`$5`), so a
/// statement may also insert them as a CTE of its own ([`EventColumns::CTE`]).
pub(crate) struct EventColumns<'e> {
    index: Vec<i64>,
    names: Vec<&'e str>,
    runs: Vec<&'e str>,
    data: Vec<&'e str>,
    at: Vec<i64>,
}

impl<'e> EventColumns<'e> {
    /// The insert of the events, as a statement's CTE; its parameters are `$1`–`$5`.
    pub(crate) const CTE: &'static str = INSERT_EVENTS;

    pub(crate) fn of(events: &'e [PendingEvent]) -> EventColumns<'e> {
        EventColumns {
            index: (0..events.len() as i64).collect(),
            names: events.iter().map(|e| e.name.as_str()).collect(),
            runs: events.iter().map(|e| e.run_id.as_str()).collect(),
            data: events.iter().map(|e| e.data.as_str()).collect(),
            at: events.iter().map(|e| e.at).collect(),
        }
    }

    /// `$1`–`$5` of [`EventColumns::CTE`].
    pub(crate) fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 5] {
        [&self.index, &self.names, &self.runs, &self.data, &self.at]
    }
}
