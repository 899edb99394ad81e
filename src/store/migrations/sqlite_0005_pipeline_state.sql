-- runyard schema v5 (SQLite): durable per-pipeline state shared by every node.

-- One row per pipeline that was ever paused (more per-pipeline state may join it). A paused
-- pipeline's queued jobs are claimed by no node (the claim reads this inside its
-- transaction); triggers still queue runs; running jobs finish.
CREATE TABLE pipeline_state (
    pipeline    TEXT PRIMARY KEY,
    paused      INTEGER NOT NULL DEFAULT 0,
    paused_at   INTEGER,
    paused_by   TEXT,
    updated_at  INTEGER NOT NULL
);
