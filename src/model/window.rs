//! Layers that look at a window of past inputs: `conv1d` and `maxpool1d` / `avgpool1d`.
//!
//! Both are described by a [`Window`]: which input steps feed the output completed at
//! global input step `g`, and at which `g` an output is emitted. Streaming keeps the last
//! `back` inputs of each key in a ring inside its state slot, plus a step counter; the
//! offline form starts from an empty ring, which is PyTorch's zero left padding.

use super::config::Padding;
use super::packed::Packed;
use super::state::StateSpec;
use super::StateRef;
use crate::kernels;

/// Geometry of a windowed layer in terms of global input steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Inputs per output (kernel size).
    pub taps: usize,
    /// Distance between taps.
    pub dilation: usize,
    /// Tap `j` of the output completed at `g` reads input `g - back + j * dilation`.
    pub back: usize,
    /// First step that can emit.
    pub delay: usize,
    /// Emit at `delay`, `delay + stride`, ...
    pub stride: usize,
    /// Whether taps may reach past `g` (needs the whole sequence).
    pub lookahead: bool,
}

impl Window {
    /// History each key must keep between calls.
    pub fn ring(&self) -> usize {
        if self.lookahead {
            0
        } else {
            self.back
        }
    }

    /// Number of steps `g` in `[seen, seen + len)` that emit an output, and the first one.
    #[inline]
    pub(crate) fn emitted(&self, seen: u64, len: u64) -> (u64, u64) {
        let (delay, stride) = (self.delay as u64, self.stride as u64);
        let lo = seen.max(delay);
        let first = delay + (lo - delay).div_ceil(stride) * stride;
        let end = seen + len;
        if first < end {
            (first, (end - 1 - first) / stride + 1)
        } else {
            (first, 0)
        }
    }

    /// Span of input steps one output depends on.
    pub fn span(&self) -> usize {
        (self.taps - 1) * self.dilation + 1
    }

    pub(crate) fn state_spec(&self, in_width: usize) -> StateSpec {
        StateSpec {
            floats: self.ring() * in_width,
            counter: !self.lookahead,
        }
    }

    /// Gathers, for every emitted output, its `taps` input rows side by side into `cols`
    /// (`rows x taps*in_w`), builds `out`'s layout (lengths and tags), and advances the
    /// per-key ring and counter.
    pub(crate) fn gather(
        &self,
        input: &Packed,
        state: &mut StateRef<'_>,
        out: &mut Packed,
        cols: &mut Vec<f32>,
        scratch: &mut Vec<u64>,
    ) {
        let inl = &input.layout;
        let n = inl.len();
        let in_w = input.width;
        // scratch: per input position, the first emitting global step and steps seen so far.
        scratch.clear();
        scratch.resize(2 * n, 0);
        let (firsts, seens) = scratch.split_at_mut(n);
        let ol = &mut out.layout;
        ol.seq.clear();
        ol.lens.clear();
        for pos in 0..n {
            let seen = match state {
                StateRef::Fresh => 0,
                StateRef::Slots { slots, ids } => slots.counter(ids[inl.seq[pos] as usize]),
            };
            let (first, count) = self.emitted(seen, inl.lens[pos] as u64);
            firsts[pos] = first;
            seens[pos] = seen;
            ol.seq.push(pos as u32);
            ol.lens.push(count as u32);
        }
        ol.finish();
        let row_w = self.taps * in_w;
        cols.clear();
        cols.resize(ol.rows() * row_w, 0.0);
        let ring = self.ring();
        for opos in 0..ol.len() {
            let ipos = ol.seq[opos] as usize;
            let (seen, len) = (seens[ipos], inl.lens[ipos] as u64);
            let slot = match state {
                StateRef::Fresh => None,
                StateRef::Slots { slots, ids } => Some(slots.row(ids[inl.seq[ipos] as usize])),
            };
            for t in 0..ol.lens[opos] as usize {
                let g = firsts[ipos] + (t * self.stride) as u64;
                let r = ol.row(opos, t);
                ol.tags[r] = inl.tags[inl.row(ipos, (g - seen) as usize)];
                let dst = &mut cols[r * row_w..(r + 1) * row_w];
                for j in 0..self.taps {
                    let src = g as i64 - self.back as i64 + (j * self.dilation) as i64;
                    let d = &mut dst[j * in_w..(j + 1) * in_w];
                    if src < 0 || src as u64 >= seen + len {
                        continue; // zero padding (left, or right for `same`)
                    } else if (src as u64) < seen {
                        let k = (src as u64 % ring as u64) as usize;
                        let history = slot.expect("history before this call implies a slot");
                        d.copy_from_slice(&history[k * in_w..(k + 1) * in_w]);
                    } else {
                        d.copy_from_slice(input.row_data(inl.row(ipos, (src as u64 - seen) as usize)));
                    }
                }
            }
        }
        for pos in 0..ol.len() {
            let ipos = ol.seq[pos];
            ol.seq[pos] = inl.seq[ipos as usize];
        }
        if let StateRef::Slots { slots, ids } = state {
            for ipos in 0..n {
                let len = inl.lens[ipos] as u64;
                if len == 0 {
                    continue;
                }
                let slot = ids[inl.seq[ipos] as usize];
                let seen = seens[ipos];
                if ring > 0 {
                    let keep = len.min(ring as u64);
                    for t in (len - keep)..len {
                        let k = ((seen + t) % ring as u64) as usize;
                        let src = input.row_data(inl.row(ipos, t as usize));
                        slots.row_mut(slot)[k * in_w..(k + 1) * in_w].copy_from_slice(src);
                    }
                }
                slots.counters[slot as usize] = seen + len;
            }
        }
    }
}

/// `nn.Conv1d` with weights re-arranged for one GEMM over im2col rows.
#[derive(Debug, Clone)]
pub struct Conv1d {
    /// `in_channels`.
    pub in_ch: usize,
    /// `out_channels`.
    pub out_ch: usize,
    /// `kernel_size`.
    pub kernel: usize,
    /// `stride`.
    pub stride: usize,
    /// `dilation`.
    pub dilation: usize,
    /// Causal, valid or same.
    pub padding: Padding,
    /// `[kernel*in_ch x out_ch]`: row `j*in_ch + c`, column `o` = `weight[o, c, j]`.
    w: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl Conv1d {
    /// Builds from PyTorch's `weight [out, in, k]` and optional `bias [out]`.
    pub fn new(
        weight: &[f32],
        shape: [usize; 3],
        bias: Option<Vec<f32>>,
        stride: usize,
        dilation: usize,
        padding: Padding,
    ) -> Conv1d {
        let [out_ch, in_ch, kernel] = shape;
        let mut w = vec![0.0; kernel * in_ch * out_ch];
        for o in 0..out_ch {
            for c in 0..in_ch {
                for j in 0..kernel {
                    w[(j * in_ch + c) * out_ch + o] = weight[(o * in_ch + c) * kernel + j];
                }
            }
        }
        Conv1d {
            in_ch,
            out_ch,
            kernel,
            stride,
            dilation,
            padding,
            w,
            bias,
        }
    }

    /// The layer's window geometry.
    pub fn window(&self) -> Window {
        let reach = (self.kernel - 1) * self.dilation;
        match self.padding {
            Padding::Causal => Window {
                taps: self.kernel,
                dilation: self.dilation,
                back: reach,
                delay: 0,
                stride: self.stride,
                lookahead: false,
            },
            Padding::Valid => Window {
                taps: self.kernel,
                dilation: self.dilation,
                back: reach,
                delay: reach,
                stride: self.stride,
                lookahead: false,
            },
            Padding::Same => Window {
                taps: self.kernel,
                dilation: self.dilation,
                back: reach / 2,
                delay: 0,
                stride: 1,
                lookahead: reach > 0,
            },
        }
    }

    /// Number of parameters.
    pub fn params(&self) -> usize {
        self.w.len() + self.bias.as_ref().map_or(0, Vec::len)
    }

    /// Whether there is a bias (`bias=True`).
    pub fn has_bias(&self) -> bool {
        self.bias.is_some()
    }

    pub(crate) fn forward(
        &self,
        input: &Packed,
        state: &mut StateRef<'_>,
        out: &mut Packed,
        cols: &mut Vec<f32>,
        scratch: &mut Vec<u64>,
    ) {
        self.window().gather(input, state, out, cols, scratch);
        out.reshape(self.out_ch);
        let rows = out.layout.rows();
        kernels::gemm(
            &mut out.data,
            cols,
            &self.w,
            rows,
            self.kernel * self.in_ch,
            self.out_ch,
        );
        if let Some(b) = &self.bias {
            kernels::add_bias(&mut out.data, b);
        }
    }
}

/// `nn.MaxPool1d` / `nn.AvgPool1d` without padding.
#[derive(Debug, Clone)]
pub struct Pool1d {
    /// Max (else average) pooling.
    pub max: bool,
    /// `kernel_size`.
    pub kernel: usize,
    /// `stride`.
    pub stride: usize,
    /// Features pooled (the input width).
    pub channels: usize,
}

impl Pool1d {
    /// The layer's window geometry.
    pub fn window(&self) -> Window {
        Window {
            taps: self.kernel,
            dilation: 1,
            back: self.kernel - 1,
            delay: self.kernel - 1,
            stride: self.stride,
            lookahead: false,
        }
    }

    pub(crate) fn forward(
        &self,
        input: &Packed,
        state: &mut StateRef<'_>,
        out: &mut Packed,
        cols: &mut Vec<f32>,
        scratch: &mut Vec<u64>,
    ) {
        self.window().gather(input, state, out, cols, scratch);
        let c = self.channels;
        out.reshape(c);
        let inv = 1.0 / self.kernel as f32;
        for (o, taps) in out
            .data
            .chunks_exact_mut(c)
            .zip(cols.chunks_exact(c * self.kernel))
        {
            o.copy_from_slice(&taps[..c]);
            for tap in taps.chunks_exact(c).skip(1) {
                for (a, &b) in o.iter_mut().zip(tap) {
                    *a = if self.max { a.max(b) } else { *a + b };
                }
            }
            if !self.max {
                for a in o.iter_mut() {
                    *a *= inv;
                }
            }
        }
    }
}
