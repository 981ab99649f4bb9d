//! `seqflow train` end to end on real Parquet files: a learnable task reaches a loss bound,
//! the written weights load as a model, results are identical for any thread count, early
//! stopping stops, and bad input fails with a message naming what is wrong.

mod common;

use std::path::{Path, PathBuf};

use common::pipeline::*;
use seqflow::train::config::TrainConfig;
use seqflow::train::trainer::{train, TrainOptions, TrainReport};
use seqflow::vocab::SplitMix;
use seqflow::Model;

/// `keys` sequences of `steps`: features f0, f1 uniform in [-1, 1]; f2 = f0[t] + f1[t-1] -
/// f0[t-2] (a target that needs memory of two steps); f3 = 1 if f0[t] + f0[t-1] > 0 (a label).
fn dataset(dir: &Path, keys: usize, steps: usize) -> PathBuf {
    let mut rng = SplitMix::new(5);
    let mut rows = Vec::new();
    for k in 0..keys {
        let mut hist: Vec<(f32, f32)> = Vec::new();
        for t in 0..steps {
            let (a, b) = (rng.uniform(1.0), rng.uniform(1.0));
            hist.push((a, b));
            let get = |d: usize| if t >= d { hist[t - d] } else { (0.0, 0.0) };
            let y = get(0).0 + get(1).1 - get(2).0;
            let label = if get(0).0 + get(1).0 > 0.0 { 1.0 } else { 0.0 };
            rows.push(Row {
                key: format!("k{k:03}"),
                time: 1000 + t as i64 * 10,
                feats: vec![a, b, y, label],
            });
        }
    }
    let p = dir.join("train.parquet");
    write_parquet(&p, &rows, 500);
    p
}

fn model_file(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("m.toml");
    std::fs::write(&p, format!("weights = \"m.safetensors\"\ninput_size = 2\n{body}")).unwrap();
    p
}

const LSTM: &str = r#"
[[layers]]
type = "lstm"
name = "lstm"
hidden_size = 12
[[layers]]
type = "linear"
name = "head"
out_features = 1
"#;

fn train_file(dir: &Path, task: &str, train: &str) -> PathBuf {
    let p = dir.join("train.toml");
    std::fs::write(
        &p,
        format!(
            r#"
[model]
path = "m.toml"
init = true
[data]
path = "train.parquet"
key = "key"
time = "t"
features = ["f0", "f1"]
[task]
{task}
[train]
{train}
[output]
weights = "m.safetensors"
loss_csv = "out/loss.csv"
plot = "out/loss.svg"
"#
        ),
    )
    .unwrap();
    p
}

fn losses(dir: &Path) -> Vec<(f64, f64)> {
    std::fs::read_to_string(dir.join("out/loss.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[1].parse().unwrap(), f[2].parse().unwrap_or(f64::NAN))
        })
        .collect()
}

/// Trains in this process and returns the report (numbers come from here, never from the
/// printed summary).
fn train_report(cfg: &Path, threads: usize, epochs: Option<usize>) -> TrainReport {
    let config = TrainConfig::load(cfg).unwrap_or_else(|e| panic!("{e}"));
    let opts = TrainOptions {
        threads,
        epochs,
        ..TrainOptions::default()
    };
    train(&config, &opts).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn regression_with_memory_reaches_a_loss_bound_and_is_thread_count_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dataset(d, 40, 30);
    model_file(d, LSTM);
    let cfg = train_file(
        d,
        "kind = \"regress\"\ntargets = [\"f2\"]",
        "epochs = 40\nbatch_keys = 8\ntbptt = 10\nlr = 0.02\nclip_norm = 1.0\nvalidation = 0.25\nseed = 3",
    );
    let report = train_report(&cfg, 1, None);
    assert_eq!((report.train_keys, report.val_keys), (30, 10));
    let l = losses(d);
    assert_eq!(l.len(), 40);
    let (first, last) = (l[0].1, l.iter().map(|x| x.1).fold(f64::INFINITY, f64::min));
    // The target has variance ~1; predicting 0 scores ~1. Memory of two steps is needed.
    assert!(last < 0.05, "best validation MSE {last} (first epoch {first})");
    assert!(std::fs::read_to_string(d.join("out/loss.svg"))
        .unwrap()
        .contains("<polyline"));
    let weights1 = std::fs::read(d.join("m.safetensors")).unwrap();
    let model = Model::load(&d.join("m.toml")).expect("trained weights load as a model");
    assert_eq!(model.output_size(), 1);

    // Same seed, three threads: the same bytes.
    run_ok(&["train", cfg.to_str().unwrap(), "-w", "3"]);
    assert_eq!(
        weights1,
        std::fs::read(d.join("m.safetensors")).unwrap(),
        "-w 3 differs from -w 1"
    );
}

#[test]
fn classification_of_the_last_step_and_per_step_tags() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dataset(d, 48, 12);
    model_file(
        d,
        r#"
[[layers]]
type = "gru"
name = "gru"
hidden_size = 8
[[layers]]
type = "linear"
name = "head"
out_features = 1
[[layers]]
type = "sigmoid"
"#,
    );
    for task in [
        "kind = \"tag\"\nlabel = \"f3\"",
        "kind = \"classify\"\nlabel = \"f3\"",
    ] {
        let cfg = train_file(
            d,
            task,
            "epochs = 60\nbatch_keys = 16\nlr = 0.03\nvalidation = 0.25\nseed = 1",
        );
        let report = train_report(&cfg, 1, None);
        let best = report
            .epochs
            .iter()
            .find(|e| e.epoch == report.best_epoch)
            .unwrap();
        let acc = best.val_accuracy.expect("classification reports accuracy");
        // Chance is ~0.5; the label depends on the last two steps only.
        let bound = if task.contains("tag") { 0.9 } else { 0.75 };
        assert!(acc >= bound, "{task}: validation accuracy {acc}\n{report}");
    }
}

#[test]
fn early_stopping_stops_and_keeps_the_best_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dataset(d, 16, 10);
    model_file(d, LSTM);
    // A learning rate far too high: validation loss stops improving quickly.
    let cfg = train_file(
        d,
        "kind = \"forecast\"\ntargets = [\"f2\"]\nhorizon = 2",
        "epochs = 200\nbatch_keys = 4\nlr = 0.5\noptimizer = \"sgd\"\nmomentum = 0.9\nclip_norm = 5.0\nvalidation = 0.25\npatience = 3",
    );
    let report = train_report(&cfg, 1, None);
    assert!(report.stopped_early, "{report}");
    let l = losses(d);
    assert!(l.len() < 200);
    let best = l
        .iter()
        .map(|x| x.1)
        .enumerate()
        .fold((0, f64::INFINITY), |b, (i, v)| if v < b.1 { (i, v) } else { b });
    assert_eq!(l.len(), best.0 + 1 + 3, "stops 3 epochs after the best");
    assert_eq!(report.best_epoch, best.0 + 1, "{report}");
}

#[test]
fn grad_report_shows_gradients_by_distance() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dataset(d, 8, 25);
    model_file(d, LSTM);
    let cfg = train_file(
        d,
        "kind = \"regress\"\ntargets = [\"f2\"]",
        "epochs = 1\nvalidation = 0",
    );
    let report = d.join("out/grad.csv");
    let o = seqflow(&[
        "train",
        cfg.to_str().unwrap(),
        "--grad-report",
        report.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("initial") && table.contains("trained") && table.contains("d=10"),
        "{table}"
    );
    let csv = std::fs::read_to_string(&report).unwrap();
    // 25 distances x 2 (initial, trained) x 1 cell, plus the header.
    assert_eq!(csv.lines().count(), 1 + 2 * 25, "{csv}");
    let norm = |when: &str, dist: usize| -> f64 {
        csv.lines()
            .find(|l| l.starts_with(when) && l.split(',').nth(2) == Some(&dist.to_string()))
            .and_then(|l| l.rsplit(',').next()?.parse().ok())
            .unwrap()
    };
    // The loss sits on the last step: its own hidden state gets the largest gradient.
    assert!(norm("initial", 0) > norm("initial", 20), "{csv}");
    assert!(d.join("out/grad.svg").exists());
}

fn fails(d: &Path, cfg: &Path, needle: &str) {
    let o = seqflow(&["train", cfg.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let _ = d;
}

#[test]
fn bad_input_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dataset(d, 6, 8);
    model_file(d, LSTM);
    let cfg = train_file(d, "kind = \"regress\"\ntargets = [\"nope\"]", "epochs = 1");
    fails(d, &cfg, "target column `nope` not found");
    let cfg = train_file(d, "kind = \"regress\"\ntargets = [\"f2\", \"f3\"]", "epochs = 1");
    fails(d, &cfg, "outputs 1 value(s) per step but [task] targets names 2");
    let cfg = train_file(d, "kind = \"tag\"\nlabel = \"f2\"", "epochs = 1");
    fails(d, &cfg, "is not a class in 0..1");
    // A missing data file: named once, its OS reason printed once.
    std::fs::rename(d.join("train.parquet"), d.join("moved.parquet")).unwrap();
    let cfg = train_file(d, "kind = \"regress\"\ntargets = [\"f2\"]", "epochs = 1");
    let o = seqflow(&["train", cfg.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(
        err.contains("train.parquet") && err.matches("No such file").count() == 1,
        "{err}"
    );
    std::fs::rename(d.join("moved.parquet"), d.join("train.parquet")).unwrap();
    let cfg = train_file(d, "kind = \"guess\"", "epochs = 1");
    fails(d, &cfg, "kind = \"guess\" is unknown");
    // A model that cannot be initialized without its sizes.
    model_file(d, "[[layers]]\ntype = \"lstm\"\nname = \"lstm\"\n");
    let cfg = train_file(d, "kind = \"regress\"\ntargets = [\"f2\"]", "epochs = 1");
    fails(d, &cfg, "must state `hidden_size`");
    // Truncated BPTT needs a causal model.
    model_file(d, "[[layers]]\ntype = \"gru\"\nname = \"g\"\nhidden_size = 3\nbidirectional = true\n[[layers]]\ntype = \"linear\"\nname = \"h\"\nout_features = 1\n");
    let cfg = train_file(
        d,
        "kind = \"regress\"\ntargets = [\"f2\"]",
        "epochs = 1\ntbptt = 4",
    );
    fails(d, &cfg, "bidirectional");
}

#[test]
fn csv_data_auto_normalize_nan_duplicates_then_fine_tuning() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // CSV, features on very different scales, one NaN, one re-sent row.
    let mut csv = String::from("key,t,f0,f1,f2\n");
    let mut rng = SplitMix::new(9);
    for k in 0..12 {
        let mut prev = 0.0f32;
        for t in 0..20 {
            let (a, b) = (rng.uniform(1.0) * 100.0 + 500.0, rng.uniform(1.0));
            let f0 = if k == 3 && t == 7 {
                "NaN".to_string()
            } else {
                a.to_string()
            };
            csv.push_str(&format!("k{k},{t},{f0},{b},{}\n", b + prev));
            if k == 5 && t == 4 {
                csv.push_str(&format!("k{k},{t},{a},{b},{}\n", b + prev));
            }
            prev = b;
        }
    }
    std::fs::write(d.join("data.csv"), csv).unwrap();
    model_file(d, LSTM);
    let write = |init: bool, nan: &str| {
        let p = d.join("t.toml");
        std::fs::write(
            &p,
            format!(
                r#"
[model]
path = "m.toml"
init = {init}
[data]
path = "data.csv"
key = "key"
time = "t"
features = ["f0", "f1"]
normalize = "auto"
nan = "{nan}"
[task]
kind = "regress"
targets = ["f2"]
[train]
epochs = 50
lr = 0.02
batch_keys = 4
validation = 0.25
[output]
weights = "out/w.safetensors"
loss_csv = "out/loss.csv"
"#
            ),
        )
        .unwrap();
        p
    };
    let cfg = write(true, "error");
    // Named as a pipeline names it (the same reader): line 69 is data row 67 (keys 0..2 x 20,
    // then k3's t = 0..6) after the header.
    fails(d, &cfg, "line 69: feature `f0` is NaN");

    let cfg = write(true, "ffill");
    let first = train_report(&cfg, 1, Some(8));
    assert!(first.initialized && first.epochs.len() == 8, "{first}");
    assert_eq!(first.duplicates, 1, "{first}");
    // f0 is ~500 +- 100: the fitted mean says so (and is printed for the pipeline).
    let mean0 = first.normalize.as_ref().expect("normalize = \"auto\"").mean[0];
    assert!((mean0 - 500.0).abs() < 20.0, "{mean0}");
    assert!(d.join("out/w.safetensors").exists() && !d.join("m.safetensors").exists());
    let initial = losses(d);
    assert_eq!(initial.len(), 8);

    // Fine-tuning starts from those weights: its first epoch is already better than the
    // fresh run's first epoch.
    let cfg = write(false, "ffill");
    // Through the binary, as users run it: the summary says what happened.
    let tuned = run_ok(&["train", cfg.to_str().unwrap(), "--epochs", "1"]);
    assert!(tuned.contains("(fine-tuned)"), "{tuned}");
    let after = losses(d);
    assert_eq!(after.len(), 1);
    assert!(
        after[0].0 < initial[0].0,
        "fine-tune epoch 1 {} vs fresh epoch 1 {}",
        after[0].0,
        initial[0].0
    );
}

#[test]
fn bundled_training_files_parse_and_name_existing_models() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(root.join("pipelines/train")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            let cfg = seqflow::train::config::TrainConfig::load(&p).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                cfg.model.exists(),
                "{}: model {}",
                p.display(),
                cfg.model.display()
            );
            Model::load(&cfg.model).unwrap();
            n += 1;
        }
    }
    assert!(n >= 1);
}

#[test]
fn training_sees_exactly_the_values_serving_sees() {
    // One input layer: a pipeline whose model is the identity emits its prepared features,
    // which must equal what training loads, bit for bit (normalization in f64 rounded to
    // f32, NaN forward-filled per key in time order, re-sent rows dropped).
    use seqflow::input::files::FileSource;
    use seqflow::input::Columns;
    use seqflow::train::data::{load, DataSpec};
    use seqflow::vocab::{FileFormat, NanPolicy, Normalize};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut rng = SplitMix::new(4);
    let mut csv = String::from("key,t,a,b\n");
    for i in 0..300 {
        let (k, t) = (i % 7, i / 7);
        let a = if rng.next_f32() < 0.1 {
            "NaN".to_string()
        } else {
            (rng.normal() * 1e3).to_string()
        };
        csv.push_str(&format!("k{k},{t},{a},{}\n", rng.uniform(1.0) as f64 / 3.0));
        if i % 50 == 0 {
            csv.push_str(&format!("k{k},{t},9,9\n")); // re-sent: the first row wins
        }
    }
    std::fs::write(d.join("data.csv"), csv).unwrap();
    std::fs::write(
        d.join("id.toml"),
        "input_size = 2\n[[layers]]\ntype = \"identity\"\n",
    )
    .unwrap();
    let columns = Columns {
        key: "key".into(),
        time: "t".into(),
        features: vec!["a".into(), "b".into()],
        normalize: Some(Normalize {
            mean: vec![3.3, -0.1],
            std: vec![7.7, 0.3],
        }),
        nan: NanPolicy::Ffill,
    };
    let p = write_pipeline(
        d,
        "p.toml",
        "[source]\nformat = \"csv\"\npath = \"data.csv\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"a\", \"b\"]\n\
         normalize = { mean = [3.3, -0.1], std = [7.7, 0.3] }\nnan = \"ffill\"\nbatch_rows = 64\n\
         [model]\npath = \"id.toml\"\n[output]\nformat = \"csv\"\npath = \"out.csv\"\n",
    );
    run_report(&p, 2, Default::default());
    let served = read_csv(&d.join("out.csv"));
    let spec = DataSpec {
        source: FileSource {
            format: FileFormat::Csv,
            path: d.join("data.csv"),
        },
        columns,
        extra: vec![],
        extra_role: "target",
    };
    let trained = load(&spec, true).unwrap();
    assert_eq!(trained.duplicates, 6);
    assert_eq!(trained.sequences.len(), served.len());
    for s in &trained.sequences {
        let got = &served[&s.key];
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), s.times, "key {}", s.key);
        for (i, v) in got.values().enumerate() {
            let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(v), bits(&s.x[i * 2..i * 2 + 2]), "key {} step {i}", s.key);
        }
    }
}

#[test]
fn training_never_replaces_what_it_was_not_asked_to() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dataset(d, 8, 6);
    model_file(d, LSTM);
    // Without [output] weights, a fresh run (init = true) writes the model file's weights only
    // while they do not exist: a second one must not replace them.
    let cfg = train_file(
        d,
        "kind = \"regress\"\ntargets = [\"f2\"]",
        "epochs = 1\nvalidation = 0.25",
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("weights = \"m.safetensors\"\n", "");
    std::fs::write(&cfg, &text).unwrap();
    run_ok(&["train", cfg.to_str().unwrap()]);
    let weights = std::fs::read(d.join("m.safetensors")).unwrap();
    fails(d, &cfg, "init = true would replace the existing weights");
    assert_eq!(std::fs::read(d.join("m.safetensors")).unwrap(), weights);
    // Outputs over the data, the model file or each other are refused before anything is
    // written.
    for (line, want) in [
        (
            "weights = \"w2.safetensors\"\nloss_csv = \"train.parquet\"",
            "the loss CSV would overwrite the data",
        ),
        (
            "weights = \"m.toml\"",
            "the weights would overwrite the model file",
        ),
        ("weights = \"out/loss.csv\"", "the weights and the loss CSV"),
    ] {
        let bad = text.replace("[output]", &format!("[output]\n{line}")).replace(
            "loss_csv = \"out/loss.csv\"\n",
            if line.contains("loss_csv") {
                ""
            } else {
                "loss_csv = \"out/loss.csv\"\n"
            },
        );
        std::fs::write(&cfg, bad).unwrap();
        fails(d, &cfg, want);
    }
    assert_eq!(std::fs::read(d.join("m.safetensors")).unwrap(), weights);
}
