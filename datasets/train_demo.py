#!/usr/bin/env python3
"""Trains the demo anomaly scorer (models/anomaly.*) with PyTorch and writes pipelines/demo.toml.

The model is causal, so seqflow can run it step by step (emit = "every_step"):
  conv1d(8 -> 16, kernel 5, causal) -> relu -> lstm(16 -> 32) -> linear(32 -> 1) -> sigmoid
trained with per-step binary cross-entropy on the generator's anomaly labels.

Training data is generated with another seed than the bundled sample, which is then used for
evaluation. Run from the repository root:
  python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch numpy safetensors pyarrow pandas
  /tmp/torch/bin/python datasets/train_demo.py
"""
import json
import os
import subprocess

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHANNELS = ["temp", "vib_x", "vib_y", "current", "pressure", "humidity", "rpm", "power"]
KERNEL = 5


class Anomaly(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(8, 16, KERNEL)
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x):  # x [B, T, 8] -> logits [B, T]
        z = F.pad(x.transpose(1, 2), (KERNEL - 1, 0))  # causal, like seqflow's padding = "causal"
        z = torch.relu(self.conv(z)).transpose(1, 2)
        return self.head(self.lstm(z)[0])[..., 0]


def load(path, mean=None, std=None):
    df = pq.read_table(path).to_pandas().sort_values(["sensor_id", "ts"])
    df = df.drop_duplicates(["sensor_id", "ts"])
    if mean is None:
        mean, std = df[CHANNELS].mean().values, df[CHANNELS].std().values
    x = (df[CHANNELS].values - mean) / std
    df[CHANNELS] = x
    df[CHANNELS] = df.groupby("sensor_id")[CHANNELS].ffill().fillna(0.0)  # nan = "ffill"
    seqs = [(g[CHANNELS].values.astype(np.float32), g["label"].values.astype(np.float32))
            for _, g in df.groupby("sensor_id")]
    return seqs, mean, std


def evaluate(model, seqs):
    tp = fp = fn = 0
    with torch.no_grad():
        for x, y in seqs:
            p = torch.sigmoid(model(torch.from_numpy(x)[None]))[0].numpy() > 0.5
            tp += int((p & (y > 0)).sum())
            fp += int((p & (y == 0)).sum())
            fn += int((~p & (y > 0)).sum())
    prec = tp / max(tp + fp, 1)
    rec = tp / max(tp + fn, 1)
    return prec, rec, 2 * prec * rec / max(prec + rec, 1e-9)


def main():
    torch.manual_seed(0)
    np.random.seed(0)
    train_path = "/tmp/seqflow_train_sensors.parquet"
    subprocess.run(["cargo", "run", "--release", "--quiet", "--bin", "gen-sensors", "--", "--sensors", "400",
                    "--days", "7", "--interval-s", "300", "--seed", "7", "--out", train_path],
                   cwd=ROOT, check=True)
    seqs, mean, std = load(train_path)
    model = Anomaly()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    win, batch = 192, 64
    for it in range(1500):
        xs, ys = [], []
        for _ in range(batch):
            x, y = seqs[np.random.randint(len(seqs))]
            s = np.random.randint(0, len(x) - win)
            xs.append(x[s:s + win])
            ys.append(y[s:s + win])
        x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
        loss = F.binary_cross_entropy_with_logits(model(x), y, pos_weight=torch.tensor(2.0))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if it % 250 == 0:
            print(f"iter {it}: loss {loss.item():.4f}")
    sample, _, _ = load(os.path.join(ROOT, "datasets/sample/sensors.parquet"), mean, std)
    prec, rec, f1 = evaluate(model, sample)
    print(f"bundled sample (unseen seed): precision {prec:.3f} recall {rec:.3f} F1 {f1:.3f} at score > 0.5")

    os.makedirs(os.path.join(ROOT, "models"), exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(ROOT, "models/anomaly.safetensors"))
    with open(os.path.join(ROOT, "models/anomaly.toml"), "w") as f:
        f.write(f"""# Demo anomaly scorer, trained by datasets/train_demo.py (PyTorch) on generated sensor data.
# Sample evaluation (unseen seed): precision {prec:.3f}, recall {rec:.3f}, F1 {f1:.3f} at score > 0.5.
weights = "anomaly.safetensors"
input_size = 8

[[layers]]
type = "conv1d"
name = "conv"
padding = "causal"

[[layers]]
type = "relu"

[[layers]]
type = "lstm"
name = "lstm"

[[layers]]
type = "linear"
name = "head"

[[layers]]
type = "sigmoid"
""")
    fmt = lambda v: "[" + ", ".join(f"{x:.6g}" for x in v) + "]"
    with open(os.path.join(ROOT, "pipelines/demo.toml"), "w") as f:
        f.write(f"""# The README's demo: score every step of every sensor in the bundled sample.
#   cargo run --release -- run pipelines/demo.toml
# Normalization is the training set's, written by datasets/train_demo.py.

[source]
format = "parquet"
path = "../datasets/sample/sensors.parquet"
key = "sensor_id"
time = "ts"
features = {json.dumps(CHANNELS)}
normalize = {{ mean = {fmt(mean)}, std = {fmt(std)} }}
nan = "ffill"
rejects = "../out/demo_rejects.jsonl"

[model]
path = "../models/anomaly.toml"

[output]
format = "parquet"
path = "../out/demo.parquet"
names = ["score"]
emit = "every_step"
""")
    print("wrote models/anomaly.toml, models/anomaly.safetensors, pipelines/demo.toml")


if __name__ == "__main__":
    main()
