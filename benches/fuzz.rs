//! A bounded-time fuzzer for the parsers that take bytes from outside: live streams (JSON
//! lines and CSV, through the same reader a connection uses), safetensors files, and Parquet
//! files. Inputs are valid seeds mutated at random (flips, splices of troublesome tokens,
//! cuts, duplications); each target checks properties, not just "no panic":
//!
//! - streams: every non-blank line is a step or a reject (`rows = steps + rejects`); accepted
//!   features are finite (the policy is `error`); keys respect `max_key_bytes`; and the
//!   result does not depend on how the bytes arrive (1-byte to 64 KiB reads give the same
//!   steps and rejects);
//! - safetensors: a file either loads, with every tensor's data matching its shape, or is an
//!   error naming the file;
//! - Parquet: a file either reads or is an error naming it.
//!
//! A panic or a broken property is a finding: printed, saved under `target/fuzz-findings/`,
//! and the run exits 1. Not part of CI (it is random by design); run it after touching a
//! parser:
//!
//!     cargo bench --bench fuzz -- --seconds 120 [--seed N]

use std::io::Read;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use seqflow::input::live::{read_stream, LiveSource, Transport};
use seqflow::input::Columns;
use seqflow::model::weights::WeightStore;
use seqflow::record::{KeyRef, RejectReason};
use seqflow::vocab::{FileFormat, LineFormat, NanPolicy, SplitMix};

/// Tokens that have broken parsers before: quotes, separators, line ends, numbers at the
/// edges of their types, invalid UTF-8.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b",",
    b"\n",
    b"\r",
    b"\r\n",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"null",
    b"true",
    b"NaN",
    b"nan",
    b"Infinity",
    b"-inf",
    b"1e400",
    b"-1e-400",
    b"0x10",
    b"-0",
    b"9223372036854775807",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"18446744073709551616",
    b"1.7976931348623157e308",
    b" ",
    b"\t",
    b"\xff",
    b"\xc3",
    b"\xe2\x82",
    b"\"key\"",
    b"\"t\"",
    b"\"f0\"",
    b"key,t,f0,f1",
    b"\"\"",
    b"\"a\nb\"",
];

struct Rng(SplitMix);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
}

/// One to eight random mutations of `seed`.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(b.len() + 1);
        match rng.below(6) {
            0 if !b.is_empty() => {
                let i = at.min(b.len() - 1);
                b[i] ^= 1 << rng.below(8);
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                b.splice(at..at, t.iter().copied());
            }
            2 if !b.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(b.len());
                b.drain(at.min(end)..end);
            }
            3 if !b.is_empty() => {
                let start = at.min(b.len() - 1);
                let end = (start + 1 + rng.below(64)).min(b.len());
                let piece: Vec<u8> = b[start..end].to_vec();
                b.splice(at..at, piece);
            }
            4 => b.truncate(at),
            _ => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let end = (at + t.len()).min(b.len());
                b.splice(at..end, t.iter().copied());
            }
        }
    }
    b
}

/// Reads at most `max` bytes per call: the same bytes, arriving in pieces.
struct Chunked<'a> {
    data: &'a [u8],
    max: usize,
    rng: Rng,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (1 + self.rng.below(self.max)).min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// What a stream turned into, independent of how it was cut into batches.
#[derive(Debug, PartialEq)]
struct Read_ {
    steps: Vec<(String, i64, u64, Vec<u32>)>,
    rejects: Vec<(RejectReason, u64, String)>,
    rows: u64,
}

fn read_with(cfg: &LiveSource, columns: &Columns, data: &[u8], max: usize, seed: u64) -> Read_ {
    let r = Chunked {
        data,
        max,
        rng: Rng(SplitMix::new(seed)),
    };
    let mut out = Read_ {
        steps: Vec::new(),
        rejects: Vec::new(),
        rows: 0,
    };
    for routed in read_stream(cfg, columns, 2, r) {
        out.rows += routed.rows;
        for b in &routed.batches {
            for i in 0..b.len() {
                let key = match b.keys.get(i) {
                    KeyRef::Str(s) => s.to_string(),
                    KeyRef::Int(v) => format!("#{v}"),
                };
                let w = b.features.len() / b.len().max(1);
                let feats = b.features[i * w..(i + 1) * w]
                    .iter()
                    .map(|f| f.to_bits())
                    .collect();
                out.steps.push((key, b.times[i], b.rows[i], feats));
            }
        }
        out.rejects
            .extend(routed.rejects.iter().map(|r| (r.reason, r.row, r.detail.clone())));
    }
    out.steps.sort_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
    out
}

fn stream_seed(lines: LineFormat) -> Vec<u8> {
    match lines {
        LineFormat::Jsonl => (0..6)
            .map(|i| {
                format!(
                    "{{\"key\": \"s{i}\", \"t\": {}, \"f0\": {}.5, \"f1\": -0.25, \"x\": [1]}}\n",
                    10 + i,
                    i
                )
            })
            .collect::<String>()
            .into_bytes(),
        LineFormat::Csv => {
            let mut s = String::from("key,t,f0,f1\n");
            for i in 0..6 {
                s.push_str(&format!("s{i},{},{i}.5,\"-0.25\"\r\n", 10 + i));
            }
            s.into_bytes()
        }
        LineFormat::Arrow => {
            use arrow::array::{Float32Array, Int64Array, RecordBatch, StringArray};
            use arrow::datatypes::{DataType, Field, Schema};
            let schema = std::sync::Arc::new(Schema::new(vec![
                Field::new("key", DataType::Utf8, false),
                Field::new("t", DataType::Int64, false),
                Field::new("f0", DataType::Float32, true),
                Field::new("f1", DataType::Float32, true),
            ]));
            let mut out = Vec::new();
            let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema).unwrap();
            for b in 0..3i64 {
                let batch = RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        std::sync::Arc::new(StringArray::from(vec!["s0", "s1"])),
                        std::sync::Arc::new(Int64Array::from(vec![10 + b, 10 + b])),
                        std::sync::Arc::new(Float32Array::from(vec![0.5, 1.5])),
                        std::sync::Arc::new(Float32Array::from(vec![-0.25, 0.25])),
                    ],
                )
                .unwrap();
                w.write(&batch).unwrap();
            }
            w.finish().unwrap();
            drop(w);
            out
        }
    }
}

fn stream_target(data: &[u8], lines: LineFormat) -> Result<(), String> {
    let columns = Columns {
        key: "key".into(),
        time: "t".into(),
        features: vec!["f0".into(), "f1".into()],
        normalize: None,
        nan: NanPolicy::Error,
    };
    let cfg = LiveSource {
        transport: Transport::Stdin,
        lines,
        header: None,
        epoch_ms: 5,
        idle_timeout_ms: None,
        max_line_bytes: 200,
        max_connections: 1,
        drain_timeout_ms: 1000,
        max_key_bytes: 12,
        max_keys: 1000,
        state_ttl_ms: None,
    };
    let whole = read_with(&cfg, &columns, data, 1 << 16, 1);
    let steps = whole.steps.len() as u64;
    if whole.rows != steps + whole.rejects.len() as u64 {
        return Err(format!(
            "rows {} != steps {steps} + rejects {}",
            whole.rows,
            whole.rejects.len()
        ));
    }
    for (key, _, _, feats) in &whole.steps {
        if key.len() > cfg.max_key_bytes {
            return Err(format!("key of {} bytes accepted", key.len()));
        }
        if feats.iter().any(|&f| !f32::from_bits(f).is_finite()) {
            return Err(format!("non-finite feature accepted for {key:?}"));
        }
    }
    for max in [1, 3, 17] {
        let cut = read_with(&cfg, &columns, data, max, max as u64);
        if cut != whole {
            return Err(format!(
                "reads of at most {max} bytes differ from whole reads:\n  whole {whole:?}\n  cut   {cut:?}"
            ));
        }
    }
    Ok(())
}

fn safetensors_seed() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    seqflow::model::builder::ModelBuilder::new(2, 1)
        .conv1d("conv", 3, 2, 1, 1, "causal")
        .recurrent("gru", "gru", 3, 1)
        .linear("head", 1)
        .save(dir.path(), "m")
        .unwrap();
    std::fs::read(dir.path().join("m.safetensors")).unwrap()
}

/// Mostly the header (its length prefix and JSON) mutated, where the structure is.
fn safetensors_input(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let header_end = 8 + u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
    if rng.chance(0.8) {
        let mut head = mutate(rng, &seed[..header_end]);
        if rng.chance(0.5) && head.len() >= 8 {
            // Keep the length prefix consistent with the mutated header, sometimes.
            let n = (head.len() - 8) as u64;
            head[..8].copy_from_slice(&n.to_le_bytes());
        }
        head.extend_from_slice(&seed[header_end..]);
        head
    } else {
        mutate(rng, seed)
    }
}

fn safetensors_target(data: &[u8]) -> Result<(), String> {
    let path = Path::new("fuzz.safetensors");
    match WeightStore::from_bytes(data, path) {
        Ok(store) => {
            for name in store.names_with_prefix("").map(String::from).collect::<Vec<_>>() {
                let t = store.peek(&name).expect("listed");
                let n: usize = t.shape.iter().product();
                if t.data.len() != n {
                    return Err(format!(
                        "tensor {name}: shape {:?} but {} values",
                        t.shape,
                        t.data.len()
                    ));
                }
            }
            Ok(())
        }
        Err(e) if e.to_string().contains("fuzz.safetensors") => Ok(()),
        Err(e) => Err(format!("error does not name the file: {e}")),
    }
}

fn parquet_seed(dir: &Path) -> Vec<u8> {
    use arrow::array::{ArrayRef, Float32Array, Int64Array, RecordBatch, StringArray};
    use std::sync::Arc;
    let batch = RecordBatch::try_from_iter(vec![
        (
            "key",
            Arc::new(StringArray::from_iter_values(
                (0..40).map(|i| format!("k{}", i % 5)),
            )) as ArrayRef,
        ),
        ("t", Arc::new(Int64Array::from_iter_values(0..40)) as ArrayRef),
        (
            "f0",
            Arc::new(Float32Array::from_iter_values((0..40).map(|i| i as f32 * 0.5))) as ArrayRef,
        ),
    ])
    .unwrap();
    let path = dir.join("seed.parquet");
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    std::fs::read(path).unwrap()
}

fn parquet_target(data: &[u8], dir: &Path) -> Result<(), String> {
    let path = dir.join("fuzz.parquet");
    std::fs::write(&path, data).unwrap();
    match seqflow::input::files::read_all(&path, FileFormat::Parquet) {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("fuzz.parquet") => Ok(()),
        Err(e) => Err(format!("error does not name the file: {e}")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let seconds = arg("--seconds").unwrap_or(60);
    let seed = arg("--seed").unwrap_or_else(|| seqflow::vocab::now_us() ^ std::process::id() as u64);
    println!("fuzz: {seconds} s, seed {seed}");
    // Panics are findings, reported below; keep the default hook's output away.
    std::panic::set_hook(Box::new(|_| {}));
    let dir = tempfile::tempdir().unwrap();
    let st_seed = safetensors_seed();
    let pq_seed = parquet_seed(dir.path());
    let (json_seed, csv_seed) = (stream_seed(LineFormat::Jsonl), stream_seed(LineFormat::Csv));
    let arrow_seed = stream_seed(LineFormat::Arrow);
    let findings_dir = PathBuf::from("target/fuzz-findings");
    let mut rng = Rng(SplitMix::new(seed));
    let targets = [
        "jsonl stream",
        "csv stream",
        "safetensors",
        "parquet",
        "arrow stream",
    ];
    let mut runs = [0u64; 5];
    let mut findings = 0;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline && findings < 20 {
        let t = rng.below(targets.len());
        let input = match t {
            0 => mutate(&mut rng, &json_seed),
            1 => mutate(&mut rng, &csv_seed),
            2 => safetensors_input(&mut rng, &st_seed),
            4 => mutate(&mut rng, &arrow_seed),
            _ => mutate(&mut rng, &pq_seed),
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| match t {
            0 => stream_target(&input, LineFormat::Jsonl),
            1 => stream_target(&input, LineFormat::Csv),
            2 => safetensors_target(&input),
            4 => stream_target(&input, LineFormat::Arrow),
            _ => parquet_target(&input, dir.path()),
        }));
        runs[t] += 1;
        let problem = match result {
            Ok(Ok(())) => continue,
            Ok(Err(msg)) => msg,
            Err(p) => format!(
                "panic: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            ),
        };
        findings += 1;
        std::fs::create_dir_all(&findings_dir).unwrap();
        let file = findings_dir.join(format!("{}-{seed}-{}", targets[t].replace(' ', "-"), runs[t]));
        std::fs::write(&file, &input).unwrap();
        let shown = if t < 2 {
            format!("\n  input: {:?}", String::from_utf8_lossy(&input))
        } else {
            String::new()
        };
        println!(
            "FINDING in {} (saved as {}): {problem}{shown}",
            targets[t],
            file.display()
        );
    }
    let total: u64 = runs.iter().sum();
    let per: Vec<String> = targets
        .iter()
        .zip(runs)
        .map(|(n, r)| format!("{n} {r}"))
        .collect();
    println!("fuzz: {total} cases ({}), {findings} findings", per.join(", "));
    if findings > 0 {
        std::process::exit(1);
    }
}
