//! faer's single-thread f32 GEMM speed on this machine, the reference that the recurrent
//! kernel is measured against (benches/ort_compare.py runs it in the same session):
//!
//!     cargo run --release --example faer_peak [-- H ...]
//!
//! Prints `faer_peak_gflops <best>` over a large square product and the recurrent shapes
//! `[1024 x (8+H)] * [(8+H) x 4H]` for each hidden size H (default 64 128), each the best of
//! several timed repetitions.
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use std::time::Instant;

fn gflops(m: usize, k: usize, n: usize) -> f64 {
    let a = Mat::<f32>::from_fn(m, k, |i, j| ((i * 3 + j) % 7) as f32 * 0.1);
    let b = Mat::<f32>::from_fn(k, n, |i, j| ((i + 5 * j) % 11) as f32 * 0.1);
    let mut c = Mat::<f32>::zeros(m, n);
    let flop = 2.0 * (m * k * n) as f64;
    let reps = (2e9 / flop).max(3.0) as usize;
    let mut best = 0.0f64;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..reps {
            matmul(
                c.as_mut(),
                Accum::Replace,
                a.as_ref(),
                b.as_ref(),
                1.0f32,
                Par::Seq,
            );
        }
        best = best.max(flop * reps as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn main() {
    let hiddens: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let hiddens = if hiddens.is_empty() {
        vec![64, 128]
    } else {
        hiddens
    };
    let mut peak = gflops(1024, 1024, 1024);
    println!("faer 1024x1024x1024: {peak:.1} GFLOP/s");
    for h in hiddens {
        let g = gflops(1024, 8 + h, 4 * h);
        println!("faer 1024x{}x{}: {g:.1} GFLOP/s", 8 + h, 4 * h);
        peak = peak.max(g);
    }
    println!("faer_peak_gflops {peak:.1}");
}
