-- runyard schema v7 (SQLite): priorities and not-before times (delayed runs, retries).

-- Higher runs first; FIFO (`seq`) within a priority. Copied from the run at trigger.
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
-- 1 while the job waits for its `run_after` (a delayed run, a retry's backoff). The claim
-- first releases held jobs that fell due (through `jobs_held`), then reads only released
-- ones, so a backlog of jobs not yet due is never walked by a claim.
ALTER TABLE jobs ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
-- A delayed run's not-before time (`delay` / `runAt` of its trigger), when it has one.
ALTER TABLE runs ADD COLUMN run_at INTEGER;

-- Retries already waiting wait as held jobs from now on.
UPDATE jobs SET held = 1 WHERE status = 'queued' AND attempt > 1;

-- The claim's index matches its ORDER BY: per pipeline, released jobs by priority, then seq.
DROP INDEX jobs_queued;
CREATE INDEX jobs_ready ON jobs(pipeline, held, priority DESC, seq) WHERE status = 'queued';
-- Held jobs by due time: the claim's release and the loop's next wake-up.
DROP INDEX jobs_delayed;
CREATE INDEX jobs_held ON jobs(run_after) WHERE status = 'queued' AND held = 1;
