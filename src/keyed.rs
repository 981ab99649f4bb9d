//! The per-worker keyed processor: owns every key's state and turns the steps of one
//! completed epoch into predictions. The timely operator (see `dataflow.rs`) only stashes
//! batches by epoch and calls [`KeyedProcessor::process_epoch`] once the frontier has passed;
//! everything here is plain code, so it is tested without a dataflow.
//!
//! Per epoch: rows are grouped by key and ordered by `(time, source, row)`; a step whose
//! time is not after the key's last processed step is rejected as late or duplicate. Then,
//! by emit mode:
//! - `every_step`: all accepted steps of all keys go through [`Model::advance`] in a few
//!   large packed calls (every wavefront batches all keys that still have a step);
//! - `sequence_end`: causal models advance the same way and keep each key's outputs until
//!   the end; other models buffer the inputs and run [`Model::forward`] at the end;
//! - `window`: each key keeps a ring of its last `size` steps; every `hop` steps the window
//!   is run from a fresh state, all due windows of the epoch in one call.

use std::hash::Hasher;
use std::sync::Arc;

use hashbrown::HashTable;

use crate::model::{Model, Packed, StateArena, Workspace};
use crate::pipeline::config::{Emit, NanPolicy};
use crate::record::{KeyColumn, KeyRef, OutBatch, Reject, RejectReason, SinkMsg, Stats, StepBatch};

/// Rows per model call: bounds the scratch memory (the input projection of an LSTM holds
/// `rows x 4H` floats) while keeping wavefronts wide.
const CALL_ROWS: usize = 16_384;

/// FxHash-style mixing plus a splitmix finalizer: cheap like Fx, but the low bits (which
/// hashbrown uses for the bucket) depend on every input bit. Plain Fx ends in a multiply,
/// so sequential string keys ("s0000001", "s0000002", ...) collided into long probe chains:
/// a million new keys took 43 s, 30% of it in memcmp.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    #[inline]
    fn write_i64(&mut self, v: i64) {
        self.write_u64(v as u64);
    }
    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.write_u64(v as u64);
    }
    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        crate::record::mix64(self.0)
    }
}

/// Key -> dense index, with the reverse mapping for output.
///
/// String keys live once, back to back in one buffer; the hash table holds only indices
/// and hashes and compares through that buffer. About 30 bytes per key instead of ~90 with
/// an allocated `Arc<str>` per key kept in both a map and a list.
#[derive(Debug)]
enum KeyIndex {
    /// Live sources learn the key type from the first key.
    Unset,
    Int {
        table: HashTable<u32>,
        keys: Vec<i64>,
    },
    Str {
        table: HashTable<u32>,
        bytes: Vec<u8>,
        /// Key `i` is `bytes[ends[i-1]..ends[i]]`.
        ends: Vec<u64>,
    },
}

#[inline]
fn hash_int(i: i64) -> u64 {
    crate::record::mix64(i as u64)
}

#[inline]
fn hash_str(s: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(s);
    h.write_usize(s.len());
    h.finish()
}

#[inline]
fn str_at<'a>(bytes: &'a [u8], ends: &[u64], i: usize) -> &'a [u8] {
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    &bytes[start..ends[i] as usize]
}

impl KeyIndex {
    fn len(&self) -> usize {
        match self {
            KeyIndex::Unset => 0,
            KeyIndex::Int { keys, .. } => keys.len(),
            KeyIndex::Str { ends, .. } => ends.len(),
        }
    }

    /// The index of `k`, and whether it is new.
    #[inline]
    fn index(&mut self, k: KeyRef<'_>) -> (u32, bool) {
        if let KeyIndex::Unset = self {
            *self = match k {
                KeyRef::Int(_) => KeyIndex::Int {
                    table: HashTable::new(),
                    keys: Vec::new(),
                },
                KeyRef::Str(_) => KeyIndex::Str {
                    table: HashTable::new(),
                    bytes: Vec::new(),
                    ends: Vec::new(),
                },
            };
        }
        match (self, k) {
            (KeyIndex::Int { table, keys }, KeyRef::Int(i)) => {
                let h = hash_int(i);
                if let Some(&x) = table.find(h, |&x| keys[x as usize] == i) {
                    return (x, false);
                }
                let x = keys.len() as u32;
                keys.push(i);
                table.insert_unique(h, x, |&y| hash_int(keys[y as usize]));
                (x, true)
            }
            (KeyIndex::Str { table, bytes, ends }, KeyRef::Str(s)) => {
                let s = s.as_bytes();
                let h = hash_str(s);
                if let Some(&x) = table.find(h, |&x| str_at(bytes, ends, x as usize) == s) {
                    return (x, false);
                }
                let x = ends.len() as u32;
                bytes.extend_from_slice(s);
                ends.push(bytes.len() as u64);
                table.insert_unique(h, x, |&y| hash_str(str_at(bytes, ends, y as usize)));
                (x, true)
            }
            _ => panic!("key kind mismatch"),
        }
    }

    fn get(&self, i: u32) -> KeyRef<'_> {
        match self {
            KeyIndex::Unset => unreachable!("no key has an index yet"),
            KeyIndex::Int { keys, .. } => KeyRef::Int(keys[i as usize]),
            KeyIndex::Str { bytes, ends, .. } => {
                // Only whole `&str`s are appended, so every key is valid UTF-8.
                KeyRef::Str(std::str::from_utf8(str_at(bytes, ends, i as usize)).expect("utf-8 keys"))
            }
        }
    }

    fn column(&self) -> KeyColumn {
        match self {
            KeyIndex::Int { .. } => KeyColumn::Int(Vec::new()),
            KeyIndex::Str { .. } | KeyIndex::Unset => KeyColumn::empty_str(),
        }
    }

    /// Bytes held by the index.
    fn bytes(&self) -> usize {
        match self {
            KeyIndex::Unset => 0,
            KeyIndex::Int { table, keys } => table.capacity() * 5 + keys.capacity() * 8,
            KeyIndex::Str { table, bytes, ends } => {
                table.capacity() * 5 + bytes.capacity() + ends.capacity() * 8
            }
        }
    }
}

/// One pending row of the epoch being processed.
#[derive(Debug, Clone, Copy)]
struct Pending {
    key: u32,
    time: i64,
    source: u32,
    row: u64,
    batch: u32,
    idx: u32,
}

/// A key's run of accepted steps in this epoch: `acc[start..start+len]`.
#[derive(Debug, Clone, Copy)]
struct Run {
    key: u32,
    start: usize,
    len: usize,
}

/// Per-key buffers of `sequence_end` and `window`.
#[derive(Debug, Default)]
struct KeyBuffers {
    /// Non-causal `sequence_end`: the whole input; `window`: a ring of `size` steps.
    feats: Vec<Vec<f32>>,
    times: Vec<Vec<i64>>,
    /// Causal `sequence_end`: outputs kept until the end (all, or only the last).
    out_vals: Vec<Vec<f32>>,
    out_times: Vec<Vec<i64>>,
    /// `window`: steps seen per key.
    counts: Vec<u64>,
}

/// The keyed state of one worker.
pub struct KeyedProcessor {
    model: Arc<Model>,
    emit: Emit,
    nan: NanPolicy,
    keys: KeyIndex,
    last_time: Vec<i64>,
    has_time: Vec<bool>,
    arena: StateArena,
    ffill: Vec<f32>,
    bufs: KeyBuffers,
    /// sequence_end with a causal model: advance per epoch instead of buffering inputs.
    stream_sequence_end: bool,
    ws: Workspace,
    packed: Packed,
    pending: Vec<Pending>,
    acc_feats: Vec<f32>,
    acc_times: Vec<i64>,
    acc_arrivals: Vec<u64>,
    runs: Vec<Run>,
    /// Live `sequence_end`: a key's sequence ends after this long without steps.
    idle_timeout_us: Option<u64>,
    /// Per key: when its last step arrived (us, `now_us` clock), and whether a sequence is open.
    last_seen: Vec<u64>,
    open: Vec<bool>,
    /// `(key, last_seen)` in arrival order; stale entries are skipped when popped.
    idle_queue: std::collections::VecDeque<(u32, u64)>,
    pub stats: Stats,
}

impl KeyedProcessor {
    /// `int_keys` selects the key index kind (the plan knows the key column's type); `None`
    /// takes it from the first key (live sources).
    pub fn new(
        model: Arc<Model>,
        emit: Emit,
        nan: NanPolicy,
        int_keys: impl Into<Option<bool>>,
    ) -> KeyedProcessor {
        let arena = model.new_arena();
        let stream_sequence_end =
            matches!(emit, Emit::SequenceEnd { .. }) && model.check_streamable().is_ok();
        KeyedProcessor {
            emit,
            nan,
            keys: match int_keys.into() {
                Some(true) => KeyIndex::Int {
                    table: HashTable::new(),
                    keys: Vec::new(),
                },
                Some(false) => KeyIndex::Str {
                    table: HashTable::new(),
                    bytes: Vec::new(),
                    ends: Vec::new(),
                },
                None => KeyIndex::Unset,
            },
            last_time: Vec::new(),
            has_time: Vec::new(),
            arena,
            ffill: Vec::new(),
            bufs: KeyBuffers::default(),
            stream_sequence_end,
            ws: Workspace::default(),
            packed: Packed::default(),
            pending: Vec::new(),
            acc_feats: Vec::new(),
            acc_times: Vec::new(),
            acc_arrivals: Vec::new(),
            runs: Vec::new(),
            idle_timeout_us: None,
            last_seen: Vec::new(),
            open: Vec::new(),
            idle_queue: std::collections::VecDeque::new(),
            stats: Stats::default(),
            model,
        }
    }

    /// Live `sequence_end`: end a key's sequence after `ms` without steps.
    pub fn with_idle_timeout(mut self, ms: Option<u64>) -> Self {
        self.idle_timeout_us = ms.map(|m| m * 1000);
        self
    }

    /// Number of keys seen.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Approximate bytes of per-key state: model state, key index, times and buffers.
    pub fn state_bytes(&self) -> usize {
        self.arena.allocated_bytes()
            + self.keys.bytes()
            + self.last_time.capacity() * 9
            + self.ffill.capacity() * 4
            + self
                .bufs
                .feats
                .iter()
                .map(|v| v.capacity() * 4 + 24)
                .sum::<usize>()
            + self
                .bufs
                .times
                .iter()
                .map(|v| v.capacity() * 8 + 24)
                .sum::<usize>()
            + self
                .bufs
                .out_vals
                .iter()
                .map(|v| v.capacity() * 4 + 24)
                .sum::<usize>()
            + self
                .bufs
                .out_times
                .iter()
                .map(|v| v.capacity() * 8 + 24)
                .sum::<usize>()
    }

    fn add_key(&mut self) {
        let w = self.model.input_size();
        let slot = self.arena.alloc();
        debug_assert_eq!(slot as usize, self.last_time.len(), "slots follow key indices");
        self.last_time.push(i64::MIN);
        self.has_time.push(false);
        if self.idle_timeout_us.is_some() {
            self.last_seen.push(0);
            self.open.push(false);
        }
        if self.nan == NanPolicy::Ffill {
            self.ffill.extend(std::iter::repeat_n(0.0, w));
        }
        match self.emit {
            Emit::EveryStep => {}
            Emit::SequenceEnd { .. } if self.stream_sequence_end => {
                self.bufs.out_vals.push(Vec::new());
                self.bufs.out_times.push(Vec::new());
            }
            Emit::SequenceEnd { .. } => {
                self.bufs.feats.push(Vec::new());
                self.bufs.times.push(Vec::new());
            }
            Emit::Window { size, .. } => {
                self.bufs.feats.push(vec![0.0; size * w]);
                self.bufs.times.push(vec![0; size]);
                self.bufs.counts.push(0);
            }
        }
    }

    /// Processes every step of one completed epoch. Predictions, rejects go to `out`.
    pub fn process_epoch(&mut self, batches: &[&StepBatch], out: &mut Vec<SinkMsg>) {
        let w = self.model.input_size();
        self.pending.clear();
        for (bi, b) in batches.iter().enumerate() {
            for r in 0..b.len() {
                let (key, new) = self.keys.index(b.keys.get(r));
                if new {
                    self.add_key();
                }
                self.pending.push(Pending {
                    key,
                    time: b.times[r],
                    source: b.source,
                    row: b.rows[r],
                    batch: bi as u32,
                    idx: r as u32,
                });
            }
        }
        if self.pending.is_empty() {
            return;
        }
        self.pending
            .sort_unstable_by_key(|p| (p.key, p.time, p.source, p.row));

        // Lateness, then the accepted steps in per-key runs.
        self.acc_feats.clear();
        self.acc_times.clear();
        self.acc_arrivals.clear();
        self.runs.clear();
        let mut rejects = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            let key = self.pending[i].key;
            let start = self.acc_times.len();
            while i < self.pending.len() && self.pending[i].key == key {
                let p = self.pending[i];
                i += 1;
                let k = key as usize;
                if self.has_time[k] && p.time <= self.last_time[k] {
                    let reason = if p.time == self.last_time[k] {
                        RejectReason::Duplicate
                    } else {
                        RejectReason::Late
                    };
                    self.stats.count_reject(reason);
                    rejects.push(Reject {
                        reason,
                        source: p.source,
                        row: p.row,
                        key: Some(self.keys.get(key).to_owned()),
                        time: Some(p.time),
                        last_time: Some(self.last_time[k]),
                        detail: String::new(),
                    });
                    continue;
                }
                self.last_time[k] = p.time;
                self.has_time[k] = true;
                let b = batches[p.batch as usize];
                let row = &b.features[p.idx as usize * w..(p.idx as usize + 1) * w];
                let at = self.acc_feats.len();
                self.acc_feats.extend_from_slice(row);
                if self.nan == NanPolicy::Ffill {
                    let last = &mut self.ffill[k * w..(k + 1) * w];
                    for (v, l) in self.acc_feats[at..].iter_mut().zip(last.iter_mut()) {
                        if v.is_finite() {
                            *l = *v;
                        } else {
                            *v = *l;
                        }
                    }
                }
                self.acc_times.push(p.time);
                self.acc_arrivals
                    .push(b.arrivals.get(p.idx as usize).copied().unwrap_or(0));
            }
            let len = self.acc_times.len() - start;
            if len > 0 {
                self.runs.push(Run { key, start, len });
            }
        }
        if !rejects.is_empty() {
            out.push(SinkMsg::Rejects(rejects));
        }
        self.stats.steps_processed += self.acc_times.len() as u64;
        if self.idle_timeout_us.is_some() {
            let now = crate::source::live::now_us();
            for run in &self.runs {
                let k = run.key as usize;
                self.last_seen[k] = now;
                self.open[k] = true;
                self.idle_queue.push_back((run.key, now));
            }
        }

        match self.emit {
            Emit::EveryStep => self.advance_runs(out, true),
            Emit::SequenceEnd { .. } if self.stream_sequence_end => self.advance_runs(out, false),
            Emit::SequenceEnd { .. } => {
                for run in &self.runs {
                    let k = run.key as usize;
                    self.bufs.feats[k]
                        .extend_from_slice(&self.acc_feats[run.start * w..(run.start + run.len) * w]);
                    self.bufs.times[k].extend_from_slice(&self.acc_times[run.start..run.start + run.len]);
                }
            }
            Emit::Window { size, hop } => self.windows(size, hop, out),
        }
    }

    /// Streams the epoch's runs through the model in calls of at most `CALL_ROWS` rows.
    /// `emit_now`: send outputs (every_step) or keep them per key (sequence_end).
    fn advance_runs(&mut self, out: &mut Vec<SinkMsg>, emit_now: bool) {
        let w = self.model.input_size();
        let ow = self.model.output_size();
        let keep_all = matches!(self.emit, Emit::SequenceEnd { all_steps: true });
        let mut queue = std::mem::take(&mut self.runs);
        let mut next = Vec::new();
        let mut call: Vec<Run> = Vec::new();
        let mut lens: Vec<usize> = Vec::new();
        let mut slots: Vec<u32> = Vec::new();
        // Room for the whole epoch at once: growing by doubling re-copied every value (tens
        // of MB per epoch for wide outputs).
        let steps: usize = if emit_now {
            queue.iter().map(|r| r.len).sum()
        } else {
            0
        };
        let mut batch = OutBatch::with_capacity(self.keys.column(), ow, steps);
        while !queue.is_empty() {
            call.clear();
            let mut rows = 0;
            for run in queue.drain(..) {
                if rows >= CALL_ROWS {
                    next.push(run);
                    continue;
                }
                let take = run.len.min(CALL_ROWS - rows);
                call.push(Run { len: take, ..run });
                rows += take;
                if take < run.len {
                    next.push(Run {
                        key: run.key,
                        start: run.start + take,
                        len: run.len - take,
                    });
                }
            }
            std::mem::swap(&mut queue, &mut next);
            lens.clear();
            lens.extend(call.iter().map(|r| r.len));
            slots.clear();
            slots.extend(call.iter().map(|r| r.key));
            self.packed.build(w, &lens);
            for (s, run) in call.iter().enumerate() {
                for t in 0..run.len {
                    let a = run.start + t;
                    self.packed
                        .row_mut(s, t)
                        .copy_from_slice(&self.acc_feats[a * w..(a + 1) * w]);
                }
            }
            let res = self
                .model
                .advance(&mut self.arena, &slots, &self.packed, &mut self.ws)
                .expect("every_step/sequence_end streaming is only chosen for causal models");
            for (s, tag, vals) in res.rows() {
                let run = call[s as usize];
                let a = run.start + tag as usize;
                let time = self.acc_times[a];
                if emit_now {
                    batch.keys.push(self.keys.get(run.key));
                    batch.times.push(time);
                    batch.values.extend_from_slice(vals);
                    batch.arrivals.push(self.acc_arrivals[a]);
                } else {
                    let k = run.key as usize;
                    if !keep_all {
                        self.bufs.out_vals[k].clear();
                        self.bufs.out_times[k].clear();
                    }
                    self.bufs.out_vals[k].extend_from_slice(vals);
                    self.bufs.out_times[k].push(time);
                }
            }
        }
        self.runs = queue;
        if !batch.is_empty() {
            self.stats.outputs += batch.len() as u64;
            out.push(SinkMsg::Rows(batch));
        }
    }

    /// Pushes the epoch's steps into each key's window ring and runs every window that
    /// became due, from a fresh state, emitting its last output at the window's last time.
    fn windows(&mut self, size: usize, hop: usize, out: &mut Vec<SinkMsg>) {
        let w = self.model.input_size();
        // Due windows: (key, time of last step, arrival), input rows copied in order.
        let mut due: Vec<(u32, i64, u64)> = Vec::new();
        let mut rows: Vec<f32> = Vec::new();
        for run in &self.runs {
            let k = run.key as usize;
            for t in 0..run.len {
                let a = run.start + t;
                let n = self.bufs.counts[k];
                let pos = (n % size as u64) as usize;
                self.bufs.feats[k][pos * w..(pos + 1) * w]
                    .copy_from_slice(&self.acc_feats[a * w..(a + 1) * w]);
                self.bufs.times[k][pos] = self.acc_times[a];
                let n = n + 1;
                self.bufs.counts[k] = n;
                if n >= size as u64 && (n - size as u64) % hop as u64 == 0 {
                    // Oldest first: the ring starts after the newest entry.
                    for j in 0..size {
                        let p = ((n as usize) + j) % size;
                        rows.extend_from_slice(&self.bufs.feats[k][p * w..(p + 1) * w]);
                    }
                    due.push((run.key, self.acc_times[a], self.acc_arrivals[a]));
                }
            }
        }
        let per_call = (CALL_ROWS / size).max(1);
        let mut batch = OutBatch::new(self.keys.column(), self.model.output_size());
        for (c, chunk) in due.chunks(per_call).enumerate() {
            let lens = vec![size; chunk.len()];
            self.packed.build(w, &lens);
            for s in 0..chunk.len() {
                let base = (c * per_call + s) * size;
                for t in 0..size {
                    self.packed
                        .row_mut(s, t)
                        .copy_from_slice(&rows[(base + t) * w..(base + t + 1) * w]);
                }
            }
            let res = self.model.forward(&self.packed, &mut self.ws);
            emit_last(res, |s, vals| {
                let (key, time, arrival) = chunk[s];
                batch.keys.push(self.keys.get(key));
                batch.times.push(time);
                batch.values.extend_from_slice(vals);
                batch.arrivals.push(arrival);
            });
        }
        if !batch.is_empty() {
            self.stats.outputs += batch.len() as u64;
            out.push(SinkMsg::Rows(batch));
        }
    }

    /// End of input: emits what `sequence_end` held back, and this worker's counters.
    pub fn finish(&mut self, out: &mut Vec<SinkMsg>) {
        if matches!(self.emit, Emit::SequenceEnd { .. }) {
            let all: Vec<u32> = (0..self.keys.len() as u32).collect();
            self.end_sequences(&all, out);
        }
        self.stats.keys = self.keys.len() as u64;
        self.stats.state_bytes = self.state_bytes() as u64;
        out.push(SinkMsg::Stats(std::mem::take(&mut self.stats)));
    }

    /// Live `sequence_end`: ends the sequences of keys idle for longer than the timeout.
    pub fn expire_idle(&mut self, now_us: u64, out: &mut Vec<SinkMsg>) {
        let Some(timeout) = self.idle_timeout_us else {
            return;
        };
        let mut ended = Vec::new();
        while let Some(&(k, seen)) = self.idle_queue.front() {
            if now_us.saturating_sub(seen) < timeout {
                break;
            }
            self.idle_queue.pop_front();
            // Only the newest entry of a key counts; older ones are stale.
            if self.open[k as usize] && self.last_seen[k as usize] == seen {
                self.open[k as usize] = false;
                ended.push(k);
            }
        }
        if !ended.is_empty() {
            self.end_sequences(&ended, out);
        }
    }

    /// Emits the `sequence_end` output of `keys` and starts each a fresh sequence.
    fn end_sequences(&mut self, keys: &[u32], out: &mut Vec<SinkMsg>) {
        let Emit::SequenceEnd { all_steps } = self.emit else {
            return;
        };
        let ow = self.model.output_size();
        let mut batch = OutBatch::new(self.keys.column(), ow);
        if self.stream_sequence_end {
            for &k in keys {
                let ku = k as usize;
                for (t, &time) in self.bufs.out_times[ku].iter().enumerate() {
                    batch.keys.push(self.keys.get(k));
                    batch.times.push(time);
                    batch
                        .values
                        .extend_from_slice(&self.bufs.out_vals[ku][t * ow..(t + 1) * ow]);
                }
                self.bufs.out_times[ku] = Vec::new();
                self.bufs.out_vals[ku] = Vec::new();
                self.arena.reset(k);
            }
        } else {
            self.run_buffered(all_steps, keys, &mut batch);
        }
        if !batch.is_empty() {
            self.stats.outputs += batch.len() as u64;
            out.push(SinkMsg::Rows(batch));
        }
    }

    /// Non-causal `sequence_end`: each key's whole sequence through the offline form,
    /// many keys per call.
    fn run_buffered(&mut self, all_steps: bool, keys: &[u32], batch: &mut OutBatch) {
        let w = self.model.input_size();
        let mut order: Vec<u32> = keys
            .iter()
            .copied()
            .filter(|&k| !self.bufs.times[k as usize].is_empty())
            .collect();
        // Similar lengths together keep the packed wavefronts dense.
        order.sort_by_key(|&k| std::cmp::Reverse(self.bufs.times[k as usize].len()));
        let mut i = 0;
        while i < order.len() {
            let mut rows = 0;
            let mut j = i;
            while j < order.len() && (j == i || rows + self.bufs.times[order[j] as usize].len() <= CALL_ROWS)
            {
                rows += self.bufs.times[order[j] as usize].len();
                j += 1;
            }
            let chunk = &order[i..j];
            let lens: Vec<usize> = chunk.iter().map(|&k| self.bufs.times[k as usize].len()).collect();
            self.packed.build(w, &lens);
            for (s, &k) in chunk.iter().enumerate() {
                for t in 0..lens[s] {
                    self.packed
                        .row_mut(s, t)
                        .copy_from_slice(&self.bufs.feats[k as usize][t * w..(t + 1) * w]);
                }
            }
            let res = self.model.forward(&self.packed, &mut self.ws);
            if all_steps {
                for (s, tag, vals) in res.rows() {
                    let k = chunk[s as usize];
                    batch.keys.push(self.keys.get(k));
                    batch.times.push(self.bufs.times[k as usize][tag as usize]);
                    batch.values.extend_from_slice(vals);
                }
            } else {
                let mut last: Vec<Option<(u32, usize)>> = vec![None; chunk.len()];
                let l = &res.layout;
                for pos in 0..l.len() {
                    let n = l.lens[pos] as usize;
                    if n > 0 {
                        let r = l.row(pos, n - 1);
                        last[l.seq[pos] as usize] = Some((l.tags[r], r));
                    }
                }
                for (s, item) in last.into_iter().enumerate() {
                    if let Some((tag, r)) = item {
                        let k = chunk[s];
                        batch.keys.push(self.keys.get(k));
                        batch.times.push(self.bufs.times[k as usize][tag as usize]);
                        batch.values.extend_from_slice(res.row_data(r));
                    }
                }
            }
            for &k in chunk {
                self.bufs.feats[k as usize] = Vec::new();
                self.bufs.times[k as usize] = Vec::new();
            }
            i = j;
        }
    }
}

/// Calls `f(sequence, values)` with the last output row of every sequence that has one.
fn emit_last(res: &Packed, mut f: impl FnMut(usize, &[f32])) {
    let l = &res.layout;
    let mut last: Vec<Option<usize>> = vec![None; l.len()];
    for pos in 0..l.len() {
        let n = l.lens[pos] as usize;
        if n > 0 {
            last[l.seq[pos] as usize] = Some(l.row(pos, n - 1));
        }
    }
    for (s, r) in last.into_iter().enumerate() {
        if let Some(r) = r {
            f(s, res.row_data(r));
        }
    }
}
