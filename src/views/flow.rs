//! The views as differential-dataflow collections.
//!
//! ```text
//! keyed_model output (per worker) --latest_updates--> (key, outputs) ±1   [latest prediction per key]
//!                                 --all_predictions-> (key, (time, outputs)) +1   [windowed views]
//! side tables (key, attributes) ±1
//!   view: filter `where` -> join side -> group -> count | reduce(sum, mean, min, max, top_k)
//!         -> (view, group, value) ±1   = the changelog
//! ```
//!
//! A new prediction of a key retracts the key's previous one, so every view always describes
//! the latest predictions; differential maintains the aggregates incrementally instead of
//! recomputing them.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use differential_dataflow::collection::AsCollection;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use super::spec::{Aggregate, GroupSource, ViewSpec};
use crate::record::ToSink;
use crate::record::{Key, SinkMsg};

/// Implements `Eq`, `Ord` (by `total_cmp`) and `Hash` (by bits) for a float newtype, so it
/// can be differential data; the three agree because `total_cmp` is equal iff bits are.
macro_rules! ordered_float {
    ($name:ident) => {
        impl PartialEq for $name {
            fn eq(&self, o: &Self) -> bool {
                self.0.to_bits() == o.0.to_bits()
            }
        }
        impl Eq for $name {}
        impl PartialOrd for $name {
            fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
                Some(self.cmp(o))
            }
        }
        impl Ord for $name {
            fn cmp(&self, o: &Self) -> Ordering {
                self.0.total_cmp(&o.0)
            }
        }
        impl Hash for $name {
            fn hash<H: Hasher>(&self, h: &mut H) {
                self.0.to_bits().hash(h)
            }
        }
    };
}

/// A prediction value as differential data.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Score(pub f32);
ordered_float!(Score);

impl Score {
    /// Wraps `x` with a single zero (`-0.0` becomes `0.0`) and a single NaN.
    pub fn new(x: f32) -> Score {
        // One zero and one NaN, so that equal scores have equal bits.
        Score(if x == 0.0 {
            0.0
        } else if x.is_nan() {
            f32::NAN
        } else {
            x
        })
    }
}

/// An f64 aggregate as differential data.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Num(pub f64);
ordered_float!(Num);

/// A view's value for a group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ViewValue {
    /// `count`: predictions in the group.
    Count(i64),
    /// `sum`, `mean`, `min` or `max` of the `of` output.
    Num(Num),
    /// One of the top k: the key and its score.
    Top(Key, Score),
}

/// A key's latest prediction: `(key, outputs)`.
pub type Latest = (Key, Vec<Score>);
/// One prediction with its event time: `(key, (time, outputs))`.
pub type Timed = (Key, (i64, Vec<Score>));
/// A view's input row: `(key, (window start, outputs))`.
type WindowedRow = (Key, (Option<i64>, Vec<Score>));
/// After the join: `(key, ((window start, outputs), side attributes))`.
type JoinedRow = (Key, ((Option<i64>, Vec<Score>), Vec<Key>));
/// Predictions of one epoch waiting for the frontier.
type Stash = BTreeMap<u64, (Capability<u64>, Vec<(Key, i64, Vec<Score>)>)>;

/// One changelog entry: `(view index, group values, value)`, with time and diff alongside.
pub type ViewRow = (u32, Vec<Key>, ViewValue);

/// A side-table row: `(table index, key, attribute values)`.
pub type SideRow = (u32, Key, Vec<Key>);

/// A view changelog entry on its way to worker 0: the row, its epoch and its diff.
pub type ViewChange = (ViewRow, u64, isize);

/// Calls `f(key, event time, outputs)` for each prediction of a sink message.
fn for_each_prediction(msg: SinkMsg, mut f: impl FnMut(Key, i64, Vec<Score>)) {
    if let SinkMsg::Rows(b) = msg {
        for i in 0..b.len() {
            let vals = b.values[i * b.width..(i + 1) * b.width]
                .iter()
                .map(|&v| Score::new(v))
                .collect();
            f(b.keys.get(i).to_owned(), b.times[i], vals);
        }
    }
}

/// Latest prediction per key as differential updates: `(key, outputs)`.
pub fn latest_updates<'s>(predictions: StreamVec<'s, u64, ToSink>) -> VecCollection<'s, u64, Latest, isize> {
    predictions
        .unary_frontier::<CapacityContainerBuilder<Vec<((Key, Vec<Score>), u64, isize)>>, _, _, _>(
            Pipeline,
            "LatestPerKey",
            |_cap, _info| {
                let mut last: HashMap<Key, (i64, Vec<Score>)> = HashMap::new();
                let mut stash: Stash = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each_stamp(|cap, data| {
                        let Some(&time) = cap.least() else { return };
                        let entry = stash.entry(time).or_insert_with(|| {
                            (cap.retain_least(output.output_index()).expect("time"), Vec::new())
                        });
                        for c in data {
                            for (_, msg) in c.drain(..) {
                                for_each_prediction(msg, |k, t, v| entry.1.push((k, t, v)));
                            }
                        }
                    });
                    while let Some(entry) = stash.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break;
                        }
                        let time = *entry.key();
                        let (cap, rows) = entry.remove();
                        // The newest prediction of each key in this epoch (by event time).
                        let mut newest: BTreeMap<Key, (i64, Vec<Score>)> = BTreeMap::new();
                        for (k, t, v) in rows {
                            match newest.get(&k) {
                                Some((t0, _)) if *t0 >= t => {}
                                _ => {
                                    newest.insert(k, (t, v));
                                }
                            }
                        }
                        let mut session = output.session(&cap);
                        for (k, (t, v)) in newest {
                            match last.get(&k) {
                                Some((t0, old)) if *t0 >= t => continue,
                                Some((_, old)) if *old == v => {}
                                Some((_, old)) => {
                                    session.give(((k.clone(), old.clone()), time, -1));
                                    session.give(((k.clone(), v.clone()), time, 1));
                                }
                                None => session.give(((k.clone(), v.clone()), time, 1)),
                            }
                            last.insert(k, (t, v));
                        }
                    }
                }
            },
        )
        .as_collection()
}

/// Every prediction as `(key, (event time, outputs))`, never retracted (windowed views).
pub fn all_predictions<'s>(predictions: StreamVec<'s, u64, ToSink>) -> VecCollection<'s, u64, Timed, isize> {
    predictions
        .unary::<CapacityContainerBuilder<Vec<((Key, (i64, Vec<Score>)), u64, isize)>>, _, _, _>(
            Pipeline,
            "AllPredictions",
            |_cap, _info| {
                move |input, output| {
                    input.for_each_stamp(|cap, data| {
                        let Some(&time) = cap.least() else { return };
                        let mut session = output.session(&cap);
                        for c in data {
                            for (_, msg) in c.drain(..) {
                                for_each_prediction(msg, |k, t, v| session.give(((k, (t, v)), time, 1)));
                            }
                        }
                    });
                }
            },
        )
        .as_collection()
}

/// Builds view `index`'s changelog collection.
pub fn view<'s>(
    index: u32,
    spec: &ViewSpec,
    latest: &VecCollection<'s, u64, Latest, isize>,
    all: Option<&VecCollection<'s, u64, Timed, isize>>,
    side: Option<&VecCollection<'s, u64, SideRow, isize>>,
    side_index: u32,
) -> VecCollection<'s, u64, ViewRow, isize> {
    // (key, (window start, outputs))
    let rows: VecCollection<'s, u64, WindowedRow, isize> = match (spec.window, all) {
        (Some(w), Some(all)) => all.clone().flat_map(move |(k, (t, v))| {
            w.starts(t)
                .map(move |s| (k.clone(), (Some(s), v.clone())))
                .collect::<Vec<_>>()
        }),
        _ => latest.clone().map(|(k, v)| (k, (None, v))),
    };
    let conds = spec.conditions.clone();
    let rows = if conds.is_empty() {
        rows
    } else {
        rows.filter(move |(_, (_, v))| {
            let x: Vec<f32> = v.iter().map(|s| s.0).collect();
            conds.iter().all(|c| c.holds(&x))
        })
    };
    // (key, ((window, outputs), attributes))
    let joined: VecCollection<'s, u64, JoinedRow, isize> = match side {
        Some(side) if spec.side.is_some() => {
            let table = side
                .clone()
                .filter(move |(t, _, _)| *t == side_index)
                .map(|(_, k, attrs)| (k, attrs));
            rows.join(table)
        }
        _ => rows.map(|(k, v)| (k, (v, Vec::new()))),
    };
    let group_by = spec.group_by.clone();
    let of = spec.of;
    // (group, (score, key))
    let grouped = joined.map(move |(k, ((ws, v), attrs))| {
        let mut g: Vec<Key> = group_by
            .iter()
            .map(|(_, src)| match src {
                GroupSource::Key => k.clone(),
                GroupSource::Side(j) => attrs[*j].clone(),
            })
            .collect();
        if let Some(s) = ws {
            g.push(Key::Int(s));
        }
        (g, (v.get(of).copied().unwrap_or(Score(0.0)), k))
    });
    let agg = spec.aggregate;
    let k_top = spec.k;
    let out: VecCollection<'s, u64, (Vec<Key>, ViewValue), isize> = match agg {
        Aggregate::Count => grouped
            .map(|(g, _)| g)
            .count()
            .map(|(g, n)| (g, ViewValue::Count(n as i64))),
        Aggregate::TopK => grouped.reduce(
            move |_g, input: &[(&(Score, Key), isize)], out: &mut Vec<(ViewValue, isize)>| {
                let mut left = k_top as isize;
                for ((score, key), c) in input.iter().rev() {
                    if left <= 0 {
                        break;
                    }
                    let take = (*c).min(left);
                    if take > 0 {
                        out.push((ViewValue::Top(key.clone(), *score), take));
                        left -= take;
                    }
                }
            },
        ),
        _ => grouped.reduce(
            move |_g, input: &[(&(Score, Key), isize)], out: &mut Vec<(ViewValue, isize)>| {
                let (mut n, mut sum) = (0isize, 0f64);
                for ((s, _), c) in input {
                    n += c;
                    sum += s.0 as f64 * *c as f64;
                }
                if n <= 0 {
                    return;
                }
                let v = match agg {
                    Aggregate::Sum => sum,
                    Aggregate::Mean => sum / n as f64,
                    // Inputs are sorted ascending by (score, key).
                    Aggregate::Min => input[0].0 .0 .0 as f64,
                    Aggregate::Max => input[input.len() - 1].0 .0 .0 as f64,
                    _ => unreachable!("count and top_k are handled above"),
                };
                out.push((ViewValue::Num(Num(v)), 1));
            },
        ),
    };
    out.map(move |(g, v)| (index, g, v))
}
