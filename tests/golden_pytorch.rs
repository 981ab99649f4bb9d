//! Golden tests: seqflow's outputs equal PyTorch's (within 1e-4 absolute) for every layer
//! kind and option, in the offline form, batched offline, and streamed step by step.
//!
//! The expected values come from PyTorch itself, via `tests/fixtures/make_golden.py`
//! (each case directory holds the model file, the state_dict as safetensors and the
//! inputs/outputs). Nothing here is derived from seqflow's own code.

mod common;

use common::{golden_dir, max_abs_diff, read_tensors};
use seqflow::{Model, Packed, Workspace};

const TOL: f32 = 1e-4;

/// One sequence: input rows, its length, PyTorch's output rows and their step tags.
type Seq = (Vec<f32>, usize, Vec<f32>, Vec<u32>);

struct Case {
    name: String,
    model: Model,
    seqs: Vec<Seq>,
}

fn cases() -> Vec<Case> {
    let mut dirs: Vec<_> = std::fs::read_dir(golden_dir())
        .expect("golden fixtures exist; run tests/fixtures/make_golden.py")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 25,
        "expected the full fixture set, found {}",
        dirs.len()
    );
    dirs.into_iter()
        .map(|d| {
            let name = d.file_name().unwrap().to_string_lossy().into_owned();
            let model = Model::load(&d.join("model.toml")).unwrap_or_else(|e| panic!("{name}: {e}"));
            let io = read_tensors(&d.join("io.safetensors"));
            let mut seqs = vec![];
            for i in 0.. {
                let Some(x) = io.get(&format!("x_{i}")) else { break };
                let y = &io[&format!("y_{i}")];
                let steps = io[&format!("steps_{i}")].i64s.iter().map(|&s| s as u32).collect();
                seqs.push((x.f32s.clone(), x.shape[0], y.f32s.clone(), steps));
            }
            Case { name, model, seqs }
        })
        .collect()
}

#[test]
fn offline_form_matches_pytorch() {
    for case in cases() {
        for (i, (x, t, y, steps)) in case.seqs.iter().enumerate() {
            let out = case.model.forward_sequence(x, *t);
            assert_eq!(&out.steps, steps, "{} seq {i}: output steps", case.name);
            let d = max_abs_diff(&out.data, y);
            assert!(
                d <= TOL,
                "{} seq {i} (T={t}): max |diff| {d:e} > {TOL:e}",
                case.name
            );
        }
    }
}

#[test]
fn batched_offline_matches_pytorch() {
    // All sequences of a case in one packed call: different lengths share wavefronts.
    for case in cases() {
        let m = &case.model;
        let lens: Vec<usize> = case.seqs.iter().map(|s| s.1).collect();
        let mut input = Packed::default();
        input.build(m.input_size(), &lens);
        for (i, (x, t, ..)) in case.seqs.iter().enumerate() {
            for s in 0..*t {
                input
                    .row_mut(i, s)
                    .copy_from_slice(&x[s * m.input_size()..(s + 1) * m.input_size()]);
            }
        }
        let mut ws = Workspace::default();
        let out = m.forward(&input, &mut ws);
        let mut got: Vec<(Vec<f32>, Vec<u32>)> = vec![(vec![], vec![]); lens.len()];
        for (seq, step, row) in out.rows() {
            got[seq as usize].0.extend_from_slice(row);
            got[seq as usize].1.push(step);
        }
        for (i, (_, _, y, steps)) in case.seqs.iter().enumerate() {
            assert_eq!(&got[i].1, steps, "{} seq {i}: steps", case.name);
            let d = max_abs_diff(&got[i].0, y);
            assert!(d <= TOL, "{} seq {i}: batched max |diff| {d:e}", case.name);
        }
    }
}

#[test]
fn streamed_step_by_step_matches_pytorch() {
    let mut streamed_cases = 0;
    for case in cases() {
        let m = &case.model;
        if m.check_streamable().is_err() {
            continue;
        }
        streamed_cases += 1;
        let mut arena = m.new_arena();
        let slots: Vec<u32> = case.seqs.iter().map(|_| arena.alloc()).collect();
        let mut ws = Workspace::default();
        let mut got: Vec<(Vec<f32>, Vec<u32>)> = vec![(vec![], vec![]); slots.len()];
        let max_t = case.seqs.iter().map(|s| s.1).max().unwrap();
        let w = m.input_size();
        // One call per wavefront: every key with a step left advances by one.
        for step in 0..max_t {
            let lens: Vec<usize> = case.seqs.iter().map(|s| usize::from(step < s.1)).collect();
            let mut input = Packed::default();
            input.build(w, &lens);
            for (i, (x, t, ..)) in case.seqs.iter().enumerate() {
                if step < *t {
                    input.row_mut(i, 0).copy_from_slice(&x[step * w..(step + 1) * w]);
                }
            }
            let out = m.advance(&mut arena, &slots, &input, &mut ws).unwrap();
            for (seq, _, row) in out.rows() {
                got[seq as usize].0.extend_from_slice(row);
                got[seq as usize].1.push(step as u32);
            }
        }
        for (i, (_, _, y, steps)) in case.seqs.iter().enumerate() {
            assert_eq!(&got[i].1, steps, "{} seq {i}: streamed steps", case.name);
            let d = max_abs_diff(&got[i].0, y);
            assert!(d <= TOL, "{} seq {i}: streamed max |diff| {d:e}", case.name);
        }
    }
    assert!(streamed_cases >= 20, "only {streamed_cases} streamable cases");
}

#[test]
fn non_causal_models_refuse_to_stream_and_name_the_layer() {
    for (case, layer) in [
        ("conv_same_even_kernel", "#0 (conv1d \"conv\")"),
        ("rnn_bidirectional", "#0 (rnn \"rnn\")"),
        ("cnn_same_bilstm", "#0 (conv1d \"conv\")"),
    ] {
        let m = Model::load(&golden_dir().join(case).join("model.toml")).unwrap();
        let msg = m.check_streamable().unwrap_err().to_string();
        assert!(
            msg.contains(layer) && msg.contains("cannot run step by step"),
            "{case}: {msg}"
        );
    }
}

/// `precision = "bf16"` on every golden model: its error against PyTorch's f32 outputs on the
/// fixtures' sequences, printed as a table (BENCHMARKS.md shows it), and the error
/// `inspect` reports against seqflow's own f32 run on generated input. bf16 keeps about 8
/// bits of mantissa, so the bound is loose: it catches a wrong kernel (errors of order 1),
/// not the rounding the user opted into.
#[test]
fn bf16_error_on_every_golden_model() {
    use seqflow::model::config::{ModelConfig, Precision};
    use seqflow::model::weights::WeightStore;
    if !seqflow::kernels::fused::bf16_supported() {
        eprintln!("no AVX512_BF16 on this CPU: bf16 models are refused here, nothing to measure");
        return;
    }
    const BOUND: f32 = 0.05;
    println!("| golden model | max abs error vs PyTorch, bf16 | f32 | inspect: max / mean vs f32 |");
    println!("|---|---:|---:|---:|");
    for case in cases() {
        let dir = golden_dir().join(&case.name);
        let mut config = ModelConfig::load(&dir.join("model.toml")).unwrap();
        config.precision = Precision::Bf16;
        let store = WeightStore::load(config.weights.as_ref().unwrap()).unwrap();
        let m = Model::from_parts(config, store).unwrap();
        let (mut worst, mut worst_f32) = (0.0f32, 0.0f32);
        for (x, t, y, _) in &case.seqs {
            worst = worst.max(max_abs_diff(&m.forward_sequence(x, *t).data, y));
            worst_f32 = worst_f32.max(max_abs_diff(&case.model.forward_sequence(x, *t).data, y));
        }
        let e = m.bf16_error().unwrap().expect("a bf16 model reports its error");
        println!(
            "| {} | {worst:.1e} | {worst_f32:.1e} | {:.1e} / {:.1e} |",
            case.name, e.max, e.mean
        );
        assert!(
            worst <= BOUND,
            "{}: bf16 max |diff| {worst:e} > {BOUND:e}",
            case.name
        );
    }
}

/// The golden tests again in a child process with `SEQFLOW_KERNEL` set to `kernel` (the
/// kernel choice is made once per process).
fn golden_tests_pass_with(kernel: &str) {
    if std::env::var("SEQFLOW_KERNEL").is_ok_and(|v| v == kernel) {
        return; // the child itself
    }
    let o = std::process::Command::new(std::env::current_exe().unwrap())
        .env("SEQFLOW_KERNEL", kernel)
        .args([
            "--exact",
            "offline_form_matches_pytorch",
            "batched_offline_matches_pytorch",
            "streamed_step_by_step_matches_pytorch",
            "the_kernel_asked_for_runs",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("test result: ok. 4 passed"),
        "{kernel}: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// In a child of the two tests below, the kernel `SEQFLOW_KERNEL` asks for is the one that
/// runs (so that they test what they say).
#[test]
fn the_kernel_asked_for_runs() {
    use seqflow::kernels::fused::{isa, Isa};
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let avx2 = false;
    match std::env::var("SEQFLOW_KERNEL").as_deref() {
        Ok("generic") => assert_eq!(isa(), None),
        Ok("avx2") if avx2 => assert_eq!(isa(), Some(Isa::Avx2)),
        _ => {}
    }
}

/// The portable path (faer GEMMs and the multiversioned gate loops), which CPUs without
/// AVX2 run. On this AVX-512 machine nothing else exercises it for GRUs, RNNs and LSTMs
/// without a projection.
#[test]
fn the_portable_kernels_match_pytorch_too() {
    golden_tests_pass_with("generic");
}

/// The fused AVX2 kernel, which CPUs with AVX2 but not AVX-512 run (checked on any CPU
/// with AVX2; on one without, the child runs the portable path).
#[test]
fn the_avx2_kernel_matches_pytorch_too() {
    golden_tests_pass_with("avx2");
}
