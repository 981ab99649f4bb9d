"""seqflow from Python: run pipelines, predict on tables, stream with carried state.

    import seqflow
    report = seqflow.run("pipelines/demo.toml", workers=2)       # the run's report, a dict
    m = seqflow.Model("models/anomaly.toml")
    scores = m.predict(df, key="sensor_id", time="ts", features=[...])   # pyarrow.Table
    s = m.session(key="sensor_id", time="ts", features=[...])
    s.push(batch)        # this batch's predictions; every key's state carries over

Tables go in as pandas DataFrames, pyarrow Tables or RecordBatches; predictions come out
as pyarrow Tables with the CLI's columns: the key, the time (both of the input's types) and
one float32 column per model output. The numbers are the CLI's, bit for bit. seqflow
releases the GIL while it works; `workers=N` splits the keys over N threads.

Errors raise `seqflow.Error` (subclasses `ConfigError`, `DataError`, `OutputError`,
`CheckpointError`) with the CLI's message, naming what is wrong and where.
"""

import json
import os

import pyarrow as pa

from ._seqflow import (
    CheckpointError,
    ConfigError,
    DataError,
    Error,
    OutputError,
    __version__,
)
from . import _seqflow

__all__ = [
    "run",
    "Model",
    "Session",
    "Error",
    "ConfigError",
    "DataError",
    "OutputError",
    "CheckpointError",
    "__version__",
]

def run(pipeline, workers=1, input=None, output=None, resume=False, fresh=False):
    """Runs a pipeline and returns its report as a dict.

    `pipeline` is a pipeline file's path, or a dict with the file's sections
    (``{"source": {...}, "model": {...}, "output": {...}}``; relative paths are relative to
    the current folder). `input` / `output` replace the pipeline's paths, as the CLI's
    ``--input`` / ``--output`` do. The report has rows, steps, predictions, keys, rejects (by
    reason), state_bytes, seconds, workers, output, rejects_file, checkpoints and summary
    (the line the CLI prints). Ctrl-C stops the run without writing its output.
    """
    opt = lambda p: None if p is None else os.fspath(p)  # noqa: E731
    kw = dict(workers=workers, input=opt(input), output=opt(output), resume=resume, fresh=fresh)
    if isinstance(pipeline, dict):
        return _seqflow.run(text=json.dumps(pipeline), **kw)
    return _seqflow.run(path=os.fspath(pipeline), **kw)


def _table(data):
    """A pyarrow Table from a Table, a RecordBatch or a pandas DataFrame."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if type(data).__module__.startswith("pandas") and hasattr(data, "columns"):
        return pa.Table.from_pandas(data, preserve_index=False)
    raise TypeError(
        f"expected a pyarrow Table or RecordBatch or a pandas DataFrame, got {type(data).__name__}"
    )


def _one_batch(data):
    """The data as one record batch (a push is one epoch)."""
    if isinstance(data, pa.RecordBatch):
        return data
    t = _table(data).combine_chunks()
    batches = t.to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=t.schema)


def _settings(key, time, features, emit, size, hop, all_steps, normalize, nan, names, workers):
    if isinstance(features, str):
        raise ConfigError("features must be a list of column names, not one string")
    if normalize is not None:
        normalize = {"mean": [float(v) for v in normalize["mean"]], "std": [float(v) for v in normalize["std"]]}
    return json.dumps(
        {
            "key": key,
            "time": time,
            "features": list(features),
            "emit": emit,
            "size": size,
            "hop": hop,
            "all_steps": all_steps,
            "normalize": normalize,
            "nan": nan,
            "names": None if names is None else list(names),
            "workers": workers,
        }
    )


class Model:
    """A trained model: a seqflow model file (TOML) and its safetensors weights."""

    def __init__(self, path):
        self._m = _seqflow.Model(os.fspath(path))

    @property
    def path(self):
        return self._m.path

    @property
    def input_size(self):
        return self._m.input_size

    @property
    def output_size(self):
        return self._m.output_size

    def inspect(self):
        """The layers and what they cost, as `seqflow inspect` prints them, as a dict."""
        return self._m.inspect()

    def session(
        self,
        key,
        time,
        features,
        emit="every_step",
        size=None,
        hop=None,
        all_steps=None,
        normalize=None,
        nan="error",
        names=None,
        workers=1,
    ):
        """A `Session` over this model: push batches, get their predictions, keep the state.

        emit: "every_step" (causal models), "sequence_end" (with `all_steps`), or "window"
        (with `size` and `hop`, in steps). normalize: {"mean": [...], "std": [...]}, one per
        feature. nan: "error", "skip", "zero" or "ffill". names: the output columns (default
        y0, y1, ...). workers: threads the keys are split over.
        """
        settings = _settings(key, time, features, emit, size, hop, all_steps, normalize, nan, names, workers)
        return Session(_seqflow.Session(self._m, settings))

    def predict(
        self,
        data,
        key,
        time,
        features,
        emit="every_step",
        size=None,
        hop=None,
        all_steps=None,
        normalize=None,
        nan="error",
        names=None,
        workers=1,
    ):
        """Predictions for a whole table, as a pyarrow Table (the CLI's columns and numbers).

        The table is one epoch: rows of one key may come in any order; each key's steps run
        in time order. Rows that cannot run (malformed, late or duplicate times, non-finite under
        nan="skip") are left out; `Session.rejects()` lists them when pushing yourself.
        """
        s = self.session(key, time, features, emit, size, hop, all_steps, normalize, nan, names, workers)
        # One push, one epoch: rows of a key may come in any order within the table (pushed
        # in pieces, a step before its key's last one in an earlier piece would be late).
        parts = [s._s.push(_one_batch(data)), s._s.finish()]
        return pa.Table.from_batches(parts, schema=parts[0].schema)

    def __repr__(self):
        return repr(self._m)


class Session:
    """Every key's state, carried from push to push: pushing a table in pieces gives what
    `Model.predict` gives for all of it."""

    def __init__(self, inner):
        self._s = inner

    def push(self, data):
        """Runs a batch (a Table, RecordBatch or DataFrame) as one step per row; returns its
        predictions as a pyarrow Table."""
        return pa.Table.from_batches([self._s.push(_one_batch(data))])

    def finish(self):
        """Ends every key's sequence and returns what emit="sequence_end" held back; the
        session takes no more pushes."""
        return pa.Table.from_batches([self._s.finish()])

    def keys(self):
        """The keys held."""
        return self._s.keys()

    def stats(self):
        """Counters over the session: rows, steps, predictions, keys, rejects by reason,
        state_bytes."""
        return self._s.stats()

    def rejects(self):
        """The rows of the last push that were not run: reason, row (counted over the whole
        session), key, time, last_time, detail."""
        return self._s.rejects()

    def save(self, path):
        """Saves every key's state (and the session's settings) into the folder `path`, in
        seqflow's checkpoint format."""
        self._s.save(os.fspath(path))

    @staticmethod
    def load(path, model, workers=None):
        """The session saved in `path`, over `model` (the same model file and weights);
        `workers` may differ from the saved session's."""
        m = model._m if isinstance(model, Model) else model
        return Session(_seqflow.Session.load(os.fspath(path), m, workers))
