//! The training loop: batches of keys, truncated-BPTT chunks with carried state, shards of a
//! batch on worker threads, optimizer steps, validation, early stopping, and the outputs
//! (weights, loss CSV, loss plot).
//!
//! Reproducibility: a batch is cut into shards of [`SHARD_KEYS`] keys whatever the thread
//! count, each shard's gradient is computed alone, and shard gradients are summed in shard
//! order; so `-w 1` and `-w 4` give bit-identical weights for the same seed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use std::sync::Arc;

use super::config::{OptimizerName, Task, TrainConfig};
use super::data::{fit_normalize, load, DataSpec, Dataset, Sequence};
use super::loss::{Loss, Targets};
use super::net::{build, GradProbe, LayerCarry, Net};
use super::optim::{clip_grad_norm, Optimizer, OptimizerKind};
use super::plot::{line_chart, Series};
use super::seq::Seq;
use crate::error::{Error, Result};
use crate::model::config::{ActivationKind, ModelConfig};
use crate::model::weights::WeightStore;
use crate::vocab::{NanPolicy, Normalize, SplitMix};

/// Keys per shard: the unit of work of a thread, fixed so results do not depend on `-w`.
pub const SHARD_KEYS: usize = 16;

/// Command-line options of `seqflow train`.
#[derive(Clone, Default)]
pub struct TrainOptions {
    /// Threads for the shards of each batch (results are identical for any count).
    pub threads: usize,
    /// Write the gradient report (CSV; an SVG next to it) before and after training.
    pub grad_report: Option<PathBuf>,
    /// Override `[train] epochs`.
    pub epochs: Option<usize>,
    /// Receives progress as training goes (the binary draws and prints from it).
    pub observer: Option<TrainObserver>,
}

/// Receives training's events.
pub type TrainObserver = Arc<dyn Fn(&TrainEvent<'_>) + Send + Sync>;

/// What training tells its observer as it goes.
#[derive(Debug, Clone)]
pub enum TrainEvent<'a> {
    /// Training starts.
    Started {
        /// Epochs to run (at most: early stopping may end sooner).
        epochs: usize,
        /// Training steps per epoch.
        steps_per_epoch: u64,
    },
    /// A batch was trained.
    Batch {
        /// The epoch, from 1.
        epoch: usize,
        /// Epochs to run.
        epochs: usize,
        /// Steps in the batch.
        steps: u64,
        /// Mean loss of the epoch so far.
        loss: f64,
    },
    /// An epoch ended.
    Epoch(&'a EpochStats),
}

/// One epoch's numbers, as written to the loss CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochStats {
    /// The epoch, from 1.
    pub epoch: usize,
    /// Mean training loss over the epoch, taken as the weights were being updated.
    pub train_loss: f64,
    /// Mean validation loss after the epoch; `None` without a validation split.
    pub val_loss: Option<f64>,
    /// Validation accuracy (classification tasks with a validation split only).
    pub val_accuracy: Option<f64>,
    /// Mean gradient L2 norm before clipping, over the epoch's optimizer steps.
    pub grad_norm: f64,
    /// Wall-clock time of the epoch, validation included.
    pub seconds: f64,
}

/// What a training run did.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// Every epoch run, in order.
    pub epochs: Vec<EpochStats>,
    /// The epoch whose weights were saved (lowest validation loss, else training loss).
    pub best_epoch: usize,
    /// Whether `patience` ended training before the last epoch.
    pub stopped_early: bool,
    /// Where the weights were written.
    pub weights: PathBuf,
    /// Whether training started from fresh weights rather than the existing file.
    pub initialized: bool,
    /// The feature normalization used (fitted if `normalize = "auto"`), for the pipeline.
    pub normalize: Option<Normalize>,
    /// Keys (sequences) trained on.
    pub train_keys: usize,
    /// Keys held out for validation.
    pub val_keys: usize,
    /// Data rows read.
    pub rows: u64,
    /// Rows dropped as duplicates of a `(key, time)`.
    pub duplicates: u64,
    /// Rows dropped by `nan = "skip"`.
    pub skipped_nan: u64,
    /// Sequence steps trained per epoch (not optimizer updates).
    pub steps_per_epoch: u64,
    /// Wall-clock time of the whole run, loading and writing included.
    pub seconds: f64,
    /// Number of trainable parameters (scalars).
    pub params: usize,
    /// Gradient norms before and after training, with `--grad-report`.
    pub grad_report: Option<GradReport>,
}

/// Per recurrent cell, gradient norm by distance from the loss, before and after training.
#[derive(Debug, Clone, Default)]
pub struct GradReport {
    /// `(when, cell label, norms by distance 0..)`.
    pub rows: Vec<(String, String, Vec<f64>)>,
}

/// A sequence ready for training: normalized features and per-step targets.
struct Example {
    len: usize,
    x: Vec<f64>,
    /// `len x target_w` (Steps tasks) or the class (Last tasks, length 1).
    y: Vec<f64>,
}

/// The loss as the trainer applies it: which layers run and how outputs are scored.
struct Objective {
    loss: Loss,
    upto: usize,
    per_step: bool,
    target_w: usize,
}

fn objective(net: &Net, cfg: &TrainConfig) -> Result<Objective> {
    let n = net.layers.len();
    let out_w = net.output_size();
    let err = |msg: String| Error::PipelineConfig {
        path: cfg.path.clone(),
        msg,
    };
    match &cfg.task {
        Task::Forecast { targets, .. } | Task::Regress { targets } => {
            if out_w != targets.len() {
                return Err(err(format!(
                    "the model outputs {out_w} value(s) per step but [task] targets names {}",
                    targets.len()
                )));
            }
            Ok(Objective {
                loss: Loss::Mse,
                upto: n,
                per_step: true,
                target_w: out_w,
            })
        }
        Task::Classify { .. } | Task::Tag { .. } => {
            let per_step = matches!(cfg.task, Task::Tag { .. });
            // A trailing sigmoid/softmax is folded into the loss, which then sees logits
            // (BCEWithLogits / CrossEntropy, as one trains in PyTorch).
            let last = net.layers.last();
            let (upto, loss) = match last {
                Some(super::net::NetLayer::Act(ActivationKind::Sigmoid)) if out_w == 1 => (
                    n - 1,
                    Loss::BinaryLogits {
                        pos_weight: cfg.pos_weight,
                    },
                ),
                Some(super::net::NetLayer::Act(ActivationKind::Softmax)) if out_w >= 2 => {
                    (n - 1, Loss::CrossEntropy)
                }
                Some(super::net::NetLayer::Act(ActivationKind::Sigmoid | ActivationKind::Softmax)) => {
                    return Err(err(format!(
                        "the model ends in an activation over {out_w} output(s): use sigmoid with 1 output \
                         (binary labels) or softmax with one output per class"
                    )))
                }
                _ if out_w == 1 => (
                    n,
                    Loss::BinaryLogits {
                        pos_weight: cfg.pos_weight,
                    },
                ),
                _ => (n, Loss::CrossEntropy),
            };
            Ok(Objective {
                loss,
                upto,
                per_step,
                target_w: 1,
            })
        }
    }
}

fn classes(obj: &Objective, net: &Net) -> usize {
    match obj.loss {
        Loss::BinaryLogits { .. } => 2,
        _ => net.output_size(),
    }
}

/// Turns a sequence into an example (features widened to f64 for training); checks labels.
fn example(seq: Sequence, cfg: &TrainConfig, obj: &Objective, n_classes: usize) -> Result<Example> {
    let len = seq.len();
    let ew = cfg.extra_columns().len();
    let check_label = |v: f64, t: usize| -> Result<f64> {
        if !v.is_finite() {
            return Ok(f64::NAN);
        }
        if v.fract() != 0.0 || v < 0.0 || v as usize >= n_classes {
            return Err(Error::Data {
                path: cfg.data.path.clone(),
                msg: format!(
                    "key `{}` time {}: label {v} is not a class in 0..{} (the model's outputs decide \
                     the classes: 1 output = binary 0/1)",
                    seq.key,
                    seq.times[t],
                    n_classes - 1
                ),
            });
        }
        Ok(v)
    };
    let y = match &cfg.task {
        Task::Forecast { horizon, .. } => {
            let mut y = vec![f64::NAN; len * ew];
            for t in 0..len.saturating_sub(*horizon) {
                y[t * ew..(t + 1) * ew]
                    .copy_from_slice(&seq.extra[(t + horizon) * ew..(t + horizon + 1) * ew]);
            }
            y
        }
        Task::Regress { .. } => seq.extra.clone(),
        Task::Tag { .. } => (0..len)
            .map(|t| check_label(seq.extra[t], t))
            .collect::<Result<_>>()?,
        Task::Classify { .. } => vec![check_label(seq.extra[len - 1], len - 1)?],
    };
    debug_assert!(obj.per_step || y.len() == 1);
    let x = seq.x.iter().map(|&v| v as f64).collect();
    Ok(Example { len, x, y })
}

/// Loss sum, count, accuracy numbers and (when training) the gradient of one shard chunk.
struct ShardResult {
    sum: f64,
    count: f64,
    correct: usize,
    scored: usize,
    grads: Option<Vec<f64>>,
}

/// Builds the input and targets of `examples` for steps `[start, start + len)`.
fn chunk(examples: &[&Example], start: usize, len: usize, width: usize, obj: &Objective) -> (Seq, Targets) {
    let lens: Vec<usize> = examples
        .iter()
        .map(|e| e.len.saturating_sub(start).min(len))
        .collect();
    let mut x = Seq::zeros(&lens, width);
    let b = examples.len();
    for (i, e) in examples.iter().enumerate() {
        for t in 0..lens[i] {
            x.row_mut(t, i)
                .copy_from_slice(&e.x[(start + t) * width..(start + t + 1) * width]);
        }
    }
    let targets = if obj.per_step {
        let w = obj.target_w;
        let mut data = vec![f64::NAN; x.t * b * w];
        for (i, e) in examples.iter().enumerate() {
            for t in 0..lens[i] {
                let r = t * b + i;
                data[r * w..(r + 1) * w].copy_from_slice(&e.y[(start + t) * w..(start + t + 1) * w]);
            }
        }
        Targets::Steps { w, data }
    } else {
        Targets::Last {
            labels: examples.iter().map(|e| e.y[0]).collect(),
            ends: examples
                .iter()
                .zip(&lens)
                .map(|(e, &l)| l > 0 && start + l == e.len)
                .collect(),
        }
    };
    (x, targets)
}

/// State of one training run that the loop and helpers share.
struct Runner<'a> {
    net: &'a Net,
    obj: &'a Objective,
    /// Threads for the shards (`None`: this thread).
    pool: Option<rayon::ThreadPool>,
    tbptt: Option<usize>,
}

impl Runner<'_> {
    /// Runs a batch of examples chunk by chunk; after each chunk, `step` receives the summed
    /// gradient and loss count (training) — or nothing is differentiated (evaluation).
    fn run_batch(
        &self,
        values: &mut Vec<f64>,
        batch: &[&Example],
        train: bool,
        mut step: impl FnMut(&mut Vec<f64>, &mut [f64], f64),
    ) -> (f64, f64, usize, usize) {
        let shards: Vec<&[&Example]> = batch.chunks(SHARD_KEYS).collect();
        let mut carries: Vec<Vec<LayerCarry>> = shards.iter().map(|s| self.net.zero_carry(s.len())).collect();
        let max_len = batch.iter().map(|e| e.len).max().unwrap_or(0);
        let chunk_len = self.tbptt.unwrap_or(max_len).max(1);
        let (mut sum, mut count, mut correct, mut scored) = (0.0, 0.0, 0, 0);
        let mut start = 0;
        while start < max_len {
            let use_carry = self.tbptt.is_some();
            let results =
                self.shards_parallel(values, &shards, &mut carries, start, chunk_len, train, use_carry);
            let mut total: Option<Vec<f64>> = None;
            let mut c_chunk = 0.0;
            for r in results {
                sum += r.sum;
                count += r.count;
                c_chunk += r.count;
                correct += r.correct;
                scored += r.scored;
                if let Some(g) = r.grads {
                    match &mut total {
                        None => total = Some(g),
                        Some(t) => t.iter_mut().zip(&g).for_each(|(a, b)| *a += b),
                    }
                }
            }
            if let Some(mut g) = total {
                if c_chunk > 0.0 {
                    step(values, &mut g, c_chunk);
                }
            }
            start += chunk_len;
        }
        (sum, count, correct, scored)
    }

    #[allow(clippy::too_many_arguments)]
    fn shards_parallel(
        &self,
        values: &[f64],
        shards: &[&[&Example]],
        carries: &mut [Vec<LayerCarry>],
        start: usize,
        len: usize,
        train: bool,
        use_carry: bool,
    ) -> Vec<ShardResult> {
        let work = |shard: &[&Example], carry: &mut Vec<LayerCarry>| -> ShardResult {
            let (x, targets) = chunk(shard, start, len, self.net.input_size, self.obj);
            let tape = self
                .net
                .forward(values, x, self.obj.upto, use_carry.then_some(&mut carry[..]));
            let y = tape.xs.last().expect("output");
            let lv = self.obj.loss.eval(y, &targets);
            let grads = train.then(|| {
                let mut g = vec![0.0; self.net.layout.total];
                self.net.backward(values, &tape, lv.grad, &mut g, None);
                g
            });
            ShardResult {
                sum: lv.sum,
                count: lv.count,
                correct: lv.correct,
                scored: lv.scored,
                grads,
            }
        };
        // Results come back in shard order whatever thread ran them: the sum is reproducible.
        match &self.pool {
            Some(pool) => pool.install(|| {
                use rayon::prelude::*;
                let jobs = shards.par_iter().zip(carries.par_iter_mut());
                jobs.map(|(s, c)| work(s, c)).collect()
            }),
            None => shards
                .iter()
                .zip(carries.iter_mut())
                .map(|(s, c)| work(s, c))
                .collect(),
        }
    }
}

/// Loads the model's weights (or initializes them), returning the trainable net, its values,
/// the weights path to write and whether the weights were freshly initialized.
fn load_model(cfg: &TrainConfig, features: usize) -> Result<(Net, Vec<f64>, PathBuf, bool)> {
    let mc = ModelConfig::load(&cfg.model)?;
    if let Some(n) = mc.input_size {
        if n != features {
            return Err(Error::PipelineConfig {
                path: cfg.path.clone(),
                msg: format!("[data] features has {features} column(s) but the model's input_size is {n}"),
            });
        }
    }
    let weights = cfg
        .weights
        .clone()
        .or_else(|| mc.weights.clone())
        .ok_or_else(|| Error::ModelConfig {
            path: cfg.model.clone(),
            msg: "the model file names no `weights = \"FILE.safetensors\"` to train into (or set [output] weights)".into(),
        })?;
    let fresh = cfg.init || !weights.exists();
    // Fresh weights over an existing file the user did not name as the output: refused, so
    // that a first try of a training file does not replace a model it came with.
    if cfg.init && cfg.weights.is_none() && weights.exists() {
        return Err(Error::PipelineConfig {
            path: cfg.path.clone(),
            msg: format!(
                "init = true would replace the existing weights {} (the model file's `weights`) with a new \
                 model; name the file to write in [output] weights (that file itself, to replace it)",
                weights.display()
            ),
        });
    }
    let store = if fresh {
        let tensors = crate::model::tensors::init(&mc, features, cfg.seed)?;
        WeightStore::from_tensors(&weights, tensors)
    } else {
        WeightStore::load(&weights)?
    };
    let (_, net, values) = build(mc, store)?;
    Ok((net, values, weights, fresh))
}

/// Refuses outputs (weights, loss CSV, plot, gradient report) that would overwrite the data,
/// the model file, the training file or each other. The weights may be the file training
/// started from: continuing to train it in place is what the training file asks for.
fn check_paths(cfg: &TrainConfig, opts: &TrainOptions, weights: &Path) -> Result<()> {
    let mut inputs: Vec<(String, PathBuf)> = cfg
        .data
        .expand()?
        .into_iter()
        .map(|p| ("data".into(), p))
        .collect();
    inputs.push(("model file".into(), cfg.model.clone()));
    inputs.push(("training file".into(), cfg.path.clone()));
    let mut outputs = vec![("weights".to_string(), weights.to_path_buf())];
    outputs.extend(cfg.loss_csv.clone().map(|p| ("loss CSV".into(), p)));
    outputs.extend(cfg.plot.clone().map(|p| ("loss plot".into(), p)));
    if let Some(g) = &opts.grad_report {
        outputs.push(("gradient report".into(), g.clone()));
        outputs.push(("gradient report plot".into(), g.with_extension("svg")));
    }
    crate::outfiles::check_distinct(&inputs, &outputs)
}

/// Shuffles `v` in place (Fisher-Yates) with a seeded generator.
fn shuffle<T>(v: &mut [T], rng: &mut SplitMix) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// Runs `seqflow train`.
pub fn train(cfg: &TrainConfig, opts: &TrainOptions) -> Result<TrainReport> {
    let t0 = Instant::now();
    let width = cfg.columns.features.len();
    let (net, mut values, weights_path, initialized) = load_model(cfg, width)?;
    check_paths(cfg, opts, &weights_path)?;
    if cfg.tbptt.is_some() {
        if let Some(why) = &net.non_causal {
            return Err(Error::PipelineConfig {
                path: cfg.path.clone(),
                msg: format!(
                    "[train] tbptt carries state forward between chunks, which this model cannot do ({why}); \
                     remove tbptt to train on whole sequences"
                ),
            });
        }
    }
    let obj = objective(&net, cfg)?;
    let n_classes = classes(&obj, &net);

    let mut spec = DataSpec {
        source: cfg.data.clone(),
        columns: cfg.columns.clone(),
        extra: cfg.extra_columns(),
        extra_role: match cfg.task {
            Task::Classify { .. } | Task::Tag { .. } => "label",
            _ => "target",
        },
    };
    let split = |n: usize| -> (Vec<usize>, Vec<usize>) {
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(&mut order, &mut SplitMix::new(cfg.seed ^ 0x5EED_5EED));
        let n_val = if cfg.validation > 0.0 && n >= 2 {
            ((n as f64 * cfg.validation).round() as usize).clamp(1, n - 1)
        } else {
            0
        };
        let (v, t) = order.split_at(n_val);
        (v.to_vec(), t.to_vec())
    };
    let nonempty = |mut d: Dataset| -> Result<Dataset> {
        d.sequences.retain(|s| !s.is_empty());
        if d.sequences.is_empty() {
            return Err(Error::Data {
                path: cfg.data.path.clone(),
                msg: "no rows to train on".into(),
            });
        }
        Ok(d)
    };
    if cfg.auto_normalize {
        // Fit on the training keys' raw values (NaN kept out), then read again normalized.
        let mut raw = spec.clone();
        raw.columns.normalize = None;
        if raw.columns.nan == NanPolicy::Zero {
            raw.columns.nan = NanPolicy::Ffill;
        }
        let raw = nonempty(load(&raw, false)?)?;
        let (_, train_idx) = split(raw.sequences.len());
        let seqs: Vec<&Sequence> = train_idx.iter().map(|&i| &raw.sequences[i]).collect();
        spec.columns.normalize = Some(fit_normalize(&seqs, width));
    }
    let normalize = spec.columns.normalize.clone();
    let mut data = nonempty(load(&spec, true)?)?;
    let (val_idx, train_idx) = split(data.sequences.len());
    let examples: Vec<Example> = std::mem::take(&mut data.sequences)
        .into_iter()
        .map(|s| example(s, cfg, &obj, n_classes))
        .collect::<Result<_>>()?;
    let train_ex: Vec<&Example> = train_idx.iter().map(|&i| &examples[i]).collect();
    let val_ex: Vec<&Example> = val_idx.iter().map(|&i| &examples[i]).collect();
    let steps_per_epoch: u64 = train_ex.iter().map(|e| e.len as u64).sum();

    let runner = Runner {
        net: &net,
        obj: &obj,
        pool: match opts.threads {
            0 | 1 => None,
            n => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .map_err(|e| Error::Runtime(format!("training threads: {e}")))?,
            ),
        },
        tbptt: cfg.tbptt,
    };
    let mut grad_report = opts.grad_report.as_ref().map(|_| GradReport::default());
    if let Some(rep) = &mut grad_report {
        let probe_set = if val_ex.is_empty() { &train_ex } else { &val_ex };
        grad_profile(&net, &obj, &values, probe_set, cfg.batch_keys, "initial", rep);
    }

    let kind = match cfg.optimizer {
        OptimizerName::Adam => OptimizerKind::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        OptimizerName::Sgd => OptimizerKind::Sgd {
            momentum: cfg.momentum,
        },
    };
    let mut opt = Optimizer::new(kind, cfg.lr, cfg.weight_decay, values.len());
    let epochs = opts.epochs.unwrap_or(cfg.epochs);
    let tell = |e: &TrainEvent<'_>| {
        if let Some(o) = &opts.observer {
            o(e)
        }
    };
    tell(&TrainEvent::Started {
        epochs,
        steps_per_epoch,
    });
    let mut stats = Vec::new();
    let mut best = (f64::INFINITY, 0usize, values.clone());
    let mut stopped_early = false;
    let mut since_best = 0usize;
    for epoch in 1..=epochs {
        let te = Instant::now();
        let mut keys = train_ex.clone();
        let mut erng = SplitMix::new(cfg.seed.wrapping_add(epoch as u64).wrapping_mul(0x9E37_79B9));
        shuffle(&mut keys, &mut erng);
        let (mut sum, mut count, mut norm_sum, mut updates) = (0.0, 0.0, 0.0, 0usize);
        for batch in keys.chunks(cfg.batch_keys) {
            let (s, c, _, _) = runner.run_batch(&mut values, batch, true, |vals, g, cnt| {
                g.iter_mut().for_each(|v| *v /= cnt);
                norm_sum += clip_grad_norm(g, cfg.clip_norm);
                updates += 1;
                opt.step(vals, g);
            });
            sum += s;
            count += c;
            tell(&TrainEvent::Batch {
                epoch,
                epochs,
                steps: batch.iter().map(|e| e.len as u64).sum(),
                loss: sum / count.max(1.0),
            });
        }
        let train_loss = sum / count.max(1.0);
        let (val_loss, val_accuracy) = if val_ex.is_empty() {
            (None, None)
        } else {
            let (mut s, mut c, mut ok, mut n) = (0.0, 0.0, 0, 0);
            for batch in val_ex.chunks(cfg.batch_keys) {
                let r = runner.run_batch(&mut values, batch, false, |_, _, _| {});
                s += r.0;
                c += r.1;
                ok += r.2;
                n += r.3;
            }
            (Some(s / c.max(1.0)), (n > 0).then(|| ok as f64 / n as f64))
        };
        let st = EpochStats {
            epoch,
            train_loss,
            val_loss,
            val_accuracy,
            grad_norm: norm_sum / updates.max(1) as f64,
            seconds: te.elapsed().as_secs_f64(),
        };
        let score = val_loss.unwrap_or(train_loss);
        if !score.is_finite() {
            return Err(Error::Runtime(format!(
                "training diverged at epoch {epoch} (loss {score}); lower [train] lr or set clip_norm"
            )));
        }
        if score < best.0 {
            best = (score, epoch, values.clone());
            since_best = 0;
        } else {
            since_best += 1;
        }
        tell(&TrainEvent::Epoch(&st));
        stats.push(st);
        if cfg.patience.is_some_and(|p| since_best >= p) {
            stopped_early = true;
            break;
        }
    }
    // Keep the weights of the best epoch (by validation loss, or training loss without a
    // validation split).
    let best_epoch = best.1;
    if best_epoch > 0 {
        values = best.2;
    }
    net.layout.save(&values, &weights_path)?;
    if let Some(rep) = &mut grad_report {
        let probe_set = if val_ex.is_empty() { &train_ex } else { &val_ex };
        grad_profile(&net, &obj, &values, probe_set, cfg.batch_keys, "trained", rep);
    }
    if let Some(p) = &cfg.loss_csv {
        write_loss_csv(p, &stats)?;
    }
    if let Some(p) = &cfg.plot {
        write_loss_plot(p, &stats, &cfg.model)?;
    }
    if let (Some(p), Some(rep)) = (&opts.grad_report, &grad_report) {
        write_grad_report(p, rep)?;
    }
    Ok(TrainReport {
        epochs: stats,
        best_epoch,
        stopped_early,
        weights: weights_path,
        initialized,
        normalize,
        train_keys: train_ex.len(),
        val_keys: val_ex.len(),
        rows: data.rows,
        duplicates: data.duplicates,
        skipped_nan: data.skipped_nan,
        steps_per_epoch,
        seconds: t0.elapsed().as_secs_f64(),
        params: net.layout.total,
        grad_report,
    })
}

/// Gradient norms w.r.t. each recurrent cell's hidden state, by distance from the loss, for
/// one batch of whole sequences with the loss on each sequence's last step only.
fn grad_profile(
    net: &Net,
    obj: &Objective,
    values: &[f64],
    examples: &[&Example],
    batch_keys: usize,
    when: &str,
    rep: &mut GradReport,
) {
    let batch = &examples[..examples.len().min(batch_keys)];
    let max_len = batch.iter().map(|e| e.len).max().unwrap_or(0);
    let (x, mut targets) = chunk(batch, 0, max_len, net.input_size, obj);
    if let Targets::Steps { w, data } = &mut targets {
        for (i, e) in batch.iter().enumerate() {
            for t in 0..e.len.saturating_sub(1) {
                let r = t * batch.len() + i;
                data[r * *w..(r + 1) * *w].fill(f64::NAN);
            }
        }
    }
    let tape = net.forward(values, x, obj.upto, None);
    let lv = obj.loss.eval(tape.xs.last().expect("output"), &targets);
    let mut grads = vec![0.0; net.layout.total];
    let mut probe = GradProbe::default();
    let mut dy = lv.grad;
    dy.data.iter_mut().for_each(|v| *v /= lv.count.max(1.0));
    net.backward(values, &tape, dy, &mut grads, Some(&mut probe));
    // Norms are indexed by the layer's own steps and summed over the batch; distance counts
    // back from the batch's last step (equal-length sequences give exact distances).
    for (layer, hg) in probe.layers.iter().rev() {
        for (ci, norms) in hg.norms.iter().enumerate() {
            let label = format!("{} cell {ci}", net.labels[*layer]);
            let t_n = norms.len();
            let by_dist: Vec<f64> = (0..t_n).rev().map(|t| norms[t].sqrt()).collect();
            rep.rows.push((when.to_string(), label, by_dist));
        }
    }
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    crate::outfiles::write_file(path, |f| f.write_all(text.as_bytes()))
}

fn write_loss_csv(path: &Path, stats: &[EpochStats]) -> Result<()> {
    let mut s = String::from("epoch,train_loss,val_loss,val_accuracy,grad_norm,seconds\n");
    for e in stats {
        s.push_str(&format!(
            "{},{},{},{},{},{:.3}\n",
            e.epoch,
            e.train_loss,
            e.val_loss.map(|v| v.to_string()).unwrap_or_default(),
            e.val_accuracy.map(|v| v.to_string()).unwrap_or_default(),
            e.grad_norm,
            e.seconds
        ));
    }
    write_file(path, &s)
}

fn write_loss_plot(path: &Path, stats: &[EpochStats], model: &Path) -> Result<()> {
    let mut series = vec![Series {
        name: "train".into(),
        points: stats.iter().map(|e| (e.epoch as f64, e.train_loss)).collect(),
    }];
    if stats.iter().any(|e| e.val_loss.is_some()) {
        series.push(Series {
            name: "validation".into(),
            points: stats
                .iter()
                .filter_map(|e| e.val_loss.map(|v| (e.epoch as f64, v)))
                .collect(),
        });
    }
    let title = format!(
        "Loss: {}",
        model
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    write_file(path, &line_chart(&title, "epoch", "loss", &series, false))
}

/// The report as CSV (`when,cell,distance,grad_norm`) and an SVG with the same stem.
fn write_grad_report(path: &Path, rep: &GradReport) -> Result<()> {
    let mut s = String::from("when,cell,distance,grad_norm\n");
    let mut series = Vec::new();
    for (when, label, norms) in &rep.rows {
        for (d, n) in norms.iter().enumerate() {
            // CSV quoting: the label itself holds quotes (`#2 (lstm "lstm") cell 0`).
            s.push_str(&format!("{when},\"{}\",{d},{n}\n", label.replace('"', "\"\"")));
        }
        series.push(Series {
            name: format!("{when} {label}"),
            points: norms.iter().enumerate().map(|(d, &n)| (d as f64, n)).collect(),
        });
    }
    write_file(path, &s)?;
    let svg = path.with_extension("svg");
    write_file(
        &svg,
        &line_chart(
            "|dL/dh_t| by distance from the loss",
            "steps before the loss",
            "gradient norm",
            &series,
            true,
        ),
    )
}

impl GradReport {
    /// The table printed by `--grad-report`: norms at a few distances per cell.
    pub fn table(&self) -> String {
        let dists = [0usize, 1, 2, 5, 10, 20, 50, 100, 200, 500];
        let max = self.rows.iter().map(|r| r.2.len()).max().unwrap_or(0);
        let mut cols: Vec<usize> = dists.iter().copied().filter(|&d| d < max).collect();
        if max > 0 && cols.last() != Some(&(max - 1)) {
            cols.push(max - 1); // the farthest step: the start of the sequence
        }
        let mut s = format!("{:<8} {:<32}", "when", "cell");
        for d in &cols {
            s.push_str(&format!(" {:>10}", format!("d={d}")));
        }
        s.push('\n');
        for (when, label, norms) in &self.rows {
            s.push_str(&format!("{when:<8} {label:<32}"));
            for &d in &cols {
                match norms.get(d) {
                    Some(v) => s.push_str(&format!(" {v:>10.3e}")),
                    None => s.push_str(&format!(" {:>10}", "-")),
                }
            }
            s.push('\n');
        }
        s
    }
}

impl std::fmt::Display for EpochStats {
    /// The line printed per epoch.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "epoch {:>3}: train {:.6}{}{}  |grad| {:.3}  {:.1}s",
            self.epoch,
            self.train_loss,
            self.val_loss.map(|v| format!("  val {v:.6}")).unwrap_or_default(),
            self.val_accuracy
                .map(|a| format!("  val acc {:.4}", a))
                .unwrap_or_default(),
            self.grad_norm,
            self.seconds
        )
    }
}

impl std::fmt::Display for TrainReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let best = self.epochs.iter().find(|e| e.epoch == self.best_epoch);
        let last = self.epochs.last();
        let secs: f64 = self.epochs.iter().map(|e| e.seconds).sum();
        let steps = self.steps_per_epoch as f64 * self.epochs.len() as f64;
        writeln!(
            f,
            "{} rows, {} keys ({} train / {} validation), {} parameters ({}), {} epoch(s){}, {:.1} s, {:.0} train steps/s",
            self.rows,
            self.train_keys + self.val_keys,
            self.train_keys,
            self.val_keys,
            self.params,
            if self.initialized { "initialized" } else { "fine-tuned" },
            self.epochs.len(),
            if self.stopped_early { " (early stop)" } else { "" },
            self.seconds,
            steps / secs.max(1e-9)
        )?;
        if self.duplicates > 0 || self.skipped_nan > 0 {
            writeln!(
                f,
                "  dropped {} duplicate (key, time) row(s), skipped {} row(s) with NaN features",
                self.duplicates, self.skipped_nan
            )?;
        }
        if let (Some(b), Some(l)) = (best, last) {
            writeln!(
                f,
                "  best epoch {}: train loss {:.6}{}{}; last epoch train loss {:.6}",
                b.epoch,
                b.train_loss,
                b.val_loss
                    .map(|v| format!(", validation loss {v:.6}"))
                    .unwrap_or_default(),
                b.val_accuracy
                    .map(|a| format!(", validation accuracy {a:.4}"))
                    .unwrap_or_default(),
                l.train_loss
            )?;
        }
        if let Some(n) = &self.normalize {
            // Every digit: pasted into a pipeline, the statistics give the very values trained on.
            let fmt = |v: &[f64]| v.iter().map(|x| format!("{x}")).collect::<Vec<_>>().join(", ");
            writeln!(
                f,
                "  pipeline [source]: normalize = {{ mean = [{}], std = [{}] }}",
                fmt(&n.mean),
                fmt(&n.std)
            )?;
        }
        write!(f, "  weights written to {}", self.weights.display())
    }
}
