//! Worker 0's side of checkpoints. For each boundary `B` it gathers three things: every
//! worker's mark (its counters up to `B`), the output's commit point at `B` (taken when the
//! collector has written every epoch before `B` and none after: flushed and measured), and
//! every worker's part. Complete checkpoints are committed in boundary order on a thread
//! of their own (sync the outputs, write the footer and the manifest, prune), so that the
//! fsyncs never stall worker 0, which in a live run also keeps the epoch clock.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::checkpoint::{self, FileCommit, Identity, KafkaOffsets, Manifest, PartInfo, Store};
use crate::error::{Error, Result};
use crate::metrics::CheckpointStats;
use crate::record::{PartitionOffset, Stats};
use crate::sink::CommitPoint;

/// What the collector measured at a boundary.
pub struct Point {
    /// The predictions' commit point and a handle to sync them.
    pub output: Option<(CommitPoint, File)>,
    /// The rejects' commit point and a handle to sync them.
    pub rejects: Option<(CommitPoint, File)>,
    /// The counters of every epoch before the boundary.
    pub stats: Stats,
    /// A broker output: predictions published before the boundary, and the broker's
    /// acknowledgement count, which must reach it before the checkpoint is committed.
    pub delivered: Option<(u64, Arc<AtomicU64>)>,
    /// A Kafka source: each partition's offset fed before the boundary.
    pub offsets: Vec<PartitionOffset>,
}

#[derive(Default)]
struct Pending {
    point: Option<Point>,
    /// Each view changelog's committed length and a handle to sync it (taken when the
    /// views have written every change before the boundary, which may come later or
    /// earlier than the predictions).
    views: Option<Vec<(u64, File)>>,
    parts: Vec<std::result::Result<PartInfo, String>>,
}

/// A checkpoint ready to be made durable.
struct Job {
    manifest: Manifest,
    footer: Option<Vec<u8>>,
    sync: Vec<(PathBuf, File)>,
    delivered: Option<(u64, Arc<AtomicU64>)>,
    /// A Parquet resume's source, no longer needed once this checkpoint is durable.
    remove: Option<PathBuf>,
}

/// Gathers and commits a run's checkpoints.
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
    /// The rejects file.
    pub rejects: Option<PathBuf>,
    /// The views' changelog files (empty without views).
    pub views: Vec<PathBuf>,
    /// The Parquet output's generation (one more per resume).
    pub generation: u32,
    /// A Kafka source's topic (its offsets go into every checkpoint).
    pub kafka_topic: Option<String>,
    /// After a Parquet resume: the committed rows it copied, removed once a checkpoint of
    /// the new file is durable.
    pub resume_source: Option<PathBuf>,
    pending: BTreeMap<u64, Pending>,
    committed: Arc<AtomicU64>,
    /// The boundary of the newest durable checkpoint (0: none yet).
    boundary: Arc<AtomicU64>,
    failed: Arc<Mutex<Option<Error>>>,
    /// What the metrics show of the commits.
    stats: Arc<Mutex<CheckpointStats>>,
    tx: Option<crossbeam_channel::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    /// A committer with nothing pending (its thread starts with the first checkpoint).
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
            rejects: None,
            views: Vec::new(),
            generation: 0,
            resume_source: None,
            kafka_topic: None,
            pending: BTreeMap::new(),
            committed: Arc::default(),
            boundary: Arc::default(),
            failed: Arc::default(),
            stats: Arc::default(),
            tx: None,
            thread: None,
        }
    }

    /// The commits so far, for the metrics.
    pub fn metrics(&self) -> CheckpointStats {
        *self.stats.lock().expect("checkpoint stats")
    }

    /// Checkpoints made durable so far.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// The boundary of the newest durable checkpoint, as it moves (broker sources
    /// acknowledge the messages before it).
    pub fn committed_boundary(&self) -> Arc<AtomicU64> {
        self.boundary.clone()
    }

    /// A worker passed `boundary`.
    pub fn marked(&mut self, boundary: u64) {
        self.pending.entry(boundary).or_default();
    }

    /// A worker's part of `boundary` (or why it has none).
    pub fn part(&mut self, boundary: u64, part: std::result::Result<PartInfo, String>) {
        self.pending.entry(boundary).or_default().parts.push(part);
    }

    /// The boundaries at most `to` (`None`: all) whose commit point is still to be taken.
    pub fn needs_point(&self, to: Option<u64>) -> Vec<u64> {
        self.pending
            .iter()
            .filter(|(b, p)| p.point.is_none() && to.is_none_or(|t| **b <= t))
            .map(|(b, _)| *b)
            .collect()
    }

    /// The boundaries at most `to` whose view changelogs are still to be measured.
    pub fn needs_views_point(&self, to: Option<u64>) -> Vec<u64> {
        if self.views.is_empty() {
            return Vec::new();
        }
        self.pending
            .iter()
            .filter(|(b, p)| p.views.is_none() && to.is_none_or(|t| **b <= t))
            .map(|(b, _)| *b)
            .collect()
    }

    /// The view changelogs' commit points at `boundary`.
    pub fn set_views_point(&mut self, boundary: u64, points: Vec<(u64, File)>) {
        self.pending.entry(boundary).or_default().views = Some(points);
    }

    /// The commit point of `boundary`.
    pub fn set_point(&mut self, boundary: u64, point: Point) {
        self.pending.entry(boundary).or_default().point = Some(point);
    }

    /// Hands the complete checkpoints, oldest first, to the commit thread; stops at the
    /// first incomplete one, so checkpoints become durable in order.
    pub fn commit_ready(&mut self) -> Result<()> {
        while let Some(entry) = self.pending.first_entry() {
            let p = entry.get();
            let views_done = self.views.is_empty() || p.views.is_some();
            if p.point.is_none() || !views_done || p.parts.len() < self.workers {
                break;
            }
            let (boundary, p) = entry.remove_entry();
            let folder = self.store.folder(boundary);
            let mut parts = Vec::new();
            for part in p.parts {
                parts.push(part.map_err(|msg| Error::Checkpoint {
                    path: folder.clone(),
                    msg: format!("a worker could not write its part: {msg}"),
                })?);
            }
            parts.sort_by_key(|p| p.worker);
            let mut point = p.point.expect("checked");
            let delivered = point.delivered.take();
            let mut sync = Vec::new();
            let output = point.output.map(|(o, f)| {
                sync.push((self.output.clone().unwrap_or_default(), f));
                o
            });
            let rejects = point.rejects.map(|(r, f)| {
                sync.push((self.rejects.clone().unwrap_or_default(), f));
                r
            });
            let mut views = Vec::new();
            for ((bytes, f), path) in p.views.unwrap_or_default().into_iter().zip(&self.views) {
                sync.push((path.clone(), f));
                views.push(FileCommit {
                    path: path.clone(),
                    bytes,
                    rows: 0,
                    footer: None,
                    footer_crc32: None,
                    int_keys: None,
                    generation: 0,
                });
            }
            let footer = output.as_ref().and_then(|o| o.footer.clone());
            let manifest = Manifest {
                format: checkpoint::FORMAT,
                boundary,
                created_unix_ms: checkpoint::unix_ms(),
                workers: self.workers as u32,
                parts,
                output: output.zip(self.output.clone()).map(|(o, path)| FileCommit {
                    path,
                    bytes: o.bytes,
                    rows: o.rows,
                    footer_crc32: o.footer.as_ref().map(|f| crc32fast::hash(f)),
                    footer: o.footer.map(|_| "output.footer".to_string()),
                    int_keys: o.int_keys,
                    generation: self.generation,
                }),
                rejects: rejects.zip(self.rejects.clone()).map(|(r, path)| FileCommit {
                    path,
                    bytes: r.bytes,
                    rows: r.rows,
                    footer: None,
                    footer_crc32: None,
                    int_keys: None,
                    generation: 0,
                }),
                views,
                stats: point.stats,
                kafka: self.kafka_topic.clone().map(|topic| KafkaOffsets {
                    topic,
                    partitions: point.offsets,
                }),
                identity: self.identity.clone(),
            };
            let job = Job {
                manifest,
                footer,
                sync,
                delivered,
                remove: self.resume_source.take(),
            };
            self.send(job)?;
        }
        Ok(())
    }

    fn send(&mut self, job: Job) -> Result<()> {
        if self.tx.is_none() {
            let (tx, rx) = crossbeam_channel::unbounded::<Job>();
            let (store, keep) = (self.store.clone(), self.keep);
            let (committed, failed) = (self.committed.clone(), self.failed.clone());
            let (boundary, stats) = (self.boundary.clone(), self.stats.clone());
            let thread = std::thread::Builder::new()
                .name("seqflow-commit".into())
                .spawn(move || {
                    for job in rx {
                        if failed.lock().expect("failed").is_some() {
                            continue;
                        }
                        let started = std::time::Instant::now();
                        let result = commit(&store, keep, &job);
                        let mut st = stats.lock().expect("checkpoint stats");
                        match &result {
                            Ok(()) => {
                                st.committed += 1;
                                st.last_unix = crate::vocab::now_us() as f64 / 1e6;
                                st.last_seconds = started.elapsed().as_secs_f64();
                                st.last_bytes = job.manifest.parts.iter().map(|p| p.bytes).sum();
                            }
                            Err(_) => st.failures += 1,
                        }
                        drop(st);
                        match result {
                            Ok(()) => {
                                committed.fetch_add(1, Ordering::Relaxed);
                                boundary.fetch_max(job.manifest.boundary, Ordering::Relaxed);
                                if let Some(p) = &job.remove {
                                    let _ = std::fs::remove_file(p);
                                }
                            }
                            Err(e) => *failed.lock().expect("failed") = Some(e),
                        }
                    }
                })
                .map_err(|e| Error::Runtime(format!("could not start the checkpoint thread: {e}")))?;
            self.tx = Some(tx);
            self.thread = Some(thread);
        }
        self.tx
            .as_ref()
            .expect("started")
            .send(job)
            .map_err(|_| Error::Runtime("the checkpoint thread stopped".into()))
    }

    /// The first failure of the commit thread, if any.
    pub fn failure(&self) -> Option<Error> {
        self.failed.lock().expect("failed").take()
    }

    /// Waits until every checkpoint handed over is durable (or failed).
    pub fn finish(&mut self) -> Result<()> {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        match self.failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Makes one checkpoint durable: the outputs' committed bytes synced, then the footer and
/// the manifest (temporary file, fsync, rename, fsync the folder), then older ones pruned.
fn commit(store: &Store, keep: usize, job: &Job) -> Result<()> {
    if let Some((published, acked)) = &job.delivered {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while acked.load(Ordering::Relaxed) < *published {
            if std::time::Instant::now() > until {
                return Err(Error::Runtime(format!(
                    "checkpoint {}: the broker did not acknowledge the predictions before it within 30 s",
                    store.folder(job.manifest.boundary).display()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    for (path, f) in &job.sync {
        f.sync_data().map_err(|e| Error::io(path, e))?;
    }
    store.commit(&job.manifest, job.footer.as_deref(), keep)
}
