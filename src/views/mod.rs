//! Views: incrementally maintained aggregates over each key's latest prediction (or over
//! every prediction in event-time windows), optionally joined with side tables, written as
//! changelogs `(group, value, epoch, diff)`. See `spec.rs` for the pipeline syntax and
//! `flow.rs` for the differential dataflow.

pub mod flow;
pub mod output;
pub mod spec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;

use crate::error::{Error, Result};
use crate::record::Key;
use crate::vocab::FileFormat;
use flow::SideRow;
use spec::ViewSpec;

/// A side table's rows: Parquet or Arrow by its extension, CSV otherwise.
fn read_side_batches(path: &Path) -> Result<Vec<RecordBatch>> {
    let format = match FileFormat::from_path(path) {
        Some(f @ (FileFormat::Parquet | FileFormat::Arrow)) => f,
        _ => FileFormat::Csv,
    };
    crate::input::files::read_all(path, format)
}

/// Column names of a side table (CSV with a header, or Parquet).
pub fn side_columns(path: &Path) -> Result<Vec<String>> {
    let batches = read_side_batches(path)?;
    let b = batches.first().ok_or_else(|| Error::Data {
        path: path.to_path_buf(),
        msg: "side table has no rows".into(),
    })?;
    Ok(b.schema().fields().iter().map(|f| f.name().clone()).collect())
}

fn key_at(col: &dyn Array, i: usize) -> Option<Key> {
    if col.is_null(i) {
        return None;
    }
    Some(match col.data_type() {
        t if t.is_integer() => {
            let c = arrow::compute::cast(&col.slice(i, 1), &DataType::Int64).ok()?;
            Key::Int(c.as_primitive::<arrow::datatypes::Int64Type>().value(0))
        }
        _ => Key::Str(arrow::util::display::array_value_to_string(col, i).ok()?.into()),
    })
}

/// Reads a side table as key -> attribute values (attributes as text).
pub fn read_side_table(path: &Path, key: &str, columns: &[String]) -> Result<HashMap<Key, Vec<Key>>> {
    let mut out = HashMap::new();
    for b in read_side_batches(path)? {
        let schema = b.schema();
        let idx = |c: &str| {
            schema.index_of(c).map_err(|_| Error::Data {
                path: path.to_path_buf(),
                msg: format!("side table lost column `{c}`"),
            })
        };
        let k = b.column(idx(key)?).clone();
        let cols: Vec<_> = columns
            .iter()
            .map(|c| idx(c).map(|i| b.column(i).clone()))
            .collect::<Result<_>>()?;
        for i in 0..b.num_rows() {
            let Some(key) = key_at(k.as_ref(), i) else {
                continue;
            };
            let attrs = cols
                .iter()
                .map(|c| match key_at(c.as_ref(), i) {
                    Some(Key::Int(v)) => Key::Str(v.to_string().into()),
                    Some(k) => k,
                    None => Key::Str("".into()),
                })
                .collect();
            out.insert(key, attrs);
        }
    }
    Ok(out)
}

/// The distinct side tables of a pipeline's views, their current contents and file times.
pub struct SideTables {
    /// Distinct `(path, key column, attribute columns)`, by table index.
    pub tables: Vec<(PathBuf, String, Vec<String>)>,
    current: Vec<HashMap<Key, Vec<Key>>>,
    mtimes: Vec<Option<SystemTime>>,
    /// View index -> table index.
    pub of_view: Vec<u32>,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl SideTables {
    /// Reads each distinct side table of `views` once; a view without one maps to `u32::MAX`.
    pub fn load(views: &[ViewSpec]) -> Result<SideTables> {
        let mut t = SideTables {
            tables: Vec::new(),
            current: Vec::new(),
            mtimes: Vec::new(),
            of_view: Vec::new(),
        };
        for v in views {
            let idx = match &v.side {
                None => u32::MAX,
                Some(s) => {
                    let entry = (s.path.clone(), s.key.clone(), s.columns.clone());
                    match t.tables.iter().position(|e| *e == entry) {
                        Some(i) => i as u32,
                        None => {
                            t.current.push(read_side_table(&s.path, &s.key, &s.columns)?);
                            t.mtimes.push(mtime(&s.path));
                            t.tables.push(entry);
                            (t.tables.len() - 1) as u32
                        }
                    }
                }
            };
            t.of_view.push(idx);
        }
        Ok(t)
    }

    /// Every row of every table (the initial side collection).
    pub fn rows(&self) -> Vec<SideRow> {
        let mut out = Vec::new();
        for (i, table) in self.current.iter().enumerate() {
            for (k, a) in table {
                out.push((i as u32, k.clone(), a.clone()));
            }
        }
        out.sort();
        out
    }

    /// Re-reads tables whose file changed; returns the updates (old rows -1, new rows +1).
    /// A table that fails to read keeps its previous contents (reported to the caller).
    pub fn reload_changed(&mut self) -> (Vec<(SideRow, isize)>, Vec<Error>) {
        let (mut updates, mut errors) = (Vec::new(), Vec::new());
        for i in 0..self.tables.len() {
            let (path, key, cols) = &self.tables[i];
            let m = mtime(path);
            if m == self.mtimes[i] {
                continue;
            }
            match read_side_table(path, key, cols) {
                Ok(new) => {
                    self.mtimes[i] = m;
                    let old = std::mem::replace(&mut self.current[i], new);
                    for (k, a) in &old {
                        if self.current[i].get(k) != Some(a) {
                            updates.push(((i as u32, k.clone(), a.clone()), -1));
                        }
                    }
                    for (k, a) in &self.current[i] {
                        if old.get(k) != Some(a) {
                            updates.push(((i as u32, k.clone(), a.clone()), 1));
                        }
                    }
                }
                Err(e) => {
                    self.mtimes[i] = m;
                    errors.push(e);
                }
            }
        }
        updates.sort();
        (updates, errors)
    }
}
