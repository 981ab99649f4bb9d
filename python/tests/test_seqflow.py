"""The Python package against the CLI's pipeline path, on the bundled demo.

Run by scripts/test after building the wheel into a fresh venv:
    python -m pytest python/tests
"""

import os
import random
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import seqflow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(ROOT, "datasets", "sample", "sensors.parquet")
MODEL = os.path.join(ROOT, "models", "anomaly.toml")
FEATURES = ["temp", "vib_x", "vib_y", "current", "pressure", "humidity", "rpm", "power"]
# pipelines/demo.toml's normalization (the training set's).
NORMALIZE = {
    "mean": [23.512972, 0.029818, 0.023851, 5.401987, 101.556943, 52.053648, 906.948803, 1.186656],
    "std": [6.330203, 0.019263, 0.015822, 2.369747, 0.164477, 4.851748, 611.559229, 0.551571],
}
ARGS = dict(key="sensor_id", time="ts", features=FEATURES, normalize=NORMALIZE, nan="ffill", names=["score"])


def demo_pipeline(tmp_path):
    """pipelines/demo.toml as a dict, writing into tmp_path."""
    return {
        "source": {
            "format": "parquet",
            "path": SAMPLE,
            "key": "sensor_id",
            "time": "ts",
            "features": FEATURES,
            "normalize": NORMALIZE,
            "nan": "ffill",
            "rejects": str(tmp_path / "rejects.jsonl"),
        },
        "model": {"path": MODEL},
        "output": {"format": "parquet", "path": str(tmp_path / "demo.parquet"), "names": ["score"], "emit": "every_step"},
    }


def canonical(table):
    """Sorted by key and time, the scores as their bits (exact comparison)."""
    t = table.sort_by([("sensor_id", "ascending"), ("ts", "ascending")])
    keys = t.column("sensor_id").cast(pa.string()).to_pylist()
    times = t.column("ts").cast(pa.int64()).to_numpy()
    bits = t.column("score").to_numpy().astype(np.float32).view(np.uint32)
    return keys, times, bits


def assert_same(a, b):
    ka, ta, sa = canonical(a)
    kb, tb, sb = canonical(b)
    assert ka == kb
    assert np.array_equal(ta, tb)
    assert np.array_equal(sa, sb), f"{np.count_nonzero(sa != sb)} scores differ"


@pytest.fixture(scope="module")
def model():
    return seqflow.Model(MODEL)


@pytest.fixture(scope="module")
def sample():
    return pq.read_table(SAMPLE)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """The pipeline run (what `seqflow run pipelines/demo.toml` writes), read back."""
    tmp = tmp_path_factory.mktemp("cli")
    report = seqflow.run(demo_pipeline(tmp), workers=2)
    assert report["rows"] == 43_209 and report["predictions"] == 43_200, report
    return pq.read_table(tmp / "demo.parquet")


def test_predict_equals_the_cli_bit_for_bit(model, sample, cli):
    out = model.predict(sample, **ARGS)
    assert out.schema.names == cli.schema.names
    assert out.schema == cli.schema
    assert_same(out, cli)


def test_the_cli_binary_writes_the_same(tmp_path, model, sample):
    """The `seqflow` binary itself, when built (scripts/test builds it)."""
    binary = os.environ.get("SEQFLOW_BIN") or os.path.join(ROOT, "target", "debug", "seqflow")
    if not os.path.exists(binary):
        pytest.skip("no seqflow binary built")
    import subprocess

    out = tmp_path / "cli.parquet"
    r = subprocess.run(
        [binary, "run", os.path.join(ROOT, "pipelines", "demo.toml"), "--output", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert_same(model.predict(sample, **ARGS), pq.read_table(out))


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_pushes_over_any_split_equal_predict(model, sample, cli, workers):
    rng = random.Random(workers)
    n = sample.num_rows
    cuts = sorted(rng.sample(range(1, n), 25)) + [n]
    s = model.session(workers=workers, **ARGS)
    parts, at = [], 0
    for c in cuts:
        parts.append(s.push(sample.slice(at, c - at)))
        at = c
    parts.append(s.finish())
    assert_same(pa.concat_tables(parts), cli)
    st = s.stats()
    assert st["rows"] == n and st["predictions"] == 43_200 and st["rejects"]["duplicate"] == 9, st
    assert len(s.keys()) == 50


@pytest.mark.parametrize(
    "emit",
    [
        {"emit": "sequence_end"},
        {"emit": "sequence_end", "all_steps": True},
        {"emit": "window", "size": 48, "hop": 12},
    ],
)
def test_every_emit_mode_equals_the_pipeline(tmp_path, model, sample, emit):
    p = demo_pipeline(tmp_path)
    p["output"] = {**p["output"], **emit}
    seqflow.run(p, workers=2)
    want = pq.read_table(tmp_path / "demo.parquet")
    assert want.num_rows > 0
    got = model.predict(sample, **ARGS, **{k: v for k, v in emit.items()}, workers=2)
    assert_same(got, want)
    # A session holds sequence_end's outputs until finish().
    s = model.session(**ARGS, **emit)
    pushed = s.push(sample)
    held = s.finish()
    if emit["emit"] == "sequence_end":
        assert pushed.num_rows == 0
    assert_same(pa.concat_tables([pushed, held]), want)


def test_predict_takes_the_rows_of_a_key_in_any_order(model, sample):
    # Shuffled across the whole table: predict is one epoch, so no step is late.
    idx = np.random.default_rng(5).permutation(sample.num_rows)
    out = model.predict(sample.take(pa.array(idx)), **ARGS)
    ref = model.predict(sample, **ARGS)
    assert out.num_rows == ref.num_rows == 43_200
    ka, ta, sa = canonical(out)
    kb, tb, sb = canonical(ref)
    assert ka == kb and np.array_equal(ta, tb)
    # Of a duplicated (key, time), the first in row order runs: shuffled, that may be the
    # other copy, which changes that key's later scores; every other key is identical.
    differ = {k for k, x, y in zip(ka, sa, sb) if x != y}
    assert len(differ) <= 9, differ


def test_pandas_and_pyarrow_inputs_agree(model, sample):
    pd = pytest.importorskip("pandas")
    df = sample.to_pandas()
    assert isinstance(df, pd.DataFrame)
    a = model.predict(df, **ARGS)
    b = model.predict(sample, **ARGS)
    assert_same(a, b)
    # Keys as large_string, string_view and dictionary give the same (as plain strings).
    for t in [pa.large_string(), pa.string_view(), pa.dictionary(pa.int32(), pa.string())]:
        i = sample.schema.get_field_index("sensor_id")
        other = sample.set_column(i, pa.field("sensor_id", t), sample.column(i).cast(t))
        out = model.predict(other, **ARGS)
        assert out.schema.field("sensor_id").type == pa.string()
        assert_same(out, b)


def test_a_saved_session_goes_on_with_another_worker_count(tmp_path, model, sample, cli):
    half = sample.num_rows // 2 + 5
    s = model.session(workers=2, **ARGS)
    first = s.push(sample.slice(0, half))
    s.save(tmp_path / "state")
    t = seqflow.Session.load(tmp_path / "state", model, workers=3)
    assert sorted(t.keys()) == sorted(s.keys())
    second = t.push(sample.slice(half))
    assert_same(pa.concat_tables([first, second]), cli)
    # The same weights under another model file: another model.
    text = open(MODEL).read().replace(
        'weights = "anomaly.safetensors"', f'weights = "{os.path.join(ROOT, "models", "anomaly.safetensors")}"'
    )
    (tmp_path / "other.toml").write_text(text + "\n# another file\n")
    other = seqflow.Model(tmp_path / "other.toml")
    with pytest.raises(seqflow.CheckpointError, match="model"):
        seqflow.Session.load(tmp_path / "state", other)
    with pytest.raises(seqflow.CheckpointError, match="no saved session"):
        seqflow.Session.load(tmp_path / "nothing", model)


def test_bad_inputs_raise_seqflow_errors_with_the_message(model, sample):
    with pytest.raises(seqflow.DataError, match="temp"):
        model.predict(sample.drop_columns(["temp"]), **ARGS)
    with pytest.raises(seqflow.ConfigError, match="7 features"):
        model.predict(sample, **{**ARGS, "features": FEATURES[:7], "normalize": None})
    with pytest.raises(seqflow.ConfigError, match="emit"):
        model.session(**{**ARGS, "emit": "sometimes"})
    with pytest.raises(seqflow.ConfigError, match="size and hop"):
        model.session(**{**ARGS, "emit": "window"})
    with pytest.raises(seqflow.Error, match="nope.toml"):
        seqflow.Model("nope.toml")
    with pytest.raises(TypeError):
        model.predict([1, 2, 3], **ARGS)
    # A non-finite feature under nan="error" names its row and column.
    temp = sample.column("temp").to_numpy().copy()
    temp[7] = np.nan
    bad = sample.set_column(sample.schema.get_field_index("temp"), "temp", pa.array(temp))
    with pytest.raises(seqflow.DataError, match="temp") as e:
        model.predict(bad, **{**ARGS, "nan": "error"})
    assert "row 7" in str(e.value), str(e.value)
    # nan="skip" rejects the row instead, and the session says which.
    s = model.session(**{**ARGS, "nan": "skip"})
    s.push(bad)
    rejects = s.rejects()
    nan_rows = np.zeros(bad.num_rows, dtype=bool)
    for f in FEATURES:
        nan_rows |= ~np.isfinite(bad.column(f).to_numpy(zero_copy_only=False).astype(np.float64))
    non_finite = [r["row"] for r in rejects if r["reason"] == "non_finite"]
    assert sorted(non_finite) == list(np.flatnonzero(nan_rows)) and 7 in non_finite
    # The key and time types are fixed by the first batch.
    s = model.session(**ARGS)
    s.push(sample.slice(0, 10))
    i = sample.schema.get_field_index("sensor_id")
    ints = sample.slice(10, 10).set_column(i, "sensor_id", pa.array(range(10), pa.int64()))
    with pytest.raises(seqflow.DataError, match="first batch"):
        s.push(ints)
    s.finish()
    with pytest.raises(seqflow.Error, match="finished"):
        s.push(sample.slice(0, 10))


def test_the_gil_is_released_while_seqflow_works(model):
    # One push of a big batch is one call into seqflow: holding the GIL, the counting thread
    # could not run at all during it; released, it counts the whole time.
    n = 1_000_000
    rng = np.random.default_rng(0)
    data = pa.record_batch(
        {
            "sensor_id": pa.array(np.char.add("k", (np.arange(n) % 2000).astype(str))),
            "ts": pa.array(np.arange(n, dtype=np.int64) // 2000),
            **{f: pa.array(rng.standard_normal(n).astype(np.float32)) for f in FEATURES},
        }
    )
    s = model.session(key="sensor_id", time="ts", features=FEATURES)
    ticks = [0]
    done = threading.Event()

    def count():
        while not done.is_set():
            ticks[0] += 1

    t = threading.Thread(target=count)
    t.start()
    time.sleep(0.05)
    before = ticks[0]
    start = time.perf_counter()
    out = s.push(data)
    took = time.perf_counter() - start
    during = ticks[0] - before
    done.set()
    t.join()
    assert out.num_rows == n
    assert took > 0.05, took
    assert during > 100_000, (during, took)


def test_run_reports_and_inspect(tmp_path, model):
    r = seqflow.run(demo_pipeline(tmp_path), workers=1)
    assert r["rows"] == 43_209 and r["keys"] == 50 and r["rejects"]["duplicate"] == 9
    assert r["seconds"] > 0 and "43,200 predictions" in r["summary"]
    assert os.path.exists(r["output"])
    with pytest.raises(seqflow.ConfigError, match="features"):
        bad = demo_pipeline(tmp_path)
        bad["source"]["features"] = []
        seqflow.run(bad)
    info = model.inspect()
    assert info["input_size"] == 8 and info["output_size"] == 1 and info["streamable"]
    assert [layer["type"] for layer in info["layers"]] == ["conv1d", "relu", "lstm", "linear", "sigmoid"], info
    assert sum(layer["params"] for layer in info["layers"]) == info["params"]
