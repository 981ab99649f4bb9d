use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
fn faer_gemm(out: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, acc: bool) {
    let dst = MatMut::from_row_major_slice_mut(out, m, n);
    let lhs = MatRef::from_row_major_slice(a, m, k);
    let rhs = MatRef::from_row_major_slice(b, k, n);
    matmul(
        dst,
        if acc { Accum::Add } else { Accum::Replace },
        lhs,
        rhs,
        1.0f32,
        Par::Seq,
    );
}
fn main() {
    let mut s = 1u64;
    let mut r = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    for &(k, n) in &[
        (8usize, 512usize),
        (128, 512),
        (136, 512),
        (64, 256),
        (16, 20),
        (5, 3),
        (300, 1024),
    ] {
        let a: Vec<f32> = (0..2000 * k).map(|_| r()).collect();
        let b: Vec<f32> = (0..k * n).map(|_| r()).collect();
        let c0: Vec<f32> = (0..n).map(|_| r()).collect();
        let mut reference: Option<Vec<f32>> = None;
        let mut ref_acc: Option<Vec<f32>> = None;
        let mut diffs = 0;
        for m in [2usize, 1, 3, 4, 5, 7, 8, 16, 17, 31, 64, 100, 257, 1024, 2000] {
            for acc in [false, true] {
                let mut out = vec![0.0f32; m * n];
                for i in 0..m {
                    out[i * n..(i + 1) * n].copy_from_slice(&c0);
                }
                faer_gemm(&mut out, &a[..m * k], &b, m, k, n, acc);
                let row0 = out[..n].to_vec();
                if acc {
                    match &ref_acc {
                        None => ref_acc = Some(row0.clone()),
                        Some(r0) => {
                            if *r0 != row0 {
                                diffs += 1;
                                println!("k{k} n{n}: m={m} acc row0 differs")
                            }
                        }
                    }
                }
                if !acc {
                    match &reference {
                        None => reference = Some(row0),
                        Some(r0) => {
                            if *r0 != row0 {
                                diffs += 1;
                                println!("k{k} n{n}: m={m} replace row0 differs")
                            }
                        }
                    }
                }
            }
        }
        let t = std::time::Instant::now();
        let mut out = vec![0.0f32; n];
        for _ in 0..2000 {
            faer_gemm(&mut out, &a[..k], &b, 1, k, n, true);
        }
        let sec = t.elapsed().as_secs_f64() / 2000.0;
        println!(
            "k={k} n={n}: {diffs} row-count-dependent results; m=1: {:.2} us, {:.1} GFLOP/s",
            sec * 1e6,
            2.0 * (k * n) as f64 / sec / 1e9
        );
    }
}
