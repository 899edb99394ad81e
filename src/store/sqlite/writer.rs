//! The SQLite writer: one thread per process takes every waiting write, runs them in one
//! `BEGIN IMMEDIATE` transaction, commits once and only then answers (a failing write
//! sends the batch back to run one write per transaction, so it fails alone); a lone write may run inline on its
//! caller's thread instead, and an end whose caller does not wait for it lingers up to
//! [`END_LINGER`] for others to share its commit. Statements and commits are counted here
//! by operation.

use std::time::Instant;

use super::*;

/// A write request queued for the writer thread. It may run more than once: the
/// fast path runs a whole batch in one transaction; if any request in it fails,
/// the batch is rolled back and every request runs again in a transaction of its
/// own, so one bad request never takes the others with it and no savepoints are
/// needed on the fast path.
pub(super) trait WriteOp: Send {
    /// The store operation it belongs to (`runyard_store_*_total{op}`).
    fn op(&self) -> &'static str;
    /// Runs in the open transaction; returns the change kinds and whether it succeeded.
    fn run(&mut self, conn: &Connection) -> (u8, bool);
    /// Answers the caller with the last run's result, given how the transaction ended.
    fn answer(self: Box<Self>, commit: StoreResult<()>);
    /// Until when it may wait for others to share its commit (none: it may not wait).
    fn linger_until(&self) -> Option<Instant>;
}

pub(super) struct Op<T, F> {
    pub(super) op: &'static str,
    pub(super) f: F,
    pub(super) result: Option<StoreResult<(T, u8)>>,
    pub(super) reply: oneshot::Sender<StoreResult<T>>,
    pub(super) linger_until: Option<Instant>,
}

impl<T, F> WriteOp for Op<T, F>
where
    T: Send,
    F: FnMut(&Connection) -> StoreResult<(T, u8)> + Send,
{
    fn op(&self) -> &'static str {
        self.op
    }

    fn run(&mut self, conn: &Connection) -> (u8, bool) {
        let result = (self.f)(conn);
        let out = match &result {
            Ok((_, kinds)) => (*kinds, true),
            Err(_) => (0, false),
        };
        self.result = Some(result);
        out
    }

    fn answer(self: Box<Self>, commit: StoreResult<()>) {
        let result = self.result.unwrap_or(Err(StoreError::Closed));
        let _ = self.reply.send(commit.and(result).map(|(t, _)| t));
    }

    fn linger_until(&self) -> Option<Instant> {
        self.linger_until
    }
}

pub(super) fn writer_loop(
    conn: Arc<Mutex<Connection>>,
    mut rx: mpsc::UnboundedReceiver<Box<dyn WriteOp>>,
    feed: ChangeFeed,
    traffic: Arc<Traffic>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        take_waiting(&mut rx, &mut batch);
        // A batch of ends that may wait is held until the first of them must go, for
        // more ends to share its commit. The connection is free meanwhile, so a write
        // that may not wait runs inline; one queued here waits for the batch.
        if let Some(until) = batch
            .iter()
            .map(|op| op.linger_until())
            .collect::<Option<Vec<_>>>()
            && let Some(until) = until.into_iter().min()
        {
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
            take_waiting(&mut rx, &mut batch);
        }
        let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
        let _ = conn.busy_timeout(BUSY_TIMEOUT);
        let begin = begin_immediate(&conn);
        run_batch(&conn, &feed, &traffic, batch, begin);
    }
}

/// Adds the writes waiting in `rx` to `batch`, up to [`MAX_BATCH`].
fn take_waiting(
    rx: &mut mpsc::UnboundedReceiver<Box<dyn WriteOp>>,
    batch: &mut Vec<Box<dyn WriteOp>>,
) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

thread_local! {
    /// Statements the write connection ran on this thread (see [`count_statement`]).
    static STATEMENTS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The write connection's statement tracer: every statement it starts, except the
/// transaction's own (BEGIN, COMMIT, ROLLBACK), as PostgreSQL's are counted.
pub(super) fn count_statement(event: rusqlite::trace::TraceEvent<'_>) {
    if let rusqlite::trace::TraceEvent::Stmt(_, sql) = event {
        let head = sql
            .trim_start()
            .get(..8)
            .unwrap_or(sql)
            .to_ascii_uppercase();
        if !["BEGIN", "COMMIT", "ROLLBACK"]
            .iter()
            .any(|k| head.starts_with(k))
        {
            STATEMENTS.with(|n| n.set(n.get() + 1));
        }
    }
}

/// Runs one operation of a batch, recording the statements it ran.
pub(super) fn counted<T>(traffic: &Traffic, op: &'static str, run: impl FnOnce() -> T) -> T {
    let before = STATEMENTS.with(|n| n.get());
    let out = run();
    traffic.record(op, STATEMENTS.with(|n| n.get()) - before, 0);
    out
}

/// Runs a batch in the transaction `begin` opened (or answers every request with its error).
pub(super) fn run_batch(
    conn: &Connection,
    feed: &ChangeFeed,
    traffic: &Traffic,
    mut batch: Vec<Box<dyn WriteOp>>,
    begin: StoreResult<()>,
) {
    let mut kinds = 0u8;
    let mut all_ok = true;
    if begin.is_ok() {
        for op in batch.iter_mut() {
            let (k, ok) = counted(traffic, op.op(), || op.run(conn));
            kinds |= k;
            all_ok &= ok;
            if !ok {
                break;
            }
        }
    }
    match begin {
        Err(err) => {
            for op in batch {
                op.answer(Err(err.clone()));
            }
        }
        Ok(()) if all_ok => {
            let commit = exec_cached(conn, "COMMIT");
            if let (Ok(()), Some(first)) = (&commit, batch.first()) {
                // One commit for the batch, counted on its first operation.
                traffic.record(first.op(), 0, 1);
            }
            if commit.is_err() {
                let _ = conn.execute_batch("ROLLBACK");
            } else if kinds != 0 {
                publish(conn, feed, kinds);
            }
            for op in batch {
                op.answer(commit.clone());
            }
        }
        Ok(()) => {
            // Slow path: something failed, so nothing of this batch is kept; each
            // request runs again alone and fails or commits on its own.
            let _ = exec_cached(conn, "ROLLBACK");
            for mut op in batch {
                let commit = begin_immediate(conn).and_then(|()| {
                    let (k, ok) = counted(traffic, op.op(), || op.run(conn));
                    if ok {
                        exec_cached(conn, "COMMIT").inspect(|()| {
                            traffic.record(op.op(), 0, 1);
                            publish(conn, feed, k)
                        })
                    } else {
                        exec_cached(conn, "ROLLBACK")
                    }
                });
                if commit.is_err() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                op.answer(commit);
            }
        }
    }
}

/// After a commit: record the newest event id (for the idle event tailer), then wake
/// the waiters of every changed kind.
pub(super) fn publish(conn: &Connection, feed: &ChangeFeed, kinds: u8) {
    if kinds & change::EVENTS != 0 {
        let high: Option<i64> = conn
            .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
            .and_then(|mut st| st.query_row([], |r| r.get(0)).optional())
            .ok()
            .flatten();
        if let Some(id) = high {
            feed.publish_last_event(id);
        }
    }
    feed.bump_local(kinds);
}

/// `BEGIN IMMEDIATE` takes the write lock up front, waiting up to `busy_timeout` for
/// another process's writer; it is retried a few times more before failing, so lock
/// contention between processes never reaches callers as an error.
pub(super) fn begin_immediate(conn: &Connection) -> StoreResult<()> {
    let mut begin = exec_cached(conn, "BEGIN IMMEDIATE");
    let mut tries = 0;
    while matches!(&begin, Err(e) if e.is_transient()) && tries < 6 {
        tries += 1;
        tracing::warn!(
            "sqlite write lock busy for {:?}; retrying",
            BUSY_TIMEOUT * tries
        );
        begin = exec_cached(conn, "BEGIN IMMEDIATE");
    }
    begin
}

impl SqliteStore {
    /// A write through the writer thread, batched with whatever else is waiting (group
    /// commit): the right path for many concurrent small writes such as triggers.
    pub(super) async fn write<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<(T, u8)> + Send + 'static,
    {
        self.submit(op, f, false).await
    }

    /// A write whose caller goes on without it (an end its slot does not wait for): held
    /// up to [`END_LINGER`] on the writer thread so that other such writes share its
    /// commit (each commit writes a WAL frame for every page it changed; ends close
    /// together change the same pages).
    pub(super) async fn write_lingering<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<(T, u8)> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel::<StoreResult<T>>();
        self.send(Box::new(Op {
            op,
            f,
            result: None,
            reply,
            linger_until: Some(Instant::now() + END_LINGER),
        }))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// A write on a latency-critical path (a slot waits for it): run on the caller's
    /// thread when the connection is free, else like [`Self::write`].
    pub(super) async fn write_now<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<(T, u8)> + Send + 'static,
    {
        self.submit(op, f, true).await
    }

    pub(super) async fn submit<T, F>(&self, op: &'static str, f: F, inline: bool) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<(T, u8)> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel::<StoreResult<T>>();
        let job: Box<dyn WriteOp> = Box::new(Op {
            op,
            f,
            result: None,
            reply,
            linger_until: None,
        });
        let job = match inline {
            true => match self.try_inline(job) {
                Ok(()) => return rx.await.map_err(|_| StoreError::Closed)?,
                Err(job) => job,
            },
            false => job,
        };
        self.send(job)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues `job` for the writer thread.
    fn send(&self, job: Box<dyn WriteOp>) -> StoreResult<()> {
        let sender = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Closed)?;
        sender.send(job).map_err(|_| StoreError::Closed)
    }

    /// The fast path of a write: when the write connection is free, run the request
    /// right here as a batch of one — no hand-off to the writer thread and back, which
    /// is most of a lone write's latency. It never waits: if the connection is busy in
    /// this process (the writer thread or another caller) or another process holds the
    /// database's write lock, the request goes to the writer thread instead.
    pub(super) fn try_inline(&self, job: Box<dyn WriteOp>) -> Result<(), Box<dyn WriteOp>> {
        if !self.inline || self.stop.load(Ordering::Relaxed) {
            return Err(job);
        }
        let Ok(conn) = self.conn.try_lock() else {
            return Err(job);
        };
        let _ = conn.busy_timeout(Duration::ZERO);
        let begin = exec_cached(&conn, "BEGIN IMMEDIATE");
        if begin.is_err() {
            return Err(job);
        }
        run_batch(&conn, &self.feed, &self.traffic, vec![job], begin);
        Ok(())
    }
}
