#!/usr/bin/env bash
# The layout's rules (DESIGN.md, "Layout"), checked on every `make lint`:
# - API paths are spelled in one place: no "/v1/…" string outside the typed
#   client (client/) and the controller's API (controller/src/api*), but
#   for the sync path the filter's configuration defaults to (protocol);
# - no source file holds more than 500 lines before its tests;
# - the pure decisions build without tokio, axum, sqlx, reqwest or utoipa.
set -euo pipefail
cd "$(dirname "$0")/.."
failed=0
fail() { printf 'layout: %s\n' "$*" >&2; failed=1; }

paths=$(git ls-files -co --exclude-standard -- '*.rs' \
  | grep -vE '^(client/|controller/src/api(\.rs|/)|fuzz/corpus/|target/)' \
  | while read -r f; do [ -f "$f" ] && echo "$f"; done \
  | xargs grep -nE '"/v1/' 2>/dev/null \
  | grep -vE '^protocol/src/sync\.rs:[0-9]+:pub const SYNC_PATH: &str = "/v1/sync";$' || true)
[ -z "$paths" ] || fail "API paths outside client/ and controller/src/api*:
$paths"

MAX=500
while read -r f; do
  [ -f "$f" ] || continue
  case "$f" in tests/e2e/*|*/tests.rs) continue ;; esac # test code only
  n=$(grep -n '^#\[cfg(test)\]' "$f" | head -1 | cut -d: -f1 || true)
  n=${n:-$(wc -l <"$f")}
  [ "$n" -le "$MAX" ] || fail "$f has $n lines before its tests (at most $MAX)"
done < <(git ls-files -co --exclude-standard -- '*.rs' | grep -v '^fuzz/corpus/')

heavy=$(cargo tree -p coalmine-decide -e normal --prefix none --locked 2>/dev/null \
  | grep -oE '^(tokio|axum|sqlx|reqwest|utoipa)[a-z-]* ' | sort -u || true)
[ -z "$heavy" ] || fail "coalmine-decide depends on: $(echo $heavy)"

[ "$failed" -eq 0 ] && echo "layout: ok (paths in one place, files ≤ $MAX lines before tests, decide free of I/O crates)"
exit "$failed"
