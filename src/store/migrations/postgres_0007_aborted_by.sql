-- runyard schema v7 (PostgreSQL): who aborted a run.

-- `{"actor", "node", "via"}` as JSON, written by the abort that marked the run (a repeat
-- changes nothing); NULL for runs nobody aborted, and for runs aborted before v7.
ALTER TABLE runs ADD COLUMN aborted_by text;
