-- runyard schema v6 (SQLite): re-runs.

-- The run this one re-runs (`POST /api/runs/{id}/rerun`); the original is never changed.
ALTER TABLE runs ADD COLUMN rerun_of TEXT;
-- A shard a re-run of failed shards kept: this job is a terminal copy of that one.
ALTER TABLE jobs ADD COLUMN kept_from TEXT;
