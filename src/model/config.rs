//! The model TOML: which layers, in which order, with which options. Sizes come from the
//! weights; sizes the file states (`hidden_size`, `out_features`, ...) are checked against
//! them when the weights exist (`bind.rs`), and are what `seqflow train` initializes a new
//! model from (`tensors.rs`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
pub use crate::kernels::fused::Precision;
use crate::vocab::{clean_join, one_line};

/// The parsed model file, before any weight is read.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The model file itself (for messages and to resolve relative paths).
    pub path: PathBuf,
    /// The safetensors file, resolved relative to the model file.
    pub weights: Option<PathBuf>,
    /// Number of input features, if the file states it.
    pub input_size: Option<usize>,
    /// `precision = "f32" | "bf16"` (top level; f32 when absent).
    pub precision: Precision,
    /// The `[[layers]]`, in order.
    pub layers: Vec<LayerConfig>,
}

/// Convolution padding modes; see the README's model section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// Left-pad `(k-1)*dilation` zeros: output `t` sees inputs up to `t` only.
    Causal,
    /// No padding: no output until the receptive field is full.
    Valid,
    /// Symmetric padding as PyTorch's `padding="same"`: needs the whole sequence.
    Same,
}

/// RNN nonlinearity, as `nn.RNN(nonlinearity=...)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Nonlinearity {
    /// `tanh` (PyTorch's default).
    Tanh,
    /// `relu`.
    Relu,
}

/// Stateless elementwise or per-row functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationKind {
    /// `max(x, 0)`.
    Relu,
    /// `tanh(x)`.
    Tanh,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `x`.
    Identity,
    /// Softmax over the features of each step.
    Softmax,
}

impl ActivationKind {
    /// The `type` in the model file.
    pub fn as_str(self) -> &'static str {
        match self {
            ActivationKind::Relu => "relu",
            ActivationKind::Tanh => "tanh",
            ActivationKind::Sigmoid => "sigmoid",
            ActivationKind::Identity => "identity",
            ActivationKind::Softmax => "softmax",
        }
    }
}

/// Which recurrent cell; decides the gate count and tensor layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellKind {
    /// `nn.RNN` with its nonlinearity.
    Rnn(Nonlinearity),
    /// `nn.LSTM`.
    Lstm,
    /// `nn.GRU`.
    Gru,
}

impl CellKind {
    /// Rows of `weight_ih` per hidden unit: PyTorch stacks the gates.
    pub fn gates(self) -> usize {
        match self {
            CellKind::Rnn(_) => 1,
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }

    /// The `type` in the model file.
    pub fn as_str(self) -> &'static str {
        match self {
            CellKind::Rnn(_) => "rnn",
            CellKind::Lstm => "lstm",
            CellKind::Gru => "gru",
        }
    }
}

/// One `[[layers]]` entry.
#[derive(Debug, Clone)]
pub struct LayerConfig {
    /// Position in the file (0-based), for messages.
    pub index: usize,
    /// The state_dict prefix (`conv` -> `conv.weight`); empty for top-level tensors.
    pub name: Option<String>,
    /// The kind and its options.
    pub kind: LayerKindConfig,
    /// Sizes the file may state: checked against the weights when they exist, and needed
    /// to initialize a model that `seqflow train` creates from scratch.
    pub sizes: Sizes,
}

/// Optional sizes of a layer with weights (PyTorch's constructor arguments).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sizes {
    /// `out_channels` (conv1d) or `out_features` (linear).
    pub out: Option<usize>,
    /// `kernel_size` (conv1d).
    pub kernel: Option<usize>,
    /// `proj_size` (lstm).
    pub proj: Option<usize>,
    /// `bias` (default true, as in PyTorch).
    pub bias: Option<bool>,
}

impl LayerConfig {
    /// `#2 (lstm "encoder.lstm")`: how messages refer to this layer.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("#{} ({} \"{}\")", self.index, self.kind.type_name(), n),
            None => format!("#{} ({})", self.index, self.kind.type_name()),
        }
    }

    /// Tensor name for `suffix` under this layer's prefix.
    pub fn tensor(&self, suffix: &str) -> String {
        match &self.name {
            Some(n) if !n.is_empty() => format!("{n}.{suffix}"),
            _ => suffix.to_string(),
        }
    }
}

/// The options of each layer kind, as written in the TOML.
#[derive(Debug, Clone)]
pub enum LayerKindConfig {
    /// `conv1d`.
    Conv1d {
        /// Steps between outputs.
        stride: usize,
        /// Steps between taps.
        dilation: usize,
        /// Causal, valid or same.
        padding: Padding,
    },
    /// `maxpool1d` (`max`) or `avgpool1d`.
    Pool {
        /// Max (else average) pooling.
        max: bool,
        /// Steps per window.
        kernel: usize,
        /// Steps between windows (default: `kernel`).
        stride: usize,
    },
    /// `linear`.
    Linear,
    /// An activation.
    Activation(ActivationKind),
    /// `rnn`, `lstm` or `gru`.
    Recurrent {
        /// Which cell.
        cell: CellKind,
        /// Optional assertions the weights are checked against.
        hidden_size: Option<usize>,
        /// Stacked layers, if stated.
        num_layers: Option<usize>,
        /// Whether bidirectional, if stated.
        bidirectional: Option<bool>,
        /// GRU: `false` applies the reset gate before the recurrent product,
        /// `n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)` (ONNX's `linear_before_reset = 0`,
        /// Keras' `reset_after = False`); `true` (the default) is PyTorch's
        /// `n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`.
        linear_before_reset: bool,
        /// The one direction runs backwards, from each sequence's last step (ONNX's
        /// `direction = "reverse"`); the output of step t depends on steps t.. (non-causal).
        reverse: bool,
    },
}

impl LayerKindConfig {
    /// The `type` in the model file.
    pub fn type_name(&self) -> &'static str {
        match self {
            LayerKindConfig::Conv1d { .. } => "conv1d",
            LayerKindConfig::Pool { max: true, .. } => "maxpool1d",
            LayerKindConfig::Pool { max: false, .. } => "avgpool1d",
            LayerKindConfig::Linear => "linear",
            LayerKindConfig::Activation(a) => a.as_str(),
            LayerKindConfig::Recurrent { cell, .. } => cell.as_str(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    weights: Option<String>,
    input_size: Option<usize>,
    precision: Option<String>,
    #[serde(default)]
    layers: Vec<toml::Value>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum RawLayer {
    Conv1d {
        name: Option<String>,
        stride: Option<usize>,
        dilation: Option<usize>,
        padding: Option<Padding>,
        out_channels: Option<usize>,
        kernel_size: Option<usize>,
        bias: Option<bool>,
    },
    Maxpool1d {
        name: Option<String>,
        kernel: usize,
        stride: Option<usize>,
    },
    Avgpool1d {
        name: Option<String>,
        kernel: usize,
        stride: Option<usize>,
    },
    Linear {
        name: Option<String>,
        out_features: Option<usize>,
        bias: Option<bool>,
    },
    Relu {
        name: Option<String>,
    },
    Tanh {
        name: Option<String>,
    },
    Sigmoid {
        name: Option<String>,
    },
    Identity {
        name: Option<String>,
    },
    Softmax {
        name: Option<String>,
    },
    Rnn {
        name: Option<String>,
        nonlinearity: Option<Nonlinearity>,
        hidden_size: Option<usize>,
        num_layers: Option<usize>,
        bidirectional: Option<bool>,
        bias: Option<bool>,
        reverse: Option<bool>,
    },
    Lstm {
        name: Option<String>,
        hidden_size: Option<usize>,
        num_layers: Option<usize>,
        bidirectional: Option<bool>,
        proj_size: Option<usize>,
        bias: Option<bool>,
        reverse: Option<bool>,
    },
    Gru {
        name: Option<String>,
        hidden_size: Option<usize>,
        num_layers: Option<usize>,
        bidirectional: Option<bool>,
        bias: Option<bool>,
        linear_before_reset: Option<bool>,
        reverse: Option<bool>,
    },
}

impl ModelConfig {
    /// Reads and parses a model file.
    pub fn load(path: &Path) -> Result<ModelConfig> {
        let text = crate::outfiles::read_regular_string(path)?;
        Self::parse(&text, path)
    }

    /// Parses model TOML text; `path` is used for messages and relative weights paths.
    pub fn parse(text: &str, path: &Path) -> Result<ModelConfig> {
        let err = |msg: String| Error::ModelConfig {
            path: path.to_path_buf(),
            msg,
        };
        let raw: RawModel = toml::from_str(text).map_err(|e| err(one_line(&e.to_string())))?;
        if raw.layers.is_empty() {
            return Err(err("no [[layers]]: a model needs at least one layer".into()));
        }
        let precision = match raw.precision.as_deref() {
            None | Some("f32") => Precision::F32,
            Some("bf16") => Precision::Bf16,
            Some(other) => {
                return Err(err(format!(
                    "`precision` = \"{other}\": expected \"f32\" (the default) or \"bf16\""
                )))
            }
        };
        let mut layers = Vec::with_capacity(raw.layers.len());
        for (index, value) in raw.layers.into_iter().enumerate() {
            let raw: RawLayer = value
                .try_into()
                .map_err(|e: toml::de::Error| err(format!("layer #{index}: {}", one_line(&e.to_string()))))?;
            let layer = convert(index, raw).map_err(|m| err(format!("layer #{index}: {m}")))?;
            layers.push(layer);
        }
        let base = path.parent().unwrap_or(Path::new(""));
        Ok(ModelConfig {
            path: path.to_path_buf(),
            weights: raw.weights.map(|w| clean_join(base, &w)),
            input_size: raw.input_size,
            precision,
            layers,
        })
    }
}

/// The most steps a window option may span (kernel, dilation, stride): a key keeps up to
/// this many steps of history per layer. Far above any trained model's; a typo like
/// `dilation = 1099511627776` is refused here instead of exhausting memory.
pub const MAX_STEPS: usize = 1 << 20;

/// The most sizes (hidden units, channels, features, layers) a model file may state.
pub const MAX_SIZE: usize = 1 << 20;

fn positive(what: &str, v: usize) -> Result<usize, String> {
    if v == 0 {
        Err(format!("`{what}` must be at least 1"))
    } else if v > MAX_SIZE {
        Err(format!("`{what}` = {v} is more than {MAX_SIZE}"))
    } else {
        Ok(v)
    }
}

/// A window option: at least 1 and at most [`MAX_STEPS`] steps.
fn steps(what: &str, v: usize) -> Result<usize, String> {
    match v {
        0 => Err(format!("`{what}` must be at least 1")),
        v if v > MAX_STEPS => Err(format!(
            "`{what}` = {v} steps is more than {MAX_STEPS}: every key would keep that much history"
        )),
        v => Ok(v),
    }
}

fn convert(index: usize, raw: RawLayer) -> Result<LayerConfig, String> {
    use LayerKindConfig as K;
    let rec = |cell,
               name,
               hidden_size,
               num_layers,
               bidirectional,
               sizes,
               linear_before_reset,
               reverse: Option<bool>|
     -> Result<LayerConfig, String> {
        if reverse == Some(true) && bidirectional == Some(true) {
            return Err(
                "`reverse = true` and `bidirectional = true`: a layer runs backwards alone, or both ways"
                    .into(),
            );
        }
        if let Some(h) = hidden_size {
            positive("hidden_size", h)?;
        }
        if let Some(n) = num_layers {
            positive("num_layers", n)?;
        }
        Ok(LayerConfig {
            index,
            name,
            kind: K::Recurrent {
                cell,
                hidden_size,
                num_layers,
                bidirectional,
                linear_before_reset,
                reverse: reverse.unwrap_or(false),
            },
            sizes,
        })
    };
    let mut sizes = Sizes::default();
    let (name, kind) = match raw {
        RawLayer::Conv1d {
            name,
            stride,
            dilation,
            padding,
            out_channels,
            kernel_size,
            bias,
        } => {
            sizes = Sizes {
                out: out_channels.map(|v| positive("out_channels", v)).transpose()?,
                kernel: kernel_size.map(|v| steps("kernel_size", v)).transpose()?,
                proj: None,
                bias,
            };
            let stride = steps("stride", stride.unwrap_or(1))?;
            let dilation = steps("dilation", dilation.unwrap_or(1))?;
            let padding = padding.unwrap_or(Padding::Causal);
            if padding == Padding::Same && stride != 1 {
                return Err("padding = \"same\" needs stride = 1 (as in PyTorch)".into());
            }
            (
                name,
                K::Conv1d {
                    stride,
                    dilation,
                    padding,
                },
            )
        }
        RawLayer::Maxpool1d { name, kernel, stride } => (name, pool(true, kernel, stride)?),
        RawLayer::Avgpool1d { name, kernel, stride } => (name, pool(false, kernel, stride)?),
        RawLayer::Linear {
            name,
            out_features,
            bias,
        } => {
            sizes.out = out_features.map(|v| positive("out_features", v)).transpose()?;
            sizes.bias = bias;
            (name, K::Linear)
        }
        RawLayer::Relu { name } => (name, K::Activation(ActivationKind::Relu)),
        RawLayer::Tanh { name } => (name, K::Activation(ActivationKind::Tanh)),
        RawLayer::Sigmoid { name } => (name, K::Activation(ActivationKind::Sigmoid)),
        RawLayer::Identity { name } => (name, K::Activation(ActivationKind::Identity)),
        RawLayer::Softmax { name } => (name, K::Activation(ActivationKind::Softmax)),
        RawLayer::Rnn {
            name,
            nonlinearity,
            hidden_size,
            num_layers,
            bidirectional,
            bias,
            reverse,
        } => {
            let nl = nonlinearity.unwrap_or(Nonlinearity::Tanh);
            sizes.bias = bias;
            return rec(
                CellKind::Rnn(nl),
                name,
                hidden_size,
                num_layers,
                bidirectional,
                sizes,
                true,
                reverse,
            );
        }
        RawLayer::Lstm {
            name,
            hidden_size,
            num_layers,
            bidirectional,
            proj_size,
            bias,
            reverse,
        } => {
            sizes.proj = proj_size.map(|v| positive("proj_size", v)).transpose()?;
            sizes.bias = bias;
            return rec(
                CellKind::Lstm,
                name,
                hidden_size,
                num_layers,
                bidirectional,
                sizes,
                true,
                reverse,
            );
        }
        RawLayer::Gru {
            name,
            hidden_size,
            num_layers,
            bidirectional,
            bias,
            linear_before_reset,
            reverse,
        } => {
            sizes.bias = bias;
            return rec(
                CellKind::Gru,
                name,
                hidden_size,
                num_layers,
                bidirectional,
                sizes,
                linear_before_reset.unwrap_or(true),
                reverse,
            );
        }
    };
    Ok(LayerConfig {
        index,
        name,
        kind,
        sizes,
    })
}

fn pool(max: bool, kernel: usize, stride: Option<usize>) -> Result<LayerKindConfig, String> {
    let kernel = steps("kernel", kernel)?;
    let stride = steps("stride", stride.unwrap_or(kernel))?;
    Ok(LayerKindConfig::Pool { max, kernel, stride })
}
