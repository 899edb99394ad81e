-- Vacuum `jobs` by a fixed count of dead rows, and always clean its indexes.
--
-- A claimed or finished job's entry stays in the claim index (`jobs_ready`) until vacuum,
-- at the head of the queue, where every claim steps over it. By default autovacuum waits
-- for a fifth of the table to die, and `jobs` keeps its history, so on a table of a
-- million jobs the dead head grows to 100,000 entries: +0.6 ms on every claim
-- (`BENCH_ONLY=claim-depth`). And a vacuum that finds dead rows on under 2% of the
-- table's pages skips its indexes (PostgreSQL 14+), which leaves exactly this head in place.
-- So: vacuum once 10,000 rows died (a few thousand jobs; autovacuum visits a database at
-- most once per `autovacuum_naptime`), and clean the indexes every time.
ALTER TABLE jobs SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    vacuum_index_cleanup = on
);
