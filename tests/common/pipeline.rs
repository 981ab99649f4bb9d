//! Helpers for tests that run the real `seqflow` binary on real files.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use seqflow::model::builder::ModelBuilder;
use seqflow::pipeline::{Event, Overrides, RunOptions, RunReport};
use seqflow::Model;

/// One input row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: String,
    pub time: i64,
    pub feats: Vec<f32>,
}

/// Writes rows as Parquet with string keys, int64 times and float32 features `f0..`.
pub fn write_parquet(path: &Path, rows: &[Row], row_group_rows: usize) {
    write_parquet_pages(path, rows, row_group_rows, None);
}

/// [`write_parquet`] with data pages of at most `page_rows` rows (small pages: a part of a
/// row group starts and ends inside pages and skips whole ones).
pub fn write_parquet_pages(path: &Path, rows: &[Row], row_group_rows: usize, page_rows: Option<usize>) {
    let width = rows.first().map_or(2, |r| r.feats.len());
    let mut fields = vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("t", DataType::Int64, false),
    ];
    fields.extend((0..width).map(|j| Field::new(format!("f{j}"), DataType::Float32, true)));
    let schema = Arc::new(Schema::new(fields));
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.key.as_str()))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.time))),
    ];
    for j in 0..width {
        cols.push(Arc::new(Float32Array::from_iter_values(
            rows.iter().map(|r| r.feats[j]),
        )));
    }
    let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
    let mut props = WriterProperties::builder().set_max_row_group_row_count(Some(row_group_rows.max(1)));
    if let Some(n) = page_rows {
        props = props.set_data_page_row_count_limit(n).set_write_batch_size(n);
    }
    let props = props.build();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// The seqflow binary, with `SEQFLOW_PART_ROWS` low so that several workers cut the tests'
/// small Parquet row groups into parts (a debug build's hook; see `input::files::PART_ROWS`).
pub fn seqflow_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_seqflow"));
    c.env("SEQFLOW_PART_ROWS", "20");
    c
}

/// Saves a model built in code as `dir/m.toml` + `dir/m.safetensors` and loads it back.
pub fn save_model(dir: &Path, b: &ModelBuilder) -> (PathBuf, Model) {
    b.save(dir, "m").unwrap();
    let p = dir.join("m.toml");
    let m = Model::load(&p).unwrap();
    (p, m)
}

/// A causal CNN -> LSTM -> linear model with `input` features and 2 outputs.
pub fn causal_model(input: usize) -> ModelBuilder {
    ModelBuilder::new(input, 11)
        .conv1d("conv", 5, 3, 1, 2, "causal")
        .plain("relu", "")
        .recurrent("lstm", "lstm", 8, 2)
        .linear("head", 2)
}

/// Writes a pipeline file in `dir`.
pub fn write_pipeline(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs the seqflow binary.
pub fn seqflow(args: &[&str]) -> Output {
    seqflow_cmd().args(args).output().expect("binary runs")
}

/// `--output path`.
pub fn output(path: &Path) -> Overrides {
    Overrides {
        input: None,
        output: Some(path.to_path_buf()),
        metrics: None,
        dashboard: None,
        report: None,
    }
}

/// Runs a pipeline in this process (`-w workers`, `--input` / `--output` overrides) and
/// returns its report: tests read numbers from the report, never from the printed summary.
pub fn run_report(pipeline: &Path, workers: usize, overrides: Overrides) -> RunReport {
    let opts = RunOptions {
        workers,
        overrides,
        ..RunOptions::default()
    };
    seqflow::pipeline::run(pipeline, &opts)
        .unwrap_or_else(|e| panic!("{}: {e}", pipeline.display()))
        .expect("process 0 reports")
}

/// A live pipeline running in this process until [`LiveRun::stop`].
pub struct LiveRun {
    /// The address it listens on.
    pub addr: String,
    /// Where it serves `/metrics`, when the pipeline asks for it.
    pub metrics: Option<String>,
    /// Where it serves its dashboard, when the pipeline asks for it.
    pub dashboard: Option<String>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    run: std::thread::JoinHandle<seqflow::Result<Option<RunReport>>>,
}

impl LiveRun {
    /// Starts `pipeline` (a tcp source) with `workers` workers; returns once it listens.
    pub fn start(pipeline: &Path, workers: usize) -> LiveRun {
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let opts = RunOptions {
            workers,
            observer: Arc::new(move |e: &Event<'_>| match e {
                Event::Listening { addr: Some(a), .. } => {
                    let _ = tx.lock().unwrap().send((None, a.to_string()));
                }
                Event::Serving { what, addr, .. } => {
                    let _ = tx
                        .lock()
                        .unwrap()
                        .send((Some(*what == "metrics"), addr.to_string()));
                }
                _ => {}
            }),
            ..RunOptions::default()
        };
        let stop = opts.stop.clone();
        let p = pipeline.to_path_buf();
        let run = std::thread::spawn(move || seqflow::pipeline::run(&p, &opts));
        // The metrics and dashboard servers start before the listener.
        let (mut metrics, mut dashboard) = (None, None);
        let addr = loop {
            match rx.recv_timeout(std::time::Duration::from_secs(20)) {
                Ok((Some(true), a)) => metrics = Some(a),
                Ok((Some(false), a)) => dashboard = Some(a),
                Ok((None, a)) => break a,
                Err(_) => panic!("the pipeline does not listen"),
            }
        };
        LiveRun {
            addr,
            metrics,
            dashboard,
            stop,
            run,
        }
    }

    /// Stops the run as SIGTERM does (readers stop, everything accepted is processed) and
    /// returns its report.
    pub fn stop(self) -> RunReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.run.join().unwrap().unwrap().expect("process 0 reports")
    }
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and asserts success, returning stderr (the summary).
pub fn run_ok(args: &[&str]) -> String {
    let o = seqflow(args);
    assert!(o.status.success(), "seqflow {args:?} failed:\n{}", stderr(&o));
    stderr(&o)
}

/// Reads a CSV output (key, time, values...) into key -> time -> values.
pub fn read_csv(path: &Path) -> BTreeMap<String, BTreeMap<i64, Vec<f32>>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out: BTreeMap<String, BTreeMap<i64, Vec<f32>>> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let mut parts = line.split(',');
        let key = parts.next().unwrap().to_string();
        let time: i64 = parts.next().unwrap().parse().unwrap();
        let vals: Vec<f32> = parts.map(|v| v.parse().unwrap()).collect();
        let prev = out.entry(key).or_default().insert(time, vals);
        assert!(prev.is_none(), "duplicate output row in {}", path.display());
    }
    out
}

/// Sorted lines of a text file (row order is not part of the contract).
pub fn sorted_lines(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    v.sort();
    v
}

/// Asserts two key -> time -> values maps agree within `tol`.
pub fn assert_close(
    got: &BTreeMap<String, BTreeMap<i64, Vec<f32>>>,
    want: &BTreeMap<String, BTreeMap<i64, Vec<f32>>>,
    tol: f32,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "keys with output differ"
    );
    for (k, w) in want {
        let g = &got[k];
        assert_eq!(
            g.keys().collect::<Vec<_>>(),
            w.keys().collect::<Vec<_>>(),
            "key {k}: output times differ"
        );
        for (t, wv) in w {
            let gv = &g[t];
            let d = gv
                .iter()
                .zip(wv)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(d <= tol, "key {k} time {t}: {gv:?} vs {wv:?} (|diff| {d:e})");
        }
    }
}

/// Offline reference: each key's whole sequence (in time order) through `Model::forward`,
/// outputs keyed by the time of the step that completed them.
pub fn offline_every_step(model: &Model, rows: &[Row]) -> BTreeMap<String, BTreeMap<i64, Vec<f32>>> {
    let mut by_key: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        by_key.entry(r.key.clone()).or_default().push(r);
    }
    let mut out = BTreeMap::new();
    for (k, mut seq) in by_key {
        seq.sort_by_key(|r| r.time);
        let x: Vec<f32> = seq.iter().flat_map(|r| r.feats.iter().copied()).collect();
        let res = model.forward_sequence(&x, seq.len());
        let mut m = BTreeMap::new();
        for (i, &s) in res.steps.iter().enumerate() {
            m.insert(seq[s as usize].time, res.row(i).to_vec());
        }
        if !m.is_empty() {
            out.insert(k, m);
        }
    }
    out
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `seqflow run` and returns it with the address it listens on.
pub fn start_live(pipeline: &Path, args: &[&str]) -> (Child, String, BufReader<std::process::ChildStderr>) {
    let mut child = seqflow_cmd()
        .arg("run")
        .arg(pipeline)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or_else(|| panic!("no listening line: {line:?}"))
        .to_string();
    (child, addr, err)
}

/// Starts `seqflow run PIPELINE ARGS` in `dir` and waits for its "subscribed to" line (a
/// broker source): nothing published after it returns is missed. The caller waits for the
/// child.
#[allow(clippy::zombie_processes)]
pub fn start_subscribed(
    dir: &Path,
    pipeline: &str,
    args: &[&str],
) -> (Child, BufReader<std::process::ChildStderr>) {
    let mut child = seqflow_cmd()
        .current_dir(dir)
        .args(["run", pipeline])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap_or(0) == 0 {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no subscribed line: {seen}");
        }
        if line.contains("subscribed to") {
            return (child, err);
        }
        seen.push_str(&line);
    }
}

/// SIGTERM; the run must end well. Returns the rest of its stderr (the summary).
pub fn stop_ok(child: Child, err: BufReader<std::process::ChildStderr>) -> String {
    let (ok, rest) = terminate(child, err);
    assert!(ok, "{rest}");
    rest
}

/// Sends SIGTERM and returns (exit success, the rest of stderr).
pub fn terminate(mut child: Child, mut err: BufReader<std::process::ChildStderr>) -> (bool, String) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let ok = child.wait().unwrap().success();
    (ok, rest)
}

/// Waits until the output `path` (or its `.partial`, while the run goes on) holds `n`
/// lines; fails after 30 s.
pub fn wait_lines(path: &Path, n: usize) {
    let partial = PathBuf::from(format!("{}.partial", path.display()));
    let t = std::time::Instant::now();
    loop {
        let count = std::fs::read_to_string(&partial)
            .or_else(|_| std::fs::read_to_string(path))
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if count >= n {
            return;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "{}: {count} of {n} lines",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The broker tests' model: LSTM(2 -> 8) and a linear head, seed 9, as `dir/m.toml`.
pub fn broker_model(dir: &Path) {
    save_model(
        dir,
        &seqflow::model::builder::ModelBuilder::new(2, 9)
            .recurrent("lstm", "lstm", 8, 1)
            .linear("head", 1),
    );
}

/// The broker tests' reference: the file run over the same lines (every message's or
/// record's text, in order) with `dir/m.toml`, its output lines sorted.
pub fn broker_file_reference(dir: &Path, msgs: &[(String, String)]) -> Vec<String> {
    let text: String = msgs.iter().map(|(_, m)| m.as_str()).collect();
    std::fs::write(dir.join("all.jsonl"), text).unwrap();
    let p = write_pipeline(
        dir,
        "file.toml",
        "[source]\nformat = \"jsonl\"\npath = \"all.jsonl\"\nkey = \"sensor\"\ntime = \"ts\"\nfeatures = [\"a\", \"b\"]\n\
         [model]\npath = \"m.toml\"\n[output]\nformat = \"jsonl\"\npath = \"ref.jsonl\"\n",
    );
    let o = seqflow_cmd()
        .current_dir(dir)
        .arg("run")
        .arg(&p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    sorted_lines(&dir.join("ref.jsonl"))
}

/// Polls `cond` every 20 ms until it holds; fails the test after 20 s naming `what`.
pub fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// One HTTP/1.0 request to one of the run's servers: (status, body).
pub fn http(addr: &str, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |b| b.1).to_string();
    Ok((status, body))
}
