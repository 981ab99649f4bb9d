//! File sources (Parquet, CSV, JSON lines): expanding the path (file, directory or glob),
//! reading every file's schema once, and cutting the input into *units* (a Parquet row group,
//! or a whole CSV/JSONL file) that the workers of all processes divide among themselves.
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

use super::convert::{map_columns, route_batch, Routed};
use crate::error::{Error, Result};
use crate::pipeline::config::{SourceConfig, SourceFormat};

/// One input file.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub schema: SchemaRef,
}

/// A piece of input read by one worker: a Parquet row group or a whole text file.
#[derive(Debug, Clone)]
pub struct Unit {
    pub file: u32,
    pub row_group: Option<usize>,
    /// Row number (in the file) of the unit's first row.
    pub first_row: u64,
    /// Rows, when known without reading (Parquet).
    pub rows: Option<u64>,
}

/// The files and units of a run, identical on every worker and process.
#[derive(Debug, Clone)]
pub struct Plan {
    pub format: SourceFormat,
    pub files: Vec<SourceFile>,
    pub units: Vec<Unit>,
    /// Arrow types of the key and time columns (the output repeats them).
    pub key_type: DataType,
    pub time_type: DataType,
    /// Total rows when known (Parquet).
    pub total_rows: Option<u64>,
}

/// The epoch of batch `batch` of unit `unit`.
pub fn epoch_of(unit: usize, batch: usize) -> u64 {
    ((unit as u64) << 32) | batch as u64
}

fn extension_ok(format: SourceFormat, p: &Path) -> bool {
    let ext = p
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match format {
        SourceFormat::Parquet => ext == "parquet" || ext == "parq" || ext == "pq",
        SourceFormat::Csv => ext == "csv",
        SourceFormat::Jsonl => ext == "jsonl" || ext == "json" || ext == "ndjson",
        _ => false,
    }
}

/// Expands a file, a directory (its files with the format's extension) or a glob, sorted.
pub fn expand(path: &Path, format: SourceFormat) -> Result<Vec<PathBuf>> {
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
            .filter(|p| p.is_file() && extension_ok(format, p))
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

fn open(path: &Path) -> Result<File> {
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

fn csv_format() -> arrow::csv::reader::Format {
    arrow::csv::reader::Format::default().with_header(true)
}

impl Plan {
    /// Reads every file's schema (Parquet footers; CSV/JSONL by inference over the whole
    /// file) and checks the pipeline's columns in each.
    pub fn build(cfg: &SourceConfig) -> Result<Plan> {
        let path = cfg.path.as_ref().expect("file sources have a path");
        let paths = expand(path, cfg.format)?;
        let mut files = Vec::with_capacity(paths.len());
        let mut units = Vec::new();
        let mut total_rows = Some(0u64);
        let mut types: Option<(DataType, DataType, PathBuf)> = None;
        for (fi, p) in paths.into_iter().enumerate() {
            let schema: SchemaRef = match cfg.format {
                SourceFormat::Parquet => {
                    let builder = ParquetRecordBatchReaderBuilder::try_new(open(&p)?)
                        .map_err(|e| parquet_err(&p, e))?;
                    let mut first = 0u64;
                    for (rg, meta) in builder.metadata().row_groups().iter().enumerate() {
                        let rows = meta.num_rows() as u64;
                        units.push(Unit {
                            file: fi as u32,
                            row_group: Some(rg),
                            first_row: first,
                            rows: Some(rows),
                        });
                        first += rows;
                    }
                    total_rows = total_rows.map(|t| t + first);
                    builder.schema().clone()
                }
                SourceFormat::Csv => {
                    let (schema, _) =
                        csv_format()
                            .infer_schema(open(&p)?, None)
                            .map_err(|e| Error::Data {
                                path: p.clone(),
                                msg: format!("cannot read as CSV: {e}"),
                            })?;
                    Arc::new(with_csv_columns(schema, cfg))
                }
                SourceFormat::Jsonl => {
                    let mut r = BufReader::new(open(&p)?);
                    let (schema, _) =
                        arrow::json::reader::infer_json_schema(&mut r, None).map_err(|e| Error::Data {
                            path: p.clone(),
                            msg: format!("cannot read as JSON lines: {e}"),
                        })?;
                    r.rewind().map_err(|e| Error::io(&p, e))?;
                    Arc::new(schema)
                }
                _ => unreachable!("live formats have no plan"),
            };
            if cfg.format != SourceFormat::Parquet {
                // A text file is one unit; its row count is unknown until read.
                total_rows = None;
                units.push(Unit {
                    file: fi as u32,
                    row_group: None,
                    first_row: 0,
                    rows: None,
                });
            }
            let cols = map_columns(&schema, cfg, &p)?;
            match &types {
                None => types = Some((cols.key_type.clone(), cols.time_type.clone(), p.clone())),
                Some((k, t, first)) => {
                    for (what, a, b, col) in [
                        ("key", k, &cols.key_type, &cfg.key),
                        ("time", t, &cols.time_type, &cfg.time),
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
        let (key_type, time_type, _) = types.expect("at least one file");
        Ok(Plan {
            format: cfg.format,
            files,
            units,
            key_type,
            time_type,
            total_rows,
        })
    }

    /// Units read by global worker `index` of `peers`: round-robin, so workers advance
    /// through the epochs together.
    pub fn units_for(&self, index: usize, peers: usize) -> impl Iterator<Item = (usize, &Unit)> + '_ {
        self.units
            .iter()
            .enumerate()
            .filter(move |(u, _)| u % peers == index)
    }

    /// Rows of the units a worker reads, when known.
    pub fn rows_for(&self, index: usize, peers: usize) -> Option<u64> {
        self.units_for(index, peers).map(|(_, u)| u.rows).sum()
    }

    /// How a row of file `file` is named in messages: CSV by line, others by row.
    pub fn describe_row(&self, row: u64) -> String {
        match self.format {
            SourceFormat::Csv => format!("line {}", row + 2),
            SourceFormat::Jsonl => format!("line {}", row + 1),
            _ => format!("row {row}"),
        }
    }

    /// Reads unit `u` in record batches of `cfg.batch_rows`, handing each converted batch
    /// (with its index within the unit) to `f`.
    pub fn read_unit(
        &self,
        u: usize,
        cfg: &SourceConfig,
        peers: usize,
        mut f: impl FnMut(usize, Routed) -> Result<()>,
    ) -> Result<()> {
        let unit = &self.units[u];
        let file = &self.files[unit.file as usize];
        let path = &file.path;
        let describe = |row: u64| self.describe_row(row);
        let mut handle = |i: usize, batch: RecordBatch, first_row: u64| -> Result<()> {
            let cols = map_columns(&batch.schema(), cfg, path)?;
            let routed = route_batch(&batch, &cols, cfg, path, unit.file, first_row, peers, &describe)?;
            f(i, routed)
        };
        let read_err = |e: arrow::error::ArrowError| Error::Data {
            path: path.clone(),
            msg: format!(
                "{}read failed: {e}",
                unit.row_group
                    .map(|rg| format!("row group {rg}: "))
                    .unwrap_or_default()
            ),
        };
        type Batches = Box<dyn Iterator<Item = std::result::Result<RecordBatch, arrow::error::ArrowError>>>;
        let reader: Batches = match self.format {
            SourceFormat::Parquet => {
                let builder = ParquetRecordBatchReaderBuilder::try_new(open(path)?)
                    .map_err(|e| parquet_err(path, e))?;
                let wanted: Vec<usize> = [cfg.key.as_str(), cfg.time.as_str()]
                    .into_iter()
                    .chain(cfg.features.iter().map(String::as_str))
                    .filter_map(|c| file.schema.index_of(c).ok())
                    .collect();
                let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
                Box::new(
                    builder
                        .with_row_groups(vec![unit.row_group.expect("parquet units have a row group")])
                        .with_projection(mask)
                        .with_batch_size(cfg.batch_rows)
                        .build()
                        .map_err(|e| parquet_err(path, e))?,
                )
            }
            SourceFormat::Csv => Box::new(
                arrow::csv::ReaderBuilder::new(file.schema.clone())
                    .with_header(true)
                    .with_batch_size(cfg.batch_rows)
                    .build(open(path)?)
                    .map_err(read_err)?,
            ),
            SourceFormat::Jsonl => Box::new(
                arrow::json::ReaderBuilder::new(file.schema.clone())
                    .with_batch_size(cfg.batch_rows)
                    .build(BufReader::new(open(path)?))
                    .map_err(read_err)?,
            ),
            _ => unreachable!("live formats have no plan"),
        };
        let mut first_row = unit.first_row;
        for (i, batch) in reader.enumerate() {
            let batch = batch.map_err(read_err)?;
            let n = batch.num_rows() as u64;
            handle(i, batch, first_row)?;
            first_row += n;
        }
        Ok(())
    }
}

/// CSV inference reads numbers as Int64/Float64; a feature column that is integer in the
/// first file and float in another would then disagree. Features are read as Float64.
fn with_csv_columns(schema: Schema, cfg: &SourceConfig) -> Schema {
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| {
            if cfg.features.contains(f.name()) && f.data_type().is_numeric() {
                Arc::new(f.as_ref().clone().with_data_type(DataType::Float64))
            } else {
                f.clone()
            }
        })
        .collect();
    Schema::new(fields)
}
