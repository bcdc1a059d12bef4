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
cargo +nightly fuzz build >"$logs/build.log" 2>&1 || { tail -40 "$logs/build.log"; exit 1; }
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
