//! Epoch ordering: the steps of one completed epoch grouped by key and put in time order,
//! late and duplicate steps rejected against each key's last processed time, and NaN
//! features forward-filled, so the emitters see only accepted steps, key by key.

use super::index::KeyIndex;
use crate::input::fill_forward;
use crate::record::{Reject, RejectReason, Stats, StepBatch};

/// One pending row of the epoch being ordered.
#[derive(Debug, Clone, Copy)]
struct Pending {
    key: u32,
    time: i64,
    source: u32,
    row: u64,
    batch: u32,
    idx: u32,
}

/// A key's run of accepted steps in this epoch: steps `start..start + len`.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// The key's index.
    pub key: u32,
    /// First step of the run in [`Accepted`].
    pub start: usize,
    /// Number of steps.
    pub len: usize,
}

/// The accepted steps of one epoch, key by key, each key's steps in time order.
#[derive(Debug, Default)]
pub struct Accepted {
    /// Features per step.
    pub width: usize,
    /// `steps x width` prepared (and forward-filled) features.
    pub feats: Vec<f32>,
    /// Time of each step.
    pub times: Vec<i64>,
    /// Arrival of each step (live; 0 for files).
    pub arrivals: Vec<u64>,
    /// One run per key with accepted steps, in key order.
    pub runs: Vec<Run>,
}

impl Accepted {
    /// Features of step `a`.
    #[inline]
    pub fn row(&self, a: usize) -> &[f32] {
        &self.feats[a * self.width..(a + 1) * self.width]
    }

    /// Number of accepted steps.
    pub fn len(&self) -> usize {
        self.times.len()
    }

    /// Whether no step was accepted.
    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }
}

/// Per-key ordering state: the last processed time and forward-fill values.
#[derive(Debug, Default)]
pub struct Sequencer {
    width: usize,
    last_time: Vec<i64>,
    has_time: Vec<bool>,
    /// `keys x width` last finite values, when the NaN policy forward-fills.
    ffill: Option<Vec<f32>>,
    pending: Vec<Pending>,
    /// Scratch of [`Self::sort_pending`]'s counting sort, kept to reuse its allocation.
    sorted: Vec<Pending>,
    /// Per key: rows pending, then where its run starts.
    counts: Vec<u32>,
}

impl Sequencer {
    /// State for steps of `width` features; `ffill` keeps the last finite values per key.
    pub fn new(width: usize, ffill: bool) -> Sequencer {
        Sequencer {
            width,
            ffill: ffill.then(Vec::new),
            ..Sequencer::default()
        }
    }

    /// Starts key index `k`: one past the last, or a forgotten key's index handed out
    /// again (its last time and fill values cleared: the key starts fresh).
    pub fn add_key(&mut self, k: u32) {
        let k = k as usize;
        if k == self.last_time.len() {
            self.last_time.push(i64::MIN);
            self.has_time.push(false);
            if let Some(f) = &mut self.ffill {
                f.extend(std::iter::repeat_n(0.0, self.width));
            }
        } else {
            self.last_time[k] = i64::MIN;
            self.has_time[k] = false;
            if let Some(f) = &mut self.ffill {
                f[k * self.width..(k + 1) * self.width].fill(0.0);
            }
        }
    }

    /// Key `k`'s last processed time and forward-fill values (for a checkpoint).
    pub fn export_key(&self, k: u32) -> (Option<i64>, &[f32]) {
        let k = k as usize;
        let fill = match &self.ffill {
            Some(f) => &f[k * self.width..(k + 1) * self.width],
            None => &[],
        };
        (self.has_time[k].then_some(self.last_time[k]), fill)
    }

    /// Restores key `k` (just added) from a checkpoint.
    pub fn import_key(&mut self, k: u32, last: Option<i64>, fill: &[f32]) {
        let k = k as usize;
        self.has_time[k] = last.is_some();
        self.last_time[k] = last.unwrap_or(i64::MIN);
        if let Some(f) = &mut self.ffill {
            f[k * self.width..(k + 1) * self.width].copy_from_slice(fill);
        }
    }

    /// Forward-fill values per key (0 when the NaN policy does not fill).
    pub fn fill_width(&self) -> usize {
        if self.ffill.is_some() {
            self.width
        } else {
            0
        }
    }

    /// Starts a new epoch.
    pub fn begin(&mut self) {
        self.pending.clear();
    }

    /// Adds row `idx` of batch `batch` (of the epoch), whose key has index `key`.
    #[inline]
    pub fn pend(&mut self, key: u32, b: &StepBatch, batch: usize, idx: usize) {
        self.pending.push(Pending {
            key,
            time: b.times[idx],
            source: b.source,
            row: b.rows[idx],
            batch: batch as u32,
            idx: idx as u32,
        });
    }

    /// Orders the epoch's pending rows by (key, time, source, row): the order in which they
    /// are accepted, and so the order of every output.
    ///
    /// Why not one comparison sort: it was 4.4% of a whole LSTM run (1024 keys, every key a
    /// row per timestamp). Keys are dense indices, so a counting sort by key is linear, and
    /// within a key rows almost always arrive in time order already: each key's run is only
    /// checked, and sorted when it is not in order. Tuples are unique (one row is pended
    /// once), so the result is the comparison sort's exactly. With far more known keys than
    /// pending rows the histogram would cost more than it saves; then it is the comparison
    /// sort.
    fn sort_pending(&mut self) {
        let order = |p: &Pending| (p.key, p.time, p.source, p.row);
        let n = self.pending.len();
        let keys = self.last_time.len();
        if n < 64 || keys > 4 * n {
            self.pending.sort_unstable_by_key(order);
            return;
        }
        self.counts.clear();
        self.counts.resize(keys + 1, 0);
        for p in &self.pending {
            self.counts[p.key as usize + 1] += 1;
        }
        for k in 0..keys {
            self.counts[k + 1] += self.counts[k];
        }
        self.sorted.clear();
        self.sorted.resize(n, self.pending[0]);
        for p in &self.pending {
            let at = &mut self.counts[p.key as usize];
            self.sorted[*at as usize] = *p;
            *at += 1;
        }
        std::mem::swap(&mut self.pending, &mut self.sorted);
        let mut start = 0;
        while start < n {
            let key = self.pending[start].key;
            let end = self.counts[key as usize] as usize;
            let run = &mut self.pending[start..end];
            if !run.is_sorted_by_key(order) {
                run.sort_unstable_by_key(order);
            }
            start = end;
        }
    }

    /// Orders the pending rows by `(key, time, source, row)` (so equal times resolve the same
    /// way on any worker count), rejects each step whose time is not after its key's last
    /// processed step, and fills `acc` with the rest.
    pub fn accept(
        &mut self,
        keys: &KeyIndex,
        batches: &[&StepBatch],
        acc: &mut Accepted,
        stats: &mut Stats,
    ) -> Vec<Reject> {
        let w = self.width;
        acc.width = w;
        acc.feats.clear();
        acc.times.clear();
        acc.arrivals.clear();
        acc.runs.clear();
        let mut rejects = Vec::new();
        self.sort_pending();
        let mut i = 0;
        while i < self.pending.len() {
            let key = self.pending[i].key;
            let k = key as usize;
            let start = acc.times.len();
            while i < self.pending.len() && self.pending[i].key == key {
                let p = self.pending[i];
                i += 1;
                if self.has_time[k] && p.time <= self.last_time[k] {
                    let reason = if p.time == self.last_time[k] {
                        RejectReason::Duplicate
                    } else {
                        RejectReason::Late
                    };
                    stats.count_reject(reason);
                    rejects.push(Reject {
                        reason,
                        source: p.source,
                        row: p.row,
                        key: Some(keys.get(key).to_owned()),
                        time: Some(p.time),
                        last_time: Some(self.last_time[k]),
                        detail: String::new(),
                    });
                    continue;
                }
                self.last_time[k] = p.time;
                self.has_time[k] = true;
                let b = batches[p.batch as usize];
                let at = acc.feats.len();
                acc.feats
                    .extend_from_slice(&b.features[p.idx as usize * w..(p.idx as usize + 1) * w]);
                if let Some(f) = &mut self.ffill {
                    fill_forward(&mut acc.feats[at..], &mut f[k * w..(k + 1) * w]);
                }
                acc.times.push(p.time);
                acc.arrivals
                    .push(b.arrivals.get(p.idx as usize).copied().unwrap_or(0));
            }
            let len = acc.times.len() - start;
            if len > 0 {
                acc.runs.push(Run { key, start, len });
            }
        }
        stats.steps_processed += acc.len() as u64;
        rejects
    }

    /// Bytes held per key.
    pub fn bytes(&self) -> usize {
        self.last_time.capacity() * 9 + self.ffill.as_ref().map_or(0, |f| f.capacity() * 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// The counting sort gives the comparison sort's order, for few and many keys, runs in
    /// and out of time order, and several sources.
    #[test]
    fn counting_sort_matches_comparison_sort() {
        let mut rng = StdRng::seed_from_u64(7);
        for (keys, rows) in [(3, 10), (5, 200), (1000, 100), (100, 5000), (1024, 4096)] {
            for shuffled in [false, true] {
                let mut seq = Sequencer::new(1, false);
                for k in 0..keys {
                    seq.add_key(k);
                }
                for i in 0..rows {
                    let time = if shuffled {
                        rng.random_range(0..50)
                    } else {
                        i as i64 / keys as i64
                    };
                    seq.pending.push(Pending {
                        key: rng.random_range(0..keys),
                        time,
                        source: rng.random_range(0..3),
                        row: i as u64,
                        batch: 0,
                        idx: i as u32,
                    });
                }
                let order = |p: &Pending| (p.key, p.time, p.source, p.row);
                let mut want = seq.pending.clone();
                want.sort_unstable_by_key(order);
                seq.sort_pending();
                let got: Vec<_> = seq.pending.iter().map(order).collect();
                let want: Vec<_> = want.iter().map(order).collect();
                assert_eq!(got, want, "{keys} keys, {rows} rows, shuffled {shuffled}");
            }
        }
    }
}
