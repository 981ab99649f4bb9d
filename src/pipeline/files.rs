//! The file driver: plans the input, has every worker read its units (batches routed to
//! the workers that own their keys, a few epochs ahead of the sink at most), and commits
//! the output only if every worker succeeded.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::collect::{Namer, SinkSlot};
use super::config::PipelineConfig;
use super::durable::{self, MarkClock, Prepared};
use super::exec::{collector, execute, report, setup_views, Feed, RunOptions};
use super::report::{count, Event, RunReport};
use crate::error::{Error, Result};
use crate::input::arrow::{route_batch, Origin};
use crate::input::files::{epoch_of, FileSource, Part, Plan};
use crate::input::{Prep, Routed};
use crate::model::Model;
use crate::outfiles::Outputs;
use crate::record::{SourceMsg, Stats};
use crate::sink::{OutputSchema, Sink, SinkHandle};
use crate::vocab::FileFormat;

/// Why a stopped file run fails.
const STOPPED: &str = "stopped by a signal; the output was not written (a rejects file and view \
                       changelogs end where the run stopped)";

/// Epochs a worker's input may run ahead of what the sink has seen (backpressure).
const MAX_EPOCHS_IN_FLIGHT: usize = 4;
/// Decoded batches a reader thread may hold ready for its worker.
const PREFETCH_BATCHES: usize = 2;

/// Runs a pipeline over files. Returns the report on process 0, `None` on the others. Every
/// file the run writes is committed only when it succeeds.
pub(super) fn run(
    cfg: PipelineConfig,
    source: FileSource,
    model: Arc<Model>,
    opts: &RunOptions,
) -> Result<Option<RunReport>> {
    let checkpoint = cfg.checkpoint.clone();
    let output = cfg.output.file.path.clone();
    let outputs = match checkpoint {
        Some(_) => Outputs::durable(),
        None => Outputs::default(),
    };
    let report_to = cfg.report.clone();
    let (key, time, format) = (
        cfg.source.columns.key.clone(),
        cfg.source.columns.time.clone(),
        cfg.output.file.format,
    );
    let mut board = None;
    let run = run_with(cfg, source, model, opts, &outputs, &mut board);
    let report = durable::settle(&outputs, checkpoint.as_ref(), opts, run, true, output.as_deref())?;
    // The report, once the outputs are committed: it reads the plotted keys back from them.
    if let (Some(r), Some(path), Some(board)) = (&report, &report_to, &board) {
        let file = output.as_deref().map(|p| crate::dashboard::OutputFile {
            path: p,
            format,
            key: &key,
            time: &time,
        });
        crate::dashboard::write_report(path, board, file, &r.to_string())?;
    }
    Ok(report)
}

fn run_with(
    cfg: PipelineConfig,
    source: FileSource,
    model: Arc<Model>,
    opts: &RunOptions,
    outputs: &Outputs,
    board_out: &mut Option<Arc<crate::dashboard::Board>>,
) -> Result<Option<RunReport>> {
    let plan = Arc::new(Plan::build(&source, &cfg.source.columns)?);
    let int_keys = plan.key_type.is_integer();
    let data: Vec<PathBuf> = plan.files.iter().map(|f| f.path.clone()).collect();
    let prepared = durable::prepare(&cfg, &model, Some(&plan), opts)?;
    let resume = prepared.as_ref().and_then(|p| p.resume.clone());
    let views_from = prepared.as_ref().and_then(Prepared::view_bytes);
    let (mut view_setup, view_outputs) = setup_views(
        &cfg,
        opts,
        &model,
        &data,
        outputs,
        false,
        Some(int_keys),
        views_from.as_deref(),
    )?;
    // Epochs before this one are in the checkpoint: the readers skip them.
    let skip_before = resume.as_ref().map_or(0, |m| m.boundary);
    let schema = OutputSchema {
        key_name: cfg.source.columns.key.clone(),
        key_type: plan.key_type.clone(),
        time_name: cfg.source.columns.time.clone(),
        time_type: plan.time_type.clone(),
        names: cfg.output.names.clone(),
    };
    if let (Some(m), false) = (&resume, view_setup.specs.is_empty()) {
        view_setup.restore = durable::restore_from_output(&cfg, m, schema.arrow());
    }
    // With fewer workers than cores, each worker gets a reader thread, and the output a
    // writer thread: decoding and routing (Parquet, casts, hashing keys: 10-30% of a job)
    // and encoding the output then overlap the model. Wide outputs get a writer thread in
    // any case (their encoding is the largest cost).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let spare_core = opts.workers < cores;
    let background = spare_core || cfg.output.names.len() >= SinkHandle::WIDE;
    let open = || {
        if let Some(t) = &cfg.output.broker {
            return Ok(SinkSlot::Open(t.connect(schema)?));
        }
        let sink = match (&prepared, &resume) {
            (Some(p), Some(m)) if m.output.is_some() => {
                durable::resumed_sink(&cfg, &p.store, m, schema, outputs)?.expect("an output")
            }
            _ => Sink::create(&cfg.output.file, schema, outputs)?,
        };
        Ok(SinkSlot::Open(SinkHandle::new(sink, background)))
    };
    let mut collector = collector(
        &cfg,
        opts,
        outputs,
        open,
        Namer::Files(plan.clone()),
        false,
        view_outputs,
        resume.as_ref().and_then(|m| m.rejects.as_ref()),
    )?;
    if let Some(c) = collector.as_mut() {
        c.abort = Some(opts.stop.clone());
        if let Some(p) = &prepared {
            p.attach(c, opts.workers * opts.processes, &cfg);
        }
    }
    let marks = prepared.as_ref().map(|p| Arc::new(MarkClock::new(&p.config)));
    // This process's parts: every `processes`-th of the plan's, cut for all workers. Its
    // workers take them in order, each as it is free to read (so a worker with more keys,
    // or worker 0 when it writes the output itself, takes fewer); each worker's parts are
    // then in epoch order, and which worker reads a part changes nothing downstream.
    let mine: Arc<Vec<Part>> = Arc::new(
        plan.parts(opts.workers * opts.processes, cfg.source.batch_rows)
            .into_iter()
            .enumerate()
            .filter(|(p, _)| p % opts.processes == opts.process)
            .map(|(_, part)| part)
            .collect(),
    );
    let next_part = Arc::new(AtomicUsize::new(0));
    let local_rows = plan.rows_of(&mine, cfg.source.batch_rows);
    (opts.observer)(&Event::Started { rows: local_rows });
    let cfg = Arc::new(cfg);
    let start = Instant::now();
    // The dashboard sees the inputs of the keys it follows (read on process 0).
    let board = collector.as_ref().and_then(|c| c.board.clone());
    board_out.clone_from(&board);
    let feed: Arc<Feed> = {
        let (plan, cfg, opts, board) = (plan.clone(), cfg.clone(), opts.clone(), board.clone());
        let (mine, next_part) = (mine.clone(), next_part.clone());
        Arc::new(move |worker, input, _side, probe, _collector| {
            let (index, peers) = (worker.index(), worker.peers());
            let columns = &cfg.source.columns;
            let prep = Prep::new(columns);
            let names: Vec<&str> = columns.names().collect();
            let mut in_flight: VecDeque<u64> = VecDeque::new();
            // Reads this worker's parts, decoding and routing each batch, and hands each
            // (epoch, routed steps) to `deliver`.
            let read = |deliver: &mut dyn FnMut(u64, Routed) -> Result<()>| -> Result<()> {
                while let Some(part) = mine.get(next_part.fetch_add(1, Ordering::Relaxed)) {
                    // Parts wholly before the checkpoint are not read again.
                    if part.before(skip_before) {
                        continue;
                    }
                    let u = part.unit;
                    let unit = &plan.units[u];
                    let path = &plan.files[unit.file as usize].path;
                    let read = plan.read_part(part, &names, cfg.source.batch_rows, |i, batch, first_row| {
                        if opts.stop.load(Ordering::Relaxed) {
                            return Err(Error::Runtime(STOPPED.into()));
                        }
                        let epoch = epoch_of(u, i);
                        if epoch < skip_before {
                            return Ok(());
                        }
                        let map = columns.map(&batch.schema(), path, plan.format != FileFormat::Parquet)?;
                        let at = Origin {
                            path,
                            format: plan.format,
                            source: unit.file,
                            first_row,
                        };
                        deliver(epoch, route_batch(&batch, &map, columns, &prep, at, peers)?)
                    });
                    if read.is_err() {
                        // The run fails: the other workers take no new part.
                        next_part.store(mine.len(), Ordering::Relaxed);
                    }
                    read?;
                }
                Ok(())
            };
            // Feeds one routed batch into the dataflow, with its counters, a checkpoint mark
            // when one is due, and backpressure.
            let mut feed_one = |epoch: u64, routed: Routed| {
                input.advance_to(epoch);
                for (dest, b) in routed.batches.into_iter().enumerate() {
                    if !b.is_empty() {
                        if let Some(board) = &board {
                            board.inputs(&b);
                        }
                        input.send((dest as u64, SourceMsg::Steps(b)));
                    } else {
                        b.recycle();
                    }
                }
                // Counters travel with their epoch, so a checkpoint holds exactly those
                // of the epochs before it.
                let mut stats = Stats {
                    rows_read: routed.rows,
                    ..Stats::default()
                };
                if !routed.rejects.is_empty() {
                    for r in &routed.rejects {
                        stats.count_reject(r.reason);
                    }
                    input.send((index as u64, SourceMsg::Rejects(routed.rejects)));
                }
                input.send((index as u64, SourceMsg::Stats(stats)));
                (opts.observer)(&Event::Read(routed.rows));
                if marks.as_ref().is_some_and(|m| m.due()) {
                    // Everything up to this batch: every worker writes its part once
                    // the frontier passes it.
                    for dest in 0..peers {
                        input.send((dest as u64, SourceMsg::Mark(epoch + 1)));
                    }
                }
                // Backpressure: at most a few epochs ahead of what the sink has seen.
                in_flight.push_back(epoch);
                if in_flight.len() > MAX_EPOCHS_IN_FLIGHT {
                    let oldest = in_flight.pop_front().expect("non-empty");
                    worker.step_or_park_while(None, || probe.less_equal(&oldest));
                }
            };
            if !spare_core {
                read(&mut |epoch, routed| {
                    feed_one(epoch, routed);
                    Ok(())
                })
                .map_err(|e| e.to_string())?;
                return Ok(Stats::default());
            }
            // With a core to spare, a reader thread decodes and routes the next batches
            // while this worker runs the model on the current ones.
            let (tx, rx) = crossbeam_channel::bounded::<Result<(u64, Routed)>>(PREFETCH_BATCHES);
            std::thread::scope(|scope| {
                let reader = std::thread::Builder::new()
                    .name(format!("seqflow-read-{index}"))
                    .spawn_scoped(scope, || {
                        // A panic here must fail the run, not end the channel early as if
                        // the input were done (the output would be committed short).
                        let r = crate::guard::catch(|| {
                            read(&mut |epoch, routed| {
                                tx.send(Ok((epoch, routed)))
                                    .map_err(|_| Error::Runtime(STOPPED.into()))
                            })
                        })
                        .unwrap_or_else(|panic| {
                            Err(Error::Runtime(format!(
                                "worker {index}'s reader thread failed: {panic}"
                            )))
                        });
                        if let Err(e) = r {
                            let _ = tx.send(Err(e));
                        }
                        drop(tx);
                    })
                    .map_err(|e| format!("could not start a reader thread: {e}"))?;
                for msg in rx.iter() {
                    match msg {
                        Ok((epoch, routed)) => feed_one(epoch, routed),
                        Err(e) => {
                            drop(rx);
                            let _ = reader.join();
                            return Err(e.to_string());
                        }
                    }
                }
                reader
                    .join()
                    .map_err(|_| format!("worker {index}'s reader thread failed"))?;
                Ok(Stats::default())
            })
        })
    };
    let (collected, error) = execute(
        opts,
        cfg.clone(),
        model,
        Some(int_keys),
        collector,
        view_setup,
        feed,
        prepared.as_ref().map(Prepared::checkpointing),
    )?;
    (opts.observer)(&Event::Finished);
    // A stop that came after the last batch was read still discards the output.
    let error = error.or_else(|| opts.stop.load(Ordering::Relaxed).then(|| STOPPED.to_string()));
    if let Some(e) = error {
        return Err(Error::Runtime(e));
    }
    // Only process 0 (worker 0) collects; the others are done.
    let Some(c) = collected else { return Ok(None) };
    let files = count(plan.files.len(), "file");
    let mut r = report(&cfg, opts, c, start, files, false);
    r.resumed = prepared.as_ref().and_then(Prepared::resumed);
    Ok(Some(r))
}
