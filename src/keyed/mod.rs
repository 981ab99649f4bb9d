//! The per-worker keyed processor: owns every key's state and turns the steps of one
//! completed epoch into predictions. The timely operator (see `dataflow.rs`) only stashes
//! batches by epoch and calls [`KeyedProcessor::process_epoch`] once the frontier has passed;
//! everything here is plain code, tested without a dataflow (`tests/keyed_oracle.rs`: random
//! epochs, orderings, duplicates and late steps equal the offline run of the accepted steps,
//! in every emit mode).
//!
//! Per epoch: [`order`] groups the rows by key, orders them by `(time, source, row)`, rejects
//! late and duplicate steps and forward-fills features; then the [`emit`] mode's
//! [`Emitter`] runs the model over the accepted steps.

pub mod emit;
pub mod index;
pub mod order;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use emit::{Ctx, Emitter};
use index::{KeyIndex, Lookup};
use order::{Accepted, Sequencer};

use crate::checkpoint::part::StateRows;
use crate::model::{Model, Packed, Workspace};
use crate::record::{EpochReport, KeyRef, Reject, RejectReason, SinkMsg, Stats, StepBatch};
use crate::vocab::{Emit, NanPolicy};

/// The keyed state of one worker.
pub struct KeyedProcessor {
    model: Arc<Model>,
    keys: KeyIndex,
    order: Sequencer,
    emitter: Emitter,
    accepted: Accepted,
    ws: Workspace,
    packed: Packed,
    /// Set when the run is abandoned (a stopped file run): no more model work.
    abort: Option<Arc<AtomicBool>>,
    /// A checkpointed live run: the end of the input is a restart, not the end of the
    /// sequences, so `sequence_end` keeps what it holds (in the final checkpoint).
    keep_open: bool,
    /// Keys this worker may hold at once (live: its share of `max_keys`).
    max_keys: usize,
    /// Live `state_ttl_ms`: when each key last had a step.
    ttl: Option<Ttl>,
    /// The time (us) a step is seen at: `vocab::now_us`, or a test's clock.
    clock: fn() -> u64,
    /// This worker's counters since they were last sent (after each epoch, at a mark, at
    /// the end).
    pub stats: Stats,
    /// This worker's global index, named in its [`EpochReport`]s.
    pub worker: u32,
    /// Where a source's failure, heard from any worker, is noted (so that every process of
    /// a cluster ends with it, not only the one that collects).
    heard: Option<Arc<std::sync::Mutex<Option<String>>>>,
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
        KeyedProcessor {
            keys: KeyIndex::new(int_keys.into()),
            order: Sequencer::new(model.input_size(), nan == NanPolicy::Ffill),
            emitter: Emitter::new(&model, emit),
            accepted: Accepted::default(),
            ws: Workspace::default(),
            packed: Packed::default(),
            abort: None,
            keep_open: false,
            max_keys: usize::MAX,
            ttl: None,
            clock: crate::vocab::now_us,
            stats: Stats::default(),
            worker: 0,
            heard: None,
            model,
        }
    }

    /// Skips all model work once `flag` is set: a stopped file run discards its output, so
    /// the epochs in flight and `sequence_end`'s final run would be work thrown away.
    pub fn with_abort(mut self, flag: Option<Arc<AtomicBool>>) -> Self {
        self.abort = flag;
        self
    }

    /// Notes source failures in `slot` (the first one).
    pub fn with_failures(mut self, slot: Arc<std::sync::Mutex<Option<String>>>) -> Self {
        self.heard = Some(slot);
        self
    }

    /// A source failed with `msg` (heard from any worker).
    pub fn heard_failure(&self, msg: &str) {
        if let Some(h) = &self.heard {
            h.lock()
                .expect("failure slot")
                .get_or_insert_with(|| msg.to_string());
        }
    }

    /// A checkpointed live run: `finish` does not end `sequence_end`'s sequences.
    pub fn with_keep_open(mut self, keep: bool) -> Self {
        self.keep_open = keep;
        self
    }

    fn aborted(&self) -> bool {
        self.abort.as_ref().is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// Whether the run was abandoned (its state stopped following the epochs).
    pub fn is_aborted(&self) -> bool {
        self.aborted()
    }

    /// Live `sequence_end`: end a key's sequence after `ms` without steps.
    pub fn with_idle_timeout(mut self, ms: Option<u64>) -> Self {
        if let Some(ms) = ms {
            self.emitter.set_idle_timeout(ms * 1000);
        }
        self
    }

    /// Live: hold at most `max_keys` keys (a new key's steps beyond are rejected as
    /// `key_limit`), and forget a key after `ttl_ms` without steps.
    pub fn with_key_limits(mut self, max_keys: usize, ttl_ms: Option<u64>) -> Self {
        self.max_keys = max_keys;
        self.ttl = ttl_ms.map(|ms| Ttl {
            timeout_us: ms.saturating_mul(1000),
            every_us: (ms.saturating_mul(1000) / 8).clamp(5_000, 1_000_000),
            next_sweep: 0,
            last_seen: Vec::new(),
        });
        self
    }

    /// The clock steps are seen at (default [`crate::vocab::now_us`]); tests drive time
    /// with their own, and pass the same time to [`KeyedProcessor::expire_idle`].
    pub fn with_clock(mut self, clock: fn() -> u64) -> Self {
        self.clock = clock;
        self
    }

    /// Number of keys held.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Approximate bytes of per-key state: model state, key index, times and buffers.
    pub fn state_bytes(&self) -> usize {
        self.emitter.bytes() + self.keys.bytes() + self.order.bytes()
    }

    fn ctx(&mut self) -> (Ctx<'_>, &mut Emitter) {
        (
            Ctx {
                model: &self.model,
                ws: &mut self.ws,
                packed: &mut self.packed,
                keys: &self.keys,
                stats: &mut self.stats,
                abort: self.abort.as_deref(),
                clock: self.clock,
            },
            &mut self.emitter,
        )
    }

    /// Processes every step of one completed epoch. Predictions and rejects go to `out`.
    pub fn process_epoch(&mut self, batches: &[&StepBatch], out: &mut Vec<SinkMsg>) {
        if self.aborted() {
            return;
        }
        let start = std::time::Instant::now();
        self.epoch_inner(batches, out);
        // The epoch's counters and a report travel with it: the sink's totals (and the
        // metrics) follow the run epoch by epoch instead of jumping at the end.
        if self.stats != Stats::default() {
            out.push(SinkMsg::Stats(std::mem::take(&mut self.stats)));
        }
        out.push(SinkMsg::Epoch(EpochReport {
            worker: self.worker,
            micros: start.elapsed().as_micros() as u64,
            keys: self.keys() as u64,
            state_bytes: self.state_bytes() as u64,
        }));
    }

    fn epoch_inner(&mut self, batches: &[&StepBatch], out: &mut Vec<SinkMsg>) {
        self.order.begin();
        let mut any = false;
        let mut refused = Vec::new();
        let now = self.ttl.as_ref().map_or(0, |_| (self.clock)());
        for (bi, b) in batches.iter().enumerate() {
            for r in 0..b.len() {
                let key = match self.keys.index(b.keys.get(r), self.max_keys) {
                    Lookup::Held(k) => k,
                    Lookup::New(k) => {
                        self.order.add_key(k);
                        self.emitter.add_key(k);
                        self.stats.keys += 1;
                        k
                    }
                    Lookup::Full => {
                        self.stats.count_reject(RejectReason::KeyLimit);
                        refused.push(Reject {
                            reason: RejectReason::KeyLimit,
                            source: b.source,
                            row: b.rows[r],
                            key: Some(b.keys.get(r).to_owned()),
                            time: Some(b.times[r]),
                            last_time: None,
                            detail: format!(
                                "a new key, but this worker holds its share of max_keys ({} keys); raise \
                                 max_keys, or set state_ttl_ms so that idle keys are forgotten",
                                self.max_keys
                            ),
                        });
                        continue;
                    }
                    Lookup::WrongKind => {
                        self.stats.count_reject(RejectReason::Malformed);
                        let (this, held) = match b.keys.get(r) {
                            KeyRef::Int(_) => ("an integer", "strings"),
                            KeyRef::Str(_) => ("a string", "integers"),
                        };
                        refused.push(Reject {
                            reason: RejectReason::Malformed,
                            source: b.source,
                            row: b.rows[r],
                            key: Some(b.keys.get(r).to_owned()),
                            time: Some(b.times[r]),
                            last_time: None,
                            detail: format!("key is {this} but this worker's keys are {held}; a stream's keys are all one type"),
                        });
                        continue;
                    }
                };
                if let Some(ttl) = &mut self.ttl {
                    ttl.seen(key, now);
                }
                self.order.pend(key, b, bi, r);
                any = true;
            }
        }
        if !refused.is_empty() {
            out.push(SinkMsg::Rejects(refused));
        }
        if !any {
            return;
        }
        let rejects = self
            .order
            .accept(&self.keys, batches, &mut self.accepted, &mut self.stats);
        if !rejects.is_empty() {
            out.push(SinkMsg::Rejects(rejects));
        }
        let accepted = std::mem::take(&mut self.accepted);
        let (mut cx, emitter) = self.ctx();
        emitter.epoch(&mut cx, &accepted, out);
        self.accepted = accepted;
    }

    /// Whether keys are integers (`None` before a live run's first key).
    pub fn int_keys(&self) -> Option<bool> {
        match self.keys {
            KeyIndex::Unset => None,
            KeyIndex::Int { .. } => Some(true),
            KeyIndex::Str { .. } => Some(false),
        }
    }

    /// The keys held, in the order they were first seen (index order).
    pub fn held_keys(&self) -> Vec<crate::record::Key> {
        let mut held = self.keys.held();
        held.sort_unstable();
        held.into_iter().map(|k| self.keys.get(k).to_owned()).collect()
    }

    /// Empty checkpoint rows of this processor's shape, to restore into.
    pub fn empty_rows(&self, int_keys: bool) -> StateRows {
        StateRows::new(int_keys, self.order.fill_width())
    }

    /// Every key this worker holds, for its part of a checkpoint (keys in index order).
    pub fn export(&self) -> StateRows {
        let int = matches!(self.keys.column(), crate::record::KeyColumn::Int(_));
        let mut rows = StateRows::new(int, self.order.fill_width());
        let mut held = self.keys.held();
        held.sort_unstable();
        // Room for every key at once: growing by doubling re-copied (and page-faulted) the
        // whole state several times (a 512 MB state took 1.2 s to export instead of 0.3).
        let n = held.len();
        let (floats, counters) = self.emitter.per_key();
        rows.keys.reserve(n);
        rows.last_time.reserve_exact(n);
        rows.fill.reserve_exact(n * rows.fill_width);
        rows.state.values.reserve_exact(n * floats);
        rows.state.offsets.reserve_exact(n);
        rows.counters.values.reserve_exact(n * counters);
        rows.counters.offsets.reserve_exact(n);
        rows.held_times.offsets.reserve_exact(n);
        rows.held_values.offsets.reserve_exact(n);
        for k in held {
            rows.keys.push(self.keys.get(k));
            let (last, fill) = self.order.export_key(k);
            rows.last_time.push(last);
            rows.fill.extend_from_slice(fill);
            self.emitter.export_key(k, &mut rows);
        }
        rows
    }

    /// Restores keys from a checkpoint (before the first epoch). Restored keys are not
    /// counted as started: the checkpoint's counters already hold them.
    pub fn import(&mut self, rows: &StateRows) -> Result<(), String> {
        if rows.fill_width != self.order.fill_width() {
            return Err(format!(
                "the state has {} forward-fill values per key; this run keeps {}",
                rows.fill_width,
                self.order.fill_width()
            ));
        }
        for i in 0..rows.len() {
            let key = rows.keys.get(i);
            let k = match self.keys.index(key, usize::MAX) {
                Lookup::New(k) => k,
                _ => return Err(format!("key {key} appears twice")),
            };
            self.order.add_key(k);
            self.emitter.add_key(k);
            self.order.import_key(k, rows.last_time[i], rows.fill_row(i));
            self.emitter.import_key(k, rows, i)?;
            // Live clocks (state_ttl_ms, idle timeouts) start again at the restore.
            let now = (self.clock)();
            if let Some(ttl) = &mut self.ttl {
                ttl.seen(k, now);
            }
            self.emitter.touch(k, now);
        }
        Ok(())
    }

    /// This worker's counters since the last call (a checkpoint part carries them).
    pub fn take_stats(&mut self) -> Stats {
        std::mem::take(&mut self.stats)
    }

    /// End of input: emits what `sequence_end` held back, and this worker's counters.
    pub fn finish(&mut self, out: &mut Vec<SinkMsg>) {
        if !self.aborted() && !self.keep_open {
            let (mut cx, emitter) = self.ctx();
            emitter.finish(&mut cx, out);
        }
        self.stats.state_bytes = self.state_bytes() as u64;
        out.push(SinkMsg::Stats(std::mem::take(&mut self.stats)));
    }

    /// Live: ends the `sequence_end` sequences of keys idle past the idle timeout, and
    /// forgets the keys idle past `state_ttl_ms` (looked for every eighth of it).
    pub fn expire_idle(&mut self, now_us: u64, out: &mut Vec<SinkMsg>) {
        let (mut cx, emitter) = self.ctx();
        emitter.expire_idle(&mut cx, now_us, out);
        let Some(ttl) = &mut self.ttl else { return };
        if now_us < ttl.next_sweep {
            return;
        }
        ttl.next_sweep = now_us + ttl.every_us;
        let gone: Vec<u32> = (0..ttl.last_seen.len() as u32)
            .filter(|&k| now_us.saturating_sub(ttl.last_seen[k as usize]) >= ttl.timeout_us)
            .collect();
        if gone.is_empty() {
            return;
        }
        for &k in &gone {
            ttl.last_seen[k as usize] = Ttl::FREE;
        }
        let (mut cx, emitter) = self.ctx();
        emitter.forget(&mut cx, &gone, out);
        for &k in &gone {
            self.keys.remove(k);
        }
        self.stats.keys_forgotten += gone.len() as u64;
    }
}

/// Live `state_ttl_ms`: when each key index last had a step.
struct Ttl {
    timeout_us: u64,
    /// How often keys are looked over.
    every_us: u64,
    next_sweep: u64,
    /// Per key index: `now_us` of its last step; [`Ttl::FREE`] when no key holds it.
    last_seen: Vec<u64>,
}

impl Ttl {
    /// Never expires (`now - FREE` saturates to 0).
    const FREE: u64 = u64::MAX;

    fn seen(&mut self, k: u32, now: u64) {
        let k = k as usize;
        if k >= self.last_seen.len() {
            self.last_seen.resize(k + 1, Self::FREE);
        }
        self.last_seen[k] = now;
    }
}
