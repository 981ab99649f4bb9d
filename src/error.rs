//! The library's one error type. Every variant names the file and, where there is one, the
//! layer, tensor, column or line at fault, so the binary can print it as one paragraph.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in seqflow for reasons of the user's input or environment.
/// In every variant `path` is the file at fault and `msg` says what is wrong there.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // the fields are the same in every variant: documented above
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The model TOML is malformed or names something seqflow does not know.
    #[error("model file {path}: {msg}")]
    ModelConfig { path: PathBuf, msg: String },

    /// The safetensors file itself is unreadable (truncated, corrupt header, bad offsets).
    #[error("weights file {path}: {msg}")]
    WeightsFile { path: PathBuf, msg: String },

    /// A tensor is missing, has the wrong shape or dtype, or is not used by any layer.
    #[error("weights file {path}: layer {layer}: {msg}")]
    Tensor {
        path: PathBuf,
        /// `#index (kind "name")`, as the user wrote it in the model file.
        layer: String,
        msg: String,
    },

    /// The model cannot run in the requested way (e.g. a bidirectional layer in `every_step`).
    #[error("model {path}: {msg}")]
    Unsupported { path: PathBuf, msg: String },

    /// The pipeline TOML is malformed or inconsistent with the model.
    #[error("pipeline file {path}: {msg}")]
    PipelineConfig { path: PathBuf, msg: String },

    /// Input data is wrong: a missing or mistyped column, a NaN feature, a corrupt file.
    #[error("{path}: {msg}")]
    Data { path: PathBuf, msg: String },
    /// An in-process session's settings do not fit its model (`seqflow::session`).
    #[error("session of model {path}: {msg}")]
    SessionConfig { path: PathBuf, msg: String },

    /// A problem with output: an unwritable file, a failing encoder.
    #[error("output {path}: {msg}")]
    Output { path: PathBuf, msg: String },

    /// A checkpoint folder or file that cannot be used (damaged, of another model or layout).
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },

    /// Anything raised by the dataflow runtime (worker failure, network setup).
    #[error("{0}")]
    Runtime(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
