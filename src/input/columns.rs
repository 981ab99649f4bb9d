//! Which columns make a step, and finding them in a file's schema with their types checked.
//! The same description serves pipelines (`[source]`), live lines and training (`[data]`).

use std::path::Path;

use arrow::datatypes::{DataType, Schema};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::vocab::{NanPolicy, Normalize};

/// The key, time and feature columns of the input, and how features are prepared.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Columns {
    /// The sequence a row belongs to: a string or integer column.
    pub key: String,
    /// Orders the steps of one key: an integer or timestamp column.
    pub time: String,
    /// The model's inputs, in order.
    pub features: Vec<String>,
    /// Optional per-feature `(x - mean) / std`.
    pub normalize: Option<Normalize>,
    /// What a non-finite feature does.
    #[serde(default)]
    pub nan: NanPolicy,
}

impl Columns {
    /// Checks the lists against each other: features present and distinct, key and time
    /// separate, statistics matching. Messages name the setting; the caller adds the section.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.features.is_empty() {
            return Err("features is empty: name the model's input columns in order".into());
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(f) = self.features.iter().find(|f| !seen.insert(*f)) {
            return Err(format!("features lists `{f}` twice"));
        }
        for (what, col) in [("key", &self.key), ("time", &self.time)] {
            if self.features.contains(col) {
                return Err(format!("{what} column `{col}` is also listed as a feature"));
            }
        }
        if self.key == self.time {
            return Err(format!("key and time are the same column `{}`", self.key));
        }
        match &self.normalize {
            Some(n) => n.check(&self.features),
            None => Ok(()),
        }
    }

    /// Finds the columns in `schema`, checking their types; `file` names the source. `text`:
    /// the file is CSV or JSON lines, whose feature cells are parsed one by one (a word is a
    /// per-row reject), where Parquet's types are checked.
    pub fn map(&self, schema: &Schema, file: &Path, text: bool) -> Result<ColumnMap> {
        let key = find_column(schema, &self.key, "key", file)?;
        let time = find_column(schema, &self.time, "time", file)?;
        let key_type = schema.field(key).data_type().clone();
        let time_type = schema.field(time).data_type().clone();
        if !(key_type.is_integer() || is_string(&key_type)) {
            return Err(bad_type(file, &self.key, &key_type, "a string or integer key"));
        }
        if !(time_type.is_integer()
            || matches!(
                time_type,
                DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
            ))
        {
            return Err(bad_type(
                file,
                &self.time,
                &time_type,
                "an integer or timestamp time",
            ));
        }
        let features = self
            .features
            .iter()
            .map(|f| match text {
                // Text formats have no types: each cell is read as a number (or rejected).
                true => find_column(schema, f, "feature", file),
                false => numeric_column(schema, f, "feature", file),
            })
            .collect::<Result<_>>()?;
        Ok(ColumnMap {
            key,
            time,
            features,
            key_type,
            time_type,
        })
    }

    /// The names of every column a step needs: key, time, features.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        [self.key.as_str(), self.time.as_str()]
            .into_iter()
            .chain(self.features.iter().map(String::as_str))
    }
}

/// Column positions and the checked types of key and time, resolved once per file schema.
#[derive(Debug, Clone)]
pub struct ColumnMap {
    /// Position of the key column.
    pub key: usize,
    /// Position of the time column.
    pub time: usize,
    /// Positions of the feature columns, in feature order.
    pub features: Vec<usize>,
    /// The key column's Arrow type (the output repeats it).
    pub key_type: DataType,
    /// The time column's Arrow type (the output repeats it).
    pub time_type: DataType,
}

/// Strings in any Arrow layout (plain, large, view, dictionary).
pub fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
        || matches!(t, DataType::Dictionary(_, v) if is_string(v))
}

fn bad_type(file: &Path, col: &str, t: &DataType, want: &str) -> Error {
    Error::Data {
        path: file.to_path_buf(),
        msg: format!("column `{col}` has type {t}, expected {want}"),
    }
}

/// The position of column `name` (in the role `role`, for the message listing what the
/// file has when it is missing).
pub fn find_column(schema: &Schema, name: &str, role: &str, file: &Path) -> Result<usize> {
    schema.index_of(name).map_err(|_| {
        let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        Error::Data {
            path: file.to_path_buf(),
            msg: format!(
                "{role} column `{name}` not found; the file has columns: {}",
                have.join(", ")
            ),
        }
    })
}

/// The position of a numeric (or boolean) column.
pub fn numeric_column(schema: &Schema, name: &str, role: &str, file: &Path) -> Result<usize> {
    let i = find_column(schema, name, role, file)?;
    let t = schema.field(i).data_type();
    if !(t.is_numeric() || *t == DataType::Boolean) {
        return Err(bad_type(file, name, t, &format!("a numeric {role}")));
    }
    Ok(i)
}
