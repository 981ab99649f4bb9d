//! Worker 0's end of a pipeline: writes predictions and rejects, sums every worker's
//! counters, and for live runs flushes at each epoch and measures arrival-to-emission latency.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arrow::datatypes::DataType;

pub use super::commit::Committer;
use super::commit::Point;
use crate::dataflow::Collect;
use crate::error::{Error, Result};
use crate::input::arrow::describe_row;
use crate::input::files::Plan;
use crate::latency::Histogram;
use crate::metrics::Hub;
use crate::outfiles::Outputs;
use crate::record::{KeyColumn, PartitionOffset, Reject, SinkMsg, Stats, ToSink};
use crate::sink::{OutputFile, OutputSchema, RejectsWriter, Sink, SinkHandle};
use crate::views::flow::ViewChange;
use crate::views::output::ViewOutputs;
use crate::vocab::now_us;

/// How rejects name where they came from.
pub enum Namer {
    /// File sources: the file and its row or line.
    Files(Arc<Plan>),
    /// Live sources: the connection and the line (Arrow streams: the row).
    Live(Arc<Mutex<Vec<String>>>, crate::vocab::LineFormat),
    /// Kafka: the partition and the record's offset.
    Kafka(Arc<Mutex<Vec<String>>>),
}

impl Namer {
    fn name(&self, r: &Reject) -> (String, String) {
        match self {
            Namer::Files(plan) => (
                plan.files[r.source as usize].path.display().to_string(),
                describe_row(plan.format, r.row),
            ),
            Namer::Live(names, lines) => (
                names
                    .lock()
                    .expect("names")
                    .get(r.source as usize)
                    .cloned()
                    .unwrap_or_else(|| format!("connection {}", r.source)),
                match lines {
                    crate::vocab::LineFormat::Arrow => format!("row {}", r.row),
                    _ => format!("line {}", r.row),
                },
            ),
            Namer::Kafka(names) => (
                names
                    .lock()
                    .expect("names")
                    .get(r.source as usize)
                    .cloned()
                    .unwrap_or_else(|| format!("partition {}", r.source)),
                format!("offset {}", r.row),
            ),
        }
    }
}

/// The output, opened at once (files: types known from the plan) or at the first
/// prediction (live: the key type comes from the first line).
pub enum SinkSlot {
    Open(SinkHandle),
    Lazy(OutputFile, OutputSchema),
    /// A broker output, connected at the first prediction (its key type decides how keys
    /// are written).
    LazyBroker(crate::sink::BrokerTarget, OutputSchema),
    Failed,
}

/// Worker 0's sink state.
pub struct Collector {
    pub sink: SinkSlot,
    pub rejects: Option<RejectsWriter>,
    pub namer: Namer,
    pub stats: Stats,
    pub failed: Vec<String>,
    pub error: Option<Error>,
    /// Live runs: flush every epoch, record latency.
    pub live: bool,
    pub latency: Histogram,
    pending_arrivals: Vec<u64>,
    /// The views' changelog writers, if the pipeline has views.
    pub views: Option<ViewOutputs>,
    /// Set when the run is abandoned: nothing more is written, no snapshot is made.
    pub abort: Option<Arc<AtomicBool>>,
    /// The run's files (a lazy sink registers its own when it opens).
    pub outputs: Outputs,
    /// Checkpoints, when the pipeline has `[checkpoint]`.
    pub checkpoint: Option<Committer>,
    /// A resumed run: view changes before this epoch rebuild the views from the
    /// checkpoint's predictions; they are already in the changelogs.
    pub restored_before: u64,
    /// Checkpointed views: every prediction record before this epoch has been handed over
    /// (`u64::MAX`: all of them), and every view change before `views_at`. View changes are
    /// written only below both (and below any boundary still to be measured), so that a
    /// changelog's length can be measured at every boundary.
    pred_at: u64,
    views_at: u64,
    /// Collect streams finished (predictions, views); the outputs close after the last.
    finished: u8,
    /// Kafka sources: each partition's progress as of the epochs taken so far.
    pub offsets: std::collections::BTreeMap<i32, PartitionOffset>,
    /// Where `/metrics` reads the run (`[metrics]` / `--metrics`).
    pub metrics: Option<Arc<Hub>>,
    /// Its HTTP server: it stops when the collector goes, at the end of the run.
    pub metrics_server: Option<crate::metrics::Server>,
    /// The dashboard's data (`[dashboard]` / `--dashboard`), and its server.
    pub board: Option<Arc<crate::dashboard::Board>>,
    pub dashboard_server: Option<crate::dashboard::Server>,
    /// When the views' tables last went to the dashboard (at most twice a second).
    views_shown: Option<std::time::Instant>,
}

impl Collector {
    pub fn new(
        sink: SinkSlot,
        rejects: Option<RejectsWriter>,
        namer: Namer,
        live: bool,
        outputs: Outputs,
    ) -> Collector {
        Collector {
            sink,
            rejects,
            namer,
            stats: Stats::default(),
            failed: Vec::new(),
            error: None,
            live,
            latency: Histogram::default(),
            pending_arrivals: Vec::new(),
            views: None,
            abort: None,
            outputs,
            checkpoint: None,
            restored_before: 0,
            pred_at: 0,
            views_at: 0,
            finished: 0,
            offsets: Default::default(),
            metrics: None,
            metrics_server: None,
            board: None,
            dashboard_server: None,
            views_shown: None,
        }
    }

    /// The views' current tables to the dashboard, at most twice a second.
    fn show_views(&mut self) {
        let (Some(board), Some(v)) = (&self.board, &self.views) else {
            return;
        };
        let now = std::time::Instant::now();
        if self
            .views_shown
            .is_some_and(|t| now.duration_since(t) < std::time::Duration::from_millis(500))
        {
            return;
        }
        self.views_shown = Some(now);
        board.views(crate::dashboard::tables(v.tables(crate::dashboard::view_rows())));
    }

    /// Copies the summed counters to the metrics.
    fn publish_stats(&self) {
        if let Some(m) = &self.metrics {
            m.update(|s| s.stats = self.stats.clone());
        }
    }

    /// Whether view changes are written through checkpoints' measurements.
    fn checkpointed_views(&self) -> bool {
        self.checkpoint.is_some() && self.views.is_some()
    }

    /// Measures the view changelogs at every boundary both streams have passed, and writes
    /// the view changes below the next boundary still to be measured.
    fn sync_views(&mut self) -> Result<()> {
        if !self.checkpointed_views() {
            return Ok(());
        }
        let both = self.pred_at.min(self.views_at);
        let c = self.checkpoint.as_mut().expect("checkpoint");
        let v = self.views.as_mut().expect("views");
        for b in c.needs_views_point(Some(both)) {
            v.flush_before(b)?;
            c.set_views_point(b, v.measure()?);
        }
        // Below the predictions' frontier no unknown boundary can fall (a mark reaches the
        // predictions' side before its frontier passes the boundary).
        let limit = c
            .needs_views_point(None)
            .first()
            .copied()
            .unwrap_or(u64::MAX)
            .min(self.pred_at);
        v.flush_before(limit)
    }

    /// Both streams are done: the last measurements, every checkpoint durable, then the
    /// outputs closed.
    fn close_all(&mut self) {
        let r = self.sync_views();
        self.record(r);
        if let Some(c) = self.checkpoint.as_mut() {
            let r = c.commit_ready().and_then(|_| c.finish());
            self.record(r);
        }
        <Self as Collect<ToSink>>::epoch_done(self);
        if let SinkSlot::Open(s) = &mut self.sink {
            let r = s.close();
            self.record(r);
        }
        if let Some(w) = self.rejects.as_mut() {
            let r = w.flush();
            self.record(r);
        }
        // An abandoned run makes no snapshot: it would look complete.
        if !self.aborted() {
            if let Some(v) = self.views.as_mut() {
                let r = v.finish();
                self.record(r);
            }
        }
    }

    /// One of the collect streams finished.
    fn stream_done(&mut self) {
        self.finished += 1;
        if self.finished == if self.views.is_some() { 2 } else { 1 } {
            self.close_all();
        }
    }

    /// Takes the commit points of the marked boundaries at most `to` (every record before
    /// `to` is written, none after), and hands complete checkpoints to the commit thread.
    fn checkpoints(&mut self, to: Option<u64>) -> Result<()> {
        let Some(c) = self.checkpoint.as_ref() else {
            return Ok(());
        };
        for b in c.needs_point(to) {
            let output = match &mut self.sink {
                SinkSlot::Open(s) if s.is_file() => Some(s.mark_point()?),
                _ => None,
            };
            let rejects = self.rejects.as_mut().map(|r| r.mark_point()).transpose()?;
            let delivered = match &mut self.sink {
                SinkSlot::Open(s) => s.delivery()?,
                _ => None,
            };
            let point = Point {
                output,
                rejects,
                stats: self.stats.clone(),
                delivered,
                offsets: self.offsets.values().copied().collect(),
            };
            self.checkpoint.as_mut().expect("checkpoint").set_point(b, point);
        }
        match self.checkpoint.as_ref().expect("checkpoint").failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn aborted(&self) -> bool {
        self.abort.as_ref().is_some_and(|f| f.load(Ordering::Relaxed))
    }

    fn record(&mut self, r: Result<()>) {
        if let Err(e) = r {
            self.error.get_or_insert(e);
        }
    }

    /// The open sink, opening a lazy one with the key type of `keys`.
    fn sink_for(&mut self, keys: &KeyColumn) -> Option<&mut SinkHandle> {
        let key_type = match keys {
            KeyColumn::Int(_) => DataType::Int64,
            KeyColumn::Str { .. } => DataType::Utf8,
        };
        let opened = match &self.sink {
            SinkSlot::Lazy(cfg, schema) => {
                let mut schema = schema.clone();
                schema.key_type = key_type;
                // Live outputs are written inline: their flush is on the latency path.
                Some(Sink::create(cfg, schema, &self.outputs).map(|s| SinkHandle::new(s, false)))
            }
            SinkSlot::LazyBroker(target, schema) => {
                let mut schema = schema.clone();
                schema.key_type = key_type;
                Some(target.connect(schema))
            }
            _ => None,
        };
        match opened {
            Some(Ok(h)) => self.sink = SinkSlot::Open(h),
            Some(Err(e)) => {
                self.error.get_or_insert(e);
                self.sink = SinkSlot::Failed;
            }
            None => {}
        }
        match &mut self.sink {
            SinkSlot::Open(s) => Some(s),
            _ => None,
        }
    }
}

impl Collect<ToSink> for Collector {
    fn at_once(&self, (_, msg): &ToSink) -> bool {
        // A part only completes a checkpoint; it is sent whenever its file is written.
        matches!(msg, SinkMsg::Part { .. })
    }

    fn take(&mut self, (_, msg): ToSink) {
        if self.aborted() {
            return;
        }
        match msg {
            SinkMsg::Rows(b) => {
                if self.live {
                    self.pending_arrivals.extend_from_slice(&b.arrivals);
                }
                if let Some(m) = &self.metrics {
                    m.update(|s| s.predictions += b.len() as u64);
                }
                if let Some(board) = &self.board {
                    board.predictions(&b);
                }
                if let Some(s) = self.sink_for(&b.keys) {
                    let r = s.write(b);
                    self.record(r);
                }
            }
            SinkMsg::Rejects(rs) => {
                if self.rejects.is_some() {
                    for r in &rs {
                        let (source, at) = self.namer.name(r);
                        let res = self.rejects.as_mut().expect("checked").write(r, &source, &at);
                        self.record(res);
                    }
                }
            }
            SinkMsg::Stats(s) => {
                self.stats.add(&s);
                self.publish_stats();
            }
            SinkMsg::Epoch(e) => {
                if let Some(m) = &self.metrics {
                    m.epoch(&e);
                }
            }
            // Each partition has one reader, and its messages come in epoch order: the
            // newest is where it stands (it may go back, after the broker's log did).
            SinkMsg::Offsets(os) => {
                for o in os {
                    self.offsets.insert(o.partition, o);
                }
                if let Some(m) = &self.metrics {
                    let lag = self.offsets.values().map(|o| (o.high - o.next).max(0)).sum();
                    m.update(|s| s.lag = Some(lag));
                }
            }
            SinkMsg::Failed(m) => self.failed.push(m),
            SinkMsg::Marked { boundary, stats } => {
                self.stats.add(&stats);
                self.publish_stats();
                if let Some(c) = self.checkpoint.as_mut() {
                    c.marked(boundary);
                }
            }
            SinkMsg::Part { boundary, part } => {
                if let Some(c) = self.checkpoint.as_mut() {
                    c.part(boundary, part);
                    let r = c.commit_ready();
                    self.record(r);
                }
            }
        }
    }

    fn advance(&mut self, to: Option<u64>) {
        self.pred_at = to.unwrap_or(u64::MAX);
        if let Some(b) = &self.board {
            b.sample();
        }
        if let (Some(m), Some(to)) = (&self.metrics, to) {
            let checkpoints = self.checkpoint.as_ref().map(Committer::metrics);
            m.update(|s| {
                s.epochs = s.epochs.max(to);
                if checkpoints.is_some() {
                    s.checkpoints = checkpoints;
                }
            });
        }
        // After a worker failed, epochs it did not finish may be behind any later boundary:
        // no checkpoint from then on.
        if !self.aborted() && self.error.is_none() && self.failed.is_empty() {
            let r = self.checkpoints(to).and_then(|_| self.sync_views());
            self.record(r);
            let r = self.checkpoint.as_mut().map_or(Ok(()), |c| c.commit_ready());
            self.record(r);
        }
    }

    fn epoch_done(&mut self) {
        if !self.live {
            return;
        }
        if let SinkSlot::Open(s) = &mut self.sink {
            let r = s.flush();
            self.record(r);
        }
        if let Some(w) = self.rejects.as_mut() {
            let r = w.flush();
            self.record(r);
        }
        // Emission = the moment the prediction was handed to the output and flushed.
        let now = now_us();
        if let Some(m) = &self.metrics {
            m.update(|s| {
                if let Some(l) = s.latency.as_mut() {
                    for a in &self.pending_arrivals {
                        l.observe(now.saturating_sub(*a) as f64 / 1e6);
                    }
                }
            });
        }
        for a in self.pending_arrivals.drain(..) {
            self.latency.record(now.saturating_sub(a));
        }
    }

    fn finish(&mut self) {
        self.stream_done();
    }
}

impl Collect<ViewChange> for Collector {
    fn take(&mut self, (row, time, diff): ViewChange) {
        if self.aborted() {
            return;
        }
        if let Some(v) = self.views.as_mut() {
            if time < self.restored_before {
                v.push_restored(row, diff);
            } else {
                v.push(row, time, diff);
            }
        }
    }

    fn advance(&mut self, to: Option<u64>) {
        self.views_at = to.unwrap_or(u64::MAX);
        if !self.aborted() && self.error.is_none() && self.failed.is_empty() {
            let r = self.sync_views();
            self.record(r);
            let r = self.checkpoint.as_mut().map_or(Ok(()), |c| c.commit_ready());
            self.record(r);
        }
        self.show_views();
    }

    fn epoch_done(&mut self) {
        if self.live && !self.checkpointed_views() {
            if let Some(v) = self.views.as_mut() {
                let r = v.flush();
                self.record(r);
            }
        }
    }

    fn finish(&mut self) {
        self.stream_done();
    }
}

/// Handler for workers other than 0, which never receive sink messages.
pub struct NoSink;

impl<D> Collect<D> for NoSink {
    fn take(&mut self, _record: D) {}
}
