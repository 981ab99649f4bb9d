#!/usr/bin/env bash
# The adding problem at lags 10, 50 and 100: LSTM vs plain RNN (tanh), same hidden size,
# same data, same optimizer and budget. For each: train with `seqflow train --grad-report`,
# then predict unseen sequences with `seqflow run` and score them.
#   experiments/adding/run.sh            # all lags and cells (~10 min on 2 cores)
#   LAGS="10" CELLS="lstm" EPOCHS=5 experiments/adding/run.sh
# Results land in out/adding/: per run the loss CSV/SVG, the gradient report CSV/SVG and the
# score; out/adding/results.txt collects one line per run.
set -euo pipefail
cd "$(dirname "$0")/../.."
LAGS=${LAGS:-"10 50 100"}
CELLS=${CELLS:-"lstm rnn"}
EPOCHS=${EPOCHS:-30}
TRAIN_SEQS=${TRAIN_SEQS:-4000}
OUT=out/adding
mkdir -p "$OUT"
cargo build --release --quiet --bin seqflow --bin gen-adding
BIN=target/release
: > "$OUT/results.txt"
for lag in $LAGS; do
  $BIN/gen-adding gen --lag "$lag" --sequences "$TRAIN_SEQS" --seed 1 --out "$OUT/train_$lag.parquet"
  $BIN/gen-adding gen --lag "$lag" --sequences 1000 --seed 2 --out "$OUT/test_$lag.parquet"
  for cell in $CELLS; do
    run="$OUT/${cell}_$lag"
    mkdir -p "$run"
    cat > "$run/model.toml" <<TOML
weights = "model.safetensors"
input_size = 2

[[layers]]
type = "$cell"
name = "rec"
hidden_size = 32

[[layers]]
type = "linear"
name = "head"
out_features = 1
TOML
    cat > "$run/train.toml" <<TOML
[model]
path = "model.toml"
init = true

[data]
path = "../train_$lag.parquet"
key = "seq"
time = "t"
features = ["value", "marker"]

[task]
kind = "regress"          # the target exists on the last step only
targets = ["target"]

[train]
epochs = $EPOCHS
batch_keys = 32
optimizer = "adam"
lr = 0.002
clip_norm = 1.0
validation = 0.1
seed = 1

[output]
loss_csv = "loss.csv"
plot = "loss.svg"
TOML
    cat > "$run/predict.toml" <<TOML
[source]
format = "parquet"
path = "../test_$lag.parquet"
key = "seq"
time = "t"
features = ["value", "marker"]

[model]
path = "model.toml"

[output]
format = "csv"
path = "predictions.csv"
emit = "sequence_end"
TOML
    start=$(date +%s)
    $BIN/seqflow train "$run/train.toml" -w 2 --grad-report "$run/grad.csv" > "$run/grad_table.txt" 2> "$run/train.log"
    secs=$(( $(date +%s) - start ))
    $BIN/seqflow run "$run/predict.toml" 2> "$run/run.log"
    score=$($BIN/gen-adding score --data "$OUT/test_$lag.parquet" --predictions "$run/predictions.csv")
    best=$(grep -o "best epoch [0-9]*: train loss [0-9.]*, validation loss [0-9.]*" "$run/train.log")
    g0=$(awk -F, '$1=="initial" && $3==0 {print $4}' "$run/grad.csv")
    gl=$(awk -F, -v d=$((lag - 1)) '$1=="initial" && $3==d {print $4}' "$run/grad.csv")
    t0=$(awk -F, '$1=="trained" && $3==0 {print $4}' "$run/grad.csv")
    tl=$(awk -F, -v d=$((lag - 1)) '$1=="trained" && $3==d {print $4}' "$run/grad.csv")
    line="lag $lag $cell: test $score; $best; ${secs}s; |dL/dh| at d=0 / d=$((lag - 1)): initial $g0 / $gl, trained $t0 / $tl"
    echo "$line" | tee -a "$OUT/results.txt"
  done
done
