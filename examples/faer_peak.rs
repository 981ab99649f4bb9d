//! Scratch: faer f32 single-thread GEMM speed by shape and layout.
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use std::time::Instant;

fn run(m: usize, k: usize, n: usize, lhs_t: bool, rhs_t: bool, dst_t: bool) -> f64 {
    let a = Mat::<f32>::from_fn(if lhs_t { k } else { m }, if lhs_t { m } else { k }, |i, j| {
        ((i * 3 + j) % 7) as f32 * 0.1
    });
    let b = Mat::<f32>::from_fn(if rhs_t { n } else { k }, if rhs_t { k } else { n }, |i, j| {
        ((i + 5 * j) % 11) as f32 * 0.1
    });
    let mut c = Mat::<f32>::zeros(if dst_t { n } else { m }, if dst_t { m } else { n });
    let reps = (4e9 / (2.0 * (m * k * n) as f64)).max(3.0) as usize;
    let mut go = || {
        let l = if lhs_t { a.as_ref().transpose() } else { a.as_ref() };
        let r = if rhs_t { b.as_ref().transpose() } else { b.as_ref() };
        let d = if dst_t {
            c.as_mut().transpose_mut()
        } else {
            c.as_mut()
        };
        matmul(d, Accum::Replace, l, r, 1.0f32, Par::Seq);
    };
    go();
    let t = Instant::now();
    for _ in 0..reps {
        go();
    }
    2.0 * (m * k * n) as f64 * reps as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn main() {
    for &(m, k, n) in &[
        (1024, 1024, 1024),
        (256, 256, 256),
        (1024, 128, 512),
        (64, 128, 512),
        (1024, 136, 512),
        (512, 64, 256),
    ] {
        let mut line = format!("{m}x{k}x{n}:");
        for lt in [false, true] {
            for rt in [false, true] {
                for dt in [false, true] {
                    line += &format!(
                        " {}{}{}={:.0}",
                        lt as u8,
                        rt as u8,
                        dt as u8,
                        run(m, k, n, lt, rt, dt)
                    );
                }
            }
        }
        println!("{line}");
    }
}
