//! The pipeline TOML: `[source]`, `[model]`, `[output]`. Parsed and checked against the
//! model once, before any data is read, so a run never fails half-way on a config mistake.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::checkpoint::CheckpointConfig;
use crate::error::{Error, Result};
use crate::input::files::FileSource;
use crate::input::kafka::{KafkaSource, Start};
use crate::input::live::{LiveSource, Transport};
use crate::input::mqtt::MqttSource;
use crate::input::Columns;
use crate::model::Model;
use crate::sink::BrokerTarget;
use crate::sink::OutputFile;
use crate::sink_kafka::KafkaTarget;
use crate::sink_mqtt::MqttTarget;
use crate::vocab::{clean_join, one_line, Compression, Emit, FileFormat, LineFormat, NanPolicy, Normalize};

/// The `format` of `[source]`: a file format or a live transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawFormat {
    Parquet,
    Csv,
    Jsonl,
    Arrow,
    Tcp,
    Stdin,
    Mqtt,
    Kafka,
}

/// `start` of a Kafka source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawStart {
    Earliest,
    Latest,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    format: RawFormat,
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
    max_connections: Option<usize>,
    drain_timeout_ms: Option<u64>,
    max_key_bytes: Option<usize>,
    max_keys: Option<usize>,
    state_ttl_ms: Option<u64>,
    broker: Option<String>,
    topics: Option<Vec<String>>,
    client_id: Option<String>,
    brokers: Option<Vec<String>>,
    topic: Option<String>,
    start: Option<RawStart>,
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
    format: RawOutFormat,
    path: Option<String>,
    broker: Option<String>,
    brokers: Option<Vec<String>>,
    topic: Option<String>,
    client_id: Option<String>,
    names: Option<Vec<String>>,
    emit: Option<RawEmit>,
    all_steps: Option<bool>,
    size: Option<usize>,
    hop: Option<usize>,
    row_group_rows: Option<usize>,
    compression: Option<Compression>,
    statistics: Option<bool>,
}

/// The `format` of `[output]`: a file format or a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawOutFormat {
    Parquet,
    Csv,
    Jsonl,
    Arrow,
    Mqtt,
    Kafka,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheckpoint {
    dir: String,
    every_ms: Option<u64>,
    every_epochs: Option<u64>,
    keep: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    listen: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    source: RawSource,
    model: RawModelRef,
    output: RawOutput,
    checkpoint: Option<RawCheckpoint>,
    metrics: Option<RawListen>,
    dashboard: Option<RawListen>,
    #[serde(default)]
    views: Vec<toml::Value>,
}

/// Source settings, paths resolved.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Key, time, features and their preparation.
    pub columns: Columns,
    /// Where late, duplicate and malformed steps are written.
    pub rejects: Option<PathBuf>,
    /// Rows per record batch read from files (one epoch each); live: the most rows an epoch
    /// takes before it closes early.
    pub batch_rows: usize,
    /// Files or a live stream.
    pub kind: SourceKind,
}

/// The two kinds of source: each carries only the settings that apply to it.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// Parquet, CSV or JSON-lines files.
    Files(FileSource),
    /// Lines from TCP clients or stdin.
    Live(LiveSource),
}

/// Output settings, paths resolved.
#[derive(Debug, Clone)]
pub struct OutputConfig {
    /// The file and its format.
    pub file: OutputFile,
    /// One name per model output.
    pub names: Vec<String>,
    /// When predictions are emitted.
    pub emit: Emit,
    /// `format = "mqtt"` or `"kafka"`: predictions sent to a broker instead of a file.
    pub broker: Option<BrokerTarget>,
}

/// A parsed, validated pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The pipeline file.
    pub path: PathBuf,
    /// `[source]`.
    pub source: SourceConfig,
    /// `[model] path`, resolved.
    pub model_path: PathBuf,
    /// `[output]`.
    pub output: OutputConfig,
    /// `[[views]]` tables, parsed by the views module.
    pub views: Vec<toml::Value>,
    /// `[checkpoint]`.
    pub checkpoint: Option<CheckpointConfig>,
    /// `[metrics] listen` (or `--metrics`): where `GET /metrics` is served.
    pub metrics: Option<String>,
    /// `[dashboard] listen` (or `--dashboard`): where the live page is served.
    pub dashboard: Option<String>,
    /// `--report PATH`: a file run's report page, written at its end.
    pub report: Option<PathBuf>,
}

/// Command-line overrides (relative to the working directory).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--input`: a file, directory or glob instead of `[source] path`.
    pub input: Option<PathBuf>,
    /// `--output`: instead of `[output] path` (`-` for stdout).
    pub output: Option<PathBuf>,
    /// `--metrics ADDR`: instead of `[metrics] listen`.
    pub metrics: Option<String>,
    /// `--dashboard ADDR`: instead of `[dashboard] listen`.
    pub dashboard: Option<String>,
    /// `--report PATH`: write a file run's report page there.
    pub report: Option<PathBuf>,
}

impl PipelineConfig {
    /// The live settings, if the source is live.
    pub fn live(&self) -> Option<&LiveSource> {
        match &self.source.kind {
            SourceKind::Live(l) => Some(l),
            SourceKind::Files(_) => None,
        }
    }

    /// Reads a pipeline file and applies `--input` / `--output`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<PipelineConfig> {
        let text = crate::outfiles::read_regular_string(path)?;
        Self::parse(&text, path, overrides)
    }

    /// Parses pipeline text; `path` resolves relative paths and names the file in messages.
    pub fn parse(text: &str, path: &Path, overrides: &Overrides) -> Result<PipelineConfig> {
        let err = |msg: String| Error::PipelineConfig {
            path: path.to_path_buf(),
            msg,
        };
        let raw: RawPipeline = toml::from_str(text).map_err(|e| err(one_line(&e.to_string())))?;
        let base = path.parent().unwrap_or(Path::new(""));
        let rel = |p: &str| clean_join(base, p);
        let s = raw.source;
        let columns = Columns {
            key: s.key,
            time: s.time,
            features: s.features,
            normalize: s.normalize,
            nan: s.nan,
        };
        columns.check().map_err(|m| err(format!("[source] {m}")))?;
        let file_format = match s.format {
            RawFormat::Parquet => Some(FileFormat::Parquet),
            RawFormat::Csv => Some(FileFormat::Csv),
            RawFormat::Jsonl => Some(FileFormat::Jsonl),
            RawFormat::Arrow => Some(FileFormat::Arrow),
            RawFormat::Tcp | RawFormat::Stdin | RawFormat::Mqtt | RawFormat::Kafka => None,
        };
        if s.columns.is_some() && s.lines != Some(LineFormat::Csv) {
            return Err(err(
                "[source] `columns` names the fields of a live csv stream without a header line \
                 (format = \"tcp\" or \"stdin\" with lines = \"csv\")"
                    .into(),
            ));
        }
        let kind = match file_format {
            Some(format) => {
                for (name, set) in [
                    ("listen", s.listen.is_some()),
                    ("lines", s.lines.is_some()),
                    ("epoch_ms", s.epoch_ms.is_some()),
                    ("idle_timeout_ms", s.idle_timeout_ms.is_some()),
                    ("max_line_bytes", s.max_line_bytes.is_some()),
                    ("max_connections", s.max_connections.is_some()),
                    ("drain_timeout_ms", s.drain_timeout_ms.is_some()),
                    ("max_key_bytes", s.max_key_bytes.is_some()),
                    ("max_keys", s.max_keys.is_some()),
                    ("state_ttl_ms", s.state_ttl_ms.is_some()),
                    ("broker", s.broker.is_some()),
                    ("topics", s.topics.is_some()),
                    ("client_id", s.client_id.is_some()),
                    ("brokers", s.brokers.is_some()),
                    ("topic", s.topic.is_some()),
                    ("start", s.start.is_some()),
                ] {
                    if set {
                        return Err(err(format!(
                            "[source] `{name}` applies to live sources (tcp, stdin, mqtt, kafka) only"
                        )));
                    }
                }
                let path = match (&overrides.input, &s.path) {
                    (Some(p), _) => p.clone(),
                    (None, Some(p)) => rel(p),
                    (None, None) => {
                        return Err(err(format!(
                        "[source] format = \"{}\" needs `path` (a file, a directory or a glob) or --input",
                        format.name()
                    )))
                    }
                };
                // `--input x.csv` on a Parquet pipeline means CSV: a known extension picks the format.
                let format = match &overrides.input {
                    Some(p) => FileFormat::from_path(p).unwrap_or(format),
                    None => format,
                };
                SourceKind::Files(FileSource { format, path })
            }
            None => {
                let stem = path
                    .file_stem()
                    .map_or("pipeline".into(), |s| s.to_string_lossy().into_owned());
                for (name, set, applies) in [
                    ("broker", s.broker.is_some(), RawFormat::Mqtt),
                    ("topics", s.topics.is_some(), RawFormat::Mqtt),
                    ("brokers", s.brokers.is_some(), RawFormat::Kafka),
                    ("topic", s.topic.is_some(), RawFormat::Kafka),
                    ("start", s.start.is_some(), RawFormat::Kafka),
                ] {
                    if set && s.format != applies {
                        return Err(err(format!(
                            "[source] `{name}` applies to format = \"{}\" only",
                            if applies == RawFormat::Mqtt {
                                "mqtt"
                            } else {
                                "kafka"
                            }
                        )));
                    }
                }
                if s.client_id.is_some() && !matches!(s.format, RawFormat::Mqtt | RawFormat::Kafka) {
                    return Err(err(
                        "[source] `client_id` applies to format = \"mqtt\" or \"kafka\" only".into(),
                    ));
                }
                if matches!(s.format, RawFormat::Mqtt | RawFormat::Kafka)
                    && s.lines == Some(LineFormat::Arrow)
                {
                    return Err(err(
                        "[source] lines = \"arrow\" is for tcp and stdin sources (one Arrow IPC stream \
                         per connection); a broker message carries JSON or CSV lines"
                            .into(),
                    ));
                }
                if matches!(s.format, RawFormat::Mqtt | RawFormat::Kafka)
                    && s.lines == Some(LineFormat::Csv)
                    && s.columns.is_none()
                {
                    return Err(err(
                        "[source] csv lines over a broker need `columns = [...]`: a message carries no header".into(),
                    ));
                }
                let transport = match (s.format, s.listen) {
                    (RawFormat::Mqtt, None) => {
                        let broker = s.broker.clone().ok_or_else(|| {
                            err("[source] format = \"mqtt\" needs `broker = \"HOST:PORT\"`".into())
                        })?;
                        let topics = s.topics.clone().unwrap_or_default();
                        if topics.is_empty() {
                            return Err(err(
                                "[source] format = \"mqtt\" needs `topics = [\"...\"]` (topic filters)"
                                    .into(),
                            ));
                        }
                        Transport::Mqtt(MqttSource {
                            broker,
                            topics,
                            client_id: s.client_id.clone().unwrap_or_else(|| format!("seqflow-{stem}")),
                        })
                    }
                    (RawFormat::Kafka, None) => {
                        let brokers = s.brokers.clone().unwrap_or_default();
                        let (false, Some(topic)) = (brokers.is_empty(), s.topic.clone()) else {
                            return Err(err(
                                "[source] format = \"kafka\" needs `brokers = [\"HOST:PORT\"]` and `topic`"
                                    .into(),
                            ));
                        };
                        Transport::Kafka(KafkaSource {
                            brokers,
                            topic,
                            start: match s.start.unwrap_or(RawStart::Earliest) {
                                RawStart::Earliest => Start::Earliest,
                                RawStart::Latest => Start::Latest,
                            },
                            client_id: s.client_id.clone().unwrap_or_else(|| format!("seqflow-{stem}")),
                        })
                    }
                    (RawFormat::Tcp, Some(listen)) => Transport::Tcp { listen },
                    (RawFormat::Tcp, None) => {
                        return Err(err(
                            "[source] format = \"tcp\" needs `listen = \"127.0.0.1:PORT\"`".into(),
                        ))
                    }
                    (_, Some(_)) => {
                        return Err(err("[source] `listen` applies to format = \"tcp\" only".into()))
                    }
                    _ => Transport::Stdin,
                };
                if s.epoch_ms == Some(0) {
                    return Err(err("[source] epoch_ms must be at least 1".into()));
                }
                if let Some(h) = &s.columns {
                    if let Some(missing) = columns.names().find(|c| !h.iter().any(|x| x.trim() == *c)) {
                        return Err(err(format!(
                            "[source] columns lists the stream's fields but not `{missing}`, which the \
                             source reads"
                        )));
                    }
                }
                if s.path.is_some() || overrides.input.is_some() {
                    return Err(err(
                        "[source] `path` and --input apply to file sources only; a live source reads its stream".into(),
                    ));
                }
                SourceKind::Live(LiveSource {
                    transport,
                    lines: s.lines.unwrap_or(LineFormat::Jsonl),
                    header: s.columns,
                    epoch_ms: s.epoch_ms.unwrap_or(5),
                    idle_timeout_ms: s.idle_timeout_ms,
                    max_line_bytes: s.max_line_bytes.unwrap_or(1 << 20),
                    max_connections: match s.max_connections.unwrap_or(1024) {
                        0 => return Err(err("[source] max_connections must be at least 1".into())),
                        n => n,
                    },
                    drain_timeout_ms: s.drain_timeout_ms.unwrap_or(10_000),
                    max_key_bytes: match s.max_key_bytes.unwrap_or(1024) {
                        0 => return Err(err("[source] max_key_bytes must be at least 1".into())),
                        n => n,
                    },
                    max_keys: match s.max_keys.unwrap_or(1_000_000) {
                        0 => return Err(err("[source] max_keys must be at least 1".into())),
                        n => n,
                    },
                    state_ttl_ms: match s.state_ttl_ms {
                        Some(0) => return Err(err("[source] state_ttl_ms must be at least 1".into())),
                        t => t,
                    },
                })
            }
        };
        let source = SourceConfig {
            columns,
            rejects: s.rejects.map(|p| rel(&p)),
            batch_rows: s.batch_rows.unwrap_or(65_536).max(1),
            kind,
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
        // `--output` always names a file (or stdout), whatever the pipeline says.
        // A broker output's client name, as the broker logs it: the pipeline file's, unless given.
        let out_client_id = o.client_id.clone().unwrap_or_else(|| {
            let stem = path
                .file_stem()
                .map_or("pipeline".into(), |s| s.to_string_lossy().into_owned());
            format!("seqflow-{stem}-out")
        });
        let mqtt = match (o.format, &overrides.output) {
            (RawOutFormat::Mqtt, None) => {
                let (Some(broker), Some(topic)) = (o.broker.clone(), o.topic.clone()) else {
                    return Err(err(
                        "[output] format = \"mqtt\" needs `broker = \"HOST:PORT\"` and `topic` (`{key}` is replaced by each prediction's key)".into(),
                    ));
                };
                if o.path.is_some() {
                    return Err(err(
                        "[output] format = \"mqtt\" publishes to `topic`; `path` is for files".into(),
                    ));
                }
                if topic.contains(['+', '#']) {
                    return Err(err(format!(
                        "[output] topic `{topic}`: a topic to publish to has no wildcards"
                    )));
                }
                Some(MqttTarget {
                    broker,
                    topic,
                    client_id: out_client_id.clone(),
                })
            }
            _ => None,
        };
        let kafka = match (o.format, &overrides.output) {
            (RawOutFormat::Kafka, None) => {
                let brokers = o.brokers.clone().unwrap_or_default();
                let (false, Some(topic)) = (brokers.is_empty(), o.topic.clone()) else {
                    return Err(err(
                        "[output] format = \"kafka\" needs `brokers = [\"HOST:PORT\"]` and `topic` (each record's key is the prediction's key)".into(),
                    ));
                };
                if o.path.is_some() {
                    return Err(err(
                        "[output] format = \"kafka\" produces to `topic`; `path` is for files".into(),
                    ));
                }
                Some(KafkaTarget {
                    brokers,
                    topic,
                    client_id: out_client_id.clone(),
                })
            }
            _ => None,
        };
        for (name, set, applies) in [
            ("broker", o.broker.is_some(), o.format == RawOutFormat::Mqtt),
            ("brokers", o.brokers.is_some(), o.format == RawOutFormat::Kafka),
            (
                "topic",
                o.topic.is_some(),
                matches!(o.format, RawOutFormat::Mqtt | RawOutFormat::Kafka),
            ),
            (
                "client_id",
                o.client_id.is_some(),
                matches!(o.format, RawOutFormat::Mqtt | RawOutFormat::Kafka),
            ),
        ] {
            if set && !applies {
                return Err(err(format!(
                    "[output] `{name}` applies to {} only",
                    match name {
                        "broker" => "format = \"mqtt\"",
                        "brokers" => "format = \"kafka\"",
                        _ => "format = \"mqtt\" or \"kafka\"",
                    }
                )));
            }
        }
        let file_format = match o.format {
            RawOutFormat::Parquet => FileFormat::Parquet,
            RawOutFormat::Csv => FileFormat::Csv,
            RawOutFormat::Arrow => FileFormat::Arrow,
            RawOutFormat::Jsonl | RawOutFormat::Mqtt | RawOutFormat::Kafka => FileFormat::Jsonl,
        };
        let out_format = match &overrides.output {
            // `--output -` shows the predictions: CSV when the pipeline writes Parquet.
            Some(p) if p.as_os_str() == "-" && file_format == FileFormat::Parquet => FileFormat::Csv,
            Some(p) => FileFormat::from_path(p).unwrap_or(file_format),
            None => file_format,
        };
        let broker = mqtt.is_some() || kafka.is_some();
        let out_path =
            match (&overrides.output, o.path.as_deref(), broker) {
                (Some(p), _, _) if p.as_os_str() == "-" => None,
                (Some(p), _, _) => Some(p.clone()),
                (None, _, true) => None,
                (None, Some("-"), false) => None,
                (None, Some(p), false) => Some(rel(p)),
                (None, None, false) => return Err(err(
                    "[output] needs `path` (a file, or \"-\" for stdout), or format = \"mqtt\" or \"kafka\""
                        .into(),
                )),
            };
        if out_path.is_none() && out_format == FileFormat::Parquet {
            return Err(err(
                "[output] parquet cannot be written to stdout (path = \"-\"); use csv or jsonl".into(),
            ));
        }
        if o.statistics.is_some() && out_format != FileFormat::Parquet {
            return Err(err(
                "[output] `statistics` applies to format = \"parquet\" only".into()
            ));
        }
        let names = o.names.unwrap_or_default();
        let output = OutputConfig {
            file: OutputFile {
                format: out_format,
                path: out_path,
                // Row groups are buffered in memory until full: 128k rows bounds that for wide outputs.
                row_group_rows: o.row_group_rows.unwrap_or(1 << 17).max(1),
                compression: o.compression.unwrap_or_default(),
                statistics: o.statistics.unwrap_or(false),
            },
            names,
            emit,
            broker: mqtt.map(BrokerTarget::Mqtt).or(kafka.map(BrokerTarget::Kafka)),
        };
        let checkpoint = match raw.checkpoint {
            None => None,
            Some(c) => {
                if c.every_ms.is_some() && c.every_epochs.is_some() {
                    return Err(err(
                        "[checkpoint] takes `every_ms` or `every_epochs`, not both".into()
                    ));
                }
                if c.every_ms == Some(0) || c.every_epochs == Some(0) || c.keep == Some(0) {
                    return Err(err(
                        "[checkpoint] every_ms, every_epochs and keep must be at least 1".into(),
                    ));
                }
                if output.broker.is_none() && output.file.format == FileFormat::Arrow {
                    return Err(err(
                        "[checkpoint] with an Arrow output is not supported yet: an Arrow IPC file \
                         cannot be resumed at a checkpoint; write Parquet, CSV or JSON lines, or \
                         leave out [checkpoint]"
                            .into(),
                    ));
                }
                if output.file.path.is_none() && output.broker.is_none() {
                    return Err(err(
                        "[checkpoint] needs the output in a file: stdout (path = \"-\") cannot be \
                         rewound to the checkpoint on --resume"
                            .into(),
                    ));
                }
                Some(CheckpointConfig {
                    dir: rel(&c.dir),
                    every_ms: c.every_ms.or(c.every_epochs.is_none().then_some(10_000)),
                    every_epochs: c.every_epochs,
                    keep: c.keep.unwrap_or(2),
                })
            }
        };
        let listen = |what: &str, flag: &Option<String>, raw: Option<RawListen>| {
            flag.clone()
                .or(raw.map(|m| m.listen))
                .map(|addr| match crate::vocab::host_port(&addr) {
                    Some(_) => Ok(addr),
                    None => Err(err(format!(
                        "{what} listen address \"{addr}\" is not HOST:PORT (e.g. \"127.0.0.1:9464\")"
                    ))),
                })
                .transpose()
        };
        if overrides.report.is_some() && matches!(source.kind, SourceKind::Live(_)) {
            return Err(err(
                "--report is for file runs (it is written when the input ends); a live run shows \
                 the same on its dashboard ([dashboard] listen or --dashboard ADDR)"
                    .into(),
            ));
        }
        let metrics = listen("metrics", &overrides.metrics, raw.metrics)?;
        let dashboard = listen("dashboard", &overrides.dashboard, raw.dashboard)?;
        Ok(PipelineConfig {
            path: path.to_path_buf(),
            source,
            model_path: rel(&raw.model.path),
            output,
            views: raw.views,
            checkpoint,
            metrics,
            dashboard,
            report: overrides.report.clone(),
        })
    }

    /// Checks the pipeline against its model: feature count, output names, emit mode.
    /// Fills in default output names.
    pub fn check_model(&mut self, model: &Model) -> Result<()> {
        let err = |msg: String| Error::PipelineConfig {
            path: self.path.clone(),
            msg,
        };
        let k = self.source.columns.features.len();
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
            if name == &self.source.columns.key || name == &self.source.columns.time {
                return Err(err(format!(
                    "[output] name `{name}` collides with the key or time column"
                )));
            }
        }
        if let Emit::Window { size, .. } = self.output.emit {
            let ring = (size as u128) * (k as u128) * 4;
            if size > crate::model::config::MAX_STEPS || ring > crate::model::MAX_KEY_STATE as u128 {
                return Err(err(format!(
                    "[output] window size = {size} would keep {} of input per key; the limit is {} per key",
                    crate::vocab::human_bytes(ring.min(u64::MAX as u128) as u64),
                    crate::vocab::human_bytes(crate::model::MAX_KEY_STATE as u64)
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
