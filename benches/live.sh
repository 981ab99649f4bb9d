#!/usr/bin/env bash
# Live benchmark: `seqflow replay` sends the bench dataset as JSON lines over 4 TCP
# connections at 10k and 100k rows/s and as fast as the pipeline takes them (saturation);
# the pipeline (demo model, every_step, jsonl out) runs with -w 1 and -w 2. Prints the rate
# sustained (replay's view: when the pipeline falls behind, TCP pushes back on the sender),
# the latency from a line's arrival to its prediction's emission (p50/p99/max), and peak RSS.
#   benches/live.sh [SECONDS_PER_RATE]          # EPOCH_MS=5 benches/live.sh: a 5 ms epoch (default 2)
#   WORKERS="2" RATES="100000" benches/live.sh 6  # one configuration only
#   CHECKPOINT_MS=100 benches/live.sh             # with a checkpoint every 100 ms
#   LINES=arrow benches/live.sh                   # Arrow IPC streams instead of JSON lines
#   SEQFLOW_ARGS="--dashboard 127.0.0.1:0" benches/live.sh   # with the dashboard's event stream open
#   SEQFLOW_ARGS="--metrics 127.0.0.1:0" SCRAPE_MS=100 benches/live.sh
#                                                 # with /metrics, scraped every 100 ms (curl)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-8}
DATA=datasets/generated/bench_2000x7
cargo build --release --quiet --bin seqflow --bin gen-sensors
[ -d "$DATA" ] || ./target/release/gen-sensors --sensors 2000 --days 7 --interval-s 300 --files 4 --out "$DATA"
PIPE=$(mktemp --suffix=.toml -p pipelines)
OUT=$(mktemp -d)
trap 'rm -rf "$PIPE" "$OUT"' EXIT
EPOCH_MS=${EPOCH_MS:-2}
sed -e 's#listen = "127.0.0.1:7600"#listen = "127.0.0.1:7699"#' -e "s#^path = \"-\"#path = \"$OUT/live.jsonl\"#" \
    -e "s#^epoch_ms = .*#epoch_ms = $EPOCH_MS#" -e "s#^lines = \"jsonl\"#lines = \"${LINES:-jsonl}\"#" \
    pipelines/live_tcp.toml > "$PIPE"
if [ -n "${CHECKPOINT_MS:-}" ]; then
  printf '\n[checkpoint]\ndir = "%s/state"\nevery_ms = %s\n' "$OUT" "$CHECKPOINT_MS" >> "$PIPE"
fi
echo "epoch_ms = $EPOCH_MS, ${LINES:-jsonl} over TCP${CHECKPOINT_MS:+, a checkpoint every $CHECKPOINT_MS ms}"
echo "| workers | target rows/s | sustained rows/s | p50 | p99 | max | peak RSS |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
for W in ${WORKERS:-1 2}; do
  for RATE in ${RATES:-10000 100000 0}; do
    LIMIT=$(( RATE > 0 ? RATE * SECS : 2000000 ))
    /usr/bin/time -f "peak_rss_kb=%M" ./target/release/seqflow run "$PIPE" -w "$W" ${CHECKPOINT_MS:+--fresh} ${SEQFLOW_ARGS:-} 2> "$OUT/server.txt" &
    TPID=$!
    for _ in $(seq 50); do grep -q listening "$OUT/server.txt" 2>/dev/null && break; sleep 0.1; done
    MADDR=$(grep -o 'http://[0-9.:]*/metrics' "$OUT/server.txt" || true)
    # With --dashboard: a page's event stream stays open for the run (one curl).
    DADDR=$(grep -o 'dashboard on http://[0-9.:]*/' "$OUT/server.txt" | sed 's/dashboard on //' || true)
    if [ -n "$DADDR" ]; then
      curl -sN "${DADDR}events" > /dev/null 2>&1 &
    fi
    if [ -n "${SCRAPE_MS:-}" ] && [ -n "$MADDR" ]; then
      # One process scraping over one connection per request, as Prometheus does (a curl
      # per scrape would measure process start-ups on these 2 cores).
      python3 - "$MADDR" "$SCRAPE_MS" "$TPID" <<'PY' &
import os, sys, time, urllib.request
url, ms, pid = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
while True:
    try:
        os.kill(pid, 0)
        urllib.request.urlopen(url, timeout=2).read()
    except Exception:
        break
    time.sleep(ms / 1000)
PY
    fi
    REPLAY=$(./target/release/seqflow replay "$DATA" --to 127.0.0.1:7699 --rate "$RATE" --connections 4 --limit "$LIMIT" --format "${LINES:-jsonl}" 2>&1)
    sleep 0.5
    kill -TERM "$(pgrep -P "$TPID")" || true
    wait "$TPID" || true
    SUMMARY=$(grep '^seqflow: .*rows from' "$OUT/server.txt")
    SUSTAINED=$(echo "$REPLAY" | sed -n 's/.*s (\([0-9]*\) rows\/s.*/\1/p')
    P50=$(echo "$SUMMARY" | sed -n 's/.*p50 \([^,]*\),.*/\1/p')
    P99=$(echo "$SUMMARY" | sed -n 's/.*p99 \([^,]*\),.*/\1/p')
    MAX=$(echo "$SUMMARY" | sed -n 's/.*max \(.*\) over.*/\1/p')
    RSS=$(sed -n 's/.*peak_rss_kb=\([0-9]*\).*/\1/p' "$OUT/server.txt")
    T=$([ "$RATE" = 0 ] && echo "saturation" || echo "$RATE")
    echo "| $W | $T | $SUSTAINED | $P50 | $P99 | $MAX | $((RSS / 1024)) MB |"
  done
done
