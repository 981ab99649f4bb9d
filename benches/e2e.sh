#!/usr/bin/env bash
# End-to-end benchmark of `seqflow run`: generates a sensor dataset, scores it with the demo
# anomaly model (conv1d -> lstm(32) -> linear, every_step) with -w 1 and -w 2, and prints
# rows/s, the scaling ratio and peak RSS. Usage:
#   benches/e2e.sh [SENSORS] [DAYS]        # default 2000 sensors x 7 days @ 5 min = 4.0 M rows
#   SEQFLOW=/path/to/other/seqflow benches/e2e.sh   # time another build (before/after a change)
#   SEQFLOW_ARGS="--metrics 127.0.0.1:0" benches/e2e.sh   # extra `run` flags (what metrics cost)
set -euo pipefail
cd "$(dirname "$0")/.."
SENSORS=${1:-2000}
DAYS=${2:-7}
DATA=datasets/generated/bench_${SENSORS}x${DAYS}
cargo build --release --quiet --bin seqflow --bin gen-sensors
BIN=${SEQFLOW:-./target/release/seqflow}
if [ ! -d "$DATA" ]; then
  ./target/release/gen-sensors --sensors "$SENSORS" --days "$DAYS" --interval-s 300 --files 4 --out "$DATA"
fi
PIPE=$(mktemp --suffix=.toml -p pipelines)
trap 'rm -f "$PIPE"' EXIT
sed -e "s#^path = \"../datasets/sample/sensors.parquet\"#path = \"../$DATA\"#" \
    -e 's#^rejects = .*##' -e 's#../out/demo.parquet#../out/bench.parquet#' pipelines/demo.toml > "$PIPE"
rows_per_s() { sed -n 's/.*(\([0-9,]*\) rows\/s.*/\1/p' | tr -d ,; }
declare -A RATE
for W in 1 2; do
  best=0
  for rep in 1 2 3; do
    # shellcheck disable=SC2086
    out=$( { /usr/bin/time -f "peak_rss_kb=%M" "$BIN" run "$PIPE" -w "$W" ${SEQFLOW_ARGS:-}; } 2>&1 )
    r=$(echo "$out" | grep '^seqflow:' | rows_per_s)
    rss=$(echo "$out" | sed -n 's/.*peak_rss_kb=\([0-9]*\).*/\1/p')
    echo "-w $W run $rep: $r rows/s, peak RSS $((rss / 1024)) MB"
    [ "$r" -gt "$best" ] && best=$r
  done
  RATE[$W]=$best
done
echo "$(echo "$out" | grep '^seqflow:')"
awk -v a="${RATE[1]}" -v b="${RATE[2]}" 'BEGIN { printf "best of 3: -w 1 %.0f rows/s, -w 2 %.0f rows/s, scaling %.2fx\n", a, b, b / a }'
