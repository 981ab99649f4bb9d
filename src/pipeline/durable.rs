//! What a pipeline does with its `[checkpoint]`: decide, before anything is written, whether
//! the run starts fresh or resumes (and from which checkpoint), what the state belongs to
//! (its [`Identity`]), and when the readers ask for the next checkpoint.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use super::collect::{Collector, Committer};
use super::config::PipelineConfig;
use super::exec::RunOptions;
use super::exec::{Checkpointing, Restore};
use super::report::Event;
use crate::checkpoint::{CheckpointConfig, Identity, Manifest, Store};
use crate::error::{Error, Result};
use crate::input::files::Plan;
use crate::model::Model;
use crate::outfiles::Outputs;
use crate::record::{KeyColumn, OutBatch};
use crate::vocab::FileFormat;
use arrow::record_batch::RecordBatch;
use std::sync::Arc;

/// What a checkpointed state belongs to: the model's bytes and the pipeline's data layout
/// and input. A resume with any of these changed would apply old state to other data.
/// `plan`: the input of a file run (live runs have none).
pub(crate) fn identity(cfg: &PipelineConfig, model: &Model, plan: Option<&Plan>) -> Result<Identity> {
    let c = &cfg.source.columns;
    let files: Vec<String> = plan.map_or_else(Vec::new, |plan| {
        plan.files
            .iter()
            .map(|f| {
                let bytes = std::fs::metadata(&f.path).map(|m| m.len()).unwrap_or(0);
                format!("{} ({bytes} bytes)", f.path.display())
            })
            .collect()
    });
    let typed = |name: &str, t: Option<&arrow::datatypes::DataType>| match t {
        Some(t) => format!("{name} ({t})"),
        None => name.to_string(),
    };
    let show = |p: &Option<std::path::PathBuf>| p.as_ref().map_or("none".into(), |p| p.display().to_string());
    let mut fields: Vec<(String, String)> = vec![
        (
            "the model (CRC-32 of its file and weights)".into(),
            crate::checkpoint::model_checksum(model)?,
        ),
        ("key".into(), typed(&c.key, plan.map(|p| &p.key_type))),
        ("time".into(), typed(&c.time, plan.map(|p| &p.time_type))),
        ("features".into(), format!("{:?}", c.features)),
        (
            "normalize".into(),
            crate::checkpoint::normalize_text(c.normalize.as_ref()),
        ),
        (
            "nan".into(),
            format!("\"{}\"", format!("{:?}", c.nan).to_lowercase()),
        ),
        ("emit".into(), crate::checkpoint::emit_text(cfg.output.emit)),
    ];
    if plan.is_some() {
        // Epochs are record batches of these files: both decide what a boundary means.
        fields.push(("batch_rows".into(), cfg.source.batch_rows.to_string()));
        fields.push(("input files".into(), files.join(", ")));
    }
    fields.extend([
        (
            "output".into(),
            format!(
                "{} ({})",
                show(&cfg.output.file.path),
                cfg.output.file.format.name()
            ),
        ),
        ("rejects".into(), show(&cfg.source.rejects)),
    ]);
    Ok(Identity { fields })
}

/// Opens the pipeline's checkpoint folder for this run: `--fresh` empties it; `--resume`
/// picks the newest complete, undamaged checkpoint (saying which newer ones were skipped
/// and why) and refuses one of another model or layout; without either, a folder that
/// holds a checkpoint is refused, so that an unfinished run is never silently started over.
pub(crate) fn open(
    c: &CheckpointConfig,
    opts: &RunOptions,
    ours: &Identity,
) -> Result<(Store, Option<Manifest>)> {
    let store = Store::new(&c.dir);
    if opts.fresh && opts.process == 0 {
        store.discard_all()?;
    }
    if !opts.resume {
        // With --fresh, process 0 empties the folder; the others must not race it.
        if opts.fresh {
            return Ok((store, None));
        }
        if let Some((_, d)) = store
            .folders()
            .into_iter()
            .rev()
            .find(|(_, d)| d.join("manifest.json").is_file())
        {
            return Err(Error::Checkpoint {
                path: c.dir.clone(),
                msg: format!(
                    "holds a checkpoint of an unfinished run ({}); run with --resume to continue it, or \
                     --fresh to discard it and start over",
                    d.display()
                ),
            });
        }
        // Unfinished checkpoints of an earlier run hold nothing committed.
        if opts.process == 0 {
            store.discard_all()?;
        }
        return Ok((store, None));
    }
    let Some((m, damaged)) = store.latest()? else {
        (opts.observer)(&Event::Warning(&format!(
            "--resume: {} holds no complete checkpoint; starting from the beginning",
            c.dir.display()
        )));
        if opts.process == 0 {
            store.discard_all()?;
        }
        return Ok((store, None));
    };
    for d in &damaged {
        (opts.observer)(&Event::Warning(&format!(
            "checkpoint {} is not usable ({}); resuming from the one before it, {}",
            d.dir.display(),
            d.why,
            store.folder(m.boundary).display()
        )));
    }
    if let Some(diff) = m.identity.difference(ours) {
        return Err(Error::Checkpoint {
            path: store.folder(m.boundary),
            msg: format!(
                "belongs to another pipeline or model: {diff}; resume with the pipeline, model and data it \
                 was made with, or run with --fresh to start over"
            ),
        });
    }
    Ok((store, Some(m)))
}

/// Ends a run's files. Success: a file run's checkpoints are removed first (the output is
/// whole; a crash between the two then leaves partial outputs and no checkpoint, which a
/// resume starts over, never a checkpoint whose partial outputs are gone), a live run's are
/// kept (its state goes on in the next run), and the outputs are renamed into place.
/// Failure: a checkpointed run that committed a checkpoint keeps its partial outputs for
/// `--resume` and says so; otherwise they are removed.
pub(crate) fn settle<T>(
    outputs: &Outputs,
    checkpoint: Option<&CheckpointConfig>,
    opts: &RunOptions,
    run: Result<T>,
    completes: bool,
    output: Option<&std::path::Path>,
) -> Result<T> {
    match run {
        Ok(r) => {
            if let (Some(c), true, 0) = (checkpoint, completes, opts.process) {
                Store::new(&c.dir).discard_all()?;
            }
            outputs.commit()?;
            // A resumed Parquet output's copied source is no longer needed by anything.
            if let (Some(p), Some(_), 0) = (output, checkpoint, opts.process) {
                remove_resume_sources(p);
            }
            Ok(r)
        }
        Err(e) => {
            let last = checkpoint.and_then(|c| Some((c, Store::new(&c.dir).latest().ok().flatten()?.0)));
            match last {
                // Only a run that started has something to continue.
                Some((c, m)) if matches!(e, Error::Runtime(_)) => {
                    outputs.discard();
                    Err(Error::Runtime(format!(
                        "{e}. The last checkpoint ({}) and the partial outputs are kept: run with --resume to \
                         continue from there, or --fresh to start over",
                        Store::new(&c.dir).folder(m.boundary).display()
                    )))
                }
                Some(_) => {
                    outputs.discard();
                    Err(e)
                }
                None => {
                    outputs.remove_all();
                    Err(e)
                }
            }
        }
    }
}

/// Removes `PATH.partial.resume-g*` files of an output.
pub(crate) fn remove_resume_sources(path: &std::path::Path) {
    let partial = crate::outfiles::partial_path(path);
    let (Some(dir), Some(name)) = (partial.parent(), partial.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.resume-g", name.to_string_lossy());
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// A run's checkpointing, decided before anything is written: where checkpoints go, what
/// the state belongs to, and the checkpoint the run resumes from.
pub(crate) struct Prepared {
    pub config: CheckpointConfig,
    pub store: Store,
    pub identity: Identity,
    pub resume: Option<Arc<Manifest>>,
}

/// The run's [`Prepared`] checkpointing (`None` without `[checkpoint]`); `plan`: the input
/// of a file run. `--resume` without `[checkpoint]` is refused.
pub(crate) fn prepare(
    cfg: &PipelineConfig,
    model: &Model,
    plan: Option<&Plan>,
    opts: &RunOptions,
) -> Result<Option<Prepared>> {
    let Some(c) = &cfg.checkpoint else {
        if opts.resume {
            return Err(Error::PipelineConfig {
                path: cfg.path.clone(),
                msg: "--resume needs a [checkpoint] section (dir = ...) in the pipeline".into(),
            });
        }
        return Ok(None);
    };
    let identity = identity(cfg, model, plan)?;
    let (store, resume) = open(c, opts, &identity)?;
    // A run that starts over has no use for an earlier resume's copied rows.
    if let (None, Some(p), 0) = (&resume, &cfg.output.file.path, opts.process) {
        remove_resume_sources(p);
    }
    Ok(Some(Prepared {
        config: c.clone(),
        store,
        identity,
        resume: resume.map(Arc::new),
    }))
}

impl Prepared {
    /// Each view changelog's committed length, when resuming.
    pub fn view_bytes(&self) -> Option<Vec<u64>> {
        self.resume
            .as_ref()
            .map(|m| m.views.iter().map(|v| v.bytes).collect())
    }

    /// The checkpoint resumed from and the rows that were in it (for the report).
    pub fn resumed(&self) -> Option<(PathBuf, u64)> {
        self.resume
            .as_ref()
            .map(|m| (self.store.folder(m.boundary), m.stats.rows_read))
    }

    /// What the executor needs: where parts go and what they restore from.
    pub fn checkpointing(&self) -> Checkpointing {
        Checkpointing {
            store: self.store.clone(),
            resume: self.resume.clone(),
        }
    }

    /// Worker 0's side: the committer (with the views' changelogs), and for a resumed run
    /// the counters so far, which Parquet generation the output continues, and the epoch
    /// before which view changes only rebuild the views.
    pub fn attach(&self, c: &mut Collector, workers: usize, cfg: &PipelineConfig) {
        let mut committer = Committer::new(
            self.store.clone(),
            self.config.keep,
            workers,
            self.identity.clone(),
            cfg.output.file.path.clone(),
        );
        committer.rejects = cfg.source.rejects.clone();
        if let Some(v) = &c.views {
            committer.views = v.paths();
        }
        if let Some(m) = &self.resume {
            c.stats = m.stats.clone();
            // A partition this run does not read from (idle) keeps its checkpointed offset.
            if let Some(k) = &m.kafka {
                c.offsets = k.partitions.iter().map(|o| (o.partition, *o)).collect();
            }
            // A gauge, not a counter: this run's workers report their own.
            c.stats.state_bytes = 0;
            if c.views.is_some() {
                c.restored_before = m.boundary;
            }
            if let Some(o) = &m.output {
                // A resumed Parquet output is a new file, one generation up.
                if cfg.output.file.format == FileFormat::Parquet {
                    committer.generation = o.generation + 1;
                    committer.resume_source = Some(crate::sink::resume_source(&o.path, o.generation));
                } else {
                    committer.generation = o.generation;
                }
            }
        }
        c.checkpoint = Some(committer);
    }
}

/// The output of a resumed run, continued from the checkpoint's commit point.
pub(crate) fn resumed_sink(
    cfg: &PipelineConfig,
    store: &Store,
    m: &Manifest,
    schema: crate::sink::OutputSchema,
    outputs: &Outputs,
) -> Result<Option<crate::sink::Sink>> {
    let Some(o) = &m.output else { return Ok(None) };
    let point = crate::sink::CommitPoint {
        bytes: o.bytes,
        rows: o.rows,
        footer: store.footer(m)?,
        int_keys: o.int_keys,
    };
    crate::sink::Sink::resume(&cfg.output.file, schema, outputs, &point, o.generation).map(Some)
}

/// Reads back every prediction a checkpoint's output holds (its committed bytes), batch by
/// batch: a resumed run rebuilds its views from them.
pub(crate) fn restore_from_output(
    cfg: &PipelineConfig,
    m: &Manifest,
    schema: arrow::datatypes::SchemaRef,
) -> Option<Arc<Restore>> {
    let o = m.output.clone()?;
    let format = cfg.output.file.format;
    Some(Arc::new(move |emit: &mut dyn FnMut(OutBatch)| {
        let path = match format {
            FileFormat::Parquet => crate::sink::resume_source(&o.path, o.generation),
            _ => crate::outfiles::partial_path(&o.path),
        };
        let err = |e: &dyn std::fmt::Display| Error::Data {
            path: path.clone(),
            msg: format!("reading the committed predictions back for the views: {e}"),
        };
        let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        let batches: Box<dyn Iterator<Item = std::result::Result<RecordBatch, arrow::error::ArrowError>>> =
            match format {
                FileFormat::Parquet => {
                    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
                    let options = ArrowReaderOptions::new().with_schema(schema.clone());
                    Box::new(
                        ParquetRecordBatchReaderBuilder::try_new_with_options(f, options)
                            .map_err(|e| err(&e))?
                            .build()
                            .map_err(|e| err(&e))?,
                    )
                }
                FileFormat::Csv => Box::new(
                    arrow::csv::ReaderBuilder::new(schema.clone())
                        .with_header(true)
                        .build(std::io::Read::take(f, o.bytes))
                        .map_err(|e| err(&e))?,
                ),
                FileFormat::Jsonl => Box::new(
                    arrow::json::ReaderBuilder::new(schema.clone())
                        .build(std::io::BufReader::new(std::io::Read::take(f, o.bytes)))
                        .map_err(|e| err(&e))?,
                ),
                // Refused at load: an Arrow output is not checkpointed.
                FileFormat::Arrow => return Err(err(&"an Arrow output has no checkpoint")),
            };
        for b in batches {
            let b = b.map_err(|e| err(&e))?;
            emit(out_batch(&b).map_err(|e| err(&e))?);
        }
        Ok(())
    }))
}

/// An output record batch (key, time, one float32 column per output) as an `OutBatch`.
fn out_batch(b: &RecordBatch) -> std::result::Result<OutBatch, arrow::error::ArrowError> {
    use arrow::array::{Array, AsArray};
    use arrow::compute::cast;
    use arrow::datatypes::{DataType, Float32Type, Int64Type, UInt64Type};
    let key = b.column(0);
    let keys = match key.data_type() {
        DataType::UInt64 => KeyColumn::Int(
            key.as_primitive::<UInt64Type>()
                .values()
                .iter()
                .map(|&k| k as i64)
                .collect(),
        ),
        t if t.is_integer() => KeyColumn::Int(
            cast(key, &DataType::Int64)?
                .as_primitive::<Int64Type>()
                .values()
                .to_vec(),
        ),
        _ => {
            let s = cast(key, &DataType::Utf8)?;
            let s = s.as_string::<i32>();
            let mut c = KeyColumn::empty_str();
            for i in 0..s.len() {
                c.push(crate::record::KeyRef::Str(s.value(i)));
            }
            c
        }
    };
    let time = b.column(1);
    let time = match time.data_type() {
        DataType::Date32 => cast(&cast(time, &DataType::Int32)?, &DataType::Int64)?,
        _ => cast(time, &DataType::Int64)?,
    };
    let width = b.num_columns() - 2;
    let mut out = OutBatch::new(keys, width);
    out.times = time.as_primitive::<Int64Type>().values().to_vec();
    let cols: Vec<_> = (2..b.num_columns())
        .map(|j| b.column(j).as_primitive::<Float32Type>())
        .collect();
    out.values.reserve(b.num_rows() * width);
    for i in 0..b.num_rows() {
        out.values.extend(cols.iter().map(|c| c.value(i)));
    }
    Ok(out)
}

/// When the readers of one process ask for a checkpoint: every `every_ms`, or every
/// `every_epochs` batches read by the process. Shared by the process's readers, so one of
/// them asks per interval.
pub(crate) struct MarkClock {
    every_ms: Option<u64>,
    every_epochs: Option<u64>,
    state: Mutex<(Instant, u64)>,
}

impl MarkClock {
    pub fn new(c: &CheckpointConfig) -> MarkClock {
        MarkClock {
            every_ms: c.every_ms,
            every_epochs: c.every_epochs,
            state: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Counts one batch read; true when a checkpoint is due (and restarts the count).
    pub fn due(&self) -> bool {
        let mut s = self.state.lock().expect("mark clock");
        s.1 += 1;
        let due = self.every_epochs.is_some_and(|n| s.1 >= n)
            || self
                .every_ms
                .is_some_and(|ms| s.0.elapsed().as_millis() as u64 >= ms);
        if due {
            *s = (Instant::now(), 0);
        }
        due
    }
}
