//! The pipeline TOML: `[source]`, `[model]`, `[output]`. Parsed and checked against the
//! model once, before any data is read, so a run never fails half-way on a config mistake.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::config::one_line;
use crate::model::Model;

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    Parquet,
    Csv,
    Jsonl,
    Tcp,
    Stdin,
}

impl SourceFormat {
    pub fn is_live(self) -> bool {
        matches!(self, SourceFormat::Tcp | SourceFormat::Stdin)
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Parquet,
    Csv,
    Jsonl,
}

/// What to do with a NaN or infinite feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NanPolicy {
    /// Stop with an error naming the file, row and column.
    #[default]
    Error,
    /// Drop the step (counted, and written to the rejects file).
    Skip,
    /// Replace the value by 0 (the mean, after normalization).
    Zero,
    /// Replace the value by the key's last finite value of that feature (0 if none yet).
    Ffill,
}

/// Line format of live sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineFormat {
    Jsonl,
    Csv,
}

/// When predictions are emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// Each step's output as soon as its epoch is processed (causal models only).
    EveryStep,
    /// When a key's sequence ends: the last output, or every step's with `all_steps`.
    SequenceEnd { all_steps: bool },
    /// Every `hop` steps, the key's last `size` steps run from a fresh state.
    Window { size: usize, hop: usize },
}

/// Per-feature `(x - mean) / std`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    format: SourceFormat,
    path: Option<String>,
    key: String,
    time: String,
    features: Vec<String>,
    normalize: Option<Normalize>,
    #[serde(default)]
    nan: NanPolicy,
    rejects: Option<String>,
    listen: Option<String>,
    lines: Option<LineFormat>,
    columns: Option<Vec<String>>,
    epoch_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    batch_rows: Option<usize>,
    max_line_bytes: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModelRef {
    path: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawEmit {
    EveryStep,
    SequenceEnd,
    Window,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    format: OutputFormat,
    path: String,
    names: Option<Vec<String>>,
    emit: Option<RawEmit>,
    all_steps: Option<bool>,
    size: Option<usize>,
    hop: Option<usize>,
    row_group_rows: Option<usize>,
    compression: Option<Compression>,
}

/// Parquet compression of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Fast; predictions (float noise) barely compress anyway.
    #[default]
    Snappy,
    /// Smaller files, slower writes (zstd level 1).
    Zstd,
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    source: RawSource,
    model: RawModelRef,
    output: RawOutput,
    #[serde(default)]
    views: Vec<toml::Value>,
}

/// Source settings, paths resolved.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub format: SourceFormat,
    /// File, directory or glob (file formats).
    pub path: Option<PathBuf>,
    pub key: String,
    pub time: String,
    pub features: Vec<String>,
    pub normalize: Option<Normalize>,
    pub nan: NanPolicy,
    pub rejects: Option<PathBuf>,
    pub listen: String,
    pub lines: LineFormat,
    pub columns: Option<Vec<String>>,
    pub epoch_ms: u64,
    pub idle_timeout_ms: Option<u64>,
    /// Rows per record batch read from files (one timely epoch each).
    pub batch_rows: usize,
    pub max_line_bytes: usize,
}

/// Output settings, paths resolved.
#[derive(Debug, Clone)]
pub struct OutputConfig {
    pub format: OutputFormat,
    /// `None` = stdout (`path = "-"`).
    pub path: Option<PathBuf>,
    pub names: Vec<String>,
    pub emit: Emit,
    pub row_group_rows: usize,
    pub compression: Compression,
}

/// A parsed, validated pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub path: PathBuf,
    pub source: SourceConfig,
    pub model_path: PathBuf,
    pub output: OutputConfig,
    /// `[[views]]` tables, parsed by the views module.
    pub views: Vec<toml::Value>,
}

/// Command-line overrides (relative to the working directory).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub input: Option<PathBuf>,
    pub output: Option<PathBuf>,
}

impl PipelineConfig {
    /// Reads a pipeline file and applies `--input` / `--output`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<PipelineConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path, overrides)
    }

    pub fn parse(text: &str, path: &Path, overrides: &Overrides) -> Result<PipelineConfig> {
        let err = |msg: String| Error::PipelineConfig {
            path: path.to_path_buf(),
            msg,
        };
        let raw: RawPipeline = toml::from_str(text).map_err(|e| err(one_line(&e.to_string())))?;
        let base = path.parent().unwrap_or(Path::new(""));
        let rel = |p: &str| clean_join(base, p);
        let s = raw.source;
        if s.features.is_empty() {
            return Err(err(
                "[source] features is empty: name the model's input columns in order".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &s.features {
            if !seen.insert(f) {
                return Err(err(format!("[source] features lists `{f}` twice")));
            }
        }
        for (what, col) in [("key", &s.key), ("time", &s.time)] {
            if s.features.contains(col) {
                return Err(err(format!(
                    "[source] {what} column `{col}` is also listed as a feature"
                )));
            }
        }
        if s.key == s.time {
            return Err(err(format!(
                "[source] key and time are the same column `{}`",
                s.key
            )));
        }
        if let Some(n) = &s.normalize {
            let k = s.features.len();
            if n.mean.len() != k || n.std.len() != k {
                return Err(err(format!(
                    "[source] normalize has {} means and {} stds for {k} features",
                    n.mean.len(),
                    n.std.len()
                )));
            }
            if let Some(i) = n.std.iter().position(|&v| !(v.is_finite() && v > 0.0)) {
                return Err(err(format!(
                    "[source] normalize.std[{i}] (feature `{}`) is {}; it must be a positive number",
                    s.features[i], n.std[i]
                )));
            }
            if let Some(i) = n.mean.iter().position(|v| !v.is_finite()) {
                return Err(err(format!("[source] normalize.mean[{i}] is not finite")));
            }
        }
        let live = s.format.is_live();
        let path_field = match (&overrides.input, &s.path) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(p)) => Some(rel(p)),
            (None, None) if !live => {
                return Err(err(format!(
                    "[source] format = \"{}\" needs `path` (a file, a directory or a glob) or --input",
                    format_name(s.format)
                )))
            }
            (None, None) => None,
        };
        if s.format == SourceFormat::Tcp && s.listen.is_none() {
            return Err(err(
                "[source] format = \"tcp\" needs `listen = \"127.0.0.1:PORT\"`".into(),
            ));
        }
        if !live {
            for (name, set) in [
                ("listen", s.listen.is_some()),
                ("lines", s.lines.is_some()),
                ("epoch_ms", s.epoch_ms.is_some()),
                ("idle_timeout_ms", s.idle_timeout_ms.is_some()),
            ] {
                if set {
                    return Err(err(format!(
                        "[source] `{name}` applies to live sources (tcp, stdin) only"
                    )));
                }
            }
        }
        if s.columns.is_some() && !(s.format == SourceFormat::Csv || s.lines == Some(LineFormat::Csv)) {
            return Err(err("[source] `columns` applies to csv input only".into()));
        }
        if s.epoch_ms == Some(0) {
            return Err(err("[source] epoch_ms must be at least 1".into()));
        }
        // `--input x.csv` on a Parquet pipeline means CSV: a known extension picks the format.
        let format = match (&overrides.input, s.format.is_live()) {
            (Some(p), false) => input_format_from_extension(p).unwrap_or(s.format),
            _ => s.format,
        };
        let source = SourceConfig {
            format,
            path: path_field,
            key: s.key,
            time: s.time,
            features: s.features,
            normalize: s.normalize,
            nan: s.nan,
            rejects: s.rejects.map(|p| rel(&p)),
            listen: s.listen.unwrap_or_else(|| "127.0.0.1:7600".into()),
            lines: s.lines.unwrap_or(LineFormat::Jsonl),
            columns: s.columns,
            epoch_ms: s.epoch_ms.unwrap_or(5),
            idle_timeout_ms: s.idle_timeout_ms,
            batch_rows: s.batch_rows.unwrap_or(65_536).max(1),
            max_line_bytes: s.max_line_bytes.unwrap_or(1 << 20),
        };

        let o = raw.output;
        let emit = match o.emit.unwrap_or(RawEmit::EveryStep) {
            RawEmit::EveryStep => Emit::EveryStep,
            RawEmit::SequenceEnd => Emit::SequenceEnd {
                all_steps: o.all_steps.unwrap_or(false),
            },
            RawEmit::Window => {
                let (Some(size), Some(hop)) = (o.size, o.hop) else {
                    return Err(err(
                        "[output] emit = \"window\" needs `size` and `hop` (in steps)".into(),
                    ));
                };
                if size == 0 || hop == 0 {
                    return Err(err("[output] window `size` and `hop` must be at least 1".into()));
                }
                Emit::Window { size, hop }
            }
        };
        if o.all_steps.is_some() && !matches!(emit, Emit::SequenceEnd { .. }) {
            return Err(err(
                "[output] `all_steps` applies to emit = \"sequence_end\" only".into(),
            ));
        }
        if (o.size.is_some() || o.hop.is_some()) && !matches!(emit, Emit::Window { .. }) {
            return Err(err(
                "[output] `size` and `hop` apply to emit = \"window\" only".into()
            ));
        }
        let out_format = match &overrides.output {
            Some(p) => output_format_from_extension(p).unwrap_or(o.format),
            None => o.format,
        };
        let out_path = match (&overrides.output, o.path.as_str()) {
            (Some(p), _) if p.as_os_str() == "-" => None,
            (Some(p), _) => Some(p.clone()),
            (None, "-") => None,
            (None, p) => Some(rel(p)),
        };
        if out_path.is_none() && out_format == OutputFormat::Parquet {
            return Err(err(
                "[output] parquet cannot be written to stdout (path = \"-\"); use csv or jsonl".into(),
            ));
        }
        let names = o.names.unwrap_or_default();
        let output = OutputConfig {
            format: out_format,
            path: out_path,
            names,
            emit,
            // Row groups are buffered in memory until full: 128k rows bounds that for wide outputs.
            row_group_rows: o.row_group_rows.unwrap_or(1 << 17).max(1),
            compression: o.compression.unwrap_or_default(),
        };
        Ok(PipelineConfig {
            path: path.to_path_buf(),
            source,
            model_path: rel(&raw.model.path),
            output,
            views: raw.views,
        })
    }

    /// Checks the pipeline against its model: feature count, output names, emit mode.
    /// Fills in default output names.
    pub fn check_model(&mut self, model: &Model) -> Result<()> {
        let err = |msg: String| Error::PipelineConfig {
            path: self.path.clone(),
            msg,
        };
        let k = self.source.features.len();
        if k != model.input_size() {
            return Err(err(format!(
                "[source] lists {k} features but model {} takes {} inputs per step",
                model.path().display(),
                model.input_size()
            )));
        }
        let n = model.output_size();
        if self.output.names.is_empty() {
            self.output.names = (0..n).map(|i| format!("y{i}")).collect();
        } else if self.output.names.len() != n {
            return Err(err(format!(
                "[output] names has {} entries but model {} outputs {n} values per step",
                self.output.names.len(),
                model.path().display()
            )));
        }
        for name in &self.output.names {
            if name == &self.source.key || name == &self.source.time {
                return Err(err(format!(
                    "[output] name `{name}` collides with the key or time column"
                )));
            }
        }
        if self.output.emit == Emit::EveryStep {
            model.check_streamable().map_err(|e| {
                err(format!(
                    "emit = \"every_step\" needs a causal model: {e}; use emit = \"sequence_end\" or \"window\""
                ))
            })?;
        }
        Ok(())
    }
}

/// `base/p` with `.` and `dir/..` removed lexically, so messages show `out/x.parquet`
/// rather than `pipelines/../out/x.parquet`. Absolute `p` wins, as with `Path::join`.
pub fn clean_join(base: &Path, p: &str) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in base.join(p).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            c => out.push(c.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

fn extension(p: &Path) -> String {
    p.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// The output format a command-line path asks for by its extension.
pub fn output_format_from_extension(p: &Path) -> Option<OutputFormat> {
    match extension(p).as_str() {
        "parquet" | "pq" => Some(OutputFormat::Parquet),
        "csv" => Some(OutputFormat::Csv),
        "jsonl" | "json" | "ndjson" => Some(OutputFormat::Jsonl),
        _ => None,
    }
}

/// The input format a command-line file path asks for by its extension.
pub fn input_format_from_extension(p: &Path) -> Option<SourceFormat> {
    match extension(p).as_str() {
        "parquet" | "pq" => Some(SourceFormat::Parquet),
        "csv" => Some(SourceFormat::Csv),
        "jsonl" | "json" | "ndjson" => Some(SourceFormat::Jsonl),
        _ => None,
    }
}

pub fn format_name(f: SourceFormat) -> &'static str {
    match f {
        SourceFormat::Parquet => "parquet",
        SourceFormat::Csv => "csv",
        SourceFormat::Jsonl => "jsonl",
        SourceFormat::Tcp => "tcp",
        SourceFormat::Stdin => "stdin",
    }
}
