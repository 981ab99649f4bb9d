//! Fresh weights for a model file that has no weights yet, drawn the way PyTorch's module
//! constructors draw them: `conv1d` and `linear` uniform in `±1/sqrt(fan_in)` (weight and
//! bias, from `kaiming_uniform_(a=sqrt(5))`), `rnn`/`lstm`/`gru` every tensor uniform in
//! `±1/sqrt(hidden_size)`. Sizes come from the model file (`out_channels`, `kernel_size`,
//! `out_features`, `hidden_size`, `num_layers`, `bidirectional`, `proj_size`, `bias`).

use crate::error::{Error, Result};
use crate::model::config::{CellKind, LayerConfig, LayerKindConfig, ModelConfig};
use crate::model::weights::Tensor;
use crate::vocab::SplitMix;

/// The tensors of a freshly initialized model, in PyTorch's state_dict order.
pub fn init_tensors(config: &ModelConfig, input_size: usize, seed: u64) -> Result<Vec<(String, Tensor)>> {
    let mut rng = SplitMix::new(seed);
    let mut out = Vec::new();
    let mut width = input_size;
    let mut tensor = |out: &mut Vec<(String, Tensor)>, name: String, shape: Vec<usize>, bound: f64| {
        let n = shape.iter().product();
        let data = (0..n).map(|_| rng.uniform(bound as f32)).collect();
        out.push((name, Tensor { shape, data }));
    };
    for lc in &config.layers {
        let need = |what: &str| -> Error {
            Error::ModelConfig {
                path: config.path.clone(),
                msg: format!(
                    "layer {}: to initialize a new model (its weights file does not exist yet), the \
                     layer must state `{what}`",
                    lc.label()
                ),
            }
        };
        let bias = lc.sizes.bias.unwrap_or(true);
        match &lc.kind {
            LayerKindConfig::Conv1d { .. } => {
                let out_ch = lc.sizes.out.ok_or_else(|| need("out_channels"))?;
                let k = lc.sizes.kernel.ok_or_else(|| need("kernel_size"))?;
                let bound = 1.0 / ((width * k) as f64).sqrt();
                tensor(&mut out, lc.tensor("weight"), vec![out_ch, width, k], bound);
                if bias {
                    tensor(&mut out, lc.tensor("bias"), vec![out_ch], bound);
                }
                width = out_ch;
            }
            LayerKindConfig::Linear => {
                let o = lc.sizes.out.ok_or_else(|| need("out_features"))?;
                let bound = 1.0 / (width as f64).sqrt();
                tensor(&mut out, lc.tensor("weight"), vec![o, width], bound);
                if bias {
                    tensor(&mut out, lc.tensor("bias"), vec![o], bound);
                }
                width = o;
            }
            LayerKindConfig::Recurrent {
                cell,
                hidden_size,
                num_layers,
                bidirectional,
            } => {
                let h = hidden_size.ok_or_else(|| need("hidden_size"))?;
                width = init_recurrent(
                    &config.path,
                    &mut out,
                    &mut tensor,
                    lc,
                    *cell,
                    width,
                    h,
                    num_layers.unwrap_or(1),
                    bidirectional.unwrap_or(false),
                    bias,
                )?;
            }
            LayerKindConfig::Pool { .. } | LayerKindConfig::Activation(_) => {}
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn init_recurrent(
    path: &std::path::Path,
    out: &mut Vec<(String, Tensor)>,
    tensor: &mut impl FnMut(&mut Vec<(String, Tensor)>, String, Vec<usize>, f64),
    lc: &LayerConfig,
    cell: CellKind,
    width: usize,
    h: usize,
    layers: usize,
    bidir: bool,
    bias: bool,
) -> Result<usize> {
    let proj = lc.sizes.proj;
    if let Some(p) = proj {
        if cell != CellKind::Lstm || p >= h {
            return Err(Error::ModelConfig {
                path: path.to_path_buf(),
                msg: format!(
                    "layer {}: proj_size = {p} needs an lstm with hidden_size > proj_size",
                    lc.label()
                ),
            });
        }
    }
    let hout = proj.unwrap_or(h);
    let dirs = if bidir { 2 } else { 1 };
    let g = cell.gates();
    let bound = 1.0 / (h as f64).sqrt();
    for k in 0..layers {
        let in_w = if k == 0 { width } else { hout * dirs };
        for d in 0..dirs {
            let s = if d == 1 { "_reverse" } else { "" };
            tensor(
                out,
                lc.tensor(&format!("weight_ih_l{k}{s}")),
                vec![g * h, in_w],
                bound,
            );
            tensor(
                out,
                lc.tensor(&format!("weight_hh_l{k}{s}")),
                vec![g * h, hout],
                bound,
            );
            if bias {
                tensor(out, lc.tensor(&format!("bias_ih_l{k}{s}")), vec![g * h], bound);
                tensor(out, lc.tensor(&format!("bias_hh_l{k}{s}")), vec![g * h], bound);
            }
            if proj.is_some() {
                tensor(
                    out,
                    lc.tensor(&format!("weight_hr_l{k}{s}")),
                    vec![hout, h],
                    bound,
                );
            }
        }
    }
    Ok(hout * dirs)
}
