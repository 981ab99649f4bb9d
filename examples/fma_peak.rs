//! The machine's own single-core FMA peak, f32 and bf16: the ceiling every kernel figure in
//! BENCHMARKS.md is set against (the machines change from day to day, so it is measured in
//! the same run as what it is compared with; `benches/ort_compare.py` and the step bench run
//! it).
//!
//!     cargo run --release --example fma_peak
//!
//! Prints `fma_peak_f32_gflops X` (16 independent chains of `vfmadd231ps zmm`, 32 FLOPs per
//! instruction; `ymm` and 16 FLOPs on a CPU without AVX-512), on an AVX-512 CPU also
//! `fma_peak_avx2_gflops` (the ymm loop: what `SEQFLOW_KERNEL=avx2` is measured against) and, on a CPU with AVX512_BF16,
//! `fma_peak_bf16_gflops Y` (16 chains of `vdpbf16ps zmm`, 64 FLOPs each: 32 bf16 products
//! summed into 16 f32 lanes), each the best of several timed loops. The loops are written in
//! assembly so that no compile-time target feature is needed and nothing but the
//! instructions being counted runs in them.

use std::time::Instant;

/// Iterations of the 16-instruction loop body per timed repetition.
const ITERS: u64 = 20_000_000;

/// Which vector width the CPU runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Width {
    /// AVX-512 (zmm, 16 f32 lanes).
    Avx512,
    /// AVX2 + FMA (ymm, 8 f32 lanes).
    Avx2,
}

/// The widest FMA this CPU runs, if any.
pub fn width() -> Option<Width> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Some(Width::Avx512);
        }
        if std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2") {
            return Some(Width::Avx2);
        }
    }
    None
}

/// Whether the CPU has `vdpbf16ps` (AVX512_BF16).
pub fn has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// 16 independent accumulators `zmm0..zmm15`, each `op zmmN, zmm16, zmm17`.
#[cfg(target_arch = "x86_64")]
macro_rules! chains {
    ($op:literal) => {
        concat!(
            $op,
            " zmm0, zmm16, zmm17\n",
            $op,
            " zmm1, zmm16, zmm17\n",
            $op,
            " zmm2, zmm16, zmm17\n",
            $op,
            " zmm3, zmm16, zmm17\n",
            $op,
            " zmm4, zmm16, zmm17\n",
            $op,
            " zmm5, zmm16, zmm17\n",
            $op,
            " zmm6, zmm16, zmm17\n",
            $op,
            " zmm7, zmm16, zmm17\n",
            $op,
            " zmm8, zmm16, zmm17\n",
            $op,
            " zmm9, zmm16, zmm17\n",
            $op,
            " zmm10, zmm16, zmm17\n",
            $op,
            " zmm11, zmm16, zmm17\n",
            $op,
            " zmm12, zmm16, zmm17\n",
            $op,
            " zmm13, zmm16, zmm17\n",
            $op,
            " zmm14, zmm16, zmm17\n",
            $op,
            " zmm15, zmm16, zmm17\n",
        )
    };
}

/// The timed loop around a body: the lines (label `2:` among them) and `iters` turns of
/// `dec rcx; jnz 2b`, every vector register declared clobbered through the C ABI (they are
/// all caller-saved).
#[cfg(target_arch = "x86_64")]
macro_rules! counted_loop {
    ($iters:expr, $($line:expr),+ $(,)?) => {
        std::arch::asm!($($line,)+ "dec rcx", "jnz 2b", inout("rcx") $iters => _, clobber_abi("C"))
    };
}

/// Runs `iters` loop bodies of 16 independent instructions.
#[cfg(target_arch = "x86_64")]
fn run(kind: &str, iters: u64) {
    // SAFETY: the caller checked the CPU features; the loop touches only vector registers
    // (declared clobbered through the C ABI: every vector register is caller-saved) and the
    // counter register.
    unsafe {
        match kind {
            "zmm" => counted_loop!(
                iters,
                "vpxord zmm16, zmm16, zmm16",
                "vpxord zmm17, zmm17, zmm17",
                "2:",
                chains!("vfmadd231ps"),
            ),
            // AVX2 has 16 registers: 14 accumulators, two sources.
            "ymm" => counted_loop!(
                iters,
                "vpxor ymm14, ymm14, ymm14",
                "vpxor ymm15, ymm15, ymm15",
                "2:",
                "vfmadd231ps ymm0, ymm14, ymm15",
                "vfmadd231ps ymm1, ymm14, ymm15",
                "vfmadd231ps ymm2, ymm14, ymm15",
                "vfmadd231ps ymm3, ymm14, ymm15",
                "vfmadd231ps ymm4, ymm14, ymm15",
                "vfmadd231ps ymm5, ymm14, ymm15",
                "vfmadd231ps ymm6, ymm14, ymm15",
                "vfmadd231ps ymm7, ymm14, ymm15",
                "vfmadd231ps ymm8, ymm14, ymm15",
                "vfmadd231ps ymm9, ymm14, ymm15",
                "vfmadd231ps ymm10, ymm14, ymm15",
                "vfmadd231ps ymm11, ymm14, ymm15",
                "vfmadd231ps ymm12, ymm14, ymm15",
                "vfmadd231ps ymm13, ymm14, ymm15",
                "vfmadd231ps ymm0, ymm14, ymm15",
                "vfmadd231ps ymm1, ymm14, ymm15",
            ),
            "bf16" => counted_loop!(
                iters,
                "vpxord zmm16, zmm16, zmm16",
                "vpxord zmm17, zmm17, zmm17",
                "2:",
                chains!("vdpbf16ps"),
            ),
            _ => unreachable!(),
        }
    }
}

/// Best GFLOP/s over `reps` timed loops of `kind` (`zmm`, `ymm`, `bf16`).
#[cfg(target_arch = "x86_64")]
fn best(kind: &str, flops_per_instr: f64, reps: usize) -> f64 {
    run(kind, ITERS / 10); // warm up (clocks, power state)
    let mut best = 0.0f64;
    for _ in 0..reps {
        let t = Instant::now();
        run(kind, ITERS);
        let flops = ITERS as f64 * 16.0 * flops_per_instr;
        best = best.max(flops / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// The single-core f32 FMA peak in GFLOP/s (None: no FMA unit this code knows).
pub fn f32_gflops(reps: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        match width()? {
            Width::Avx512 => Some(best("zmm", 32.0, reps)),
            Width::Avx2 => Some(best("ymm", 16.0, reps)),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = reps;
        None
    }
}

/// The single-core f32 FMA peak at AVX2's width (ymm), on any CPU with AVX2 + FMA: the
/// ceiling of the AVX2 kernel, which an AVX-512 CPU also runs with `SEQFLOW_KERNEL=avx2`.
pub fn avx2_gflops(reps: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2");
        avx2.then(|| best("ymm", 16.0, reps))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = reps;
        None
    }
}

/// The single-core bf16 dot-product peak in GFLOP/s (None: no AVX512_BF16).
pub fn bf16_gflops(reps: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        has_bf16().then(|| best("bf16", 64.0, reps))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = reps;
        None
    }
}

#[allow(dead_code)]
fn main() {
    match f32_gflops(5) {
        Some(g) => println!("fma_peak_f32_gflops {g:.1} ({:?})", width().expect("width")),
        None => println!("fma_peak_f32_gflops unknown (no AVX2/AVX-512 FMA)"),
    }
    if width() == Some(Width::Avx512) {
        if let Some(g) = avx2_gflops(5) {
            println!("fma_peak_avx2_gflops {g:.1} (ymm, for the AVX2 kernel)");
        }
    }
    match bf16_gflops(5) {
        Some(g) => println!("fma_peak_bf16_gflops {g:.1}"),
        None => println!("fma_peak_bf16_gflops none (no AVX512_BF16)"),
    }
}
