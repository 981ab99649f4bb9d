//! What `seqflow inspect` prints: layers, shapes, parameters, receptive field, delay and
//! whether the model can stream. Computed from the loaded model, never from the file alone,
//! so it shows exactly what will run.

use std::fmt;

use super::config::{CellKind, ModelConfig, Nonlinearity, Padding, Precision};
use super::weights::WeightStore;
use super::{Layer, Model, Packed, Workspace};
use crate::error::Result;
use crate::vocab::{group_digits, SplitMix};

/// Timing of a model's outputs relative to its input steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Input steps one output depends on; `None` when a recurrent layer makes it unbounded.
    pub receptive_field: Option<usize>,
    /// Index of the input step that completes the first output (0 = from the first step).
    pub first_output: usize,
    /// Outputs are emitted every `stride` input steps after the first.
    pub stride: usize,
    /// Steps of the future an output needs (`same` padding); 0 for causal models.
    pub lookahead: usize,
}

impl Model {
    /// Receptive field, delay and output stride, composed over the layers.
    pub fn timing(&self) -> Timing {
        let mut t = Timing {
            receptive_field: Some(1),
            first_output: 0,
            stride: 1,
            lookahead: 0,
        };
        for (_, layer) in self.layers() {
            if let Layer::Recurrent(r) = layer {
                t.receptive_field = None;
                if r.bidirectional || r.reverse {
                    t.lookahead = usize::MAX;
                }
            }
            if let Some(w) = layer.window() {
                let span = w.span();
                t.receptive_field = t.receptive_field.map(|rf| rf + (span - 1) * t.stride);
                if w.lookahead {
                    let ahead = (span - 1 - w.back) * t.stride;
                    t.lookahead = t.lookahead.saturating_add(ahead);
                }
                t.first_output += w.delay * t.stride;
                t.stride *= w.stride;
            }
        }
        t
    }

    /// Total number of parameters.
    pub fn params(&self) -> usize {
        self.layers().map(|(_, l)| l.params()).sum()
    }

    /// Bytes of streamed state one key costs.
    pub fn state_bytes_per_key(&self) -> usize {
        self.new_arena().bytes_per_slot()
    }

    /// The precision the model file asked for.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// For a bf16 model, its error against the same model in f32: both run over the same
    /// generated input ([`BF16_CHECK_SEQS`] sequences of [`BF16_CHECK_STEPS`] standard normal
    /// steps, what normalized data looks like; unnormalized inputs can see more), the f32
    /// twin loaded again from the model's files. `None` for an f32 model.
    pub fn bf16_error(&self) -> Result<Option<PrecisionError>> {
        if self.precision != Precision::Bf16 {
            return Ok(None);
        }
        let mut config = ModelConfig::load(&self.path)?;
        config.precision = Precision::F32;
        let store = match &config.weights {
            Some(w) => WeightStore::load(w)?,
            None => WeightStore::empty(&self.path),
        };
        let twin = Model::from_parts(config, store)?;
        let mut input = Packed::default();
        input.build(self.input_size(), &[BF16_CHECK_STEPS; BF16_CHECK_SEQS]);
        let mut rng = SplitMix::new(16);
        input.data.iter_mut().for_each(|v| *v = rng.normal());
        let (mut ws_a, mut ws_b) = (Workspace::default(), Workspace::default());
        let a = self.forward(&input, &mut ws_a);
        let b = twin.forward(&input, &mut ws_b);
        let (mut max, mut sum) = (0.0f32, 0.0f64);
        for (x, y) in a.data.iter().zip(&b.data) {
            let d = (x - y).abs();
            // Written so that a NaN difference shows as NaN (`f32::max` would drop it).
            if d > max || d.is_nan() {
                max = d;
            }
            sum += d as f64;
        }
        let layers = self
            .layers()
            .filter_map(|(lc, l)| match l {
                Layer::Recurrent(r) => Some((lc.label(), r.precision() == Precision::Bf16)),
                _ => None,
            })
            .collect();
        Ok(Some(PrecisionError {
            max,
            mean: sum / a.data.len().max(1) as f64,
            layers,
        }))
    }
}

/// Sequences of the input [`Model::bf16_error`] measures on.
pub const BF16_CHECK_SEQS: usize = 64;
/// Steps per sequence of that input.
pub const BF16_CHECK_STEPS: usize = 256;

/// A bf16 model's error against f32; see [`Model::bf16_error`].
#[derive(Debug, Clone, PartialEq)]
pub struct PrecisionError {
    /// Largest absolute difference of an output value.
    pub max: f32,
    /// Mean absolute difference.
    pub mean: f64,
    /// Each recurrent layer's label and whether it runs in bf16 (an LSTM with a projection
    /// stays f32).
    pub layers: Vec<(String, bool)>,
}

impl fmt::Display for PrecisionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |bf16: bool| {
            self.layers
                .iter()
                .filter(|l| l.1 == bf16)
                .map(|l| l.0.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (on, off) = (names(true), names(false));
        if on.is_empty() {
            write!(f, "precision        bf16 asked, but no layer runs it")?;
        } else {
            write!(f, "precision        bf16 in {on}")?;
        }
        if !off.is_empty() {
            write!(f, "; f32 in {off} (a projection has no bf16 kernel)")?;
        }
        write!(
            f,
            "\n                 max |bf16 - f32| {:.1e}, mean {:.1e}, over {BF16_CHECK_SEQS} generated sequences x {BF16_CHECK_STEPS} steps (standard normal inputs)",
            self.max, self.mean
        )
    }
}

fn layer_detail(layer: &Layer) -> String {
    match layer {
        Layer::Conv(c) => {
            let pad = match c.padding {
                Padding::Causal => "causal",
                Padding::Valid => "valid",
                Padding::Same => "same",
            };
            format!(
                "kernel {}, stride {}, dilation {}, padding {pad}; weight [{}, {}, {}]{}",
                c.kernel,
                c.stride,
                c.dilation,
                c.out_ch,
                c.in_ch,
                c.kernel,
                if c.has_bias() {
                    format!(", bias [{}]", c.out_ch)
                } else {
                    ", no bias".into()
                }
            )
        }
        Layer::Pool(p) => format!("kernel {}, stride {}", p.kernel, p.stride),
        Layer::Linear(l) => format!(
            "weight [{}, {}]{}",
            l.out_features,
            l.in_features,
            if l.has_bias() {
                format!(", bias [{}]", l.out_features)
            } else {
                ", no bias".into()
            }
        ),
        Layer::Activation(_) => String::new(),
        Layer::Recurrent(r) => {
            let mut s = format!(
                "hidden {}, {} layer{}{}{}",
                r.hidden,
                r.num_layers,
                if r.num_layers == 1 { "" } else { "s" },
                if r.bidirectional { ", bidirectional" } else { "" },
                if r.has_bias { "" } else { ", no bias" }
            );
            if let Some(p) = r.proj {
                s.push_str(&format!(", proj {p}"));
            }
            if let CellKind::Rnn(Nonlinearity::Relu) = r.cell {
                s.push_str(", relu");
            }
            if !r.linear_before_reset {
                s.push_str(", reset before the recurrent product");
            }
            if r.reverse {
                s.push_str(", reverse");
            }
            s
        }
    }
}

/// One layer as `inspect` shows it (and the Python binding's `Model.inspect()`).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerRow {
    /// Its position, from 0.
    pub index: usize,
    /// Its kind (`lstm`, `conv1d`, ...).
    pub kind: &'static str,
    /// Its name in the model file (the weights' prefix), if any.
    pub name: Option<String>,
    /// Values per step in.
    pub inputs: usize,
    /// Values per step out.
    pub outputs: usize,
    /// Parameters.
    pub params: usize,
    /// Bytes of streamed state per key.
    pub state_bytes: usize,
    /// Its options in words (`hidden 64, bidirectional`).
    pub detail: String,
}

impl Model {
    /// Every layer as `inspect` shows it.
    pub fn layer_rows(&self) -> Vec<LayerRow> {
        self.layers()
            .enumerate()
            .map(|(i, (lc, layer))| {
                let state = layer.state_spec(self.width_at(i));
                LayerRow {
                    index: lc.index,
                    kind: lc.kind.type_name(),
                    name: lc.name.clone(),
                    inputs: self.width_at(i),
                    outputs: self.width_at(i + 1),
                    params: layer.params(),
                    state_bytes: state.floats * 4 + if state.counter { 8 } else { 0 },
                    detail: layer_detail(layer),
                }
            })
            .collect()
    }
}

/// The `inspect` report.
pub struct Summary<'a>(pub &'a Model);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        writeln!(f, "model {}", m.path().display())?;
        writeln!(
            f,
            "input {} feature{} -> output {} value{} per emitted step",
            m.input_size(),
            if m.input_size() == 1 { "" } else { "s" },
            m.output_size(),
            if m.output_size() == 1 { "" } else { "s" },
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "  {:<28} {:>13} {:>10} {:>11}  details",
            "layer", "in -> out", "params", "state/key"
        )?;
        for ((lc, _), r) in m.layers().zip(m.layer_rows()) {
            let row = format!(
                "  {:<28} {:>13} {:>10} {:>11}  {}",
                lc.label(),
                format!("{} -> {}", r.inputs, r.outputs),
                group_digits(r.params),
                if r.state_bytes == 0 {
                    "-".to_string()
                } else {
                    format!("{} B", r.state_bytes)
                },
                r.detail
            );
            // Layers without details (activations) would end in spaces.
            writeln!(f, "{}", row.trim_end())?;
        }
        writeln!(f)?;
        let t = m.timing();
        writeln!(f, "parameters       {}", group_digits(m.params()))?;
        match t.receptive_field {
            Some(rf) => writeln!(f, "receptive field  {rf} input steps")?,
            None => writeln!(f, "receptive field  unbounded (recurrent)")?,
        }
        writeln!(
            f,
            "delay            first output at input step {} (0-based){}",
            t.first_output,
            if t.first_output == 0 {
                ", i.e. from the first step"
            } else {
                ""
            }
        )?;
        if t.stride == 1 {
            writeln!(f, "output rate      one output per input step")?;
        } else {
            writeln!(f, "output rate      one output every {} input steps", t.stride)?;
        }
        match m.check_streamable() {
            Ok(()) => writeln!(
                f,
                "streamable       yes (every_step, sequence_end, window); state {} bytes per key",
                m.state_bytes_per_key()
            )?,
            Err(e) => {
                let why = e.to_string();
                let why = why
                    .split(": this model cannot run step by step: ")
                    .last()
                    .unwrap_or(&why);
                writeln!(
                    f,
                    "streamable       no: {why}; use emit = \"sequence_end\" or \"window\""
                )?
            }
        }
        Ok(())
    }
}
