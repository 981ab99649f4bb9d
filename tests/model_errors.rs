//! Bad model files and bad weight files: each gets a clear error naming the file, the layer
//! and the tensor (with expected vs found shapes), never a panic.

use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use seqflow::Model;

/// A scratch directory holding one model file and its weights.
struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().unwrap())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// Writes f32 tensors (shape, filled with 0.1) to `name`.
    fn weights(&self, name: &str, tensors: &[(&str, &[usize])]) -> PathBuf {
        let bufs: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, s)| {
                let count: usize = s.iter().product();
                let bytes = (0..count).flat_map(|_| 0.1f32.to_le_bytes()).collect();
                (n.to_string(), s.to_vec(), bytes)
            })
            .collect();
        self.raw_weights(
            name,
            bufs.iter()
                .map(|(n, s, b)| (n.as_str(), Dtype::F32, s.as_slice(), b.as_slice())),
        )
    }

    fn raw_weights<'a>(
        &self,
        name: &str,
        t: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>,
    ) -> PathBuf {
        let views: Vec<(String, TensorView<'_>)> = t
            .map(|(n, d, s, b)| (n.to_string(), TensorView::new(d, s.to_vec(), b).unwrap()))
            .collect();
        let bytes = safetensors::serialize(views, None).unwrap();
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn model(&self, toml: &str) -> PathBuf {
        let p = self.path("model.toml");
        std::fs::write(&p, toml).unwrap();
        p
    }
}

fn lstm_tensors(prefix: &str, input: usize, hidden: usize) -> Vec<(String, Vec<usize>)> {
    vec![
        (format!("{prefix}weight_ih_l0"), vec![4 * hidden, input]),
        (format!("{prefix}weight_hh_l0"), vec![4 * hidden, hidden]),
        (format!("{prefix}bias_ih_l0"), vec![4 * hidden]),
        (format!("{prefix}bias_hh_l0"), vec![4 * hidden]),
    ]
}

const LSTM_HEAD: &str = r#"
weights = "w.safetensors"
input_size = 3
[[layers]]
type = "lstm"
name = "lstm"
[[layers]]
type = "linear"
name = "head"
"#;

fn good_lstm_head(d: &Dir) -> Vec<(String, Vec<usize>)> {
    let mut t = lstm_tensors("lstm.", 3, 4);
    t.push(("head.weight".into(), vec![2, 4]));
    t.push(("head.bias".into(), vec![2]));
    let _ = d;
    t
}

fn write(d: &Dir, t: &[(String, Vec<usize>)]) {
    let refs: Vec<(&str, &[usize])> = t.iter().map(|(n, s)| (n.as_str(), s.as_slice())).collect();
    d.weights("w.safetensors", &refs);
}

fn err(path: &Path) -> String {
    match Model::load(path) {
        Ok(_) => panic!("{} loaded but should fail", path.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message lacks {p:?}:\n{msg}");
    }
}

#[test]
fn good_model_loads() {
    let d = Dir::new();
    write(&d, &good_lstm_head(&d));
    let m = Model::load(&d.model(LSTM_HEAD)).unwrap();
    assert_eq!((m.input_size(), m.output_size()), (3, 2));
}

#[test]
fn truncated_weights_file() {
    let d = Dir::new();
    write(&d, &good_lstm_head(&d));
    let p = d.path("w.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
    let msg = err(&d.model(LSTM_HEAD));
    assert_has(&msg, &["weights file", "w.safetensors", "truncated or corrupt"]);
}

#[test]
fn garbage_weights_file() {
    let d = Dir::new();
    std::fs::write(d.path("w.safetensors"), b"this is not a safetensors file at all").unwrap();
    let msg = err(&d.model(LSTM_HEAD));
    assert_has(&msg, &["w.safetensors", "not a readable safetensors file"]);
}

#[test]
fn missing_weights_file_names_the_path() {
    let d = Dir::new();
    let msg = err(&d.model(LSTM_HEAD));
    assert_has(&msg, &["w.safetensors", "No such file"]);
}

#[test]
fn missing_tensor_names_layer_and_tensor() {
    let d = Dir::new();
    let t: Vec<_> = good_lstm_head(&d)
        .into_iter()
        .filter(|(n, _)| n != "lstm.weight_hh_l0")
        .collect();
    write(&d, &t);
    let msg = err(&d.model(LSTM_HEAD));
    assert_has(
        &msg,
        &[
            "layer #0 (lstm \"lstm\")",
            "missing tensor `lstm.weight_hh_l0`",
            "[16, 4]",
        ],
    );
}

#[test]
fn unexpected_tensor_is_reported() {
    let d = Dir::new();
    let mut t = good_lstm_head(&d);
    t.push(("dropout.mask".into(), vec![3]));
    write(&d, &t);
    let msg = err(&d.model(LSTM_HEAD));
    assert_has(&msg, &["`dropout.mask`", "not used by any layer"]);
}

#[test]
fn shape_mismatch_between_layers() {
    let d = Dir::new();
    let mut t = good_lstm_head(&d);
    t.retain(|(n, _)| n != "head.weight");
    t.push(("head.weight".into(), vec![2, 5]));
    write(&d, &t);
    let msg = err(&d.model(LSTM_HEAD));
    assert_has(
        &msg,
        &[
            "layer #1 (linear \"head\")",
            "`head.weight` has shape [2, 5]",
            "expected [?, 4]",
            "previous layer",
        ],
    );
}

#[test]
fn input_size_mismatch_with_first_layer() {
    let d = Dir::new();
    write(&d, &good_lstm_head(&d));
    let msg = err(&d.model(&LSTM_HEAD.replace("input_size = 3", "input_size = 8")));
    assert_has(
        &msg,
        &["`lstm.weight_ih_l0` has shape [16, 3]", "expected [16, 8]"],
    );
}

#[test]
fn wrong_bias_shape() {
    let d = Dir::new();
    let mut t = good_lstm_head(&d);
    t.retain(|(n, _)| n != "head.bias");
    t.push(("head.bias".into(), vec![3]));
    write(&d, &t);
    let msg = err(&d.model(LSTM_HEAD));
    assert_has(&msg, &["`head.bias` has shape [3], expected [2]"]);
}

#[test]
fn wrong_name_prefix_hints_at_name() {
    let d = Dir::new();
    write(&d, &good_lstm_head(&d));
    let msg = err(&d.model(&LSTM_HEAD.replace("name = \"lstm\"", "name = \"encoder\"")));
    assert_has(
        &msg,
        &[
            "missing tensor `encoder.weight_ih_l0`",
            "no tensor starting with `encoder.`",
        ],
    );
}

#[test]
fn one_sided_recurrent_bias() {
    let d = Dir::new();
    let t: Vec<_> = good_lstm_head(&d)
        .into_iter()
        .filter(|(n, _)| n != "lstm.bias_hh_l0")
        .collect();
    write(&d, &t);
    let msg = err(&d.model(LSTM_HEAD));
    assert_has(
        &msg,
        &["`lstm.bias_ih_l0` is present but `lstm.bias_hh_l0` is missing"],
    );
}

#[test]
fn gate_count_mismatch() {
    // GRU weights (3 gates x hidden 5 = 15 rows) declared as an LSTM (4 gates).
    let d = Dir::new();
    d.weights(
        "w.safetensors",
        &[("rnn.weight_ih_l0", &[15, 3]), ("rnn.weight_hh_l0", &[15, 5])],
    );
    let msg = err(&d.model("weights = \"w.safetensors\"\n[[layers]]\ntype = \"lstm\"\nname = \"rnn\"\n"));
    assert_has(
        &msg,
        &[
            "`rnn.weight_ih_l0` has shape [15, 3]",
            "4*hidden_size",
            "gates i, f, g, o",
        ],
    );
}

#[test]
fn declared_sizes_are_checked_against_weights() {
    let d = Dir::new();
    write(&d, &good_lstm_head(&d));
    let msg = err(&d.model(&LSTM_HEAD.replace("name = \"lstm\"", "name = \"lstm\"\nnum_layers = 2")));
    assert_has(&msg, &["num_layers = 2 but the weights have 1"]);
    let msg = err(&d.model(&LSTM_HEAD.replace("name = \"lstm\"", "name = \"lstm\"\nbidirectional = true")));
    assert_has(
        &msg,
        &["bidirectional = true but the weights lack `lstm.weight_ih_l0_reverse`"],
    );
}

#[test]
fn unsupported_dtype_and_non_finite_values() {
    let d = Dir::new();
    let ints: Vec<u8> = (0..16i64).flat_map(|v| v.to_le_bytes()).collect();
    d.raw_weights(
        "w.safetensors",
        [("head.weight", Dtype::I64, &[4usize, 4][..], &ints[..])].into_iter(),
    );
    let model =
        "weights = \"w.safetensors\"\ninput_size = 4\n[[layers]]\ntype = \"linear\"\nname = \"head\"\n";
    let msg = err(&d.model(model));
    assert_has(&msg, &["tensor `head.weight` has dtype I64"]);

    let nan: Vec<u8> = (0..16)
        .flat_map(|i| if i == 5 { f32::NAN } else { 0.0 }.to_le_bytes())
        .collect();
    d.raw_weights(
        "w.safetensors",
        [("head.weight", Dtype::F32, &[4usize, 4][..], &nan[..])].into_iter(),
    );
    let msg = err(&d.model(model));
    assert_has(
        &msg,
        &["tensor `head.weight` holds a non-finite value", "index 5"],
    );
}

#[test]
fn f16_bf16_f64_weights_convert() {
    let d = Dir::new();
    let h: Vec<u8> = (0..8)
        .flat_map(|_| half::f16::from_f32(0.5).to_le_bytes())
        .collect();
    let b: Vec<u8> = (0..2)
        .flat_map(|_| half::bf16::from_f32(0.25).to_le_bytes())
        .collect();
    d.raw_weights(
        "w.safetensors",
        [
            ("head.weight", Dtype::F16, &[2usize, 4][..], &h[..]),
            ("head.bias", Dtype::BF16, &[2usize][..], &b[..]),
        ]
        .into_iter(),
    );
    let m = Model::load(&d.model(
        "weights = \"w.safetensors\"\ninput_size = 4\n[[layers]]\ntype = \"linear\"\nname = \"head\"\n",
    ))
    .unwrap();
    let out = m.forward_sequence(&[1.0, 1.0, 1.0, 1.0], 1);
    assert_eq!(out.data, vec![2.25, 2.25]);
}

#[test]
fn model_file_errors() {
    let d = Dir::new();
    write(&d, &good_lstm_head(&d));
    let cases: &[(&str, &[&str])] = &[
        (
            "weights = \"w.safetensors\"\n[[layers]]\ntype = \"lstmx\"\n",
            &["model file", "layer #0", "unknown variant `lstmx`", "lstm"],
        ),
        (
            "weights = \"w.safetensors\"\ninput_size = 3\n[[layers]]\ntype = \"maxpool1d\"\nkernal = 2\n",
            &["layer #0", "unknown field `kernal`"],
        ),
        ("weights = \"w.safetensors\"\n", &["no [[layers]]"]),
        ("weights = \"w.safetensors\"\nlayers = [", &["model file", "model.toml"]),
        (
            "weights = \"w.safetensors\"\ninput_size = 3\n[[layers]]\ntype = \"conv1d\"\npadding = \"same\"\nstride = 2\n",
            &["layer #0", "same", "stride = 1"],
        ),
        (
            "weights = \"w.safetensors\"\ninput_size = 3\n[[layers]]\ntype = \"avgpool1d\"\nkernel = 0\n",
            &["layer #0", "`kernel` must be at least 1"],
        ),
        (
            "weights = \"w.safetensors\"\ninput_size = 3\n[[layers]]\ntype = \"conv1d\"\npadding = \"circular\"\n",
            &["layer #0", "unknown variant `circular`"],
        ),
        ("[[layers]]\ntype = \"relu\"\n", &["`input_size` is required"]),
        ("input_size = 3\n[[layers]]\ntype = \"linear\"\n", &["no `weights = "]),
        (
            "weights = \"w.safetensors\"\ninput_size = 3\nextra = 1\n[[layers]]\ntype = \"relu\"\n",
            &["unknown field `extra`"],
        ),
    ];
    for (toml, parts) in cases {
        let msg = err(&d.model(toml));
        assert_has(&msg, parts);
        assert!(
            msg.contains("model.toml") || msg.contains("w.safetensors"),
            "no file named: {msg}"
        );
    }
}

#[test]
fn model_without_weights_is_fine() {
    let d = Dir::new();
    let m = Model::load(&d.model("input_size = 2\n[[layers]]\ntype = \"maxpool1d\"\nkernel = 2\n")).unwrap();
    let out = m.forward_sequence(&[1.0, 5.0, 3.0, 2.0, 0.0, 9.0], 3);
    assert_eq!((out.data, out.steps), (vec![3.0, 5.0], vec![1]));
}

#[test]
fn precision_other_than_f32_or_bf16_is_refused() {
    let d = Dir::new();
    write(&d, &good_lstm_head(&d));
    let msg = err(&d.model(&format!("precision = \"fp16\"\n{LSTM_HEAD}")));
    assert_has(
        &msg,
        &["model.toml", "`precision` = \"fp16\"", "\"f32\"", "\"bf16\""],
    );
}

/// bf16 where it cannot run is refused with the reason (the portable kernels are forced
/// here, as on a CPU without AVX512_BF16); where it runs, `inspect` prints its error against
/// f32. Through the binary, as a user sees it.
#[test]
fn bf16_is_refused_without_the_kernel_and_inspect_reports_its_error() {
    let d = Dir::new();
    write(&d, &good_lstm_head(&d));
    let model = d.model(&format!("precision = \"bf16\"\n{LSTM_HEAD}"));
    let inspect = |generic: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_seqflow"));
        c.arg("inspect").arg(&model);
        if generic {
            c.env("SEQFLOW_KERNEL", "generic");
        }
        c.output().unwrap()
    };
    let o = inspect(true);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_has(
        &stderr,
        &[
            "model.toml",
            "precision = \"bf16\"",
            "AVX512_BF16",
            "remove the line",
        ],
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    if seqflow::kernels::fused::bf16_supported() {
        let o = inspect(false);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_has(
            &stdout,
            &["precision        bf16 in #0 (lstm \"lstm\")", "max |bf16 - f32| "],
        );
    }
}
