//! `seqflow::session`: batches pushed into a session, over any split and any worker count,
//! and through a save and a load, give the CLI's predictions bit for bit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float32Type, Int64Type, TimestampMicrosecondType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use seqflow::pipeline::{Overrides, PipelineConfig};
use seqflow::session::{Session, SessionConfig};
use seqflow::Model;

mod common;
use common::pipeline::seqflow;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let f = std::fs::File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .with_batch_size(4096)
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// (key, time) -> the score's bits, for exact comparison whatever the row order.
fn scores(batches: &[RecordBatch]) -> BTreeMap<(String, i64), u32> {
    let mut m = BTreeMap::new();
    for b in batches {
        let keys = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        let keys = keys.as_string::<i32>();
        let times = b.column(1);
        let times: Vec<i64> = match times.data_type() {
            arrow::datatypes::DataType::Int64 => times.as_primitive::<Int64Type>().values().to_vec(),
            _ => times.as_primitive::<TimestampMicrosecondType>().values().to_vec(),
        };
        let vals = b.column(2).as_primitive::<Float32Type>();
        for (i, &t) in times.iter().enumerate() {
            let prev = m.insert((keys.value(i).to_string(), t), vals.value(i).to_bits());
            assert!(prev.is_none(), "a prediction twice");
        }
    }
    m
}

fn demo() -> (Arc<Model>, SessionConfig) {
    let cfg = PipelineConfig::load(&root().join("pipelines/demo.toml"), &Overrides::default()).unwrap();
    let model = Arc::new(Model::load(&cfg.model_path).unwrap());
    let s = SessionConfig {
        columns: cfg.source.columns.clone(),
        emit: cfg.output.emit,
        names: cfg.output.names.clone(),
        workers: 1,
    };
    (model, s)
}

/// The demo pipeline run by the binary, its rejects and output in `dir` (tests run at once).
fn cli_demo(dir: &Path) -> BTreeMap<(String, i64), u32> {
    let text = std::fs::read_to_string(root().join("pipelines/demo.toml"))
        .unwrap()
        .replace(
            "../out/demo_rejects.jsonl",
            dir.join("rejects.jsonl").to_str().unwrap(),
        )
        .replace("\"../", &format!("\"{}/", root().display()));
    let pipeline = dir.join("demo.toml");
    std::fs::write(&pipeline, text).unwrap();
    let out = dir.join("demo.parquet");
    let o = seqflow(&[
        "run",
        pipeline.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    scores(&read_parquet(&out))
}

fn sample() -> RecordBatch {
    let batches = read_parquet(&root().join("datasets/sample/sensors.parquet"));
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

/// Splits `all` at `cuts` (row numbers) and pushes each piece.
fn push_split(s: &mut Session, all: &RecordBatch, cuts: &[usize]) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&all.num_rows())) {
        let p = s.push(&all.slice(at, c - at)).unwrap();
        out.push(p.predictions);
        at = c;
    }
    out.push(s.finish().unwrap().predictions);
    out
}

#[test]
fn pushes_over_any_split_and_worker_count_equal_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let want = cli_demo(dir.path());
    let all = sample();
    let n = all.num_rows();
    let (model, cfg) = demo();
    for (workers, cuts) in [
        (1, vec![]),
        (1, vec![1, 2, 777, n / 2, n - 1]),
        (3, vec![5000, 5001, 20_000]),
        (2, (1..40).map(|i| i * n / 40).collect()),
    ] {
        let mut s = Session::new(
            model.clone(),
            SessionConfig {
                workers,
                ..cfg.clone()
            },
        )
        .unwrap();
        let got = scores(&push_split(&mut s, &all, &cuts));
        assert_eq!(got.len(), want.len(), "-w {workers}, cuts {cuts:?}");
        assert!(
            got == want,
            "-w {workers}, cuts {cuts:?}: predictions differ from the CLI's"
        );
        let st = s.stats();
        assert_eq!(st.rows_read, n as u64);
        assert_eq!(st.outputs, want.len() as u64);
        assert_eq!(s.keys().len(), 50);
    }
}

#[test]
fn a_saved_session_goes_on_where_it_stopped_with_any_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let want = cli_demo(dir.path());
    let all = sample();
    let half = all.num_rows() / 2 + 17;
    let (model, cfg) = demo();
    let mut first = Session::new(
        model.clone(),
        SessionConfig {
            workers: 2,
            ..cfg.clone()
        },
    )
    .unwrap();
    let mut got = vec![first.push(&all.slice(0, half)).unwrap().predictions];
    let saves = dir.path().join("state");
    first.save(&saves).unwrap();
    // `seqflow checkpoint` lists the save like a pipeline's.
    let o = seqflow(&["checkpoint", saves.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A first push with another time type is refused: times of another unit would be
    // compared with the restored ones.
    let cfg1 = SessionConfig {
        workers: 1,
        ..cfg.clone()
    };
    let mut wrong = Session::load(&saves, model.clone(), cfg1.clone()).unwrap();
    let rest = all.slice(half, 10);
    let t_at = rest.schema().index_of("ts").unwrap();
    let mut cols = rest.columns().to_vec();
    let ms = arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None);
    cols[t_at] = arrow::compute::cast(&cols[t_at], &ms).unwrap();
    let mut fields: Vec<_> = rest
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields[t_at] = arrow::datatypes::Field::new("ts", ms, false);
    let other_time = RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), cols).unwrap();
    let e = wrong.push(&other_time).unwrap_err().to_string();
    assert!(e.contains("saved with"), "{e}");
    // Saving a loaded session before any push keeps the types it was saved with.
    let resaved = dir.path().join("resaved");
    Session::load(&saves, model.clone(), cfg1.clone())
        .unwrap()
        .save(&resaved)
        .unwrap();
    let mut again = Session::load(&resaved, model.clone(), cfg1.clone()).unwrap();
    let e = again.push(&other_time).unwrap_err().to_string();
    assert!(e.contains("saved with"), "{e}");
    // A loaded session can be finished at once: the output has the saved types.
    let cfg2 = SessionConfig {
        workers: 2,
        ..cfg.clone()
    };
    let mut idle = Session::load(&saves, model.clone(), cfg2).unwrap();
    let done = idle.finish().unwrap().predictions;
    assert_eq!(done.num_rows(), 0);
    assert_eq!(
        done.schema().field(1).data_type(),
        all.schema().field(t_at).data_type()
    );
    let mut second = Session::load(
        &saves,
        model.clone(),
        SessionConfig {
            workers: 3,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert_eq!(second.keys().len(), 50);
    got.push(
        second
            .push(&all.slice(half, all.num_rows() - half))
            .unwrap()
            .predictions,
    );
    assert!(scores(&got) == want, "save + load changed the predictions");
    assert_eq!(second.stats().rows_read, all.num_rows() as u64);

    // Another normalization (or model, columns, emit) is refused, naming it.
    let mut other = cfg.clone();
    other.columns.normalize = None;
    let e = Session::load(&saves, model, other)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("normalize"), "{e}");
}

#[test]
fn bad_batches_are_refused_whole_with_the_column_named() {
    let (model, cfg) = demo();
    let all = sample();
    let mut s = Session::new(model.clone(), cfg.clone()).unwrap();
    let no_temp = all.project(&[0, 1, 3, 4, 5, 6, 7, 8, 9]).unwrap();
    let names: Vec<_> = no_temp
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert!(!names.contains(&"temp".to_string()), "{names:?}");
    let e = s.push(&no_temp).unwrap_err().to_string();
    assert!(e.contains("temp"), "{e}");
    assert_eq!(s.stats().rows_read, 0, "nothing of a refused batch is run");

    // The first batch fixes the key and time types.
    s.push(&all.slice(0, 100)).unwrap();
    let mut cols: Vec<Arc<dyn Array>> = all.slice(100, 10).columns().to_vec();
    let key_at = all.schema().index_of("sensor_id").unwrap();
    cols[key_at] = Arc::new(arrow::array::Int64Array::from_iter_values(0..10));
    let mut fields: Vec<_> = all.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields[key_at] = arrow::datatypes::Field::new("sensor_id", arrow::datatypes::DataType::Int64, false);
    let int_keys = RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), cols).unwrap();
    let e = s.push(&int_keys).unwrap_err().to_string();
    assert!(e.contains("sensor_id") && e.contains("first batch"), "{e}");

    // A model that needs every step refuses every_step, as a pipeline does.
    let mut wrong = cfg.clone();
    wrong.columns.features.pop();
    let e = Session::new(model, wrong).err().expect("refused").to_string();
    assert!(e.contains("7 features"), "{e}");
}
