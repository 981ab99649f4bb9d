#!/usr/bin/env bash
# What a `run` flag costs on the demo job: benches/e2e.sh's pipeline over its 4 M-row data,
# run without extra flags and with each given set of flags, alternating, REPS times each;
# prints the median and best rows/s of each (the machine is shared: alternating spreads its
# noise over all of them). Usage:
#   benches/overhead.sh "--metrics 127.0.0.1:0" "--dashboard 127.0.0.1:0" "--report out/r.html"
#   REPS=6 WORKERS=2 benches/overhead.sh "--metrics 127.0.0.1:0"
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-6}
WORKERS=${WORKERS:-2}
DATA=datasets/generated/bench_2000x7
cargo build --release --quiet --bin seqflow --bin gen-sensors
[ -d "$DATA" ] || ./target/release/gen-sensors --sensors 2000 --days 7 --interval-s 300 --files 4 --out "$DATA"
PIPE=$(mktemp --suffix=.toml -p pipelines)
RES=$(mktemp)
trap 'rm -f "$PIPE" "$RES"' EXIT
sed -e "s#^path = \"../datasets/sample/sensors.parquet\"#path = \"../$DATA\"#" \
    -e 's#^rejects = .*##' -e 's#../out/demo.parquet#../out/bench.parquet#' pipelines/demo.toml > "$PIPE"
CONFIGS=("" "$@")
for _ in $(seq "$REPS"); do
  for i in "${!CONFIGS[@]}"; do
    # shellcheck disable=SC2086
    r=$(./target/release/seqflow run "$PIPE" -w "$WORKERS" ${CONFIGS[$i]} 2>&1 | sed -n 's/.*(\([0-9,]*\) rows\/s.*/\1/p' | tr -d ,)
    echo "$i $r" >> "$RES"
  done
done
echo "| flags (-w $WORKERS, $REPS runs each, alternating) | median rows/s | best rows/s |"
echo "|---|---:|---:|"
for i in "${!CONFIGS[@]}"; do
  name=${CONFIGS[$i]:-without}
  awk -v i="$i" '$1 == i { print $2 }' "$RES" | sort -n | awk -v n="$name" '
    { v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
      printf "| %s | %.0f | %.0f |\n", n, m, v[NR] }'
done
