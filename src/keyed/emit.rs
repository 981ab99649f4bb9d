//! The emit modes. Each [`Emitter`] owns exactly the per-key buffers its mode needs:
//!
//! - `every_step`: the model state of every key (an arena); all accepted steps of all keys
//!   go through [`Model::advance`] in packed calls of many keys (each wavefront batches
//!   every key of the call that still has a step), and every output is emitted at once;
//! - `sequence_end`: causal models advance the same way and keep each key's outputs (all,
//!   or only the last) until the sequence ends; other models keep the inputs and run
//!   [`Model::forward`] over the whole sequence at the end. Live runs end a key's sequence
//!   after an idle timeout;
//! - `window`: a ring of the key's last `size` inputs; every `hop` steps the window is run
//!   from a fresh state, the windows due in an epoch in calls of up to `CALL_ROWS` rows.

use std::collections::VecDeque;

use super::index::KeyIndex;
use super::order::{Accepted, Run};
use crate::checkpoint::part::StateRows;
use crate::model::{Model, Packed, StateArena, Workspace};
use crate::record::{OutBatch, SinkMsg, Stats};
use crate::vocab::Emit;

/// Rows per model call over whole sequences (`sequence_end` without a causal model, and
/// windows): bounds the scratch memory (an LSTM's input projection holds up to `128 x 4H`
/// floats per block, its outputs `rows x H`) while keeping wavefronts wide. A target, not a
/// bound: one sequence or window longer than this is still one call.
const CALL_ROWS: usize = 16_384;

/// Rows per streamed call ([`advance`]). Why smaller than [`CALL_ROWS`]: a call's layers
/// each write their output for every row before the next layer reads it, so the call's
/// buffers should stay in cache between layers. Measured on the whole job (LSTM 8->128 ->
/// Linear(1), 1024 keys x 1000 steps, one worker) against 16,384 rows: -4% wall clock in f32,
/// -6% in bf16, -6 to -10% on the demo's CNN-LSTM; 1,024 to 8,192 rows were alike within the
/// noise, 65,536 slower than 16,384 (BENCHMARKS.md, "Fifth pass").
const STREAM_ROWS: usize = 4_096;

/// Keys a streamed call holds at least, when that many are left ([`Pending::next_call`]): so that an
/// epoch of a few long runs still fills the kernel's register tiles and row blocks instead
/// of running them a handful of keys wide. (The same job over a key-sorted log, 64 keys per
/// epoch: 0.72-0.73 s with this, 0.74-0.76 s in calls of 4 whole runs.)
const STREAM_KEYS: usize = 64;

/// What an emitter borrows from its processor for one call.
pub struct Ctx<'a> {
    /// The model.
    pub model: &'a Model,
    /// Scratch buffers of the model.
    pub ws: &'a mut Workspace,
    /// The packed input of a call.
    pub packed: &'a mut Packed,
    /// Key names for the output.
    pub keys: &'a KeyIndex,
    /// Counters (outputs).
    pub stats: &'a mut Stats,
    /// Set when the run is abandoned: long loops stop between model calls.
    pub abort: Option<&'a std::sync::atomic::AtomicBool>,
    /// The processor's clock (live idle timeouts).
    pub clock: fn() -> u64,
}

impl Ctx<'_> {
    fn aborted(&self) -> bool {
        self.abort
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn send(&mut self, batch: OutBatch, out: &mut Vec<SinkMsg>) {
        if !batch.is_empty() {
            self.stats.outputs += batch.len() as u64;
            out.push(SinkMsg::Rows(batch));
        }
    }
}

/// The per-key state of one emit mode.
pub enum Emitter {
    /// `every_step`.
    EveryStep(StateArena),
    /// `sequence_end`.
    SequenceEnd(SequenceEnd),
    /// `window`.
    Window(Windows),
}

/// `sequence_end`: what is held per key until its sequence ends.
pub struct SequenceEnd {
    all_steps: bool,
    held: Held,
    idle: Option<Idle>,
}

enum Held {
    /// Causal models: state advanced per epoch, outputs kept (all, or the last).
    Outputs {
        arena: StateArena,
        vals: Vec<Vec<f32>>,
        times: Vec<Vec<i64>>,
    },
    /// Other models: the whole input, run at the end.
    Inputs {
        feats: Vec<Vec<f32>>,
        times: Vec<Vec<i64>>,
    },
}

/// Live `sequence_end`: when each key's last step arrived, to end idle sequences.
#[derive(Default)]
struct Idle {
    timeout_us: u64,
    /// Per key: when its last step arrived (us, `now_us` clock), and whether it is open.
    last_seen: Vec<u64>,
    open: Vec<bool>,
    /// `(key, last_seen)` in arrival order; stale entries are skipped when popped.
    queue: VecDeque<(u32, u64)>,
}

/// `window`: a ring of each key's last `size` inputs and its step count.
pub struct Windows {
    size: usize,
    hop: usize,
    width: usize,
    rings: Vec<Vec<f32>>,
    counts: Vec<u64>,
}

/// Entry `k` of a per-key list emptied, pushed if `k` is one past the end.
fn fresh_vec<T>(v: &mut Vec<Vec<T>>, k: usize) {
    if k == v.len() {
        v.push(Vec::new());
    } else {
        v[k] = Vec::new();
    }
}

fn vec_bytes<T>(v: &[Vec<T>]) -> usize {
    v.iter()
        .map(|x| x.capacity() * std::mem::size_of::<T>() + 24)
        .sum()
}

impl Emitter {
    /// The emitter of `emit` for `model`.
    pub fn new(model: &Model, emit: Emit) -> Emitter {
        match emit {
            Emit::EveryStep => Emitter::EveryStep(model.new_arena()),
            Emit::SequenceEnd { all_steps } => Emitter::SequenceEnd(SequenceEnd {
                all_steps,
                held: if model.check_streamable().is_ok() {
                    Held::Outputs {
                        arena: model.new_arena(),
                        vals: Vec::new(),
                        times: Vec::new(),
                    }
                } else {
                    Held::Inputs {
                        feats: Vec::new(),
                        times: Vec::new(),
                    }
                },
                idle: None,
            }),
            Emit::Window { size, hop } => Emitter::Window(Windows {
                size,
                hop,
                width: model.input_size(),
                rings: Vec::new(),
                counts: Vec::new(),
            }),
        }
    }

    /// Live `sequence_end`: a key's sequence ends after `us` without steps. Set before the
    /// first key; other modes ignore it.
    pub fn set_idle_timeout(&mut self, us: u64) {
        if let Emitter::SequenceEnd(s) = self {
            s.idle = Some(Idle {
                timeout_us: us,
                ..Idle::default()
            });
        }
    }

    /// Starts key index `k` from nothing: one past the last, or a forgotten key's index
    /// handed out again (its buffers kept and cleared, so memory follows the most keys held
    /// at once).
    pub fn add_key(&mut self, k: u32) {
        let ku = k as usize;
        match self {
            Emitter::EveryStep(arena) => arena.fresh(k),
            Emitter::SequenceEnd(s) => {
                match &mut s.held {
                    Held::Outputs { arena, vals, times } => {
                        arena.fresh(k);
                        fresh_vec(vals, ku);
                        fresh_vec(times, ku);
                    }
                    Held::Inputs { feats, times } => {
                        fresh_vec(feats, ku);
                        fresh_vec(times, ku);
                    }
                }
                if let Some(idle) = &mut s.idle {
                    if ku == idle.open.len() {
                        idle.last_seen.push(0);
                        idle.open.push(false);
                    } else {
                        idle.open[ku] = false;
                    }
                }
            }
            Emitter::Window(w) => {
                // The ring's old values are never read: a window needs `size` new steps.
                if ku == w.counts.len() {
                    w.rings.push(vec![0.0; w.size * w.width]);
                    w.counts.push(0);
                } else {
                    w.counts[ku] = 0;
                }
            }
        }
    }

    /// Appends key `k`'s buffers to a checkpoint's rows: model state (or the window ring,
    /// or the held inputs), counters, and what `sequence_end` holds.
    pub fn export_key(&self, k: u32, rows: &mut StateRows) {
        let ku = k as usize;
        let (state, counters) = (&mut rows.state, &mut rows.counters);
        let mut arena_out = |arena: &StateArena| {
            arena.export_into(k, &mut state.values, &mut counters.values);
            state.offsets.push(state.values.len() as i64);
            counters.offsets.push(counters.values.len() as i64);
        };
        match self {
            Emitter::EveryStep(arena) => {
                arena_out(arena);
                rows.held_times.push(&[]);
                rows.held_values.push(&[]);
            }
            Emitter::SequenceEnd(s) => match &s.held {
                Held::Outputs { arena, vals, times } => {
                    arena_out(arena);
                    rows.held_times.push(&times[ku]);
                    rows.held_values.push(&vals[ku]);
                }
                Held::Inputs { feats, times } => {
                    rows.state.push(&feats[ku]);
                    rows.counters.push(&[]);
                    rows.held_times.push(&times[ku]);
                    rows.held_values.push(&[]);
                }
            },
            Emitter::Window(w) => {
                rows.state.push(&w.rings[ku]);
                rows.counters.push(&[w.counts[ku]]);
                rows.held_times.push(&[]);
                rows.held_values.push(&[]);
            }
        }
    }

    /// Floats and counters each key exports at least (model state or window ring).
    pub fn per_key(&self) -> (usize, usize) {
        match self {
            Emitter::EveryStep(arena) => arena.slot_shape(),
            Emitter::SequenceEnd(s) => match &s.held {
                Held::Outputs { arena, .. } => arena.slot_shape(),
                Held::Inputs { .. } => (0, 0),
            },
            Emitter::Window(w) => (w.size * w.width, 1),
        }
    }

    /// Restores key `k` (just added) from row `i` of a checkpoint; an error names what does
    /// not fit this model and emit mode.
    pub fn import_key(&mut self, k: u32, rows: &StateRows, i: usize) -> Result<(), String> {
        let ku = k as usize;
        let (state, counters) = (rows.state.row(i), rows.counters.row(i));
        let (times, values) = (rows.held_times.row(i), rows.held_values.row(i));
        let arena_in = |arena: &mut StateArena| {
            let (f, c) = arena.slot_shape();
            if state.len() != f || counters.len() != c {
                return Err(format!(
                    "the state holds {} values and {} counters per key; this model keeps {f} and {c}",
                    state.len(),
                    counters.len()
                ));
            }
            arena.import(k, state, counters);
            Ok(())
        };
        match self {
            Emitter::EveryStep(arena) => arena_in(arena),
            Emitter::SequenceEnd(s) => match &mut s.held {
                Held::Outputs {
                    arena,
                    vals,
                    times: t,
                } => {
                    arena_in(arena)?;
                    vals[ku] = values.to_vec();
                    t[ku] = times.to_vec();
                    Ok(())
                }
                Held::Inputs { feats, times: t } => {
                    feats[ku] = state.to_vec();
                    t[ku] = times.to_vec();
                    Ok(())
                }
            },
            Emitter::Window(w) => {
                if state.len() != w.size * w.width || counters.len() != 1 {
                    return Err(format!(
                        "the window ring holds {} values; this window keeps {}",
                        state.len(),
                        w.size * w.width
                    ));
                }
                w.rings[ku].copy_from_slice(state);
                w.counts[ku] = counters[0];
                Ok(())
            }
        }
    }

    /// Live `sequence_end`, after a restore: a key holding a sequence is open as of `now`,
    /// so the idle timeout ends it if no step comes.
    pub fn touch(&mut self, k: u32, now: u64) {
        if let Emitter::SequenceEnd(s) = self {
            let held = match &s.held {
                Held::Outputs { times, .. } | Held::Inputs { times, .. } => !times[k as usize].is_empty(),
            };
            if let (Some(idle), true) = (&mut s.idle, held) {
                idle.last_seen[k as usize] = now;
                idle.open[k as usize] = true;
                idle.queue.push_back((k, now));
            }
        }
    }

    /// Before `keys` are forgotten: `sequence_end` emits what it holds for them (their
    /// sequences end); the other modes' buffers are cleared when the index is reused.
    pub fn forget(&mut self, cx: &mut Ctx<'_>, keys: &[u32], out: &mut Vec<SinkMsg>) {
        if let Emitter::SequenceEnd(s) = self {
            s.end(cx, keys, out);
            if let Some(idle) = &mut s.idle {
                for &k in keys {
                    idle.open[k as usize] = false;
                }
            }
        }
    }

    /// Handles the accepted steps of one epoch.
    pub fn epoch(&mut self, cx: &mut Ctx<'_>, acc: &Accepted, out: &mut Vec<SinkMsg>) {
        match self {
            Emitter::EveryStep(arena) => {
                // Room for the whole epoch at once: growing by doubling re-copied every
                // value (tens of MB per epoch for wide outputs).
                let mut batch = OutBatch::with_capacity(cx.keys.column(), cx.model.output_size(), acc.len());
                advance(cx.model, cx.ws, cx.packed, arena, acc, |key, a, vals| {
                    batch.keys.push(cx.keys.get(key));
                    batch.times.push(acc.times[a]);
                    batch.values.extend_from_slice(vals);
                    batch.arrivals.push(acc.arrivals[a]);
                });
                cx.send(batch, out);
            }
            Emitter::SequenceEnd(s) => s.epoch(cx, acc),
            Emitter::Window(w) => w.epoch(cx, acc, out),
        }
    }

    /// End of input: emits what `sequence_end` held back.
    pub fn finish(&mut self, cx: &mut Ctx<'_>, out: &mut Vec<SinkMsg>) {
        if let Emitter::SequenceEnd(s) = self {
            let mut held = cx.keys.held();
            held.sort_unstable();
            s.end(cx, &held, out);
        }
    }

    /// Live `sequence_end`: ends the sequences of keys idle for longer than the timeout.
    pub fn expire_idle(&mut self, cx: &mut Ctx<'_>, now_us: u64, out: &mut Vec<SinkMsg>) {
        let Emitter::SequenceEnd(s) = self else { return };
        let Some(idle) = &mut s.idle else { return };
        let mut ended = Vec::new();
        while let Some(&(k, seen)) = idle.queue.front() {
            if now_us.saturating_sub(seen) < idle.timeout_us {
                break;
            }
            idle.queue.pop_front();
            // Only the newest entry of a key counts; older ones are stale.
            if idle.open[k as usize] && idle.last_seen[k as usize] == seen {
                idle.open[k as usize] = false;
                ended.push(k);
            }
        }
        if !ended.is_empty() {
            s.end(cx, &ended, out);
        }
    }

    /// Bytes of per-key state held.
    pub fn bytes(&self) -> usize {
        match self {
            Emitter::EveryStep(arena) => arena.allocated_bytes(),
            Emitter::SequenceEnd(s) => match &s.held {
                Held::Outputs { arena, vals, times } => {
                    arena.allocated_bytes() + vec_bytes(vals) + vec_bytes(times)
                }
                Held::Inputs { feats, times } => vec_bytes(feats) + vec_bytes(times),
            },
            Emitter::Window(w) => vec_bytes(&w.rings) + w.counts.capacity() * 8,
        }
    }
}

/// The epoch's runs not streamed yet: `runs[head..]`, in order, `rows` steps in all. A call
/// takes a prefix, and the rest of each run it cut goes back just before the runs it did not
/// reach, so cutting a call costs its own runs only, not the whole queue.
struct Pending {
    runs: Vec<Run>,
    head: usize,
    rows: usize,
}

impl Pending {
    fn new(runs: &[Run]) -> Pending {
        Pending {
            runs: runs.to_vec(),
            head: 0,
            rows: runs.iter().map(|r| r.len).sum(),
        }
    }

    fn is_empty(&self) -> bool {
        self.head == self.runs.len()
    }

    /// Cuts the next streamed call into `call` (`rest` is scratch). The call has at most
    /// `STREAM_ROWS` rows. When every pending run fits, it is the call, every run whole.
    /// Otherwise a key gives at most `STREAM_ROWS / min(keys left, STREAM_KEYS)` steps (64
    /// while 64 or more keys are left; an equal share of the call when fewer are), so the
    /// call holds at least `min(keys left, STREAM_KEYS)` keys; the rest of a run continues
    /// in a later call, with its state.
    fn next_call(&mut self, call: &mut Vec<Run>, rest: &mut Vec<Run>) {
        let keys = self.runs.len() - self.head;
        let cap = if self.rows <= STREAM_ROWS {
            usize::MAX
        } else {
            STREAM_ROWS / keys.min(STREAM_KEYS)
        };
        call.clear();
        rest.clear();
        let (mut rows, mut end) = (0, self.head);
        while end < self.runs.len() && rows < STREAM_ROWS {
            let run = self.runs[end];
            let take = run.len.min(cap).min(STREAM_ROWS - rows);
            call.push(Run { len: take, ..run });
            if take < run.len {
                rest.push(Run {
                    key: run.key,
                    start: run.start + take,
                    len: run.len - take,
                });
            }
            rows += take;
            end += 1;
        }
        // At most one rest per run taken, so they fit in the taken runs' slots.
        self.head = end - rest.len();
        self.runs[self.head..end].copy_from_slice(rest);
        self.rows -= rows;
    }
}

/// Streams the epoch's runs through the model in the calls [`Pending::next_call`] cuts, carrying
/// each key's state in `arena` from call to call. A key's results do not depend on the cut;
/// only the order of the output rows does (each key's in time order, keys interleaved).
/// `emit(key, step, values)` gets every output row, call by call.
fn advance(
    model: &Model,
    ws: &mut Workspace,
    packed: &mut Packed,
    arena: &mut StateArena,
    acc: &Accepted,
    mut emit: impl FnMut(u32, usize, &[f32]),
) {
    let mut pending = Pending::new(&acc.runs);
    let (mut call, mut rest) = (Vec::new(), Vec::new());
    let mut lens: Vec<usize> = Vec::new();
    let mut slots: Vec<u32> = Vec::new();
    while !pending.is_empty() {
        pending.next_call(&mut call, &mut rest);
        lens.clear();
        lens.extend(call.iter().map(|r| r.len));
        slots.clear();
        slots.extend(call.iter().map(|r| r.key));
        packed.pack(model.input_size(), &lens, |s, t| acc.row(call[s].start + t));
        let res = model
            .advance(arena, &slots, packed, ws)
            .expect("streaming emitters are only built for causal models");
        for (s, tag, vals) in res.rows() {
            let run = call[s as usize];
            emit(run.key, run.start + tag as usize, vals);
        }
    }
}

impl SequenceEnd {
    fn epoch(&mut self, cx: &mut Ctx<'_>, acc: &Accepted) {
        if let Some(idle) = &mut self.idle {
            let now = (cx.clock)();
            for run in &acc.runs {
                idle.last_seen[run.key as usize] = now;
                idle.open[run.key as usize] = true;
                idle.queue.push_back((run.key, now));
            }
        }
        let all_steps = self.all_steps;
        match &mut self.held {
            Held::Outputs { arena, vals, times } => {
                advance(cx.model, cx.ws, cx.packed, arena, acc, |key, a, v| {
                    let k = key as usize;
                    if !all_steps {
                        vals[k].clear();
                        times[k].clear();
                    }
                    vals[k].extend_from_slice(v);
                    times[k].push(acc.times[a]);
                });
            }
            Held::Inputs { feats, times } => {
                for run in &acc.runs {
                    let k = run.key as usize;
                    let (a, b) = (run.start, run.start + run.len);
                    feats[k].extend_from_slice(&acc.feats[a * acc.width..b * acc.width]);
                    times[k].extend_from_slice(&acc.times[a..b]);
                }
            }
        }
    }

    /// Emits the output of `keys`' sequences and starts each a fresh sequence.
    fn end(&mut self, cx: &mut Ctx<'_>, keys: &[u32], out: &mut Vec<SinkMsg>) {
        let ow = cx.model.output_size();
        let mut batch = OutBatch::new(cx.keys.column(), ow);
        match &mut self.held {
            Held::Outputs { arena, vals, times } => {
                for &k in keys {
                    let ku = k as usize;
                    for (t, &time) in times[ku].iter().enumerate() {
                        batch.keys.push(cx.keys.get(k));
                        batch.times.push(time);
                        batch.values.extend_from_slice(&vals[ku][t * ow..(t + 1) * ow]);
                    }
                    times[ku] = Vec::new();
                    vals[ku] = Vec::new();
                    arena.reset(k);
                }
            }
            Held::Inputs { feats, times } => {
                run_whole(cx, self.all_steps, keys, feats, times, &mut batch);
            }
        }
        cx.send(batch, out);
    }
}

/// Non-causal `sequence_end`: each key's whole sequence through the offline form, many keys
/// per call (longest first, so the packed wavefronts stay dense).
fn run_whole(
    cx: &mut Ctx<'_>,
    all_steps: bool,
    keys: &[u32],
    feats: &mut [Vec<f32>],
    times: &mut [Vec<i64>],
    batch: &mut OutBatch,
) {
    let w = cx.model.input_size();
    let mut order: Vec<u32> = keys
        .iter()
        .copied()
        .filter(|&k| !times[k as usize].is_empty())
        .collect();
    order.sort_by_key(|&k| std::cmp::Reverse(times[k as usize].len()));
    let mut i = 0;
    while i < order.len() && !cx.aborted() {
        let mut rows = 0;
        let mut j = i;
        while j < order.len() && (j == i || rows + times[order[j] as usize].len() <= CALL_ROWS) {
            rows += times[order[j] as usize].len();
            j += 1;
        }
        let chunk = &order[i..j];
        let lens: Vec<usize> = chunk.iter().map(|&k| times[k as usize].len()).collect();
        cx.packed
            .pack(w, &lens, |s, t| &feats[chunk[s] as usize][t * w..(t + 1) * w]);
        let res = cx.model.forward(cx.packed, cx.ws);
        let mut emit = |k: u32, tag: u32, vals: &[f32]| {
            batch.keys.push(cx.keys.get(k));
            batch.times.push(times[k as usize][tag as usize]);
            batch.values.extend_from_slice(vals);
        };
        if all_steps {
            for (s, tag, vals) in res.rows() {
                emit(chunk[s as usize], tag, vals);
            }
        } else {
            for (s, r) in res.last_rows().into_iter().enumerate() {
                if let Some(r) = r {
                    emit(chunk[s], res.layout.tags[r], res.row_data(r));
                }
            }
        }
        for &k in chunk {
            feats[k as usize] = Vec::new();
            times[k as usize] = Vec::new();
        }
        i = j;
    }
}

impl Windows {
    /// Pushes the epoch's steps into each key's ring and runs every window that became due,
    /// from a fresh state, emitting its last output at the window's last time.
    fn epoch(&mut self, cx: &mut Ctx<'_>, acc: &Accepted, out: &mut Vec<SinkMsg>) {
        let (w, size) = (self.width, self.size);
        // Due windows: (key, step), input rows copied oldest first (a later step of the
        // same epoch may overwrite the ring).
        let mut due: Vec<(u32, usize)> = Vec::new();
        let mut rows: Vec<f32> = Vec::new();
        for run in &acc.runs {
            let k = run.key as usize;
            for a in run.start..run.start + run.len {
                let n = self.counts[k];
                let pos = (n % size as u64) as usize;
                self.rings[k][pos * w..(pos + 1) * w].copy_from_slice(acc.row(a));
                let n = n + 1;
                self.counts[k] = n;
                if n >= size as u64 && (n - size as u64).is_multiple_of(self.hop as u64) {
                    // Oldest first: the ring starts after the newest entry.
                    for j in 0..size {
                        let p = ((n as usize) + j) % size;
                        rows.extend_from_slice(&self.rings[k][p * w..(p + 1) * w]);
                    }
                    due.push((run.key, a));
                }
            }
        }
        let per_call = (CALL_ROWS / size).max(1);
        let mut batch = OutBatch::new(cx.keys.column(), cx.model.output_size());
        for (c, chunk) in due.chunks(per_call).enumerate() {
            let base = c * per_call * size;
            cx.packed.pack(w, &vec![size; chunk.len()], |s, t| {
                let r = base + s * size + t;
                &rows[r * w..(r + 1) * w]
            });
            let res = cx.model.forward(cx.packed, cx.ws);
            for (s, r) in res.last_rows().into_iter().enumerate() {
                if let Some(r) = r {
                    let (key, a) = chunk[s];
                    batch.keys.push(cx.keys.get(key));
                    batch.times.push(acc.times[a]);
                    batch.values.extend_from_slice(res.row_data(r));
                    batch.arrivals.push(acc.arrivals[a]);
                }
            }
        }
        cx.send(batch, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::builder::ModelBuilder;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Runs of `lens`, steps numbered from 0 in key order.
    fn runs_of(lens: &[usize]) -> Vec<Run> {
        let mut start = 0;
        lens.iter()
            .enumerate()
            .map(|(key, &len)| {
                start += len;
                Run {
                    key: key as u32,
                    start: start - len,
                    len,
                }
            })
            .collect()
    }

    /// The cut's contract, over random epochs: calls of at most `STREAM_ROWS` rows, each key
    /// at most once per call and giving at most `STREAM_ROWS / min(keys left, STREAM_KEYS)`
    /// steps, at least `min(keys left, STREAM_KEYS)` keys per call, the whole queue as one
    /// call of whole runs when it fits, and every key's steps in order, each exactly once.
    #[test]
    fn calls_are_cut_as_documented() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut shapes: Vec<Vec<usize>> = vec![vec![64; 1024], vec![150; 1000], vec![200; 64], vec![100; 65]];
        shapes.push(vec![5000, 3000, 1, 700]);
        shapes.push((0..63).map(|_| 1).chain([200]).collect());
        for _ in 0..200 {
            let keys = rng.random_range(1..300);
            let long = rng.random_range(1..3000);
            shapes.push((0..keys).map(|_| rng.random_range(1..=long)).collect());
        }
        for lens in shapes {
            let runs = runs_of(&lens);
            let mut pending = Pending::new(&runs);
            let (mut call, mut rest) = (Vec::new(), Vec::new());
            let mut next_step: Vec<usize> = runs.iter().map(|r| r.start).collect();
            while !pending.is_empty() {
                let left = &pending.runs[pending.head..];
                let (keys, total) = (left.len(), left.iter().map(|r| r.len).sum::<usize>());
                assert_eq!(pending.rows, total, "{lens:?}: steps pending miscounted");
                pending.next_call(&mut call, &mut rest);
                let rows: usize = call.iter().map(|r| r.len).sum();
                assert!(rows <= STREAM_ROWS, "{lens:?}: a call of {rows} rows");
                assert!(
                    call.len() >= keys.min(STREAM_KEYS),
                    "{lens:?}: {} keys of {keys}",
                    call.len()
                );
                if total <= STREAM_ROWS {
                    assert_eq!(call.len(), keys, "{lens:?}: a queue that fits is cut");
                    assert!(pending.is_empty());
                } else {
                    let cap = STREAM_ROWS / keys.min(STREAM_KEYS);
                    assert!(
                        call.iter().all(|r| r.len <= cap),
                        "{lens:?}: more than {cap} steps"
                    );
                }
                let mut seen = std::collections::HashSet::new();
                for r in &call {
                    assert!(seen.insert(r.key), "{lens:?}: key {} twice in a call", r.key);
                    assert!(r.len > 0);
                    assert_eq!(
                        r.start, next_step[r.key as usize],
                        "{lens:?}: key {} out of order",
                        r.key
                    );
                    next_step[r.key as usize] += r.len;
                }
            }
            for (r, &end) in runs_of(&lens).iter().zip(&next_step) {
                assert_eq!(end, r.start + r.len, "{lens:?}: key {} not finished", r.key);
            }
        }
    }

    /// `advance` over two epochs (the second from the state the first left), for few keys
    /// with long runs (cut), many keys with short runs (whole, several calls), both mixed,
    /// and runs just past the per-key cap: every key's outputs, in the order emitted, are
    /// bit for bit those of its whole sequence run offline in one call, with the same input
    /// steps (a stride-2 convolution emits every other step, so the tags are checked too).
    #[test]
    fn cutting_runs_into_calls_changes_no_result() {
        let model = ModelBuilder::new(3, 11)
            .conv1d("conv", 4, 3, 2, 1, "causal")
            .recurrent("lstm", "lstm", 16, 2)
            .linear("head", 2)
            .build()
            .unwrap();
        let cases: Vec<Vec<usize>> = vec![
            vec![5000, 3000, 1, 700],
            vec![40; 300],
            vec![200; 64],
            vec![100; 65],
            (0..90)
                .map(|k| if k % 9 == 0 { 700 } else { 1 + k % 13 })
                .collect(),
        ];
        let mut rng = StdRng::seed_from_u64(5);
        for lens in cases {
            let keys = lens.len();
            let mut arena = model.new_arena();
            for _ in 0..keys {
                arena.alloc();
            }
            let (mut ws, mut packed) = (Workspace::default(), Packed::default());
            // Each key's whole input, and what `advance` emitted for it: (input step, values).
            let mut inputs: Vec<Vec<f32>> = vec![Vec::new(); keys];
            let mut got: Vec<Vec<(usize, Vec<f32>)>> = vec![Vec::new(); keys];
            for epoch in 0..2 {
                let mut acc = Accepted {
                    width: 3,
                    ..Default::default()
                };
                // The second epoch: other lengths, so that cuts fall elsewhere.
                let epoch_lens: Vec<usize> = lens
                    .iter()
                    .map(|&l| if epoch == 0 { l } else { l / 2 + 3 })
                    .collect();
                acc.runs = runs_of(&epoch_lens);
                let done: Vec<usize> = inputs.iter().map(|x| x.len() / 3).collect();
                for (key, &len) in epoch_lens.iter().enumerate() {
                    for t in 0..len {
                        let row: Vec<f32> = (0..3).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                        acc.feats.extend(&row);
                        acc.times.push((done[key] + t) as i64);
                        inputs[key].extend(&row);
                    }
                }
                advance(&model, &mut ws, &mut packed, &mut arena, &acc, |key, a, vals| {
                    let run = acc.runs[key as usize];
                    got[key as usize].push((done[key as usize] + a - run.start, vals.to_vec()));
                });
            }
            for (key, got) in got.iter().enumerate() {
                let offline = model.forward_sequence(&inputs[key], inputs[key].len() / 3);
                let want: Vec<(usize, Vec<f32>)> = offline
                    .steps
                    .iter()
                    .enumerate()
                    .map(|(i, &t)| (t as usize, offline.data[i * 2..(i + 1) * 2].to_vec()))
                    .collect();
                assert_eq!(got.len(), want.len(), "{lens:?}: key {key}'s output count");
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(g, w, "{lens:?}: key {key} (emitted, offline)");
                }
            }
        }
    }
}
