//! The README's demo, end to end: `seqflow run pipelines/demo.toml` gives, for every step of
//! every sensor in the bundled sample, PyTorch's score within 1e-4 (expected values by
//! `tests/fixtures/make_demo_expected.py`, float64 PyTorch on the same weights); every other
//! bundled pipeline gives PyTorch's scores for its emit mode; and `seqflow inspect`
//! describes the demo model.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arrow::array::{AsArray, RecordBatchReader};
use arrow::datatypes::{Float32Type, Int64Type};
use common::pipeline::{output, read_csv, run_report, seqflow, stderr};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use seqflow::pipeline::{Overrides, PipelineConfig};
use seqflow::vocab::Emit;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The bundled pipelines in a scratch copy of the repository's layout (`pipelines/` copied,
/// `models/` and `datasets/` linked), so that their `../out/...` outputs (rejects, view
/// changelogs) land there and `cargo test` writes nothing into the working tree.
fn bundled(scratch: &Path) -> PathBuf {
    let pipelines = scratch.join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    for e in std::fs::read_dir(root().join("pipelines")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, pipelines.join(p.file_name().unwrap())).unwrap();
        }
    }
    for d in ["models", "datasets"] {
        std::os::unix::fs::symlink(root().join(d), scratch.join(d)).unwrap();
    }
    pipelines
}

/// Scores by (sensor, time) from a fixture of `tests/fixtures/make_demo_expected.py`.
fn expected(name: &str) -> HashMap<(String, i64), f32> {
    let f = std::fs::File::open(root().join(format!("tests/fixtures/{name}.parquet"))).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let _ = reader.schema();
    let mut want = HashMap::new();
    for b in reader {
        let b = b.unwrap();
        let ids = b.column(0).as_string::<i32>();
        let ts = b.column(1).as_primitive::<Int64Type>();
        let s = arrow::compute::cast(b.column(2), &arrow::datatypes::DataType::Float32).unwrap();
        let s = s.as_primitive::<Float32Type>();
        for i in 0..b.num_rows() {
            want.insert((ids.value(i).to_string(), ts.value(i)), s.value(i));
        }
    }
    want
}

/// Asserts that a CSV output holds exactly the expected rows, each within 1e-4.
fn assert_scores(out: &Path, want: &HashMap<(String, i64), f32>, what: &str) {
    let got = read_csv(out);
    let mut n = 0;
    let mut worst = 0.0f32;
    for (key, rows) in &got {
        for (t, v) in rows {
            let w = want
                .get(&(key.clone(), *t))
                .unwrap_or_else(|| panic!("{what}: unexpected output {key} @ {t}"));
            worst = worst.max((v[0] - w).abs());
            n += 1;
        }
    }
    assert_eq!(n, want.len(), "{what}: rows");
    assert!(worst <= 1e-4, "{what}: max |seqflow - pytorch| = {worst:e}");
}

#[test]
fn demo_scores_equal_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo.csv");
    let report = run_report(&bundled(dir.path()).join("demo.toml"), 2, output(&out));
    assert_eq!((report.stats.outputs, report.stats.keys), (43_200, 50));
    assert_scores(&out, &expected("demo_expected"), "demo");
}

#[test]
fn inspect_describes_the_demo_model() {
    let o = seqflow(&["inspect", root().join("models/anomaly.toml").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    for part in [
        "input 8 features -> output 1 value per emitted step",
        "#0 (conv1d \"conv\")",
        "kernel 5, stride 1, dilation 1, padding causal",
        "#2 (lstm \"lstm\")",
        "hidden 32, 1 layer",
        // conv 16*8*5+16 = 656, lstm 4*32*(16+32) + 2*4*32 = 6,400, head 33
        "parameters       7,089",
        "receptive field  unbounded (recurrent)",
        "streamable       yes",
    ] {
        assert!(text.contains(part), "inspect lacks {part:?}:\n{text}");
    }
    let o = seqflow(&["inspect", "no/such/model.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no/such/model.toml"), "{}", stderr(&o));
}

#[test]
fn every_bundled_pipeline_runs_as_it_is() {
    let every_step = expected("demo_expected");
    // A causal model's sequence_end output is its every_step output at the last step.
    let mut last: HashMap<String, (i64, f32)> = HashMap::new();
    for ((k, t), v) in &every_step {
        let e = last.entry(k.clone()).or_insert((*t, *v));
        if *t > e.0 {
            *e = (*t, *v);
        }
    }
    let last: HashMap<(String, i64), f32> = last.into_iter().map(|(k, (t, v))| ((k, t), v)).collect();
    let windows = expected("demo_windows_expected");
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    for entry in std::fs::read_dir(bundled(dir.path())).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let cfg = PipelineConfig::load(&p, &Overrides::default()).unwrap();
        // Live pipelines run until stopped; tests/live.rs covers them.
        if cfg.live().is_some() {
            continue;
        }
        // Redirected (as CSV, by the extension) so the test does not write into the checkout.
        let out = dir
            .path()
            .join(format!("{}.csv", p.file_stem().unwrap().to_string_lossy()));
        let report = run_report(&p, 1, output(&out));
        assert_eq!(report.stats.rows_read, 43_209, "{}", p.display());
        let want = match cfg.output.emit {
            Emit::EveryStep | Emit::SequenceEnd { all_steps: true } => &every_step,
            Emit::SequenceEnd { all_steps: false } => &last,
            Emit::Window { .. } => &windows,
        };
        assert_scores(&out, want, &p.display().to_string());
        n += 1;
    }
    assert!(n >= 4, "expected the bundled pipelines, found {n}");
}
