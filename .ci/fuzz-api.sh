#!/usr/bin/env bash
# Fuzz the HTTP API from its own OpenAPI document (/api/openapi.json) with schemathesis.
#
# Boots the debug binary on a fresh data_dir (tests/fuzz/runyard.toml: cheap pipelines),
# runs every schemathesis phase (examples, coverage, fuzzing, stateful) with a bounded
# number of examples per operation, and fails on any check failure, any 5xx, a server
# that died, or a panic in its log. Prints the counts.
#
# Env: FUZZ_MAX_EXAMPLES (default 50), FUZZ_SEED (default fixed: reproducible CI runs;
# set another to explore), FUZZ_WORKERS (default 2), FUZZ_TOKEN (bearer token sent on
# every request; required when the config has an [auth] table, then `ignored_auth`
# is checked too).
set -euo pipefail
cd "$(dirname "$0")/.."

ST_VERSION=4.32.5
target=$(realpath -m "${CARGO_TARGET_DIR:-target}")
max_examples=${FUZZ_MAX_EXAMPLES:-50}
seed=${FUZZ_SEED:-20261124}
workers=${FUZZ_WORKERS:-2}
config=tests/fuzz/runyard.toml

# schemathesis in a venv under target/ (reused while the pinned version matches). Python
# 3.11's `ast` is not thread-safe ("AST constructor recursion depth mismatch" from
# hypothesis under several workers), so prefer 3.12+: FUZZ_PYTHON, python3 when new
# enough, python3.13/python3.12 on PATH, or a pyenv-installed one.
python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }
pick_python() {
  local c
  for c in ${FUZZ_PYTHON:-} python3 python3.13 python3.12; do
    if command -v "$c" >/dev/null && python_ok "$c"; then command -v "$c"; return; fi
  done
  if command -v pyenv >/dev/null; then
    for c in "$(pyenv root)"/versions/3.1[2-9]*/bin/python3; do
      if [[ -x $c ]] && python_ok "$c"; then echo "$c"; return; fi
    done
  fi
  command -v python3
}
venv="$target/fuzz-venv"
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qx "schemathesis, version $ST_VERSION" \
  || ! python_ok "$venv/bin/python"; then
  python=$(pick_python)
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet "schemathesis==$ST_VERSION"
fi
if ! python_ok "$venv/bin/python"; then
  echo "fuzz: no Python 3.12+ found (set FUZZ_PYTHON); running schemathesis with one worker" >&2
  workers=1
fi

cargo build
bin="$target/debug/runyard"

work=$(mktemp -d "${TMPDIR:-/tmp}/runyard-fuzz.XXXXXX")
server_pid=
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

cp "$config" "$work/runyard.toml"
# Port 0: the kernel picks a free loopback port; the server logs the address it got.
NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$bin" serve -c "$work/runyard.toml" --listen 127.0.0.1:0 \
  >"$work/server.out" 2>"$work/server.err" &
server_pid=$!

addr=
for _ in $(seq 300); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "fuzz: the server exited at start:" >&2
    cat "$work/server.err" >&2
    exit 1
  fi
  addr=$(sed 's/\x1b\[[0-9;]*m//g' "$work/server.err" | grep -o 'listening addr=[0-9.:]*' | head -1 | cut -d= -f2 || true)
  [[ -n $addr ]] && break
  sleep 0.1
done
[[ -n $addr ]] || { echo "fuzz: the server did not log its address within 30 s" >&2; exit 1; }
base="http://$addr"
curl -fsS --retry 50 --retry-connrefused --retry-delay 0 --max-time 5 "$base/healthz" >/dev/null

auth=(-H "Authorization: Bearer ${FUZZ_TOKEN:-fuzz-no-auth-configured}")
# Every check but object_level_authorization (it needs two users). The authentication
# checks (a request without or with a wrong token must get 401) only mean something
# when the server enforces tokens.
auth_checks=false
if grep -q '^\[auth\]' "$config"; then
  [[ -n ${FUZZ_TOKEN:-} ]] || { echo "fuzz: $config has [auth]: set FUZZ_TOKEN to one of its tokens" >&2; exit 1; }
  auth_checks=true
fi
{
  echo "[checks]"
  echo "object_level_authorization.enabled = false"
  echo "ignored_auth.enabled = $auth_checks"
  echo "missing_required_header.enabled = $auth_checks"
  cat tests/fuzz/schemathesis.toml
} >"$work/schemathesis.toml"

echo "fuzz: schemathesis $ST_VERSION against $base (seed $seed, $max_examples examples per operation)"
set +e
(
  cd "$work"
  timeout 900 "$venv/bin/schemathesis" --no-color \
    --config-file "$work/schemathesis.toml" run "$base/api/openapi.json" \
    --max-examples "$max_examples" \
    --seed "$seed" \
    --workers "$workers" \
    --request-timeout 10 \
    --exclude-operation-id streamEvents \
    "${auth[@]}" \
    --report json,har --report-json-path "$target/fuzz-report.json" --report-har-path "$target/fuzz-report.har"
)
st_status=$?
set -e

# /api/events never ends while the server runs, so schemathesis (which reads a response to
# its end) cannot test it; check its error and stream answers here instead.
events_status=0
code=$(curl -s -o "$work/events.err" -w '%{http_code}' "${auth[@]}" -H 'Last-Event-ID: x' "$base/api/events")
if [[ $code != 400 ]] || ! "$venv/bin/python" -c 'import json,sys; assert isinstance(json.load(open(sys.argv[1]))["error"], str)' "$work/events.err"; then
  echo "fuzz: GET /api/events with a bad Last-Event-ID answered $code: $(cat "$work/events.err")" >&2
  events_status=1
fi
headers=$(curl -s -D - -o /dev/null --max-time 1 "${auth[@]}" -H 'Last-Event-ID: 0' "$base/api/events" || true)
if ! grep -qi '^content-type: text/event-stream' <<<"$headers"; then
  echo "fuzz: GET /api/events did not answer an event stream: $headers" >&2
  events_status=1
fi

alive=1
kill -0 "$server_pid" 2>/dev/null || alive=0
# A graceful stop (SIGTERM: drain, exit 0) is part of "did not crash".
kill "$server_pid" 2>/dev/null || true
server_exit=0
wait "$server_pid" 2>/dev/null || server_exit=$?
server_pid=
panics=$(grep -c 'panicked' "$work/server.err" || true)

# Counts: operations, test cases and HTTP requests (with their statuses), failures by check.
"$venv/bin/python" - "$target/fuzz-report.json" "$target/fuzz-report.har" <<'PY' || st_status=1
import json, sys
from collections import Counter

report = json.load(open(sys.argv[1]))
entries = json.load(open(sys.argv[2]))["log"]["entries"]
ops, cases = report["operations"], report["test_cases"]
statuses = Counter(e["response"]["status"] for e in entries)
server_errors = sum(n for s, n in statuses.items() if s >= 500)
failures = Counter()
for f in report.get("failures") or []:
    failures[f"{f.get('code')} {f.get('title')} ({', '.join(f.get('operations') or [])})"] += f.get("count", 1)
print(f"fuzz: operations: {ops['tested']} tested of {ops['selected']} selected ({ops['total']} documented)")
print(f"fuzz: test cases: {cases['generated']} generated, {cases['with_failures']} with failures, {cases['errored']} errored")
print(f"fuzz: requests: {len(entries)}; by status: " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())))
print(f"fuzz: responses with status 5xx: {server_errors}")
print(f"fuzz: failures: {sum(failures.values())}")
for what, n in sorted(failures.items()):
    print(f"fuzz:   {n} x {what}")
print(f"fuzz: errors: {len(report.get('errors') or [])}")
if server_errors or failures or report.get("errors") or report["exit_code"] != 0:
    sys.exit(1)
PY

echo "fuzz: server alive at the end: $([[ $alive == 1 ]] && echo yes || echo NO); exit status after SIGTERM: $server_exit; panics in its log: $panics"
if [[ $st_status != 0 || $events_status != 0 || $alive != 1 || $server_exit != 0 || $panics != 0 ]]; then
  [[ $panics == 0 ]] || grep -B2 -A10 'panicked' "$work/server.err" >&2
  echo "fuzz: FAILED" >&2
  exit 1
fi
echo "fuzz: passed"
