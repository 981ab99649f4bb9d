//! The Kafka source and output against a real Kafka-compatible broker: tansu, started by
//! each test on a free loopback port with in-memory storage. Ignored by plain `cargo test`
//! (they need tansu); `scripts/test` installs it and runs them.
//!
//! - Records replayed into a 3-partition topic, read by two workers that share the
//!   partitions, give exactly the predictions of the file run over the same lines.
//! - Killed with SIGKILL at several moments while records keep coming, restarted with
//!   `--resume` on other worker counts: every step gets exactly one prediction, equal to the
//!   uninterrupted run's (the checkpoint's offsets are where each partition goes on from,
//!   and the output is cut back to the checkpoint).
//! - The network to the broker drops for seconds: seqflow says so, reconnects, loses nothing.
//! - Predictions produced to a topic: the file run's, each keyed by its sensor, in the
//!   partition Kafka's default partitioner gives that key.
//!
//! tansu 0.6's in-memory storage mishandles a fetch that starts inside a batch of several
//! records (it returns nothing); the crash tests produce one record per request, so that a
//! resume may start at any offset, as it may on Kafka.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pipeline::*;
use seqflow::kafka::{partition_for, Kafka, Producer};

/// A tansu broker on a free loopback port (in-memory storage), stopped when dropped.
/// `advertise` is the address clients are told to use (a proxy's, to cut the network).
struct Tansu {
    child: Child,
    port: u16,
}

impl Tansu {
    fn start() -> Tansu {
        let port = free_port();
        Self::start_advertising(port, port)
    }

    fn start_advertising(port: u16, advertise: u16) -> Tansu {
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertise}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu (scripts/test installs it)");
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "tansu did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Tansu { child, port }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `$TANSU` (set by scripts/test), else where `cargo install` puts it, else the PATH's.
fn tansu() -> PathBuf {
    if let Some(t) = std::env::var_os("TANSU") {
        return PathBuf::from(t);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let installed = Path::new(&home).join(".cargo/bin/tansu");
    if installed.exists() {
        installed
    } else {
        PathBuf::from("tansu")
    }
}

/// JSON lines for 8 sensors, steps `from..to`: one (key, value) per record, `per` lines each.
fn records(from: i64, to: i64, per: i64) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for k in 0..8 {
        let mut t = from;
        while t < to {
            let mut m = String::new();
            for s in t..(t + per).min(to) {
                m.push_str(&format!(
                    "{{\"sensor\": \"s{k}\", \"ts\": {s}, \"a\": {}, \"b\": {}}}\n",
                    ((k * 7 + s) % 13) as f32 * 0.1,
                    ((s * 3) % 5) as f32 - 2.0
                ));
            }
            out.push((format!("s{k}"), m));
            t += per;
        }
    }
    out
}

/// Produces `recs` to `topic` (created with 3 partitions if missing), `batch` records per
/// request, and waits for the acknowledgements.
fn produce(addr: &str, topic: &str, recs: &[(String, String)], batch: usize) {
    let mut p = Producer::connect(&[addr.to_string()], topic, "test-producer", Some(3)).unwrap();
    p.batch = batch;
    for (k, v) in recs {
        p.push(k.as_bytes(), v.clone().into_bytes());
    }
    p.flush().unwrap();
}

fn kafka_pipeline(dir: &Path, addr: &str, checkpoint: bool) -> PathBuf {
    let ck = if checkpoint {
        "[checkpoint]\ndir = \"state\"\nevery_ms = 300\n"
    } else {
        ""
    };
    write_pipeline(
        dir,
        "kafka.toml",
        &format!(
            "[source]\nformat = \"kafka\"\nbrokers = [\"{addr}\"]\ntopic = \"readings\"\nstart = \"earliest\"\n\
             key = \"sensor\"\ntime = \"ts\"\nfeatures = [\"a\", \"b\"]\nepoch_ms = 5\nrejects = \"out/rejects.jsonl\"\n\
             [model]\npath = \"m.toml\"\n[output]\nformat = \"jsonl\"\npath = \"out/pred.jsonl\"\n{ck}"
        ),
    )
}

/// Creates `topic` with `partitions` partitions.
fn create_topic(addr: &str, topic: &str, partitions: i32) {
    Kafka::connect(&[addr.to_string()], "test")
        .unwrap()
        .create_topic(topic, partitions)
        .unwrap();
}

/// Starts `seqflow run kafka.toml ARGS` and waits for its "subscribed" line.
fn start(dir: &Path, args: &[&str]) -> (Child, std::io::BufReader<std::process::ChildStderr>) {
    start_subscribed(dir, "kafka.toml", args)
}

/// Starts the pipeline with `args`, waits for every prediction of `want`, lets a moment pass
/// (nothing more may come), stops it with SIGTERM and checks the output is exactly `want`.
/// Returns the end of its stderr (the summary).
fn resume_and_check(dir: &Path, args: &[&str], want: &[String]) -> String {
    let (child, err) = start(dir, args);
    wait_lines(&dir.join("out/pred.jsonl"), want.len());
    std::thread::sleep(Duration::from_millis(300));
    let summary = stop_ok(child, err);
    assert_eq!(sorted_lines(&dir.join("out/pred.jsonl")), want);
    summary
}

/// Every record of every partition of `topic`: (partition, key, value), read until `n`
/// have come (or 30 s), then until none came for `settle`.
fn consume(addr: &str, topic: &str, n: usize, settle: Duration) -> Vec<(i32, String, String)> {
    let k = Kafka::connect(&[addr.to_string()], "test-consumer").unwrap();
    let parts = k.partitions(topic).unwrap();
    let clients: Vec<_> = parts.iter().map(|&p| k.partition(topic, p).unwrap()).collect();
    let mut next = vec![0i64; parts.len()];
    let mut out = Vec::new();
    let t = Instant::now();
    let mut last_new = Instant::now();
    while (out.len() < n || last_new.elapsed() < settle) && t.elapsed() < Duration::from_secs(30) {
        let before = out.len();
        for (i, c) in clients.iter().enumerate() {
            let (recs, _) = k.block_on(c.fetch_records(next[i], 1..1 << 20, 50)).unwrap();
            let from = next[i];
            for r in recs.into_iter().filter(|r| r.offset >= from) {
                next[i] = r.offset + 1;
                let key = String::from_utf8(r.record.key.unwrap_or_default()).unwrap();
                let value = String::from_utf8(r.record.value.unwrap_or_default()).unwrap();
                out.push((parts[i], key, value));
            }
        }
        if out.len() > before {
            last_new = Instant::now();
        }
    }
    out
}

#[test]
#[ignore = "needs tansu: scripts/test installs and runs it"]
fn a_kafka_stream_read_by_two_workers_gives_the_file_runs_predictions() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    broker_model(d);
    // Three lines per record, 1,000 records per request.
    let recs = records(0, 600, 3);
    let want = broker_file_reference(d, &recs);
    produce(&broker.addr(), "readings", &recs, 1000);
    kafka_pipeline(d, &broker.addr(), false);
    let (child, err) = start(d, &["-w", "2"]);
    wait_lines(&d.join("out/pred.jsonl"), want.len());
    let summary = stop_ok(child, err);
    assert_eq!(sorted_lines(&d.join("out/pred.jsonl")), want);
    assert!(
        summary.contains("rows from kafka readings (3 partitions)"),
        "{summary}"
    );
    assert!(summary.contains("consumer lag 0 records"), "{summary}");
}

#[test]
#[ignore = "needs tansu: scripts/test installs and runs it"]
fn seqflow_replay_to_kafka_feeds_the_source_and_bad_records_are_named_by_offset() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    broker_model(d);
    let recs = records(0, 40, 1);
    let want = broker_file_reference(d, &recs);
    // `replay` creates the topic (3 partitions) and keys each record by its sensor.
    let o = Command::new(env!("CARGO_BIN_EXE_seqflow"))
        .current_dir(d)
        .args([
            "replay",
            "all.jsonl",
            "--key",
            "sensor",
            "--time",
            "ts",
            "--rate",
            "0",
            "--partitions",
            "3",
            "--batch",
            "1",
        ])
        .arg("--to")
        .arg(format!("kafka://{}/readings", broker.addr()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("sent 320 rows over 3 partitions"),
        "{}",
        stderr(&o)
    );
    // One malformed record, after everything else in its partition.
    produce(
        &broker.addr(),
        "readings",
        &[("s1".into(), "{\"sensor\": \"s1\", \"ts\": ".into())],
        1,
    );
    kafka_pipeline(d, &broker.addr(), false);
    let (child, err) = start(d, &[]);
    wait_lines(&d.join("out/pred.jsonl"), want.len());
    wait_lines(&d.join("out/rejects.jsonl"), 1);
    let summary = stop_ok(child, err);
    assert_eq!(sorted_lines(&d.join("out/pred.jsonl")), want);
    let rejects = std::fs::read_to_string(d.join("out/rejects.jsonl")).unwrap();
    let p = partition_for(b"s1", 3);
    // Partition p held s1's 40 records (and maybe other sensors'): the bad one is the last.
    let offset = recs
        .iter()
        .filter(|(k, _)| partition_for(k.as_bytes(), 3) == p)
        .count();
    assert!(
        rejects.contains(&format!("\"kafka readings/{p}\""))
            && rejects.contains(&format!("\"offset {offset}\"")),
        "{rejects}"
    );
    assert!(summary.contains("malformed 1"), "{summary}");
}

#[test]
#[ignore = "needs tansu: scripts/test installs and runs it"]
fn a_kafka_run_killed_at_several_moments_resumes_from_its_offsets_with_every_step_once() {
    let broker = Tansu::start();
    let addr = broker.addr();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    broker_model(d);
    // Five chunks of steps, one record each; a kill after each of the first four, at a
    // different moment: at once, mid-epoch, around a checkpoint, well after one.
    let chunks: Vec<_> = (0..5).map(|i| records(i * 12, (i + 1) * 12, 1)).collect();
    let all: Vec<_> = chunks.iter().flatten().cloned().collect();
    let want = broker_file_reference(d, &all);
    create_topic(&addr, "readings", 3);
    kafka_pipeline(d, &addr, true);
    let waits = [0u64, 40, 320, 900];
    let workers = ["1", "2", "3", "2"];
    let mut sent = 0;
    for (i, chunk) in chunks.iter().enumerate() {
        let args: Vec<&str> = match i {
            0 => vec!["-w", "2"],
            _ => vec!["--resume", "-w", workers[i - 1]],
        };
        let (mut child, _err) = start(d, &args);
        produce(&addr, "readings", chunk, 1);
        sent += chunk.len();
        if i < 4 {
            std::thread::sleep(Duration::from_millis(waits[i]));
            let _ = child.kill();
            let _ = child.wait();
        } else {
            wait_lines(&d.join("out/pred.jsonl"), want.len());
            // Nothing more comes (no prediction twice).
            std::thread::sleep(Duration::from_millis(300));
            let summary = stop_ok(child, _err);
            assert!(summary.contains("resumed from"), "{summary}");
        }
    }
    assert_eq!(sent, all.len());
    assert_eq!(sorted_lines(&d.join("out/pred.jsonl")), want);
}

/// A TCP proxy in front of the broker that can cut every connection and refuse new ones.
struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
}

impl Proxy {
    fn start(to: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let flag = down.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if flag.load(Ordering::Relaxed) {
                    continue; // dropped: refused
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                for (mut a, mut b) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        let _ = a.set_read_timeout(Some(Duration::from_millis(50)));
                        let mut buf = vec![0u8; 1 << 16];
                        loop {
                            if flag.load(Ordering::Relaxed) {
                                let _ = a.shutdown(std::net::Shutdown::Both);
                                let _ = b.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            match a.read(&mut buf) {
                                Ok(0) => {
                                    let _ = b.shutdown(std::net::Shutdown::Both);
                                    return;
                                }
                                Ok(n) => {
                                    if b.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => {
                                    let _ = b.shutdown(std::net::Shutdown::Both);
                                    return;
                                }
                            }
                        }
                    });
                }
            }
        });
        Proxy { port, down }
    }
}

#[test]
#[ignore = "needs tansu: scripts/test installs and runs it"]
fn a_network_drop_to_kafka_is_reported_and_reconnected_without_loss() {
    // Clients reach the broker only through the proxy (it is the advertised address).
    let real = free_port();
    let proxy = Proxy::start(real);
    let _broker = Tansu::start_advertising(real, proxy.port);
    let addr = format!("127.0.0.1:{}", proxy.port);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    broker_model(d);
    let (a, b) = (records(0, 15, 1), records(15, 30, 1));
    let all: Vec<_> = a.iter().chain(&b).cloned().collect();
    let want = broker_file_reference(d, &all);
    produce(&addr, "readings", &a, 1);
    kafka_pipeline(d, &addr, false);
    let (child, err) = start(d, &[]);
    wait_lines(&d.join("out/pred.jsonl"), 8 * 15);
    // Eight seconds without a network: longer than a request's retries.
    proxy.down.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(8));
    proxy.down.store(false, Ordering::Relaxed);
    produce(&addr, "readings", &b, 1);
    wait_lines(&d.join("out/pred.jsonl"), want.len());
    let rest = stop_ok(child, err);
    assert_eq!(sorted_lines(&d.join("out/pred.jsonl")), want);
    assert!(rest.contains("retrying"), "no word of the outage: {rest}");
    assert!(rest.contains("again after"), "no word of the recovery: {rest}");
}

#[test]
#[ignore = "needs tansu: scripts/test installs and runs it"]
fn predictions_produced_to_kafka_are_the_file_runs_keyed_by_sensor() {
    let broker = Tansu::start();
    let addr = broker.addr();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    broker_model(d);
    let recs = records(0, 30, 1);
    let want = broker_file_reference(d, &recs);
    create_topic(&addr, "scores", 4);
    // The file run of the same lines, its predictions produced to `topic`.
    let run_to = |topic: &str| {
        let p = write_pipeline(
            d,
            &format!("to_{topic}.toml"),
            &format!(
                "[source]\nformat = \"jsonl\"\npath = \"all.jsonl\"\nkey = \"sensor\"\ntime = \"ts\"\nfeatures = [\"a\", \"b\"]\n\
                 [model]\npath = \"m.toml\"\n[output]\nformat = \"kafka\"\nbrokers = [\"{addr}\"]\ntopic = \"{topic}\"\n"
            ),
        );
        Command::new(env!("CARGO_BIN_EXE_seqflow"))
            .current_dir(d)
            .arg("run")
            .arg(&p)
            .output()
            .unwrap()
    };
    let o = run_to("scores");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("output kafka {addr} scores")),
        "{}",
        stderr(&o)
    );
    let got = consume(&addr, "scores", want.len(), Duration::ZERO);
    let mut values: Vec<String> = got.iter().map(|(_, _, v)| v.clone()).collect();
    values.sort();
    assert_eq!(values, want);
    for (part, key, value) in &got {
        assert!(value.contains(&format!("\"sensor\":\"{key}\"")), "{key}: {value}");
        assert_eq!(*part as usize, partition_for(key.as_bytes(), 4), "{key}");
    }
    // A missing topic is one message naming it.
    let o = run_to("nope");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("topic `nope` does not exist"),
        "{}",
        stderr(&o)
    );
}

#[test]
#[ignore = "needs tansu: scripts/test installs and runs it"]
fn two_processes_share_the_partitions_and_a_lost_peer_resumes_on_one_process() {
    let broker = Tansu::start();
    let addr = broker.addr();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    broker_model(d);
    let (a, b) = (records(0, 20, 1), records(20, 40, 1));
    let all: Vec<_> = a.iter().chain(&b).cloned().collect();
    let want = broker_file_reference(d, &all);
    // Five partitions over 2 processes x 2 workers: every worker reads one, worker 0 two;
    // the second process (workers 2 and 3) holds sensors, so waiting for every prediction
    // below waits for it.
    assert!((0..8).any(|k| matches!(partition_for(format!("s{k}").as_bytes(), 5), 2 | 3)));
    create_topic(&addr, "readings", 5);
    kafka_pipeline(d, &addr, true);
    std::fs::write(
        d.join("hosts.txt"),
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port()),
    )
    .unwrap();
    let cluster = ["-w", "2", "-n", "2", "-h", "hosts.txt", "-p"];
    let mut second = Command::new(env!("CARGO_BIN_EXE_seqflow"))
        .current_dir(d)
        .args(["run", "kafka.toml"])
        .args(cluster)
        .arg("1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (first, err) = start(d, &[&cluster[..], &["0"]].concat());
    produce(&addr, "readings", &a, 1);
    wait_lines(&d.join("out/pred.jsonl"), 8 * 20);
    // Let a checkpoint cover what was read, then lose the second process.
    std::thread::sleep(Duration::from_millis(700));
    let _ = second.kill();
    let _ = second.wait();
    let out = first.wait_with_output().unwrap();
    let mut rest = String::new();
    let mut err = err;
    let _ = err.read_to_string(&mut rest);
    assert_eq!(out.status.code(), Some(2), "{rest}");
    // The checkpoint names where each partition goes on.
    let o = Command::new(env!("CARGO_BIN_EXE_seqflow"))
        .current_dir(d)
        .args(["checkpoint", "state"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&o.stdout);
    assert!(
        listing.contains("kafka       topic readings, resumes at partition@offset"),
        "{listing}"
    );
    // One process, three workers, from the checkpoint's offsets of all five partitions.
    let (child, err) = start(d, &["--resume", "-w", "3"]);
    produce(&addr, "readings", &b, 1);
    wait_lines(&d.join("out/pred.jsonl"), want.len());
    std::thread::sleep(Duration::from_millis(300));
    let summary = stop_ok(child, err);
    assert!(summary.contains("kafka readings (5 partitions)"), "{summary}");
    assert_eq!(sorted_lines(&d.join("out/pred.jsonl")), want);
}

#[test]
#[ignore = "needs tansu: scripts/test installs and runs it"]
fn start_latest_skips_what_was_there_and_a_resume_goes_on_from_the_checkpoint() {
    let broker = Tansu::start();
    let addr = broker.addr();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    broker_model(d);
    let (old, a, b) = (records(0, 10, 1), records(10, 20, 1), records(20, 30, 1));
    let ab: Vec<_> = a.iter().chain(&b).cloned().collect();
    let want = broker_file_reference(d, &ab);
    produce(&addr, "readings", &old, 1);
    let p = kafka_pipeline(d, &addr, true);
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"earliest\"", "\"latest\"");
    std::fs::write(&p, text).unwrap();
    let (child, err) = start(d, &[]);
    produce(&addr, "readings", &a, 1);
    wait_lines(&d.join("out/pred.jsonl"), 8 * 10);
    stop_ok(child, err);
    // Produced while seqflow is down: `start = "latest"` does not skip them on a resume.
    produce(&addr, "readings", &b, 1);
    resume_and_check(d, &["--resume"], &want);
}

#[test]
#[ignore = "needs tansu: scripts/test installs and runs it"]
fn a_kafka_output_killed_and_resumed_delivers_every_prediction_at_least_once() {
    let broker = Tansu::start();
    let addr = broker.addr();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    broker_model(d);
    let (a, b) = (records(0, 20, 1), records(20, 40, 1));
    let all: Vec<_> = a.iter().chain(&b).cloned().collect();
    let want = broker_file_reference(d, &all);
    let k = Kafka::connect(std::slice::from_ref(&addr), "test").unwrap();
    k.create_topic("readings", 3).unwrap();
    k.create_topic("scores", 2).unwrap();
    write_pipeline(
        d,
        "kafka.toml",
        &format!(
            "[source]\nformat = \"kafka\"\nbrokers = [\"{addr}\"]\ntopic = \"readings\"\n\
             key = \"sensor\"\ntime = \"ts\"\nfeatures = [\"a\", \"b\"]\nepoch_ms = 5\n\
             [model]\npath = \"m.toml\"\n[output]\nformat = \"kafka\"\nbrokers = [\"{addr}\"]\ntopic = \"scores\"\n\
             [checkpoint]\ndir = \"state\"\nevery_ms = 300\n"
        ),
    );
    let (mut child, _err) = start(d, &["-w", "2"]);
    produce(&addr, "readings", &a, 1);
    let first = consume(&addr, "scores", 8 * 20, Duration::ZERO);
    assert_eq!(first.len(), 8 * 20);
    std::thread::sleep(Duration::from_millis(100));
    let _ = child.kill();
    let _ = child.wait();
    produce(&addr, "readings", &b, 1);
    let (child, err) = start(d, &["--resume"]);
    let got = consume(&addr, "scores", want.len(), Duration::from_secs(1));
    stop_ok(child, err);
    // Every prediction is there, the same as the file run's; what came after the last
    // checkpoint before the kill may be there twice, never differently.
    let distinct: std::collections::BTreeSet<String> = got.iter().map(|(_, _, v)| v.clone()).collect();
    assert_eq!(distinct.into_iter().collect::<Vec<_>>(), want);
    assert!(got.len() >= want.len());
}

#[test]
#[ignore = "needs tansu: scripts/test installs and runs it"]
fn a_broker_stopped_for_seconds_is_waited_for_and_nothing_it_kept_is_lost() {
    let broker = Tansu::start();
    let addr = broker.addr();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    broker_model(d);
    let (a, b) = (records(0, 15, 1), records(15, 30, 1));
    let all: Vec<_> = a.iter().chain(&b).cloned().collect();
    let want = broker_file_reference(d, &all);
    produce(&addr, "readings", &a, 1);
    kafka_pipeline(d, &addr, true);
    let (child, err) = start(d, &[]);
    wait_lines(&d.join("out/pred.jsonl"), 8 * 15);
    // The broker process stopped (SIGSTOP) for 8 s: connections stay open, nothing answers.
    let pid = broker.child.id().to_string();
    let _ = Command::new("kill").args(["-STOP", &pid]).status();
    std::thread::sleep(Duration::from_secs(8));
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    produce(&addr, "readings", &b, 1);
    wait_lines(&d.join("out/pred.jsonl"), want.len());
    let rest = stop_ok(child, err);
    assert_eq!(sorted_lines(&d.join("out/pred.jsonl")), want);
    assert!(rest.contains("no answer within"), "no word of the outage: {rest}");
    assert!(rest.contains("again after"), "no word of the recovery: {rest}");
}

#[test]
#[ignore = "needs tansu: scripts/test installs and runs it"]
fn a_partition_idle_before_a_crash_is_resumed_from_where_it_stood() {
    let broker = Tansu::start();
    let addr = broker.addr();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    broker_model(d);
    create_topic(&addr, "readings", 3);
    // Old records wait in partitions 1 and 2 (`start = "latest"` skips them). While the
    // first run is up, records reach partition 0 only: 1 and 2 stay idle. While it is down,
    // records come to all of them. A resume must read 1 and 2 from where they stood when
    // the first run started: from their start it would apply the old records, from their
    // end it would skip the new ones.
    let in_p0 = |k: &String| partition_for(k.as_bytes(), 3) == 0;
    let old: Vec<_> = records(0, 10, 1).into_iter().filter(|(k, _)| !in_p0(k)).collect();
    let all = records(10, 30, 1);
    let a: Vec<_> = all.iter().filter(|(k, _)| in_p0(k)).cloned().collect();
    let rest: Vec<_> = all.iter().filter(|(k, _)| !in_p0(k)).cloned().collect();
    assert!(!a.is_empty() && !rest.is_empty());
    let want = broker_file_reference(d, &all);
    produce(&addr, "readings", &old, 1);
    let p = kafka_pipeline(d, &addr, true);
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"earliest\"", "\"latest\"");
    std::fs::write(&p, text).unwrap();
    let (mut child, _err) = start(d, &["-w", "2"]);
    produce(&addr, "readings", &a, 1);
    wait_lines(&d.join("out/pred.jsonl"), a.len());
    std::thread::sleep(Duration::from_millis(700));
    let _ = child.kill();
    let _ = child.wait();
    produce(&addr, "readings", &rest, 1);
    resume_and_check(d, &["--resume"], &want);
}

#[test]
#[ignore = "needs tansu: scripts/test installs and runs it"]
fn csv_records_are_parsed_one_by_one_so_a_stray_quote_spoils_only_its_own() {
    let broker = Tansu::start();
    let addr = broker.addr();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    broker_model(d);
    // Sensor s0's readings as CSV, one per record; record 2 has an unclosed quote.
    let line = |t: i64| format!("s0,{t},{},{}", ((t * 3) % 7) as f32 * 0.1, (t % 5) as f32 - 2.0);
    let mut recs: Vec<(String, String)> = (0..6).map(|t| ("s0".to_string(), line(t))).collect();
    recs[2].1 = "s0,\"2,0.5,1".into();
    produce(&addr, "readings", &recs, 1);
    write_pipeline(
        d,
        "kafka.toml",
        &format!(
            "[source]\nformat = \"kafka\"\nbrokers = [\"{addr}\"]\ntopic = \"readings\"\nlines = \"csv\"\n\
             columns = [\"sensor\", \"ts\", \"a\", \"b\"]\nkey = \"sensor\"\ntime = \"ts\"\nfeatures = [\"a\", \"b\"]\n\
             epoch_ms = 5\nrejects = \"out/rejects.jsonl\"\n\
             [model]\npath = \"m.toml\"\n[output]\nformat = \"jsonl\"\npath = \"out/pred.jsonl\"\n"
        ),
    );
    let (child, err) = start(d, &[]);
    wait_lines(&d.join("out/pred.jsonl"), 5);
    wait_lines(&d.join("out/rejects.jsonl"), 1);
    let summary = stop_ok(child, err);
    assert!(summary.contains("malformed 1"), "{summary}");
    let rejects = std::fs::read_to_string(d.join("out/rejects.jsonl")).unwrap();
    assert!(rejects.contains("\"offset 2\""), "{rejects}");
    let times: Vec<String> = sorted_lines(&d.join("out/pred.jsonl"));
    assert_eq!(times.len(), 5, "{times:?}");
}
