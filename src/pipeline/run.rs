//! `seqflow run` over files: builds timely's configuration from our flags, plans the input,
//! runs the dataflow on every worker, and commits the output only if every worker succeeded.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use timely::dataflow::operators::{Input, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};
use timely::{CommunicationConfig, Config, WorkerConfig};

use super::config::{Overrides, PipelineConfig};
use crate::dataflow::{KeyedModel, Routed, SinkHandler, SinkPredictions};
use crate::error::{Error, Result};
use crate::keyed::KeyedProcessor;
use crate::model::summary::group_digits;
use crate::model::Model;
use crate::record::{SinkMsg, SourceMsg, Stats};
use crate::sink::{commit, OutputSchema, RejectsWriter, Sink};
use crate::source::files::{epoch_of, Plan};

/// Epochs a worker's input may run ahead of what the sink has seen (backpressure).
const MAX_EPOCHS_IN_FLIGHT: usize = 4;

/// How to run: timely's worker flags and the path overrides.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Worker threads per process (`-w`).
    pub workers: usize,
    /// Processes (`-n`).
    pub processes: usize,
    /// This process's index (`-p`).
    pub process: usize,
    /// One `host:port` per line (`-h`); default `localhost:2101+i`.
    pub hostfile: Option<PathBuf>,
    pub overrides: Overrides,
    /// Show a progress bar (when stderr is a terminal).
    pub progress: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            workers: 1,
            processes: 1,
            process: 0,
            hostfile: None,
            overrides: Overrides::default(),
            progress: false,
        }
    }
}

/// What a finished run reports (process 0 only).
#[derive(Debug, Clone)]
pub struct RunReport {
    pub stats: Stats,
    pub elapsed: Duration,
    pub output: PathBuf,
    pub rejects: Option<(PathBuf, u64)>,
    pub workers: usize,
    pub files: usize,
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "{} rows from {} file{} -> {} predictions for {} keys in {:.2} s ({} rows/s, {} worker{}); \
             late {}, duplicate {}, non-finite {}, malformed {}; key state {}; output {}",
            group_digits(s.rows_read as usize),
            self.files,
            if self.files == 1 { "" } else { "s" },
            group_digits(s.outputs as usize),
            group_digits(s.keys as usize),
            secs,
            group_digits((s.rows_read as f64 / secs) as usize),
            self.workers,
            if self.workers == 1 { "" } else { "s" },
            s.late,
            s.duplicate,
            s.non_finite,
            s.malformed,
            human_bytes(s.state_bytes),
            self.output.display(),
        )?;
        if let Some((p, n)) = &self.rejects {
            write!(f, "; {n} rejects in {}", p.display())?;
        }
        Ok(())
    }
}

/// `1.5 KB`, `12.3 MB`, `2.10 GB`.
pub fn human_bytes(b: u64) -> String {
    match b {
        b if b < 1_000_000 => format!("{:.1} KB", b as f64 / 1e3),
        b if b < 1_000_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b => format!("{:.2} GB", b as f64 / 1e9),
    }
}

/// Builds timely's configuration from our flags (timely's own parser rejects flags it does
/// not know, so it is not used).
pub fn timely_config(opts: &RunOptions) -> Result<Config> {
    let bad = |m: String| Error::Runtime(m);
    if opts.workers == 0 {
        return Err(bad("-w must be at least 1".into()));
    }
    if opts.processes == 0 || opts.process >= opts.processes {
        return Err(bad(format!(
            "-p {} is not a valid process index for -n {} (0..{})",
            opts.process, opts.processes, opts.processes
        )));
    }
    let communication = if opts.processes > 1 {
        let addresses = match &opts.hostfile {
            Some(h) => {
                let text = std::fs::read_to_string(h).map_err(|e| Error::io(h, e))?;
                let addrs: Vec<String> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from)
                    .collect();
                if addrs.len() < opts.processes {
                    return Err(Error::Data {
                        path: h.clone(),
                        msg: format!(
                            "hostfile lists {} address(es) but -n {} needs one `host:port` line per process",
                            addrs.len(),
                            opts.processes
                        ),
                    });
                }
                if let Some(a) = addrs.iter().find(|a| !a.contains(':')) {
                    return Err(Error::Data {
                        path: h.clone(),
                        msg: format!("`{a}` is not host:port"),
                    });
                }
                addrs.into_iter().take(opts.processes).collect()
            }
            None => (0..opts.processes)
                .map(|i| format!("localhost:{}", 2101 + i))
                .collect(),
        };
        CommunicationConfig::Cluster {
            threads: opts.workers,
            process: opts.process,
            addresses,
            report: false,
            zerocopy: false,
        }
    } else if opts.workers > 1 {
        CommunicationConfig::Process(opts.workers)
    } else {
        CommunicationConfig::Thread
    };
    Ok(Config {
        communication,
        worker: WorkerConfig::default(),
    })
}

/// Worker 0's side of the sink: writes predictions and rejects, sums counters.
struct SinkSide {
    sink: Option<Sink>,
    rejects: Option<RejectsWriter>,
    plan: Arc<Plan>,
    stats: Stats,
    failed: Vec<String>,
    error: Option<Error>,
}

impl SinkSide {
    fn record(&mut self, r: Result<()>) {
        if let Err(e) = r {
            self.error.get_or_insert(e);
        }
    }
}

impl SinkHandler for SinkSide {
    fn handle(&mut self, msg: SinkMsg) {
        match msg {
            SinkMsg::Rows(b) => {
                if let Some(s) = self.sink.as_mut() {
                    let r = s.write(&b);
                    self.record(r);
                }
            }
            SinkMsg::Rejects(rs) => {
                if let Some(w) = self.rejects.as_mut() {
                    for r in &rs {
                        let file = self.plan.files[r.source as usize].path.display().to_string();
                        let res = w.write(r, &file, &self.plan.describe_row(r.row));
                        if let Err(e) = res {
                            self.error.get_or_insert(e);
                        }
                    }
                }
            }
            SinkMsg::Stats(s) => self.stats.add(&s),
            SinkMsg::Failed(m) => self.failed.push(m),
        }
    }

    fn finish(&mut self) {
        if let Some(s) = self.sink.as_mut() {
            let r = s.close();
            self.record(r);
        }
        if let Some(w) = self.rejects.as_mut() {
            let r = w.flush();
            self.record(r);
        }
    }
}

/// What worker 0 hands back to the driver.
struct Collected {
    stats: Stats,
    failed: Vec<String>,
    error: Option<String>,
    rejects: Option<u64>,
}

/// Runs a pipeline over files. Returns the report on process 0, `None` on the others.
pub fn run(pipeline: &Path, opts: &RunOptions) -> Result<Option<RunReport>> {
    let mut cfg = PipelineConfig::load(pipeline, &opts.overrides)?;
    let model = Arc::new(Model::load(&cfg.model_path)?);
    cfg.check_model(&model)?;
    if cfg.source.format.is_live() {
        return Err(Error::PipelineConfig {
            path: cfg.path.clone(),
            msg: "live sources (tcp, stdin) are not supported yet".into(),
        });
    }
    let plan = Arc::new(Plan::build(&cfg.source)?);
    let config = timely_config(opts)?;
    let schema = OutputSchema {
        key_name: cfg.source.key.clone(),
        key_type: plan.key_type.clone(),
        time_name: cfg.source.time.clone(),
        time_type: plan.time_type.clone(),
        names: cfg.output.names.clone(),
    };
    // Opened before the workers start, so that a bad output path fails the run at once.
    let sink_side = if opts.process == 0 {
        let sink = Sink::create(&cfg.output, schema, true)?;
        let rejects = cfg
            .source
            .rejects
            .as_deref()
            .map(RejectsWriter::create)
            .transpose()?;
        Some(SinkSide {
            sink: Some(sink),
            rejects,
            plan: plan.clone(),
            stats: Stats::default(),
            failed: Vec::new(),
            error: None,
        })
    } else {
        None
    };
    let output_path = cfg.output.path.clone().unwrap_or_else(|| PathBuf::from("-"));
    // Known here, so a failure on any worker can discard it.
    let partial = sink_side
        .as_ref()
        .and_then(|s| s.sink.as_ref())
        .and_then(Sink::partial);
    let rejects_path = cfg.source.rejects.clone();
    let sink_slot = Arc::new(Mutex::new(sink_side));
    let progress = progress_bar(opts, &plan);
    let total_workers = opts.workers * opts.processes;
    let cfg = Arc::new(cfg);
    let start = Instant::now();

    let guards = timely::execute(config, {
        let plan = plan.clone();
        let progress = progress.clone();
        move |worker| -> std::result::Result<Option<Collected>, String> {
            let index = worker.index();
            let peers = worker.peers();
            let processor = KeyedProcessor::new(
                model.clone(),
                cfg.output.emit,
                cfg.source.nan,
                plan.key_type.is_integer(),
            );
            let side = if index == 0 {
                sink_slot.lock().expect("sink slot").take()
            } else {
                None
            };
            let side = side.map(|s| Rc::new(RefCell::new(s)));
            let mut input: InputHandleVec<u64, Routed> = InputHandleVec::new();
            let probe: ProbeHandle<u64> = ProbeHandle::new();
            worker.dataflow::<u64, _, _>(|scope| {
                let predictions = scope.input_from(&mut input).keyed_model(processor);
                match &side {
                    Some(s) => predictions.sink_predictions(s.clone()),
                    None => predictions.sink_predictions(Rc::new(RefCell::new(NoSink))),
                }
                .probe_with(&probe);
            });

            let mut stats = Stats::default();
            let mut in_flight: VecDeque<u64> = VecDeque::new();
            let mut failure = None;
            for (u, _) in plan.units_for(index, peers) {
                let res = plan.read_unit(u, &cfg.source, peers, |i, routed| {
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
                    progress.inc(routed.rows);
                    in_flight.push_back(epoch);
                    if in_flight.len() > MAX_EPOCHS_IN_FLIGHT {
                        let oldest = in_flight.pop_front().expect("non-empty");
                        worker.step_or_park_while(None, || probe.less_equal(&oldest));
                    }
                    Ok(())
                });
                if let Err(e) = res {
                    failure = Some(e.to_string());
                    break;
                }
            }
            if let Some(msg) = &failure {
                input.send((index as u64, SourceMsg::Failed(msg.clone())));
            }
            input.send((index as u64, SourceMsg::Stats(stats)));
            input.close();
            while worker.step_or_park(None) {}

            if let Some(msg) = failure {
                return Err(msg);
            }
            Ok(side.map(|s| {
                let mut s = s.borrow_mut();
                Collected {
                    stats: std::mem::take(&mut s.stats),
                    failed: std::mem::take(&mut s.failed),
                    error: s.error.take().map(|e| e.to_string()),
                    rejects: s.rejects.as_ref().map(|w| w.count),
                }
            }))
        }
    })
    .map_err(Error::Runtime)?;

    let mut first_error: Option<String> = None;
    let mut collected = None;
    for (i, r) in guards.join().into_iter().enumerate() {
        match r {
            Ok(Ok(Some(c))) => collected = Some(c),
            Ok(Ok(None)) => {}
            Ok(Err(msg)) => {
                first_error.get_or_insert(msg);
            }
            Err(panic) => {
                first_error.get_or_insert(format!("internal error: worker {i} panicked: {panic}"));
            }
        }
    }
    progress.finish_and_clear();
    let elapsed = start.elapsed();
    let error = first_error
        .or_else(|| collected.as_ref().and_then(|c| c.error.clone()))
        .or_else(|| collected.as_ref().and_then(|c| c.failed.first().cloned()));
    if let Some(e) = error {
        if let Some((tmp, _)) = &partial {
            let _ = std::fs::remove_file(tmp);
        }
        return Err(Error::Runtime(e));
    }
    // Only process 0 (worker 0) collects; the others are done.
    let Some(c) = collected else { return Ok(None) };
    if let Some(p) = &partial {
        commit(p)?;
    }
    Ok(Some(RunReport {
        stats: c.stats,
        elapsed,
        output: output_path,
        rejects: rejects_path.zip(c.rejects),
        workers: total_workers,
        files: plan.files.len(),
    }))
}

/// Handler for workers other than 0, which never receive sink messages.
struct NoSink;

impl SinkHandler for NoSink {
    fn handle(&mut self, _msg: SinkMsg) {}
}

fn progress_bar(opts: &RunOptions, plan: &Plan) -> ProgressBar {
    if !opts.progress {
        return ProgressBar::hidden();
    }
    let local_rows: Option<u64> = (0..opts.workers)
        .map(|w| plan.rows_for(opts.process * opts.workers + w, opts.workers * opts.processes))
        .sum();
    let pb = match local_rows {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} rows {per_sec} eta {eta}",
            )
            .expect("template"),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {human_pos} rows {per_sec}")
                .expect("template"),
        ),
    };
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}
