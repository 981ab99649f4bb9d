//! `seqflow run` end to end: the real binary on real Parquet/CSV/JSONL files.
//!
//! The reference is the model's offline form run over each key's whole sequence (itself
//! checked against PyTorch in `golden_pytorch.rs`): for every emit mode, every worker and
//! process count, and inputs whose keys are interleaved arbitrarily across files, row groups
//! and epochs, the pipeline's output rows must equal it.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::pipeline::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use seqflow::model::builder::ModelBuilder;
use seqflow::pipeline::Overrides;
use seqflow::{Model, Packed, Workspace};

const TOL: f32 = 1e-5;
/// Rows per record batch (= per epoch) in these pipelines: small, so that keys span many.
const BATCH_ROWS: usize = 5;
/// Rows per Parquet row group.
const ROW_GROUP: usize = 13;

/// Random keys (1 to 60 steps each, some with exactly one), interleaved at random but each
/// key in time order, cut into 3 files (two of 13-row groups, the last of one group that
/// several workers read in parts), and shuffled inside every 5-row epoch (timely does not
/// order records within an epoch; seqflow must).
fn interleaved_dataset(dir: &Path, seed: u64, width: usize) -> Vec<Row> {
    let mut rng = StdRng::seed_from_u64(seed);
    let keys = 40;
    let mut seqs: Vec<Vec<Row>> = (0..keys)
        .map(|k| {
            let len = if k % 7 == 0 { 1 } else { rng.random_range(1..=60) };
            let mut t = rng.random_range(0..1000i64);
            (0..len)
                .map(|_| {
                    t += rng.random_range(1..50);
                    Row {
                        key: format!("k{k:03}"),
                        time: t,
                        feats: (0..width).map(|_| rng.random_range(-2.0f32..2.0)).collect(),
                    }
                })
                .collect()
        })
        .collect();
    for s in &mut seqs {
        s.reverse(); // pop from the end = take in time order
    }
    let mut all = Vec::new();
    loop {
        let live: Vec<usize> = (0..keys).filter(|&k| !seqs[k].is_empty()).collect();
        if live.is_empty() {
            break;
        }
        let k = live[rng.random_range(0..live.len())];
        all.push(seqs[k].pop().unwrap());
    }
    let in_dir = dir.join("in");
    std::fs::create_dir_all(&in_dir).unwrap();
    let cuts = [0, all.len() / 3 + 4, 2 * all.len() / 3 - 2, all.len()];
    for f in 0..3 {
        let mut rows = all[cuts[f]..cuts[f + 1]].to_vec();
        // The last file is one row group of many batches: several workers read it in parts.
        let group = if f == 2 { rows.len() } else { ROW_GROUP };
        for group in rows.chunks_mut(group) {
            for epoch in group.chunks_mut(BATCH_ROWS) {
                epoch.shuffle(&mut rng);
            }
        }
        write_parquet_pages(&in_dir.join(format!("part-{f}.parquet")), &rows, group, Some(7));
    }
    all
}

/// Each key's last output only (what `sequence_end` emits).
fn last_per_key(
    all: &BTreeMap<String, BTreeMap<i64, Vec<f32>>>,
) -> BTreeMap<String, BTreeMap<i64, Vec<f32>>> {
    all.iter()
        .map(|(k, m)| {
            let (t, v) = m.iter().next_back().unwrap();
            (k.clone(), BTreeMap::from([(*t, v.clone())]))
        })
        .collect()
}

fn pipeline_text(model: &Path, width: usize, output: &str, emit: &str, extra_source: &str) -> String {
    let feats: Vec<String> = (0..width).map(|j| format!("\"f{j}\"")).collect();
    format!(
        r#"
[source]
format = "parquet"
path = "in"
key = "key"
time = "t"
features = [{}]
batch_rows = {BATCH_ROWS}
{extra_source}

[model]
path = "{}"

[output]
format = "csv"
path = "{output}"
{emit}
"#,
        feats.join(", "),
        model.display()
    )
}

#[test]
fn every_step_equals_offline_per_key_for_any_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let rows = interleaved_dataset(dir.path(), 1, 3);
    let (mpath, model) = save_model(dir.path(), &causal_model(3));
    let p = write_pipeline(
        dir.path(),
        "p.toml",
        &pipeline_text(&mpath, 3, "out/w1.csv", "", ""),
    );
    let report = run_report(&p, 1, Overrides::default());
    assert_eq!(
        (report.stats.rows_read, report.stats.keys),
        (rows.len() as u64, 40)
    );
    assert_eq!(report.source, "3 files");
    let p = p.to_str().unwrap();
    let got = read_csv(&dir.path().join("out/w1.csv"));
    assert_close(&got, &offline_every_step(&model, &rows), TOL);

    // Bit-identical rows for other worker counts (row order is free).
    let w1 = sorted_lines(&dir.path().join("out/w1.csv"));
    for w in ["2", "3"] {
        let out = dir.path().join(format!("w{w}.csv"));
        run_ok(&["run", p, "-w", w, "--output", out.to_str().unwrap()]);
        assert_eq!(sorted_lines(&out), w1, "-w {w} differs from -w 1");
    }
}

#[test]
fn two_processes_on_loopback_equal_one() {
    let dir = tempfile::tempdir().unwrap();
    let rows = interleaved_dataset(dir.path(), 2, 2);
    let (mpath, model) = save_model(dir.path(), &causal_model(2));
    let p = write_pipeline(
        dir.path(),
        "p.toml",
        &pipeline_text(&mpath, 2, "out/one.csv", "", ""),
    );
    let p = p.to_str().unwrap();
    run_ok(&["run", p]);
    let hosts = dir.path().join("hosts.txt");
    std::fs::write(
        &hosts,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port()),
    )
    .unwrap();
    let out = dir.path().join("out/two.csv");
    let spawn = |i: &str| {
        seqflow_cmd()
            .args([
                "run",
                p,
                "-n",
                "2",
                "-p",
                i,
                "-w",
                "2",
                "-h",
                hosts.to_str().unwrap(),
            ])
            .args(["--output", out.to_str().unwrap()])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (p0, p1) = (spawn("0"), spawn("1"));
    let (o0, o1) = (p0.wait_with_output().unwrap(), p1.wait_with_output().unwrap());
    assert!(o0.status.success(), "process 0: {}", stderr(&o0));
    assert!(o1.status.success(), "process 1: {}", stderr(&o1));
    assert!(stderr(&o0).contains("4 workers"), "{}", stderr(&o0));
    assert_eq!(sorted_lines(&out), sorted_lines(&dir.path().join("out/one.csv")));
    assert_close(&read_csv(&out), &offline_every_step(&model, &rows), TOL);
}

#[test]
fn sequence_end_emits_each_keys_last_or_all_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let rows = interleaved_dataset(dir.path(), 3, 2);
    // Causal model: sequence_end streams; expected = the last offline output per key.
    let (mpath, model) = save_model(dir.path(), &causal_model(2));
    let all = offline_every_step(&model, &rows);
    let last = last_per_key(&all);
    let p = write_pipeline(
        dir.path(),
        "p.toml",
        &pipeline_text(&mpath, 2, "out/last.csv", "emit = \"sequence_end\"", ""),
    );
    run_ok(&["run", p.to_str().unwrap(), "-w", "2"]);
    assert_close(&read_csv(&dir.path().join("out/last.csv")), &last, TOL);
    let p = write_pipeline(
        dir.path(),
        "p2.toml",
        &pipeline_text(
            &mpath,
            2,
            "out/all.csv",
            "emit = \"sequence_end\"\nall_steps = true",
            "",
        ),
    );
    run_ok(&["run", p.to_str().unwrap()]);
    assert_close(&read_csv(&dir.path().join("out/all.csv")), &all, TOL);
}

/// A strided `valid` convolution before a GRU: emits every other step once its window is
/// full, so windows test the "last output of the window" rule with decimation.
fn strided_model(input: usize) -> ModelBuilder {
    ModelBuilder::new(input, 5)
        .conv1d("conv", 3, 2, 2, 1, "valid")
        .recurrent("gru", "gru", 4, 1)
        .linear("head", 1)
}

#[test]
fn sequence_end_with_a_non_causal_model_runs_whole_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let rows = interleaved_dataset(dir.path(), 4, 2);
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/cnn_same_bilstm");
    // A PyTorch-made bidirectional model with `same` padding (4 inputs): reuse its weights.
    let model_dir = dir.path().join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    for f in ["model.toml", "weights.safetensors"] {
        std::fs::copy(golden.join(f), model_dir.join(f)).unwrap();
    }
    let model = Model::load(&model_dir.join("model.toml")).unwrap();
    assert!(model.check_streamable().is_err());
    let rows4: Vec<Row> = rows
        .iter()
        .map(|r| Row {
            feats: vec![r.feats[0], r.feats[1], -r.feats[0], 0.5],
            ..r.clone()
        })
        .collect();
    // Rewrite the inputs with 4 features.
    std::fs::remove_dir_all(dir.path().join("in")).unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    write_parquet(&dir.path().join("in/all.parquet"), &rows4, ROW_GROUP);
    let all = offline_every_step(&model, &rows4);
    let last = last_per_key(&all);
    let mpath = model_dir.join("model.toml");
    let p = write_pipeline(
        dir.path(),
        "p.toml",
        &pipeline_text(&mpath, 4, "out/last.csv", "emit = \"sequence_end\"", ""),
    );
    run_ok(&["run", p.to_str().unwrap(), "-w", "3"]);
    assert_close(&read_csv(&dir.path().join("out/last.csv")), &last, TOL);

    // every_step is refused for this model, naming the layer and the alternatives.
    let p = write_pipeline(
        dir.path(),
        "bad.toml",
        &pipeline_text(&mpath, 4, "out/x.csv", "", ""),
    );
    let o = seqflow(&["run", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("every_step") && e.contains("conv1d \"conv\"") && e.contains("sequence_end"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn window_runs_the_last_size_steps_every_hop_from_fresh_state() {
    let dir = tempfile::tempdir().unwrap();
    let rows = interleaved_dataset(dir.path(), 5, 2);
    let (mpath, model) = save_model(dir.path(), &strided_model(2));
    let (size, hop) = (6usize, 4usize);
    let mut by_key: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for r in &rows {
        by_key.entry(r.key.clone()).or_default().push(r);
    }
    let mut want: BTreeMap<String, BTreeMap<i64, Vec<f32>>> = BTreeMap::new();
    for (k, seq) in &by_key {
        // Windows end at steps size-1, size-1+hop, ...
        let mut end = size - 1;
        while end < seq.len() {
            let win = &seq[end + 1 - size..=end];
            let x: Vec<f32> = win.iter().flat_map(|r| r.feats.iter().copied()).collect();
            let res = model.forward_sequence(&x, size);
            if !res.steps.is_empty() {
                let lastrow = res.row(res.steps.len() - 1).to_vec();
                want.entry(k.clone())
                    .or_default()
                    .insert(win[size - 1].time, lastrow);
            }
            end += hop;
        }
    }
    assert!(want.values().map(BTreeMap::len).sum::<usize>() > 50);
    let emit = format!("emit = \"window\"\nsize = {size}\nhop = {hop}");
    let p = write_pipeline(
        dir.path(),
        "p.toml",
        &pipeline_text(&mpath, 2, "out/win.csv", &emit, ""),
    );
    run_ok(&["run", p.to_str().unwrap(), "-w", "2"]);
    assert_close(&read_csv(&dir.path().join("out/win.csv")), &want, TOL);
}

#[test]
fn late_and_duplicate_steps_are_counted_reported_and_written_to_rejects() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    let r = |key: &str, time: i64, v: f32| Row {
        key: key.into(),
        time,
        feats: vec![v, -v],
    };
    // Epochs of 5 rows: a (10, 20) and b (5) first; then a duplicate of a@20, a late a@15,
    // and a new a@30 in later epochs.
    let rows = vec![
        r("a", 10, 0.1),
        r("a", 20, 0.2),
        r("b", 5, 0.3),
        r("b", 6, 0.4),
        r("b", 7, 0.5),
        r("a", 20, 9.0),
        r("a", 15, 9.0),
        r("a", 30, 0.6),
        r("b", 8, 0.7),
        r("b", 8, 9.0),
    ];
    write_parquet(&dir.path().join("in/x.parquet"), &rows, 100);
    let (mpath, model) = save_model(dir.path(), &causal_model(2));
    let p = write_pipeline(
        dir.path(),
        "p.toml",
        &pipeline_text(&mpath, 2, "out/o.csv", "", "rejects = \"out/rejects.jsonl\""),
    );
    let report = run_report(&p, 1, Overrides::default());
    assert_eq!((report.stats.late, report.stats.duplicate), (1, 2));
    let rejects = std::fs::read_to_string(dir.path().join("out/rejects.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = rejects
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{rejects}");
    let late = lines.iter().find(|v| v["reason"] == "late").unwrap();
    assert_eq!(
        (
            late["key"].as_str(),
            late["time"].as_i64(),
            late["last_time"].as_i64()
        ),
        (Some("a"), Some(15), Some(20))
    );
    assert_eq!(late["at"], "row 6");
    assert!(late["source"].as_str().unwrap().ends_with("x.parquet"));
    // Everything accepted is processed: the output equals the offline run without rejects.
    let accepted: Vec<Row> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| ![5, 6, 9].contains(i))
        .map(|(_, r)| r.clone())
        .collect();
    assert_close(
        &read_csv(&dir.path().join("out/o.csv")),
        &offline_every_step(&model, &accepted),
        TOL,
    );
}

#[test]
fn nan_policies() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    let rows: Vec<Row> = (0..6)
        .map(|i| Row {
            key: "s".into(),
            time: i,
            feats: vec![
                if i == 3 { f32::NAN } else { i as f32 * 0.1 },
                if i == 0 { f32::INFINITY } else { 0.5 },
            ],
        })
        .collect();
    write_parquet(&dir.path().join("in/x.parquet"), &rows, 100);
    let (mpath, model) = save_model(dir.path(), &causal_model(2));
    let run_policy = |policy: &str| {
        let p = write_pipeline(
            dir.path(),
            &format!("{policy}.toml"),
            &pipeline_text(
                &mpath,
                2,
                &format!("out/{policy}.csv"),
                "",
                &format!("nan = \"{policy}\""),
            ),
        );
        seqflow(&["run", p.to_str().unwrap()])
    };
    // error (the default): stops, naming file, row and column; no output file left.
    let o = run_policy("error");
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("x.parquet") && e.contains("row 0") && e.contains("`f1`") && e.contains("inf"),
        "{e}"
    );
    assert!(!dir.path().join("out/error.csv").exists());
    assert!(!dir.path().join("out/error.csv.partial").exists());

    let fixed = |f: &dyn Fn(usize, &Row) -> Option<Row>| -> Vec<Row> {
        rows.iter().enumerate().filter_map(|(i, r)| f(i, r)).collect()
    };
    // skip: rows with a non-finite feature are dropped and counted.
    let o = run_policy("skip");
    assert!(
        o.status.success() && stderr(&o).contains("non-finite 2"),
        "{}",
        stderr(&o)
    );
    let want = offline_every_step(&model, &fixed(&|i, r| (i != 0 && i != 3).then(|| r.clone())));
    assert_close(&read_csv(&dir.path().join("out/skip.csv")), &want, TOL);
    // zero: replaced by 0.
    assert!(run_policy("zero").status.success());
    let zero = |r: &Row| Row {
        feats: r
            .feats
            .iter()
            .map(|v| if v.is_finite() { *v } else { 0.0 })
            .collect(),
        ..r.clone()
    };
    let want = offline_every_step(&model, &fixed(&|_, r| Some(zero(r))));
    assert_close(&read_csv(&dir.path().join("out/zero.csv")), &want, TOL);
    // ffill: the key's last finite value (0 before the first).
    assert!(run_policy("ffill").status.success());
    let mut ff = rows.clone();
    ff[0].feats[1] = 0.0;
    ff[3].feats[0] = ff[2].feats[0];
    assert_close(
        &read_csv(&dir.path().join("out/ffill.csv")),
        &offline_every_step(&model, &ff),
        TOL,
    );
}

#[test]
fn csv_and_jsonl_sources_and_column_types_are_preserved() {
    let dir = tempfile::tempdir().unwrap();
    let (mpath, model) = save_model(dir.path(), &causal_model(2));
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    // Integer keys, ISO timestamps in CSV; the output repeats both types.
    std::fs::write(
        dir.path().join("in/a.csv"),
        "dev,when,x,y\n7,2024-01-01T00:00:01,0.5,1\n7,2024-01-01T00:00:02,0.25,2\n9,2024-01-01T00:00:01,-1,0\n",
    )
    .unwrap();
    let p = write_pipeline(
        dir.path(),
        "p.toml",
        &format!(
            "[source]\nformat = \"csv\"\npath = \"in/a.csv\"\nkey = \"dev\"\ntime = \"when\"\nfeatures = [\"x\", \"y\"]\n\
             [model]\npath = \"{}\"\n[output]\nformat = \"jsonl\"\npath = \"out/o.jsonl\"\nnames = [\"p\", \"q\"]\n",
            mpath.display()
        ),
    );
    run_ok(&["run", p.to_str().unwrap()]);
    let text = std::fs::read_to_string(dir.path().join("out/o.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 3);
    let first7 = rows
        .iter()
        .find(|r| r["dev"] == 7 && r["when"].as_str().unwrap().contains("00:00:01"))
        .unwrap();
    let want = model.forward_sequence(&[0.5, 1.0], 1);
    assert!(
        (first7["p"].as_f64().unwrap() as f32 - want.data[0]).abs() < TOL,
        "{first7}"
    );
    assert!((first7["q"].as_f64().unwrap() as f32 - want.data[1]).abs() < TOL);

    // The same data as JSON lines.
    std::fs::write(
        dir.path().join("in/b.jsonl"),
        "{\"dev\": \"a\", \"t\": 1, \"x\": 0.5, \"y\": 1}\n{\"dev\": \"a\", \"t\": 2, \"x\": 0.25, \"y\": 2}\n",
    )
    .unwrap();
    let p = write_pipeline(
        dir.path(),
        "j.toml",
        &format!(
            "[source]\nformat = \"jsonl\"\npath = \"in/b.jsonl\"\nkey = \"dev\"\ntime = \"t\"\nfeatures = [\"x\", \"y\"]\n\
             [model]\npath = \"{}\"\n[output]\nformat = \"csv\"\npath = \"-\"\n",
            mpath.display()
        ),
    );
    let o = seqflow(&["run", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.starts_with("dev,t,y0,y1\n"), "{out}");
    let want = model.forward_sequence(&[0.5, 1.0, 0.25, 2.0], 2);
    let last: Vec<f32> = out
        .lines()
        .last()
        .unwrap()
        .split(',')
        .skip(2)
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(
        (last[0] - want.data[2]).abs() < TOL && (last[1] - want.data[3]).abs() < TOL,
        "{out}"
    );
}

#[test]
fn a_million_keys_with_memory_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    let n = 1_000_000;
    let rows: Vec<Row> = (0..n)
        .map(|i| Row {
            key: format!("{i:07}"),
            time: (i % 97) as i64,
            feats: vec![(i % 13) as f32 * 0.1, 1.0],
        })
        .collect();
    write_parquet(&dir.path().join("in/x.parquet"), &rows, 250_000);
    let b = ModelBuilder::new(2, 3)
        .recurrent("gru", "gru", 8, 1)
        .linear("head", 1);
    let (mpath, model) = save_model(dir.path(), &b);
    let p = write_pipeline(
        dir.path(),
        "p.toml",
        &pipeline_text(&mpath, 2, "out/o.csv", "", "")
            .replace(&format!("batch_rows = {BATCH_ROWS}"), "batch_rows = 65536"),
    );
    let report = run_report(&p, 2, Overrides::default());
    assert_eq!((report.stats.outputs, report.stats.keys), (n as u64, n as u64));
    // Key state is reported and close to its raw size: the GRU's h (8 floats), the key's 7
    // bytes and its last time (8 bytes + a flag).
    let raw = n as u64 * (8 * 4 + 7 + 9);
    let ratio = report.stats.state_bytes as f64 / raw as f64;
    assert!(
        (1.0..1.6).contains(&ratio),
        "key state {} B for 1M keys is {ratio:.2}x the raw {raw} B",
        report.stats.state_bytes
    );
    eprintln!("1M keys: {report}");
    // Every key's prediction equals the offline form (13 distinct inputs, so 13 references).
    let out = read_csv(&dir.path().join("out/o.csv"));
    assert_eq!(out.len(), n);
    let want: Vec<f32> = (0..13)
        .map(|j| model.forward_sequence(&[j as f32 * 0.1, 1.0], 1).data[0])
        .collect();
    for (i, r) in rows.iter().enumerate() {
        let got = &out[&r.key];
        assert_eq!(got.keys().collect::<Vec<_>>(), vec![&r.time], "key {}", r.key);
        assert!((got[&r.time][0] - want[i % 13]).abs() < TOL, "key {}", r.key);
    }
}

/// Checks that `Packed`-level batching does not matter for the pipeline reference itself.
#[test]
fn offline_reference_is_batch_independent() {
    let model = causal_model(2).build().unwrap();
    let x: Vec<f32> = (0..20).map(|i| (i as f32 * 0.37).sin()).collect();
    let single = model.forward_sequence(&x, 10);
    let mut p = Packed::default();
    p.build(2, &[3, 10, 1]);
    for t in 0..10 {
        p.row_mut(1, t).copy_from_slice(&x[t * 2..t * 2 + 2]);
    }
    let mut ws = Workspace::default();
    let out = model.forward(&p, &mut ws);
    let rows: Vec<f32> = out
        .rows()
        .filter(|r| r.0 == 1)
        .flat_map(|r| r.2.to_vec())
        .collect();
    assert_eq!(rows, single.data, "bit-identical regardless of batch company");
}

#[test]
fn parquet_predictions_have_statistics_only_when_asked_keys_and_times_always() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let dir = tempfile::tempdir().unwrap();
    let (mpath, _) = save_model(dir.path(), &causal_model(2));
    std::fs::write(
        dir.path().join("a.csv"),
        "dev,t,x,y\n7,1,0.5,1\n7,2,0.25,2\n9,1,-1,0\n",
    )
    .unwrap();
    for (name, extra, want) in [("off.toml", "", false), ("on.toml", "statistics = true\n", true)] {
        let out = format!("out/{name}.parquet");
        let p = write_pipeline(
            dir.path(),
            name,
            &format!(
                "[source]\nformat = \"csv\"\npath = \"a.csv\"\nkey = \"dev\"\ntime = \"t\"\nfeatures = [\"x\", \"y\"]\n\
                 [model]\npath = \"{}\"\n[output]\nformat = \"parquet\"\npath = \"{out}\"\n{extra}",
                mpath.display()
            ),
        );
        run_report(&p, 1, Default::default());
        let f = std::fs::File::open(dir.path().join(&out)).unwrap();
        let meta = SerializedFileReader::new(f).unwrap().metadata().clone();
        let rg = meta.row_group(0);
        for (i, col) in rg.columns().iter().enumerate() {
            let has = col.statistics().is_some_and(|s| s.min_bytes_opt().is_some());
            let name = col.column_path().string();
            if i < 2 {
                assert!(has, "{name} (key/time) always has statistics");
            } else {
                assert_eq!(has, want, "{name}: statistics {want} expected");
            }
        }
    }
    // Asked of a text output: one message.
    let p = write_pipeline(
        dir.path(),
        "csv.toml",
        &format!(
            "[source]\nformat = \"csv\"\npath = \"a.csv\"\nkey = \"dev\"\ntime = \"t\"\nfeatures = [\"x\", \"y\"]\n\
             [model]\npath = \"{}\"\n[output]\nformat = \"csv\"\npath = \"out/o.csv\"\nstatistics = true\n",
            mpath.display()
        ),
    );
    let o = seqflow(&["run", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("`statistics` applies to format = \"parquet\" only"),
        "{}",
        stderr(&o)
    );
}
