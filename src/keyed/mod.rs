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
use index::KeyIndex;
use order::{Accepted, Sequencer};

use crate::model::{Model, Packed, Workspace};
use crate::record::{SinkMsg, Stats, StepBatch};
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
    /// This worker's counters, sent to the sink when the input ends.
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
        KeyedProcessor {
            keys: KeyIndex::new(int_keys.into()),
            order: Sequencer::new(model.input_size(), nan == NanPolicy::Ffill),
            emitter: Emitter::new(&model, emit),
            accepted: Accepted::default(),
            ws: Workspace::default(),
            packed: Packed::default(),
            abort: None,
            stats: Stats::default(),
            model,
        }
    }

    /// Skips all model work once `flag` is set: a stopped file run discards its output, so
    /// the epochs in flight and `sequence_end`'s final run would be work thrown away.
    pub fn with_abort(mut self, flag: Option<Arc<AtomicBool>>) -> Self {
        self.abort = flag;
        self
    }

    fn aborted(&self) -> bool {
        self.abort.as_ref().is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// Live `sequence_end`: end a key's sequence after `ms` without steps.
    pub fn with_idle_timeout(mut self, ms: Option<u64>) -> Self {
        if let Some(ms) = ms {
            self.emitter.set_idle_timeout(ms * 1000);
        }
        self
    }

    /// Number of keys seen.
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
            },
            &mut self.emitter,
        )
    }

    /// Processes every step of one completed epoch. Predictions and rejects go to `out`.
    pub fn process_epoch(&mut self, batches: &[&StepBatch], out: &mut Vec<SinkMsg>) {
        if self.aborted() {
            return;
        }
        self.order.begin();
        let mut any = false;
        for (bi, b) in batches.iter().enumerate() {
            for r in 0..b.len() {
                let (key, new) = self.keys.index(b.keys.get(r));
                if new {
                    self.order.add_key();
                    self.emitter.add_key();
                }
                self.order.pend(key, b, bi, r);
                any = true;
            }
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

    /// End of input: emits what `sequence_end` held back, and this worker's counters.
    pub fn finish(&mut self, out: &mut Vec<SinkMsg>) {
        if !self.aborted() {
            let (mut cx, emitter) = self.ctx();
            emitter.finish(&mut cx, out);
        }
        self.stats.keys = self.keys.len() as u64;
        self.stats.state_bytes = self.state_bytes() as u64;
        out.push(SinkMsg::Stats(std::mem::take(&mut self.stats)));
    }

    /// Live `sequence_end`: ends the sequences of keys idle for longer than the timeout.
    pub fn expire_idle(&mut self, now_us: u64, out: &mut Vec<SinkMsg>) {
        let (mut cx, emitter) = self.ctx();
        emitter.expire_idle(&mut cx, now_us, out);
    }
}
