//! Training forms of `conv1d` and `maxpool1d` / `avgpool1d`: the same [`Window`] geometry
//! the inference layers use (so both agree on which inputs feed which output and when an
//! output is emitted), over a padded f64 batch, with backward passes.
//!
//! Truncated BPTT carries a window layer's history between chunks exactly as streaming
//! does: the last `back` inputs of each sequence and the count of steps seen. Carried
//! inputs are constants (no gradient flows into the previous chunk).

use super::linalg::{add_rows, mm, sum_rows, Op};
use super::params::{ParamId, Params};
use super::seq::Seq;
use crate::model::window::Window;

/// A window layer's history per sequence, carried between truncated-BPTT chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowCarry {
    /// `b x back x w`: the last `back` inputs, oldest first.
    pub ring: Vec<f64>,
    /// Steps of each sequence consumed so far (the window's position in time).
    pub seen: Vec<u64>,
}

impl WindowCarry {
    /// An empty history for `b` sequences of width `w`, keeping `back` inputs each.
    pub fn new(b: usize, back: usize, w: usize) -> WindowCarry {
        WindowCarry {
            ring: vec![0.0; b * back * w],
            seen: vec![0; b],
        }
    }
}

/// For every output row, its `taps` input rows side by side (`cols`), and which input row
/// each tap came from (`srcs`, -1 for padding or carried history).
#[derive(Debug)]
pub struct Gathered {
    /// `taps*w` values per output row, tap by tap; taps with no input are zero.
    pub cols: Seq,
    /// `rows x taps`: the input row each tap read, or -1.
    pub srcs: Vec<i32>,
}

/// Gathers each output's taps from `x` (and `carry`'s history), im2col-style; each output
/// row is tagged like the input step that completed it.
pub fn gather(win: &Window, x: &Seq, carry: Option<&WindowCarry>) -> Gathered {
    let (b, w, taps) = (x.b, x.w, win.taps);
    let mut firsts = vec![0u64; b];
    let mut lens = vec![0usize; b];
    for i in 0..b {
        let seen = carry.map_or(0, |c| c.seen[i]);
        let (first, count) = win.emitted(seen, x.lens[i] as u64);
        firsts[i] = first;
        lens[i] = count as usize;
    }
    let mut cols = Seq::zeros(&lens, taps * w);
    let mut srcs = vec![-1i32; cols.rows() * taps];
    for i in 0..b {
        let seen = carry.map_or(0, |c| c.seen[i]);
        for t in 0..lens[i] {
            let g = firsts[i] + (t * win.stride) as u64;
            let r = t * b + i;
            cols.tags[r] = x.tags[(g - seen) as usize * b + i];
            for j in 0..taps {
                let src = g as i64 - win.back as i64 + (j * win.dilation) as i64;
                if src < 0 || src >= (seen as i64 + x.lens[i] as i64) {
                    continue;
                }
                let dst = &mut cols.data[(r * taps + j) * w..(r * taps + j + 1) * w];
                if src < seen as i64 {
                    // From the carried history: ring slot back - (seen - src).
                    let c = carry.expect("src < seen implies a carry");
                    let slot = win.back as i64 - (seen as i64 - src);
                    if slot >= 0 {
                        let at = (i * win.back + slot as usize) * w;
                        dst.copy_from_slice(&c.ring[at..at + w]);
                    }
                } else {
                    let row = (src - seen as i64) as usize * b + i;
                    srcs[r * taps + j] = row as i32;
                    dst.copy_from_slice(&x.data[row * w..(row + 1) * w]);
                }
            }
        }
    }
    Gathered { cols, srcs }
}

/// Moves each sequence's history forward past this chunk's inputs.
pub fn advance_carry(win: &Window, x: &Seq, carry: &mut WindowCarry) {
    let (back, w) = (win.back, x.w);
    if back == 0 {
        for i in 0..x.b {
            carry.seen[i] += x.lens[i] as u64;
        }
        return;
    }
    for i in 0..x.b {
        let len = x.lens[i];
        let mut hist: Vec<f64> = carry.ring[i * back * w..(i + 1) * back * w].to_vec();
        for t in 0..len {
            hist.extend_from_slice(x.row(t, i));
        }
        let keep = &hist[hist.len() - back * w..];
        carry.ring[i * back * w..(i + 1) * back * w].copy_from_slice(keep);
        carry.seen[i] += len as u64;
    }
}

/// Convolution parameters: PyTorch's `weight [out, in, k]` and `bias [out]`.
#[derive(Debug, Clone)]
pub struct ConvSpec {
    /// Which inputs feed which output, as in the inference layer.
    pub win: Window,
    /// `in_channels`.
    pub in_ch: usize,
    /// `out_channels`.
    pub out_ch: usize,
    /// `weight`, `[out_ch, in_ch, taps]`.
    pub weight: ParamId,
    /// `bias`, `[out_ch]`; `None` for `bias=False`.
    pub bias: Option<ParamId>,
}

impl ConvSpec {
    /// `[k*in x out]`, row `j*in + c`: the weight in im2col order.
    fn arranged(&self, w: &[f64]) -> Vec<f64> {
        let (o_n, c_n, k_n) = (self.out_ch, self.in_ch, self.win.taps);
        let mut a = vec![0.0; k_n * c_n * o_n];
        for o in 0..o_n {
            for c in 0..c_n {
                for j in 0..k_n {
                    a[(j * c_n + c) * o_n + o] = w[(o * c_n + c) * k_n + j];
                }
            }
        }
        a
    }

    /// One output row per gathered row: `cols x W` plus bias; padding rows stay zero.
    pub fn forward(&self, p: Params<'_>, g: &Gathered) -> Seq {
        let mut y = g.cols.like(self.out_ch);
        let k = self.win.taps * self.in_ch;
        let wa = self.arranged(p.get(self.weight));
        let rows = y.rows();
        mm(
            &mut y.data,
            false,
            &g.cols.data,
            Op::N,
            &wa,
            Op::N,
            rows,
            k,
            self.out_ch,
        );
        if let Some(bias) = p.opt(self.bias) {
            add_rows(&mut y.data, bias);
        }
        y.zero_padding();
        y
    }

    /// Accumulates parameter gradients and returns the gradient of the layer's input.
    pub fn backward(&self, p: Params<'_>, g: &Gathered, x: &Seq, dy: &Seq, grads: &mut [f64]) -> Seq {
        let (o_n, c_n, k_n) = (self.out_ch, self.in_ch, self.win.taps);
        let k = k_n * c_n;
        let rows = dy.rows();
        // d(arranged W) = cols^T dy, then back to PyTorch's order.
        let mut dwa = vec![0.0; k * o_n];
        mm(
            &mut dwa,
            false,
            &g.cols.data,
            Op::T,
            &dy.data,
            Op::N,
            k,
            rows,
            o_n,
        );
        let gw = &mut grads[p.layout.range(self.weight)];
        for o in 0..o_n {
            for c in 0..c_n {
                for j in 0..k_n {
                    gw[(o * c_n + c) * k_n + j] += dwa[(j * c_n + c) * o_n + o];
                }
            }
        }
        if let Some(b) = self.bias {
            sum_rows(&mut grads[p.layout.range(b)], &dy.data);
        }
        let wa = self.arranged(p.get(self.weight));
        let mut dcols = vec![0.0; rows * k];
        mm(&mut dcols, false, &dy.data, Op::N, &wa, Op::T, rows, o_n, k);
        scatter(&dcols, &g.srcs, k_n, c_n, x)
    }
}

/// Adds each tap's gradient back onto the input row it was read from.
fn scatter(dcols: &[f64], srcs: &[i32], taps: usize, w: usize, x: &Seq) -> Seq {
    let mut dx = x.like(w);
    for (r, row_srcs) in srcs.chunks_exact(taps).enumerate() {
        for (j, &src) in row_srcs.iter().enumerate() {
            if src < 0 {
                continue;
            }
            let s = src as usize;
            let from = &dcols[(r * taps + j) * w..(r * taps + j + 1) * w];
            for (d, v) in dx.data[s * w..(s + 1) * w].iter_mut().zip(from) {
                *d += v;
            }
        }
    }
    dx
}

/// Pooling: max or mean over each window's taps, per channel.
#[derive(Debug, Clone)]
pub struct PoolSpec {
    /// The pooling window (kernel, stride), as in the inference layer.
    pub win: Window,
    /// `maxpool1d` if true, else `avgpool1d`.
    pub max: bool,
    /// Channels: the input width.
    pub ch: usize,
}

impl PoolSpec {
    /// Max or mean over each output's taps, per channel; padding rows stay zero.
    pub fn forward(&self, g: &Gathered) -> Seq {
        let (taps, c) = (self.win.taps, self.ch);
        let mut y = g.cols.like(c);
        for (r, out) in y.data.chunks_exact_mut(c).enumerate() {
            let cols = &g.cols.data[r * taps * c..(r + 1) * taps * c];
            for (ch, o) in out.iter_mut().enumerate() {
                let vals = (0..taps).map(|j| cols[j * c + ch]);
                *o = if self.max {
                    vals.fold(f64::NEG_INFINITY, f64::max)
                } else {
                    vals.sum::<f64>() / taps as f64
                };
            }
        }
        y.zero_padding();
        y
    }

    /// The input gradient: to the first maximal tap (max), or split evenly over the taps (mean).
    pub fn backward(&self, g: &Gathered, x: &Seq, dy: &Seq) -> Seq {
        let (taps, c) = (self.win.taps, self.ch);
        let mut dcols = vec![0.0; dy.rows() * taps * c];
        for (r, d) in dy.data.chunks_exact(c).enumerate() {
            let cols = &g.cols.data[r * taps * c..(r + 1) * taps * c];
            let dc = &mut dcols[r * taps * c..(r + 1) * taps * c];
            for (ch, &dv) in d.iter().enumerate() {
                if self.max {
                    // The first maximal tap takes the gradient, as PyTorch's max_pool1d.
                    let best = (0..taps)
                        .fold((0, f64::NEG_INFINITY), |(bj, bv), j| {
                            let v = cols[j * c + ch];
                            if v > bv {
                                (j, v)
                            } else {
                                (bj, bv)
                            }
                        })
                        .0;
                    dc[best * c + ch] += dv;
                } else {
                    for j in 0..taps {
                        dc[j * c + ch] += dv / taps as f64;
                    }
                }
            }
        }
        scatter(&dcols, &g.srcs, taps, c, x)
    }
}
