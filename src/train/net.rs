//! The trainable form of a model: the same layers as [`Model`], read from the same model file
//! and weights, run over padded f64 batches with a tape, and differentiated by hand.
//!
//! The net's structure (layer kinds, sizes, windows, tensor names) is taken from a loaded
//! [`Model`], so everything the loader validates (shapes, names, options) holds here too, and
//! a trained net saved with [`ParamLayout::save`] loads back as the same [`Model`].

use super::dense::{activate, activate_backward, LinearSpec};
use super::params::{ParamId, ParamLayout, Params};
use super::recurrent::{CellSpec, HiddenGrads, RecCarry, RecSpec, RecTape};
use super::seq::Seq;
use super::window::{advance_carry, gather, ConvSpec, Gathered, PoolSpec, WindowCarry};
use crate::error::{Error, Result};
use crate::model::config::ActivationKind;
use crate::model::weights::WeightStore;
use crate::model::{Layer, Model};

/// One trainable layer.
#[derive(Debug, Clone)]
pub enum NetLayer {
    /// `conv1d`.
    Conv(ConvSpec),
    /// `maxpool1d` / `avgpool1d`.
    Pool(PoolSpec),
    /// `linear` (`nn.Linear`).
    Linear(LinearSpec),
    /// An activation: element-wise, or row-wise for softmax.
    Act(ActivationKind),
    /// An `rnn` / `lstm` / `gru` stack.
    Rec(RecSpec),
}

/// The trainable model: layers plus the layout of their parameters.
#[derive(Debug, Clone)]
pub struct Net {
    /// Features per input step.
    pub input_size: usize,
    /// The layers, in model order.
    pub layers: Vec<NetLayer>,
    /// Labels (`#2 (lstm "lstm")`) for reports.
    pub labels: Vec<String>,
    /// `widths[i]` = input width of layer `i`; last = output width.
    pub widths: Vec<usize>,
    /// Names, shapes and offsets of every layer's tensors in the flat value vector.
    pub layout: ParamLayout,
    /// Why the model cannot carry state between chunks, if it cannot.
    pub non_causal: Option<String>,
}

/// Everything the forward pass keeps for the backward pass.
#[derive(Debug, Default)]
pub struct Tape {
    /// `xs[i]` is layer `i`'s input; the last entry is the output.
    pub xs: Vec<Seq>,
    aux: Vec<Aux>,
}

#[derive(Debug)]
enum Aux {
    None,
    Window(Gathered),
    Rec(RecTape),
}

/// State carried between truncated-BPTT chunks, per layer, for a fixed set of sequences.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerCarry {
    /// A stateless layer (linear, activation).
    None,
    /// A conv or pool layer's input history.
    Window(WindowCarry),
    /// A recurrent stack's hidden (and LSTM cell) states.
    Rec(RecCarry),
}

/// Per recurrent layer (by index in `Net::layers`), squared hidden-state gradient norms.
#[derive(Debug, Clone, Default)]
pub struct GradProbe {
    /// `(layer index, its squared norms)`, in backward order (last layer first).
    pub layers: Vec<(usize, HiddenGrads)>,
}

impl Tape {
    /// Layer `i`'s recurrent tape, if it is a recurrent stack.
    pub fn recurrent(&self, i: usize) -> Option<&RecTape> {
        match self.aux.get(i) {
            Some(Aux::Rec(r)) => Some(r),
            _ => None,
        }
    }
}

impl Net {
    /// Builds the trainable form of `model`, taking its parameter values from `store` (the
    /// tensors `model` was loaded from) as f64.
    pub fn from_model(model: &Model, store: &WeightStore) -> Result<(Net, Vec<f64>)> {
        let mut layout = ParamLayout::default();
        let mut layers = Vec::new();
        let mut labels = Vec::new();
        let mut widths = vec![model.input_size()];
        let mut non_causal = None;
        for (i, (lc, layer)) in model.layers().enumerate() {
            let width = model.width_at(i);
            if let Layer::Recurrent(r) = layer {
                if !r.linear_before_reset || r.reverse {
                    return Err(Error::Unsupported {
                        path: model.path().to_path_buf(),
                        msg: format!(
                            "layer {}: {} runs, but does not train yet",
                            lc.label(),
                            if r.reverse {
                                "a reverse recurrent layer"
                            } else {
                                "a GRU with linear_before_reset = false"
                            }
                        ),
                    });
                }
            }
            if non_causal.is_none() {
                non_causal = layer.non_causal().map(|w| format!("layer {}: {w}", lc.label()));
            }
            // The layer's tensors in state_dict order, laid out as parameters.
            let ids: Vec<ParamId> = layer
                .shape()
                .map(|sh| sh.tensors(lc))
                .unwrap_or_default()
                .into_iter()
                .map(|t| layout.add(t.name, t.shape))
                .collect();
            let nl = match layer {
                Layer::Conv(c) => NetLayer::Conv(ConvSpec {
                    win: c.window(),
                    in_ch: c.in_ch,
                    out_ch: c.out_ch,
                    weight: ids[0],
                    bias: ids.get(1).copied(),
                }),
                Layer::Pool(p) => NetLayer::Pool(PoolSpec {
                    win: p.window(),
                    max: p.max,
                    ch: width,
                }),
                Layer::Linear(l) => NetLayer::Linear(LinearSpec {
                    inp: l.in_features,
                    out: l.out_features,
                    weight: ids[0],
                    bias: ids.get(1).copied(),
                }),
                Layer::Activation(a) => NetLayer::Act(*a),
                Layer::Recurrent(r) => {
                    let dirs = if r.bidirectional { 2 } else { 1 };
                    let hout = r.proj.unwrap_or(r.hidden);
                    // Per layer and direction: w_ih, w_hh, [b_ih, b_hh], [w_hr].
                    let per_cell = 2 + 2 * r.has_bias as usize + r.proj.is_some() as usize;
                    let cells = ids
                        .chunks(per_cell)
                        .enumerate()
                        .map(|(c, id)| CellSpec {
                            in_w: if c / dirs == 0 { width } else { hout * dirs },
                            w_ih: id[0],
                            w_hh: id[1],
                            b_ih: r.has_bias.then(|| id[2]),
                            b_hh: r.has_bias.then(|| id[3]),
                            w_hr: r.proj.map(|_| id[per_cell - 1]),
                        })
                        .collect();
                    NetLayer::Rec(RecSpec {
                        cell: r.cell,
                        hidden: r.hidden,
                        hout,
                        layers: r.num_layers,
                        dirs,
                        cells,
                    })
                }
            };
            layers.push(nl);
            labels.push(lc.label());
            widths.push(model.width_at(i + 1));
        }
        let mut values = vec![0.0; layout.total];
        for (id, e) in layout.entries.iter().enumerate() {
            let name = &e.name;
            let t = store.peek(name).ok_or_else(|| Error::WeightsFile {
                path: store.path.clone(),
                msg: format!("tensor `{name}` disappeared while building the trainable model"),
            })?;
            for (v, &s) in values[layout.range(id)].iter_mut().zip(&t.data) {
                *v = s as f64;
            }
        }
        Ok((
            Net {
                input_size: model.input_size(),
                layers,
                labels,
                widths,
                layout,
                non_causal,
            },
            values,
        ))
    }

    /// Width of the last layer's output: the model's outputs.
    pub fn output_size(&self) -> usize {
        *self.widths.last().unwrap_or(&0)
    }

    /// A zero carry for `b` sequences (fresh state, no history).
    pub fn zero_carry(&self, b: usize) -> Vec<LayerCarry> {
        self.layers
            .iter()
            .enumerate()
            .map(|(i, l)| match l {
                NetLayer::Conv(ConvSpec { win, .. }) | NetLayer::Pool(PoolSpec { win, .. }) => {
                    LayerCarry::Window(WindowCarry::new(b, win.back, self.widths[i]))
                }
                NetLayer::Rec(r) => LayerCarry::Rec(r.zero_carry(b)),
                _ => LayerCarry::None,
            })
            .collect()
    }

    /// Runs layers `0..upto` over `x`. With `carry` (causal nets only), starts from its
    /// states and histories and leaves the ones after this batch there.
    pub fn forward(&self, values: &[f64], x: Seq, upto: usize, mut carry: Option<&mut [LayerCarry]>) -> Tape {
        let p = Params {
            layout: &self.layout,
            values,
        };
        let mut tape = Tape {
            xs: Vec::with_capacity(upto + 1),
            aux: Vec::with_capacity(upto),
        };
        tape.xs.push(x);
        for i in 0..upto {
            let x = tape.xs.last().expect("input pushed");
            let lc = carry.as_deref_mut().map(|c| &mut c[i]);
            let (y, aux) = match &self.layers[i] {
                NetLayer::Conv(c) => {
                    let g = gather(&c.win, x, window_carry(&lc));
                    let y = c.forward(p, &g);
                    (y, Aux::Window(g))
                }
                NetLayer::Pool(pl) => {
                    let g = gather(&pl.win, x, window_carry(&lc));
                    let y = pl.forward(&g);
                    (y, Aux::Window(g))
                }
                NetLayer::Linear(l) => (l.forward(p, x), Aux::None),
                NetLayer::Act(a) => (activate(*a, x), Aux::None),
                NetLayer::Rec(r) => {
                    let mut rt = RecTape::default();
                    let rc = match lc {
                        Some(LayerCarry::Rec(rc)) => Some(rc),
                        _ => None,
                    };
                    let y = r.forward(p, x, rc, &mut rt);
                    (y, Aux::Rec(rt))
                }
            };
            if let (
                Some(carry),
                NetLayer::Conv(ConvSpec { win, .. }) | NetLayer::Pool(PoolSpec { win, .. }),
            ) = (carry.as_deref_mut(), &self.layers[i])
            {
                if let LayerCarry::Window(wc) = &mut carry[i] {
                    advance_carry(win, x, wc);
                }
            }
            tape.aux.push(aux);
            tape.xs.push(y);
        }
        tape
    }

    /// Backpropagates `dy` (gradient of the loss w.r.t. the tape's output) through the
    /// layers on the tape, adding parameter gradients into `grads`; returns the gradient
    /// of the input.
    pub fn backward(
        &self,
        values: &[f64],
        tape: &Tape,
        dy: Seq,
        grads: &mut [f64],
        mut probe: Option<&mut GradProbe>,
    ) -> Seq {
        let p = Params {
            layout: &self.layout,
            values,
        };
        let mut d = dy;
        for i in (0..tape.aux.len()).rev() {
            d.zero_padding();
            let (x, y) = (&tape.xs[i], &tape.xs[i + 1]);
            d = match (&self.layers[i], &tape.aux[i]) {
                (NetLayer::Conv(c), Aux::Window(g)) => c.backward(p, g, x, &d, grads),
                (NetLayer::Pool(pl), Aux::Window(g)) => pl.backward(g, x, &d),
                (NetLayer::Linear(l), _) => l.backward(p, x, &d, grads),
                (NetLayer::Act(a), _) => activate_backward(*a, y, &d),
                (NetLayer::Rec(r), Aux::Rec(rt)) => {
                    let mut hg = HiddenGrads::default();
                    let dx = r.backward(p, rt, &d, grads, probe.is_some().then_some(&mut hg));
                    if let Some(pr) = probe.as_deref_mut() {
                        pr.layers.push((i, hg));
                    }
                    dx
                }
                _ => unreachable!("tape entries match their layers"),
            };
        }
        d.zero_padding();
        d
    }
}

fn window_carry<'a>(lc: &'a Option<&mut LayerCarry>) -> Option<&'a WindowCarry> {
    match lc {
        Some(LayerCarry::Window(w)) => Some(w),
        _ => None,
    }
}

/// Builds the inference model and its trainable twin from a parsed model file and tensors.
pub fn build(
    config: crate::model::config::ModelConfig,
    store: WeightStore,
) -> Result<(Model, Net, Vec<f64>)> {
    let model = Model::from_parts(config, store.clone())?;
    let (net, values) = Net::from_model(&model, &store)?;
    Ok((model, net, values))
}
