-- runyard schema v1 (SQLite). Times are epoch milliseconds.
-- Every index here is written on the hot path of a job's life; each one costs WAL
-- pages per transition, so only indexes that a hot query needs exist.
CREATE TABLE runs (
    id              TEXT PRIMARY KEY,
    pipeline        TEXT NOT NULL,
    status          TEXT NOT NULL,
    params          TEXT NOT NULL,
    shard_count     INTEGER NOT NULL,
    shards_done     INTEGER NOT NULL DEFAULT 0,
    triggered_by    TEXT NOT NULL,
    actor           TEXT,
    idempotency_key TEXT,
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,
    finished_at     INTEGER
);
CREATE UNIQUE INDEX runs_idempotency ON runs(pipeline, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_pipeline ON runs(pipeline, id);
CREATE INDEX runs_finished ON runs(finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE jobs (
    seq                 INTEGER PRIMARY KEY,
    id                  TEXT NOT NULL UNIQUE,
    run_id              TEXT NOT NULL,
    pipeline            TEXT NOT NULL,
    shard_index         INTEGER NOT NULL,
    shard_count         INTEGER NOT NULL,
    status              TEXT NOT NULL,
    reason              TEXT,
    attempt             INTEGER NOT NULL DEFAULT 1,
    max_attempts        INTEGER NOT NULL,
    retry_backoff_ms    INTEGER NOT NULL,
    on_orphan           TEXT NOT NULL,
    orphan_requeues     INTEGER NOT NULL DEFAULT 0,
    max_orphan_requeues INTEGER NOT NULL,
    claim_seq           INTEGER NOT NULL DEFAULT 0,
    run_after           INTEGER NOT NULL,
    node_id             TEXT,
    pid                 INTEGER,
    proc_start          INTEGER,
    abort_requested     INTEGER NOT NULL DEFAULT 0,
    exit_code           INTEGER,
    progress            INTEGER,
    progress_message    TEXT,
    error               TEXT,
    stdout_bytes        INTEGER NOT NULL DEFAULT 0,
    stderr_bytes        INTEGER NOT NULL DEFAULT 0,
    truncated           INTEGER NOT NULL DEFAULT 0,
    created_at          INTEGER NOT NULL,
    claimed_at          INTEGER,
    started_at          INTEGER,
    finished_at         INTEGER
);
-- The claim walks the head of each pipeline's queue in `seq` order through this index.
CREATE INDEX jobs_queued ON jobs(pipeline, seq) WHERE status = 'queued';
-- Only retries wait (run_after in the future); new and requeued jobs are due at once.
CREATE INDEX jobs_delayed ON jobs(run_after) WHERE status = 'queued' AND attempt > 1;
CREATE INDEX jobs_running ON jobs(node_id) WHERE status = 'running';
CREATE INDEX jobs_run ON jobs(run_id, shard_index);

CREATE TABLE output (
    id         INTEGER PRIMARY KEY,
    job_id     TEXT NOT NULL,
    claim_seq  INTEGER NOT NULL,
    stream     INTEGER NOT NULL,
    first_line INTEGER NOT NULL,
    line_count INTEGER NOT NULL,
    data       TEXT NOT NULL
);
CREATE INDEX output_job ON output(job_id, first_line);

CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE nodes (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    proc_start   INTEGER NOT NULL,
    boot_id      TEXT NOT NULL,
    slots        INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
