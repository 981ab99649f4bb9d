#!/usr/bin/env bash
# Runs every bundled pipeline with two seqflow binaries and compares what they write, byte
# for byte: a refactor must not change a single output. Usage:
#   scripts/compare_outputs.sh OLD_BIN NEW_BIN
# -w 1 outputs are compared as written (Parquet, CSV, JSON lines, changelogs, snapshots,
# rejects); -w 2 outputs as sorted CSV (row order is not part of the contract). The live
# pipeline is fed by `seqflow replay` over TCP. A short training run compares the weights.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$(realpath "$1"); NEW=$(realpath "$2")
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
fail=0
same() { # same LABEL FILE_A FILE_B
  if cmp -s "$2" "$3"; then echo "same      $1"; else echo "DIFFERENT $1"; diff "$2" "$3" 2>&1 | head -4 | cut -c1-300 || true; fail=1; fi
}
for side in old new; do
  bin=$OLD; [ $side = new ] && bin=$NEW
  root=$WORK/$side; mkdir -p "$root/out" "$root/w2"
  cp -r pipelines "$root/pipelines"
  ln -s "$PWD/models" "$root/models"; ln -s "$PWD/datasets" "$root/datasets"
  for p in demo last_score windows views; do
    # -w 2 first: it writes the same rejects and view files, which the -w 1 run then replaces.
    "$bin" run "$root/pipelines/$p.toml" -w 2 --output "$root/w2/$p.csv" > /dev/null 2>&1
    "$bin" run "$root/pipelines/$p.toml" > "$root/out/$p.stdout" 2> "$root/out/$p.stderr"
    sort "$root/w2/$p.csv" > "$root/w2/$p.sorted.csv"
  done
  # Live: the demo model over TCP, the sample replayed as JSON lines.
  port=$((20000 + RANDOM % 20000))
  sed "s/127.0.0.1:7600/127.0.0.1:$port/" pipelines/live_tcp.toml > "$root/pipelines/live.toml"
  "$bin" run "$root/pipelines/live.toml" > "$root/out/live.jsonl" 2> "$root/out/live.stderr" &
  pid=$!
  for _ in $(seq 100); do grep -q listening "$root/out/live.stderr" 2>/dev/null && break; sleep 0.1; done
  "$bin" replay datasets/sample/sensors.parquet --to "127.0.0.1:$port" --rate 0 2> /dev/null
  sleep 1; kill -TERM $pid; wait $pid || true
  sort "$root/out/live.jsonl" > "$root/out/live.sorted.jsonl"
  # Rejects name their source file, which lives under this side's root.
  sed "s#$root#ROOT#g" "$root/out/demo_rejects.jsonl" > "$root/out/demo_rejects.rooted.jsonl"
  # Training: three epochs on the sample (labels from the generator's `label` column).
  cat > "$root/pipelines/train.toml" <<TOML
[model]
path = "../models/anomaly.toml"
init = true
[data]
path = "../datasets/sample/sensors.parquet"
key = "sensor_id"
time = "ts"
features = ["temp", "vib_x", "vib_y", "current", "pressure", "humidity", "rpm", "power"]
normalize = "auto"
nan = "ffill"
[task]
kind = "tag"
label = "label"
[train]
epochs = 3
tbptt = 96
seed = 3
[output]
weights = "../out/trained.safetensors"
loss_csv = "../out/trained_loss.csv"
TOML
  "$bin" train "$root/pipelines/train.toml" -w 2 > /dev/null 2>&1 || echo "training failed ($side)"
done
for f in demo.parquet demo_rejects.rooted.jsonl last_score.stdout windows.jsonl views_scores.parquet \
         anomalous_now_per_site.jsonl anomalous_now_per_site.csv top3_per_site.jsonl top3_per_site.csv \
         live.sorted.jsonl trained.safetensors; do
  same "$f" "$WORK/old/out/$f" "$WORK/new/out/$f"
done
if ! cmp -s "$WORK/old/out/trained.safetensors" "$WORK/new/out/trained.safetensors"; then
  echo "training losses (old | new):"
  paste -d'|' "$WORK/old/out/trained_loss.csv" "$WORK/new/out/trained_loss.csv"
fi
for p in demo last_score windows views; do
  same "-w 2 $p (sorted csv)" "$WORK/old/w2/$p.sorted.csv" "$WORK/new/w2/$p.sorted.csv"
done
for p in demo last_score windows views; do
  echo "old: $(grep '^seqflow:' "$WORK/old/out/$p.stderr")"
  echo "new: $(grep '^seqflow:' "$WORK/new/out/$p.stderr")"
done
exit $fail
