-- runyard schema v4 (PostgreSQL): re-runs.

-- The run this one re-runs (`POST /api/runs/{id}/rerun`); the original is never changed.
ALTER TABLE runs ADD COLUMN rerun_of text COLLATE "C";
-- A shard a re-run of failed shards kept: this job is a terminal copy of that one.
ALTER TABLE jobs ADD COLUMN kept_from text COLLATE "C";
