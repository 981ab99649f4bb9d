//! Output: predictions as Parquet (written incrementally in row groups), CSV or JSON lines,
//! to a file or stdout; and the rejects file (JSON lines).
//!
//! Output rows are: the key column (same name and Arrow type as the input), the time column
//! (same name and type), then one Float32 column per model output. One file is written, by
//! worker 0 of process 0, whatever the worker count. Every file is written as `PATH.partial`
//! and renamed into place only when the whole run succeeded (`outfiles`), so a failed or
//! interrupted run never leaves a file that looks complete.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int64Array, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::{Error, Result};
use crate::outfiles::Outputs;
use crate::parquet_out::{Layout, PredictionWriter};
use crate::record::{KeyColumn, OutBatch, Reject};
use crate::vocab::FileFormat;

/// Where and how predictions are written.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputFile {
    /// The file format.
    pub format: FileFormat,
    /// `None` = stdout (`path = "-"`).
    pub path: Option<PathBuf>,
    /// Parquet rows per row group (buffered in memory until full).
    pub row_group_rows: usize,
    /// Parquet compression (of each prediction column only where it pays: `parquet_out`).
    pub compression: crate::vocab::Compression,
    /// Parquet: min/max statistics for the prediction columns too (the key and time columns
    /// always have them, for readers that skip row groups by key or time).
    pub statistics: bool,
}

/// Names and types of the output columns.
#[derive(Debug, Clone)]
pub struct OutputSchema {
    /// The key column's name (the input's).
    pub key_name: String,
    /// The key column's type (the input's).
    pub key_type: DataType,
    /// The time column's name (the input's).
    pub time_name: String,
    /// The time column's type (the input's).
    pub time_type: DataType,
    /// One name per model output.
    pub names: Vec<String>,
}

impl OutputSchema {
    /// The Arrow schema of the output.
    pub fn arrow(&self) -> SchemaRef {
        let mut fields = vec![
            Field::new(&self.key_name, self.key_type.clone(), false),
            Field::new(&self.time_name, self.time_type.clone(), false),
        ];
        fields.extend(self.names.iter().map(|n| Field::new(n, DataType::Float32, false)));
        Arc::new(Schema::new(fields))
    }
}

/// What the text writers' byte stream met: the first error, or a closed pipe.
#[derive(Debug, Default)]
struct Health {
    error: Option<std::io::Error>,
    closed: bool,
}

/// The byte stream under the CSV and JSON-lines encoders. It never fails to them (arrow's
/// CSV writer panics in `into_inner` after a failed write): the first error is kept for the
/// sink to report with the path (a full disk, an I/O error), and a closed pipe (a reader such
/// as `head` went away) ends the output quietly, as it ends `cat`'s.
struct Checked {
    inner: Box<dyn Write + Send>,
    health: Arc<std::sync::Mutex<Health>>,
}

impl Checked {
    fn new(inner: Box<dyn Write + Send>) -> (Checked, Arc<std::sync::Mutex<Health>>) {
        let health = Arc::new(std::sync::Mutex::new(Health::default()));
        (
            Checked {
                inner,
                health: health.clone(),
            },
            health,
        )
    }

    fn absorb(&mut self, r: std::io::Result<usize>, n: usize) -> std::io::Result<usize> {
        let mut h = self.health.lock().expect("health");
        match r {
            Ok(k) => Ok(k),
            Err(e) if crate::outfiles::is_broken_pipe(&e) => {
                h.closed = true;
                Ok(n)
            }
            Err(e) => {
                h.error.get_or_insert(e);
                Ok(n)
            }
        }
    }
}

impl Write for Checked {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        {
            let h = self.health.lock().expect("health");
            if h.closed || h.error.is_some() {
                return Ok(buf.len());
            }
        }
        let r = self.inner.write(buf);
        self.absorb(r, buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        {
            let h = self.health.lock().expect("health");
            if h.closed || h.error.is_some() {
                return Ok(());
            }
        }
        let r = self.inner.flush().map(|_| 0);
        self.absorb(r, 0).map(|_| ())
    }
}

enum Writer {
    Parquet(Box<PredictionWriter>),
    Csv(Box<arrow::csv::Writer<Box<dyn Write + Send>>>),
    Json(arrow::json::LineDelimitedWriter<Box<dyn Write + Send>>),
    /// Arrow IPC file format (to a file: the footer makes it seekable).
    ArrowFile(Box<arrow::ipc::writer::FileWriter<Box<dyn Write + Send>>>),
    /// Arrow IPC stream format (to stdout: readable as it comes, flushed every epoch).
    ArrowStream(Box<arrow::ipc::writer::StreamWriter<Box<dyn Write + Send>>>),
}

/// The prediction writer.
pub struct Sink {
    schema: OutputSchema,
    arrow_schema: SchemaRef,
    writer: Option<Writer>,
    /// The text writers' stream health (Parquet reports its own errors).
    health: Option<Arc<std::sync::Mutex<Health>>>,
    display: PathBuf,
    /// A second handle on the output file: synced and measured at checkpoints.
    file: Option<File>,
    /// An output that will replace an existing file when the run commits: the bytes of it
    /// sent to disk so far. ext4 writes a file renamed over another out before the rename
    /// returns (`auto_da_alloc`), and a run's whole output at once was a stall at its end
    /// (0.38 s for 525 MB of Parquet, a third of the run), so such a file is sent to disk
    /// as it grows. A new name costs nothing at the rename, and the kernel writes the file
    /// out after the run: nothing is sent early then (`None`).
    early: Option<u64>,
    /// Rows written.
    pub rows: u64,
}

/// A replacing output is sent to disk in whole pages, this many bytes at least: a live run
/// writes a little every epoch, and a page sent while half written is dirtied (and waited
/// on) again.
const SEND_BYTES: u64 = 8 << 20;

/// What a checkpoint records of an output: its committed length and rows, and for Parquet
/// the footer that makes those bytes a complete file.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitPoint {
    /// Bytes of the file that are committed (synced).
    pub bytes: u64,
    /// Rows in them.
    pub rows: u64,
    /// Parquet: metadata, its length and the magic, to append after `bytes`.
    pub footer: Option<Vec<u8>>,
    /// Whether the output's keys are integers (`None`: not a predictions output).
    pub int_keys: Option<bool>,
}

/// The name of a Parquet output's committed bytes, closed by their footer, while a resumed
/// run copies them into a new file: `PATH.partial.resume-gN`, N the checkpoint's output
/// generation. It is removed once a checkpoint of the new file is committed.
pub fn resume_source(path: &Path, generation: u32) -> PathBuf {
    let mut s = crate::outfiles::partial_path(path).into_os_string();
    s.push(format!(".resume-g{generation}"));
    PathBuf::from(s)
}

fn out_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Output {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

impl Sink {
    /// Opens the output: stdout, or `PATH.partial` registered with `outputs` (renamed into
    /// place when the run succeeds).
    pub fn create(cfg: &OutputFile, schema: OutputSchema, outputs: &Outputs) -> Result<Sink> {
        let file = cfg.path.as_ref().map(|p| outputs.create(p)).transpose()?;
        Self::open(cfg, schema, file, true)
    }

    /// Continues the output of an interrupted run from a checkpoint's commit point: CSV
    /// and JSON lines are cut back to the committed bytes and written on; Parquet's
    /// committed bytes are closed with the checkpoint's footer (as
    /// [`resume_source`]) and their rows copied into a new file, which goes on from there.
    pub fn resume(
        cfg: &OutputFile,
        schema: OutputSchema,
        outputs: &Outputs,
        commit: &CommitPoint,
        generation: u32,
    ) -> Result<Sink> {
        let path = cfg
            .path
            .as_ref()
            .ok_or_else(|| Error::Runtime("a checkpointed output is a file".into()))?;
        let mut sink = match cfg.format {
            FileFormat::Parquet => {
                let source = resume_source(path, generation);
                if !source.exists() {
                    let mut f = crate::outfiles::reopen_partial(path, commit.bytes, outputs.reclaims())?;
                    let footer = commit.footer.as_deref().unwrap_or_default();
                    f.write_all(footer)
                        .and_then(|_| f.sync_all())
                        .map_err(|e| Error::io(crate::outfiles::partial_path(path), e))?;
                    drop(f);
                    std::fs::rename(crate::outfiles::partial_path(path), &source)
                        .map_err(|e| Error::io(&source, e))?;
                }
                let file = outputs.create(path)?;
                let mut sink = Self::open(cfg, schema, Some(file), true)?;
                sink.copy_from(&source)?;
                sink
            }
            FileFormat::Arrow => {
                return Err(out_err(
                    path,
                    "an Arrow output cannot be resumed from a checkpoint",
                ));
            }
            FileFormat::Csv | FileFormat::Jsonl => {
                let file = outputs.adopt(path, commit.bytes)?;
                let mut sink = Self::open(cfg, schema, Some(file), commit.bytes == 0)?;
                sink.rows = commit.rows;
                // The committed bytes were synced with the checkpoint: not sent again.
                sink.early = sink.early.map(|_| commit.bytes & !4095);
                sink
            }
        };
        if sink.rows != commit.rows {
            return Err(out_err(
                path,
                format!(
                    "the checkpoint committed {} rows but the partial output holds {}; run with --fresh to start over",
                    commit.rows, sink.rows
                ),
            ));
        }
        sink.rows = commit.rows;
        Ok(sink)
    }

    /// Copies every row of a Parquet file (a checkpoint's committed output) into this sink.
    fn copy_from(&mut self, source: &Path) -> Result<()> {
        use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
        let err = |e: &dyn std::fmt::Display| out_err(source, format!("reading the committed output: {e}"));
        let f = File::open(source).map_err(|e| Error::io(source, e))?;
        let options = ArrowReaderOptions::new().with_schema(self.arrow_schema.clone());
        let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(f, options)
            .map_err(|e| err(&e))?
            .with_batch_size(1 << 16)
            .build()
            .map_err(|e| err(&e))?;
        for batch in reader {
            let batch = batch.map_err(|e| err(&e))?;
            let n = batch.num_rows() as u64;
            let path = self.display.clone();
            match self.writer.as_mut().expect("sink is open") {
                Writer::Parquet(w) => w.write_batch(&batch).map_err(|e| out_err(&path, e))?,
                _ => unreachable!("parquet"),
            }
            self.rows += n;
        }
        Ok(())
    }

    fn open(cfg: &OutputFile, schema: OutputSchema, file: Option<File>, header: bool) -> Result<Sink> {
        let arrow_schema = schema.arrow();
        let display = cfg.path.clone().unwrap_or_else(|| PathBuf::from("-"));
        let sync = match &file {
            Some(f) => Some(f.try_clone().map_err(|e| Error::io(&display, e))?),
            None => None,
        };
        let mut health = None;
        let raw = |file: Option<File>| -> Box<dyn Write + Send> {
            match file {
                Some(f) => Box::new(f),
                None => Box::new(std::io::stdout()),
            }
        };
        let writer = match cfg.format {
            FileFormat::Parquet => {
                let Some(f) = file else {
                    unreachable!("the pipeline config refuses parquet on stdout")
                };
                let layout = Layout {
                    row_group_rows: cfg.row_group_rows,
                    codec: cfg.compression,
                    statistics: cfg.statistics,
                };
                let w = PredictionWriter::new(f, arrow_schema.clone(), layout)
                    .map_err(|e| out_err(&display, e))?;
                Writer::Parquet(Box::new(w))
            }
            FileFormat::Csv => {
                // Unbuffered: arrow's CSV writer pushes every batch through to it anyway.
                let (raw, h) = Checked::new(raw(file));
                health = Some(h);
                let raw: Box<dyn Write + Send> = Box::new(raw);
                Writer::Csv(Box::new(
                    arrow::csv::WriterBuilder::new().with_header(header).build(raw),
                ))
            }
            FileFormat::Jsonl => {
                let (raw, h) = Checked::new(raw(file));
                health = Some(h);
                let raw: Box<dyn Write + Send> = Box::new(BufWriter::with_capacity(1 << 20, raw));
                Writer::Json(arrow::json::LineDelimitedWriter::new(raw))
            }
            FileFormat::Arrow => {
                let to_file = file.is_some();
                let (raw, h) = Checked::new(raw(file));
                health = Some(h);
                let raw: Box<dyn Write + Send> = Box::new(BufWriter::with_capacity(1 << 20, raw));
                match to_file {
                    true => Writer::ArrowFile(Box::new(
                        arrow::ipc::writer::FileWriter::try_new(raw, &arrow_schema)
                            .map_err(|e| out_err(&display, e))?,
                    )),
                    false => Writer::ArrowStream(Box::new(
                        arrow::ipc::writer::StreamWriter::try_new(raw, &arrow_schema)
                            .map_err(|e| out_err(&display, e))?,
                    )),
                }
            }
        };
        Ok(Sink {
            schema,
            arrow_schema,
            writer: Some(writer),
            health,
            display,
            // Anything at the path, a dangling link too, is replaced by the rename.
            early: (sync.is_some()
                && cfg
                    .path
                    .as_ref()
                    .is_some_and(|p| std::fs::symlink_metadata(p).is_ok()))
            .then_some(0),
            file: sync,
            rows: 0,
        })
    }

    /// Pushes everything so far to the file (Parquet: as a row group) and says how much of
    /// the file that is, with a handle to sync it by: what a checkpoint commits.
    pub fn mark_point(&mut self) -> Result<(CommitPoint, File)> {
        self.flush()?;
        let path = self.display.clone();
        let footer = match self.writer.as_mut().expect("sink is open") {
            Writer::Parquet(w) => {
                w.sync().map_err(|e| out_err(&path, e))?;
                Some(w.footer().map_err(|e| out_err(&path, e))?)
            }
            _ => None,
        };
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| out_err(&path, "stdout cannot be checkpointed"))?;
        let bytes = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let handle = file.try_clone().map_err(|e| Error::io(&path, e))?;
        Ok((
            CommitPoint {
                bytes,
                rows: self.rows,
                footer,
                int_keys: Some(self.schema.key_type.is_integer()),
            },
            handle,
        ))
    }

    /// The path users see in messages (`-` for stdout).
    pub fn path(&self) -> &Path {
        &self.display
    }

    /// The output's names and types.
    pub fn schema(&self) -> &OutputSchema {
        &self.schema
    }

    /// The output's Arrow schema.
    pub fn arrow_schema(&self) -> SchemaRef {
        self.arrow_schema.clone()
    }

    /// A sink that writes nothing and encodes: [`Sink::json_lines`] (the MQTT output).
    pub fn encoder(schema: OutputSchema) -> Sink {
        let arrow_schema = schema.arrow();
        Sink {
            schema,
            arrow_schema,
            writer: None,
            health: None,
            display: PathBuf::from("-"),
            file: None,
            early: None,
            rows: 0,
        }
    }

    /// Predictions as JSON lines, one object per prediction in batch order, exactly as a
    /// JSON-lines output writes them.
    pub fn json_lines(&self, b: &OutBatch) -> Result<Vec<u8>> {
        let rb = self.to_record_batch(b)?;
        let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
        w.write(&rb).map_err(|e| out_err(&self.display, e))?;
        w.finish().map_err(|e| out_err(&self.display, e))?;
        Ok(w.into_inner())
    }

    /// Converts predictions to an Arrow batch with the output schema.
    pub fn to_record_batch(&self, b: &OutBatch) -> Result<RecordBatch> {
        record_batch(&self.schema, &self.arrow_schema, &self.display, b)
    }

    /// The first error the text stream met, with the path.
    fn checked(&self, r: Result<()>) -> Result<()> {
        r?;
        match self
            .health
            .as_ref()
            .and_then(|h| h.lock().expect("health").error.take())
        {
            Some(e) => Err(Error::io(&self.display, e)),
            None => Ok(()),
        }
    }

    /// Appends predictions.
    pub fn write(&mut self, b: &OutBatch) -> Result<()> {
        if b.is_empty() {
            return Ok(());
        }
        let r = self.write_batch(b);
        self.checked(r)?;
        self.send_early();
        Ok(())
    }

    /// A replacing output's bytes written since the last send, to disk (see `early`).
    fn send_early(&mut self) {
        let (Some(sent), Some(file)) = (self.early.as_mut(), self.file.as_ref()) else {
            return;
        };
        let Ok(meta) = file.metadata() else { return };
        let end = meta.len() & !4095;
        if end >= *sent + SEND_BYTES {
            crate::outfiles::send_to_disk(file, *sent, end - *sent);
            *sent = end;
        }
    }

    fn write_batch(&mut self, b: &OutBatch) -> Result<()> {
        let (schema, display) = (&self.schema, &self.display);
        let batch = || record_batch(schema, &self.arrow_schema, display, b);
        let err = |e: arrow::error::ArrowError| out_err(display, e);
        match self.writer.as_mut().expect("sink is open") {
            // Straight into the row group's columns: no Arrow batch of predictions.
            Writer::Parquet(w) => {
                let (keys, times) = key_time(schema, display, b)?;
                w.write(&keys, &times, &b.values[..b.len() * b.width])
                    .map_err(|e| out_err(display, e))?
            }
            Writer::Csv(w) => w.write(&batch()?).map_err(err)?,
            Writer::Json(w) => w.write(&batch()?).map_err(err)?,
            Writer::ArrowFile(w) => w.write(&batch()?).map_err(err)?,
            Writer::ArrowStream(w) => w.write(&batch()?).map_err(err)?,
        }
        self.rows += b.len() as u64;
        Ok(())
    }

    /// Pushes buffered rows to the file or terminal (live runs call this every epoch).
    /// Parquet rows are flushed as a row group.
    pub fn flush(&mut self) -> Result<()> {
        let path = self.display.clone();
        let r = match self.writer.as_mut().expect("sink is open") {
            Writer::Parquet(w) => w.flush().map_err(|e| out_err(&path, e)),
            // arrow's CSV writer pushes each batch through to its (unbuffered) writer.
            Writer::Csv(_) => Ok(()),
            Writer::Json(w) => w.get_mut().flush().map_err(|e| Error::io(&path, e)),
            Writer::ArrowFile(w) => w.flush().map_err(|e| out_err(&path, e)),
            Writer::ArrowStream(w) => w.flush().map_err(|e| out_err(&path, e)),
        };
        self.checked(r)?;
        self.send_early();
        Ok(())
    }

    /// Closes the file (Parquet footer written). It stays `PATH.partial` until the run's
    /// [`Outputs`] are committed.
    pub fn close(&mut self) -> Result<()> {
        let path = self.display.clone();
        if self.rows == 0 {
            // No rows: a CSV still says its columns (Parquet writes its schema anyway).
            if let Some(Writer::Csv(w)) = self.writer.as_mut() {
                let empty = RecordBatch::new_empty(self.arrow_schema.clone());
                let r = w.write(&empty).map_err(|e| out_err(&path, e));
                self.checked(r)?;
            }
        }
        let r = match self.writer.take() {
            None => Ok(()),
            Some(Writer::Parquet(w)) => w.close().map_err(|e| out_err(&path, e)),
            Some(Writer::Csv(w)) => w.into_inner().flush().map_err(|e| Error::io(&path, e)),
            Some(Writer::Json(mut w)) => w
                .finish()
                .map_err(|e| out_err(&path, e))
                .and_then(|_| w.into_inner().flush().map_err(|e| Error::io(&path, e))),
            Some(Writer::ArrowFile(mut w)) => w
                .finish()
                .map_err(|e| out_err(&path, e))
                .and_then(|_| w.get_mut().flush().map_err(|e| Error::io(&path, e))),
            Some(Writer::ArrowStream(mut w)) => w
                .finish()
                .map_err(|e| out_err(&path, e))
                .and_then(|_| w.get_mut().flush().map_err(|e| Error::io(&path, e))),
        };
        self.checked(r)
    }
}

/// Predictions as an Arrow batch of the output's schema (`display` names the output in
/// errors).
fn record_batch(
    schema: &OutputSchema,
    arrow_schema: &SchemaRef,
    display: &Path,
    b: &OutBatch,
) -> Result<RecordBatch> {
    let (keys, times) = key_time(schema, display, b)?;
    let mut cols = vec![keys, times];
    let columns = crate::kernels::transpose::columns(&b.values, b.len(), b.width);
    cols.extend(
        columns
            .into_iter()
            .map(|c| Arc::new(Float32Array::from(c)) as ArrayRef),
    );
    RecordBatch::try_new(arrow_schema.clone(), cols).map_err(|e| out_err(display, e))
}

/// The key and time columns of predictions, cast back to the input's types.
fn key_time(schema: &OutputSchema, display: &Path, b: &OutBatch) -> Result<(ArrayRef, ArrayRef)> {
    let err = |e: arrow::error::ArrowError| out_err(display, e);
    let keys: ArrayRef = match &b.keys {
        KeyColumn::Int(v) => Arc::new(Int64Array::from(v.clone())),
        KeyColumn::Str { offsets, bytes } => Arc::new(StringArray::from_iter_values(
            offsets.windows(2).map(|w| &bytes[w[0] as usize..w[1] as usize]),
        )),
    };
    let keys = match (&schema.key_type, &b.keys) {
        // u64 keys past i64::MAX travel as their bits.
        (DataType::UInt64, KeyColumn::Int(v)) => Arc::new(arrow::array::UInt64Array::from_iter_values(
            v.iter().map(|&k| k as u64),
        )) as ArrayRef,
        (t, _) => cast(&keys, t).map_err(err)?,
    };
    let times: ArrayRef = Arc::new(Int64Array::from(b.times.clone()));
    let times = match &schema.time_type {
        DataType::Date32 => {
            cast(&cast(&times, &DataType::Int32).map_err(err)?, &DataType::Date32).map_err(err)?
        }
        t => cast(&times, t).map_err(err)?,
    };
    Ok((keys, times))
}

/// The rejects file: one JSON object per rejected step.
pub struct RejectsWriter {
    path: PathBuf,
    out: BufWriter<File>,
    /// Rejects written.
    pub count: u64,
}

impl RejectsWriter {
    /// Creates (truncates) the rejects file.
    pub fn create(path: &Path, outputs: &Outputs) -> Result<RejectsWriter> {
        let f = outputs.create(path)?;
        Ok(RejectsWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(f),
            count: 0,
        })
    }

    /// Writes one reject; `source_name` names the file or connection it came from, and
    /// `place` the row or line.
    pub fn write(&mut self, r: &Reject, source_name: &str, place: &str) -> Result<()> {
        let key = match &r.key {
            Some(crate::record::Key::Int(i)) => serde_json::Value::from(*i),
            Some(crate::record::Key::Str(s)) => serde_json::Value::from(&**s),
            None => serde_json::Value::Null,
        };
        let v = serde_json::json!({
            "reason": r.reason.as_str(),
            "source": source_name,
            "at": place,
            "key": key,
            "time": r.time,
            "last_time": r.last_time,
            "detail": r.detail,
        });
        writeln!(self.out, "{v}").map_err(|e| Error::io(&self.path, e))?;
        self.count += 1;
        Ok(())
    }

    /// Pushes buffered rejects to the file.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))
    }

    /// The rejects file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Continues the rejects file of an interrupted run, cut back to what the checkpoint
    /// committed.
    pub fn resume(path: &Path, outputs: &Outputs, bytes: u64, count: u64) -> Result<RejectsWriter> {
        let f = outputs.adopt(path, bytes)?;
        Ok(RejectsWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(f),
            count,
        })
    }

    /// Pushes everything to the file and says how much that is, with a handle to sync it.
    pub fn mark_point(&mut self) -> Result<(CommitPoint, File)> {
        self.flush()?;
        let f = self.out.get_ref();
        let bytes = f.metadata().map_err(|e| Error::io(&self.path, e))?.len();
        let handle = f.try_clone().map_err(|e| Error::io(&self.path, e))?;
        Ok((
            CommitPoint {
                bytes,
                rows: self.count,
                footer: None,
                int_keys: None,
            },
            handle,
        ))
    }
}

/// What worker 0 asks of the writer thread.
enum Cmd {
    Write(OutBatch),
    /// Flush and report the first error so far (if any) on the enclosed channel.
    Flush(crossbeam_channel::Sender<Option<String>>),
    /// Push what is written to the file (a checkpoint) and report the commit point.
    Commit(crossbeam_channel::Sender<std::result::Result<(CommitPoint, File), String>>),
    /// Write what is queued and finish the file: the end of a run that went well. (A
    /// channel that ends without it abandons the file unfinished, as a dropped [`Sink`]
    /// is: no CSV header or Parquet footer written after a failure.)
    Close,
}

/// A [`Sink`] on its own thread. Worker 0 hands each batch over a bounded channel and goes
/// back to computing; building Arrow columns and encoding Parquet/CSV/JSON happen on the
/// writer thread. (On one thread, encoding a wide output was worker 0's largest cost and
/// kept `-w 2` from scaling.) Errors surface at the next flush or at close.
pub struct BackgroundSink {
    tx: Option<crossbeam_channel::Sender<Cmd>>,
    thread: Option<std::thread::JoinHandle<Result<u64>>>,
    display: PathBuf,
}

impl BackgroundSink {
    /// Batches in flight to the writer: enough to overlap, little enough to bound memory.
    const QUEUE: usize = 4;

    /// Moves `sink` to a new writer thread.
    pub fn spawn(mut sink: Sink) -> BackgroundSink {
        let (tx, rx) = crossbeam_channel::bounded::<Cmd>(Self::QUEUE);
        let display = sink.path().to_path_buf();
        let thread = std::thread::Builder::new()
            .name("seqflow-sink".into())
            .spawn(move || {
                let mut first: Option<Error> = None;
                let mut closing = false;
                for cmd in rx {
                    match cmd {
                        Cmd::Close => {
                            closing = true;
                            break;
                        }
                        Cmd::Write(b) => {
                            if first.is_none() {
                                if let Err(e) = sink.write(&b) {
                                    first = Some(e);
                                }
                            }
                            b.recycle();
                        }
                        Cmd::Flush(ack) => {
                            if first.is_none() {
                                if let Err(e) = sink.flush() {
                                    first = Some(e);
                                }
                            }
                            let _ = ack.send(first.as_ref().map(reason));
                        }
                        Cmd::Commit(ack) => {
                            let r = match &first {
                                Some(e) => Err(reason(e)),
                                None => sink.mark_point().map_err(|e| reason(&e)),
                            };
                            let _ = ack.send(r);
                        }
                    }
                }
                match first {
                    Some(e) => Err(e),
                    None if closing => sink.close().map(|_| sink.rows),
                    None => Ok(0),
                }
            })
            .expect("spawn the sink thread");
        BackgroundSink {
            tx: Some(tx),
            thread: Some(thread),
            display,
        }
    }

    fn gone(&self) -> Error {
        Error::Output {
            path: self.display.clone(),
            msg: "the writer thread stopped".into(),
        }
    }

    /// Hands a batch to the writer (blocks only while the queue is full).
    pub fn write(&mut self, b: OutBatch) -> Result<()> {
        let tx = self.tx.as_ref().ok_or_else(|| self.gone())?;
        tx.send(Cmd::Write(b)).map_err(|_| self.gone())
    }

    /// Waits until everything handed over is written and flushed.
    pub fn flush(&mut self) -> Result<()> {
        let tx = self.tx.as_ref().ok_or_else(|| self.gone())?;
        let (ack, done) = crossbeam_channel::bounded(1);
        tx.send(Cmd::Flush(ack)).map_err(|_| self.gone())?;
        match done.recv().map_err(|_| self.gone())? {
            None => Ok(()),
            Some(msg) => Err(Error::Output {
                path: self.display.clone(),
                msg,
            }),
        }
    }

    /// Waits until everything handed over is written, and says how much that is.
    pub fn mark_point(&mut self) -> Result<(CommitPoint, File)> {
        let tx = self.tx.as_ref().ok_or_else(|| self.gone())?;
        let (ack, done) = crossbeam_channel::bounded(1);
        tx.send(Cmd::Commit(ack)).map_err(|_| self.gone())?;
        done.recv()
            .map_err(|_| self.gone())?
            .map_err(|msg| Error::Output {
                path: self.display.clone(),
                msg,
            })
    }

    /// Writes what is queued, closes the file and returns the rows written.
    pub fn close(&mut self) -> Result<u64> {
        if let Some(tx) = self.tx.take() {
            // A writer that already stopped says why at the join.
            let _ = tx.send(Cmd::Close);
        }
        match self.thread.take() {
            None => Ok(0),
            Some(t) => t.join().map_err(|_| self.gone())?,
        }
    }
}

/// What went wrong, for the caller to put under the output's path again: an output
/// error's message alone (its path would be named twice), anything else whole.
fn reason(e: &Error) -> String {
    match e {
        Error::Output { msg, .. } => msg.clone(),
        other => other.to_string(),
    }
}

impl Drop for BackgroundSink {
    /// Dropped without [`BackgroundSink::close`] (a run that failed first): the writer
    /// abandons the file unfinished and is joined, not left running.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The output as worker 0 sees it: written inline, or by a [`BackgroundSink`].
///
/// Measured on 2 cores: a writer thread pays off when encoding is a large share of the work
/// (128 float columns: `-w 1` 4.1 s -> 3.5 s, `-w 2` 3.2 s -> 2.5 s) and costs when it is not
/// (1 column: demo `-w 2` scaling 1.83x -> 1.67x, a third busy thread on two cores; live
/// latency: the flush crosses threads). So: a thread for wide outputs of file runs, and for
/// file runs whose workers leave a core spare, where it is not a third busy thread (one
/// column, demo `-w 1` on 2 cores beside its reader thread: 1.03-1.05 s -> 0.97-1.05 s; the
/// LSTM h128 + head job unchanged).
pub enum SinkHandle {
    /// Written by worker 0 itself.
    Inline(Box<Sink>),
    /// Written by a writer thread.
    Background(BackgroundSink),
    /// Published to an MQTT broker.
    Mqtt(Box<crate::sink_mqtt::MqttSink>),
    /// Produced to a Kafka topic.
    Kafka(Box<crate::sink_kafka::KafkaSink>),
}

/// A broker output, connected when the key type is known.
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerTarget {
    /// `format = "mqtt"`.
    Mqtt(crate::sink_mqtt::MqttTarget),
    /// `format = "kafka"`.
    Kafka(crate::sink_kafka::KafkaTarget),
}

impl BrokerTarget {
    /// Connects (an unreachable broker or a missing topic is an error here).
    pub fn connect(&self, schema: OutputSchema) -> Result<SinkHandle> {
        Ok(match self {
            BrokerTarget::Mqtt(t) => {
                SinkHandle::Mqtt(Box::new(crate::sink_mqtt::MqttSink::connect(t, schema)?))
            }
            BrokerTarget::Kafka(t) => {
                SinkHandle::Kafka(Box::new(crate::sink_kafka::KafkaSink::connect(t, schema)?))
            }
        })
    }

    /// How the report names it.
    pub fn describe(&self) -> String {
        match self {
            BrokerTarget::Mqtt(t) => format!("mqtt {} {}", t.broker, t.topic),
            BrokerTarget::Kafka(t) => format!("kafka {} {}", t.brokers.join(","), t.topic),
        }
    }
}

impl SinkHandle {
    /// Output columns from which file runs write on their own thread.
    pub const WIDE: usize = 8;

    /// `sink`, on its own thread if `background`.
    pub fn new(sink: Sink, background: bool) -> SinkHandle {
        if background {
            SinkHandle::Background(BackgroundSink::spawn(sink))
        } else {
            SinkHandle::Inline(Box::new(sink))
        }
    }

    /// Writes (or hands over) a batch of predictions.
    pub fn write(&mut self, b: OutBatch) -> Result<()> {
        match self {
            SinkHandle::Inline(s) => {
                let done = s.write(&b);
                b.recycle();
                done
            }
            SinkHandle::Background(s) => s.write(b),
            SinkHandle::Mqtt(s) => {
                let done = s.write(&b);
                b.recycle();
                done
            }
            SinkHandle::Kafka(s) => {
                let done = s.write(&b);
                b.recycle();
                done
            }
        }
    }

    /// A broker output's predictions handed over so far and the broker's acknowledgement
    /// count (a Kafka output sends what it buffers first).
    pub fn delivery(&mut self) -> Result<Option<(u64, Arc<std::sync::atomic::AtomicU64>)>> {
        match self {
            SinkHandle::Mqtt(s) => Ok(Some(s.delivery())),
            SinkHandle::Kafka(s) => s.delivery().map(Some),
            _ => Ok(None),
        }
    }

    /// Whether the output is a file (which checkpoints measure and resumes cut back).
    pub fn is_file(&self) -> bool {
        !matches!(self, SinkHandle::Mqtt(_) | SinkHandle::Kafka(_))
    }

    /// Writes everything handed over so far through to the file.
    pub fn flush(&mut self) -> Result<()> {
        match self {
            SinkHandle::Inline(s) => s.flush(),
            SinkHandle::Background(s) => s.flush(),
            SinkHandle::Mqtt(_) => Ok(()),
            SinkHandle::Kafka(s) => s.flush(),
        }
    }

    /// Pushes everything so far to the file and says how much that is (a checkpoint).
    pub fn mark_point(&mut self) -> Result<(CommitPoint, File)> {
        match self {
            SinkHandle::Inline(s) => s.mark_point(),
            SinkHandle::Background(s) => s.mark_point(),
            SinkHandle::Mqtt(_) | SinkHandle::Kafka(_) => {
                Err(Error::Runtime("a broker output has no commit point".into()))
            }
        }
    }

    /// Writes the rest and closes the file.
    pub fn close(&mut self) -> Result<()> {
        match self {
            SinkHandle::Inline(s) => s.close(),
            SinkHandle::Background(s) => s.close().map(|_| ()),
            SinkHandle::Mqtt(s) => s.close(),
            SinkHandle::Kafka(s) => s.close(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::{Compression, FileFormat};

    /// An output replacing a file is sent to disk as it grows, and comes out whole.
    #[test]
    fn a_replacing_output_is_sent_early_and_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        std::fs::write(&path, "the earlier run's output\n").unwrap();
        let cfg = OutputFile {
            format: FileFormat::Csv,
            path: Some(path.clone()),
            row_group_rows: 1000,
            compression: Compression::Snappy,
            statistics: false,
        };
        let schema = OutputSchema {
            key_name: "k".into(),
            key_type: DataType::Int64,
            time_name: "t".into(),
            time_type: DataType::Int64,
            names: (0..8).map(|j| format!("y{j}")).collect(),
        };
        let outputs = Outputs::default();
        let mut sink = Sink::create(&cfg, schema, &outputs).unwrap();
        assert_eq!(sink.early, Some(0), "the path holds a file: it will be replaced");
        let rows = 200_000;
        for chunk in 0..4 {
            let n = rows / 4;
            let mut b = OutBatch::new(KeyColumn::Int(Vec::new()), 8);
            for r in 0..n {
                let row = chunk * n + r;
                b.keys.push(crate::record::KeyRef::Int(row as i64 % 7));
                b.times.push(row as i64);
                b.values.extend((0..8).map(|j| (row * 8 + j) as f32 * 0.001));
            }
            sink.write(&b).unwrap();
        }
        let sent = sink.early.unwrap();
        assert!(
            sent >= SEND_BYTES && sent.is_multiple_of(4096),
            "sent {sent} bytes early"
        );
        sink.close().unwrap();
        outputs.commit().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), rows + 1);
        assert_eq!(lines[0], "k,t,y0,y1,y2,y3,y4,y5,y6,y7");
        assert_eq!(
            lines[rows],
            format!(
                "{},{},{}",
                (rows - 1) % 7,
                rows - 1,
                (0..8)
                    .map(|j| format!("{}", ((rows - 1) * 8 + j) as f32 * 0.001))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        );

        // A new name: nothing is sent early.
        let fresh = OutputFile {
            path: Some(dir.path().join("new.csv")),
            ..cfg
        };
        let sink = Sink::create(&fresh, sink.schema.clone(), &outputs).unwrap();
        assert_eq!(sink.early, None);
        outputs.remove_all();
    }
}
