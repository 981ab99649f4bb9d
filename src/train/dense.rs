//! Training forms of `linear` and the activations: row-wise maps, so a whole padded batch
//! is one matrix product forward and two backward.

use super::linalg::{add_rows, mm, sigmoid, sum_rows, Op};
use super::params::{ParamId, Params};
use super::seq::Seq;
use crate::model::config::ActivationKind;

/// `nn.Linear`: `y = x W^T + b`, `W` is `[out, in]`.
#[derive(Debug, Clone)]
pub struct LinearSpec {
    /// `in_features`.
    pub inp: usize,
    /// `out_features`.
    pub out: usize,
    /// `weight`, `[out, in]`.
    pub weight: ParamId,
    /// `bias`, `[out]`; `None` for `bias=False`.
    pub bias: Option<ParamId>,
}

impl LinearSpec {
    /// `y = x W^T + b` on every row; padding rows stay zero.
    pub fn forward(&self, p: Params<'_>, x: &Seq) -> Seq {
        let mut y = x.like(self.out);
        mm(
            &mut y.data,
            false,
            &x.data,
            Op::N,
            p.get(self.weight),
            Op::T,
            x.rows(),
            self.inp,
            self.out,
        );
        if let Some(b) = p.opt(self.bias) {
            add_rows(&mut y.data, b);
        }
        y.zero_padding();
        y
    }

    /// Adds `dW = dy^T x` and `db` into `grads`; returns the input gradient `dy W`.
    pub fn backward(&self, p: Params<'_>, x: &Seq, dy: &Seq, grads: &mut [f64]) -> Seq {
        let rows = x.rows();
        mm(
            &mut grads[p.layout.range(self.weight)],
            true,
            &dy.data,
            Op::T,
            &x.data,
            Op::N,
            self.out,
            rows,
            self.inp,
        );
        if let Some(b) = self.bias {
            sum_rows(&mut grads[p.layout.range(b)], &dy.data);
        }
        let mut dx = x.like(self.inp);
        mm(
            &mut dx.data,
            false,
            &dy.data,
            Op::N,
            p.get(self.weight),
            Op::N,
            rows,
            self.out,
            self.inp,
        );
        dx
    }
}

/// Applies an activation to every row (softmax over each row); padding rows stay zero.
pub fn activate(kind: ActivationKind, x: &Seq) -> Seq {
    let mut y = x.clone();
    match kind {
        ActivationKind::Relu => y.data.iter_mut().for_each(|v| *v = v.max(0.0)),
        ActivationKind::Tanh => y.data.iter_mut().for_each(|v| *v = v.tanh()),
        ActivationKind::Sigmoid => y.data.iter_mut().for_each(|v| *v = sigmoid(*v)),
        ActivationKind::Identity => {}
        ActivationKind::Softmax => {
            if y.w > 0 {
                y.data.chunks_exact_mut(x.w).for_each(softmax);
            }
        }
    }
    y.zero_padding();
    y
}

/// Gradient of the input given the activation's output `y`.
pub fn activate_backward(kind: ActivationKind, y: &Seq, dy: &Seq) -> Seq {
    let mut dx = dy.clone();
    let pairs = dx.data.iter_mut().zip(&y.data);
    match kind {
        ActivationKind::Relu => pairs.for_each(|(d, &v)| {
            if v <= 0.0 {
                *d = 0.0
            }
        }),
        ActivationKind::Tanh => pairs.for_each(|(d, &v)| *d *= 1.0 - v * v),
        ActivationKind::Sigmoid => pairs.for_each(|(d, &v)| *d *= v * (1.0 - v)),
        ActivationKind::Identity => {}
        ActivationKind::Softmax => {
            let w = y.w.max(1);
            for (d, yr) in dx.data.chunks_exact_mut(w).zip(y.data.chunks_exact(w)) {
                let dot: f64 = d.iter().zip(yr).map(|(a, b)| a * b).sum();
                d.iter_mut().zip(yr).for_each(|(a, &b)| *a = b * (*a - dot));
            }
        }
    }
    dx
}

/// Softmax of one row in place, with the max subtracted first for stability.
pub fn softmax(row: &mut [f64]) {
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut s = 0.0;
    for v in row.iter_mut() {
        *v = (*v - m).exp();
        s += *v;
    }
    row.iter_mut().for_each(|v| *v /= s);
}
