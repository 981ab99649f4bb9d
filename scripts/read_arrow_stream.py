#!/usr/bin/env python3
"""Reads seqflow's Arrow output as it comes: an Arrow IPC stream on stdin (`[output] format =
"arrow"` with `path = "-"`, or `--output -`), one line per record batch as it arrives, then a
JSON summary. The README's example and tests/arrow_files.rs use it:

    seqflow run PIPELINE.toml --output - | python3 scripts/read_arrow_stream.py
"""
import json
import sys

import pyarrow as pa

reader = pa.ipc.open_stream(sys.stdin.buffer)
columns = reader.schema.names
rows, batches, keys = 0, 0, set()
for batch in reader:
    batches += 1
    rows += batch.num_rows
    keys.update(batch.column(0).to_pylist())
    first = batch.slice(0, 1).to_pylist()
    print(f"batch {batches}: {batch.num_rows} rows, first {first[0] if first else None}", flush=True)
print(json.dumps({"batches": batches, "rows": rows, "keys": len(keys), "columns": columns}), flush=True)
