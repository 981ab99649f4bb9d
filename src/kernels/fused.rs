//! The fused recurrent step: `b + [x h] · [W_ih; W_hh]^T` and the cell's gates in one pass
//! over register tiles, on CPUs with AVX-512 or AVX2 + FMA.
//!
//! Why: the generic path (per block of rows, one faer GEMM with `W_ih` and one with `W_hh`
//! into scratch, a gate pass over both, then a copy of `h` into the output rows) moves every
//! gate pre-activation through memory three times, and its first GEMM, with the input width
//! (often 8) as its depth, is mostly call overhead. Here the weights are packed once, at load,
//! into panels of 4 vectors' worth of columns: for an LSTM or a GRU, one vector of hidden
//! units (16 with AVX-512, 8 with AVX2) times 4 gate groups, so that one register tile holds
//! every gate of its units. A tile of up to 6 rows (AVX-512; 3 with AVX2) stays in registers
//! over the whole reduction (input, then hidden state); the gates run on it as soon as it is
//! complete, and `h` goes straight into the caller's output rows. The vector operations come
//! from `kernels::simd`, so both widths are one algorithm.
//!
//! **Invariance.** Every pre-activation is one FMA chain in a fixed order: the bias, then
//! `x[0..I]`, then `h[0..H]`, whichever rows share its tile or its call. A key's result
//! therefore does not depend on how keys are batched, which is what keeps a pipeline's
//! output bit-identical for any worker count (the property tests and the `-w` invariance
//! tests defend it; `tests::rows_are_independent_of_batching` here). The instruction set is
//! chosen once per process, so every key of a run goes through the same one; two processes
//! of a cluster on CPUs of different widths would agree only to about 1e-7.
//!
//! **Dispatch.** [`isa`]: AVX-512 (F and DQ) where the CPU has it, else AVX2 + FMA, else none,
//! and [`FusedCell::new`] returns `None`, so the caller keeps the faer path, which gives the
//! same results to within float rounding (about 1e-7). `SEQFLOW_KERNEL=avx2` picks the AVX2
//! kernel on an AVX-512 CPU and `SEQFLOW_KERNEL=generic` the faer path (for comparisons, and
//! so that this machine runs what other CPUs run).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::sync::OnceLock;

pub use super::simd::Isa;
#[cfg(target_arch = "x86_64")]
use super::simd::{sigmoid_n, tanh_n, Avx2, Avx512, Vector};

/// Column groups per panel (vector accumulators per tile row).
const GROUPS: usize = 4;
/// The most f32 lanes of any vector (the tile buffer's and scratch arrays' line width).
const MAX_LANES: usize = 16;
/// The most rows of any register tile.
#[cfg(target_arch = "x86_64")]
const MAX_TILE_ROWS: usize = 6;

/// Which cell's gates the epilogue applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gates {
    /// Gates `i f g o` in the four groups of a panel; `c' = f c + i g`, `h' = o tanh(c')`.
    Lstm,
    /// Groups `r`, `z`, `n` from the input (`nx`) and `n` from the hidden state (`nh`, kept
    /// apart because the reset gate multiplies it): `h' = (1 - z) tanh(nx + r nh) + z h`.
    Gru,
    /// 4 vectors of hidden units per panel: `h' = act(pre)`.
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

/// The instruction set the fused kernel runs on here, if any: AVX-512F + DQ, else AVX2 +
/// FMA; `SEQFLOW_KERNEL=avx2` asks for the second on a CPU that has both and
/// `SEQFLOW_KERNEL=generic` for none (other values are ignored). Decided once per process.
pub fn isa() -> Option<Isa> {
    static ISA: OnceLock<Option<Isa>> = OnceLock::new();
    *ISA.get_or_init(|| {
        let asked = std::env::var("SEQFLOW_KERNEL").unwrap_or_default();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx512 = has!("avx512f") && has!("avx512dq");
            let avx2 = has!("avx2") && has!("fma");
            match asked.as_str() {
                "generic" => None,
                _ if avx512 && asked != "avx2" => Some(Isa::Avx512),
                _ if avx2 => Some(Isa::Avx2),
                _ => None,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = asked;
            None
        }
    })
}

/// Whether the fused kernel runs here (see [`isa`]).
pub fn enabled() -> bool {
    isa().is_some()
}

/// Whether this CPU runs the bf16 kernel: the fused kernel runs on AVX-512 and the CPU has
/// AVX512_BF16.
pub fn bf16_supported() -> bool {
    isa() == Some(Isa::Avx512) && cpu_has_bf16()
}

/// Why the bf16 kernel does not run here (`None` when it does): for a model file's message.
pub fn bf16_refusal() -> Option<String> {
    match (bf16_supported(), cpu_has_bf16(), isa()) {
        (true, ..) => None,
        (_, false, _) => Some("this CPU has none".into()),
        (_, true, None) => Some("the fused kernels are switched off (SEQFLOW_KERNEL=generic)".into()),
        (_, true, Some(i)) => Some(format!(
            "the AVX-512 kernel is switched off (SEQFLOW_KERNEL={})",
            i.as_str()
        )),
    }
}

fn cpu_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512bf16");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// 64 bytes of packed weights, aligned so that every vector load of the tile loop is: 16
/// f32 (or for the bf16 kernel 16 pairs of bf16, the bit patterns stored as f32).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
struct Line([f32; MAX_LANES]);

/// f32 values in 64-byte-aligned storage.
#[derive(Debug, Clone)]
struct Aligned(Vec<Line>);

impl Aligned {
    fn zeros(len: usize) -> Aligned {
        Aligned(vec![Line([0.0; MAX_LANES]); len.div_ceil(MAX_LANES)])
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        let len = self.0.len() * MAX_LANES;
        // SAFETY: `Line` is `repr(C)` over `[f32; 16]` with no padding (64 bytes, aligned to
        // 64), so the lines are `len` contiguous floats.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<f32>(), len) }
    }

    fn as_ptr(&self) -> *const f32 {
        self.0.as_ptr().cast::<f32>()
    }
}

/// The weights and biases of one direction of one recurrent layer, packed for the kernel.
#[derive(Debug, Clone)]
pub struct FusedCell {
    gates: Gates,
    precision: Precision,
    isa: Isa,
    in_w: usize,
    hid: usize,
    panels: usize,
    /// Per panel, `kx` reduction rows of [`FusedCell::lines_of`] vectors multiplying the
    /// input, then `kh` such rows multiplying `h`: in f32 one row per value (`kx = in_w`,
    /// `kh = hid`), in bf16 one row per pair of values (`x[2k]` in each lane's low half).
    /// Columns past the last unit and values past an odd width are zero. A GRU has 3 vectors
    /// per row: `r z nx` for x, `r z nh` for h (a zero fourth would cost a third more FMAs).
    w: Aligned,
    /// Reduction rows of the input and of the hidden segment.
    kx: usize,
    kh: usize,
    /// Per panel, `GROUPS` vectors: each column's bias (the accumulators' starting value).
    bias: Aligned,
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

/// PyTorch's tensors of one direction of one recurrent layer, gates in PyTorch's order.
#[derive(Debug, Clone, Copy)]
pub struct Tensors<'a> {
    /// `weight_ih`, `[G*hid x in_w]`.
    pub w_ih: &'a [f32],
    /// `weight_hh`, `[G*hid x hid]`.
    pub w_hh: &'a [f32],
    /// `bias_ih`, `[G*hid]`, if the layer has biases.
    pub b_ih: Option<&'a [f32]>,
    /// `bias_hh`, `[G*hid]`, if the layer has biases.
    pub b_hh: Option<&'a [f32]>,
}

impl FusedCell {
    /// Packs one direction of one layer for this CPU's [`isa`]. `None` when the fused kernel
    /// does not run here (or, for bf16, [`bf16_supported`] is false; callers check that
    /// first, to say so).
    pub fn new(
        gates: Gates,
        precision: Precision,
        in_w: usize,
        hid: usize,
        t: Tensors<'_>,
    ) -> Option<FusedCell> {
        if precision == Precision::Bf16 && !bf16_supported() {
            return None;
        }
        Self::for_isa(isa()?, gates, precision, in_w, hid, t)
    }

    /// [`FusedCell::new`] for a given instruction set, which the caller has checked this CPU
    /// runs (bf16 only on AVX-512). `None` for an empty layer.
    fn for_isa(
        isa: Isa,
        gates: Gates,
        precision: Precision,
        in_w: usize,
        hid: usize,
        t: Tensors<'_>,
    ) -> Option<FusedCell> {
        let Tensors {
            w_ih,
            w_hh,
            b_ih,
            b_hh,
        } = t;
        if in_w == 0 || hid == 0 || (precision == Precision::Bf16 && isa != Isa::Avx512) {
            return None;
        }
        let lanes = isa.lanes();
        let (kx, kh) = match precision {
            Precision::F32 => (in_w, hid),
            Precision::Bf16 => (in_w.div_ceil(2), hid.div_ceil(2)),
        };
        let units = Self::units_per_panel(gates, lanes);
        let panels = hid.div_ceil(units);
        let lines = Self::lines_of(gates);
        let per_panel = (kx + kh) * lines * lanes;
        let mut w = Aligned::zeros(panels * per_panel);
        let packed = w.as_mut_slice();
        // Value `k` of a segment goes to reduction row `k` (f32) or to half `k % 2` of pair
        // row `k / 2` (bf16).
        let put = |slot: &mut f32, k: usize, v: f32| match precision {
            Precision::F32 => *slot = v,
            Precision::Bf16 => {
                let bits = slot.to_bits();
                let half = (bf16_bits(v) as u32) << (16 * (k % 2));
                let keep = if k.is_multiple_of(2) {
                    0xffff_0000
                } else {
                    0x0000_ffff
                };
                *slot = f32::from_bits((bits & keep) | half);
            }
        };
        let row_of = |k: usize| match precision {
            Precision::F32 => k,
            Precision::Bf16 => k / 2,
        };
        let mut bias = Aligned::zeros(panels * GROUPS * lanes);
        let biases = bias.as_mut_slice();
        let b = |v: Option<&[f32]>, row: usize| v.map_or(0.0, |v| v[row]);
        for p in 0..panels {
            for q in 0..GROUPS {
                for l in 0..lanes {
                    let unit = match gates {
                        Gates::Rnn { .. } => p * units + q * lanes + l,
                        Gates::Lstm | Gates::Gru => p * units + l,
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
                    biases[(p * GROUPS + q) * lanes + l] = bias_v;
                    let panel = &mut packed[p * per_panel..(p + 1) * per_panel];
                    // The GRU's x rows hold groups 0 1 2 and its h rows groups 0 1 3.
                    let (x_line, h_line) = match gates {
                        Gates::Gru => (q, q.min(2)),
                        _ => (q, q),
                    };
                    if let Some(row) = x_row {
                        for kk in 0..in_w {
                            let at = (row_of(kk) * lines + x_line) * lanes + l;
                            put(&mut panel[at], kk, w_ih[row * in_w + kk]);
                        }
                    }
                    if let Some(row) = h_row {
                        for kk in 0..hid {
                            let at = ((kx + row_of(kk)) * lines + h_line) * lanes + l;
                            put(&mut panel[at], kk, w_hh[row * hid + kk]);
                        }
                    }
                }
            }
        }
        Some(FusedCell {
            gates,
            precision,
            isa,
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

    /// The instruction set this cell was packed for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Weight vectors per reduction row.
    fn lines_of(gates: Gates) -> usize {
        match gates {
            Gates::Gru => 3,
            Gates::Lstm | Gates::Rnn { .. } => GROUPS,
        }
    }

    /// Hidden units per panel: one vector's worth for a gated cell (its 4 gate groups fill
    /// the panel), four for an RNN.
    fn units_per_panel(gates: Gates, lanes: usize) -> usize {
        match gates {
            Gates::Rnn { .. } => GROUPS * lanes,
            Gates::Lstm | Gates::Gru => lanes,
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
        // SAFETY: a FusedCell exists only for an instruction set `isa()` saw on this CPU
        // (and, in bf16, `bf16_supported()` AVX512_BF16); every row span was checked against
        // its slice above.
        unsafe {
            match (self.isa, self.precision) {
                (Isa::Avx512, Precision::F32) => self.step_avx512(n, x, h, c, out),
                (Isa::Avx512, Precision::Bf16) => self.step_bf16(n, x, h, c, out, scratch),
                (Isa::Avx2, _) => self.step_avx2(n, x, h, c, out),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("FusedCell is only built on x86_64");
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn step_avx512(&self, n: usize, x: Rows<'_>, h: Rows<'_>, c: &mut [f32], out: RowsMut<'_>) {
        // SAFETY: AVX-512F and DQ, per this function's features; the spans `step` checked.
        unsafe { self.step_f32::<Avx512>(n, x, h, c, out) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn step_avx2(&self, n: usize, x: Rows<'_>, h: Rows<'_>, c: &mut [f32], out: RowsMut<'_>) {
        // SAFETY: AVX2 and FMA, per this function's features; the spans `step` checked.
        unsafe { self.step_f32::<Avx2>(n, x, h, c, out) }
    }

    /// The f32 kernel at width `V`, block by block.
    ///
    /// # Safety
    /// `V`'s instruction set present; the spans `step` checked.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn step_f32<V: Vector>(
        &self,
        n: usize,
        x: Rows<'_>,
        h: Rows<'_>,
        c: &mut [f32],
        out: RowsMut<'_>,
    ) {
        for r0 in (0..n).step_by(V::ROW_BLOCK) {
            let r1 = n.min(r0 + V::ROW_BLOCK);
            // SAFETY: rows r0..r1 are < n, whose spans `step` checked.
            unsafe {
                self.block::<V, F32<V>>(
                    r0,
                    r1,
                    &h,
                    c,
                    &mut *out.data,
                    out.stride,
                    x.data.as_ptr(),
                    x.stride,
                    h.data.as_ptr(),
                    h.stride,
                    0,
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
        let block = <Avx512 as Vector>::ROW_BLOCK;
        // Every pair a block reads is written first: grown, never zero-filled per call.
        if scratch.len() < block.min(n) * kp {
            scratch.resize(block.min(n) * kp, 0);
        }
        for r0 in (0..n).step_by(block) {
            let r1 = n.min(r0 + block);
            for (i, pairs) in scratch.chunks_exact_mut(kp).take(r1 - r0).enumerate() {
                let r = r0 + i;
                let (px, ph) = pairs.split_at_mut(self.kx);
                // SAFETY: AVX-512F and BF16, per this function's features.
                unsafe {
                    to_pairs_avx512(&x.data[r * x.stride..r * x.stride + self.in_w], px);
                    to_pairs_avx512(&h.data[r * h.stride..r * h.stride + self.hid], ph);
                }
            }
            let a = scratch.as_ptr();
            // SAFETY: rows r0..r1 are < n, whose spans `step` checked; `scratch` holds
            // r1 - r0 rows of kp pairs, row t - r0 for row t; AVX-512F, DQ and BF16 per this
            // function's features.
            unsafe {
                self.block::<Avx512, Bf16>(
                    r0,
                    r1,
                    &h,
                    c,
                    &mut *out.data,
                    out.stride,
                    a,
                    kp,
                    a.add(self.kx),
                    kp,
                    r0,
                );
            }
        }
    }

    /// Rows `r0..r1` through every panel: for each register tile of up to `V::TILE_ROWS`
    /// rows, the reduction into the tile buffer, then the epilogue's gates. Row `t` of the
    /// products' operands is `xs + (t - base) * xst` and `hs + (t - base) * hst`; `h` is the
    /// previous state in f32, which a GRU's epilogue reads.
    ///
    /// # Safety
    /// `V`'s (and `P`'s) instruction set present; rows `r0..r1` within the spans `step`
    /// checked, and within the operands' rows.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<V: Vector, P: Product<V = V>>(
        &self,
        r0: usize,
        r1: usize,
        h: &Rows<'_>,
        c: &mut [f32],
        out: &mut [f32],
        out_stride: usize,
        xs: *const P::Elem,
        xst: usize,
        hs: *const P::Elem,
        hst: usize,
        base: usize,
    ) {
        let lanes = V::LANES;
        let per_panel = (self.kx + self.kh) * Self::lines_of(self.gates) * lanes;
        let units = Self::units_per_panel(self.gates, lanes);
        let gru = self.gates == Gates::Gru;
        let mut tile = [Line([0.0; MAX_LANES]); MAX_TILE_ROWS * GROUPS];
        let tp = tile.as_mut_ptr().cast::<f32>();
        for p in 0..self.panels {
            // SAFETY: panel p's weights and biases lie inside the packed buffers.
            let (w, bias) = unsafe {
                (
                    self.w.as_ptr().add(p * per_panel),
                    self.bias.as_ptr().add(p * GROUPS * lanes),
                )
            };
            let full = (p + 1) * units <= self.hid;
            let mut t = r0;
            while t < r1 {
                let m = V::TILE_ROWS.min(r1 - t);
                // SAFETY: the caller's contract; rows t..t+m are in r0..r1; the tile buffer
                // holds MAX_TILE_ROWS * GROUPS lines, 64-byte aligned.
                unsafe {
                    let (x, h) = (xs.add((t - base) * xst), hs.add((t - base) * hst));
                    let (kx, kh) = (self.kx, self.kh);
                    match (m, gru) {
                        (6, false) => tile_kernel::<P, 6, false>(w, bias, kx, kh, x, xst, h, hst, tp),
                        (5, false) => tile_kernel::<P, 5, false>(w, bias, kx, kh, x, xst, h, hst, tp),
                        (4, false) => tile_kernel::<P, 4, false>(w, bias, kx, kh, x, xst, h, hst, tp),
                        (3, false) => tile_kernel::<P, 3, false>(w, bias, kx, kh, x, xst, h, hst, tp),
                        (2, false) => tile_kernel::<P, 2, false>(w, bias, kx, kh, x, xst, h, hst, tp),
                        (_, false) => tile_kernel::<P, 1, false>(w, bias, kx, kh, x, xst, h, hst, tp),
                        (6, true) => tile_kernel::<P, 6, true>(w, bias, kx, kh, x, xst, h, hst, tp),
                        (5, true) => tile_kernel::<P, 5, true>(w, bias, kx, kh, x, xst, h, hst, tp),
                        (4, true) => tile_kernel::<P, 4, true>(w, bias, kx, kh, x, xst, h, hst, tp),
                        (3, true) => tile_kernel::<P, 3, true>(w, bias, kx, kh, x, xst, h, hst, tp),
                        (2, true) => tile_kernel::<P, 2, true>(w, bias, kx, kh, x, xst, h, hst, tp),
                        (_, true) => tile_kernel::<P, 1, true>(w, bias, kx, kh, x, xst, h, hst, tp),
                    }
                }
                // SAFETY: V's instruction set, as for this function; rows t..t+m exist in
                // `c` (LSTM), `h` and `out` (the spans `step` checked).
                unsafe {
                    if full {
                        let u0 = p * units;
                        let cs = match self.gates {
                            Gates::Lstm => &mut c[t * self.hid + u0..],
                            _ => &mut c[..0],
                        };
                        let hs = &h.data[t * h.stride + u0..];
                        let os = &mut out[t * out_stride + u0..];
                        let rows = (cs, self.hid, hs, h.stride, os, out_stride);
                        match m {
                            6 => self.gates_on::<V, 6>(&tile, 0, rows),
                            5 => self.gates_on::<V, 5>(&tile, 0, rows),
                            4 => self.gates_on::<V, 4>(&tile, 0, rows),
                            3 => self.gates_on::<V, 3>(&tile, 0, rows),
                            2 => self.gates_on::<V, 2>(&tile, 0, rows),
                            _ => self.gates_on::<V, 1>(&tile, 0, rows),
                        }
                    } else {
                        for i in 0..m {
                            self.partial_row::<V>(p, t + i, &tile, i, h, c, out, out_stride);
                        }
                    }
                }
                t += m;
            }
        }
    }

    /// Applies the gates to `M` rows of a finished tile, from tile row `i0`. `rows` holds, for
    /// the panel's first unit, the LSTM's cell state (`c`, written back), the previous hidden
    /// state (`h`, which a GRU reads) and the output (`out`), each with its row stride: row
    /// `r`'s vector `q` is at `r * stride + q * lanes`. Every vector of those rows exists.
    ///
    /// Why across rows: one row's gates are a few chains of about 11 dependent operations
    /// (the exponential's polynomial, then a division), so row by row the vector units
    /// mostly wait on latency. Here each stage runs over every row before the next stage, so
    /// `M` independent chains are in flight. The operations per value do not depend on `M`,
    /// so neither do the results: a partial panel's rows come here one at a time
    /// ([`Self::partial_row`]).
    ///
    /// # Safety
    /// `V`'s instruction set present (called from `block` only).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn gates_on<V: Vector, const M: usize>(
        &self,
        tile: &[Line; MAX_TILE_ROWS * GROUPS],
        i0: usize,
        (c, c_stride, h, h_stride, out, out_stride): (&mut [f32], usize, &[f32], usize, &mut [f32], usize),
    ) {
        let lanes = V::LANES;
        // SAFETY (every block below): V's instruction set, per this function's contract;
        // the tile lines are 64-byte aligned; every row pointer comes from a subslice of
        // `lanes` floats (checked).
        unsafe {
            // (A macro, not a closure: see `super::simd` on closures around intrinsics.)
            macro_rules! lines {
                ($q:expr) => {{
                    let mut v = [V::zero(); M];
                    for (r, v) in v.iter_mut().enumerate() {
                        *v = V::load(tile[(i0 + r) * GROUPS + $q].0.as_ptr());
                    }
                    v
                }};
            }
            match self.gates {
                Gates::Lstm => {
                    let i = sigmoid_n(lines!(0));
                    let g = tanh_n(lines!(2));
                    let mut cn = [V::zero(); M];
                    for (r, cn) in cn.iter_mut().enumerate() {
                        *cn = V::mul(i[r], g[r]);
                    }
                    let f = sigmoid_n(lines!(1));
                    for (r, cn) in cn.iter_mut().enumerate() {
                        let cp = c[r * c_stride..][..lanes].as_mut_ptr();
                        *cn = V::fmadd(f[r], V::loadu(cp), *cn);
                        V::storeu(cp, *cn);
                    }
                    let th = tanh_n(cn);
                    let o = sigmoid_n(lines!(3));
                    for r in 0..M {
                        V::storeu(out[r * out_stride..][..lanes].as_mut_ptr(), V::mul(o[r], th[r]));
                    }
                }
                Gates::Gru => {
                    let rg = sigmoid_n(lines!(0));
                    let (nx, nh) = (lines!(2), lines!(3));
                    let mut a = [V::zero(); M];
                    for (r, a) in a.iter_mut().enumerate() {
                        *a = V::fmadd(rg[r], nh[r], nx[r]);
                    }
                    let n = tanh_n(a);
                    let z = sigmoid_n(lines!(1));
                    for r in 0..M {
                        let hp = h[r * h_stride..][..lanes].as_ptr();
                        // (1 - z) n + z h, as n + z (h - n).
                        let hn = V::fmadd(z[r], V::sub(V::loadu(hp), n[r]), n[r]);
                        V::storeu(out[r * out_stride..][..lanes].as_mut_ptr(), hn);
                    }
                }
                Gates::Rnn { relu } => {
                    for q in 0..GROUPS {
                        let mut a = lines!(q);
                        if relu {
                            for a in a.iter_mut() {
                                *a = V::max(*a, V::zero());
                            }
                        } else {
                            a = tanh_n(a);
                        }
                        for (r, a) in a.iter().enumerate() {
                            V::storeu(out[r * out_stride + q * lanes..][..lanes].as_mut_ptr(), *a);
                        }
                    }
                }
            }
        }
    }

    /// Tile row `i` (matrix row `r`) of the last panel of a hidden size that does not fill
    /// it: its units' state goes through full-width local copies into [`Self::gates_on`], so
    /// nothing past the units is read or written.
    ///
    /// # Safety
    /// `V`'s instruction set present (called from `block` only).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn partial_row<V: Vector>(
        &self,
        p: usize,
        r: usize,
        tile: &[Line; MAX_TILE_ROWS * GROUPS],
        i: usize,
        h: &Rows<'_>,
        c: &mut [f32],
        out: &mut [f32],
        out_stride: usize,
    ) {
        let hid = self.hid;
        let units = Self::units_per_panel(self.gates, V::LANES);
        let u0 = p * units;
        let n = units.min(hid - u0);
        let (mut cl, mut hl, mut ol) = (
            [0.0; GROUPS * MAX_LANES],
            [0.0; GROUPS * MAX_LANES],
            [0.0; GROUPS * MAX_LANES],
        );
        let lstm = self.gates == Gates::Lstm;
        if lstm {
            cl[..n].copy_from_slice(&c[r * hid + u0..r * hid + u0 + n]);
        }
        hl[..n].copy_from_slice(&h.data[r * h.stride + u0..r * h.stride + u0 + n]);
        // SAFETY: V's instruction set, per this function's contract; the local rows hold
        // every vector of a panel.
        unsafe { self.gates_on::<V, 1>(tile, i, (&mut cl, 0, &hl, 0, &mut ol, 0)) };
        if lstm {
            c[r * hid + u0..r * hid + u0 + n].copy_from_slice(&cl[..n]);
        }
        out[r * out_stride + u0..r * out_stride + u0 + n].copy_from_slice(&ol[..n]);
    }
}

/// How a tile's products are formed: what one reduction row's operand is, how it becomes a
/// vector, and the multiply-accumulate.
///
/// # Safety
/// As for [`Vector`]: only where the instruction set is present; `bcast` reads one element.
#[cfg(target_arch = "x86_64")]
trait Product {
    /// The vector the accumulators are.
    type V: Vector;
    /// One reduction row's operand: an f32, or a pair of bf16 in a u32.
    type Elem;
    unsafe fn bcast(p: *const Self::Elem) -> Self::V;
    /// `acc + v w` (one FMA in f32; two products per lane in bf16).
    unsafe fn mac(acc: Self::V, v: Self::V, w: Self::V) -> Self::V;
}

/// f32: one FMA per value, at any width.
#[cfg(target_arch = "x86_64")]
struct F32<V>(std::marker::PhantomData<V>);

#[cfg(target_arch = "x86_64")]
impl<V: Vector> Product for F32<V> {
    type V = V;
    type Elem = f32;
    #[inline(always)]
    unsafe fn bcast(p: *const f32) -> V {
        // SAFETY: the trait's contract.
        unsafe { V::bcast(p) }
    }
    #[inline(always)]
    unsafe fn mac(acc: V, v: V, w: V) -> V {
        // SAFETY: the trait's contract.
        unsafe { V::fmadd(v, w, acc) }
    }
}

/// bf16: one `vdpbf16ps` per pair of values (two products, f32 accumulation); AVX-512 only.
#[cfg(target_arch = "x86_64")]
struct Bf16;

#[cfg(target_arch = "x86_64")]
impl Product for Bf16 {
    type V = Avx512;
    type Elem = u32;
    #[inline(always)]
    unsafe fn bcast(p: *const u32) -> Avx512 {
        // SAFETY: the trait's contract.
        unsafe { Avx512(_mm512_castsi512_ps(_mm512_set1_epi32(*p as i32))) }
    }
    #[inline(always)]
    unsafe fn mac(acc: Avx512, v: Avx512, w: Avx512) -> Avx512 {
        // SAFETY: the trait's contract (AVX512_BF16 present); reinterpreting 64 bytes of
        // bf16 pairs, both types plain vectors.
        unsafe {
            let (v, w) = (
                std::mem::transmute::<__m512, __m512bh>(v.0),
                std::mem::transmute::<__m512, __m512bh>(w.0),
            );
            Avx512(_mm512_dpbf16_ps(acc.0, v, w))
        }
    }
}

/// A register tile: `M` rows x 4 vectors of columns, accumulators started at the bias, then
/// for each of the `kx` input and `kh` hidden reduction rows, in order, one
/// multiply-accumulate per (row, column). With `GRU`, each reduction row holds 3 vectors: x
/// rows feed groups 0 1 2, h rows groups 0 1 3. The tile goes to `out` (row `r`, group `q`
/// at line `r * 4 + q`).
///
/// # Safety
/// `P`'s instruction set present; `w` holds `kx + kh` reduction rows of 4 vectors (3 with
/// `GRU`) and `bias` 4 vectors, all aligned to the vector width; `x + r*xst` holds `kx` and
/// `h + r*hst` holds `kh` elements for every `r < M`; `out` has room for `M * 4` lines of
/// 16 floats, 64-byte aligned.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_kernel<P: Product, const M: usize, const GRU: bool>(
    w: *const f32,
    bias: *const f32,
    kx: usize,
    kh: usize,
    x: *const P::Elem,
    xst: usize,
    h: *const P::Elem,
    hst: usize,
    out: *mut f32,
) {
    let lanes = <P::V as Vector>::LANES;
    // SAFETY: the contract above.
    unsafe {
        let mut b = [<P::V as Vector>::zero(); GROUPS];
        for (q, b) in b.iter_mut().enumerate() {
            *b = <P::V as Vector>::load(bias.add(q * lanes));
        }
        let mut acc = [b; M];
        let mut wp = w;
        // Macros, not closures, so that the loops compile inside the caller's
        // `target_feature` context.
        // Per reduction row: the M broadcasts first, then one weight vector at a time into
        // its M accumulators. Live at once: 4M accumulators, M broadcasts and one weight
        // vector, 5M + 1 registers: 31 of 32 zmm at M = 6, 16 of 16 ymm at M = 3 (loading the
        // 4 weight vectors first would need 5M + 4, and spill on AVX2).
        macro_rules! reduce {
            ($a:expr, $stride:expr, $depth:expr, $groups:expr) => {
                for k in 0..$depth {
                    let mut v = [<P::V as Vector>::zero(); M];
                    for (r, v) in v.iter_mut().enumerate() {
                        *v = P::bcast($a.add(r * $stride + k));
                    }
                    for (j, &q) in $groups.iter().enumerate() {
                        let w = <P::V as Vector>::load(wp.add(j * lanes));
                        for (acc, v) in acc.iter_mut().zip(&v) {
                            acc[q] = P::mac(acc[q], *v, w);
                        }
                    }
                    wp = wp.add($groups.len() * lanes);
                }
            };
        }
        if GRU {
            reduce!(x, xst, kx, [0, 1, 2]);
            reduce!(h, hst, kh, [0, 1, 3]);
        } else {
            reduce!(x, xst, kx, [0, 1, 2, 3]);
            reduce!(h, hst, kh, [0, 1, 2, 3]);
        }
        for (r, acc) in acc.iter().enumerate() {
            for (q, &v) in acc.iter().enumerate() {
                <P::V as Vector>::store(out.add((r * GROUPS + q) * MAX_LANES), v);
            }
        }
    }
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

/// [`to_pairs`] with `vcvtne2ps2bf16`: 32 values per instruction (masked at the end), where
/// the scalar loop took 6% of a whole bf16 job. The same rounding (to nearest, ties to even)
/// except that the instruction flushes subnormal inputs (below 1.2e-38) to zero.
///
/// # Safety
/// AVX-512F and AVX512_BF16 present.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn to_pairs_avx512(v: &[f32], out: &mut [u32]) {
    assert_eq!(out.len(), v.len().div_ceil(2), "bf16 pairs: one per two values");
    let mask = |n: usize| -> u16 { ((1u32 << n.min(16)) - 1) as u16 };
    for (i, o) in (0..v.len()).step_by(32).zip((0..out.len()).step_by(16)) {
        let n = v.len() - i;
        // SAFETY: AVX-512F and BF16 per this function's contract; the masks keep every load
        // inside `v` and every store inside `out` (masked-out lanes are not accessed).
        unsafe {
            let lo = _mm512_maskz_loadu_ps(mask(n), v.as_ptr().add(i));
            let hi = _mm512_maskz_loadu_ps(mask(n.saturating_sub(16)), v.as_ptr().wrapping_add(i + 16));
            let pairs = _mm512_cvtne2ps_pbh(hi, lo);
            _mm512_mask_storeu_epi32(
                out.as_mut_ptr().add(o).cast::<i32>(),
                mask(out.len() - o),
                std::mem::transmute::<__m512bh, __m512i>(pairs),
            );
        }
    }
}

/// Values rounded to bf16 pairs: `out[k]` = `v[2k]` in the low half, `v[2k+1]` (or zero past
/// the end) in the high half. (The kernel uses [`to_pairs_avx512`]; this is its reference.)
#[cfg(test)]
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

    impl Wts {
        fn tensors(&self) -> Tensors<'_> {
            Tensors {
                w_ih: &self.w_ih,
                w_hh: &self.w_hh,
                b_ih: Some(&self.b_ih),
                b_hh: Some(&self.b_hh),
            }
        }
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

    /// The instruction sets this CPU runs (whatever `SEQFLOW_KERNEL` says: the tests check
    /// every kernel the machine can run).
    fn isas() -> Vec<Isa> {
        let mut v = vec![];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512dq") {
                v.push(Isa::Avx512);
            } else {
                eprintln!("no AVX-512 here: the AVX-512 kernel is not checked");
            }
            if has!("avx2") && has!("fma") {
                v.push(Isa::Avx2);
            } else {
                eprintln!("no AVX2 here: the AVX2 kernel is not checked");
            }
        }
        v
    }

    /// The kernels this CPU runs: every instruction set in f32, AVX-512 also in bf16.
    fn kernels() -> Vec<(Isa, Precision)> {
        let mut k: Vec<_> = isas().into_iter().map(|i| (i, Precision::F32)).collect();
        #[cfg(target_arch = "x86_64")]
        if isas().contains(&Isa::Avx512) && std::arch::is_x86_feature_detected!("avx512bf16") {
            k.push((Isa::Avx512, Precision::Bf16));
        } else {
            eprintln!("no AVX512_BF16 here: the bf16 kernel is not checked");
        }
        k
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
        for (isa, p) in kernels() {
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
                    let cell =
                        FusedCell::for_isa(isa, gates, p, in_w, hid, wts.tensors()).expect("supported");
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
                                "{isa:?} {p:?} {gates:?} {in_w}->{hid} row {r} unit {u}: {got} vs {}",
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
        // The kernel's vector conversion gives the same pairs at every length (masked tails,
        // odd counts), ties and carries into the exponent included.
        #[cfg(target_arch = "x86_64")]
        if kernels().contains(&(Isa::Avx512, Precision::Bf16)) {
            let mut rng = SplitMix::new(4);
            for len in [1usize, 2, 3, 15, 16, 17, 31, 32, 33, 64, 65, 136] {
                let v: Vec<f32> = (0..len)
                    .map(|i| match i % 4 {
                        0 => 1.0 + 1.0 / 256.0,
                        1 => f32::from_bits(0x3f80_7fff + (i as u32 & 1)),
                        _ => rng.normal() * 100.0,
                    })
                    .collect();
                let (mut want, mut got) = (vec![0; len.div_ceil(2)], vec![7; len.div_ceil(2)]);
                to_pairs(&v, &mut want);
                // SAFETY: kernels() saw AVX-512F and AVX512_BF16 on this CPU.
                unsafe { vector_pairs(&v, &mut got) };
                assert_eq!(got, want, "{len} values");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn vector_pairs(v: &[f32], out: &mut [u32]) {
        // SAFETY: this function's features.
        unsafe { to_pairs_avx512(v, out) }
    }

    #[test]
    fn vector_gates_match_float64() {
        for isa in isas() {
            let (mut worst_s, mut worst_t) = (0.0f64, 0.0f64);
            let mut x = -120.0f32;
            while x < 120.0 {
                let xs: [f32; MAX_LANES] = std::array::from_fn(|i| x + i as f32 * 1e-3);
                let (s, t) = vector_gates(isa, &xs);
                for i in 0..MAX_LANES {
                    let v = xs[i] as f64;
                    worst_s = worst_s.max((s[i] as f64 - 1.0 / (1.0 + (-v).exp())).abs());
                    worst_t = worst_t.max((t[i] as f64 - v.tanh()).abs());
                    assert!(s[i].is_finite() && t[i].is_finite(), "{isa:?} at {v}");
                }
                x += 0.0173;
            }
            assert!(
                worst_s < 2e-7 && worst_t < 3e-7,
                "{isa:?}: sigmoid {worst_s:e}, tanh {worst_t:e}"
            );
        }
    }

    #[test]
    fn huge_preactivations_saturate() {
        for isa in isas() {
            for v in [1e13f32, 1e15, 1e20, f32::MAX, f32::INFINITY] {
                for (v, want) in [(v, 1.0f32), (-v, 0.0)] {
                    let (s, t) = vector_gates(isa, &[v; MAX_LANES]);
                    assert!(
                        s.iter().all(|&y| (y - want).abs() < 1e-30),
                        "{isa:?} sigmoid({v}): {s:?}"
                    );
                    let tw = if want == 1.0 { 1.0 } else { -1.0 };
                    assert!(t.iter().all(|&y| y == tw), "{isa:?} tanh({v}): {t:?}");
                }
            }
        }
    }

    /// The kernel's sigmoid and tanh of 16 values on `isa` (which this CPU runs).
    fn vector_gates(isa: Isa, x: &[f32; MAX_LANES]) -> ([f32; MAX_LANES], [f32; MAX_LANES]) {
        let (mut s, mut t) = ([0.0; MAX_LANES], [0.0; MAX_LANES]);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isas()` saw the instruction set on this CPU; arrays of 16 floats.
        unsafe {
            match isa {
                Isa::Avx512 => gates_avx512(x, &mut s, &mut t),
                Isa::Avx2 => gates_avx2(x, &mut s, &mut t),
            }
        }
        (s, t)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn gates_avx512(x: &[f32; MAX_LANES], s: &mut [f32; MAX_LANES], t: &mut [f32; MAX_LANES]) {
        // SAFETY: AVX-512 per this function's features.
        unsafe { gates_with::<Avx512>(x, s, t) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn gates_avx2(x: &[f32; MAX_LANES], s: &mut [f32; MAX_LANES], t: &mut [f32; MAX_LANES]) {
        // SAFETY: AVX2 and FMA per this function's features.
        unsafe { gates_with::<Avx2>(x, s, t) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn gates_with<V: Vector>(
        x: &[f32; MAX_LANES],
        s: &mut [f32; MAX_LANES],
        t: &mut [f32; MAX_LANES],
    ) {
        // SAFETY: V's instruction set (the caller's features); 16 floats each.
        unsafe {
            for k in (0..MAX_LANES).step_by(V::LANES) {
                let v = V::loadu(x.as_ptr().add(k));
                V::storeu(s.as_mut_ptr().add(k), sigmoid_n([v])[0]);
                V::storeu(t.as_mut_ptr().add(k), tanh_n([v])[0]);
            }
        }
    }

    #[test]
    fn rows_are_independent_of_batching() {
        let (in_w, hid, n) = (7, 40, 61);
        for (isa, p) in kernels() {
            for (gates, g) in cells() {
                let wts = weights(g, in_w, hid, 11);
                let t = Tensors {
                    b_hh: None,
                    ..wts.tensors()
                };
                let cell = FusedCell::for_isa(isa, gates, p, in_w, hid, t).expect("supported");
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
                    assert_eq!([a, b].concat(), all, "{isa:?} {p:?} {gates:?} split at {cut}");
                    if gates == Gates::Lstm {
                        assert_eq!([ca, cb].concat(), call);
                    }
                }
            }
        }
    }
}
