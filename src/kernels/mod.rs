//! Numeric kernels shared by every layer: one GEMM entry point and activation functions
//! written so that the compiler vectorizes them (no libm calls in the loops).
//!
//! Why not `f32::exp`/`f32::tanh`: they are scalar libm calls, which keeps the gate
//! nonlinearities of an LSTM (5 transcendental functions per hidden unit and step) from being
//! vectorized. The polynomial `exp` below is accurate to about 2 ulp over the whole range,
//! far inside the 1e-4 tolerance against PyTorch.

pub mod fused;
mod simd;
pub mod transpose;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

/// Compiles a kernel three times (AVX-512, AVX2+FMA, baseline) and picks one at run time.
///
/// The crate is built for baseline x86-64 (SSE2) so the binary runs anywhere; without this
/// the elementwise loops would be 4 lanes wide on machines that have 16.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn v512($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v256($($arg: $ty),*) { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the CPU supports every feature v512 was compiled for.
                    return unsafe { v512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above, for AVX2 and FMA.
                    return unsafe { v256($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// `out[m x n] = a[m x k] * b[k x n]`, all row-major and contiguous.
///
/// `b` is a weight matrix pre-transposed at load time, so the hot loop never re-arranges it.
/// Always faer, always `Accum::Replace`: faer then computes each output row the same way
/// whatever `m` is (checked by `examples/gemm_invariance.rs`; `Accum::Add` takes another
/// path at `m = 1`), so a key's results do not depend on which other keys share its batch,
/// and a pipeline's output is bit-identical for any worker count.
pub fn gemm(out: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    debug_assert_eq!(out.len(), m * n);
    debug_assert_eq!(a.len(), m * k);
    debug_assert_eq!(b.len(), k * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    let dst = MatMut::from_row_major_slice_mut(out, m, n);
    let lhs = MatRef::from_row_major_slice(a, m, k);
    let rhs = MatRef::from_row_major_slice(b, k, n);
    matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, Par::Seq);
}

/// Adds `bias` to every row of `rows` (row length = `bias.len()`).
pub fn add_bias(rows: &mut [f32], bias: &[f32]) {
    if bias.is_empty() {
        return;
    }
    for row in rows.chunks_exact_mut(bias.len()) {
        for (r, &b) in row.iter_mut().zip(bias) {
            *r += b;
        }
    }
}

/// `e^x` for f32 with Cephes' range reduction and degree-6 polynomial; branch-free so that
/// loops over slices vectorize.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.336_55, 88.376_26);
    // Round to nearest by adding 1.5 * 2^23: SSE2 has no `roundps`, and `f32::round` would be
    // a libm call per element that stops the loop from vectorizing.
    const MAGIC: f32 = 12_582_912.0;
    let shifted = x * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n from the integer sitting in the low mantissa bits of `shifted` (no float->int
    // conversion, which Rust saturates and which vectorizes poorly); n is in [-126, 127].
    let n_int = shifted.to_bits().wrapping_sub(MAGIC.to_bits());
    let scale = f32::from_bits(n_int.wrapping_add(127) << 23);
    y * scale
}

/// Logistic sigmoid `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Hyperbolic tangent via `1 - 2 / (e^{2|x|} + 1)`, sign restored; absolute error ~1e-7.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 - 2.0 / (exp(2.0 * a) + 1.0);
    t.copysign(x)
}

multiversion! {
    /// In-place sigmoid over a slice.
    pub fn sigmoid_inplace(xs: &mut [f32]) {
        for x in xs {
            *x = sigmoid(*x);
        }
    }
}

multiversion! {
    /// In-place tanh over a slice.
    pub fn tanh_inplace(xs: &mut [f32]) {
        for x in xs {
            *x = tanh(*x);
        }
    }
}

multiversion! {
    /// In-place ReLU over a slice.
    pub fn relu_inplace(xs: &mut [f32]) {
        for x in xs {
            *x = x.max(0.0);
        }
    }
}

multiversion! {
    /// LSTM cell update for a block of rows: `x` holds `W_ih x`, `hp` holds `W_hh h` and
    /// `bias` is `b_ih + b_hh`; gates `[i f g o]` per row. The bias is added here, in the
    /// pass that reads the products anyway, rather than in a pass of its own.
    pub fn lstm_gates(x: &[f32], hp: &[f32], bias: &[f32], c: &mut [f32], h: &mut [f32], hid: usize) {
        // Per-gate slices of length `hid`, so that the loop has no bounds checks and
        // vectorizes (indexing `x[hid + u]` kept it scalar: 6.8 ns per unit instead of 2.7).
        let (bi, bf, bg, bo) = (&bias[..hid], &bias[hid..2 * hid], &bias[2 * hid..3 * hid], &bias[3 * hid..4 * hid]);
        for (((x, hp), c), h) in x
            .chunks_exact(4 * hid)
            .zip(hp.chunks_exact(4 * hid))
            .zip(c.chunks_exact_mut(hid))
            .zip(h.chunks_exact_mut(hid))
        {
            let (xi, xf, xg, xo) = (&x[..hid], &x[hid..2 * hid], &x[2 * hid..3 * hid], &x[3 * hid..]);
            let (pi, pf, pg, po) = (&hp[..hid], &hp[hid..2 * hid], &hp[2 * hid..3 * hid], &hp[3 * hid..]);
            let (c, h) = (&mut c[..hid], &mut h[..hid]);
            for u in 0..hid {
                let i = sigmoid(xi[u] + bi[u] + pi[u]);
                let f = sigmoid(xf[u] + bf[u] + pf[u]);
                let g = tanh(xg[u] + bg[u] + pg[u]);
                let o = sigmoid(xo[u] + bo[u] + po[u]);
                let cn = f * c[u] + i * g;
                c[u] = cn;
                h[u] = o * tanh(cn);
            }
        }
    }
}

multiversion! {
    /// GRU cell update: `x` holds `W_i x`, `hp` holds `W_h h`, `bias` is `b_i (+ b_hr, b_hz)`
    /// and `b_hn` stays inside the reset gate's product.
    pub fn gru_gates(x: &[f32], hp: &[f32], bias: &[f32], b_hn: &[f32], h: &mut [f32], hid: usize) {
        let (br, bz, bn) = (&bias[..hid], &bias[hid..2 * hid], &bias[2 * hid..3 * hid]);
        let b_hn = &b_hn[..hid];
        for ((x, hp), h) in x
            .chunks_exact(3 * hid)
            .zip(hp.chunks_exact(3 * hid))
            .zip(h.chunks_exact_mut(hid))
        {
            // Per-gate slices of length `hid`: no bounds checks, so the loop vectorizes.
            let (xr, xz, xn) = (&x[..hid], &x[hid..2 * hid], &x[2 * hid..]);
            let (pr, pz, pn) = (&hp[..hid], &hp[hid..2 * hid], &hp[2 * hid..]);
            let h = &mut h[..hid];
            for u in 0..hid {
                let r = sigmoid(xr[u] + br[u] + pr[u]);
                let z = sigmoid(xz[u] + bz[u] + pz[u]);
                let n = tanh(xn[u] + bn[u] + r * (pn[u] + b_hn[u]));
                h[u] = (1.0 - z) * n + z * h[u];
            }
        }
    }
}

multiversion! {
    /// GRU with the reset before the recurrent product, first half: `rh = r * h` with
    /// `r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)` (`x`, `hp` and `bias` as for
    /// [`gru_gates`]), for the product `W_hn (r * h)` that comes next.
    pub fn gru_reset(x: &[f32], hp: &[f32], bias: &[f32], h: &[f32], rh: &mut [f32], hid: usize) {
        let br = &bias[..hid];
        for (((x, hp), h), rh) in x
            .chunks_exact(3 * hid)
            .zip(hp.chunks_exact(3 * hid))
            .zip(h.chunks_exact(hid))
            .zip(rh.chunks_exact_mut(hid))
        {
            let (xr, pr, h, rh) = (&x[..hid], &hp[..hid], &h[..hid], &mut rh[..hid]);
            for u in 0..hid {
                rh[u] = sigmoid(xr[u] + br[u] + pr[u]) * h[u];
            }
        }
    }
}

multiversion! {
    /// GRU with the reset before the recurrent product (ONNX `linear_before_reset = 0`),
    /// second half: `pn` holds `W_hn (r * h)`;
    /// `n = tanh(W_in x + b_in + pn + b_hn)`, `h = (1 - z) n + z h`.
    pub fn gru_gates_reset_before(
        x: &[f32],
        hp: &[f32],
        pn: &[f32],
        bias: &[f32],
        b_hn: &[f32],
        h: &mut [f32],
        hid: usize,
    ) {
        let (bz, bn) = (&bias[hid..2 * hid], &bias[2 * hid..3 * hid]);
        let b_hn = &b_hn[..hid];
        for (((x, hp), pn), h) in x
            .chunks_exact(3 * hid)
            .zip(hp.chunks_exact(3 * hid))
            .zip(pn.chunks_exact(hid))
            .zip(h.chunks_exact_mut(hid))
        {
            let (xz, xn) = (&x[hid..2 * hid], &x[2 * hid..]);
            let (pz, pn, h) = (&hp[hid..2 * hid], &pn[..hid], &mut h[..hid]);
            for u in 0..hid {
                let z = sigmoid(xz[u] + bz[u] + pz[u]);
                let n = tanh(xn[u] + bn[u] + pn[u] + b_hn[u]);
                h[u] = (1.0 - z) * n + z * h[u];
            }
        }
    }
}

multiversion! {
    /// RNN cell update: `h = act(x + bias + hp)`, `x` = `W_ih x`, `hp` = `W_hh h`.
    pub fn rnn_gates(x: &[f32], hp: &[f32], bias: &[f32], h: &mut [f32], relu: bool) {
        let hid = bias.len();
        for ((h, x), hp) in h
            .chunks_exact_mut(hid)
            .zip(x.chunks_exact(hid))
            .zip(hp.chunks_exact(hid))
        {
            for (((h, &x), &b), &hp) in h.iter_mut().zip(x).zip(bias).zip(hp) {
                let v = x + b + hp;
                *h = if relu { v.max(0.0) } else { tanh(v) };
            }
        }
    }
}

/// In-place softmax of one row, max-subtracted like PyTorch for stability.
pub fn softmax_inplace(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in row.iter_mut() {
        *x = exp(*x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_over_range() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
    }

    #[test]
    fn tanh_and_sigmoid_match_std() {
        let mut x = -30.0f32;
        while x < 30.0 {
            assert!((tanh(x) - x.tanh()).abs() < 3e-7, "tanh({x})");
            let s = 1.0 / (1.0 + (-x as f64).exp());
            assert!((sigmoid(x) as f64 - s).abs() < 3e-7, "sigmoid({x})");
            x += 0.001;
        }
        assert_eq!(tanh(0.0), 0.0);
        assert!(sigmoid(-200.0) >= 0.0 && sigmoid(200.0) <= 1.0);
    }

    #[test]
    fn gemm_agrees_with_naive() {
        for &(m, k, n) in &[(1, 3, 5), (4, 7, 2), (9, 5, 13), (70, 33, 64)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 11) as f32) * 0.1 - 0.5).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 13) as f32) * 0.1 - 0.6).collect();
            let mut out = vec![1.0; m * n];
            gemm(&mut out, &a, &b, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum::<f32>();
                    assert!((out[i * n + j] - want).abs() < 1e-4, "{m}x{k}x{n} at {i},{j}");
                }
            }
        }
    }
}
