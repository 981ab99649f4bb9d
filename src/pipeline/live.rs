//! `seqflow run` with a live source (TCP or stdin).
//!
//! Worker 0 of process 0 owns the source and the epoch clock: it forwards what the readers
//! parsed, and closes the open epoch every `epoch_ms` (or sooner when `batch_rows` rows are
//! waiting), so a step's prediction is emitted within a few milliseconds of its arrival.
//! Every other worker closes its input at once, leaving worker 0's clock to drive the
//! frontier. When the run's stop flag is set (the binary sets it on SIGINT/SIGTERM) the
//! readers stop; what they had accepted is processed, the output flushed and closed, and the
//! run ends normally with its report.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;

use super::collect::{Namer, SinkSlot};
use super::config::PipelineConfig;
use super::durable::{self, MarkClock, Prepared};
use super::exec::{collector, execute, report, setup_views, Feed, RunOptions};
use super::report::{count, Event, RunReport};
use crate::error::{Error, Result};
use crate::input::live::{LiveSource, Readers, Transport};
use crate::model::Model;
use crate::outfiles::Outputs;
use crate::record::{PartitionOffset, SourceMsg, Stats};
use crate::sink::{OutputSchema, SinkHandle};

/// How often a live run looks for changed side tables.
const SIDE_RELOAD: Duration = Duration::from_millis(500);
/// After a stop, how long to wait for readers to hand over what they had read.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// A live run's output columns: its key (integers or strings) and an integer time.
fn live_schema(cfg: &PipelineConfig, int_keys: bool) -> OutputSchema {
    OutputSchema {
        key_name: cfg.source.columns.key.clone(),
        key_type: if int_keys {
            arrow::datatypes::DataType::Int64
        } else {
            arrow::datatypes::DataType::Utf8
        },
        time_name: cfg.source.columns.time.clone(),
        time_type: arrow::datatypes::DataType::Int64,
        names: cfg.output.names.clone(),
    }
}

/// Where each Kafka partition goes on from: the resumed checkpoint's offsets (of the same
/// topic only: another topic's offsets mean nothing here).
fn kafka_resume(
    cfg: &PipelineConfig,
    k: &crate::input::kafka::KafkaSource,
    resume: Option<&crate::checkpoint::Manifest>,
) -> Result<std::collections::BTreeMap<i32, i64>> {
    let Some(pos) = resume.and_then(|m| m.kafka.as_ref()) else {
        return Ok(Default::default());
    };
    if pos.topic != k.topic {
        return Err(Error::PipelineConfig {
            path: cfg.path.clone(),
            msg: format!(
                "the checkpoint holds offsets of Kafka topic `{}`, this pipeline reads `{}`; \
                 resume with the same topic, or start over with --fresh",
                pos.topic, k.topic
            ),
        });
    }
    Ok(pos.partitions.iter().map(|o| (o.partition, o.next)).collect())
}

/// Runs a pipeline over a live source until the input ends or the stop flag is set.
pub(super) fn run(
    cfg: PipelineConfig,
    source: LiveSource,
    model: Arc<Model>,
    opts: &RunOptions,
) -> Result<Option<RunReport>> {
    // Views and their outputs first: once the source is listening, every output exists.
    let checkpoint = cfg.checkpoint.clone();
    let output = cfg.output.file.path.clone();
    let outputs = match checkpoint {
        Some(_) => Outputs::durable_live(),
        None => Outputs::default(),
    };
    let run = run_with(cfg, source, model, opts, &outputs);
    // A live run's checkpoints outlive it: the next run resumes its state.
    durable::settle(&outputs, checkpoint.as_ref(), opts, run, false, output.as_deref())
}

fn run_with(
    cfg: PipelineConfig,
    source: LiveSource,
    model: Arc<Model>,
    opts: &RunOptions,
    outputs: &Outputs,
) -> Result<Option<RunReport>> {
    let stop = opts.stop.clone();
    let peers = opts.workers * opts.processes;
    let prepared = durable::prepare(&cfg, &model, None, opts)?;
    let resume = prepared.as_ref().and_then(|p| p.resume.clone());
    let views_from = prepared.as_ref().and_then(Prepared::view_bytes);
    let (mut view_setup, view_outputs) = setup_views(
        &cfg,
        opts,
        &model,
        &[],
        outputs,
        true,
        None,
        views_from.as_deref(),
    )?;
    if let (Some(m), Some(int), false) = (
        &resume,
        resume.as_ref().and_then(|m| m.int_keys()),
        view_setup.specs.is_empty(),
    ) {
        let schema = live_schema(&cfg, int);
        view_setup.restore = durable::restore_from_output(&cfg, m, schema.arrow());
    }
    // A resumed run knows its key type; otherwise the first line decides.
    let int_keys = resume.as_ref().and_then(|m| m.int_keys());
    let mut names = None;
    // One reader set per worker of this process that feeds: worker 0 of process 0 for TCP,
    // stdin and MQTT; every worker with partitions for Kafka.
    let mut readers: Vec<Option<Readers>> = (0..opts.workers).map(|_| None).collect();
    let mut kafka_names = None;
    if let Transport::Kafka(k) = &source.transport {
        let from = kafka_resume(&cfg, k, resume.as_deref())?;
        let warn = {
            let observer = opts.observer.clone();
            Arc::new(move |msg: String| observer(&Event::Warning(&msg))) as Arc<dyn Fn(String) + Send + Sync>
        };
        let (rs, n) = Readers::kafka(
            &source,
            k,
            &cfg.source.columns,
            (opts.process * opts.workers, opts.workers, peers),
            stop.clone(),
            int_keys,
            &from,
            warn,
        )?;
        readers = rs;
        kafka_names = Some(Arc::new(Mutex::new(n)));
    }
    let open = || {
        // Strings until the first line says otherwise (a lazy sink takes the batch's kind).
        let schema = live_schema(&cfg, int_keys == Some(true));
        if let (Some(p), Some(m), Some(_)) = (&prepared, &resume, int_keys) {
            if let Some(sink) = durable::resumed_sink(&cfg, &p.store, m, schema.clone(), outputs)? {
                // Live outputs are written inline: their flush is on the latency path.
                return Ok(SinkSlot::Open(SinkHandle::new(sink, false)));
            }
        }
        if let Some(t) = &cfg.output.broker {
            return Ok(SinkSlot::LazyBroker(t.clone(), schema));
        }
        // Output problems fail the run before any client connects (the file is opened again,
        // as Parquet or text, when the first line says whether keys are integers).
        if let Some(p) = &cfg.output.file.path {
            outputs.create(p)?;
        }
        Ok(SinkSlot::Lazy(cfg.output.file.clone(), schema))
    };
    let collector = match collector(
        &cfg,
        opts,
        outputs,
        open,
        Namer::Live(Default::default(), source.lines),
        true,
        view_outputs,
        resume.as_ref().and_then(|m| m.rejects.as_ref()),
    )? {
        Some(mut c) => {
            if let Some(p) = &prepared {
                p.attach(&mut c, peers, &cfg);
            }
            if let Some(n) = &kafka_names {
                let Transport::Kafka(k) = &source.transport else {
                    unreachable!()
                };
                if let Some(committer) = c.checkpoint.as_mut() {
                    committer.kafka_topic = Some(k.topic.clone());
                }
                (opts.observer)(&Event::Subscribed {
                    source: &format!("kafka {} {}", k.brokers.join(","), k.topic),
                    lines: source.lines,
                });
                c.namer = Namer::Kafka(n.clone());
                names = Some(n.clone());
                Some(c)
            } else {
                let src = Readers::start(&source, &cfg.source.columns, peers, stop.clone(), int_keys)?;
                let addr = matches!(source.transport, Transport::Tcp { .. })
                    .then_some(src.local_addr)
                    .flatten();
                match &source.transport {
                    Transport::Mqtt(_) => {
                        let name = src
                            .names
                            .lock()
                            .expect("names")
                            .first()
                            .cloned()
                            .unwrap_or_default();
                        (opts.observer)(&Event::Subscribed {
                            source: &name,
                            lines: source.lines,
                        });
                    }
                    _ => (opts.observer)(&Event::Listening {
                        addr,
                        lines: source.lines,
                    }),
                }
                c.namer = Namer::Live(src.names.clone(), source.lines);
                names = Some(src.names.clone());
                readers[0] = Some(src);
                Some(c)
            }
        }
        None => None,
    };
    let tables = Arc::new(Mutex::new(if opts.process == 0 && !view_setup.specs.is_empty() {
        Some(crate::views::SideTables::load(&view_setup.specs)?)
    } else {
        None
    }));
    let readers = Arc::new(Mutex::new(readers));
    let epoch = Duration::from_millis(source.epoch_ms);
    let drain_timeout = Duration::from_millis(source.drain_timeout_ms);
    let max_rows = cfg.source.batch_rows;
    let start = Instant::now();
    let marks = prepared.as_ref().map(|p| Arc::new(MarkClock::new(&p.config)));
    // A resumed run numbers its epochs on from the checkpoint's, so that checkpoints of
    // successive runs stay in order.
    let first_epoch = resume.as_ref().map_or(0, |m| m.boundary);
    // The readers' channel shows in the metrics (process 0, whichever worker feeds), and
    // the dashboard sees the inputs of the keys it follows.
    let metrics = collector.as_ref().and_then(|c| c.metrics.clone());
    let board = collector.as_ref().and_then(|c| c.board.clone());
    let feed: Arc<Feed> = {
        let (readers, stop, tables, observer, metrics, board) = (
            readers.clone(),
            stop.clone(),
            tables.clone(),
            opts.observer.clone(),
            metrics.clone(),
            board.clone(),
        );
        Arc::new(move |worker, input, mut side, probe, collector| {
            let local = worker.index() % readers.lock().expect("readers").len().max(1);
            let Some(src) = readers
                .lock()
                .expect("readers")
                .get_mut(local)
                .and_then(Option::take)
            else {
                return Ok(Stats::default());
            };
            // Worker 0 keeps the checkpoint clock; every feeding worker its own epochs (they
            // stay within one of each other: each waits for the frontier to pass its epoch).
            let marks = marks.clone().filter(|_| worker.index() == 0);
            let mut offsets: std::collections::BTreeMap<i32, PartitionOffset> = Default::default();
            let mut offsets_moved = false;
            let mut stats = Stats::default();
            let mut now_epoch = first_epoch;
            input.advance_to(now_epoch);
            // Broker messages' acknowledgements, by the epoch their rows went into: run at
            // once, or once a checkpoint past that epoch is committed.
            let committed =
                collector.and_then(|c| c.borrow().checkpoint.as_ref().map(|k| k.committed_boundary()));
            let mut acks: std::collections::VecDeque<(u64, crate::input::mqtt::Ack)> = Default::default();
            let settle = |acks: &mut std::collections::VecDeque<(u64, crate::input::mqtt::Ack)>| {
                let upto = committed.as_ref().map_or(u64::MAX, |c| c.load(Ordering::Relaxed));
                while let Some((e, a)) = acks.front_mut() {
                    if *e >= upto || !a.run() {
                        break;
                    }
                    acks.pop_front();
                }
            };
            let mut deadline = Instant::now() + epoch;
            let mut rows = 0usize;
            let mut stopping: Option<Instant> = None;
            let mut last_reload = Instant::now();
            loop {
                let ended = match src
                    .rx
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                {
                    Ok(mut lb) => {
                        for a in lb.acks.drain(..) {
                            acks.push_back((now_epoch, a));
                        }
                        for o in lb.offsets.drain(..) {
                            offsets.insert(o.partition, o);
                            offsets_moved = true;
                        }
                        for r in &lb.rejects {
                            stats.count_reject(r.reason);
                        }
                        stats.rows_read += lb.rows;
                        for (dest, b) in lb.batches.into_iter().enumerate() {
                            if !b.is_empty() {
                                if let Some(board) = &board {
                                    board.inputs(&b);
                                }
                                rows += b.len();
                                input.send((dest as u64, SourceMsg::Steps(b)));
                            } else {
                                b.recycle();
                            }
                        }
                        if !lb.rejects.is_empty() {
                            input.send((0, SourceMsg::Rejects(lb.rejects)));
                        }
                        if rows < max_rows && Instant::now() < deadline {
                            continue;
                        }
                        false
                    }
                    Err(RecvTimeoutError::Timeout) => false,
                    Err(RecvTimeoutError::Disconnected) => true,
                };
                // Side tables that changed on disk: their differences enter this epoch.
                if let Some(side) = side.as_deref_mut() {
                    if last_reload.elapsed() >= SIDE_RELOAD {
                        last_reload = Instant::now();
                        if let Some(t) = tables.lock().expect("tables").as_mut() {
                            let (updates, errors) = t.reload_changed();
                            for (row, diff) in updates {
                                side.send((row, now_epoch, diff));
                            }
                            for e in errors {
                                let msg = format!("side table not reloaded (keeping the previous one): {e}");
                                observer(&Event::Warning(&msg));
                            }
                        }
                    }
                }
                // The epoch's counters travel with it (a checkpoint holds exactly those of
                // the epochs before it); then, when one is due, a checkpoint mark.
                if stats != Stats::default() {
                    input.send((0, SourceMsg::Stats(std::mem::take(&mut stats))));
                }
                if std::mem::take(&mut offsets_moved) {
                    input.send((0, SourceMsg::Offsets(offsets.values().copied().collect())));
                }
                if marks.as_ref().is_some_and(|m| m.due()) {
                    for dest in 0..worker.peers() {
                        input.send((dest as u64, SourceMsg::Mark(now_epoch + 1)));
                    }
                }
                if let Some(m) = &metrics {
                    let blocked = src.blocked_us.load(Ordering::Relaxed) as f64 / 1e6;
                    let channel = (src.rx.len() as u64, src.rx.capacity().unwrap_or(0) as u64);
                    m.update(|s| {
                        s.channels.insert(worker.index(), (channel.0, channel.1, blocked));
                    });
                }
                // Close the epoch: everything sent so far becomes processable.
                now_epoch += 1;
                input.advance_to(now_epoch);
                if let Some(side) = side.as_deref_mut() {
                    side.advance_to(now_epoch);
                }
                rows = 0;
                deadline = Instant::now() + epoch;
                // Run the closed epoch through to the sink now (latency), without draining the
                // channel meanwhile (backpressure: a slow model makes epochs larger, then
                // fills the channel, then blocks the readers and the clients).
                worker.step_or_park_while(Some(Duration::from_millis(1)), || probe.less_than(&now_epoch));
                settle(&mut acks);
                if collector.is_some_and(|c| c.borrow().error.is_some()) {
                    stop.store(true, Ordering::Relaxed);
                }
                if ended {
                    break;
                }
                if stop.load(Ordering::Relaxed) {
                    let since = *stopping.get_or_insert_with(Instant::now);
                    if src.rx.is_empty() && since.elapsed() > DRAIN_GRACE {
                        break;
                    }
                    // A stop must not wait on a flood: past the drain timeout, what was read
                    // and not yet processed is dropped, and counted.
                    if since.elapsed() > drain_timeout {
                        // (Kafka: their offsets are not passed on, so a resume reads them again.)
                        while let Ok(lb) = src.rx.try_recv() {
                            stats.rows_read += lb.rows;
                            stats.dropped_lines += lb.rows;
                        }
                        break;
                    }
                }
            }
            // The last counters go before the final mark, so that its checkpoint holds them.
            stats.refused_connections = src.refused.load(Ordering::Relaxed);
            input.send((0, SourceMsg::Stats(std::mem::take(&mut stats))));
            // A stop is a planned restart: the final checkpoint holds everything processed.
            if marks.is_some() {
                // The mark travels at the open epoch, which then closes: every worker and the
                // collector see it before the frontier passes its boundary.
                for dest in 0..worker.peers() {
                    input.send((dest as u64, SourceMsg::Mark(now_epoch + 1)));
                }
                now_epoch += 1;
                input.advance_to(now_epoch);
                // Broker messages are acknowledged once that checkpoint is committed.
                if let Some(c) = &committed {
                    let until = Instant::now() + drain_timeout;
                    while c.load(Ordering::Relaxed) < now_epoch
                        && Instant::now() < until
                        && collector.is_none_or(|c| c.borrow().error.is_none())
                    {
                        worker.step_or_park(Some(Duration::from_millis(1)));
                    }
                }
            }
            // The reader's connection still runs: let the last acknowledgements through.
            let until = Instant::now() + Duration::from_secs(2);
            settle(&mut acks);
            while !acks.is_empty()
                && acks
                    .front()
                    .is_some_and(|(e, _)| committed.as_ref().is_none_or(|c| *e < c.load(Ordering::Relaxed)))
                && Instant::now() < until
            {
                std::thread::sleep(Duration::from_millis(5));
                settle(&mut acks);
            }
            src.done.store(true, Ordering::Relaxed);
            drop(src.rx);
            Ok(stats)
        })
    };
    let cfg = Arc::new(cfg);
    let checkpoints = prepared.as_ref().map(Prepared::checkpointing);
    let (collected, error) = execute(
        opts,
        cfg.clone(),
        model,
        int_keys,
        collector,
        view_setup,
        feed,
        checkpoints,
    )?;
    (opts.observer)(&Event::Finished);
    if let Some(e) = error {
        return Err(Error::Runtime(e));
    }
    let Some(c) = collected else { return Ok(None) };
    let lag: i64 = c.offsets.iter().map(|o| (o.high - o.next).max(0)).sum();
    let kafka = matches!(source.transport, Transport::Kafka(_));
    let source = match &source.transport {
        Transport::Stdin => "stdin".to_string(),
        Transport::Mqtt(m) => format!("mqtt {}", m.broker),
        Transport::Kafka(k) => format!(
            "kafka {} ({})",
            k.topic,
            count(names.map_or(0, |n| n.lock().expect("names").len()), "partition")
        ),
        Transport::Tcp { .. } => count(names.map_or(0, |n| n.lock().expect("names").len()), "connection"),
    };
    let mut r = report(&cfg, opts, c, start, source, true);
    r.resumed = prepared.as_ref().and_then(Prepared::resumed);
    if kafka {
        r.lag = Some(lag);
    }
    Ok(Some(r))
}
