//! Sizes have limits checked at load (issue 13, rule 4): options that would make every key
//! keep absurd amounts of state, absurd worker counts, and inputs that are not regular files
//! (a FIFO would block forever) are refused at once with a message, never an abort, a panic
//! or a hang.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::pipeline::*;

/// Runs with a deadline; expects exit 2 and a message holding every part.
fn refused(args: &[&str], parts: &[&str]) {
    let start = Instant::now();
    let o = seqflow(args);
    let e = stderr(&o);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{args:?} took {:?}",
        start.elapsed()
    );
    assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
    assert!(!e.contains("panicked"), "{e}");
    for p in parts {
        assert!(e.contains(p), "message lacks {p:?}: {e}");
    }
}

fn model(dir: &Path, layers: &str) -> String {
    let p = dir.join("m.toml");
    std::fs::write(&p, format!("input_size = 100\n{layers}")).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn window_options_that_imply_absurd_state_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (layers, parts) in [
        (
            "[[layers]]\ntype = \"conv1d\"\ndilation = 1099511627776\n",
            &["`dilation` = 1099511627776 steps is more than 1048576"][..],
        ),
        (
            "[[layers]]\ntype = \"maxpool1d\"\nkernel = 1073741824\n",
            &["`kernel` = 1073741824 steps"][..],
        ),
        (
            "[[layers]]\ntype = \"avgpool1d\"\nkernel = 4611686018427387904\n",
            &["`kernel`"][..],
        ),
        (
            // Within the step limit, but 2^20 steps of 100 features is 400 MB of history per key.
            "[[layers]]\ntype = \"maxpool1d\"\nkernel = 1048576\n",
            &[
                "would keep 419.4 MB of state per key",
                "#0 (maxpool1d)",
                "the limit is",
            ][..],
        ),
        (
            "[[layers]]\ntype = \"lstm\"\nhidden_size = 99999999999\n",
            &["`hidden_size` = 99999999999"][..],
        ),
    ] {
        let m = model(d, layers);
        refused(&["inspect", &m], parts);
    }
}

#[test]
fn a_window_emit_too_large_and_absurd_worker_counts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mpath, _) = save_model(dir.path(), &causal_model(2));
    std::fs::write(dir.path().join("in.csv"), "key,t,f0,f1\na,1,0.1,0.2\n").unwrap();
    let p = write_pipeline(
        dir.path(),
        "p.toml",
        &format!(
            "[source]\nformat = \"csv\"\npath = \"in.csv\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]\n\
             [model]\npath = \"{}\"\n[output]\nformat = \"csv\"\npath = \"o.csv\"\nemit = \"window\"\nsize = 1099511627776\nhop = 1\n",
            mpath.display()
        ),
    );
    refused(
        &["run", p.to_str().unwrap()],
        &["window size = 1099511627776", "per key"],
    );
    let p = write_pipeline(
        dir.path(),
        "q.toml",
        &format!(
            "[source]\nformat = \"csv\"\npath = \"in.csv\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]\n\
             [model]\npath = \"{}\"\n[output]\nformat = \"csv\"\npath = \"o.csv\"\n",
            mpath.display()
        ),
    );
    refused(
        &["run", p.to_str().unwrap(), "-w", "100000"],
        &["-w 100000", "at most 1024"],
    );
    assert!(!dir.path().join("o.csv").exists());
}

#[test]
fn inputs_that_are_not_regular_files_are_refused_without_hanging() {
    // FIFOs of our own (the machine's devices are never touched): opening one for reading
    // would block until a writer came.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mpath, _) = save_model(d, &causal_model(2));
    let fifo = |name: &str| {
        let p = d.join(name);
        assert!(Command::new("mkfifo").arg(&p).status().unwrap().success());
        p.to_string_lossy().into_owned()
    };
    // Weights.
    let w = fifo("w.safetensors");
    std::fs::write(
        d.join("mw.toml"),
        "weights = \"w.safetensors\"\ninput_size = 2\n[[layers]]\ntype = \"linear\"\n",
    )
    .unwrap();
    refused(
        &["inspect", d.join("mw.toml").to_str().unwrap()],
        &[&w, "is a FIFO"],
    );
    // The model file and the pipeline file.
    let m = fifo("fm.toml");
    refused(&["inspect", &m], &["fm.toml", "is a FIFO"]);
    let p = fifo("fp.toml");
    refused(&["run", &p], &["fp.toml", "is a FIFO"]);
    // A data file.
    let data = fifo("in.csv");
    let p = write_pipeline(
        d,
        "p.toml",
        &format!(
            "[source]\nformat = \"csv\"\npath = \"in.csv\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]\n\
             [model]\npath = \"{}\"\n[output]\nformat = \"csv\"\npath = \"o.csv\"\n",
            mpath.display()
        ),
    );
    refused(&["run", p.to_str().unwrap()], &[&data, "is a FIFO"]);
}
