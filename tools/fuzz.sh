#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/) for SECONDS each, on nightly.
#   tools/fuzz.sh 30 --smoke   replay the committed corpus and seeds, then
#                              fuzz; new inputs go to a temporary directory
#   tools/fuzz.sh 600          the long runs; new inputs go to fuzz/corpus/
# A failing input is left in fuzz/artifacts/<target>/ and the run fails.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-30}
smoke=${2:-}
targets=(plugin_config sync_request sync_response histogram policy)
logs=../target/fuzz-logs
mkdir -p "$logs"
echo "building the fuzz targets (nightly, address sanitizer)"
# A failed build shows what failed (errors and compiler panics rather than the
# command lines cargo prints after them), the toolchain and the free disk.
build_failed() {
  grep -E -B2 -A12 "^error|panicked|No space left|SIGKILL|out of memory" "$logs/build.log" | head -120 || true
  cargo +nightly --version || true; rustc +nightly --version || true
  df -h . /tmp
}
# A compiler crash on a dependency has been seen once on a fresh machine: the
# build is tried a second time, and fails the run if it fails again.
if ! cargo +nightly fuzz build >"$logs/build.log" 2>&1; then
  build_failed
  echo "fuzz build failed; trying once more" >&2
  if ! cargo +nightly fuzz build >"$logs/build.log" 2>&1; then
    build_failed
    exit 1
  fi
fi
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  if [ "$smoke" = --smoke ]; then
    out=$(mktemp -d)
  else
    out="corpus/$t"
  fi
  log="$logs/$t.log"
  if ! cargo +nightly fuzz run "$t" "$out" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$seconds" -max_len=16384 -print_final_stats=1 >"$log" 2>&1; then
    grep -v '^#' "$log" | tail -60
    echo "fuzz $t: FAILED (input in fuzz/artifacts/$t/, log in target/fuzz-logs/$t.log)" >&2
    exit 1
  fi
  runs=$(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  printf 'fuzz %-14s %8s runs in %s s, no failures\n' "$t" "$runs" "$seconds"
  if [ "$smoke" = --smoke ]; then rm -rf "$out"; fi
done
