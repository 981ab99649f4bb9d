//! docs/tour.md cannot go stale: every command it shows (a `$ seqflow ...` line in a `text`
//! block) is run from the repository's root, and what it prints must be the lines the doc
//! shows under it (standard output when it succeeds; the error when it fails), numbers equal
//! to 1e-6 (their last digit depends on the CPU: the fused AVX-512 kernel and the portable
//! path round differently), everything else exactly. And the tour's
//! claim about LSTM gates, made precise: with f = 0, i = 1, o = 1 an LSTM computes
//! c_t = tanh(W x_t + U h_{t-1} + b), h_t = tanh(c_t). Against an `rnn` layer with the same
//! W, U, b followed by one more tanh, it agrees when U = 0 and not otherwise: the LSTM feeds
//! back h_{t-1} = tanh(c_{t-1}) where the RNN feeds back its own (un-squashed) state, so
//! "an LSTM with those gates is a standard RNN" holds only up to that extra tanh in the
//! recurrence. The reference for the U != 0 case is the documented recursion in f64.

use std::path::{Path, PathBuf};
use std::process::Command;

use seqflow::Model;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `(command line, expected output lines)` for every `$ seqflow` line of the doc's `text`
/// blocks.
fn commands(doc: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_text = false;
    for line in doc.lines() {
        if line.starts_with("```") {
            in_text = line.trim() == "```text";
            continue;
        }
        if !in_text {
            continue;
        }
        if let Some(cmd) = line.strip_prefix("$ ") {
            out.push((cmd.to_string(), Vec::new()));
        } else if let Some(last) = out.last_mut() {
            last.1.push(line.to_string());
        }
    }
    out
}

#[test]
fn every_command_in_the_tour_prints_what_the_tour_shows() {
    let doc = std::fs::read_to_string(root().join("docs/tour.md")).unwrap();
    let cmds = commands(&doc);
    assert!(cmds.len() >= 8, "the tour shows {} commands", cmds.len());
    for (cmd, want) in cmds {
        let args: Vec<String> = shell_words(&cmd);
        assert_eq!(args[0], "seqflow", "{cmd}");
        let o = Command::new(env!("CARGO_BIN_EXE_seqflow"))
            .current_dir(root())
            .args(&args[1..])
            .output()
            .unwrap();
        let shown = if o.status.success() { &o.stdout } else { &o.stderr };
        let got: Vec<String> = String::from_utf8_lossy(shown)
            .lines()
            .map(|l| l.trim_end().to_string())
            .collect();
        let mut want: Vec<String> = want.iter().map(|l| l.trim_end().to_string()).collect();
        // Blank lines at the end are not shown.
        let mut got = got;
        while got.last().is_some_and(|l| l.is_empty()) {
            got.pop();
        }
        while want.last().is_some_and(|l| l.is_empty()) {
            want.pop();
        }
        let same = got.len() == want.len() && got.iter().zip(&want).all(|(g, w)| same_line(g, w));
        assert!(
            same,
            "`{cmd}` prints something else than docs/tour.md shows:\n{}\n---- the doc shows:\n{}",
            got.join("\n"),
            want.join("\n")
        );
    }
}

/// Equal lines, or lines whose words (split at spaces and commas) are equal except for
/// numbers within 1e-6 of each other.
fn same_line(got: &str, want: &str) -> bool {
    if got == want {
        return true;
    }
    let words = |s: &str| s.split([' ', ',']).map(str::to_string).collect::<Vec<_>>();
    let (g, w) = (words(got), words(want));
    g.len() == w.len()
        && g.iter().zip(&w).all(|(a, b)| {
            a == b
                || matches!((a.parse::<f64>(), b.parse::<f64>()), (Ok(x), Ok(y)) if (x - y).abs() <= 1e-6 * (1.0 + y.abs()))
        })
}

/// Splits a command line on spaces, keeping double-quoted words whole.
fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in s.chars() {
        match ch {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn run(model: &Path, x: &[f32]) -> Vec<f32> {
    let m = Model::load(model).unwrap();
    let r = m.forward_sequence(x, x.len());
    (0..r.steps.len()).map(|i| r.row(i)[0]).collect()
}

#[test]
fn an_lstm_with_saturated_gates_is_an_rnn_plus_tanh_only_without_recurrence() {
    let tour = root().join("models/tour");
    let x = [1.0f32, 0.0, 0.0, 0.0, 0.0, 1.0, 0.5];
    // U = 0: identical up to the gates' saturation (sigmoid(20) = 1 - 2e-9).
    let lstm = run(&tour.join("lstm_as_rnn_u0.toml"), &x);
    let rnn = run(&tour.join("rnn_tanh_u0.toml"), &x);
    for (t, (a, b)) in lstm.iter().zip(&rnn).enumerate() {
        assert!((a - b).abs() < 1e-6, "U = 0, step {t}: lstm {a} vs tanh(rnn) {b}");
    }
    // U = 0.5: the first step agrees (h_{-1} = 0 for both), then they part.
    let lstm = run(&tour.join("lstm_as_rnn.toml"), &x);
    let rnn = run(&tour.join("rnn_tanh.toml"), &x);
    assert!((lstm[0] - rnn[0]).abs() < 1e-6);
    let gap = lstm
        .iter()
        .zip(&rnn)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        gap > 1e-2,
        "U = 0.5: the LSTM and tanh(RNN) should differ, max gap {gap}"
    );
    // What the LSTM does compute: c_t = tanh(W x_t + U tanh(c_{t-1}) + b), h_t = tanh(c_t),
    // with W = 0.8, U = 0.5, b = 0.1 (models/tour/make.py), in f64.
    let (w, u, b) = (0.8f64, 0.5f64, 0.1f64);
    let mut c = 0.0f64;
    for (t, &xt) in x.iter().enumerate() {
        c = (w * xt as f64 + u * c.tanh() + b).tanh();
        let h = c.tanh();
        assert!(
            (lstm[t] as f64 - h).abs() < 1e-6,
            "step {t}: lstm {} vs the recursion {h}",
            lstm[t]
        );
    }
}

#[test]
fn a_bad_trace_is_one_message() {
    for (steps, part) in [
        ("1 x", "step 1: `x` is not a number"),
        ("1,2 0", "step 0 has 2 value(s); the model takes 1 feature(s)"),
        ("", "no step given"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_seqflow"))
            .current_dir(root())
            .args(["inspect", "models/tour/lstm.toml", "--trace", steps])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{steps:?}: {err}");
        assert!(
            err.contains(part) && !err.contains("panicked"),
            "{steps:?}: {err}"
        );
    }
}
