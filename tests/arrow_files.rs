//! Arrow IPC files in and out (`format = "arrow"`, `.arrow` / `.feather`): the same
//! predictions as through Parquet, bit for bit, for every emit mode and worker count; an
//! Arrow output on stdout is an IPC stream; a damaged file is one message; what is not
//! supported yet (checkpointed Arrow outputs) is refused at load.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch, RecordBatchReader};
use std::sync::Arc;

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

/// The reference: the Parquet file run of `in.parquet` (every_step), key -> time -> bits.
fn file_run(d: &Path, model: &Path) -> BTreeMap<String, BTreeMap<i64, Vec<u32>>> {
    let file = pipeline(
        d,
        model,
        "in.parquet",
        "parquet",
        "out/y.parquet",
        "emit = \"every_step\"",
    );
    run_report(&file, 1, Default::default());
    rows_of(&read_parquet(&d.join("out/y.parquet")))
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

/// A live tcp source with lines = "arrow", CSV out, rejects written.
fn live_arrow(dir: &Path, model: &Path) -> std::path::PathBuf {
    write_pipeline(
        dir,
        "live_arrow.toml",
        &format!(
            "[source]\nformat = \"tcp\"\nlisten = \"127.0.0.1:0\"\nlines = \"arrow\"\nkey = \"key\"\ntime = \"t\"\n\
             features = [\"f0\", \"f1\"]\nepoch_ms = 2\nrejects = \"out/rejects.jsonl\"\n\
             [model]\npath = \"{}\"\n[output]\nformat = \"csv\"\npath = \"out/live.csv\"\n",
            model.display()
        ),
    )
}

/// Sends record batches as one Arrow IPC stream over a new connection.
fn send_stream(addr: &str, schema: &arrow::datatypes::Schema, batches: &[RecordBatch]) {
    let s = std::net::TcpStream::connect(addr).unwrap();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(s, schema).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn a_live_arrow_stream_over_tcp_equals_the_file_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mpath, _) = save_model(d, &causal_model(2));
    let rows = data(d);
    // Two connections, each with its keys' rows in batches of 20, as `seqflow replay
    // --format arrow` sends them.
    let input = read_parquet(&d.join("in.parquet"));
    let all = arrow::compute::concat_batches(&input[0].schema(), &input).unwrap();
    let run = LiveRun::start(&live_arrow(d, &mpath), 2);
    let mut handles = Vec::new();
    for c in 0..2usize {
        let idx: Vec<u32> = (0..all.num_rows() as u32)
            .filter(|&i| {
                rows[i as usize]
                    .key
                    .trim_start_matches('k')
                    .parse::<usize>()
                    .unwrap()
                    % 2
                    == c
            })
            .collect();
        let part = arrow::compute::take_record_batch(&all, &arrow::array::UInt32Array::from(idx)).unwrap();
        let batches: Vec<RecordBatch> = (0..part.num_rows())
            .step_by(20)
            .map(|at| part.slice(at, 20.min(part.num_rows() - at)))
            .collect();
        let (addr, schema) = (run.addr.clone(), all.schema());
        handles.push(std::thread::spawn(move || send_stream(&addr, &schema, &batches)));
    }
    for h in handles {
        h.join().unwrap();
    }
    let out = d.join("out/live.csv.partial");
    wait_for(
        || std::fs::read_to_string(&out).map_or(0, |t| t.lines().count()) == rows.len() + 1,
        "every prediction",
    );
    let report = run.stop();
    assert_eq!(report.stats.rows_read, rows.len() as u64);
    assert_eq!(report.stats.malformed, 0);
    let want = file_run(d, &mpath);
    let got = read_csv(&d.join("out/live.csv"));
    let got: BTreeMap<String, BTreeMap<i64, Vec<u32>>> = got
        .into_iter()
        .map(|(k, ts)| {
            (
                k,
                ts.into_iter()
                    .map(|(t, v)| (t, v.iter().map(|x| x.to_bits()).collect()))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn malformed_arrow_streams_are_rejected_by_connection_and_batch() {
    use arrow::array::{Float32Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mpath, _) = save_model(d, &causal_model(2));
    let run = LiveRun::start(&live_arrow(d, &mpath), 1);
    // A connection that sends nothing (a health check) is no reject.
    drop(std::net::TcpStream::connect(&run.addr).unwrap());
    let good_schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("t", DataType::Int64, false),
        Field::new("f0", DataType::Float32, true),
        Field::new("f1", DataType::Float32, true),
    ]));
    let good = |from: i64, n: i64| {
        RecordBatch::try_new(
            good_schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values((0..n).map(|_| "a"))),
                Arc::new(Int64Array::from_iter_values(from..from + n)),
                Arc::new(Float32Array::from_iter_values((0..n).map(|i| i as f32 * 0.1))),
                Arc::new(Float32Array::from_iter_values((0..n).map(|_| 0.5))),
            ],
        )
        .unwrap()
    };
    // A stream without f1: each of its 2 batches rejected whole; the connection goes on.
    let no_f1 = Arc::new(Schema::new(good_schema.fields()[..3].to_vec()));
    let short = good(0, 4).project(&[0, 1, 2]).unwrap();
    send_stream(&run.addr, &no_f1, &[short.clone(), short]);
    // A feature of the wrong type (text): rejected, naming the column.
    let text_schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("t", DataType::Int64, false),
        Field::new("f0", DataType::Utf8, true),
        Field::new("f1", DataType::Float32, true),
    ]));
    let text = RecordBatch::try_new(
        text_schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["b"])),
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(StringArray::from(vec!["hot"])),
            Arc::new(Float32Array::from(vec![0.5])),
        ],
    )
    .unwrap();
    send_stream(&run.addr, &text_schema, &[text]);
    // A stream cut in the middle of its second batch: the first batch counts, then one reject.
    let mut buf = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &good_schema).unwrap();
        w.write(&good(0, 5)).unwrap();
        w.write(&good(5, 5)).unwrap();
        w.finish().unwrap();
    }
    let first_len = {
        let mut b = Vec::new();
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut b, &good_schema).unwrap();
        w.write(&good(0, 5)).unwrap();
        w.flush().unwrap();
        drop(w);
        b.len()
    };
    let mut s = std::net::TcpStream::connect(&run.addr).unwrap();
    std::io::Write::write_all(&mut s, &buf[..first_len + 40]).unwrap();
    drop(s);
    // Not Arrow at all.
    let mut s = std::net::TcpStream::connect(&run.addr).unwrap();
    std::io::Write::write_all(&mut s, b"{\"key\": \"a\", \"t\": 1}\n").unwrap();
    drop(s);
    let rejects = d.join("out/rejects.jsonl.partial");
    wait_for(
        || std::fs::read_to_string(&rejects).map_or(0, |t| t.lines().count()) >= 11,
        "eleven rejects (one per row of the rejected batches)",
    );
    let report = run.stop();
    let text = std::fs::read_to_string(d.join("out/rejects.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let details: Vec<String> = lines
        .iter()
        .map(|l| l["detail"].as_str().unwrap().to_string())
        .collect();
    let all = details.join("\n");
    assert!(
        all.contains("batch 1 (4 rows) rejected") && all.contains("batch 2 (4 rows) rejected"),
        "{all}"
    );
    assert!(all.contains("`f1`"), "{all}");
    assert!(
        all.contains("batch 1 (1 rows) rejected") && all.contains("`f0`"),
        "{all}"
    );
    assert!(all.contains("Arrow stream broken at batch 2"), "{all}");
    assert!(all.contains("not an Arrow IPC stream"), "{all}");
    for l in &lines {
        assert!(l["source"].as_str().unwrap().starts_with("tcp "), "{l}");
        assert_eq!(l["reason"], "malformed");
    }
    // The cut stream's first batch was read and predicted; every row read is a prediction or
    // a reject.
    assert_eq!(report.stats.outputs, 5);
    assert_eq!(report.stats.malformed, 11);
    assert_eq!(report.stats.rows_read, 16);
}

/// The bundled file pipelines (the README's demo, last scores, windows) over the sample turned
/// into an Arrow IPC file, writing Arrow: the same predictions as through Parquet, bit for
/// bit. Run in a scratch copy of the repository's layout, so nothing is written into it.
#[test]
fn the_bundled_pipelines_give_the_same_predictions_through_arrow() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    std::fs::create_dir_all(s.join("pipelines")).unwrap();
    std::fs::create_dir_all(s.join("out")).unwrap();
    for d in ["models", "datasets"] {
        std::os::unix::fs::symlink(root.join(d), s.join(d)).unwrap();
    }
    parquet_to_arrow(
        &root.join("datasets/sample/sensors.parquet"),
        &s.join("sensors.arrow"),
        5000,
    );
    for name in ["demo", "last_score", "windows"] {
        let p = s.join(format!("pipelines/{name}.toml"));
        std::fs::copy(root.join(format!("pipelines/{name}.toml")), &p).unwrap();
        let via = |input: Option<&str>, out: &str| {
            let o = s.join(format!("out/{name}.{out}"));
            let overrides = seqflow::pipeline::Overrides {
                input: input.map(|i| s.join(i)),
                output: Some(o.clone()),
                ..Default::default()
            };
            let r = run_report(&p, 2, overrides);
            (r, o)
        };
        let (rp, op) = via(None, "parquet");
        let (ra, oa) = via(Some("sensors.arrow"), "arrow");
        assert_eq!(rp.stats, ra.stats, "{name}");
        let (yp, ya) = (rows_of(&read_parquet(&op)), rows_of(&read_arrow(&oa)));
        assert!(!yp.is_empty(), "{name}");
        assert_eq!(yp, ya, "{name}");
    }
}

/// `--output -` of a live run with an Arrow output, read by pyarrow as it comes
/// (`scripts/read_arrow_stream.py`): the first batch arrives while the run goes on (the
/// stream is flushed every epoch), and the summary at the end has every prediction.
#[test]
#[ignore = "needs Python with pyarrow (SEQFLOW_PYTHON; scripts/test makes a venv)"]
fn pyarrow_reads_the_live_output_stream_as_it_comes() {
    use std::io::{BufRead, Write};
    use std::process::{Command, Stdio};
    let python = std::env::var("SEQFLOW_PYTHON").unwrap_or_else(|_| "python3".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mpath, _) = save_model(d, &causal_model(2));
    let p = write_pipeline(
        d,
        "live_out.toml",
        &format!(
            "[source]\nformat = \"tcp\"\nlisten = \"127.0.0.1:0\"\nlines = \"jsonl\"\nkey = \"key\"\ntime = \"t\"\n\
             features = [\"f0\", \"f1\"]\nepoch_ms = 2\n[model]\npath = \"{}\"\n\
             [output]\nformat = \"arrow\"\npath = \"-\"\n",
            mpath.display()
        ),
    );
    let mut run = Command::new(env!("CARGO_BIN_EXE_seqflow"))
        .args(["run", p.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = Command::new(&python)
        .arg(root.join("scripts/read_arrow_stream.py"))
        .stdin(run.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    // The listening address, from the run's stderr.
    let mut err = std::io::BufReader::new(run.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "the run ended");
        if let Some(a) = line.split("listening on ").nth(1) {
            break a.split(' ').next().unwrap().to_string();
        }
    };
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    for t in 0..30 {
        writeln!(
            s,
            "{{\"key\": \"k{}\", \"t\": {t}, \"f0\": 0.5, \"f1\": -0.5}}",
            t % 3
        )
        .unwrap();
    }
    s.flush().unwrap();
    // A batch shows up while the run is still going.
    let mut out = std::io::BufReader::new(reader.stdout.take().unwrap());
    line.clear();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("batch 1: "), "{line}");
    assert!(
        run.try_wait().unwrap().is_none(),
        "the run ended before its first batch was read"
    );
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(200));
    unsafe { libc::kill(run.id() as i32, libc::SIGTERM) };
    assert!(run.wait().unwrap().success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(reader.wait().unwrap().success());
    let summary: serde_json::Value = serde_json::from_str(rest.lines().last().unwrap()).unwrap();
    assert_eq!(summary["rows"], 30, "{rest}");
    assert_eq!(summary["keys"], 3);
    assert_eq!(summary["columns"], serde_json::json!(["key", "t", "y0", "y1"]));
}

/// stdin with lines = "arrow": one IPC stream, read to its end, as over TCP.
#[test]
fn an_arrow_stream_on_stdin_equals_the_file_run() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mpath, _) = save_model(d, &causal_model(2));
    data(d);
    let p = write_pipeline(
        d,
        "stdin_arrow.toml",
        &format!(
            "[source]\nformat = \"stdin\"\nlines = \"arrow\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]\n\
             [model]\npath = \"{}\"\n[output]\nformat = \"parquet\"\npath = \"out/stdin.parquet\"\n",
            mpath.display()
        ),
    );
    let input = read_parquet(&d.join("in.parquet"));
    let mut stream = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut stream, &input[0].schema()).unwrap();
        for b in &input {
            w.write(b).unwrap();
        }
        w.finish().unwrap();
    }
    let mut run = Command::new(env!("CARGO_BIN_EXE_seqflow"))
        .args(["run", p.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    run.stdin.take().unwrap().write_all(&stream).unwrap();
    let o = run.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        rows_of(&read_parquet(&d.join("out/stdin.parquet"))),
        file_run(d, &mpath)
    );
}
