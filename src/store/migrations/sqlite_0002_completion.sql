-- runyard schema v2 (SQLite): finalizers, job results, the webhook outbox, per-node
-- pipeline setup and circuit state.

-- A run whose pipeline has a finalizer gets a `{runId}:finalize` job when its last shard
-- lands; the run turns terminal when that job ends.
ALTER TABLE runs ADD COLUMN has_finalizer INTEGER NOT NULL DEFAULT 0;
-- Completion webhook target, checked at trigger; a delivery row is written when the run
-- turns terminal, in the same transaction.
ALTER TABLE runs ADD COLUMN callback_url TEXT;
-- Status of the shards alone, recorded when the last shard lands (the finalizer's input).
ALTER TABLE runs ADD COLUMN shards_status TEXT;

-- `shard` or `finalize`.
ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'shard';
-- The JSON the job wrote to $RUNYARD_RESULT_FILE (decision 20), at most 64 KiB.
ALTER TABLE jobs ADD COLUMN result TEXT;

-- The webhook outbox: one row per terminal run with a callback URL.
CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,      -- the `webhook-id` header; stable over retries
    run_id          TEXT NOT NULL,
    url             TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL,         -- pending, delivered, failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_node      TEXT,
    lease_until     INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    finished_at     INTEGER
);
CREATE INDEX deliveries_due ON deliveries(next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_run ON deliveries(run_id);

CREATE TABLE delivery_attempts (
    delivery_id TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    node_id     TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    status_code INTEGER,
    error       TEXT,
    PRIMARY KEY (delivery_id, attempt)
);

-- Pipeline setup and circuit state per node (decision 19), for the API and for triggers.
CREATE TABLE pipeline_nodes (
    node_id     TEXT NOT NULL,
    pipeline    TEXT NOT NULL,
    setup       TEXT NOT NULL,             -- pending, running, ready, failed
    failures    INTEGER NOT NULL DEFAULT 0,
    circuit     TEXT NOT NULL,             -- closed, open, half_open
    open_until  INTEGER,
    last_error  TEXT,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (node_id, pipeline)
);
