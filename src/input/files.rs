//! Data files (Parquet, CSV, JSON lines): expanding a path (file, directory or glob), reading
//! schemas once, opening record-batch readers, and cutting the input into *units* (a Parquet
//! row group, or a whole text file) that the workers of all processes divide among
//! themselves. Every reader of data files in seqflow (runs, training, side tables, replay)
//! opens them here.
//!
//! A unit's record batches get fixed timely epochs, `(unit << 32) | batch`, whichever worker
//! reads it. So every key sees its steps in the same epochs for any worker count, and the
//! decisions made per epoch (order, lateness) are the same: the output does not depend on
//! `-w`, `-n`.

use std::fs::File;
use std::io::{BufReader, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use super::columns::Columns;
use crate::error::{Error, Result};
use crate::vocab::FileFormat;

/// Where a file source reads: a file, a directory of files, or a glob, of one format.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSource {
    /// The format of every file.
    pub format: FileFormat,
    /// File, directory or glob.
    pub path: PathBuf,
}

/// One input file.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The file.
    pub path: PathBuf,
    /// Its schema, read once.
    pub schema: SchemaRef,
}

/// A piece of input read by one worker: a Parquet row group or a whole text file.
#[derive(Debug, Clone)]
pub struct Unit {
    /// Index of the file in the plan.
    pub file: u32,
    /// The row group (Parquet).
    pub row_group: Option<usize>,
    /// Row number (in the file) of the unit's first row.
    pub first_row: u64,
    /// Rows, when known without reading (Parquet).
    pub rows: Option<u64>,
}

/// The files and units of a run, identical on every worker and process.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The format of every file.
    pub format: FileFormat,
    /// The files, sorted by path.
    pub files: Vec<SourceFile>,
    /// The units, file by file.
    pub units: Vec<Unit>,
    /// Arrow type of the key column (the output repeats it).
    pub key_type: DataType,
    /// Arrow type of the time column (the output repeats it).
    pub time_type: DataType,
    /// Total rows when known (Parquet).
    pub total_rows: Option<u64>,
}

/// Rows a part holds at least when several workers share a Parquet unit (see
/// [`Plan::parts`]): about one page of a float column as pyarrow and arrow-rs write them
/// (1 MB = 262,144 values). A part decompresses the whole page it starts in, so smaller parts
/// would decompress each page several times, and each part opens the file again. At the
/// default 65,536 rows per batch that is four batches. (`-w 2`, one row group of 1,024,000
/// rows, LSTM h128: 0.45 s -> 0.44 s; the reading moved from one worker's 15% of the samples
/// to half on each.)
pub const PART_ROWS: u64 = 262_144;

/// [`PART_ROWS`], or in a debug build (the tests) `SEQFLOW_PART_ROWS`, so that the tests' small
/// files are cut too. A release build ignores the variable: every process of a cluster must
/// cut the same way.
fn part_rows() -> u64 {
    static ROWS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| {
        let asked = std::env::var("SEQFLOW_PART_ROWS")
            .ok()
            .and_then(|v| v.parse().ok());
        match asked {
            Some(n) if cfg!(debug_assertions) && n > 0 => n,
            _ => PART_ROWS,
        }
    })
}

/// Whole batches holding at least `rows` rows (one at least).
fn batches_per_part(rows: u64, batch_rows: usize) -> usize {
    rows.div_ceil(batch_rows.max(1) as u64).max(1) as usize
}

/// A run of consecutive batches of one unit: what one worker reads at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Index of the unit in the plan.
    pub unit: usize,
    /// Index in the unit of the part's first batch.
    pub first_batch: usize,
    /// Batches in the part; `None`: to the unit's end.
    pub batches: Option<usize>,
}

impl Part {
    /// Whether every epoch of the part comes before `epoch`.
    pub fn before(&self, epoch: u64) -> bool {
        match self.batches {
            Some(b) => epoch_of(self.unit, self.first_batch + b) <= epoch,
            None => epoch_of(self.unit + 1, 0) <= epoch,
        }
    }
}

/// Which rows of a file to read: all of them by default; of a Parquet file, one row group,
/// and of what is read, `skip` rows and then `take` (or all the rest). Other formats read a
/// file whole.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rows {
    /// The row group (Parquet).
    pub row_group: Option<usize>,
    /// Rows skipped first.
    pub skip: usize,
    /// Rows read then; `None`: to the end.
    pub take: Option<usize>,
}

/// The epoch of batch `batch` of unit `unit`: the unit in the high 32 bits, the batch in the
/// low ([`Plan::read_part`] refuses a unit of more batches rather than
/// let its epochs run into the next unit's).
pub fn epoch_of(unit: usize, batch: usize) -> u64 {
    ((unit as u64) << 32) | batch as u64
}

/// `index` as the number of a batch of `path`'s row group (or whole file), or the error that
/// it does not fit the 32 bits [`epoch_of`] gives it.
fn batch_number(path: &Path, row_group: Option<usize>, index: usize, batch_rows: usize) -> Result<usize> {
    if index <= u32::MAX as usize {
        return Ok(index);
    }
    Err(Error::Data {
        path: path.to_path_buf(),
        msg: format!(
            "more than 2^32 record batches of {batch_rows} rows in one {}; raise `batch_rows` in \
             [source]",
            if row_group.is_some() { "row group" } else { "file" }
        ),
    })
}

impl FileSource {
    /// `path` in the format its extension names (a glob's pattern too); for a directory, the
    /// format of its first file with a known extension; otherwise `default`.
    pub fn guess(path: &Path, default: FileFormat) -> FileSource {
        let format = FileFormat::from_path(path).or_else(|| {
            let mut names: Vec<PathBuf> = std::fs::read_dir(path)
                .ok()?
                .filter_map(|e| Some(e.ok()?.path()))
                .collect();
            names.sort();
            names.iter().find_map(|p| FileFormat::from_path(p))
        });
        FileSource {
            format: format.unwrap_or(default),
            path: path.to_path_buf(),
        }
    }

    /// The files: a file, a directory's files with the format's extension, or a glob's
    /// matches, sorted.
    pub fn expand(&self) -> Result<Vec<PathBuf>> {
        let path = &self.path;
        let s = path.to_string_lossy();
        let mut files = if s.contains(['*', '?', '[']) {
            let paths = glob::glob(&s).map_err(|e| Error::Data {
                path: path.to_path_buf(),
                msg: format!("bad glob pattern: {e}"),
            })?;
            paths
                .filter_map(|p| p.ok())
                .filter(|p| p.is_file())
                .collect::<Vec<_>>()
        } else if path.is_dir() {
            let rd = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && FileFormat::from_path(p) == Some(self.format))
                .collect()
        } else {
            std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
            vec![path.to_path_buf()]
        };
        files.sort();
        if files.is_empty() {
            return Err(Error::Data {
                path: path.to_path_buf(),
                msg: "no input files found there".into(),
            });
        }
        Ok(files)
    }
}

fn open(path: &Path) -> Result<File> {
    crate::outfiles::check_regular(path)?;
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len == 0 {
        return Err(Error::Data {
            path: path.to_path_buf(),
            msg: "the file is empty (0 bytes)".into(),
        });
    }
    Ok(f)
}

fn parquet_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        msg: format!("not a readable Parquet file: {e}"),
    }
}

/// A file's schema and the rows of each row group (Parquet) or of the file (text formats,
/// read in full to infer their schema). Numeric columns named in `floats` are read as
/// Float64, so a feature that is integer in one CSV file and float in another does not
/// disagree. A column named twice is refused.
pub fn schema_of(path: &Path, format: FileFormat, floats: &[String]) -> Result<(SchemaRef, Vec<u64>)> {
    crate::guard::catch(|| schema_unguarded(path, format, floats))
        .unwrap_or_else(|msg| Err(corrupt(path, format, &msg)))
}

/// A decoder's panic on `path`, as an error naming the file.
fn corrupt(path: &Path, format: FileFormat, msg: &str) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        msg: format!("corrupt {} file: its reader failed ({msg})", format.name()),
    }
}

/// Record batches that stop with an error naming the file if the decoder panics.
struct Guarded {
    inner: Batches,
    path: PathBuf,
    format: FileFormat,
    failed: bool,
}

impl Iterator for Guarded {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let inner = &mut self.inner;
        crate::guard::catch(|| inner.next()).unwrap_or_else(|msg| {
            self.failed = true;
            Some(Err(corrupt(&self.path, self.format, &msg)))
        })
    }
}

fn schema_unguarded(path: &Path, format: FileFormat, floats: &[String]) -> Result<(SchemaRef, Vec<u64>)> {
    let text_err = |e: arrow::error::ArrowError| Error::Data {
        path: path.to_path_buf(),
        msg: format!(
            "cannot read as {}: {e}",
            if format == FileFormat::Csv {
                "CSV"
            } else {
                "JSON lines"
            }
        ),
    };
    let schema = match format {
        FileFormat::Parquet => {
            let builder =
                ParquetRecordBatchReaderBuilder::try_new(open(path)?).map_err(|e| parquet_err(path, e))?;
            let groups = builder
                .metadata()
                .row_groups()
                .iter()
                .map(|g| g.num_rows() as u64)
                .collect();
            return Ok((builder.schema().clone(), groups));
        }
        // An Arrow IPC file knows its schema; its rows are counted by reading its batches
        // (one unit per file, as for the text formats, which are read whole to infer theirs).
        FileFormat::Arrow => {
            let reader =
                arrow::ipc::reader::FileReader::try_new(open(path)?, None).map_err(|e| Error::Data {
                    path: path.to_path_buf(),
                    msg: format!("cannot read as an Arrow IPC file: {e}"),
                })?;
            let schema = reader.schema();
            let mut seen = std::collections::HashSet::new();
            if let Some(f) = schema.fields().iter().find(|f| !seen.insert(f.name())) {
                return Err(Error::Data {
                    path: path.to_path_buf(),
                    msg: format!("column `{}` appears twice in the schema", f.name()),
                });
            }
            let mut rows = 0u64;
            for b in reader {
                rows += b
                    .map_err(|e| Error::Data {
                        path: path.to_path_buf(),
                        msg: format!("Arrow IPC record batch: {e}"),
                    })?
                    .num_rows() as u64;
            }
            return Ok((schema, vec![rows]));
        }
        FileFormat::Csv => arrow::csv::reader::Format::default()
            .with_header(true)
            .infer_schema(open(path)?, None)
            .map_err(text_err)?,
        // JSON lines have no header: a file without records has nothing to check or read.
        FileFormat::Jsonl if std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0) => {
            (Schema::empty(), 0)
        }
        FileFormat::Jsonl => {
            let mut r = BufReader::new(open(path)?);
            let inferred = arrow::json::reader::infer_json_schema(&mut r, None)
                .map_err(|e| bad_json_line(path).unwrap_or_else(|| text_err(e)))?;
            r.rewind().map_err(|e| Error::io(path, e))?;
            inferred
        }
    };
    let (schema, records) = schema;
    let mut seen = std::collections::HashSet::new();
    if let Some(f) = schema.fields().iter().find(|f| !seen.insert(f.name())) {
        return Err(Error::Data {
            path: path.to_path_buf(),
            msg: format!("column `{}` appears twice in the header", f.name()),
        });
    }
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(
            |f| match floats.contains(f.name()) && f.data_type().is_numeric() {
                true => Arc::new(f.as_ref().clone().with_data_type(DataType::Float64)),
                false => f.clone(),
            },
        )
        .collect();
    Ok((Arc::new(Schema::new(fields)), vec![records as u64]))
}

/// Record batches of a file.
pub type Batches = Box<dyn Iterator<Item = Result<RecordBatch>>>;

/// Opens a reader of `path` (whose schema [`schema_of`] read) in batches of `batch_rows`;
/// Parquet reads only `rows` (a row group, a range; see [`Rows`]) and the columns named in `columns`
/// (if given).
pub fn batches(
    path: &Path,
    format: FileFormat,
    schema: &SchemaRef,
    rows: Rows,
    columns: Option<&[&str]>,
    batch_rows: usize,
) -> Result<Batches> {
    let opened = crate::guard::catch(|| batches_unguarded(path, format, schema, rows, columns, batch_rows))
        .unwrap_or_else(|msg| Err(corrupt(path, format, &msg)))?;
    Ok(Box::new(Guarded {
        inner: opened,
        path: path.to_path_buf(),
        format,
        failed: false,
    }))
}

fn batches_unguarded(
    path: &Path,
    format: FileFormat,
    schema: &SchemaRef,
    rows: Rows,
    columns: Option<&[&str]>,
    batch_rows: usize,
) -> Result<Batches> {
    let row_group = rows.row_group;
    let at = path.to_path_buf();
    let read_err = move |e: arrow::error::ArrowError| Error::Data {
        path: at.clone(),
        msg: format!(
            "{}read failed: {e}",
            row_group
                .map(|rg| format!("row group {rg}: "))
                .unwrap_or_default()
        ),
    };
    Ok(match format {
        FileFormat::Parquet => {
            let mut builder =
                ParquetRecordBatchReaderBuilder::try_new(open(path)?).map_err(|e| parquet_err(path, e))?;
            if let Some(cols) = columns {
                let wanted = cols.iter().filter_map(|c| schema.index_of(c).ok());
                let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
                builder = builder.with_projection(mask);
            }
            if let Some(rg) = row_group {
                builder = builder.with_row_groups(vec![rg]);
            }
            if rows.skip > 0 {
                builder = builder.with_offset(rows.skip);
            }
            if let Some(take) = rows.take {
                builder = builder.with_limit(take);
            }
            let reader = builder
                .with_batch_size(batch_rows)
                .build()
                .map_err(|e| parquet_err(path, e))?;
            Box::new(reader.map(move |b| b.map_err(&read_err)))
        }
        FileFormat::Arrow => {
            let mut reader = arrow::ipc::reader::FileReader::try_new(open(path)?, None).map_err(&read_err)?;
            if let Some(cols) = columns {
                let wanted: Vec<usize> = cols
                    .iter()
                    .filter_map(|c| reader.schema().index_of(c).ok())
                    .collect();
                reader = arrow::ipc::reader::FileReaderBuilder::new()
                    .with_projection(wanted)
                    .build(open(path)?)
                    .map_err(&read_err)?;
            }
            // The file's own batches, cut to at most `batch_rows` rows (epochs as for the
            // other formats).
            Box::new(reader.flat_map(move |b| -> Vec<Result<RecordBatch>> {
                match b {
                    Ok(b) => (0..b.num_rows().max(1))
                        .step_by(batch_rows.max(1))
                        .filter(|&at| at < b.num_rows())
                        .map(|at| Ok(b.slice(at, batch_rows.min(b.num_rows() - at))))
                        .collect(),
                    Err(e) => vec![Err(read_err(e))],
                }
            }))
        }
        FileFormat::Csv => {
            let reader = arrow::csv::ReaderBuilder::new(schema.clone())
                .with_header(true)
                .with_batch_size(batch_rows)
                .build(open(path)?)
                .map_err(&read_err)?;
            Box::new(reader.map(move |b| b.map_err(&read_err)))
        }
        FileFormat::Jsonl => {
            let reader = arrow::json::ReaderBuilder::new(schema.clone())
                .with_batch_size(batch_rows)
                .build(BufReader::new(open(path)?))
                .map_err(&read_err)?;
            // The JSON reader does not say where it failed: find the line.
            let at = path.to_path_buf();
            Box::new(reader.map(move |b| b.map_err(|e| bad_json_line(&at).unwrap_or_else(|| read_err(e)))))
        }
    })
}

/// The first line of a JSON-lines file that is not a JSON object, as an error naming it.
fn bad_json_line(path: &Path) -> Option<Error> {
    use std::io::BufRead;
    let f = File::open(path).ok()?;
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.ok()?;
        if line.trim().is_empty() {
            continue;
        }
        let msg = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(serde_json::Value::Object(_)) => continue,
            Ok(_) => format!("line {}: not a JSON object", i + 1),
            Err(e) => {
                let what = e.to_string();
                let what = what.split(" at line ").next().unwrap_or_default().to_string();
                format!("line {}, column {}: not JSON ({what})", i + 1, e.column())
            }
        };
        return Some(Error::Data {
            path: path.to_path_buf(),
            msg,
        });
    }
    None
}

/// Every row of a whole file, all columns (side tables, replay).
pub fn read_all(path: &Path, format: FileFormat) -> Result<Vec<RecordBatch>> {
    let (schema, _) = schema_of(path, format, &[])?;
    batches(path, format, &schema, Rows::default(), None, 65_536)?.collect()
}

impl Plan {
    /// Reads every file's schema (Parquet footers; CSV/JSONL by inference over the whole
    /// file) and checks `columns` in each.
    pub fn build(source: &FileSource, columns: &Columns) -> Result<Plan> {
        let paths = source.expand()?;
        let mut files = Vec::with_capacity(paths.len());
        let mut units = Vec::new();
        let mut total_rows = Some(0u64);
        let mut types: Option<(DataType, DataType, PathBuf)> = None;
        for (fi, p) in paths.into_iter().enumerate() {
            let (schema, groups) = schema_of(&p, source.format, &columns.features)?;
            if source.format == FileFormat::Parquet {
                let mut first = 0u64;
                for (rg, &rows) in groups.iter().enumerate() {
                    units.push(Unit {
                        file: fi as u32,
                        row_group: Some(rg),
                        first_row: first,
                        rows: Some(rows),
                    });
                    first += rows;
                }
                total_rows = total_rows.map(|t| t + first);
            } else if groups.first().is_some_and(|&n| n > 0) {
                // A text file is one unit, read whole.
                total_rows = None;
                units.push(Unit {
                    file: fi as u32,
                    row_group: None,
                    first_row: 0,
                    rows: None,
                });
            } else {
                // A header and no rows: its columns must exist; their types say nothing (as
                // with an empty Parquet file, nothing is read).
                let roles = [("key", &columns.key), ("time", &columns.time)];
                let roles = roles
                    .into_iter()
                    .chain(columns.features.iter().map(|f| ("feature", f)));
                for (role, c) in roles.filter(|_| source.format != FileFormat::Jsonl) {
                    super::columns::find_column(&schema, c, role, &p)?;
                }
                files.push(SourceFile { path: p, schema });
                continue;
            }
            let cols = columns.map(&schema, &p, source.format != FileFormat::Parquet)?;
            match &types {
                None => types = Some((cols.key_type.clone(), cols.time_type.clone(), p.clone())),
                Some((k, t, first)) => {
                    for (what, a, b, col) in [
                        ("key", k, &cols.key_type, &columns.key),
                        ("time", t, &cols.time_type, &columns.time),
                    ] {
                        if a != b {
                            return Err(Error::Data {
                                path: p.clone(),
                                msg: format!(
                                    "{what} column `{col}` has type {b} here but {a} in {}; all input files must agree",
                                    first.display()
                                ),
                            });
                        }
                    }
                }
            }
            files.push(SourceFile { path: p, schema });
        }
        // Every file empty: nothing is read; the output's types are the usual ones.
        let (key_type, time_type, _) = types.unwrap_or((DataType::Utf8, DataType::Int64, PathBuf::new()));
        Ok(Plan {
            format: source.format,
            files,
            units,
            key_type,
            time_type,
            total_rows,
        })
    }

    /// Every part of the plan, in epoch order, for `readers` readers.
    ///
    /// With one reader, a part is a whole unit. With several, a Parquet unit of more than
    /// [`PART_ROWS`] rows is cut into parts of that many rows, rounded up to whole batches: a
    /// file of one large row group (pyarrow writes up to a million rows per group) is then
    /// read by every worker, not by the first alone while the others wait for its routed
    /// rows. A batch's epoch stays its unit's and its index in the unit (see [`epoch_of`]),
    /// so the epochs, and with them the output and checkpoints, do not depend on the cut or
    /// on which reader reads which part.
    pub fn parts(&self, readers: usize, batch_rows: usize) -> Vec<Part> {
        self.cut(readers, batch_rows, batches_per_part(part_rows(), batch_rows))
    }

    /// [`Plan::parts`] with parts of `per` batches.
    fn cut(&self, readers: usize, batch_rows: usize, per: usize) -> Vec<Part> {
        let batch_rows = batch_rows.max(1) as u64;
        let mut parts = Vec::new();
        for (u, unit) in self.units.iter().enumerate() {
            let batches = match unit.rows {
                Some(rows) if readers > 1 => rows.div_ceil(batch_rows) as usize,
                _ => 0,
            };
            if batches > per {
                parts.extend((0..batches.div_ceil(per)).map(|k| Part {
                    unit: u,
                    first_batch: k * per,
                    batches: Some(per),
                }));
            } else {
                parts.push(Part {
                    unit: u,
                    first_batch: 0,
                    batches: None,
                });
            }
        }
        parts
    }

    /// Rows of `parts`, when known.
    pub fn rows_of(&self, parts: &[Part], batch_rows: usize) -> Option<u64> {
        let batch_rows = batch_rows.max(1) as u64;
        parts
            .iter()
            .map(|p| {
                let rows = self.units[p.unit].rows?;
                let from = (p.first_batch as u64 * batch_rows).min(rows);
                Some(match p.batches {
                    Some(b) => (rows - from).min(b as u64 * batch_rows),
                    None => rows - from,
                })
            })
            .sum()
    }

    /// Reads unit `u` in record batches of `batch_rows` (Parquet: only the named columns),
    /// handing each to `f` with its index within the unit and the file row of its first row.
    pub fn read_unit(
        &self,
        u: usize,
        columns: &[&str],
        batch_rows: usize,
        f: impl FnMut(usize, RecordBatch, u64) -> Result<()>,
    ) -> Result<()> {
        let whole = Part {
            unit: u,
            first_batch: 0,
            batches: None,
        };
        self.read_part(&whole, columns, batch_rows, f)
    }

    /// Reads the batches of `part`, as [`Plan::read_unit`] does: `f` gets each batch's index
    /// within its unit. (Parquet skips the rows before the part page by page.)
    pub fn read_part(
        &self,
        part: &Part,
        columns: &[&str],
        batch_rows: usize,
        mut f: impl FnMut(usize, RecordBatch, u64) -> Result<()>,
    ) -> Result<()> {
        let unit = &self.units[part.unit];
        let file = &self.files[unit.file as usize];
        let skip = part.first_batch * batch_rows.max(1);
        let rows = Rows {
            row_group: unit.row_group,
            skip,
            take: part.batches.map(|b| b * batch_rows.max(1)),
        };
        let reader = batches(
            &file.path,
            self.format,
            &file.schema,
            rows,
            Some(columns),
            batch_rows,
        )?;
        let mut first_row = unit.first_row + skip as u64;
        for (i, batch) in reader.enumerate() {
            let batch = batch?;
            let n = batch.num_rows() as u64;
            let index = batch_number(&file.path, unit.row_group, part.first_batch + i, batch_rows)?;
            f(index, batch, first_row)?;
            first_row += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(units: Vec<Unit>) -> Plan {
        Plan {
            format: FileFormat::Parquet,
            files: Vec::new(),
            units,
            key_type: DataType::Utf8,
            time_type: DataType::Int64,
            total_rows: None,
        }
    }

    fn unit(rows: Option<u64>) -> Unit {
        Unit {
            file: 0,
            row_group: rows.map(|_| 0),
            first_row: 0,
            rows,
        }
    }

    #[test]
    fn a_unit_of_more_batches_than_an_epoch_numbers_is_refused() {
        let path = Path::new("big.parquet");
        let last = u32::MAX as usize;
        assert_eq!(batch_number(path, Some(3), last, 1).unwrap(), last);
        let err = batch_number(path, Some(3), last + 1, 1).unwrap_err().to_string();
        assert!(
            err.contains("big.parquet")
                && err.contains("one row group")
                && err.contains("raise `batch_rows`"),
            "{err}"
        );
        let err = batch_number(path, None, last + 1, 1).unwrap_err().to_string();
        assert!(err.contains("one file"), "{err}");
    }

    #[test]
    fn parts_cover_every_batch_once_in_epoch_order() {
        let batch_rows = 1000;
        // 16 batches (four parts), exactly 4 (one), 5 (two), 1, and a text file (rows unknown).
        let rows = [Some(15_500), Some(4000), Some(4001), Some(7), None];
        let p = plan(rows.iter().map(|&r| unit(r)).collect());
        let batches = |u: usize| rows[u].map_or(1, |r: u64| r.div_ceil(batch_rows as u64) as usize);
        for readers in 1..=3 {
            let parts = p.cut(readers, batch_rows, 4);
            if readers == 1 {
                assert!(
                    parts.iter().all(|x| (x.first_batch, x.batches) == (0, None)),
                    "one reader reads units whole"
                );
            }
            let mut seen: Vec<(usize, usize)> = Vec::new();
            for part in &parts {
                let n = part.batches.unwrap_or(batches(part.unit) - part.first_batch);
                let end = (part.first_batch + n).min(batches(part.unit));
                seen.extend((part.first_batch..end).map(|b| (part.unit, b)));
            }
            // In epoch order, so that any subsequence a reader takes in order is too.
            let epochs: Vec<u64> = seen.iter().map(|&(u, b)| epoch_of(u, b)).collect();
            assert!(
                epochs.windows(2).all(|w| w[0] < w[1]),
                "{readers} readers: epochs out of order"
            );
            let all: Vec<(usize, usize)> = (0..rows.len())
                .flat_map(|u| (0..batches(u)).map(move |b| (u, b)))
                .collect();
            assert_eq!(seen, all, "{readers} readers");
        }
        let firsts: Vec<(usize, usize)> = p
            .cut(2, batch_rows, 4)
            .iter()
            .map(|x| (x.unit, x.first_batch))
            .collect();
        assert_eq!(
            firsts,
            [
                (0, 0),
                (0, 4),
                (0, 8),
                (0, 12),
                (1, 0),
                (2, 0),
                (2, 4),
                (3, 0),
                (4, 0)
            ]
        );
        // Rows add up over any split of the parts (known while no text file is among them).
        let known = plan(rows[..4].iter().map(|&r| unit(r)).collect());
        let parts = known.cut(2, batch_rows, 4);
        assert_eq!(known.rows_of(&parts, batch_rows), Some(15_500 + 4000 + 4001 + 7));
        let every_other = |r: usize| -> Vec<Part> { parts.iter().skip(r).step_by(2).cloned().collect() };
        assert_eq!(
            known.rows_of(&every_other(0), batch_rows),
            Some(4000 + 4000 + 4000 + 1)
        );
        assert_eq!(
            known.rows_of(&every_other(1), batch_rows),
            Some(4000 + 3500 + 4000 + 7)
        );
        assert_eq!(
            p.rows_of(&p.cut(2, batch_rows, 4), batch_rows),
            None,
            "a text file's rows are unknown"
        );
        // A unit of PART_ROWS rows or fewer is never cut; one more row cuts it in two.
        for (rows, parts) in [(PART_ROWS, 1), (PART_ROWS + 1, 2)] {
            let p = plan(vec![unit(Some(rows))]);
            let per = batches_per_part(PART_ROWS, 65_536);
            assert_eq!((per, p.cut(2, 65_536, per).len()), (4, parts), "{rows} rows");
        }
        // An empty row group is one part that reads nothing.
        let empty = plan(vec![unit(Some(0))]);
        assert_eq!(empty.cut(2, batch_rows, 4).len(), 1);
        assert_eq!(empty.rows_of(&empty.cut(2, batch_rows, 4), batch_rows), Some(0));
    }

    #[test]
    fn a_part_is_before_an_epoch_only_when_all_its_batches_are() {
        let part = Part {
            unit: 3,
            first_batch: 4,
            batches: Some(4),
        };
        assert!(!part.before(epoch_of(3, 7)));
        assert!(part.before(epoch_of(3, 8)));
        let whole = Part {
            unit: 3,
            first_batch: 0,
            batches: None,
        };
        assert!(!whole.before(epoch_of(3, 1000)));
        assert!(whole.before(epoch_of(4, 0)));
    }
}
