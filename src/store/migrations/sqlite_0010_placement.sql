-- runyard schema v10 (SQLite): named nodes and per-key caps.

-- A node's name is unique among registered nodes; `info` is JSON
-- `{"url", "labels", "configDigest"}` (what other nodes and the API show and match).
-- Rows from before this version have neither and keep working.
ALTER TABLE nodes ADD COLUMN name TEXT;
ALTER TABLE nodes ADD COLUMN info TEXT;
CREATE UNIQUE INDEX nodes_name ON nodes (name);

-- Which name each node id had, kept after the node's row is gone, so a finished job's
-- view still names the node that ran it. A node's registration prunes
-- entries of nodes gone for over 90 days.
CREATE TABLE node_names (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    started_at INTEGER NOT NULL
);

-- Per-key caps and fair shares: the run's concurrency key (its pipeline's
-- `concurrency_key` rendered with the run's parameters), copied onto each job at trigger;
-- NULL for pipelines without one (jobs queued before their pipeline had one are given
-- the key '' by the nodes that run it keyed: `Store::jobs_adopt_key`). The keyed claim walks a pipeline's
-- distinct keys and each key's heads through this index.
ALTER TABLE jobs ADD COLUMN ckey TEXT;
CREATE INDEX jobs_keyed ON jobs (pipeline, ckey, priority DESC, seq)
    WHERE status = 'queued' AND held = 0 AND ckey IS NOT NULL;
