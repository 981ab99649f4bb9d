//! The executor both drivers (files, live) run on: timely's configuration from our flags,
//! the dataflow on every worker (`input -> keyed_model -> sink`, plus the views), worker 0's
//! collector with the output, rejects and view writers, and the report at the end. A driver
//! supplies only how its worker feeds the input.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use differential_dataflow::collection::AsCollection;
use differential_dataflow::VecCollection;
use timely::dataflow::operators::{Concat, Exchange, Input, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};
use timely::worker::Worker;
use timely::{CommunicationConfig, Config, WorkerConfig};

use super::collect::{Collector, Namer, NoSink, SinkSlot};
use super::config::{Overrides, PipelineConfig, SourceKind};
use super::report::{quiet, Event, Observer, RunReport};
use crate::checkpoint::{FileCommit, Manifest, PartWriter, Store};
use crate::dashboard::{self, Board};
use crate::dataflow::{CollectAtWorker0, Inbound, KeyedModel};
use crate::error::{Error, Result};
use crate::input::live::Transport;
use crate::keyed::KeyedProcessor;
use crate::latency::Histogram;
use crate::metrics::{self, Hub};
use crate::model::Model;
use crate::outfiles::{check_distinct, Outputs};
use crate::record::{Key, OutBatch, SinkMsg, SourceMsg, Stats, ToSink};
use crate::sink::RejectsWriter;
use crate::views::flow::{all_predictions, latest_updates, view, SideRow, ViewRow};
use crate::views::output::ViewOutputs;
use crate::views::spec::{parse_views, ViewSpec};
use crate::views::{side_columns, SideTables};
use crate::vocab::Emit;

/// How to run: timely's worker flags, the path overrides, who hears the events, and the
/// flag that stops a run.
#[derive(Clone)]
pub struct RunOptions {
    /// Worker threads per process (`-w`).
    pub workers: usize,
    /// Processes (`-n`).
    pub processes: usize,
    /// This process's index (`-p`).
    pub process: usize,
    /// One `host:port` per line (`-h`); default `localhost:2101+i`.
    pub hostfile: Option<PathBuf>,
    /// `--input` / `--output`.
    pub overrides: Overrides,
    /// Receives the run's events (progress, warnings, the live address).
    pub observer: Observer,
    /// Set to stop the run: a live run drains what it accepted and ends normally; a file
    /// run stops reading and fails without writing its output.
    pub stop: Arc<AtomicBool>,
    /// How long the processes of a cluster wait for each other to connect.
    pub connect_timeout: std::time::Duration,
    /// `--resume`: continue from the latest complete checkpoint.
    pub resume: bool,
    /// `--fresh`: discard the pipeline's checkpoints and start over.
    pub fresh: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            workers: 1,
            processes: 1,
            process: 0,
            hostfile: None,
            overrides: Overrides::default(),
            observer: quiet(),
            stop: Arc::default(),
            connect_timeout: std::time::Duration::from_secs(60),
            resume: false,
            fresh: false,
        }
    }
}

/// One `host:port` per process: the hostfile's lines (blank lines and `#` comments skipped),
/// or `localhost:2101+i`.
fn cluster_addresses(opts: &RunOptions) -> Result<Vec<String>> {
    Ok(match &opts.hostfile {
        Some(h) => {
            let text = crate::outfiles::read_regular_string(h)?;
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
    })
}

/// The most worker threads per process (and processes) a run takes.
pub const MAX_WORKERS: usize = 1024;

/// Builds timely's configuration from our flags (timely's own parser rejects flags it does
/// not know, so it is not used).
pub fn timely_config(opts: &RunOptions) -> Result<Config> {
    let bad = |m: String| Error::Runtime(m);
    if opts.workers == 0 {
        return Err(bad("-w must be at least 1".into()));
    }
    if opts.workers > MAX_WORKERS || opts.processes > MAX_WORKERS {
        return Err(bad(format!(
            "-w {} -n {}: at most {MAX_WORKERS} worker threads per process and {MAX_WORKERS} processes \
             (each worker holds its own buffers; more than the cores does not help)",
            opts.workers, opts.processes
        )));
    }
    if opts.processes == 0 || opts.process >= opts.processes {
        return Err(bad(format!(
            "-p {} is not a valid process index for -n {} (0..{})",
            opts.process, opts.processes, opts.processes
        )));
    }
    let communication = if opts.processes > 1 {
        let addresses = cluster_addresses(opts)?;
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

/// timely's communication guard joins its send/receive threads when dropped and panics if
/// one of them did (a peer died): the run has already failed with a message, so that second
/// panic is caught here instead of ending the process with a backtrace.
struct QuietGuard<G>(Option<G>);

impl<G> Drop for QuietGuard<G> {
    fn drop(&mut self) {
        let g = self.0.take();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(g)));
    }
}

/// What worker 0 hands back to the driver.
pub(crate) struct Collected {
    pub stats: Stats,
    pub failed: Vec<String>,
    pub error: Option<String>,
    pub rejects: Option<u64>,
    pub latency: Histogram,
    pub checkpoints: u64,
    /// Kafka sources: each partition's progress at the end.
    pub offsets: Vec<crate::record::PartitionOffset>,
}

/// Side-table updates entering the views: `(row, time, diff)`.
pub(crate) type SideInput = InputHandleVec<u64, (SideRow, u64, isize)>;

/// Feeds one worker's input: returns the worker's source counters, or the message that
/// stopped it. Called on every worker; the worker's `Collector` is there on worker 0, and
/// the side input only where it stays open (worker 0 of a live run with side tables).
pub(crate) type Feed = dyn Fn(
        &mut Worker,
        &mut InputHandleVec<u64, Inbound>,
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
    /// A resumed run: hands worker 0 every prediction the checkpoint's output holds, which
    /// rebuild the views (at epoch 0, before any epoch of this run).
    pub restore: Option<Arc<Restore>>,
}

/// Calls its argument with every committed prediction, batch by batch.
pub(crate) type Restore = dyn Fn(&mut dyn FnMut(OutBatch)) -> Result<()> + Send + Sync;

/// A run's checkpoints: where parts go, and the checkpoint it resumes from.
#[derive(Clone)]
pub(crate) struct Checkpointing {
    pub store: Store,
    pub resume: Option<Arc<Manifest>>,
}

/// Runs the dataflow on every worker of this process: `input -> keyed_model -> sink`, the
/// input fed by `feed`. Returns what worker 0 collected (process 0 only) and the first
/// worker failure.
#[allow(clippy::too_many_arguments)]
pub(crate) fn execute(
    opts: &RunOptions,
    cfg: Arc<PipelineConfig>,
    model: Arc<Model>,
    int_keys: Option<bool>,
    collector: Option<Collector>,
    views: ViewSetup,
    feed: Arc<Feed>,
    checkpointing: Option<Checkpointing>,
) -> Result<(Option<Collected>, Option<String>)> {
    let config = timely_config(opts)?;
    let stop = opts.stop.clone();
    let slot = Arc::new(Mutex::new(collector));
    // A worker that panics (in a cluster: timely's reaction to a peer that died) reports its
    // message here; timely's own join only says "Any { .. }".
    let panics: Arc<Mutex<Vec<String>>> = Arc::default();
    let recorded = panics.clone();
    // A source failure heard by this process's workers (from any process).
    let heard: Arc<Mutex<Option<String>>> = Arc::default();
    let heard_here = heard.clone();
    let body = move |worker: &mut Worker| -> std::result::Result<Option<Collected>, String> {
        let index = worker.index();
        let idle = match cfg.output.emit {
            Emit::SequenceEnd { .. } => cfg.live().and_then(|l| l.idle_timeout_ms),
            _ => None,
        };
        // A stopped file run discards its output: its workers stop working at once. A
        // stopped live run processes everything it accepted.
        let abort = cfg.live().is_none().then(|| stop.clone());
        // max_keys is shared evenly: keys are spread over the workers by their hash.
        let (max_keys, ttl) = cfg.live().map_or((usize::MAX, None), |l| {
            (l.max_keys.div_ceil(worker.peers()), l.state_ttl_ms)
        });
        let mut processor =
            KeyedProcessor::new(model.clone(), cfg.output.emit, cfg.source.columns.nan, int_keys)
                .with_idle_timeout(idle)
                .with_key_limits(max_keys, ttl)
                .with_abort(abort)
                .with_keep_open(cfg.live().is_some() && checkpointing.is_some())
                .with_failures(heard.clone());
        processor.worker = index as u32;
        let parts = checkpointing.as_ref().map(|c| PartWriter {
            store: c.store.clone(),
            worker: index,
        });
        let resume = checkpointing.as_ref().and_then(|c| c.resume.as_ref());
        if let (Some(w), Some(m), Some(int)) = (&parts, resume, resume.and_then(|m| m.int_keys())) {
            // Every part is read; this worker keeps the key groups it owns.
            let _ = int_keys;
            let mut rows = processor.empty_rows(int);
            w.restore(m, worker.peers(), &mut rows)
                .map_err(|e| e.to_string())?;
            processor
                .import(&rows)
                .map_err(|e| format!("checkpoint {}: {e}", w.store.folder(m.boundary).display()))?;
        }
        let collector = if index == 0 {
            slot.lock().expect("collector slot").take()
        } else {
            None
        };
        let collector = collector.map(|c| Rc::new(RefCell::new(c)));
        let mut input: InputHandleVec<u64, Inbound> = InputHandleVec::new();
        let mut side: SideInput = InputHandleVec::new();
        let mut restore: InputHandleVec<u64, ToSink> = InputHandleVec::new();
        let probe: ProbeHandle<u64> = ProbeHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let predictions = scope.input_from(&mut input).keyed_model_with(processor, parts);
            if !views.specs.is_empty() {
                let side = scope.input_from(&mut side).as_collection();
                // A resumed run's earlier predictions, each on its key's worker.
                let restored = scope.input_from(&mut restore).exchange(|r: &ToSink| r.0);
                let for_views = predictions.clone().concat(restored);
                let latest = latest_updates(for_views.clone());
                let all = views
                    .specs
                    .iter()
                    .any(|v| v.window.is_some())
                    .then(|| all_predictions(for_views.clone()));
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
        // A resumed run's views are rebuilt from the predictions its output already holds.
        if let (0, Some(r)) = (index, views.restore.as_ref()) {
            let peers = worker.peers();
            let mut routed = |b: OutBatch| {
                let mut per: Vec<OutBatch> = (0..peers)
                    .map(|_| OutBatch::new(b.keys.new_like(), b.width))
                    .collect();
                for i in 0..b.len() {
                    let d = &mut per[b.keys.get(i).route(peers)];
                    d.keys.push(b.keys.get(i));
                    d.times.push(b.times[i]);
                    d.values
                        .extend_from_slice(&b.values[i * b.width..(i + 1) * b.width]);
                }
                for (dest, p) in per.into_iter().enumerate() {
                    if !p.is_empty() {
                        restore.send((dest as u64, SinkMsg::Rows(p)));
                    }
                }
            };
            r(&mut routed).map_err(|e| e.to_string())?;
        }
        restore.close();
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
                // Every worker hears it, so that every process of a cluster ends with it.
                for dest in 0..worker.peers() {
                    input.send((dest as u64, SourceMsg::Failed(msg.clone())));
                }
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
                checkpoints: c.checkpoint.as_ref().map_or(0, |k| k.committed()),
                offsets: c.offsets.values().copied().collect(),
            }
        }))
    };
    let worker_fn = move |worker: &mut Worker| -> std::result::Result<Option<Collected>, String> {
        let index = worker.index();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(worker))).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            let msg = format!("worker {index} failed: {msg}");
            recorded.lock().expect("panics").push(msg.clone());
            Err(msg)
        })
    };
    let guards = if opts.processes > 1 {
        // Our own connections (handshake, timeout, messages on stderr), then timely's
        // networking over them.
        let addresses = cluster_addresses(opts)?;
        let sockets = super::cluster::connect(
            &addresses,
            opts.process,
            opts.workers,
            opts.connect_timeout,
            &opts.observer,
            &opts.stop,
        )?;
        let hooks = timely_communication::Hooks::default();
        let local = timely_communication::allocator::ProcessBuilder::new_typed_vector(
            opts.workers,
            hooks.refill.clone(),
            hooks.spill.clone(),
        );
        let (tcp, guard) =
            timely_communication::allocator::zero_copy::initialize::initialize_networking_from_sockets(
                local,
                sockets,
                opts.process,
                opts.workers,
                hooks,
            )
            .map_err(|e| Error::Runtime(format!("cluster networking: {e}")))?;
        let builders = tcp
            .into_iter()
            .map(timely_communication::AllocatorBuilder::Tcp)
            .collect();
        timely::execute::execute_from(
            builders,
            Box::new(QuietGuard(Some(guard))),
            WorkerConfig::default(),
            worker_fn,
        )
    } else {
        timely::execute(config, worker_fn)
    }
    // timely fails here only when it cannot start a worker thread, with the error's debug
    // form as its message.
    .map_err(|e| {
        Error::Runtime(format!(
            "could not start the {} worker threads ({e}): the process is at its thread or memory limit",
            opts.workers
        ))
    })?;
    let mut first_error = None;
    let mut collected = None;
    for (i, r) in guards.join().into_iter().enumerate() {
        match r {
            Ok(Ok(Some(c))) => collected = Some(c),
            Ok(Ok(None)) => {}
            Ok(Err(msg)) => {
                first_error.get_or_insert(msg);
            }
            Err(_) => {
                let seen = panics.lock().expect("panics").first().cloned();
                first_error.get_or_insert(seen.unwrap_or_else(|| format!("worker {i} failed")));
            }
        }
    }
    let first_error = first_error
        .or_else(|| collected.as_ref().and_then(|c| c.error.clone()))
        .or_else(|| heard_here.lock().expect("heard").clone())
        .or_else(|| collected.as_ref().and_then(|c| c.failed.first().cloned()))
        .map(
            |e| match opts.processes > 1 && !panics.lock().expect("panics").is_empty() {
                // timely panics in every worker once a peer's connection breaks.
                true => format!(
                    "the cluster lost a process or its connection ({e}); this process (process {}) stops \
                 without writing its output",
                    opts.process
                ),
                false => e,
            },
        );
    Ok((collected, first_error))
}

/// Worker 0's collector (process 0 only): the output as `sink`, the rejects file, the
/// views' writers; opened before any worker starts, so a bad path fails the run at once.
#[allow(clippy::too_many_arguments)]
pub(crate) fn collector(
    cfg: &PipelineConfig,
    opts: &RunOptions,
    outputs: &Outputs,
    sink: impl FnOnce() -> Result<SinkSlot>,
    namer: Namer,
    live: bool,
    views: Option<ViewOutputs>,
    rejects_from: Option<&FileCommit>,
) -> Result<Option<Collector>> {
    if opts.process != 0 {
        return Ok(None);
    }
    let sink = sink()?;
    let rejects = cfg
        .source
        .rejects
        .as_deref()
        .map(|p| match rejects_from {
            Some(c) => RejectsWriter::resume(p, outputs, c.bytes, c.rows),
            None => RejectsWriter::create(p, outputs),
        })
        .transpose()?;
    let mut c = Collector::new(sink, rejects, namer, live, outputs.clone());
    c.views = views;
    let report = cfg.report.is_some() && !live;
    let hub = (cfg.metrics.is_some() || cfg.dashboard.is_some() || report)
        .then(|| Hub::new(&source_label(cfg), opts.workers * opts.processes, live));
    if let (Some(listen), Some(hub)) = (&cfg.metrics, &hub) {
        let server = metrics::Server::start(listen, hub.clone())?;
        (opts.observer)(&Event::Serving {
            what: "metrics",
            addr: server.addr,
            path: "/metrics",
        });
        c.metrics_server = Some(server);
    }
    if let Some(hub) = hub.as_ref().filter(|_| cfg.dashboard.is_some() || report) {
        let (features, names) = (cfg.source.columns.features.clone(), cfg.output.names.clone());
        let board = match report {
            true => Board::for_report(hub.clone(), features, names, cfg.dashboard.is_some()),
            false => Board::new(hub.clone(), features, names),
        };
        if let Some(listen) = &cfg.dashboard {
            let server = dashboard::Server::start(listen, board.clone())?;
            (opts.observer)(&Event::Serving {
                what: "dashboard",
                addr: server.addr,
                path: "/",
            });
            c.dashboard_server = Some(server);
        }
        c.board = Some(board);
    }
    c.metrics = hub;
    Ok(Some(c))
}

/// The `source` label of the metrics: the file format, or the live transport.
fn source_label(cfg: &PipelineConfig) -> String {
    match &cfg.source.kind {
        SourceKind::Files(f) => f.format.name().to_string(),
        SourceKind::Live(l) => match &l.transport {
            Transport::Tcp { .. } => "tcp".into(),
            Transport::Stdin => "stdin".into(),
            Transport::Mqtt(_) => "mqtt".into(),
            Transport::Kafka(_) => "kafka".into(),
        },
    }
}

/// Refuses a run whose outputs (predictions, rejects, view changelogs and snapshots) would
/// overwrite one of its inputs (data files, model, weights, pipeline file, side tables) or
/// each other, before anything is opened for writing.
pub(crate) fn check_paths(
    cfg: &PipelineConfig,
    model: &Model,
    data: &[PathBuf],
    views: &[ViewSpec],
) -> Result<()> {
    let mut inputs: Vec<(String, PathBuf)> = data.iter().map(|p| ("input".to_string(), p.clone())).collect();
    inputs.push(("model file".into(), model.path().to_path_buf()));
    inputs.extend(
        model
            .weights_path()
            .map(|w| ("weights file".into(), w.to_path_buf())),
    );
    inputs.push(("pipeline file".into(), cfg.path.clone()));
    let mut outputs: Vec<(String, PathBuf)> = Vec::new();
    outputs.extend(cfg.output.file.path.clone().map(|p| ("output".into(), p)));
    outputs.extend(cfg.source.rejects.clone().map(|p| ("rejects file".into(), p)));
    outputs.extend(cfg.report.clone().map(|p| ("report".into(), p)));
    for v in views {
        if let Some(s) = &v.side {
            inputs.push((format!("side table of view \"{}\"", v.name), s.path.clone()));
        }
        outputs.extend(
            v.output
                .clone()
                .map(|p| (format!("changelog of view \"{}\"", v.name), p)),
        );
        outputs.extend(
            v.snapshot
                .clone()
                .map(|p| (format!("snapshot of view \"{}\"", v.name), p)),
        );
    }
    check_distinct(&inputs, &outputs)
}

/// The report of a run that ended without error (process 0 only).
pub(crate) fn report(
    cfg: &PipelineConfig,
    opts: &RunOptions,
    c: Collected,
    start: Instant,
    source: String,
    latency: bool,
) -> RunReport {
    RunReport {
        stats: c.stats,
        elapsed: start.elapsed(),
        output: match &cfg.output.broker {
            Some(t) => PathBuf::from(t.describe()),
            None => cfg.output.file.path.clone().unwrap_or_else(|| PathBuf::from("-")),
        },
        rejects: cfg.source.rejects.clone().zip(c.rejects),
        workers: opts.workers * opts.processes,
        source,
        latency: latency.then_some(c.latency),
        checkpoints: c.checkpoints,
        resumed: None,
        lag: None,
    }
}

/// Parses and checks the pipeline's views, reads their side tables, and (on process 0)
/// opens their outputs.
/// `int_keys`: the key kind, when the plan knows it (files). Checks every path of the run
/// ([`check_paths`], with the data files `data`) before any view output is opened.
#[allow(clippy::too_many_arguments)]
pub(crate) fn setup_views(
    cfg: &PipelineConfig,
    opts: &RunOptions,
    model: &Model,
    data: &[PathBuf],
    outputs: &Outputs,
    live: bool,
    int_keys: Option<bool>,
    resume_from: Option<&[u64]>,
) -> Result<(ViewSetup, Option<ViewOutputs>)> {
    if cfg.views.is_empty() {
        check_paths(cfg, model, data, &[])?;
        return Ok((ViewSetup::default(), None));
    }
    let specs = parse_views(
        &cfg.views,
        &cfg.path,
        &cfg.source.columns.key,
        &cfg.output.names,
        &side_columns,
    )?;
    let tables = SideTables::load(&specs)?;
    if let Some(int_keys) = int_keys {
        // A side table whose keys are of the other kind would never match.
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
                            cfg.source.columns.key,
                            if int_keys { "integers" } else { "text" }
                        ),
                    });
                }
            }
        }
    }
    check_paths(cfg, model, data, &specs)?;
    if cfg.checkpoint.is_some() && cfg.output.broker.is_some() {
        return Err(Error::PipelineConfig {
            path: cfg.path.clone(),
            msg: "[[views]] with [checkpoint] are rebuilt on resume from the predictions' output file; \
                  with a broker output there is none: write the predictions to a file"
                .into(),
        });
    }
    if cfg.checkpoint.is_some() {
        // A checkpoint records each changelog's length; a resume cuts it back to that.
        for v in &specs {
            let ok = v.output.as_deref().is_some_and(|p| {
                crate::vocab::FileFormat::from_path(p) != Some(crate::vocab::FileFormat::Parquet)
            });
            if !ok {
                return Err(Error::PipelineConfig {
                    path: cfg.path.clone(),
                    msg: format!(
                        "[[views]] \"{}\": with [checkpoint], a view's changelog is a JSON-lines or CSV file \
                         (`output = \"....jsonl\"`), which a resume continues; stdout and Parquet cannot be",
                        v.name
                    ),
                });
            }
        }
    }
    let view_outputs = match (opts.process, resume_from) {
        (0, Some(bytes)) if bytes.len() == specs.len() => Some(ViewOutputs::resume(
            &specs,
            &cfg.source.columns.key,
            outputs,
            bytes,
        )?),
        (0, _) => Some(ViewOutputs::create(&specs, &cfg.source.columns.key, outputs)?),
        _ => None,
    };
    let setup = ViewSetup {
        side_rows: Arc::new(tables.rows()),
        side_of_view: Arc::new(tables.of_view.clone()),
        specs: Arc::new(specs),
        live,
        restore: None,
    };
    Ok((setup, view_outputs))
}
