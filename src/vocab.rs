//! The shared vocabulary: the small types and helpers that every part of seqflow speaks
//! (model, input, keyed state, sinks, views, training, pipelines). It depends on nothing
//! else in the crate, so everything can sit above it and nothing has to reach upward for a
//! word.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

/// What to do with a NaN or infinite feature (after normalization).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NanPolicy {
    /// Stop with an error naming the file, row and column (a live line is rejected instead).
    #[default]
    Error,
    /// Drop the step (counted, and written to the rejects file).
    Skip,
    /// Replace the value by 0 (the mean, after normalization).
    Zero,
    /// Replace the value by the key's last finite value of that feature (0 if none yet).
    Ffill,
}

/// Per-feature `(x - mean) / std`, computed in f64.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    /// One mean per feature.
    pub mean: Vec<f64>,
    /// One standard deviation per feature, each positive.
    pub std: Vec<f64>,
}

impl Normalize {
    /// Checks the statistics against the feature list; the message names the feature.
    pub fn check(&self, features: &[String]) -> Result<(), String> {
        let k = features.len();
        if self.mean.len() != k || self.std.len() != k {
            return Err(format!(
                "normalize has {} means and {} stds for {k} features",
                self.mean.len(),
                self.std.len()
            ));
        }
        if let Some(i) = self.std.iter().position(|&v| !(v.is_finite() && v > 0.0)) {
            return Err(format!(
                "normalize.std[{i}] (feature `{}`) is {}; it must be a positive number",
                features[i], self.std[i]
            ));
        }
        if let Some(i) = self.mean.iter().position(|v| !v.is_finite()) {
            return Err(format!("normalize.mean[{i}] is not finite"));
        }
        Ok(())
    }
}

/// When predictions are emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// Each step's output as soon as its epoch is processed (causal models only).
    EveryStep,
    /// When a key's sequence ends: the last output, or every step's with `all_steps`.
    SequenceEnd {
        /// Emit every step's output, not only the last.
        all_steps: bool,
    },
    /// Every `hop` steps, the key's last `size` steps run from a fresh state.
    Window {
        /// Window length in steps.
        size: usize,
        /// Steps between windows.
        hop: usize,
    },
}

/// Formats of data files, read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// Apache Parquet.
    Parquet,
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// Arrow IPC file format (Feather v2).
    Arrow,
}

impl FileFormat {
    /// Every format, in the order messages list them.
    pub const ALL: [FileFormat; 4] = [
        FileFormat::Parquet,
        FileFormat::Csv,
        FileFormat::Jsonl,
        FileFormat::Arrow,
    ];

    /// The file extensions that mean this format (lower case): the one table used to pick a
    /// format from a path and to choose a directory's files.
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            FileFormat::Parquet => &["parquet", "parq", "pq"],
            FileFormat::Csv => &["csv"],
            FileFormat::Jsonl => &["jsonl", "json", "ndjson"],
            FileFormat::Arrow => &["arrow", "feather", "ipc"],
        }
    }

    /// The format a path's extension names, if any.
    pub fn from_path(p: &Path) -> Option<FileFormat> {
        let ext = p.extension()?.to_str()?.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|f| f.extensions().contains(&ext.as_str()))
    }

    /// The name used in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            FileFormat::Parquet => "parquet",
            FileFormat::Csv => "csv",
            FileFormat::Jsonl => "jsonl",
            FileFormat::Arrow => "arrow",
        }
    }
}

/// How a live stream frames its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineFormat {
    /// One JSON object per line.
    Jsonl,
    /// CSV records after a header line (or the source's `columns`).
    Csv,
    /// One Arrow IPC stream per connection (schema, then record batches); tcp and stdin.
    Arrow,
}

impl LineFormat {
    /// The name used in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            LineFormat::Jsonl => "jsonl",
            LineFormat::Csv => "csv",
            LineFormat::Arrow => "arrow",
        }
    }

    /// What a stream of this format carries, for messages: `jsonl lines`, `csv lines`,
    /// `an Arrow IPC stream per connection`.
    pub fn describe(self) -> &'static str {
        match self {
            LineFormat::Jsonl => "jsonl lines",
            LineFormat::Csv => "csv lines",
            LineFormat::Arrow => "an Arrow IPC stream per connection",
        }
    }
}

/// Parquet compression of an output: the key and time columns always get it; a prediction
/// column only when it shrinks the column's first values by 3% or more
/// (`parquet_out::MIN_SAVING_PERCENT`), else that column is stored uncompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Fast; predictions (float noise) barely compress anyway.
    #[default]
    Snappy,
    /// Smaller files, slower writes (zstd level 1).
    Zstd,
    /// Uncompressed pages.
    None,
}

/// `host:port` split into its host and port (`None`: not that shape).
pub fn host_port(addr: &str) -> Option<(String, u16)> {
    let (h, p) = addr.rsplit_once(':')?;
    Some((h.to_string(), p.parse().ok()?))
}

/// `base/p` with `.` and `dir/..` removed lexically, so messages show `out/x.parquet`
/// rather than `pipelines/../out/x.parquet`. Absolute `p` wins, as with `Path::join`.
pub fn clean_join(base: &Path, p: &str) -> PathBuf {
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

/// toml's messages span several lines with a source excerpt; keep them to one paragraph.
pub fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '|' || c == '^' || c == ' '))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `1234567` -> `1,234,567`.
pub fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1.5 KB`, `12.3 MB`, `2.10 GB`.
pub fn human_bytes(b: u64) -> String {
    match b {
        b if b < 1_000_000 => format!("{:.1} KB", b as f64 / 1e3),
        b if b < 1_000_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b => format!("{:.2} GB", b as f64 / 1e9),
    }
}

/// Microseconds since the process's clock started: arrival stamps, sink times and idle
/// timeouts share it.
pub fn now_us() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_micros() as u64
}

/// The finalizer of splitmix64: a bijection that spreads every input bit over the output.
/// Part of the persisted key hash (see `record::KeyRef::stable_hash`): never change it.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small deterministic generator (splitmix64), so seeds give the same weights, shuffles
/// and datasets on every machine.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator whose sequence depends only on `seed`.
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[-bound, bound)`.
    pub fn uniform(&mut self, bound: f32) -> f32 {
        (self.next_f32() * 2.0 - 1.0) * bound
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.next_f32().max(1e-7);
        let u2 = self.next_f32();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_extension_table() {
        for (p, f) in [
            ("a/b.PARQ", Some(FileFormat::Parquet)),
            ("x.pq", Some(FileFormat::Parquet)),
            ("x.ndjson", Some(FileFormat::Jsonl)),
            ("x.csv", Some(FileFormat::Csv)),
            ("x.txt", None),
            ("noext", None),
        ] {
            assert_eq!(FileFormat::from_path(Path::new(p)), f, "{p}");
        }
    }

    #[test]
    fn paths_and_numbers_read_well() {
        assert_eq!(
            clean_join(Path::new("pipelines"), "../out/x.parquet"),
            Path::new("out/x.parquet")
        );
        assert_eq!(clean_join(Path::new("a"), "/abs"), Path::new("/abs"));
        assert_eq!(clean_join(Path::new(""), "."), Path::new("."));
        assert_eq!(group_digits(1234567), "1,234,567");
        assert_eq!(group_digits(999), "999");
        assert_eq!(human_bytes(29_300), "29.3 KB");
        assert_eq!(one_line("a\n  |\n  ^^^ \nb"), "a b");
    }
}
