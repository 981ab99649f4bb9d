#!/usr/bin/env python3
"""The Python binding's cost, side by side with the CLI in one run.

Data: KEYS keys x STEPS steps (time-major rows, 8 standard normal float32 features), one
Parquet file; model: models/anomaly.toml (conv1d -> LSTM 32 -> linear -> sigmoid). Measured,
best of REPS, wall clock and CPU time:
  - `seqflow run` over the file (Parquet in, Parquet out: the whole job, one process);
  - Python: pyarrow reads the file, `Model.predict`, pyarrow writes the predictions (the same
    job), and `predict` alone on the table in memory;
  - `Session.push` latency for small batches (one step for each of B keys), median and p99.

    scripts/test   # or: python3 -m venv /tmp/pyb && /tmp/pyb/bin/pip install maturin pandas pyarrow
    (cd python && /tmp/pyb/bin/maturin build --release -i /tmp/pyb/bin/python -o ../target/wheels)
    /tmp/pyb/bin/pip install --force-reinstall --no-deps target/wheels/seqflow-*.whl
    cargo build --release
    /tmp/pyb/bin/python benches/python_predict.py [--keys 1000 --steps 1000 --reps 3 --workers 1]
"""
import argparse
import os
import resource
import subprocess
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import seqflow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "anomaly.toml")
FEATURES = ["temp", "vib_x", "vib_y", "current", "pressure", "humidity", "rpm", "power"]


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def best(f, reps):
    runs = []
    for _ in range(reps):
        w, c = time.perf_counter(), cpu()
        f()
        runs.append((time.perf_counter() - w, cpu() - c))
    return min(runs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()
    n = a.keys * a.steps
    tmp = tempfile.mkdtemp(prefix="seqflow_py_")
    rng = np.random.default_rng(1)
    keys = np.char.add("s", np.char.zfill((np.arange(n) % a.keys).astype(str), 4))
    table = pa.table(
        {
            "sensor_id": pa.array(keys),
            "ts": pa.array(np.arange(n, dtype=np.int64) // a.keys),
            **{f: pa.array(rng.standard_normal(n).astype(np.float32)) for f in FEATURES},
        }
    )
    data = os.path.join(tmp, "data.parquet")
    pq.write_table(table, data, row_group_size=131072)
    pipeline = os.path.join(tmp, "p.toml")
    with open(pipeline, "w") as f:
        f.write(
            f'[source]\nformat = "parquet"\npath = "{data}"\nkey = "sensor_id"\ntime = "ts"\n'
            f"features = {FEATURES!r}\n".replace("'", '"')
            + f'[model]\npath = "{MODEL}"\n[output]\nformat = "parquet"\npath = "{tmp}/cli.parquet"\nnames = ["score"]\n'
        )
    binary = os.path.join(ROOT, "target", "release", "seqflow")
    model = seqflow.Model(MODEL)
    args = dict(key="sensor_id", time="ts", features=FEATURES, names=["score"], workers=a.workers)

    def cli():
        subprocess.run([binary, "run", pipeline, "-w", str(a.workers)], check=True, capture_output=True)

    def py_job():
        t = pq.read_table(data)
        pq.write_table(model.predict(t, **args), os.path.join(tmp, "py.parquet"))

    def py_predict():
        model.predict(table, **args)

    rows = []
    # Interleaved, so that the machine's drift hits both alike.
    results = {"cli": [], "job": [], "predict": []}
    for _ in range(a.reps):
        results["cli"].append(best(cli, 1))
        results["job"].append(best(py_job, 1))
        results["predict"].append(best(py_predict, 1))
    cli_w, cli_c = min(results["cli"])
    for name, label in [
        ("cli", f"seqflow run -w {a.workers} (Parquet in/out)"),
        ("job", "Python: pq.read_table + Model.predict + pq.write_table"),
        ("predict", "Python: Model.predict on the table in memory"),
    ]:
        w, c = min(results[name])
        rows.append((label, w, c, n / w / 1e6, w / cli_w))
    # Check: the same predictions.
    x = pq.read_table(os.path.join(tmp, "cli.parquet")).sort_by([("sensor_id", "ascending"), ("ts", "ascending")])
    y = pq.read_table(os.path.join(tmp, "py.parquet")).sort_by([("sensor_id", "ascending"), ("ts", "ascending")])
    same = x.column("score").equals(y.column("score"))

    print(f"{a.keys} keys x {a.steps} steps = {n:,} rows, model {os.path.relpath(MODEL, ROOT)}, best of {a.reps}")
    print()
    print("| job | seconds | CPU s | M rows/s | vs CLI |")
    print("|---|---:|---:|---:|---:|")
    for label, w, c, rate, ratio in rows:
        print(f"| {label} | {w:.3f} | {c:.3f} | {rate:.2f} | {ratio:.2f}x |")
    print(f"\npredictions identical to the CLI's: {same}")

    print("\n| push of B rows (one step of B keys) | median | p99 | rows/s |")
    print("|---|---:|---:|---:|")
    for b in [1, 10, 100, 1000]:
        s = model.session(key="sensor_id", time="ts", features=FEATURES)
        lat = []
        batches = [
            pa.record_batch(
                {
                    "sensor_id": pa.array([f"s{k:04d}" for k in range(b)]),
                    "ts": pa.array(np.full(b, t, dtype=np.int64)),
                    **{f: pa.array(rng.standard_normal(b).astype(np.float32)) for f in FEATURES},
                }
            )
            for t in range(2000)
        ]
        for batch in batches:
            t0 = time.perf_counter()
            s._s.push(batch)
            lat.append(time.perf_counter() - t0)
        lat = np.array(lat[200:])
        med, p99 = np.median(lat), np.percentile(lat, 99)
        print(f"| B = {b} | {med * 1e6:.0f} us | {p99 * 1e6:.0f} us | {b / med:,.0f} |")


if __name__ == "__main__":
    main()
