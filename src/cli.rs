//! Command-line parsing and dispatch. `run` takes timely's own flags (`-w`, `-n`, `-p`,
//! `-h`), so help is `--help` only and the timely config is built here rather than by
//! timely's parser, which rejects flags it does not know.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use seqflow::model::summary::Summary;
use seqflow::Model;

#[derive(Parser, Debug)]
#[command(
    name = "seqflow",
    version,
    about = "Run sequence models (CNN, RNN, LSTM, GRU) incrementally over keyed streams",
    disable_help_flag = true
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
    /// Print a model's layers, shapes, parameter count, receptive field and whether it streams.
    Inspect {
        /// The model TOML (its weights file is read too).
        model: PathBuf,
    },
}

/// Parses arguments and runs the command.
pub fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect { model } => {
            // Library errors already name the file, layer and tensor at fault.
            let m = Model::load(&model)?;
            print!("{}", Summary(&m));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One paragraph: the library error already names file and place; context adds the action.
pub fn render(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    parts.dedup();
    parts.join(": ")
}
