//! Writing views on worker 0: each view's changelog (`group..., value..., epoch, diff`) as
//! JSON lines, CSV or Parquet (by the file's extension), and optionally a snapshot of the
//! final state (the changelog summed up) at the end of a bounded run.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use serde_json::{Map, Value};

use super::flow::{ViewRow, ViewValue};
use super::spec::{Aggregate, ViewSpec};
use crate::error::{Error, Result};
use crate::outfiles::Outputs;
use crate::record::Key;
use crate::vocab::FileFormat;

/// Parquet or CSV by the file's extension (the one table in `vocab`); JSON lines otherwise.
fn format_of(p: Option<&Path>) -> FileFormat {
    p.and_then(FileFormat::from_path).unwrap_or(FileFormat::Jsonl)
}

/// A table-shaped writer fed with JSON objects: JSON lines as they are; CSV and Parquet via
/// Arrow, with the schema inferred from the first rows written.
struct TableWriter {
    path: PathBuf,
    format: FileFormat,
    out: Option<Box<dyn Write + Send>>,
    /// Parquet: the file, until the first rows give the schema for its writer.
    file: Option<File>,
    schema: Option<SchemaRef>,
    parquet: Option<ArrowWriter<File>>,
    /// JSON lines and CSV files: a second handle, measured and synced at checkpoints.
    handle: Option<File>,
}

impl TableWriter {
    fn create(path: Option<&Path>, outputs: &Outputs) -> Result<TableWriter> {
        let display = path.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("-"));
        let format = format_of(path);
        if format == FileFormat::Arrow {
            return Err(Error::Data {
                path: display,
                msg: "a view's changelog or snapshot is written as Parquet, CSV or JSON lines \
                      (by its extension), not Arrow"
                    .into(),
            });
        }
        let mut handle = None;
        let (out, file): (Box<dyn Write + Send>, _) = match path {
            None => (Box::new(std::io::stdout()), None),
            Some(p) if format == FileFormat::Parquet => (Box::new(std::io::sink()), Some(outputs.create(p)?)),
            Some(p) => {
                let f = outputs.create(p)?;
                handle = Some(f.try_clone().map_err(|e| Error::io(p, e))?);
                (Box::new(BufWriter::new(f)), None)
            }
        };
        Ok(TableWriter {
            path: display,
            format,
            out: Some(out),
            file,
            schema: None,
            parquet: None,
            handle,
        })
    }

    /// Continues a JSON-lines or CSV changelog of an interrupted run, cut back to the
    /// `bytes` a checkpoint committed.
    fn resume(path: &Path, bytes: u64, outputs: &Outputs) -> Result<TableWriter> {
        let format = format_of(Some(path));
        let f = outputs.adopt(path, bytes)?;
        let handle = Some(f.try_clone().map_err(|e| Error::io(path, e))?);
        Ok(TableWriter {
            path: path.to_path_buf(),
            format,
            out: Some(Box::new(BufWriter::new(f))),
            file: None,
            // A CSV changelog with bytes has its header.
            schema: (bytes > 0).then(|| Arc::new(arrow::datatypes::Schema::empty())),
            parquet: None,
            handle,
        })
    }

    /// Pushes what is written to the file and says how long it is, with a handle to sync it.
    fn mark_point(&mut self) -> Result<(u64, File)> {
        if let Some(o) = self.out.as_mut() {
            o.flush().map_err(|e| Error::io(&self.path, e))?;
        }
        let h = self
            .handle
            .as_ref()
            .ok_or_else(|| self.err("only JSON-lines and CSV files can be checkpointed"))?;
        let bytes = h.metadata().map_err(|e| Error::io(&self.path, e))?.len();
        Ok((bytes, h.try_clone().map_err(|e| Error::io(&self.path, e))?))
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Output {
            path: self.path.clone(),
            msg: e.to_string(),
        }
    }

    fn write(&mut self, rows: &[Map<String, Value>]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for r in rows {
            serde_json::to_writer(&mut buf, r).expect("json");
            buf.push(b'\n');
        }
        if self.format == FileFormat::Jsonl {
            let out = self.out.as_mut().expect("open");
            return out
                .write_all(&buf)
                .and_then(|_| out.flush())
                .map_err(|e| Error::io(&self.path, e));
        }
        if self.format == FileFormat::Csv {
            // Written directly: going through Arrow would re-parse (and round) the numbers.
            let mut text = String::new();
            if self.schema.is_none() {
                let header: Vec<String> = rows[0].keys().map(|k| csv_field(k)).collect();
                text.push_str(&header.join(","));
                text.push('\n');
                self.schema = Some(Arc::new(arrow::datatypes::Schema::empty()));
            }
            for r in rows {
                let fields: Vec<String> = r
                    .values()
                    .map(|v| match v {
                        Value::String(s) => csv_field(s),
                        Value::Null => String::new(),
                        v => v.to_string(),
                    })
                    .collect();
                text.push_str(&fields.join(","));
                text.push('\n');
            }
            let out = self.out.as_mut().expect("open");
            return out
                .write_all(text.as_bytes())
                .and_then(|_| out.flush())
                .map_err(|e| Error::io(&self.path, e));
        }
        if self.schema.is_none() {
            let (s, _) = arrow::json::reader::infer_json_schema(&buf[..], None).map_err(|e| self.err(e))?;
            self.schema = Some(Arc::new(s));
        }
        let schema = self.schema.clone().expect("set");
        let reader = arrow::json::ReaderBuilder::new(schema.clone())
            .build(&buf[..])
            .map_err(|e| self.err(e))?;
        for batch in reader {
            let batch: RecordBatch = batch.map_err(|e| self.err(e))?;
            match self.format {
                FileFormat::Parquet => {
                    if self.parquet.is_none() {
                        self.out = None;
                        let f = self.file.take().expect("a parquet writer has its file");
                        self.parquet =
                            Some(ArrowWriter::try_new(f, schema.clone(), None).map_err(|e| self.err(e))?);
                    }
                    self.parquet
                        .as_mut()
                        .expect("set")
                        .write(&batch)
                        .map_err(|e| self.err(e))?;
                }
                FileFormat::Jsonl | FileFormat::Csv | FileFormat::Arrow => {
                    unreachable!("written above; Arrow refused at create")
                }
            }
        }
        Ok(())
    }

    /// A table without rows that still says its columns: a CSV header, an empty Parquet file
    /// with its schema (JSON lines: nothing).
    fn write_empty(&mut self, columns: &[(String, DataType)]) -> Result<()> {
        match self.format {
            FileFormat::Jsonl | FileFormat::Arrow => Ok(()),
            FileFormat::Csv => {
                let header: Vec<String> = columns.iter().map(|(n, _)| csv_field(n)).collect();
                let out = self.out.as_mut().expect("open");
                writeln!(out, "{}", header.join(",")).map_err(|e| Error::io(&self.path, e))
            }
            FileFormat::Parquet => {
                let fields: Vec<_> = columns
                    .iter()
                    .map(|(n, t)| arrow::datatypes::Field::new(n, t.clone(), true))
                    .collect();
                let schema = Arc::new(arrow::datatypes::Schema::new(fields));
                let f = self.file.take().expect("a parquet writer has its file");
                self.parquet = Some(ArrowWriter::try_new(f, schema, None).map_err(|e| self.err(e))?);
                Ok(())
            }
        }
    }

    fn close(&mut self) -> Result<()> {
        if let Some(w) = self.parquet.take() {
            w.close().map_err(|e| self.err(e))?;
        }
        if let Some(mut o) = self.out.take() {
            o.flush().map_err(|e| Error::io(&self.path, e))?;
        }
        Ok(())
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

struct ViewOut {
    spec: ViewSpec,
    changelog: TableWriter,
    pending: Vec<(Vec<Key>, ViewValue, u64, isize)>,
    /// The changelog summed up: the view's current state.
    state: BTreeMap<(Vec<Key>, ViewValue), isize>,
}

/// Every view's writers, on worker 0.
pub struct ViewOutputs {
    views: Vec<ViewOut>,
    key_name: String,
    /// Where snapshots are registered, with the changelogs (committed with the run).
    outputs: Outputs,
}

/// An f32 as the JSON number with its shortest f32 digits (0.22891763, not 0.2289176285266876).
fn f32_json(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

fn key_json(k: &Key) -> Value {
    match k {
        Key::Int(i) => Value::from(*i),
        Key::Str(s) => Value::from(&**s),
    }
}

impl ViewOutputs {
    /// Opens every view's changelog (registered with `outputs`, as the snapshots will be).
    /// `key_name` names the key in top_k rows.
    pub fn create(specs: &[ViewSpec], key_name: &str, outputs: &Outputs) -> Result<ViewOutputs> {
        let views = specs
            .iter()
            .map(|s| {
                Ok(ViewOut {
                    spec: s.clone(),
                    changelog: TableWriter::create(s.output.as_deref(), outputs)?,
                    pending: Vec::new(),
                    state: BTreeMap::new(),
                })
            })
            .collect::<Result<_>>()?;
        Ok(ViewOutputs {
            views,
            key_name: key_name.to_string(),
            outputs: outputs.clone(),
        })
    }

    /// Continues every view's changelog from a checkpoint: `bytes[i]` of view `i`'s file.
    pub fn resume(
        specs: &[ViewSpec],
        key_name: &str,
        outputs: &Outputs,
        bytes: &[u64],
    ) -> Result<ViewOutputs> {
        let views = specs
            .iter()
            .zip(bytes)
            .map(|(s, &b)| {
                let path = s.output.as_deref().expect("checkpointed views write files");
                Ok(ViewOut {
                    spec: s.clone(),
                    changelog: TableWriter::resume(path, b, outputs)?,
                    pending: Vec::new(),
                    state: BTreeMap::new(),
                })
            })
            .collect::<Result<_>>()?;
        Ok(ViewOutputs {
            views,
            key_name: key_name.to_string(),
            outputs: outputs.clone(),
        })
    }

    /// Measures each changelog as written so far (a checkpoint's commit point).
    pub fn measure(&mut self) -> Result<Vec<(u64, File)>> {
        self.views.iter_mut().map(|v| v.changelog.mark_point()).collect()
    }

    /// Writes the changes of epochs before `epoch`; later ones wait.
    pub fn flush_before(&mut self, epoch: u64) -> Result<()> {
        let mut later = Vec::new();
        for v in &mut self.views {
            let (now, rest): (Vec<_>, Vec<_>) = v.pending.drain(..).partition(|c| c.2 < epoch);
            v.pending = now;
            later.push(rest);
        }
        let r = self.flush();
        for (v, rest) in self.views.iter_mut().zip(later) {
            v.pending.extend(rest);
        }
        r
    }

    /// A change already in the committed changelog (a resumed run rebuilding its views):
    /// it counts for the snapshot but is not written again.
    pub fn push_restored(&mut self, (view, group, value): ViewRow, diff: isize) {
        let v = &mut self.views[view as usize];
        let e = v.state.entry((group.clone(), value.clone())).or_insert(0);
        *e += diff;
        if *e == 0 {
            v.state.remove(&(group, value));
        }
    }

    /// The changelog files, in view order.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.views.iter().map(|v| v.changelog.path.clone()).collect()
    }

    /// One changelog entry.
    pub fn push(&mut self, (view, group, value): ViewRow, time: u64, diff: isize) {
        let v = &mut self.views[view as usize];
        let e = v.state.entry((group.clone(), value.clone())).or_insert(0);
        *e += diff;
        if *e == 0 {
            v.state.remove(&(group.clone(), value.clone()));
        }
        v.pending.push((group, value, time, diff));
    }

    /// The columns a view's rows have, with their types, for an empty snapshot (the types of
    /// group columns are not known without rows: text).
    fn columns(key_name: &str, spec: &ViewSpec) -> Vec<(String, DataType)> {
        let mut c: Vec<(String, DataType)> = spec
            .group_by
            .iter()
            .map(|(n, _)| (n.clone(), DataType::Utf8))
            .collect();
        if spec.window.is_some() {
            c.push(("window_start".into(), DataType::Int64));
        }
        match spec.aggregate {
            Aggregate::Count => c.push(("count".into(), DataType::Int64)),
            Aggregate::TopK => {
                c.push((key_name.to_string(), DataType::Utf8));
                c.push((spec.of_name.clone(), DataType::Float64));
            }
            a => c.push((format!("{}_{}", a.as_str(), spec.of_name), DataType::Float64)),
        }
        c
    }

    /// The columns of a row: group, window start, value.
    fn fields(key_name: &str, spec: &ViewSpec, group: &[Key], value: &ViewValue) -> Map<String, Value> {
        let mut m = Map::new();
        for ((name, _), g) in spec.group_by.iter().zip(group) {
            m.insert(name.clone(), key_json(g));
        }
        if spec.window.is_some() {
            if let Some(Key::Int(s)) = group.last() {
                m.insert("window_start".into(), Value::from(*s));
            }
        }
        match value {
            ViewValue::Count(n) => {
                m.insert("count".into(), Value::from(*n));
            }
            ViewValue::Num(x) => {
                let name = format!("{}_{}", spec.aggregate.as_str(), spec.of_name);
                m.insert(
                    name,
                    serde_json::Number::from_f64(x.0).map_or(Value::Null, Value::Number),
                );
            }
            ViewValue::Top(k, s) => {
                m.insert(key_name.to_string(), key_json(k));
                m.insert(spec.of_name.clone(), f32_json(s.0));
            }
        }
        m
    }

    /// Writes what was pushed since the last flush, in epoch order, retractions first.
    pub fn flush(&mut self) -> Result<()> {
        for v in &mut self.views {
            if v.pending.is_empty() {
                continue;
            }
            v.pending
                .sort_by(|a, b| (a.2, a.3, &a.0, &a.1).cmp(&(b.2, b.3, &b.0, &b.1)));
            let rows: Vec<Map<String, Value>> = v
                .pending
                .drain(..)
                .map(|(g, val, t, d)| {
                    let mut m = Self::fields(&self.key_name, &v.spec, &g, &val);
                    m.insert("epoch".into(), Value::from(t));
                    m.insert("diff".into(), Value::from(d as i64));
                    m
                })
                .collect();
            v.changelog.write(&rows)?;
        }
        Ok(())
    }

    /// Flushes, writes snapshots of the final state, closes everything.
    pub fn finish(&mut self) -> Result<()> {
        self.flush()?;
        for v in &mut self.views {
            v.changelog.close()?;
            if let Some(p) = &v.spec.snapshot {
                let mut w = TableWriter::create(Some(p), &self.outputs)?;
                let mut rows = Vec::new();
                for ((g, val), n) in &v.state {
                    for _ in 0..(*n).max(0) {
                        rows.push(Self::fields(&self.key_name, &v.spec, g, val));
                    }
                }
                if rows.is_empty() {
                    w.write_empty(&Self::columns(&self.key_name, &v.spec))?;
                } else {
                    w.write(&rows)?;
                }
                w.close()?;
            }
        }
        Ok(())
    }

    /// Every view's current rows (name -> at most `limit` rows, as the snapshot writes
    /// them), for the dashboard.
    pub fn tables(&self, limit: usize) -> std::collections::BTreeMap<String, Vec<Map<String, Value>>> {
        self.views
            .iter()
            .map(|v| {
                let rows = v
                    .state
                    .iter()
                    .flat_map(|((g, val), n)| std::iter::repeat_n((g, val), (*n).max(0) as usize))
                    .take(limit)
                    .map(|(g, val)| Self::fields(&self.key_name, &v.spec, g, val))
                    .collect();
                (v.spec.name.clone(), rows)
            })
            .collect()
    }

    /// Current state of view `i` (for tests): `(group, value) -> multiplicity`.
    pub fn state(&self, i: usize) -> &BTreeMap<(Vec<Key>, ViewValue), isize> {
        &self.views[i].state
    }
}
