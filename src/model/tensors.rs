//! One description of each layer's PyTorch tensors: names, shapes, what they hold and the
//! bound PyTorch draws them from. The loader checks weights files against it, training lays
//! out its parameters by it, and [`init`] (used by `seqflow train` and [`ModelBuilder`])
//! draws fresh weights from it, so the four cannot disagree about a tensor.
//!
//! [`ModelBuilder`]: super::builder::ModelBuilder

use super::config::{CellKind, LayerConfig, LayerKindConfig, ModelConfig};
use super::weights::Tensor;
use crate::error::{Error, Result};
use crate::vocab::SplitMix;

/// The sizes of a layer with parameters: its PyTorch constructor's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `nn.Conv1d(in_ch, out_ch, kernel, bias=bias)`.
    Conv {
        /// Input channels.
        in_ch: usize,
        /// Output channels.
        out_ch: usize,
        /// Kernel size.
        kernel: usize,
        /// Whether there is a bias.
        bias: bool,
    },
    /// `nn.Linear(inp, out, bias=bias)`.
    Linear {
        /// Input features.
        inp: usize,
        /// Output features.
        out: usize,
        /// Whether there is a bias.
        bias: bool,
    },
    /// `nn.RNN` / `nn.LSTM` / `nn.GRU`.
    Recurrent {
        /// The cell.
        cell: CellKind,
        /// Input features of the first layer.
        input: usize,
        /// Hidden units.
        hidden: usize,
        /// Stacked layers.
        layers: usize,
        /// Whether each layer also runs backwards.
        bidirectional: bool,
        /// LSTM projection size.
        proj: Option<usize>,
        /// Whether there are biases.
        bias: bool,
    },
}

/// One tensor as PyTorch's `state_dict()` has it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// Full name (`lstm.weight_ih_l0`).
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Dimensions the loader reads from this tensor itself (shown as `?` in messages).
    pub inferred: Vec<bool>,
    /// What the tensor holds, for messages.
    pub what: String,
    /// PyTorch's initialization draws it uniformly from `[-bound, bound)`.
    pub bound: f64,
}

impl Shape {
    /// The width of the layer's output.
    pub fn out_width(&self) -> usize {
        match *self {
            Shape::Conv { out_ch, .. } => out_ch,
            Shape::Linear { out, .. } => out,
            Shape::Recurrent {
                hidden,
                proj,
                bidirectional,
                ..
            } => proj.unwrap_or(hidden) * if bidirectional { 2 } else { 1 },
        }
    }

    /// The sizes a model file states for `lc` (needed to initialize a model that has no
    /// weights yet); `Err` names the missing setting.
    pub fn from_config(lc: &LayerConfig, width: usize) -> std::result::Result<Option<Shape>, &'static str> {
        let s = &lc.sizes;
        let bias = s.bias.unwrap_or(true);
        Ok(Some(match &lc.kind {
            LayerKindConfig::Conv1d { .. } => Shape::Conv {
                in_ch: width,
                out_ch: s.out.ok_or("out_channels")?,
                kernel: s.kernel.ok_or("kernel_size")?,
                bias,
            },
            LayerKindConfig::Linear => Shape::Linear {
                inp: width,
                out: s.out.ok_or("out_features")?,
                bias,
            },
            LayerKindConfig::Recurrent {
                cell,
                hidden_size,
                num_layers,
                bidirectional,
                ..
            } => Shape::Recurrent {
                cell: *cell,
                input: width,
                hidden: hidden_size.ok_or("hidden_size")?,
                layers: num_layers.unwrap_or(1),
                bidirectional: bidirectional.unwrap_or(false),
                proj: s.proj,
                bias,
            },
            LayerKindConfig::Pool { .. } | LayerKindConfig::Activation(_) => return Ok(None),
        }))
    }

    /// Every tensor of the layer named by `lc`, in `state_dict()` order.
    pub fn tensors(&self, lc: &LayerConfig) -> Vec<TensorSpec> {
        let t = |suffix: &str, shape: Vec<usize>, inferred: &[usize], what: String, bound: f64| TensorSpec {
            name: lc.tensor(suffix),
            inferred: (0..shape.len()).map(|d| inferred.contains(&d)).collect(),
            shape,
            what,
            bound,
        };
        let bias = |suffix: &str, n: usize, bound: f64| {
            t(suffix, vec![n], &[], "one value per output".into(), bound)
        };
        match *self {
            Shape::Conv {
                in_ch,
                out_ch,
                kernel,
                bias: b,
            } => {
                let bound = 1.0 / ((in_ch * kernel) as f64).sqrt();
                let what = format!("[out_channels, in_channels = {in_ch} from the previous layer, kernel]");
                let mut v = vec![t("weight", vec![out_ch, in_ch, kernel], &[0, 2], what, bound)];
                v.extend(b.then(|| bias("bias", out_ch, bound)));
                v
            }
            Shape::Linear { inp, out, bias: b } => {
                let bound = 1.0 / (inp as f64).sqrt();
                let what = format!("[out_features, in_features = {inp} from the previous layer]");
                let mut v = vec![t("weight", vec![out, inp], &[0], what, bound)];
                v.extend(b.then(|| bias("bias", out, bound)));
                v
            }
            Shape::Recurrent {
                cell,
                input,
                hidden,
                layers,
                bidirectional,
                proj,
                bias: b,
            } => {
                let (g, hout) = (cell.gates() * hidden, proj.unwrap_or(hidden));
                let dirs = if bidirectional { 2 } else { 1 };
                let bound = 1.0 / (hidden as f64).sqrt();
                let mut v = Vec::new();
                for k in 0..layers {
                    let in_w = if k == 0 { input } else { hout * dirs };
                    let from = match k {
                        0 => "the previous layer's width".to_string(),
                        _ if bidirectional => format!("layer {} output, both directions", k - 1),
                        _ => format!("layer {} output", k - 1),
                    };
                    for sfx in ["", "_reverse"].into_iter().take(dirs) {
                        let what = format!("{}; input {in_w} = {from}", gates_doc(cell));
                        v.push(t(
                            &format!("weight_ih_l{k}{sfx}"),
                            vec![g, in_w],
                            &[],
                            what,
                            bound,
                        ));
                        let hh = gates_doc(cell).into();
                        v.push(t(&format!("weight_hh_l{k}{sfx}"), vec![g, hout], &[], hh, bound));
                        if b {
                            v.push(bias(&format!("bias_ih_l{k}{sfx}"), g, bound));
                            v.push(bias(&format!("bias_hh_l{k}{sfx}"), g, bound));
                        }
                        if let Some(p) = proj {
                            let what = "[proj_size, hidden_size]".into();
                            v.push(t(
                                &format!("weight_hr_l{k}{sfx}"),
                                vec![p, hidden],
                                &[],
                                what,
                                bound,
                            ));
                        }
                    }
                }
                v
            }
        }
    }
}

/// How PyTorch stacks a cell's gates in `weight_ih` / `weight_hh`, for messages.
pub fn gates_doc(cell: CellKind) -> &'static str {
    match cell {
        CellKind::Rnn(_) => "hidden_size rows",
        CellKind::Lstm => "4*hidden_size rows, gates i, f, g, o",
        CellKind::Gru => "3*hidden_size rows, gates r, z, n",
    }
}

/// Fresh weights for a model file, drawn as PyTorch's module constructors draw them: every
/// tensor uniform in `±bound` ([`TensorSpec::bound`]: `1/sqrt(fan_in)` for conv and linear,
/// from `kaiming_uniform_(a=sqrt(5))`; `1/sqrt(hidden_size)` for recurrent layers), in
/// `state_dict()` order from one seeded generator. Sizes come from the model file.
pub fn init(config: &ModelConfig, input_size: usize, seed: u64) -> Result<Vec<(String, Tensor)>> {
    let mut rng = SplitMix::new(seed);
    let mut out = Vec::new();
    let mut width = input_size;
    for lc in &config.layers {
        let err = |msg: String| Error::ModelConfig {
            path: config.path.clone(),
            msg: format!("layer {}: {msg}", lc.label()),
        };
        let shape = Shape::from_config(lc, width).map_err(|what| {
            err(format!(
                "to initialize a new model (its weights file does not exist yet), the layer must state `{what}`"
            ))
        })?;
        let Some(shape) = shape else { continue };
        if let Shape::Recurrent {
            cell,
            hidden,
            proj: Some(p),
            ..
        } = shape
        {
            if cell != CellKind::Lstm || p >= hidden {
                return Err(err(format!(
                    "proj_size = {p} needs an lstm with hidden_size > proj_size"
                )));
            }
        }
        for t in shape.tensors(lc) {
            let n = t.shape.iter().product();
            let data = (0..n).map(|_| rng.uniform(t.bound as f32)).collect();
            out.push((t.name, Tensor { shape: t.shape, data }));
        }
        width = shape.out_width();
    }
    Ok(out)
}
