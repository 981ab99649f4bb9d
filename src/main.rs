//! The `seqflow` binary: parses the command line, hands off to the library, and prints any
//! error once, as one paragraph, with a non-zero exit code.

use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    match cli::main() {
        Ok(code) => code,
        Err(e) => {
            cli::say!("seqflow: error: {}", cli::render(&e));
            ExitCode::from(2)
        }
    }
}
