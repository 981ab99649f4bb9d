//! Peak memory with a million keys: 1 M sensors (string keys) x 1 step, 8 features, an LSTM
//! hidden 64 + linear head, `every_step`, Parquet out. Runs the release binary under
//! `/usr/bin/time` and compares its peak RSS with the raw per-key state (h and c: 2 x 64
//! floats = 512 B per key) plus the model.
//!
//!     cargo bench --bench mem_1m_keys

use std::process::Command;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int64Array, RecordBatch, StringArray};
use seqflow::model::builder::ModelBuilder;
use seqflow::vocab::SplitMix;

const KEYS: usize = 1_000_000;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let b = ModelBuilder::new(8, 3)
        .recurrent("lstm", "lstm", 64, 1)
        .linear("head", 1);
    b.save(d, "m").unwrap();
    let model_bytes = std::fs::metadata(d.join("m.safetensors")).unwrap().len();
    let mut rng = SplitMix::new(5);
    let mut cols: Vec<(String, ArrayRef)> = vec![
        (
            "sensor_id".into(),
            Arc::new(StringArray::from_iter_values(
                (0..KEYS).map(|i| format!("site{:02}-m{i:07}", i % 40)),
            )),
        ),
        (
            "ts".into(),
            Arc::new(Int64Array::from(vec![1_700_000_000_000i64; KEYS])),
        ),
    ];
    for j in 0..8 {
        cols.push((
            format!("f{j}"),
            Arc::new(Float32Array::from_iter_values((0..KEYS).map(|_| rng.normal()))),
        ));
    }
    let batch = RecordBatch::try_from_iter(cols).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(d.join("keys.parquet")).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    std::fs::write(
        d.join("p.toml"),
        "[source]\nformat = \"parquet\"\npath = \"keys.parquet\"\nkey = \"sensor_id\"\ntime = \"ts\"\n\
         features = [\"f0\", \"f1\", \"f2\", \"f3\", \"f4\", \"f5\", \"f6\", \"f7\"]\n\
         [model]\npath = \"m.toml\"\n[output]\nformat = \"parquet\"\npath = \"out.parquet\"\n",
    )
    .unwrap();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "peak_rss_kb=%M"])
        .arg(env!("CARGO_BIN_EXE_seqflow"))
        .args(["run", d.join("p.toml").to_str().unwrap()])
        .output()
        .expect("/usr/bin/time (Debian package `time`) runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let rss_kb: f64 = err
        .split("peak_rss_kb=")
        .nth(1)
        .and_then(|s| s.trim().parse().ok())
        .expect("peak RSS in /usr/bin/time's output");
    let raw = (KEYS * 2 * 64 * 4) as f64 + model_bytes as f64;
    println!(
        "{}",
        err.lines().find(|l| l.starts_with("seqflow:")).unwrap_or("")
    );
    println!(
        "1M keys, LSTM h64 + head: peak RSS {:.0} MB, raw state + model {:.0} MB, ratio {:.2}x",
        rss_kb * 1024.0 / 1e6,
        raw / 1e6,
        rss_kb * 1024.0 / raw
    );
}
