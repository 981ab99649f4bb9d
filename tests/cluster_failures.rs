//! A cluster (`-n 2`) whose peer is missing, a stranger, mismatched or killed: the real
//! binary on loopback sockets, a real SIGKILL. Every case must end with exit code 2 and one
//! paragraph naming the peer, never a panic, a backtrace or a hang, and leave no output or
//! `.partial` file behind; `--output -` must keep stdout to the CSV alone.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::pipeline::*;

/// A files pipeline over a small Parquet input, its output in `out/`.
fn files_pipeline(dir: &Path) -> PathBuf {
    let rows: Vec<Row> = (0..6)
        .flat_map(|k| {
            (0..20).map(move |t| Row {
                key: format!("k{k}"),
                time: t,
                feats: vec![(k * t) as f32 * 0.01, (t as f32).sin()],
            })
        })
        .collect();
    std::fs::create_dir_all(dir.join("in")).unwrap();
    write_parquet(&dir.join("in/part-0.parquet"), &rows, 50);
    let (mpath, _) = save_model(dir, &causal_model(2));
    write_pipeline(
        dir,
        "files.toml",
        &format!(
            "[source]\nformat = \"parquet\"\npath = \"in\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]\n\
             [model]\npath = \"{}\"\n[output]\nformat = \"csv\"\npath = \"out/pred.csv\"\n",
            mpath.display()
        ),
    )
}

/// A live pipeline (tcp source on an ephemeral port), its outputs in `out/`.
fn live_pipeline(dir: &Path) -> PathBuf {
    let (mpath, _) = save_model(dir, &causal_model(2));
    write_pipeline(
        dir,
        "live.toml",
        &format!(
            "[source]\nformat = \"tcp\"\nlisten = \"127.0.0.1:0\"\nlines = \"csv\"\nkey = \"key\"\ntime = \"t\"\n\
             features = [\"f0\", \"f1\"]\nepoch_ms = 2\nrejects = \"out/rejects.jsonl\"\n\
             [model]\npath = \"{}\"\n[output]\nformat = \"csv\"\npath = \"out/live.csv\"\n",
            mpath.display()
        ),
    )
}

fn hostfile(dir: &Path, ports: [u16; 2]) -> PathBuf {
    let h = dir.join("hosts.txt");
    std::fs::write(&h, format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports[0], ports[1])).unwrap();
    h
}

/// `seqflow run pipeline -n 2 -p index -h hosts extra...`, stdout and stderr piped.
fn spawn(pipeline: &Path, hosts: &Path, index: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_seqflow"))
        .arg("run")
        .arg(pipeline)
        .args(["-n", "2", "-p", index, "-h"])
        .arg(hosts)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` to end within `limit`, else kills it and fails: a hang is a failure.
fn finish(child: Child, limit: Duration, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    match rx.recv_timeout(limit) {
        Ok(out) => out,
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("{what} hung for more than {limit:?}");
        }
    }
}

/// Exit code 2, one `seqflow: error:` paragraph containing every `needles`, no panic text.
fn assert_one_clear_error(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr:\n{err}");
    assert_eq!(
        err.matches("seqflow: error:").count(),
        1,
        "one error paragraph:\n{err}"
    );
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
    for bad in ["panicked", "RUST_BACKTRACE", "internal error", "Aborted"] {
        assert!(!err.contains(bad), "stderr shows {bad:?}:\n{err}");
    }
}

/// Nothing at all in `out/`: no output, no `.partial`.
fn assert_no_outputs(dir: &Path) {
    let left: Vec<String> = std::fs::read_dir(dir.join("out"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "files left in out/: {left:?}");
}

#[test]
fn a_peer_that_never_starts_is_named_after_the_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let p = files_pipeline(dir.path());
    let ports = [free_port(), free_port()];
    let hosts = hostfile(dir.path(), ports);
    // Process 0 waits for process 1; process 1 (alone, in another run) dials process 0.
    // Process 0 also with its output on stdout: the output it opened before waiting must
    // not be finished (a CSV header) when the run fails.
    let cases = [("0", 1, false), ("1", 0, false), ("0", 1, true)];
    for (me, missing, stdout) in cases {
        let mut args = vec!["--connect-timeout", "2"];
        if stdout {
            args.extend(["--output", "-"]);
        }
        let started = Instant::now();
        let out = finish(
            spawn(&p, &hosts, me, &args),
            Duration::from_secs(30),
            "a process waiting for a peer",
        );
        let waited = started.elapsed();
        let peer = format!("process(es) {missing} (127.0.0.1:{})", ports[missing]);
        assert_one_clear_error(&out, &[&peer, "did not connect within the connect timeout (2 s)"]);
        assert!(waited >= Duration::from_secs(2), "gave up after {waited:?}");
        assert!(
            out.stdout.is_empty(),
            "stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_no_outputs(dir.path());
    }
}

#[test]
fn ctrl_c_while_waiting_for_a_peer_stops_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = files_pipeline(dir.path());
    let hosts = hostfile(dir.path(), [free_port(), free_port()]);
    let child = spawn(&p, &hosts, "0", &["--connect-timeout", "60"]);
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let out = finish(child, Duration::from_secs(10), "a process stopped while waiting");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        started.elapsed()
    );
    assert_one_clear_error(
        &out,
        &["process 0: stopped while waiting for the other processes of the cluster"],
    );
    assert_no_outputs(dir.path());
}

#[test]
fn a_stranger_on_a_cluster_port_is_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let p = files_pipeline(dir.path());
    let ports = [free_port(), free_port()];
    let hosts = hostfile(dir.path(), ports);

    // Junk sent to process 0's port.
    let child = spawn(&p, &hosts, "0", &["--connect-timeout", "20"]);
    let start = Instant::now();
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", ports[0])) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("process 0 never listened: {e}"),
        }
    };
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let out = finish(child, Duration::from_secs(30), "process 0 fed junk");
    assert_one_clear_error(
        &out,
        &["connected to this process (process 0) but is not a process after it in this seqflow cluster"],
    );
    assert_no_outputs(dir.path());

    // Another program listening at process 0's address answers process 1 with junk.
    let other = TcpListener::bind(("127.0.0.1", ports[0])).unwrap();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = other.accept() {
            let _ = c.write_all(b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n");
            let mut sink = Vec::new();
            let _ = c.read_to_end(&mut sink);
        }
    });
    let out = finish(
        spawn(&p, &hosts, "1", &["--connect-timeout", "20"]),
        Duration::from_secs(30),
        "process 1 answered with junk",
    );
    assert_one_clear_error(
        &out,
        &[&format!(
            "127.0.0.1:{} answered, but not as process 0 of this seqflow cluster",
            ports[0]
        )],
    );
}

#[test]
fn processes_with_different_worker_counts_both_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let p = files_pipeline(dir.path());
    let hosts = hostfile(dir.path(), [free_port(), free_port()]);
    let a = spawn(&p, &hosts, "0", &["-w", "2", "--connect-timeout", "20"]);
    let b = spawn(&p, &hosts, "1", &["-w", "1", "--connect-timeout", "20"]);
    let a = finish(a, Duration::from_secs(30), "process 0");
    let b = finish(b, Duration::from_secs(30), "process 1");
    assert_one_clear_error(
        &a,
        &[
            "runs -w 1 but this process (process 0) -w 2",
            "every process needs the same -w",
        ],
    );
    assert_one_clear_error(
        &b,
        &[
            "runs -w 2 but this process (process 1) -w 1",
            "every process needs the same -w",
        ],
    );
    assert_no_outputs(dir.path());
}

#[test]
fn output_to_stdout_holds_only_the_csv_on_two_processes() {
    let dir = tempfile::tempdir().unwrap();
    let p = files_pipeline(dir.path());
    let one = seqflow(&["run", p.to_str().unwrap(), "--output", "-"]);
    assert!(one.status.success(), "{}", stderr(&one));
    let hosts = hostfile(dir.path(), [free_port(), free_port()]);
    let a = spawn(&p, &hosts, "0", &["--output", "-"]);
    let b = spawn(&p, &hosts, "1", &["--output", "-"]);
    let a = finish(a, Duration::from_secs(60), "process 0");
    let b = finish(b, Duration::from_secs(60), "process 1");
    assert!(
        a.status.success() && b.status.success(),
        "{}{}",
        stderr(&a),
        stderr(&b)
    );
    let sorted = |o: &[u8]| {
        let mut v: Vec<String> = String::from_utf8_lossy(o).lines().map(str::to_string).collect();
        v.sort();
        v
    };
    assert_eq!(
        sorted(&a.stdout),
        sorted(&one.stdout),
        "process 0's stdout is the CSV"
    );
    assert!(
        b.stdout.is_empty(),
        "process 1's stdout: {}",
        String::from_utf8_lossy(&b.stdout)
    );
    assert_eq!(
        one.stdout
            .split(|&c| c == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        1 + 6 * 20
    );
}

/// Starts both processes of a live run and returns them once process 0 listens, with its
/// address and process 0's stderr lines so far.
fn start_live_cluster(dir: &Path) -> (Child, Child, String, mpsc::Receiver<String>) {
    let p = live_pipeline(dir);
    let hosts = hostfile(dir, [free_port(), free_port()]);
    let mut a = spawn(&p, &hosts, "0", &["-w", "2", "--connect-timeout", "20"]);
    let b = spawn(&p, &hosts, "1", &["-w", "2", "--connect-timeout", "20"]);
    let (tx, rx) = mpsc::channel();
    let err = BufReader::new(a.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in err.lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("process 0 listens");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split(' ').next().unwrap().to_string();
        }
    };
    (a, b, addr, rx)
}

/// Sends a few lines for four keys.
fn feed(addr: &str) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"key,t,f0,f1\n").unwrap();
    for t in 0..50 {
        for k in 0..4 {
            writeln!(c, "k{k},{t},{},{}", t as f32 * 0.1, k as f32).unwrap();
        }
    }
}

fn sigkill(child: &Child) {
    assert!(Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

#[test]
fn a_killed_process_ends_the_survivor_with_one_message_and_no_output() {
    // Process 1 killed: process 0 (which owns the source and the outputs) stops.
    let dir = tempfile::tempdir().unwrap();
    let (a, mut b, addr, rx) = start_live_cluster(dir.path());
    feed(&addr);
    std::thread::sleep(Duration::from_millis(300));
    sigkill(&b);
    let _ = b.wait();
    let a = finish(a, Duration::from_secs(30), "process 0 after its peer was killed");
    // The reader thread ends at the process's end of stderr: wait for all of it.
    let err: String = rx.iter().map(|l| l + "\n").collect();
    let out = Output {
        stderr: err.into_bytes(),
        ..a
    };
    assert_one_clear_error(
        &out,
        &["the cluster lost a process or its connection", "process 0"],
    );
    assert_no_outputs(dir.path());

    // Process 0 killed: process 1 stops too.
    let dir = tempfile::tempdir().unwrap();
    let (mut a, b, addr, _rx) = start_live_cluster(dir.path());
    feed(&addr);
    std::thread::sleep(Duration::from_millis(300));
    sigkill(&a);
    let _ = a.wait();
    let b = finish(b, Duration::from_secs(30), "process 1 after its peer was killed");
    assert_one_clear_error(&b, &["the cluster lost a process or its connection", "process 1"]);
}

#[test]
fn bad_data_on_one_process_ends_every_process_with_its_message() {
    // A NaN (nan = "error") in the first row group, which process 0 reads: process 1,
    // which read its own units without trouble, must not end with exit 0.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rows: Vec<Row> = (0..4)
        .flat_map(|k| {
            (0..40).map(move |t| Row {
                key: format!("k{k}"),
                time: t,
                feats: vec![
                    if k == 0 && t == 3 {
                        f32::NAN
                    } else {
                        t as f32 * 0.1
                    },
                    k as f32,
                ],
            })
        })
        .collect();
    std::fs::create_dir_all(d.join("in")).unwrap();
    write_parquet(&d.join("in/part-0.parquet"), &rows, 20);
    let (mpath, _) = save_model(d, &causal_model(2));
    let p = write_pipeline(
        d,
        "bad.toml",
        &format!(
            "[source]\nformat = \"parquet\"\npath = \"in\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]\n\
             [model]\npath = \"{}\"\n[output]\nformat = \"csv\"\npath = \"out/pred.csv\"\n",
            mpath.display()
        ),
    );
    let hosts = hostfile(d, [free_port(), free_port()]);
    let a = spawn(&p, &hosts, "0", &[]);
    let b = spawn(&p, &hosts, "1", &[]);
    let a = finish(a, Duration::from_secs(60), "process 0 with bad data");
    let b = finish(b, Duration::from_secs(60), "process 1 of a run with bad data");
    for (who, out) in [("process 0", &a), ("process 1", &b)] {
        assert_eq!(out.status.code(), Some(2), "{who}: {}", stderr(out));
        let err = stderr(out);
        assert!(
            err.contains("is NaN") && err.contains("part-0.parquet"),
            "{who}: {err}"
        );
        assert!(!err.contains("panicked"), "{who}: {err}");
    }
    assert_no_outputs(d);
}
