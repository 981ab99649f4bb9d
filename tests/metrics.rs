//! `/metrics` of a live run, scraped over real HTTP while it runs: the values follow the run
//! and, once every line is processed, equal the run's own report; the exposition passes
//! Prometheus' own checker (`promtool check metrics`, Debian's `prometheus` package; that
//! test is ignored without it, and `scripts/test` installs it).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;

use common::pipeline::*;

/// `series{labels} value` lines as series -> value (comments skipped).
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("series value");
            (
                k.to_string(),
                v.parse().unwrap_or_else(|_| panic!("a number in {l}")),
            )
        })
        .collect()
}

fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let (status, body) = http(addr, "GET", "/metrics").expect("scrape");
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

fn pipeline(dir: &Path, model: &Path, extra: &str) -> std::path::PathBuf {
    write_pipeline(
        dir,
        "live.toml",
        &format!(
            "[source]\nformat = \"tcp\"\nlisten = \"127.0.0.1:0\"\nlines = \"jsonl\"\nkey = \"key\"\ntime = \"t\"\n\
             features = [\"f0\", \"f1\"]\nepoch_ms = 2\nrejects = \"out/rejects.jsonl\"\n\
             [model]\npath = \"{}\"\n[output]\nformat = \"jsonl\"\npath = \"out/live.jsonl\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n{extra}",
            model.display()
        ),
    )
}

/// 3 keys x 40 steps, one malformed line, one duplicate step: 122 lines.
fn send_lines(addr: &str) -> u64 {
    let mut text = String::new();
    for t in 0..40 {
        for k in 0..3 {
            text.push_str(&format!(
                "{{\"key\": \"k{k}\", \"t\": {t}, \"f0\": 0.{t}, \"f1\": -0.{k}}}\n"
            ));
        }
        if t == 10 {
            text.push_str("not json\n");
            text.push_str("{\"key\": \"k0\", \"t\": 10, \"f0\": 1, \"f1\": 2}\n");
        }
    }
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(text.as_bytes()).unwrap();
    text.lines().count() as u64
}

#[test]
fn metrics_follow_a_live_run_and_end_equal_to_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let (mpath, _) = save_model(dir.path(), &causal_model(2));
    let p = pipeline(dir.path(), &mpath, "");
    let run = LiveRun::start(&p, 2);
    let maddr = run.metrics.clone().expect("the run serves /metrics");
    let before = scrape(&maddr);
    assert_eq!(before["seqflow_rows_total{source=\"tcp\"}"], 0.0);
    assert_eq!(before["seqflow_workers"], 2.0);

    let lines = send_lines(&run.addr);
    // An epoch's numbers land in steps (its rows as the sink takes them, its counters after,
    // latencies once flushed): wait until the last epoch is in all of them.
    wait_for(
        || {
            let m = scrape(&maddr);
            m["seqflow_predictions_total"] == 120.0
                && m["seqflow_latency_seconds_count"] == 120.0
                && m["seqflow_steps_total"] == 120.0
                && m["seqflow_rows_total{source=\"tcp\"}"] == lines as f64
        },
        "every prediction, step, row and latency in /metrics",
    );
    let m = scrape(&maddr);
    assert_eq!(m["seqflow_rows_total{source=\"tcp\"}"], lines as f64);
    assert_eq!(m["seqflow_steps_total"], 120.0);
    assert_eq!(m["seqflow_rejects_total{reason=\"malformed\"}"], 1.0);
    assert_eq!(m["seqflow_rejects_total{reason=\"duplicate\"}"], 1.0);
    assert_eq!(m["seqflow_rejects_total{reason=\"late\"}"], 0.0);
    assert_eq!(m["seqflow_keys"], 3.0);
    assert_eq!(m["seqflow_keys_started_total"], 3.0);
    assert!(m["seqflow_state_bytes"] > 0.0);
    assert!(m["seqflow_epochs_total"] >= 1.0);
    assert!(m["seqflow_epoch_duration_seconds_count"] >= 1.0);
    assert_eq!(m["seqflow_latency_seconds_count"], 120.0);
    assert_eq!(m["seqflow_latency_seconds_bucket{le=\"+Inf\"}"], 120.0);
    assert!(m["seqflow_latency_seconds_sum"] > 0.0);
    assert!(m["seqflow_channel_capacity_batches"] > 0.0);
    assert!(m["seqflow_reader_blocked_seconds_total"] >= 0.0);

    let report = run.stop();
    let s = &report.stats;
    assert_eq!(m["seqflow_rows_total{source=\"tcp\"}"], s.rows_read as f64);
    assert_eq!(m["seqflow_steps_total"], s.steps_processed as f64);
    assert_eq!(m["seqflow_predictions_total"], s.outputs as f64);
    assert_eq!(
        m["seqflow_rejects_total{reason=\"malformed\"}"],
        s.malformed as f64
    );
    assert_eq!(
        m["seqflow_rejects_total{reason=\"duplicate\"}"],
        s.duplicate as f64
    );
    assert_eq!(m["seqflow_keys_started_total"], s.keys as f64);
    assert_eq!(m["seqflow_state_bytes"], s.state_bytes as f64);
    let latency = report.latency.expect("a live run measures latency");
    assert_eq!(m["seqflow_latency_seconds_count"], latency.count() as f64);
    // The server goes with the run (its listener closes as the run's last parts drop,
    // a moment after the report).
    wait_for(
        || http(&maddr, "GET", "/metrics").is_err(),
        "the metrics server to close after the run",
    );
}

#[test]
fn only_get_of_metrics_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (mpath, _) = save_model(dir.path(), &causal_model(2));
    let run = LiveRun::start(&pipeline(dir.path(), &mpath, ""), 1);
    let maddr = run.metrics.clone().unwrap();
    assert_eq!(http(&maddr, "GET", "/").unwrap().0, 404);
    assert_eq!(http(&maddr, "GET", "/metrics?x=1").unwrap().0, 200);
    assert_eq!(http(&maddr, "POST", "/metrics").unwrap().0, 405);
    assert_eq!(http(&maddr, "DELETE", "/metrics").unwrap().0, 405);
    run.stop();
}

#[test]
fn a_bad_or_busy_metrics_address_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (mpath, _) = save_model(dir.path(), &causal_model(2));
    let p = pipeline(dir.path(), &mpath, "");
    let text = std::fs::read_to_string(&p).unwrap();
    let bad = write_pipeline(
        dir.path(),
        "bad.toml",
        &text.replace(
            "[metrics]\nlisten = \"127.0.0.1:0\"",
            "[metrics]\nlisten = \"9464\"",
        ),
    );
    let o = seqflow(&["run", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("bad.toml") && e.contains("\"9464\" is not HOST:PORT"),
        "{e}"
    );

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = busy.local_addr().unwrap().to_string();
    let o = seqflow(&["run", p.to_str().unwrap(), "--metrics", &taken]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains(&format!("metrics listener {taken}")), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
#[ignore = "needs promtool (Debian's prometheus package; scripts/test installs it)"]
fn the_exposition_passes_promtool() {
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let dir = tempfile::tempdir().unwrap();
    let (mpath, _) = save_model(dir.path(), &causal_model(2));
    // With checkpoints, so that every family is there.
    let p = pipeline(
        dir.path(),
        &mpath,
        "[checkpoint]\ndir = \"state\"\nevery_ms = 20\n",
    );
    let run = LiveRun::start(&p, 2);
    let maddr = run.metrics.clone().unwrap();
    send_lines(&run.addr);
    wait_for(
        || {
            scrape(&maddr)
                .get("seqflow_checkpoints_total")
                .is_some_and(|&n| n >= 1.0)
        },
        "a checkpoint in /metrics",
    );
    let (_, body) = http(&maddr, "GET", "/metrics").unwrap();
    run.stop();
    for family in [
        "seqflow_checkpoint_last_success_timestamp_seconds",
        "seqflow_checkpoint_bytes",
        "seqflow_latency_seconds_bucket",
        "seqflow_channel_batches",
    ] {
        assert!(body.contains(family), "{family} missing:\n{body}");
    }
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{promtool}: {e}"));
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{body}"
    );
}
