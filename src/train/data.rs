//! Training data: a Parquet (or CSV) file, directory or glob read into one sequence per key,
//! sorted by time, with the same preprocessing a pipeline applies at run time (normalize,
//! then the NaN policy), so a model sees in production what it saw in training.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{Error, Result};
use crate::pipeline::config::{NanPolicy, Normalize, SourceFormat};
use crate::source::files::expand;

/// Which columns to read and how to preprocess them.
#[derive(Debug, Clone)]
pub struct DataSpec {
    pub format: SourceFormat,
    pub path: PathBuf,
    pub key: String,
    pub time: String,
    pub features: Vec<String>,
    /// Extra numeric columns: targets or the label.
    pub extra: Vec<String>,
    /// What the extra columns are, for messages ("target" or "label").
    pub extra_role: &'static str,
    pub nan: NanPolicy,
}

/// One key's steps, in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    pub key: String,
    pub times: Vec<i64>,
    /// `len x features`, raw (before normalization).
    pub x: Vec<f64>,
    /// `len x extra`.
    pub extra: Vec<f64>,
}

impl Sequence {
    pub fn len(&self) -> usize {
        self.times.len()
    }

    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }
}

/// Everything read, with counts for the summary.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub sequences: Vec<Sequence>,
    pub rows: u64,
    pub duplicates: u64,
    pub skipped_nan: u64,
    pub files: usize,
}

fn data_err(path: &Path, msg: String) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        msg,
    }
}

fn batches(path: &Path, format: SourceFormat) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    match format {
        SourceFormat::Parquet => {
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .and_then(|b| b.with_batch_size(65536).build())
                .map_err(|e| data_err(path, format!("not a readable Parquet file: {e}")))?;
            reader
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| data_err(path, format!("read failed: {e}")))
        }
        SourceFormat::Csv => {
            let fmt = arrow::csv::reader::Format::default().with_header(true);
            let (schema, _) = fmt
                .infer_schema(File::open(path).map_err(|e| Error::io(path, e))?, None)
                .map_err(|e| data_err(path, format!("not a readable CSV file: {e}")))?;
            arrow::csv::ReaderBuilder::new(Arc::new(schema))
                .with_header(true)
                .build(file)
                .map_err(|e| data_err(path, format!("not a readable CSV file: {e}")))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| data_err(path, format!("read failed: {e}")))
        }
        other => Err(data_err(
            path,
            format!("training reads parquet or csv files, not {other:?}"),
        )),
    }
}

fn column(
    schema: &Schema,
    batch: &RecordBatch,
    name: &str,
    role: &str,
    path: &Path,
) -> Result<Arc<dyn Array>> {
    let idx = schema.index_of(name).map_err(|_| {
        let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        data_err(
            path,
            format!(
                "{role} column `{name}` not found; the file has columns: {}",
                have.join(", ")
            ),
        )
    })?;
    Ok(batch.column(idx).clone())
}

fn numeric(a: &Arc<dyn Array>, name: &str, role: &str, path: &Path) -> Result<Vec<f64>> {
    let t = a.data_type();
    if !(t.is_numeric() || matches!(t, DataType::Boolean)) {
        return Err(data_err(
            path,
            format!("{role} column `{name}` has type {t}, expected numbers"),
        ));
    }
    let c = cast(a, &DataType::Float64).map_err(|e| data_err(path, format!("column `{name}`: {e}")))?;
    let c = c.as_primitive::<Float64Type>();
    Ok((0..c.len())
        .map(|i| if c.is_null(i) { f64::NAN } else { c.value(i) })
        .collect())
}

/// One row before grouping: time, features, extra columns.
type Step = (i64, Vec<f64>, Vec<f64>);

/// Reads every file into per-key sequences sorted by time. A repeated `(key, time)` keeps its
/// first row (counted); NaN/inf features follow `spec.nan` (`error` names file, row, column).
pub fn load(spec: &DataSpec) -> Result<Dataset> {
    let files = expand(&spec.path, spec.format)?;
    let mut by_key: HashMap<String, Vec<Step>> = HashMap::new();
    let mut rows = 0u64;
    let mut skipped_nan = 0u64;
    for path in &files {
        let mut row0 = 0u64;
        for batch in batches(path, spec.format)? {
            let schema = batch.schema();
            let key = column(&schema, &batch, &spec.key, "key", path)?;
            let key = match key.data_type() {
                t if t.is_integer()
                    || matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) =>
                {
                    cast(&key, &DataType::Utf8).map_err(|e| data_err(path, format!("key column: {e}")))?
                }
                DataType::Dictionary(..) => {
                    cast(&key, &DataType::Utf8).map_err(|e| data_err(path, format!("key column: {e}")))?
                }
                t => {
                    return Err(data_err(
                        path,
                        format!(
                            "key column `{}` has type {t}, expected a string or integer key",
                            spec.key
                        ),
                    ))
                }
            };
            let key = key.as_string::<i32>();
            let time = column(&schema, &batch, &spec.time, "time", path)?;
            let tt = time.data_type().clone();
            if !(tt.is_integer()
                || matches!(tt, DataType::Timestamp(..) | DataType::Date32 | DataType::Date64))
            {
                return Err(data_err(
                    path,
                    format!(
                        "time column `{}` has type {tt}, expected an integer or timestamp",
                        spec.time
                    ),
                ));
            }
            let time =
                cast(&time, &DataType::Int64).map_err(|e| data_err(path, format!("time column: {e}")))?;
            let time = time.as_primitive::<Int64Type>();
            let feats = spec
                .features
                .iter()
                .map(|f| numeric(&column(&schema, &batch, f, "feature", path)?, f, "feature", path))
                .collect::<Result<Vec<_>>>()?;
            let extra = spec
                .extra
                .iter()
                .map(|f| {
                    let role = spec.extra_role;
                    numeric(&column(&schema, &batch, f, role, path)?, f, role, path)
                })
                .collect::<Result<Vec<_>>>()?;
            'rows: for r in 0..batch.num_rows() {
                let row = row0 + r as u64;
                if key.is_null(r) || time.is_null(r) {
                    return Err(data_err(
                        path,
                        format!("row {row}: null in the key or time column"),
                    ));
                }
                let mut x = Vec::with_capacity(feats.len());
                for (j, f) in feats.iter().enumerate() {
                    let v = f[r];
                    if !v.is_finite() {
                        match spec.nan {
                            NanPolicy::Error => {
                                return Err(data_err(
                                    path,
                                    format!(
                                        "row {row}: feature `{}` is {v} (set `nan` to skip, zero or ffill)",
                                        spec.features[j]
                                    ),
                                ))
                            }
                            NanPolicy::Skip => {
                                skipped_nan += 1;
                                continue 'rows;
                            }
                            NanPolicy::Zero | NanPolicy::Ffill => {}
                        }
                    }
                    x.push(v);
                }
                let e = extra.iter().map(|c| c[r]).collect();
                by_key
                    .entry(key.value(r).to_string())
                    .or_default()
                    .push((time.value(r), x, e));
            }
            rows += batch.num_rows() as u64;
            row0 += batch.num_rows() as u64;
        }
    }
    let mut keys: Vec<String> = by_key.keys().cloned().collect();
    keys.sort();
    let mut duplicates = 0u64;
    let mut sequences = Vec::with_capacity(keys.len());
    for k in keys {
        let mut steps = by_key.remove(&k).expect("key listed");
        steps.sort_by_key(|s| s.0); // stable: the first row of a repeated time stays first
        let mut seq = Sequence {
            key: k,
            times: Vec::new(),
            x: Vec::new(),
            extra: Vec::new(),
        };
        for (t, x, e) in steps {
            if seq.times.last() == Some(&t) {
                duplicates += 1;
                continue;
            }
            seq.times.push(t);
            seq.x.extend(x);
            seq.extra.extend(e);
        }
        sequences.push(seq);
    }
    Ok(Dataset {
        sequences,
        rows,
        duplicates,
        skipped_nan,
        files: files.len(),
    })
}

/// Per-feature mean and standard deviation (sample, as pandas' `std`) over finite values of
/// the given sequences.
pub fn fit_normalize(seqs: &[&Sequence], width: usize) -> Normalize {
    let mut n = vec![0f64; width];
    let mut sum = vec![0f64; width];
    for s in seqs {
        for row in s.x.chunks_exact(width) {
            for (j, &v) in row.iter().enumerate() {
                if v.is_finite() {
                    n[j] += 1.0;
                    sum[j] += v;
                }
            }
        }
    }
    let mean: Vec<f64> = sum
        .iter()
        .zip(&n)
        .map(|(s, c)| if *c > 0.0 { s / c } else { 0.0 })
        .collect();
    let mut ss = vec![0f64; width];
    for s in seqs {
        for row in s.x.chunks_exact(width) {
            for (j, &v) in row.iter().enumerate() {
                if v.is_finite() {
                    ss[j] += (v - mean[j]).powi(2);
                }
            }
        }
    }
    let std = ss
        .iter()
        .zip(&n)
        .map(|(s, c)| {
            let sd = if *c > 1.0 { (s / (c - 1.0)).sqrt() } else { 1.0 };
            if sd > 0.0 {
                sd
            } else {
                1.0
            }
        })
        .collect();
    Normalize { mean, std }
}

/// Normalizes in place, then fills non-finite values as the pipeline does: `zero` -> 0,
/// `ffill` -> the key's last finite value of that feature (0 before the first).
pub fn preprocess(seq: &mut Sequence, width: usize, norm: Option<&Normalize>, nan: NanPolicy) {
    let mut last = vec![0.0; width];
    for row in seq.x.chunks_exact_mut(width) {
        for (j, v) in row.iter_mut().enumerate() {
            if let Some(n) = norm {
                *v = (*v - n.mean[j]) / n.std[j];
            }
            if v.is_finite() {
                last[j] = *v;
            } else {
                *v = if nan == NanPolicy::Ffill { last[j] } else { 0.0 };
            }
        }
    }
}
