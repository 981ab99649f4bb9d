//! Arrow IPC files in and out (`format = "arrow"`, `.arrow` / `.feather`): the same
//! predictions as through Parquet, bit for bit, for every emit mode and worker count; an
//! Arrow output on stdout is an IPC stream; a damaged file is one message; what is not
//! supported yet (checkpointed Arrow outputs) is refused at load.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch, RecordBatchReader};
use arrow::datatypes::{Float32Type, Int64Type};
use common::pipeline::*;

/// The Parquet file's rows rewritten as an Arrow IPC file, in batches of `batch` rows.
fn parquet_to_arrow(from: &Path, to: &Path, batch: usize) {
    let f = std::fs::File::open(from).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .with_batch_size(batch)
        .build()
        .unwrap();
    let schema = reader.schema();
    let mut w = arrow::ipc::writer::FileWriter::try_new(std::fs::File::create(to).unwrap(), &schema).unwrap();
    for b in reader {
        w.write(&b.unwrap()).unwrap();
    }
    w.finish().unwrap();
}

/// key -> time -> values of an output's record batches (key, time, then float32 columns).
fn rows_of(batches: &[RecordBatch]) -> BTreeMap<String, BTreeMap<i64, Vec<u32>>> {
    let mut out: BTreeMap<String, BTreeMap<i64, Vec<u32>>> = BTreeMap::new();
    for b in batches {
        let keys = b.column(0).as_string::<i32>();
        let times = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            // Bits, so that equality is bit for bit.
            let vals = (2..b.num_columns())
                .map(|c| b.column(c).as_primitive::<Float32Type>().value(i).to_bits())
                .collect();
            let prev = out
                .entry(keys.value(i).to_string())
                .or_default()
                .insert(times.value(i), vals);
            assert!(prev.is_none(), "a row twice");
        }
        assert_eq!(keys.null_count(), 0);
    }
    out
}

fn read_parquet(p: &Path) -> Vec<RecordBatch> {
    let f = std::fs::File::open(p).unwrap();
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn read_arrow(p: &Path) -> Vec<RecordBatch> {
    arrow::ipc::reader::FileReader::try_new(std::fs::File::open(p).unwrap(), None)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn pipeline(
    dir: &Path,
    model: &Path,
    input: &str,
    format: &str,
    output: &str,
    emit: &str,
) -> std::path::PathBuf {
    write_pipeline(
        dir,
        &format!("{format}_{}.toml", emit.replace(|c: char| !c.is_ascii_alphanumeric(), "")),
        &format!(
            "[source]\nformat = \"{format}\"\npath = \"{input}\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]\n\
             batch_rows = 37\n[model]\npath = \"{}\"\n[output]\nformat = \"{format}\"\npath = \"{output}\"\n{emit}\n",
            model.display()
        ),
    )
}

fn data(dir: &Path) -> Vec<Row> {
    let rows: Vec<Row> = (0..300)
        .map(|i| Row {
            key: format!("k{}", i % 7),
            time: (i / 7) as i64,
            feats: vec![((i * 13) % 17) as f32 / 17.0 - 0.5, ((i * 5) % 11) as f32 / 11.0],
        })
        .collect();
    write_parquet(&dir.join("in.parquet"), &rows, 64);
    parquet_to_arrow(&dir.join("in.parquet"), &dir.join("in.arrow"), 50);
    rows
}

#[test]
fn arrow_files_give_the_parquet_predictions_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mpath, _) = save_model(d, &causal_model(2));
    data(d);
    for emit in [
        "emit = \"every_step\"",
        "emit = \"sequence_end\"",
        "emit = \"window\"\nsize = 5\nhop = 2",
    ] {
        for workers in [1, 2] {
            let p = pipeline(d, &mpath, "in.parquet", "parquet", "out/y.parquet", emit);
            let a = pipeline(d, &mpath, "in.arrow", "arrow", "out/y.arrow", emit);
            let rp = run_report(&p, workers, Default::default());
            let ra = run_report(&a, workers, Default::default());
            assert_eq!(rp.stats, ra.stats, "{emit} -w {workers}");
            let (yp, ya) = (
                read_parquet(&d.join("out/y.parquet")),
                read_arrow(&d.join("out/y.arrow")),
            );
            assert_eq!(yp[0].schema(), ya[0].schema(), "{emit}");
            assert_eq!(rows_of(&yp), rows_of(&ya), "{emit} -w {workers}");
            assert!(!rows_of(&ya).is_empty());
        }
    }
}

#[test]
fn an_arrow_output_on_stdout_is_an_ipc_stream() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mpath, _) = save_model(d, &causal_model(2));
    data(d);
    let a = pipeline(d, &mpath, "in.arrow", "arrow", "-", "emit = \"every_step\"");
    let o = seqflow(&["run", a.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stream = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(o.stdout), None).unwrap();
    let got: Vec<RecordBatch> = stream.map(Result::unwrap).collect();
    let p = pipeline(
        d,
        &mpath,
        "in.parquet",
        "parquet",
        "out/y.parquet",
        "emit = \"every_step\"",
    );
    run_report(&p, 1, Default::default());
    assert_eq!(rows_of(&got), rows_of(&read_parquet(&d.join("out/y.parquet"))));
    // `--output x.feather` picks the format by its extension.
    let o = seqflow(&[
        "run",
        p.to_str().unwrap(),
        "--output",
        d.join("out/z.feather").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(rows_of(&read_arrow(&d.join("out/z.feather"))), rows_of(&got));
}

#[test]
fn a_damaged_arrow_file_is_one_message_and_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mpath, _) = save_model(d, &causal_model(2));
    data(d);
    let bytes = std::fs::read(d.join("in.arrow")).unwrap();
    std::fs::write(d.join("cut.arrow"), &bytes[..bytes.len() / 2]).unwrap();
    let a = pipeline(
        d,
        &mpath,
        "cut.arrow",
        "arrow",
        "out/y.arrow",
        "emit = \"every_step\"",
    );
    let o = seqflow(&["run", a.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("cut.arrow") && e.contains("Arrow IPC"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    assert!(!d.join("out/y.arrow").exists());

    let text = std::fs::read_to_string(pipeline(
        d,
        &mpath,
        "in.arrow",
        "arrow",
        "out/y.arrow",
        "emit = \"every_step\"",
    ))
    .unwrap();
    let c = write_pipeline(d, "ckpt.toml", &format!("{text}[checkpoint]\ndir = \"state\"\n"));
    let o = seqflow(&["run", c.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("[checkpoint] with an Arrow output"),
        "{}",
        stderr(&o)
    );
}
