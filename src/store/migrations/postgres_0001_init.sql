-- runyard schema v1 (PostgreSQL). The same columns and meanings as the SQLite
-- schema (sqlite_0001 + sqlite_0002), so one row mapping serves both; times are
-- epoch milliseconds written from the database's clock (`runyard_now_ms()`).
-- No foreign keys on the hot insert paths; deletes are explicit, as on SQLite.

-- The database's clock, stable within a transaction (now() is the transaction start).
CREATE FUNCTION runyard_now_ms() RETURNS bigint LANGUAGE sql STABLE
    AS $$ SELECT (extract(epoch FROM now()) * 1000)::bigint $$;

-- Ids compare bytewise (COLLATE "C"): id order is creation order (UUIDv7), and a short id
-- is a range of the primary key, whatever the database's default collation.
CREATE TABLE runs (
    id              text COLLATE "C" PRIMARY KEY,
    pipeline        text NOT NULL,
    status          text NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'aborted')),
    params          text NOT NULL,
    shard_count     bigint NOT NULL,
    shards_done     bigint NOT NULL DEFAULT 0 CHECK (shards_done BETWEEN 0 AND shard_count),
    triggered_by    text NOT NULL,
    actor           text,
    idempotency_key text,
    has_finalizer   boolean NOT NULL DEFAULT false,
    callback_url    text,
    shards_status   text,
    created_at      bigint NOT NULL,
    started_at      bigint,
    finished_at     bigint
);
CREATE UNIQUE INDEX runs_idempotency ON runs (pipeline, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_pipeline ON runs (pipeline, id);
CREATE INDEX runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE jobs (
    seq                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- FIFO key
    id                  text COLLATE "C" NOT NULL UNIQUE,
    run_id              text COLLATE "C" NOT NULL,
    pipeline            text NOT NULL,
    kind                text NOT NULL DEFAULT 'shard',
    shard_index         bigint NOT NULL,
    shard_count         bigint NOT NULL,
    status              text NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'aborted')),
    reason              text,
    attempt             bigint NOT NULL DEFAULT 1,
    max_attempts        bigint NOT NULL,
    retry_backoff_ms    bigint NOT NULL,
    on_orphan           text NOT NULL,
    orphan_requeues     bigint NOT NULL DEFAULT 0,
    max_orphan_requeues bigint NOT NULL,
    claim_seq           bigint NOT NULL DEFAULT 0,
    run_after           bigint NOT NULL,
    node_id             text,
    pid                 bigint,
    proc_start          bigint,
    abort_requested     boolean NOT NULL DEFAULT false,
    exit_code           bigint,
    progress            bigint,
    progress_message    text,
    error               text,
    stdout_bytes        bigint NOT NULL DEFAULT 0,
    stderr_bytes        bigint NOT NULL DEFAULT 0,
    truncated           boolean NOT NULL DEFAULT false,
    -- The next output line's sequence number: allocated and fenced in one statement.
    output_lines        bigint NOT NULL DEFAULT 0,
    result              text,
    created_at          bigint NOT NULL,
    claimed_at          bigint,
    started_at          bigint,
    finished_at         bigint
) WITH (fillfactor = 85);
-- The claim reads the head of each pipeline's queue in `seq` order through this index.
CREATE INDEX jobs_queued ON jobs (pipeline, seq) WHERE status = 'queued';
-- Only retries wait (run_after in the future); new and requeued jobs are due at once.
CREATE INDEX jobs_delayed ON jobs (run_after) WHERE status = 'queued' AND attempt > 1;
CREATE INDEX jobs_running ON jobs (node_id) WHERE status = 'running';
CREATE INDEX jobs_run ON jobs (run_id, shard_index);

CREATE TABLE output (
    job_id     text NOT NULL,
    claim_seq  bigint NOT NULL,
    stream     smallint NOT NULL,
    first_line bigint NOT NULL,
    line_count bigint NOT NULL,
    data       text NOT NULL,
    created_at bigint,   -- when the chunk was flushed (every line of it shows this time)
    PRIMARY KEY (job_id, first_line)
);

-- Event ids are (top-level xid << 16) | n: readers take only ids below the oldest
-- transaction still in flight, so a transaction that commits late is never skipped.
CREATE TABLE events (
    id         bigint PRIMARY KEY,
    name       text NOT NULL,
    run_id     text NOT NULL,
    data       text NOT NULL,
    created_at bigint NOT NULL
);
CREATE INDEX events_created ON events (created_at);
-- A run's events without its progress ticks (the run page's attempt history).
CREATE INDEX events_run ON events (run_id, id) WHERE name <> 'job:progress';

-- A logged table: an UNLOGGED one is emptied by crash recovery, and every running job
-- would then look stranded.
CREATE TABLE nodes (
    id           text PRIMARY KEY,
    host         text NOT NULL,
    pid          bigint NOT NULL,
    proc_start   bigint NOT NULL,
    boot_id      text NOT NULL,
    slots        bigint NOT NULL,
    started_at   bigint NOT NULL,
    heartbeat_at bigint NOT NULL
);

CREATE TABLE deliveries (
    id              text PRIMARY KEY,
    run_id          text NOT NULL,
    url             text NOT NULL,
    payload         text NOT NULL,
    status          text NOT NULL,
    attempts        bigint NOT NULL DEFAULT 0,
    next_attempt_at bigint NOT NULL,
    lease_node      text,
    lease_until     bigint,
    last_status     bigint,
    last_error      text,
    created_at      bigint NOT NULL,
    finished_at     bigint
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_run ON deliveries (run_id);

CREATE TABLE delivery_attempts (
    delivery_id text NOT NULL,
    attempt     bigint NOT NULL,
    node_id     text NOT NULL,
    started_at  bigint NOT NULL,
    duration_ms bigint NOT NULL,
    status_code bigint,
    error       text,
    PRIMARY KEY (delivery_id, attempt)
);

CREATE TABLE pipeline_nodes (
    node_id    text NOT NULL,
    pipeline   text NOT NULL,
    setup      text NOT NULL,
    failures   bigint NOT NULL DEFAULT 0,
    circuit    text NOT NULL,
    open_until bigint,
    last_error text,
    updated_at bigint NOT NULL,
    PRIMARY KEY (node_id, pipeline)
);
