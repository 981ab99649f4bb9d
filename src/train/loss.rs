//! Losses, computed on the model's output rows against targets looked up by each row's tag
//! (the input step that completed it). All return the *sum* over counted terms and the
//! count, so that shards of a batch (threads, truncated-BPTT chunks) add up exactly to
//! PyTorch's `reduction="mean"` over the whole batch.

use super::seq::Seq;

/// Which loss, with PyTorch's definitions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    /// `nn.MSELoss`: mean over every finite target value.
    Mse,
    /// `nn.BCEWithLogitsLoss(pos_weight)`: one logit per row, label 0 or 1.
    BinaryLogits {
        /// Weight of the positive-label term, as PyTorch's `pos_weight` (1 = unweighted).
        pos_weight: f64,
    },
    /// `nn.CrossEntropyLoss`: one logit per class, label = class index.
    CrossEntropy,
}

/// Targets of one batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// Per input row (`t * b + i`, `w` values each; NaN = no target): forecast, regress, tag.
    Steps {
        /// Target values per row (the output width for MSE; 1 for tag labels).
        w: usize,
        /// `T*B x w`, row-major, by input row.
        data: Vec<f64>,
    },
    /// One label per sequence, scored on the sequence's last output row, only for the
    /// sequences whose end is in this batch (`ends[i]`): classify.
    Last {
        /// Class index of each sequence (NaN = unlabeled).
        labels: Vec<f64>,
        /// Whether sequence `i` ends within this batch (or truncated-BPTT chunk).
        ends: Vec<bool>,
    },
}

/// Sum of the loss terms, their count, and the gradient of the sum w.r.t. the output.
#[derive(Debug, Clone)]
pub struct LossValue {
    /// Sum of the loss terms; `sum / count` is PyTorch's `reduction="mean"`.
    pub sum: f64,
    /// Number of terms summed (rows or values with a finite target).
    pub count: f64,
    /// Gradient of `sum` w.r.t. the output, shaped like it; zero on rows not scored.
    pub grad: Seq,
    /// Correct predictions (classification losses).
    pub correct: usize,
    /// Predictions scored for accuracy (the denominator of `correct`).
    pub scored: usize,
}

impl Loss {
    /// Scores output `y` against `targets` on its valid rows: loss sum, count and gradient.
    pub fn eval(&self, y: &Seq, targets: &Targets) -> LossValue {
        let mut grads = y.like(y.w);
        let mut v = LossValue {
            sum: 0.0,
            count: 0.0,
            grad: Seq::default(),
            correct: 0,
            scored: 0,
        };
        for t in 0..y.t {
            for i in 0..y.b {
                if !y.valid(t, i) {
                    continue;
                }
                let r = t * y.b + i;
                let target: &[f64] = match targets {
                    Targets::Steps { w, data } => {
                        let src = y.tags[r] as usize * y.b + i;
                        &data[src * w..(src + 1) * w]
                    }
                    Targets::Last { labels, ends } => {
                        if !ends[i] || t + 1 != y.lens[i] {
                            continue;
                        }
                        std::slice::from_ref(&labels[i])
                    }
                };
                let out = &y.data[r * y.w..(r + 1) * y.w];
                let grad = &mut grads.data[r * y.w..(r + 1) * y.w];
                self.term(out, target, grad, &mut v);
            }
        }
        v.grad = grads;
        v
    }

    fn term(&self, out: &[f64], target: &[f64], grad: &mut [f64], v: &mut LossValue) {
        match *self {
            Loss::Mse => {
                for ((o, &tv), g) in out.iter().zip(target).zip(grad.iter_mut()) {
                    if tv.is_finite() {
                        let d = o - tv;
                        v.sum += d * d;
                        v.count += 1.0;
                        *g = 2.0 * d;
                    }
                }
            }
            Loss::BinaryLogits { pos_weight } => {
                let (x, y) = (out[0], target[0]);
                if !y.is_finite() {
                    return;
                }
                // pos_weight * y * softplus(-x) + (1 - y) * softplus(x), stably.
                let sp = |z: f64| z.max(0.0) + (-z.abs()).exp().ln_1p();
                v.sum += pos_weight * y * sp(-x) + (1.0 - y) * sp(x);
                v.count += 1.0;
                let s = super::linalg::sigmoid(x);
                grad[0] = -pos_weight * y * (1.0 - s) + (1.0 - y) * s;
                v.scored += 1;
                v.correct += usize::from((x > 0.0) == (y > 0.5));
            }
            Loss::CrossEntropy => {
                let label = target[0];
                if !label.is_finite() {
                    return;
                }
                let c = label as usize;
                // log-sum-exp once; softmax_k = exp(o_k - lse).
                let m = out.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + out.iter().map(|o| (o - m).exp()).sum::<f64>().ln();
                v.sum += lse - out[c];
                v.count += 1.0;
                for (k, (g, o)) in grad.iter_mut().zip(out).enumerate() {
                    *g = (o - lse).exp() - if k == c { 1.0 } else { 0.0 };
                }
                let best = (0..out.len()).fold(0, |b, k| if out[k] > out[b] { k } else { b });
                v.scored += 1;
                v.correct += usize::from(best == c);
            }
        }
    }
}
