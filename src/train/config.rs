//! The training file (`seqflow train TRAIN.toml`): which model, which data, which task, how
//! to optimize, where to write. Documented in docs/training.md.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::input::files::FileSource;
use crate::input::Columns;
use crate::vocab::{clean_join, one_line, FileFormat, NanPolicy, Normalize};

/// What the model learns.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// Predict `targets` `horizon` steps ahead, every step (MSE).
    Forecast {
        /// Target columns, one per model output.
        targets: Vec<String>,
        /// Steps ahead (at least 1; default 1): step `t` is scored against `t + horizon`.
        horizon: usize,
    },
    /// Predict `targets` at the same step, every step (MSE).
    Regress {
        /// Target columns, one per model output.
        targets: Vec<String>,
    },
    /// One class per sequence (the label of its last step), scored on the last step.
    Classify {
        /// Label column: a class index (0/1 for a one-output model; NaN = unlabeled).
        label: String,
    },
    /// One class per step.
    Tag {
        /// Label column: a class index per step (0/1 for a one-output model; NaN = unlabeled).
        label: String,
    },
}

/// `[train] optimizer`: which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerName {
    /// `torch.optim.Adam` with betas (0.9, 0.999) and eps 1e-8; the default.
    Adam,
    /// `torch.optim.SGD` with `[train] momentum`.
    Sgd,
}

/// A parsed training file; paths resolved relative to it.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// The training file itself (names it in messages).
    pub path: PathBuf,
    /// The model file to train (`[model] path`).
    pub model: PathBuf,
    /// Start from fresh weights even if the weights file exists.
    pub init: bool,
    /// The data files.
    pub data: FileSource,
    /// Key, time, features and their preparation, as a pipeline's `[source]` has them
    /// (`normalize` fixed, or filled in by `normalize = "auto"`).
    pub columns: Columns,
    /// `normalize = "auto"`: fit the statistics on the training keys.
    pub auto_normalize: bool,
    /// What the model learns.
    pub task: Task,
    /// `[task] pos_weight`: `BCEWithLogitsLoss`'s `pos_weight` for binary labels (default 1).
    pub pos_weight: f64,
    /// Epochs to run, at least 1 (default 10); the command line may override it.
    pub epochs: usize,
    /// Keys (whole sequences) per batch, at least 1 (default 32).
    pub batch_keys: usize,
    /// Truncated-BPTT chunk length in steps (one optimizer step per chunk, state carried
    /// between chunks); `None` = whole sequences.
    pub tbptt: Option<usize>,
    /// Update rule (default Adam).
    pub optimizer: OptimizerName,
    /// Learning rate, > 0 (default 1e-3).
    pub lr: f64,
    /// L2 penalty added to the gradient, torch.optim's `weight_decay` (default 0).
    pub weight_decay: f64,
    /// SGD momentum, as `torch.optim.SGD(momentum=...)` (default 0; unused by Adam).
    pub momentum: f64,
    /// Max global gradient L2 norm, as `clip_grad_norm_` (> 0); `None` = no clipping.
    pub clip_norm: Option<f64>,
    /// Fraction of keys held out for validation, `0 <= v < 1` (default 0.2).
    pub validation: f64,
    /// Seeds weight initialization, the validation split and shuffling (default 0).
    pub seed: u64,
    /// Early stopping: stop after this many epochs in a row without a better score
    /// (validation loss, or training loss without validation); `None` = never.
    pub patience: Option<usize>,
    /// Output weights (default: the model file's `weights`).
    pub weights: Option<PathBuf>,
    /// Per-epoch numbers as CSV (`[output] loss_csv`), if wanted.
    pub loss_csv: Option<PathBuf>,
    /// SVG chart of the loss curves (`[output] plot`), if wanted.
    pub plot: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    model: RawModel,
    data: RawData,
    task: RawTask,
    #[serde(default)]
    train: RawTrain,
    #[serde(default)]
    output: RawOutput,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    path: String,
    #[serde(default)]
    init: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawData {
    format: Option<FileFormat>,
    path: String,
    key: String,
    time: String,
    features: Vec<String>,
    normalize: Option<toml::Value>,
    #[serde(default)]
    nan: NanPolicy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    kind: String,
    targets: Option<Vec<String>>,
    horizon: Option<usize>,
    label: Option<String>,
    pos_weight: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTrain {
    epochs: Option<usize>,
    batch_keys: Option<usize>,
    tbptt: Option<usize>,
    optimizer: Option<OptimizerName>,
    lr: Option<f64>,
    weight_decay: Option<f64>,
    momentum: Option<f64>,
    clip_norm: Option<f64>,
    validation: Option<f64>,
    seed: Option<u64>,
    patience: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    weights: Option<String>,
    loss_csv: Option<String>,
    plot: Option<String>,
}

impl TrainConfig {
    /// Reads and parses a training file.
    pub fn load(path: &Path) -> Result<TrainConfig> {
        let text = crate::outfiles::read_regular_string(path)?;
        Self::parse(&text, path)
    }

    /// Parses training TOML; `path` resolves relative paths and names the file in messages.
    pub fn parse(text: &str, path: &Path) -> Result<TrainConfig> {
        let err = |msg: String| Error::PipelineConfig {
            path: path.to_path_buf(),
            msg,
        };
        let raw: Raw = toml::from_str(text).map_err(|e| err(one_line(&e.to_string())))?;
        let base = path.parent().unwrap_or(Path::new(""));
        let join = |p: &str| clean_join(base, p);
        let d = raw.data;
        let format = d
            .format
            .or_else(|| FileFormat::from_path(Path::new(&d.path)))
            .unwrap_or(FileFormat::Parquet);
        let (normalize, auto_normalize) = match d.normalize {
            None => (None, false),
            Some(toml::Value::String(s)) if s == "auto" => (None, true),
            Some(v) => {
                let n: Normalize = v.try_into().map_err(|e: toml::de::Error| {
                    err(format!("[data] normalize: {}", one_line(&e.to_string())))
                })?;
                (Some(n), false)
            }
        };
        let columns = Columns {
            key: d.key,
            time: d.time,
            features: d.features,
            normalize,
            nan: d.nan,
        };
        columns.check().map_err(|m| err(format!("[data] {m}")))?;
        let t = raw.task;
        let need = |what: Option<Vec<String>>, kind: &str| -> Result<Vec<String>> {
            match what {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(err(format!(
                    "[task] kind = \"{kind}\" needs `targets = [\"column\", ...]`"
                ))),
            }
        };
        let label = |l: Option<String>, kind: &str| -> Result<String> {
            l.ok_or_else(|| err(format!("[task] kind = \"{kind}\" needs `label = \"column\"`")))
        };
        let task = match t.kind.as_str() {
            "forecast" => Task::Forecast {
                targets: need(t.targets, "forecast")?,
                horizon: match t.horizon.unwrap_or(1) {
                    0 => return Err(err("[task] horizon must be at least 1".into())),
                    h => h,
                },
            },
            "regress" => Task::Regress {
                targets: need(t.targets, "regress")?,
            },
            "classify" => Task::Classify {
                label: label(t.label, "classify")?,
            },
            "tag" => Task::Tag {
                label: label(t.label, "tag")?,
            },
            other => {
                return Err(err(format!(
                    "[task] kind = \"{other}\" is unknown; use forecast, regress, classify or tag"
                )))
            }
        };
        let tr = raw.train;
        let positive = |what: &str, v: Option<usize>, default: usize| -> Result<usize> {
            match v.unwrap_or(default) {
                0 => Err(err(format!("[train] {what} must be at least 1"))),
                n => Ok(n),
            }
        };
        let validation = tr.validation.unwrap_or(0.2);
        if !(0.0..1.0).contains(&validation) {
            return Err(err(
                "[train] validation is the fraction of keys held out: 0 <= v < 1".into(),
            ));
        }
        let lr = tr.lr.unwrap_or(1e-3);
        if lr.is_nan() || lr <= 0.0 {
            return Err(err("[train] lr must be > 0".into()));
        }
        if let Some(c) = tr.clip_norm {
            if c.is_nan() || c <= 0.0 {
                return Err(err("[train] clip_norm must be > 0".into()));
            }
        }
        let o = raw.output;
        Ok(TrainConfig {
            path: path.to_path_buf(),
            model: join(&raw.model.path),
            init: raw.model.init,
            data: FileSource {
                format,
                path: join(&d.path),
            },
            columns,
            auto_normalize,
            task,
            pos_weight: t.pos_weight.unwrap_or(1.0),
            epochs: positive("epochs", tr.epochs, 10)?,
            batch_keys: positive("batch_keys", tr.batch_keys, 32)?,
            tbptt: match tr.tbptt {
                Some(0) => {
                    return Err(err(
                        "[train] tbptt must be at least 1 (omit it for whole sequences)".into(),
                    ))
                }
                v => v,
            },
            optimizer: tr.optimizer.unwrap_or(OptimizerName::Adam),
            lr,
            weight_decay: tr.weight_decay.unwrap_or(0.0),
            momentum: tr.momentum.unwrap_or(0.0),
            clip_norm: tr.clip_norm,
            validation,
            seed: tr.seed.unwrap_or(0),
            patience: tr.patience,
            weights: o.weights.as_deref().map(join),
            loss_csv: o.loss_csv.as_deref().map(join),
            plot: o.plot.as_deref().map(join),
        })
    }

    /// Columns read besides key, time and features: targets or the label.
    pub fn extra_columns(&self) -> Vec<String> {
        match &self.task {
            Task::Forecast { targets, .. } | Task::Regress { targets } => targets.clone(),
            Task::Classify { label } | Task::Tag { label } => vec![label.clone()],
        }
    }
}
