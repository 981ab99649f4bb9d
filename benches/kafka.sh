#!/usr/bin/env bash
# Kafka vs TCP, side by side in one run: the bench dataset (2,000 sensors) as JSON lines into
# the demo model (every_step, JSON lines out, 2 ms epochs), through a local tansu broker
# (in-memory storage; one record per line, keyed by sensor, 4 partitions) or over 4 TCP
# connections.
#  - At 10k rows/s: arrival-to-emission latency (the broker's hop is not in it).
#  - Backlog: N rows already in the topic, seqflow started with -w 1 and -w 2: seconds until
#    the last prediction is written (the read side's saturation, no producer competing);
#    TCP's saturation is the replayer's rate at --rate 0 (its reader is one thread per
#    connection on worker 0).
# Needs tansu (scripts/test installs it).   benches/kafka.sh [SECONDS_AT_10K] [BACKLOG_ROWS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-6}
N=${2:-400000}
DATA=datasets/generated/bench_2000x7
TANSU="${TANSU:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}"
cargo build --release --quiet --bin seqflow --bin gen-sensors
[ -d "$DATA" ] || ./target/release/gen-sensors --sensors 2000 --days 7 --interval-s 300 --files 4 --out "$DATA"
OUT=$(mktemp -d)
PORT=18992
BPID=
start_broker() {
  [ -n "$BPID" ] && { kill "$BPID" 2>/dev/null || true; wait "$BPID" 2>/dev/null || true; }
  "$TANSU" broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
    --storage-engine memory://tansu/ >/dev/null 2>&1 &
  BPID=$!
  for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
  "$TANSU" topic create readings --partitions 4 --broker "tcp://127.0.0.1:$PORT" >/dev/null
}
trap '[ -n "$BPID" ] && kill $BPID 2>/dev/null; rm -rf "$OUT"' EXIT
sed -e 's#listen = "127.0.0.1:7600"#listen = "127.0.0.1:7698"#' -e "s#^path = \"-\"#path = \"$OUT/tcp.jsonl\"#" \
  -e 's#^path = "../models#path = "'"$PWD"'/models#' pipelines/live_tcp.toml > "$OUT/tcp.toml"
sed -e "s#127.0.0.1:9092#127.0.0.1:$PORT#" -e 's#^path = "../models#path = "'"$PWD"'/models#' \
  -e 's#^epoch_ms = 5#epoch_ms = 2#' -e '/^\[output\]/,$d' pipelines/live_kafka.toml > "$OUT/kafka.toml"
printf '[output]\nformat = "jsonl"\npath = "%s/kafka.jsonl"\nnames = ["score"]\n' "$OUT" >> "$OUT/kafka.toml"

summary() { grep '^seqflow: .*rows from' "$OUT/server.txt"; }
field() { echo "$1" | sed -n "s/.*$2 \([^,]*\),.*/\1/p"; }

echo "| source | load | rows/s | p50 | p99 | max |"
echo "|---|---|---:|---:|---:|---:|"
for SRC in tcp kafka; do
  start_broker
  LIMIT=$((10000 * SECS))
  ./target/release/seqflow run "$OUT/$SRC.toml" 2> "$OUT/server.txt" &
  SPID=$!
  for _ in $(seq 50); do grep -q "listening\|subscribed" "$OUT/server.txt" 2>/dev/null && break; sleep 0.1; done
  if [ "$SRC" = tcp ]; then TO=127.0.0.1:7698; else TO="kafka://127.0.0.1:$PORT/readings"; fi
  REPLAY=$(./target/release/seqflow replay "$DATA" --to "$TO" --rate 10000 --connections 4 --partitions 4 --limit "$LIMIT" 2>&1)
  sleep 1
  kill -TERM "$SPID" || true
  wait "$SPID" || true
  S=$(summary)
  RATE=$(echo "$REPLAY" | sed -n 's/.*s (\([0-9]*\) rows\/s.*/\1/p')
  echo "| $SRC | 10,000 rows/s | $RATE | $(field "$S" p50) | $(field "$S" p99) | $(echo "$S" | sed -n 's/.*max \(.*\) over.*/\1/p') |"
done
# TCP saturation: the replayer as fast as the pipeline takes it.
./target/release/seqflow run "$OUT/tcp.toml" 2> "$OUT/server.txt" &
SPID=$!
for _ in $(seq 50); do grep -q "listening" "$OUT/server.txt" 2>/dev/null && break; sleep 0.1; done
REPLAY=$(./target/release/seqflow replay "$DATA" --to 127.0.0.1:7698 --rate 0 --connections 4 --limit "$N" 2>&1)
sleep 1; kill -TERM "$SPID" || true; wait "$SPID" || true
echo "| tcp | $N rows as fast as they go, -w 1 | $(echo "$REPLAY" | sed -n 's/.*s (\([0-9]*\) rows\/s.*/\1/p') | | | |"
# Kafka backlog: produced first, then read.
for W in 1 2; do
  start_broker
  ./target/release/seqflow replay "$DATA" --to "kafka://127.0.0.1:$PORT/readings" --rate 0 --partitions 4 --limit "$N" 2> "$OUT/produce.txt"
  rm -f "$OUT/kafka.jsonl"
  T0=$(date +%s.%N)
  ./target/release/seqflow run "$OUT/kafka.toml" -w "$W" 2> "$OUT/server.txt" &
  SPID=$!
  # Done when the output stops growing (the dataset's duplicates get no prediction).
  LAST=0; T1=$T0; QUIET=0
  while [ "$QUIET" -lt 50 ]; do
    sleep 0.02
    C=$(wc -l < "$OUT/kafka.jsonl.partial" 2>/dev/null || echo 0)  # live outputs are PATH.partial until the run ends
    if [ "$C" -gt "$LAST" ]; then LAST=$C; T1=$(date +%s.%N); QUIET=0; elif [ "$C" -gt 0 ]; then QUIET=$((QUIET + 1)); fi
  done
  kill -TERM "$SPID" || true
  wait "$SPID" || true
  RATE=$(echo "$N / ($T1 - $T0)" | bc)
  echo "| kafka | $N rows in the topic, -w $W (start to last prediction) | $RATE | | | |"
done
echo
echo "producer: $(sed -n 's/.*: //p' "$OUT/produce.txt")"
