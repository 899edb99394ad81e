#!/usr/bin/env bash
# The dashboard's real-browser test: headless Debian chromium driven by playwright-core
# (no browser download) against the real server binary on the example config.
# Screenshots land in target/screenshots/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"

# What it needs: Debian's chromium, node and npm.
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y "${need[@]}" || { apt-get update && apt-get install -y "${need[@]}"; }
fi

cd "$here"
# From the lock file; works offline once the npm cache holds playwright-core.
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --prefer-offline

cd "$repo"
cargo build --bin runyard

SCREENSHOT_DIR="${SCREENSHOT_DIR:-$target/screenshots}" \
  node "$here/dashboard.mjs" "$target/debug/runyard"
