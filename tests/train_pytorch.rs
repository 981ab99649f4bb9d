//! Training against PyTorch autograd: for an LSTM, a GRU, a bidirectional RNN and a
//! CNN -> LSTM stack, seqflow's loss and every parameter gradient equal PyTorch's (float64),
//! and two optimizer steps with gradient clipping land on PyTorch's parameters.
//! Fixtures: tests/fixtures/make_train_golden.py.

use std::path::{Path, PathBuf};

use serde_json::Value;

use seqflow::model::config::ModelConfig;
use seqflow::model::weights::WeightStore;
use seqflow::train::loss::{Loss, Targets};
use seqflow::train::net::{build, Net};
use seqflow::train::optim::{clip_grad_norm, Optimizer, OptimizerKind};
use seqflow::train::seq::Seq;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

struct Case {
    net: Net,
    values: Vec<f64>,
    x: Seq,
    targets: Targets,
    loss: Loss,
    fixture: Value,
}

fn load(name: &str) -> Case {
    let toml = dir().join(format!("{name}.toml"));
    let config = ModelConfig::load(&toml).unwrap();
    let store = WeightStore::load(config.weights.as_ref().unwrap()).unwrap();
    let (_, net, values) = build(config, store).unwrap();
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join(format!("{name}.json"))).unwrap()).unwrap();
    let lens: Vec<usize> = fixture["lens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let mut x = Seq::zeros(&lens, net.input_size);
    for (i, xi) in fixture["x"].as_array().unwrap().iter().enumerate() {
        for (t, row) in floats(xi).chunks(net.input_size).enumerate() {
            x.row_mut(t, i).copy_from_slice(row);
        }
    }
    let b = lens.len();
    let ys: Vec<Vec<f64>> = fixture["y"].as_array().unwrap().iter().map(floats).collect();
    let (loss, targets) = match fixture["task"].as_str().unwrap() {
        "classify" => (
            Loss::CrossEntropy,
            Targets::Last {
                labels: ys.iter().map(|y| y[0]).collect(),
                ends: vec![true; b],
            },
        ),
        task => {
            let w = if task == "regress" { net.output_size() } else { 1 };
            let mut data = vec![f64::NAN; x.t * b * w];
            for (i, y) in ys.iter().enumerate() {
                for (t, row) in y.chunks(w).enumerate() {
                    let r = t * b + i;
                    data[r * w..(r + 1) * w].copy_from_slice(row);
                }
            }
            let loss = if task == "regress" {
                Loss::Mse
            } else {
                Loss::BinaryLogits { pos_weight: 2.0 }
            };
            (loss, Targets::Steps { w, data })
        }
    };
    Case {
        net,
        values,
        x,
        targets,
        loss,
        fixture,
    }
}

/// Mean loss and its gradient, as PyTorch's mean reduction over the batch.
fn loss_and_grads(c: &Case, values: &[f64]) -> (f64, Vec<f64>) {
    let tape = c.net.forward(values, c.x.clone(), c.net.layers.len(), None);
    let lv = c.loss.eval(tape.xs.last().unwrap(), &c.targets);
    let mut dy = lv.grad;
    dy.data.iter_mut().for_each(|v| *v /= lv.count);
    let mut grads = vec![0.0; c.net.layout.total];
    c.net.backward(values, &tape, dy, &mut grads, None);
    (lv.sum / lv.count, grads)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + b.abs())
}

fn check(name: &str) {
    let c = load(name);
    let (loss, grads) = loss_and_grads(&c, &c.values);
    let want = c.fixture["loss"].as_f64().unwrap();
    assert!(close(loss, want), "{name}: loss {loss} vs PyTorch {want}");
    let expected = c.fixture["grads"].as_object().unwrap();
    assert_eq!(expected.len(), c.net.layout.entries.len(), "{name}: tensor count");
    for e in &c.net.layout.entries {
        let pt = floats(&expected[&e.name]);
        let ours = &grads[e.offset..e.offset + e.len];
        assert_eq!(pt.len(), ours.len(), "{name}: {}", e.name);
        for (k, (a, b)) in ours.iter().zip(&pt).enumerate() {
            assert!(
                close(*a, *b),
                "{name}: grad {}[{k}]: seqflow {a} vs PyTorch {b}",
                e.name
            );
        }
    }

    // Two steps of the fixture's optimizer with clip_grad_norm_(0.5).
    let kind = match c.fixture["optimizer"].as_str().unwrap() {
        "adam" => (
            OptimizerKind::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            0.01,
        ),
        _ => (OptimizerKind::Sgd { momentum: 0.9 }, 0.05),
    };
    let mut opt = Optimizer::new(kind.0, kind.1, 0.001, c.values.len());
    let mut values = c.values.clone();
    for _ in 0..2 {
        let (_, mut g) = loss_and_grads(&c, &values);
        clip_grad_norm(&mut g, Some(0.5));
        opt.step(&mut values, &mut g);
    }
    let after = c.fixture["after"].as_object().unwrap();
    for e in &c.net.layout.entries {
        let pt = floats(&after[&e.name]);
        for (k, (a, b)) in values[e.offset..e.offset + e.len].iter().zip(&pt).enumerate() {
            assert!(
                close(*a, *b),
                "{name}: after 2 steps {}[{k}]: seqflow {a} vs PyTorch {b}",
                e.name
            );
        }
    }
}

#[test]
fn lstm_two_layers_mse_adam() {
    check("lstm");
}

#[test]
fn gru_cross_entropy_last_step_sgd_momentum() {
    check("gru");
}

#[test]
fn bidirectional_rnn_bce_with_logits_per_step_adam() {
    check("rnn");
}

#[test]
fn cnn_lstm_stack_mse_sgd() {
    check("cnn_lstm");
}
