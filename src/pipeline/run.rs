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

use timely::worker::Worker;

use super::collect::{Collector, Namer, NoSink, SinkSlot};
use super::config::{Emit, Overrides, PipelineConfig};
use crate::dataflow::{CollectAtWorker0, KeyedModel, Routed};
use crate::error::{Error, Result};
use crate::keyed::KeyedProcessor;
use crate::latency::{fmt_us, Histogram};
use crate::model::summary::group_digits;
use crate::model::Model;
use crate::record::Key;
use crate::record::{SourceMsg, Stats};
use crate::sink::{commit, OutputSchema, RejectsWriter, Sink, SinkHandle};
use crate::source::files::{epoch_of, Plan};
use crate::views::flow::{all_predictions, latest_updates, view, SideRow, ViewRow};
use crate::views::output::ViewOutputs;
use crate::views::spec::{parse_views, ViewSpec};
use crate::views::{side_columns, SideTables};
use differential_dataflow::collection::AsCollection;
use differential_dataflow::VecCollection;

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
    /// `3 files`, `12 connections`, `stdin`.
    pub source: String,
    /// Live runs: arrival-to-emission latency of each prediction.
    pub latency: Option<Histogram>,
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "{} rows from {} -> {} predictions for {} keys in {:.2} s ({} rows/s, {} worker{}); \
             late {}, duplicate {}, non-finite {}, malformed {}; key state {}; output {}",
            group_digits(s.rows_read as usize),
            self.source,
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
        if let Some(h) = &self.latency {
            write!(
                f,
                "; latency arrival -> emission p50 {}, p99 {}, max {} over {} predictions",
                fmt_us(h.quantile(0.5)),
                fmt_us(h.quantile(0.99)),
                fmt_us(h.max()),
                group_digits(h.count() as usize)
            )?;
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

/// What worker 0 hands back to the driver.
pub(crate) struct Collected {
    pub stats: Stats,
    pub failed: Vec<String>,
    pub error: Option<String>,
    pub rejects: Option<u64>,
    pub latency: Histogram,
}

/// Side-table updates entering the views: `(row, time, diff)`.
pub(crate) type SideInput = InputHandleVec<u64, (SideRow, u64, isize)>;

/// Feeds one worker's input: returns the worker's source counters, or the message that
/// stopped it. Called on every worker; the worker's `Collector` is there on worker 0, and
/// the side input only where it stays open (worker 0 of a live run with side tables).
pub(crate) type Feed = dyn Fn(
        &mut Worker,
        &mut InputHandleVec<u64, Routed>,
        Option<&mut SideInput>,
        &ProbeHandle<u64>,
        Option<&Rc<RefCell<Collector>>>,
    ) -> std::result::Result<Stats, String>
    + Send
    + Sync;

/// The views of a run and their side tables' initial rows.
#[derive(Clone, Default)]
pub(crate) struct ViewSetup {
    pub specs: Arc<Vec<ViewSpec>>,
    pub side_rows: Arc<Vec<SideRow>>,
    pub side_of_view: Arc<Vec<u32>>,
    /// Live runs: worker 0 keeps the side input open (tables are reloaded when they change).
    pub live: bool,
}

/// Runs the dataflow on every worker of this process: `input -> keyed_model -> sink`, the
/// input fed by `feed`. Returns what worker 0 collected (process 0 only) and the first
/// worker failure.
pub(crate) fn execute(
    opts: &RunOptions,
    cfg: Arc<PipelineConfig>,
    model: Arc<Model>,
    int_keys: Option<bool>,
    collector: Option<Collector>,
    views: ViewSetup,
    feed: Arc<Feed>,
) -> Result<(Option<Collected>, Option<String>)> {
    let config = timely_config(opts)?;
    let slot = Arc::new(Mutex::new(collector));
    let guards = timely::execute(
        config,
        move |worker| -> std::result::Result<Option<Collected>, String> {
            let index = worker.index();
            let idle = match cfg.output.emit {
                Emit::SequenceEnd { .. } => cfg.source.idle_timeout_ms,
                _ => None,
            };
            let processor = KeyedProcessor::new(model.clone(), cfg.output.emit, cfg.source.nan, int_keys)
                .with_idle_timeout(idle);
            let collector = if index == 0 {
                slot.lock().expect("collector slot").take()
            } else {
                None
            };
            let collector = collector.map(|c| Rc::new(RefCell::new(c)));
            let mut input: InputHandleVec<u64, Routed> = InputHandleVec::new();
            let mut side: SideInput = InputHandleVec::new();
            let probe: ProbeHandle<u64> = ProbeHandle::new();
            worker.dataflow::<u64, _, _>(|scope| {
                let predictions = scope.input_from(&mut input).keyed_model(processor);
                if !views.specs.is_empty() {
                    let side = scope.input_from(&mut side).as_collection();
                    let latest = latest_updates(predictions.clone());
                    let all = views
                        .specs
                        .iter()
                        .any(|v| v.window.is_some())
                        .then(|| all_predictions(predictions.clone()));
                    let mut changes: Option<VecCollection<'_, u64, ViewRow, isize>> = None;
                    for (i, v) in views.specs.iter().enumerate() {
                        let c = view(
                            i as u32,
                            v,
                            &latest,
                            all.as_ref(),
                            Some(&side),
                            views.side_of_view[i],
                        );
                        changes = Some(match changes {
                            None => c,
                            Some(p) => p.concat(c),
                        });
                    }
                    let changes = changes.expect("at least one view").inner;
                    match &collector {
                        Some(c) => changes.collect_at_worker0("SinkViews", c.clone()),
                        None => changes.collect_at_worker0("SinkViews", Rc::new(RefCell::new(NoSink))),
                    }
                    .probe_with(&probe);
                }
                match &collector {
                    Some(c) => predictions.collect_at_worker0("SinkPredictions", c.clone()),
                    None => predictions.collect_at_worker0("SinkPredictions", Rc::new(RefCell::new(NoSink))),
                }
                .probe_with(&probe);
            });
            // Side tables enter at epoch 0, from worker 0; the input stays open only where a
            // live run reloads them.
            if index == 0 {
                for r in views.side_rows.iter() {
                    side.send((r.clone(), 0, 1));
                }
            }
            let keep_side = index == 0 && views.live && !views.side_rows.is_empty();
            let mut side = if keep_side {
                Some(side)
            } else {
                side.close();
                None
            };
            let result = feed(worker, &mut input, side.as_mut(), &probe, collector.as_ref());
            drop(side);
            let failure = match result {
                Ok(stats) => {
                    input.send((index as u64, SourceMsg::Stats(stats)));
                    None
                }
                Err(msg) => {
                    input.send((index as u64, SourceMsg::Failed(msg.clone())));
                    Some(msg)
                }
            };
            input.close();
            while worker.step_or_park(None) {}
            if let Some(msg) = failure {
                return Err(msg);
            }
            Ok(collector.map(|c| {
                let mut c = c.borrow_mut();
                Collected {
                    stats: std::mem::take(&mut c.stats),
                    failed: std::mem::take(&mut c.failed),
                    error: c.error.take().map(|e| e.to_string()),
                    rejects: c.rejects.as_ref().map(|w| w.count),
                    latency: std::mem::take(&mut c.latency),
                }
            }))
        },
    )
    .map_err(Error::Runtime)?;
    let mut first_error = None;
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
    let first_error = first_error
        .or_else(|| collected.as_ref().and_then(|c| c.error.clone()))
        .or_else(|| collected.as_ref().and_then(|c| c.failed.first().cloned()));
    Ok((collected, first_error))
}

/// Runs a pipeline. Returns the report on process 0, `None` on the others.
pub fn run(pipeline: &Path, opts: &RunOptions) -> Result<Option<RunReport>> {
    let mut cfg = PipelineConfig::load(pipeline, &opts.overrides)?;
    let model = Arc::new(Model::load(&cfg.model_path)?);
    cfg.check_model(&model)?;
    if cfg.source.format.is_live() {
        return super::live::run_live(cfg, model, opts);
    }
    let plan = Arc::new(Plan::build(&cfg.source)?);
    let schema = OutputSchema {
        key_name: cfg.source.key.clone(),
        key_type: plan.key_type.clone(),
        time_name: cfg.source.time.clone(),
        time_type: plan.time_type.clone(),
        names: cfg.output.names.clone(),
    };
    let (view_setup, view_outputs) = setup_views(&cfg, opts, false, Some(&plan))?;
    // Opened before the workers start, so that a bad output path fails the run at once.
    let collector = if opts.process == 0 {
        let wide = cfg.output.names.len() >= SinkHandle::WIDE;
        let sink = Sink::create(&cfg.output, schema, true)?;
        let rejects = cfg
            .source
            .rejects
            .as_deref()
            .map(RejectsWriter::create)
            .transpose()?;
        let mut c = Collector::new(
            SinkSlot::Open(SinkHandle::new(sink, wide)),
            rejects,
            Namer::Files(plan.clone()),
            false,
        );
        c.views = view_outputs;
        Some(c)
    } else {
        None
    };
    // Known here, so a failure on any worker can discard it.
    let partial = collector.as_ref().and_then(Collector::partial);
    let output_path = cfg.output.path.clone().unwrap_or_else(|| PathBuf::from("-"));
    let rejects_path = cfg.source.rejects.clone();
    let progress = progress_bar(opts, &plan);
    let cfg = Arc::new(cfg);
    let start = Instant::now();
    let feed: Arc<Feed> = {
        let (plan, cfg, progress) = (plan.clone(), cfg.clone(), progress.clone());
        Arc::new(move |worker, input, _side, probe, _collector| {
            let (index, peers) = (worker.index(), worker.peers());
            let mut stats = Stats::default();
            let mut in_flight: VecDeque<u64> = VecDeque::new();
            for (u, _) in plan.units_for(index, peers) {
                plan.read_unit(u, &cfg.source, peers, |i, routed| {
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
    let int_keys = Some(plan.key_type.is_integer());
    let (collected, error) = execute(opts, cfg.clone(), model, int_keys, collector, view_setup, feed)?;
    progress.finish_and_clear();
    let elapsed = start.elapsed();
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
        workers: opts.workers * opts.processes,
        source: format!(
            "{} file{}",
            plan.files.len(),
            if plan.files.len() == 1 { "" } else { "s" }
        ),
        latency: None,
    }))
}

/// Parses and checks the pipeline's views, reads their side tables, and (on process 0)
/// opens their outputs.
pub(crate) fn setup_views(
    cfg: &PipelineConfig,
    opts: &RunOptions,
    live: bool,
    plan: Option<&Plan>,
) -> Result<(ViewSetup, Option<ViewOutputs>)> {
    if cfg.views.is_empty() {
        return Ok((ViewSetup::default(), None));
    }
    let specs = parse_views(
        &cfg.views,
        &cfg.path,
        &cfg.source.key,
        &cfg.output.names,
        &side_columns,
    )?;
    let tables = SideTables::load(&specs)?;
    if let Some(plan) = plan {
        // A side table whose keys are of the other kind would never match.
        let int_keys = plan.key_type.is_integer();
        for (v, &t) in specs.iter().zip(&tables.of_view) {
            if t == u32::MAX {
                continue;
            }
            let rows = tables.rows();
            if let Some((_, k, _)) = rows.iter().find(|r| r.0 == t) {
                if matches!(k, Key::Int(_)) != int_keys {
                    return Err(Error::PipelineConfig {
                        path: cfg.path.clone(),
                        msg: format!(
                            "[[views]] \"{}\": side table {} has {} keys but `{}` holds {}",
                            v.name,
                            v.side.as_ref().expect("joined").path.display(),
                            if int_keys { "text" } else { "integer" },
                            cfg.source.key,
                            if int_keys { "integers" } else { "text" }
                        ),
                    });
                }
            }
        }
    }
    let outputs = if opts.process == 0 {
        Some(ViewOutputs::create(&specs, &cfg.source.key)?)
    } else {
        None
    };
    let setup = ViewSetup {
        side_rows: Arc::new(tables.rows()),
        side_of_view: Arc::new(tables.of_view.clone()),
        specs: Arc::new(specs),
        live,
    };
    Ok((setup, outputs))
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
