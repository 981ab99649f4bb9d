//! `rnn`, `lstm` and `gru`, stacked and bidirectional, with PyTorch's tensor names, gate
//! orders and formulas:
//!
//! - RNN:  `h' = act(W_ih x + b_ih + W_hh h + b_hh)`
//! - LSTM: gates `i, f, g, o` (rows of `weight_ih`), `c' = f*c + i*g`, `h' = o * tanh(c')`,
//!   optionally projected, `h' = W_hr h'` (`proj_size`).
//! - GRU:  gates `r, z, n`, `n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`,
//!   `h' = (1 - z) * n + z * h` (the reset gate applies after the hidden product, as in
//!   PyTorch and cuDNN, not before it as in the original paper).
//!
//! Execution is layer-major over a packed batch, wavefront by wavefront (the row prefix of
//! keys still running at that step). Where the CPU has AVX-512 or AVX2, `kernels::fused`
//! computes a wavefront's products and gates in one pass over register tiles; elsewhere (and
//! for projections) each wavefront is cut into blocks of rows, and per block one GEMM with
//! `W_ih` and one with `W_hh` feed the gate loops while their products are still in cache.
//! State is gathered from the arena once per call and scattered back once.

use super::config::{CellKind, Nonlinearity};
use super::dense::transpose;
use super::packed::Packed;
use super::state::StateSpec;
use super::StateRef;
use crate::kernels;
use crate::kernels::fused::{FusedCell, Gates, Precision, Rows, RowsMut, Tensors};

/// Rows of a wavefront processed together: their input and hidden products (`G*H` floats
/// each per row, 256 KB at LSTM h128) stay in L2 until the gate kernel has read them.
const BLOCK_ROWS: usize = 128;

/// One direction of one layer of a recurrent stack, with weights pre-transposed.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Input width of this layer.
    pub in_w: usize,
    /// `W_ih^T`, `[in x G*H]`.
    w_ih_t: Vec<f32>,
    /// `W_hh^T`, `[hout x G*H]`.
    w_hh_t: Vec<f32>,
    /// Bias added with the input projection: `b_ih + b_hh` (GRU: without `b_hn`).
    bias_x: Vec<f32>,
    /// GRU only: `b_hn`, which must stay inside the reset gate's product.
    b_hn: Vec<f32>,
    /// LSTM with `proj_size`: `W_hr^T`, `[H x P]`.
    w_hr_t: Option<Vec<f32>>,
    /// GRU with `linear_before_reset = false`: `W_hn^T`, `[H x H]`, applied to `r * h`
    /// after the reset gate is known.
    w_hn_t: Option<Vec<f32>>,
    /// The same weights packed for the fused kernel, where it runs (an AVX-512 or AVX2 CPU;
    /// no projection, no GRU reset before the product); `None` keeps the faer path.
    fused: Option<FusedCell>,
}

/// Raw PyTorch tensors of one direction of one layer, as read from the state_dict.
pub struct CellWeights<'a> {
    /// `weight_ih_l{k}`, `[G*H x in]` as PyTorch stores it.
    pub w_ih: &'a [f32],
    /// `weight_hh_l{k}`, `[G*H x hout]`.
    pub w_hh: &'a [f32],
    /// `bias_ih_l{k}`, `[G*H]`.
    pub b_ih: Option<&'a [f32]>,
    /// `bias_hh_l{k}`, `[G*H]`.
    pub b_hh: Option<&'a [f32]>,
    /// `weight_hr_l{k}` (LSTM projection), `[proj x H]`.
    pub w_hr: Option<&'a [f32]>,
}

/// A recurrent stack.
#[derive(Debug, Clone)]
pub struct Recurrent {
    /// Which cell.
    pub cell: CellKind,
    /// Input width of the first layer.
    pub input_size: usize,
    /// `hidden_size`.
    pub hidden: usize,
    /// `proj_size` (LSTM only).
    pub proj: Option<usize>,
    /// `num_layers`.
    pub num_layers: usize,
    /// `bidirectional`.
    pub bidirectional: bool,
    /// `bias`.
    pub has_bias: bool,
    /// GRU: PyTorch's reset (`true`), or the reset before the recurrent product.
    pub linear_before_reset: bool,
    /// The one direction runs backwards (not bidirectional).
    pub reverse: bool,
    /// Indexed `layer * dirs + direction`.
    cells: Vec<Cell>,
}

/// Buffers reused across calls so that a running pipeline does not allocate per step.
#[derive(Debug, Default)]
pub struct RecScratch {
    pre: Vec<f32>,
    h: Vec<f32>,
    c: Vec<f32>,
    gh: Vec<f32>,
    hraw: Vec<f32>,
    /// GRU with the reset before the product: `W_hn (r * h)`.
    pn: Vec<f32>,
    /// The bf16 kernel's inputs rounded to pairs.
    pairs: Vec<u32>,
    stages: [Packed; 2],
}

impl Recurrent {
    /// Assembles a stack; `weights[layer * dirs + dir]`. Shapes were validated by the loader.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cell: CellKind,
        input_size: usize,
        hidden: usize,
        proj: Option<usize>,
        num_layers: usize,
        bidirectional: bool,
        precision: Precision,
        weights: &[CellWeights<'_>],
        linear_before_reset: bool,
        reverse: bool,
    ) -> Recurrent {
        let reset_before = cell == CellKind::Gru && !linear_before_reset;
        let g = cell.gates();
        let hout = proj.unwrap_or(hidden);
        let dirs = if bidirectional { 2 } else { 1 };
        let has_bias = weights.first().is_some_and(|w| w.b_ih.is_some());
        let cells = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let in_w = if i / dirs == 0 { input_size } else { hout * dirs };
                let mut bias_x = vec![0.0; g * hidden];
                let mut b_hn = vec![0.0; hidden];
                if let Some(b) = w.b_ih {
                    bias_x.copy_from_slice(b);
                }
                if let Some(b) = w.b_hh {
                    let split = if cell == CellKind::Gru {
                        2 * hidden
                    } else {
                        g * hidden
                    };
                    for (x, y) in bias_x[..split].iter_mut().zip(&b[..split]) {
                        *x += y;
                    }
                    if cell == CellKind::Gru {
                        b_hn.copy_from_slice(&b[2 * hidden..]);
                    }
                }
                let gates = match cell {
                    CellKind::Lstm => Gates::Lstm,
                    CellKind::Gru => Gates::Gru,
                    CellKind::Rnn(nl) => Gates::Rnn {
                        relu: nl == Nonlinearity::Relu,
                    },
                };
                // The fused kernel has PyTorch's GRU only.
                let fused = match (w.w_hr, reset_before) {
                    (None, false) => {
                        let t = Tensors {
                            w_ih: w.w_ih,
                            w_hh: w.w_hh,
                            b_ih: w.b_ih,
                            b_hh: w.b_hh,
                        };
                        FusedCell::new(gates, precision, in_w, hidden, t)
                    }
                    _ => None,
                };
                Cell {
                    in_w,
                    fused,
                    w_ih_t: transpose(w.w_ih, g * hidden, in_w),
                    w_hh_t: transpose(w.w_hh, g * hidden, hout),
                    bias_x,
                    b_hn,
                    w_hr_t: w.w_hr.map(|m| transpose(m, hout, hidden)),
                    w_hn_t: reset_before.then(|| transpose(&w.w_hh[2 * hidden * hout..], hidden, hout)),
                }
            })
            .collect();
        Recurrent {
            cell,
            input_size,
            hidden,
            proj,
            num_layers,
            bidirectional,
            has_bias,
            linear_before_reset: !reset_before,
            reverse: reverse && !bidirectional,
            cells,
        }
    }

    fn dirs(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    /// The precision the matrix products run in: bf16 only where the model asked for it and
    /// the fused kernel runs (an LSTM with a projection stays f32).
    pub fn precision(&self) -> Precision {
        self.cells
            .first()
            .and_then(|c| c.fused.as_ref())
            .map_or(Precision::F32, FusedCell::precision)
    }

    /// Width of `h` (the projection size when there is one).
    pub fn hout(&self) -> usize {
        self.proj.unwrap_or(self.hidden)
    }

    /// Width of the output: `hout`, times two when bidirectional.
    pub fn out_width(&self) -> usize {
        self.hout() * self.dirs()
    }

    /// Floats per layer and direction of streamed state: `h`, then `c` for an LSTM.
    fn per_layer(&self) -> usize {
        self.hout()
            + if self.cell == CellKind::Lstm {
                self.hidden
            } else {
                0
            }
    }

    pub(crate) fn state_spec(&self) -> StateSpec {
        StateSpec {
            floats: self.num_layers * self.dirs() * self.per_layer(),
            counter: false,
        }
    }

    /// Number of parameters.
    pub fn params(&self) -> usize {
        let g = self.cell.gates();
        let bias = if self.has_bias { 2 * g * self.hidden } else { 0 };
        self.cells
            .iter()
            .map(|c| c.w_ih_t.len() + c.w_hh_t.len() + c.w_hr_t.as_ref().map_or(0, Vec::len) + bias)
            .sum()
    }

    pub(crate) fn forward(
        &self,
        input: &Packed,
        state: &mut StateRef<'_>,
        out: &mut Packed,
        s: &mut RecScratch,
    ) {
        let mut stages = std::mem::take(&mut s.stages);
        for l in 0..self.num_layers {
            let last = l + 1 == self.num_layers;
            let [s0, s1] = &mut stages;
            // Layer l reads stage (l-1)%2 and writes stage l%2; the first reads the input
            // and the last writes `out`.
            let (src, dst): (&Packed, &mut Packed) = match (l, last) {
                (0, true) => (input, &mut *out),
                (0, false) => (input, s0),
                (_, true) => (if l % 2 == 1 { &*s0 } else { &*s1 }, &mut *out),
                (_, false) if l % 2 == 1 => (&*s0, s1),
                (_, false) => (&*s1, s0),
            };
            dst.layout.clone_from(&src.layout);
            dst.reshape(self.out_width());
            for d in 0..self.dirs() {
                self.run_direction(l, d, src, state, dst, s);
            }
        }
        s.stages = stages;
    }

    /// Runs one direction of layer `l` over all wavefronts, writing its half of `dst`.
    fn run_direction(
        &self,
        l: usize,
        d: usize,
        src: &Packed,
        state: &mut StateRef<'_>,
        dst: &mut Packed,
        s: &mut RecScratch,
    ) {
        let cell = &self.cells[l * self.dirs() + d];
        let (hid, hout) = (self.hidden, self.hout());
        let layout = &src.layout;
        let b0 = layout.active();
        let lstm = self.cell == CellKind::Lstm;

        // Gather state: once per call, not per step (appended, not zero-filled first: a
        // streamed step is short enough that a memset showed in its profile).
        s.h.clear();
        s.c.clear();
        let off = (l * self.dirs() + d) * self.per_layer();
        match state {
            StateRef::Slots { slots, ids } => {
                for pos in 0..b0 {
                    let row = slots.row(ids[layout.seq[pos] as usize]);
                    s.h.extend_from_slice(&row[off..off + hout]);
                    if lstm {
                        s.c.extend_from_slice(&row[off + hout..off + hout + hid]);
                    }
                }
            }
            StateRef::Fresh => {
                s.h.resize(b0 * hout, 0.0);
                s.c.resize(if lstm { b0 * hid } else { 0 }, 0.0);
            }
        }

        // `d` is the output's half; the second half of a bidirectional layer, and a
        // reverse layer's only one, run backwards.
        let backward = d == 1 || self.reverse;
        let fused = cell.fused.as_ref();
        match fused {
            Some(fused) => run_fused(fused, d, backward, src, dst, &s.h, &mut s.c, &mut s.pairs),
            None => self.run_generic(cell, d, backward, src, dst, s),
        }

        if let StateRef::Slots { slots, ids } = state {
            let col = d * hout;
            for pos in 0..b0 {
                let row = slots.row_mut(ids[layout.seq[pos] as usize]);
                // The fused kernel leaves each key's last state in the output row of its
                // last step (forward) or first (backward): scattered from there, not copied
                // through `s.h` first.
                let last = match fused {
                    Some(_) => {
                        let w = if backward {
                            0
                        } else {
                            layout.lens[pos] as usize - 1
                        };
                        let r = layout.offsets[w] + pos;
                        &dst.data[r * dst.width + col..r * dst.width + col + hout]
                    }
                    None => &s.h[pos * hout..(pos + 1) * hout],
                };
                row[off..off + hout].copy_from_slice(last);
                if lstm {
                    row[off + hout..off + hout + hid].copy_from_slice(&s.c[pos * hid..(pos + 1) * hid]);
                }
            }
        }
    }

    /// The portable path: per block of rows, faer GEMMs into scratch, the gate kernel, and
    /// `h` copied into `dst`. `s.h`/`s.c` hold the gathered state and end as the final one.
    fn run_generic(
        &self,
        cell: &Cell,
        d: usize,
        backward: bool,
        src: &Packed,
        dst: &mut Packed,
        s: &mut RecScratch,
    ) {
        let (hid, hout) = (self.hidden, self.hout());
        let gh = self.cell.gates() * hid;
        let layout = &src.layout;
        let b0 = layout.active();
        let waves = layout.waves();
        let out_w = dst.width;
        let in_w = cell.in_w;
        let block = BLOCK_ROWS.min(b0);
        s.pre.resize(block * gh, 0.0);
        s.gh.resize(block * gh, 0.0);
        if cell.w_hr_t.is_some() || cell.w_hn_t.is_some() {
            s.hraw.resize(block * hid, 0.0);
        }
        if cell.w_hn_t.is_some() {
            s.pn.resize(block * hid, 0.0);
        }
        for step in 0..waves {
            // Backward direction walks the wavefronts in reverse; keys join as their last
            // step comes up, with the zero state they start from.
            let w = if backward { waves - 1 - step } else { step };
            let b = layout.batch_sizes[w] as usize;
            let r0 = layout.offsets[w];
            // Blocks of rows: the block's gate pre-activations (input and hidden products)
            // stay in L2 between the two GEMMs and the gate kernel, instead of a [rows x G*H]
            // projection of the whole call streaming through memory.
            for k0 in (0..b).step_by(block) {
                let n = block.min(b - k0);
                let (ra, rb) = (r0 + k0, r0 + k0 + n);
                let x = &mut s.pre[..n * gh];
                kernels::gemm(x, &src.data[ra * in_w..rb * in_w], &cell.w_ih_t, n, in_w, gh);
                let bias = &cell.bias_x;
                let hp = &mut s.gh[..n * gh];
                let h = &mut s.h[k0 * hout..(k0 + n) * hout];
                kernels::gemm(hp, h, &cell.w_hh_t, n, hout, gh);
                match self.cell {
                    CellKind::Rnn(nl) => kernels::rnn_gates(x, hp, bias, h, nl == Nonlinearity::Relu),
                    CellKind::Lstm => {
                        let c = &mut s.c[k0 * hid..(k0 + n) * hid];
                        match &cell.w_hr_t {
                            Some(w_hr_t) => {
                                let hraw = &mut s.hraw[..n * hid];
                                kernels::lstm_gates(x, hp, bias, c, hraw, hid);
                                kernels::gemm(h, hraw, w_hr_t, n, hid, hout);
                            }
                            None => kernels::lstm_gates(x, hp, bias, c, h, hid),
                        }
                    }
                    CellKind::Gru => match &cell.w_hn_t {
                        None => kernels::gru_gates(x, hp, bias, &cell.b_hn, h, hid),
                        Some(w_hn_t) => {
                            // Reset first: `hp`'s n columns are replaced by W_hn (r * h).
                            let rh = &mut s.hraw[..n * hid];
                            kernels::gru_reset(x, hp, bias, h, rh, hid);
                            let pn = &mut s.pn[..n * hid];
                            kernels::gemm(pn, rh, w_hn_t, n, hid, hid);
                            kernels::gru_gates_reset_before(x, hp, pn, bias, &cell.b_hn, h, hid);
                        }
                    },
                }
                for (i, hrow) in h.chunks_exact(hout).enumerate() {
                    let r = ra + i;
                    dst.data[r * out_w + d * hout..r * out_w + (d + 1) * hout].copy_from_slice(hrow);
                }
            }
        }
    }
}

/// One direction of one layer through the fused kernel. Each wavefront reads its previous
/// hidden state straight from the previous wavefront's output rows in `dst` (or from `h`,
/// the gathered state, for a key's first step of this call) and writes the new state into
/// its own rows of `dst`: no scratch, no copy. `c` is updated in place. Each key's last `h`
/// is left in its last step's row of `dst` (the caller scatters it from there).
#[allow(clippy::too_many_arguments)]
fn run_fused(
    fused: &FusedCell,
    d: usize,
    backward: bool,
    src: &Packed,
    dst: &mut Packed,
    h: &[f32],
    c: &mut [f32],
    pairs: &mut Vec<u32>,
) {
    let layout = &src.layout;
    let waves = layout.waves();
    let hout = h.len() / layout.active().max(1);
    let (in_w, out_w) = (src.width, dst.width);
    let col = d * hout;
    let c_w = c.len() / layout.active().max(1);
    for step in 0..waves {
        // The backward direction walks the wavefronts in reverse; keys join as their last
        // step comes up, with the state they start from.
        let (w, prev) = if !backward {
            (step, step.checked_sub(1))
        } else {
            (waves - 1 - step, (step > 0).then_some(waves - step))
        };
        let b = layout.batch_sizes[w] as usize;
        let r0 = layout.offsets[w];
        // Rows 0..m continue from the previous wavefront's rows; rows m..b start here.
        let m = prev.map_or(0, |p| (layout.batch_sizes[p] as usize).min(b));
        let x = &src.data[r0 * in_w..];
        // The current wavefront's rows and the previous one's are disjoint spans of `dst`.
        let split = match prev {
            Some(p) if p < w => layout.offsets[w],
            Some(p) => layout.offsets[p],
            None => r0,
        };
        let (lo, hi) = dst.data.split_at_mut(split * out_w);
        let (cur, before): (&mut [f32], &[f32]) = match prev {
            Some(p) if p < w => (&mut hi[col..], &lo[layout.offsets[p] * out_w + col..]),
            Some(_) => (&mut lo[r0 * out_w + col..], &hi[col..]),
            None => (&mut hi[col..], &[]),
        };
        fused.step(
            m,
            Rows {
                data: x,
                stride: in_w,
            },
            Rows {
                data: before,
                stride: out_w,
            },
            &mut c[..m * c_w],
            RowsMut {
                data: &mut *cur,
                stride: out_w,
            },
            pairs,
        );
        if b > m {
            fused.step(
                b - m,
                Rows {
                    data: &x[m * in_w..],
                    stride: in_w,
                },
                Rows {
                    data: &h[m * hout..],
                    stride: hout,
                },
                &mut c[m * c_w..b * c_w],
                RowsMut {
                    data: &mut cur[m * out_w..],
                    stride: out_w,
                },
                pairs,
            );
        }
    }
}
