//! The README's demo, end to end: `seqflow run pipelines/demo.toml` gives, for every step of
//! every sensor in the bundled sample, PyTorch's score within 1e-4 (expected values by
//! `tests/fixtures/make_demo_expected.py`, float64 PyTorch on the same weights); and
//! `seqflow inspect` describes the demo model.

mod common;

use std::collections::HashMap;
use std::path::Path;

use arrow::array::{AsArray, RecordBatchReader};
use arrow::datatypes::{Float32Type, Int64Type};
use common::pipeline::{read_csv, run_ok, seqflow, stderr};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn demo_scores_equal_pytorch() {
    let f = std::fs::File::open(root().join("tests/fixtures/demo_expected.parquet")).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let _ = reader.schema();
    let mut want: HashMap<(String, i64), f32> = HashMap::new();
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
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo.csv");
    let summary = run_ok(&[
        "run",
        root().join("pipelines/demo.toml").to_str().unwrap(),
        "-w",
        "2",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(summary.contains("43,200 predictions for 50 keys"), "{summary}");
    let got = read_csv(&out);
    let mut n = 0;
    let mut worst = 0.0f32;
    for (key, rows) in &got {
        for (t, v) in rows {
            let w = want[&(key.clone(), *t)];
            worst = worst.max((v[0] - w).abs());
            n += 1;
        }
    }
    assert_eq!(n, want.len());
    assert!(worst <= 1e-4, "max |seqflow - pytorch| = {worst:e}");
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
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("pipelines")).unwrap() {
        let p = entry.unwrap().path();
        let live = std::fs::read_to_string(&p)
            .map(|t| t.contains("format = \"tcp\"") || t.contains("format = \"stdin\""))
            .unwrap_or(false);
        // Live pipelines run until stopped; tests/live.rs covers them.
        if p.extension().is_some_and(|e| e == "toml") && !live {
            // Redirected (as CSV, by the extension) so the test does not write into the checkout.
            let out = dir
                .path()
                .join(format!("{}.csv", p.file_stem().unwrap().to_string_lossy()));
            let summary = run_ok(&["run", p.to_str().unwrap(), "--output", out.to_str().unwrap()]);
            assert!(
                summary.contains("43,209 rows from 1 file"),
                "{}: {summary}",
                p.display()
            );
            assert!(out.metadata().unwrap().len() > 0);
            n += 1;
        }
    }
    assert!(n >= 3, "expected the bundled pipelines, found {n}");
}
