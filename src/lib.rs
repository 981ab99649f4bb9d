//! seqflow: run trained sequence models (1-D CNN, RNN, LSTM, GRU, dense heads) incrementally
//! over keyed streams on timely dataflow.
//!
//! The crate is layered:
//! - [`model`]: loading PyTorch-exported models and running them, offline over whole
//!   sequences or streamed step by step with per-key state in an arena;
//! - [`kernels`]: the GEMM wrapper and vectorizable activation functions.
//!
//! See ARCHITECTURE.md for what flows where and the invariants the tests defend.

pub mod dataflow;
pub mod error;
pub mod input;
pub mod kernels;
pub mod keyed;
pub mod latency;
pub mod model;
pub mod pipeline;
pub mod record;
pub mod replay;
pub mod sink;
pub mod train;
pub mod views;
pub mod vocab;

pub use error::{Error, Result};
pub use model::{Model, Packed, StateArena, Workspace};
