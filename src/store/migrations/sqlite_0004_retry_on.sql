-- runyard schema v4 (SQLite): which failed exit codes a job retries.

-- The pipeline's `retry_exit_codes` / `no_retry_exit_codes`, copied at trigger like the
-- rest of the job's policy (`store::transition::RetryOn`): NULL retries every failure,
-- `only:1,2` only those codes, `except:3` all but those.
ALTER TABLE jobs ADD COLUMN retry_on TEXT;
