//! Arrow record batches to steps: key and time converted, features read as f64 and prepared
//! by [`Prep`], each row routed to the worker that owns its key. Files and training both
//! come through [`route_batch`].

use std::path::Path;

use arrow::array::{Array, ArrayRef, AsArray, Float32Array, Float64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int64Type};

use super::columns::{ColumnMap, Columns};
use super::prep::Prep;
use super::Routed;
use crate::error::{Error, Result};
use crate::record::{KeyRef, RejectReason};
use crate::vocab::FileFormat;

/// Where a record batch comes from, for routing and messages.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The file.
    pub path: &'a Path,
    /// Its format (rows of text files are named by line).
    pub format: FileFormat,
    /// The file's index in the plan.
    pub source: u32,
    /// Row number (in the file) of the batch's first row.
    pub first_row: u64,
}

/// How a row of a file is named in messages: text files by line, Parquet by row.
pub fn describe_row(format: FileFormat, row: u64) -> String {
    match format {
        FileFormat::Csv => format!("line {}", row + 2),
        FileFormat::Jsonl => format!("line {}", row + 1),
        FileFormat::Parquet | FileFormat::Arrow => format!("row {row}"),
    }
}

/// A numeric column read as f64 without copying f32/f64 data (a cast to f64 of every f32
/// batch allocated 4 MB per 64k rows of 8 features).
pub enum Values<'a> {
    /// Single precision, widened per value.
    F32(&'a Float32Array),
    /// Double precision.
    F64(&'a Float64Array),
}

impl Values<'_> {
    /// Row `r`, NaN for a null.
    #[inline]
    pub fn get(&self, r: usize) -> f64 {
        match self {
            Values::F32(a) if a.is_valid(r) => a.value(r) as f64,
            Values::F64(a) if a.is_valid(r) => a.value(r),
            _ => f64::NAN,
        }
    }
}

/// A numeric column of a batch, owned: f32/f64 as they are, other numeric types cast to
/// f64, and text cells (CSV and JSON lines have no types: a column with one word in it is
/// text) parsed one by one, a cell that is not a number marked for a per-row reject.
pub struct Numeric {
    array: ArrayRef,
    /// Text columns: the cell of each row that is not a number.
    bad: Vec<Option<String>>,
}

impl Numeric {
    /// The text of row `r` when it is not a number.
    #[inline]
    pub fn bad(&self, r: usize) -> Option<&str> {
        self.bad.get(r).and_then(|b| b.as_deref())
    }
}

/// A text cell as a number: blank, `null` or `nan` is missing (NaN); `inf`, `Infinity` are
/// infinite (the NaN policy decides); anything else that does not parse is not a number.
fn parse_cell(s: &str) -> Result<f64, ()> {
    let t = s.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("null") || t.eq_ignore_ascii_case("nan") {
        return Ok(f64::NAN);
    }
    t.parse::<f64>().map_err(|_| ())
}

/// Columns `idx` of `batch` as [`Numeric`] columns.
pub fn numeric_owners(batch: &RecordBatch, idx: &[usize], file: &Path) -> Result<Vec<Numeric>> {
    idx.iter()
        .map(|&i| {
            let a = batch.column(i);
            let err = |e: arrow::error::ArrowError| Error::Data {
                path: file.to_path_buf(),
                msg: format!("column `{}`: {e}", batch.schema().field(i).name()),
            };
            Ok(match a.data_type() {
                DataType::Float32 | DataType::Float64 => Numeric {
                    array: a.clone(),
                    bad: Vec::new(),
                },
                t if crate::input::columns::is_string(t) => {
                    let text = cast(a, &DataType::Utf8).map_err(err)?;
                    let text = text.as_string::<i32>();
                    let mut bad = vec![None; text.len()];
                    let values: Float64Array = (0..text.len())
                        .map(|r| match text.is_valid(r).then(|| parse_cell(text.value(r))) {
                            None => None,
                            Some(Ok(v)) => Some(v),
                            Some(Err(())) => {
                                bad[r] = Some(text.value(r).to_string());
                                None
                            }
                        })
                        .collect();
                    Numeric {
                        array: std::sync::Arc::new(values),
                        bad,
                    }
                }
                _ => Numeric {
                    array: cast(a, &DataType::Float64).map_err(err)?,
                    bad: Vec::new(),
                },
            })
        })
        .collect()
}

/// Views over what [`numeric_owners`] returned.
pub fn values(owners: &[Numeric]) -> Vec<Values<'_>> {
    owners
        .iter()
        .map(|n| match n.array.data_type() {
            DataType::Float32 => Values::F32(n.array.as_primitive::<Float32Type>()),
            _ => Values::F64(n.array.as_primitive::<Float64Type>()),
        })
        .collect()
}

/// Converts one record batch into steps for `peers` workers. A null key or time is a
/// malformed row; a non-finite feature follows the NaN policy (`error` fails naming the
/// file, row and column; `skip` rejects the row).
pub fn route_batch(
    batch: &RecordBatch,
    map: &ColumnMap,
    columns: &Columns,
    prep: &Prep,
    at: Origin<'_>,
    peers: usize,
) -> Result<Routed> {
    let arrow_err = |e: arrow::error::ArrowError| Error::Data {
        path: at.path.to_path_buf(),
        msg: e.to_string(),
    };
    let key_col = batch.column(map.key);
    let (ints, strs) = if map.key_type == DataType::UInt64 {
        // Keys past i64::MAX keep their bits (the output writes them back as u64).
        let u = key_col.as_primitive::<arrow::datatypes::UInt64Type>();
        let wrapped: arrow::array::Int64Array = u.iter().map(|v| v.map(|v| v as i64)).collect();
        (Some(std::sync::Arc::new(wrapped) as ArrayRef), None)
    } else if map.key_type.is_integer() {
        (Some(cast(key_col, &DataType::Int64).map_err(arrow_err)?), None)
    } else {
        (None, Some(cast(key_col, &DataType::Utf8).map_err(arrow_err)?))
    };
    let ints = ints.as_ref().map(|a| a.as_primitive::<Int64Type>());
    let strs = strs.as_ref().map(|a| a.as_string::<i32>());
    let times = cast(batch.column(map.time), &DataType::Int64).map_err(arrow_err)?;
    let times = times.as_primitive::<Int64Type>();
    let owners = numeric_owners(batch, &map.features, at.path)?;
    let feats = values(&owners);
    let mut out = Routed::new(peers, at.source);
    out.rows = batch.num_rows() as u64;
    let mut row_buf = vec![0f32; feats.len()];
    for r in 0..batch.num_rows() {
        let row = at.first_row + r as u64;
        let key = match (ints, strs) {
            (Some(a), _) if a.is_valid(r) => Some(KeyRef::Int(a.value(r))),
            (_, Some(a)) if a.is_valid(r) => Some(KeyRef::Str(a.value(r))),
            // CSV cannot tell an empty key from a missing one: empty, as Parquet's "".
            (_, Some(_)) if at.format == FileFormat::Csv => Some(KeyRef::Str("")),
            _ => None,
        };
        let time = times.is_valid(r).then(|| times.value(r));
        let (Some(key), Some(time)) = (key, time) else {
            let which = match key {
                None => format!("key `{}`", columns.key),
                Some(_) => format!("time `{}`", columns.time),
            };
            out.reject(
                RejectReason::Malformed,
                row,
                key,
                time,
                format!("null {which} column"),
            );
            continue;
        };
        if let Some((j, cell)) = owners
            .iter()
            .enumerate()
            .find_map(|(j, n)| n.bad(r).map(|c| (j, c)))
        {
            let detail = format!("feature `{}` = `{cell}` is not a number", columns.features[j]);
            out.reject(RejectReason::Malformed, row, Some(key), Some(time), detail);
            continue;
        }
        if let Err(j) = prep.row(|j| feats[j].get(r), &mut row_buf) {
            if columns.nan == crate::vocab::NanPolicy::Skip {
                let detail = format!("feature `{}` is not finite", columns.features[j]);
                out.reject(RejectReason::NonFinite, row, Some(key), Some(time), detail);
                continue;
            }
            let raw = feats[j].get(r);
            return Err(Error::Data {
                path: at.path.to_path_buf(),
                msg: format!(
                    "{}: feature `{}` is {} (key {key}, time {time}); set nan = \"skip\", \"zero\" \
                     or \"ffill\" to accept such rows",
                    describe_row(at.format, row),
                    columns.features[j],
                    if raw.is_nan() && !owners[j].array.is_valid(r) {
                        "null".to_string()
                    } else {
                        format!("{raw:?}") // 1e300, not 301 digits
                    },
                ),
            });
        }
        out.push(key, time, row, &row_buf, None);
    }
    Ok(out)
}
