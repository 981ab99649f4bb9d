//! Training data: files read into one sequence per key, sorted by time, through the same
//! input layer a pipeline uses (file plan, column checks, [`route_batch`] with its
//! normalization and NaN policy, [`fill_forward`]), so a model is trained on exactly the f32
//! values it is served.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::input::arrow::{describe_row, numeric_owners, route_batch, values, Origin};
use crate::input::columns::numeric_column;
use crate::input::files::{FileSource, Plan};
use crate::input::{fill_forward, Columns, Prep};
use crate::record::{KeyRef, RejectReason};
use crate::vocab::{FileFormat, NanPolicy, Normalize};

/// Which data to read, and what besides the features.
#[derive(Debug, Clone)]
pub struct DataSpec {
    /// The files.
    pub source: FileSource,
    /// Key, time, features and their preparation.
    pub columns: Columns,
    /// Extra numeric columns: targets or the label.
    pub extra: Vec<String>,
    /// What the extra columns are, for messages ("target" or "label").
    pub extra_role: &'static str,
}

/// One key's steps, in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    /// The key (integer keys as decimal text).
    pub key: String,
    /// Step times, increasing.
    pub times: Vec<i64>,
    /// `len x features`, prepared exactly as a pipeline prepares them.
    pub x: Vec<f32>,
    /// `len x extra`, as read (NaN for null).
    pub extra: Vec<f64>,
}

impl Sequence {
    /// Number of steps.
    pub fn len(&self) -> usize {
        self.times.len()
    }

    /// Whether the sequence has no step.
    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }
}

/// Everything read, with counts for the summary.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// One sequence per key, sorted by key.
    pub sequences: Vec<Sequence>,
    /// Rows read.
    pub rows: u64,
    /// Rows dropped because their `(key, time)` was already seen.
    pub duplicates: u64,
    /// Rows dropped by `nan = "skip"`.
    pub skipped_nan: u64,
    /// Files read.
    pub files: usize,
}

/// One row before grouping: time, features, extra columns.
type Step = (i64, Vec<f32>, Vec<f64>);

/// Reads every file into per-key sequences sorted by time. A repeated `(key, time)` keeps
/// its first row (counted), as a pipeline rejects the later one as a duplicate; a null key
/// or time fails naming the row. `fill`: forward-fill features (off to see raw values).
pub fn load(spec: &DataSpec, fill: bool) -> Result<Dataset> {
    let plan = Plan::build(&spec.source, &spec.columns)?;
    let prep = Prep::new(&spec.columns);
    let names: Vec<&str> = spec
        .columns
        .names()
        .chain(spec.extra.iter().map(String::as_str))
        .collect();
    let mut by_key: HashMap<String, Vec<Step>> = HashMap::new();
    let (mut rows, mut skipped_nan) = (0u64, 0u64);
    for (u, unit) in plan.units.iter().enumerate() {
        let file = &plan.files[unit.file as usize];
        let path = &file.path;
        // Checked against the whole file, so that a message lists every column it has.
        for c in &spec.extra {
            numeric_column(&file.schema, c, spec.extra_role, path)?;
        }
        plan.read_unit(u, &names, 65_536, |_, batch, first_row| {
            let schema = batch.schema();
            let map = spec
                .columns
                .map(&schema, path, plan.format != FileFormat::Parquet)?;
            let extra_idx = spec
                .extra
                .iter()
                .map(|c| numeric_column(&schema, c, spec.extra_role, path))
                .collect::<Result<Vec<_>>>()?;
            let owners = numeric_owners(&batch, &extra_idx, path)?;
            let extra = values(&owners);
            let at = Origin {
                path,
                format: plan.format,
                source: unit.file,
                first_row,
            };
            let routed = route_batch(&batch, &map, &spec.columns, &prep, at, 1)?;
            for r in &routed.rejects {
                match r.reason {
                    RejectReason::NonFinite => skipped_nan += 1,
                    _ => {
                        return Err(Error::Data {
                            path: path.clone(),
                            msg: format!("{}: {}", describe_row(plan.format, r.row), r.detail),
                        })
                    }
                }
            }
            rows += routed.rows;
            let Some(b) = routed.batches.into_iter().next() else {
                return Ok(());
            };
            let w = spec.columns.features.len();
            for i in 0..b.len() {
                let key = match b.keys.get(i) {
                    KeyRef::Int(k) => k.to_string(),
                    KeyRef::Str(s) => s.to_string(),
                };
                let r = (b.rows[i] - first_row) as usize;
                by_key.entry(key).or_default().push((
                    b.times[i],
                    b.features[i * w..(i + 1) * w].to_vec(),
                    extra.iter().map(|c| c.get(r)).collect(),
                ));
            }
            Ok(())
        })?;
    }
    let mut keys: Vec<String> = by_key.keys().cloned().collect();
    keys.sort();
    let w = spec.columns.features.len();
    let ffill = fill && spec.columns.nan == NanPolicy::Ffill;
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
        let mut last = vec![0f32; w];
        for (t, mut x, e) in steps {
            if seq.times.last() == Some(&t) {
                duplicates += 1;
                continue;
            }
            if ffill {
                fill_forward(&mut x, &mut last);
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
        files: plan.files.len(),
    })
}

/// Per-feature mean and standard deviation (sample, as pandas' `std`) over finite values of
/// the given sequences.
pub fn fit_normalize(seqs: &[&Sequence], width: usize) -> Normalize {
    let mut n = vec![0f64; width];
    let mut sum = vec![0f64; width];
    let finite = |s: &&Sequence| {
        s.x.chunks_exact(width)
            .flat_map(|row| row.iter().enumerate().filter(|(_, v)| v.is_finite()))
            .map(|(j, &v)| (j, v as f64))
            .collect::<Vec<_>>()
    };
    for s in seqs {
        for (j, v) in finite(s) {
            n[j] += 1.0;
            sum[j] += v;
        }
    }
    let mean: Vec<f64> = sum
        .iter()
        .zip(&n)
        .map(|(s, c)| if *c > 0.0 { s / c } else { 0.0 })
        .collect();
    let mut ss = vec![0f64; width];
    for s in seqs {
        for (j, v) in finite(s) {
            ss[j] += (v - mean[j]).powi(2);
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
