-- runyard schema v10 (PostgreSQL): workflow runs.

-- One row per workflow run. `steps` is the graph as it was when the run was created
-- (JSON: name, pipeline, needs, when, runId, kept), so a later config change does not
-- rewrite history. `steps_left` counts the step runs this workflow run created that
-- have not ended; the transaction that ends the last of them decides the status
-- (`aborted` if `abort_requested`, `failed` if `steps_bad` > 0, else `completed`), so it
-- is decided exactly once.
CREATE TABLE workflow_runs (
    id               TEXT PRIMARY KEY,
    workflow         TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'completed', 'failed', 'aborted')),
    params           TEXT NOT NULL,
    steps            TEXT NOT NULL,
    idempotency_key  TEXT,
    triggered_by     TEXT NOT NULL,
    actor            TEXT,
    callback_url     TEXT,
    rerun_of         TEXT,
    steps_left       BIGINT NOT NULL,
    steps_bad        BIGINT NOT NULL DEFAULT 0,
    abort_requested  boolean NOT NULL DEFAULT false,
    aborted_by       TEXT,
    created_at       BIGINT NOT NULL,
    finished_at      BIGINT
);
CREATE UNIQUE INDEX workflow_runs_idempotency ON workflow_runs (workflow, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX workflow_runs_created ON workflow_runs (created_at DESC);

-- A step's run names the workflow run that created it and its step.
ALTER TABLE runs ADD COLUMN workflow_run_id TEXT;
ALTER TABLE runs ADD COLUMN workflow_step TEXT;
