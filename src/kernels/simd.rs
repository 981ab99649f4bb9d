//! The vectors the fused recurrent kernel computes with: one trait, [`Vector`], over AVX-512
//! (16 f32 lanes) and AVX2 + FMA (8 lanes), and the gate math written once on top of it.
//!
//! Why a trait: the kernel's tile loop, gate epilogue and partial-panel path are the same
//! algorithm at both widths; only the instructions differ. Every method is
//! `#[inline(always)]` and carries no `target_feature` of its own, so it compiles inside the
//! one `target_feature` entry point that instantiates it (`FusedCell::step_avx512`,
//! `step_avx2`, `step_bf16`). (Closures are avoided around intrinsics for the same reason: a
//! closure inside an inlined helper does not get its caller's features, and every intrinsic
//! in it becomes a call.)

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The instruction sets the fused kernel is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F and AVX-512DQ: 16 lanes, `vreduceps`/`vscalefps` in the gates.
    Avx512,
    /// AVX2 and FMA: 8 lanes (most x86 servers and desktops without AVX-512).
    Avx2,
}

impl Isa {
    /// f32 lanes per vector.
    pub fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
        }
    }

    /// The name `SEQFLOW_KERNEL` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
        }
    }
}

/// `2^f` on [0, 1): minimax for relative error, fitted in float64 (maximum 7.5e-8 with exact
/// coefficients, 1.5e-7 once the coefficients and Horner's steps round to f32).
#[cfg(target_arch = "x86_64")]
const EXP2: [f32; 6] = [
    0.999_999_94,
    0.693_153_1,
    0.240_153_61,
    0.055_826_318,
    0.008_989_341,
    0.001_877_576_7,
];

/// One vector of f32 lanes.
///
/// # Safety
/// Every method may be called only where the implementing type's instruction set is
/// available (the kernel only reaches them from its `target_feature` entry points, which the
/// dispatch chose for this CPU); pointers must be valid for `LANES` floats, and for the
/// aligned `load`/`store` aligned to the vector's width.
#[cfg(target_arch = "x86_64")]
pub(crate) trait Vector: Copy {
    /// f32 lanes.
    const LANES: usize;
    /// Rows per register tile: the tile loop keeps `4 ROWS` accumulators, `ROWS` broadcasts
    /// and one weight vector live, `5 ROWS + 1` registers: 31 of 32 zmm, 16 of 16 ymm.
    const TILE_ROWS: usize;
    /// Rows per block: a panel of weights is reused over this many rows while it sits in L1
    /// beside their hidden states (48 KB L1 for AVX-512 parts; 32 KB for most AVX2 ones).
    const ROW_BLOCK: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(v: f32) -> Self;
    /// `*p` in every lane.
    unsafe fn bcast(p: *const f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn loadu(p: *const f32) -> Self;
    unsafe fn store(p: *mut f32, v: Self);
    unsafe fn storeu(p: *mut f32, v: Self);
    unsafe fn add(a: Self, b: Self) -> Self;
    unsafe fn sub(a: Self, b: Self) -> Self;
    unsafe fn mul(a: Self, b: Self) -> Self;
    /// `a / b`, correctly rounded.
    unsafe fn div(a: Self, b: Self) -> Self;
    unsafe fn max(a: Self, b: Self) -> Self;
    /// `a b + c`, one rounding.
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
    /// `a b - c`, one rounding.
    unsafe fn fmsub(a: Self, b: Self, c: Self) -> Self;
    /// `2^t` for `t <= 127` (callers clamp above); below, it goes to (or toward) zero.
    /// `N` vectors stage by stage (see [`logistic_n`]).
    unsafe fn exp2_n<const N: usize>(t: [Self; N]) -> [Self; N];
}

/// `2^f` for `f` in [0, 1), by Horner over [`EXP2`], in place.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn exp2_fraction_n<V: Vector, const N: usize>(f: &mut [V; N]) {
    // SAFETY: the caller's, per `Vector`.
    unsafe {
        let x = *f;
        *f = [V::splat(EXP2[5]); N];
        for &c in EXP2[..5].iter().rev() {
            for (p, x) in f.iter_mut().zip(&x) {
                *p = V::fmadd(*p, *x, V::splat(c));
            }
        }
    }
}

/// AVX-512 vector (16 lanes).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct Avx512(pub __m512);

// SAFETY (every method): the trait's contract; AVX-512F and DQ are enabled in every caller.
#[cfg(target_arch = "x86_64")]
impl Vector for Avx512 {
    const LANES: usize = 16;
    const TILE_ROWS: usize = 6;
    const ROW_BLOCK: usize = 48;
    #[inline(always)]
    unsafe fn zero() -> Self {
        unsafe { Avx512(_mm512_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        unsafe { Avx512(_mm512_set1_ps(v)) }
    }
    #[inline(always)]
    unsafe fn bcast(p: *const f32) -> Self {
        unsafe { Avx512(_mm512_set1_ps(*p)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { Avx512(_mm512_load_ps(p)) }
    }
    #[inline(always)]
    unsafe fn loadu(p: *const f32) -> Self {
        unsafe { Avx512(_mm512_loadu_ps(p)) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        unsafe { _mm512_store_ps(p, v.0) }
    }
    #[inline(always)]
    unsafe fn storeu(p: *mut f32, v: Self) {
        unsafe { _mm512_storeu_ps(p, v.0) }
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        unsafe { Avx512(_mm512_add_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn sub(a: Self, b: Self) -> Self {
        unsafe { Avx512(_mm512_sub_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        unsafe { Avx512(_mm512_mul_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn div(a: Self, b: Self) -> Self {
        unsafe { Avx512(_mm512_div_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn max(a: Self, b: Self) -> Self {
        unsafe { Avx512(_mm512_max_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        unsafe { Avx512(_mm512_fmadd_ps(a.0, b.0, c.0)) }
    }
    #[inline(always)]
    unsafe fn fmsub(a: Self, b: Self, c: Self) -> Self {
        unsafe { Avx512(_mm512_fmsub_ps(a.0, b.0, c.0)) }
    }
    /// `vreduceps` gives the fraction `t - floor(t)` exactly (imm8 0x09: keep 0 fraction
    /// bits, round down, no precision exception) and `vscalefps` multiplies by
    /// `2^floor(t)`, underflowing to zero on its own: 7 operations. It is 0 for any `t`
    /// that is an integer (every `|t| >= 2^23`), so no clamp is needed below.
    #[inline(always)]
    unsafe fn exp2_n<const N: usize>(t: [Self; N]) -> [Self; N] {
        unsafe {
            let mut p = t;
            for p in p.iter_mut() {
                p.0 = _mm512_reduce_ps::<0x09>(p.0);
            }
            exp2_fraction_n(&mut p);
            for (p, t) in p.iter_mut().zip(&t) {
                p.0 = _mm512_scalef_ps(p.0, t.0);
            }
            p
        }
    }
}

/// AVX2 vector (8 lanes).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct Avx2(pub __m256);

// SAFETY (every method): the trait's contract; AVX2 and FMA are enabled in every caller.
#[cfg(target_arch = "x86_64")]
impl Vector for Avx2 {
    const LANES: usize = 8;
    const TILE_ROWS: usize = 3;
    const ROW_BLOCK: usize = 24;
    #[inline(always)]
    unsafe fn zero() -> Self {
        unsafe { Avx2(_mm256_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        unsafe { Avx2(_mm256_set1_ps(v)) }
    }
    #[inline(always)]
    unsafe fn bcast(p: *const f32) -> Self {
        unsafe { Avx2(_mm256_broadcast_ss(&*p)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { Avx2(_mm256_load_ps(p)) }
    }
    #[inline(always)]
    unsafe fn loadu(p: *const f32) -> Self {
        unsafe { Avx2(_mm256_loadu_ps(p)) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        unsafe { _mm256_store_ps(p, v.0) }
    }
    #[inline(always)]
    unsafe fn storeu(p: *mut f32, v: Self) {
        unsafe { _mm256_storeu_ps(p, v.0) }
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        unsafe { Avx2(_mm256_add_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn sub(a: Self, b: Self) -> Self {
        unsafe { Avx2(_mm256_sub_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        unsafe { Avx2(_mm256_mul_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn div(a: Self, b: Self) -> Self {
        unsafe { Avx2(_mm256_div_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn max(a: Self, b: Self) -> Self {
        unsafe { Avx2(_mm256_max_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        unsafe { Avx2(_mm256_fmadd_ps(a.0, b.0, c.0)) }
    }
    #[inline(always)]
    unsafe fn fmsub(a: Self, b: Self, c: Self) -> Self {
        unsafe { Avx2(_mm256_fmsub_ps(a.0, b.0, c.0)) }
    }
    /// `t` raised to -126 (2^-126 is below half an ulp of the 1 every caller adds it to),
    /// `floor` and the fraction, and `2^floor(t)` built in the exponent bits: 12 operations.
    #[inline(always)]
    unsafe fn exp2_n<const N: usize>(t: [Self; N]) -> [Self; N] {
        unsafe {
            let (mut n, mut p) = (t, t);
            for ((n, p), t) in n.iter_mut().zip(p.iter_mut()).zip(&t) {
                let t = _mm256_max_ps(t.0, _mm256_set1_ps(-126.0));
                n.0 = _mm256_round_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(t);
                p.0 = _mm256_sub_ps(t, n.0);
            }
            exp2_fraction_n(&mut p);
            for (p, n) in p.iter_mut().zip(&n) {
                let bits = _mm256_add_epi32(_mm256_cvtps_epi32(n.0), _mm256_set1_epi32(127));
                p.0 = _mm256_mul_ps(p.0, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(bits)));
            }
            p
        }
    }
}

/// `1 / (1 + 2^(scale x))` for `N` vectors stage by stage, `x` first raised to `low`.
///
/// Stage by stage: one value's gate is a chain of about 11 dependent operations, so `N`
/// independent chains keep the vector units busy. `low` keeps `scale x` within
/// [`Vector::exp2_n`]'s domain (at most 127: the AVX2 version builds `2^n` in exponent bits,
/// which would wrap past it and turn a saturated sigmoid into 1) and the quotient a normal
/// number; above, `exp2_n` goes to zero.
///
/// Why a division and not the hardware reciprocal estimate refined by Newton's method (what
/// this used before): on AMD Zen 5 `vdivps` is one operation on the divider, where the
/// estimate and its refinement took three with AVX-512 (`vrcp14ps` and one step) and five
/// with AVX2 (`vrcpps` and two), the steps' FMAs competing with the tile's products for the
/// FMA pipes. Measured there (`cargo bench --bench step`, LSTM h128): the step 3-4% faster
/// with AVX-512 and 3% with AVX2, and correctly rounded instead of within 2^-27. Not
/// measured on Intel, whose 512-bit division issues on the FMA ports; at h128 there are 5
/// divisions per 16 units and row against 544 product FMAs.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn logistic_n<V: Vector, const N: usize>(mut x: [V; N], scale: f32, low: f32) -> [V; N] {
    // SAFETY: the caller's, per `Vector`.
    unsafe {
        for x in x.iter_mut() {
            *x = V::mul(V::max(*x, V::splat(low)), V::splat(scale));
        }
        let mut d = V::exp2_n(x);
        for d in d.iter_mut() {
            *d = V::div(V::splat(1.0), V::add(*d, V::splat(1.0)));
        }
        d
    }
}

/// `1 / (1 + e^-x)`, for `N` vectors at once. `x` is first raised to -87.3, which keeps
/// `e^-x` finite and its reciprocal a normal number; the sigmoid there is 0 to f32 precision
/// anyway (the generic path clamps the same way).
///
/// # Safety
/// As for [`Vector`]'s methods.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn sigmoid_n<V: Vector, const N: usize>(x: [V; N]) -> [V; N] {
    // SAFETY: the caller's.
    unsafe { logistic_n(x, -std::f32::consts::LOG2_E, -87.3) }
}

/// `tanh(x) = 2 sigmoid(2x) - 1`, for `N` vectors at once (the doubling folded into the
/// scale).
///
/// # Safety
/// As for [`Vector`]'s methods.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn tanh_n<V: Vector, const N: usize>(x: [V; N]) -> [V; N] {
    // SAFETY: the caller's.
    unsafe {
        let mut s = logistic_n(x, -2.0 * std::f32::consts::LOG2_E, -43.6);
        for s in s.iter_mut() {
            *s = V::fmsub(*s, V::splat(2.0), V::splat(1.0));
        }
        s
    }
}
