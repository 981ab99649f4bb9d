//! Streamed recurrent step: B keys advance one step each in one call (one wavefront), for
//! LSTM and GRU, input 8, hidden 64/128/256, B = 1/64/1024. Throughput is reported in
//! key-steps/s; after the run a table adds GFLOP/s (an LSTM step costs 2*4H*(I+H) FLOPs per
//! key, a GRU step 2*3H*(I+H)) and the fraction of faer's own single-thread GEMM on the
//! same product shape, `[B x (I+H)] * [(I+H) x G*H]`, measured in the same run (group
//! `faer_gemm`): how close the whole step (gather, two GEMMs, gates, scatter) comes to the
//! matrix product alone. Where the CPU has AVX512_BF16, the same steps again with
//! `precision = "bf16"` (groups `lstm_bf16_step`, `gru_bf16_step`; FLOPs counted the same, so
//! the bf16 rows can pass the f32 peak; the bf16 peak is printed beside it). Each row gives
//! the median and, beside it, the fastest sample, which is what the peak (a best of 5)
//! compares with on a machine shared with other load.
//!
//!     cargo bench --bench step
//!     cargo bench --bench step -- --quick     # fewer samples
//!     SEQFLOW_KERNEL=avx2 cargo bench --bench step -- "lstm_step|gru_step"
//!                                             # the AVX2 kernel, against the ymm peak

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use seqflow::model::builder::ModelBuilder;
use seqflow::model::config::Precision;
use seqflow::vocab::SplitMix;
use seqflow::{Packed, Workspace};

const INPUT: usize = 8;
const HIDDENS: [usize; 3] = [64, 128, 256];
const BATCHES: [usize; 3] = [1, 64, 1024];

fn bench(c: &mut Criterion) {
    for (cell, precision) in [
        ("lstm", Precision::F32),
        ("gru", Precision::F32),
        ("lstm", Precision::Bf16),
        ("gru", Precision::Bf16),
    ] {
        if precision == Precision::Bf16 && !seqflow::kernels::fused::bf16_supported() {
            continue;
        }
        let name = match precision {
            Precision::F32 => format!("{cell}_step"),
            Precision::Bf16 => format!("{cell}_bf16_step"),
        };
        let mut group = c.benchmark_group(name);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(2));
        group.sample_size(20);
        for hidden in HIDDENS {
            let model = ModelBuilder::new(INPUT, 7)
                .precision(precision)
                .recurrent(cell, cell, hidden, 1)
                .build()
                .unwrap();
            for batch in BATCHES {
                let mut arena = model.new_arena();
                let slots: Vec<u32> = (0..batch).map(|_| arena.alloc()).collect();
                let mut input = Packed::default();
                input.build(INPUT, &vec![1; batch]);
                let mut rng = SplitMix::new(1);
                input.data.iter_mut().for_each(|v| *v = rng.normal());
                let mut ws = Workspace::default();
                group.throughput(Throughput::Elements(batch as u64));
                group.bench_with_input(BenchmarkId::new(format!("h{hidden}"), batch), &batch, |b, _| {
                    b.iter(|| {
                        let out = model.advance(&mut arena, &slots, &input, &mut ws).unwrap();
                        black_box(out.data[0]);
                    })
                });
            }
        }
        group.finish();
    }
    // The LSTM gate math alone (bias add, 3 sigmoids, 2 tanh, the cell update) over B rows
    // of hidden 128: what a change to the formulas buys, without the GEMM around it.
    let mut group = c.benchmark_group("lstm_gates");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.sample_size(30);
    for batch in [64, 1024] {
        let hid = 128;
        let mut rng = SplitMix::new(5);
        let x: Vec<f32> = (0..batch * 4 * hid).map(|_| 2.0 * rng.normal()).collect();
        let hp: Vec<f32> = (0..batch * 4 * hid).map(|_| 2.0 * rng.normal()).collect();
        let bias: Vec<f32> = (0..4 * hid).map(|_| rng.normal()).collect();
        let c0: Vec<f32> = (0..batch * hid).map(|_| rng.normal()).collect();
        let (mut cs, mut h) = (c0.clone(), vec![0.0f32; batch * hid]);
        group.throughput(Throughput::Elements((batch * hid) as u64));
        group.bench_with_input(BenchmarkId::new("h128", batch), &batch, |b, _| {
            b.iter(|| {
                cs.copy_from_slice(&c0);
                seqflow::kernels::lstm_gates(&x, &hp, &bias, &mut cs, &mut h, hid);
                black_box(h[0]);
            })
        });
    }
    group.finish();
    let mut group = c.benchmark_group("faer_gemm");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.sample_size(20);
    for gates in [3, 4] {
        for hidden in HIDDENS {
            for batch in [64, 1024] {
                let (k, n) = (INPUT + hidden, gates * hidden);
                let mut rng = SplitMix::new(3);
                let a: Vec<f32> = (0..batch * k).map(|_| rng.normal()).collect();
                let b: Vec<f32> = (0..k * n).map(|_| rng.normal()).collect();
                let mut out = vec![0.0f32; batch * n];
                group.throughput(Throughput::Elements(batch as u64));
                group.bench_with_input(
                    BenchmarkId::new(format!("g{gates}h{hidden}"), batch),
                    &batch,
                    |bn, _| {
                        bn.iter(|| {
                            seqflow::kernels::gemm(&mut out, &a, &b, batch, k, n);
                            black_box(out[0]);
                        })
                    },
                );
            }
        }
    }
    group.finish();
}

/// The machine's FMA peak, measured in the same run (shared with `cargo run --example
/// fma_peak`, which `benches/ort_compare.py` runs).
#[path = "../examples/fma_peak.rs"]
#[allow(dead_code)]
mod fma_peak;

/// Reads criterion's estimates and prints key-steps/s and GFLOP/s per configuration, next to
/// the machine's single-core f32 FMA peak measured now.
fn report() {
    // The AVX2 kernel (on an AVX-512 CPU with `SEQFLOW_KERNEL=avx2`) against the ymm peak.
    let avx2 = seqflow::kernels::fused::isa() == Some(seqflow::kernels::fused::Isa::Avx2);
    let peak = if avx2 {
        fma_peak::avx2_gflops(5)
    } else {
        fma_peak::f32_gflops(5)
    };
    if avx2 {
        println!("\nthe fused AVX2 kernel (ymm) runs here: the peak below is AVX2's");
    }
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("criterion");
    let json = |path: String| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(path)).ok()?).ok()
    };
    let median_ns = |path: String| json(path)?["median"]["point_estimate"].as_f64();
    // The fastest sample: the like-for-like of the peak, itself the best of 5 (on a shared
    // machine the median carries other tenants' load: on a Zen 3 host, LSTM h128 at B = 64
    // had a 157 us median and a 121 us fastest sample in one run).
    let fastest_ns = |path: String| -> Option<f64> {
        let v = json(path)?;
        let (times, iters) = (v["times"].as_array()?, v["iters"].as_array()?);
        times
            .iter()
            .zip(iters)
            .filter_map(|(t, i)| Some(t.as_f64()? / i.as_f64()?))
            .min_by(f64::total_cmp)
    };
    match peak {
        Some(p) => println!("\nsingle-core f32 FMA peak, measured now: {p:.1} GFLOP/s"),
        None => println!("\nsingle-core f32 FMA peak: unknown on this CPU"),
    }
    if let Some(p) = fma_peak::bf16_gflops(5) {
        println!("single-core bf16 dot-product peak, measured now: {p:.1} GFLOP/s");
    }
    println!(
        "\n| cell | hidden | keys/call | time/call | key-steps/s | GFLOP/s | of FMA peak | fastest sample | its GFLOP/s | of FMA peak | faer GEMM alone | step / GEMM |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (cell, gates) in [("lstm", 4.0), ("gru", 3.0), ("lstm_bf16", 4.0), ("gru_bf16", 3.0)] {
        for hidden in HIDDENS {
            for batch in BATCHES {
                let Some(ns) = median_ns(format!("{cell}_step/h{hidden}/{batch}/new/estimates.json")) else {
                    continue;
                };
                let steps = batch as f64 / (ns * 1e-9);
                let flops = 2.0 * gates * hidden as f64 * (INPUT + hidden) as f64;
                let gflops = steps * flops / 1e9;
                let faer = median_ns(format!("faer_gemm/g{gates}h{hidden}/{batch}/new/estimates.json"))
                    .filter(|_| !cell.ends_with("bf16"))
                    .map(|g| batch as f64 * flops / g);
                let (faer_col, ratio_col) = match faer {
                    Some(f) => (format!("{f:.1}"), format!("{:.0}%", 100.0 * gflops / f)),
                    None => ("-".into(), "-".into()),
                };
                let of_peak = |g: f64| peak.map_or("-".into(), |p| format!("{:.0}%", 100.0 * g / p));
                let (fast_col, fast_gflops, fast_peak) =
                    match fastest_ns(format!("{cell}_step/h{hidden}/{batch}/new/sample.json")) {
                        Some(f) => {
                            let g = batch as f64 * flops / f;
                            (format!("{:.1} us", f / 1e3), format!("{g:.1}"), of_peak(g))
                        }
                        None => ("-".into(), "-".into(), "-".into()),
                    };
                println!(
                    "| {cell} | {hidden} | {batch} | {:.1} us | {:.3} M | {gflops:.1} | {} | {fast_col} | {fast_gflops} | {fast_peak} | {faer_col} | {ratio_col} |",
                    ns / 1e3,
                    steps / 1e6,
                    of_peak(gflops),
                );
            }
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    report();
}
