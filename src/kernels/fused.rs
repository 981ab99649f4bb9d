//! The fused recurrent step: `b + [x h] · [W_ih; W_hh]^T` and the cell's gates in one pass
//! over register tiles, on CPUs with AVX-512.
//!
//! Why: the generic path (per block of rows, one faer GEMM with `W_ih` and one with `W_hh`
//! into scratch, a gate pass over both, then a copy of `h` into the output rows) moves every
//! gate pre-activation through memory three times, and its first GEMM, with the input width
//! (often 8) as its depth, is mostly call overhead. Here the weights are packed once, at load,
//! into panels of 64 columns: for an LSTM or a GRU, 16 hidden units times 4 gate groups, so
//! that one register tile holds every gate of its units. A tile of up to 6 rows x 64 columns
//! stays in 24 zmm registers over the whole reduction (input, then hidden state); the gates
//! run on it as soon as it is complete, and `h` goes straight into the caller's output rows.
//!
//! **Invariance.** Every pre-activation is one FMA chain in a fixed order: the bias, then
//! `x[0..I]`, then `h[0..H]`, whichever rows share its tile or its call. A key's result
//! therefore does not depend on how keys are batched, which is what keeps a pipeline's
//! output bit-identical for any worker count (the property tests and the `-w` invariance
//! tests defend it; `tests::rows_are_independent_of_batching` here).
//!
//! **Dispatch.** [`FusedCell::new`] returns `None` on a CPU without AVX-512F, or when the
//! environment sets `SEQFLOW_KERNEL=generic` (for comparisons, and to run the portable path
//! on this machine); the caller then keeps the faer path, which gives the same results to
//! within float rounding (about 1e-7).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// f32 lanes of a zmm register.
const LANES: usize = 16;
/// Column groups per panel (zmm accumulators per tile row).
const GROUPS: usize = 4;
/// Columns per panel.
const COLS: usize = GROUPS * LANES;
/// Rows per register tile: 6 x 4 accumulators + 4 weight vectors + 1 broadcast fit in the
/// 32 zmm registers.
const MR: usize = 6;
/// Rows per block: a panel of weights (136 x 64 floats at LSTM 8->128, 35 KB) is reused
/// over this many rows while it sits in L1.
const ROW_BLOCK: usize = 48;

/// Which cell's gates the epilogue applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gates {
    /// Gates `i f g o` in the four groups of a panel; `c' = f c + i g`, `h' = o tanh(c')`.
    Lstm,
    /// Groups `r`, `z`, `n` from the input (`nx`) and `n` from the hidden state (`nh`, kept
    /// apart because the reset gate multiplies it): `h' = (1 - z) tanh(nx + r nh) + z h`.
    Gru,
    /// 64 hidden units per panel: `h' = act(pre)`.
    Rnn {
        /// ReLU rather than tanh.
        relu: bool,
    },
}

/// How the recurrent matrix products are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 weights and FMAs: PyTorch's numbers within 1e-4 (the default).
    #[default]
    F32,
    /// bfloat16 weights and inputs, f32 accumulation (`vdpbf16ps`, AVX512_BF16): twice the
    /// products per instruction, at about 1e-3 of error. Gates and state stay f32.
    Bf16,
}

impl Precision {
    /// The model file's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Whether this CPU runs the bf16 kernel: the fused kernel is [`enabled`] and has AVX512_BF16.
pub fn bf16_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    let cpu = std::arch::is_x86_feature_detected!("avx512bf16");
    #[cfg(not(target_arch = "x86_64"))]
    let cpu = false;
    enabled() && cpu
}

/// One 64-byte-aligned vector of weights, so that every load of the tile loop is aligned:
/// 16 f32, or for the bf16 kernel 16 pairs of bf16 (the bit patterns stored as f32).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
struct Line([f32; LANES]);

/// The weights and biases of one direction of one recurrent layer, packed for the kernel.
#[derive(Debug, Clone)]
pub struct FusedCell {
    gates: Gates,
    precision: Precision,
    in_w: usize,
    hid: usize,
    panels: usize,
    /// Per panel, `kx` reduction rows of [`FusedCell::lines_of`] lines multiplying the
    /// input, then `kh` such rows multiplying `h`: in f32 one row per value (`kx = in_w`,
    /// `kh = hid`), in bf16 one row per pair of values (`x[2k]` in each lane's low half).
    /// Columns past the last unit and values past an odd width are zero. A GRU has 3 lines
    /// per row: `r z nx` for x, `r z nh` for h (a zero fourth would cost a third more FMAs).
    w: Vec<Line>,
    /// Reduction rows of the input and of the hidden segment.
    kx: usize,
    kh: usize,
    /// Per panel, `GROUPS` lines: each column's bias (the accumulators' starting value).
    bias: Vec<Line>,
}

/// `n` rows of `width` values, row `r` starting at `data[r * stride]`.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    /// The values; only the rows' spans are read.
    pub data: &'a [f32],
    /// Distance between rows, in floats.
    pub stride: usize,
}

/// Mutable rows, as [`Rows`].
#[derive(Debug)]
pub struct RowsMut<'a> {
    /// The values; only the rows' spans are written.
    pub data: &'a mut [f32],
    /// Distance between rows, in floats.
    pub stride: usize,
}

/// Whether the fused kernel may run here: AVX-512F, and not switched off with
/// `SEQFLOW_KERNEL=generic`. Decided once per process.
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        let asked_generic = std::env::var("SEQFLOW_KERNEL").is_ok_and(|v| v == "generic");
        #[cfg(target_arch = "x86_64")]
        let cpu =
            std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq");
        #[cfg(not(target_arch = "x86_64"))]
        let cpu = false;
        cpu && !asked_generic
    })
}

impl FusedCell {
    /// Packs PyTorch's tensors of one direction of one layer: `w_ih [G*hid x in_w]`,
    /// `w_hh [G*hid x hid]`, the optional biases `[G*hid]`, gates in PyTorch's order.
    /// `None` when the fused kernel is not [`enabled`] (or, for bf16, not
    /// [`bf16_supported`]; callers check that first, to say so).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gates: Gates,
        precision: Precision,
        in_w: usize,
        hid: usize,
        w_ih: &[f32],
        w_hh: &[f32],
        b_ih: Option<&[f32]>,
        b_hh: Option<&[f32]>,
    ) -> Option<FusedCell> {
        let supported = match precision {
            Precision::F32 => enabled(),
            Precision::Bf16 => bf16_supported(),
        };
        if !supported || in_w == 0 || hid == 0 {
            return None;
        }
        let (kx, kh) = match precision {
            Precision::F32 => (in_w, hid),
            Precision::Bf16 => (in_w.div_ceil(2), hid.div_ceil(2)),
        };
        let units = match gates {
            Gates::Rnn { .. } => COLS,
            Gates::Lstm | Gates::Gru => LANES,
        };
        let panels = hid.div_ceil(units);
        let lines = Self::lines_of(gates);
        let per_panel = (kx + kh) * lines;
        let mut w = vec![Line([0.0; LANES]); panels * per_panel];
        // Value `k` of a segment goes to reduction row `k` (f32) or to half `k % 2` of pair
        // row `k / 2` (bf16).
        let put = |line: &mut Line, l: usize, k: usize, v: f32| match precision {
            Precision::F32 => line.0[l] = v,
            Precision::Bf16 => {
                let bits = line.0[l].to_bits();
                let half = (bf16_bits(v) as u32) << (16 * (k % 2));
                let keep = if k.is_multiple_of(2) {
                    0xffff_0000
                } else {
                    0x0000_ffff
                };
                line.0[l] = f32::from_bits((bits & keep) | half);
            }
        };
        let row_of = |k: usize| match precision {
            Precision::F32 => k,
            Precision::Bf16 => k / 2,
        };
        let mut bias = vec![Line([0.0; LANES]); panels * GROUPS];
        let b = |v: Option<&[f32]>, row: usize| v.map_or(0.0, |v| v[row]);
        for p in 0..panels {
            for q in 0..GROUPS {
                for l in 0..LANES {
                    let unit = match gates {
                        Gates::Rnn { .. } => p * COLS + q * LANES + l,
                        Gates::Lstm | Gates::Gru => p * LANES + l,
                    };
                    if unit >= hid {
                        continue;
                    }
                    // Which PyTorch row feeds this column from x, which from h, and its bias.
                    let (x_row, h_row, bias_v) = match (gates, q) {
                        (Gates::Lstm, _) | (Gates::Gru, 0 | 1) => {
                            let row = q * hid + unit;
                            (Some(row), Some(row), b(b_ih, row) + b(b_hh, row))
                        }
                        (Gates::Gru, 2) => (Some(2 * hid + unit), None, b(b_ih, 2 * hid + unit)),
                        (Gates::Gru, _) => (None, Some(2 * hid + unit), b(b_hh, 2 * hid + unit)),
                        (Gates::Rnn { .. }, _) => (Some(unit), Some(unit), b(b_ih, unit) + b(b_hh, unit)),
                    };
                    bias[p * GROUPS + q].0[l] = bias_v;
                    let panel = &mut w[p * per_panel..(p + 1) * per_panel];
                    // The GRU's x rows hold groups 0 1 2 and its h rows groups 0 1 3.
                    let (x_line, h_line) = match gates {
                        Gates::Gru => (q, q.min(2)),
                        _ => (q, q),
                    };
                    if let Some(row) = x_row {
                        for kk in 0..in_w {
                            put(
                                &mut panel[row_of(kk) * lines + x_line],
                                l,
                                kk,
                                w_ih[row * in_w + kk],
                            );
                        }
                    }
                    if let Some(row) = h_row {
                        for kk in 0..hid {
                            put(
                                &mut panel[(kx + row_of(kk)) * lines + h_line],
                                l,
                                kk,
                                w_hh[row * hid + kk],
                            );
                        }
                    }
                }
            }
        }
        Some(FusedCell {
            gates,
            precision,
            in_w,
            hid,
            panels,
            w,
            kx,
            kh,
            bias,
        })
    }

    /// The precision this cell computes in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Weight lines per reduction row.
    fn lines_of(gates: Gates) -> usize {
        match gates {
            Gates::Gru => 3,
            Gates::Lstm | Gates::Rnn { .. } => GROUPS,
        }
    }

    /// Advances `n` rows one step: row `r` reads `x` row `r` (`in_w` values) and `h` row `r`
    /// (the previous hidden state, `hid` values), updates `c[r*hid..]` in place (LSTM only;
    /// ignored otherwise) and writes the new hidden state to `out` row `r`. `scratch` holds
    /// the bf16 kernel's converted inputs (reused across calls; untouched in f32).
    ///
    /// # Panics
    /// If a row span lies outside its slice (a caller's bug, never input-dependent).
    pub fn step(
        &self,
        n: usize,
        x: Rows<'_>,
        h: Rows<'_>,
        c: &mut [f32],
        out: RowsMut<'_>,
        scratch: &mut Vec<u32>,
    ) {
        if n == 0 {
            return;
        }
        // Checked: a wrapped product must not pass for a fit (this is a safe function in
        // front of raw pointer reads).
        let fits = |len: usize, stride: usize, width: usize| {
            (n - 1)
                .checked_mul(stride)
                .and_then(|v| v.checked_add(width))
                .is_some_and(|end| end <= len)
        };
        assert!(
            fits(x.data.len(), x.stride, self.in_w),
            "fused step: x rows out of bounds"
        );
        assert!(
            fits(h.data.len(), h.stride, self.hid),
            "fused step: h rows out of bounds"
        );
        assert!(
            fits(out.data.len(), out.stride, self.hid),
            "fused step: output rows out of bounds"
        );
        if self.gates == Gates::Lstm {
            assert!(
                n.checked_mul(self.hid).is_some_and(|need| c.len() >= need),
                "fused step: c rows out of bounds"
            );
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a FusedCell exists only where `enabled()` saw AVX-512F (and, in bf16,
        // `bf16_supported()` AVX512_BF16); every row span was checked against its slice above.
        unsafe {
            match self.precision {
                Precision::F32 => self.step_avx512(n, x, h, c, out),
                Precision::Bf16 => self.step_bf16(n, x, h, c, out, scratch),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("FusedCell is only built on x86_64");
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn step_avx512(&self, n: usize, x: Rows<'_>, h: Rows<'_>, c: &mut [f32], out: RowsMut<'_>) {
        for r0 in (0..n).step_by(ROW_BLOCK) {
            let r1 = n.min(r0 + ROW_BLOCK);
            // SAFETY: rows r0..r1 are < n, whose spans `step` checked.
            unsafe {
                self.block(
                    r0,
                    r1,
                    &h,
                    c,
                    &mut *out.data,
                    out.stride,
                    |t, m, gru, w, bias, acc| {
                        let xs = x.data.as_ptr().add(t * x.stride);
                        let hs = h.data.as_ptr().add(t * h.stride);
                        let (kx, kh, xst, hst) = (self.kx, self.kh, x.stride, h.stride);
                        dispatch!(tile_f32, m, gru, (w, bias, kx, kh, xs, xst, hs, hst, acc));
                    },
                );
            }
        }
    }

    /// The bf16 kernel: each block's rows of `x` and `h` are first rounded to bf16 pairs in
    /// `scratch` (one conversion per value per step, against `4*hid` products that read it).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq,avx512bf16")]
    unsafe fn step_bf16(
        &self,
        n: usize,
        x: Rows<'_>,
        h: Rows<'_>,
        c: &mut [f32],
        out: RowsMut<'_>,
        scratch: &mut Vec<u32>,
    ) {
        let kp = self.kx + self.kh;
        scratch.clear();
        scratch.resize(ROW_BLOCK.min(n) * kp, 0);
        for r0 in (0..n).step_by(ROW_BLOCK) {
            let r1 = n.min(r0 + ROW_BLOCK);
            for (i, pairs) in scratch.chunks_exact_mut(kp).take(r1 - r0).enumerate() {
                let r = r0 + i;
                let (px, ph) = pairs.split_at_mut(self.kx);
                to_pairs(&x.data[r * x.stride..r * x.stride + self.in_w], px);
                to_pairs(&h.data[r * h.stride..r * h.stride + self.hid], ph);
            }
            let a = scratch.as_ptr();
            // SAFETY: rows r0..r1 are < n, whose spans `step` checked; `scratch` holds
            // r1 - r0 rows of kp pairs.
            unsafe {
                self.block(
                    r0,
                    r1,
                    &h,
                    c,
                    &mut *out.data,
                    out.stride,
                    |t, m, gru, w, bias, acc| {
                        let xs = a.add((t - r0) * kp);
                        let hs = xs.add(self.kx);
                        let (kx, kh) = (self.kx, self.kh);
                        dispatch!(tile_bf16, m, gru, (w, bias, kx, kh, xs, kp, hs, kp, acc));
                    },
                );
            }
        }
    }

    /// Rows `r0..r1` through every panel: for each register tile of up to `MR` rows, `tile`
    /// runs the reduction into the tile buffer (`tile(t, m, gru, weights, bias, out)`), then
    /// the epilogue applies the gates row by row.
    ///
    /// # Safety
    /// AVX-512F present; rows `r0..r1` within the spans `step` checked; `tile` upholds the
    /// tile kernels' contracts.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        &self,
        r0: usize,
        r1: usize,
        h: &Rows<'_>,
        c: &mut [f32],
        out: &mut [f32],
        out_stride: usize,
        mut tile_fn: impl FnMut(usize, usize, bool, *const f32, *const f32, *mut f32),
    ) {
        let per_panel = (self.kx + self.kh) * Self::lines_of(self.gates);
        let gru = self.gates == Gates::Gru;
        let mut tile = [Line([0.0; LANES]); MR * GROUPS];
        for p in 0..self.panels {
            let w = self.w[p * per_panel..].as_ptr().cast::<f32>();
            let bias = self.bias[p * GROUPS..].as_ptr().cast::<f32>();
            let mut t = r0;
            while t < r1 {
                let m = MR.min(r1 - t);
                tile_fn(t, m, gru, w, bias, tile.as_mut_ptr().cast::<f32>());
                let full = match self.gates {
                    Gates::Rnn { .. } => (p + 1) * COLS <= self.hid,
                    _ => (p + 1) * LANES <= self.hid,
                };
                if full {
                    // SAFETY: AVX-512F, as for this function.
                    unsafe {
                        match m {
                            6 => self.epilogue_rows::<6>(p, t, &tile, h, c, out, out_stride),
                            5 => self.epilogue_rows::<5>(p, t, &tile, h, c, out, out_stride),
                            4 => self.epilogue_rows::<4>(p, t, &tile, h, c, out, out_stride),
                            3 => self.epilogue_rows::<3>(p, t, &tile, h, c, out, out_stride),
                            2 => self.epilogue_rows::<2>(p, t, &tile, h, c, out, out_stride),
                            _ => self.epilogue_rows::<1>(p, t, &tile, h, c, out, out_stride),
                        }
                    }
                } else {
                    for (i, row) in tile[..m * GROUPS].chunks_exact(GROUPS).enumerate() {
                        let pre: &[Line; GROUPS] = row.try_into().expect("GROUPS lines per tile row");
                        // SAFETY: AVX-512F, as for this function.
                        unsafe { self.epilogue(p, t + i, pre, h, c, out, out_stride) };
                    }
                }
                t += m;
            }
        }
    }

    /// Applies the gates to a finished tile of `M` rows (from row `t`) of a panel whose units
    /// all exist (the last panel of a hidden size that is not a multiple of 16 goes row by row
    /// through [`Self::epilogue`]).
    ///
    /// Why across rows: one row's gates are a few chains of about 16 dependent operations
    /// (the exponential's polynomial, then the reciprocal), so row by row the vector units
    /// mostly wait on latency: 24% of a whole LSTM run against about 11% of its instructions.
    /// Here each stage runs over every row of the tile before the next stage, so `M`
    /// independent chains are in flight. The operations per value, and so the results, are
    /// those of the row-by-row path.
    ///
    /// # Safety
    /// AVX-512F present (called from `block` only).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn epilogue_rows<const M: usize>(
        &self,
        p: usize,
        t: usize,
        tile: &[Line; MR * GROUPS],
        h: &Rows<'_>,
        c: &mut [f32],
        out: &mut [f32],
        out_stride: usize,
    ) {
        let hid = self.hid;
        // SAFETY (every block below): AVX-512F, per this function's contract; `Line` is
        // 64-byte aligned; every row pointer comes from a 16-float subslice (checked).
        unsafe {
            let zero = _mm512_setzero_ps();
            let lines = |q: usize| {
                let mut v = [zero; M];
                for (r, v) in v.iter_mut().enumerate() {
                    *v = _mm512_load_ps(tile[r * GROUPS + q].0.as_ptr());
                }
                v
            };
            match self.gates {
                Gates::Lstm => {
                    let u0 = p * LANES;
                    let i = lanes::sigmoid_n(lines(0));
                    let g = lanes::tanh_n(lines(2));
                    let mut cn = [zero; M];
                    for (r, cn) in cn.iter_mut().enumerate() {
                        *cn = _mm512_mul_ps(i[r], g[r]);
                    }
                    let f = lanes::sigmoid_n(lines(1));
                    for (r, cn) in cn.iter_mut().enumerate() {
                        let cp = c[(t + r) * hid + u0..][..LANES].as_mut_ptr();
                        *cn = _mm512_fmadd_ps(f[r], _mm512_loadu_ps(cp), *cn);
                        _mm512_storeu_ps(cp, *cn);
                    }
                    let th = lanes::tanh_n(cn);
                    let o = lanes::sigmoid_n(lines(3));
                    for r in 0..M {
                        let op = out[(t + r) * out_stride + u0..][..LANES].as_mut_ptr();
                        _mm512_storeu_ps(op, _mm512_mul_ps(o[r], th[r]));
                    }
                }
                Gates::Gru => {
                    let u0 = p * LANES;
                    let rg = lanes::sigmoid_n(lines(0));
                    let (nx, nh) = (lines(2), lines(3));
                    let mut a = [zero; M];
                    for (r, a) in a.iter_mut().enumerate() {
                        *a = _mm512_add_ps(nx[r], _mm512_mul_ps(rg[r], nh[r]));
                    }
                    let n = lanes::tanh_n(a);
                    let z = lanes::sigmoid_n(lines(1));
                    for r in 0..M {
                        let hp = h.data[(t + r) * h.stride + u0..][..LANES].as_ptr();
                        // (1 - z) n + z h, as n + z (h - n).
                        let hn = _mm512_fmadd_ps(z[r], _mm512_sub_ps(_mm512_loadu_ps(hp), n[r]), n[r]);
                        _mm512_storeu_ps(out[(t + r) * out_stride + u0..][..LANES].as_mut_ptr(), hn);
                    }
                }
                Gates::Rnn { relu } => {
                    for q in 0..GROUPS {
                        let u0 = p * COLS + q * LANES;
                        let v = lines(q);
                        let a = if relu {
                            let mut a = v;
                            for a in a.iter_mut() {
                                *a = _mm512_max_ps(*a, zero);
                            }
                            a
                        } else {
                            lanes::tanh_n(v)
                        };
                        for (r, a) in a.iter().enumerate() {
                            _mm512_storeu_ps(out[(t + r) * out_stride + u0..][..LANES].as_mut_ptr(), *a);
                        }
                    }
                }
            }
        }
    }

    /// Applies the gates to one row's finished pre-activations for panel `p`'s units.
    ///
    /// Not a `target_feature` function but always inlined, so that it lands inside `block`
    /// whichever kernel calls that (a feature-annotated epilogue stayed a call per row and
    /// panel under the bf16 kernel: 12% of a whole run).
    ///
    /// # Safety
    /// AVX-512F present (called from `block` only).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn epilogue(
        &self,
        p: usize,
        r: usize,
        pre: &[Line; GROUPS],
        h: &Rows<'_>,
        c: &mut [f32],
        out: &mut [f32],
        out_stride: usize,
    ) {
        let hid = self.hid;
        // SAFETY (every block below): AVX-512F, per this function's contract.
        match self.gates {
            Gates::Lstm => {
                let u0 = p * LANES;
                let n = LANES.min(hid - u0);
                let c = &mut c[r * hid + u0..r * hid + u0 + n];
                let o = &mut out[r * out_stride + u0..r * out_stride + u0 + n];
                if let (Ok(c), Ok(o)) = (
                    <&mut [f32; LANES]>::try_from(&mut *c),
                    <&mut [f32; LANES]>::try_from(&mut *o),
                ) {
                    unsafe { lstm_lanes(pre, c, o) };
                } else {
                    let (mut cl, mut ol) = ([0.0; LANES], [0.0; LANES]);
                    cl[..n].copy_from_slice(c);
                    unsafe { lstm_lanes(pre, &mut cl, &mut ol) };
                    c.copy_from_slice(&cl[..n]);
                    o.copy_from_slice(&ol[..n]);
                }
            }
            Gates::Gru => {
                let u0 = p * LANES;
                let n = LANES.min(hid - u0);
                let hp = &h.data[r * h.stride + u0..r * h.stride + u0 + n];
                let o = &mut out[r * out_stride + u0..r * out_stride + u0 + n];
                if let (Ok(hp), Ok(o)) = (
                    <&[f32; LANES]>::try_from(hp),
                    <&mut [f32; LANES]>::try_from(&mut *o),
                ) {
                    unsafe { gru_lanes(pre, hp, o) };
                } else {
                    let (mut hl, mut ol) = ([0.0; LANES], [0.0; LANES]);
                    hl[..n].copy_from_slice(hp);
                    unsafe { gru_lanes(pre, &hl, &mut ol) };
                    o.copy_from_slice(&ol[..n]);
                }
            }
            Gates::Rnn { relu } => {
                let u0 = p * COLS;
                let n = COLS.min(hid - u0);
                let o = &mut out[r * out_stride + u0..r * out_stride + u0 + n];
                for (q, line) in pre.iter().enumerate() {
                    let (lo, hi) = ((q * LANES).min(n), ((q + 1) * LANES).min(n));
                    let mut hl = [0.0; LANES];
                    unsafe { rnn_lanes(line, relu, &mut hl) };
                    o[lo..hi].copy_from_slice(&hl[..hi - lo]);
                }
            }
        }
    }
}

/// Vector gate math, 16 lanes: `sigmoid(x) = 1 / (1 + 2^(-x log2 e))` and
/// `tanh(x) = 2 sigmoid(2x) - 1`, 13 and 14 vector operations per 16 values.
///
/// Why not the generic path's formulas (`super::exp`, Cephes' range reduction and degree-6
/// polynomial): AVX-512 does the range reduction in hardware. `vreduceps` gives the
/// fraction `f = t - floor(t)` exactly, a degree-5 minimax polynomial gives `2^f`, and
/// `vscalefps` multiplies by `2^floor(t)` (underflowing to zero on its own), so one
/// exponential is 7 operations instead of 12. The gates were a fifth of a whole LSTM run.
/// Each division is `rcp14` plus one Newton step (relative error about 2^-27, against
/// several times the cost for `vdivps`). Absolute error against float64 stays below 1.5e-7
/// (`tests::vector_gates_match_float64`, `tests::matches_float64_reference`).
#[cfg(target_arch = "x86_64")]
mod lanes {
    use std::arch::x86_64::*;

    /// `2^f` on [0, 1): minimax for relative error, fitted in float64 (maximum 7.5e-8 with
    /// exact coefficients, 1.5e-7 once the coefficients and Horner's steps round to f32).
    const EXP2: [f32; 6] = [
        0.999_999_94,
        0.693_153_1,
        0.240_153_61,
        0.055_826_318,
        0.008_989_341,
        0.001_877_576_7,
    ];

    /// `1 / (1 + 2^(scale x))` for `N` vectors stage by stage, `x` first raised to `low`.
    ///
    /// `low` keeps `2^(scale x)` finite (past it the Newton step would make `inf * 0` a NaN);
    /// the other side needs no clamp, since `vscalefps` underflows to zero and `vreduceps`
    /// gives 0 for any `t` that is an integer (every `|t| >= 2^23`).
    #[inline(always)]
    fn logistic_n<const N: usize>(mut x: [__m512; N], scale: f32, low: f32) -> [__m512; N] {
        // SAFETY (every block): AVX-512F and AVX-512DQ, which every caller's
        // `target_feature` context has (this function is always inlined into one).
        unsafe {
            for x in x.iter_mut() {
                *x = _mm512_mul_ps(_mm512_max_ps(*x, _mm512_set1_ps(low)), _mm512_set1_ps(scale));
            }
            // f = t - floor(t): imm8 0x09 is "keep 0 fraction bits, round down, no
            // precision exception".
            // (Loops rather than `map`: a closure would not inherit the caller's target
            // features, and every intrinsic in it would become a call.)
            let mut f = x;
            for f in f.iter_mut() {
                *f = _mm512_reduce_ps::<0x09>(*f);
            }
            let mut p = [_mm512_set1_ps(EXP2[5]); N];
            for &c in EXP2[..5].iter().rev() {
                for (p, f) in p.iter_mut().zip(&f) {
                    *p = _mm512_fmadd_ps(*p, *f, _mm512_set1_ps(c));
                }
            }
            let mut d = p;
            for ((d, p), t) in d.iter_mut().zip(&p).zip(&x) {
                *d = _mm512_add_ps(_mm512_scalef_ps(*p, *t), _mm512_set1_ps(1.0));
            }
            let mut r = d;
            for r in r.iter_mut() {
                *r = _mm512_rcp14_ps(*r);
            }
            for (r, d) in r.iter_mut().zip(&d) {
                let e = _mm512_fnmadd_ps(*d, *r, _mm512_set1_ps(1.0));
                *r = _mm512_fmadd_ps(*r, e, *r);
            }
            r
        }
    }

    /// `1 / (1 + e^-x)`, for `N` vectors at once. Below -87.3, `e^-x` would overflow; the
    /// sigmoid there is 0 to f32 precision anyway (the generic path clamps the same way).
    #[inline(always)]
    pub fn sigmoid_n<const N: usize>(x: [__m512; N]) -> [__m512; N] {
        logistic_n(x, -std::f32::consts::LOG2_E, -87.3)
    }

    /// `2 sigmoid(2x) - 1`, for `N` vectors at once (the doubling folded into the scale).
    #[inline(always)]
    pub fn tanh_n<const N: usize>(x: [__m512; N]) -> [__m512; N] {
        let mut s = logistic_n(x, -2.0 * std::f32::consts::LOG2_E, -43.6);
        for s in s.iter_mut() {
            // SAFETY: as in `logistic_n`.
            *s = unsafe { _mm512_fmsub_ps(*s, _mm512_set1_ps(2.0), _mm512_set1_ps(1.0)) };
        }
        s
    }

    /// `1 / (1 + e^-x)`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    pub fn sigmoid(x: __m512) -> __m512 {
        sigmoid_n([x])[0]
    }

    /// `2 sigmoid(2x) - 1`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    pub fn tanh(x: __m512) -> __m512 {
        tanh_n([x])[0]
    }
}

/// LSTM gates over 16 units: `c' = f c + i g`, `h' = o tanh(c')`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
unsafe fn lstm_lanes(pre: &[Line; GROUPS], c: &mut [f32; LANES], h: &mut [f32; LANES]) {
    // SAFETY: `Line` is 64-byte aligned; `c` and `h` hold 16 floats (unaligned accesses).
    unsafe {
        let ld = |l: &Line| _mm512_load_ps(l.0.as_ptr());
        let i = lanes::sigmoid(ld(&pre[0]));
        let f = lanes::sigmoid(ld(&pre[1]));
        let g = lanes::tanh(ld(&pre[2]));
        let o = lanes::sigmoid(ld(&pre[3]));
        let cn = _mm512_fmadd_ps(f, _mm512_loadu_ps(c.as_ptr()), _mm512_mul_ps(i, g));
        _mm512_storeu_ps(c.as_mut_ptr(), cn);
        _mm512_storeu_ps(h.as_mut_ptr(), _mm512_mul_ps(o, lanes::tanh(cn)));
    }
}

/// GRU gates over 16 units: `h' = (1 - z) tanh(nx + r nh) + z h`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
unsafe fn gru_lanes(pre: &[Line; GROUPS], hp: &[f32; LANES], h: &mut [f32; LANES]) {
    // SAFETY: as in `lstm_lanes`.
    unsafe {
        let ld = |l: &Line| _mm512_load_ps(l.0.as_ptr());
        let r = lanes::sigmoid(ld(&pre[0]));
        let z = lanes::sigmoid(ld(&pre[1]));
        let n = lanes::tanh(_mm512_add_ps(ld(&pre[2]), _mm512_mul_ps(r, ld(&pre[3]))));
        // (1 - z) n + z h, as n + z (h - n).
        let hn = _mm512_fmadd_ps(z, _mm512_sub_ps(_mm512_loadu_ps(hp.as_ptr()), n), n);
        _mm512_storeu_ps(h.as_mut_ptr(), hn);
    }
}

/// RNN activation over 16 units.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
unsafe fn rnn_lanes(pre: &Line, relu: bool, h: &mut [f32; LANES]) {
    // SAFETY: as in `lstm_lanes`.
    unsafe {
        let v = _mm512_load_ps(pre.0.as_ptr());
        let a = if relu {
            _mm512_max_ps(v, _mm512_setzero_ps())
        } else {
            lanes::tanh(v)
        };
        _mm512_storeu_ps(h.as_mut_ptr(), a);
    }
}

/// Calls a tile kernel with the tile's row count and cell as constants.
macro_rules! dispatch {
    ($kernel:ident, $m:expr, $gru:expr, $args:tt) => {
        match ($m, $gru) {
            (6, false) => $kernel::<6, false> $args,
            (5, false) => $kernel::<5, false> $args,
            (4, false) => $kernel::<4, false> $args,
            (3, false) => $kernel::<3, false> $args,
            (2, false) => $kernel::<2, false> $args,
            (_, false) => $kernel::<1, false> $args,
            (6, true) => $kernel::<6, true> $args,
            (5, true) => $kernel::<5, true> $args,
            (4, true) => $kernel::<4, true> $args,
            (3, true) => $kernel::<3, true> $args,
            (2, true) => $kernel::<2, true> $args,
            (_, true) => $kernel::<1, true> $args,
        }
    };
}
use dispatch;

/// Defines a register-tile kernel: `M` rows x 64 columns, accumulators started at the bias,
/// then for each of the `kx` input and `kh` hidden reduction rows, in order, one
/// multiply-accumulate per (row, column): `$mac(acc, broadcast(a), w)`. With `GRU`, each
/// reduction row holds 3 lines: x rows feed groups 0 1 2, h rows groups 0 1 3.
///
/// Safety of the generated function: its `target_feature`s present; `w` holds `kx + kh`
/// reduction rows of 4 lines (3 with `GRU`) and `bias` 4 lines, all 64-byte aligned;
/// `x + r*xst` holds `kx` and `h + r*hst` holds `kh` elements for every `r < M`; `out` has
/// room for `M * 64` floats, 64-byte aligned.
macro_rules! tile_kernel {
    ($(#[$doc:meta])* $name:ident, $features:literal, $elem:ty, $bcast:ident, $mac:ident) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        #[inline]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name<const M: usize, const GRU: bool>(
            w: *const f32,
            bias: *const f32,
            kx: usize,
            kh: usize,
            x: *const $elem,
            xst: usize,
            h: *const $elem,
            hst: usize,
            out: *mut f32,
        ) {
            // SAFETY: the contract in `tile_kernel!`'s documentation.
            unsafe {
                let b = [
                    _mm512_load_ps(bias),
                    _mm512_load_ps(bias.add(16)),
                    _mm512_load_ps(bias.add(32)),
                    _mm512_load_ps(bias.add(48)),
                ];
                let mut acc = [b; M];
                let mut wp = w;
                // Macros, not closures, so the loops are compiled inside this function's
                // `target_feature` context.
                macro_rules! reduce4 {
                    ($a:expr, $stride:expr, $depth:expr) => {
                        for k in 0..$depth {
                            let w0 = _mm512_load_ps(wp);
                            let w1 = _mm512_load_ps(wp.add(16));
                            let w2 = _mm512_load_ps(wp.add(32));
                            let w3 = _mm512_load_ps(wp.add(48));
                            for (r, acc) in acc.iter_mut().enumerate() {
                                let v = $bcast($a.add(r * $stride + k));
                                acc[0] = $mac(acc[0], v, w0);
                                acc[1] = $mac(acc[1], v, w1);
                                acc[2] = $mac(acc[2], v, w2);
                                acc[3] = $mac(acc[3], v, w3);
                            }
                            wp = wp.add(4 * LANES);
                        }
                    };
                }
                macro_rules! reduce3 {
                    ($a:expr, $stride:expr, $depth:expr, $third:literal) => {
                        for k in 0..$depth {
                            let w0 = _mm512_load_ps(wp);
                            let w1 = _mm512_load_ps(wp.add(16));
                            let w2 = _mm512_load_ps(wp.add(32));
                            for (r, acc) in acc.iter_mut().enumerate() {
                                let v = $bcast($a.add(r * $stride + k));
                                acc[0] = $mac(acc[0], v, w0);
                                acc[1] = $mac(acc[1], v, w1);
                                acc[$third] = $mac(acc[$third], v, w2);
                            }
                            wp = wp.add(3 * LANES);
                        }
                    };
                }
                if GRU {
                    reduce3!(x, xst, kx, 2);
                    reduce3!(h, hst, kh, 3);
                } else {
                    reduce4!(x, xst, kx);
                    reduce4!(h, hst, kh);
                }
                for (r, acc) in acc.iter().enumerate() {
                    for (q, &v) in acc.iter().enumerate() {
                        _mm512_store_ps(out.add((r * GROUPS + q) * LANES), v);
                    }
                }
            }
        }
    };
}

tile_kernel!(
    /// f32: one FMA per value.
    tile_f32, "avx512f,avx512dq", f32, bcast_f32, fma_f32
);
tile_kernel!(
    /// bf16: one `vdpbf16ps` per pair of values (two products, f32 accumulation).
    tile_bf16, "avx512f,avx512dq,avx512bf16", u32, bcast_pair, dot_bf16
);

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
unsafe fn bcast_f32(p: *const f32) -> __m512 {
    // SAFETY: the tile kernel's contract.
    unsafe { _mm512_set1_ps(*p) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
fn fma_f32(acc: __m512, v: __m512, w: __m512) -> __m512 {
    _mm512_fmadd_ps(v, w, acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
unsafe fn bcast_pair(p: *const u32) -> __m512 {
    // SAFETY: the tile kernel's contract.
    unsafe { _mm512_castsi512_ps(_mm512_set1_epi32(*p as i32)) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512bf16")]
#[inline]
fn dot_bf16(acc: __m512, v: __m512, w: __m512) -> __m512 {
    // SAFETY: reinterpreting 64 bytes of bf16 pairs; both types are plain vectors.
    let (v, w) = unsafe {
        (
            std::mem::transmute::<__m512, __m512bh>(v),
            std::mem::transmute::<__m512, __m512bh>(w),
        )
    };
    _mm512_dpbf16_ps(acc, v, w)
}

/// `v` rounded to bfloat16 (to nearest, ties to even), as its 16 bits. Inputs are finite
/// (non-finite rows are rejected before the model), so no NaN case.
pub fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The f32 value of bfloat16 bits.
pub fn bf16_value(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Values rounded to bf16 pairs: `out[k]` = `v[2k]` in the low half, `v[2k+1]` (or zero past
/// the end) in the high half.
fn to_pairs(v: &[f32], out: &mut [u32]) {
    for (k, o) in out.iter_mut().enumerate() {
        let lo = v.get(2 * k).map_or(0, |&x| bf16_bits(x));
        let hi = v.get(2 * k + 1).map_or(0, |&x| bf16_bits(x));
        *o = lo as u32 | (hi as u32) << 16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::SplitMix;

    /// What a precision does to a value entering a matrix product.
    fn round(p: Precision, v: f32) -> f32 {
        match p {
            Precision::F32 => v,
            Precision::Bf16 => bf16_value(bf16_bits(v)),
        }
    }

    /// Float64 reference of one step, from the documented formulas. The matrix products read
    /// weights and inputs rounded as `p` rounds them; biases, gates and the GRU's `z h` term
    /// use the exact values.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        gates: Gates,
        p: Precision,
        in_w: usize,
        hid: usize,
        wts: &Wts,
        x: &[f32],
        h: &[f32],
        c: &mut [f64],
    ) -> Vec<f64> {
        let dot = |w: &[f32], row: usize, v: &[f32], width: usize| -> f64 {
            (0..width)
                .map(|k| round(p, w[row * width + k]) as f64 * round(p, v[k]) as f64)
                .sum()
        };
        let pre = |g: usize, u: usize, with_h: bool, with_x: bool| -> f64 {
            let row = g * hid + u;
            let mut s =
                wts.b_ih[row] as f64 * with_x as u8 as f64 + wts.b_hh[row] as f64 * with_h as u8 as f64;
            if with_x {
                s += dot(&wts.w_ih, row, x, in_w);
            }
            if with_h {
                s += dot(&wts.w_hh, row, h, hid);
            }
            s
        };
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        (0..hid)
            .map(|u| match gates {
                Gates::Lstm => {
                    let (i, f, g, o) = (
                        sig(pre(0, u, true, true)),
                        sig(pre(1, u, true, true)),
                        pre(2, u, true, true).tanh(),
                        sig(pre(3, u, true, true)),
                    );
                    c[u] = f * c[u] + i * g;
                    o * c[u].tanh()
                }
                Gates::Gru => {
                    let r = sig(pre(0, u, true, true));
                    let z = sig(pre(1, u, true, true));
                    let n = (pre(2, u, false, true) + r * pre(2, u, true, false)).tanh();
                    (1.0 - z) * n + z * h[u] as f64
                }
                Gates::Rnn { relu } => {
                    let v = pre(0, u, true, true);
                    if relu {
                        v.max(0.0)
                    } else {
                        v.tanh()
                    }
                }
            })
            .collect()
    }

    struct Wts {
        w_ih: Vec<f32>,
        w_hh: Vec<f32>,
        b_ih: Vec<f32>,
        b_hh: Vec<f32>,
    }

    fn weights(g: usize, in_w: usize, hid: usize, seed: u64) -> Wts {
        let mut rng = SplitMix::new(seed);
        let scale = 1.0 / (hid as f32).sqrt();
        let mut v = |n: usize| (0..n).map(|_| rng.normal() * scale).collect::<Vec<f32>>();
        Wts {
            w_ih: v(g * hid * in_w),
            w_hh: v(g * hid * hid),
            b_ih: v(g * hid),
            b_hh: v(g * hid),
        }
    }

    fn cells() -> [(Gates, usize); 4] {
        [
            (Gates::Lstm, 4),
            (Gates::Gru, 3),
            (Gates::Rnn { relu: false }, 1),
            (Gates::Rnn { relu: true }, 1),
        ]
    }

    /// The precisions this CPU runs.
    fn precisions() -> Vec<Precision> {
        let mut p = vec![];
        if enabled() {
            p.push(Precision::F32);
        } else {
            eprintln!("no AVX-512F here: the fused kernel is not built, nothing to check");
        }
        if bf16_supported() {
            p.push(Precision::Bf16);
        } else {
            eprintln!("no AVX512_BF16 here: the bf16 kernel is not checked");
        }
        p
    }

    /// One step of `n` rows through a fresh cell: (h written with a row stride of
    /// `hid + 3`, c after the step).
    #[allow(clippy::too_many_arguments)]
    fn step(
        cell: &FusedCell,
        n: usize,
        in_w: usize,
        hid: usize,
        x: &[f32],
        h: &[f32],
        c0: &[f32],
        stride: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let mut out = vec![f32::NAN; n * stride];
        let mut c = c0.to_vec();
        cell.step(
            n,
            Rows {
                data: x,
                stride: in_w,
            },
            Rows { data: h, stride: hid },
            &mut c,
            RowsMut {
                data: &mut out,
                stride,
            },
            &mut Vec::new(),
        );
        (out, c)
    }

    #[test]
    fn matches_float64_reference() {
        for p in precisions() {
            // Against a reference that rounds what the kernel rounds: only the order of the
            // sums differs. (bf16's own error against f32 is what `inspect` measures.)
            let tol = match p {
                Precision::F32 => 2e-6,
                Precision::Bf16 => 1e-5,
            };
            for (gates, g) in cells() {
                // Widths around the panel and tile sizes: partial panels, partial tiles, odd
                // widths (a bf16 pair half empty).
                for &(in_w, hid, n) in &[(8, 128, 13), (3, 50, 7), (1, 16, 1), (17, 70, 49), (5, 131, 6)] {
                    let wts = weights(g, in_w, hid, 7 + hid as u64);
                    let cell = FusedCell::new(
                        gates,
                        p,
                        in_w,
                        hid,
                        &wts.w_ih,
                        &wts.w_hh,
                        Some(&wts.b_ih),
                        Some(&wts.b_hh),
                    )
                    .expect("supported");
                    let mut rng = SplitMix::new(3);
                    let x: Vec<f32> = (0..n * in_w).map(|_| rng.normal()).collect();
                    let h: Vec<f32> = (0..n * hid).map(|_| rng.normal() * 0.5).collect();
                    let c0: Vec<f32> = (0..n * hid).map(|_| rng.normal()).collect();
                    // Output rows wider than hid, as in a bidirectional layer's half.
                    let stride = hid + 3;
                    let (out, c) = step(&cell, n, in_w, hid, &x, &h, &c0, stride);
                    for r in 0..n {
                        let mut c64: Vec<f64> =
                            c0[r * hid..(r + 1) * hid].iter().map(|&v| v as f64).collect();
                        let want =
                            reference(gates, p, in_w, hid, &wts, &x[r * in_w..], &h[r * hid..], &mut c64);
                        for u in 0..hid {
                            let got = out[r * stride + u] as f64;
                            assert!(
                                (got - want[u]).abs() < tol,
                                "{p:?} {gates:?} {in_w}->{hid} row {r} unit {u}: {got} vs {}",
                                want[u]
                            );
                            if gates == Gates::Lstm {
                                assert!((c[r * hid + u] as f64 - c64[u]).abs() < tol);
                            }
                        }
                        assert!(
                            out[r * stride + hid..(r + 1) * stride].iter().all(|v| v.is_nan()),
                            "wrote past the row"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (up).
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_value(bf16_bits(-2.5)), -2.5);
        let mut out = [0u32; 2];
        to_pairs(&[1.0, -2.0, 0.5], &mut out);
        assert_eq!(out, [0xc000_3f80, 0x0000_3f00]);
    }

    #[test]
    fn vector_gates_match_float64() {
        if !enabled() {
            return;
        }
        let (mut worst_s, mut worst_t) = (0.0f64, 0.0f64);
        let mut x = -120.0f32;
        while x < 120.0 {
            let xs: [f32; LANES] = std::array::from_fn(|i| x + i as f32 * 1e-3);
            let (mut s, mut t) = ([0.0f32; LANES], [0.0f32; LANES]);
            // SAFETY: AVX-512F (enabled() above); arrays of 16 floats.
            unsafe { vector_gates(&xs, &mut s, &mut t) };
            for i in 0..LANES {
                let v = xs[i] as f64;
                worst_s = worst_s.max((s[i] as f64 - 1.0 / (1.0 + (-v).exp())).abs());
                worst_t = worst_t.max((t[i] as f64 - v.tanh()).abs());
                assert!(s[i].is_finite() && t[i].is_finite(), "at {v}");
            }
            x += 0.0173;
        }
        assert!(
            worst_s < 2e-7 && worst_t < 3e-7,
            "sigmoid {worst_s:e}, tanh {worst_t:e}"
        );
    }

    #[test]
    fn huge_preactivations_saturate() {
        if !enabled() {
            return;
        }
        for v in [1e13f32, 1e15, 1e20, f32::MAX, f32::INFINITY] {
            for (v, want) in [(v, 1.0f32), (-v, 0.0)] {
                let (mut s, mut t) = ([0.0; LANES], [0.0; LANES]);
                // SAFETY: AVX-512F (enabled() above); arrays of 16 floats.
                unsafe { vector_gates(&[v; LANES], &mut s, &mut t) };
                assert!(s.iter().all(|&y| (y - want).abs() < 1e-30), "sigmoid({v}): {s:?}");
                let tw = if want == 1.0 { 1.0 } else { -1.0 };
                assert!(t.iter().all(|&y| y == tw), "tanh({v}): {t:?}");
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn vector_gates(x: &[f32; LANES], s: &mut [f32; LANES], t: &mut [f32; LANES]) {
        // SAFETY: 16 floats each.
        unsafe {
            let v = _mm512_loadu_ps(x.as_ptr());
            _mm512_storeu_ps(s.as_mut_ptr(), lanes::sigmoid(v));
            _mm512_storeu_ps(t.as_mut_ptr(), lanes::tanh(v));
        }
    }

    #[test]
    fn rows_are_independent_of_batching() {
        let (in_w, hid, n) = (7, 40, 61);
        for p in precisions() {
            for (gates, g) in cells() {
                let wts = weights(g, in_w, hid, 11);
                let cell = FusedCell::new(gates, p, in_w, hid, &wts.w_ih, &wts.w_hh, Some(&wts.b_ih), None)
                    .expect("supported");
                let mut rng = SplitMix::new(9);
                let x: Vec<f32> = (0..n * in_w).map(|_| rng.normal()).collect();
                let h: Vec<f32> = (0..n * hid).map(|_| rng.normal()).collect();
                let c0: Vec<f32> = (0..n * hid).map(|_| rng.normal()).collect();
                let run = |from: usize, to: usize| {
                    step(
                        &cell,
                        to - from,
                        in_w,
                        hid,
                        &x[from * in_w..],
                        &h[from * hid..],
                        &c0[from * hid..to * hid],
                        hid,
                    )
                };
                let (all, call) = run(0, n);
                // Every split point, so rows land in every tile position and block.
                for cut in [1, 5, 6, 7, 30, 48, 49, 60] {
                    let (a, ca) = run(0, cut);
                    let (b, cb) = run(cut, n);
                    assert_eq!([a, b].concat(), all, "{p:?} {gates:?} split at {cut}");
                    if gates == Gates::Lstm {
                        assert_eq!([ca, cb].concat(), call);
                    }
                }
            }
        }
    }
}
