//! Command-line parsing and dispatch. `run` takes timely's own flags (`-w`, `-n`, `-p`,
//! `-h`), so help is `--help` only and the timely config is built by the library rather
//! than by timely's parser, which rejects flags it does not know.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use seqflow::model::summary::Summary;
use seqflow::pipeline::{run, Event, Overrides, RunOptions};
use seqflow::train::trainer::TrainEvent;
use seqflow::Model;

/// This process's index in its cluster (`-p`), for the panic hook's message.
pub static PROCESS: AtomicUsize = AtomicUsize::new(0);

#[derive(Parser, Debug)]
#[command(
    name = "seqflow",
    version,
    about = "Run sequence models (CNN, RNN, LSTM, GRU) incrementally over keyed streams",
    disable_help_flag = true,
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help, global = true)]
    help: Option<bool>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a pipeline: read the source, run the model per key, write the predictions.
    #[command(disable_help_flag = true)]
    Run {
        /// The pipeline TOML.
        pipeline: PathBuf,
        /// Worker threads per process (timely's -w).
        #[arg(short = 'w', long = "workers", visible_alias = "threads", default_value_t = 1)]
        workers: usize,
        /// Number of processes (timely's -n).
        #[arg(short = 'n', long = "processes", default_value_t = 1)]
        processes: usize,
        /// This process's index, 0-based (timely's -p).
        #[arg(short = 'p', long = "process", default_value_t = 0)]
        process: usize,
        /// Hostfile: one host:port per line, one line per process (timely's -h).
        #[arg(short = 'h', long = "hostfile")]
        hostfile: Option<PathBuf>,
        /// Read this file, directory or glob instead of the pipeline's [source] path.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Write here instead of the pipeline's [output] path ("-" for stdout).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Seconds the processes of a cluster (-n) wait for each other to connect.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        connect_timeout: u64,
        /// Continue from the latest complete checkpoint in [checkpoint] dir.
        #[arg(long, conflicts_with = "fresh")]
        resume: bool,
        /// Discard the checkpoints in [checkpoint] dir and start over.
        #[arg(long)]
        fresh: bool,
        /// Serve Prometheus metrics at http://ADDR/metrics (instead of [metrics] listen);
        /// port 0 picks a free one.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        /// Serve the live dashboard at http://ADDR/ (instead of [dashboard] listen).
        #[arg(long, value_name = "ADDR")]
        dashboard: Option<String>,
        /// File runs: write a report page (throughput, output distributions, the
        /// highest-scoring keys) here at the end.
        #[arg(long, value_name = "PATH")]
        report: Option<PathBuf>,
    },
    /// Send a dataset to a live pipeline as JSON lines, in time order, at a given rate.
    Replay {
        /// Data file (Parquet, or CSV / JSON lines by extension), directory or glob.
        data: PathBuf,
        /// host:port of the pipeline's tcp source, mqtt://HOST:PORT/TOPIC to publish one
        /// message per row ({key} in the topic is the row's key), or kafka://HOST:PORT/TOPIC
        /// to produce one record per row, keyed by the row's key.
        #[arg(long)]
        to: String,
        /// kafka://: partitions of the topic when it does not exist yet (it is created).
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// kafka://: records per produce request (1: one request per row).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Rows per second over all connections (0 = as fast as the pipeline takes them).
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Number of TCP connections; each key always uses the same one.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Key column (decides the connection).
        #[arg(long, default_value = "sensor_id")]
        key: String,
        /// Time column (the replay order).
        #[arg(long, default_value = "ts")]
        time: String,
        /// Send at most this many rows.
        #[arg(long)]
        limit: Option<usize>,
        /// What goes over TCP: `jsonl` lines, or `arrow` (one Arrow IPC stream per
        /// connection, for a source with lines = "arrow").
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "arrow"])]
        format: String,
    },
    /// Train a model (BPTT) on Parquet, CSV or JSON-lines data; write its weights with PyTorch's names.
    #[command(disable_help_flag = true)]
    Train {
        /// The training TOML.
        config: PathBuf,
        /// Threads for the shards of each batch (results are identical for any count).
        #[arg(short = 'w', long = "workers", visible_alias = "threads", default_value_t = 1)]
        workers: usize,
        /// Override [train] epochs.
        #[arg(long)]
        epochs: Option<usize>,
        /// Write |dL/dh_t| by distance from the loss per recurrent layer (CSV, plus an SVG
        /// next to it) for one batch, before and after training, and print it as a table.
        #[arg(long, value_name = "CSV", num_args = 0..=1, default_missing_value = "grad_report.csv")]
        grad_report: Option<PathBuf>,
    },
    /// What the checkpoints in a folder hold: when, source position, keys and bytes per
    /// worker, committed output, counters, model and layout.
    Checkpoint {
        /// The pipeline's [checkpoint] dir.
        dir: PathBuf,
    },
    /// Convert an ONNX model (torch.onnx.export, Keras converters, hand-built graphs) into a
    /// model file and its safetensors weights, under PyTorch's names.
    Import {
        /// The .onnx file.
        onnx: PathBuf,
        /// The model file to write (`models/m.toml`); the weights go beside it, with the
        /// extension `.safetensors`.
        #[arg(long, value_name = "MODEL.toml")]
        out: PathBuf,
        /// Replace the model file and its weights if they exist.
        #[arg(long)]
        force: bool,
    },
    /// Print a model's layers, shapes, parameter count, receptive field and whether it streams.
    Inspect {
        /// The model TOML (its weights file is read too).
        model: PathBuf,
        /// Also run one input sequence through it and print every recurrent cell's gates,
        /// cell state and output at each step: steps separated by spaces, features by commas
        /// (`--trace "1 0 0 0"`).
        #[arg(long, value_name = "STEPS")]
        trace: Option<String>,
    },
}

/// `eprintln!` that does not panic when stderr is closed (`seqflow ... 2>&1 | head`): a
/// message nobody reads is not an error.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}
pub(crate) use say;

/// `print!` that ends quietly when stdout is closed (`seqflow inspect ... | head -3`).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}

/// Parses arguments and runs the command.
pub fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Checkpoint { dir } => {
            out!("{}", seqflow::checkpoint::Listing::read(&dir)?);
        }
        Command::Import { onnx, out, force } => import(&onnx, &out, force)?,
        Command::Inspect { model, trace } => {
            // Library errors already name the file, layer and tensor at fault.
            let m = Model::load(&model)?;
            out!("{}", Summary(&m));
            if let Some(e) = m.bf16_error()? {
                out!("{e}\n");
            }
            if let Some(steps) = trace {
                let steps = seqflow::train::trace::parse_steps(&steps, m.input_size())?;
                out!("\n{}", seqflow::train::trace::trace(&model, &steps)?);
            }
        }
        Command::Train {
            config,
            workers,
            epochs,
            grad_report,
        } => {
            let cfg = seqflow::train::config::TrainConfig::load(&config)?;
            let bar = Arc::new(Mutex::new(ProgressBar::hidden()));
            let shown = bar.clone();
            let opts = seqflow::train::trainer::TrainOptions {
                threads: workers,
                grad_report,
                epochs,
                observer: Some(Arc::new(move |e: &TrainEvent<'_>| train_progress(&shown, e))),
            };
            let report = seqflow::train::trainer::train(&cfg, &opts);
            bar.lock().expect("bar").finish_and_clear();
            let report = report?;
            if let Some(g) = &report.grad_report {
                out!("{}\n", g.table());
            }
            say!("seqflow train: {report}");
        }
        Command::Replay {
            data,
            to,
            rate,
            connections,
            partitions,
            batch,
            key,
            time,
            limit,
            format,
        } => {
            let report = seqflow::replay::replay(&seqflow::replay::ReplayOptions {
                arrow: format == "arrow",
                data,
                to,
                rate,
                connections,
                partitions,
                batch,
                key,
                time,
                limit,
            })?;
            say!("seqflow replay: {report}");
        }
        Command::Run {
            pipeline,
            workers,
            processes,
            process,
            hostfile,
            input,
            output,
            connect_timeout,
            resume,
            fresh,
            metrics,
            dashboard,
            report,
        } => {
            PROCESS.store(process, Ordering::Relaxed);
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                // A second signal ends the process at once.
                signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone())?;
                signal_hook::flag::register(sig, stop.clone())?;
            }
            let bar = Arc::new(Mutex::new(ProgressBar::hidden()));
            let shown = bar.clone();
            let opts = RunOptions {
                workers,
                processes,
                process,
                hostfile,
                overrides: Overrides {
                    input,
                    output,
                    metrics,
                    dashboard,
                    report,
                },
                observer: Arc::new(move |e: &Event<'_>| run_progress(&shown, e)),
                stop,
                connect_timeout: Duration::from_secs(connect_timeout),
                resume,
                fresh,
            };
            let report = run(&pipeline, &opts);
            bar.lock().expect("bar").finish_and_clear();
            if let Some(report) = report? {
                say!("seqflow: {report}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Draws a run's progress on a terminal and prints what the library reports.
fn run_progress(bar: &Mutex<ProgressBar>, e: &Event<'_>) {
    let bar = bar.lock().expect("bar");
    match e {
        Event::Started { rows } if std::io::stderr().is_terminal() => {
            let (len, template) = match rows {
                Some(n) => (
                    Some(*n),
                    "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} rows {per_sec} eta {eta}",
                ),
                None => (None, "{spinner} [{elapsed_precise}] {human_pos} rows {per_sec}"),
            };
            bar.set_style(ProgressStyle::with_template(template).expect("template"));
            bar.set_length(len.unwrap_or(0));
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        Event::Started { .. } => {}
        Event::Read(n) => bar.inc(*n),
        Event::Listening {
            addr: Some(addr),
            lines,
        } => say!(
            "seqflow: listening on {addr} ({}); Ctrl-C or SIGTERM to stop",
            lines.describe()
        ),
        Event::Listening { addr: None, lines } => {
            say!("seqflow: reading {} from stdin", lines.describe())
        }
        Event::Subscribed { source, lines } => say!(
            "seqflow: subscribed to {source} ({} lines); Ctrl-C or SIGTERM to stop",
            lines.name()
        ),
        Event::Serving { what, addr, path } => bar.suspend(|| say!("seqflow: {what} on http://{addr}{path}")),
        Event::Warning(w) => bar.suspend(|| say!("seqflow: warning: {w}")),
        Event::Finished => bar.finish_and_clear(),
    }
}

/// Draws training's progress on a terminal; prints one line per epoch.
fn train_progress(bar: &Mutex<ProgressBar>, e: &TrainEvent<'_>) {
    let mut bar = bar.lock().expect("bar");
    match e {
        TrainEvent::Started {
            epochs,
            steps_per_epoch,
        } if std::io::stderr().is_terminal() => {
            *bar = ProgressBar::new(*epochs as u64 * steps_per_epoch).with_style(
                ProgressStyle::with_template("{elapsed_precise} [{bar:30}] epoch {msg} {per_sec}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
        }
        TrainEvent::Started { .. } => {}
        TrainEvent::Batch {
            epoch,
            epochs,
            steps,
            loss,
        } => {
            bar.inc(*steps);
            bar.set_message(format!("{epoch}/{epochs} loss {loss:.5}"));
        }
        TrainEvent::Epoch(stats) => bar.suspend(|| say!("{stats}")),
    }
}

/// One paragraph: the library error already names file and place; context adds the action.
pub fn render(e: &anyhow::Error) -> String {
    // An error whose message already ends with its source's (`path: <io error>`) would
    // otherwise print the source twice.
    let mut parts: Vec<String> = Vec::new();
    for c in e.chain().map(|c| c.to_string()) {
        if !parts.last().is_some_and(|p| p.ends_with(&c)) {
            parts.push(c);
        }
    }
    parts.join(": ")
}

/// `seqflow import`: the ONNX graph as a model file and its weights, each written whole
/// (`.partial`, then renamed), after the model loaded from them in memory.
fn import(onnx: &std::path::Path, out: &std::path::Path, force: bool) -> anyhow::Result<()> {
    use anyhow::bail;
    if out.extension().and_then(|e| e.to_str()) != Some("toml") {
        bail!(
            "--out {}: name the model file to write, ending in .toml",
            out.display()
        );
    }
    let weights = out.with_extension("safetensors");
    seqflow::outfiles::check_distinct(
        &[("ONNX model".into(), onnx.to_path_buf())],
        &[
            ("model file".into(), out.to_path_buf()),
            ("weights file".into(), weights.clone()),
        ],
    )?;
    if !force {
        if let Some(p) = [out, weights.as_path()].into_iter().find(|p| p.exists()) {
            bail!("{} exists; pass --force to replace it", p.display());
        }
    }
    let imported = seqflow::onnx::import(onnx)?;
    // Built in memory first (the loader binds every tensor), so nothing is written for a
    // graph that would not load.
    let m = Model::from_onnx(onnx, &imported)?;
    let tensors: Vec<_> = imported
        .tensors
        .iter()
        .map(|(n, t)| (n.clone(), seqflow::model::weights::Tensor::from(t)))
        .collect();
    let name = weights
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("weights.safetensors");
    let source = std::fs::canonicalize(onnx).unwrap_or_else(|_| onnx.to_path_buf());
    let text = imported.model_toml(&source, name);
    let bytes = seqflow::model::builder::safetensors_bytes(&weights, &tensors)?;
    // Both files complete before either is renamed into place.
    seqflow::outfiles::write_files(&[(weights.as_path(), bytes.as_slice()), (out, text.as_bytes())])?;
    for note in &imported.notes {
        say!("seqflow import: {note}");
    }
    say!(
        "seqflow import: wrote {} and {} ({} layer{}, {} parameters, {} -> {} value{} per step)",
        out.display(),
        weights.display(),
        m.layer_rows().len(),
        if m.layer_rows().len() == 1 { "" } else { "s" },
        seqflow::vocab::group_digits(m.params()),
        m.input_size(),
        m.output_size(),
        if m.output_size() == 1 { "" } else { "s" }
    );
    Ok(())
}
