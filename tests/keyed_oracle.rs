//! The keyed processor against an oracle, in process (no dataflow): random keys get random
//! steps, delivered in random epochs, shuffled inside each epoch and split over several
//! batches, with re-sent steps (duplicates), steps older than what a key already processed
//! (late) and NaN features (forward-filled). For every emit mode the processor's outputs
//! must equal the model's offline form run over exactly the steps the rules accept:
//!
//! - per key, epochs in order; inside an epoch, rows by `(time, source, row)`;
//! - a step is accepted iff its time is after the key's last accepted time;
//! - a NaN feature takes the key's last finite value of that feature (0 before any).
//!
//! The oracle below is written from those rules, not from the processor's code. Each trial
//! is seeded and prints its seed on failure.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use seqflow::keyed::KeyedProcessor;
use seqflow::model::builder::ModelBuilder;
use seqflow::record::{KeyColumn, KeyRef, SinkMsg, StepBatch};
use seqflow::vocab::{Emit, NanPolicy};
use seqflow::Model;

const TOL: f32 = 1e-5;
const WIDTH: usize = 3;

/// One delivered row: which epoch and batch carry it, its place there, and its content.
#[derive(Debug, Clone)]
struct Delivery {
    epoch: usize,
    key: String,
    time: i64,
    feats: [f32; WIDTH],
    /// Position in the epoch's delivery order: becomes (source, row).
    order: u64,
}

/// Random deliveries for `keys` keys over `epochs` epochs.
fn deliveries(rng: &mut StdRng, keys: usize, epochs: usize) -> Vec<Delivery> {
    deliveries_with_gaps(rng, keys, epochs, 2)
}

/// Random deliveries whose key advances `0..jump` epochs between steps.
fn deliveries_with_gaps(rng: &mut StdRng, keys: usize, epochs: usize, jump: usize) -> Vec<Delivery> {
    let mut out = Vec::new();
    for k in 0..keys {
        let key = format!("k{k}");
        let n = rng.random_range(0..40);
        let mut time = rng.random_range(-5..5i64);
        let mut epoch = 0;
        for _ in 0..n {
            time += rng.random_range(1..4);
            // Mostly in time order across epochs; sometimes an epoch earlier than the
            // previous step's (so the earlier-timed step arrives later: late).
            epoch = (epoch + rng.random_range(0..jump)).min(epochs - 1);
            let e = if rng.random_bool(0.1) {
                epoch.saturating_sub(1)
            } else {
                epoch
            };
            let mut feats = [0f32; WIDTH];
            for f in &mut feats {
                *f = if rng.random_bool(0.1) {
                    f32::NAN
                } else {
                    rng.random_range(-1.0..1.0)
                };
            }
            out.push(Delivery {
                epoch: e,
                key: key.clone(),
                time,
                feats,
                order: 0,
            });
            if rng.random_bool(0.1) {
                // Re-sent, possibly with other values, possibly in a later epoch.
                let mut again = out.last().unwrap().clone();
                again.epoch = (e + rng.random_range(0..2)).min(epochs - 1);
                again.feats[0] += 1.0;
                out.push(again);
            }
            if rng.random_bool(0.05) {
                // A step from the past, delivered now.
                let mut old = out.last().unwrap().clone();
                old.time -= rng.random_range(1..6);
                out.push(old);
            }
        }
    }
    out.shuffle(rng);
    for (i, d) in out.iter_mut().enumerate() {
        d.order = i as u64;
    }
    out
}

/// The accepted steps per key, in processing order, features forward-filled.
fn oracle(dels: &[Delivery], epochs: usize) -> BTreeMap<String, Vec<(i64, [f32; WIDTH])>> {
    let mut acc: BTreeMap<String, Vec<(i64, [f32; WIDTH])>> = BTreeMap::new();
    let mut last: BTreeMap<String, [f32; WIDTH]> = BTreeMap::new();
    for e in 0..epochs {
        let mut rows: Vec<&Delivery> = dels.iter().filter(|d| d.epoch == e).collect();
        rows.sort_by(|a, b| (&a.key, a.time, a.order).cmp(&(&b.key, b.time, b.order)));
        for d in rows {
            let seq = acc.entry(d.key.clone()).or_default();
            if seq.last().is_some_and(|&(t, _)| d.time <= t) {
                continue;
            }
            let fill = last.entry(d.key.clone()).or_insert([0.0; WIDTH]);
            let mut f = d.feats;
            for j in 0..WIDTH {
                if f[j].is_nan() {
                    f[j] = fill[j];
                } else {
                    fill[j] = f[j];
                }
            }
            seq.push((d.time, f));
        }
    }
    acc
}

/// Runs the processor over the deliveries: each epoch's rows in 1-3 batches.
fn process(
    rng: &mut StdRng,
    p: &mut KeyedProcessor,
    dels: &[Delivery],
    epochs: usize,
) -> (Vec<SinkMsg>, u64) {
    let mut out = Vec::new();
    for e in 0..epochs {
        let rows: Vec<&Delivery> = dels.iter().filter(|d| d.epoch == e).collect();
        let n_batches = rng.random_range(1..=3);
        let mut batches: Vec<StepBatch> = (0..n_batches)
            .map(|_| StepBatch::new(0, KeyColumn::empty_str()))
            .collect();
        // Source and row are the delivery order, so (source, row) orders as `order`.
        for d in rows {
            let b = &mut batches[rng.random_range(0..n_batches)];
            b.rows.push(d.order);
            b.keys.push(KeyRef::Str(&d.key));
            b.times.push(d.time);
            b.features.extend_from_slice(&d.feats);
        }
        let refs: Vec<&StepBatch> = batches.iter().collect();
        p.process_epoch(&refs, &mut out);
    }
    p.finish(&mut out);
    let rejected = out
        .iter()
        .map(|m| match m {
            SinkMsg::Rejects(r) => r.len() as u64,
            _ => 0,
        })
        .sum();
    (out, rejected)
}

type Outputs = BTreeMap<(String, i64), Vec<f32>>;

fn outputs(msgs: &[SinkMsg]) -> Outputs {
    let mut got = Outputs::new();
    for m in msgs {
        if let SinkMsg::Rows(b) = m {
            for i in 0..b.len() {
                let KeyRef::Str(k) = b.keys.get(i) else {
                    panic!("string keys")
                };
                let v = b.values[i * b.width..(i + 1) * b.width].to_vec();
                assert!(
                    got.insert((k.to_string(), b.times[i]), v).is_none(),
                    "one output per (key, time)"
                );
            }
        }
    }
    got
}

/// What each emit mode must produce from the accepted steps, by the offline form.
fn expected(model: &Model, emit: Emit, acc: &BTreeMap<String, Vec<(i64, [f32; WIDTH])>>) -> Outputs {
    let mut want = Outputs::new();
    let run = |steps: &[(i64, [f32; WIDTH])]| {
        let x: Vec<f32> = steps.iter().flat_map(|s| s.1).collect();
        model.forward_sequence(&x, steps.len())
    };
    for (key, steps) in acc {
        if steps.is_empty() {
            continue;
        }
        match emit {
            Emit::EveryStep | Emit::SequenceEnd { all_steps: true } => {
                let o = run(steps);
                for (i, &s) in o.steps.iter().enumerate() {
                    want.insert((key.clone(), steps[s as usize].0), o.row(i).to_vec());
                }
            }
            Emit::SequenceEnd { all_steps: false } => {
                let o = run(steps);
                if let Some(&s) = o.steps.last() {
                    let i = o.steps.len() - 1;
                    want.insert((key.clone(), steps[s as usize].0), o.row(i).to_vec());
                }
            }
            Emit::Window { size, hop } => {
                for end in size..=steps.len() {
                    if (end - size) % hop == 0 {
                        let o = run(&steps[end - size..end]);
                        if let Some(last) = o.steps.len().checked_sub(1) {
                            want.insert((key.clone(), steps[end - 1].0), o.row(last).to_vec());
                        }
                    }
                }
            }
        }
    }
    want
}

fn check(seed: u64, model: &Arc<Model>, emit: Emit) {
    let mut rng = StdRng::seed_from_u64(seed);
    let epochs = rng.random_range(1..8);
    let keys = rng.random_range(1..30);
    let dels = deliveries(&mut rng, keys, epochs);
    let acc = oracle(&dels, epochs);
    let mut p = KeyedProcessor::new(model.clone(), emit, NanPolicy::Ffill, None);
    let (msgs, rejected) = process(&mut rng, &mut p, &dels, epochs);
    let accepted: usize = acc.values().map(Vec::len).sum();
    assert_eq!(
        rejected as usize + accepted,
        dels.len(),
        "seed {seed} {emit:?}: every delivery is accepted or rejected"
    );
    let got = outputs(&msgs);
    let want = expected(model, emit, &acc);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "seed {seed} {emit:?}: which (key, time) got an output"
    );
    for (k, w) in &want {
        let g = &got[k];
        let diff = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff <= TOL, "seed {seed} {emit:?} {k:?}: {g:?} vs {w:?}");
    }
}

#[test]
fn keyed_processor_equals_offline_run_of_accepted_steps() {
    let causal = Arc::new(
        ModelBuilder::new(WIDTH, 5)
            .conv1d("conv", 4, 3, 1, 1, "causal")
            .recurrent("lstm", "lstm", 5, 1)
            .linear("head", 2)
            .build()
            .unwrap(),
    );
    let strided = Arc::new(
        ModelBuilder::new(WIDTH, 6)
            .recurrent("gru", "gru", 4, 1)
            .plain("maxpool1d", "kernel = 2")
            .linear("head", 1)
            .build()
            .unwrap(),
    );
    let bidirectional = Arc::new(
        ModelBuilder::new(WIDTH, 7)
            .recurrent("gru", "gru", 4, 1)
            .with("bidirectional", true)
            .linear("head", 2)
            .build()
            .unwrap(),
    );
    for seed in 0..40 {
        for emit in [
            Emit::EveryStep,
            Emit::SequenceEnd { all_steps: false },
            Emit::SequenceEnd { all_steps: true },
            Emit::Window { size: 4, hop: 3 },
        ] {
            check(seed, &causal, emit);
        }
        check(seed, &strided, Emit::EveryStep);
        for emit in [
            Emit::SequenceEnd { all_steps: false },
            Emit::SequenceEnd { all_steps: true },
            Emit::Window { size: 5, hop: 2 },
        ] {
            check(seed, &bidirectional, emit);
        }
    }
}

// ---- Live key limits: `max_keys` and `state_ttl_ms` ----------------------------------------
//
// Rules (written from the documented behaviour, not from the processor):
// - a new key (not held) is admitted iff fewer than `limit` keys are held when its first row
//   of the epoch comes up in delivery order (batch by batch); every row of a refused key in
//   that epoch is rejected (`key_limit`);
// - a held key is "seen" in every epoch that delivers it a row;
// - after epoch `e`, a held key last seen in epoch `e - gap` or earlier is forgotten: its
//   sequence ends (sequence_end emits it), and its next row starts a new sequence from
//   nothing (fresh state, no last time, forward fill from 0).

/// The test's clock (us): epoch `e` happens at `e` seconds.
static CLOCK: AtomicU64 = AtomicU64::new(0);
const EPOCH_US: u64 = 1_000_000;

fn test_clock() -> u64 {
    CLOCK.load(Ordering::Relaxed)
}

type Steps = Vec<(i64, [f32; WIDTH])>;

/// Per key, its sequences (one per time it was admitted); rows rejected; keys forgotten.
fn limits_oracle(
    dels: &[Delivery],
    order: &[Vec<usize>],
    limit: usize,
    gap: Option<usize>,
) -> (BTreeMap<String, Vec<Steps>>, u64, u64) {
    struct Held {
        last_epoch: usize,
        fill: [f32; WIDTH],
    }
    let mut seqs: BTreeMap<String, Vec<Steps>> = BTreeMap::new();
    let mut held: BTreeMap<String, Held> = BTreeMap::new();
    let (mut refused, mut forgotten) = (0u64, 0u64);
    for (e, rows) in order.iter().enumerate() {
        let mut admitted: Vec<&str> = Vec::new();
        let mut turned_away: Vec<&str> = Vec::new();
        for &i in rows {
            let key = dels[i].key.as_str();
            if admitted.contains(&key) {
                continue;
            }
            if turned_away.contains(&key) {
                refused += 1;
                continue;
            }
            if held.contains_key(key) || held.len() < limit {
                if !held.contains_key(key) {
                    held.insert(
                        key.to_string(),
                        Held {
                            last_epoch: e,
                            fill: [0.0; WIDTH],
                        },
                    );
                    seqs.entry(key.to_string()).or_default().push(Vec::new());
                }
                admitted.push(key);
            } else {
                turned_away.push(key);
                refused += 1;
            }
        }
        let mut accepted: Vec<&Delivery> = rows
            .iter()
            .map(|&i| &dels[i])
            .filter(|d| admitted.contains(&d.key.as_str()))
            .collect();
        accepted.sort_by(|a, b| (&a.key, a.time, a.order).cmp(&(&b.key, b.time, b.order)));
        for d in accepted {
            let h = held.get_mut(&d.key).expect("admitted");
            h.last_epoch = e;
            let seq = seqs.get_mut(&d.key).unwrap().last_mut().unwrap();
            if seq.last().is_some_and(|&(t, _)| d.time <= t) {
                continue;
            }
            let mut f = d.feats;
            for (x, fill) in f.iter_mut().zip(h.fill.iter_mut()) {
                if x.is_nan() {
                    *x = *fill;
                } else {
                    *fill = *x;
                }
            }
            seq.push((d.time, f));
        }
        if let Some(gap) = gap {
            let before = held.len();
            held.retain(|_, h| e - h.last_epoch < gap);
            forgotten += (before - held.len()) as u64;
        }
    }
    (seqs, refused, forgotten)
}

fn check_limits(seed: u64, model: &Arc<Model>, emit: Emit) {
    let mut rng = StdRng::seed_from_u64(seed);
    let epochs = rng.random_range(1..14);
    let keys = rng.random_range(1..25);
    let dels = deliveries_with_gaps(&mut rng, keys, epochs, 4);
    let limit = if rng.random_bool(0.25) {
        usize::MAX
    } else {
        rng.random_range(1..=keys)
    };
    let gap = rng.random_bool(0.8).then(|| rng.random_range(1..4));
    // Forgotten after `gap` epochs of silence: a TTL between gap - 1 and gap seconds.
    let ttl_ms = gap.map(|g| g as u64 * 1000 - 500);
    let mut p = KeyedProcessor::new(model.clone(), emit, NanPolicy::Ffill, None)
        .with_key_limits(limit, ttl_ms)
        .with_clock(test_clock);
    let mut out = Vec::new();
    let mut order: Vec<Vec<usize>> = Vec::new();
    for e in 0..epochs {
        let rows: Vec<usize> = (0..dels.len()).filter(|&i| dels[i].epoch == e).collect();
        let n_batches = rng.random_range(1..=3);
        let mut split: Vec<Vec<usize>> = vec![Vec::new(); n_batches];
        for i in rows {
            split[rng.random_range(0..n_batches)].push(i);
        }
        let batches: Vec<StepBatch> = split
            .iter()
            .map(|rows| {
                let mut b = StepBatch::new(0, KeyColumn::empty_str());
                for &i in rows {
                    let d = &dels[i];
                    b.rows.push(d.order);
                    b.keys.push(KeyRef::Str(&d.key));
                    b.times.push(d.time);
                    b.features.extend_from_slice(&d.feats);
                }
                b
            })
            .collect();
        order.push(split.concat());
        CLOCK.store(e as u64 * EPOCH_US, Ordering::Relaxed);
        let refs: Vec<&StepBatch> = batches.iter().collect();
        p.process_epoch(&refs, &mut out);
        p.expire_idle(e as u64 * EPOCH_US, &mut out);
    }
    p.finish(&mut out);
    let (seqs, refused, forgotten) = limits_oracle(&dels, &order, limit, gap);
    let what = format!("seed {seed} {emit:?} limit {limit} gap {gap:?}");

    // Counters go out after every epoch and at the end: their sum is the run's.
    let mut stats = seqflow::record::Stats::default();
    for m in &out {
        if let SinkMsg::Stats(s) = m {
            stats.add(s);
        }
    }
    assert_eq!(stats.key_limit, refused, "{what}: key_limit count");
    assert_eq!(stats.keys_forgotten, forgotten, "{what}: keys forgotten");
    assert_eq!(
        stats.keys,
        seqs.values().map(|s| s.len() as u64).sum::<u64>(),
        "{what}: keys started"
    );
    let key_limit_rejects = out
        .iter()
        .map(|m| match m {
            SinkMsg::Rejects(r) => r
                .iter()
                .filter(|r| r.reason == seqflow::record::RejectReason::KeyLimit)
                .count() as u64,
            _ => 0,
        })
        .sum::<u64>();
    assert_eq!(key_limit_rejects, refused, "{what}: key_limit rejects written");

    // Per key, the outputs in emission order: each sequence's expected outputs in turn.
    let mut got: BTreeMap<String, Vec<(i64, Vec<f32>)>> = BTreeMap::new();
    for m in &out {
        if let SinkMsg::Rows(b) = m {
            for i in 0..b.len() {
                let KeyRef::Str(k) = b.keys.get(i) else {
                    panic!("string keys")
                };
                got.entry(k.to_string())
                    .or_default()
                    .push((b.times[i], b.values[i * b.width..(i + 1) * b.width].to_vec()));
            }
        }
    }
    let mut want: BTreeMap<String, Vec<(i64, Vec<f32>)>> = BTreeMap::new();
    for (key, list) in &seqs {
        for steps in list {
            let one: BTreeMap<String, Steps> = [(key.clone(), steps.clone())].into();
            for ((_, t), v) in expected(model, emit, &one) {
                want.entry(key.clone()).or_default().push((t, v));
            }
        }
    }
    want.retain(|_, v| !v.is_empty());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: keys with outputs"
    );
    for (k, w) in &want {
        let g = &got[k];
        let times = |v: &[(i64, Vec<f32>)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
        assert_eq!(times(g), times(w), "{what} {k}: output times in order");
        for ((_, a), (_, b)) in g.iter().zip(w) {
            let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            assert!(diff <= TOL, "{what} {k}: {a:?} vs {b:?}");
        }
    }
}

#[test]
fn key_limits_and_forgetting_follow_the_rules_in_every_emit_mode() {
    let causal = Arc::new(
        ModelBuilder::new(WIDTH, 5)
            .conv1d("conv", 4, 3, 1, 1, "causal")
            .recurrent("lstm", "lstm", 5, 1)
            .linear("head", 2)
            .build()
            .unwrap(),
    );
    let bidirectional = Arc::new(
        ModelBuilder::new(WIDTH, 7)
            .recurrent("gru", "gru", 4, 1)
            .with("bidirectional", true)
            .linear("head", 2)
            .build()
            .unwrap(),
    );
    for seed in 0..60 {
        for emit in [
            Emit::EveryStep,
            Emit::SequenceEnd { all_steps: false },
            Emit::SequenceEnd { all_steps: true },
            Emit::Window { size: 3, hop: 2 },
        ] {
            check_limits(seed, &causal, emit);
        }
        check_limits(seed, &bidirectional, Emit::SequenceEnd { all_steps: true });
    }
}
