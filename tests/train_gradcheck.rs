//! Gradients of the trainable form against central finite differences in f64, for every
//! layer kind and option, stacked and bidirectional, over a padded batch of unequal
//! lengths. Also: the trainable forward equals the inference forward per sequence, and
//! truncated-BPTT chunks with carried state give the whole-sequence forward.

use std::path::Path;

use seqflow::model::config::ModelConfig;
use seqflow::model::tensors::init as init_tensors;
use seqflow::model::weights::WeightStore;
use seqflow::train::net::{build, Net};
use seqflow::train::seq::Seq;
use seqflow::vocab::SplitMix;
use seqflow::Model;

const INPUT: usize = 3;

fn make(layers: &str, seed: u64) -> (Model, Net, Vec<f64>) {
    let text = format!("input_size = {INPUT}\n{layers}");
    let path = Path::new("gradcheck.toml");
    let config = ModelConfig::parse(&text, path).expect("model toml");
    let tensors = init_tensors(&config, INPUT, seed).expect("init");
    let (model, net, mut values) = build(config, WeightStore::from_tensors(path, tensors)).expect("build");
    // Larger than PyTorch's init so that every nonlinearity works away from its linear part.
    let mut rng = SplitMix::new(seed ^ 0xABCD);
    values.iter_mut().for_each(|v| *v = rng.uniform(0.6) as f64);
    (model, net, values)
}

fn batch(lens: &[usize], seed: u64) -> Seq {
    let mut x = Seq::zeros(lens, INPUT);
    let mut rng = SplitMix::new(seed);
    for t in 0..x.t {
        for i in 0..x.b {
            if x.valid(t, i) {
                x.row_mut(t, i)
                    .iter_mut()
                    .for_each(|v| *v = rng.uniform(1.5) as f64);
            }
        }
    }
    x
}

/// `L = sum(c * y) + 0.5 * sum(y^2)` over valid output rows: every output matters, nonlinearly.
fn loss(y: &Seq, c: &[f64]) -> f64 {
    let mut l = 0.0;
    for t in 0..y.t {
        for i in 0..y.b {
            if y.valid(t, i) {
                let r = t * y.b + i;
                for (j, v) in y.row(t, i).iter().enumerate() {
                    l += c[(r * y.w + j) % c.len()] * v + 0.5 * v * v;
                }
            }
        }
    }
    l
}

fn dloss(y: &Seq, c: &[f64]) -> Seq {
    let mut d = y.clone();
    for (k, v) in d.data.iter_mut().enumerate() {
        *v += c[k % c.len()];
    }
    d.zero_padding();
    d
}

fn eval(net: &Net, values: &[f64], x: &Seq, c: &[f64]) -> f64 {
    let tape = net.forward(values, x.clone(), net.layers.len(), None);
    loss(tape.xs.last().unwrap(), c)
}

fn close(a: f64, n: f64) -> bool {
    (a - n).abs() <= 1e-6 * (1.0 + a.abs().max(n.abs()))
}

fn check(name: &str, layers: &str) {
    let (model, net, values) = make(layers, 7);
    let lens = [9, 5, 7];
    let x = batch(&lens, 11);
    let mut rng = SplitMix::new(3);
    let c: Vec<f64> = (0..97).map(|_| rng.uniform(1.0) as f64).collect();

    // Forward equals the inference model, sequence by sequence (f32 there).
    let tape = net.forward(&values, x.clone(), net.layers.len(), None);
    let y = tape.xs.last().unwrap();
    let values32: Vec<(String, seqflow::model::weights::Tensor)> = net.layout.tensors(&values);
    let cfg = ModelConfig::parse(
        &format!("input_size = {INPUT}\n{layers}"),
        Path::new("gradcheck.toml"),
    )
    .unwrap();
    let m32 = Model::from_parts(cfg, WeightStore::from_tensors(Path::new("g"), values32)).unwrap();
    let _ = model;
    for (i, &len) in lens.iter().enumerate() {
        let seq: Vec<f32> = (0..len)
            .flat_map(|t| x.row(t, i).iter().map(|&v| v as f32))
            .collect();
        let out = m32.forward_sequence(&seq, len);
        assert_eq!(out.steps.len(), y.lens[i], "{name}: output rows of sequence {i}");
        for (t, &step) in out.steps.iter().enumerate() {
            assert_eq!(
                y.tags[t * y.b + i],
                step,
                "{name}: tag of row {t} of sequence {i}"
            );
            for (a, b) in y.row(t, i).iter().zip(out.row(t)) {
                assert!(
                    (a - *b as f64).abs() < 1e-4,
                    "{name}: seq {i} row {t}: train {a} vs model {b}"
                );
            }
        }
    }

    // Analytic gradients.
    let mut grads = vec![0.0; net.layout.total];
    let dx = net.backward(&values, &tape, dloss(y, &c), &mut grads, None);

    // Finite differences on (a sample of) every tensor.
    let eps = 1e-5;
    let mut checked = 0;
    for e in &net.layout.entries {
        let stride = (e.len / 12).max(1);
        for k in (0..e.len).step_by(stride) {
            let idx = e.offset + k;
            let mut v = values.clone();
            v[idx] += eps;
            let up = eval(&net, &v, &x, &c);
            v[idx] -= 2.0 * eps;
            let down = eval(&net, &v, &x, &c);
            let num = (up - down) / (2.0 * eps);
            assert!(
                close(grads[idx], num),
                "{name}: d/d {}[{k}]: backprop {} vs finite difference {num}",
                e.name,
                grads[idx]
            );
            checked += 1;
        }
    }
    assert!(checked > 0 || net.layout.total == 0);
    // And the input gradient.
    for r in (0..x.rows()).step_by(2) {
        let (t, i) = (r / x.b, r % x.b);
        if !x.valid(t, i) {
            assert!(
                dx.row(t, i).iter().all(|&v| v == 0.0),
                "{name}: padding got a gradient"
            );
            continue;
        }
        for j in 0..INPUT {
            let mut xp = x.clone();
            xp.row_mut(t, i)[j] += eps;
            let up = eval(&net, &values, &xp, &c);
            xp.row_mut(t, i)[j] -= 2.0 * eps;
            let down = eval(&net, &values, &xp, &c);
            let num = (up - down) / (2.0 * eps);
            let a = dx.row(t, i)[j];
            assert!(
                close(a, num),
                "{name}: d/dx[{t},{i},{j}]: backprop {a} vs finite difference {num}"
            );
        }
    }

    // Truncated BPTT: chunks with carried state give the whole-sequence forward.
    if net.non_causal.is_none() {
        let mut carry = net.zero_carry(x.b);
        let mut got: Vec<Vec<Vec<f64>>> = vec![Vec::new(); x.b];
        let mut start = 0;
        for chunk in [3usize, 4, 2] {
            let lens_c: Vec<usize> = lens.iter().map(|&l| l.saturating_sub(start).min(chunk)).collect();
            let mut xc = Seq::zeros(&lens_c, INPUT);
            for (i, &len) in lens_c.iter().enumerate() {
                for t in 0..len {
                    xc.row_mut(t, i).copy_from_slice(x.row(start + t, i));
                }
            }
            let tc = net.forward(&values, xc, net.layers.len(), Some(&mut carry));
            let yc = tc.xs.last().unwrap();
            for (i, rows) in got.iter_mut().enumerate() {
                for t in 0..yc.lens[i] {
                    rows.push(yc.row(t, i).to_vec());
                }
            }
            start += chunk;
        }
        for (i, rows) in got.iter().enumerate() {
            assert_eq!(rows.len(), y.lens[i], "{name}: chunked rows of sequence {i}");
            for (t, row) in rows.iter().enumerate() {
                for (a, b) in row.iter().zip(y.row(t, i)) {
                    assert!(
                        (a - b).abs() < 1e-12,
                        "{name}: chunked seq {i} row {t}: {a} vs {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn conv_causal_dilated_relu_linear() {
    check(
        "conv causal",
        r#"
[[layers]]
type = "conv1d"
name = "conv"
out_channels = 4
kernel_size = 3
dilation = 2
[[layers]]
type = "relu"
[[layers]]
type = "linear"
name = "head"
out_features = 2
"#,
    );
}

#[test]
fn conv_valid_strided_tanh() {
    check(
        "conv valid stride 2",
        r#"
[[layers]]
type = "conv1d"
name = "conv"
out_channels = 3
kernel_size = 3
stride = 2
padding = "valid"
[[layers]]
type = "tanh"
[[layers]]
type = "linear"
name = "head"
out_features = 2
"#,
    );
}

#[test]
fn conv_same_even_kernel_sigmoid_linear_without_bias() {
    check(
        "conv same",
        r#"
[[layers]]
type = "conv1d"
name = "conv"
out_channels = 3
kernel_size = 4
padding = "same"
[[layers]]
type = "sigmoid"
[[layers]]
type = "linear"
name = "head"
out_features = 2
bias = false
"#,
    );
}

#[test]
fn conv_without_bias_pools_softmax() {
    check(
        "pools",
        r#"
[[layers]]
type = "conv1d"
name = "conv"
out_channels = 4
kernel_size = 2
bias = false
[[layers]]
type = "maxpool1d"
kernel = 2
[[layers]]
type = "avgpool1d"
kernel = 2
stride = 1
[[layers]]
type = "linear"
name = "head"
out_features = 3
[[layers]]
type = "softmax"
"#,
    );
}

#[test]
fn rnn_tanh_stacked() {
    check(
        "rnn tanh x2",
        r#"
[[layers]]
type = "rnn"
name = "rnn"
hidden_size = 4
num_layers = 2
"#,
    );
}

#[test]
fn rnn_relu_bidirectional() {
    check(
        "rnn relu bidir",
        r#"
[[layers]]
type = "rnn"
name = "rnn"
nonlinearity = "relu"
hidden_size = 4
bidirectional = true
[[layers]]
type = "identity"
"#,
    );
}

#[test]
fn lstm_stacked_bidirectional() {
    check(
        "lstm x2 bidir",
        r#"
[[layers]]
type = "lstm"
name = "lstm"
hidden_size = 4
num_layers = 2
bidirectional = true
[[layers]]
type = "linear"
name = "head"
out_features = 1
"#,
    );
}

#[test]
fn lstm_projection_and_no_bias() {
    check(
        "lstm proj",
        r#"
[[layers]]
type = "lstm"
name = "a"
hidden_size = 5
proj_size = 2
num_layers = 2
[[layers]]
type = "lstm"
name = "b"
hidden_size = 3
bias = false
"#,
    );
}

#[test]
fn gru_stacked_and_bidirectional_without_bias() {
    check(
        "gru",
        r#"
[[layers]]
type = "gru"
name = "g1"
hidden_size = 4
num_layers = 2
[[layers]]
type = "gru"
name = "g2"
hidden_size = 3
bidirectional = true
bias = false
"#,
    );
}

#[test]
fn cnn_lstm_head() {
    check(
        "cnn -> lstm",
        r#"
[[layers]]
type = "conv1d"
name = "conv"
out_channels = 4
kernel_size = 3
[[layers]]
type = "relu"
[[layers]]
type = "lstm"
name = "lstm"
hidden_size = 5
[[layers]]
type = "linear"
name = "head"
out_features = 1
[[layers]]
type = "sigmoid"
"#,
    );
}
