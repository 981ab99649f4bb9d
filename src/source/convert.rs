//! Turning Arrow record batches into [`StepBatch`]es, one per destination worker: key and
//! time columns checked and converted, features cast to f32 and normalized, NaN/inf handled
//! by the pipeline's policy, each row routed by a well-mixed hash of its key.

use std::path::Path;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float32Type, Int64Type, Schema};

use crate::error::{Error, Result};
use crate::pipeline::config::{NanPolicy, SourceConfig};
use crate::record::{KeyColumn, KeyRef, Reject, RejectReason, StepBatch};

/// Column positions and the checked types of key and time, resolved once per file schema.
#[derive(Debug, Clone)]
pub struct ColumnMap {
    pub key: usize,
    pub time: usize,
    pub features: Vec<usize>,
    pub key_type: DataType,
    pub time_type: DataType,
}

fn is_int(t: &DataType) -> bool {
    t.is_integer()
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
        || matches!(t, DataType::Dictionary(_, v) if is_string(v))
}

/// Finds the pipeline's columns in `schema`, checking their types. `file` names the source
/// in messages.
pub fn map_columns(schema: &Schema, cfg: &SourceConfig, file: &Path) -> Result<ColumnMap> {
    let find = |col: &str, role: &str| -> Result<usize> {
        schema.index_of(col).map_err(|_| {
            let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            Error::Data {
                path: file.to_path_buf(),
                msg: format!(
                    "{role} column `{col}` not found; the file has columns: {}",
                    have.join(", ")
                ),
            }
        })
    };
    let key = find(&cfg.key, "key")?;
    let time = find(&cfg.time, "time")?;
    let key_type = schema.field(key).data_type().clone();
    let time_type = schema.field(time).data_type().clone();
    let bad = |col: &str, t: &DataType, want: &str| Error::Data {
        path: file.to_path_buf(),
        msg: format!("column `{col}` has type {t}, expected {want}"),
    };
    if !(is_int(&key_type) || is_string(&key_type)) {
        return Err(bad(&cfg.key, &key_type, "a string or integer key"));
    }
    if !(is_int(&time_type)
        || matches!(
            time_type,
            DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
        ))
    {
        return Err(bad(&cfg.time, &time_type, "an integer or timestamp time"));
    }
    let mut features = Vec::with_capacity(cfg.features.len());
    for f in &cfg.features {
        let i = find(f, "feature")?;
        let t = schema.field(i).data_type();
        if !(t.is_numeric() || *t == DataType::Boolean) {
            return Err(bad(f, t, "a numeric feature"));
        }
        features.push(i);
    }
    Ok(ColumnMap {
        key,
        time,
        features,
        key_type,
        time_type,
    })
}

/// Where converted rows go: one batch per destination worker, plus rejects.
pub struct Routed {
    pub batches: Vec<StepBatch>,
    pub rejects: Vec<Reject>,
    /// Rows read (accepted or not).
    pub rows: u64,
}

enum KeyArr {
    Int(ArrayRef),
    Str(ArrayRef),
}

/// Converts one record batch. `first_row` is the file row of the batch's first row;
/// `source` indexes the file in the plan. NaN under `NanPolicy::Error` fails with the file,
/// row and column.
#[allow(clippy::too_many_arguments)]
pub fn route_batch(
    batch: &RecordBatch,
    cols: &ColumnMap,
    cfg: &SourceConfig,
    file: &Path,
    source: u32,
    first_row: u64,
    peers: usize,
    describe_row: &dyn Fn(u64) -> String,
) -> Result<Routed> {
    let arrow_err = |e: arrow::error::ArrowError| Error::Data {
        path: file.to_path_buf(),
        msg: e.to_string(),
    };
    let key_col = batch.column(cols.key);
    let keys = if is_int(&cols.key_type) {
        KeyArr::Int(cast(key_col, &DataType::Int64).map_err(arrow_err)?)
    } else {
        KeyArr::Str(cast(key_col, &DataType::Utf8).map_err(arrow_err)?)
    };
    let times = cast(batch.column(cols.time), &DataType::Int64).map_err(arrow_err)?;
    let times = times.as_primitive::<Int64Type>();
    let feats: Vec<ArrayRef> = cols
        .features
        .iter()
        .map(|&i| cast(batch.column(i), &DataType::Float32).map_err(arrow_err))
        .collect::<Result<_>>()?;
    let feats: Vec<_> = feats.iter().map(|a| a.as_primitive::<Float32Type>()).collect();
    let width = feats.len();
    // In f64, as the statistics were computed: f32 here costs ~1e-7 relative per input.
    let norm = cfg.normalize.as_ref().map(|n| (&n.mean, &n.std));
    let proto = match keys {
        KeyArr::Int(_) => KeyColumn::Int(Vec::new()),
        KeyArr::Str(_) => KeyColumn::empty_str(),
    };
    let mut out = Routed {
        batches: (0..peers)
            .map(|_| StepBatch::new(source, proto.new_like()))
            .collect(),
        rejects: Vec::new(),
        rows: batch.num_rows() as u64,
    };
    let mut row_buf = vec![0f32; width];
    for r in 0..batch.num_rows() {
        let file_row = first_row + r as u64;
        let key = match &keys {
            KeyArr::Int(a) if a.is_valid(r) => Some(KeyRef::Int(a.as_primitive::<Int64Type>().value(r))),
            KeyArr::Str(a) if a.is_valid(r) => Some(KeyRef::Str(a.as_string::<i32>().value(r))),
            _ => None,
        };
        let time = times.is_valid(r).then(|| times.value(r));
        let (Some(key), Some(time)) = (key, time) else {
            out.rejects.push(Reject {
                reason: RejectReason::Malformed,
                source,
                row: file_row,
                key: key.map(KeyRef::to_owned),
                time,
                last_time: None,
                detail: format!(
                    "null {} column",
                    if key.is_none() {
                        format!("key `{}`", cfg.key)
                    } else {
                        format!("time `{}`", cfg.time)
                    }
                ),
            });
            continue;
        };
        let mut non_finite = None;
        for (j, a) in feats.iter().enumerate() {
            let mut v = if a.is_valid(r) { a.value(r) } else { f32::NAN };
            if let Some((mean, std)) = norm {
                v = ((v as f64 - mean[j]) / std[j]) as f32;
            }
            if !v.is_finite() {
                match cfg.nan {
                    NanPolicy::Error => {
                        return Err(Error::Data {
                            path: file.to_path_buf(),
                            msg: format!(
                                "{}: feature `{}` is {} (key {key}, time {time}); set [source] nan = \
                                 \"skip\", \"zero\" or \"ffill\" to accept such rows",
                                describe_row(file_row),
                                cfg.features[j],
                                if a.is_valid(r) {
                                    format!("{}", a.value(r))
                                } else {
                                    "null".into()
                                },
                            ),
                        })
                    }
                    NanPolicy::Zero => v = 0.0,
                    NanPolicy::Ffill => v = f32::NAN, // filled per key by the keyed operator
                    NanPolicy::Skip => non_finite = Some(j),
                }
            }
            row_buf[j] = v;
        }
        if let Some(j) = non_finite {
            out.rejects.push(Reject {
                reason: RejectReason::NonFinite,
                source,
                row: file_row,
                key: Some(key.to_owned()),
                time: Some(time),
                last_time: None,
                detail: format!("feature `{}` is not finite", cfg.features[j]),
            });
            continue;
        }
        let dest = (key.route_hash() % peers as u64) as usize;
        let b = &mut out.batches[dest];
        b.rows.push(file_row);
        b.keys.push(key);
        b.times.push(time);
        b.features.extend_from_slice(&row_buf);
    }
    Ok(out)
}
