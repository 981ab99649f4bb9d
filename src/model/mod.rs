//! The model: an immutable stack of layers loaded from a model TOML and a safetensors file,
//! run in two forms over the same layer objects.
//!
//! - [`Model::forward`] (offline): complete sequences from a zero state; any model, including
//!   bidirectional layers and `same` padding.
//! - [`Model::advance`] (streamed): the next steps of many keys, each carrying its state in a
//!   [`StateArena`] slot; causal models only.
//!
//! Both take a [`Packed`] batch and run layer by layer over it, so every layer sees all steps
//! of all keys at once. The invariant the tests defend: for every key, streaming its steps in
//! any split into calls gives the offline outputs of its whole sequence.

mod bind;
pub mod builder;
pub mod config;
pub mod dense;
pub mod packed;
pub mod recurrent;
pub mod state;
pub mod summary;
pub mod tensors;
pub mod weights;
pub mod window;

use std::path::{Path, PathBuf};

use config::{ActivationKind, LayerConfig, LayerKindConfig, ModelConfig};
use dense::Linear;
pub use packed::{Layout, Packed};
use recurrent::{RecScratch, Recurrent};
pub use state::{StateArena, StateSpec};
use tensors::Shape;
use weights::{Tensor, WeightStore};
use window::{Conv1d, Pool1d, Window};

use crate::error::{Error, Result};
use state::LayerSlots;

/// The most state one key may cost (256 MiB): far above any real model's (the demo's is
/// 392 bytes); what a window option a few digits too long implies.
pub const MAX_KEY_STATE: usize = 256 << 20;

/// A loaded layer, weights pre-arranged for its kernels.
#[derive(Debug, Clone)]
pub enum Layer {
    /// `conv1d`.
    Conv(Conv1d),
    /// `maxpool1d` / `avgpool1d`.
    Pool(Pool1d),
    /// `linear`.
    Linear(Linear),
    /// An activation.
    Activation(ActivationKind),
    /// `rnn`, `lstm`, `gru`.
    Recurrent(Recurrent),
}

impl Layer {
    /// Per-slot state this layer keeps when streaming.
    pub fn state_spec(&self, in_width: usize) -> StateSpec {
        match self {
            Layer::Conv(c) => c.window().state_spec(in_width),
            Layer::Pool(p) => p.window().state_spec(in_width),
            Layer::Recurrent(r) => r.state_spec(),
            Layer::Linear(_) | Layer::Activation(_) => StateSpec::default(),
        }
    }

    /// The window geometry of convolutions and pooling.
    pub fn window(&self) -> Option<Window> {
        match self {
            Layer::Conv(c) => Some(c.window()),
            Layer::Pool(p) => Some(p.window()),
            _ => None,
        }
    }

    /// Number of parameters.
    pub fn params(&self) -> usize {
        match self {
            Layer::Conv(c) => c.params(),
            Layer::Linear(l) => l.params(),
            Layer::Recurrent(r) => r.params(),
            Layer::Pool(_) | Layer::Activation(_) => 0,
        }
    }

    /// The sizes of the layer's parameters (`None` for layers without any).
    pub fn shape(&self) -> Option<Shape> {
        Some(match self {
            Layer::Conv(c) => Shape::Conv {
                in_ch: c.in_ch,
                out_ch: c.out_ch,
                kernel: c.kernel,
                bias: c.has_bias(),
            },
            Layer::Linear(l) => Shape::Linear {
                inp: l.in_features,
                out: l.out_features,
                bias: l.has_bias(),
            },
            Layer::Recurrent(r) => Shape::Recurrent {
                cell: r.cell,
                input: r.input_size,
                hidden: r.hidden,
                layers: r.num_layers,
                bidirectional: r.bidirectional,
                proj: r.proj,
                bias: r.has_bias,
            },
            Layer::Pool(_) | Layer::Activation(_) => return None,
        })
    }

    /// Why this layer needs the future of the sequence, if it does.
    pub fn non_causal(&self) -> Option<&'static str> {
        match self {
            Layer::Conv(c) if c.window().lookahead => Some("padding = \"same\" looks ahead in time"),
            Layer::Recurrent(r) if r.bidirectional || r.reverse => Some(if r.reverse {
                "a reverse layer reads the sequence backwards"
            } else {
                "a bidirectional layer reads the sequence backwards"
            }),
            _ => None,
        }
    }
}

/// How a layer reaches its per-key state during a call.
pub(crate) enum StateRef<'a> {
    /// Complete sequences from a zero state; nothing is kept.
    Fresh,
    /// Streaming: `ids[sequence id]` is the key's slot in `slots`.
    Slots {
        slots: &'a mut LayerSlots,
        ids: &'a [u32],
    },
}

/// Reusable buffers for running a model. Keep one per driver (per worker): after the
/// largest batch has been seen, running the model allocates nothing.
#[derive(Debug, Default)]
pub struct Workspace {
    a: Packed,
    b: Packed,
    cols: Vec<f32>,
    counts: Vec<u64>,
    rec: RecScratch,
}

/// An immutable, validated model.
#[derive(Debug, Clone)]
pub struct Model {
    path: PathBuf,
    /// The weights file, when the model has one.
    weights: Option<PathBuf>,
    input_size: usize,
    layers: Vec<(LayerConfig, Layer)>,
    /// Width of each layer's input (`widths[i]`) and of the output (`widths[len]`).
    widths: Vec<usize>,
    /// Why the model cannot stream, naming the layer; `None` if it can.
    not_streamable: Option<String>,
    /// What the model file asked for; [`Recurrent::precision`] says what each layer runs.
    precision: config::Precision,
}

/// Output of [`Model::forward_sequence`]: `steps.len()` rows of `width` values.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceOutput {
    /// Values per row.
    pub width: usize,
    /// `rows x width`.
    pub data: Vec<f32>,
    /// For each output row, the input step that completed it.
    pub steps: Vec<u32>,
}

impl SequenceOutput {
    /// Output row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.width..(i + 1) * self.width]
    }
}

impl Model {
    /// Loads a model TOML and the weights it names, validating everything once.
    /// An `.onnx` file is imported in memory (`crate::onnx`), its weights under PyTorch's
    /// names, as `seqflow import` would write them.
    pub fn load(path: &Path) -> Result<Model> {
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) {
            return Model::from_onnx(path, &crate::onnx::import(path)?);
        }
        let config = ModelConfig::load(path)?;
        let store = match &config.weights {
            Some(w) => WeightStore::load(w)?,
            None => WeightStore::empty(path),
        };
        Model::from_parts(config, store)
    }

    /// The model an ONNX import describes (`path`, the `.onnx` file, names it in messages).
    pub fn from_onnx(path: &Path, imported: &crate::onnx::Imported) -> Result<Model> {
        let config = ModelConfig::parse(&imported.layers_toml, path)?;
        let tensors = imported.tensors.iter().map(|(n, t)| (n.clone(), Tensor::from(t)));
        Model::from_parts(config, WeightStore::from_tensors(path, tensors))
    }

    /// Builds a model from a parsed config and a weight store (tests, training).
    pub fn from_parts(config: ModelConfig, mut store: WeightStore) -> Result<Model> {
        let needs_weights = config.layers.iter().any(|l| {
            matches!(
                l.kind,
                LayerKindConfig::Conv1d { .. } | LayerKindConfig::Linear | LayerKindConfig::Recurrent { .. }
            )
        });
        if needs_weights && config.weights.is_none() && store.leftovers().is_empty() {
            return Err(Error::ModelConfig {
                path: config.path.clone(),
                msg: "the model has layers with weights but no `weights = \"FILE.safetensors\"`".into(),
            });
        }
        let mut width = match config.input_size {
            Some(0) => {
                return Err(Error::ModelConfig {
                    path: config.path.clone(),
                    msg: "`input_size` must be at least 1".into(),
                })
            }
            Some(n) if n > config::MAX_SIZE => {
                return Err(Error::ModelConfig {
                    path: config.path.clone(),
                    msg: format!("`input_size` = {n} is more than {}", config::MAX_SIZE),
                })
            }
            Some(n) => n,
            None => bind::infer_input_size(&config, &store)?,
        };
        let input_size = width;
        // Refused only where it would change something: bf16 applies to recurrent layers.
        let recurrent = config
            .layers
            .iter()
            .any(|l| matches!(l.kind, LayerKindConfig::Recurrent { .. }));
        let bf16 = config.precision == config::Precision::Bf16 && recurrent;
        if let Some(why) = bf16.then(crate::kernels::fused::bf16_refusal).flatten() {
            return Err(Error::ModelConfig {
                path: config.path.clone(),
                msg: format!(
                    "`precision = \"bf16\"` needs a CPU with AVX512_BF16 (bf16 dot products): {why}; \
                     remove the line to run the model in f32"
                ),
            });
        }
        let mut layers = Vec::with_capacity(config.layers.len());
        let mut widths = vec![width];
        for lc in &config.layers {
            let layer = bind::build_layer(lc, width, config.precision, &mut store)?;
            width = match &layer {
                Layer::Conv(c) => c.out_ch,
                Layer::Pool(_) | Layer::Activation(_) => width,
                Layer::Linear(l) => l.out_features,
                Layer::Recurrent(r) => r.out_width(),
            };
            widths.push(width);
            layers.push((lc.clone(), layer));
        }
        let leftovers = store.leftovers();
        if !leftovers.is_empty() {
            let names: Vec<String> = leftovers.iter().take(8).map(|n| format!("`{n}`")).collect();
            let more = if leftovers.len() > 8 {
                format!(" and {} more", leftovers.len() - 8)
            } else {
                String::new()
            };
            return Err(Error::WeightsFile {
                path: store.path.clone(),
                msg: format!(
                    "tensor(s) {}{more} are not used by any layer of {}; check the layers' `name` \
                     prefixes (a layer named \"lstm\" reads `lstm.weight_ih_l0`) and that no module \
                     is missing from [[layers]]",
                    names.join(", "),
                    config.path.display()
                ),
            });
        }
        // What every key will cost, checked once: a window's history is sized by options a
        // typo can make enormous.
        let per_layer: Vec<usize> = layers
            .iter()
            .enumerate()
            .map(|(i, (_, l))| {
                let s = l.state_spec(widths[i]);
                s.floats
                    .saturating_mul(4)
                    .saturating_add(if s.counter { 8 } else { 0 })
            })
            .collect();
        let total = per_layer.iter().fold(0usize, |a, &b| a.saturating_add(b));
        if total > MAX_KEY_STATE {
            let (i, &most) = per_layer
                .iter()
                .enumerate()
                .max_by_key(|(_, b)| **b)
                .expect("a layer");
            return Err(Error::ModelConfig {
                path: config.path.clone(),
                msg: format!(
                    "the model would keep {} of state per key (layer {}: {}); the limit is {} per key",
                    crate::vocab::human_bytes(total as u64),
                    layers[i].0.label(),
                    crate::vocab::human_bytes(most as u64),
                    crate::vocab::human_bytes(MAX_KEY_STATE as u64)
                ),
            });
        }
        let not_streamable = layers
            .iter()
            .find_map(|(lc, l)| l.non_causal().map(|why| format!("layer {}: {why}", lc.label())));
        Ok(Model {
            weights: config.weights.clone(),
            path: config.path,
            input_size,
            layers,
            widths,
            not_streamable,
            precision: config.precision,
        })
    }

    /// The model file this was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The weights file the model was loaded from.
    pub fn weights_path(&self) -> Option<&Path> {
        self.weights.as_deref()
    }

    /// Features per input step.
    pub fn input_size(&self) -> usize {
        self.input_size
    }

    /// Values per output step.
    pub fn output_size(&self) -> usize {
        *self.widths.last().expect("widths has the input entry")
    }

    /// The layers with their configs, in order.
    pub fn layers(&self) -> impl Iterator<Item = (&LayerConfig, &Layer)> {
        self.layers.iter().map(|(c, l)| (c, l))
    }

    /// Input width of layer `i`; `i == layers` gives the output width.
    pub fn width_at(&self, i: usize) -> usize {
        self.widths[i]
    }

    /// `Ok` if every layer is causal, so the model can run step by step.
    pub fn check_streamable(&self) -> Result<()> {
        match &self.not_streamable {
            None => Ok(()),
            Some(why) => Err(Error::Unsupported {
                path: self.path.clone(),
                msg: format!("this model cannot run step by step: {why}"),
            }),
        }
    }

    /// State specs, one per layer, for building a [`StateArena`].
    pub fn state_specs(&self) -> Vec<StateSpec> {
        self.layers
            .iter()
            .enumerate()
            .map(|(i, (_, l))| l.state_spec(self.widths[i]))
            .collect()
    }

    /// An empty arena for this model's per-key state.
    pub fn new_arena(&self) -> StateArena {
        StateArena::new(&self.state_specs())
    }

    /// Offline form: runs complete sequences from a zero state. Any model.
    ///
    /// Output row tags give, per sequence, the input step that completed each output.
    pub fn forward<'w>(&self, input: &Packed, ws: &'w mut Workspace) -> &'w Packed {
        self.run(input, None, ws)
    }

    /// Streamed form: advances the keys in `input` (sequence `s` is the key in slot
    /// `slots[s]`) by their steps, carrying their state in `arena`.
    ///
    /// Fails only for a model that cannot stream (see [`Model::check_streamable`]).
    pub fn advance<'w>(
        &self,
        arena: &mut StateArena,
        slots: &[u32],
        input: &Packed,
        ws: &'w mut Workspace,
    ) -> Result<&'w Packed> {
        self.check_streamable()?;
        Ok(self.run(input, Some((arena, slots)), ws))
    }

    /// Convenience offline run of one sequence `x` (`t` rows of `input_size`).
    pub fn forward_sequence(&self, x: &[f32], t: usize) -> SequenceOutput {
        assert_eq!(x.len(), t * self.input_size, "x must be t x input_size");
        let mut input = Packed::default();
        input.build(self.input_size, &[t]);
        for (i, row) in x.chunks_exact(self.input_size.max(1)).enumerate() {
            input.row_mut(0, i).copy_from_slice(row);
        }
        let mut ws = Workspace::default();
        let out = self.forward(&input, &mut ws);
        let mut res = SequenceOutput {
            width: out.width,
            data: Vec::new(),
            steps: Vec::new(),
        };
        for (_, step, row) in out.rows() {
            res.steps.push(step);
            res.data.extend_from_slice(row);
        }
        res
    }

    fn run<'w>(
        &self,
        input: &Packed,
        mut arena: Option<(&mut StateArena, &[u32])>,
        ws: &'w mut Workspace,
    ) -> &'w Packed {
        debug_assert_eq!(input.width, self.input_size);
        ws.a.clone_from(input);
        for (i, (_, layer)) in self.layers.iter().enumerate() {
            let mut state = match &mut arena {
                None => StateRef::Fresh,
                Some((arena, ids)) => StateRef::Slots {
                    slots: arena.layer_mut(i),
                    ids,
                },
            };
            let swap = match layer {
                Layer::Activation(kind) => {
                    dense::activate(*kind, &mut ws.a);
                    false
                }
                Layer::Linear(l) => {
                    l.forward(&ws.a, &mut ws.b);
                    true
                }
                Layer::Conv(c) => {
                    c.forward(&ws.a, &mut state, &mut ws.b, &mut ws.cols, &mut ws.counts);
                    true
                }
                Layer::Pool(p) => {
                    p.forward(&ws.a, &mut state, &mut ws.b, &mut ws.cols, &mut ws.counts);
                    true
                }
                Layer::Recurrent(r) => {
                    r.forward(&ws.a, &mut state, &mut ws.b, &mut ws.rec);
                    true
                }
            };
            if swap {
                std::mem::swap(&mut ws.a, &mut ws.b);
            }
        }
        &ws.a
    }
}
