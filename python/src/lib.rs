//! `seqflow._seqflow`: the compiled half of the Python package. The Python half
//! (`python/seqflow/__init__.py`) takes pandas and pyarrow tables, splits them into record
//! batches and calls these; everything here hands Arrow data across by the C data interface
//! (no copy of the columns), releases the GIL while seqflow works, and turns every seqflow
//! error into a `seqflow.Error` subclass with the CLI's one-paragraph message.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::pyarrow::PyArrowType;
use arrow::record_batch::RecordBatch;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use seqflow::input::columns::Columns;
use seqflow::pipeline::{Overrides, PipelineConfig, RunOptions, RunReport};
use seqflow::record::{Key, Reject, Stats};
use seqflow::session::{Session as Core, SessionConfig};
use seqflow::vocab::Emit;

create_exception!(
    seqflow,
    Error,
    PyException,
    "Any seqflow error; the message is the CLI's, naming what is wrong and where."
);
create_exception!(
    seqflow,
    ConfigError,
    Error,
    "A model file, weights file, pipeline or session setting is wrong."
);
create_exception!(
    seqflow,
    DataError,
    Error,
    "Input data cannot be read: a missing column, a wrong type, a non-finite value under nan=\"error\"."
);
create_exception!(seqflow, OutputError, Error, "An output cannot be written.");
create_exception!(
    seqflow,
    CheckpointError,
    Error,
    "A saved session or checkpoint is missing, damaged or of another model or layout."
);

/// A seqflow error as the Python exception of its kind.
fn to_py(e: seqflow::Error) -> PyErr {
    let msg = e.to_string();
    use seqflow::Error as E;
    match e {
        E::ModelConfig { .. } | E::WeightsFile { .. } | E::Tensor { .. } | E::Unsupported { .. } => {
            ConfigError::new_err(msg)
        }
        E::PipelineConfig { .. } | E::SessionConfig { .. } => ConfigError::new_err(msg),
        E::Data { .. } => DataError::new_err(msg),
        E::Output { .. } => OutputError::new_err(msg),
        E::Checkpoint { .. } => CheckpointError::new_err(msg),
        _ => Error::new_err(msg),
    }
}

fn config_err(msg: impl Into<String>) -> PyErr {
    ConfigError::new_err(msg.into())
}

/// A trained model (a model file and its weights), loaded once.
#[pyclass(module = "seqflow._seqflow", frozen)]
struct Model {
    inner: Arc<seqflow::Model>,
}

#[pymethods]
impl Model {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Model> {
        let m = py.detach(|| seqflow::Model::load(&path)).map_err(to_py)?;
        Ok(Model { inner: Arc::new(m) })
    }

    /// The model file's path.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path().to_path_buf()
    }

    /// Values per step in.
    #[getter]
    fn input_size(&self) -> usize {
        self.inner.input_size()
    }

    /// Values per emitted step out.
    #[getter]
    fn output_size(&self) -> usize {
        self.inner.output_size()
    }

    /// What `seqflow inspect` prints, as a dict.
    fn inspect<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = &self.inner;
        let d = PyDict::new(py);
        d.set_item("path", m.path())?;
        d.set_item("input_size", m.input_size())?;
        d.set_item("output_size", m.output_size())?;
        d.set_item("params", m.params())?;
        d.set_item("precision", m.precision().as_str())?;
        let layers = PyList::empty(py);
        for r in m.layer_rows() {
            let l = PyDict::new(py);
            l.set_item("index", r.index)?;
            l.set_item("type", r.kind)?;
            l.set_item("name", r.name)?;
            l.set_item("inputs", r.inputs)?;
            l.set_item("outputs", r.outputs)?;
            l.set_item("params", r.params)?;
            l.set_item("state_bytes", r.state_bytes)?;
            l.set_item("detail", r.detail)?;
            layers.append(l)?;
        }
        d.set_item("layers", layers)?;
        let t = m.timing();
        d.set_item("receptive_field", t.receptive_field)?;
        d.set_item("first_output", t.first_output)?;
        d.set_item("stride", t.stride)?;
        match m.check_streamable() {
            Ok(()) => {
                d.set_item("streamable", true)?;
                d.set_item("state_bytes_per_key", m.state_bytes_per_key())?;
            }
            Err(e) => {
                d.set_item("streamable", false)?;
                d.set_item("not_streamable_because", e.to_string())?;
            }
        }
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "seqflow.Model('{}': {} inputs -> {} outputs, {} layers)",
            self.inner.path().display(),
            self.inner.input_size(),
            self.inner.output_size(),
            self.inner.layer_rows().len()
        )
    }
}

/// The settings of a session as the Python side passed them, kept as JSON so that a save
/// can record them and `Session.load(path, model)` needs nothing else.
fn session_config(settings: &serde_json::Value) -> PyResult<SessionConfig> {
    let get = |k: &str| settings.get(k).filter(|v| !v.is_null());
    let columns = serde_json::json!({
        "key": get("key").ok_or_else(|| config_err("key is required"))?,
        "time": get("time").ok_or_else(|| config_err("time is required"))?,
        "features": get("features").ok_or_else(|| config_err("features is required"))?,
        "normalize": get("normalize"),
        "nan": get("nan").cloned().unwrap_or("error".into()),
    });
    let columns: Columns =
        serde_json::from_value(columns).map_err(|e| config_err(format!("session settings: {e}")))?;
    let size = get("size").and_then(|v| v.as_u64()).map(|v| v as usize);
    let hop = get("hop").and_then(|v| v.as_u64()).map(|v| v as usize);
    let all_steps = get("all_steps").and_then(|v| v.as_bool());
    let emit = match get("emit").and_then(|v| v.as_str()).unwrap_or("every_step") {
        "every_step" => Emit::EveryStep,
        "sequence_end" => Emit::SequenceEnd {
            all_steps: all_steps.unwrap_or(false),
        },
        "window" => match (size, hop) {
            (Some(size), Some(hop)) if size > 0 && hop > 0 => Emit::Window { size, hop },
            _ => {
                return Err(config_err(
                    "emit=\"window\" needs size and hop (in steps), each at least 1",
                ))
            }
        },
        other => {
            return Err(config_err(format!(
                "emit=\"{other}\" is not one of \"every_step\", \"sequence_end\", \"window\""
            )))
        }
    };
    if all_steps.is_some() && !matches!(emit, Emit::SequenceEnd { .. }) {
        return Err(config_err("all_steps applies to emit=\"sequence_end\" only"));
    }
    if (size.is_some() || hop.is_some()) && !matches!(emit, Emit::Window { .. }) {
        return Err(config_err("size and hop apply to emit=\"window\" only"));
    }
    let names = match get("names") {
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| config_err(format!("names: {e}")))?,
        None => Vec::new(),
    };
    let workers = match get("workers") {
        None => 1,
        Some(v) => {
            v.as_u64()
                .filter(|&w| w >= 1)
                .ok_or_else(|| config_err(format!("workers = {v}: a positive integer")))? as usize
        }
    };
    Ok(SessionConfig {
        columns,
        emit,
        names,
        workers,
    })
}

/// Every key's state, carried from push to push.
#[pyclass(module = "seqflow._seqflow", frozen)]
struct Session {
    core: Mutex<Core>,
    settings: serde_json::Value,
    /// The rows of the last push (or finish) that were not run.
    rejects: Mutex<Vec<Reject>>,
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, Core> {
        // A panic inside seqflow poisons nothing users can see twice: the state is kept.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl Session {
    /// `settings`: a JSON object with key, time, features, and optionally normalize
    /// ({"mean": [...], "std": [...]}), nan, emit, size, hop, all_steps, names, workers.
    #[new]
    fn new(py: Python<'_>, model: &Model, settings: &str) -> PyResult<Session> {
        let settings: serde_json::Value =
            serde_json::from_str(settings).map_err(|e| config_err(format!("session settings: {e}")))?;
        let cfg = session_config(&settings)?;
        let model = model.inner.clone();
        let core = py.detach(|| Core::new(model, cfg)).map_err(to_py)?;
        Ok(Session {
            core: Mutex::new(core),
            settings,
            rejects: Mutex::new(Vec::new()),
        })
    }

    /// The newest save in `path`, with the settings it was saved with (`workers` may differ).
    #[staticmethod]
    #[pyo3(signature = (path, model, workers=None))]
    fn load(py: Python<'_>, path: PathBuf, model: &Model, workers: Option<usize>) -> PyResult<Session> {
        let file = path.join("session.json");
        let text = seqflow::outfiles::read_regular_string(&file).map_err(|e| {
            CheckpointError::new_err(format!(
                "checkpoint {}: no saved session there ({e})",
                path.display()
            ))
        })?;
        let mut settings: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| CheckpointError::new_err(format!("checkpoint {}: {e}", file.display())))?;
        let Some(obj) = settings.as_object_mut() else {
            return Err(CheckpointError::new_err(format!(
                "checkpoint {}: not a session's settings",
                file.display()
            )));
        };
        if let Some(w) = workers {
            obj.insert("workers".into(), w.into());
        }
        let cfg = session_config(&settings)?;
        let model = model.inner.clone();
        let core = py.detach(|| Core::load(&path, model, cfg)).map_err(to_py)?;
        Ok(Session {
            core: Mutex::new(core),
            settings,
            rejects: Mutex::new(Vec::new()),
        })
    }

    /// Runs one record batch (one epoch); returns its predictions.
    fn push(&self, py: Python<'_>, batch: PyArrowType<RecordBatch>) -> PyResult<PyArrowType<RecordBatch>> {
        let batch = batch.0;
        let pushed = py.detach(|| self.lock().push(&batch)).map_err(to_py)?;
        *self.rejects.lock().unwrap_or_else(|p| p.into_inner()) = pushed.rejects;
        Ok(PyArrowType(pushed.predictions))
    }

    /// Ends every sequence; returns what emit="sequence_end" held back.
    fn finish(&self, py: Python<'_>) -> PyResult<PyArrowType<RecordBatch>> {
        let pushed = py.detach(|| self.lock().finish()).map_err(to_py)?;
        *self.rejects.lock().unwrap_or_else(|p| p.into_inner()) = pushed.rejects;
        Ok(PyArrowType(pushed.predictions))
    }

    /// The keys held.
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        // The lock waits for a push on another thread: not while holding the GIL.
        let keys = py.detach(|| self.lock().keys());
        let list = PyList::empty(py);
        for k in keys {
            match k {
                Key::Int(i) => list.append(i)?,
                Key::Str(s) => list.append(&*s)?,
            }
        }
        Ok(list)
    }

    /// Counters over the whole session.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = py.detach(|| self.lock().stats());
        stats_dict(py, &stats)
    }

    /// The rows of the last push that were not run, as dicts.
    fn rejects<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for r in self.rejects.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let d = PyDict::new(py);
            d.set_item("reason", r.reason.as_str())?;
            d.set_item("row", r.row)?;
            match &r.key {
                Some(Key::Int(i)) => d.set_item("key", i)?,
                Some(Key::Str(s)) => d.set_item("key", &**s)?,
                None => d.set_item("key", py.None())?,
            }
            d.set_item("time", r.time)?;
            d.set_item("last_time", r.last_time)?;
            d.set_item("detail", &r.detail)?;
            list.append(d)?;
        }
        Ok(list)
    }

    /// Saves every key's state into the folder `path` (the checkpoint format), with the
    /// session's settings beside it.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let settings = self.settings.to_string();
        py.detach(|| -> seqflow::Result<()> {
            self.lock().save(&path)?;
            // Written as `.partial`, then renamed (never through a planted link): a crash
            // leaves the old settings or the new.
            seqflow::outfiles::write_file(&path.join("session.json"), |f| {
                use std::io::Write as _;
                f.write_all(settings.as_bytes())
            })
        })
        .map_err(to_py)
    }
}

fn stats_dict<'py>(py: Python<'py>, s: &Stats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("rows", s.rows_read)?;
    d.set_item("steps", s.steps_processed)?;
    d.set_item("predictions", s.outputs)?;
    d.set_item("keys", s.keys)?;
    d.set_item("state_bytes", s.state_bytes)?;
    let r = PyDict::new(py);
    r.set_item("late", s.late)?;
    r.set_item("duplicate", s.duplicate)?;
    r.set_item("non_finite", s.non_finite)?;
    r.set_item("malformed", s.malformed)?;
    r.set_item("key_limit", s.key_limit)?;
    d.set_item("rejects", r)?;
    Ok(d)
}

fn report_dict<'py>(py: Python<'py>, r: &RunReport) -> PyResult<Bound<'py, PyDict>> {
    let d = stats_dict(py, &r.stats)?;
    d.set_item("seconds", r.elapsed.as_secs_f64())?;
    d.set_item("workers", r.workers)?;
    d.set_item("source", &r.source)?;
    d.set_item("output", &r.output)?;
    d.set_item("rejects_file", r.rejects.as_ref().map(|(p, _)| p.clone()))?;
    d.set_item("checkpoints", r.checkpoints)?;
    d.set_item("summary", r.to_string())?;
    Ok(d)
}

/// Runs a pipeline (a file, or `text`: a pipeline as JSON, paths relative to the current
/// folder) on `workers` threads; returns its report. Ctrl-C stops it (the output is not
/// written, as with the CLI).
#[pyfunction]
#[pyo3(signature = (path=None, text=None, workers=1, input=None, output=None, resume=false, fresh=false))]
#[allow(clippy::too_many_arguments)]
fn run<'py>(
    py: Python<'py>,
    path: Option<PathBuf>,
    text: Option<String>,
    workers: usize,
    input: Option<PathBuf>,
    output: Option<PathBuf>,
    resume: bool,
    fresh: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let overrides = Overrides {
        input,
        output,
        ..Overrides::default()
    };
    let cfg = match (path, text) {
        (Some(p), None) => PipelineConfig::load(&p, &overrides).map_err(to_py)?,
        (None, Some(json)) => {
            let value: toml::Value = serde_json::from_str::<serde_json::Value>(&json)
                .map_err(|e| config_err(format!("pipeline dict: {e}")))
                .and_then(|v| {
                    toml::Value::try_from(v).map_err(|e| config_err(format!("pipeline dict: {e}")))
                })?;
            let toml = toml::to_string(&value).map_err(|e| config_err(format!("pipeline dict: {e}")))?;
            let here = std::env::current_dir()
                .map_err(|e| OutputError::new_err(e.to_string()))?
                .join("<dict>");
            PipelineConfig::parse(&toml, &here, &overrides).map_err(to_py)?
        }
        _ => return Err(config_err("run() takes a pipeline path or a dict")),
    };
    let opts = RunOptions {
        workers,
        overrides,
        resume,
        fresh,
        ..RunOptions::default()
    };
    if workers == 0 || workers > seqflow::session::MAX_WORKERS {
        let max = seqflow::session::MAX_WORKERS;
        return Err(config_err(format!("workers = {workers} must be 1 to {max}")));
    }
    let stop = opts.stop.clone();
    let handle = std::thread::Builder::new()
        .name("seqflow-run".into())
        .spawn(move || seqflow::pipeline::run_config(cfg, &opts))
        .map_err(|e| Error::new_err(format!("cannot start the run: {e}")))?;
    // The run goes on a thread of its own so that this one can hear Ctrl-C.
    while !handle.is_finished() {
        py.detach(|| std::thread::sleep(Duration::from_millis(20)));
        if let Err(e) = py.check_signals() {
            stop.store(true, Ordering::Relaxed);
            let _ = py.detach(|| handle.join());
            return Err(e);
        }
    }
    let result = handle
        .join()
        .map_err(|_| Error::new_err("the run panicked; this is a bug in seqflow"))?;
    match result.map_err(to_py)? {
        Some(r) => report_dict(py, &r),
        None => Err(Error::new_err("the run returned no report")),
    }
}

#[pymodule]
fn _seqflow(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("DataError", py.get_type::<DataError>())?;
    m.add("OutputError", py.get_type::<OutputError>())?;
    m.add("CheckpointError", py.get_type::<CheckpointError>())?;
    m.add_class::<Model>()?;
    m.add_class::<Session>()?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
