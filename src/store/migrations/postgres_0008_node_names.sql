-- runyard schema v8 (PostgreSQL): named nodes.

-- A node's name is unique among registered nodes; `info` is JSON
-- `{"url", "labels", "configDigest"}` (what other nodes and the API show and match).
-- Rows from before this version have neither and keep working.
ALTER TABLE nodes ADD COLUMN name text;
ALTER TABLE nodes ADD COLUMN info text;
CREATE UNIQUE INDEX nodes_name ON nodes (name);

-- Which name each node id had, kept after the node's row is gone, so a finished job's
-- view still names the node that ran it. A node's registration prunes
-- entries of nodes gone for over 90 days.
CREATE TABLE node_names (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    started_at bigint NOT NULL
);
