//! Worker 0's end of a pipeline: writes predictions and rejects, sums every worker's
//! counters, and for live runs flushes at each epoch and measures arrival-to-emission latency.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arrow::datatypes::DataType;

use crate::checkpoint::{self, FileCommit, Identity, Manifest, PartInfo, Store};
use crate::dataflow::Collect;
use crate::error::{Error, Result};
use crate::input::arrow::describe_row;
use crate::input::files::Plan;
use crate::latency::Histogram;
use crate::outfiles::Outputs;
use crate::record::{KeyColumn, Reject, SinkMsg, Stats, ToSink};
use crate::sink::{OutputFile, OutputSchema, RejectsWriter, Sink, SinkHandle};
use crate::views::flow::ViewChange;
use crate::views::output::ViewOutputs;
use crate::vocab::now_us;

/// How rejects name where they came from.
pub enum Namer {
    /// File sources: the file and its row or line.
    Files(Arc<Plan>),
    /// Live sources: the connection and the line.
    Live(Arc<Mutex<Vec<String>>>),
}

impl Namer {
    fn name(&self, r: &Reject) -> (String, String) {
        match self {
            Namer::Files(plan) => (
                plan.files[r.source as usize].path.display().to_string(),
                describe_row(plan.format, r.row),
            ),
            Namer::Live(names) => (
                names
                    .lock()
                    .expect("names")
                    .get(r.source as usize)
                    .cloned()
                    .unwrap_or_else(|| format!("connection {}", r.source)),
                format!("line {}", r.row),
            ),
        }
    }
}

/// The output, opened at once (files: types known from the plan) or at the first
/// prediction (live: the key type comes from the first line).
pub enum SinkSlot {
    Open(SinkHandle),
    Lazy(OutputFile, OutputSchema),
    Failed,
}

/// Worker 0's side of checkpoints: gathers every worker's part of a checkpoint and, once
/// the output holds exactly the epochs before its boundary, commits the output and the
/// rejects to disk and writes the manifest.
pub struct Committer {
    /// The checkpoint folder.
    pub store: Store,
    /// Complete checkpoints kept.
    pub keep: usize,
    /// Workers of all processes: parts per checkpoint.
    pub workers: usize,
    /// What the state belongs to.
    pub identity: Identity,
    /// The output file, as the pipeline names it.
    pub output: Option<PathBuf>,
    /// The Parquet output's generation (one more per resume).
    pub generation: u32,
    /// After a Parquet resume: the committed rows it copied, removed once a checkpoint of
    /// the new file is committed.
    pub resume_source: Option<PathBuf>,
    /// Parts received, by boundary.
    pending: BTreeMap<u64, Vec<std::result::Result<PartInfo, String>>>,
    /// Checkpoints committed by this run.
    pub committed: u64,
}

impl Committer {
    /// A committer with nothing pending.
    pub fn new(
        store: Store,
        keep: usize,
        workers: usize,
        identity: Identity,
        output: Option<PathBuf>,
    ) -> Committer {
        Committer {
            store,
            keep,
            workers,
            identity,
            output,
            generation: 0,
            resume_source: None,
            pending: BTreeMap::new(),
            committed: 0,
        }
    }
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
        }
    }

    /// Commits the checkpoints whose parts are all in and whose boundary is at most `to`
    /// (every record before `to` written).
    fn commit_checkpoints(&mut self, to: Option<u64>) {
        let Some(c) = self.checkpoint.as_mut() else { return };
        let ready: Vec<u64> = c
            .pending
            .iter()
            .filter(|(b, parts)| to.is_none_or(|t| **b <= t) && parts.len() == c.workers)
            .map(|(b, _)| *b)
            .collect();
        for b in ready {
            let parts = self
                .checkpoint
                .as_mut()
                .expect("checkpoint")
                .pending
                .remove(&b)
                .expect("pending");
            let r = self.commit(b, parts);
            self.record(r);
        }
    }

    fn commit(&mut self, boundary: u64, parts: Vec<std::result::Result<PartInfo, String>>) -> Result<()> {
        let c = self.checkpoint.as_ref().expect("checkpoint");
        let folder = c.store.folder(boundary);
        let mut infos = Vec::new();
        for p in parts {
            infos.push(p.map_err(|msg| Error::Checkpoint {
                path: folder.clone(),
                msg: format!("a worker could not write its part: {msg}"),
            })?);
        }
        infos.sort_by_key(|p| p.worker);
        let output = match &mut self.sink {
            SinkSlot::Open(s) => Some(s.commit_point()?),
            _ => None,
        };
        let rejects = self.rejects.as_mut().map(|r| r.commit_point()).transpose()?;
        let c = self.checkpoint.as_mut().expect("checkpoint");
        let footer = output.as_ref().and_then(|o| o.footer.clone());
        let manifest = Manifest {
            format: checkpoint::FORMAT,
            boundary,
            created_unix_ms: checkpoint::unix_ms(),
            workers: c.workers as u32,
            parts: infos,
            output: output.zip(c.output.clone()).map(|(o, path)| FileCommit {
                path,
                bytes: o.bytes,
                rows: o.rows,
                footer_crc32: o.footer.as_ref().map(|f| crc32fast::hash(f)),
                footer: o.footer.map(|_| "output.footer".to_string()),
                generation: c.generation,
            }),
            rejects: rejects
                .zip(self.rejects.as_ref().map(|r| r.path().to_path_buf()))
                .map(|(r, path)| FileCommit {
                    path,
                    bytes: r.bytes,
                    rows: r.rows,
                    footer: None,
                    footer_crc32: None,
                    generation: 0,
                }),
            stats: self.stats.clone(),
            identity: c.identity.clone(),
        };
        c.store.commit(&manifest, footer.as_deref(), c.keep)?;
        c.committed += 1;
        if let Some(src) = c.resume_source.take() {
            let _ = std::fs::remove_file(src);
        }
        Ok(())
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
        if let SinkSlot::Lazy(cfg, schema) = &self.sink {
            let mut schema = schema.clone();
            schema.key_type = match keys {
                KeyColumn::Int(_) => DataType::Int64,
                KeyColumn::Str { .. } => DataType::Utf8,
            };
            match Sink::create(cfg, schema, &self.outputs) {
                // Live outputs are written inline: their flush is on the latency path.
                Ok(s) => self.sink = SinkSlot::Open(SinkHandle::new(s, false)),
                Err(e) => {
                    self.error.get_or_insert(e);
                    self.sink = SinkSlot::Failed;
                }
            }
        }
        match &mut self.sink {
            SinkSlot::Open(s) => Some(s),
            _ => None,
        }
    }
}

impl Collect<ToSink> for Collector {
    fn take(&mut self, (_, msg): ToSink) {
        if self.aborted() {
            return;
        }
        match msg {
            SinkMsg::Rows(b) => {
                if self.live {
                    self.pending_arrivals.extend_from_slice(&b.arrivals);
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
            SinkMsg::Stats(s) => self.stats.add(&s),
            SinkMsg::Failed(m) => self.failed.push(m),
            SinkMsg::Part {
                boundary,
                part,
                stats,
            } => {
                self.stats.add(&stats);
                if let Some(c) = self.checkpoint.as_mut() {
                    c.pending.entry(boundary).or_default().push(part);
                }
            }
        }
    }

    fn advance(&mut self, to: Option<u64>) {
        if !self.aborted() && self.error.is_none() {
            self.commit_checkpoints(to);
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
        for a in self.pending_arrivals.drain(..) {
            self.latency.record(now.saturating_sub(a));
        }
    }

    fn finish(&mut self) {
        <Self as Collect<ToSink>>::epoch_done(self);
        if let SinkSlot::Open(s) = &mut self.sink {
            let r = s.close();
            self.record(r);
        }
        if let Some(w) = self.rejects.as_mut() {
            let r = w.flush();
            self.record(r);
        }
    }
}

impl Collect<ViewChange> for Collector {
    fn take(&mut self, (row, time, diff): ViewChange) {
        if self.aborted() {
            return;
        }
        if let Some(v) = self.views.as_mut() {
            v.push(row, time, diff);
        }
    }

    fn epoch_done(&mut self) {
        if self.live {
            if let Some(v) = self.views.as_mut() {
                let r = v.flush();
                self.record(r);
            }
        }
    }

    fn finish(&mut self) {
        // An abandoned run makes no snapshot: it would look complete.
        if self.aborted() {
            return;
        }
        if let Some(v) = self.views.as_mut() {
            let r = v.finish();
            self.record(r);
        }
    }
}

/// Handler for workers other than 0, which never receive sink messages.
pub struct NoSink;

impl<D> Collect<D> for NoSink {
    fn take(&mut self, _record: D) {}
}
