//! `seqflow run` with a live source (TCP or stdin).
//!
//! Worker 0 of process 0 owns the source and the epoch clock: it forwards what the readers
//! parsed, and closes the open epoch every `epoch_ms` (or sooner when `batch_rows` rows are
//! waiting), so a step's prediction is emitted within a few milliseconds of its arrival.
//! Every other worker closes its input at once, leaving worker 0's clock to drive the
//! frontier. SIGINT/SIGTERM stop the readers; what they had accepted is processed, the
//! output flushed and closed, the summary printed, and the run exits 0.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;

use super::collect::{Collector, Namer, SinkSlot};
use super::config::{LineFormat, PipelineConfig, SourceFormat};
use super::run::{execute, Feed, RunOptions, RunReport};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::record::{SourceMsg, Stats};
use crate::sink::{OutputSchema, RejectsWriter};
use crate::source::live::LiveSource;

/// How often a live run looks for changed side tables.
const SIDE_RELOAD: Duration = Duration::from_millis(500);
/// After a stop, how long to wait for readers to hand over what they had read.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

pub fn run_live(cfg: PipelineConfig, model: Arc<Model>, opts: &RunOptions) -> Result<Option<RunReport>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| Error::Runtime(format!("signal handler: {e}")))?;
    }
    let peers = opts.workers * opts.processes;
    // Views and their outputs first: once "listening" is printed, every output exists.
    let (view_setup, view_outputs) = super::run::setup_views(&cfg, opts, true, None)?;
    let mut collector = None;
    let mut names = None;
    let mut source = None;
    if opts.process == 0 {
        // Output problems fail the run before any client connects.
        if let Some(p) = &cfg.output.path {
            crate::sink::create_file(p)?;
        }
        let rejects = cfg
            .source
            .rejects
            .as_deref()
            .map(RejectsWriter::create)
            .transpose()?;
        let src = LiveSource::start(&cfg.source, peers, stop.clone())?;
        match (cfg.source.format, src.local_addr) {
            (SourceFormat::Tcp, Some(addr)) => {
                eprintln!(
                    "seqflow: listening on {addr} ({} lines); Ctrl-C or SIGTERM to stop",
                    line_name(cfg.source.lines)
                )
            }
            _ => eprintln!(
                "seqflow: reading {} lines from stdin",
                line_name(cfg.source.lines)
            ),
        }
        let schema = OutputSchema {
            key_name: cfg.source.key.clone(),
            key_type: arrow::datatypes::DataType::Utf8, // decided by the first line
            time_name: cfg.source.time.clone(),
            time_type: arrow::datatypes::DataType::Int64,
            names: cfg.output.names.clone(),
        };
        names = Some(src.names.clone());
        collector = Some(Collector::new(
            SinkSlot::Lazy(cfg.output.clone(), schema),
            rejects,
            Namer::Live(src.names.clone()),
            true,
        ));
        source = Some(src);
    }
    if let Some(c) = collector.as_mut() {
        c.views = view_outputs;
    }
    let tables = Arc::new(Mutex::new(if opts.process == 0 && !view_setup.specs.is_empty() {
        Some(crate::views::SideTables::load(&view_setup.specs)?)
    } else {
        None
    }));
    let source = Arc::new(Mutex::new(source));
    let epoch = Duration::from_millis(cfg.source.epoch_ms);
    let max_rows = cfg.source.batch_rows;
    let output_path = cfg.output.path.clone().unwrap_or_else(|| PathBuf::from("-"));
    let rejects_path = cfg.source.rejects.clone();
    let start = Instant::now();
    let feed: Arc<Feed> = {
        let (source, stop, tables) = (source.clone(), stop.clone(), tables.clone());
        Arc::new(move |worker, input, mut side, probe, collector| {
            let Some(src) = (if worker.index() == 0 {
                source.lock().expect("source").take()
            } else {
                None
            }) else {
                return Ok(Stats::default());
            };
            let mut stats = Stats::default();
            let mut now_epoch = 0u64;
            let mut deadline = Instant::now() + epoch;
            let mut rows = 0usize;
            let mut stopping: Option<Instant> = None;
            let mut last_reload = Instant::now();
            loop {
                let ended = match src
                    .rx
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                {
                    Ok(lb) => {
                        for r in &lb.rejects {
                            stats.count_reject(r.reason);
                        }
                        stats.rows_read += lb.lines;
                        for (dest, b) in lb.batches.into_iter().enumerate() {
                            if !b.is_empty() {
                                rows += b.len();
                                input.send((dest as u64, SourceMsg::Steps(b)));
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
                                eprintln!("seqflow: warning: side table not reloaded (keeping the previous one): {e}");
                            }
                        }
                    }
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
                }
            }
            drop(src.rx);
            Ok(stats)
        })
    };
    let (collected, error) = execute(opts, Arc::new(cfg), model, None, collector, view_setup, feed)?;
    if let Some(e) = error {
        return Err(Error::Runtime(e));
    }
    let Some(c) = collected else { return Ok(None) };
    let connections = names.map(|n| n.lock().expect("names").len()).unwrap_or(0);
    Ok(Some(RunReport {
        stats: c.stats,
        elapsed: start.elapsed(),
        output: output_path,
        rejects: rejects_path.zip(c.rejects),
        workers: opts.workers * opts.processes,
        source: format!(
            "{connections} connection{}",
            if connections == 1 { "" } else { "s" }
        ),
        latency: Some(c.latency),
    }))
}

fn line_name(l: LineFormat) -> &'static str {
    match l {
        LineFormat::Jsonl => "jsonl",
        LineFormat::Csv => "csv",
    }
}
