//! Prediction in process, over Arrow record batches: a [`Session`] holds every key's state
//! between calls, so that batches pushed one after another give exactly what one run over
//! all of them gives. The Python binding (`python/`) is built on it.
//!
//! Why not a pipeline with an in-memory source: a pipeline owns its input and its output
//! and runs to the end of them; a session is driven by its caller, batch by batch, and keeps
//! its state in between (to be saved, listed, restored). It uses the same parts a pipeline's
//! workers use, so its numbers are the CLI's bit for bit: `input::arrow::route_batch` (the
//! same [`Prep`]: normalization, NaN policy), one [`KeyedProcessor`] per worker (keys routed
//! by their stable hash, as `-w` routes them), and the sink's Arrow encoding (key and time
//! cast back to the input's types).
//!
//! Each push is one epoch: its rows are ordered by (key, time, row) as a pipeline orders an
//! epoch's, a step not after its key's last one is rejected as late or duplicate. Output
//! rows come worker by worker, each key's in time order, keys interleaved (sort by key and
//! time for a canonical order).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;

use crate::checkpoint::{self, Identity, Manifest, PartWriter, Store};
use crate::error::{Error, Result};
use crate::input::arrow::{route_batch, Origin};
use crate::input::columns::Columns;
use crate::input::Prep;
use crate::keyed::KeyedProcessor;
use crate::model::Model;
use crate::record::{Key, Reject, SinkMsg, Stats, StepBatch};
use crate::sink::{OutputSchema, Sink};
use crate::vocab::{Emit, FileFormat};

/// The most workers a session runs: as `-w`.
pub use crate::pipeline::MAX_WORKERS;

/// Identity fields a save records once a batch has fixed them.
const KEY_TYPE: &str = "key type";
const TIME_TYPE: &str = "time type";

/// How a session reads its batches and what it emits.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Key, time and feature columns, normalization and NaN policy (as `[source]`).
    pub columns: Columns,
    /// When predictions are emitted (as `[output] emit`).
    pub emit: Emit,
    /// Output column names, one per model output; empty: `y0`, `y1`, ...
    pub names: Vec<String>,
    /// Keys are split over this many workers, each on its own thread during a push.
    pub workers: usize,
}

/// What one push produced.
#[derive(Debug)]
pub struct Pushed {
    /// The predictions: key, time (the input's types) and one float column per output.
    pub predictions: RecordBatch,
    /// The rows that were not run: malformed, non-finite under `nan = "skip"`, late or
    /// duplicate. Their `row` counts rows over every push of the session, from 0.
    pub rejects: Vec<Reject>,
}

/// Every key's state, carried from push to push. See the module documentation.
pub struct Session {
    model: Arc<Model>,
    cfg: SessionConfig,
    prep: Prep,
    /// One per worker, made at the first push (when the key column's type is known) or by
    /// a restore.
    workers: Vec<KeyedProcessor>,
    /// The output's encoder, made with the first batch's key and time types; every later
    /// batch must have the same.
    encoder: Option<Sink>,
    /// Counters over the whole session.
    stats: Stats,
    /// Rows pushed so far (reject rows are numbered across pushes).
    rows: u64,
    /// Pushes so far: a saved session's boundary.
    pushes: u64,
    /// `finish` was called: the sequences are over.
    finished: bool,
    /// How messages name the pushed data.
    origin: PathBuf,
    /// A loaded session: the key and time types it was saved with, which its first push
    /// must have (times of another unit would compare wrongly with the restored ones).
    saved_types: Option<(String, String)>,
}

impl Session {
    /// A session of `model` reading `cfg`'s columns; checked against the model as a pipeline
    /// is (feature count, output names, every_step needs a causal model).
    pub fn new(model: Arc<Model>, mut cfg: SessionConfig) -> Result<Session> {
        let err = |msg: String| Error::SessionConfig {
            path: model.path().to_path_buf(),
            msg,
        };
        cfg.columns.check().map_err(err)?;
        if cfg.workers == 0 || cfg.workers > MAX_WORKERS {
            return Err(err(format!(
                "workers = {} must be 1 to {MAX_WORKERS}",
                cfg.workers
            )));
        }
        let k = cfg.columns.features.len();
        if k != model.input_size() {
            return Err(err(format!(
                "{k} features given but the model takes {} inputs per step",
                model.input_size()
            )));
        }
        let n = model.output_size();
        if cfg.names.is_empty() {
            cfg.names = (0..n).map(|i| format!("y{i}")).collect();
        } else if cfg.names.len() != n {
            return Err(err(format!(
                "{} output names given but the model outputs {n} values per step",
                cfg.names.len()
            )));
        }
        for name in &cfg.names {
            if name == &cfg.columns.key || name == &cfg.columns.time {
                return Err(err(format!(
                    "output name `{name}` collides with the key or time column"
                )));
            }
        }
        if cfg.emit == Emit::EveryStep {
            model.check_streamable().map_err(|e| {
                err(format!(
                    "emit = \"every_step\" needs a causal model: {e}; use emit = \"sequence_end\" or \"window\""
                ))
            })?;
        }
        Ok(Session {
            prep: Prep::new(&cfg.columns),
            model,
            cfg,
            workers: Vec::new(),
            encoder: None,
            stats: Stats::default(),
            rows: 0,
            pushes: 0,
            finished: false,
            origin: PathBuf::from("the pushed batch"),
            saved_types: None,
        })
    }

    /// How messages about the pushed data name it (default "the pushed batch").
    pub fn set_origin(&mut self, name: &str) {
        self.origin = PathBuf::from(name);
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The settings, with the output names filled in.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// Runs one batch: every accepted row advances its key by one step. A batch with a
    /// missing column, a column of the wrong type, or a key or time type other than the
    /// first batch's is refused whole (nothing of it is run); bad rows are rejects.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<Pushed> {
        if self.finished {
            return Err(Error::Runtime(
                "this session was finished (its sequences ended); start a new one".into(),
            ));
        }
        let map = self.cfg.columns.map(&batch.schema(), &self.origin, false)?;
        self.bind_types(&map.key_type, &map.time_type)?;
        let routed = route_batch(
            batch,
            &map,
            &self.cfg.columns,
            &self.prep,
            Origin {
                path: &self.origin,
                format: FileFormat::Parquet,
                source: 0,
                first_row: self.rows,
            },
            self.cfg.workers,
        )?;
        self.rows += routed.rows;
        self.pushes += 1;
        self.stats.rows_read += routed.rows;
        let mut rejects = routed.rejects;
        for r in &rejects {
            self.stats.count_reject(r.reason);
        }
        let batches = routed.batches;
        let outs = self.on_workers(|w, p| match batches.get(w) {
            Some(b) if !b.is_empty() => {
                let mut out = Vec::new();
                p.process_epoch(&[b as &StepBatch], &mut out);
                out
            }
            _ => Vec::new(),
        });
        let predictions = self.collect(outs, &mut rejects)?;
        Ok(Pushed { predictions, rejects })
    }

    /// Ends every key's sequence: with `emit = "sequence_end"`, the predictions held back
    /// until then (other modes emit nothing here). No push is taken afterwards.
    pub fn finish(&mut self) -> Result<Pushed> {
        if self.finished {
            return Err(Error::Runtime("this session was already finished".into()));
        }
        if self.encoder.is_none() {
            // Nothing pushed since a load (or at all): the saved types, or the restored
            // key kind with integer times.
            let int = self
                .workers
                .first()
                .and_then(KeyedProcessor::int_keys)
                .unwrap_or(false);
            let parsed = self
                .saved_types
                .as_ref()
                .and_then(|(k, t)| Some((k.parse::<DataType>().ok()?, t.parse::<DataType>().ok()?)));
            let (key, time) = parsed.unwrap_or_else(|| {
                let key = if int { DataType::Int64 } else { DataType::Utf8 };
                (key, DataType::Int64)
            });
            self.bind_types(&key, &time)?;
        }
        let outs = self.on_workers(|_, p| {
            let mut out = Vec::new();
            p.finish(&mut out);
            out
        });
        self.finished = true;
        let mut rejects = Vec::new();
        let predictions = self.collect(outs, &mut rejects)?;
        Ok(Pushed { predictions, rejects })
    }

    /// Counters over the whole session (rows, steps, predictions, keys, rejects by reason;
    /// `state_bytes` as of now).
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.state_bytes = self.workers.iter().map(|p| p.state_bytes() as u64).sum();
        s
    }

    /// The keys held, worker by worker, each worker's in the order they were first seen.
    pub fn keys(&self) -> Vec<Key> {
        self.workers.iter().flat_map(KeyedProcessor::held_keys).collect()
    }

    /// Saves every key's state into `dir` as a checkpoint (the format `[checkpoint]` writes:
    /// a `ckpt-<pushes>/` folder with one part per worker and a manifest naming the model's
    /// checksum and the columns). The folder keeps the two newest saves.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let store = Store::new(dir);
        let boundary = self.pushes;
        let mut parts = Vec::new();
        for (w, p) in self.workers.iter().enumerate() {
            let writer = PartWriter {
                store: store.clone(),
                worker: w,
            };
            let info = writer
                .write(boundary, p.export())
                .map_err(|msg| Error::Checkpoint {
                    path: dir.to_path_buf(),
                    msg,
                })?;
            parts.push(info);
        }
        let m = Manifest {
            format: checkpoint::FORMAT,
            boundary,
            created_unix_ms: checkpoint::unix_ms(),
            workers: self.workers.len() as u32,
            parts,
            output: None,
            rejects: None,
            views: Vec::new(),
            stats: self.stats(),
            kafka: None,
            identity: {
                let mut id = self.identity()?;
                id.fields.extend(self.type_fields());
                id
            },
        };
        if self.workers.is_empty() {
            store.make_folder(boundary)?;
        }
        store.commit(&m, None, 2)
    }

    /// A session restored from the newest save in `dir` (any worker count: keys go to the
    /// workers that own them). Refused when the save was made with another model (file or
    /// weights), other columns, normalization, NaN policy or emit mode.
    pub fn load(dir: &Path, model: Arc<Model>, cfg: SessionConfig) -> Result<Session> {
        let mut s = Session::new(model, cfg)?;
        let store = Store::new(dir);
        let Some((m, _damage)) = store.latest()? else {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                msg: "holds no complete save".into(),
            });
        };
        // The types are checked at the first push (unknown until then).
        let typed = |n: &str| n == KEY_TYPE || n == TIME_TYPE;
        let saved = Identity {
            fields: m
                .identity
                .fields
                .iter()
                .filter(|(n, _)| !typed(n))
                .cloned()
                .collect(),
        };
        let field = |n: &str| {
            m.identity
                .fields
                .iter()
                .find(|(f, _)| f == n)
                .map(|(_, v)| v.clone())
        };
        s.saved_types = field(KEY_TYPE).zip(field(TIME_TYPE));
        if let Some(diff) = saved.difference(&s.identity()?) {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                msg: format!("was saved by another session: {diff}"),
            });
        }
        if let Some(int) = m.int_keys() {
            s.make_workers(int);
            let peers = s.workers.len();
            for (w, p) in s.workers.iter_mut().enumerate() {
                let writer = PartWriter {
                    store: store.clone(),
                    worker: w,
                };
                let mut rows = p.empty_rows(int);
                writer.restore(&m, peers, &mut rows)?;
                p.import(&rows).map_err(|msg| Error::Checkpoint {
                    path: dir.to_path_buf(),
                    msg,
                })?;
            }
        }
        s.stats = m.stats.clone();
        s.pushes = m.boundary;
        s.rows = m.stats.rows_read;
        Ok(s)
    }

    /// What a save belongs to: the model's checksum and how rows become steps.
    fn identity(&self) -> Result<Identity> {
        let c = &self.cfg.columns;
        Ok(Identity {
            fields: vec![
                (
                    "the model (CRC-32 of its file and weights)".into(),
                    checkpoint::model_checksum(&self.model)?,
                ),
                ("key".into(), c.key.clone()),
                ("time".into(), c.time.clone()),
                ("features".into(), format!("{:?}", c.features)),
                (
                    "normalize".into(),
                    checkpoint::normalize_text(c.normalize.as_ref()),
                ),
                (
                    "nan".into(),
                    format!("\"{}\"", format!("{:?}", c.nan).to_lowercase()),
                ),
                ("emit".into(), checkpoint::emit_text(self.cfg.emit)),
            ],
        })
    }

    /// The key and time types, when a batch has fixed them or a loaded save recorded them
    /// (written into a save, so that saving a loaded session before any push keeps them).
    fn type_fields(&self) -> Vec<(String, String)> {
        let types = match (&self.encoder, &self.saved_types) {
            (Some(e), _) => Some((e.schema().key_type.to_string(), e.schema().time_type.to_string())),
            (None, saved) => saved.clone(),
        };
        types.map_or_else(Vec::new, |(k, t)| {
            vec![(KEY_TYPE.into(), k), (TIME_TYPE.into(), t)]
        })
    }

    /// The key and time types of the first batch; later batches must match, and so must a
    /// loaded session's first batch match the types it was saved with.
    fn bind_types(&mut self, key: &DataType, time: &DataType) -> Result<()> {
        if let (None, Some((k, t))) = (&self.encoder, &self.saved_types) {
            let key_text = if is_text(key) {
                DataType::Utf8.to_string()
            } else {
                key.to_string()
            };
            if &key_text != k || &time.to_string() != t {
                return Err(Error::Data {
                    path: self.origin.clone(),
                    msg: format!(
                        "key `{}` is {key} and time `{}` is {time}, but this session was saved with {k} and {t}",
                        self.cfg.columns.key, self.cfg.columns.time
                    ),
                });
            }
        }
        if let Some(e) = &self.encoder {
            let want = &e.schema();
            let same_key = want.key_type == *key || (is_text(&want.key_type) && is_text(key));
            if !same_key || want.time_type != *time {
                return Err(Error::Data {
                    path: self.origin.clone(),
                    msg: format!(
                        "key `{}` is {key} and time `{}` is {time}, but this session's first batch had {} and {}; \
                         every batch of a session has the same key and time types",
                        self.cfg.columns.key, self.cfg.columns.time, want.key_type, want.time_type
                    ),
                });
            }
            return Ok(());
        }
        if self.workers.is_empty() {
            self.make_workers(key.is_integer());
        } else if self.workers[0]
            .int_keys()
            .is_some_and(|int| int != key.is_integer())
        {
            return Err(Error::Data {
                path: self.origin.clone(),
                msg: format!(
                    "key `{}` is {key}, but the restored keys are {}",
                    self.cfg.columns.key,
                    if key.is_integer() { "strings" } else { "integers" }
                ),
            });
        }
        // Text keys of any Arrow kind (string, large_string, string_view, dictionary) come
        // out as plain strings.
        let key_type = if is_text(key) { DataType::Utf8 } else { key.clone() };
        self.encoder = Some(Sink::encoder(OutputSchema {
            key_name: self.cfg.columns.key.clone(),
            key_type,
            time_name: self.cfg.columns.time.clone(),
            time_type: time.clone(),
            names: self.cfg.names.clone(),
        }));
        Ok(())
    }

    fn make_workers(&mut self, int_keys: bool) {
        self.workers = (0..self.cfg.workers)
            .map(|w| {
                let mut p =
                    KeyedProcessor::new(self.model.clone(), self.cfg.emit, self.cfg.columns.nan, int_keys);
                p.worker = w as u32;
                p
            })
            .collect();
    }

    /// Runs `f` on every worker, on threads when there are several.
    fn on_workers(
        &mut self,
        f: impl Fn(usize, &mut KeyedProcessor) -> Vec<SinkMsg> + Sync,
    ) -> Vec<Vec<SinkMsg>> {
        if self.workers.len() <= 1 {
            return self
                .workers
                .iter_mut()
                .enumerate()
                .map(|(w, p)| f(w, p))
                .collect();
        }
        let f = &f;
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .workers
                .iter_mut()
                .enumerate()
                .map(|(w, p)| s.spawn(move || f(w, p)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }

    /// The workers' messages, in worker order, as one batch of predictions.
    fn collect(&mut self, outs: Vec<Vec<SinkMsg>>, rejects: &mut Vec<Reject>) -> Result<RecordBatch> {
        let encoder = match &self.encoder {
            Some(e) => e,
            // Nothing was ever pushed: an empty batch of the usual types.
            None => {
                self.bind_types(&DataType::Utf8, &DataType::Int64)?;
                self.encoder.as_ref().expect("just made")
            }
        };
        let mut batches = Vec::new();
        for msg in outs.into_iter().flatten() {
            match msg {
                SinkMsg::Rows(b) => batches.push(encoder.to_record_batch(&b)?),
                SinkMsg::Rejects(rs) => rejects.extend(rs),
                SinkMsg::Stats(s) => self.stats.add(&Stats {
                    rows_read: 0,
                    state_bytes: 0,
                    ..s
                }),
                _ => {}
            }
        }
        let schema = encoder.arrow_schema();
        arrow::compute::concat_batches(&schema, &batches).map_err(|e| Error::Runtime(e.to_string()))
    }
}

fn is_text(t: &DataType) -> bool {
    crate::input::columns::is_string(t)
}
