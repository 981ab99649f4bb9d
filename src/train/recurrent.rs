//! Training form of `rnn` / `lstm` / `gru` stacks, stacked and bidirectional, with PyTorch's
//! formulas (see `model::recurrent`) and backpropagation through time.
//!
//! Forward keeps, per step, what the backward pass needs (previous hidden state, activated
//! gates, cell state, GRU's hidden-side `n` product, LSTM's pre-projection output). Backward
//! walks the steps in reverse processing order; per step it does one small product
//! (`dA_h W_hh`) to reach the previous state, and after the loop the weight gradients of
//! all steps are three large products.
//!
//! Padding rows hold a zero state: `h_t = mask_t * cell(...)`. That ends each sequence's
//! forward recurrence harmlessly and starts the reverse direction at its own last step.

use super::linalg::{add_rows, mm, sigmoid, sum_rows, Op};
use super::params::{ParamId, Params};
use super::seq::Seq;
use crate::model::config::{CellKind, Nonlinearity};

/// Parameters of one direction of one layer.
#[derive(Debug, Clone)]
pub struct CellSpec {
    /// Input width: the layer's input for layer 0, `hout * dirs` above it.
    pub in_w: usize,
    /// `weight_ih_l{k}[_reverse]`, `[G*hidden, in_w]` (`G` = gates: 4 LSTM, 3 GRU, 1 RNN).
    pub w_ih: ParamId,
    /// `weight_hh_l{k}[_reverse]`, `[G*hidden, hout]`.
    pub w_hh: ParamId,
    /// `bias_ih_l{k}[_reverse]`, `[G*hidden]`; `None` for `bias=False`.
    pub b_ih: Option<ParamId>,
    /// `bias_hh_l{k}[_reverse]`, `[G*hidden]`; `None` for `bias=False`.
    pub b_hh: Option<ParamId>,
    /// LSTM projection `weight_hr_l{k}[_reverse]`, `[proj_size, hidden]`.
    pub w_hr: Option<ParamId>,
}

/// A recurrent stack: `cells[layer * dirs + dir]`.
#[derive(Debug, Clone)]
pub struct RecSpec {
    /// `rnn` (with its nonlinearity), `lstm` or `gru`.
    pub cell: CellKind,
    /// `hidden_size`.
    pub hidden: usize,
    /// Output width of one direction (`proj_size` or `hidden`).
    pub hout: usize,
    /// `num_layers`.
    pub layers: usize,
    /// Directions: 2 if bidirectional, else 1.
    pub dirs: usize,
    /// One per layer and direction, `cells[layer * dirs + dir]`.
    pub cells: Vec<CellSpec>,
}

/// Initial (and, after a chunk, final) state of every cell for each sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct RecCarry {
    /// Per cell, `b x hout`.
    pub h: Vec<Vec<f64>>,
    /// Per cell, `b x hidden` (LSTM only; empty otherwise).
    pub c: Vec<Vec<f64>>,
}

/// What one cell's forward pass keeps for its backward pass.
#[derive(Debug, Clone, Default)]
pub struct CellTape {
    /// `T*B x hout`: the state each step started from.
    hprev: Vec<f64>,
    /// `T*B x G*H`: activated gates (LSTM i,f,g,o; GRU r,z,n; RNN h).
    gates: Vec<f64>,
    /// LSTM: `T*B x H` cell state after / before each step.
    c: Vec<f64>,
    cprev: Vec<f64>,
    /// LSTM with projection: `T*B x H` output before `W_hr`.
    m: Vec<f64>,
    /// GRU: `T*B x H`, `W_hn h + b_hn`.
    ahn: Vec<f64>,
}

/// The whole stack's tape: each layer's input and each cell's tape.
#[derive(Debug, Clone, Default)]
pub struct RecTape {
    inputs: Vec<Seq>,
    cells: Vec<CellTape>,
}

/// Per cell and step, the squared norm of the loss gradient w.r.t. the hidden state
/// (summed over the batch): `norms[cell][t]`.
#[derive(Debug, Clone, Default)]
pub struct HiddenGrads {
    /// `norms[cell][t]`, cells indexed as `RecSpec::cells`, `t` in the layer's own steps.
    pub norms: Vec<Vec<f64>>,
}

impl CellTape {
    /// `T*B x G*H`: the activated gates of each step (LSTM i, f, g, o; GRU r, z, n; RNN h).
    pub fn gates(&self) -> &[f64] {
        &self.gates
    }

    /// LSTM: `T*B x H`, the cell state after each step (empty otherwise).
    pub fn cell(&self) -> &[f64] {
        &self.c
    }

    /// `T*B x hout`: the output each step started from.
    pub fn hprev(&self) -> &[f64] {
        &self.hprev
    }
}

impl RecTape {
    /// Each cell's tape, `cells[layer * dirs + dir]`.
    pub fn cells(&self) -> &[CellTape] {
        &self.cells
    }
}

impl RecSpec {
    /// Output width: `hout` per direction, directions side by side.
    pub fn out_width(&self) -> usize {
        self.hout * self.dirs
    }

    /// A zero state for `b` sequences (PyTorch's default `h0` / `c0`).
    pub fn zero_carry(&self, b: usize) -> RecCarry {
        let n = self.cells.len();
        RecCarry {
            h: vec![vec![0.0; b * self.hout]; n],
            c: if self.cell == CellKind::Lstm {
                vec![vec![0.0; b * self.hidden]; n]
            } else {
                Vec::new()
            },
        }
    }

    /// Runs the stack. With `carry`, starts from its states and leaves the final ones there
    /// (unidirectional stacks only; the caller checks).
    pub fn forward(
        &self,
        p: Params<'_>,
        x: &Seq,
        mut carry: Option<&mut RecCarry>,
        tape: &mut RecTape,
    ) -> Seq {
        tape.inputs.clear();
        tape.cells.clear();
        let mut input = x.clone();
        for k in 0..self.layers {
            let mut out = input.like(self.out_width());
            for d in 0..self.dirs {
                let ci = k * self.dirs + d;
                let (h0, c0) = match carry.as_deref() {
                    Some(c) => (Some(&c.h[ci][..]), c.c.get(ci).map(|v| &v[..])),
                    None => (None, None),
                };
                let (y, ct) = self.cell_forward(p, &self.cells[ci], &input, d == 1, h0, c0);
                if let Some(c) = carry.as_deref_mut() {
                    self.final_state(&y, &ct, &input, ci, c);
                }
                for r in 0..input.rows() {
                    out.data[r * out.w + d * self.hout..r * out.w + (d + 1) * self.hout]
                        .copy_from_slice(&y[r * self.hout..(r + 1) * self.hout]);
                }
                tape.cells.push(ct);
            }
            tape.inputs.push(std::mem::replace(&mut input, out));
        }
        input
    }

    /// The state after each sequence's last valid step, for the next chunk.
    fn final_state(&self, y: &[f64], ct: &CellTape, x: &Seq, ci: usize, carry: &mut RecCarry) {
        let (b, ho, h) = (x.b, self.hout, self.hidden);
        for i in 0..b {
            let len = x.lens[i];
            if len == 0 {
                continue;
            }
            let r = (len - 1) * b + i;
            carry.h[ci][i * ho..(i + 1) * ho].copy_from_slice(&y[r * ho..(r + 1) * ho]);
            if self.cell == CellKind::Lstm {
                carry.c[ci][i * h..(i + 1) * h].copy_from_slice(&ct.c[r * h..(r + 1) * h]);
            }
        }
    }

    fn cell_forward(
        &self,
        p: Params<'_>,
        cs: &CellSpec,
        x: &Seq,
        reverse: bool,
        h0: Option<&[f64]>,
        c0: Option<&[f64]>,
    ) -> (Vec<f64>, CellTape) {
        let (b, t_n, h, ho) = (x.b, x.t, self.hidden, self.hout);
        let gh = self.cell.gates() * h;
        let rows = x.rows();
        let mut ax = vec![0.0; rows * gh];
        mm(
            &mut ax,
            false,
            &x.data,
            Op::N,
            p.get(cs.w_ih),
            Op::T,
            rows,
            cs.in_w,
            gh,
        );
        if let Some(bias) = p.opt(cs.b_ih) {
            add_rows(&mut ax, bias);
        }
        let lstm = self.cell == CellKind::Lstm;
        let mut tape = CellTape {
            hprev: vec![0.0; rows * ho],
            gates: vec![0.0; rows * gh],
            ..Default::default()
        };
        if lstm {
            tape.c = vec![0.0; rows * h];
            tape.cprev = vec![0.0; rows * h];
            if cs.w_hr.is_some() {
                tape.m = vec![0.0; rows * h];
            }
        }
        if self.cell == CellKind::Gru {
            tape.ahn = vec![0.0; rows * h];
        }
        let mut y = vec![0.0; rows * ho];
        let mut hcur = h0.map_or_else(|| vec![0.0; b * ho], <[f64]>::to_vec);
        let mut ccur = c0.map_or_else(|| vec![0.0; b * h], <[f64]>::to_vec);
        let mut ah = vec![0.0; b * gh];
        let mut m = vec![0.0; b * h];
        let w_hh = p.get(cs.w_hh);
        let b_hh = p.opt(cs.b_hh);
        for s in 0..t_n {
            let t = if reverse { t_n - 1 - s } else { s };
            let r0 = t * b;
            tape.hprev[r0 * ho..(r0 + b) * ho].copy_from_slice(&hcur);
            mm(&mut ah, false, &hcur, Op::N, w_hh, Op::T, b, ho, gh);
            if let Some(bias) = b_hh {
                add_rows(&mut ah, bias);
            }
            for i in 0..b {
                let r = r0 + i;
                let valid = x.valid(t, i);
                let a_x = &ax[r * gh..(r + 1) * gh];
                let a_h = &ah[i * gh..(i + 1) * gh];
                let g = &mut tape.gates[r * gh..(r + 1) * gh];
                let hrow = &mut hcur[i * ho..(i + 1) * ho];
                match self.cell {
                    CellKind::Rnn(nl) => {
                        for j in 0..h {
                            let a = a_x[j] + a_h[j];
                            g[j] = match nl {
                                Nonlinearity::Tanh => a.tanh(),
                                Nonlinearity::Relu => a.max(0.0),
                            };
                            hrow[j] = if valid { g[j] } else { 0.0 };
                        }
                    }
                    CellKind::Gru => {
                        let hp = &tape.hprev[r * ho..(r + 1) * ho];
                        let ahn = &mut tape.ahn[r * h..(r + 1) * h];
                        for j in 0..h {
                            let rg = sigmoid(a_x[j] + a_h[j]);
                            let z = sigmoid(a_x[h + j] + a_h[h + j]);
                            ahn[j] = a_h[2 * h + j];
                            let n = (a_x[2 * h + j] + rg * ahn[j]).tanh();
                            g[j] = rg;
                            g[h + j] = z;
                            g[2 * h + j] = n;
                            hrow[j] = if valid { (1.0 - z) * n + z * hp[j] } else { 0.0 };
                        }
                    }
                    CellKind::Lstm => {
                        let crow = &mut ccur[i * h..(i + 1) * h];
                        tape.cprev[r * h..(r + 1) * h].copy_from_slice(crow);
                        let mrow = &mut m[i * h..(i + 1) * h];
                        for j in 0..h {
                            let ig = sigmoid(a_x[j] + a_h[j]);
                            let fg = sigmoid(a_x[h + j] + a_h[h + j]);
                            let gg = (a_x[2 * h + j] + a_h[2 * h + j]).tanh();
                            let og = sigmoid(a_x[3 * h + j] + a_h[3 * h + j]);
                            g[j] = ig;
                            g[h + j] = fg;
                            g[2 * h + j] = gg;
                            g[3 * h + j] = og;
                            let c = fg * crow[j] + ig * gg;
                            crow[j] = if valid { c } else { 0.0 };
                            mrow[j] = if valid { og * c.tanh() } else { 0.0 };
                        }
                        tape.c[r * h..(r + 1) * h].copy_from_slice(crow);
                        if cs.w_hr.is_none() {
                            hrow.copy_from_slice(mrow);
                        }
                    }
                }
            }
            if let Some(w_hr) = p.opt(cs.w_hr) {
                tape.m[r0 * h..(r0 + b) * h].copy_from_slice(&m);
                mm(&mut hcur, false, &m, Op::N, w_hr, Op::T, b, h, ho);
            }
            y[r0 * ho..(r0 + b) * ho].copy_from_slice(&hcur);
        }
        (y, tape)
    }

    /// Accumulates parameter gradients; returns the input gradient. `probe` receives the
    /// squared hidden-state gradient norms.
    pub fn backward(
        &self,
        p: Params<'_>,
        tape: &RecTape,
        dy: &Seq,
        grads: &mut [f64],
        mut probe: Option<&mut HiddenGrads>,
    ) -> Seq {
        let mut dout = dy.clone();
        for k in (0..self.layers).rev() {
            let x = &tape.inputs[k];
            let mut dx = x.like(x.w);
            for d in 0..self.dirs {
                let ci = k * self.dirs + d;
                let mut dyc = vec![0.0; x.rows() * self.hout];
                for r in 0..x.rows() {
                    dyc[r * self.hout..(r + 1) * self.hout].copy_from_slice(
                        &dout.data[r * dout.w + d * self.hout..r * dout.w + (d + 1) * self.hout],
                    );
                }
                let norms = self.cell_backward(
                    p,
                    &self.cells[ci],
                    &tape.cells[ci],
                    x,
                    d == 1,
                    &dyc,
                    &mut dx,
                    grads,
                );
                if let Some(pr) = probe.as_deref_mut() {
                    if pr.norms.len() < self.cells.len() {
                        pr.norms.resize(self.cells.len(), Vec::new());
                    }
                    pr.norms[ci] = norms;
                }
            }
            dout = dx;
        }
        dout
    }

    #[allow(clippy::too_many_arguments)]
    fn cell_backward(
        &self,
        p: Params<'_>,
        cs: &CellSpec,
        ct: &CellTape,
        x: &Seq,
        reverse: bool,
        dy: &[f64],
        dx: &mut Seq,
        grads: &mut [f64],
    ) -> Vec<f64> {
        let (b, t_n, h, ho) = (x.b, x.t, self.hidden, self.hout);
        let gh = self.cell.gates() * h;
        let rows = x.rows();
        let gru = self.cell == CellKind::Gru;
        let mut dax = vec![0.0; rows * gh];
        let mut dah = if gru { vec![0.0; rows * gh] } else { Vec::new() };
        let mut dh_next = vec![0.0; b * ho];
        let mut dc_next = vec![0.0; b * h];
        let mut dh = vec![0.0; b * ho];
        let mut dm = vec![0.0; b * h];
        let mut direct = vec![0.0; b * ho];
        let mut norms = vec![0.0; t_n];
        let w_hh = p.get(cs.w_hh);
        for s in (0..t_n).rev() {
            let t = if reverse { t_n - 1 - s } else { s };
            let r0 = t * b;
            for i in 0..b {
                let valid = x.valid(t, i);
                for j in 0..ho {
                    let v = dy[(r0 + i) * ho + j] + dh_next[i * ho + j];
                    dh[i * ho + j] = if valid { v } else { 0.0 };
                }
                if !valid {
                    dc_next[i * h..(i + 1) * h].fill(0.0);
                }
            }
            norms[t] = dh.iter().map(|v| v * v).sum();
            if let Some(w_hr) = cs.w_hr {
                mm(&mut dm, false, &dh, Op::N, p.get(w_hr), Op::N, b, ho, h);
                mm(
                    &mut grads[p.layout.range(w_hr)],
                    true,
                    &dh,
                    Op::T,
                    &ct.m[r0 * h..(r0 + b) * h],
                    Op::N,
                    ho,
                    b,
                    h,
                );
            } else if self.cell == CellKind::Lstm {
                dm.copy_from_slice(&dh);
            }
            direct.fill(0.0);
            for i in 0..b {
                let r = r0 + i;
                let g = &ct.gates[r * gh..(r + 1) * gh];
                let da = &mut dax[r * gh..(r + 1) * gh];
                match self.cell {
                    CellKind::Rnn(nl) => {
                        for j in 0..h {
                            let d = dh[i * ho + j];
                            da[j] = match nl {
                                Nonlinearity::Tanh => d * (1.0 - g[j] * g[j]),
                                Nonlinearity::Relu => {
                                    if g[j] > 0.0 {
                                        d
                                    } else {
                                        0.0
                                    }
                                }
                            };
                        }
                    }
                    CellKind::Lstm => {
                        let c = &ct.c[r * h..(r + 1) * h];
                        let cp = &ct.cprev[r * h..(r + 1) * h];
                        for j in 0..h {
                            let (ig, fg, gg, og) = (g[j], g[h + j], g[2 * h + j], g[3 * h + j]);
                            let tc = c[j].tanh();
                            let dmj = dm[i * h + j];
                            let dct = dc_next[i * h + j] + dmj * og * (1.0 - tc * tc);
                            da[j] = dct * gg * ig * (1.0 - ig);
                            da[h + j] = dct * cp[j] * fg * (1.0 - fg);
                            da[2 * h + j] = dct * ig * (1.0 - gg * gg);
                            da[3 * h + j] = dmj * tc * og * (1.0 - og);
                            dc_next[i * h + j] = dct * fg;
                        }
                    }
                    CellKind::Gru => {
                        let hp = &ct.hprev[r * ho..(r + 1) * ho];
                        let ahn = &ct.ahn[r * h..(r + 1) * h];
                        let dh_row = &mut dah[r * gh..(r + 1) * gh];
                        for j in 0..h {
                            let (rg, z, n) = (g[j], g[h + j], g[2 * h + j]);
                            let d = dh[i * ho + j];
                            let dn = d * (1.0 - z) * (1.0 - n * n);
                            let dz = d * (hp[j] - n) * z * (1.0 - z);
                            let dr = dn * ahn[j] * rg * (1.0 - rg);
                            da[j] = dr;
                            da[h + j] = dz;
                            da[2 * h + j] = dn;
                            dh_row[j] = dr;
                            dh_row[h + j] = dz;
                            dh_row[2 * h + j] = dn * rg;
                            direct[i * ho + j] = d * z;
                        }
                    }
                }
            }
            let dah_t = if gru {
                &dah[r0 * gh..(r0 + b) * gh]
            } else {
                &dax[r0 * gh..(r0 + b) * gh]
            };
            mm(&mut dh_next, false, dah_t, Op::N, w_hh, Op::N, b, gh, ho);
            if gru {
                dh_next.iter_mut().zip(&direct).for_each(|(a, d)| *a += d);
            }
        }
        let dah_all = if gru { &dah } else { &dax };
        mm(
            &mut grads[p.layout.range(cs.w_ih)],
            true,
            &dax,
            Op::T,
            &x.data,
            Op::N,
            gh,
            rows,
            cs.in_w,
        );
        mm(
            &mut grads[p.layout.range(cs.w_hh)],
            true,
            dah_all,
            Op::T,
            &ct.hprev,
            Op::N,
            gh,
            rows,
            ho,
        );
        if let Some(bi) = cs.b_ih {
            sum_rows(&mut grads[p.layout.range(bi)], &dax);
        }
        if let Some(bh) = cs.b_hh {
            sum_rows(&mut grads[p.layout.range(bh)], dah_all);
        }
        mm(
            &mut dx.data,
            true,
            &dax,
            Op::N,
            p.get(cs.w_ih),
            Op::N,
            rows,
            gh,
            cs.in_w,
        );
        norms
    }
}
