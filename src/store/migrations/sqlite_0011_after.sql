-- runyard schema v11 (SQLite): runs that wait for runs.

-- A run created `after` other runs is `waiting` until they have all ended; its jobs are
-- queued but held (never due) until then. `after_when` is its rule (`success`,
-- `failure`, `always`); NULL for a run that waits for nothing.
ALTER TABLE runs ADD COLUMN after_when TEXT;

-- Set on a run once another waits for it: only the end of such a run looks for
-- dependents to release, so runs nobody waits for pay nothing for the feature.
ALTER TABLE runs ADD COLUMN has_dependents INTEGER NOT NULL DEFAULT 0;

-- Which runs a run waits for. The transaction that ends a run reads its dependents
-- through `run_needs_need`; a pruned run takes its rows with it.
CREATE TABLE run_needs (
    run_id  TEXT NOT NULL,
    need_id TEXT NOT NULL,
    PRIMARY KEY (run_id, need_id)
);
CREATE INDEX run_needs_need ON run_needs (need_id);
