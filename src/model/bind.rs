//! Binding weights to layers. A layer's sizes are read from its weights (the model file's
//! stated sizes are checked against them); then every tensor that [`Shape::tensors`] names
//! is taken with its exact shape, so a missing, misshapen or leftover tensor is reported
//! with the file, the layer and the tensor.

use super::config::{CellKind, LayerConfig, LayerKindConfig, ModelConfig, Precision};
use super::dense::Linear;
use super::recurrent::{CellWeights, Recurrent};
use super::tensors::{gates_doc, Shape, TensorSpec};
use super::weights::{shape_str, WeightStore};
use super::window::{Conv1d, Pool1d};
use super::Layer;
use crate::error::{Error, Result};

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

/// Takes the tensor `t` describes, checking its shape (inferred dimensions only by rank).
fn take(store: &mut WeightStore, lc: &LayerConfig, t: &TensorSpec) -> Result<Vec<f32>> {
    let want = t
        .shape
        .iter()
        .zip(&t.inferred)
        .map(|(d, &i)| if i { "?".to_string() } else { d.to_string() })
        .collect::<Vec<_>>()
        .join(", ");
    let Some(found) = store.take(&t.name) else {
        let hint = available_hint(store, lc);
        return Err(tensor_err(
            store,
            lc,
            format!(
                "missing tensor `{}` (expected shape [{want}], {}){hint}",
                t.name, t.what
            ),
        ));
    };
    let ok = found.shape.len() == t.shape.len()
        && found
            .shape
            .iter()
            .zip(&t.shape)
            .zip(&t.inferred)
            .all(|((f, e), &i)| i || f == e);
    if !ok || found.shape.contains(&0) {
        let shape = shape_str(&found.shape);
        return Err(tensor_err(
            store,
            lc,
            format!(
                "tensor `{}` has shape {shape}, expected [{want}] ({})",
                t.name, t.what
            ),
        ));
    }
    Ok(found.data.clone())
}

/// Takes every tensor of a layer, in `state_dict()` order.
fn take_all(store: &mut WeightStore, lc: &LayerConfig, shape: &Shape) -> Result<Vec<Vec<f32>>> {
    shape.tensors(lc).iter().map(|t| take(store, lc, t)).collect()
}

/// A conv or linear layer's `weight` and optional `bias`.
fn weight_and_bias(
    store: &mut WeightStore,
    lc: &LayerConfig,
    shape: Shape,
) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    let mut t = take_all(store, lc, &shape)?.into_iter();
    Ok((t.next().expect("weight first"), t.next()))
}

/// Dimensions a present tensor of the expected rank has (to read sizes from).
fn peek_dims(store: &WeightStore, name: &str, rank: usize) -> Option<Vec<usize>> {
    store
        .peek(name)
        .map(|t| t.shape.clone())
        .filter(|s| s.len() == rank)
}

/// The model's input width when the file does not state it: the first layer's input.
pub(super) fn infer_input_size(config: &ModelConfig, store: &WeightStore) -> Result<usize> {
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
    match store.peek(&tensor).map(|t| &t.shape) {
        Some(shape) if shape.len() >= 2 => Ok(shape[1]),
        _ => Err(err(format!(
            "`input_size` is not given and tensor `{tensor}` (which would tell it) is missing or malformed in {}",
            store.path.display()
        ))),
    }
}

/// Builds the layer `lc` over an input of `width`, taking its tensors from `store`.
pub(super) fn build_layer(
    lc: &LayerConfig,
    width: usize,
    precision: Precision,
    store: &mut WeightStore,
) -> Result<Layer> {
    let has = |store: &WeightStore, s: &str| store.contains(&lc.tensor(s));
    let layer = match &lc.kind {
        LayerKindConfig::Conv1d {
            stride,
            dilation,
            padding,
        } => {
            let (out_ch, kernel) = peek_dims(store, &lc.tensor("weight"), 3).map_or((0, 0), |s| (s[0], s[2]));
            let bias = has(store, "bias");
            let (w, b) = weight_and_bias(
                store,
                lc,
                Shape::Conv {
                    in_ch: width,
                    out_ch,
                    kernel,
                    bias,
                },
            )?;
            Layer::Conv(Conv1d::new(
                &w,
                [out_ch, width, kernel],
                b,
                *stride,
                *dilation,
                *padding,
            ))
        }
        LayerKindConfig::Pool { max, kernel, stride } => Layer::Pool(Pool1d {
            max: *max,
            kernel: *kernel,
            stride: *stride,
            channels: width,
        }),
        LayerKindConfig::Linear => {
            let out = peek_dims(store, &lc.tensor("weight"), 2).map_or(0, |s| s[0]);
            let bias = has(store, "bias");
            let (w, b) = weight_and_bias(
                store,
                lc,
                Shape::Linear {
                    inp: width,
                    out,
                    bias,
                },
            )?;
            Layer::Linear(Linear::new(&w, out, width, b))
        }
        LayerKindConfig::Activation(kind) => Layer::Activation(*kind),
        LayerKindConfig::Recurrent {
            cell,
            hidden_size,
            num_layers,
            bidirectional,
            linear_before_reset,
            reverse,
        } => build_recurrent(
            lc,
            *cell,
            width,
            [*hidden_size, *num_layers],
            *bidirectional,
            [*linear_before_reset, *reverse],
            precision,
            store,
        )?,
    };
    check_sizes(lc, &layer, store)?;
    Ok(layer)
}

/// Reads a recurrent stack's sizes from its tensors (hidden from `weight_ih_l0`, layers and
/// directions from which tensors exist, the projection from `weight_hr_l0`), checks what
/// the model file states, then takes every tensor.
#[allow(clippy::too_many_arguments)]
fn build_recurrent(
    lc: &LayerConfig,
    cell: CellKind,
    width: usize,
    [hidden_size, num_layers]: [Option<usize>; 2],
    bidirectional: Option<bool>,
    [linear_before_reset, reverse]: [bool; 2],
    precision: Precision,
    store: &mut WeightStore,
) -> Result<Layer> {
    let g = cell.gates();
    let first = lc.tensor("weight_ih_l0");
    let Some(shape) = store.peek(&first).map(|t| t.shape.clone()) else {
        let hint = available_hint(store, lc);
        return Err(tensor_err(
            store,
            lc,
            format!("missing tensor `{first}` (expected shape [{g}*hidden_size, {width}]){hint}"),
        ));
    };
    if shape.len() != 2 || shape[0] == 0 || shape[0] % g != 0 {
        return Err(tensor_err(
            store,
            lc,
            format!(
                "tensor `{first}` has shape {}, expected [{g}*hidden_size, {width}] ({})",
                shape_str(&shape),
                gates_doc(cell)
            ),
        ));
    }
    let hidden = shape[0] / g;
    let layers = (0..)
        .take_while(|k| store.contains(&lc.tensor(&format!("weight_ih_l{k}"))))
        .count();
    let bidir = store.contains(&lc.tensor("weight_ih_l0_reverse"));
    let proj = match cell {
        CellKind::Lstm => peek_dims(store, &lc.tensor("weight_hr_l0"), 2).map(|s| s[0]),
        _ => None,
    };
    let said = |what: &str, file: Option<usize>, found: usize| match file {
        Some(v) if v != found => Err(tensor_err(
            store,
            lc,
            format!("the model file says {what} = {v} but the weights have {found}"),
        )),
        _ => Ok(()),
    };
    said("hidden_size", hidden_size, hidden)?;
    said("num_layers", num_layers, layers)?;
    if reverse && bidir {
        return Err(Error::ModelConfig {
            path: store.path.clone(),
            msg: format!(
                "layer {}: `reverse = true`, but the weights have `{}` tensors (a bidirectional layer)",
                lc.label(),
                lc.tensor("weight_ih_l0_reverse")
            ),
        });
    }
    if let Some(b) = bidirectional.filter(|&b| b != bidir) {
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
    let dirs = if bidir { 2 } else { 1 };
    for k in 0..layers {
        for sfx in ["", "_reverse"].into_iter().take(dirs) {
            let ih = lc.tensor(&format!("bias_ih_l{k}{sfx}"));
            let hh = lc.tensor(&format!("bias_hh_l{k}{sfx}"));
            if store.contains(&ih) != store.contains(&hh) {
                let (present, missing) = if store.contains(&ih) {
                    (&ih, &hh)
                } else {
                    (&hh, &ih)
                };
                return Err(tensor_err(
                    store,
                    lc,
                    format!("tensor `{present}` is present but `{missing}` is missing (PyTorch has both or neither)"),
                ));
            }
        }
    }
    if let Some(p) = proj.filter(|&p| p == 0 || p >= hidden) {
        return Err(tensor_err(
            store,
            lc,
            format!(
                "proj_size {p} must be between 1 and hidden_size - 1 = {}",
                hidden - 1
            ),
        ));
    }
    let bias = store.contains(&lc.tensor("bias_ih_l0"));
    let tensors = take_all(
        store,
        lc,
        &Shape::Recurrent {
            cell,
            input: width,
            hidden,
            layers,
            bidirectional: bidir,
            proj,
            bias,
        },
    )?;
    // In state_dict order, per layer and direction: w_ih, w_hh, [b_ih, b_hh], [w_hr].
    let per_cell = 2 + 2 * bias as usize + proj.is_some() as usize;
    let weights: Vec<CellWeights<'_>> = tensors
        .chunks(per_cell)
        .map(|t| CellWeights {
            w_ih: &t[0],
            w_hh: &t[1],
            b_ih: bias.then(|| &t[2][..]),
            b_hh: bias.then(|| &t[3][..]),
            w_hr: proj.map(|_| &t[per_cell - 1][..]),
        })
        .collect();
    Ok(Layer::Recurrent(Recurrent::new(
        cell,
        width,
        hidden,
        proj,
        layers,
        bidir,
        precision,
        &weights,
        linear_before_reset,
        reverse,
    )))
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
