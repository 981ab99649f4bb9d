//! Cost of keeping a view current: 1 M keys in 1 000 groups (a side table), views "mean score
//! per group" and "count of score > 0.5 per group", maintained by differential-dataflow as
//! predictions change, against recomputing the same aggregates from scratch.
//!
//!     cargo bench --bench views
//!
//! Prints the time to load 1 M initial predictions, then per epoch of U changed predictions
//! the incremental time (per update) next to one full recomputation over the 1 M latest values.

use std::time::Instant;

use differential_dataflow::collection::AsCollection;
use seqflow::dataflow::ToSink;
use seqflow::record::{Key, KeyColumn, KeyRef, OutBatch, SinkMsg};
use seqflow::views::flow::{latest_updates, view, SideRow};
use seqflow::views::spec::parse_views;
use seqflow::vocab::SplitMix;
use timely::dataflow::operators::{Input, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};

const KEYS: i64 = 1_000_000;
const GROUPS: i64 = 1_000;

fn batch(keys: impl Iterator<Item = (i64, f32)>) -> SinkMsg {
    let mut b = OutBatch::new(KeyColumn::Int(vec![]), 1);
    for (k, s) in keys {
        b.keys.push(KeyRef::Int(k));
        b.times.push(0);
        b.values.push(s);
    }
    SinkMsg::Rows(b)
}

fn main() {
    let text = r#"
[[views]]
name = "mean"
join = "side.csv"
group_by = ["group"]
aggregate = "mean"
of = "score"
output = "-"
[[views]]
name = "hot"
where = "score > 0.5"
join = "side.csv"
group_by = ["group"]
aggregate = "count"
output = "-"
"#;
    let v: toml::Value = toml::from_str(text).unwrap();
    let specs = parse_views(
        v["views"].as_array().unwrap(),
        std::path::Path::new("p.toml"),
        "key",
        &["score".into()],
        &|_| Ok(vec!["key".into(), "group".into()]),
    )
    .unwrap();
    timely::execute_directly(move |worker| {
        let mut preds: InputHandleVec<u64, ToSink> = InputHandleVec::new();
        let mut side: InputHandleVec<u64, (SideRow, u64, isize)> = InputHandleVec::new();
        let probe = ProbeHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let p = scope.input_from(&mut preds);
            let s = scope.input_from(&mut side).as_collection();
            let latest = latest_updates(p);
            let a = view(0, &specs[0], &latest, None, Some(&s), 0);
            let b = view(1, &specs[1], &latest, None, Some(&s), 0);
            a.concat(b).inner.probe_with(&probe);
        });
        let mut rng = SplitMix::new(1);
        let mut scores: Vec<f32> = (0..KEYS).map(|_| rng.next_f32()).collect();
        let group_of = |k: i64| k % GROUPS;
        let t = Instant::now();
        for k in 0..KEYS {
            side.send((
                (0, Key::Int(k), vec![Key::Str(format!("g{}", group_of(k)).into())]),
                0,
                1,
            ));
        }
        preds.send((0, batch((0..KEYS).map(|k| (k, scores[k as usize])))));
        preds.advance_to(1);
        side.advance_to(1);
        worker.step_while(|| probe.less_than(&1));
        println!(
            "initial load: {KEYS} keys, {GROUPS} groups: {:.2} s",
            t.elapsed().as_secs_f64()
        );

        println!("| changed predictions per epoch | incremental, per epoch | per update | full recompute | recompute / incremental |");
        println!("|---:|---:|---:|---:|---:|");
        let mut epoch = 1;
        for updates in [1usize, 100, 10_000, 100_000] {
            let reps = 5;
            let mut inc = 0.0;
            let mut rec = 0.0;
            for _ in 0..reps {
                let changed: Vec<(i64, f32)> = (0..updates)
                    .map(|_| ((rng.next_u64() % KEYS as u64) as i64, rng.next_f32()))
                    .collect();
                let t = Instant::now();
                preds.send((0, batch(changed.iter().copied())));
                epoch += 1;
                preds.advance_to(epoch);
                side.advance_to(epoch);
                worker.step_while(|| probe.less_than(&epoch));
                inc += t.elapsed().as_secs_f64();
                // The from-scratch alternative: one pass over every key's latest score.
                for &(k, s) in &changed {
                    scores[k as usize] = s;
                }
                let t = Instant::now();
                let mut sum = vec![0f64; GROUPS as usize];
                let mut n = vec![0u32; GROUPS as usize];
                let mut hot = vec![0u32; GROUPS as usize];
                for (k, &s) in scores.iter().enumerate() {
                    let g = group_of(k as i64) as usize;
                    sum[g] += s as f64;
                    n[g] += 1;
                    hot[g] += (s > 0.5) as u32;
                }
                std::hint::black_box((&sum, &n, &hot));
                rec += t.elapsed().as_secs_f64();
            }
            let (inc, rec) = (inc / reps as f64, rec / reps as f64);
            println!(
                "| {updates} | {:.3} ms | {:.2} us | {:.2} ms | {:.1}x |",
                inc * 1e3,
                inc * 1e6 / updates as f64,
                rec * 1e3,
                rec / inc
            );
        }
    });
}
