#!/usr/bin/env bash
# MQTT vs TCP, side by side: `seqflow replay` sends the bench dataset as JSON lines, one
# line per MQTT message (QoS 1, through a local mosquitto) or over 4 TCP connections, at
# 10k rows/s and as fast as it goes; the pipeline (demo model, every_step, JSON lines out,
# -w 1) reports arrival-to-emission latency. Needs mosquitto (scripts/test installs it).
#   benches/mqtt.sh [SECONDS_PER_RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-6}
DATA=datasets/generated/bench_2000x7
cargo build --release --quiet --bin seqflow --bin gen-sensors
[ -d "$DATA" ] || ./target/release/gen-sensors --sensors 2000 --days 7 --interval-s 300 --files 4 --out "$DATA"
OUT=$(mktemp -d)
PORT=18990
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\nmax_queued_messages 0\npersistence false\n' "$PORT" > "$OUT/m.conf"
mosquitto -c "$OUT/m.conf" >/dev/null 2>&1 &
MPID=$!
trap 'kill $MPID 2>/dev/null; rm -rf "$OUT"' EXIT
sleep 0.5
for SRC in tcp mqtt; do
  P=$OUT/$SRC.toml
  if [ "$SRC" = tcp ]; then
    sed -e 's#listen = "127.0.0.1:7600"#listen = "127.0.0.1:7698"#' -e "s#^path = \"-\"#path = \"$OUT/tcp.jsonl\"#" \
      -e 's#^path = "../models#path = "'"$PWD"'/models#' pipelines/live_tcp.toml > "$P"
  else
    sed -e "s#127.0.0.1:1883#127.0.0.1:$PORT#" -e 's#^path = "../models#path = "'"$PWD"'/models#' \
      -e '/^\[output\]/,$d' pipelines/live_mqtt.toml > "$P"
    printf '[output]\nformat = "jsonl"\npath = "%s/mqtt.jsonl"\nnames = ["score"]\n' "$OUT" >> "$P"
  fi
done
echo "| source | target rows/s | sustained rows/s | p50 | p99 | max |"
echo "|---|---:|---:|---:|---:|---:|"
for RATE in 10000 0; do
  for SRC in tcp mqtt; do
    LIMIT=$(( RATE > 0 ? RATE * SECS : 400000 ))
    ./target/release/seqflow run "$OUT/$SRC.toml" 2> "$OUT/server.txt" &
    SPID=$!
    for _ in $(seq 50); do grep -q "listening\|subscribed" "$OUT/server.txt" 2>/dev/null && break; sleep 0.1; done
    if [ "$SRC" = tcp ]; then TO=127.0.0.1:7698; C=4; else TO="mqtt://127.0.0.1:$PORT/plant1/{key}/readings"; C=1; fi
    REPLAY=$(./target/release/seqflow replay "$DATA" --to "$TO" --rate "$RATE" --connections "$C" --limit "$LIMIT" 2>&1)
    sleep 1
    kill -TERM "$SPID" || true
    wait "$SPID" || true
    SUMMARY=$(grep '^seqflow: .*rows from' "$OUT/server.txt")
    SUSTAINED=$(echo "$REPLAY" | sed -n 's/.*s (\([0-9]*\) rows\/s.*/\1/p')
    P50=$(echo "$SUMMARY" | sed -n 's/.*p50 \([^,]*\),.*/\1/p')
    P99=$(echo "$SUMMARY" | sed -n 's/.*p99 \([^,]*\),.*/\1/p')
    MAX=$(echo "$SUMMARY" | sed -n 's/.*max \(.*\) over.*/\1/p')
    T=$([ "$RATE" = 0 ] && echo "as fast as it goes" || echo "$RATE")
    echo "| $SRC | $T | $SUSTAINED | $P50 | $P99 | $MAX |"
  done
done
