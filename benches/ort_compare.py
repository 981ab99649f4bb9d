#!/usr/bin/env python3
"""seqflow vs onnxruntime, side by side in one run, on the same weights and the same data.

For each model (LSTM and GRU at hidden 64 and 128, input 8): writes a safetensors model (PyTorch
names) + seqflow model file + a Parquet dataset of KEYS keys x STEPS steps, then measures
  - onnxruntime 1 thread, (a) whole sequences batched (the ONNX LSTM/GRU op over [T, B, I],
    B = 256 keys per call) and (b) step by step with state fed back (all keys, one step per call);
  - seqflow `run` (every_step, Parquet in, Parquet out: the whole job) with -w 1 and -w 2;
and prints key-steps/s, GFLOP/s (2*G*H*(I+H) FLOPs per key-step) and the ratio to onnxruntime's
best mode. It also checks that seqflow's outputs equal onnxruntime's (max |diff|).

  python3 -m venv /tmp/ort && /tmp/ort/bin/pip install onnxruntime onnx numpy pyarrow safetensors
  cargo build --release && /tmp/ort/bin/python benches/ort_compare.py [--keys 1024 --steps 1000]
"""
import argparse
import os
import re
import subprocess
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
from onnx import TensorProto, helper
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INPUT = 8


def make_weights(cell, hidden, seed):
    rng = np.random.default_rng(seed)
    g = 4 if cell == "lstm" else 3
    k = 1 / np.sqrt(hidden)
    u = lambda *s: rng.uniform(-k, k, size=s).astype(np.float32)
    return {
        f"{cell}.weight_ih_l0": u(g * hidden, INPUT),
        f"{cell}.weight_hh_l0": u(g * hidden, hidden),
        f"{cell}.bias_ih_l0": u(g * hidden),
        f"{cell}.bias_hh_l0": u(g * hidden),
    }


def onnx_model(cell, hidden, w, seq_len):
    """The PyTorch weights as one ONNX LSTM/GRU node (gate order converted)."""
    g = 4 if cell == "lstm" else 3
    order = [0, 3, 1, 2] if cell == "lstm" else [1, 0, 2]  # i,f,g,o -> i,o,f,c ; r,z,n -> z,r,h
    re_ = lambda m: np.concatenate([m.reshape(g, hidden, -1)[i] for i in order]).reshape(g * hidden, -1)
    W = re_(w[f"{cell}.weight_ih_l0"])[None]
    R = re_(w[f"{cell}.weight_hh_l0"])[None]
    B = np.concatenate([re_(w[f"{cell}.bias_ih_l0"][:, None])[:, 0], re_(w[f"{cell}.bias_hh_l0"][:, None])[:, 0]])[None]
    inits = [helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.flatten()) for n, a in (("W", W), ("R", R), ("B", B))]
    ins = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [seq_len, None, INPUT]),
           helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, None, hidden])]
    outs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("Yh", TensorProto.FLOAT, None)]
    node_in = ["X", "W", "R", "B", "", "h0"]
    node_out = ["Y", "Yh"]
    attrs = {"hidden_size": hidden}
    if cell == "lstm":
        ins.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, [1, None, hidden]))
        outs.append(helper.make_tensor_value_info("Yc", TensorProto.FLOAT, None))
        node_in.append("c0")
        node_out.append("Yc")
        op = "LSTM"
    else:
        attrs["linear_before_reset"] = 1
        op = "GRU"
    node = helper.make_node(op, node_in, node_out, **attrs)
    graph = helper.make_graph([node], "g", ins, outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def session(model):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_whole(cell, hidden, w, x, batch=256):
    """x [keys, T, I]; returns (seconds, outputs [keys, T, H])."""
    keys, steps, _ = x.shape
    s = session(onnx_model(cell, hidden, w, steps))
    out = np.empty((keys, steps, hidden), np.float32)
    t = time.perf_counter()
    for b in range(0, keys, batch):
        xb = np.ascontiguousarray(x[b:b + batch].transpose(1, 0, 2))
        n = xb.shape[1]
        feed = {"X": xb, "h0": np.zeros((1, n, hidden), np.float32)}
        if cell == "lstm":
            feed["c0"] = np.zeros((1, n, hidden), np.float32)
        y = s.run(["Y"], feed)[0]  # [T, 1, n, H]
        out[b:b + batch] = y[:, 0].transpose(1, 0, 2)
    return time.perf_counter() - t, out


def ort_steps(cell, hidden, w, x):
    """All keys, one step per call, state fed back."""
    keys, steps, _ = x.shape
    s = session(onnx_model(cell, hidden, w, 1))
    h = np.zeros((1, keys, hidden), np.float32)
    c = np.zeros((1, keys, hidden), np.float32)
    xt = np.ascontiguousarray(x.transpose(1, 0, 2))
    t = time.perf_counter()
    for k in range(steps):
        feed = {"X": xt[k:k + 1], "h0": h}
        if cell == "lstm":
            feed["c0"] = c
            _, h, c = s.run(None, feed)
        else:
            _, h = s.run(None, feed)
    return time.perf_counter() - t


def ort_job(cell, hidden, w, data, out, keys, steps):
    """The whole job with onnxruntime: pyarrow reads the Parquet log, step-by-step inference
    with state fed back, pyarrow writes the predictions (zstd), like seqflow's run."""
    t = time.perf_counter()
    tab = pq.read_table(data).sort_by([("t", "ascending"), ("key", "ascending")])
    x = np.stack([tab[f"f{j}"].to_numpy() for j in range(INPUT)], axis=1).reshape(steps, keys, INPUT)
    s = session(onnx_model(cell, hidden, w, 1))
    h = np.zeros((1, keys, hidden), np.float32)
    c = np.zeros((1, keys, hidden), np.float32)
    ys = np.empty((steps, keys, hidden), np.float32)
    for k in range(steps):
        feed = {"X": x[k:k + 1], "h0": h}
        if cell == "lstm":
            feed["c0"] = c
            _, h, c = s.run(None, feed)
        else:
            _, h = s.run(None, feed)
        ys[k] = h[0]
    cols = {"key": tab["key"], "t": tab["t"]}
    flat = ys.reshape(-1, hidden)
    for j in range(hidden):
        cols[f"y{j}"] = flat[:, j]
    pq.write_table(pa.table(cols), out, compression="zstd")
    return time.perf_counter() - t


def seqflow(pipe, workers):
    r = subprocess.run([os.path.join(ROOT, "target/release/seqflow"), "run", pipe, "-w", str(workers)],
                       capture_output=True, text=True, check=True)
    m = re.search(r"in ([0-9.]+) s", r.stderr)
    return float(m.group(1)), r.stderr.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.keys, a.steps, INPUT)).astype(np.float32)
    tmp = tempfile.mkdtemp(prefix="seqflow_ort_")
    # Time-major rows, as a log would hold them: every key's step t, then t+1.
    cols = {"key": np.tile(np.arange(a.keys, dtype=np.int64), a.steps),
            "t": np.repeat(np.arange(a.steps, dtype=np.int64), a.keys)}
    xt = x.transpose(1, 0, 2).reshape(-1, INPUT)
    for j in range(INPUT):
        cols[f"f{j}"] = xt[:, j]
    pq.write_table(pa.table(cols), os.path.join(tmp, "data.parquet"), row_group_size=1 << 20)
    n = a.keys * a.steps
    print(f"{a.keys} keys x {a.steps} steps = {n:,} key-steps, input {INPUT}; onnxruntime {ort.__version__}, 1 thread\n")
    print("| model | mode | seconds | key-steps/s | GFLOP/s | vs ORT best |")
    print("|---|---|---:|---:|---:|---:|")
    for cell, hidden in (("lstm", 64), ("lstm", 128), ("gru", 64), ("gru", 128)):
        g = 4 if cell == "lstm" else 3
        flop = 2 * g * hidden * (INPUT + hidden)
        w = make_weights(cell, hidden, 1)
        save_file(w, os.path.join(tmp, f"{cell}{hidden}.safetensors"))
        with open(os.path.join(tmp, f"{cell}{hidden}.toml"), "w") as f:
            f.write(f'weights = "{cell}{hidden}.safetensors"\n[[layers]]\ntype = "{cell}"\nname = "{cell}"\n')
        pipe = os.path.join(tmp, f"{cell}{hidden}.pipeline.toml")
        with open(pipe, "w") as f:
            f.write(f'[source]\nformat = "parquet"\npath = "data.parquet"\nkey = "key"\ntime = "t"\n'
                    f'features = {[f"f{j}" for j in range(INPUT)]}\n'.replace("'", '"')
                    + f'[model]\npath = "{cell}{hidden}.toml"\n[output]\nformat = "parquet"\npath = "out_{cell}{hidden}.parquet"\n')
        rows = []
        whole = min(ort_whole(cell, hidden, w, x)[0] for _ in range(a.reps))
        _, ref = ort_whole(cell, hidden, w, x)
        rows.append(("onnxruntime whole sequences (256 keys/call)", whole))
        rows.append(("onnxruntime step by step (all keys/call)", min(ort_steps(cell, hidden, w, x) for _ in range(a.reps))))
        job = min(ort_job(cell, hidden, w, os.path.join(tmp, "data.parquet"), os.path.join(tmp, "ort_out.parquet"),
                          a.keys, a.steps) for _ in range(a.reps))
        for wk in (1, 2):
            rows.append((f"seqflow run -w {wk} (Parquet in/out)", min(seqflow(pipe, wk)[0] for _ in range(a.reps))))
        best = min(s for name, s in rows if name.startswith("onnxruntime"))
        rows.insert(2, ("onnxruntime step by step + pyarrow Parquet in/out (whole job)", job))
        for name, s in rows:
            print(f"| {cell} h{hidden} | {name} | {s:.3f} | {n / s / 1e6:.3f} M | {n * flop / s / 1e9:.1f} | {best / s:.2f}x |")
        got = pq.read_table(os.path.join(tmp, f"out_{cell}{hidden}.parquet")).to_pandas().sort_values(["key", "t"])
        y = got[[f"y{j}" for j in range(hidden)]].to_numpy().reshape(a.keys, a.steps, hidden)
        print(f"|  | max abs diff seqflow vs onnxruntime | {np.abs(y - ref).max():.1e} | | | |")


if __name__ == "__main__":
    main()
