//! Never destroy a file (issue 13, rules 1-3), on real files, links, FIFOs and pipes: an
//! output that would overwrite an input or another output is refused before anything is
//! opened; outputs are written as `PATH.partial` (never through a planted link) and renamed
//! only when the run succeeded; a failed run leaves no output behind; a closed stdout ends
//! the output quietly and a failing write is one message naming the path. Every test checks
//! that the inputs' bytes are unchanged.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::pipeline::*;

struct Case {
    dir: tempfile::TempDir,
    model: PathBuf,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        let (model, _) = save_model(dir.path(), &causal_model(2));
        std::fs::write(
            dir.path().join("in.csv"),
            "key,t,f0,f1\na,1,0.1,0.2\na,2,0.3,0.4\nb,1,0.5,0.6\na,2,0.3,0.4\n",
        )
        .unwrap();
        Case { dir, model }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A pipeline over `in.csv` writing `out.csv`, with extra `[source]` lines and extra
    /// pipeline text (views).
    fn pipeline(&self, source_extra: &str, tail: &str) -> String {
        write_pipeline(
            self.dir.path(),
            "p.toml",
            &format!(
                "[source]\nformat = \"csv\"\npath = \"in.csv\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]\n\
                 {source_extra}\n[model]\npath = \"{}\"\n[output]\nformat = \"csv\"\npath = \"out.csv\"\n{tail}",
                self.model.display()
            ),
        )
        .to_string_lossy()
        .into_owned()
    }

    /// The bytes of every file in the directory (recursively), to check nothing changed.
    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![self.dir.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                if m.is_dir() {
                    stack.push(p);
                } else if m.is_file() {
                    out.push((p.clone(), std::fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    /// Runs, expects exit 2 with every part in the message, and no file changed or added.
    fn refused(&self, args: &[&str], parts: &[&str]) {
        let before = self.snapshot();
        let o = seqflow(args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert!(!e.contains("panicked"), "{e}");
        for p in parts {
            assert!(e.contains(p), "message lacks {p:?}: {e}");
        }
        assert_eq!(self.snapshot(), before, "{args:?} changed files: {e}");
    }
}

#[test]
fn outputs_never_overwrite_inputs_or_each_other() {
    let c = Case::new();
    let p = c.pipeline("", "");
    let input = c.path("in.csv");
    let input = input.to_str().unwrap();
    // --output over the input (the old build replaced it and exited 0).
    c.refused(
        &["run", &p, "--output", input],
        &["in.csv", "the output would overwrite the input"],
    );
    // The same file under another name: a hard link.
    std::fs::hard_link(c.path("in.csv"), c.path("alias.csv")).unwrap();
    c.refused(
        &["run", &p, "--output", c.path("alias.csv").to_str().unwrap()],
        &["alias.csv", "would overwrite the input"],
    );
    // Rejects over the pipeline file, the model, the weights, the input, the output.
    for (rejects, what) in [
        ("p.toml", "the pipeline file"),
        ("m.toml", "the model file"),
        ("m.safetensors", "the weights file"),
        ("in.csv", "the input"),
        ("out.csv", "the output and the rejects file"),
    ] {
        let p = c.pipeline(&format!("rejects = \"{rejects}\""), "");
        c.refused(&["run", &p], &[rejects, what]);
    }
    // A view changelog or snapshot equal to the output, or to each other.
    let p = c.pipeline(
        "",
        "[[views]]\nname = \"v\"\naggregate = \"count\"\noutput = \"out.csv\"\n",
    );
    c.refused(&["run", &p], &["the output and the changelog of view \"v\""]);
    let p = c.pipeline(
        "",
        "[[views]]\nname = \"v\"\naggregate = \"count\"\noutput = \"v.jsonl\"\nsnapshot = \"v.jsonl\"\n",
    );
    c.refused(
        &["run", &p],
        &["the changelog of view \"v\" and the snapshot of view \"v\""],
    );
}

#[test]
fn writes_never_follow_a_planted_link_nor_replace_a_special_file() {
    let c = Case::new();
    let p = c.pipeline("", "");
    // A link planted where the partial file goes: the victim keeps its bytes; the output is
    // written as a fresh file.
    std::fs::write(c.path("victim.txt"), "precious\n").unwrap();
    std::os::unix::fs::symlink(c.path("victim.txt"), c.path("out.csv.partial")).unwrap();
    run_ok(&["run", &p]);
    assert_eq!(
        std::fs::read_to_string(c.path("victim.txt")).unwrap(),
        "precious\n"
    );
    assert!(std::fs::read_to_string(c.path("out.csv"))
        .unwrap()
        .starts_with("key,t,y0,y1"));
    assert!(!c.path("out.csv.partial").exists());
    // A FIFO (a special file of our own; the machine's devices are never touched).
    let fifo = c.path("fifo.csv");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    c.refused(
        &["run", &p, "--output", fifo.to_str().unwrap()],
        &["fifo.csv", "is a FIFO"],
    );
    // A directory where the output goes.
    std::fs::create_dir(c.path("dir.csv")).unwrap();
    c.refused(
        &["run", &p, "--output", c.path("dir.csv").to_str().unwrap()],
        &["dir.csv", "is a directory"],
    );
}

#[test]
fn a_failed_run_leaves_no_output_behind() {
    // A NaN under nan = "error" fails the run after the output, the rejects file and a view
    // changelog were opened: none of them, nor their partial files, is left.
    let c = Case::new();
    std::fs::write(
        c.path("in.csv"),
        "key,t,f0,f1\na,1,0.1,0.2\na,1,0.1,0.2\na,2,NaN,0.4\n",
    )
    .unwrap();
    let p = c.pipeline(
        "rejects = \"out/rejects.jsonl\"",
        "[[views]]\nname = \"v\"\naggregate = \"count\"\noutput = \"out/v.jsonl\"\nsnapshot = \"out/v.csv\"\n",
    );
    let o = seqflow(&["run", &p]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let left: Vec<_> = std::fs::read_dir(c.path("out"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!c.path("out.csv").exists() && !c.path("out.csv.partial").exists());
}

#[test]
fn a_closed_stdout_ends_the_output_quietly() {
    // `seqflow run ... | head -1`: the reader goes away; seqflow neither panics nor fails.
    let c = Case::new();
    for format in ["csv", "jsonl"] {
        let p = write_pipeline(
            c.dir.path(),
            "stdout.toml",
            &format!(
                "[source]\nformat = \"csv\"\npath = \"in.csv\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]\n\
                 [model]\npath = \"{}\"\n[output]\nformat = \"{format}\"\npath = \"-\"\n",
                c.model.display()
            ),
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_seqflow"))
            .args(["run", p.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader is gone before the first byte
        let o = child.wait_with_output().unwrap();
        let e = stderr(&o);
        assert!(o.status.success(), "{format}: {e}");
        assert!(!e.contains("panicked"), "{format}: {e}");
    }
}

#[test]
fn a_failing_write_is_one_message_naming_the_path() {
    // A file-size limit of 1 KB (the disk "fills up"): every format fails with exit 2, one
    // paragraph naming the output, and leaves no file.
    let c = Case::new();
    let mut csv = String::from("key,t,f0,f1\n");
    for i in 0..2000 {
        csv.push_str(&format!("k{},{i},0.5,0.25\n", i % 7));
    }
    std::fs::write(c.path("in.csv"), csv).unwrap();
    let p = c.pipeline("", "");
    for out in ["big.csv", "big.jsonl", "big.parquet"] {
        let cmd = format!(
            "trap '' XFSZ; ulimit -f 1; exec {} run {} --output {}",
            env!("CARGO_BIN_EXE_seqflow"),
            p,
            c.path(out).display()
        );
        let o = Command::new("bash").args(["-c", &cmd]).output().unwrap();
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{out}: {e}");
        assert!(e.starts_with("seqflow: error: ") && e.contains(out), "{out}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{out}: one paragraph: {e}");
        assert!(!e.contains("panicked"), "{out}: {e}");
        assert!(
            !c.path(out).exists() && !c.path(&format!("{out}.partial")).exists(),
            "{out}"
        );
    }
}

#[test]
fn a_live_output_appears_only_when_the_run_ends() {
    // Live Parquet output: `PATH.partial` while the run goes, `PATH` (complete, footer
    // written) once it stops.
    let c = Case::new();
    let p = write_pipeline(
        c.dir.path(),
        "live.toml",
        &format!(
            "[source]\nformat = \"tcp\"\nlisten = \"127.0.0.1:0\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]\n\
             epoch_ms = 2\n[model]\npath = \"{}\"\n[output]\nformat = \"parquet\"\npath = \"out/live.parquet\"\n",
            c.model.display()
        ),
    );
    let run = LiveRun::start(&p, 1);
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(&run.addr).unwrap();
    for t in 0..10 {
        writeln!(s, "{{\"key\": \"a\", \"t\": {t}, \"f0\": 0.5, \"f1\": 0.25}}").unwrap();
    }
    drop(s);
    let out = c.path("out/live.parquet");
    let partial = c.path("out/live.parquet.partial");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        partial.exists() && !out.exists(),
        "while running only the partial file exists"
    );
    let report = run.stop();
    assert_eq!(report.stats.outputs, 10);
    assert!(out.exists() && !partial.exists());
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&out).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 10);
}

/// An output in a directory the user may not write: one message naming the path, nothing
/// written. Root may write anywhere, so as root the run is made as `nobody`.
#[cfg(unix)]
#[test]
fn an_output_in_a_read_only_directory_is_one_message() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let c = Case::new();
    let p = c.pipeline("", "");
    let ro = c.path("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = c.snapshot();
    for out in ["ro/out.csv", "ro/out.parquet"] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_seqflow"));
        cmd.args(["run", &p, "--output"]).arg(c.path(out));
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            cmd.uid(65534).gid(65534);
        }
        let o = cmd.stdout(Stdio::null()).output().unwrap();
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{out}: {e}");
        assert!(e.starts_with("seqflow: error: ") && e.contains(out), "{out}: {e}");
        assert!(e.contains("ermission denied"), "{out}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{out}: one paragraph: {e}");
        assert!(!e.contains("panicked"), "{out}: {e}");
    }
    assert_eq!(c.snapshot(), before);
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}
