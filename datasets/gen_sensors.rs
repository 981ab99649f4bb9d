//! Generates a realistic multi-sensor dataset as Parquet: many machines, each reporting 8
//! correlated channels on a fixed interval, with daily cycles of temperature and load, slow
//! drifts, noise, occasional missing readings (NaN) and re-sent duplicates, and injected
//! anomalies with labels. Deterministic for a given seed.
//!
//! ```sh
//! cargo run --release --bin gen-sensors -- --sensors 50 --days 3 --interval-s 300 \
//!     --out datasets/sample/sensors.parquet
//! cargo run --release --bin gen-sensors -- --sensors 2000 --days 30 --files 8 \
//!     --out datasets/generated/big          # ~17 M rows at 5-minute readings, 8 files
//! ```
//!
//! Columns: sensor_id (string), ts (int64, ms since the Unix epoch), temp, vib_x, vib_y,
//! current, pressure, humidity, rpm, power (float32), label (int8: 1 inside an anomaly),
//! anomaly (string: "", "spike", "stuck", "vibration", "overheat").
//! A side table `<out>.meta.csv` maps sensor_id to site and machine type.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int64Array, Int8Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use seqflow::vocab::SplitMix;

const CHANNELS: [&str; 8] = [
    "temp", "vib_x", "vib_y", "current", "pressure", "humidity", "rpm", "power",
];
const KINDS: [&str; 4] = ["spike", "stuck", "vibration", "overheat"];
const START_MS: i64 = 1_700_000_000_000;

struct Args {
    sensors: usize,
    days: f64,
    interval_s: u64,
    seed: u64,
    files: usize,
    row_group_rows: usize,
    missing: f64,
    duplicates: f64,
    anomalies_per_day: f64,
    out: PathBuf,
}

fn parse_args() -> Args {
    let mut a = Args {
        sensors: 50,
        days: 3.0,
        interval_s: 300,
        seed: 42,
        files: 1,
        row_group_rows: 100_000,
        missing: 0.0005,
        duplicates: 0.0002,
        anomalies_per_day: 0.6,
        out: PathBuf::from("datasets/generated/sensors.parquet"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        let num = |s: &str| -> f64 {
            s.parse()
                .unwrap_or_else(|_| die(&format!("{} needs a number, got {s:?}", args[i])))
        };
        match args[i].as_str() {
            "--sensors" => a.sensors = num(&v) as usize,
            "--days" => a.days = num(&v),
            "--interval-s" => a.interval_s = num(&v) as u64,
            "--seed" => a.seed = num(&v) as u64,
            "--files" => a.files = (num(&v) as usize).max(1),
            "--row-group-rows" => a.row_group_rows = (num(&v) as usize).max(1),
            "--missing" => a.missing = num(&v),
            "--duplicates" => a.duplicates = num(&v),
            "--anomalies-per-day" => a.anomalies_per_day = num(&v),
            "--out" => a.out = PathBuf::from(v),
            "--help" | "-h" => {
                println!(
                    "gen-sensors: machine telemetry as Parquet (8 channels, NaN gaps, re-sent rows, labelled anomalies)

  --sensors N             machines (default 50)
  --days D                days of readings (default 3)
  --interval-s S          seconds between readings (default 300): rows = sensors x days x 86400 / S
  --seed N                the dataset for a given seed is always the same (default 42)
  --files N               split into N files of a directory (default 1: one file)
  --row-group-rows N      Parquet rows per row group (default 100000)
  --missing P             share of readings with a NaN channel (default 0.0005)
  --duplicates P          share of readings sent twice (default 0.0002)
  --anomalies-per-day R   anomalies per machine and day (default 0.6)
  --out PATH              file, or directory with --files (default datasets/generated/sensors.parquet)

  gen-sensors --sensors 50 --days 3 --out datasets/sample/sensors.parquet      # 43,209 rows
  gen-sensors --sensors 2000 --days 30 --files 8 --out datasets/generated/big  # ~17 M rows"
                );
                std::process::exit(0);
            }
            other => die(&format!("unknown flag {other}; see --help")),
        }
        i += 2;
    }
    if a.sensors == 0 || a.days <= 0.0 || a.interval_s == 0 {
        die("--sensors, --days and --interval-s must be positive");
    }
    a
}

fn die(msg: &str) -> ! {
    eprintln!("gen-sensors: {msg}");
    std::process::exit(2)
}

/// One machine's fixed traits.
struct Machine {
    id: String,
    site: usize,
    kind: &'static str,
    offset_ms: i64,
    base_temp: f32,
    daily_amp: f32,
    drift_per_day: f32,
    max_rpm: f32,
    shift_start: f32,
    /// Anomaly windows: (first step, last step, kind index).
    anomalies: Vec<(u64, u64, usize)>,
}

fn machines(a: &Args, steps: u64, rng: &mut SplitMix) -> Vec<Machine> {
    let sites = a.sensors.div_ceil(40).max(1);
    let types = ["pump", "compressor", "fan", "press"];
    (0..a.sensors)
        .map(|i| {
            let site = i % sites;
            let mut anomalies = Vec::new();
            let expected = a.anomalies_per_day * a.days;
            // Poisson-ish count by thinning.
            let n = (0..(expected * 4.0).ceil() as usize)
                .filter(|_| rng.next_f32() < 0.25)
                .count();
            for _ in 0..n {
                let kind = (rng.next_u64() % 4) as usize;
                let len = match kind {
                    0 => 2 + rng.next_u64() % 6,
                    1 => 20 + rng.next_u64() % 80,
                    2 => 10 + rng.next_u64() % 40,
                    _ => 30 + rng.next_u64() % 90,
                };
                if steps > len + 20 {
                    let start = 10 + rng.next_u64() % (steps - len - 10);
                    anomalies.push((start, start + len - 1, kind));
                }
            }
            Machine {
                id: format!("site{site:02}-m{i:05}"),
                site,
                kind: types[i % types.len()],
                offset_ms: (rng.next_u64() % (a.interval_s * 1000 / 2).max(1)) as i64,
                base_temp: 18.0 + 4.0 * rng.normal() + site as f32 * 0.7,
                daily_amp: 2.0 + 3.0 * rng.next_f32(),
                drift_per_day: 0.3 * rng.normal(),
                max_rpm: 1200.0 + 1800.0 * rng.next_f32(),
                shift_start: 5.0 + 4.0 * rng.next_f32(),
                anomalies,
            }
        })
        .collect()
}

/// Generator state of one machine between steps.
#[derive(Clone, Copy, Default)]
struct Live {
    load: f32,
    stuck: Option<[f32; 8]>,
}

fn reading(m: &Machine, live: &mut Live, step: u64, hours: f32, rng: &mut SplitMix) -> ([f32; 8], i8, usize) {
    let tod = hours % 24.0;
    // Machine load: working shift of ~10 h with noise, occasional idle periods.
    let in_shift = tod >= m.shift_start && tod < m.shift_start + 10.0;
    let target = if in_shift { 0.75 } else { 0.2 } + 0.1 * rng.normal();
    live.load += 0.15 * (target - live.load);
    let load = live.load.clamp(0.0, 1.0);
    let days = hours / 24.0;
    let ambient = m.base_temp + m.daily_amp * (std::f32::consts::TAU * (tod - 15.0) / 24.0).cos();
    let mut temp = ambient + 6.0 * load + m.drift_per_day * days + 0.3 * rng.normal();
    let rpm = m.max_rpm * load + 15.0 * rng.normal();
    let current = 1.5 + 9.0 * load + 0.12 * rng.normal();
    let mut vib_x = 0.015 + 0.03 * rpm / m.max_rpm + 0.004 * rng.normal();
    let mut vib_y = 0.8 * vib_x + 0.003 * rng.normal();
    let pressure = 101.3 + 0.6 * load + 0.05 * rng.normal();
    let humidity = 55.0 - 1.2 * (temp - m.base_temp) + 1.0 * rng.normal();
    let mut power = 0.23 * current * (0.9 + 0.1 * load) + 0.02 * rng.normal();
    let mut current = current;
    let active = m.anomalies.iter().find(|(s, e, _)| step >= *s && step <= *e);
    let (label, kind) = match active {
        None => {
            live.stuck = None;
            (0, usize::MAX)
        }
        Some(&(s, e, k)) => {
            let frac = (step - s) as f32 / (e - s + 1) as f32;
            match k {
                0 => temp += 9.0 + 4.0 * rng.next_f32(),
                1 => {}
                2 => {
                    let f = 4.0 + 3.0 * rng.next_f32();
                    vib_x *= f;
                    vib_y *= f;
                }
                _ => {
                    temp += 12.0 * frac;
                    current += 2.5 * frac;
                    power += 0.6 * frac;
                }
            }
            (1, k)
        }
    };
    let mut v = [temp, vib_x, vib_y, current, pressure, humidity, rpm, power];
    if kind == 1 {
        // A stuck sensor repeats its last values exactly.
        v = *live.stuck.get_or_insert(v);
    }
    (v, label, kind)
}

struct Columns {
    ids: Vec<String>,
    ts: Vec<i64>,
    ch: [Vec<f32>; 8],
    label: Vec<i8>,
    kind: Vec<&'static str>,
}

impl Columns {
    fn new() -> Columns {
        Columns {
            ids: Vec::new(),
            ts: Vec::new(),
            ch: Default::default(),
            label: Vec::new(),
            kind: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.ts.len()
    }

    fn take(&mut self, schema: &Arc<Schema>) -> RecordBatch {
        let c = std::mem::replace(self, Columns::new());
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(c.ids)),
            Arc::new(Int64Array::from(c.ts)),
        ];
        for ch in c.ch {
            cols.push(Arc::new(Float32Array::from(ch)));
        }
        cols.push(Arc::new(Int8Array::from(c.label)));
        cols.push(Arc::new(StringArray::from(c.kind)));
        RecordBatch::try_new(schema.clone(), cols).expect("schema matches")
    }
}

fn writer(path: &Path, schema: &Arc<Schema>, rg: usize) -> ArrowWriter<File> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).unwrap_or_else(|e| die(&format!("{}: {e}", d.display())));
    }
    let f = File::create(path).unwrap_or_else(|e| die(&format!("{}: {e}", path.display())));
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(rg))
        .build();
    ArrowWriter::try_new(f, schema.clone(), Some(props)).expect("writer")
}

fn main() {
    let a = parse_args();
    let steps = (a.days * 86_400.0 / a.interval_s as f64).round() as u64;
    let mut rng = SplitMix::new(a.seed);
    let ms = machines(&a, steps, &mut rng);
    let mut fields = vec![
        Field::new("sensor_id", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
    ];
    fields.extend(CHANNELS.iter().map(|c| Field::new(*c, DataType::Float32, true)));
    fields.push(Field::new("label", DataType::Int8, false));
    fields.push(Field::new("anomaly", DataType::Utf8, false));
    let schema = Arc::new(Schema::new(fields));

    let paths: Vec<PathBuf> = if a.files == 1 {
        vec![a.out.clone()]
    } else {
        (0..a.files)
            .map(|f| a.out.join(format!("part-{f:03}.parquet")))
            .collect()
    };
    let steps_per_file = steps.div_ceil(a.files as u64);
    let mut live = vec![Live::default(); ms.len()];
    let mut cols = Columns::new();
    let (mut rows, mut anomalous, mut dups, mut missing) = (0u64, 0u64, 0u64, 0u64);
    let mut w = writer(&paths[0], &schema, a.row_group_rows);
    let mut file = 0;
    for step in 0..steps {
        if step / steps_per_file != file as u64 {
            if cols.len() > 0 {
                w.write(&cols.take(&schema)).expect("write");
            }
            w.close().expect("close");
            file += 1;
            w = writer(&paths[file], &schema, a.row_group_rows);
        }
        let hours = (step * a.interval_s) as f32 / 3600.0;
        for (i, m) in ms.iter().enumerate() {
            let (mut v, label, kind) = reading(m, &mut live[i], step, hours, &mut rng);
            for x in v.iter_mut() {
                if rng.next_f32() < a.missing as f32 {
                    *x = f32::NAN;
                    missing += 1;
                }
            }
            let ts = START_MS + (step * a.interval_s * 1000) as i64 + m.offset_ms;
            let copies = if rng.next_f32() < a.duplicates as f32 {
                2
            } else {
                1
            };
            dups += copies - 1;
            for _ in 0..copies {
                cols.ids.push(m.id.clone());
                cols.ts.push(ts);
                for (c, x) in cols.ch.iter_mut().zip(v) {
                    c.push(x);
                }
                cols.label.push(label);
                cols.kind.push(if label == 1 { KINDS[kind] } else { "" });
                rows += 1;
                anomalous += label as u64;
            }
        }
        if cols.len() >= 65_536 {
            w.write(&cols.take(&schema)).expect("write");
        }
    }
    if cols.len() > 0 {
        w.write(&cols.take(&schema)).expect("write");
    }
    w.close().expect("close");

    let meta = {
        let mut s = a.out.clone().into_os_string();
        s.push(".meta.csv");
        PathBuf::from(s)
    };
    let mut text = String::from("sensor_id,site,machine_type\n");
    for m in &ms {
        text.push_str(&format!("{},site{:02},{}\n", m.id, m.site, m.kind));
    }
    std::fs::write(&meta, text).unwrap_or_else(|e| die(&format!("{}: {e}", meta.display())));
    eprintln!(
        "gen-sensors: {rows} rows ({} sensors x {steps} steps, {dups} re-sent duplicates, {missing} missing values), \
         {:.2}% of rows inside anomalies -> {} ({} file{}), side table {}",
        ms.len(),
        100.0 * anomalous as f64 / rows as f64,
        a.out.display(),
        paths.len(),
        if paths.len() == 1 { "" } else { "s" },
        meta.display()
    );
}
