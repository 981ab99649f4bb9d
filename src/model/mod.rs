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

pub mod builder;
pub mod config;
pub mod dense;
pub mod packed;
pub mod recurrent;
pub mod state;
pub mod summary;
pub mod weights;
pub mod window;

use std::path::{Path, PathBuf};

use config::{ActivationKind, CellKind, LayerConfig, LayerKindConfig, ModelConfig};
use dense::Linear;
pub use packed::{Layout, Packed};
use recurrent::{CellWeights, RecScratch, Recurrent};
pub use state::{StateArena, StateSpec};
use weights::{shape_str, WeightStore};
use window::{Conv1d, Pool1d, Window};

use crate::error::{Error, Result};
use state::LayerSlots;

/// A loaded layer, weights pre-arranged for its kernels.
#[derive(Debug, Clone)]
pub enum Layer {
    Conv(Conv1d),
    Pool(Pool1d),
    Linear(Linear),
    Activation(ActivationKind),
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

    /// Why this layer needs the future of the sequence, if it does.
    pub fn non_causal(&self) -> Option<&'static str> {
        match self {
            Layer::Conv(c) if c.window().lookahead => Some("padding = \"same\" looks ahead in time"),
            Layer::Recurrent(r) if r.bidirectional => {
                Some("a bidirectional layer reads the sequence backwards")
            }
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
    input_size: usize,
    layers: Vec<(LayerConfig, Layer)>,
    /// Width of each layer's input (`widths[i]`) and of the output (`widths[len]`).
    widths: Vec<usize>,
    /// Why the model cannot stream, naming the layer; `None` if it can.
    not_streamable: Option<String>,
}

/// Output of [`Model::forward_sequence`]: `steps.len()` rows of `width` values.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceOutput {
    pub width: usize,
    pub data: Vec<f32>,
    /// For each output row, the input step that completed it.
    pub steps: Vec<u32>,
}

impl SequenceOutput {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.width..(i + 1) * self.width]
    }
}

impl Model {
    /// Loads a model TOML and the weights it names, validating everything once.
    pub fn load(path: &Path) -> Result<Model> {
        let config = ModelConfig::load(path)?;
        let store = match &config.weights {
            Some(w) => WeightStore::load(w)?,
            None => WeightStore::empty(path),
        };
        Model::from_parts(config, store)
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
            Some(n) => n,
            None => infer_input_size(&config, &store)?,
        };
        let input_size = width;
        let mut layers = Vec::with_capacity(config.layers.len());
        let mut widths = vec![width];
        for lc in &config.layers {
            let layer = build_layer(lc, width, &mut store)?;
            check_sizes(lc, &layer, &store)?;
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
        let not_streamable = layers
            .iter()
            .find_map(|(lc, l)| l.non_causal().map(|why| format!("layer {}: {why}", lc.label())));
        Ok(Model {
            path: config.path,
            input_size,
            layers,
            widths,
            not_streamable,
        })
    }

    /// The model file this was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
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

/// Checks the sizes a model file states (`out_channels`, `kernel_size`, `out_features`,
/// `proj_size`, `bias`) against what the weights have.
fn check_sizes(lc: &LayerConfig, layer: &Layer, store: &WeightStore) -> Result<()> {
    let (out, kernel, proj, bias) = match layer {
        Layer::Conv(c) => (
            Some(("out_channels", c.out_ch)),
            Some(c.kernel),
            None,
            Some(c.has_bias()),
        ),
        Layer::Linear(l) => (
            Some(("out_features", l.out_features)),
            None,
            None,
            Some(l.has_bias()),
        ),
        Layer::Recurrent(r) => (None, None, Some(r.proj), Some(r.has_bias)),
        _ => return Ok(()),
    };
    let s = &lc.sizes;
    let mismatch = |what: &str, said: String, found: String| {
        Err(tensor_err(
            store,
            lc,
            format!("the model file says {what} = {said} but the weights have {found}"),
        ))
    };
    if let (Some(said), Some((what, found))) = (s.out, out) {
        if said != found {
            return mismatch(what, said.to_string(), found.to_string());
        }
    }
    if let (Some(said), Some(found)) = (s.kernel, kernel) {
        if said != found {
            return mismatch("kernel_size", said.to_string(), found.to_string());
        }
    }
    if let (Some(said), Some(found)) = (s.proj, proj) {
        if Some(said) != found {
            let found = found.map_or("no projection (no `weight_hr_l0`)".to_string(), |p| p.to_string());
            return mismatch("proj_size", said.to_string(), found);
        }
    }
    if let (Some(said), Some(found)) = (s.bias, bias) {
        if said != found {
            let found = if found { "bias tensors" } else { "no bias tensors" };
            return mismatch("bias", said.to_string(), found.to_string());
        }
    }
    Ok(())
}

fn tensor_err(store: &WeightStore, lc: &LayerConfig, msg: String) -> Error {
    Error::Tensor {
        path: store.path.clone(),
        layer: lc.label(),
        msg,
    }
}

/// What the weights file has under a layer's prefix, for "missing tensor" messages.
fn available_hint(store: &WeightStore, lc: &LayerConfig) -> String {
    let prefix = match &lc.name {
        Some(n) if !n.is_empty() => format!("{n}."),
        _ => String::new(),
    };
    let names: Vec<&str> = store.names_with_prefix(&prefix).take(8).collect();
    if names.is_empty() {
        if prefix.is_empty() {
            "; the file has no top-level tensors (does the layer need a `name`?)".into()
        } else {
            format!("; the file has no tensor starting with `{prefix}` (is `name` right?)")
        }
    } else {
        format!("; tensors under that prefix: {}", names.join(", "))
    }
}

/// Takes a required tensor, checking its rank and the dimensions given as `Some`.
fn take_tensor(
    store: &mut WeightStore,
    lc: &LayerConfig,
    suffix: &str,
    expect: &[Option<usize>],
    what: &str,
) -> Result<(Vec<usize>, Vec<f32>)> {
    let name = lc.tensor(suffix);
    let want = expect
        .iter()
        .map(|d| d.map_or("?".to_string(), |v| v.to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    let Some(t) = store.take(&name) else {
        let hint = available_hint(store, lc);
        return Err(tensor_err(
            store,
            lc,
            format!("missing tensor `{name}` (expected shape [{want}], {what}){hint}"),
        ));
    };
    let ok =
        t.shape.len() == expect.len() && t.shape.iter().zip(expect).all(|(&s, e)| e.is_none_or(|e| e == s));
    if !ok || t.shape.contains(&0) {
        let shape = shape_str(&t.shape);
        return Err(tensor_err(
            store,
            lc,
            format!("tensor `{name}` has shape {shape}, expected [{want}] ({what})"),
        ));
    }
    Ok((t.shape.clone(), t.data.clone()))
}

/// Takes an optional bias of length `n`.
fn take_bias(store: &mut WeightStore, lc: &LayerConfig, suffix: &str, n: usize) -> Result<Option<Vec<f32>>> {
    if !store.contains(&lc.tensor(suffix)) {
        return Ok(None);
    }
    let (_, data) = take_tensor(store, lc, suffix, &[Some(n)], "one value per output")?;
    Ok(Some(data))
}

fn infer_input_size(config: &ModelConfig, store: &WeightStore) -> Result<usize> {
    let err = |msg: String| Error::ModelConfig {
        path: config.path.clone(),
        msg,
    };
    let first = &config.layers[0];
    let tensor = match first.kind {
        LayerKindConfig::Conv1d { .. } | LayerKindConfig::Linear => first.tensor("weight"),
        LayerKindConfig::Recurrent { .. } => first.tensor("weight_ih_l0"),
        _ => {
            return Err(err(
                "`input_size` is required when the first layer has no weights to read it from".into(),
            ))
        }
    };
    // Shape problems are reported by the layer builder; here only the width is needed.
    match store_shape(store, &tensor) {
        Some(shape) if shape.len() >= 2 => Ok(shape[1]),
        _ => Err(err(format!(
            "`input_size` is not given and tensor `{tensor}` (which would tell it) is missing or malformed in {}",
            store.path.display()
        ))),
    }
}

fn store_shape(store: &WeightStore, name: &str) -> Option<Vec<usize>> {
    store.peek(name).map(|t| t.shape.clone())
}

fn build_layer(lc: &LayerConfig, width: usize, store: &mut WeightStore) -> Result<Layer> {
    match &lc.kind {
        LayerKindConfig::Conv1d {
            stride,
            dilation,
            padding,
        } => {
            let (shape, w) = take_tensor(
                store,
                lc,
                "weight",
                &[None, Some(width), None],
                &format!("[out_channels, in_channels = {width} from the previous layer, kernel]"),
            )?;
            let bias = take_bias(store, lc, "bias", shape[0])?;
            Ok(Layer::Conv(Conv1d::new(
                &w,
                [shape[0], shape[1], shape[2]],
                bias,
                *stride,
                *dilation,
                *padding,
            )))
        }
        LayerKindConfig::Pool { max, kernel, stride } => Ok(Layer::Pool(Pool1d {
            max: *max,
            kernel: *kernel,
            stride: *stride,
            channels: width,
        })),
        LayerKindConfig::Linear => {
            let (shape, w) = take_tensor(
                store,
                lc,
                "weight",
                &[None, Some(width)],
                &format!("[out_features, in_features = {width} from the previous layer]"),
            )?;
            let bias = take_bias(store, lc, "bias", shape[0])?;
            Ok(Layer::Linear(Linear::new(&w, shape[0], shape[1], bias)))
        }
        LayerKindConfig::Activation(kind) => Ok(Layer::Activation(*kind)),
        LayerKindConfig::Recurrent {
            cell,
            hidden_size,
            num_layers,
            bidirectional,
        } => build_recurrent(lc, *cell, width, *hidden_size, *num_layers, *bidirectional, store),
    }
}

#[allow(clippy::too_many_arguments)]
fn build_recurrent(
    lc: &LayerConfig,
    cell: CellKind,
    width: usize,
    hidden_size: Option<usize>,
    num_layers: Option<usize>,
    bidirectional: Option<bool>,
    store: &mut WeightStore,
) -> Result<Layer> {
    let g = cell.gates();
    let gates_doc = match cell {
        CellKind::Rnn(_) => "hidden_size rows",
        CellKind::Lstm => "4*hidden_size rows, gates i, f, g, o",
        CellKind::Gru => "3*hidden_size rows, gates r, z, n",
    };
    let first = lc.tensor("weight_ih_l0");
    let Some(shape) = store_shape(store, &first) else {
        let hint = available_hint(store, lc);
        return Err(tensor_err(
            store,
            lc,
            format!(
                "missing tensor `{first}` (expected shape [{}*hidden_size, {width}]){hint}",
                g
            ),
        ));
    };
    if shape.len() != 2 || shape[0] == 0 || shape[0] % g != 0 {
        return Err(tensor_err(
            store,
            lc,
            format!(
                "tensor `{first}` has shape {}, expected [{g}*hidden_size, {width}] ({gates_doc})",
                shape_str(&shape)
            ),
        ));
    }
    let hidden = shape[0] / g;
    let layers = (0..)
        .take_while(|k| store.contains(&lc.tensor(&format!("weight_ih_l{k}"))))
        .count();
    let bidir = store.contains(&lc.tensor("weight_ih_l0_reverse"));
    let proj = if cell == CellKind::Lstm {
        store_shape(store, &lc.tensor("weight_hr_l0")).map(|s| s.first().copied().unwrap_or(0))
    } else {
        None
    };
    let hout = proj.unwrap_or(hidden);
    let dirs = if bidir { 2 } else { 1 };
    let check = |what: &str, file: Option<usize>, found: usize| -> Result<()> {
        match file {
            Some(v) if v != found => Err(tensor_err(
                store,
                lc,
                format!("the model file says {what} = {v} but the weights have {found}"),
            )),
            _ => Ok(()),
        }
    };
    check("hidden_size", hidden_size, hidden)?;
    check("num_layers", num_layers, layers)?;
    if let Some(b) = bidirectional {
        if b != bidir {
            return Err(tensor_err(
                store,
                lc,
                format!(
                    "the model file says bidirectional = {b} but the weights {} `{}`",
                    if bidir { "have" } else { "lack" },
                    lc.tensor("weight_ih_l0_reverse")
                ),
            ));
        }
    }
    let mut owned = Vec::with_capacity(layers * dirs);
    for k in 0..layers {
        let in_w = if k == 0 { width } else { hout * dirs };
        for d in 0..dirs {
            let sfx = if d == 1 { "_reverse" } else { "" };
            let from = if k == 0 {
                "the previous layer's width".to_string()
            } else {
                format!(
                    "layer {} output{}",
                    k - 1,
                    if bidir { ", both directions" } else { "" }
                )
            };
            let (_, w_ih) = take_tensor(
                store,
                lc,
                &format!("weight_ih_l{k}{sfx}"),
                &[Some(g * hidden), Some(in_w)],
                &format!("{gates_doc}; input {in_w} = {from}"),
            )?;
            let (_, w_hh) = take_tensor(
                store,
                lc,
                &format!("weight_hh_l{k}{sfx}"),
                &[Some(g * hidden), Some(hout)],
                gates_doc,
            )?;
            let b_ih_name = lc.tensor(&format!("bias_ih_l{k}{sfx}"));
            let b_hh_name = lc.tensor(&format!("bias_hh_l{k}{sfx}"));
            let (has_ih, has_hh) = (store.contains(&b_ih_name), store.contains(&b_hh_name));
            if has_ih != has_hh {
                let (present, missing) = if has_ih {
                    (&b_ih_name, &b_hh_name)
                } else {
                    (&b_hh_name, &b_ih_name)
                };
                return Err(tensor_err(
                    store,
                    lc,
                    format!("tensor `{present}` is present but `{missing}` is missing (PyTorch has both or neither)"),
                ));
            }
            let b_ih = take_bias(store, lc, &format!("bias_ih_l{k}{sfx}"), g * hidden)?;
            let b_hh = take_bias(store, lc, &format!("bias_hh_l{k}{sfx}"), g * hidden)?;
            let w_hr = match proj {
                Some(p) => Some(
                    take_tensor(
                        store,
                        lc,
                        &format!("weight_hr_l{k}{sfx}"),
                        &[Some(p), Some(hidden)],
                        "[proj_size, hidden_size]",
                    )?
                    .1,
                ),
                None => None,
            };
            owned.push((w_ih, w_hh, b_ih, b_hh, w_hr));
        }
    }
    if proj == Some(0) || proj.is_some_and(|p| p >= hidden) {
        return Err(tensor_err(
            store,
            lc,
            format!(
                "proj_size {} must be between 1 and hidden_size - 1 = {}",
                hout,
                hidden - 1
            ),
        ));
    }
    let weights: Vec<CellWeights<'_>> = owned
        .iter()
        .map(|(w_ih, w_hh, b_ih, b_hh, w_hr)| CellWeights {
            w_ih,
            w_hh,
            b_ih: b_ih.as_deref(),
            b_hh: b_hh.as_deref(),
            w_hr: w_hr.as_deref(),
        })
        .collect();
    Ok(Layer::Recurrent(Recurrent::new(
        cell, width, hidden, proj, layers, bidir, &weights,
    )))
}
