//! The live dashboard: its HTTP endpoints during a live run (the page, the state document,
//! the event stream, following keys, only GET), and, in headless Chromium driven by
//! playwright-core (`tests/browser/dashboard.mjs`), the page itself following a run: the
//! counters tick, the charts draw, a click follows a key, the views' tables show. The
//! browser test is ignored without Chromium and the driver (`scripts/test` installs them).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pipeline::*;

fn state(addr: &str) -> serde_json::Value {
    let (status, body) = http(addr, "GET", "/state").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A live pipeline with the dashboard and, with `views`, a count and a top-k view over a
/// side table of the keys' sites.
fn pipeline(dir: &Path, model: &Path, views: bool) -> PathBuf {
    let mut text = format!(
        "[source]\nformat = \"tcp\"\nlisten = \"127.0.0.1:0\"\nlines = \"jsonl\"\nkey = \"key\"\ntime = \"t\"\n\
         features = [\"f0\", \"f1\"]\nepoch_ms = 2\n\
         [model]\npath = \"{}\"\n[output]\nformat = \"jsonl\"\npath = \"out/live.jsonl\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n",
        model.display()
    );
    if views {
        std::fs::write(
            dir.join("sites.csv"),
            "key,site\nk0,north\nk1,north\nk2,south\nk3,south\n",
        )
        .unwrap();
        text.push_str(
            "[[views]]\nname = \"keys_per_site\"\njoin = \"sites.csv\"\ngroup_by = [\"site\"]\naggregate = \"count\"\n\
             output = \"out/keys_per_site.jsonl\"\n\
             [[views]]\nname = \"top_per_site\"\njoin = \"sites.csv\"\ngroup_by = [\"site\"]\naggregate = \"top_k\"\n\
             of = \"y0\"\nk = 1\noutput = \"out/top_per_site.jsonl\"\n",
        );
    }
    write_pipeline(dir, "live.toml", &text)
}

/// Sends steps `from..to` of 4 keys, `pace` apart.
fn send(addr: &str, from: i64, to: i64, pace: Duration, stop: &AtomicBool) {
    let mut s = TcpStream::connect(addr).unwrap();
    for t in from..to {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let mut text = String::new();
        for k in 0..4 {
            let x = ((t * 7 + k * 3) % 11) as f32 / 11.0 - 0.5;
            text.push_str(&format!(
                "{{\"key\": \"k{k}\", \"t\": {t}, \"f0\": {x}, \"f1\": {}}}\n",
                -x
            ));
        }
        s.write_all(text.as_bytes()).unwrap();
        std::thread::sleep(pace);
    }
}

#[test]
fn the_dashboard_serves_its_page_state_and_events_during_a_live_run() {
    let dir = tempfile::tempdir().unwrap();
    let (mpath, _) = save_model(dir.path(), &causal_model(2));
    let run = LiveRun::start(&pipeline(dir.path(), &mpath, false), 2);
    let d = run.dashboard.clone().expect("the run serves its dashboard");

    // The page: whole, with nothing fetched from elsewhere (no CDN: air-gapped plants).
    let (status, page) = http(&d, "GET", "/").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("<title>seqflow</title>") && page.contains("new EventSource(\"/events\")"));
    for outside in ["http://", "https://", "//cdn", "<link", "src=\""] {
        assert!(
            !page.contains(outside),
            "the page refers to something outside: {outside}"
        );
    }

    send(&run.addr, 0, 30, Duration::ZERO, &AtomicBool::new(false));
    wait_for(
        || state(&d)["run"]["predictions"] == 120,
        "every prediction on the dashboard",
    );
    let s = state(&d);
    assert_eq!(s["run"]["rows"], 120);
    assert_eq!(s["run"]["keys"], 4);
    assert_eq!(s["features"], serde_json::json!(["f0", "f1"]));
    assert_eq!(s["outputs"], serde_json::json!(["y0", "y1"]));
    // Nobody picked a key: the highest scores are followed.
    assert_eq!(s["top"].as_array().unwrap().len(), 4);
    assert_eq!(s["watched"].as_object().unwrap().len(), 3);

    // Following a key (percent-encoded), then another; stopping.
    let (status, _) = http(&d, "GET", "/watch?key=k%32").unwrap();
    assert_eq!(status, 200);
    send(&run.addr, 30, 35, Duration::ZERO, &AtomicBool::new(false));
    wait_for(|| state(&d)["run"]["predictions"] == 140, "the next predictions");
    let s = state(&d);
    assert_eq!(s["picked"], serde_json::json!(["k2"]));
    let k2 = &s["watched"]["k2"];
    assert!(!k2["predictions"].as_array().unwrap().is_empty(), "{s}");
    assert!(!k2["inputs"].as_array().unwrap().is_empty(), "{s}");
    http(&d, "GET", "/unwatch?key=k2").unwrap();
    assert_eq!(state(&d)["picked"], serde_json::json!([]));

    // The event stream (HTTP/1.1, chunked, as browsers ask): a `data:` document within a
    // second or so.
    let mut s = TcpStream::connect(&d).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let asked = Instant::now();
    write!(
        s,
        "GET /events HTTP/1.1\r\nHost: {d}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\n\n") {
        let n = s.read(&mut buf).expect("an event");
        assert!(n > 0, "the stream ended");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("text/event-stream") && text.contains("data: {\"unix_ms\""),
        "{text}"
    );
    // Whole and at once: not held back until 8 KiB of events pile up in tiny_http's chunks.
    assert!(
        asked.elapsed() < Duration::from_millis(1500),
        "first event after {:?}",
        asked.elapsed()
    );
    drop(s);

    // An HTTP/1.0 stream could not be chunked: refused rather than buffered without end.
    assert_eq!(http(&d, "GET", "/events").unwrap().0, 505);
    // Only GET; unknown paths are 404; a watch needs its key.
    assert_eq!(http(&d, "POST", "/watch?key=k1").unwrap().0, 405);
    assert_eq!(http(&d, "GET", "/nothing").unwrap().0, 404);
    assert_eq!(http(&d, "GET", "/watch").unwrap().0, 400);
    run.stop();
}

/// A file run's `--report`: the page with the run's data in it; the plotted keys' series are
/// read back from the output, every prediction of theirs.
#[test]
fn a_file_run_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let (mpath, _) = save_model(dir.path(), &causal_model(2));
    let rows: Vec<Row> = (0..6)
        .flat_map(|k| {
            (0..40).map(move |t| Row {
                key: format!("k{k}"),
                time: t,
                feats: vec![((t * 7 + k * 3) % 11) as f32 / 11.0 - 0.5 + k as f32 * 0.3, 0.1],
            })
        })
        .collect();
    write_parquet(&dir.path().join("in.parquet"), &rows, 50);
    let p = write_pipeline(
        dir.path(),
        "files.toml",
        &format!(
            "[source]\nformat = \"parquet\"\npath = \"in.parquet\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]\n\
             [model]\npath = \"{}\"\n[output]\nformat = \"csv\"\npath = \"out/y.csv\"\n",
            mpath.display()
        ),
    );
    let report = dir.path().join("out/report.html");
    let o = seqflow(&["run", p.to_str().unwrap(), "--report", report.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let page = std::fs::read_to_string(&report).unwrap();
    let data = page
        .split("<script id=\"report\" type=\"application/json\">")
        .nth(1)
        .and_then(|r| r.split("</script>").next())
        .expect("the report's data");
    let d: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(d["run"]["rows"], 240);
    assert_eq!(d["sample"].as_array().unwrap().len(), 240);
    let top = d["top"].as_array().unwrap();
    assert_eq!(top.len(), 5);
    // The highest scores are the keys' highest y0 in the output, and each plotted key has
    // its 40 predictions, in time order.
    let out = read_csv(&dir.path().join("out/y.csv"));
    let mut best: Vec<(f32, String)> = out
        .iter()
        .map(|(k, ts)| (ts.values().map(|v| v[0]).fold(f32::MIN, f32::max), k.clone()))
        .collect();
    best.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    for (i, t) in top.iter().enumerate() {
        let k = t[0].as_str().unwrap();
        assert_eq!(k, best[i].1, "{top:?}");
        let series = d["series"][k].as_array().unwrap();
        assert_eq!(series.len(), 40);
        let want: Vec<f32> = out[k].values().map(|v| v[0]).collect();
        let got: Vec<f32> = series.iter().map(|p| p[1].as_f64().unwrap() as f32).collect();
        assert_eq!(got, want, "{k}");
    }
    // A report is written like any output: never over an input.
    let o = seqflow(&[
        "run",
        p.to_str().unwrap(),
        "--report",
        dir.path().join("in.parquet").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("report"), "{}", stderr(&o));
}

/// `tests/browser/dashboard.mjs URL SHOT FLAG` in headless Chromium: its JSON summary, or
/// what it said when the check failed.
fn browser(url: &str, shot: &Path, flag: &str) -> Result<serde_json::Value, String> {
    let o = std::process::Command::new(std::env::var("NODE").unwrap_or_else(|_| "node".into()))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.mjs"))
        .arg(url)
        .arg(shot)
        .arg(flag)
        .output()
        .map_err(|e| format!("node: {e}"))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if !o.status.success() {
        return Err(said);
    }
    serde_json::from_str(said.trim()).map_err(|_| said)
}

#[test]
#[ignore = "needs Chromium and playwright-core (scripts/test installs them)"]
fn the_page_follows_a_run_in_headless_chromium() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let (mpath, _) = save_model(dir.path(), &causal_model(2));
    let run = LiveRun::start(&pipeline(dir.path(), &mpath, true), 2);
    let d = run.dashboard.clone().unwrap();
    // Data keeps coming while the browser looks.
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, stopping) = (run.addr.clone(), stop.clone());
    let feeder = std::thread::spawn(move || send(&addr, 0, 3000, Duration::from_millis(10), &stopping));
    let shot = dir.path().join("dashboard.png");
    let checked = browser(&format!("http://{d}/"), &shot, "--expect-views");
    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    run.stop();
    let summary = checked.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        summary["rows_later"].as_f64() > summary["rows_first"].as_f64(),
        "{summary}"
    );
    assert_eq!(summary["views"], 2, "{summary}");
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a screenshot of {} bytes",
        png.len()
    );
    // A copy for a look (and for docs/, when the page changes): target/dashboard-test.png.
    let _ = std::fs::write(root.join("target/dashboard-test.png"), png);

    // The report of the bundled demo, opened from disk: drawn with nothing else running.
    let report = dir.path().join("report.html");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_seqflow"))
        .current_dir(&root)
        .args(["run", "pipelines/demo.toml", "--output"])
        .arg(dir.path().join("demo.parquet"))
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shot = dir.path().join("report.png");
    let summary =
        browser(&format!("file://{}", report.display()), &shot, "--report").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary["keys"], 5, "{summary}");
    let _ = std::fs::copy(&shot, root.join("target/report-test.png"));
}
