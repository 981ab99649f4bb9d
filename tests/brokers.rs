//! Broker sources against a real broker: mosquitto, started by each test on a free loopback
//! port. Ignored by plain `cargo test` (they need mosquitto); `scripts/test` installs it and
//! runs them.
//!
//! - A stream of messages (several lines each, one topic per sensor) through the MQTT source
//!   gives exactly the predictions of the file run over the same lines.
//! - Killed mid-stream with SIGKILL, more messages published while it is down, restarted
//!   with `--resume`: every step gets exactly one prediction, equal to the uninterrupted
//!   run's (unacknowledged messages come again; the ones already applied are duplicates).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::pipeline::*;
use rumqttc::{Client, Event, MqttOptions, Outgoing, Packet, QoS};

/// A mosquitto broker on a free loopback port, stopped when dropped.
struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        // No limit on unacknowledged messages: seqflow acknowledges at checkpoints.
        std::fs::write(
            dir.path().join("m.conf"),
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\nmax_queued_messages 0\n"
            ),
        )
        .unwrap();
        let child = Self::spawn(dir.path(), port);
        Mosquitto {
            child,
            port,
            _dir: dir,
        }
    }

    /// Runs mosquitto with `dir/m.conf` and waits until it listens on `port`.
    fn spawn(dir: &Path, port: u16) -> Child {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(dir.join("m.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (scripts/test installs it)");
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Stops the broker, waits `down`, and starts it again on the same port (without the
    /// sessions: no persistence).
    fn restart(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = Self::spawn(self._dir.path(), self.port);
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes `messages` (topic, payload) with QoS 1 and waits until the broker has them all.
fn publish(port: u16, messages: &[(String, String)]) {
    let mut opts = MqttOptions::new(format!("test-pub-{}", free_port()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(opts, messages.len() + 10);
    for (t, m) in messages {
        client
            .publish(t.clone(), QoS::AtLeastOnce, false, m.clone())
            .unwrap();
    }
    let mut acked = 0;
    let t = Instant::now();
    while acked < messages.len() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "broker acknowledged {acked} of {}",
            messages.len()
        );
        if let Ok(Ok(Event::Incoming(Packet::PubAck(_)))) = conn.recv_timeout(Duration::from_millis(100)) {
            acked += 1;
        }
    }
    client.disconnect().unwrap();
    let _ = conn.recv_timeout(Duration::from_millis(100));
    let _ = Outgoing::Disconnect;
}

/// JSON lines for 8 sensors, steps `from..to`, three lines per message, one topic per sensor.
fn messages(from: i64, to: i64) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for k in 0..8 {
        let mut t = from;
        while t < to {
            let mut m = String::new();
            for s in t..(t + 3).min(to) {
                m.push_str(&format!(
                    "{{\"sensor\": \"s{k}\", \"ts\": {s}, \"a\": {}, \"b\": {}}}\n",
                    ((k * 7 + s) % 13) as f32 * 0.1,
                    ((s * 3) % 5) as f32 - 2.0
                ));
            }
            out.push((format!("plant/s{k}/readings"), m));
            t += 3;
        }
    }
    out
}

fn mqtt_pipeline(dir: &Path, port: u16, client: &str, checkpoint: bool) -> PathBuf {
    let ck = if checkpoint {
        "[checkpoint]\ndir = \"state\"\nevery_ms = 400\n"
    } else {
        ""
    };
    write_pipeline(
        dir,
        "mqtt.toml",
        &format!(
            "[source]\nformat = \"mqtt\"\nbroker = \"127.0.0.1:{port}\"\ntopics = [\"plant/+/readings\"]\n\
             client_id = \"{client}\"\nkey = \"sensor\"\ntime = \"ts\"\nfeatures = [\"a\", \"b\"]\nepoch_ms = 5\n\
             [model]\npath = \"m.toml\"\n[output]\nformat = \"jsonl\"\npath = \"out/pred.jsonl\"\n{ck}"
        ),
    )
}

#[test]
#[ignore = "needs mosquitto: scripts/test installs and runs it"]
fn an_mqtt_stream_gives_the_file_runs_predictions() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    broker_model(d);
    let msgs = messages(0, 1200);
    let want = broker_file_reference(d, &msgs);
    mqtt_pipeline(d, broker.port, "seqflow-equal", false);
    // 3,200 messages: more acknowledgements in flight than the client's queue once held
    // (a blocking acknowledgement deadlocked the reader and the driver).
    let (child, err) = start_subscribed(d, "mqtt.toml", &[]);
    publish(broker.port, &msgs);
    wait_lines(&d.join("out/pred.jsonl"), want.len());
    stop_ok(child, err);
    assert_eq!(sorted_lines(&d.join("out/pred.jsonl")), want);
}

#[test]
#[ignore = "needs mosquitto: scripts/test installs and runs it"]
fn a_killed_mqtt_run_resumes_and_every_step_gets_exactly_one_prediction() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    broker_model(d);
    let (a1, a2, b) = (messages(0, 15), messages(15, 30), messages(30, 60));
    let all: Vec<_> = a1.iter().chain(&a2).chain(&b).cloned().collect();
    // The reference sees the steps key by key in time order, as the broker delivers them.
    let want = broker_file_reference(d, &all);
    mqtt_pipeline(d, broker.port, "seqflow-crash", true);
    let (mut child, _err) = start_subscribed(d, "mqtt.toml", &[]);
    // The first half is covered by a checkpoint (every 400 ms), so acknowledged.
    publish(broker.port, &a1);
    wait_lines(&d.join("out/pred.jsonl"), 8 * 15);
    std::thread::sleep(Duration::from_millis(900));
    // The second half is predicted but no checkpoint covers it yet when the kill comes:
    // unacknowledged, it is delivered again after the restart, and its predictions in the
    // output are cut back with everything after the checkpoint.
    publish(broker.port, &a2);
    wait_lines(&d.join("out/pred.jsonl"), 8 * 30);
    let _ = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status();
    let _ = child.wait();
    // Published while seqflow is down: the persistent session keeps them.
    publish(broker.port, &b);
    let (child, err) = start_subscribed(d, "mqtt.toml", &["--resume", "-w", "2"]);
    wait_lines(&d.join("out/pred.jsonl"), want.len());
    std::thread::sleep(Duration::from_millis(200));
    let err = stop_ok(child, err);
    assert_eq!(sorted_lines(&d.join("out/pred.jsonl")), want, "{err}");
}

#[test]
#[ignore = "needs mosquitto: scripts/test installs and runs it"]
fn a_broker_restart_mid_stream_is_reconnected_to() {
    let mut broker = Mosquitto::start();
    let port = broker.port;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    broker_model(d);
    let (a, b) = (messages(0, 15), messages(15, 30));
    let all: Vec<_> = a.iter().chain(&b).cloned().collect();
    let want = broker_file_reference(d, &all);
    mqtt_pipeline(d, port, "seqflow-restart", false);
    let (child, err) = start_subscribed(d, "mqtt.toml", &[]);
    publish(port, &a);
    wait_lines(&d.join("out/pred.jsonl"), 8 * 15);
    // The broker goes away for a second (and comes back without the session).
    broker.restart(Duration::from_secs(1));
    // seqflow is back (and subscribed) within a few seconds: publish until it has all.
    std::thread::sleep(Duration::from_secs(3));
    publish(port, &b);
    wait_lines(&d.join("out/pred.jsonl"), want.len());
    stop_ok(child, err);
    assert_eq!(sorted_lines(&d.join("out/pred.jsonl")), want);
}

/// Subscribes to `filter` and returns a receiver of the payloads that arrive.
fn subscribe(port: u16, filter: &str) -> std::sync::mpsc::Receiver<(String, String)> {
    let mut opts = MqttOptions::new(format!("test-sub-{}", free_port()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(opts, 100);
    client.subscribe(filter, QoS::AtLeastOnce).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (sub_tx, sub_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _keep = client;
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = sub_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p)))
                    if tx
                        .send((p.topic.clone(), String::from_utf8_lossy(&p.payload).into_owned()))
                        .is_err() =>
                {
                    return
                }
                Err(_) => return,
                _ => {}
            }
        }
    });
    sub_rx.recv_timeout(Duration::from_secs(10)).expect("subscribed");
    rx
}

#[test]
#[ignore = "needs mosquitto: scripts/test installs and runs it"]
fn predictions_published_to_mqtt_are_the_file_runs_one_topic_per_key() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    broker_model(d);
    let msgs = messages(0, 20);
    let want = broker_file_reference(d, &msgs);
    write_pipeline(
        d,
        "mqtt.toml",
        &format!(
            "[source]\nformat = \"mqtt\"\nbroker = \"127.0.0.1:{p}\"\ntopics = [\"plant/+/readings\"]\n\
             key = \"sensor\"\ntime = \"ts\"\nfeatures = [\"a\", \"b\"]\nepoch_ms = 5\n\
             [model]\npath = \"m.toml\"\n[output]\nformat = \"mqtt\"\nbroker = \"127.0.0.1:{p}\"\n\
             topic = \"scores/{{key}}\"\n",
            p = broker.port
        ),
    );
    let rx = subscribe(broker.port, "scores/+");
    let (child, err) = start_subscribed(d, "mqtt.toml", &[]);
    publish(broker.port, &msgs);
    let mut got = Vec::new();
    while got.len() < want.len() {
        let (topic, payload) = rx.recv_timeout(Duration::from_secs(30)).expect("a prediction");
        // Each prediction on its key's topic.
        let key = topic.strip_prefix("scores/").unwrap();
        assert!(
            payload.contains(&format!("\"sensor\":\"{key}\"")),
            "{topic}: {payload}"
        );
        got.push(payload);
    }
    stop_ok(child, err);
    got.sort();
    assert_eq!(got, want);
}

#[test]
#[ignore = "needs mosquitto: scripts/test installs and runs it"]
fn an_mqtt_output_killed_and_resumed_delivers_every_prediction_at_least_once() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    broker_model(d);
    let (a, b) = (messages(0, 30), messages(30, 60));
    let all: Vec<_> = a.iter().chain(&b).cloned().collect();
    let want = broker_file_reference(d, &all);
    write_pipeline(
        d,
        "mqtt.toml",
        &format!(
            "[source]\nformat = \"mqtt\"\nbroker = \"127.0.0.1:{p}\"\ntopics = [\"plant/+/readings\"]\n\
             client_id = \"seqflow-out-crash\"\nkey = \"sensor\"\ntime = \"ts\"\nfeatures = [\"a\", \"b\"]\nepoch_ms = 5\n\
             [model]\npath = \"m.toml\"\n[output]\nformat = \"mqtt\"\nbroker = \"127.0.0.1:{p}\"\n\
             topic = \"scores/{{key}}\"\n[checkpoint]\ndir = \"state\"\nevery_ms = 200\n",
            p = broker.port
        ),
    );
    let rx = subscribe(broker.port, "scores/+");
    let (mut child, _err) = start_subscribed(d, "mqtt.toml", &[]);
    publish(broker.port, &a);
    let mut got: std::collections::BTreeSet<String> = Default::default();
    while got.len() < 8 * 30 {
        got.insert(rx.recv_timeout(Duration::from_secs(30)).expect("a prediction").1);
    }
    let _ = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status();
    let _ = child.wait();
    publish(broker.port, &b);
    let (child, err) = start_subscribed(d, "mqtt.toml", &["--resume"]);
    // Everything after the last checkpoint comes again: the distinct predictions are the
    // file run's, none missing.
    while got.len() < want.len() {
        got.insert(rx.recv_timeout(Duration::from_secs(30)).expect("a prediction").1);
    }
    stop_ok(child, err);
    assert_eq!(got.into_iter().collect::<Vec<_>>(), want);
}
