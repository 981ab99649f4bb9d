//! Stateless per-step layers: `linear` and the activations. They map every row of a packed
//! batch independently, so the whole batch (all steps of all keys) is one matrix product.

use super::config::ActivationKind;
use super::packed::Packed;
use crate::kernels;

/// `nn.Linear`: `y = x W^T + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `nn.Linear`'s `in_features`.
    pub in_features: usize,
    /// `nn.Linear`'s `out_features`.
    pub out_features: usize,
    /// `W^T`, `[in x out]` row-major.
    wt: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl Linear {
    /// Builds from PyTorch's `weight [out, in]` and optional `bias [out]`.
    pub fn new(weight: &[f32], out_features: usize, in_features: usize, bias: Option<Vec<f32>>) -> Linear {
        Linear {
            in_features,
            out_features,
            wt: transpose(weight, out_features, in_features),
            bias,
        }
    }

    /// Number of parameters.
    pub fn params(&self) -> usize {
        self.wt.len() + self.bias.as_ref().map_or(0, Vec::len)
    }

    /// Whether there is a bias (`bias=True`).
    pub fn has_bias(&self) -> bool {
        self.bias.is_some()
    }

    pub(crate) fn forward(&self, input: &Packed, out: &mut Packed) {
        out.layout.clone_from(&input.layout);
        out.reshape(self.out_features);
        let rows = input.layout.rows();
        kernels::gemm(
            &mut out.data,
            &input.data,
            &self.wt,
            rows,
            self.in_features,
            self.out_features,
        );
        if let Some(b) = &self.bias {
            kernels::add_bias(&mut out.data, b);
        }
    }
}

/// Applies an activation in place over every row.
pub(crate) fn activate(kind: ActivationKind, data: &mut Packed) {
    match kind {
        ActivationKind::Relu => kernels::relu_inplace(&mut data.data),
        ActivationKind::Tanh => kernels::tanh_inplace(&mut data.data),
        ActivationKind::Sigmoid => kernels::sigmoid_inplace(&mut data.data),
        ActivationKind::Identity => {}
        ActivationKind::Softmax => {
            if data.width > 0 {
                for row in data.data.chunks_exact_mut(data.width) {
                    kernels::softmax_inplace(row);
                }
            }
        }
    }
}

/// `[rows x cols]` row-major -> `[cols x rows]` row-major.
pub(crate) fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}
