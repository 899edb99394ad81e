-- runyard schema v3 (SQLite): what the dashboard reads.

-- When a chunk of output was committed (epoch ms of its flush; NULL for chunks written
-- before this migration). Every line of a chunk shows this time: it is the moment the line
-- was known to the store, at most one flush interval after the job printed it.
ALTER TABLE output ADD COLUMN created_at INTEGER;

-- A run's events without its progress ticks, in id order: the run page's attempt history
-- (`Store::run_events`). Partial, so the frequent `job:progress` rows cost no index write.
CREATE INDEX events_run ON events(run_id, id) WHERE name <> 'job:progress';
