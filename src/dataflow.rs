//! The timely operators of a pipeline, as extension traits on streams:
//!
//! ```text
//! input: (dest worker, SourceMsg) --exchange by dest--> keyed_model --exchange to 0--> collect_at_worker0
//! ```
//!
//! Timestamps are coarse epochs (a record batch of a file, a few milliseconds of live input),
//! never event times. The keyed operator stashes each epoch's batches and processes them when
//! the input frontier has passed the epoch; steps of one key inside an epoch are ordered by
//! the processor (timely does not order records within a timestamp).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use std::sync::{Arc, Mutex};

use timely::scheduling::SyncActivator;

use crate::checkpoint::{PartInfo, PartWriter};
use crate::keyed::KeyedProcessor;
pub use crate::record::ToSink;
use crate::record::{SinkMsg, SourceMsg, StepBatch};

/// Records entering the dataflow: the destination worker (already a well-mixed hash of the
/// key, reduced modulo the worker count) and the message.
pub type Inbound = (u64, SourceMsg);

/// Runs the model per key: `stream.keyed_model(processor)`.
pub trait KeyedModel<'scope> {
    /// Exchanges records to the worker owning their key, advances every key with steps in a
    /// completed epoch (see [`KeyedProcessor::process_epoch`]) and emits predictions,
    /// rejects and, when the input ends, the worker's counters.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use timely::dataflow::operators::{Input, Probe};
    /// use timely::dataflow::operators::Inspect;
    /// use seqflow::dataflow::KeyedModel;
    /// use seqflow::keyed::KeyedProcessor;
    /// use seqflow::model::builder::ModelBuilder;
    /// use seqflow::vocab::{Emit, NanPolicy};
    /// use seqflow::record::{KeyColumn, KeyRef, SinkMsg, SourceMsg, StepBatch};
    ///
    /// let model = Arc::new(ModelBuilder::new(2, 1).recurrent("gru", "gru", 4, 1).build().unwrap());
    /// timely::execute_directly(move |worker| {
    ///     let processor = KeyedProcessor::new(model.clone(), Emit::EveryStep, NanPolicy::Error, true);
    ///     let mut input = timely::dataflow::InputHandleVec::new();
    ///     let predictions = std::rc::Rc::new(std::cell::Cell::new(0));
    ///     let seen = predictions.clone();
    ///     worker.dataflow::<u64, _, _>(|scope| {
    ///         scope
    ///             .input_from(&mut input)
    ///             .keyed_model(processor)
    ///             .inspect(move |(_, msg): &(u64, SinkMsg)| {
    ///                 if let SinkMsg::Rows(b) = msg {
    ///                     seen.set(seen.get() + b.len());
    ///                 }
    ///             });
    ///     });
    ///     // Two steps of key 7 in epoch 0: two predictions once the epoch completes.
    ///     let mut batch = StepBatch::new(0, KeyColumn::Int(vec![]));
    ///     for (row, t) in [(0u64, 10i64), (1, 11)] {
    ///         batch.rows.push(row);
    ///         batch.keys.push(KeyRef::Int(7));
    ///         batch.times.push(t);
    ///         batch.features.extend([0.5, -0.5]);
    ///     }
    ///     input.send((0, SourceMsg::Steps(batch)));
    ///     input.close();
    ///     while worker.step() {}
    ///     assert_eq!(predictions.get(), 2);
    /// });
    /// ```
    fn keyed_model(self, processor: KeyedProcessor) -> StreamVec<'scope, u64, ToSink>;

    /// [`KeyedModel::keyed_model`], writing this worker's part of a checkpoint through
    /// `parts` at every boundary a [`SourceMsg::Mark`] names, once every epoch before it is
    /// processed and before any epoch from it on.
    fn keyed_model_with(
        self,
        processor: KeyedProcessor,
        parts: Option<PartWriter>,
    ) -> StreamVec<'scope, u64, ToSink>;
}

impl<'scope> KeyedModel<'scope> for StreamVec<'scope, u64, Inbound> {
    fn keyed_model(self, processor: KeyedProcessor) -> StreamVec<'scope, u64, ToSink> {
        self.keyed_model_with(processor, None)
    }

    fn keyed_model_with(
        self,
        mut processor: KeyedProcessor,
        parts: Option<PartWriter>,
    ) -> StreamVec<'scope, u64, ToSink> {
        let worker = self.scope().worker();
        self.unary_frontier::<CapacityContainerBuilder<Vec<ToSink>>, _, _, _>(
            Exchange::new(|r: &Inbound| r.0),
            "KeyedModel",
            move |default_cap, info| {
                // Parts are written on their own threads (a checkpoint must not stall the
                // stream); a finished one wakes the operator, which sends its message.
                let mut writes = PartWrites {
                    writer: parts,
                    done: Arc::default(),
                    threads: Vec::new(),
                    wake: worker.sync_activator_for(info.address.to_vec()),
                };
                // Held at the input frontier to emit the final counters, then dropped.
                let mut final_cap: Option<Capability<u64>> = Some(default_cap);
                let mut stash: BTreeMap<u64, (Capability<u64>, Vec<StepBatch>)> = BTreeMap::new();
                // Checkpoint boundaries asked for, each with a capability at the time the
                // mark came (at most the boundary) to send the part's message with.
                let mut marks: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
                // The highest boundary whose part was taken.
                let mut written = 0u64;
                let mut passthrough: Vec<SinkMsg> = Vec::new();
                let mut out: Vec<SinkMsg> = Vec::new();
                // One epoch per activation: its predictions go downstream (to the writer
                // thread) while the next is computed, instead of several epochs' worth at
                // once, each tens of MB for a wide output, fresh pages every one.
                let again = worker.activator_for(info.address.clone());
                move |(input, frontier), output| {
                    input.for_each_stamp(|cap, data| {
                        let Some(&time) = cap.least() else { return };
                        let entry = stash.entry(time).or_insert_with(|| {
                            (cap.retain_least(output.output_index()).expect("time"), Vec::new())
                        });
                        for container in data {
                            for (_, msg) in container.drain(..) {
                                match msg {
                                    SourceMsg::Steps(b) => entry.1.push(b),
                                    SourceMsg::Rejects(r) => passthrough.push(SinkMsg::Rejects(r)),
                                    SourceMsg::Stats(s) => passthrough.push(SinkMsg::Stats(s)),
                                    SourceMsg::Offsets(o) => passthrough.push(SinkMsg::Offsets(o)),
                                    SourceMsg::Failed(e) => {
                                        processor.heard_failure(&e);
                                        passthrough.push(SinkMsg::Failed(e))
                                    }
                                    SourceMsg::Mark(b) => {
                                        marks.entry(b).or_insert_with(|| entry.0.delayed(&time));
                                    }
                                }
                            }
                        }
                        if !passthrough.is_empty() {
                            let mut session = output.session(&entry.0);
                            for m in passthrough.drain(..) {
                                session.give((0, m));
                            }
                        }
                    });
                    // Epochs in order; a checkpoint's part once every epoch before its
                    // boundary is processed (the frontier is at or past it) and before any
                    // epoch from it on.
                    // Once the input has ended, marks past every epoch wait for `finish`
                    // (sequence_end emits what it holds there, and a part taken before
                    // would hold it too).
                    let ended = frontier.frontier().is_empty();
                    loop {
                        let mark = marks.keys().next().copied().filter(|b| !frontier.less_than(b));
                        let epoch = stash.keys().next().copied().filter(|e| !frontier.less_equal(e));
                        match (mark, epoch) {
                            (Some(_), None) if ended && final_cap.is_some() => break,
                            (Some(b), e) if e.is_none_or(|e| b <= e) => {
                                let cap = marks.remove(&b).expect("a mark");
                                writes.start(&mut processor, b, &cap, output);
                                written = written.max(b);
                            }
                            (_, Some(e)) => {
                                let (cap, batches) = stash.remove(&e).expect("an epoch");
                                let refs: Vec<&StepBatch> = batches.iter().collect();
                                processor.process_epoch(&refs, &mut out);
                                drop(refs);
                                batches.into_iter().for_each(StepBatch::recycle);
                                let mut session = output.session(&cap);
                                for m in out.drain(..) {
                                    session.give((0, m));
                                }
                                if stash.keys().next().is_some_and(|e| !frontier.less_equal(e)) {
                                    // More epochs are ready: the rest of this activation
                                    // (the end of input among it) waits for them. The
                                    // final counters' capability follows the input, so
                                    // the epoch just done is complete downstream now.
                                    // Checkpoint parts written meanwhile are announced
                                    // now: the collector commits a checkpoint only once
                                    // every worker's part is in.
                                    drop(session);
                                    if let Some(cap) = final_cap.as_mut() {
                                        if let Some(t) = frontier.frontier().as_option() {
                                            cap.downgrade(t);
                                        }
                                        writes.send_done(cap, output);
                                    }
                                    again.activate();
                                    return;
                                }
                            }
                            _ => break,
                        }
                    }
                    if let Some(cap) = final_cap.as_ref() {
                        writes.send_done(cap, output);
                    }
                    if let Some(cap) = final_cap.as_mut() {
                        match frontier.frontier().as_option() {
                            Some(t) => {
                                cap.downgrade(t);
                                // Live sequence_end: keys idle past the timeout end here.
                                processor.expire_idle(crate::vocab::now_us(), &mut out);
                                if !out.is_empty() {
                                    let mut session = output.session(&*cap);
                                    for m in out.drain(..) {
                                        session.give((0, m));
                                    }
                                }
                            }
                            None => {
                                // What finish emits comes after every boundary whose part
                                // was taken before it (the frontier may have jumped from
                                // below such a boundary straight to the end).
                                if written > *cap.time() {
                                    cap.downgrade(&written);
                                }
                                processor.finish(&mut out);
                                let mut session = output.session(&*cap);
                                for m in out.drain(..) {
                                    session.give((0, m));
                                }
                                drop(session);
                                while let Some((b, mark)) = marks.pop_first() {
                                    writes.start(&mut processor, b, &mark, output);
                                }
                                // Every part is on disk before the operator lets go.
                                writes.join();
                                writes.send_done(cap, output);
                                final_cap = None;
                            }
                        }
                    }
                }
            },
        )
    }
}

type KeyedOutput<'a, 'b> = timely::dataflow::operators::generic::OutputBuilderSession<
    'a,
    u64,
    CapacityContainerBuilder<Vec<ToSink>>,
>;

/// A part written (or not) for a boundary.
type WrittenPart = (u64, std::result::Result<PartInfo, String>);

/// One worker's checkpoint parts in flight: each is exported on the worker (the state
/// cannot change under it) and written, synced and renamed on a thread of its own.
struct PartWrites {
    writer: Option<PartWriter>,
    done: Arc<Mutex<Vec<WrittenPart>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    wake: SyncActivator,
}

impl PartWrites {
    /// This worker passed `boundary`: tells the sink (with its counters since the last
    /// mark, at the mark's time) and starts writing its part.
    fn start(
        &mut self,
        processor: &mut KeyedProcessor,
        boundary: u64,
        cap: &Capability<u64>,
        output: &mut KeyedOutput<'_, '_>,
    ) {
        let Some(writer) = self.writer.clone() else { return };
        let stats = processor.take_stats();
        output.session(cap).give((0, SinkMsg::Marked { boundary, stats }));
        // A stopped worker skipped epochs: its state is not the boundary's.
        if processor.is_aborted() {
            self.done
                .lock()
                .expect("parts")
                .push((boundary, Err("the run was stopped".into())));
            let _ = self.wake.activate();
            return;
        }
        let rows = processor.export();
        let (done, wake) = (self.done.clone(), self.wake.clone());
        let job = move || {
            let part = writer.write(boundary, rows);
            done.lock().expect("parts").push((boundary, part));
            let _ = wake.activate();
        };
        match std::thread::Builder::new().name("seqflow-part".into()).spawn(job) {
            Ok(t) => self.threads.push(t),
            // No thread to be had: the rows went with the closure; say so in the part.
            Err(e) => self
                .done
                .lock()
                .expect("parts")
                .push((boundary, Err(format!("no thread to write the part: {e}")))),
        }
    }

    /// Sends the sink every part written so far.
    fn send_done(&mut self, cap: &Capability<u64>, output: &mut KeyedOutput<'_, '_>) {
        let done: Vec<_> = std::mem::take(&mut *self.done.lock().expect("parts"));
        if done.is_empty() {
            return;
        }
        self.threads.retain(|t| !t.is_finished());
        let mut session = output.session(cap);
        for (boundary, part) in done {
            session.give((0, SinkMsg::Part { boundary, part }));
        }
    }

    /// Waits for every part in flight.
    fn join(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What worker 0 does with the records a pipeline routes to it (predictions, rejects and
/// counters; view changes).
pub trait Collect<D> {
    /// Handles one record.
    fn take(&mut self, record: D);
    /// Whether `record` is handed over on arrival instead of with its epoch (records that
    /// do not belong to an epoch's output, such as a checkpoint part's description).
    fn at_once(&self, _record: &D) -> bool {
        false
    }
    /// Every record before epoch `to` (`None`: every record) has been handed over, and none
    /// from it on: the moment to commit a checkpoint whose boundary is at most `to`.
    fn advance(&mut self, _to: Option<u64>) {}
    /// The input frontier moved past an epoch (live runs flush here).
    fn epoch_done(&mut self) {}
    /// The input ended.
    fn finish(&mut self) {}
}

/// Collects a stream at worker 0: `stream.collect_at_worker0("Sink", handler)`.
pub trait CollectAtWorker0<'scope, D> {
    /// Routes every record to worker 0 and hands it to `handler` there, epoch by epoch once
    /// each epoch is complete, with a call when an epoch completes and one when the input
    /// ends. The returned stream carries no data and
    /// exists to be probed: its frontier says what the handler has seen.
    fn collect_at_worker0<H: Collect<D> + 'static>(
        self,
        name: &str,
        handler: Rc<RefCell<H>>,
    ) -> StreamVec<'scope, u64, ()>;
}

impl<'scope, D: timely::ExchangeData + Clone> CollectAtWorker0<'scope, D> for StreamVec<'scope, u64, D> {
    fn collect_at_worker0<H: Collect<D> + 'static>(
        self,
        name: &str,
        handler: Rc<RefCell<H>>,
    ) -> StreamVec<'scope, u64, ()> {
        self.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Exchange::new(|_: &D| 0),
            name,
            move |_cap, _info| {
                let mut finished = false;
                let mut last_frontier: Option<u64> = None;
                // Records wait for their epoch to complete and are handed over epoch by
                // epoch, so the handler knows exactly which epochs its output holds.
                let mut stash: BTreeMap<u64, Vec<D>> = BTreeMap::new();
                move |(input, frontier), _output| {
                    let mut h = handler.borrow_mut();
                    input.for_each(|cap, data| {
                        let time = cap.least().copied().unwrap_or(0);
                        let held = stash.entry(time).or_default();
                        for r in data.drain(..) {
                            if h.at_once(&r) {
                                h.take(r);
                            } else {
                                held.push(r);
                            }
                        }
                    });
                    while let Some(entry) = stash.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break;
                        }
                        h.advance(Some(*entry.key()));
                        for record in entry.remove() {
                            h.take(record);
                        }
                    }
                    let now = frontier.frontier().as_option().copied();
                    if now != last_frontier {
                        last_frontier = now;
                        h.advance(now);
                        h.epoch_done();
                    }
                    if now.is_none() && !finished {
                        finished = true;
                        h.finish();
                    }
                }
            },
        )
    }
}
