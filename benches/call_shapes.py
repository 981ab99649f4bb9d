#!/usr/bin/env python3
"""Epoch shapes for the streamed-call measurements in BENCHMARKS.md ("Fifth pass").

Run in the folder `ort_compare.py` writes (it holds data.parquet, 1024 keys x 1000 steps in
time order, and lstm128_head.pipeline.toml). Writes, beside them:

  bykey.pipeline.toml    the same rows sorted by key (64 keys per 65,536-row epoch)
  b150.pipeline.toml     the same rows in epochs of 150 steps per key (batch_rows = 153600)
  k1m.pipeline.toml      1,000,000 string keys x 1 step (epochs of 65,536 keys)
  k1m_one.pipeline.toml  the same in one epoch of every key (batch_rows = 1048576)

then time them with benches/alternate.sh, e.g.
  benches/alternate.sh DIR 5 "before:/tmp/old/seqflow run bykey.pipeline.toml -w 1" \\
                             "after:$PWD/target/release/seqflow run bykey.pipeline.toml -w 1"
"""
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def variant(base: str, name: str, data: str, batch_rows: int | None) -> None:
    text = re.sub(r'path = "data.parquet"', f'path = "{data}"', base)
    text = re.sub(r'path = "out_[^"]*"', f'path = "out_{name}.parquet"', text)
    if batch_rows is not None:
        text = text.replace('key = "key"', f'batch_rows = {batch_rows}\nkey = "key"', 1)
    Path(f"{name}.pipeline.toml").write_text(text)


def main() -> None:
    base = Path("lstm128_head.pipeline.toml").read_text()
    data = pq.read_table("data.parquet")
    pq.write_table(data.sort_by([("key", "ascending"), ("t", "ascending")]), "data_bykey.parquet")
    variant(base, "bykey", "data_bykey.parquet", None)
    variant(base, "b150", "data.parquet", 150 * 1024)
    n = 1_000_000
    rng = np.random.default_rng(1)
    cols = {
        "key": pa.array([f"site{i % 40:02d}-m{i:07d}" for i in range(n)]),
        "t": pa.array(np.full(n, 1_700_000_000_000, dtype=np.int64)),
    }
    for j in range(8):
        cols[f"f{j}"] = pa.array(rng.standard_normal(n).astype(np.float32))
    pq.write_table(pa.table(cols), "keys1m.parquet")
    variant(base, "k1m", "keys1m.parquet", None)
    variant(base, "k1m_one", "keys1m.parquet", 1 << 20)
    print("wrote bykey, b150, k1m and k1m_one pipelines in", Path.cwd(), file=sys.stderr)


if __name__ == "__main__":
    main()
