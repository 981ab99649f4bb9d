//! The adding problem (Hochreiter & Schmidhuber 1997), as Parquet, and its scorer.
//!
//! Each sequence has `lag` steps of two features: `value`, uniform in [0, 1), and `marker`,
//! 1 at two steps (one in the first half, one in the second) and 0 elsewhere. The target, on
//! the last step only, is the sum of the two marked values; other steps have no target (NaN),
//! so `seqflow train` with `kind = "regress"` scores the last step only. Predicting the mean
//! (1.0) gives MSE 1/6 = 0.167; a sequence is "solved" when |prediction - target| < 0.04.
//!
//! ```sh
//! gen-adding gen --lag 100 --sequences 4000 --seed 1 --out datasets/generated/adding_100.parquet
//! gen-adding score --data test.parquet --predictions preds.csv
//! ```
//!
//! `score` reads the predictions `seqflow run` wrote (CSV: seq, t, prediction; emit =
//! "sequence_end") and prints MSE and the fraction solved.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float32Type, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use seqflow::vocab::SplitMix;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn gen(args: &[String]) -> Result<(), String> {
    let lag: usize = arg(args, "--lag")
        .ok_or("--lag N is required")?
        .parse()
        .map_err(|e| format!("--lag: {e}"))?;
    let n: usize = arg(args, "--sequences")
        .unwrap_or("2000".into())
        .parse()
        .map_err(|e| format!("--sequences: {e}"))?;
    let seed: u64 = arg(args, "--seed")
        .unwrap_or("1".into())
        .parse()
        .map_err(|e| format!("--seed: {e}"))?;
    let out = PathBuf::from(arg(args, "--out").ok_or("--out FILE is required")?);
    if lag < 2 {
        return Err("--lag must be at least 2".into());
    }
    let mut rng = SplitMix::new(seed);
    let (mut keys, mut ts, mut vals, mut marks, mut targets) = (vec![], vec![], vec![], vec![], vec![]);
    for s in 0..n {
        let a = (rng.next_u64() % (lag as u64 / 2)) as usize;
        let b = lag / 2 + (rng.next_u64() % (lag - lag / 2) as u64) as usize;
        let v: Vec<f32> = (0..lag).map(|_| rng.next_f32()).collect();
        let sum = v[a] + v[b];
        for (t, &value) in v.iter().enumerate() {
            keys.push(format!("s{s:06}"));
            ts.push(t as i64);
            vals.push(value);
            marks.push(if t == a || t == b { 1.0f32 } else { 0.0 });
            targets.push(if t + 1 == lag { sum } else { f32::NAN });
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("seq", DataType::Utf8, false),
        Field::new("t", DataType::Int64, false),
        Field::new("value", DataType::Float32, false),
        Field::new("marker", DataType::Float32, false),
        Field::new("target", DataType::Float32, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(keys)),
        Arc::new(Int64Array::from(ts)),
        Arc::new(Float32Array::from(vals)),
        Arc::new(Float32Array::from(marks)),
        Arc::new(Float32Array::from(targets)),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|e| e.to_string())?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let f = File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut w = ArrowWriter::try_new(f, schema, None).map_err(|e| e.to_string())?;
    w.write(&batch).map_err(|e| e.to_string())?;
    w.close().map_err(|e| e.to_string())?;
    eprintln!("gen-adding: {n} sequences x {lag} steps -> {}", out.display());
    Ok(())
}

fn score(args: &[String]) -> Result<(), String> {
    let data = PathBuf::from(arg(args, "--data").ok_or("--data FILE is required")?);
    let preds = PathBuf::from(arg(args, "--predictions").ok_or("--predictions CSV is required")?);
    let f = File::open(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.build())
        .map_err(|e| format!("{}: {e}", data.display()))?;
    let mut want: HashMap<String, f32> = HashMap::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        let k = batch
            .column_by_name("seq")
            .ok_or("no `seq` column")?
            .as_string::<i32>()
            .clone();
        let t = batch
            .column_by_name("target")
            .ok_or("no `target` column")?
            .as_primitive::<Float32Type>()
            .clone();
        for i in 0..batch.num_rows() {
            if !t.is_null(i) && t.value(i).is_finite() {
                want.insert(k.value(i).to_string(), t.value(i));
            }
        }
    }
    let text = std::fs::read_to_string(&preds).map_err(|e| format!("{}: {e}", preds.display()))?;
    let (mut n, mut se, mut solved) = (0usize, 0f64, 0usize);
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (Some(k), Some(p)) = (f.first(), f.last()) else {
            continue;
        };
        let p: f64 = p.parse().map_err(|e| format!("{line}: {e}"))?;
        let y = *want
            .get(*k)
            .ok_or_else(|| format!("prediction for unknown sequence {k}"))? as f64;
        n += 1;
        se += (p - y) * (p - y);
        solved += usize::from((p - y).abs() < 0.04);
    }
    if n != want.len() {
        return Err(format!("{} predictions for {} sequences", n, want.len()));
    }
    println!(
        "sequences {n} mse {:.5} solved {:.4}",
        se / n as f64,
        solved as f64 / n as f64
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let r = match args.get(1).map(String::as_str) {
        Some("gen") => gen(&args),
        Some("score") => score(&args),
        _ => Err("usage: gen-adding gen --lag N [--sequences N] [--seed N] --out FILE | gen-adding score --data FILE --predictions CSV".into()),
    };
    if let Err(e) = r {
        eprintln!("gen-adding: {e}");
        std::process::exit(2);
    }
}
