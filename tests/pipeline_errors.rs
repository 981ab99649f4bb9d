//! Bad input to `seqflow run`: every case exits with code 2 and one paragraph naming the
//! file, column, row or setting at fault; never a panic, never a complete-looking output.

mod common;

use std::path::Path;

use common::pipeline::*;
use seqflow::pipeline::Overrides;

struct Case {
    dir: tempfile::TempDir,
    model: std::path::PathBuf,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("in")).unwrap();
        let (model, _) = save_model(dir.path(), &causal_model(2));
        Case { dir, model }
    }

    fn path(&self, p: &str) -> std::path::PathBuf {
        self.dir.path().join(p)
    }

    fn good_rows(&self) {
        let rows: Vec<Row> = (0..4)
            .map(|i| Row {
                key: "a".into(),
                time: i,
                feats: vec![0.1, 0.2],
            })
            .collect();
        write_parquet(&self.path("in/x.parquet"), &rows, 10);
    }

    fn pipeline(&self, source_body: &str, output_body: &str) -> String {
        let text = format!(
            "[source]\n{source_body}\n[model]\npath = \"{}\"\n[output]\n{output_body}\n",
            self.model.display()
        );
        write_pipeline(self.dir.path(), "p.toml", &text)
            .to_string_lossy()
            .into_owned()
    }

    fn standard(&self, source_extra: &str) -> String {
        self.pipeline(
            &format!(
                "format = \"parquet\"\npath = \"in\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]\n{source_extra}"
            ),
            "format = \"csv\"\npath = \"out/o.csv\"",
        )
    }

    /// Runs and asserts failure with exit code 2, a message holding every part, no panic,
    /// and no output file.
    fn fails(&self, args: &[&str], parts: &[&str]) -> String {
        let o = seqflow(args);
        let e = stderr(&o);
        assert_eq!(
            o.status.code(),
            Some(2),
            "expected exit 2 for {args:?}, got {:?}: {e}",
            o.status
        );
        assert!(e.starts_with("seqflow: error: "), "{e}");
        assert!(!e.contains("panicked") && !e.contains("RUST_BACKTRACE"), "{e}");
        assert_eq!(e.trim_end().lines().count(), 1, "one paragraph: {e}");
        for p in parts {
            assert!(e.contains(p), "message lacks {p:?}: {e}");
        }
        assert!(
            !self.path("out/o.csv").exists(),
            "a failed run left an output file"
        );
        e
    }
}

fn write_parquet_cols(path: &Path, batch: arrow::array::RecordBatch) {
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn missing_feature_column_lists_what_the_file_has() {
    let c = Case::new();
    c.good_rows();
    let p = c.pipeline(
        "format = \"parquet\"\npath = \"in\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"temp\"]",
        "format = \"csv\"\npath = \"out/o.csv\"",
    );
    c.fails(
        &["run", &p],
        &["x.parquet", "feature column `temp` not found", "key, t, f0, f1"],
    );
}

#[test]
fn missing_key_column() {
    let c = Case::new();
    c.good_rows();
    let p = c.pipeline(
        "format = \"parquet\"\npath = \"in\"\nkey = \"sensor\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]",
        "format = \"csv\"\npath = \"out/o.csv\"",
    );
    c.fails(&["run", &p], &["key column `sensor` not found"]);
}

#[test]
fn mistyped_columns() {
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use std::sync::Arc;
    let c = Case::new();
    // A text feature.
    let batch = arrow::array::RecordBatch::try_from_iter([
        (
            "key",
            Arc::new(StringArray::from(vec!["a"])) as arrow::array::ArrayRef,
        ),
        ("t", Arc::new(Int64Array::from(vec![1]))),
        ("f0", Arc::new(StringArray::from(vec!["warm"]))),
        ("f1", Arc::new(Float64Array::from(vec![1.0]))),
    ])
    .unwrap();
    write_parquet_cols(&c.path("in/x.parquet"), batch);
    let p = c.standard("");
    c.fails(
        &["run", &p],
        &[
            "x.parquet",
            "column `f0` has type Utf8, expected a numeric feature",
        ],
    );
    // A float key and a text time.
    let batch = arrow::array::RecordBatch::try_from_iter([
        (
            "key",
            Arc::new(Float64Array::from(vec![1.5])) as arrow::array::ArrayRef,
        ),
        ("t", Arc::new(Int64Array::from(vec![1]))),
        ("f0", Arc::new(Float64Array::from(vec![1.0]))),
        ("f1", Arc::new(Float64Array::from(vec![1.0]))),
    ])
    .unwrap();
    write_parquet_cols(&c.path("in/x.parquet"), batch);
    c.fails(
        &["run", &p],
        &["column `key` has type Float64, expected a string or integer key"],
    );
    let batch = arrow::array::RecordBatch::try_from_iter([
        (
            "key",
            Arc::new(StringArray::from(vec!["a"])) as arrow::array::ArrayRef,
        ),
        ("t", Arc::new(StringArray::from(vec!["noon"]))),
        ("f0", Arc::new(Float64Array::from(vec![1.0]))),
        ("f1", Arc::new(Float64Array::from(vec![1.0]))),
    ])
    .unwrap();
    write_parquet_cols(&c.path("in/x.parquet"), batch);
    c.fails(
        &["run", &p],
        &["column `t` has type Utf8, expected an integer or timestamp time"],
    );
}

#[test]
fn key_types_must_agree_across_files() {
    use arrow::array::{Float32Array, Int64Array};
    use std::sync::Arc;
    let c = Case::new();
    c.good_rows();
    let batch = arrow::array::RecordBatch::try_from_iter([
        (
            "key",
            Arc::new(Int64Array::from(vec![3])) as arrow::array::ArrayRef,
        ),
        ("t", Arc::new(Int64Array::from(vec![1]))),
        ("f0", Arc::new(Float32Array::from(vec![1.0]))),
        ("f1", Arc::new(Float32Array::from(vec![1.0]))),
    ])
    .unwrap();
    write_parquet_cols(&c.path("in/y.parquet"), batch);
    c.fails(
        &["run", &c.standard("")],
        &[
            "y.parquet",
            "key column `key` has type Int64 here but Utf8 in",
            "x.parquet",
        ],
    );
}

#[test]
fn empty_and_corrupt_files() {
    let c = Case::new();
    std::fs::write(c.path("in/x.parquet"), b"").unwrap();
    let p = c.standard("");
    c.fails(&["run", &p], &["x.parquet", "the file is empty (0 bytes)"]);
    std::fs::write(
        c.path("in/x.parquet"),
        b"PAR1 this is not really parquet at all PAR1",
    )
    .unwrap();
    c.fails(&["run", &p], &["x.parquet", "not a readable Parquet file"]);
    // A truncated real file.
    c.good_rows();
    let bytes = std::fs::read(c.path("in/x.parquet")).unwrap();
    std::fs::write(c.path("in/x.parquet"), &bytes[..bytes.len() / 2]).unwrap();
    c.fails(&["run", &p], &["x.parquet", "not a readable Parquet file"]);
}

#[test]
fn unreadable_and_empty_input_paths() {
    let c = Case::new();
    let p = c.pipeline(
        "format = \"parquet\"\npath = \"nowhere/x.parquet\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]",
        "format = \"csv\"\npath = \"out/o.csv\"",
    );
    c.fails(&["run", &p], &["nowhere/x.parquet", "No such file or directory"]);
    // A directory with no Parquet files; and a glob that matches nothing.
    c.fails(
        &["run", &c.standard(""), "--input", c.path("in").to_str().unwrap()],
        &["no input files found"],
    );
    c.fails(
        &[
            "run",
            &c.standard(""),
            "--input",
            c.path("in/*.parquet").to_str().unwrap(),
        ],
        &["no input files found"],
    );
    // The pipeline file itself.
    c.fails(
        &["run", c.path("missing.toml").to_str().unwrap()],
        &["missing.toml", "No such file"],
    );
}

#[test]
fn nan_under_the_error_policy_names_row_and_column() {
    let c = Case::new();
    let rows = vec![
        Row {
            key: "a".into(),
            time: 1,
            feats: vec![0.1, 0.2],
        },
        Row {
            key: "a".into(),
            time: 2,
            feats: vec![f32::NAN, 0.2],
        },
    ];
    write_parquet(&c.path("in/x.parquet"), &rows, 10);
    c.fails(
        &["run", &c.standard("")],
        &[
            "x.parquet",
            "row 1",
            "feature `f0` is NaN",
            "key \"a\", time 2",
            "nan =",
        ],
    );
}

#[test]
fn pipeline_and_model_mismatches() {
    let c = Case::new();
    c.good_rows();
    // Three features for a two-input model.
    let p = c.pipeline(
        "format = \"parquet\"\npath = \"in\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\", \"t2\"]",
        "format = \"csv\"\npath = \"out/o.csv\"",
    );
    c.fails(&["run", &p], &["p.toml", "lists 3 features", "takes 2 inputs"]);
    // One output name for a two-output model.
    let p = c.pipeline(
        "format = \"parquet\"\npath = \"in\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]",
        "format = \"csv\"\npath = \"out/o.csv\"\nnames = [\"score\"]",
    );
    c.fails(&["run", &p], &["names has 1 entries", "outputs 2 values"]);
    // Unknown settings and missing required ones.
    let p = c.pipeline(
        "format = \"parquet\"\npath = \"in\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]\nnormalise = 1",
        "format = \"csv\"\npath = \"out/o.csv\"",
    );
    c.fails(&["run", &p], &["p.toml", "unknown field `normalise`"]);
    let p = c.pipeline(
        "format = \"parquet\"\npath = \"in\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]",
        "format = \"csv\"\npath = \"out/o.csv\"",
    );
    c.fails(&["run", &p], &["p.toml", "missing field `key`"]);
    let p = c.pipeline(
        "format = \"parquet\"\npath = \"in\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]",
        "format = \"csv\"\npath = \"out/o.csv\"\nemit = \"window\"",
    );
    c.fails(&["run", &p], &["emit = \"window\" needs `size` and `hop`"]);
    let p = c.standard("normalize = { mean = [0.0, 0.0], std = [1.0, 0.0] }");
    c.fails(&["run", &p], &["normalize.std[1] (feature `f1`) is 0"]);
}

#[test]
fn settings_of_the_other_source_kind_are_refused() {
    // A file source and a live source each take only their own settings (SourceKind).
    let c = Case::new();
    c.good_rows();
    for (extra, part) in [
        ("listen = \"127.0.0.1:0\"", "`listen` applies to live sources"),
        ("epoch_ms = 3", "`epoch_ms` applies to live sources"),
        ("max_line_bytes = 10", "`max_line_bytes` applies to live sources"),
        (
            "columns = [\"key\", \"t\", \"f0\", \"f1\"]",
            "`columns` names the fields of a live csv stream",
        ),
    ] {
        c.fails(&["run", &c.standard(extra)], &["p.toml", part]);
    }
    let live = |extra: &str| {
        c.pipeline(
            &format!("format = \"tcp\"\nlisten = \"127.0.0.1:0\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]\n{extra}"),
            "format = \"csv\"\npath = \"out/o.csv\"",
        )
    };
    c.fails(
        &["run", &live("path = \"in\"")],
        &["`path` and --input apply to file sources"],
    );
    c.fails(
        &["run", &live(""), "--input", c.path("in").to_str().unwrap()],
        &["`path` and --input apply to file sources"],
    );
    // A headerless csv stream must name every field the source reads, or no line could be read.
    c.fails(
        &[
            "run",
            &live("lines = \"csv\"\ncolumns = [\"key\", \"t\", \"f0\"]"),
        ],
        &["columns lists the stream's fields but not `f1`"],
    );
}

#[test]
fn broker_settings_are_checked_before_anything_connects() {
    // Each refused at load, naming the setting: no broker is needed to see them.
    let c = Case::new();
    c.good_rows();
    c.fails(
        &["run", &c.standard("brokers = [\"127.0.0.1:9\"]")],
        &["p.toml", "`brokers` applies to live sources"],
    );
    let src = |extra: &str| {
        format!("format = \"kafka\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]\n{extra}")
    };
    let csv_out = "format = \"csv\"\npath = \"out/o.csv\"";
    for (source, output, part) in [
        (
            src("topic = \"r\""),
            csv_out.to_string(),
            "format = \"kafka\" needs `brokers",
        ),
        (
            src("brokers = [\"127.0.0.1:9\"]"),
            csv_out.to_string(),
            "needs `brokers = [\"HOST:PORT\"]` and `topic`",
        ),
        (
            src("brokers = [\"127.0.0.1:9\"]\ntopic = \"r\"\ntopics = [\"a\"]"),
            csv_out.to_string(),
            "`topics` applies to format = \"mqtt\" only",
        ),
        (
            src("brokers = [\"127.0.0.1:9\"]\ntopic = \"r\"\nlines = \"csv\""),
            csv_out.to_string(),
            "csv lines over a broker need `columns",
        ),
        (
            src("brokers = [\"127.0.0.1:9\"]\ntopic = \"r\""),
            "format = \"kafka\"\nbrokers = [\"127.0.0.1:9\"]".to_string(),
            "[output] format = \"kafka\" needs",
        ),
        (
            src("brokers = [\"127.0.0.1:9\"]\ntopic = \"r\""),
            "format = \"csv\"\npath = \"out/o.csv\"\nbrokers = [\"127.0.0.1:9\"]".to_string(),
            "[output] `brokers` applies to format = \"kafka\"",
        ),
    ] {
        c.fails(&["run", &c.pipeline(&source, &output)], &[part]);
    }
}

#[test]
fn a_stopped_file_run_writes_no_output() {
    // The binary sets the stop flag on SIGINT/SIGTERM; a file run then fails without writing
    // its output (no file, no `.partial`).
    let c = Case::new();
    c.good_rows();
    let p = c.standard("");
    let opts = seqflow::pipeline::RunOptions {
        stop: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
        ..Default::default()
    };
    let e = seqflow::pipeline::run(Path::new(&p), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("stopped by a signal; the output was not written"),
        "{e}"
    );
    assert!(!c.path("out/o.csv").exists() && !c.path("out/o.csv.partial").exists());
}

#[test]
fn bad_worker_flags_and_hostfile() {
    let c = Case::new();
    c.good_rows();
    let p = c.standard("");
    c.fails(&["run", &p, "-w", "0"], &["-w must be at least 1"]);
    c.fails(
        &["run", &p, "-n", "2", "-p", "2"],
        &["-p 2 is not a valid process index for -n 2"],
    );
    std::fs::write(c.path("hosts"), "127.0.0.1:2101\n").unwrap();
    c.fails(
        &[
            "run",
            &p,
            "-n",
            "2",
            "-p",
            "0",
            "-h",
            c.path("hosts").to_str().unwrap(),
        ],
        &["hosts", "lists 1 address(es)"],
    );
}

#[test]
fn unwritable_output() {
    let c = Case::new();
    c.good_rows();
    std::fs::write(c.path("blocker"), b"a file where a directory should be").unwrap();
    let p = c.pipeline(
        "format = \"parquet\"\npath = \"in\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]",
        "format = \"csv\"\npath = \"blocker/o.csv\"",
    );
    c.fails(&["run", &p], &["blocker"]);
}

#[test]
fn view_config_errors_name_the_view_and_the_setting() {
    let c = Case::new();
    c.good_rows();
    std::fs::write(c.path("sites.csv"), "key,site\na,north\n").unwrap();
    std::fs::write(c.path("nokey.csv"), "sensor,site\na,north\n").unwrap();
    let base = c.standard("");
    let with_view = |body: &str| {
        let text = std::fs::read_to_string(&base).unwrap()
            + "\n[[views]]\nname = \"v\"\noutput = \"out/v.jsonl\"\n"
            + body;
        std::fs::write(&base, text).unwrap();
        base.clone()
    };
    let cases: &[(&str, &[&str])] = &[
        (
            "aggregate = \"count\"\ngroup_by = [\"site\"]\n",
            &[
                "[[views]] \"v\"",
                "group_by column `site` is neither the key `key` nor a column of the side table",
            ],
        ),
        ("aggregate = \"mean\"\n", &["aggregate = \"mean\" needs `of`"]),
        (
            "aggregate = \"max\"\nof = \"y9\"\n",
            &["`of` names `y9`, not an output (outputs: y0, y1)"],
        ),
        (
            "aggregate = \"count\"\nwhere = \"y0 >> 1\"\n",
            &["`where` operator `>>`"],
        ),
        (
            "aggregate = \"count\"\nwhere = \"score > 1\"\n",
            &["`where` names `score`, not an output"],
        ),
        (
            "aggregate = \"top_k\"\nof = \"y0\"\n",
            &["top_k\" needs `k` >= 1"],
        ),
        (
            "aggregate = \"median\"\n",
            &["[[views]] #0", "unknown variant `median`"],
        ),
        (
            "aggregate = \"count\"\njoin = \"missing.csv\"\n",
            &["missing.csv", "No such file"],
        ),
        (
            "aggregate = \"count\"\njoin = \"nokey.csv\"\n",
            &[
                "side table",
                "nokey.csv",
                "has no key column `key`",
                "sensor, site",
            ],
        ),
        (
            "aggregate = \"count\"\nwindow = { size = 10, slide = 20 }\n",
            &["window needs size > 0 and 0 < slide <= size"],
        ),
    ];
    let original = std::fs::read_to_string(&base).unwrap();
    for (body, parts) in cases {
        std::fs::write(&base, &original).unwrap();
        let p = with_view(body);
        c.fails(&["run", &p], parts);
    }
    // A correct view over the same file runs.
    std::fs::write(&base, &original).unwrap();
    let p = with_view("aggregate = \"count\"\njoin = \"sites.csv\"\ngroup_by = [\"site\"]\n");
    run_ok(&["run", &p]);
    assert!(c.path("out/v.jsonl").exists());
}

#[test]
fn parquet_output_compression_setting() {
    let c = Case::new();
    c.good_rows();
    let p = c.pipeline(
        "format = \"parquet\"\npath = \"in\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]",
        "format = \"parquet\"\npath = \"out/o.parquet\"\ncompression = \"zstd\"\nrow_group_rows = 3",
    );
    run_ok(&["run", &p]);
    let f = std::fs::File::open(c.path("out/o.parquet")).unwrap();
    let meta = parquet::file::reader::SerializedFileReader::new(f).unwrap();
    use parquet::file::reader::FileReader;
    // 4 predictions in row groups of at most 3 rows.
    assert_eq!(meta.metadata().num_row_groups(), 2);
    let rg = meta.metadata().row_group(0);
    assert_eq!(rg.num_rows(), 3);
    assert!(matches!(
        rg.column(2).compression(),
        parquet::basic::Compression::ZSTD(_)
    ));
    let p = c.pipeline(
        "format = \"parquet\"\npath = \"in\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\", \"f1\"]",
        "format = \"parquet\"\npath = \"out/o2.parquet\"\ncompression = \"lz4\"",
    );
    c.fails(&["run", &p], &["p.toml", "unknown variant `lz4`", "snappy"]);
}

#[test]
fn input_extension_picks_the_format() {
    // A Parquet pipeline given `--input x.csv` reads CSV (and `--output y.jsonl` writes JSON lines).
    let c = Case::new();
    std::fs::write(c.path("x.csv"), "key,t,f0,f1\na,1,0.1,0.2\na,2,0.3,0.4\n").unwrap();
    let p = c.standard("");
    let out = c.path("y.jsonl");
    let report = run_report(
        Path::new(&p),
        1,
        Overrides {
            input: Some(c.path("x.csv")),
            output: Some(out.clone()),
            metrics: None,
            dashboard: None,
            report: None,
        },
    );
    assert_eq!((report.stats.rows_read, report.stats.outputs), (2, 2));
    assert_eq!(report.source, "1 file");
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(text.starts_with("{\"key\":\"a\",\"t\":1,"), "{text}");
}

/// Parquet files the fuzzing bench (`benches/fuzz.rs`) found to panic the Parquet reader:
/// each is an error naming the file, as any unreadable file.
#[test]
fn parquet_files_that_panic_the_reader_are_errors_naming_them() {
    for name in ["negative-column-length.parquet", "no-dictionary-decoder.parquet"] {
        let c = Case::new();
        save_model(c.dir.path(), &causal_model(1));
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/corrupt")
            .join(name);
        std::fs::copy(&fixture, c.path("in").join(name)).unwrap();
        let p = c.pipeline(
            "format = \"parquet\"\npath = \"in\"\nkey = \"key\"\ntime = \"t\"\nfeatures = [\"f0\"]",
            "format = \"csv\"\npath = \"out/o.csv\"",
        );
        let e = c.fails(&["run", &p], &[name, "corrupt parquet file: its reader failed"]);
        assert!(!e.contains("internal error"), "{e}");
    }
}
