//! Durable state, with the real binary: a checkpointed file run killed with SIGKILL at
//! random moments (during checkpoint writes too) and resumed with other worker counts and
//! two processes ends with exactly the rows and rejects of an uninterrupted run, bit for
//! bit, in every emit mode and output format; damaged checkpoints are skipped with a
//! warning or refused, a checkpoint of another model or layout is refused, and a folder
//! holding a checkpoint is never silently started over.
//!
//! The long version (hundreds of kills) is `benches/crash.sh`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::pipeline::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use seqflow::model::builder::ModelBuilder;

/// A model with state in every kind of layer: a convolution's history, a pooling layer's
/// step counter, two LSTM layers.
fn model() -> ModelBuilder {
    ModelBuilder::new(2, 5)
        .conv1d("conv", 4, 3, 1, 2, "causal")
        .plain("maxpool1d", "kernel = 2")
        .recurrent("lstm", "lstm", 6, 2)
        .linear("head", 2)
}

/// Three Parquet files (row groups of 40 rows): 14 keys whose steps run through all
/// three files, with a few NaN features (forward-filled), re-sent rows (duplicates) and a
/// late row.
fn write_inputs(dir: &Path) {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    for f in 0..3i64 {
        let mut rows = Vec::new();
        for t in f * 30..(f + 1) * 30 {
            for k in 0..14i64 {
                let x = ((k * 31 + t * 7) % 23) as f32 * 0.1 - 1.0;
                let y = if (k + t) % 17 == 0 {
                    f32::NAN
                } else {
                    (t as f32 * 0.05 + k as f32).sin()
                };
                rows.push(Row {
                    key: format!("s{k:02}"),
                    time: t,
                    feats: vec![x, y],
                });
                if (k * t) % 41 == 5 {
                    // Re-sent: a duplicate of the step just sent.
                    rows.push(Row {
                        key: format!("s{k:02}"),
                        time: t,
                        feats: vec![0.0, 0.0],
                    });
                }
            }
        }
        if f == 2 {
            rows.push(Row {
                key: "s03".into(),
                time: 3,
                feats: vec![1.0, 1.0],
            });
        }
        // The last file is one row group of many batches, read in parts by several workers.
        let group = if f == 2 { rows.len() } else { 40 };
        write_parquet_pages(&dir.join(format!("in/part-{f}.parquet")), &rows, group, Some(7));
    }
}

/// Views over the predictions: a count per key, a top 2 and a windowed mean (files in
/// `DIR/`, replaced by the caller).
const VIEWS: &str =
    "[[views]]\nname = \"high\"\nwhere = \"y0 > 0\"\ngroup_by = [\"key\"]\naggregate = \"count\"\n\
    output = \"DIR/high.jsonl\"\nsnapshot = \"DIR/high_now.csv\"\n\
    [[views]]\nname = \"top2\"\naggregate = \"top_k\"\nof = \"y0\"\nk = 2\noutput = \"DIR/top2.csv\"\n\
    snapshot = \"DIR/top2_now.csv\"\n\
    [[views]]\nname = \"windowed\"\ngroup_by = [\"key\"]\naggregate = \"mean\"\nof = \"y1\"\n\
    window = { size = 10 }\noutput = \"DIR/win.jsonl\"\nsnapshot = \"DIR/win_now.csv\"\n";

/// The pipeline: `emit` and output `out` (its format by extension); checkpoints every 2
/// epochs of 16 rows when `checkpoint`; `extra` TOML (views) appended.
fn pipeline_with(dir: &Path, name: &str, emit: &str, out: &str, checkpoint: bool, extra: &str) -> PathBuf {
    let ck = if checkpoint {
        "[checkpoint]\ndir = \"state\"\nevery_epochs = 2\nkeep = 2\n"
    } else {
        ""
    };
    let format = out.rsplit('.').next().unwrap();
    write_pipeline(
        dir,
        name,
        &format!(
            "[source]\nformat = \"parquet\"\npath = \"in\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]\n\
             nan = \"ffill\"\nbatch_rows = 16\nrejects = \"out/rejects.jsonl\"\n\
             [model]\npath = \"m.toml\"\n[output]\nformat = \"{format}\"\npath = \"{out}\"\n{emit}\n{ck}{extra}"
        ),
    )
}

/// Rows of an output file, sorted, floats as bits: equal means equal bit for bit.
fn rows_of(path: &Path) -> Vec<String> {
    if path.extension().is_some_and(|e| e == "parquet") {
        let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let reader = ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap();
        let mut rows = Vec::new();
        for b in reader {
            let b = b.unwrap();
            let cols: Vec<Vec<String>> = b
                .columns()
                .iter()
                .map(|c| {
                    (0..c.len())
                        .map(|i| {
                            if let Some(f) = c.as_any().downcast_ref::<arrow::array::Float32Array>() {
                                format!("{:08x}", f.value(i).to_bits())
                            } else {
                                arrow::util::display::array_value_to_string(c, i).unwrap()
                            }
                        })
                        .collect()
                })
                .collect();
            for i in 0..b.num_rows() {
                rows.push(cols.iter().map(|c| c[i].clone()).collect::<Vec<_>>().join(","));
            }
        }
        rows.sort();
        rows
    } else {
        sorted_lines(path)
    }
}

fn spawn(dir: &Path, pipeline: &Path, args: &[&str]) -> std::process::Child {
    seqflow_cmd()
        .current_dir(dir)
        .arg("run")
        .arg(pipeline)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A resume in one of four shapes: `-w 1`, `-w 2`, two processes, `-w 3`. Returns whether
/// it completed, and its stderr.
fn resume(dir: &Path, pipeline: &Path, shape: usize, kill_after: Option<Duration>) -> (bool, String) {
    let mut children = Vec::new();
    match shape % 4 {
        2 => {
            let hosts = dir.join("hosts.txt");
            std::fs::write(
                &hosts,
                format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port()),
            )
            .unwrap();
            for p in ["0", "1"] {
                let h = hosts.to_str().unwrap();
                children.push(spawn(dir, pipeline, &["--resume", "-n", "2", "-p", p, "-h", h]));
            }
        }
        s => {
            let w = [1, 2, 0, 3][s].to_string();
            children.push(spawn(dir, pipeline, &["--resume", "-w", &w]));
        }
    }
    if let Some(d) = kill_after {
        std::thread::sleep(d);
        for c in &children {
            let _ = Command::new("kill").args(["-KILL", &c.id().to_string()]).status();
        }
    }
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let err = String::from_utf8_lossy(&outs[0].stderr).into_owned();
    for o in &outs {
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!e.contains("panicked"), "a panic:\n{e}");
    }
    (outs.iter().all(|o| o.status.success()), err)
}

/// The counters of a summary line, without the timings.
fn counters(summary: &str) -> String {
    let line = summary
        .lines()
        .find(|l| l.starts_with("seqflow: ") && l.contains(" rows from "))
        .unwrap_or("");
    let (head, tail) = line.split_once(" in ").unwrap_or((line, ""));
    let tail = tail.split_once("); ").map_or("", |t| t.1);
    // Key state depends on the worker count (buffers per worker).
    let tail: Vec<&str> = tail
        .split("; ")
        .filter(|p| {
            !p.starts_with("key state")
                && !p.starts_with("output ")
                && !p.contains(" checkpoint")
                && !p.starts_with("resumed from")
        })
        .collect();
    format!("{head} | {}", tail.join("; "))
}

/// SIGKILLs a checkpointed run at seeded random moments (and some resumes too), resumes
/// until it completes, and compares with the uninterrupted run.
/// The files the views write.
const VIEW_FILES: [&str; 6] = [
    "high.jsonl",
    "high_now.csv",
    "top2.csv",
    "top2_now.csv",
    "win.jsonl",
    "win_now.csv",
];

fn crash_and_resume(emit: &str, out: &str, trials: usize, seed: u64) {
    crash_and_resume_with(emit, out, trials, seed, false)
}

fn crash_and_resume_with(emit: &str, out: &str, trials: usize, seed: u64, views: bool) {
    // `benches/crash.sh` runs many more.
    let trials = std::env::var("SEQFLOW_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(trials);
    let seed = std::env::var("SEQFLOW_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(seed, |s| s.wrapping_mul(31).wrapping_add(seed));
    let mut kills = 0usize;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_inputs(d);
    save_model(d, &model());
    let views_in = |dir: &str| {
        if views {
            VIEWS.replace("DIR", dir)
        } else {
            String::new()
        }
    };
    let reference = pipeline_with(
        d,
        "ref.toml",
        emit,
        &format!("ref/{out}"),
        false,
        &views_in("ref"),
    );
    let started = Instant::now();
    let o = seqflow_cmd()
        .current_dir(d)
        .arg("run")
        .arg(&reference)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let took = started.elapsed();
    let want_rows = rows_of(&d.join(format!("ref/{out}")));
    let want_rejects = sorted_lines(&d.join("out/rejects.jsonl"));
    let want_counters = counters(&stderr(&o));
    assert!(want_rows.len() > 100 && want_rejects.len() > 3);
    std::fs::remove_dir_all(d.join("out")).unwrap();

    let want_views: Vec<Vec<String>> = if views {
        VIEW_FILES
            .iter()
            .map(|f| sorted_lines(&d.join("ref").join(f)))
            .collect()
    } else {
        Vec::new()
    };
    let p = pipeline_with(d, "ck.toml", emit, &format!("out/{out}"), true, &views_in("out"));
    let mut rng = seed;
    let mut next = |n: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % n.max(1)
    };
    let span = took.as_millis() as u64 + 50;
    let mut resumed_from_checkpoint = 0;
    for trial in 0..trials {
        let _ = std::fs::remove_dir_all(d.join("out"));
        let _ = std::fs::remove_dir_all(d.join("state"));
        let first = spawn(d, &p, &[]);
        std::thread::sleep(Duration::from_millis(next(span)));
        let _ = Command::new("kill")
            .args(["-KILL", &first.id().to_string()])
            .status();
        let _ = first.wait_with_output();
        kills += 1;
        let mut done = None;
        let mut last = String::new();
        for attempt in 0..12 {
            let has_checkpoint = std::fs::read_dir(d.join("state"))
                .map(|r| r.flatten().any(|e| e.path().join("manifest.json").is_file()))
                .unwrap_or(false);
            resumed_from_checkpoint += has_checkpoint as usize;
            // Every other resume is killed too, until the last attempts.
            let kill = (attempt % 2 == 0 && attempt < 8).then(|| Duration::from_millis(next(span)));
            let (ok, err) = resume(d, &p, trial + attempt, kill);
            kills += kill.is_some() as usize;
            if ok {
                done = Some(err);
                break;
            }
            last = err;
        }
        let err = done.unwrap_or_else(|| panic!("trial {trial}: never completed; last:\n{last}"));
        assert_eq!(
            rows_of(&d.join(format!("out/{out}"))),
            want_rows,
            "trial {trial}: rows\n{err}"
        );
        assert_eq!(
            sorted_lines(&d.join("out/rejects.jsonl")),
            want_rejects,
            "trial {trial}: rejects"
        );
        assert_eq!(counters(&err), want_counters, "trial {trial}: counters");
        for (f, want) in VIEW_FILES.iter().zip(&want_views) {
            assert_eq!(
                &sorted_lines(&d.join("out").join(f)),
                want,
                "trial {trial}: view {f}\n{err}"
            );
        }
        // A completed run leaves no partial file and no checkpoint.
        let left: Vec<_> = std::fs::read_dir(d.join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".partial"))
            .collect();
        assert!(left.is_empty(), "trial {trial}: left {left:?}");
        let state: Vec<_> = std::fs::read_dir(d.join("state"))
            .map(|r| r.count())
            .into_iter()
            .collect();
        assert!(state.iter().all(|&n| n == 0), "trial {trial}: checkpoints left");
    }
    assert!(resumed_from_checkpoint > 0, "no trial resumed from a checkpoint");
    println!(
        "{emit} -> {out}: {trials} trials, {kills} SIGKILLs, {resumed_from_checkpoint} resumes from a checkpoint; \
         every final output equal to the uninterrupted run's"
    );
}

#[test]
fn killed_every_step_parquet_runs_resume_to_the_same_rows() {
    crash_and_resume("emit = \"every_step\"", "pred.parquet", 6, 1);
}

#[test]
fn killed_runs_with_views_resume_to_the_same_changelogs_and_snapshots() {
    crash_and_resume_with("emit = \"every_step\"", "pred.csv", 5, 4, true);
}

#[test]
fn killed_window_csv_runs_resume_to_the_same_rows() {
    crash_and_resume("emit = \"window\"\nsize = 5\nhop = 3", "pred.csv", 4, 2);
}

#[test]
fn killed_sequence_end_jsonl_runs_resume_to_the_same_rows() {
    crash_and_resume("emit = \"sequence_end\"\nall_steps = true", "pred.jsonl", 4, 3);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

fn run_in(dir: &Path, args: &[&str]) -> Output {
    seqflow_cmd().current_dir(dir).args(args).output().unwrap()
}

/// Exit 2 and one error paragraph holding every `needles`; no panic.
fn assert_refused(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.matches("seqflow: error:").count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

/// Three CSV files; the third holds `nan` (under nan = "error", the run fails there after
/// committing checkpoints) or, fixed, `0.5`: the same bytes but for that cell.
fn csv_inputs(dir: &Path, broken: bool) {
    csv_inputs_broken_in(dir, broken, 2, 55);
}

/// [`csv_inputs`] with the `nan` cell (when `broken`) in file `file` at time `at`.
fn csv_inputs_broken_in(dir: &Path, broken: bool, file: i64, at: i64) {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    for f in 0..3i64 {
        let mut text = String::from("key,t,f0,f1\n");
        for t in f * 20..(f + 1) * 20 {
            for k in 0..6 {
                let bad = f == file && t == at && k == 4;
                let y = if bad && broken {
                    "nan".to_string()
                } else if bad {
                    "0.5".to_string()
                } else {
                    format!("{:.3}", (t as f32 * 0.1 + k as f32).cos())
                };
                text.push_str(&format!("k{k},{t},{:.3},{y}\n", (k * t) as f32 * 0.01));
            }
        }
        std::fs::write(dir.join(format!("in/{f}.csv")), text).unwrap();
    }
}

fn csv_pipeline(dir: &Path, features: &str, checkpoint: bool) -> PathBuf {
    pipeline_of(dir, "csv", features, checkpoint)
}

/// `p.toml`: `format` files in `in/`, `features`, 10-row epochs, CSV predictions in
/// `out/pred.csv`; a checkpoint every epoch when `checkpoint`.
fn pipeline_of(dir: &Path, format: &str, features: &str, checkpoint: bool) -> PathBuf {
    let ck = if checkpoint {
        "[checkpoint]\ndir = \"state\"\nevery_epochs = 1\nkeep = 3\n"
    } else {
        ""
    };
    write_pipeline(
        dir,
        "p.toml",
        &format!(
            "[source]\nformat = \"{format}\"\npath = \"in\"\nkey = \"key\"\ntime = \"t\"\nfeatures = {features}\n\
             batch_rows = 10\nrejects = \"out/rejects.jsonl\"\n\
             [model]\npath = \"m.toml\"\n[output]\nformat = \"csv\"\npath = \"out/pred.csv\"\n{ck}"
        ),
    )
}

/// The newest complete checkpoint's folder and its parts.
fn newest(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let mut folders: Vec<PathBuf> = std::fs::read_dir(dir.join("state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("manifest.json").is_file())
        .collect();
    folders.sort();
    let f = folders.pop().expect("a complete checkpoint");
    let parts = std::fs::read_dir(&f)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "arrow"))
        .collect();
    (f, parts)
}

#[test]
fn damaged_or_foreign_checkpoints_are_skipped_or_refused_never_silently_restarted() {
    let root = tempfile::tempdir().unwrap();
    // The uninterrupted run over the fixed data.
    let reference = root.path().join("reference");
    std::fs::create_dir_all(&reference).unwrap();
    csv_inputs(&reference, false);
    save_model(&reference, &model());
    let p = csv_pipeline(&reference, "[\"f0\", \"f1\"]", false);
    let o = run_in(&reference, &["run", p.to_str().unwrap(), "-w", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = sorted_lines(&reference.join("out/pred.csv"));
    let want_rejects = sorted_lines(&reference.join("out/rejects.jsonl"));

    // A checkpointed run that fails in its last file: checkpoints and partials are kept.
    let base = root.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    csv_inputs(&base, true);
    save_model(&base, &model());
    csv_pipeline(&base, "[\"f0\", \"f1\"]", true);
    let o = run_in(&base, &["run", "p.toml"]);
    assert_refused(&o, &["in/2.csv", "--resume"]);
    assert!(base.join("out/pred.csv.partial").is_file());
    // What the checkpoints hold, for users (and a missing folder is one message).
    let o = run_in(&base, &["checkpoint", "state"]);
    let listing = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", stderr(&o));
    for needle in [
        "(what --resume continues from)",
        "6 keys",
        "part-0.arrow",
        "rows committed",
        "made with",
        "features: [\"f0\", \"f1\"]",
    ] {
        assert!(listing.contains(needle), "listing lacks {needle:?}:\n{listing}");
    }
    assert_refused(&run_in(&base, &["checkpoint", "no/such/dir"]), &["no/such/dir"]);
    csv_inputs(&base, false);

    let case = |name: &str, damage: &dyn Fn(&Path)| -> (PathBuf, Output) {
        let d = root.path().join(name);
        copy_dir(&base, &d);
        damage(&d);
        let o = run_in(&d, &["run", "p.toml", "--resume", "-w", "3"]);
        (d, o)
    };
    let completes = |d: &Path, o: &Output, warning: Option<&str>| {
        let err = stderr(o);
        assert!(o.status.success(), "{err}");
        if let Some(w) = warning {
            assert!(
                err.contains(w) && err.contains("resuming from the one before it"),
                "{}: wanted {w:?}:\n{err}",
                d.display()
            );
        }
        assert_eq!(sorted_lines(&d.join("out/pred.csv")), want);
        assert_eq!(sorted_lines(&d.join("out/rejects.jsonl")), want_rejects);
        assert!(!d.join("out/pred.csv.partial").exists());
    };

    let (d, o) = case("plain", &|_| {});
    completes(&d, &o, None);

    let (d, o) = case("truncated", &|d| {
        let (_, parts) = newest(d);
        let f = std::fs::OpenOptions::new().write(true).open(&parts[0]).unwrap();
        let n = f.metadata().unwrap().len();
        f.set_len(n / 2).unwrap();
    });
    completes(&d, &o, Some("bytes, the manifest says"));

    let (d, o) = case("flipped", &|d| {
        let (_, parts) = newest(d);
        let mut bytes = std::fs::read(&parts[0]).unwrap();
        let i = bytes.len() / 2;
        bytes[i] ^= 0x40;
        std::fs::write(&parts[0], bytes).unwrap();
    });
    completes(&d, &o, Some("checksum"));

    let (d, o) = case("no-manifest", &|d| {
        let (f, _) = newest(d);
        std::fs::remove_file(f.join("manifest.json")).unwrap();
    });
    completes(&d, &o, Some("unfinished"));

    let (_, o) = case("all-damaged", &|d| {
        for e in std::fs::read_dir(d.join("state")).unwrap() {
            let f = e.unwrap().path();
            for p in std::fs::read_dir(&f).unwrap() {
                let p = p.unwrap().path();
                if p.extension().is_some_and(|e| e == "arrow") {
                    std::fs::write(&p, b"not arrow").unwrap();
                }
            }
        }
    });
    assert_refused(&o, &["holds no usable checkpoint", "--fresh"]);

    let (_, o) = case("other-model", &|d| {
        save_model(
            d,
            &ModelBuilder::new(2, 77)
                .conv1d("conv", 4, 3, 1, 2, "causal")
                .plain("maxpool1d", "kernel = 2")
                .recurrent("lstm", "lstm", 6, 2)
                .linear("head", 2),
        );
    });
    assert_refused(
        &o,
        &["belongs to another pipeline or model", "the model", "--fresh"],
    );

    let (_, o) = case("other-features", &|d| {
        csv_pipeline(d, "[\"f1\", \"f0\"]", true);
    });
    assert_refused(&o, &["features = [\"f0\", \"f1\"]", "[\"f1\", \"f0\"]"]);

    let (_, o) = case("partial-gone", &|d| {
        std::fs::remove_file(d.join("out/pred.csv.partial")).unwrap();
    });
    assert_refused(&o, &["pred.csv.partial", "is gone", "--fresh"]);

    // Without --resume: refused, naming both ways on.
    let d = root.path().join("no-resume");
    copy_dir(&base, &d);
    let o = run_in(&d, &["run", "p.toml"]);
    assert_refused(
        &o,
        &["holds a checkpoint of an unfinished run", "--resume", "--fresh"],
    );
    // --fresh: starts over and completes.
    let o = run_in(&d, &["run", "p.toml", "--fresh"]);
    completes(&d, &o, None);
    assert_eq!(std::fs::read_dir(d.join("state")).unwrap().count(), 0);
}

/// A live TCP pipeline with checkpoints every 50 ms, JSON lines out.
fn live_pipeline(dir: &Path, checkpoint: bool) -> PathBuf {
    let ck = if checkpoint {
        "[checkpoint]\ndir = \"state\"\nevery_ms = 50\n"
    } else {
        ""
    };
    write_pipeline(
        dir,
        "live.toml",
        &format!(
            "[source]\nformat = \"tcp\"\nlisten = \"127.0.0.1:0\"\nlines = \"jsonl\"\nkey = \"key\"\ntime = \"t\"\n\
             features = [\"f0\", \"f1\"]\nnan = \"ffill\"\nepoch_ms = 2\n\
             [model]\npath = \"m.toml\"\n[output]\nformat = \"jsonl\"\npath = \"out/live.jsonl\"\n{ck}"
        ),
    )
}

/// JSON lines for 6 keys, steps `from..to` of each, in time order (some features null:
/// forward-filled from the key's last value, which the state must carry).
fn live_lines(from: i64, to: i64) -> String {
    let mut s = String::new();
    for t in from..to {
        for k in 0..6 {
            let y = if (k + t) % 7 == 0 {
                "null".to_string()
            } else {
                format!("{}", ((t * 3 + k) % 11) as f32 * 0.1)
            };
            s.push_str(&format!(
                "{{\"key\": \"k{k}\", \"t\": {t}, \"f0\": {}, \"f1\": {y}}}\n",
                (k * t % 5) as f32
            ));
        }
    }
    s
}

/// The caller waits for the child (through `terminate` or `kill`).
#[allow(clippy::zombie_processes)]
/// Starts a live run in `dir` and returns it with its address (warnings before the
/// listening line are skipped, and returned).
fn start_live_in(
    dir: &Path,
    args: &[&str],
) -> (
    std::process::Child,
    String,
    std::io::BufReader<std::process::ChildStderr>,
    String,
) {
    use std::io::BufRead;
    let mut child = seqflow_cmd()
        .current_dir(dir)
        .args(["run", "live.toml"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut before = String::new();
    loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "no listening line:\n{before}"
        );
        if let Some(rest) = line.split("listening on ").nth(1) {
            let addr = rest.split(' ').next().unwrap().to_string();
            return (child, addr, err, before);
        }
        before.push_str(&line);
    }
}

fn send(addr: &str, text: &str) {
    use std::io::Write;
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(text.as_bytes()).unwrap();
}

#[test]
fn a_live_run_stopped_or_killed_and_resumed_carries_every_key_state() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (live_lines(0, 30), live_lines(30, 60));
    // The uninterrupted run.
    let reference = root.path().join("reference");
    std::fs::create_dir_all(&reference).unwrap();
    save_model(&reference, &model());
    live_pipeline(&reference, false);
    let (child, addr, err, _) = start_live_in(&reference, &[]);
    send(&addr, &a);
    wait_lines(&reference.join("out/live.jsonl"), 90);
    send(&addr, &b);
    wait_lines(&reference.join("out/live.jsonl"), 180);
    let (ok, e) = terminate(child, err);
    assert!(ok, "{e}");
    let want = sorted_lines(&reference.join("out/live.jsonl"));
    assert_eq!(want.len(), 180);

    for (case, kill) in [("stopped", false), ("killed", true)] {
        let d = root.path().join(case);
        std::fs::create_dir_all(&d).unwrap();
        save_model(&d, &model());
        live_pipeline(&d, true);
        let (mut child, addr, err, _) = start_live_in(&d, &[]);
        send(&addr, &a);
        wait_lines(&d.join("out/live.jsonl"), 90);
        if kill {
            // Let a checkpoint after the last line commit, then SIGKILL.
            std::thread::sleep(Duration::from_millis(400));
            let _ = Command::new("kill")
                .args(["-KILL", &child.id().to_string()])
                .status();
            let _ = child.wait();
            assert!(d.join("out/live.jsonl.partial").is_file());
        } else {
            // SIGTERM: a final checkpoint, and the output renamed into place.
            let (ok, e) = terminate(child, err);
            assert!(ok && e.contains("checkpoint"), "{e}");
            assert!(d.join("out/live.jsonl").is_file());
        }
        // The state goes on, on two workers; the output continues the same file.
        let (child, addr, err, warnings) = start_live_in(&d, &["--resume", "-w", "2"]);
        send(&addr, &b);
        wait_lines(&d.join("out/live.jsonl"), 180);
        let (ok, e) = terminate(child, err);
        assert!(ok, "{warnings}{e}");
        assert!(e.contains("resumed from"), "{e}");
        assert_eq!(
            sorted_lines(&d.join("out/live.jsonl")),
            want,
            "{case}: {warnings}{e}"
        );
    }
}

#[test]
fn no_checkpoint_is_taken_after_a_worker_failed() {
    // Worker 1 reads the middle file and fails early in it; worker 0 goes on into the last
    // file. A checkpoint there would let a resume skip the middle file's rest.
    let root = tempfile::tempdir().unwrap();
    let reference = root.path().join("reference");
    std::fs::create_dir_all(&reference).unwrap();
    csv_inputs_broken_in(&reference, false, 1, 21);
    save_model(&reference, &model());
    let p = csv_pipeline(&reference, "[\"f0\", \"f1\"]", false);
    let o = run_in(&reference, &["run", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = sorted_lines(&reference.join("out/pred.csv"));

    let d = root.path().join("failing");
    std::fs::create_dir_all(&d).unwrap();
    csv_inputs_broken_in(&d, true, 1, 21);
    save_model(&d, &model());
    csv_pipeline(&d, "[\"f0\", \"f1\"]", true);
    let o = run_in(&d, &["run", "p.toml", "-w", "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    csv_inputs_broken_in(&d, false, 1, 21);
    let o = run_in(&d, &["run", "p.toml", "--resume", "-w", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sorted_lines(&d.join("out/pred.csv")), want);
}

/// One Parquet file of one row group (6 keys x 60 steps, 36 batches of 10 rows, 7-row pages),
/// with `nan` in one cell of batch 21 when `broken` (under nan = "error" the run fails there)
/// or, fixed, 0.5.
fn one_row_group_input(dir: &Path, broken: bool) {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let mut rows = Vec::new();
    for t in 0..60i64 {
        for k in 0..6i64 {
            let bad = rows.len() == 215;
            let y = match (bad, broken) {
                (true, true) => f32::NAN,
                (true, false) => 0.5,
                _ => (t as f32 * 0.1 + k as f32).cos(),
            };
            rows.push(Row {
                key: format!("k{k}"),
                time: t,
                feats: vec![(k * t) as f32 * 0.01, y],
            });
        }
    }
    write_parquet_pages(&dir.join("in/all.parquet"), &rows, rows.len(), Some(7));
}

#[test]
fn a_run_failed_inside_a_large_row_group_resumes_from_inside_a_part() {
    // Several workers read the row group in parts; the failed run's last checkpoint falls
    // somewhere in it. Resumed with parts of 2, 3 and 5 batches (so that the checkpoint is
    // inside a part of at least one of them: it is before batch 21), every resume must give
    // the uninterrupted run's rows.
    let pipeline = |dir: &Path, checkpoint: bool| pipeline_of(dir, "parquet", "[\"f0\", \"f1\"]", checkpoint);
    let root = tempfile::tempdir().unwrap();
    let reference = root.path().join("reference");
    std::fs::create_dir_all(&reference).unwrap();
    one_row_group_input(&reference, false);
    save_model(&reference, &model());
    pipeline(&reference, false);
    let o = run_in(&reference, &["run", "p.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = sorted_lines(&reference.join("out/pred.csv"));
    assert_eq!(
        want.len(),
        6 * 30 + 1,
        "a prediction every other step (the max pool), and the header"
    );

    let failed = root.path().join("failed");
    std::fs::create_dir_all(&failed).unwrap();
    one_row_group_input(&failed, true);
    save_model(&failed, &model());
    pipeline(&failed, true);
    let o = run_in(&failed, &["run", "p.toml", "-w", "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let (ckpt, _) = newest(&failed);
    let name = ckpt.file_name().unwrap().to_str().unwrap().to_string();
    let boundary: u64 = name.trim_start_matches("ckpt-").parse().unwrap();
    assert!(
        (1..=21).contains(&boundary),
        "{name}: a checkpoint inside the row group, before the bad row"
    );
    one_row_group_input(&failed, false);
    for (rows, workers) in [("20", "2"), ("30", "3"), ("50", "2")] {
        let d = root.path().join(format!("resume-{rows}"));
        copy_dir(&failed, &d);
        let o = seqflow_cmd()
            .env("SEQFLOW_PART_ROWS", rows)
            .current_dir(&d)
            .args(["run", "p.toml", "--resume", "-w", workers])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("resumed from"), "{}", stderr(&o));
        assert_eq!(
            sorted_lines(&d.join("out/pred.csv")),
            want,
            "resumed at {boundary} with parts of {rows} rows on {workers} workers"
        );
    }
}

#[test]
fn checkpoints_commit_while_the_run_goes_not_only_at_its_end() {
    // 120 epochs of 30 rows through a model slow enough that the reader (on its own thread)
    // keeps several epochs queued, a checkpoint after each epoch, and a NaN (refused) in
    // epoch 110. A checkpoint is committed once every worker's part is in: the parts must be
    // announced while epochs are still queued (the worker takes one per activation), or the
    // failed run keeps none from late in its input.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    let mut rows = Vec::new();
    for t in 0..600i64 {
        for k in 0..6i64 {
            let bad = rows.len() == 3300;
            rows.push(Row {
                key: format!("k{k}"),
                time: t,
                feats: vec![
                    if bad {
                        f32::NAN
                    } else {
                        (t as f32 * 0.1 + k as f32).sin()
                    },
                    0.5,
                ],
            });
        }
    }
    write_parquet_pages(&d.join("in/all.parquet"), &rows, rows.len(), Some(60));
    save_model(
        d,
        &ModelBuilder::new(2, 5)
            .recurrent("lstm", "lstm", 96, 2)
            .linear("head", 1),
    );
    write_pipeline(
        d,
        "p.toml",
        "[source]\nformat = \"parquet\"\npath = \"in\"\nkey = \"key\"\ntime = \"t\"\n\
         features = [\"f0\", \"f1\"]\nbatch_rows = 30\n[model]\npath = \"m.toml\"\n\
         [output]\nformat = \"csv\"\npath = \"out/pred.csv\"\n\
         [checkpoint]\ndir = \"state\"\nevery_epochs = 1\nkeep = 3\n",
    );
    let o = run_in(d, &["run", "p.toml", "-w", "1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let (ckpt, _) = newest(d);
    let name = ckpt.file_name().unwrap().to_str().unwrap().to_string();
    let boundary: u64 = name.trim_start_matches("ckpt-").parse().unwrap();
    // Epochs are numbered row group << 32 | batch: the bad row is in batch 110 of the one
    // row group.
    assert!(
        (90..=110).contains(&boundary),
        "{name}: the last checkpoint before the bad row is near it"
    );
}
