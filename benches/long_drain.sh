#!/bin/bash
# A long drain on PostgreSQL with autovacuum on, as a deployment runs it (this machine's
# own PostgreSQL runs with autovacuum off): a throwaway cluster (`initdb` under
# /tmp/runyard-long-drain, port 5433, PostgreSQL's defaults otherwise), a `jobs` table
# holding 1,000,000 finished jobs of history and QUEUED (150,000) queued `/bin/true`
# jobs, bulk-inserted; then `runyard serve` (2 slots) drains them. Every 10 s it prints
# the seconds since the start, jobs left, jobs/s over the last 10 s, the dead rows of
# `jobs` and how many times autovacuum has run on it.
#
#   benches/long_drain.sh target/release/runyard new
#
# Needs PostgreSQL's server binaries (`pg_config --bindir`), psql and curl; as root the
# cluster runs as `postgres`. The cluster stays up for the next run; stop it with
#   runuser -u postgres -- $(pg_config --bindir)/pg_ctl -D /tmp/runyard-long-drain/data stop
set -euo pipefail
BIN=$(realpath "$1"); LABEL=$2; QUEUED=${QUEUED:-150000}
PGBIN=$(pg_config --bindir)
DIR=/tmp/runyard-long-drain
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ ! -d $DIR/data ]; then
  mkdir -p $DIR && { [ "$(id -u)" != 0 ] || chown postgres $DIR; }
  as_pg "$PGBIN/initdb" -D $DIR/data -A trust -U postgres > /dev/null
fi
as_pg "$PGBIN/pg_ctl" -D $DIR/data -l $DIR/log -o "-p 5433 -k $DIR" status > /dev/null \
  || as_pg "$PGBIN/pg_ctl" -D $DIR/data -l $DIR/log -o "-p 5433 -k $DIR" start -w > /dev/null
URL=postgres://postgres@127.0.0.1:5433/postgres
SCHEMA=drain_$LABEL
psql $URL -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" 2> /dev/null
WORK=$(mktemp -d)
cat > $WORK/runyard.toml <<TOML
[server]
listen = "127.0.0.1:7979"
data_dir = "$WORK/data"
max_workers = 2
[store]
url = "$URL"
schema = "$SCHEMA"
[pipelines.deep]
command = ["/bin/true"]
TOML
up() { for _ in $(seq 1 150); do curl -sf 127.0.0.1:7979/healthz > /dev/null && return; sleep 0.2; done; exit 1; }
# The first start creates the schema; the queue is filled while no server runs.
"$BIN" serve -c $WORK/runyard.toml > $WORK/first.log 2>&1 & PID=$!; up; kill $PID; wait $PID || true
NOW=$(psql $URL -Atc "SELECT (extract(epoch FROM now()) * 1000)::bigint")
DAY_AGO=$((NOW - 86400000))
psql $URL -q <<SQL
SET search_path = $SCHEMA;
INSERT INTO runs (id, pipeline, status, params, shard_count, triggered_by, created_at, finished_at)
  SELECT 'old-' || lpad(i::text, 8, '0'), 'deep', 'completed', '{}', 1000, 'bench', $DAY_AGO, $DAY_AGO
  FROM generate_series(0, 999) AS i;
INSERT INTO jobs (id, run_id, pipeline, shard_index, shard_count, status, max_attempts, retry_backoff_ms,
                  on_orphan, max_orphan_requeues, run_after, created_at, finished_at)
  SELECT 'old-' || lpad((i / 1000)::text, 8, '0') || ':s' || (i % 1000), 'old-' || lpad((i / 1000)::text, 8, '0'),
         'deep', i % 1000, 1000, 'completed', 1, 1000, 'requeue', 1, 0, $DAY_AGO, $DAY_AGO
  FROM generate_series(0::bigint, 999999) AS i;
INSERT INTO runs (id, pipeline, status, params, shard_count, triggered_by, created_at)
  SELECT 'new-' || lpad(i::text, 8, '0'), 'deep', 'queued', '{}', 1000, 'bench', $NOW
  FROM generate_series(0, $QUEUED / 1000 - 1) AS i;
INSERT INTO jobs (id, run_id, pipeline, shard_index, shard_count, status, max_attempts, retry_backoff_ms,
                  on_orphan, max_orphan_requeues, run_after, created_at)
  SELECT 'new-' || lpad((i / 1000)::text, 8, '0') || ':s' || (i % 1000), 'new-' || lpad((i / 1000)::text, 8, '0'),
         'deep', i % 1000, 1000, 'queued', 1, 1000, 'requeue', 1, 0, $NOW
  FROM generate_series(0::bigint, $QUEUED - 1) AS i ORDER BY i;
SQL
psql $URL -qc "VACUUM ANALYZE $SCHEMA.jobs"
psql $URL -qc "VACUUM ANALYZE $SCHEMA.runs"
echo "jobs' storage options: $(psql $URL -Atc "SELECT reloptions FROM pg_class WHERE oid = '$SCHEMA.jobs'::regclass")"
"$BIN" serve -c $WORK/runyard.toml > $WORK/serve.log 2>&1 & PID=$!
START=$(date +%s); BEFORE=$QUEUED
echo "seconds  left  jobs/s  dead_rows  autovacuums"
while true; do
  sleep 10
  LEFT=$(psql $URL -Atc "SELECT count(*) FROM $SCHEMA.jobs WHERE status IN ('queued', 'running')")
  STATS=$(psql $URL -Atc "SELECT n_dead_tup || ' ' || autovacuum_count FROM pg_stat_user_tables
                          WHERE schemaname = '$SCHEMA' AND relname = 'jobs'")
  echo "$(($(date +%s) - START)) $LEFT $(((BEFORE - LEFT) / 10)) $STATS"
  BEFORE=$LEFT
  [ "$LEFT" -eq 0 ] || [ $(($(date +%s) - START)) -gt 900 ] && break
done
kill $PID; wait $PID || true
psql $URL -qc "DROP SCHEMA $SCHEMA CASCADE" 2> /dev/null
rm -rf $WORK
