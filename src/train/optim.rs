//! Optimizers and gradient clipping with PyTorch's exact update rules (`torch.optim.Adam`,
//! `torch.optim.SGD`, `nn.utils.clip_grad_norm_`), over the flat parameter vector.

/// Which optimizer, with its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerKind {
    /// `torch.optim.Adam` (L2 `weight_decay` as in Adam, not AdamW; no amsgrad).
    Adam {
        /// Decay of the first-moment (mean) estimate, PyTorch's `betas[0]`.
        beta1: f64,
        /// Decay of the second-moment (uncentered variance) estimate, `betas[1]`.
        beta2: f64,
        /// Added to the denominator `sqrt(v_hat)` for numerical stability.
        eps: f64,
    },
    /// `torch.optim.SGD` (no dampening, no Nesterov).
    Sgd {
        /// Momentum factor; 0 = plain SGD.
        momentum: f64,
    },
}

/// Optimizer state for one parameter vector.
#[derive(Debug, Clone)]
pub struct Optimizer {
    /// The update rule and its hyper-parameters.
    pub kind: OptimizerKind,
    /// Learning rate.
    pub lr: f64,
    /// L2 penalty added to the gradient (`weight_decay` in torch.optim).
    pub weight_decay: f64,
    m: Vec<f64>,
    v: Vec<f64>,
    steps: u64,
}

impl Optimizer {
    /// Fresh state (zero moments or momentum buffer, no steps) for `n` parameters.
    pub fn new(kind: OptimizerKind, lr: f64, weight_decay: f64, n: usize) -> Optimizer {
        Optimizer {
            kind,
            lr,
            weight_decay,
            m: vec![0.0; n],
            v: match kind {
                OptimizerKind::Adam { .. } => vec![0.0; n],
                OptimizerKind::Sgd { .. } => Vec::new(),
            },
            steps: 0,
        }
    }

    /// One update of `params` by `grads` (which it may modify).
    pub fn step(&mut self, params: &mut [f64], grads: &mut [f64]) {
        self.steps += 1;
        if self.weight_decay != 0.0 {
            for (g, p) in grads.iter_mut().zip(params.iter()) {
                *g += self.weight_decay * p;
            }
        }
        match self.kind {
            OptimizerKind::Adam { beta1, beta2, eps } => {
                let bc1 = 1.0 - beta1.powi(self.steps as i32);
                let bc2 = 1.0 - beta2.powi(self.steps as i32);
                let step = self.lr / bc1;
                let bc2_sqrt = bc2.sqrt();
                for (((p, g), m), v) in params
                    .iter_mut()
                    .zip(grads.iter())
                    .zip(&mut self.m)
                    .zip(&mut self.v)
                {
                    *m = beta1 * *m + (1.0 - beta1) * g;
                    *v = beta2 * *v + (1.0 - beta2) * g * g;
                    *p -= step * *m / (v.sqrt() / bc2_sqrt + eps);
                }
            }
            OptimizerKind::Sgd { momentum } => {
                for ((p, g), buf) in params.iter_mut().zip(grads.iter()).zip(&mut self.m) {
                    let d = if momentum != 0.0 {
                        // torch: the first step's buffer is the gradient itself.
                        *buf = if self.steps == 1 { *g } else { momentum * *buf + g };
                        *buf
                    } else {
                        *g
                    };
                    *p -= self.lr * d;
                }
            }
        }
    }
}

/// Global L2 norm of `grads`; if above `max_norm`, scales them to it as
/// `clip_grad_norm_` does (`max_norm / (norm + 1e-6)`). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [f64], max_norm: Option<f64>) -> f64 {
    let norm = grads.iter().map(|g| g * g).sum::<f64>().sqrt();
    if let Some(max) = max_norm {
        let coef = max / (norm + 1e-6);
        if coef < 1.0 {
            grads.iter_mut().for_each(|g| *g *= coef);
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    //! The update rules are checked against torch.optim in tests/train_pytorch.rs.
    use super::*;

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut g = vec![3.0, 4.0];
        let n = clip_grad_norm(&mut g, Some(1.0));
        assert_eq!(n, 5.0);
        let after = (g[0] * g[0] + g[1] * g[1]).sqrt();
        assert!((after - 1.0).abs() < 1e-6);
        let mut g2 = vec![0.3, 0.4];
        clip_grad_norm(&mut g2, Some(1.0));
        assert_eq!(g2, vec![0.3, 0.4]);
    }
}
