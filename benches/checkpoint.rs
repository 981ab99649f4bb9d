//! Checkpoint cost with a million keys on one worker: an LSTM hidden 64 (h and c: 512 B of
//! state per key, 512 MB in all) + linear head, string keys, every key one step in. Times
//! taking the part (export from the keyed state), writing it (Arrow IPC, CRC-32, fsync,
//! rename), reading it back and restoring the keyed state, and next to them, measured in
//! the same run, what this machine's disk and memory do on the same bytes: a plain
//! `write_all` + `fsync` of as many bytes, and a `memcpy` of the state.
//!
//!     cargo bench --bench checkpoint [-- --keys 1000000]

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use seqflow::checkpoint::part::{read_part, write_part};
use seqflow::keyed::KeyedProcessor;
use seqflow::model::builder::ModelBuilder;
use seqflow::record::{KeyColumn, KeyRef, StepBatch};
use seqflow::vocab::{Emit, NanPolicy, SplitMix};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let keys: usize = args
        .iter()
        .position(|a| a == "--keys")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let model = Arc::new(
        ModelBuilder::new(8, 3)
            .recurrent("lstm", "lstm", 64, 1)
            .linear("head", 1)
            .build()
            .unwrap(),
    );
    let mut p = KeyedProcessor::new(model.clone(), Emit::EveryStep, NanPolicy::Error, false);
    let mut rng = SplitMix::new(7);
    let mut batch = StepBatch::new(0, KeyColumn::empty_str());
    let names: Vec<String> = (0..keys).map(|i| format!("site{:02}-m{i:07}", i % 40)).collect();
    for (i, n) in names.iter().enumerate() {
        batch.rows.push(i as u64);
        batch.keys.push(KeyRef::Str(n));
        batch.times.push(1_700_000_000_000);
        batch.features.extend((0..8).map(|_| rng.normal()));
    }
    let mut out = Vec::new();
    p.process_epoch(&[&batch], &mut out);
    drop(out);
    let dir = tempfile::tempdir_in(std::env::var("CKPT_DIR").unwrap_or_else(|_| "target".into())).unwrap();
    let path = dir.path().join("part-0.arrow");

    let t = Instant::now();
    let rows = p.export();
    let export = t.elapsed();
    let state_bytes = rows.state.values.len() * 4;
    let t = Instant::now();
    let (bytes, _) = write_part(&path, rows).unwrap();
    let write = t.elapsed();

    println!("(IPC decode alone: {:.3} s)", ipc_only(&path));
    let t = Instant::now();
    let mut back = p.empty_rows(false);
    read_part(&path, &mut back, |_| true).unwrap();
    let read = t.elapsed();
    let t = Instant::now();
    let mut q = KeyedProcessor::new(model, Emit::EveryStep, NanPolicy::Error, false);
    q.import(&back).unwrap();
    let import = t.elapsed();
    assert_eq!(q.keys(), keys);

    // The machine, on the same bytes.
    let blob = vec![1u8; bytes as usize];
    let t = Instant::now();
    let mut f = std::fs::File::create(dir.path().join("plain.bin")).unwrap();
    f.write_all(&blob).unwrap();
    f.sync_all().unwrap();
    let disk = t.elapsed();
    let src = vec![1.0f32; state_bytes / 4];
    let t = Instant::now();
    let copy = std::hint::black_box(src.clone());
    let memcpy = t.elapsed();
    drop(copy);

    let s = |d: std::time::Duration| d.as_secs_f64();
    println!(
        "{keys} keys, LSTM h64: state {:.0} MB, part {:.0} MB",
        state_bytes as f64 / 1e6,
        bytes as f64 / 1e6
    );
    println!(
        "checkpoint: export {:.3} s + write (IPC, CRC-32, fsync) {:.3} s = {:.3} s",
        s(export),
        s(write),
        s(export + write)
    );
    println!(
        "restore:    read {:.3} s + import {:.3} s = {:.3} s",
        s(read),
        s(import),
        s(read + import)
    );
    println!(
        "machine:    write_all + fsync of {:.0} MB {:.3} s ({:.2} GB/s); memcpy of the state {:.3} s ({:.1} GB/s)",
        bytes as f64 / 1e6,
        s(disk),
        bytes as f64 / 1e9 / s(disk),
        s(memcpy),
        state_bytes as f64 / 1e9 / s(memcpy)
    );
}

#[allow(dead_code)]
fn ipc_only(path: &std::path::Path) -> f64 {
    let t = Instant::now();
    let f = std::fs::File::open(path).unwrap();
    let r =
        arrow::ipc::reader::FileReader::try_new(std::io::BufReader::with_capacity(1 << 20, f), None).unwrap();
    let mut n = 0;
    for b in r {
        n += b.unwrap().num_rows();
    }
    assert!(n > 0);
    t.elapsed().as_secs_f64()
}
