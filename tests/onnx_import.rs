//! ONNX import: graphs exported by torch.onnx (TorchScript and dynamo exporters) and built by
//! hand give onnxruntime's outputs, offline and streamed; PyTorch exports come out with the
//! state_dict's names and values; `import` then `run` equals running the `.onnx`; every
//! refusal names the node. Fixtures by `tests/fixtures/make_onnx_golden.py` (onnxruntime
//! 1.32, torch 2.15); nothing here is derived from seqflow.

mod common;

use std::path::{Path, PathBuf};

use common::pipeline::{seqflow, stderr};
use common::{max_abs_diff, read_tensors};
use seqflow::{Model, Packed, Workspace};

const TOL: f32 = 1e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx")
}

fn cases(prefix: &[&str]) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(fixtures())
        .expect("ONNX fixtures exist; run tests/fixtures/make_onnx_golden.py")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .filter(|(n, _)| prefix.iter().any(|pre| n.starts_with(pre)))
        .collect();
    v.sort();
    v
}

/// Each fixture sequence: input [T, F] and onnxruntime's output rows.
fn sequences(dir: &Path) -> Vec<(Vec<f32>, usize, Vec<f32>)> {
    let io = read_tensors(&dir.join("io.safetensors"));
    (0..)
        .map_while(|i| {
            let x = io.get(&format!("x_{i}"))?;
            let y = &io[&format!("y_{i}")];
            Some((x.f32s.clone(), x.shape[0], y.f32s.clone()))
        })
        .collect()
}

#[test]
fn every_graph_equals_onnxruntime_offline_and_streamed() {
    let all = cases(&["ts_", "dy_", "hb_"]);
    assert!(
        all.len() >= 25,
        "expected the full fixture set, found {}",
        all.len()
    );
    let mut streamed = 0;
    for (name, dir) in all {
        let m = Model::load(&dir.join("model.onnx")).unwrap_or_else(|e| panic!("{name}: {e}"));
        let seqs = sequences(&dir);
        for (i, (x, t, y)) in seqs.iter().enumerate() {
            let out = m.forward_sequence(x, *t);
            let d = max_abs_diff(&out.data, y);
            assert!(d <= TOL, "{name} seq {i}: offline max |diff| {d:e}");
        }
        if m.check_streamable().is_err() {
            continue;
        }
        streamed += 1;
        // Every key advances one step per call.
        let mut arena = m.new_arena();
        let slots: Vec<u32> = seqs.iter().map(|_| arena.alloc()).collect();
        let mut ws = Workspace::default();
        let mut got: Vec<Vec<f32>> = vec![vec![]; seqs.len()];
        let w = m.input_size();
        for step in 0..seqs[0].1 {
            let mut input = Packed::default();
            input.build(w, &vec![1; seqs.len()]);
            for (i, (x, ..)) in seqs.iter().enumerate() {
                input.row_mut(i, 0).copy_from_slice(&x[step * w..(step + 1) * w]);
            }
            let out = m.advance(&mut arena, &slots, &input, &mut ws).unwrap();
            for (seq, _, row) in out.rows() {
                got[seq as usize].extend_from_slice(row);
            }
        }
        for (i, (.., y)) in seqs.iter().enumerate() {
            let d = max_abs_diff(&got[i], y);
            assert!(d <= TOL, "{name} seq {i}: streamed max |diff| {d:e}");
        }
    }
    assert!(streamed >= 15, "only {streamed} streamable cases");
}

#[test]
fn pytorch_exports_get_the_state_dict_names_and_values() {
    let all = cases(&["ts_", "dy_"]);
    assert!(all.len() >= 20, "{} PyTorch exports", all.len());
    for (name, dir) in all {
        let imported =
            seqflow::onnx::import(&dir.join("model.onnx")).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = read_tensors(&dir.join("state_dict.safetensors"));
        let mut got: Vec<&str> = imported.tensors.iter().map(|(n, _)| n.as_str()).collect();
        got.sort_unstable();
        let names: Vec<&str> = want.keys().map(String::as_str).collect();
        assert_eq!(got, names, "{name}: tensor names");
        for (n, t) in &imported.tensors {
            let w = &want[n];
            assert_eq!(t.shape, w.shape, "{name}: {n} shape");
            assert!(
                t.data == w.f32s,
                "{name}: {n} values differ from the state_dict's"
            );
        }
    }
}

#[test]
fn refusals_name_the_node() {
    let list = std::fs::read_to_string(fixtures().join("refuse.txt")).unwrap();
    let mut n = 0;
    for line in list.lines() {
        // `case node`, or `case node | what the message must also say`.
        let (case, rest) = line.split_once(' ').unwrap();
        let (names, says) = match rest.split_once(" | ") {
            Some((names, says)) => (names, Some(says)),
            None => (rest, None),
        };
        let path = fixtures().join(case).join("model.onnx");
        let e = match Model::load(&path) {
            Ok(_) => panic!("{case}: imported, but must be refused"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains(&format!("`{names}`")),
            "{case}: the message names `{names}`: {e}"
        );
        if let Some(says) = says {
            assert!(e.contains(says), "{case}: the message says \"{says}\": {e}");
        }
        assert!(
            e.contains("model.onnx"),
            "{case}: the message names the file: {e}"
        );
        n += 1;
    }
    assert!(n >= 20, "{n} refusals listed");
    // Not ONNX at all, and a graph with two inputs.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"\x0a\xff\xff\xff garbage").unwrap();
    let e = match Model::load(&junk) {
        Ok(_) => panic!("junk imported"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("not an ONNX model"), "{e}");
}

#[test]
fn import_then_run_equals_running_the_onnx() {
    let dir = tempfile::tempdir().unwrap();
    for case in [
        "ts_cnn_causal_lstm",
        "dy_lstm_2layers_bidirectional",
        "hb_rnn_relu_gemm",
        "hb_lstm_reverse_then_rnn",
        "hb_gru_reset_before",
    ] {
        let onnx = fixtures().join(case).join("model.onnx");
        let out = dir.path().join(case).join("m.toml");
        let o = seqflow(&["import", onnx.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        assert!(o.status.success(), "{case}: {}", stderr(&o));
        let said = stderr(&o);
        assert!(said.contains("per-step output"), "{case}: {said}");
        assert!(out.with_extension("safetensors").exists());
        // A second import does not replace the files without --force.
        let again = seqflow(&["import", onnx.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        assert!(
            !again.status.success() && stderr(&again).contains("--force"),
            "{}",
            stderr(&again)
        );
        let direct = Model::load(&onnx).unwrap();
        let imported = Model::load(&out).unwrap();
        for (x, t, _) in sequences(&fixtures().join(case)) {
            let a = direct.forward_sequence(&x, t);
            let b = imported.forward_sequence(&x, t);
            assert!(
                a.data == b.data,
                "{case}: import then load differs from the .onnx"
            );
        }
        // `inspect` reads both.
        for m in [&onnx, &out] {
            let o = seqflow(&["inspect", m.to_str().unwrap()]);
            assert!(o.status.success(), "{case}: {}", stderr(&o));
        }
    }
    // A refused graph writes nothing.
    let refused = dir.path().join("refused").join("m.toml");
    let onnx = fixtures().join("refuse_attention").join("model.onnx");
    let o = seqflow(&[
        "import",
        onnx.to_str().unwrap(),
        "--out",
        refused.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("`scores`"),
        "{}",
        stderr(&o)
    );
    assert!(!refused.exists() && !refused.with_extension("safetensors").exists());
    // A write that fails (a folder in the way of the model file's partial) leaves neither
    // file, nor the weights' partial.
    let blocked = dir.path().join("blocked").join("m.toml");
    std::fs::create_dir_all(dir.path().join("blocked").join("m.toml.partial")).unwrap();
    let onnx = fixtures().join("ts_cnn_causal_lstm").join("model.onnx");
    let o = seqflow(&[
        "import",
        onnx.to_str().unwrap(),
        "--out",
        blocked.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("m.toml.partial"),
        "{}",
        stderr(&o)
    );
    let left: Vec<_> = std::fs::read_dir(dir.path().join("blocked"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["m.toml.partial"], "only the folder in the way is left");
    // A pipeline whose [model] path is the .onnx writes what the imported model file writes.
    let case = "ts_cnn_causal_lstm";
    let data = dir.path().join("data.parquet");
    let rows: Vec<common::pipeline::Row> = (0..40)
        .map(|i| common::pipeline::Row {
            key: format!("k{}", i % 4),
            time: (i / 4) as i64,
            feats: (0..4)
                .map(|j| ((i * 7 + j * 3) % 11) as f32 / 5.0 - 1.0)
                .collect(),
        })
        .collect();
    common::pipeline::write_parquet(&data, &rows, 1000);
    let mut outs = vec![];
    for (k, model) in [
        fixtures().join(case).join("model.onnx"),
        dir.path().join(case).join("m.toml"),
    ]
    .iter()
    .enumerate()
    {
        let out = dir.path().join(format!("out{k}.csv"));
        let p = common::pipeline::write_pipeline(
            dir.path(),
            &format!("p{k}.toml"),
            &format!(
                "[source]\nformat = \"parquet\"\npath = \"{}\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\", \"f2\", \"f3\"]\n\
                 [model]\npath = \"{}\"\n[output]\nformat = \"csv\"\npath = \"{}\"\n",
                data.display(),
                model.display(),
                out.display()
            ),
        );
        let o = seqflow(&["run", p.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        outs.push(std::fs::read_to_string(&out).unwrap());
    }
    assert_eq!(outs[0], outs[1]);
    assert_eq!(outs[0].lines().count(), 41);
}

/// The same graphs in a child process with `SEQFLOW_KERNEL` set to `kernel`.
fn onnx_graphs_pass_with(kernel: &str) {
    if std::env::var("SEQFLOW_KERNEL").is_ok_and(|v| v == kernel) {
        return; // the child itself
    }
    let o = std::process::Command::new(std::env::current_exe().unwrap())
        .env("SEQFLOW_KERNEL", kernel)
        .args(["--exact", "every_graph_equals_onnxruntime_offline_and_streamed"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("test result: ok. 1 passed"),
        "{kernel}: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The same graphs on the portable kernels (faer + multiversioned gates), which CPUs without
/// AVX2 run.
#[test]
fn the_portable_kernels_equal_onnxruntime_too() {
    onnx_graphs_pass_with("generic");
}

/// The same graphs on the fused AVX2 kernel, which CPUs with AVX2 but not AVX-512 run.
#[test]
fn the_avx2_kernel_equals_onnxruntime_too() {
    onnx_graphs_pass_with("avx2");
}

/// Damaged files (bytes flipped, cut short) are a message or, where the damage happens to
/// leave a valid graph, a model: never a crash.
#[test]
fn damaged_files_never_crash_the_import() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(19);
    let (mut refused, mut loaded) = (0, 0);
    for case in [
        "ts_cnn_causal_lstm",
        "dy_lstm_2layers_bidirectional",
        "hb_rnn_relu_gemm",
    ] {
        let bytes = std::fs::read(fixtures().join(case).join("model.onnx")).unwrap();
        for k in 0..150 {
            let mut b = bytes.clone();
            if k % 10 == 0 {
                b.truncate(rng.random_range(0..b.len()));
            } else {
                for _ in 0..rng.random_range(1..6) {
                    let at = rng.random_range(0..b.len());
                    b[at] = rng.random();
                }
            }
            let p = dir.path().join("m.onnx");
            std::fs::write(&p, &b).unwrap();
            match Model::load(&p) {
                Ok(_) => loaded += 1,
                Err(_) => refused += 1,
            }
        }
    }
    assert!(refused > 100, "{refused} refused, {loaded} loaded");
}
