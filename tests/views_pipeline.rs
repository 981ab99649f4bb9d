//! Views through the real binary: the bundled views pipeline gives the same results for
//! `-w 1`, `-w 2` and two processes; each changelog sums to its snapshot; the snapshot equals
//! a recomputation from the prediction output and the side table; and in a live run the
//! views follow a side table that changes on disk.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pipeline::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The bundled views pipeline, copied next to `dir` with outputs inside `dir` and small
/// epochs (so changelogs hold retractions).
fn views_pipeline(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(root().join("pipelines/views.toml")).unwrap();
    let abs = |rel: &str| root().join("pipelines").join(rel).display().to_string();
    let text = text
        .replace("\"../datasets/", &format!("\"{}/../datasets/", abs("")))
        .replace("\"../models/", &format!("\"{}/../models/", abs("")))
        .replace("\"../out/", &format!("\"{}/", dir.display()));
    write_pipeline(dir, "views.toml", &text)
}

fn read_json_lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Sums a changelog (rows minus `epoch` and `diff`) into a multiset of row texts.
fn summed(changelog: &[serde_json::Value]) -> BTreeMap<String, i64> {
    let mut m: BTreeMap<String, i64> = BTreeMap::new();
    for row in changelog {
        let mut r = row.as_object().unwrap().clone();
        let d = r.remove("diff").unwrap().as_i64().unwrap();
        r.remove("epoch");
        *m.entry(serde_json::Value::Object(r).to_string()).or_insert(0) += d;
    }
    m.retain(|_, n| *n != 0);
    m
}

fn snapshot_lines(p: &Path) -> Vec<String> {
    sorted_lines(p)
}

#[test]
fn views_agree_across_worker_and_process_counts_and_with_a_recomputation() {
    let runs: Vec<(&str, Vec<&str>)> = vec![("w1", vec![]), ("w2", vec!["-w", "2"]), ("n2", vec!["n2"])];
    let mut snapshots: Vec<Vec<Vec<String>>> = Vec::new();
    for (name, args) in &runs {
        let dir = tempfile::tempdir().unwrap();
        let p = views_pipeline(dir.path());
        let p = p.to_str().unwrap();
        if args.first() == Some(&"n2") {
            let hosts = dir.path().join("hosts");
            std::fs::write(
                &hosts,
                format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port()),
            )
            .unwrap();
            let spawn = |i: &str| {
                Command::new(env!("CARGO_BIN_EXE_seqflow"))
                    .args(["run", p, "-n", "2", "-p", i, "-h", hosts.to_str().unwrap()])
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            };
            let (a, b) = (spawn("0"), spawn("1"));
            let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
            assert!(
                a.status.success() && b.status.success(),
                "{}{}",
                stderr(&a),
                stderr(&b)
            );
        } else {
            let mut a = vec!["run", p];
            a.extend(args.iter().copied());
            run_ok(&a);
        }
        let d = dir.path();
        // Each changelog sums to its snapshot.
        let changelog = summed(&read_json_lines(&d.join("top3_per_site.jsonl")));
        let snap: BTreeMap<String, i64> = {
            let text = std::fs::read_to_string(d.join("top3_per_site.csv")).unwrap();
            let mut m = BTreeMap::new();
            for l in text.lines().skip(1) {
                let f: Vec<&str> = l.split(',').collect();
                // sensor_id, score, site in column order group, key, value
                let row = serde_json::json!({"site": f[0], "sensor_id": f[1], "score": f[2].parse::<f64>().unwrap()});
                *m.entry(row.to_string()).or_insert(0) += 1;
            }
            m
        };
        assert_eq!(
            changelog, snap,
            "{name}: top3 changelog does not sum to its snapshot"
        );
        let mean = summed(&read_json_lines(&d.join("mean_score_per_type.jsonl")));
        assert_eq!(mean.len(), 4, "{name}: one mean per machine type: {mean:?}");

        // The snapshots equal a recomputation from the prediction output and the side table.
        if *name == "w1" {
            let meta =
                std::fs::read_to_string(root().join("datasets/sample/sensors.parquet.meta.csv")).unwrap();
            let site: HashMap<String, (String, String)> = meta
                .lines()
                .skip(1)
                .map(|l| {
                    let f: Vec<&str> = l.split(',').collect();
                    (f[0].to_string(), (f[1].to_string(), f[2].to_string()))
                })
                .collect();
            let scores = read_predictions(&d.join("views_scores.parquet"));
            // Each key's latest prediction (largest time).
            let mut latest: HashMap<&str, (i64, f32)> = HashMap::new();
            for (k, t, s) in &scores {
                let e = latest.entry(k.as_str()).or_insert((*t, *s));
                if *t >= e.0 {
                    *e = (*t, *s);
                }
            }
            let mut per_site: BTreeMap<&str, Vec<(f32, &str)>> = BTreeMap::new();
            for (k, (_, s)) in &latest {
                per_site.entry(&site[*k].0).or_default().push((*s, k));
            }
            let mut want = Vec::new();
            for (x, mut v) in per_site {
                v.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(a.1)));
                for (s, k) in v.into_iter().take(3) {
                    want.push(format!("{x},{k},{s}"));
                }
            }
            want.sort();
            let got: Vec<String> = snapshot_lines(&d.join("top3_per_site.csv"))
                .into_iter()
                .filter(|l| !l.starts_with("site,"))
                .collect();
            assert_eq!(got, want, "top3 snapshot vs recomputation from the predictions");
            // Hourly windows: count of predictions > 0.5 per site and hour.
            let mut hourly: BTreeMap<(String, i64), i64> = BTreeMap::new();
            for (k, t, s) in &scores {
                if *s > 0.5 {
                    *hourly
                        .entry((site[k].0.clone(), t.div_euclid(3_600_000) * 3_600_000))
                        .or_insert(0) += 1;
                }
            }
            let want: Vec<String> = {
                let mut v: Vec<String> = hourly.iter().map(|((x, w), n)| format!("{x},{w},{n}")).collect();
                v.sort();
                v
            };
            let got: Vec<String> = snapshot_lines(&d.join("alerts_per_site_hourly.csv"))
                .into_iter()
                .filter(|l| !l.starts_with("site,"))
                .collect();
            assert_eq!(got, want, "hourly alert windows vs recomputation");
        }
        snapshots.push(
            [
                "anomalous_now_per_site.csv",
                "top3_per_site.csv",
                "alerts_per_site_hourly.csv",
                "mean_score_per_type.csv",
            ]
            .iter()
            .map(|f| snapshot_lines(&d.join(f)))
            .collect(),
        );
    }
    assert_eq!(snapshots[0], snapshots[1], "-w 2 differs from -w 1");
    assert_eq!(snapshots[0], snapshots[2], "-n 2 differs from -n 1");
}

fn read_predictions(p: &Path) -> Vec<(String, i64, f32)> {
    use arrow::array::AsArray;
    let f = std::fs::File::open(p).unwrap();
    let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for b in r {
        let b = b.unwrap();
        let k = b.column(0).as_string::<i32>();
        let t = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
        let s = b.column(2).as_primitive::<arrow::datatypes::Float32Type>();
        for i in 0..b.num_rows() {
            out.push((k.value(i).to_string(), t.value(i), s.value(i)));
        }
    }
    out
}

#[test]
fn live_views_follow_a_side_table_that_changes_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (mpath, _) = save_model(dir.path(), &causal_model(2));
    let side = dir.path().join("sites.csv");
    std::fs::write(&side, "key,site\na,north\nb,north\nc,south\n").unwrap();
    let p = write_pipeline(
        dir.path(),
        "p.toml",
        &format!(
            "[source]\nformat = \"tcp\"\nlisten = \"127.0.0.1:0\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]\nepoch_ms = 2\n\
             [model]\npath = \"{}\"\n[output]\nformat = \"jsonl\"\npath = \"out/p.jsonl\"\n\
             [[views]]\nname = \"keys_per_site\"\njoin = \"sites.csv\"\ngroup_by = [\"site\"]\naggregate = \"count\"\n\
             output = \"out/keys_per_site.jsonl\"\n",
            mpath.display()
        ),
    );
    let (child, addr, err) = start_live(&p, &[]);
    let mut s = TcpStream::connect(&addr).unwrap();
    for (k, t) in [("a", 1), ("b", 1), ("c", 1)] {
        s.write_all(format!("{{\"key\": \"{k}\", \"t\": {t}, \"f0\": 0.1, \"f1\": 0.2}}\n").as_bytes())
            .unwrap();
    }
    // A live changelog is written (flushed every epoch) to `PATH.partial` until the run ends.
    let log = dir.path().join("out/keys_per_site.jsonl.partial");
    let state = || summed(&read_json_lines(&log));
    let wait = |want: &BTreeMap<String, i64>, what: &str| {
        let start = Instant::now();
        while &state() != want {
            assert!(start.elapsed() < Duration::from_secs(20), "{what}: {:?}", state());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let row = |site: &str, n: i64| (format!("{{\"site\":\"{site}\",\"count\":{n}}}"), 1i64);
    wait(
        &BTreeMap::from([row("north", 2), row("south", 1)]),
        "initial counts",
    );
    // Move b to the south: the views follow without a restart.
    std::thread::sleep(Duration::from_millis(1100)); // a distinct file modification time
    std::fs::write(&side, "key,site\na,north\nb,south\nc,south\n").unwrap();
    wait(
        &BTreeMap::from([row("north", 1), row("south", 2)]),
        "counts after the side table changed",
    );
    drop(s);
    let (ok, rest) = terminate(child, err);
    assert!(ok, "{rest}");
    let done = dir.path().join("out/keys_per_site.jsonl");
    assert!(
        done.exists() && !log.exists(),
        "the changelog takes its name when the run ends"
    );
}

#[test]
fn an_empty_view_snapshot_still_has_its_columns() {
    // No prediction passes `where`: the snapshots are empty tables that still say their
    // columns (a CSV header; a Parquet file with its schema).
    let dir = tempfile::tempdir().unwrap();
    let (mpath, _) = save_model(dir.path(), &causal_model(2));
    std::fs::write(
        dir.path().join("in.csv"),
        "key,t,f0,f1\na,1,0.1,0.2\nb,1,0.3,0.4\n",
    )
    .unwrap();
    let p = write_pipeline(
        dir.path(),
        "p.toml",
        &format!(
            "[source]\nformat = \"csv\"\npath = \"in.csv\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]\n\
             [model]\npath = \"{}\"\n[output]\nformat = \"csv\"\npath = \"out/o.csv\"\n\
             [[views]]\nname = \"none\"\nwhere = \"y0 > 1000\"\naggregate = \"count\"\noutput = \"out/none.jsonl\"\nsnapshot = \"out/none.csv\"\n\
             [[views]]\nname = \"top\"\nwhere = \"y0 > 1000\"\naggregate = \"top_k\"\nof = \"y1\"\nk = 2\noutput = \"out/top.jsonl\"\nsnapshot = \"out/top.parquet\"\n",
            mpath.display()
        ),
    );
    run_ok(&["run", p.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/none.csv")).unwrap(),
        "count\n"
    );
    let f = std::fs::File::open(dir.path().join("out/top.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
    let names: Vec<String> = reader
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["key", "y1"]);
    assert_eq!(reader.metadata().file_metadata().num_rows(), 0);
}
