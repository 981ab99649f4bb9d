//! Live sources end to end: the real binary listening on 127.0.0.1, real client sockets,
//! real signals. Predictions must equal the offline model per key; bad lines are rejected
//! with their reason and line number while everything else goes on; SIGTERM drains.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pipeline::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TOL: f32 = 1e-5;

fn live_pipeline(dir: &Path, model: &Path, extra_source: &str, output: &str) -> PathBuf {
    write_pipeline(
        dir,
        "live.toml",
        &format!(
            "[source]\nformat = \"tcp\"\nlisten = \"127.0.0.1:0\"\nlines = \"jsonl\"\nkey = \"key\"\ntime = \"t\"\n\
             features = [\"f0\", \"f1\"]\nepoch_ms = 2\nrejects = \"out/rejects.jsonl\"\n{extra_source}\n\
             [model]\npath = \"{}\"\n[output]\nformat = \"jsonl\"\npath = \"out/live.jsonl\"\n{output}\n",
            model.display()
        ),
    )
}

fn read_jsonl(path: &Path) -> BTreeMap<String, BTreeMap<i64, Vec<f32>>> {
    let mut out: BTreeMap<String, BTreeMap<i64, Vec<f32>>> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let vals = vec![v["y0"].as_f64().unwrap() as f32, v["y1"].as_f64().unwrap() as f32];
        out.entry(v["key"].as_str().unwrap().to_string())
            .or_default()
            .insert(v["t"].as_i64().unwrap(), vals);
    }
    out
}

fn line(key: &str, t: i64, f: &[f32]) -> String {
    format!(
        "{{\"key\": \"{key}\", \"t\": {t}, \"f0\": {}, \"f1\": {}}}\n",
        f[0], f[1]
    )
}

#[test]
fn clients_stream_interleaved_keys_bad_lines_are_rejected_and_stop_drains() {
    let dir = tempfile::tempdir().unwrap();
    let (mpath, model) = save_model(dir.path(), &causal_model(2));
    let p = live_pipeline(dir.path(), &mpath, "max_line_bytes = 300", "");
    let run = LiveRun::start(&p, 2);
    let addr = run.addr.clone();

    // Three clients, each with its own 4 keys interleaved at random; bad lines in between;
    // the last client dies in the middle of a line.
    let mut all_rows: Vec<Row> = Vec::new();
    let mut handles = Vec::new();
    let mut rng = StdRng::seed_from_u64(9);
    for c in 0..3 {
        let mut pending: Vec<Vec<Row>> = (0..4)
            .map(|k| {
                (0..25)
                    .rev()
                    .map(|i| Row {
                        key: format!("c{c}k{k}"),
                        time: 100 + i as i64,
                        feats: vec![rng.random_range(-1.0f32..1.0), rng.random_range(-1.0f32..1.0)],
                    })
                    .collect()
            })
            .collect();
        let mut text = String::new();
        let mut n = 0;
        while pending.iter().any(|p| !p.is_empty()) {
            let k = rng.random_range(0..4);
            if let Some(r) = pending[k].pop() {
                text.push_str(&line(&r.key, r.time, &r.feats));
                all_rows.push(r);
                n += 1;
                match n {
                    10 => text.push_str("this is not json\n"),
                    20 => text.push_str("{\"key\": \"x\", \"t\": 1, \"f0\": 1}\n"),
                    30 => text.push_str("{\"key\": \"x\", \"t\": \"noon\", \"f0\": 1, \"f1\": 2}\n"),
                    40 => text.push_str(&format!("{{\"key\": \"{}\"}}\n", "z".repeat(400))),
                    _ => {}
                }
            }
        }
        if c == 2 {
            text.push_str("{\"key\": \"c2k0\", \"t\": 999, \"f0\"");
        }
        let addr = addr.clone();
        handles.push(std::thread::spawn(move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            for chunk in text.as_bytes().chunks(97) {
                s.write_all(chunk).unwrap();
                std::thread::sleep(Duration::from_micros(300));
            }
            // Dropped here: client 2 disconnects mid-line.
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    // Predictions are flushed every epoch, while the pipeline runs, to `PATH.partial`; the
    // file takes its name when the run ends.
    let out = dir.path().join("out/live.jsonl.partial");
    let want = offline_every_step(&model, &all_rows);
    wait_for(
        || read_jsonl(&out).values().map(BTreeMap::len).sum::<usize>() == all_rows.len(),
        "all predictions",
    );
    assert_close(&read_jsonl(&out), &want, TOL);

    // Stopped as SIGTERM stops the binary (sigterm_while_clients_send... sends the signal).
    let report = run.stop();
    let s = &report.stats;
    assert_eq!((s.outputs, s.keys, s.malformed), (all_rows.len() as u64, 12, 13));
    assert!(!out.exists());
    assert_close(&read_jsonl(&dir.path().join("out/live.jsonl")), &want, TOL);
    assert_eq!(report.source, "3 connections");
    assert_eq!(report.latency.map(|h| h.count()), Some(s.outputs));
    let rejects: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("out/rejects.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rejects.len(), 13);
    let details: Vec<&str> = rejects.iter().map(|r| r["detail"].as_str().unwrap()).collect();
    for want in [
        "not a JSON object",
        "missing field `f1`",
        "expected an integer time",
        "line longer than 300 bytes",
        "incomplete last line",
    ] {
        assert!(
            details.iter().any(|d| d.contains(want)),
            "no reject for {want:?}: {details:?}"
        );
    }
    let first = rejects
        .iter()
        .find(|r| r["detail"].as_str().unwrap().contains("not a JSON"))
        .unwrap();
    assert_eq!(first["at"], "line 11", "{first}");
    assert!(
        first["source"].as_str().unwrap().starts_with("tcp 127.0.0.1:"),
        "{first}"
    );
}

#[test]
fn sigterm_while_clients_send_processes_everything_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (mpath, _) = save_model(dir.path(), &causal_model(2));
    let p = live_pipeline(dir.path(), &mpath, "", "");
    let (child, addr, err) = start_live(&p, &[]);
    let sender = std::thread::spawn(move || {
        let mut s = TcpStream::connect(&addr).unwrap();
        for i in 0..200_000i64 {
            if s.write_all(line(&format!("k{}", i % 100), i, &[0.5, -0.5]).as_bytes())
                .is_err()
            {
                return i;
            }
        }
        200_000
    });
    std::thread::sleep(Duration::from_millis(400));
    let (ok, rest) = terminate(child, err);
    let _ = sender.join();
    assert!(ok, "SIGTERM must end the run with status 0: {rest}");
    assert!(
        rest.contains("seqflow: ") && rest.contains(" predictions for "),
        "no summary: {rest}"
    );
    // Every complete line the pipeline read became a prediction (nothing accepted is lost):
    // one connection reads in order, so the predicted times (line i has time i) are exactly
    // the first lines sent, without a gap.
    let mut times: Vec<i64> = std::fs::read_to_string(dir.path().join("out/live.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["t"]
                .as_i64()
                .unwrap()
        })
        .collect();
    times.sort_unstable();
    assert!(!times.is_empty(), "{rest}");
    assert!(
        times.iter().enumerate().all(|(i, &t)| t == i as i64),
        "predicted lines are not the first {} lines sent: {rest}",
        times.len()
    );
}

#[test]
fn stdin_csv_lines_until_end_of_input() {
    let dir = tempfile::tempdir().unwrap();
    let (mpath, model) = save_model(dir.path(), &causal_model(2));
    let p = write_pipeline(
        dir.path(),
        "stdin.toml",
        &format!(
            "[source]\nformat = \"stdin\"\nlines = \"csv\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]\n\
             rejects = \"out/rejects.jsonl\"\n[model]\npath = \"{}\"\n[output]\nformat = \"csv\"\npath = \"-\"\n",
            mpath.display()
        ),
    );
    let rows: Vec<Row> = (0..30)
        .map(|i| Row {
            key: format!("s{}", i % 3),
            time: i,
            feats: vec![(i as f32 * 0.3).sin(), 0.25],
        })
        .collect();
    let mut input = String::from("t,key,f1,f0\n");
    for r in &rows {
        input.push_str(&format!("{},{},{},{}\n", r.time, r.key, r.feats[1], r.feats[0]));
    }
    input.push_str("7,s1,oops,1\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_seqflow"))
        .args(["run", p.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    let out_path = dir.path().join("stdout.csv");
    std::fs::write(&out_path, &o.stdout).unwrap();
    // Every step of the 3 keys predicted; the one bad line rejected, naming its line.
    assert_close(&read_csv(&out_path), &offline_every_step(&model, &rows), TOL);
    let rejects = std::fs::read_to_string(dir.path().join("out/rejects.jsonl")).unwrap();
    let rejects: Vec<serde_json::Value> = rejects
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rejects.len(), 1, "{rejects:?}");
    assert_eq!(
        (&rejects[0]["reason"], &rejects[0]["at"]),
        (&"malformed".into(), &"line 32".into())
    );
}

#[test]
fn sequence_end_in_live_mode_ends_a_key_after_its_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (mpath, model) = save_model(dir.path(), &causal_model(2));
    let p = live_pipeline(
        dir.path(),
        &mpath,
        "idle_timeout_ms = 300",
        "emit = \"sequence_end\"",
    );
    let (child, addr, err) = start_live(&p, &[]);
    let mut s = TcpStream::connect(&addr).unwrap();
    let seq1: Vec<Row> = (0..5)
        .map(|i| Row {
            key: "a".into(),
            time: i,
            feats: vec![i as f32 * 0.1, 1.0],
        })
        .collect();
    for r in &seq1 {
        s.write_all(line(&r.key, r.time, &r.feats).as_bytes()).unwrap();
    }
    s.flush().unwrap();
    let out = dir.path().join("out/live.jsonl.partial");
    // The key's sequence ends 300 ms after its last step: its last output appears.
    wait_for(
        || read_jsonl(&out).get("a").is_some_and(|m| m.contains_key(&4)),
        "the first sequence's output",
    );
    let want = offline_every_step(&model, &seq1);
    assert_close(
        &read_jsonl(&out),
        &BTreeMap::from([("a".into(), BTreeMap::from([(4, want["a"][&4].clone())]))]),
        TOL,
    );
    // A new sequence of the same key starts from a fresh state.
    let seq2: Vec<Row> = (10..13)
        .map(|i| Row {
            key: "a".into(),
            time: i,
            feats: vec![-0.5, i as f32 * 0.05],
        })
        .collect();
    for r in &seq2 {
        s.write_all(line(&r.key, r.time, &r.feats).as_bytes()).unwrap();
    }
    s.flush().unwrap();
    wait_for(
        || read_jsonl(&out).get("a").is_some_and(|m| m.contains_key(&12)),
        "the second sequence's output",
    );
    let want2 = offline_every_step(&model, &seq2);
    let got = read_jsonl(&out)["a"][&12].clone();
    let d = got
        .iter()
        .zip(&want2["a"][&12])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        d <= TOL,
        "second sequence not from a fresh state: {got:?} vs {:?}",
        want2["a"][&12]
    );
    drop(s);
    let (ok, rest) = terminate(child, err);
    assert!(ok, "{rest}");
}

#[test]
fn address_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (mpath, _) = save_model(dir.path(), &causal_model(2));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let p = live_pipeline(dir.path(), &mpath, "", "");
    let text = std::fs::read_to_string(&p).unwrap().replace("127.0.0.1:0", &addr);
    std::fs::write(&p, text).unwrap();
    let o = seqflow(&["run", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains(&format!("tcp {addr}")) && e.contains("in use"), "{e}");
}

#[test]
fn csv_lines_with_configured_columns_and_parquet_output_closed_on_sigterm() {
    use arrow::array::AsArray;
    let dir = tempfile::tempdir().unwrap();
    let (mpath, model) = save_model(dir.path(), &causal_model(2));
    let p = write_pipeline(
        dir.path(),
        "csv.toml",
        &format!(
            "[source]\nformat = \"tcp\"\nlisten = \"127.0.0.1:0\"\nlines = \"csv\"\ncolumns = [\"key\", \"t\", \"f0\", \"f1\"]\n\
             key = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]\nepoch_ms = 2\n\
             [model]\npath = \"{}\"\n[output]\nformat = \"parquet\"\npath = \"out/live.parquet\"\n",
            mpath.display()
        ),
    );
    let (child, addr, err) = start_live(&p, &[]);
    let rows: Vec<Row> = (0..20)
        .map(|i| Row {
            key: format!("m{}", i % 2),
            time: i,
            feats: vec![i as f32 * 0.05, -0.3],
        })
        .collect();
    let mut s = TcpStream::connect(&addr).unwrap();
    for r in &rows {
        s.write_all(format!("{},{},{},{}\n", r.key, r.time, r.feats[0], r.feats[1]).as_bytes())
            .unwrap();
    }
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    let (ok, rest) = terminate(child, err);
    assert!(ok, "SIGTERM must end the run with status 0: {rest}");
    // The Parquet file is complete (footer written) and holds PyTorch-checked outputs.
    let f = std::fs::File::open(dir.path().join("out/live.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let mut got: BTreeMap<String, BTreeMap<i64, Vec<f32>>> = BTreeMap::new();
    for b in reader {
        let b = b.unwrap();
        let (k, t) = (
            b.column(0).as_string::<i32>(),
            b.column(1).as_primitive::<arrow::datatypes::Int64Type>(),
        );
        let (y0, y1) = (
            b.column(2).as_primitive::<arrow::datatypes::Float32Type>(),
            b.column(3).as_primitive::<arrow::datatypes::Float32Type>(),
        );
        for i in 0..b.num_rows() {
            got.entry(k.value(i).to_string())
                .or_default()
                .insert(t.value(i), vec![y0.value(i), y1.value(i)]);
        }
    }
    assert_close(&got, &offline_every_step(&model, &rows), TOL);
}

/// A live pipeline over `model` with extra `[source]` settings, CSV or JSON lines.
fn live_with(dir: &Path, model: &Path, lines: &str, extra: &str) -> PathBuf {
    write_pipeline(
        dir,
        "limits.toml",
        &format!(
            "[source]\nformat = \"tcp\"\nlisten = \"127.0.0.1:0\"\nlines = \"{lines}\"\nkey = \"key\"\ntime = \"t\"\n\
             features = [\"f0\", \"f1\"]\nepoch_ms = 2\nrejects = \"out/rejects.jsonl\"\n{extra}\n\
             [model]\npath = \"{}\"\n[output]\nformat = \"jsonl\"\npath = \"out/live.jsonl\"\n",
            model.display()
        ),
    )
}

#[test]
fn connections_over_the_cap_are_told_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (mpath, _) = save_model(dir.path(), &causal_model(2));
    let run = LiveRun::start(&live_with(dir.path(), &mpath, "jsonl", "max_connections = 2"), 1);
    let a = TcpStream::connect(&run.addr).unwrap();
    let b = TcpStream::connect(&run.addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut c = TcpStream::connect(&run.addr).unwrap();
    let mut told = String::new();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::io::Read::read_to_string(&mut c, &mut told).unwrap();
    assert!(
        told.contains("connection refused: 2 connections are open (max_connections)"),
        "{told}"
    );
    drop((a, b));
    let report = run.stop();
    assert_eq!(report.stats.refused_connections, 1);
    assert!(report.to_string().contains("1 connections refused"), "{report}");
}

#[test]
fn an_over_long_line_cut_off_by_a_disconnect_is_a_reject() {
    let dir = tempfile::tempdir().unwrap();
    let (mpath, _) = save_model(dir.path(), &causal_model(2));
    let run = LiveRun::start(&live_with(dir.path(), &mpath, "jsonl", "max_line_bytes = 100"), 1);
    let mut s = TcpStream::connect(&run.addr).unwrap();
    s.write_all(line("a", 1, &[0.5, 0.5]).as_bytes()).unwrap();
    s.write_all(format!("{{\"key\": \"{}", "x".repeat(500)).as_bytes())
        .unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    let report = run.stop();
    assert_eq!(
        (
            report.stats.outputs,
            report.stats.malformed,
            report.stats.rows_read
        ),
        (1, 1, 2)
    );
    let rejects = std::fs::read_to_string(dir.path().join("out/rejects.jsonl")).unwrap();
    assert!(
        rejects.contains("line longer than 100 bytes, cut off by the disconnect"),
        "{rejects}"
    );
}

#[test]
fn a_quoted_newline_in_a_csv_stream_stays_in_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let (mpath, _) = save_model(dir.path(), &causal_model(2));
    let run = LiveRun::start(&live_with(dir.path(), &mpath, "csv", ""), 1);
    let mut s = TcpStream::connect(&run.addr).unwrap();
    s.write_all(b"key,t,f0,f1\n\"two\nlines\",1,0.5,0.25\nb,1,0.5,0.25\nb,2,oops,1\n")
        .unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    let report = run.stop();
    // Three records (the header is not a row): two predictions, one malformed.
    assert_eq!(
        (
            report.stats.outputs,
            report.stats.malformed,
            report.stats.keys,
            report.stats.rows_read
        ),
        (2, 1, 2, 3)
    );
    let out = std::fs::read_to_string(dir.path().join("out/live.jsonl")).unwrap();
    assert!(out.contains("\"key\":\"two\\nlines\""), "{out}");
    // Lines are counted as the client wrote them: the bad record starts on line 5.
    let rejects = std::fs::read_to_string(dir.path().join("out/rejects.jsonl")).unwrap();
    assert!(rejects.contains("\"at\":\"line 5\""), "{rejects}");
}

#[test]
fn a_stop_during_a_flood_ends_within_the_drain_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (mpath, _) = save_model(dir.path(), &causal_model(2));
    let run = LiveRun::start(
        &live_with(dir.path(), &mpath, "jsonl", "drain_timeout_ms = 200"),
        1,
    );
    let senders: Vec<_> = (0..8)
        .map(|c| {
            let addr = run.addr.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                let mut text = String::new();
                for i in 0..2_000i64 {
                    text.push_str(&line(&format!("c{c}k{}", i % 50), i, &[0.5, -0.5]));
                }
                for _ in 0..100 {
                    if s.write_all(text.as_bytes()).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let report = run.stop();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t.elapsed()
    );
    // Every line read was processed, rejected or counted as dropped.
    let s = &report.stats;
    assert!(s.rows_read > 0);
    assert_eq!(
        s.rows_read,
        s.outputs + s.late + s.duplicate + s.malformed + s.non_finite + s.dropped_lines,
        "{report}"
    );
    for h in senders {
        let _ = h.join();
    }
}

/// Lines of `key` in the output, in the order written.
fn lines_of(path: &Path, key: &str) -> Vec<(i64, Vec<f32>)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["key"] == key)
        .map(|v| {
            let vals = vec![v["y0"].as_f64().unwrap() as f32, v["y1"].as_f64().unwrap() as f32];
            (v["t"].as_i64().unwrap(), vals)
        })
        .collect()
}

#[test]
fn new_keys_past_max_keys_and_over_long_keys_are_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let (mpath, model) = save_model(dir.path(), &causal_model(2));
    let p = live_with(dir.path(), &mpath, "jsonl", "max_keys = 3\nmax_key_bytes = 16");
    let run = LiveRun::start(&p, 1);
    let mut s = TcpStream::connect(&run.addr).unwrap();
    // One connection, in order: k0, k1, k2 are admitted, k3 and k4 are not.
    let mut rows = Vec::new();
    for t in 0..10 {
        for k in 0..5 {
            let r = Row {
                key: format!("k{k}"),
                time: t,
                feats: vec![t as f32 * 0.1, k as f32 - 2.0],
            };
            s.write_all(line(&r.key, r.time, &r.feats).as_bytes()).unwrap();
            rows.push(r);
        }
    }
    s.write_all(line(&"x".repeat(17), 0, &[0.0, 0.0]).as_bytes())
        .unwrap();
    s.write_all(line(&"y".repeat(16), 0, &[0.0, 0.0]).as_bytes())
        .unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    let report = run.stop();
    // k3, k4 and the 16-byte key (not too long, but a fourth key) are past max_keys.
    assert_eq!(report.stats.key_limit, 21, "{report}");
    assert_eq!(report.stats.malformed, 1, "{report}");
    assert_eq!(report.stats.keys, 3, "{report}");
    assert_eq!(report.stats.outputs, 30, "{report}");
    assert!(
        report
            .to_string()
            .contains("21 steps of new keys rejected at max_keys"),
        "{report}"
    );
    let rejects = std::fs::read_to_string(dir.path().join("out/rejects.jsonl")).unwrap();
    let reasons: Vec<serde_json::Value> = rejects
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let limited: Vec<&serde_json::Value> = reasons.iter().filter(|r| r["reason"] == "key_limit").collect();
    assert_eq!(limited.len(), 21);
    let y16 = "y".repeat(16);
    assert!(
        limited
            .iter()
            .all(|r| r["key"] == "k3" || r["key"] == "k4" || r["key"] == y16.as_str()),
        "{rejects}"
    );
    assert!(
        rejects.contains("key is 17 bytes, more than max_key_bytes = 16"),
        "{rejects}"
    );
    let admitted: Vec<Row> = rows
        .into_iter()
        .filter(|r| ["k0", "k1", "k2"].contains(&r.key.as_str()))
        .collect();
    assert_close(
        &read_jsonl(&dir.path().join("out/live.jsonl")),
        &offline_every_step(&model, &admitted),
        TOL,
    );
}

#[test]
fn a_key_idle_past_state_ttl_is_forgotten_and_starts_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let (mpath, model) = save_model(dir.path(), &causal_model(2));
    let p = live_with(dir.path(), &mpath, "jsonl", "state_ttl_ms = 100");
    let run = LiveRun::start(&p, 2);
    let mut s = TcpStream::connect(&run.addr).unwrap();
    let first: Vec<Row> = (0..10)
        .map(|t| Row {
            key: "a".into(),
            time: t,
            feats: vec![t as f32 * 0.1, 1.0],
        })
        .collect();
    for r in &first {
        s.write_all(line(&r.key, r.time, &r.feats).as_bytes()).unwrap();
    }
    let partial = dir.path().join("out/live.jsonl.partial");
    wait_for(|| lines_of(&partial, "a").len() == 10, "the first ten outputs");
    // Silent for ten times the TTL: the key is forgotten. Times from before are no longer
    // late: the key starts over from a fresh state.
    std::thread::sleep(Duration::from_millis(1000));
    let again: Vec<Row> = (0..5)
        .map(|t| Row {
            key: "a".into(),
            time: t,
            feats: vec![-0.3, t as f32 * 0.2],
        })
        .collect();
    for r in &again {
        s.write_all(line(&r.key, r.time, &r.feats).as_bytes()).unwrap();
    }
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    let report = run.stop();
    assert_eq!(
        (report.stats.late, report.stats.keys, report.stats.outputs),
        (0, 2, 15),
        "{report}"
    );
    assert!(report.stats.keys_forgotten >= 1, "{report}");
    assert!(
        report.to_string().contains("keys forgotten after state_ttl_ms"),
        "{report}"
    );
    let got = lines_of(&dir.path().join("out/live.jsonl"), "a");
    let want: Vec<(i64, Vec<f32>)> = [first, again]
        .iter()
        .flat_map(|rows| {
            offline_every_step(&model, rows)["a"]
                .clone()
                .into_iter()
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(got.len(), want.len());
    for ((tg, g), (tw, w)) in got.iter().zip(&want) {
        assert_eq!(tg, tw);
        let d = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(d <= TOL, "t {tg}: {g:?} vs {w:?}");
    }
}

/// Sets the soft address-space limit (RLIMIT_AS) of process `pid`, in bytes. Unlike
/// RLIMIT_NPROC (which root ignores), it binds any user: a thread's stack needs room.
#[cfg(target_os = "linux")]
fn limit_address_space(pid: u32, bytes: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a child of this test (same user), with valid pointers.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_AS, std::ptr::null(), &mut lim) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    lim.rlim_cur = bytes.min(lim.rlim_max);
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_AS, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// `(threads, address space in bytes)` of process `pid`.
#[cfg(target_os = "linux")]
fn threads_and_vm(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {status}"))
    };
    (field("Threads:"), field("VmSize:") * 1024)
}

/// A real resource limit (not a hook): when no thread can be started for a new connection
/// (no address space left for its stack), it is refused with the reason and counted, and
/// the listener stays up for the next one.
#[cfg(target_os = "linux")]
#[test]
fn a_connection_without_a_thread_is_refused_and_the_listener_survives() {
    let dir = tempfile::tempdir().unwrap();
    let (mpath, model) = save_model(dir.path(), &causal_model(2));
    let p = live_with(dir.path(), &mpath, "jsonl", "");
    let (child, addr, err) = start_live(&p, &[]);
    let pid = child.id();
    let rows: Vec<Row> = (0..10)
        .map(|t| Row {
            key: "a".into(),
            time: t,
            feats: vec![t as f32, 0.5],
        })
        .collect();
    let send = |rows: &[Row]| {
        let mut s = TcpStream::connect(&addr).unwrap();
        for r in rows {
            s.write_all(line(&r.key, r.time, &r.feats).as_bytes()).unwrap();
        }
    };
    // Fully started (every worker and writer thread running) and idle before the limit:
    // threads and address space unchanged for 300 ms. The first client stays connected, so
    // that no exited reader's stack is cached for the next thread (glibc reuses them).
    let mut first = TcpStream::connect(&addr).unwrap();
    for r in &rows[..5] {
        first
            .write_all(line(&r.key, r.time, &r.feats).as_bytes())
            .unwrap();
    }
    let partial = dir.path().join("out/live.jsonl.partial");
    wait_for(
        || lines_of(&partial, "a").len() == 5,
        "the first client's predictions",
    );
    let mut last = threads_and_vm(pid);
    let mut since = Instant::now();
    wait_for(
        || {
            let now = threads_and_vm(pid);
            if now != last {
                (last, since) = (now, Instant::now());
            }
            since.elapsed() > Duration::from_millis(300)
        },
        "an idle server",
    );
    // Room for some heap growth (1 MiB), not for a thread's 2 MiB stack.
    limit_address_space(pid, last.1 + (1 << 20));
    let mut c = TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut told = String::new();
    std::io::Read::read_to_string(&mut c, &mut told).unwrap();
    assert!(
        told.contains("seqflow: connection refused: no thread for the connection"),
        "{told:?}"
    );
    // The limit lifted, the same listener serves the next client.
    limit_address_space(pid, libc::RLIM_INFINITY);
    drop(first);
    send(&rows[5..]);
    wait_for(
        || lines_of(&partial, "a").len() == 10,
        "the third client's predictions",
    );
    let (ok, rest) = terminate(child, err);
    assert!(ok, "{rest}");
    assert!(
        rest.contains("from 2 connections") && rest.contains("1 connections refused"),
        "{rest}"
    );
    assert_close(
        &read_jsonl(&dir.path().join("out/live.jsonl")),
        &offline_every_step(&model, &rows),
        TOL,
    );
}
