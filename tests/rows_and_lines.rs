//! Per-row handling and where things are (issue 13, rule 8): a bad cell rejects its row
//! (named by line), not the whole file; JSON errors name their line; keys and empty inputs
//! behave the same in every format. Expected outputs come from an identity model, so every
//! prediction is the prepared input itself.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use common::pipeline::*;

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("id.toml"),
            "input_size = 2\n[[layers]]\ntype = \"identity\"\n",
        )
        .unwrap();
        Case { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A pipeline over `input` with `nan = "skip"`, rejects to `rej.jsonl`, CSV out.
    fn pipeline(&self, format: &str, input: &str) -> PathBuf {
        write_pipeline(
            self.dir.path(),
            "p.toml",
            &format!(
                "[source]\nformat = \"{format}\"\npath = \"{input}\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]\n\
                 nan = \"skip\"\nrejects = \"rej.jsonl\"\n[model]\npath = \"id.toml\"\n[output]\nformat = \"csv\"\npath = \"out.csv\"\n"
            ),
        )
    }

    fn rejects(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("rej.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[test]
fn a_bad_cell_rejects_its_row_not_the_file() {
    // `Infinity` is a number (not finite: the NaN policy skips it); `0x10` is not a number:
    // malformed. Both rows are rejected by line; the others go on.
    let c = Case::new();
    std::fs::write(
        c.path("a.csv"),
        "key,t,f0,f1\na,1,0.5,1\na,2,Infinity,1\na,3,0x10,1\na,4,2,3\n",
    )
    .unwrap();
    let report = run_report(&c.pipeline("csv", "a.csv"), 1, Default::default());
    assert_eq!(
        (
            report.stats.outputs,
            report.stats.non_finite,
            report.stats.malformed
        ),
        (2, 1, 1)
    );
    let rejects = c.rejects();
    let at: Vec<(&str, &str)> = rejects
        .iter()
        .map(|r| (r["reason"].as_str().unwrap(), r["at"].as_str().unwrap()))
        .collect();
    assert_eq!(at, [("non_finite", "line 3"), ("malformed", "line 4")]);
    assert!(rejects[1]["detail"]
        .as_str()
        .unwrap()
        .contains("`0x10` is not a number"));
    let out = read_csv(&c.path("out.csv"));
    assert_eq!(out["a"].keys().collect::<Vec<_>>(), [&1, &4]);
}

#[test]
fn json_errors_name_their_line() {
    let c = Case::new();
    std::fs::write(
        c.path("b.jsonl"),
        "{\"key\":\"a\",\"t\":1,\"f0\":1,\"f1\":2}\n{\"key\":\"a\",\"t\":2,\"f0\":1,\"f1\":2}\n{\"key\": oops}\n",
    )
    .unwrap();
    let o = seqflow(&["run", c.pipeline("jsonl", "b.jsonl").to_str().unwrap()]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("b.jsonl: line 3, column 9: not JSON"), "{e}");
}

#[test]
fn a_column_named_twice_is_refused() {
    let c = Case::new();
    std::fs::write(c.path("d.csv"), "key,t,f0,f0\na,1,2,3\n").unwrap();
    let o = seqflow(&["run", c.pipeline("csv", "d.csv").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("column `f0` appears twice in the header"),
        "{}",
        stderr(&o)
    );
}

fn write_parquet_batch(path: &Path, cols: Vec<(&str, ArrayRef)>) {
    let batch = RecordBatch::try_from_iter(cols).unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn empty_inputs_behave_the_same_in_every_format() {
    // A header-only CSV, an empty JSON-lines file and a 0-row Parquet file: 0 rows read, an
    // output with its header, exit 0.
    let c = Case::new();
    std::fs::write(c.path("e.csv"), "key,t,f0,f1\n").unwrap();
    std::fs::write(c.path("e.jsonl"), "\n").unwrap();
    write_parquet_batch(
        &c.path("e.parquet"),
        vec![
            ("key", Arc::new(StringArray::from(Vec::<&str>::new())) as ArrayRef),
            ("t", Arc::new(Int64Array::from(Vec::<i64>::new()))),
            ("f0", Arc::new(Float32Array::from(Vec::<f32>::new()))),
            ("f1", Arc::new(Float32Array::from(Vec::<f32>::new()))),
        ],
    );
    for (format, file) in [("csv", "e.csv"), ("parquet", "e.parquet")] {
        let report = run_report(&c.pipeline(format, file), 1, Default::default());
        assert_eq!(report.stats.rows_read, 0, "{file}");
        assert_eq!(
            std::fs::read_to_string(c.path("out.csv")).unwrap(),
            "key,t,y0,y1\n",
            "{file}"
        );
    }
    // JSON lines have no header: a file without records (blank lines, or no bytes at all)
    // is an empty input too.
    std::fs::write(c.path("z.jsonl"), "").unwrap();
    for file in ["e.jsonl", "z.jsonl"] {
        let report = run_report(&c.pipeline("jsonl", file), 1, Default::default());
        assert_eq!(report.stats.rows_read, 0, "{file}");
        assert_eq!(
            std::fs::read_to_string(c.path("out.csv")).unwrap(),
            "key,t,y0,y1
",
            "{file}"
        );
    }
}

#[test]
fn keys_mean_the_same_in_every_format() {
    // u64 keys past i64::MAX are keys (not "null"), written back as they came; an empty key
    // in CSV is the empty string, as in Parquet.
    let c = Case::new();
    write_parquet_batch(
        &c.path("u.parquet"),
        vec![
            ("key", Arc::new(UInt64Array::from(vec![1, u64::MAX])) as ArrayRef),
            ("t", Arc::new(Int64Array::from(vec![1, 2]))),
            ("f0", Arc::new(Float32Array::from(vec![0.5, 0.25]))),
            ("f1", Arc::new(Float32Array::from(vec![1.0, 2.0]))),
        ],
    );
    let report = run_report(&c.pipeline("parquet", "u.parquet"), 1, Default::default());
    assert_eq!((report.stats.outputs, report.stats.malformed), (2, 0));
    let out = std::fs::read_to_string(c.path("out.csv")).unwrap();
    assert!(out.contains(&format!("\n{},2,0.25,2.0\n", u64::MAX)), "{out}");
    std::fs::write(c.path("k.csv"), "key,t,f0,f1\n,1,0.5,1\nb,1,0.5,1\n").unwrap();
    let report = run_report(&c.pipeline("csv", "k.csv"), 1, Default::default());
    assert_eq!(
        (report.stats.outputs, report.stats.keys, report.stats.malformed),
        (2, 2, 0)
    );
}
