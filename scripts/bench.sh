#!/usr/bin/env bash
# make bench: runs every benchmark group of swapbot-bench (crate bench/) and writes
# bench/results.json (raw figures) and bench/results.md (the table the README links to).
# Needs `make build test-guests` first (make bench does that). BENCH_QUICK=1: a fast smoke run.
# BENCH_GROUPS="overhead native ...": re-run only some groups (the others keep their last figures).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/swapbot-target}"
export SWAPBOT_ROOT="$PWD"

for f in target/release/swapbot target/release/swapbot-sandbox target/plugins/responses.wasm target/plugins/assistants.wasm; do
    [[ -e $f ]] || { echo "bench: $f is missing (run make build)" >&2; exit 1; }
done

cargo build --release --locked -p swapbot-bench
BIN="$CARGO_TARGET_DIR/release/swapbot-bench"

# Raw JSON lines per group; kept so BENCH_GROUPS="memory" re-runs one group and the report keeps the others.
RAW=target/bench-raw
mkdir -p "$RAW"
ALL_GROUPS="overhead native first-text load swap memory startup cost replicas"
GROUPS_TO_RUN=${BENCH_GROUPS:-$ALL_GROUPS}

echo "bench: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(date -u +%FT%TZ)"
started=$(date +%s)
for group in $GROUPS_TO_RUN; do
    t0=$(date +%s)
    "$BIN" "$group" --out "$RAW/$group.jsonl"
    echo "   ($group: $(( $(date +%s) - t0 )) s)"
done
total=$(( $(date +%s) - started ))

files=()
for group in $ALL_GROUPS; do if [[ -s $RAW/$group.jsonl ]]; then files+=("$RAW/$group.jsonl"); fi; done
BENCH_NOTES_FILE=bench/NOTES.md "$BIN" report "${files[@]}" --json bench/results.json --md bench/results.md --total-secs "$total"
echo "bench: wrote bench/results.md and bench/results.json in ${total} s"
