//! The file driver: plans the input, has every worker read its units (batches routed to
//! the workers that own their keys, a few epochs ahead of the sink at most), and commits
//! the output only if every worker succeeded.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::collect::{Namer, SinkSlot};
use super::config::PipelineConfig;
use super::exec::{collector, execute, report, setup_views, Feed, RunOptions};
use super::report::{count, Event, RunReport};
use crate::error::{Error, Result};
use crate::input::arrow::{route_batch, Origin};
use crate::input::files::{epoch_of, FileSource, Plan};
use crate::input::Prep;
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

/// Runs a pipeline over files. Returns the report on process 0, `None` on the others. Every
/// file the run writes is committed only when it succeeds.
pub(super) fn run(
    cfg: PipelineConfig,
    source: FileSource,
    model: Arc<Model>,
    opts: &RunOptions,
) -> Result<Option<RunReport>> {
    let outputs = Outputs::default();
    let run = run_with(cfg, source, model, opts, &outputs);
    match &run {
        Ok(_) => outputs.commit()?,
        Err(_) => outputs.discard(),
    }
    run
}

fn run_with(
    cfg: PipelineConfig,
    source: FileSource,
    model: Arc<Model>,
    opts: &RunOptions,
    outputs: &Outputs,
) -> Result<Option<RunReport>> {
    let plan = Arc::new(Plan::build(&source, &cfg.source.columns)?);
    let int_keys = plan.key_type.is_integer();
    let data: Vec<PathBuf> = plan.files.iter().map(|f| f.path.clone()).collect();
    let (view_setup, view_outputs) = setup_views(&cfg, opts, &model, &data, outputs, false, Some(int_keys))?;
    let schema = OutputSchema {
        key_name: cfg.source.columns.key.clone(),
        key_type: plan.key_type.clone(),
        time_name: cfg.source.columns.time.clone(),
        time_type: plan.time_type.clone(),
        names: cfg.output.names.clone(),
    };
    let wide = cfg.output.names.len() >= SinkHandle::WIDE;
    let open = || {
        let sink = Sink::create(&cfg.output.file, schema, outputs)?;
        Ok(SinkSlot::Open(SinkHandle::new(sink, wide)))
    };
    let mut collector = collector(
        &cfg,
        opts,
        outputs,
        open,
        Namer::Files(plan.clone()),
        false,
        view_outputs,
    )?;
    if let Some(c) = collector.as_mut() {
        c.abort = Some(opts.stop.clone());
    }
    let local_rows: Option<u64> = (0..opts.workers)
        .map(|w| plan.rows_for(opts.process * opts.workers + w, opts.workers * opts.processes))
        .sum();
    (opts.observer)(&Event::Started { rows: local_rows });
    let cfg = Arc::new(cfg);
    let start = Instant::now();
    let feed: Arc<Feed> = {
        let (plan, cfg, opts) = (plan.clone(), cfg.clone(), opts.clone());
        Arc::new(move |worker, input, _side, probe, _collector| {
            let (index, peers) = (worker.index(), worker.peers());
            let columns = &cfg.source.columns;
            let prep = Prep::new(columns);
            let names: Vec<&str> = columns.names().collect();
            let mut stats = Stats::default();
            let mut in_flight: VecDeque<u64> = VecDeque::new();
            for (u, unit) in plan.units_for(index, peers) {
                let path = &plan.files[unit.file as usize].path;
                plan.read_unit(u, &names, cfg.source.batch_rows, |i, batch, first_row| {
                    if opts.stop.load(Ordering::Relaxed) {
                        return Err(Error::Runtime(STOPPED.into()));
                    }
                    let map = columns.map(&batch.schema(), path, plan.format != FileFormat::Parquet)?;
                    let at = Origin {
                        path,
                        format: plan.format,
                        source: unit.file,
                        first_row,
                    };
                    let routed = route_batch(&batch, &map, columns, &prep, at, peers)?;
                    let epoch = epoch_of(u, i);
                    input.advance_to(epoch);
                    for (dest, b) in routed.batches.into_iter().enumerate() {
                        if !b.is_empty() {
                            input.send((dest as u64, SourceMsg::Steps(b)));
                        }
                    }
                    if !routed.rejects.is_empty() {
                        for r in &routed.rejects {
                            stats.count_reject(r.reason);
                        }
                        input.send((index as u64, SourceMsg::Rejects(routed.rejects)));
                    }
                    stats.rows_read += routed.rows;
                    (opts.observer)(&Event::Read(routed.rows));
                    // Backpressure: at most a few epochs ahead of what the sink has seen.
                    in_flight.push_back(epoch);
                    if in_flight.len() > MAX_EPOCHS_IN_FLIGHT {
                        let oldest = in_flight.pop_front().expect("non-empty");
                        worker.step_or_park_while(None, || probe.less_equal(&oldest));
                    }
                    Ok(())
                })
                .map_err(|e| e.to_string())?;
            }
            Ok(stats)
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
    Ok(Some(report(&cfg, opts, c, start, files, false)))
}
