//! Oracle tests for views, in the style of differential's own `reduce_reference`: random
//! prediction streams and random side-table changes over many epochs; at every epoch the
//! changelog accumulated so far must equal the views recomputed from scratch over each
//! key's latest prediction (and the side table) as of that epoch. Same on 1 and 2 workers.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use differential_dataflow::collection::AsCollection;
use differential_dataflow::VecCollection;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use seqflow::dataflow::ToSink;
use seqflow::record::{Key, KeyColumn, KeyRef, OutBatch, SinkMsg};
use seqflow::views::flow::{all_predictions, latest_updates, view, Num, Score, SideRow, ViewRow, ViewValue};
use seqflow::views::spec::{parse_views, ViewSpec};
use timely::dataflow::operators::{Input, Inspect, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};

const KEYS: i64 = 12;
const EPOCHS: u64 = 15;

/// Views under test: count with a filter and a join, mean, min, max, sum, top_k, a window.
fn specs() -> Vec<ViewSpec> {
    let text = r#"
[[views]]
name = "hot_per_site"
where = "score > 0.5"
join = "side.csv"
group_by = ["site"]
aggregate = "count"
output = "-"
[[views]]
name = "mean_per_site"
join = "side.csv"
group_by = ["site"]
aggregate = "mean"
of = "score"
output = "-"
[[views]]
name = "min_all"
aggregate = "min"
of = "err"
output = "-"
[[views]]
name = "max_per_key"
group_by = ["k"]
aggregate = "max"
of = "score"
output = "-"
[[views]]
name = "sum_low"
where = "score <= 0.5 and err > -1"
join = "side.csv"
group_by = ["site"]
aggregate = "sum"
of = "err"
output = "-"
[[views]]
name = "top2_per_site"
join = "side.csv"
group_by = ["site"]
aggregate = "top_k"
of = "score"
k = 2
output = "-"
[[views]]
name = "hot_per_window"
where = "score > 0.3"
aggregate = "count"
window = { size = 20, slide = 10 }
output = "-"
"#;
    let v: toml::Value = toml::from_str(text).unwrap();
    let raw = v["views"].as_array().unwrap().clone();
    let names = vec!["score".to_string(), "err".to_string()];
    parse_views(&raw, Path::new("p.toml"), "k", &names, &|_| {
        Ok(vec!["k".into(), "site".into()])
    })
    .unwrap()
}

/// One epoch of input: predictions `(key, event time, score, err)` and side changes.
struct Epoch {
    preds: Vec<(i64, i64, f32, f32)>,
    side: Vec<((i64, String), isize)>,
}

fn random_stream(seed: u64) -> Vec<Epoch> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut times: HashMap<i64, i64> = HashMap::new();
    let mut site: HashMap<i64, String> = HashMap::new();
    (0..EPOCHS)
        .map(|e| {
            let mut preds = Vec::new();
            for _ in 0..rng.random_range(0..10) {
                let k = rng.random_range(0..KEYS);
                let t = times.entry(k).or_insert(0);
                *t += rng.random_range(1..8);
                // Scores from a small set, so ties and unchanged values happen.
                let score = [0.1f32, 0.3, 0.5, 0.7, 0.9][rng.random_range(0..5)];
                let err = rng.random_range(-2i32..3) as f32 * 0.5;
                preds.push((k, *t, score, err));
            }
            let mut side = Vec::new();
            // Epoch 0 maps most keys; later epochs move some keys to other sites or drop them.
            let changes = if e == 0 { KEYS } else { rng.random_range(0..3) };
            for _ in 0..changes {
                let k = if e == 0 {
                    side.len() as i64
                } else {
                    rng.random_range(0..KEYS)
                };
                if let Some(old) = site.remove(&k) {
                    side.push(((k, old), -1));
                }
                if rng.random_bool(0.85) {
                    let s = format!("s{}", rng.random_range(0..3));
                    site.insert(k, s.clone());
                    side.push(((k, s), 1));
                }
            }
            Epoch { preds, side }
        })
        .collect()
}

type State = BTreeMap<(u32, Vec<Key>, ViewValue), isize>;

/// Runs the views on `workers` threads; returns every change `(row, time, diff)`.
fn run(stream: Arc<Vec<Epoch>>, workers: usize) -> Vec<(ViewRow, u64, isize)> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let out2 = out.clone();
    let specs = Arc::new(specs());
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mut preds: InputHandleVec<u64, ToSink> = InputHandleVec::new();
        let mut side: InputHandleVec<u64, (SideRow, u64, isize)> = InputHandleVec::new();
        let probe = ProbeHandle::new();
        let out = out2.clone();
        let specs = specs.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            // Predictions reach the views on the worker owning their key, as in a pipeline.
            let p = scope.input_from(&mut preds);
            let s: VecCollection<'_, u64, SideRow, isize> = scope.input_from(&mut side).as_collection();
            let latest = latest_updates(p.clone());
            let all = all_predictions(p);
            let mut changes: Option<VecCollection<'_, u64, ViewRow, isize>> = None;
            for (i, v) in specs.iter().enumerate() {
                let c = view(i as u32, v, &latest, Some(&all), Some(&s), 0);
                changes = Some(match changes {
                    None => c,
                    Some(p) => p.concat(c),
                });
            }
            changes
                .unwrap()
                .inner
                .inspect(move |x: &(ViewRow, u64, isize)| out.lock().unwrap().push(x.clone()))
                .probe_with(&probe);
        });
        for (e, ep) in stream.iter().enumerate() {
            let e = e as u64;
            let mut batch = OutBatch::new(KeyColumn::Int(vec![]), 2);
            for &(k, t, score, err) in &ep.preds {
                // Only the key's owner sends it (a pipeline's keyed operator would).
                if (k as usize) % peers == index {
                    batch.keys.push(KeyRef::Int(k));
                    batch.times.push(t);
                    batch.values.extend([score, err]);
                }
            }
            preds.send((0, SinkMsg::Rows(batch)));
            if index == 0 {
                for ((k, s), d) in &ep.side {
                    side.send(((0, Key::Int(*k), vec![Key::Str(s.as_str().into())]), e, *d));
                }
            }
            preds.advance_to(e + 1);
            side.advance_to(e + 1);
            worker.step_while(|| probe.less_than(&(e + 1)));
        }
    })
    .unwrap()
    .join();
    let v = out.lock().unwrap().clone();
    v
}

/// The views recomputed from scratch after epoch `e`.
fn reference(stream: &[Epoch], e: usize) -> State {
    let mut latest: HashMap<i64, (i64, f32, f32)> = HashMap::new();
    let mut all: Vec<(i64, i64, f32, f32)> = Vec::new();
    let mut site: HashMap<i64, String> = HashMap::new();
    for ep in &stream[..=e] {
        for &(k, t, s, r) in &ep.preds {
            latest.insert(k, (t, s, r));
            all.push((k, t, s, r));
        }
        for ((k, s), d) in &ep.side {
            if *d > 0 {
                site.insert(*k, s.clone());
            } else {
                site.remove(k);
            }
        }
    }
    let key = |k: i64| Key::Int(k);
    let st = |s: &str| Key::Str(s.into());
    let mut out: State = BTreeMap::new();
    let mut add = |v: u32, g: Vec<Key>, val: ViewValue| *out.entry((v, g, val)).or_insert(0) += 1;
    let joined: Vec<(i64, f32, f32, String)> = latest
        .iter()
        .filter_map(|(k, (_, s, r))| site.get(k).map(|x| (*k, *s, *r, x.clone())))
        .collect();
    let mut by_site: BTreeMap<String, Vec<(i64, f32, f32)>> = BTreeMap::new();
    for (k, s, r, x) in &joined {
        by_site.entry(x.clone()).or_default().push((*k, *s, *r));
    }
    for (x, rows) in &by_site {
        let hot = rows.iter().filter(|r| r.1 > 0.5).count();
        if hot > 0 {
            add(0, vec![st(x)], ViewValue::Count(hot as i64));
        }
        let mut sorted: Vec<(Score, Key)> = rows.iter().map(|r| (Score::new(r.1), key(r.0))).collect();
        sorted.sort();
        let sum: f64 = sorted.iter().map(|(s, _)| s.0 as f64).sum();
        add(1, vec![st(x)], ViewValue::Num(Num(sum / rows.len() as f64)));
        let low: Vec<&(i64, f32, f32)> = rows.iter().filter(|r| r.1 <= 0.5 && r.2 > -1.0).collect();
        if !low.is_empty() {
            let mut errs: Vec<(Score, Key)> = low.iter().map(|r| (Score::new(r.2), key(r.0))).collect();
            errs.sort();
            add(
                4,
                vec![st(x)],
                ViewValue::Num(Num(errs.iter().map(|(s, _)| s.0 as f64).sum())),
            );
        }
        for (s, k) in sorted.iter().rev().take(2) {
            add(5, vec![st(x)], ViewValue::Top(k.clone(), *s));
        }
    }
    if let Some(min) = latest.values().map(|r| r.2).min_by(|a, b| a.total_cmp(b)) {
        add(2, vec![], ViewValue::Num(Num(min as f64)));
    }
    for (k, (_, s, _)) in &latest {
        add(3, vec![key(*k)], ViewValue::Num(Num(*s as f64)));
    }
    let mut windows: BTreeMap<i64, i64> = BTreeMap::new();
    for &(_, t, s, _) in &all {
        if s > 0.3 {
            for start in [t.div_euclid(10) * 10, t.div_euclid(10) * 10 - 10] {
                if t < start + 20 {
                    *windows.entry(start).or_insert(0) += 1;
                }
            }
        }
    }
    for (w, n) in windows {
        add(6, vec![Key::Int(w)], ViewValue::Count(n));
    }
    out
}

fn accumulate(changes: &[(ViewRow, u64, isize)], upto: u64) -> State {
    let mut st: State = BTreeMap::new();
    for ((v, g, val), t, d) in changes {
        if *t <= upto {
            *st.entry((*v, g.clone(), val.clone())).or_insert(0) += d;
        }
    }
    st.retain(|_, n| *n != 0);
    st
}

#[test]
fn changelog_equals_recomputation_at_every_epoch_on_1_and_2_workers() {
    for seed in 0..6 {
        let stream = Arc::new(random_stream(seed));
        let one = run(stream.clone(), 1);
        let two = run(stream.clone(), 2);
        for e in 0..EPOCHS as usize {
            let want = reference(&stream, e);
            let got1 = accumulate(&one, e as u64);
            assert_eq!(got1, want, "seed {seed}, epoch {e}, 1 worker");
            assert_eq!(
                accumulate(&two, e as u64),
                want,
                "seed {seed}, epoch {e}, 2 workers"
            );
        }
        assert!(!one.is_empty());
    }
}
