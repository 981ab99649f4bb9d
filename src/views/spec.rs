//! `[[views]]` in the pipeline file: what each view computes and where its changelog goes.
//!
//! ```toml
//! [[views]]
//! name = "alerts_per_site"
//! where = "score > 0.9"                 # optional: comparisons of outputs, joined by "and"
//! join = "../datasets/sample/sensors.parquet.meta.csv"   # optional side table (CSV or Parquet)
//! join_key = "sensor_id"                # its key column (default: the source's key name)
//! group_by = ["site"]                   # key column, side-table columns; none = one group
//! aggregate = "count"                   # count | sum | mean | min | max | top_k
//! of = "score"                          # the output aggregated (all but count)
//! k = 3                                 # top_k
//! window = { size = 3600000, slide = 600000 }   # optional, in units of the time column
//! output = "../out/alerts_per_site.jsonl"       # changelog: .jsonl / .parquet / .csv, "-" stdout
//! snapshot = "../out/alerts_per_site.final.csv" # optional: the final state of a bounded run
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::vocab::{clean_join, one_line};

/// `aggregate`: how a group's predictions combine into its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// Number of predictions in the group.
    Count,
    /// Sum of output `of`.
    Sum,
    /// Mean of output `of`.
    Mean,
    /// Minimum of output `of`.
    Min,
    /// Maximum of output `of`.
    Max,
    /// The `k` keys with the highest `of`, each with its score.
    TopK,
}

impl Aggregate {
    /// The name as written in the pipeline file.
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::Sum => "sum",
            Aggregate::Mean => "mean",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::TopK => "top_k",
        }
    }
}

/// Comparison operators of `where`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

/// One comparison `output op value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// Index of the compared output.
    pub output: usize,
    /// The comparison.
    pub op: Op,
    /// The number compared against.
    pub value: f32,
}

impl Condition {
    /// Whether a prediction's `outputs` pass (a NaN output passes only `!=`).
    pub fn holds(&self, outputs: &[f32]) -> bool {
        let x = outputs[self.output];
        match self.op {
            Op::Gt => x > self.value,
            Op::Ge => x >= self.value,
            Op::Lt => x < self.value,
            Op::Le => x <= self.value,
            Op::Eq => x == self.value,
            Op::Ne => x != self.value,
        }
    }
}

/// Where a group column's values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupSource {
    /// The pipeline's key.
    Key,
    /// Column `i` of the side table's attributes.
    Side(usize),
}

/// Tumbling (`slide == size`) or sliding windows over event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Window length, in units of the time column.
    pub size: i64,
    /// Distance between window starts; `None` = `size` (tumbling).
    pub slide: Option<i64>,
}

impl Window {
    /// The slide, `size` if not given.
    pub fn slide(&self) -> i64 {
        self.slide.unwrap_or(self.size)
    }

    /// Starts of the windows that contain event time `t`.
    pub fn starts(&self, t: i64) -> impl Iterator<Item = i64> {
        let (size, slide) = (self.size, self.slide());
        let last = t.div_euclid(slide) * slide;
        (0..)
            .map(move |i| last - i * slide)
            .take_while(move |&s| s > t - size)
    }
}

/// A validated view.
#[derive(Debug, Clone)]
pub struct ViewSpec {
    /// The view's name, unique in the pipeline.
    pub name: String,
    /// `where`: every one must hold for a prediction to count.
    pub conditions: Vec<Condition>,
    /// `join`: the side table joined on the key.
    pub side: Option<SideTable>,
    /// `group_by` columns and where each comes from; empty = one group.
    pub group_by: Vec<(String, GroupSource)>,
    /// How each group's value is computed.
    pub aggregate: Aggregate,
    /// Index of the aggregated output (unused by count).
    pub of: usize,
    /// Name of output `of` (empty for count).
    pub of_name: String,
    /// `k` of top_k (0 for other aggregates).
    pub k: usize,
    /// Event-time windows; a window's start is appended to the group.
    pub window: Option<Window>,
    /// `None` = stdout.
    pub output: Option<PathBuf>,
    /// Where a bounded run writes the view's final state, if anywhere.
    pub snapshot: Option<PathBuf>,
}

/// A side table: file, key column, attribute columns (all other columns).
#[derive(Debug, Clone, PartialEq)]
pub struct SideTable {
    /// The table's file: Parquet by its extension, CSV (with a header) otherwise.
    pub path: PathBuf,
    /// Its key column (`join_key`, default the source's key name).
    pub key: String,
    /// Attribute columns: every column but the key, in file order.
    pub columns: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawView {
    name: String,
    #[serde(rename = "where")]
    condition: Option<String>,
    join: Option<String>,
    join_key: Option<String>,
    #[serde(default)]
    group_by: Vec<String>,
    aggregate: Aggregate,
    of: Option<String>,
    k: Option<usize>,
    window: Option<Window>,
    output: String,
    snapshot: Option<String>,
}

/// Parses `where`: `output op number [and ...]`.
fn parse_conditions(text: &str, names: &[String]) -> std::result::Result<Vec<Condition>, String> {
    let mut out = Vec::new();
    for part in text.split(" and ") {
        let toks: Vec<&str> = part.split_whitespace().collect();
        let [name, op, value] = toks[..] else {
            return Err(format!(
                "`where` part `{}` is not `OUTPUT OP NUMBER` (e.g. `score > 0.9`)",
                part.trim()
            ));
        };
        let output = names.iter().position(|n| n == name).ok_or_else(|| {
            format!(
                "`where` names `{name}`, not an output (outputs: {})",
                names.join(", ")
            )
        })?;
        let op = match op {
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            "==" => Op::Eq,
            "!=" => Op::Ne,
            o => return Err(format!("`where` operator `{o}`: use one of > >= < <= == !=")),
        };
        let value = value
            .parse::<f32>()
            .map_err(|_| format!("`where` value `{value}` is not a number"))?;
        out.push(Condition { output, op, value });
    }
    Ok(out)
}

/// Parses and checks every `[[views]]` table of a pipeline. `key` is the source's key
/// column, `names` the output names; `side_columns` reads a side table's column names.
pub fn parse_views(
    raw: &[toml::Value],
    pipeline: &Path,
    key: &str,
    names: &[String],
    side_columns: &dyn Fn(&Path) -> Result<Vec<String>>,
) -> Result<Vec<ViewSpec>> {
    let base = pipeline.parent().unwrap_or(Path::new(""));
    let mut views: Vec<ViewSpec> = Vec::new();
    for (i, value) in raw.iter().enumerate() {
        let err = |msg: String| Error::PipelineConfig {
            path: pipeline.to_path_buf(),
            msg: format!("[[views]] #{i}: {msg}"),
        };
        let v: RawView = value
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| err(one_line(&e.to_string())))?;
        let err = |msg: String| Error::PipelineConfig {
            path: pipeline.to_path_buf(),
            msg: format!("[[views]] \"{}\": {msg}", v.name),
        };
        if views.iter().any(|o| o.name == v.name) {
            return Err(err("two views have this name".into()));
        }
        let conditions = match &v.condition {
            Some(c) => parse_conditions(c, names).map_err(err)?,
            None => Vec::new(),
        };
        let side = match &v.join {
            Some(p) => {
                let path = clean_join(base, p);
                let all = side_columns(&path)?;
                let jk = v.join_key.clone().unwrap_or_else(|| key.to_string());
                if !all.contains(&jk) {
                    return Err(err(format!(
                        "side table {} has no key column `{jk}` (columns: {}); set `join_key`",
                        path.display(),
                        all.join(", ")
                    )));
                }
                let columns = all.into_iter().filter(|c| *c != jk).collect();
                Some(SideTable {
                    path,
                    key: jk,
                    columns,
                })
            }
            None => {
                if v.join_key.is_some() {
                    return Err(err("`join_key` without `join`".into()));
                }
                None
            }
        };
        let mut group_by = Vec::new();
        for g in &v.group_by {
            let src = if g == key {
                GroupSource::Key
            } else if let Some(j) = side.as_ref().and_then(|s| s.columns.iter().position(|c| c == g)) {
                GroupSource::Side(j)
            } else {
                return Err(err(format!(
                    "group_by column `{g}` is neither the key `{key}` nor a column of the side table{}",
                    side.as_ref()
                        .map(|s| format!(" ({})", s.columns.join(", ")))
                        .unwrap_or_default()
                )));
            };
            group_by.push((g.clone(), src));
        }
        let (of, of_name) = match (v.aggregate, &v.of) {
            (Aggregate::Count, None) => (0, String::new()),
            (Aggregate::Count, Some(_)) => return Err(err("`of` does not apply to count".into())),
            (a, None) => {
                return Err(err(format!(
                    "aggregate = \"{}\" needs `of` (an output name)",
                    a.as_str()
                )))
            }
            (_, Some(o)) => (
                names.iter().position(|n| n == o).ok_or_else(|| {
                    err(format!(
                        "`of` names `{o}`, not an output (outputs: {})",
                        names.join(", ")
                    ))
                })?,
                o.clone(),
            ),
        };
        let k = match (v.aggregate, v.k) {
            (Aggregate::TopK, Some(k)) if k > 0 => k,
            (Aggregate::TopK, _) => return Err(err("aggregate = \"top_k\" needs `k` >= 1".into())),
            (_, Some(_)) => return Err(err("`k` applies to top_k only".into())),
            (_, None) => 0,
        };
        if let Some(w) = &v.window {
            if w.size <= 0 || w.slide() <= 0 || w.slide() > w.size {
                return Err(err("window needs size > 0 and 0 < slide <= size".into()));
            }
        }
        let output = match v.output.as_str() {
            "-" => None,
            p => Some(clean_join(base, p)),
        };
        views.push(ViewSpec {
            name: v.name.clone(),
            conditions,
            side,
            group_by,
            aggregate: v.aggregate,
            of,
            of_name,
            k,
            window: v.window,
            output,
            snapshot: v.snapshot.as_deref().map(|p| clean_join(base, p)),
        });
    }
    Ok(views)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_starts() {
        let w = Window {
            size: 10,
            slide: Some(5),
        };
        assert_eq!(w.starts(12).collect::<Vec<_>>(), vec![10, 5]);
        assert_eq!(w.starts(10).collect::<Vec<_>>(), vec![10, 5]);
        assert_eq!(w.starts(9).collect::<Vec<_>>(), vec![5, 0]);
        let t = Window {
            size: 10,
            slide: None,
        };
        assert_eq!(t.starts(-1).collect::<Vec<_>>(), vec![-10]);
    }

    #[test]
    fn conditions() {
        let names = vec!["score".to_string(), "err".to_string()];
        let c = parse_conditions("score > 0.9 and err <= 2", &names).unwrap();
        assert!(c[0].holds(&[0.95, 1.0]) && c[1].holds(&[0.95, 2.0]) && !c[1].holds(&[0.95, 2.5]));
        assert!(parse_conditions("scor > 1", &names)
            .unwrap_err()
            .contains("not an output"));
        assert!(parse_conditions("score >> 1", &names)
            .unwrap_err()
            .contains("operator"));
        assert!(parse_conditions("score > x", &names)
            .unwrap_err()
            .contains("not a number"));
    }
}
