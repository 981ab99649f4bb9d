#!/usr/bin/env python3
"""seqflow vs onnxruntime, side by side in one run, on the same weights and the same data.

Models (input 8): LSTM and GRU at hidden 64 and 128 (every hidden value is a prediction: 128
output columns, a wide output), a CNN -> LSTM stack (causal conv1d 8->32, kernel 5, ReLU, LSTM
128), and LSTM 128 -> Linear(1) (`lstm128_head`: one score per step, the usual job). For each: a safetensors file (PyTorch names), the seqflow
model file, and one Parquet log of KEYS keys x STEPS steps (time-major rows). Measured:
  - onnxruntime 1 thread, (a) whole sequences batched (the ONNX graph over [T, B, I], 256 keys
    per call) and (b) step by step with state fed back (all keys per call; for the CNN the
    last k inputs are fed back as the convolution's window);
  - onnxruntime (b) + pyarrow reading the Parquet log and writing the predictions (whole job);
  - seqflow `run` (every_step, Parquet in, Parquet out: the whole job, wall clock of the
    process) with -w 1 and -w 2; with --bf16 also the same model with `precision = "bf16"`
    (its error against onnxruntime's f32 outputs printed beside it).
Reported: key-steps/s, GFLOP/s (FLOPs of the matrix products per key-step), the ratio to
onnxruntime's best inference-only mode, and the fraction of faer's single-thread GEMM peak,
measured in the same run (`cargo run --release --example faer_peak`). It also checks that
seqflow's outputs equal onnxruntime's (max |diff|).

  python3 -m venv /tmp/ort && /tmp/ort/bin/pip install onnxruntime onnx numpy pyarrow safetensors pandas
  cargo build --release --bin seqflow --example faer_peak --example fma_peak
  /tmp/ort/bin/python benches/ort_compare.py [--keys 1024 --steps 1000 --reps 3 --models lstm128,cnn_lstm128] [--bf16]
"""
import argparse
import resource
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
CONV_OUT, CONV_K = 32, 5
MODELS = {  # name: (cell, hidden, conv in front, linear head to 1 output)
    "lstm64": ("lstm", 64, False, False),
    "lstm128": ("lstm", 128, False, False),
    "gru64": ("gru", 64, False, False),
    "gru128": ("gru", 128, False, False),
    "cnn_lstm128": ("lstm", 128, True, False),
    "lstm128_head": ("lstm", 128, False, True),
}


def gates(cell):
    return 4 if cell == "lstm" else 3


def flops_per_step(cell, hidden, conv, head):
    rec_in = CONV_OUT if conv else INPUT
    f = 2 * gates(cell) * hidden * (rec_in + hidden)
    return f + (2 * CONV_OUT * INPUT * CONV_K if conv else 0) + (2 * hidden if head else 0)


def out_width(spec):
    return 1 if spec[3] else spec[1]


def make_weights(cell, hidden, conv, head, seed):
    rng = np.random.default_rng(seed)
    u = lambda k, *s: rng.uniform(-k, k, size=s).astype(np.float32)
    g = gates(cell)
    k = 1 / np.sqrt(hidden)
    rec_in = CONV_OUT if conv else INPUT
    w = {
        f"{cell}.weight_ih_l0": u(k, g * hidden, rec_in),
        f"{cell}.weight_hh_l0": u(k, g * hidden, hidden),
        f"{cell}.bias_ih_l0": u(k, g * hidden),
        f"{cell}.bias_hh_l0": u(k, g * hidden),
    }
    if conv:
        kc = 1 / np.sqrt(INPUT * CONV_K)
        w["conv.weight"] = u(kc, CONV_OUT, INPUT, CONV_K)
        w["conv.bias"] = u(kc, CONV_OUT)
    if head:
        w["head.weight"] = u(k, 1, hidden)
        w["head.bias"] = u(k, 1)
    return w


def model_toml(name, cell, conv, head, precision="f32"):
    layers = ""
    if conv:
        layers += '[[layers]]\ntype = "conv1d"\nname = "conv"\npadding = "causal"\n[[layers]]\ntype = "relu"\n'
    layers += f'[[layers]]\ntype = "{cell}"\nname = "{cell}"\n'
    if head:
        layers += '[[layers]]\ntype = "linear"\nname = "head"\n'
    top = f'weights = "{name}.safetensors"\ninput_size = {INPUT}\n'
    if precision != "f32":  # only then: a --baseline binary from before precision existed reads the f32 file
        top += f'precision = "{precision}"\n'
    return top + layers


def pipeline_toml(model, out):
    return (f'[source]\nformat = "parquet"\npath = "data.parquet"\nkey = "key"\ntime = "t"\n'
            f'features = {[f"f{j}" for j in range(INPUT)]}\n'.replace("'", '"')
            + f'[model]\npath = "{model}"\n[output]\nformat = "parquet"\npath = "{out}"\n')


def onnx_model(cell, hidden, conv, head, w, seq_len):
    """The PyTorch weights as an ONNX graph (gate order converted). Whole mode takes X
    [T, B, I]; step mode (seq_len 1) takes X [1, B, I], or with a conv the window [B, I, k].
    The predictions are output P: Y itself, or with a head Y [T, B, H] x W^T + b."""
    g = gates(cell)
    order = [0, 3, 1, 2] if cell == "lstm" else [1, 0, 2]  # i,f,g,o -> i,o,f,c ; r,z,n -> z,r,h
    re_ = lambda m: np.concatenate([m.reshape(g, hidden, -1)[i] for i in order]).reshape(g * hidden, -1)
    W = re_(w[f"{cell}.weight_ih_l0"])[None]
    R = re_(w[f"{cell}.weight_hh_l0"])[None]
    B = np.concatenate([re_(w[f"{cell}.bias_ih_l0"][:, None])[:, 0], re_(w[f"{cell}.bias_hh_l0"][:, None])[:, 0]])[None]
    inits = [helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.flatten()) for n, a in (("W", W), ("R", R), ("B", B))]
    nodes = []
    rec_x = "X"
    if conv:
        inits += [helper.make_tensor("CW", TensorProto.FLOAT, w["conv.weight"].shape, w["conv.weight"].flatten()),
                  helper.make_tensor("CB", TensorProto.FLOAT, w["conv.bias"].shape, w["conv.bias"].flatten())]
        if seq_len == 1:
            x_in = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, INPUT, CONV_K])
            nodes.append(helper.make_node("Conv", ["X", "CW", "CB"], ["conv"]))  # [B, C, 1]
        else:
            x_in = helper.make_tensor_value_info("X", TensorProto.FLOAT, [seq_len, None, INPUT])
            nodes.append(helper.make_node("Transpose", ["X"], ["xt"], perm=[1, 2, 0]))  # [B, I, T]
            nodes.append(helper.make_node("Conv", ["xt", "CW", "CB"], ["conv"], pads=[CONV_K - 1, 0]))
        nodes.append(helper.make_node("Relu", ["conv"], ["relu"]))
        nodes.append(helper.make_node("Transpose", ["relu"], ["rx"], perm=[2, 0, 1]))  # [T, B, C]
        rec_x = "rx"
    else:
        x_in = helper.make_tensor_value_info("X", TensorProto.FLOAT, [seq_len, None, INPUT])
    ins = [x_in, helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, None, hidden])]
    outs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("Yh", TensorProto.FLOAT, None)]
    node_in = [rec_x, "W", "R", "B", "", "h0"]
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
    nodes.append(helper.make_node(op, node_in, node_out, **attrs))
    if head:
        inits += [helper.make_tensor("HW", TensorProto.FLOAT, (hidden, 1), w["head.weight"].T.flatten()),
                  helper.make_tensor("HB", TensorProto.FLOAT, (1,), w["head.bias"].flatten()),
                  helper.make_tensor("ax", TensorProto.INT64, (1,), [1])]
        nodes.append(helper.make_node("Squeeze", ["Y", "ax"], ["ys"]))  # [T, B, H]
        nodes.append(helper.make_node("MatMul", ["ys", "HW"], ["pm"]))
        nodes.append(helper.make_node("Add", ["pm", "HB"], ["P"]))  # [T, B, 1]
    else:
        nodes.append(helper.make_node("Squeeze", ["Y", "ax"], ["P"]))
        inits.append(helper.make_tensor("ax", TensorProto.INT64, (1,), [1]))
    outs.append(helper.make_tensor_value_info("P", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", ins, outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def session(model):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_whole(spec, w, x, batch=256):
    """x [keys, T, I]; returns (seconds, outputs [keys, T, H])."""
    cell, hidden, conv, head = spec
    keys, steps, _ = x.shape
    s = session(onnx_model(cell, hidden, conv, head, w, steps))
    out = np.empty((keys, steps, out_width(spec)), np.float32)
    t = clock()
    for b in range(0, keys, batch):
        xb = np.ascontiguousarray(x[b:b + batch].transpose(1, 0, 2))
        n = xb.shape[1]
        feed = {"X": xb, "h0": np.zeros((1, n, hidden), np.float32)}
        if cell == "lstm":
            feed["c0"] = np.zeros((1, n, hidden), np.float32)
        y = s.run(["P"], feed)[0]  # [T, n, out]
        out[b:b + batch] = y.transpose(1, 0, 2)
    return since(t), out


class Stepper:
    """One step of all keys per call, state (h, c, the conv window) fed back."""

    def __init__(self, spec, w, keys):
        self.cell, hidden, self.conv, head = spec
        self.s = session(onnx_model(self.cell, hidden, self.conv, head, w, 1))
        self.h = np.zeros((1, keys, hidden), np.float32)
        self.c = np.zeros((1, keys, hidden), np.float32)
        self.win = np.zeros((keys, INPUT, CONV_K), np.float32)

    def step(self, xt):
        """xt [keys, I]; returns the predictions [keys, out]."""
        if self.conv:
            self.win[:, :, :-1] = self.win[:, :, 1:]
            self.win[:, :, -1] = xt
            feed = {"X": self.win}
        else:
            feed = {"X": xt[None]}
        feed["h0"] = self.h
        if self.cell == "lstm":
            feed["c0"] = self.c
            self.h, self.c, p = self.s.run(["Yh", "Yc", "P"], feed)
        else:
            self.h, p = self.s.run(["Yh", "P"], feed)
        return p[0]


def ort_steps(spec, w, x):
    keys, steps, _ = x.shape
    st = Stepper(spec, w, keys)
    xt = np.ascontiguousarray(x.transpose(1, 0, 2))
    t = clock()
    for k in range(steps):
        st.step(xt[k])
    return since(t)


def ort_job(spec, w, data, out, keys, steps):
    """The whole job with onnxruntime: pyarrow reads the Parquet log, step-by-step inference
    with state fed back, pyarrow writes the predictions (snappy, as seqflow's default)."""
    width = out_width(spec)
    fresh(out)
    t = clock()
    tab = pq.read_table(data).sort_by([("t", "ascending"), ("key", "ascending")])
    x = np.stack([tab[f"f{j}"].to_numpy() for j in range(INPUT)], axis=1).reshape(steps, keys, INPUT)
    st = Stepper(spec, w, keys)
    ys = np.empty((steps, keys, width), np.float32)
    for k in range(steps):
        ys[k] = st.step(x[k])
    cols = {"key": tab["key"], "t": tab["t"]}
    flat = ys.reshape(-1, width)
    for j in range(width):
        cols[f"y{j}"] = flat[:, j]
    pq.write_table(pa.table(cols), out, compression="snappy")
    return since(t)


def fresh(path):
    """Removes an earlier run's output before a timed run: replacing a 500 MB file (ext4
    flushes the new file on rename over an old one, then frees the old) costs ~0.3 s that
    belongs to the file system, not to either tool."""
    if os.path.exists(path):
        os.remove(path)
        os.sync()


def seqflow(pipe, workers, out, binary=None):
    """Wall clock of the whole `seqflow run` process."""
    fresh(out)
    t = clock()
    subprocess.run([binary or os.path.join(ROOT, "target/release/seqflow"), "run", pipe, "-w", str(workers)],
                   capture_output=True, text=True, check=True)
    return since(t)


class Timing(float):
    """Wall-clock seconds; `.cpu` holds the CPU seconds spent meanwhile (this process and the
    children it waited for): the machines are shared, and CPU time tells the truth when the
    wall clock is noisy."""


def clock():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), time.process_time() + r.ru_utime + r.ru_stime


def since(t0):
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    s = Timing(time.perf_counter() - t0[0])
    s.cpu = time.process_time() + r.ru_utime + r.ru_stime - t0[1]
    return s


def fma_peak():
    """The machine's single-core FMA peak, f32 and bf16 (examples/fma_peak.rs)."""
    r = subprocess.run([os.path.join(ROOT, "target/release/examples/fma_peak")],
                       capture_output=True, text=True, check=True)
    f32 = re.search(r"fma_peak_f32_gflops ([0-9.]+)", r.stdout)
    bf16 = re.search(r"fma_peak_bf16_gflops ([0-9.]+)", r.stdout)
    return float(f32.group(1)) if f32 else None, float(bf16.group(1)) if bf16 else None


def faer_peak():
    r = subprocess.run([os.path.join(ROOT, "target/release/examples/faer_peak")],
                       capture_output=True, text=True, check=True)
    return float(re.search(r"faer_peak_gflops ([0-9.]+)", r.stdout).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--baseline", help="another seqflow binary, timed side by side (before/after a change)")
    ap.add_argument("--bf16", action="store_true", help='also run seqflow with precision = "bf16"')
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
    data = os.path.join(tmp, "data.parquet")
    pq.write_table(pa.table(cols), data, row_group_size=1 << 20)
    n = a.keys * a.steps
    peaks = [faer_peak()]
    fma32, fma16 = fma_peak()
    print(f"{a.keys} keys x {a.steps} steps = {n:,} key-steps, input {INPUT}; onnxruntime {ort.__version__}, "
          f"1 thread; best of {a.reps}; this run: faer single-thread GEMM peak {peaks[0]:.1f} GFLOP/s, "
          f"single-core FMA peak f32 {fma32} GFLOP/s, bf16 {fma16} GFLOP/s\n")
    print("| model | mode | seconds | CPU s | key-steps/s | GFLOP/s | vs ORT best | of faer peak | of FMA peak |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    summary = []
    for name in a.models.split(","):
        spec = MODELS[name]
        cell, hidden, conv, head = spec
        flop = flops_per_step(*spec)
        w = make_weights(*spec, seed=1)
        save_file(w, os.path.join(tmp, f"{name}.safetensors"))
        with open(os.path.join(tmp, f"{name}.toml"), "w") as f:
            f.write(model_toml(name, cell, conv, head))
        pipe = os.path.join(tmp, f"{name}.pipeline.toml")
        with open(pipe, "w") as f:
            f.write(pipeline_toml(f"{name}.toml", f"out_{name}.parquet"))
        pipe16 = os.path.join(tmp, f"{name}_bf16.pipeline.toml")
        if a.bf16:
            with open(os.path.join(tmp, f"{name}_bf16.toml"), "w") as f:
                f.write(model_toml(name, cell, conv, head, "bf16"))
            with open(pipe16, "w") as f:
                f.write(pipeline_toml(f"{name}_bf16.toml", f"out_{name}_bf16.parquet"))
        rows = []
        whole, ref = ort_whole(spec, w, x)
        whole = min([whole] + [ort_whole(spec, w, x)[0] for _ in range(a.reps - 1)])
        rows.append(("onnxruntime whole sequences (256 keys/call)", whole))
        rows.append(("onnxruntime step by step (all keys/call)", min(ort_steps(spec, w, x) for _ in range(a.reps))))
        job = min(ort_job(spec, w, data, os.path.join(tmp, "ort_out.parquet"), a.keys, a.steps) for _ in range(a.reps))
        out = os.path.join(tmp, f"out_{name}.parquet")
        sf = {wk: min(seqflow(pipe, wk, out) for _ in range(a.reps)) for wk in (1, 2)}
        for wk in (1, 2):
            rows.append((f"seqflow run -w {wk} (Parquet in/out, whole job)", sf[wk]))
        sf16 = {}
        if a.bf16:
            out16 = os.path.join(tmp, f"out_{name}_bf16.parquet")
            sf16 = {wk: min(seqflow(pipe16, wk, out16) for _ in range(a.reps)) for wk in (1, 2)}
            for wk in (1, 2):
                rows.append((f"seqflow run -w {wk}, precision bf16 (whole job)", sf16[wk]))
        if a.baseline:
            for wk in (1, 2):
                base = min(seqflow(pipe, wk, out, a.baseline) for _ in range(a.reps))
                rows.append((f"baseline seqflow run -w {wk} ({os.path.basename(a.baseline)})", base))
        best = min(s for label, s in rows if label.startswith("onnxruntime"))
        rows.insert(2, ("onnxruntime step by step + pyarrow Parquet in/out (whole job)", job))
        peaks.append(faer_peak())
        peak = max(peaks)
        for label, s in rows:
            gf = n * flop / s / 1e9
            cpu = getattr(s, "cpu", float("nan"))
            of_fma = f"{gf / fma32:.0%}" if fma32 else "-"
            print(f"| {name} | {label} | {s:.3f} | {cpu:.3f} | {n / s / 1e6:.3f} M | {gf:.1f} | {best / s:.2f}x "
                  f"| {gf / peak:.0%} | {of_fma} |")
        for label, suffix in [("seqflow", ""), ("seqflow bf16", "_bf16")] if a.bf16 else [("seqflow", "")]:
            got = pq.read_table(os.path.join(tmp, f"out_{name}{suffix}.parquet")).to_pandas().sort_values(["key", "t"])
            y = got[[f"y{j}" for j in range(out_width(spec))]].to_numpy().reshape(a.keys, a.steps, -1)
            d = np.abs(y - ref)
            print(f"|  | {label} vs onnxruntime: max abs diff {d.max():.1e}, mean {d.mean():.1e} | | | | | | | |")
        summary.append((name, best / sf[1], best / sf[2], sf[1] / sf[2], best / sf16[1] if sf16 else None))
    print(f"\nfaer peak measured {len(peaks)} times in this run: " + ", ".join(f"{p:.1f}" for p in peaks) + " GFLOP/s")
    print("\n| model | seqflow -w 1 vs ORT best | seqflow -w 2 vs ORT best | -w 2 / -w 1 | bf16 -w 1 vs ORT best (f32) |")
    print("|---|---:|---:|---:|---:|")
    for name, r1, r2, sc, r16 in summary:
        b16 = f"{r16:.2f}x" if r16 else "-"
        print(f"| {name} | {r1:.2f}x | {r2:.2f}x | {sc:.2f}x | {b16} |")


if __name__ == "__main__":
    main()
